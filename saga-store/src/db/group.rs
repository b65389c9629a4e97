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
//!
//! On SQLite the one writer runs, by default, on a thread of its own pinned to one core
//! together with its connection's sqlx thread ([`SqliteWriter`](crate::SqliteWriter)): every
//! statement is a hand-off between those two threads, cheap only on one core.
//!
//! Each piece of work carries its own typed answer channel inside its closure, so results go
//! back to their callers without ever being erased to a common type.

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use futures_util::FutureExt as _;
use futures_util::future::BoxFuture;
use saga_core::ports::StoreError;
use sqlx::query;
use tokio::sync::{Mutex, mpsc, oneshot};

use crate::db::Pool;
use crate::db::backend::{Tx, TxContext};
use crate::db::wakeups::{Topic, Wakeups};
use crate::error::store_error;
use crate::on_backend;

/// How a piece of work given to [`Database::write`](crate::Database::write) ends.
#[derive(Debug)]
pub enum Finish<T> {
    /// Keep its writes; the caller gets `T` once they are committed.
    Commit(T),
    /// Undo its writes (back to its savepoint); the caller gets `T` once the transaction
    /// ended.
    Rollback(T),
}

/// What kind of work it is, for what the writer does around it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum WriteKind {
    /// Work of its own.
    Plain,
    /// Work that may write outbox rows: the relay is woken (and on PostgreSQL notified once
    /// per group) after the commit.
    Outbox,
    /// An in-place pass, which reads only inside the transaction: if undone, its caller may
    /// hear so at once, since a retry would read this transaction's own state.
    Pass,
}

/// Sends a caller its result once the fate of its work is known.
trait Answer: Send {
    /// `committed`: the outcome of the transaction its kept writes were in.
    fn send(self: Box<Self>, committed: Result<(), StoreError>);
}

/// Where a caller waits for its result: taken by whoever answers first — the work once it
/// ran, or the writer when the work could not run (or panicked).
type Slot<T> = Arc<std::sync::Mutex<Option<oneshot::Sender<Result<T, StoreError>>>>>;

fn take<T>(slot: &Slot<T>) -> Option<oneshot::Sender<Result<T, StoreError>>> {
    slot.lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .take()
}

/// A caller's result and where it waits for it.
struct Reply<T> {
    result: Result<T, StoreError>,
    to: Option<oneshot::Sender<Result<T, StoreError>>>,
}

impl<T: Send> Answer for Reply<T> {
    fn send(self: Box<Self>, committed: Result<(), StoreError>) {
        let result = match committed {
            Ok(()) => self.result,
            Err(error) => Err(error),
        };
        if let Some(to) = self.to {
            let _ = to.send(result);
        }
    }
}

/// What running a piece of work came to: whether its writes stay, and its caller's answer.
struct Ran {
    keep: bool,
    answer: Box<dyn Answer>,
}

type Run = Box<dyn for<'c> FnOnce(&'c mut Tx) -> BoxFuture<'c, Ran> + Send>;

/// One caller's work, waiting for a writer.
pub(crate) struct Work {
    run: Run,
    /// Answers the caller with an error when the work cannot run or panicked.
    fail: Box<dyn FnOnce(StoreError) + Send>,
    kind: WriteKind,
}

impl Work {
    /// Wraps `work` (run with the transaction as a `C`) and the channel its result comes on.
    pub(crate) fn new<C, T, F>(
        work: F,
        kind: WriteKind,
    ) -> (Self, oneshot::Receiver<Result<T, StoreError>>)
    where
        C: TxContext,
        T: Send + 'static,
        F: for<'c> FnOnce(&'c mut C) -> BoxFuture<'c, Result<Finish<T>, StoreError>>
            + Send
            + 'static,
    {
        let (to, answer) = oneshot::channel();
        let slot: Slot<T> = Arc::new(std::sync::Mutex::new(Some(to)));
        let for_fail = slot.clone();
        let fail = Box::new(move |error| {
            if let Some(to) = take(&for_fail) {
                let _ = to.send(Err(error));
            }
        });
        // The work runs in its caller's span, though on a writer task: a saga started in it
        // joins the caller's trace.
        let span = tracing::Span::current();
        let run: Run = Box::new(move |tx| {
            Box::pin(tracing::Instrument::instrument(
                async move {
                    let (keep, result) = match C::from_tx(tx) {
                        None => (
                            false,
                            Err(StoreError::Bug {
                                what: "the work asks for another backend's transaction",
                            }),
                        ),
                        Some(context) => match work(context).await {
                            Ok(Finish::Commit(value)) => (true, Ok(value)),
                            Ok(Finish::Rollback(value)) => (false, Ok(value)),
                            Err(error) => (false, Err(error)),
                        },
                    };
                    Ran {
                        keep,
                        answer: Box::new(Reply {
                            result,
                            to: take(&slot),
                        }),
                    }
                },
                span,
            ))
        });
        (Self { run, fail, kind }, answer)
    }
}

/// A CPU core a SQLite writer is pinned to (see [`SqliteWriter`](crate::SqliteWriter)).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Core(usize);

impl Core {
    /// `core`, or the next in turn from the last core the process may use backwards, so
    /// the writers of several databases spread over the cores.
    pub(crate) fn pick(core: Option<usize>) -> Self {
        static TAKEN: AtomicUsize = AtomicUsize::new(0);
        if let Some(core) = core {
            return Self(core);
        }
        let cores = core_affinity::get_core_ids().unwrap_or_default();
        let turn = TAKEN.fetch_add(1, Ordering::Relaxed);
        match cores.len() {
            0 => Self(0),
            n => Self(cores[n - 1 - turn % n].id),
        }
    }
}

/// What a writer needs of its database (not the [`Database`](crate::Database) itself, which
/// owns the writers' channel: holding it would keep the writers alive forever).
pub(crate) struct WriterContext {
    pub(crate) pool: Pool,
    /// Run the one writer on a thread of its own pinned to this core (its pool's connection,
    /// opened from that thread, starts its sqlx thread there too: a thread inherits its
    /// parent's core).
    pub(crate) core: Option<Core>,
    pub(crate) commits: Arc<AtomicU64>,
    pub(crate) wakeups: Arc<Wakeups>,
    pub(crate) outbox_channel: String,
    /// The database's name, for metrics.
    pub(crate) name: String,
    pub(crate) max_batch: usize,
    /// How many writer tasks share the work.
    pub(crate) writers: usize,
}

/// Starts the writer tasks of `context`; returns where to send work.
pub(crate) fn spawn_writers(context: WriterContext) -> mpsc::Sender<Work> {
    let (sender, receiver) = mpsc::channel::<Work>(4096);
    let receiver = Arc::new(Mutex::new(receiver));
    let writers = context.writers.max(1);
    let context = Arc::new(context);
    if let Some(core) = context.core {
        match spawn_pinned(core, context.clone(), receiver.clone()) {
            Ok(()) => return sender,
            Err(err) => {
                tracing::warn!(error = %err, "cannot start the SQLite writer's thread; it runs on the async runtime");
            }
        }
    }
    for _ in 0..writers {
        tokio::spawn(writer_loop(context.clone(), receiver.clone()));
    }
    sender
}

/// Runs the writer on a thread of its own, pinned to `core`, with a runtime of its own; it
/// ends when every sender of work is gone (the database dropped).
fn spawn_pinned(
    core: Core,
    context: Arc<WriterContext>,
    receiver: Arc<Mutex<mpsc::Receiver<Work>>>,
) -> std::io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name(format!("saga-writer-{}", context.name))
        .spawn(move || {
            if core_affinity::set_for_current(core_affinity::CoreId { id: core.0 }) {
                tracing::debug!(database = %context.name, core = core.0, "SQLite writer pinned");
            } else {
                tracing::warn!(database = %context.name, core = core.0, "cannot pin the SQLite writer to its core; it runs unpinned");
            }
            runtime.block_on(writer_loop(context, receiver));
        })?;
    Ok(())
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

/// Runs one piece of work inside `tx`; `None` (its caller told) if it panicked, which undoes
/// its writes.
async fn run_work(work: Work, tx: &mut Tx) -> Option<(Ran, WriteKind)> {
    let Work { run, fail, kind } = work;
    match AssertUnwindSafe(run(tx)).catch_unwind().await {
        Ok(ran) => Some((ran, kind)),
        Err(_) => {
            fail(StoreError::Bug {
                what: "the work panicked; its writes were undone",
            });
            None
        }
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
    // Give tasks woken by the work just run a moment to hand in theirs. (Tasks on other
    // threads — a pinned writer's case — often miss it and wait for the next transaction:
    // measured, waiting up to 150 µs for them made one commit of 1.3 a saga at one in flight,
    // but no saga faster.)
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

/// The invariant of one pass, per transaction:
///
/// 1. begin; run the first piece of work without a savepoint — if it does not keep its
///    writes, roll back and start over with the next;
/// 2. run every further piece in a savepoint of its own; one that does not keep its writes
///    is rolled back to its savepoint and its caller answered after the transaction ends
///    (at once for an in-place pass);
/// 3. a failure of the transaction itself (a savepoint statement failing) rolls everything
///    back and fails every kept piece;
/// 4. commit, then answer the kept pieces with the commit's outcome.
async fn run_batch(
    context: &WriterContext,
    batch: Vec<Work>,
    receiver: Option<&Mutex<mpsc::Receiver<Work>>>,
) {
    let mut pending: VecDeque<Work> = batch.into();
    while let Some(first) = pending.pop_front() {
        let began = std::time::Instant::now();
        let mut tx = match context.pool.begin().await {
            Ok(tx) => tx,
            Err(err) => {
                let error = store_error(err);
                for work in std::iter::once(first).chain(pending) {
                    (work.fail)(error.clone());
                }
                return;
            }
        };
        let Some((ran, kind)) = run_work(first, &mut tx).await else {
            let _ = tx.rollback().await;
            continue;
        };
        let mut wake_relay = kind == WriteKind::Outbox;
        if !ran.keep {
            let _ = tx.rollback().await;
            ran.answer.send(Ok(()));
            continue;
        }
        let mut kept = vec![ran.answer];
        let mut taken = 1;
        let mut undone: Vec<Box<dyn Answer>> = Vec::new();
        let mut broken: Option<StoreError> = None;
        while let Some(work) = more_work(context, &mut pending, receiver, taken).await {
            taken += 1;
            let ran = match run_in_savepoint(work, &mut tx).await {
                Ok(ran) => ran,
                Err(err) => {
                    broken = Some(store_error(err));
                    break;
                }
            };
            let Some((ran, kind)) = ran else { continue };
            if ran.keep {
                wake_relay |= kind == WriteKind::Outbox;
                kept.push(ran.answer);
            } else if kind == WriteKind::Pass {
                ran.answer.send(Ok(()));
            } else {
                // Its caller hears once the transaction ended, so that a retry (say, after a
                // conflict) reads what this transaction committed instead of joining it.
                undone.push(ran.answer);
            }
        }
        if let Some(error) = broken {
            // The transaction is unusable: nothing in it commits.
            let _ = tx.rollback().await;
            for answer in kept {
                answer.send(Err(error.clone()));
            }
            for work in pending.drain(..) {
                (work.fail)(error.clone());
            }
            for answer in undone {
                answer.send(Ok(()));
            }
            return;
        }
        commit(context, tx, kept, wake_relay, began).await;
        for answer in undone {
            answer.send(Ok(()));
        }
    }
}

/// Runs a piece of work inside a savepoint of its own, released if it keeps its writes and
/// rolled back to if not (or if it panicked: `None`). An error here (not the work's own)
/// means the transaction is broken.
async fn run_in_savepoint(
    work: Work,
    tx: &mut Tx,
) -> Result<Option<(Ran, WriteKind)>, sqlx::Error> {
    on_backend!(tx.conn(), |c| query("SAVEPOINT saga_work")
        .execute(c)
        .await
        .map(drop))?;
    let ran = run_work(work, tx).await;
    if !ran.as_ref().is_some_and(|(ran, _)| ran.keep) {
        on_backend!(tx.conn(), |c| query("ROLLBACK TO SAVEPOINT saga_work")
            .execute(c)
            .await
            .map(drop))?;
    }
    on_backend!(tx.conn(), |c| query("RELEASE SAVEPOINT saga_work")
        .execute(c)
        .await
        .map(drop))?;
    Ok(ran)
}

/// Commits a group and tells every caller in it.
async fn commit(
    context: &WriterContext,
    mut tx: Tx,
    kept: Vec<Box<dyn Answer>>,
    wake_relay: bool,
    began: std::time::Instant,
) {
    if wake_relay && let Tx::Postgres(pg) = &mut tx {
        // One notification for the whole group, delivered by the commit.
        let notified = query("SELECT pg_notify($1, '')")
            .bind(&context.outbox_channel)
            .execute(&mut **pg)
            .await;
        if let Err(err) = notified {
            tracing::debug!(error = %err, "outbox notification failed; the relay polls");
        }
    }
    let committing = std::time::Instant::now();
    match tx.commit().await {
        Ok(()) => {
            context.commits.fetch_add(1, Ordering::Relaxed);
            saga_core::telemetry::group_committed(
                &context.name,
                kept.len(),
                began.elapsed(),
                committing.elapsed(),
            );
            if wake_relay {
                context.wakeups.wake(&Topic::Outbox);
            }
            for answer in kept {
                answer.send(Ok(()));
            }
        }
        Err(err) => {
            let error = store_error(err);
            tracing::warn!(%error, work = kept.len(), "group commit failed");
            for answer in kept {
                answer.send(Err(error.clone()));
            }
        }
    }
}
