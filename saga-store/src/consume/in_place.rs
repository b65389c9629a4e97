//! Consumers that handle messages in place, where the queue table is in the consumer's own
//! database ([`RuntimeBuilder::in_place`](crate::RuntimeBuilder::in_place)).
//!
//! Each pass is one piece of group-committed work: take a batch of visible messages from the
//! queue (locked, not leased), handle them, write the answers straight into the queue, delete
//! the batch — and commit, together with whatever else the database's writer has waiting. A
//! message thus costs no relay pass, no lease commit and no acknowledgement commit; a crash
//! rolls the whole pass back and the messages are simply still there.
//!
//! A pass whose answers go to another channel this runtime handles in place on the same
//! database ([`LocalChannels`]) handles that channel's messages too, in the same transaction
//! (each such chained pass in a savepoint of its own), and so on along the saga: at one saga
//! in flight a whole saga after its start is one transaction and one commit, with no wake-up
//! of another consumer between its steps. Only a pass that took a single message chains —
//! a sign of light load, where every hand-off is latency; under load the passes of every
//! channel share the group commit anyway, with larger batches than a chain would take
//! (measured: chaining every pass cost 10–20 % of SQLite's throughput at 8–32 sagas in
//! flight). At most [`RuntimeOptions::chained_passes`] are chained (default 16: a whole FTGO
//! saga of ten messages at one in flight, and few enough to keep a transaction short under
//! load and, on PostgreSQL, within the 64 subtransactions a backend caches); a channel left
//! with messages is woken as before.
//!
//! A channel may have several passes at once ([`RuntimeOptions::channel_consumers`]; by
//! default on PostgreSQL, not on SQLite's single writer), each taking at most
//! [`RuntimeOptions::pass_batch`] messages (`SKIP LOCKED`: never the same ones, and never a
//! saga's message while an earlier one of that saga on the channel is in hand: the queue keeps
//! each saga's order, see [`crate::sql::queue`]). One pass at
//! a time made the sagas in flight travel as one herd, a whole channel's batch handled
//! statement after statement while the next channel waited; a pass that takes a full batch
//! wakes another at once, so the herd spreads over the channel's passes.
//!
//! Anything unusual — a handler asking for a retry, a duplicate or conflicting saga write, an
//! error — undoes the pass (a chained pass: only its own savepoint) and hands the batch to
//! that channel's ordinary leased consumer, which handles the messages one by one with
//! per-message retries, delivery counts and dead letters.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use saga_core::Message;
use saga_core::orchestrator::reply_saga_ids;
use saga_core::ports::{Delivery, StoreError, Transport as _};

use crate::consume::commands::{self, Commands, Ran};
use crate::consume::{Consumer, SharedOrchestrator, Verdict};
use crate::db::Database;
use crate::db::backend::Tx;
use crate::db::group::{Finish, WriteKind};
use crate::db::savepoint::{self, Glued, Savepoint};
use crate::db::wakeups::Topic;
use crate::options::RuntimeOptions;
use crate::sql::{self, to_i64};
use crate::store::{self, batchable};
use crate::transport::sql::SqlTransport;
use crate::worker::{Backoff, Shutdown};

/// What a channel's handler made of a taken batch, inside the pass's transaction.
pub(crate) struct Handled {
    /// To run once the pass committed (metrics, the orchestrator's notifications).
    after: Box<dyn FnOnce() + Send>,
    /// The channels its answers went to.
    destinations: Vec<String>,
}

/// Handles one channel's taken batch inside a pass's transaction; `None` to undo it and
/// leave the batch to the channel's leased consumer.
pub(crate) type Handler = Arc<
    dyn for<'t> Fn(&'t mut Tx, Vec<Message>) -> BoxFuture<'t, Result<Option<Handled>, StoreError>>
        + Send
        + Sync,
>;

/// The channels one runtime handles in place, each with the database its passes run on and
/// its handler.
#[derive(Clone, Default)]
pub(crate) struct LocalChannels(Arc<HashMap<String, (Database, Handler)>>);

impl LocalChannels {
    pub(crate) fn new(handlers: HashMap<String, (Database, Handler)>) -> Self {
        Self(Arc::new(handlers))
    }

    /// The handler of `channel`, if its passes run on `database` (a pass chains only passes
    /// it can run in its own transaction).
    fn on(&self, database: &Database, channel: &str) -> Option<&Handler> {
        self.0
            .get(channel)
            .filter(|(on, _)| on.same_pool(database))
            .map(|(_, handler)| handler)
    }
}

/// The orchestrator's reply handler: loads the batch's sagas, plans their transitions and
/// writes them with multi-row statements.
pub(crate) fn reply_handler(orchestrator: SharedOrchestrator) -> Handler {
    Arc::new(move |tx, messages| {
        let orchestrator = orchestrator.clone();
        Box::pin(async move {
            let records = sql::instances::load_many(tx.conn(), &reply_saga_ids(&messages)).await?;
            let now = orchestrator.clock().now();
            let plan = orchestrator.plan_replies(&messages, records, now);
            if !plan.one_by_one.is_empty() || !batchable(&plan.units) {
                return Ok(None);
            }
            let at = to_i64(now.as_millis());
            let store = orchestrator.store();
            if !store.write_units(tx.conn(), &plan.units, at).await? {
                return Ok(None);
            }
            let destinations = match store.is_in_place() {
                true => store::destinations(plan.units.iter().flat_map(|u| &u.outbox)),
                false => Vec::new(),
            };
            let planned = plan.planned;
            Ok(Some(Handled {
                after: Box::new(move || {
                    for reply in &planned {
                        orchestrator.committed(reply);
                    }
                }),
                destinations,
            }))
        })
    })
}

/// A participant's command handler: dedup records, handlers and replies (into `queue`) for
/// the batch.
pub(crate) fn command_handler(participant: Arc<dyn Commands>, queue: SqlTransport) -> Handler {
    Arc::new(move |tx, messages| {
        let (participant, queue) = (participant.clone(), queue.clone());
        Box::pin(async move {
            let system = queue.system();
            let ran =
                commands::run_in(tx, participant.as_ref(), &messages, Some(&queue), system).await?;
            Ok(match ran {
                Ran::Handled {
                    outcomes,
                    destinations,
                } => Some(Handled {
                    after: Box::new(move || {
                        for outcome in &outcomes {
                            outcome.record(participant.channel());
                        }
                    }),
                    destinations,
                }),
                Ran::Retry(_) => None,
            })
        })
    })
}

/// What one pass did.
enum Pass {
    /// Nothing was visible.
    Empty,
    /// Handled this many messages (and these for after the commit); these channels may have
    /// work now.
    Handled(usize, Vec<Box<dyn FnOnce() + Send>>, Vec<String>),
    /// Something needs the ordinary consumer.
    Fallback,
    /// Only rows that had to be set aside as dead letters; their failure replies went to
    /// these channels.
    SetAside(Vec<String>),
}

/// A pass and the passes chained onto it, inside one transaction.
struct Chain<'a> {
    local: &'a LocalChannels,
    /// The database the transaction is on.
    database: &'a Database,
    /// Local channels that were sent messages in this transaction, to handle next.
    next: VecDeque<String>,
    /// Channels to wake after the commit: not handled here, or left with messages.
    wake: BTreeSet<String>,
    afters: Vec<Box<dyn FnOnce() + Send>>,
    handled: usize,
}

impl<'a> Chain<'a> {
    fn new(local: &'a LocalChannels, database: &'a Database) -> Self {
        Self {
            local,
            database,
            next: VecDeque::new(),
            wake: BTreeSet::new(),
            afters: Vec::new(),
            handled: 0,
        }
    }

    /// Notes channels that were sent messages.
    fn sent_to(&mut self, channels: impl IntoIterator<Item = String>) {
        for channel in channels {
            if self.local.on(self.database, &channel).is_none() {
                self.wake.insert(channel);
            } else if !self.next.contains(&channel) {
                self.next.push_back(channel);
            }
        }
    }

    fn add(&mut self, count: usize, handled: Handled) {
        self.handled += count;
        self.afters.push(handled.after);
        self.sent_to(handled.destinations);
    }

    /// Handles the local channels that were sent messages, each pass in a savepoint: one
    /// that falls back or fails is undone and its channel woken, the rest stays.
    async fn run(
        &mut self,
        tx: &mut Tx,
        queue: &SqlTransport,
        max: usize,
        chained: usize,
    ) -> Result<(), StoreError> {
        let mut savepoint = Savepoint::new(&savepoint::CHAINED_PASS);
        let mut passes = 0;
        while let Some(channel) = self.next.pop_front() {
            let Some(handler) = self.local.on(self.database, &channel).cloned() else {
                continue;
            };
            if passes == chained {
                self.wake.insert(channel);
                continue;
            }
            passes += 1;
            let glued = savepoint.take_glued(tx);
            let taking = Taking {
                glued,
                max,
                wake_sibling: false,
            };
            match take_and_handle(tx, taking, queue, &channel, &handler).await {
                // Rows set aside as dead letters stay so, with their failure replies.
                Ok(Took::Nothing { replied_to, .. }) => self.sent_to(replied_to),
                Ok(Took::Handled(count, handled, replied_to)) => {
                    if count == max {
                        // There may be more than one batch.
                        self.wake.insert(channel.clone());
                    }
                    self.add(count, handled);
                    self.sent_to(replied_to);
                }
                Ok(Took::Fallback) => {
                    savepoint.undo(tx).await?;
                    self.wake.insert(channel);
                }
                Err(err) => {
                    tracing::debug!(%channel, error = %err, "a chained in-place pass failed; its channel's consumer takes over");
                    savepoint.undo(tx).await?;
                    self.wake.insert(channel);
                }
            }
        }
        savepoint.release(tx).await
    }
}

/// What taking and handling a batch of one channel came to.
enum Took {
    /// Nothing was visible but `set_aside` rows, set aside as dead letters, whose failure
    /// replies went to `replied_to`.
    Nothing {
        set_aside: usize,
        replied_to: Vec<String>,
    },
    /// Handled this many messages; rows set aside replied to these channels.
    Handled(usize, Handled, Vec<String>),
    /// Undo it: the channel's own consumer takes over.
    Fallback,
}

/// How a pass takes its batch.
struct Taking {
    /// To run with the statement that takes it.
    glued: Glued,
    /// The most messages to take.
    max: usize,
    /// On a full batch, wake another pass of the channel at once, to take the next batch
    /// while this one is handled (with [`RuntimeOptions::channel_consumers`] above 1).
    wake_sibling: bool,
}

/// Takes a batch of `channel` inside `tx` and hands it to `handler`: the work of a pass and
/// of each pass chained onto it.
async fn take_and_handle(
    tx: &mut Tx,
    taking: Taking,
    queue: &SqlTransport,
    channel: &str,
    handler: &Handler,
) -> Result<Took, StoreError> {
    let mut read = queue
        .take_in(tx.conn(), taking.glued, channel, taking.max)
        .await?;
    let taken = std::mem::take(&mut read.deliveries);
    if taking.wake_sibling && taken.len() == taking.max {
        queue.wake_channels(&[channel.to_owned()]);
    }
    if taken.is_empty() {
        return Ok(Took::Nothing {
            set_aside: read.set_aside,
            replied_to: read.replied_to,
        });
    }
    let count = taken.len();
    let messages = taken.into_iter().map(|d| d.message).collect();
    Ok(match handler(tx, messages).await? {
        Some(handled) => Took::Handled(count, handled, read.replied_to),
        None => Took::Fallback,
    })
}

/// A channel handled in place: where its passes run and what they use.
#[derive(Clone)]
pub(crate) struct ChannelPasses {
    pub(crate) channel: String,
    /// The database its passes' transactions are on: the queue's own, or a co-located one.
    pub(crate) database: Database,
    /// Its handler, and the channels its passes may chain.
    pub(crate) local: LocalChannels,
    pub(crate) queue: SqlTransport,
}

/// Runs passes of a channel until shutdown; `first` for the first of the channel's parallel
/// passes.
pub(crate) async fn pass_loop<C, Fut>(
    passes: ChannelPasses,
    first: bool,
    mut fallback: Consumer<C>,
    options: Arc<RuntimeOptions>,
    mut shutdown: Shutdown,
) where
    C: FnMut(Vec<Delivery>) -> Fut,
    Fut: std::future::Future<Output = Vec<(Delivery, Verdict)>>,
{
    let ChannelPasses {
        channel,
        database,
        local,
        queue,
    } = passes;
    // Commits on the pass's database are the catch-all hint; the channel's own wake-ups come
    // through the queue's database (from this process, or `NOTIFY`d from others).
    let mut writes = database.wakeups().outbox_writes();
    let mine = queue
        .database()
        .wakeups()
        .get(&Topic::Queue(channel.clone()));
    let notify = queue.database().queue_notify_channel();
    let mut backoff = Backoff::new(options.max_backoff);
    let dialect = database.dialect();
    let wake_sibling = options.channel_consumers_on(dialect, true) > 1;
    let Some(handler) = local.on(&database, &channel).cloned() else {
        tracing::error!(%channel, "no in-place handler for the channel; using the leased consumer");
        fallback.run(shutdown).await;
        return;
    };
    while !shutdown.requested() {
        writes.borrow_and_update();
        let (queue_in_pass, channel_in_pass, local_in_pass, handler, notify) = (
            queue.clone(),
            channel.clone(),
            local.clone(),
            handler.clone(),
            notify.clone(),
        );
        let database_in_pass = database.clone();
        let (max, chained) = (options.pass_batch_on(dialect), options.chained_passes);
        let passed = database
            .write_as(WriteKind::Pass, move |tx: &mut Tx| {
                Box::pin(async move {
                    let taking = Taking {
                        glued: Glued::NONE,
                        max,
                        wake_sibling,
                    };
                    let took =
                        take_and_handle(tx, taking, &queue_in_pass, &channel_in_pass, &handler)
                            .await?;
                    let (count, handled, replied_to) = match took {
                        // Rows set aside as dead letters (and the failure replies that tell
                        // their sagas) are kept even when nothing else was taken.
                        Took::Nothing { set_aside: 0, .. } => {
                            return Ok(Finish::Rollback(Pass::Empty));
                        }
                        Took::Nothing { replied_to, .. } => {
                            return Ok(Finish::Commit(Pass::SetAside(replied_to)));
                        }
                        Took::Fallback => return Ok(Finish::Rollback(Pass::Fallback)),
                        Took::Handled(count, handled, replied_to) => (count, handled, replied_to),
                    };
                    let mut chain = Chain::new(&local_in_pass, &database_in_pass);
                    chain.add(count, handled);
                    chain.sent_to(replied_to);
                    // Light load only (see the module's documentation).
                    let chained = if count == 1 { chained } else { 0 };
                    chain.run(tx, &queue_in_pass, max, chained).await?;
                    let wake: Vec<String> = chain.wake.into_iter().collect();
                    // Consumers in other processes (PostgreSQL): delivered by the commit.
                    let channels: Vec<&str> = wake.iter().map(String::as_str).collect();
                    sql::queue::notify(tx.conn(), &notify, &channels).await?;
                    Ok(Finish::Commit(Pass::Handled(
                        chain.handled,
                        chain.afters,
                        wake,
                    )))
                })
            })
            .await;
        let stop = match passed {
            Ok(Pass::Handled(count, afters, wake)) => {
                backoff.reset();
                // Wake exactly the consumers that have work now.
                queue.wake_channels(&wake);
                for after in afters {
                    after();
                }
                tracing::trace!(%channel, count, "handled in place");
                false
            }
            Ok(Pass::SetAside(channels)) => {
                queue.wake_channels(&channels);
                false
            }
            Ok(Pass::Empty) => loop {
                // A commit's outbox-write count and the poll are hints for every channel:
                // look (a read, off the writer) before taking the writer for nothing.
                let hint = tokio::select! {
                    () = mine.notified() => false,
                    // One pass of each channel watches them; it wakes the others when it
                    // takes a full batch.
                    _ = writes.changed(), if first => true,
                    () = tokio::time::sleep(options.poll_interval) => true,
                    () = shutdown.clone().stopped() => break true,
                };
                if !hint
                    || fallback.holds_any()
                    || queue.any_visible(&channel).await.unwrap_or(true)
                {
                    break false;
                }
            },
            Ok(Pass::Fallback) => {
                tracing::debug!(%channel, "handing a batch to the leased consumer");
                fallback.pass(&mut shutdown, Duration::ZERO).await
            }
            Err(err) => {
                tracing::warn!(%channel, error = %err, "in-place pass failed; trying the leased consumer");
                fallback.pass(&mut shutdown, Duration::ZERO).await
                    || shutdown.pause(backoff.next(), None).await
            }
        };
        // Messages the leased consumer holds for another try are tried here too.
        if stop || (fallback.holds_any() && fallback.pass(&mut shutdown, Duration::ZERO).await) {
            break;
        }
    }
    fallback.stop().await;
}
