//! Ports: the traits the orchestrator and participants are written against.
//!
//! A store persists saga instances, their timelines, timers, the outbox, the received-message
//! (dedup) table and dead letters. Everything one handled message changes is a
//! [`UnitOfWork`], which a store commits in **one local transaction** — the whole
//! exactly-once-effect story: at-least-once delivery plus dedup.
//!
//! A transport moves messages between channels. [`crate::memory`] has in-memory
//! implementations of both; `saga-store` has the durable ones.

use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::engine::{HistoryEvent, SagaState, SagaTimer};
use crate::ids::{MessageId, SagaId, Timestamp};
use crate::message::Message;

/// A saga instance as stored: state, JSON data, and an optimistic-concurrency version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SagaRecord {
    /// Everything but the data.
    pub state: SagaState,
    /// The saga data, as JSON.
    pub data: serde_json::Value,
    /// Bumped on every write; a write that expects an older version is a conflict.
    pub version: u64,
    /// The trace context the saga started in, written once: the steps it runs later join
    /// that trace (see [`crate::trace`]).
    #[serde(default)]
    pub trace: Option<crate::trace::TraceContext>,
}

/// One timeline entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryRecord {
    /// The saga.
    pub saga_id: SagaId,
    /// When it happened.
    pub at: Timestamp,
    /// What happened.
    pub event: HistoryEvent,
}

/// A timer to fire for a saga.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TimerRecord {
    /// The saga.
    pub saga_id: SagaId,
    /// The timer (it identifies itself: a request id and attempt).
    pub timer: SagaTimer,
    /// When it fires.
    pub due: Timestamp,
}

/// A message that could not be processed, kept with the reason.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// The consumer that gave up on it.
    pub consumer: String,
    /// The message as received.
    pub message: Message,
    /// Why it could not be processed.
    pub reason: String,
    /// When it was set aside.
    pub at: Timestamp,
}

/// The message a unit of work consumes, for deduplication.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Consumed {
    /// The consumer (a service or orchestrator name): dedup is per consumer.
    pub consumer: String,
    /// The message id.
    pub message_id: MessageId,
}

/// A saga write inside a unit of work.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SagaWrite {
    /// The new record; its `version` is the version after the write.
    pub record: SagaRecord,
    /// `None` to insert a new saga; `Some(v)` to update one currently at version `v`.
    pub expected_version: Option<u64>,
}

/// Everything one handled message (or one start, one timer, one operator command) changes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UnitOfWork {
    /// The incoming message, recorded as received; a duplicate aborts the whole unit.
    pub consumed: Option<Consumed>,
    /// The saga state change.
    pub saga: Option<SagaWrite>,
    /// Timeline entries.
    pub history: Vec<HistoryRecord>,
    /// Messages to send, via the outbox.
    pub outbox: Vec<Message>,
    /// Timers to schedule.
    pub schedule: Vec<TimerRecord>,
    /// Timers that fired and are done with.
    pub fired: Vec<TimerRecord>,
    /// Messages set aside with a reason.
    pub dead_letters: Vec<DeadLetter>,
}

impl UnitOfWork {
    /// A unit that only records `message_id` as received by `consumer`.
    pub fn consuming(consumer: &str, message_id: MessageId) -> Self {
        Self {
            consumed: Some(Consumed {
                consumer: consumer.to_owned(),
                message_id,
            }),
            ..Self::default()
        }
    }
}

/// What a commit did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommitOutcome {
    /// Everything was written.
    Committed,
    /// The consumed message had been processed already; nothing was written.
    Duplicate,
    /// The saga changed since it was read (optimistic version mismatch); nothing was written.
    Conflict,
}

/// A saga that stopped moving (see [`SagaStore::stalled`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StalledSaga {
    /// The saga.
    pub saga_id: SagaId,
    /// Its type.
    pub saga_type: String,
    /// The definition version it runs on.
    pub definition_version: String,
    /// Running or compensating.
    pub status: crate::engine::SagaStatus,
    /// The step it is at.
    pub current_step: Option<String>,
    /// Its deadline, if it has one (then overdue).
    pub deadline: Option<Timestamp>,
    /// When it last changed.
    pub updated_at: Timestamp,
}

/// An outbox row waiting to be published.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboxEntry {
    /// The row's position; entries are published in this order.
    pub sequence: u64,
    /// The message.
    pub message: Message,
}

pub use crate::error::{ErrorSource, source};
pub use crate::versions::InFlightVersion;

/// A store failure: what a caller should do about it (the variant), and why (the source).
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database could not be reached, or cannot serve for now (out of resources, failing
    /// over, a lost race): worth retrying later.
    #[error("store unavailable: {source}")]
    Unavailable {
        /// The underlying error.
        #[source]
        source: ErrorSource,
    },
    /// The database refused the operation for a reason that repeats (a constraint, a
    /// statement it cannot run): retrying the same operation does not help.
    #[error("store error: {source}")]
    Rejected {
        /// The underlying error.
        #[source]
        source: ErrorSource,
    },
    /// Stored data could not be read back.
    #[error("corrupt stored {what}: {source}")]
    Corrupt {
        /// What could not be read (a table and column, a record).
        what: &'static str,
        /// Why.
        #[source]
        source: ErrorSource,
    },
    /// The store was asked for something it cannot do — a bug in the caller or the store.
    #[error("store invariant broken: {what}")]
    Bug {
        /// What went wrong.
        what: &'static str,
    },
}

impl StoreError {
    /// An [`StoreError::Unavailable`] failure caused by `error`.
    pub fn unavailable(
        error: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> Self {
        Self::Unavailable {
            source: source(error),
        }
    }

    /// A [`StoreError::Rejected`] failure caused by `error`.
    pub fn rejected(error: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>) -> Self {
        Self::Rejected {
            source: source(error),
        }
    }

    /// A [`StoreError::Corrupt`] failure: `what` could not be read, because of `error`.
    pub fn corrupt(
        what: &'static str,
        error: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> Self {
        Self::Corrupt {
            what,
            source: source(error),
        }
    }

    /// Whether trying again later can succeed: the store was unreachable or out of resources.
    /// Other failures repeat for the same input.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unavailable { .. })
    }
}

/// Persists sagas, timelines, timers, the outbox, dedup records and dead letters.
#[async_trait]
pub trait SagaStore: Send + Sync {
    /// Loads a saga instance.
    async fn load(&self, saga_id: SagaId) -> Result<Option<SagaRecord>, StoreError>;

    /// Commits a unit of work atomically.
    async fn commit(&self, unit: UnitOfWork) -> Result<CommitOutcome, StoreError>;

    /// Loads several saga instances at once (those that exist, in any order). Stores that can
    /// read them in one query should; the default loads them one by one.
    async fn load_many(&self, saga_ids: &[SagaId]) -> Result<Vec<SagaRecord>, StoreError> {
        let mut records = Vec::with_capacity(saga_ids.len());
        for &saga_id in saga_ids {
            records.extend(self.load(saga_id).await?);
        }
        Ok(records)
    }

    /// Commits several units of work, each atomically, with an outcome per unit in the same
    /// order. Stores that can write them together (fewer statements, one durable commit)
    /// should; the default commits them one by one.
    async fn commit_all(&self, units: Vec<UnitOfWork>) -> Result<Vec<CommitOutcome>, StoreError> {
        let mut outcomes = Vec::with_capacity(units.len());
        for unit in units {
            outcomes.push(self.commit(unit).await?);
        }
        Ok(outcomes)
    }

    /// Running or compensating sagas that stopped moving at `now`: no deadline and unchanged
    /// for longer than `idle`, or a deadline overdue by more than `idle`; at most `limit`,
    /// longest idle first. The default finds none (a store that cannot tell).
    async fn stalled(
        &self,
        now: Timestamp,
        idle: Duration,
        limit: usize,
    ) -> Result<Vec<StalledSaga>, StoreError> {
        let _ = (now, idle, limit);
        Ok(Vec::new())
    }

    /// The sagas in flight — running, compensating, or parked in `failed` — counted per type
    /// and definition version: what an orchestrator checks before it starts.
    async fn in_flight_versions(&self) -> Result<Vec<InFlightVersion>, StoreError>;

    /// Up to `limit` running or compensating sagas of `saga_type` on definition `version`.
    async fn running_on_version(
        &self,
        saga_type: &str,
        version: &str,
        limit: usize,
    ) -> Result<Vec<SagaId>, StoreError>;

    /// Timers due at `now`, oldest first, at most `limit`.
    async fn due_timers(
        &self,
        now: Timestamp,
        limit: usize,
    ) -> Result<Vec<TimerRecord>, StoreError>;

    /// A saga's timeline, oldest first.
    async fn history(&self, saga_id: SagaId) -> Result<Vec<HistoryRecord>, StoreError>;

    /// Outbox rows not yet published, in order, at most `limit`.
    async fn unpublished(&self, limit: usize) -> Result<Vec<OutboxEntry>, StoreError>;

    /// Marks outbox rows as published.
    async fn mark_published(&self, sequences: &[u64]) -> Result<(), StoreError>;

    /// The dead letters, oldest first.
    async fn dead_letters(&self) -> Result<Vec<DeadLetter>, StoreError>;

    /// Sets an outbox row the transport will never take aside, in one unit: marks it
    /// published, keeps it as a dead letter with `reason`, and — when it is a command whose
    /// saga waits for the answer — queues the failure reply that tells the saga.
    async fn set_aside(&self, entry: &OutboxEntry, reason: &str) -> Result<(), StoreError>;
}

/// A message handed to a consumer, to acknowledge once its unit of work has committed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    /// The message.
    pub message: Message,
    /// How many times it has been delivered (1 the first time).
    pub attempt: u32,
    /// The transport's acknowledgement token.
    pub receipt: u64,
}

/// A transport failure.
///
/// [`TransportError::TooLarge`] and [`TransportError::Refused`] are permanent and name the one
/// message they are about: set exactly that message aside ([`TransportError::refused_message`])
/// and go on with the others. The rest are worth retrying after a pause.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// The broker or database could not be reached; worth retrying.
    #[error("transport unavailable: {source}")]
    Unavailable {
        /// The underlying error.
        #[source]
        source: ErrorSource,
    },
    /// A message is too large for the transport.
    #[error("message {id} is {size} bytes, over the transport's limit of {limit}")]
    TooLarge {
        /// The message id.
        id: MessageId,
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The transport will never take this message as it is (its destination is not a channel
    /// name, it holds bytes the transport cannot carry, …).
    #[error("message {id} refused: {source}")]
    Refused {
        /// The message id.
        id: MessageId,
        /// Why.
        #[source]
        source: ErrorSource,
    },
    /// A setting is wrong (credentials the server refuses, a certificate that does not
    /// verify, a file that is not there): retrying will not help, so it is reported at once.
    #[error("transport misconfigured: {source}")]
    Misconfigured {
        /// The underlying error.
        #[source]
        source: ErrorSource,
    },
    /// Any other failure; treated as transient.
    #[error("transport error: {source}")]
    Failed {
        /// The underlying error.
        #[source]
        source: ErrorSource,
    },
}

impl TransportError {
    /// A short, fixed name of the kind of failure, for the `error.type` of spans and metric
    /// labels: `unavailable`, `too_large`, `refused`, `misconfigured` or `failed`.
    pub fn class(&self) -> &'static str {
        match self {
            Self::Unavailable { .. } => "unavailable",
            Self::TooLarge { .. } => "too_large",
            Self::Refused { .. } => "refused",
            Self::Misconfigured { .. } => "misconfigured",
            Self::Failed { .. } => "failed",
        }
    }

    /// An [`TransportError::Unavailable`] failure caused by `error`.
    pub fn unavailable(
        error: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> Self {
        Self::Unavailable {
            source: source(error),
        }
    }

    /// A [`TransportError::Misconfigured`] failure caused by `error`.
    pub fn misconfigured(
        error: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> Self {
        Self::Misconfigured {
            source: source(error),
        }
    }

    /// A [`TransportError::Failed`] failure caused by `error`.
    pub fn failed(error: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>) -> Self {
        Self::Failed {
            source: source(error),
        }
    }

    /// A [`TransportError::Refused`] failure of message `id`, because of `error`.
    pub fn refused(
        id: MessageId,
        error: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> Self {
        Self::Refused {
            id,
            source: source(error),
        }
    }

    /// The message this error is permanent for, if it is permanent.
    pub fn refused_message(&self) -> Option<MessageId> {
        match self {
            Self::TooLarge { id, .. } | Self::Refused { id, .. } => Some(*id),
            _ => None,
        }
    }
}

/// Messages waiting on a channel that nobody has taken for a while (see
/// [`Transport::unconsumed`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelBacklog {
    /// The channel.
    pub channel: String,
    /// How many messages wait on it, never delivered.
    pub messages: u64,
    /// When the oldest of them was enqueued, if the transport knows.
    pub oldest: Option<Timestamp>,
}

/// Refuses a message whose destination is not a channel name
/// ([`validate_channel`](crate::message::validate_channel)): no transport can deliver it.
pub fn check_destination(message: &Message) -> Result<(), TransportError> {
    crate::message::validate_channel(&message.destination)
        .map_err(|err| TransportError::refused(message.id, err))
}

/// Moves messages between channels, at least once.
#[async_trait]
pub trait Transport: Send + Sync {
    /// The messaging system's name, for the `messaging.system` attribute of spans and the
    /// `system` label of metrics (`nats`, `saga_sql_queue`, …).
    fn system(&self) -> &'static str {
        "saga"
    }

    /// Whether one saga's messages on a channel reach the channel's consumers one at a time,
    /// in order, however many consumers take from it at once (the SQL queue hands out only
    /// the oldest of a saga's messages). The engine relies on a saga's messages on a channel
    /// being handled in order — a cancelled saga's compensation is sent behind the command it
    /// undoes — so a runtime gives a channel several consumers only on a transport that says
    /// so. The default: no.
    fn orders_each_saga(&self) -> bool {
        false
    }

    /// Whether the transport can ever carry `message`, checked before publishing it: an
    /// error is permanent for that message ([`TransportError::TooLarge`],
    /// [`TransportError::Refused`]). The default checks the destination is a channel name
    /// ([`check_destination`]).
    fn check(&self, message: &Message) -> Result<(), TransportError> {
        check_destination(message)
    }

    /// The largest message (payload and headers) the transport carries, if it has a limit;
    /// a service can refuse bigger input at its edge.
    fn max_message_bytes(&self) -> Option<usize> {
        None
    }

    /// How long a delivery nobody acknowledges stays away from other consumers (a lease, an
    /// ack wait), if the transport redelivers by itself: a consumer holding a delivery
    /// renews it ([`Transport::extend`]) well within this.
    fn lease(&self) -> Option<Duration> {
        None
    }

    /// Publishes messages, in order.
    async fn publish(&self, messages: &[Message]) -> Result<(), TransportError>;

    /// Receives up to `max` messages from `channel` for the consumer group `group`, waiting
    /// up to `wait` for the first. Instances in one group share the channel's work.
    async fn receive(
        &self,
        channel: &str,
        group: &str,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Delivery>, TransportError>;

    /// Acknowledges a delivery; an unacknowledged one is delivered again later.
    async fn ack(
        &self,
        channel: &str,
        group: &str,
        delivery: &Delivery,
    ) -> Result<(), TransportError>;

    /// Acknowledges several deliveries of one channel at once (transports that can, do it in
    /// one round trip; the default acknowledges them one by one).
    async fn ack_all(
        &self,
        channel: &str,
        group: &str,
        deliveries: &[Delivery],
    ) -> Result<(), TransportError> {
        for delivery in deliveries {
            self.ack(channel, group, delivery).await?;
        }
        Ok(())
    }

    /// Keeps deliveries the consumer still works on from being delivered to anyone else for
    /// another `by` (a lease renewal, a work-in-progress ack), without counting as a
    /// delivery. The default does nothing.
    async fn extend(
        &self,
        channel: &str,
        group: &str,
        deliveries: &[Delivery],
        by: Duration,
    ) -> Result<(), TransportError> {
        let _ = (channel, group, deliveries, by);
        Ok(())
    }

    /// The consumer of `channel` takes no new messages for a while (it holds as many as it
    /// may): a transport that prefetches should stop, and give back what it prefetched, so
    /// those messages go to another consumer at once instead of waiting out a lease. The
    /// default does nothing.
    async fn pause(&self, channel: &str, group: &str) {
        let _ = (channel, group);
    }

    /// Whether the transport can carry messages now (its broker or database answers), for
    /// readiness checks. The default says yes.
    async fn ready(&self) -> Result<(), TransportError> {
        Ok(())
    }

    /// Channels holding messages that nobody has taken for longer than `older_than` (nobody
    /// consumes the channel, or its consumers are stuck), for the watchdog. The default
    /// reports none.
    async fn unconsumed(
        &self,
        older_than: Duration,
    ) -> Result<Vec<ChannelBacklog>, TransportError> {
        let _ = older_than;
        Ok(Vec::new())
    }

    /// Sets a delivery aside for good — a dead letter with `reason`, for a message its
    /// consumer can never handle — telling its saga with a failure reply when it is a command
    /// that waits for an answer. The default cannot: the consumer keeps the message.
    async fn dead_letter(
        &self,
        channel: &str,
        group: &str,
        delivery: &Delivery,
        reason: &str,
    ) -> Result<(), TransportError> {
        let _ = (channel, group, delivery, reason);
        Err(TransportError::failed(
            "this transport cannot set messages aside",
        ))
    }

    /// Gives a delivery back unprocessed, to be delivered again after `delay`.
    async fn release(
        &self,
        channel: &str,
        group: &str,
        delivery: &Delivery,
        delay: Duration,
    ) -> Result<(), TransportError>;
}
