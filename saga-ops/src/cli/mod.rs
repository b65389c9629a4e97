//! The `saga` command: find, inspect and repair sagas in one saga database.
//!
//! ```text
//! saga --database-url sqlite:///var/lib/ftgo/order.db list --status failed
//! saga --database-url postgres://… --schema ftgo_order show 0192…
//! saga … retry --where status=failed --type CreateOrderSaga --reason "kitchen staffed" --dry-run
//! ```
//!
//! [`run`] writes to the given writers, so tests drive exactly what the binary does.

mod dead_letters;
mod output;

use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use saga_core::engine::{OperatorCommand, OperatorRequest, SagaStatus};
use saga_core::{SagaId, Timestamp};
use saga_store::secrets::{SecretString, redact_url};
use saga_store::{Database, DatabaseOptions, SagaFilter, SqlSagaStore};

use crate::OpsError;
use crate::actions::{self, Answer};
use crate::console::{self, ConsoleOptions};
use crate::view::SagaView;

/// Find, inspect and repair sagas. `Debug` shows the database URL without its password.
#[derive(Parser)]
#[command(name = "saga", version, about, long_about = None)]
pub struct Cli {
    /// The saga database: `sqlite://path/to/file.db` or `postgres://user@host/db`.
    #[arg(long, env = "SAGA_DATABASE_URL", global = true, hide_env_values = true)]
    pub database_url: Option<String>,
    /// The PostgreSQL schema the saga tables live in (e.g. `ftgo_order`).
    #[arg(long, env = "SAGA_SCHEMA", global = true)]
    pub schema: Option<String>,
    /// Do not create or upgrade the saga tables on connect: for a role that may only read or
    /// write them (e.g. a read-only console role).
    #[arg(long, env = "SAGA_NO_MIGRATE", global = true)]
    pub no_migrate: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

impl std::fmt::Debug for Cli {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cli")
            .field(
                "database_url",
                &self.database_url.as_deref().map(redact_url),
            )
            .field("schema", &self.schema)
            .field("no_migrate", &self.no_migrate)
            .field("command", &self.command)
            .finish()
    }
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// List sagas, newest first.
    List(ListArgs),
    /// Show a saga: its state, data and whole timeline.
    Show {
        /// The saga id.
        id: SagaId,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Draw a saga's graph with its path on it (or a saga type's bare graph with `--type`).
    Graph(GraphArgs),
    /// Try a parked saga's current step (or compensation) again, with a fresh retry budget.
    Retry(ActionArgs),
    /// Treat a parked saga's current step (or compensation) as done and move on.
    Skip(ActionArgs),
    /// Abort a running saga before its pivot and compensate what ran, in reverse order.
    Cancel(ActionArgs),
    /// Messages that could not be processed: this database's, and with `--nats-url` those in
    /// NATS JetStream's dead-letter stream (ids `nats:<sequence>`).
    #[command(name = "dead-letters")]
    DeadLetters(DeadLettersArgs),
    /// Counts per saga type and status, the oldest running saga, what waits.
    Stats {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// The versions of each saga type: sagas in flight on each, and what the newest
    /// orchestrator start registered it as (current, retired, migrated). A version with
    /// sagas in flight that the newest start does not register is stranded: its sagas cannot
    /// move until a build that keeps it (retired) or migrates it runs.
    Versions {
        /// Exit with 1 when a version is stranded (for a deployment pipeline).
        #[arg(long)]
        check: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Serve the web console.
    Console(ConsoleArgs),
}

/// Which sagas.
#[derive(Debug, Args, Clone, Default)]
pub struct FilterArgs {
    /// Of this saga type.
    #[arg(long = "type")]
    pub saga_type: Option<String>,
    /// In this status (repeat for several): running, compensating, completed, compensated,
    /// failed.
    #[arg(long)]
    pub status: Vec<SagaStatus>,
    /// At this step.
    #[arg(long)]
    pub step: Option<String>,
    /// Started with this definition version.
    #[arg(long = "definition-version")]
    pub definition_version: Option<String>,
    /// Started more than this long ago (`90s`, `15m`, `2h`, `3days`).
    #[arg(long)]
    pub older_than: Option<humantime::Duration>,
    /// Started less than this long ago.
    #[arg(long)]
    pub newer_than: Option<humantime::Duration>,
    /// Unchanged for at least this long.
    #[arg(long)]
    pub idle_for: Option<humantime::Duration>,
}

impl FilterArgs {
    /// The store filter, with `now` as the reference for ages.
    pub fn filter(&self, now: Timestamp) -> SagaFilter {
        let before = |age: &Option<humantime::Duration>| {
            age.map(|age| Timestamp(now.as_millis().saturating_sub(millis(age.into()))))
        };
        SagaFilter {
            saga_type: self.saga_type.clone(),
            statuses: self.status.clone(),
            current_step: self.step.clone(),
            definition_version: self.definition_version.clone(),
            created_before: before(&self.older_than),
            created_after: before(&self.newer_than),
            updated_before: before(&self.idle_for),
        }
    }

    /// Adds `key=value` conditions (`status`, `type`, `step`, `version`).
    fn with_conditions(mut self, conditions: &[String]) -> Result<Self, OpsError> {
        for condition in conditions {
            let Some((key, value)) = condition.split_once('=') else {
                return Err(OpsError::Usage(format!(
                    "--where {condition:?}: expected key=value (status, type, step, version)"
                )));
            };
            let value = value.trim().to_owned();
            match key.trim() {
                "status" => self.status.push(value.parse().map_err(OpsError::Usage)?),
                "type" => self.saga_type = Some(value),
                "step" => self.step = Some(value),
                "version" => self.definition_version = Some(value),
                other => {
                    return Err(OpsError::Usage(format!(
                        "--where: unknown key `{other}` (expected status, type, step or version)"
                    )));
                }
            }
        }
        Ok(self)
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// `saga list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Which sagas.
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Sagas per page.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub limit: u32,
    /// Which page (from 1).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub page: u32,
    /// Print JSON (one array).
    #[arg(long)]
    pub json: bool,
}

/// Graph formats.
#[derive(Debug, Clone, Copy, ValueEnum, Default)]
pub enum GraphFormat {
    /// A Mermaid flowchart.
    #[default]
    Mermaid,
    /// Graphviz DOT.
    Dot,
}

/// `saga graph`.
#[derive(Debug, Args)]
pub struct GraphArgs {
    /// The saga whose path to draw.
    #[arg(required_unless_present = "saga_type", conflicts_with = "saga_type")]
    pub id: Option<SagaId>,
    /// Draw this saga type's bare graph instead.
    #[arg(long = "type")]
    pub saga_type: Option<String>,
    /// The format.
    #[arg(long, value_enum, default_value_t)]
    pub format: GraphFormat,
}

/// `saga retry | skip | cancel`.
#[derive(Debug, Args)]
pub struct ActionArgs {
    /// The saga; or select several with `--where` and the filter options.
    pub id: Option<SagaId>,
    /// A condition, `key=value` (status, type, step, version); repeat for several.
    #[arg(long = "where", value_name = "KEY=VALUE")]
    pub conditions: Vec<String>,
    /// Which sagas, for a bulk action.
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Why (recorded in each saga's timeline).
    #[arg(long)]
    pub reason: String,
    /// Who acts (recorded in the timeline; default: `$USER`).
    #[arg(long, env = "SAGA_ACTOR")]
    pub actor: Option<String>,
    /// List what would be acted on, and do nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// How long to wait for each saga's answer.
    #[arg(long, default_value = "10s")]
    pub wait: humantime::Duration,
    /// The most sagas one bulk action may touch.
    #[arg(long, default_value_t = 1000)]
    pub max: usize,
}

/// `saga dead-letters …`.
#[derive(Debug, Args)]
pub struct DeadLettersArgs {
    /// Where NATS keeps its dead letters, in the NATS layout.
    #[command(flatten)]
    pub nats: NatsArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: DeadLetterCommand,
}

/// The NATS JetStream deployment whose dead-letter stream to include. `Debug` shows the URL
/// without its credentials.
#[derive(Args, Clone)]
pub struct NatsArgs {
    /// The NATS server (`nats://127.0.0.1:4222`; `tls://user:password@host:4222` or
    /// `tls://token@host:4222` with credentials: better given as the environment variable).
    #[arg(long, env = "SAGA_NATS_URL", global = true, hide_env_values = true)]
    pub nats_url: Option<String>,
    /// A NATS `.creds` file (a user JWT and its seed).
    #[arg(
        long,
        env = "SAGA_NATS_CREDS",
        global = true,
        conflicts_with = "nats_nkey"
    )]
    pub nats_creds: Option<std::path::PathBuf>,
    /// A file holding the NATS user's nkey seed.
    #[arg(long, env = "SAGA_NATS_NKEY", global = true)]
    pub nats_nkey: Option<std::path::PathBuf>,
    /// A PEM file of the CAs that sign the NATS server's certificate.
    #[arg(long, env = "SAGA_NATS_CA", global = true)]
    pub nats_ca: Option<std::path::PathBuf>,
    /// A PEM client certificate for NATS, with `--nats-key`.
    #[arg(long, env = "SAGA_NATS_CERT", global = true, requires = "nats_key")]
    pub nats_cert: Option<std::path::PathBuf>,
    /// The NATS client certificate's PEM private key.
    #[arg(long, env = "SAGA_NATS_KEY", global = true, requires = "nats_cert")]
    pub nats_key: Option<std::path::PathBuf>,
    /// The services' stream (its dead letters are in `<stream>_DEAD`).
    #[arg(long, default_value = "SAGA", global = true)]
    pub nats_stream: String,
    /// The services' subject prefix.
    #[arg(long, default_value = "saga", global = true)]
    pub nats_subject_prefix: String,
}

impl std::fmt::Debug for NatsArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsArgs")
            .field("nats_url", &self.nats_url.as_deref().map(redact_url))
            .field("nats_stream", &self.nats_stream)
            .field("nats_subject_prefix", &self.nats_subject_prefix)
            .field("nats_creds", &self.nats_creds)
            .field("nats_nkey", &self.nats_nkey)
            .field("nats_ca", &self.nats_ca)
            .finish_non_exhaustive()
    }
}

/// A dead letter's id: `7` in the database, `nats:7` in NATS's dead-letter stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeadLetterId {
    /// In `saga_dead_letters`.
    Sql(i64),
    /// In the NATS dead-letter stream, by sequence.
    Nats(u64),
}

impl std::str::FromStr for DeadLetterId {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("`{s}` is not a dead letter id (a number, or nats:<sequence>)");
        match s.strip_prefix("nats:") {
            Some(sequence) => sequence.parse().map(Self::Nats).map_err(|_| bad()),
            None => s.parse().map(Self::Sql).map_err(|_| bad()),
        }
    }
}

/// `saga dead-letters …` subcommands.
#[derive(Debug, Subcommand)]
pub enum DeadLetterCommand {
    /// List dead letters nobody has acted on (`--all`: every one).
    List {
        /// Include the replayed and discarded ones.
        #[arg(long)]
        all: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one dead letter: its message, headers, payload and reason.
    Show {
        /// Its id.
        id: DeadLetterId,
    },
    /// Put a dead letter back on its channel (as a new message, a fresh delivery count).
    Replay {
        /// Its id.
        id: DeadLetterId,
        /// Why.
        #[arg(long)]
        reason: String,
        /// Who (default: `$USER`).
        #[arg(long, env = "SAGA_ACTOR")]
        actor: Option<String>,
    },
    /// Give a dead letter up, recording why.
    Discard {
        /// Its id.
        id: DeadLetterId,
        /// Why.
        #[arg(long)]
        reason: String,
        /// Who (default: `$USER`).
        #[arg(long, env = "SAGA_ACTOR")]
        actor: Option<String>,
    },
}

/// `saga console`.
#[derive(Debug, Args)]
pub struct ConsoleArgs {
    /// Where to listen. Anything but a loopback address needs `--token`.
    #[arg(long, default_value = "127.0.0.1:8090")]
    pub listen: SocketAddr,
    /// The secret every request must carry (a bearer token, or entered once on the login
    /// page).
    #[arg(long, env = "SAGA_CONSOLE_TOKEN", hide_env_values = true)]
    pub token: Option<SecretString>,
}

pub(crate) fn actor(given: Option<&String>) -> String {
    given
        .cloned()
        .or_else(|| std::env::var("USER").ok())
        .filter(|a| !a.trim().is_empty())
        .unwrap_or_else(|| "saga-cli".to_owned())
}

/// Opens the store `cli` names.
pub async fn open_store(cli: &Cli) -> Result<SqlSagaStore, OpsError> {
    let Some(url) = cli.database_url.as_deref() else {
        return Err(OpsError::Usage(
            "no saga database: give --database-url (or set SAGA_DATABASE_URL)".to_owned(),
        ));
    };
    let options = DatabaseOptions {
        schema: cli.schema.clone(),
        max_connections: Some(4),
        connect_timeout: Duration::from_secs(5),
        migrate: !cli.no_migrate,
        ..DatabaseOptions::default()
    };
    let database = Database::connect_with(url, options).await?;
    Ok(SqlSagaStore::new(database))
}

/// Runs `cli`, writing results to `out` and notes to `err`; returns the process exit code
/// (0: done; 1: something was refused or not applied).
pub async fn run(cli: Cli, out: &mut dyn Write, err: &mut dyn Write) -> Result<u8, OpsError> {
    let store = open_store(&cli).await?;
    if !matches!(cli.command, Command::Console(_) | Command::DeadLetters(_))
        && store.definitions().await?.is_empty()
        && store.count_sagas(&SagaFilter::default()).await? == 0
    {
        writeln!(
            err,
            "note: this database holds no sagas and no orchestrator has recorded any here; \
             check --database-url and --schema"
        )?;
    }
    let result = dispatch(cli.command, &store, out, err).await;
    store.database().close().await;
    result
}

async fn dispatch(
    command: Command,
    store: &SqlSagaStore,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<u8, OpsError> {
    let now = Timestamp::now();
    match command {
        Command::List(args) => {
            let filter = args.filter.filter(now);
            let limit = args.limit as usize;
            let offset = (args.page as usize - 1) * limit;
            let sagas = store.find_sagas(&filter, limit, offset).await?;
            let total = store.count_sagas(&filter).await?;
            match args.json {
                true => output::sagas_json(out, &sagas)?,
                false => output::sagas_table(out, &sagas, now, offset, total, args.page)?,
            }
            Ok(0)
        }
        Command::Show { id, json } => {
            let view = SagaView::load(store, id)
                .await?
                .ok_or_else(|| OpsError::NotFound(format!("no saga {id} in this database")))?;
            match json {
                true => output::saga_json(out, &view)?,
                false => output::saga_text(out, &view)?,
            }
            Ok(0)
        }
        Command::Graph(args) => {
            let dot = matches!(args.format, GraphFormat::Dot);
            let text = match (args.id, args.saga_type) {
                (Some(id), _) => {
                    let view = SagaView::load(store, id).await?.ok_or_else(|| {
                        OpsError::NotFound(format!("no saga {id} in this database"))
                    })?;
                    if view.definition_differs() {
                        writeln!(
                            err,
                            "note: version {} of {} is not recorded here; drawn on the newest",
                            view.saga.record.state.definition_version,
                            view.saga.record.state.saga_type
                        )?;
                    }
                    view.graph_text(dot).ok_or_else(|| {
                        OpsError::NotFound(format!(
                            "no orchestrator has recorded saga type `{}` here",
                            view.saga.record.state.saga_type
                        ))
                    })?
                }
                (None, Some(saga_type)) => {
                    let definition =
                        store.definition(&saga_type, None).await?.ok_or_else(|| {
                            OpsError::NotFound(format!(
                                "no orchestrator has recorded saga type `{saga_type}` here"
                            ))
                        })?;
                    match dot {
                        true => definition.graph.to_dot(None),
                        false => definition.graph.to_mermaid(None),
                    }
                }
                (None, None) => {
                    return Err(OpsError::Usage("give a saga id or --type".to_owned()));
                }
            };
            out.write_all(text.as_bytes())?;
            Ok(0)
        }
        Command::Retry(args) => act(OperatorCommand::Retry, args, store, out, now).await,
        Command::Skip(args) => act(OperatorCommand::Skip, args, store, out, now).await,
        Command::Cancel(args) => act(OperatorCommand::Cancel, args, store, out, now).await,
        Command::DeadLetters(args) => dead_letters::run(args, store, out).await,
        Command::Stats { json } => {
            let stats = store.stats().await?;
            match json {
                true => output::stats_json(out, &stats)?,
                false => output::stats_text(out, &stats, now)?,
            }
            Ok(0)
        }
        Command::Versions { check, json } => {
            let versions = store.versions().await?;
            match json {
                true => output::versions_json(out, &versions)?,
                false => output::versions_text(out, &versions)?,
            }
            let stranded: Vec<_> = versions.iter().filter(|v| v.is_stranded()).collect();
            if stranded.is_empty() {
                return Ok(0);
            }
            for version in &stranded {
                writeln!(
                    err,
                    "stranded: {} saga{} of `{}` on version `{}`, which the newest start does \
                     not register; deploy a build that keeps it (`#[saga(name = \"{}\", \
                     version = \"{}\", retired)]` in `previous(..)`) or migrates it \
                     (`Migration`)",
                    version.running + version.parked,
                    if version.running + version.parked == 1 {
                        ""
                    } else {
                        "s"
                    },
                    version.saga_type,
                    version.version,
                    version.saga_type,
                    version.version,
                )?;
            }
            Ok(u8::from(check))
        }
        Command::Console(args) => {
            let options = ConsoleOptions {
                token: args.token,
                ..ConsoleOptions::default()
            };
            console::serve(store.clone(), options, args.listen, err).await?;
            Ok(0)
        }
    }
}

async fn act(
    command: OperatorCommand,
    args: ActionArgs,
    store: &SqlSagaStore,
    out: &mut dyn Write,
    now: Timestamp,
) -> Result<u8, OpsError> {
    if args.reason.trim().is_empty() {
        return Err(OpsError::Usage("--reason must say why".to_owned()));
    }
    let filter = args
        .filter
        .clone()
        .with_conditions(&args.conditions)?
        .filter(now);
    let targets: Vec<SagaId> = match args.id {
        Some(id) if actions::selects_everything(&filter) => vec![id],
        Some(_) => {
            return Err(OpsError::Usage(
                "give either a saga id or --where / filter options, not both".to_owned(),
            ));
        }
        None if actions::selects_everything(&filter) => {
            return Err(OpsError::Usage(format!(
                "{command} needs a saga id, or --where conditions for a bulk {command}"
            )));
        }
        None => actions::select(store, &filter, args.max)
            .await?
            .iter()
            .map(|s| s.record.state.saga_id)
            .collect(),
    };
    if args.dry_run {
        writeln!(
            out,
            "dry run: would {command} {} saga{}",
            targets.len(),
            if targets.len() == 1 { "" } else { "s" }
        )?;
        for id in &targets {
            writeln!(out, "  {id}")?;
        }
        return Ok(0);
    }
    let request = OperatorRequest::new(command, actor(args.actor.as_ref()), args.reason.clone());
    let mut failures = 0;
    for id in &targets {
        let answer = actions::request(store, *id, &request, args.wait.into()).await?;
        if !matches!(answer, Answer::Applied(_)) {
            failures += 1;
        }
        writeln!(out, "{command} {id}: {answer}")?;
    }
    if targets.len() > 1 {
        writeln!(
            out,
            "{} of {} applied",
            targets.len() - failures,
            targets.len()
        )?;
    }
    Ok(if failures == 0 { 0 } else { 1 })
}

pub(crate) fn require_reason(reason: &str) -> Result<(), OpsError> {
    match reason.trim().is_empty() {
        true => Err(OpsError::Usage("--reason must say why".to_owned())),
        false => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_shows_no_credentials() {
        let cli = Cli::parse_from([
            "saga",
            "--database-url",
            "postgres://ops:db-s3cret@db/ftgo?sslmode=verify-full",
            "dead-letters",
            "--nats-url",
            "tls://ops:nats-s3cret@nats:4222",
            "list",
        ]);
        let shown = format!("{cli:?}");
        assert!(shown.contains("postgres://ops:***@db/ftgo"), "{shown}");
        assert!(shown.contains("tls://ops:***@nats:4222"), "{shown}");
        assert!(!shown.contains("s3cret"), "{shown}");
    }
}
