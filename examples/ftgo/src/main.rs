//! `cargo run -p ftgo`: the FTGO order-creation demo, all four services in one process.
//!
//! Places sample orders covering every CreateOrderSaga outcome, runs the sagas to their
//! terminal states, and prints a table of what happened.

use std::process::ExitCode;

use ftgo::messages::LineItem;
use ftgo::system::{BLOCKED_CONSUMER, CLOSED_RESTAURANT, FtgoSystem};
use saga_core::engine::HistoryEvent;
use saga_core::memory::InMemoryTransport;
use saga_core::ports::SagaStore;
use saga_core::{SagaId, SagaStatus};

struct Sample {
    label: &'static str,
    consumer_id: i64,
    restaurant_id: i64,
    total: i64,
    expected: SagaStatus,
}

const SAMPLES: [Sample; 4] = [
    Sample {
        label: "approved",
        consumer_id: 1,
        restaurant_id: 1,
        total: 2_450,
        expected: SagaStatus::Completed,
    },
    Sample {
        label: "consumer invalid",
        consumer_id: BLOCKED_CONSUMER,
        restaurant_id: 1,
        total: 1_200,
        expected: SagaStatus::Compensated,
    },
    Sample {
        label: "kitchen refuses",
        consumer_id: 1,
        restaurant_id: CLOSED_RESTAURANT,
        total: 3_100,
        expected: SagaStatus::Compensated,
    },
    Sample {
        label: "card declined",
        consumer_id: 1,
        restaurant_id: 1,
        total: 25_000,
        expected: SagaStatus::Compensated,
    },
];

struct Row {
    order_id: i64,
    label: &'static str,
    status: SagaStatus,
    expected: SagaStatus,
    order_state: String,
    ticket_state: String,
    steps: Vec<String>,
    compensations: Vec<String>,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    match run().await {
        Ok(rows) => {
            print_table(&rows);
            if rows.iter().all(|r| r.status == r.expected) {
                ExitCode::SUCCESS
            } else {
                tracing::error!("some sagas did not reach their expected outcome");
                ExitCode::FAILURE
            }
        }
        Err(err) => {
            tracing::error!(error = %err, "demo failed");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<Vec<Row>, Box<dyn std::error::Error>> {
    let system = FtgoSystem::new(InMemoryTransport::new());
    let mut placed: Vec<(i64, &Sample, SagaId)> = Vec::new();
    for (index, sample) in SAMPLES.iter().enumerate() {
        let order_id = 1001 + i64::try_from(index)?;
        let items = vec![LineItem {
            menu_item_id: "chicken-vindaloo".to_owned(),
            quantity: 2,
        }];
        let saga_id = system
            .place_order(
                order_id,
                sample.consumer_id,
                sample.restaurant_id,
                items,
                sample.total,
            )
            .await?;
        tracing::info!(order_id, %saga_id, "order placed");
        placed.push((order_id, sample, saga_id));
    }
    system.run_until_idle().await?;

    let mut rows = Vec::new();
    for (order_id, sample, saga_id) in placed {
        let history = system
            .runtime
            .orchestrator()
            .store()
            .history(saga_id)
            .await?;
        let mut steps = Vec::new();
        let mut compensations = Vec::new();
        for record in history {
            match record.event {
                HistoryEvent::StepSucceeded { step } => steps.push(step),
                HistoryEvent::StepFailed { step, reason } => {
                    steps.push(format!("{step} ✗ ({reason})"));
                }
                HistoryEvent::StepCompensated { step } => compensations.push(step),
                _ => {}
            }
        }
        let order_state = system
            .orders
            .lock()
            .await
            .states
            .get(&order_id)
            .map_or("-".to_owned(), |s| format!("{s:?}"));
        let ticket_state = system
            .kitchen
            .lock()
            .await
            .tickets
            .get(&order_id)
            .map_or("-".to_owned(), |s| format!("{s:?}"));
        rows.push(Row {
            order_id,
            label: sample.label,
            status: system.status(saga_id).await?,
            expected: sample.expected,
            order_state,
            ticket_state,
            steps,
            compensations,
        });
    }
    Ok(rows)
}

#[allow(clippy::print_stdout)]
fn print_table(rows: &[Row]) {
    println!(
        "{:<6} {:<17} {:<12} {:<16} {:<19}",
        "order", "scenario", "saga", "order state", "ticket state"
    );
    println!("{}", "-".repeat(74));
    for row in rows {
        let mark = if row.status == row.expected {
            ""
        } else {
            " (unexpected!)"
        };
        println!(
            "{:<6} {:<17} {:<12} {:<16} {:<19}",
            row.order_id,
            row.label,
            format!("{}{mark}", row.status),
            row.order_state,
            row.ticket_state,
        );
        println!("       steps:         {}", row.steps.join(" → "));
        if !row.compensations.is_empty() {
            println!("       compensations: {}", row.compensations.join(" → "));
        }
    }
}
