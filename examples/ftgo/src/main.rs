//! The `ftgo` command: the demo (default), and `ftgo serve` for the HTTP API.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};
use ftgo::app::{Ftgo, FtgoOptions, MESSAGES, SERVICES, Storage};
use saga_store::SqliteSync;

/// FTGO, the food-delivery example of the saga framework.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    storage: StorageArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Place sample orders covering every saga outcome and print what happened (the default).
    Demo {
        #[command(flatten)]
        storage: StorageArgs,
    },
    /// Run the four services and the HTTP API.
    Serve {
        #[command(flatten)]
        storage: StorageArgs,
        /// The address to listen on.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
    },
}

#[derive(Clone, Debug, Default, Args)]
struct StorageArgs {
    /// Keep the SQLite databases in this directory (default: a fresh temporary directory for
    /// the demo, `./ftgo-data` for `serve`).
    #[arg(long, conflicts_with = "database_url")]
    data_dir: Option<PathBuf>,
    /// Use PostgreSQL instead, e.g. postgres://postgres@127.0.0.1:5432/test (one schema per
    /// service).
    #[arg(long)]
    database_url: Option<String>,
    /// The PostgreSQL schema prefix (default: `ftgo`, or a fresh one for the demo).
    #[arg(long)]
    schema_prefix: Option<String>,
    /// SQLite durability: `full` (every commit synced, the default) or `normal`.
    #[arg(long, default_value = "full", value_parser = ["full", "normal"])]
    sqlite_sync: String,
}

impl StorageArgs {
    fn merged(self, outer: StorageArgs) -> StorageArgs {
        StorageArgs {
            data_dir: self.data_dir.or(outer.data_dir),
            database_url: self.database_url.or(outer.database_url),
            schema_prefix: self.schema_prefix.or(outer.schema_prefix),
            sqlite_sync: if self.sqlite_sync == "full" {
                outer.sqlite_sync
            } else {
                self.sqlite_sync
            },
        }
    }

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
        (options, temporary)
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        None => demo(cli.storage).await,
        Some(Command::Demo { storage }) => demo(storage.merged(cli.storage)).await,
        Some(Command::Serve { storage, listen }) => {
            serve(storage.merged(cli.storage), listen).await
        }
    };
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
    let mut ftgo = Ftgo::open(options.clone()).await?;
    let report = ftgo::demo::run(&mut ftgo, |line| {
        let _ = writeln!(std::io::stderr(), "  … {line}");
    })
    .await;
    ftgo.shutdown().await;
    cleanup(&options.storage, temporary).await;
    let report = report?;
    let mut stdout = std::io::stdout();
    writeln!(stdout, "\n{report}")?;
    Ok(if report.as_expected() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn serve(storage: StorageArgs, listen: SocketAddr) -> Result<ExitCode, Failure> {
    let (options, _) = storage.options(false);
    let where_ = describe(&options.storage);
    let ftgo = Arc::new(Ftgo::start(options).await?);
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let _ = writeln!(
        std::io::stderr(),
        "FTGO API on http://{} (services on {where_}); Ctrl-C stops it",
        listener.local_addr()?
    );
    ftgo::api::serve(listener, ftgo.clone(), async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    if let Ok(ftgo) = Arc::try_unwrap(ftgo) {
        ftgo.shutdown().await;
    }
    Ok(ExitCode::SUCCESS)
}

fn describe(storage: &Storage) -> String {
    match storage {
        Storage::Sqlite { dir } => format!("SQLite files in {}", dir.display()),
        Storage::Postgres { url, schema_prefix } => {
            format!("PostgreSQL {url}, schemas {schema_prefix}_*")
        }
    }
}

/// Removes what the demo created for itself: its temporary directory, or its schemas.
async fn cleanup(storage: &Storage, temporary: Option<PathBuf>) {
    if let Some(dir) = temporary {
        let _ = std::fs::remove_dir_all(dir);
    }
    if let Storage::Postgres { url, schema_prefix } = storage
        && schema_prefix.starts_with("ftgo_demo_")
        && let Ok(database) = saga_store::Database::connect(url).await
    {
        for name in SERVICES.iter().chain([&MESSAGES]) {
            let drop = format!("DROP SCHEMA IF EXISTS \"{schema_prefix}_{name}\" CASCADE");
            let _ = sqlx::query(sqlx::AssertSqlSafe(drop))
                .execute(database.pool())
                .await;
        }
        database.close().await;
    }
}
