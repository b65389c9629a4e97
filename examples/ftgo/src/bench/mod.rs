//! `ftgo bench`: the real FTGO services and CreateOrderSaga under load.
//!
//! Keeps `concurrency` sagas in flight until `sagas` have finished, measures each saga from
//! the moment its order is placed to its terminal state, and reports throughput, latency
//! percentiles, messages, durable commits per saga and peak memory — next to the database's
//! raw commit rate measured in the same run, so every figure also reads as a ratio to what
//! the machine can do at all — and where each saga's time went ([`breakdown`]).

pub mod breakdown;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use saga_core::{SagaId, SagaStatus};
use saga_store::{Database, Dialect, on_backend};
use serde::Serialize;
use sqlx::AssertSqlSafe;
use tokio::sync::{Semaphore, mpsc};

use crate::app::{Ftgo, FtgoError, FtgoOptions, MESSAGES, SERVICES, SHARED, SagaObserver, Storage};
use crate::services::order::{NewLineItem, NewOrder};
use breakdown::{Breakdown, PerSaga};

/// What to run.
#[derive(Clone, Debug)]
pub struct BenchConfig {
    /// How many sagas in total.
    pub sagas: usize,
    /// How many in flight at once.
    pub concurrency: usize,
    /// The share of orders whose card is declined (so the saga compensates).
    pub decline_rate: f64,
    /// Storage and transport.
    pub options: FtgoOptions,
    /// How long each raw-commit measurement runs.
    pub raw_duration: Duration,
}

/// Latency percentiles, in milliseconds.
#[derive(Clone, Debug, Serialize)]
pub struct Latency {
    /// Mean.
    pub mean: f64,
    /// Median.
    pub p50: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
    /// The slowest saga.
    pub max: f64,
}

/// The database's raw single-row commit rate.
#[derive(Clone, Debug, Serialize)]
pub struct RawCommits {
    /// Commits per second from one client.
    pub clients_1: f64,
    /// Commits per second from four clients.
    pub clients_4: f64,
}

/// One run's figures (printed as one JSON line).
#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    /// `sqlite` or `postgres`.
    pub store: &'static str,
    /// `sql` or `nats`.
    pub transport: &'static str,
    /// `per-service` (each service on its own database, the queue on another) or
    /// `in-place` (all in one database, messages handled in place).
    pub layout: &'static str,
    /// SQLite's `synchronous` setting (`full` unless asked otherwise).
    pub sqlite_sync: &'static str,
    /// Which CreateOrderSaga ran: `parallel` (the default) or `sequential` (`--sequential`).
    pub create_order: &'static str,
    /// What each participant added to each forward command (`--service-time-ms`).
    pub service_time_ms: u64,
    /// Sagas run.
    pub sagas: usize,
    /// Sagas in flight.
    pub concurrency: usize,
    /// Share of declined cards.
    pub decline_rate: f64,
    /// Wall time, seconds.
    pub seconds: f64,
    /// Throughput.
    pub sagas_per_s: f64,
    /// Start-to-terminal latency.
    pub latency_ms: Latency,
    /// Messages sent (commands and replies, through the outboxes).
    pub messages: u64,
    /// Messages per second.
    pub messages_per_s: f64,
    /// Durable commits (write transactions) counted by the framework on every database.
    pub commits: u64,
    /// Durable commits per saga.
    pub commits_per_saga: f64,
    /// Bookkeeping commits per saga that did not wait for the disk (queue claims and
    /// acknowledgements, outbox stamps: `DatabaseOptions::relaxed_bookkeeping`).
    pub relaxed_commits_per_saga: f64,
    /// On PostgreSQL: committed transactions per saga from `pg_stat_database` (everything the
    /// database committed during the run, reads included).
    pub pg_xact_commits_per_saga: Option<f64>,
    /// Completed sagas.
    pub completed: usize,
    /// Compensated sagas.
    pub compensated: usize,
    /// Peak resident memory of this process, MiB.
    pub peak_rss_mib: f64,
    /// The raw commit rate of the same database, measured in the same run.
    pub raw_commits_per_s: RawCommits,
    /// Sagas per second divided by the one-client raw commit rate.
    pub ratio_to_raw_1: f64,
    /// Where a saga's time went (not measured with `--observe metrics`, whose recorder
    /// takes the place of the one that measures it).
    pub breakdown: Option<PerSaga>,
}

/// Why a benchmark failed.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// FTGO failed.
    #[error(transparent)]
    Ftgo(#[from] FtgoError),
    /// A query failed.
    #[error("database error: {0}")]
    Sql(#[from] sqlx::Error),
    /// The outcome was not what the load asked for.
    #[error("unexpected outcome: {0}")]
    Outcome(String),
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Single-row insert transactions from `clients` clients for `duration`; commits per second.
async fn raw_commit_rate(
    database: &Database,
    clients: usize,
    duration: Duration,
) -> Result<f64, BenchError> {
    let id = match database.dialect() {
        Dialect::Sqlite => "INTEGER PRIMARY KEY AUTOINCREMENT",
        Dialect::Postgres => "BIGSERIAL PRIMARY KEY",
    };
    let create = format!(
        "CREATE TABLE IF NOT EXISTS bench_raw (id {id}, client BIGINT NOT NULL, at BIGINT NOT NULL)"
    );
    let mut conn = database.acquire().await?;
    on_backend!(conn.conn(), |c| {
        sqlx::raw_sql(AssertSqlSafe(create.as_str()))
            .execute(c)
            .await
            .map(drop)
    })?;
    drop(conn);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for client in 0..clients {
        let database = database.clone();
        tasks.push(tokio::spawn(async move {
            let mut commits = 0u64;
            while started.elapsed() < duration {
                let mut tx = database.begin().await?;
                on_backend!(tx.conn(), |c| {
                    sqlx::query("INSERT INTO bench_raw (client, at) VALUES ($1, $2)")
                        .bind(i64::try_from(client).unwrap_or(0))
                        .bind(i64::try_from(commits).unwrap_or(0))
                        .execute(c)
                        .await
                        .map(drop)
                })?;
                tx.commit().await?;
                commits += 1;
            }
            Ok::<u64, sqlx::Error>(commits)
        }));
    }
    let mut total = 0;
    for task in tasks {
        total += task
            .await
            .map_err(|e| BenchError::Outcome(e.to_string()))??;
    }
    Ok(total as f64 / started.elapsed().as_secs_f64())
}

fn order(i: usize, decline: bool) -> NewOrder {
    NewOrder {
        // Consumer 3's card is disabled: declined at the pivot, so the saga compensates.
        consumer_id: if decline { 3 } else { 1 },
        restaurant_id: 1 + (i % 2) as i64,
        line_items: vec![NewLineItem {
            menu_item_id: if i.is_multiple_of(2) {
                "samosa"
            } else {
                "margherita"
            }
            .to_owned(),
            quantity: 1,
        }],
    }
}

/// Whether order `i` is declined, spread evenly at `rate`.
fn declined(i: usize, rate: f64) -> bool {
    let before = (i as f64 * rate).floor();
    let after = ((i + 1) as f64 * rate).floor();
    after > before
}

async fn count_rows(database: &Database, table: &'static str) -> Result<u64, BenchError> {
    let count = format!("SELECT COUNT(*) FROM {table}");
    let mut conn = database.acquire().await?;
    let n: i64 = on_backend!(conn.conn(), |c| {
        sqlx::query_scalar(AssertSqlSafe(count.as_str()))
            .fetch_one(c)
            .await
    })?;
    Ok(u64::try_from(n).unwrap_or(0))
}

async fn pg_xact_commit(database: &Database) -> Result<i64, BenchError> {
    let mut conn = database.acquire().await?;
    let commits = on_backend!(conn.conn(), |c| {
        sqlx::query_scalar(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()",
        )
        .fetch_one(c)
        .await
    })?;
    Ok(commits)
}

/// What the run loop hears of a saga.
enum Event {
    /// Its order was placed (the saga started) at this moment.
    Placed(SagaId, Instant),
    /// It reached a terminal state.
    Finished(SagaId, SagaStatus, Instant),
}

/// Runs the benchmark, reporting progress through `progress`.
pub async fn run(
    config: BenchConfig,
    mut progress: impl FnMut(&str),
) -> Result<BenchReport, BenchError> {
    let store = match config.options.storage {
        Storage::Sqlite { .. } => "sqlite",
        Storage::Postgres { .. } => "postgres",
    };
    let transport = if config.options.nats.is_some() {
        "nats"
    } else {
        "sql"
    };

    // The raw limit first, on a scratch database of the same kind and settings.
    let scratch = config
        .options
        .database("bench_raw")
        .await
        .map_err(FtgoError::from)?;
    let raw_1 = raw_commit_rate(&scratch, 1, config.raw_duration).await?;
    let raw_4 = raw_commit_rate(&scratch, 4, config.raw_duration).await?;
    scratch.close().await;
    progress(&format!(
        "raw commit rate: {raw_1:.0}/s (1 client), {raw_4:.0}/s (4 clients)"
    ));

    // Placements and finishes on one channel: a saga may finish before its placement
    // returns (a whole saga can commit with its order), and either event completes it.
    let (events, mut received) = mpsc::unbounded_channel::<Event>();
    let finished = events.clone();
    let mut options = config.options.clone();
    options.saga_observer = Some(SagaObserver(Arc::new(move |id, status| {
        let _ = finished.send(Event::Finished(id, status, Instant::now()));
    })));
    let ftgo = Arc::new(Ftgo::open(options).await?);
    let mut databases: Vec<Database> = [
        Some(ftgo.orders.database().clone()),
        Some(ftgo.consumers.database().clone()),
        Some(ftgo.kitchen.database().clone()),
        Some(ftgo.accounting.database().clone()),
        ftgo.messages.clone(),
    ]
    .into_iter()
    .flatten()
    .collect();
    // In place, everything shares one pool: count it once.
    databases.dedup_by(|a, b| a.same_pool(b));
    let pg_before = match store {
        "postgres" => Some(pg_xact_commit(ftgo.orders.database()).await?),
        _ => None,
    };
    let commits_before: u64 = databases.iter().map(Database::commits).sum();
    let relaxed_before: u64 = databases.iter().map(Database::relaxed_commits).sum();
    let breakdown = Breakdown::install();
    let mark = breakdown.map(Breakdown::mark);
    ftgo.start_workers().await?;

    let slots = Arc::new(Semaphore::new(config.concurrency));
    let begin = Instant::now();
    let placer = {
        let ftgo = ftgo.clone();
        let slots = slots.clone();
        let config = config.clone();
        tokio::spawn(async move {
            for i in 0..config.sagas {
                let permit = slots
                    .clone()
                    .acquire_owned()
                    .await
                    .map_err(|e| BenchError::Outcome(e.to_string()))?;
                permit.forget();
                let ftgo = ftgo.clone();
                let events = events.clone();
                let decline = declined(i, config.decline_rate);
                tokio::spawn(async move {
                    let t0 = Instant::now();
                    match ftgo.orders.place_order(&order(i, decline)).await {
                        Ok(placed) => {
                            let _ = events.send(Event::Placed(placed.saga_id, t0));
                        }
                        Err(err) => tracing::error!(error = %err, "placing an order failed"),
                    }
                });
            }
            Ok::<(), BenchError>(())
        })
    };

    let mut latencies = Vec::with_capacity(config.sagas);
    // Each saga's placement time or its finish, whichever came first.
    let mut placed: HashMap<SagaId, Instant> = HashMap::new();
    let mut finished: HashMap<SagaId, (SagaStatus, Instant)> = HashMap::new();
    let (mut completed, mut compensated) = (0, 0);
    let mut last_report = Instant::now();
    let deadline = Duration::from_secs(600);
    while completed + compensated < config.sagas {
        let event = tokio::time::timeout(Duration::from_secs(30), received.recv()).await;
        let Ok(Some(event)) = event else {
            return Err(BenchError::Outcome(format!(
                "no saga finished for 30 s ({} of {} done)",
                completed + compensated,
                config.sagas
            )));
        };
        let (t0, status, at) = match event {
            Event::Placed(id, t0) => match finished.remove(&id) {
                Some((status, at)) => (t0, status, at),
                None => {
                    placed.insert(id, t0);
                    continue;
                }
            },
            Event::Finished(id, status, at) => match placed.remove(&id) {
                Some(t0) => (t0, status, at),
                None => {
                    finished.insert(id, (status, at));
                    continue;
                }
            },
        };
        latencies.push(at.duration_since(t0).as_secs_f64() * 1000.0);
        match status {
            SagaStatus::Completed => completed += 1,
            _ => compensated += 1,
        }
        slots.add_permits(1);
        if last_report.elapsed() >= Duration::from_secs(1) {
            let done = completed + compensated;
            progress(&format!(
                "{done}/{} sagas ({:.0}/s)",
                config.sagas,
                done as f64 / begin.elapsed().as_secs_f64()
            ));
            last_report = Instant::now();
        }
        if begin.elapsed() > deadline {
            return Err(BenchError::Outcome(
                "the run took over 10 minutes".to_owned(),
            ));
        }
    }
    let seconds = begin.elapsed().as_secs_f64();
    let mean = latencies.iter().sum::<f64>() / latencies.len().max(1) as f64;
    let per_saga = breakdown
        .zip(mark)
        .map(|(recorder, mark)| mark.since(recorder, config.sagas, config.concurrency, mean));
    placer
        .await
        .map_err(|e| BenchError::Outcome(e.to_string()))??;
    ftgo.shutdown().await;

    let commits = databases.iter().map(Database::commits).sum::<u64>() - commits_before;
    let relaxed = databases.iter().map(Database::relaxed_commits).sum::<u64>() - relaxed_before;
    let mut messages = 0;
    let reopened = reopen_all(&config.options).await?;
    for database in &reopened {
        // Every message handled leaves one dedup record with its consumer.
        messages += count_rows(database, "saga_received").await?;
    }
    let pg_xact = match pg_before {
        Some(before) => {
            let after = pg_xact_commit(&reopened[0]).await?;
            Some((after - before) as f64 / config.sagas as f64)
        }
        None => None,
    };
    for database in reopened {
        database.close().await;
    }

    let expected_declines = (0..config.sagas)
        .filter(|i| declined(*i, config.decline_rate))
        .count();
    if compensated != expected_declines || completed + compensated != config.sagas {
        return Err(BenchError::Outcome(format!(
            "{completed} completed and {compensated} compensated; expected {} and {expected_declines}",
            config.sagas - expected_declines
        )));
    }
    latencies.sort_by(f64::total_cmp);
    let sagas_per_s = config.sagas as f64 / seconds;
    Ok(BenchReport {
        store,
        transport,
        layout: config.options.layout().as_str(),
        sqlite_sync: match config.options.sqlite_sync {
            saga_store::SqliteSync::Full => "full",
            saga_store::SqliteSync::Normal => "normal",
        },
        create_order: match config.options.create_order {
            crate::create_order::CreateOrderFlavor::Parallel => "parallel",
            crate::create_order::CreateOrderFlavor::Sequential => "sequential",
        },
        service_time_ms: u64::try_from(config.options.service_time.0.as_millis())
            .unwrap_or(u64::MAX),
        sagas: config.sagas,
        concurrency: config.concurrency,
        decline_rate: config.decline_rate,
        seconds,
        sagas_per_s,
        latency_ms: Latency {
            mean,
            p50: percentile(&latencies, 50.0),
            p95: percentile(&latencies, 95.0),
            p99: percentile(&latencies, 99.0),
            max: latencies.last().copied().unwrap_or(0.0),
        },
        messages,
        messages_per_s: messages as f64 / seconds,
        commits,
        commits_per_saga: commits as f64 / config.sagas as f64,
        relaxed_commits_per_saga: relaxed as f64 / config.sagas as f64,
        pg_xact_commits_per_saga: pg_xact,
        completed,
        compensated,
        peak_rss_mib: peak_rss_mib(),
        raw_commits_per_s: RawCommits {
            clients_1: raw_1,
            clients_4: raw_4,
        },
        ratio_to_raw_1: sagas_per_s / raw_1,
        breakdown: per_saga,
    })
}

/// Opens every FTGO database again (to count what the run left behind).
async fn reopen_all(options: &FtgoOptions) -> Result<Vec<Database>, BenchError> {
    if options.is_in_place() {
        return Ok(vec![
            options.database(SHARED).await.map_err(FtgoError::from)?,
        ]);
    }
    let mut databases = Vec::new();
    for name in SERVICES {
        databases.push(options.database(name).await.map_err(FtgoError::from)?);
    }
    if options.nats.is_none() {
        databases.push(options.database(MESSAGES).await.map_err(FtgoError::from)?);
    }
    Ok(databases)
}

impl std::fmt::Display for BenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{} sagas on {} + {} transport, {} (synchronous={}), {} in flight, {:.0}% declined",
            self.sagas,
            self.store,
            self.transport,
            self.layout,
            self.sqlite_sync,
            self.concurrency,
            self.decline_rate * 100.0
        )?;
        writeln!(
            f,
            "  throughput  {:.0} sagas/s ({:.0} messages/s) in {:.1} s",
            self.sagas_per_s, self.messages_per_s, self.seconds
        )?;
        writeln!(
            f,
            "  latency     p50 {:.1} ms, p95 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            self.latency_ms.p50, self.latency_ms.p95, self.latency_ms.p99, self.latency_ms.max
        )?;
        writeln!(
            f,
            "  commits     {:.1} durable commits per saga (and {:.1} bookkeeping ones not waiting for the disk){}",
            self.commits_per_saga,
            self.relaxed_commits_per_saga,
            self.pg_xact_commits_per_saga
                .map(|x| format!(" ({x:.1} transactions per saga in pg_stat_database)"))
                .unwrap_or_default()
        )?;
        writeln!(
            f,
            "  raw limit   {:.0} commits/s (1 client), {:.0}/s (4 clients): sagas/s = {:.2} × the 1-client commit rate",
            self.raw_commits_per_s.clients_1, self.raw_commits_per_s.clients_4, self.ratio_to_raw_1
        )?;
        match &self.breakdown {
            Some(per_saga) => writeln!(f, "  per saga    {per_saga}")?,
            None => writeln!(
                f,
                "  per saga    (no breakdown: --observe metrics has the recorder)"
            )?,
        }
        write!(
            f,
            "  outcome     {} completed, {} compensated; peak RSS {:.0} MiB",
            self.completed, self.compensated, self.peak_rss_mib
        )
    }
}
