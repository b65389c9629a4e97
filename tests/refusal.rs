//! What a refusal does to a handler's own writes, on both backends and in memory.
//!
//! - `HandlerError::refused`: the handler's writes roll back to the savepoint taken before it
//!   ran; the command's dedup record and its failure reply commit, so the saga compensates.
//! - `HandlerError::refused_keeping_writes`: the writes commit with the failure reply.
//! - A refusal after a statement failed (on PostgreSQL that aborts the transaction) still
//!   commits the failure reply: rolling back to the savepoint repairs the transaction.
//!
//! The sagas start in one transaction, so their commands reach the participant in batches that
//! mix accepted and refused commands: each refusal undoes only its own handler's writes.
//! The handlers are async closures (`Participant::handle_async`).

use std::sync::Arc;
use std::time::Duration;

use saga_core::memory::{InMemoryRuntime, InMemoryStore, InMemoryTransport};
use saga_core::orchestrator::Orchestrator;
use saga_core::participant::{HandlerError, Participant};
use saga_core::{Command, Reply, SagaId, SagaStatus, saga};
use saga_store::{SagaRuntime, SqlSagaStore, SqlTransport, Tx, on_backend, start_saga_in};
use saga_tests::harness::{test_runtime_options, test_transport_options};
use saga_tests::testdb::{Backend, TestDb, execute, scalar};
use serde::{Deserialize, Serialize};
use sqlx::query;

const LEDGER: &str = "ledger";
const REPLIES: &str = "ledger.replies";

/// How the charge handler answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
enum Verdict {
    /// Charges.
    Accept,
    /// Records the attempt, then refuses: the attempt is undone.
    Refuse,
    /// Records the attempt, then refuses keeping it.
    RefuseKeeping,
    /// Records the attempt, runs a statement that fails, then refuses.
    RefuseAfterFailedStatement,
}

const VERDICTS: [Verdict; 4] = [
    Verdict::Accept,
    Verdict::Refuse,
    Verdict::RefuseKeeping,
    Verdict::RefuseAfterFailedStatement,
];

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Purchase {
    id: i64,
    verdict: Verdict,
}

/// Hold the amount (compensated by `Release`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Command)]
#[command(channel = "ledger", reply = Done)]
struct Hold {
    id: i64,
}

/// Undo the hold.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Command)]
#[command(channel = "ledger", reply = Done)]
struct Release {
    id: i64,
}

/// Charge (the pivot): records an attempt, then answers by the verdict.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Command)]
#[command(channel = "ledger", reply = Done)]
struct Charge {
    id: i64,
    verdict: Verdict,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Reply)]
struct Done;

fn hold(p: &Purchase) -> Hold {
    Hold { id: p.id }
}
fn release(p: &Purchase) -> Release {
    Release { id: p.id }
}
fn charge(p: &Purchase) -> Charge {
    Charge {
        id: p.id,
        verdict: p.verdict,
    }
}

saga! {
    /// Hold, then charge.
    saga PurchaseSaga(Purchase) {
        compensatable hold { invoke: hold, compensate: release }
        pivot charge { invoke: charge }
    }
}

const TABLES: &str = "CREATE TABLE refusal_holds (id BIGINT PRIMARY KEY, state TEXT NOT NULL); \
                      CREATE TABLE refusal_attempts (id BIGINT PRIMARY KEY, verdict TEXT NOT NULL)";

async fn write(tx: &mut Tx, sql: &'static str, id: i64, text: &str) -> Result<(), sqlx::Error> {
    on_backend!(tx.conn(), |c| query(sql)
        .bind(id)
        .bind(text)
        .execute(c)
        .await
        .map(drop))
}

/// The ledger, its handlers written as async closures on the portable transaction.
fn ledger() -> Participant<Tx> {
    const HOLD: &str = "INSERT INTO refusal_holds (id, state) VALUES ($1, $2)";
    const SET_HOLD: &str = "UPDATE refusal_holds SET state = $2 WHERE id = $1";
    const ATTEMPT: &str = "INSERT INTO refusal_attempts (id, verdict) VALUES ($1, $2)";
    Participant::<Tx>::new("ledger", LEDGER)
        .handle_async::<Hold>(|tx, cmd, _| {
            Box::pin(async move {
                write(tx, HOLD, cmd.id, "HELD").await?;
                Ok(Done)
            })
        })
        .handle_async::<Release>(|tx, cmd, _| {
            Box::pin(async move {
                write(tx, SET_HOLD, cmd.id, "RELEASED").await?;
                Ok(Done)
            })
        })
        .handle_async::<Charge>(|tx, cmd, _| {
            Box::pin(async move {
                write(tx, ATTEMPT, cmd.id, &format!("{:?}", cmd.verdict)).await?;
                match cmd.verdict {
                    Verdict::Accept => {
                        write(tx, SET_HOLD, cmd.id, "CHARGED").await?;
                        Ok(Done)
                    }
                    Verdict::Refuse => Err(HandlerError::refused("card declined")),
                    Verdict::RefuseKeeping => Err(HandlerError::refused_keeping_writes(
                        "card declined; attempt recorded",
                    )),
                    Verdict::RefuseAfterFailedStatement => {
                        // The same key again: a unique violation the handler turns into a
                        // refusal (PostgreSQL has aborted the transaction by now).
                        let again = write(tx, ATTEMPT, cmd.id, "again").await;
                        assert!(again.is_err(), "the second insert violates the key");
                        Err(HandlerError::refused("duplicate attempt"))
                    }
                }
            })
        })
}

async fn refusals_on(backend: Backend) {
    let Some(db) = TestDb::open(backend, "refusal").await else {
        return;
    };
    let database = db.database.clone();
    execute(&database, TABLES)
        .await
        .expect("creates the tables");
    let store = SqlSagaStore::new(database.clone());
    let orchestrator =
        Arc::new(Orchestrator::new(Arc::new(store), REPLIES).register::<PurchaseSaga>());
    let runtime = SagaRuntime::builder(Arc::new(SqlTransport::with_options(
        database.clone(),
        test_transport_options(),
    )))
    .options(test_runtime_options())
    .orchestrator(orchestrator.clone())
    .participant(&database, ledger())
    .start()
    .await
    .expect("the runtime starts");

    // Three of each verdict, started in one transaction so their commands share batches.
    let purchases: Vec<Purchase> = (1..=12)
        .map(|id| Purchase {
            id,
            verdict: VERDICTS[(id % 4) as usize],
        })
        .collect();
    let mut tx = database.begin().await.expect("begins");
    let mut ids: Vec<SagaId> = Vec::new();
    for purchase in &purchases {
        ids.push(
            start_saga_in::<PurchaseSaga>(&orchestrator, &mut tx, purchase.clone())
                .await
                .expect("starts"),
        );
    }
    database.commit(tx).await.expect("commits");
    database.wake_relay();

    for (purchase, id) in purchases.iter().zip(&ids) {
        let record = orchestrator
            .wait(*id, Duration::from_secs(60))
            .await
            .expect("finishes");
        let expected = match purchase.verdict {
            Verdict::Accept => SagaStatus::Completed,
            _ => SagaStatus::Compensated,
        };
        assert_eq!(record.state.status, expected, "{purchase:?}");
    }
    runtime.shutdown().await;

    for purchase in &purchases {
        let id = purchase.id;
        let attempts = scalar(
            &database,
            &format!("SELECT COUNT(*) FROM refusal_attempts WHERE id = {id}"),
        )
        .await
        .expect("counts");
        let kept = matches!(purchase.verdict, Verdict::Accept | Verdict::RefuseKeeping);
        assert_eq!(attempts, i64::from(kept), "attempt row of {purchase:?}");
        let released = scalar(
            &database,
            &format!("SELECT COUNT(*) FROM refusal_holds WHERE id = {id} AND state = 'RELEASED'"),
        )
        .await
        .expect("counts");
        assert_eq!(
            released,
            i64::from(purchase.verdict != Verdict::Accept),
            "hold of {purchase:?}"
        );
    }
    // Every command, refused ones included, is recorded as received: none runs twice.
    let received = scalar(
        &database,
        "SELECT COUNT(*) FROM saga_received WHERE consumer = 'ledger'",
    )
    .await
    .expect("counts");
    assert_eq!(
        received,
        3 * 2 + 9 * 3,
        "hold + charge (+ release when refused)"
    );
    let dead = scalar(&database, "SELECT COUNT(*) FROM saga_dead_letters")
        .await
        .expect("counts");
    assert_eq!(dead, 0);
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_undoes_the_handlers_writes_unless_it_keeps_them_on_sqlite() {
    refusals_on(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_undoes_the_handlers_writes_unless_it_keeps_them_on_postgres() {
    refusals_on(Backend::Postgres).await;
}

/// The in-memory stock the in-memory runtime's participant works on.
#[derive(Clone, Debug, Default)]
struct Attempts {
    recorded: Vec<(i64, Verdict)>,
}

/// In memory, a handler's changes to its state are undone the same way: the runtime restores
/// the state it had before a refused command.
#[tokio::test]
async fn in_memory_a_refusal_undoes_the_state_change_unless_it_keeps_it() {
    let orchestrator =
        Orchestrator::new(Arc::new(InMemoryStore::new()), REPLIES).register::<PurchaseSaga>();
    let attempts = Arc::new(tokio::sync::Mutex::new(Attempts::default()));
    let participant = Participant::<Attempts>::new("ledger", LEDGER)
        .handle_fn::<Hold>(|_, _, _| Ok(Done))
        .handle_fn::<Release>(|_, _, _| Ok(Done))
        .handle_async::<Charge>(|state, cmd, _| {
            Box::pin(async move {
                state.recorded.push((cmd.id, cmd.verdict));
                match cmd.verdict {
                    Verdict::Accept => Ok(Done),
                    Verdict::RefuseKeeping => Err(HandlerError::refused_keeping_writes("kept")),
                    _ => Err(HandlerError::refused("undone")),
                }
            })
        });
    let runtime = InMemoryRuntime::new(orchestrator, InMemoryTransport::new())
        .participant(participant, attempts.clone());
    let mut ids = Vec::new();
    for (id, verdict) in [
        (1, Verdict::Accept),
        (2, Verdict::Refuse),
        (3, Verdict::RefuseKeeping),
    ] {
        ids.push(
            runtime
                .orchestrator()
                .start::<PurchaseSaga>(Purchase { id, verdict })
                .await
                .expect("starts"),
        );
    }
    runtime.run_until_idle().await.expect("runs");
    let mut statuses = Vec::new();
    for id in ids {
        statuses.push(
            runtime
                .orchestrator()
                .load(id)
                .await
                .expect("loads")
                .state
                .status,
        );
    }
    assert_eq!(
        statuses,
        [
            SagaStatus::Completed,
            SagaStatus::Compensated,
            SagaStatus::Compensated
        ]
    );
    assert_eq!(
        attempts.lock().await.recorded,
        [(1, Verdict::Accept), (3, Verdict::RefuseKeeping)]
    );
}
