//! In-process wake-ups: a worker waiting for work (the relay, a consumer) is woken as soon as
//! another task of this process commits some — and, through PostgreSQL's `LISTEN/NOTIFY`
//! (the `listen` module), when another process does. Only a hint: every worker also polls.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{Notify, watch};

/// What there is new work for.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Topic {
    /// New outbox rows.
    Outbox,
    /// New messages on a queue channel.
    Queue(String),
}

/// One [`Notify`] per topic, and a counter of committed outbox writes that any number of
/// in-database consumers can watch without missing a change.
#[derive(Debug)]
pub(crate) struct Wakeups {
    topics: Mutex<HashMap<Topic, Arc<Notify>>>,
    outbox_writes: watch::Sender<u64>,
}

impl Default for Wakeups {
    fn default() -> Self {
        Self {
            topics: Mutex::default(),
            outbox_writes: watch::Sender::new(0),
        }
    }
}

impl Wakeups {
    pub(crate) fn get(&self, topic: &Topic) -> Arc<Notify> {
        let mut topics = self
            .topics
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        topics.entry(topic.clone()).or_default().clone()
    }

    pub(crate) fn wake(&self, topic: &Topic) {
        self.get(topic).notify_one();
        if *topic == Topic::Outbox {
            self.outbox_writes
                .send_modify(|count| *count = count.wrapping_add(1));
        }
    }

    /// Wakes the consumers of each of `channels`.
    pub(crate) fn wake_channels<'a>(&self, channels: impl IntoIterator<Item = &'a String>) {
        for channel in channels {
            self.wake(&Topic::Queue(channel.clone()));
        }
    }

    /// Changes whenever outbox rows (or, with the queue in the same database, queue rows)
    /// were committed.
    pub(crate) fn outbox_writes(&self) -> watch::Receiver<u64> {
        self.outbox_writes.subscribe()
    }
}
