//! Consumers that handle messages in place, where the queue table is in the consumer's own
//! database ([`RuntimeBuilder::in_place`](crate::RuntimeBuilder::in_place)).
//!
//! Each pass is one piece of group-committed work: take a batch of visible messages from the
//! queue (locked, not leased), handle them, write the answers straight into the queue, delete
//! the batch — and commit, together with whatever else the database's writer has waiting. A
//! message thus costs no relay pass, no lease commit and no acknowledgement commit; a crash
//! rolls the whole pass back and the messages are simply still there.
//!
//! Anything unusual — a handler asking for a retry, a duplicate or conflicting saga write, an
//! error — undoes the pass and hands one batch to the ordinary leased consumer, which handles
//! the messages one by one with per-message retries, delivery counts and dead letters.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use saga_core::Message;
use saga_core::orchestrator::reply_saga_ids;
use saga_core::ports::{Delivery, StoreError, Transport as _};

use crate::consume::commands::{self, CommandOutcome, Commands, Ran};
use crate::consume::{Consumer, SharedOrchestrator, Verdict};
use crate::db::Database;
use crate::db::backend::Tx;
use crate::db::group::{Finish, WriteKind};
use crate::db::wakeups::Topic;
use crate::options::RuntimeOptions;
use crate::sql::{self, to_i64};
use crate::store::{self, batchable};
use crate::transport::sql::SqlTransport;
use crate::worker::{Backoff, Shutdown};

/// What one pass did.
enum Pass<T> {
    /// Nothing was visible.
    Empty,
    /// Handled this many messages (and `T` for after the commit), answering to these
    /// channels.
    Handled(usize, T, Vec<String>),
    /// Something needs the ordinary consumer.
    Fallback,
    /// Only rows that had to be set aside as dead letters; their failure replies went to
    /// these channels.
    SetAside(Vec<String>),
}

/// Handles taken messages inside a pass's transaction: `None` to undo the pass and fall back,
/// else what to hand to `after` and the channels the answers went to.
type Batch<T> = Box<dyn FnOnce(&mut Tx, Vec<Message>) -> BoxFuture<'_, BatchResult<T>> + Send>;
type BatchResult<T> = Result<Option<(T, Vec<String>)>, StoreError>;

/// Runs passes until shutdown; `batch` handles the taken messages inside the pass's
/// transaction (`None`: undo, fall back), `after` runs once a pass committed.
async fn pass_loop<T, F, C, Fut>(
    channel: String,
    queue: SqlTransport,
    mut fallback: Consumer<C>,
    options: Arc<RuntimeOptions>,
    mut shutdown: Shutdown,
    batch: impl Fn() -> Batch<T>,
    after: F,
) where
    T: Send + 'static,
    F: Fn(T),
    C: FnMut(Vec<Delivery>) -> Fut,
    Fut: std::future::Future<Output = Vec<(Delivery, Verdict)>>,
{
    let database: Database = queue.database().clone();
    let mut writes = database.wakeups().outbox_writes();
    let mine = database.wakeups().get(&Topic::Queue(channel.clone()));
    let notify = database.queue_notify_channel();
    let mut backoff = Backoff::new(options.max_backoff);
    while !shutdown.requested() {
        writes.borrow_and_update();
        let run = batch();
        let (queue_in_pass, channel_in_pass, notify, max) = (
            queue.clone(),
            channel.clone(),
            notify.clone(),
            options.batch_size,
        );
        let passed = database
            .write_as(WriteKind::Pass, move |tx: &mut Tx| {
                Box::pin(async move {
                    let mut read = queue_in_pass
                        .take_in(tx.conn(), &channel_in_pass, max)
                        .await?;
                    let taken = std::mem::take(&mut read.deliveries);
                    if taken.is_empty() {
                        // Rows set aside as dead letters (and the failure replies that tell
                        // their sagas) are kept even when nothing else was taken.
                        return Ok(match read.set_aside {
                            0 => Finish::Rollback(Pass::Empty),
                            _ => Finish::Commit(Pass::SetAside(read.replied_to)),
                        });
                    }
                    let messages = taken.iter().map(|d| d.message.clone()).collect();
                    let Some((done, mut destinations)) = run(tx, messages).await? else {
                        return Ok(Finish::Rollback(Pass::Fallback));
                    };
                    destinations.extend(read.replied_to);
                    destinations.sort_unstable();
                    destinations.dedup();
                    // Consumers in other processes (PostgreSQL): delivered by the commit.
                    let channels: Vec<&str> = destinations.iter().map(String::as_str).collect();
                    sql::queue::notify(tx.conn(), &notify, &channels).await?;
                    Ok(Finish::Commit(Pass::Handled(
                        taken.len(),
                        done,
                        destinations,
                    )))
                })
            })
            .await;
        let stop = match passed {
            Ok(Pass::Handled(count, done, destinations)) => {
                backoff.reset();
                // Wake exactly the consumers that have work now.
                database.wakeups().wake_channels(&destinations);
                after(done);
                tracing::trace!(%channel, count, "handled in place");
                false
            }
            Ok(Pass::SetAside(channels)) => {
                database.wakeups().wake_channels(&channels);
                false
            }
            Ok(Pass::Empty) => {
                tokio::select! {
                    () = mine.notified() => false,
                    _ = writes.changed() => false,
                    () = tokio::time::sleep(options.poll_interval) => false,
                    () = shutdown.clone().stopped() => true,
                }
            }
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

/// The orchestrator's reply consumer, in place: a pass loads the batch's sagas, plans their
/// transitions and writes them with multi-row statements.
pub(crate) async fn reply_loop<C, Fut>(
    orchestrator: SharedOrchestrator,
    queue: SqlTransport,
    fallback: Consumer<C>,
    options: Arc<RuntimeOptions>,
    shutdown: Shutdown,
) where
    C: FnMut(Vec<Delivery>) -> Fut,
    Fut: std::future::Future<Output = Vec<(Delivery, Verdict)>>,
{
    let channel = orchestrator.reply_channel().to_owned();
    let batch = || -> Batch<_> {
        let orchestrator = orchestrator.clone();
        Box::new(move |tx, messages| {
            Box::pin(async move {
                let records =
                    sql::instances::load_many(tx.conn(), &reply_saga_ids(&messages)).await?;
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
                Ok(Some((plan.planned, destinations)))
            })
        })
    };
    let after = |planned: Vec<saga_core::orchestrator::PlannedReply>| {
        for reply in &planned {
            orchestrator.committed(reply);
        }
    };
    pass_loop(channel, queue, fallback, options, shutdown, batch, after).await;
}

/// A participant's command consumer, in place.
pub(crate) async fn command_loop<C, Fut>(
    participant: Arc<dyn Commands>,
    queue: SqlTransport,
    fallback: Consumer<C>,
    options: Arc<RuntimeOptions>,
    shutdown: Shutdown,
) where
    C: FnMut(Vec<Delivery>) -> Fut,
    Fut: std::future::Future<Output = Vec<(Delivery, Verdict)>>,
{
    let channel = participant.channel().to_owned();
    let system = queue.system();
    let batch = || -> Batch<Vec<CommandOutcome>> {
        let participant = participant.clone();
        Box::new(move |tx, messages| {
            Box::pin(async move {
                let ran = commands::run_in(tx, participant.as_ref(), &messages, true, system);
                Ok(match ran.await? {
                    Ran::Handled {
                        outcomes,
                        destinations,
                    } => Some((outcomes, destinations)),
                    Ran::Retry(_) => None,
                })
            })
        })
    };
    let after = |outcomes: Vec<CommandOutcome>| {
        for outcome in &outcomes {
            outcome.record(participant.channel());
        }
    };
    pass_loop(channel, queue, fallback, options, shutdown, batch, after).await;
}
