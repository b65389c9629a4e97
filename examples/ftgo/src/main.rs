//! The `ftgo` command: the demo (default), `ftgo serve` for the HTTP API, and `ftgo service`
//! to run one service per process.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};
use ftgo::app::{
    Ftgo, FtgoOptions, Layout, MESSAGES, NatsSettings, SERVICES, SHARED, ServiceName,
    ServiceProcess, Storage,
};
use ftgo::create_order::CreateOrderFlavor;
use ftgo::observability::{self, LogFormat, Otlp};
use saga_store::SqliteSync;
use saga_store::nats::{NatsAuth, NatsOptions, NatsTls};
use saga_store::secrets::{ExposeSecret as _, SecretString, redact_url};

/// FTGO, the food-delivery example of the saga framework.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    storage: StorageArgs,
    /// Log lines as text or as JSON objects (one per line, with `saga_id`, `saga_type`,
    /// `step`, `message_id` fields where they apply). The level comes from `RUST_LOG`.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Export traces over OTLP/HTTP to this collector (e.g. http://127.0.0.1:4318; spans go
    /// to its `/v1/traces`). Off by default. The service name is `OTEL_SERVICE_NAME`, or
    /// `ftgo-<service>` (`ftgo-api` for the API).
    #[arg(long, global = true, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Place sample orders covering every saga outcome and print what happened (the default).
    Demo,
    /// Run the four services and the HTTP API.
    Serve {
        /// The address to listen on.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Serve the API only: the services run as `ftgo service …` processes.
        #[arg(long)]
        api_only: bool,
        /// The token the operator console at `/console` asks for (needed to listen on
        /// anything but a loopback address).
        #[arg(long, env = "SAGA_CONSOLE_TOKEN", hide_env_values = true)]
        console_token: Option<SecretString>,
    },
    /// Benchmark: run CreateOrderSaga under load on fresh storage and print one JSON line of
    /// figures (and a readable summary on stderr).
    Bench {
        /// How many sagas.
        #[arg(long, default_value_t = 10_000)]
        sagas: usize,
        /// How many sagas in flight at once.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// `sqlite` (a fresh temporary directory) or `postgres` (fresh schemas in
        /// `--database-url`, default postgres://postgres@127.0.0.1:5432/test).
        #[arg(long, default_value = "sqlite", value_parser = ["sqlite", "postgres"])]
        store: String,
        /// The share of orders whose card is declined (their sagas compensate).
        #[arg(long, default_value_t = 0.2)]
        decline_rate: f64,
        /// Seconds each raw commit-rate measurement runs.
        #[arg(long, default_value_t = 2.0)]
        raw_seconds: f64,
        /// Milliseconds each participant spends on each forward command of CreateOrderSaga
        /// besides its database work, as a call to another system would (default 0): what
        /// running steps at once saves grows with it (compare with `--sequential`).
        #[arg(long, default_value_t = 0)]
        service_time_ms: u64,
        /// Run with metrics (a Prometheus recorder), traces or both (`--observe` alone):
        /// spans go over OTLP to `--otlp-endpoint`, or to an in-process sink that takes and
        /// discards them. Off by default.
        #[arg(long, value_enum, num_args = 0..=1, default_missing_value = "all")]
        observe: Option<Observe>,
        #[command(flatten)]
        tuning: Tuning,
    },
    /// Run one service (its participant, and for `order` the saga orchestrator) in this
    /// process. Start several of one service and they share its work.
    Service {
        /// Which service.
        #[arg(value_enum)]
        name: ServiceArg,
        /// Serve `/health/live`, `/health/ready` and `/metrics` on this address.
        #[arg(long, visible_alias = "metrics-listen")]
        listen: Option<SocketAddr>,
    },
}

/// Worker settings `ftgo bench` can override (see `RuntimeOptions`; each defaults to its
/// default there).
#[derive(Clone, Copy, Debug, clap::Args)]
struct Tuning {
    /// In place: how many passes of other channels a pass may chain onto its transaction
    /// (`RuntimeOptions::chained_passes`; 0 turns chaining off).
    #[arg(long)]
    chained_passes: Option<usize>,
    /// How many consumers each channel has (in place: passes at once;
    /// `RuntimeOptions::channel_consumers`).
    #[arg(long)]
    channel_consumers: Option<usize>,
    /// In place: the most messages one pass takes (`RuntimeOptions::pass_batch`).
    #[arg(long)]
    pass_batch: Option<usize>,
}

/// What `ftgo bench --observe` turns on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Observe {
    Metrics,
    Traces,
    All,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum ServiceArg {
    Order,
    Consumer,
    Kitchen,
    Accounting,
}

impl From<ServiceArg> for ServiceName {
    fn from(arg: ServiceArg) -> Self {
        match arg {
            ServiceArg::Order => ServiceName::Order,
            ServiceArg::Consumer => ServiceName::Consumer,
            ServiceArg::Kitchen => ServiceName::Kitchen,
            ServiceArg::Accounting => ServiceName::Accounting,
        }
    }
}

/// Where the data lives and how messages travel (valid before or after the subcommand).
/// `Debug` shows the URLs without their credentials.
#[derive(Clone, Args)]
struct StorageArgs {
    /// Keep the SQLite databases in this directory (default: a fresh temporary directory for
    /// the demo, `./ftgo-data` otherwise).
    #[arg(long, global = true, conflicts_with = "database_url")]
    data_dir: Option<PathBuf>,
    /// Use PostgreSQL instead, e.g. postgres://postgres@127.0.0.1:5432/test (one schema per
    /// service); `?sslmode=verify-full&sslrootcert=ca.pem` for TLS. A URL with a password is
    /// better given as the environment variable than on the command line.
    #[arg(long, global = true, env = "FTGO_DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// The PostgreSQL schema prefix (default: `ftgo`, or a fresh one for the demo).
    #[arg(long, global = true)]
    schema_prefix: Option<String>,
    /// SQLite durability: `full` (every commit synced, the default) or `normal`.
    #[arg(long, global = true, default_value = "full", value_parser = ["full", "normal"])]
    sqlite_sync: String,
    /// How the services exchange messages: the SQL-table queue (`sql`, the default) or NATS
    /// JetStream (`nats`).
    #[arg(long, global = true, default_value = "sql", value_parser = ["sql", "nats"])]
    transport: String,
    /// The NATS server, with `--transport nats` (`tls://host:port` for TLS).
    #[arg(
        long,
        global = true,
        env = "NATS_URL",
        hide_env_values = true,
        default_value = "nats://127.0.0.1:4222"
    )]
    nats_url: String,
    /// The NATS user, with `--nats-password`.
    #[arg(long, global = true, env = "NATS_USER", requires = "nats_password")]
    nats_user: Option<String>,
    /// The NATS user's password (better given as the environment variable).
    #[arg(
        long,
        global = true,
        env = "NATS_PASSWORD",
        hide_env_values = true,
        requires = "nats_user"
    )]
    nats_password: Option<SecretString>,
    /// The NATS server's token (better given as the environment variable).
    #[arg(long, global = true, env = "NATS_TOKEN", hide_env_values = true,
          conflicts_with_all = ["nats_user", "nats_creds", "nats_nkey"])]
    nats_token: Option<SecretString>,
    /// A NATS `.creds` file (a user JWT and its seed), for a server in operator mode.
    #[arg(long, global = true, env = "NATS_CREDS", conflicts_with_all = ["nats_user", "nats_nkey"])]
    nats_creds: Option<PathBuf>,
    /// A file holding the NATS user's nkey seed (`SU…`).
    #[arg(long, global = true, env = "NATS_NKEY", conflicts_with = "nats_user")]
    nats_nkey: Option<PathBuf>,
    /// A PEM file of the certificate authorities that sign the NATS server's certificate
    /// (instead of the system's).
    #[arg(long, global = true, env = "NATS_CA")]
    nats_ca: Option<PathBuf>,
    /// A PEM client certificate for NATS, with `--nats-key`.
    #[arg(long, global = true, env = "NATS_CERT", requires = "nats_key")]
    nats_cert: Option<PathBuf>,
    /// The NATS client certificate's PEM private key.
    #[arg(long, global = true, env = "NATS_KEY", requires = "nats_cert")]
    nats_key: Option<PathBuf>,
    /// The JetStream stream name, with `--transport nats`.
    #[arg(long, global = true, default_value = "FTGO")]
    nats_stream: String,
    /// Keep all four services and the message queue in one database and handle messages in
    /// place (taken, handled and answered in one transaction; no outbox, no relay). Not with
    /// `--transport nats` or `service`.
    #[arg(long, global = true)]
    in_place: bool,
    /// PostgreSQL with the SQL queue: a schema per service in one database, each service
    /// handling its messages in place in its own transactions and writing what it sends
    /// straight into the queue's schema (no outbox, relay or leases).
    #[arg(long, global = true, conflicts_with = "in_place")]
    co_located: bool,
    /// Create or upgrade no tables: for a database role that may only read and write rows
    /// (see docs/security.md); the services must have migrated their schemas already.
    #[arg(long, global = true, env = "FTGO_NO_MIGRATE")]
    no_migrate: bool,
    /// PostgreSQL with the SQL queue: `SET ROLE` to this role in the shared queue schema, so
    /// its tables belong to the role every service is a member of (see docs/security.md).
    #[arg(long, global = true, env = "FTGO_QUEUE_ROLE")]
    queue_role: Option<String>,
    /// Run the book's CreateOrderSaga, every step after the previous one, instead of
    /// verifying the consumer while the kitchen ticket is created.
    #[arg(long, global = true)]
    sequential: bool,
}

impl std::fmt::Debug for StorageArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StorageArgs")
            .field("data_dir", &self.data_dir)
            .field(
                "database_url",
                &self.database_url.as_deref().map(redact_url),
            )
            .field("schema_prefix", &self.schema_prefix)
            .field("transport", &self.transport)
            .field("nats_url", &redact_url(&self.nats_url))
            .field("nats_auth", &self.nats_auth())
            .field("nats_stream", &self.nats_stream)
            .finish_non_exhaustive()
    }
}

impl StorageArgs {
    fn options(&self, fresh: bool) -> (FtgoOptions, Option<PathBuf>) {
        let unique = format!(
            "{}_{}",
            std::process::id(),
            saga_core::Timestamp::now().as_millis()
        );
        let (storage, temporary) = match (&self.database_url, &self.data_dir) {
            (Some(url), _) => (
                Storage::Postgres {
                    url: url.clone(),
                    schema_prefix: self.schema_prefix.clone().unwrap_or_else(|| {
                        if fresh {
                            format!("ftgo_demo_{unique}")
                        } else {
                            "ftgo".to_owned()
                        }
                    }),
                },
                None,
            ),
            (None, Some(dir)) => (Storage::Sqlite { dir: dir.clone() }, None),
            (None, None) if fresh => {
                let dir = std::env::temp_dir().join(format!("ftgo-demo-{unique}"));
                (Storage::Sqlite { dir: dir.clone() }, Some(dir))
            }
            (None, None) => (
                Storage::Sqlite {
                    dir: PathBuf::from("ftgo-data"),
                },
                None,
            ),
        };
        let mut options = FtgoOptions::new(storage);
        if self.sqlite_sync == "normal" {
            options.sqlite_sync = SqliteSync::Normal;
        }
        options.layout = match (self.in_place, self.co_located) {
            (true, _) => Layout::InPlace,
            (_, true) => Layout::CoLocated,
            _ => Layout::PerService,
        };
        options.migrate = !self.no_migrate;
        options.queue_role = self.queue_role.clone();
        if self.sequential {
            options.create_order = CreateOrderFlavor::Sequential;
        }
        if self.transport == "nats" {
            options.nats = Some(NatsSettings {
                url: self.nats_url.clone(),
                options: NatsOptions {
                    stream: self.nats_stream.clone(),
                    subject_prefix: self.nats_stream.to_lowercase(),
                    auth: self.nats_auth(),
                    tls: NatsTls {
                        ca_file: self.nats_ca.clone(),
                        client_cert: self.nats_cert.clone(),
                        client_key: self.nats_key.clone(),
                        ..NatsTls::default()
                    },
                    ..NatsOptions::default()
                },
            });
        }
        (options, temporary)
    }

    /// The NATS credentials the flags name (clap lets only one kind through).
    fn nats_auth(&self) -> NatsAuth {
        if let (Some(user), Some(password)) = (&self.nats_user, &self.nats_password) {
            NatsAuth::UserPassword {
                user: user.clone(),
                password: password.clone(),
            }
        } else if let Some(token) = &self.nats_token {
            NatsAuth::Token(token.clone())
        } else if let Some(creds) = &self.nats_creds {
            NatsAuth::CredentialsFile(creds.clone())
        } else if let Some(seed) = &self.nats_nkey {
            NatsAuth::NkeySeedFile(seed.clone())
        } else {
            NatsAuth::None
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let service_name = match &cli.command {
        Some(Command::Service { name, .. }) => {
            format!("ftgo-{}", ServiceName::from(*name).as_str())
        }
        Some(Command::Serve { api_only: true, .. }) => "ftgo-api".to_owned(),
        _ => "ftgo".to_owned(),
    };
    // Everything but the benchmark exports traces when given an endpoint and has metrics;
    // the benchmark only what `--observe` asks for.
    let (traces, metrics) = match &cli.command {
        Some(Command::Bench { observe, .. }) => (
            matches!(observe, Some(Observe::Traces | Observe::All)),
            matches!(observe, Some(Observe::Metrics | Observe::All)),
        ),
        _ => (true, true),
    };
    let benchmark = matches!(cli.command, Some(Command::Bench { .. }));
    let mut endpoint = cli
        .otlp_endpoint
        .clone()
        .filter(|e| traces && !e.is_empty());
    // The benchmark's traces go somewhere real: an in-process sink unless told where.
    let mut collector = None;
    if benchmark && traces && endpoint.is_none() {
        let listen = SocketAddr::from(([127, 0, 0, 1], 0));
        match observability::collector::Collector::start_discarding(listen).await {
            Ok(started) => {
                endpoint = Some(started.endpoint());
                collector = Some(started);
            }
            Err(err) => {
                let _ = writeln!(
                    std::io::stderr(),
                    "ftgo: cannot start a trace collector: {err}"
                );
                return ExitCode::FAILURE;
            }
        }
    }
    let otlp = endpoint.map(|endpoint| Otlp {
        endpoint,
        service_name: std::env::var("OTEL_SERVICE_NAME")
            .ok()
            .filter(|name| !name.is_empty())
            .unwrap_or(service_name),
    });
    let telemetry = match observability::init(cli.log_format, otlp.as_ref()) {
        Ok(telemetry) => telemetry,
        Err(err) => {
            let _ = writeln!(std::io::stderr(), "ftgo: {err}");
            return ExitCode::FAILURE;
        }
    };
    if metrics {
        observability::install_metrics();
    }
    let result = match cli.command {
        None | Some(Command::Demo) => demo(cli.storage).await,
        Some(Command::Serve {
            listen,
            api_only,
            console_token,
        }) => serve(cli.storage, listen, api_only, console_token).await,
        Some(Command::Service { name, listen }) => service(name.into(), cli.storage, listen).await,
        Some(Command::Bench {
            sagas,
            concurrency,
            store,
            decline_rate,
            raw_seconds,
            service_time_ms,
            observe: _,
            tuning,
        }) => {
            let mut storage = cli.storage;
            if store == "postgres" && storage.database_url.is_none() {
                storage.database_url = Some("postgres://postgres@127.0.0.1:5432/test".to_owned());
            }
            if store == "sqlite" {
                storage.database_url = None;
            }
            let config = (sagas, concurrency, decline_rate, raw_seconds);
            let time = std::time::Duration::from_millis(service_time_ms);
            bench(storage, config, tuning, time).await
        }
    };
    telemetry.shutdown();
    if let Some(collector) = collector {
        let (requests, bytes) = collector.received();
        let _ = writeln!(
            std::io::stderr(),
            "traces: {requests} OTLP export requests, {:.1} MB",
            bytes as f64 / 1e6
        );
    }
    match result {
        Ok(code) => code,
        Err(err) => {
            let _ = writeln!(std::io::stderr(), "ftgo: {err}");
            ExitCode::FAILURE
        }
    }
}

type Failure = Box<dyn std::error::Error>;

async fn demo(storage: StorageArgs) -> Result<ExitCode, Failure> {
    let (options, temporary) = storage.options(true);
    let where_ = describe(&options.storage);
    let mut stderr = std::io::stderr();
    let _ = writeln!(stderr, "FTGO demo: four services on {where_}");
    let ftgo = Ftgo::open(options.clone()).await?;
    let report = ftgo::demo::run(&ftgo, |line| {
        let _ = writeln!(std::io::stderr(), "  … {line}");
    })
    .await;
    ftgo.shutdown().await;
    cleanup(&options, temporary).await;
    let report = report?;
    let mut stdout = std::io::stdout();
    writeln!(stdout, "\n{report}")?;
    Ok(if report.as_expected() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn serve(
    storage: StorageArgs,
    listen: SocketAddr,
    api_only: bool,
    console_token: Option<SecretString>,
) -> Result<ExitCode, Failure> {
    let (mut options, _) = storage.options(false);
    if !listen.ip().is_loopback()
        && console_token
            .as_ref()
            .is_none_or(|t| t.expose_secret().is_empty())
    {
        let _ = writeln!(
            std::io::stderr(),
            "error: the operator console at /console would be reachable beyond this machine \
             with no token: give --console-token (or set SAGA_CONSOLE_TOKEN), or listen on \
             127.0.0.1"
        );
        return Ok(ExitCode::FAILURE);
    }
    options.console_token = console_token;
    let where_ = describe(&options.storage);
    let ftgo = if api_only {
        Ftgo::open(options).await?
    } else {
        Ftgo::start(options).await?
    };
    let ftgo = Arc::new(ftgo);
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let _ = writeln!(
        std::io::stderr(),
        "FTGO API on http://{} (services on {where_}); Ctrl-C stops it",
        listener.local_addr()?
    );
    ftgo::api::serve(listener, ftgo.clone(), shutdown_signal()).await?;
    ftgo.shutdown().await;
    Ok(ExitCode::SUCCESS)
}

async fn bench(
    storage: StorageArgs,
    (sagas, concurrency, decline_rate, raw_seconds): (usize, usize, f64, f64),
    tuning: Tuning,
    service_time: std::time::Duration,
) -> Result<ExitCode, Failure> {
    let (mut options, temporary) = storage.options(true);
    options.service_time = ftgo::services::ServiceTime(service_time);
    let runtime = &mut options.runtime;
    if let Some(chained) = tuning.chained_passes {
        runtime.chained_passes = chained;
    }
    runtime.channel_consumers = tuning.channel_consumers.or(runtime.channel_consumers);
    runtime.pass_batch = tuning.pass_batch.or(runtime.pass_batch);
    if let Some(nats) = &mut options.nats {
        let stream = format!("FTGO_BENCH_{}", std::process::id());
        nats.options.subject_prefix = stream.to_lowercase();
        nats.options.stream = stream;
    }
    let _ = writeln!(
        std::io::stderr(),
        "ftgo bench: {sagas} sagas, {concurrency} in flight, on {}",
        describe(&options.storage)
    );
    let config = ftgo::bench::BenchConfig {
        sagas,
        concurrency: concurrency.max(1),
        decline_rate: decline_rate.clamp(0.0, 1.0),
        options: options.clone(),
        raw_duration: std::time::Duration::from_secs_f64(raw_seconds.max(0.1)),
    };
    let report = ftgo::bench::run(config, |line| {
        let _ = writeln!(std::io::stderr(), "  … {line}");
    })
    .await;
    cleanup(&options, temporary).await;
    let report = report?;
    let _ = writeln!(std::io::stderr(), "{report}");
    writeln!(std::io::stdout(), "{}", serde_json::to_string(&report)?)?;
    Ok(ExitCode::SUCCESS)
}

async fn service(
    name: ServiceName,
    storage: StorageArgs,
    listen: Option<SocketAddr>,
) -> Result<ExitCode, Failure> {
    let (options, _) = storage.options(false);
    let where_ = describe(&options.storage);
    let transport = match &options.nats {
        Some(nats) => format!(
            "NATS {} (stream {})",
            redact_url(&nats.url),
            nats.options.stream
        ),
        None => "the SQL queue".to_owned(),
    };
    let process = Arc::new(ServiceProcess::start(name, options).await?);
    let health = match listen {
        Some(address) => {
            let listener = tokio::net::TcpListener::bind(address).await?;
            let _ = writeln!(
                std::io::stderr(),
                "health endpoints on http://{}/health/ready",
                listener.local_addr()?
            );
            let router = ftgo::health::router(process.clone());
            Some(tokio::spawn(async move {
                axum::serve(listener, router)
                    .with_graceful_shutdown(shutdown_signal())
                    .await
            }))
        }
        None => None,
    };
    let _ = writeln!(
        std::io::stderr(),
        "FTGO {} service running (pid {}) on {where_}, messages over {transport}; Ctrl-C stops it",
        name.as_str(),
        std::process::id()
    );
    shutdown_signal().await;
    if let Some(server) = health {
        server.abort();
    }
    match Arc::into_inner(process) {
        Some(process) => process.shutdown().await,
        None => tracing::warn!(
            "the health server still holds the service; exiting without a clean shutdown"
        ),
    }
    Ok(ExitCode::SUCCESS)
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
}

fn describe(storage: &Storage) -> String {
    match storage {
        Storage::Sqlite { dir } => format!("SQLite files in {}", dir.display()),
        Storage::Postgres { url, schema_prefix } => {
            format!("PostgreSQL {}, schemas {schema_prefix}_*", redact_url(url))
        }
    }
}

/// Removes what the demo or a benchmark created for itself: its temporary directory, its
/// schemas, its NATS streams.
async fn cleanup(options: &FtgoOptions, temporary: Option<PathBuf>) {
    if let Some(dir) = temporary {
        let _ = std::fs::remove_dir_all(dir);
    }
    if let Storage::Postgres { url, schema_prefix } = &options.storage
        && schema_prefix.starts_with("ftgo_demo_")
        // A plain pool: `Database::connect` would put the saga tables in the default schema.
        && let Ok(pool) = sqlx::PgPool::connect(url).await
    {
        for name in SERVICES.iter().chain([&MESSAGES, &SHARED, &"bench_raw"]) {
            let statement = format!("DROP SCHEMA IF EXISTS \"{schema_prefix}_{name}\" CASCADE");
            let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(statement))
                .execute(&pool)
                .await;
        }
        pool.close().await;
    }
    if let Some(nats) = &options.nats
        && nats.options.stream.starts_with("FTGO_BENCH_")
        && let Ok(transport) =
            saga_store::nats::NatsTransport::connect(&nats.url, nats.options.clone()).await
    {
        let _ = transport.delete_streams().await;
    }
}
