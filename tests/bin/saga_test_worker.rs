//! The child process of the crash tests: runs PaymentSaga's orchestrator and the ledger
//! participant on a test database until it is killed (or stopped with Ctrl-C).

use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use saga_core::orchestrator::Orchestrator;
use saga_store::{RuntimeOptions, SagaRuntime, SqlSagaStore, SqlTransport, SqlTransportOptions};
use saga_tests::payment::{Ledger, PaymentSaga, REPLIES, ledger_participant};
use saga_tests::testdb::TestDb;

/// Runs PaymentSaga's workers on a test database.
#[derive(Debug, Parser)]
struct Args {
    /// The database URL.
    #[arg(long)]
    url: String,
    /// The PostgreSQL schema.
    #[arg(long)]
    schema: Option<String>,
    /// A pause inside every ledger handler, in milliseconds.
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
    /// The queue lease, in milliseconds.
    #[arg(long, default_value_t = 1_000)]
    lease_ms: u64,
    /// Handle messages in place (the queue is in the same database, or with
    /// `--queue-schema` beside it).
    #[arg(long)]
    in_place: bool,
    /// The queue's PostgreSQL schema, when it is not `--schema` (co-located, with
    /// `--in-place`).
    #[arg(long)]
    queue_schema: Option<String>,
    /// How long its outbox relay holds its lease between renewals, in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    relay_lease_ms: u64,
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let database = TestDb::reopen(&args.url, args.schema.as_deref()).await;
    let queue = match &args.queue_schema {
        Some(schema) => TestDb::reopen(&args.url, Some(schema)).await,
        None => database.clone(),
    };
    let transport = SqlTransport::with_options(
        queue.clone(),
        SqlTransportOptions {
            lease: Duration::from_millis(args.lease_ms),
            poll_interval: Duration::from_millis(100),
            ..SqlTransportOptions::default()
        },
    );
    let store = match (args.in_place, &args.queue_schema) {
        (true, None) => SqlSagaStore::in_place(database.clone()),
        (true, Some(_)) => SqlSagaStore::co_located(database.clone(), &transport)
            .expect("the queue's schema is beside the database's"),
        (false, _) => SqlSagaStore::new(database.clone()),
    };
    let orchestrator =
        Arc::new(Orchestrator::new(Arc::new(store), REPLIES).register::<PaymentSaga>());
    let ledger = Ledger {
        delay: Duration::from_millis(args.delay_ms),
    };
    let builder = SagaRuntime::builder(Arc::new(transport.clone()));
    let builder = match args.in_place {
        true => builder.in_place(transport),
        false => builder,
    };
    let runtime = builder
        .options(RuntimeOptions {
            poll_interval: Duration::from_millis(100),
            relay_lease: Duration::from_millis(args.relay_lease_ms),
            ..RuntimeOptions::default()
        })
        .orchestrator(orchestrator)
        .participant(&database, ledger_participant(ledger))
        .start()
        .await
        .expect("the runtime starts");
    let _ = tokio::signal::ctrl_c().await;
    runtime.shutdown().await;
}
