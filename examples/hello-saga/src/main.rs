//! hello-saga: the smallest complete saga, to copy and start from.
//!
//! A purchase reserves an item (compensatable: undone by `Unreserve`), then charges the card
//! (the pivot). Two participants, stock and payments, share one embedded SQLite file with the
//! orchestrator. A declined card or a sold-out item turns the saga back.
//!
//! `cargo run -p hello-saga`

use std::error::Error;
use std::io::Write as _;
use std::sync::Arc;
use std::time::Duration;

use saga_core::message::CommandMeta;
use saga_core::orchestrator::Orchestrator;
use saga_core::participant::{HandlerError, Participant};
use saga_core::ports::SagaStore;
use saga_core::timeline::TimelineSummary;
use saga_core::{Command, Reply, SagaStatus, saga};
use saga_store::{Database, SagaRuntime, SqlSagaStore, SqlTransport, Tx, on_backend};
use serde::{Deserialize, Serialize};

/// The saga's data.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Purchase {
    item: String,
    card: String,
}

/// Reserve one of the item (undone by `Unreserve`).
#[derive(Serialize, Deserialize, Command)]
#[command(channel = "stock", reply = Done)]
struct Reserve(String);

#[derive(Serialize, Deserialize, Command)]
#[command(channel = "stock", reply = Done)]
struct Unreserve(String);

/// Charge the card.
#[derive(Serialize, Deserialize, Command)]
#[command(channel = "payments", reply = Done)]
struct Charge(String);

#[derive(Debug, Serialize, Deserialize, Reply)]
struct Done;

fn reserve(p: &Purchase) -> Reserve {
    Reserve(p.item.clone())
}
fn unreserve(p: &Purchase) -> Unreserve {
    Unreserve(p.item.clone())
}
fn charge(p: &Purchase) -> Charge {
    Charge(p.card.clone())
}

saga! {
    /// Reserve the item, then charge the card; a refusal releases the item again.
    saga PurchaseSaga(Purchase) {
        compensatable reserve { invoke: reserve, compensate: unreserve }
        pivot         charge  { invoke: charge }
    }
}

/// The stock service: one row per item, `reserved` never above `on_hand`, and one row per
/// saga holding a reservation. The saga may send a command again (its reply was lost) or
/// undo a reservation that never happened (it timed out first), so both handlers look at
/// that row: reserve once per saga, give back only what this saga holds.
fn stock() -> Participant<Tx> {
    const TAKE: &str =
        "UPDATE stock SET reserved = reserved + 1 WHERE item = $1 AND reserved < on_hand";
    const HOLD: &str = "INSERT INTO reservations (saga_id, item) VALUES ($1, $2)";
    const RELEASE: &str = "DELETE FROM reservations WHERE saga_id = $1";
    const GIVE_BACK: &str = "UPDATE stock SET reserved = reserved - 1 WHERE item = $1";
    Participant::<Tx>::new("stock", "stock")
        .handle_async::<Reserve>(|tx, cmd, meta| {
            Box::pin(async move {
                let saga = saga_of(meta)?;
                if holds(tx, &saga).await? {
                    return Ok(Done); // reserved before
                }
                if execute(tx, TAKE, &[&cmd.0]).await? == 0 {
                    return Err(HandlerError::refused(format!("{} is sold out", cmd.0)));
                }
                execute(tx, HOLD, &[&saga, &cmd.0]).await?;
                Ok(Done)
            })
        })
        .handle_async::<Unreserve>(|tx, cmd, meta| {
            Box::pin(async move {
                if execute(tx, RELEASE, &[&saga_of(meta)?]).await? == 1 {
                    execute(tx, GIVE_BACK, &[&cmd.0]).await?;
                }
                Ok(Done)
            })
        })
}

/// The saga a command comes from, as text.
fn saga_of(meta: &CommandMeta) -> Result<String, HandlerError> {
    meta.saga_id
        .map(|id| id.to_string())
        .ok_or_else(|| HandlerError::refused("a reservation is made by a saga"))
}

/// A test card the payments service declines, and one it accepts.
const DECLINED: &str = "4000-0000-0000-0002";
const GOOD: &str = "4242-4242-4242-4242";

/// The payments service: declines one test card.
fn payments() -> Participant<Tx> {
    Participant::<Tx>::new("payments", "payments").handle_async::<Charge>(|_tx, cmd, _| {
        Box::pin(async move {
            match cmd.0.as_str() {
                DECLINED => Err(HandlerError::refused("card declined")),
                _ => Ok(Done),
            }
        })
    })
}

/// Runs `sql` with `binds`; the rows it changed.
async fn execute(tx: &mut Tx, sql: &'static str, binds: &[&str]) -> Result<u64, sqlx::Error> {
    on_backend!(tx.conn(), |c| {
        let mut query = sqlx::query(sql);
        for value in binds {
            query = query.bind(*value);
        }
        query.execute(c).await.map(|done| done.rows_affected())
    })
}

/// Whether saga `saga` holds a reservation.
async fn holds(tx: &mut Tx, saga: &str) -> Result<bool, sqlx::Error> {
    on_backend!(tx.conn(), |c| {
        sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM reservations WHERE saga_id = $1")
            .bind(saga)
            .fetch_one(c)
            .await
            .map(|held| held > 0)
    })
}

/// Opens the database at `url` with the saga tables, the stock (one lamp) and the
/// reservations.
async fn open(url: &str) -> Result<Database, Box<dyn Error>> {
    let db = Database::connect(url).await?; // creates the saga tables
    let mut tx = db.begin().await?;
    on_backend!(tx.conn(), |c| sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS stock (item TEXT PRIMARY KEY, on_hand INT, reserved INT); \
         CREATE TABLE IF NOT EXISTS reservations (saga_id TEXT PRIMARY KEY, item TEXT); \
         INSERT INTO stock VALUES ('lamp', 1, 0) ON CONFLICT DO NOTHING"
    )
    .execute(c)
    .await
    .map(drop))?;
    db.commit(tx).await?;
    Ok(db)
}

/// Runs three purchases on the database at `url`; each one's status and timeline.
async fn run(url: &str) -> Result<Vec<(SagaStatus, String)>, Box<dyn Error>> {
    let db = open(url).await?;
    let store = Arc::new(SqlSagaStore::new(db.clone()));
    let orchestrator =
        Arc::new(Orchestrator::new(store.clone(), "purchases.replies").register::<PurchaseSaga>());
    let runtime = SagaRuntime::builder(Arc::new(SqlTransport::new(db.clone())))
        .orchestrator(orchestrator.clone())
        .participant(&db, stock())
        .participant(&db, payments())
        .start()
        .await?;

    let mut outcomes = Vec::new();
    // One lamp in stock: declined (undone), bought, then sold out.
    for card in [DECLINED, GOOD, GOOD] {
        let purchase = Purchase {
            item: "lamp".into(),
            card: card.into(),
        };
        let saga_id = orchestrator.start::<PurchaseSaga>(purchase).await?;
        let record = orchestrator.wait(saga_id, Duration::from_secs(30)).await?;
        let history = orchestrator.store().history(saga_id).await?;
        let timeline = TimelineSummary::of(history.iter().map(|h| &h.event));
        outcomes.push((record.state.status, timeline.to_string()));
    }
    runtime.shutdown().await;
    db.close().await;
    Ok(outcomes)
}

/// A fresh SQLite file in the temp directory.
fn fresh_database(name: &str) -> std::io::Result<(std::path::PathBuf, String)> {
    let dir = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let url = format!("sqlite://{}?mode=rwc", dir.join("hello.db").display());
    Ok((dir, url))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let (dir, url) = fresh_database("hello-saga")?;
    let mut stdout = std::io::stdout().lock();
    for (status, timeline) in run(&url).await? {
        writeln!(stdout, "{status}: {timeline}")?;
    }
    std::fs::remove_dir_all(dir)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use saga_core::explore::Exploration;
    use saga_core::testing::command_message;
    use saga_core::{Command, Message, SagaId};
    use saga_store::Database;

    use super::{Charge, Done, GOOD, Purchase, PurchaseSaga, Reserve, Unreserve};

    /// Every way the stock and payments services can answer, each path checked (see
    /// `saga_core::explore`).
    #[test]
    fn every_path_of_a_purchase_keeps_the_saga_invariants() {
        let purchase = Purchase {
            item: "lamp".into(),
            card: GOOD.into(),
        };
        let report = Exploration::<PurchaseSaga>::new(purchase)
            .success::<Reserve>(Done)
            .success::<Unreserve>(Done)
            .success::<Charge>(Done)
            .check();
        assert!(report.endings.contains_key("compensated"), "{report:?}");
    }

    fn message<C: Command>(command: &C, saga: SagaId) -> Message {
        command_message(command, saga, "purchases.replies")
    }

    async fn reserved(db: &Database) -> i64 {
        let mut conn = db.acquire().await.expect("a connection");
        saga_store::on_backend!(conn.conn(), |c| {
            sqlx::query_scalar::<_, i64>("SELECT reserved FROM stock WHERE item = 'lamp'")
                .fetch_one(c)
                .await
        })
        .expect("the lamp's row")
    }

    /// A resent reservation reserves once; undoing one that never happened, or undoing twice,
    /// gives back nothing another purchase holds.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stock_commands_sent_again_change_nothing() {
        let (dir, url) = super::fresh_database("hello-saga-stock").expect("temp dir");
        let db = super::open(&url).await.expect("the database opens");
        let stock = super::stock();
        let handle = |command: Message| {
            let (db, stock) = (db.clone(), &stock);
            async move {
                let mut tx = db.begin().await.expect("a transaction");
                let dispatch = stock.dispatch(&mut tx, &command).await;
                db.commit(tx).await.expect("commit");
                dispatch.outcome()
            }
        };
        let (first, second) = (SagaId::new(), SagaId::new());
        let lamp = || "lamp".to_owned();
        assert_eq!(handle(message(&Reserve(lamp()), first)).await, "ok");
        assert_eq!(handle(message(&Reserve(lamp()), first)).await, "ok");
        assert_eq!(reserved(&db).await, 1);
        // The second purchase's reservation timed out before the stock service saw it.
        assert_eq!(handle(message(&Unreserve(lamp()), second)).await, "ok");
        assert_eq!(reserved(&db).await, 1, "the first purchase keeps its lamp");
        assert_eq!(handle(message(&Unreserve(lamp()), first)).await, "ok");
        assert_eq!(handle(message(&Unreserve(lamp()), first)).await, "ok");
        assert_eq!(reserved(&db).await, 0);
        db.close().await;
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_declined_card_and_a_sold_out_item_turn_the_saga_back() {
        let (dir, url) = super::fresh_database("hello-saga-test").expect("temp dir");
        let outcomes = super::run(&url).await.expect("runs");
        let statuses: Vec<_> = outcomes.iter().map(|o| o.0.to_string()).collect();
        assert_eq!(statuses, ["compensated", "completed", "compensated"]);
        assert!(outcomes[0].1.contains("card declined"), "{outcomes:?}");
        assert!(outcomes[2].1.contains("lamp is sold out"), "{outcomes:?}");
        let _ = std::fs::remove_dir_all(dir);
    }
}
