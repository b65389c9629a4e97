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

#[derive(Serialize, Deserialize, Reply)]
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

/// The stock service: one row per item, `reserved` never above `on_hand`.
fn stock() -> Participant<Tx> {
    const TAKE: &str =
        "UPDATE stock SET reserved = reserved + 1 WHERE item = $1 AND reserved < on_hand";
    const GIVE_BACK: &str = "UPDATE stock SET reserved = reserved - 1 WHERE item = $1";
    Participant::<Tx>::new("stock", "stock")
        .handle_async::<Reserve>(|tx, cmd, _| {
            Box::pin(async move {
                if update(tx, TAKE, &cmd.0).await? == 0 {
                    return Err(HandlerError::refused(format!("{} is sold out", cmd.0)));
                }
                Ok(Done)
            })
        })
        .handle_async::<Unreserve>(|tx, cmd, _| {
            Box::pin(async move {
                update(tx, GIVE_BACK, &cmd.0).await?;
                Ok(Done)
            })
        })
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

async fn update(tx: &mut Tx, sql: &'static str, item: &str) -> Result<u64, sqlx::Error> {
    on_backend!(tx.conn(), |c| sqlx::query(sql)
        .bind(item)
        .execute(c)
        .await
        .map(|done| done.rows_affected()))
}

/// Runs three purchases on the database at `url`; each one's status and timeline.
async fn run(url: &str) -> Result<Vec<(SagaStatus, String)>, Box<dyn Error>> {
    let db = Database::connect(url).await?; // creates the saga tables
    let mut tx = db.begin().await?;
    on_backend!(tx.conn(), |c| sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS stock (item TEXT PRIMARY KEY, on_hand INT, reserved INT); \
         INSERT INTO stock VALUES ('lamp', 1, 0) ON CONFLICT DO NOTHING"
    )
    .execute(c)
    .await
    .map(drop))?;
    db.commit(tx).await?;

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
