//! Group commit: many callers' small transactions share one database commit.
//!
//! A durable commit costs an `fsync` (hundreds of microseconds here), far more than the few
//! statements a saga step writes. [`Database::write`](crate::Database::write) hands a piece
//! of work to the database's writer tasks instead of opening a transaction of its own. A
//! writer takes every piece of work waiting (up to a batch limit) and runs them one after the
//! other inside **one** transaction — the first as the transaction's own work, each further
//! one inside a savepoint, so one that fails or asks to roll back undoes only its own
//! writes — commits once, and only then tells each caller its result. Nobody hears
//! "committed" before the commit is durable, a failed commit fails every piece of work in
//! it, and a caller whose work was undone hears so only after the transaction ended (so a
//! retry reads what it committed): the guarantees are those of one transaction each; the
//! cost is one commit per group. Under load the groups grow by themselves. With a single
//! writer (SQLite's case) work that arrives while the transaction is still open joins it —
//! for example a consumer's next in-place pass, which then sees what the transaction has
//! queued so far.

use std::any::Any as AnyValue;
use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures_util::FutureExt as _;
use futures_util::future::BoxFuture;
use saga_core::ports::StoreError;
use sqlx::{AnyPool, query};
use tokio::sync::{Mutex, mpsc, oneshot};

use crate::database::{Dialect, Topic, Tx, Wakeups};
use crate::error::store_error;

/// How a piece of work given to [`Database::write`](crate::Database::write) ends.
#[derive(Debug)]
pub enum Finish<T> {
    /// Keep its writes; the caller gets `T` once they are committed.
    Commit(T),
    /// Undo its writes (back to its savepoint); the caller gets `T` at once.
    Rollback(T),
}

type Value = Box<dyn AnyValue + Send>;
/// Where a piece of work's answer arrives.
pub(crate) type Answer = oneshot::Receiver<Result<Value, StoreError>>;
type Run =
    Box<dyn for<'c> FnOnce(&'c mut Tx) -> BoxFuture<'c, Result<Finish<Value>, StoreError>> + Send>;

/// One caller's work, waiting for a writer.
pub(crate) struct Work {
    run: Run,
    reply: oneshot::Sender<Result<Value, StoreError>>,
    /// It may write outbox rows: wake the relay after the commit.
    wakes_relay: bool,
    /// It reads only inside the transaction (a pass handling messages in place): if undone,
    /// its caller may hear so at once, since a retry would read this transaction's own
    /// state. Other undone work hears only once the transaction ended.
    reads_inside: bool,
}

impl Work {
    /// Wraps `work` and a channel for its result.
    pub(crate) fn new<T, F>(work: F, wakes_relay: bool, reads_inside: bool) -> (Self, Answer)
    where
        T: Send + 'static,
        F: for<'c> FnOnce(&'c mut Tx) -> BoxFuture<'c, Result<Finish<T>, StoreError>>
            + Send
            + 'static,
    {
        let (reply, result) = oneshot::channel();
        let run: Run = Box::new(move |tx| {
            Box::pin(async move {
                Ok(match work(tx).await? {
                    Finish::Commit(value) => Finish::Commit(Box::new(value) as Value),
                    Finish::Rollback(value) => Finish::Rollback(Box::new(value) as Value),
                })
            })
        });
        (
            Self {
                run,
                reply,
                wakes_relay,
                reads_inside,
            },
            result,
        )
    }
}

/// Turns a writer's answer back into the caller's type.
pub(crate) fn unwrap_value<T: 'static>(value: Value) -> Result<T, StoreError> {
    value
        .downcast::<T>()
        .map(|boxed| *boxed)
        .map_err(|_| StoreError::Other("group commit returned a value of another type".into()))
}

/// What a writer needs of its database (not the [`Database`](crate::Database) itself, which
/// owns the writers' channel: holding it would keep the writers alive forever).
pub(crate) struct WriterContext {
    pub(crate) pool: AnyPool,
    pub(crate) dialect: Dialect,
    pub(crate) commits: Arc<AtomicU64>,
    pub(crate) wakeups: Arc<Wakeups>,
    pub(crate) outbox_channel: String,
    pub(crate) max_batch: usize,
    /// How many writer tasks share the work.
    pub(crate) writers: usize,
}

/// Starts `writers` writer tasks on `context`; returns where to send work.
pub(crate) fn spawn_writers(context: WriterContext, writers: usize) -> mpsc::Sender<Work> {
    let (sender, receiver) = mpsc::channel::<Work>(4096);
    let receiver = Arc::new(Mutex::new(receiver));
    let context = Arc::new(context);
    for _ in 0..writers.max(1) {
        tokio::spawn(writer_loop(context.clone(), receiver.clone()));
    }
    sender
}

async fn writer_loop(context: Arc<WriterContext>, receiver: Arc<Mutex<mpsc::Receiver<Work>>>) {
    loop {
        let mut batch = Vec::new();
        {
            let mut receiver = receiver.lock().await;
            let Some(first) = receiver.recv().await else {
                return;
            };
            batch.push(first);
            while batch.len() < context.max_batch {
                match receiver.try_recv() {
                    Ok(work) => batch.push(work),
                    Err(_) => break,
                }
            }
        }
        let single = (context.writers == 1).then_some(receiver.as_ref());
        run_batch(&context, batch, single).await;
    }
}

/// A settled piece of work, waiting for the commit.
struct Settled {
    reply: oneshot::Sender<Result<Value, StoreError>>,
    value: Value,
}

/// Runs one piece of work inside `tx`, catching a panic as an error.
async fn run_work(run: Run, tx: &mut Tx) -> (bool, Result<Value, StoreError>) {
    match AssertUnwindSafe(run(tx)).catch_unwind().await {
        Ok(Ok(Finish::Commit(value))) => (true, Ok(value)),
        Ok(Ok(Finish::Rollback(value))) => (false, Ok(value)),
        Ok(Err(err)) => (false, Err(err)),
        Err(_) => (
            false,
            Err(StoreError::Other(
                "the work panicked; its writes were undone".into(),
            )),
        ),
    }
}

/// More work for the open transaction: what is left of the batch, else (with a single
/// writer) whatever arrived meanwhile — so work that follows from work in the transaction
/// (the next step of a saga, handled in place) can join it before the commit.
async fn more_work(
    context: &WriterContext,
    pending: &mut VecDeque<Work>,
    receiver: Option<&Mutex<mpsc::Receiver<Work>>>,
    taken: usize,
) -> Option<Work> {
    if let Some(work) = pending.pop_front() {
        return Some(work);
    }
    let receiver = receiver?;
    if taken >= context.max_batch {
        return None;
    }
    // Give tasks woken by the work just run a moment to hand in theirs.
    for _ in 0..10 {
        if let Ok(mut receiver) = receiver.try_lock()
            && let Ok(work) = receiver.try_recv()
        {
            return Some(work);
        }
        tokio::task::yield_now().await;
    }
    None
}

async fn run_batch(
    context: &WriterContext,
    batch: Vec<Work>,
    receiver: Option<&Mutex<mpsc::Receiver<Work>>>,
) {
    let mut pending: VecDeque<Work> = batch.into();
    // One transaction per pass; a new one only when the first work of one rolls back.
    while let Some(first) = pending.pop_front() {
        let begun = match context.dialect {
            Dialect::Sqlite => context.pool.begin_with("BEGIN IMMEDIATE").await,
            Dialect::Postgres => context.pool.begin().await,
        };
        let mut tx = match begun {
            Ok(tx) => tx,
            Err(err) => {
                let error = store_error(err);
                for work in std::iter::once(first).chain(pending) {
                    let _ = work.reply.send(Err(error.clone()));
                }
                return;
            }
        };
        // The first work needs no savepoint: if it rolls back, so does the transaction.
        let (keep, answer) = run_work(first.run, &mut tx).await;
        let value = match answer {
            Ok(value) if keep => value,
            other => {
                let _ = tx.rollback().await;
                let _ = first.reply.send(other);
                continue;
            }
        };
        let mut wake_relay = first.wakes_relay;
        let mut kept = vec![Settled {
            reply: first.reply,
            value,
        }];
        let mut taken = 1;
        let mut undone = Vec::new();
        let mut broken: Option<StoreError> = None;
        while let Some(work) = more_work(context, &mut pending, receiver, taken).await {
            taken += 1;
            let (keep, answer) = match run_in_savepoint(work.run, &mut tx).await {
                Ok(ran) => ran,
                Err(err) => {
                    let error = store_error(err);
                    let _ = work.reply.send(Err(error.clone()));
                    broken = Some(error);
                    break;
                }
            };
            match answer {
                Ok(value) if keep => {
                    wake_relay |= work.wakes_relay;
                    kept.push(Settled {
                        reply: work.reply,
                        value,
                    });
                }
                // Rolled back, or failed: nothing of it is in the transaction any more. Its
                // caller hears so once the transaction ends, so that a retry (say, after a
                // conflict) reads what this transaction committed instead of joining it —
                // unless it reads only inside the transaction (an in-place pass that found
                // nothing: it may look again, and its next pass can join this transaction).
                other if work.reads_inside => {
                    let _ = work.reply.send(other);
                }
                other => undone.push((work.reply, other)),
            }
        }
        if let Some(error) = broken {
            // The transaction is unusable: nothing in it commits.
            let _ = tx.rollback().await;
            for settled in kept {
                let _ = settled.reply.send(Err(error.clone()));
            }
            for work in pending.drain(..) {
                let _ = work.reply.send(Err(error.clone()));
            }
            for (reply, answer) in undone {
                let _ = reply.send(answer);
            }
            return;
        }
        commit(context, tx, kept, wake_relay).await;
        for (reply, answer) in undone {
            let _ = reply.send(answer);
        }
    }
}

/// Runs a piece of work inside a savepoint of its own, released if it keeps its writes and
/// rolled back to if not. An error here (not the work's own) means the transaction is broken.
async fn run_in_savepoint(
    run: Run,
    tx: &mut Tx,
) -> Result<(bool, Result<Value, StoreError>), sqlx::Error> {
    query("SAVEPOINT saga_work").execute(&mut **tx).await?;
    let (keep, answer) = run_work(run, tx).await;
    if !keep {
        query("ROLLBACK TO SAVEPOINT saga_work")
            .execute(&mut **tx)
            .await?;
    }
    query("RELEASE SAVEPOINT saga_work")
        .execute(&mut **tx)
        .await?;
    Ok((keep, answer))
}

/// Commits a group and tells every caller in it.
async fn commit(context: &WriterContext, mut tx: Tx, kept: Vec<Settled>, wake_relay: bool) {
    if wake_relay && context.dialect == Dialect::Postgres {
        // One notification for the whole group, delivered by the commit.
        notify_outbox(context, &mut tx).await;
    }
    match tx.commit().await {
        Ok(()) => {
            context.commits.fetch_add(1, Ordering::Relaxed);
            if wake_relay {
                context.wakeups.wake(&Topic::Outbox);
            }
            for settled in kept {
                let _ = settled.reply.send(Ok(settled.value));
            }
        }
        Err(err) => {
            let error = store_error(err);
            tracing::warn!(%error, work = kept.len(), "group commit failed");
            for settled in kept {
                let _ = settled.reply.send(Err(error.clone()));
            }
        }
    }
}

async fn notify_outbox(context: &WriterContext, tx: &mut Tx) {
    if let Err(err) = query("SELECT pg_notify($1, '')")
        .bind(&context.outbox_channel)
        .execute(&mut **tx)
        .await
    {
        tracing::debug!(error = %err, "outbox notification failed; the relay polls");
    }
}
