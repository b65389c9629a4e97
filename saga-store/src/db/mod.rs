//! The saga database: a pool on SQLite or PostgreSQL (chosen by URL), its migrations, typed
//! transactions ([`backend`]), group commit ([`group`]), in-process wake-ups (`wakeups`,
//! fed by PostgreSQL's `LISTEN/NOTIFY` through `listen`).
//!
//! The store, the SQL-table transport and participants' handlers all work through a
//! [`Database`].

pub mod backend;
pub mod group;
mod listen;
mod migrate;
pub(crate) mod savepoint;
pub(crate) mod wakeups;

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures_util::future::BoxFuture;
use saga_core::message::{NameKind, validate_name};
use saga_core::ports::StoreError;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Executor, PgPool, SqlitePool};
use tokio::sync::mpsc;

use crate::error::{DatabaseError, is_transient};
use crate::secrets::redact_url;
use backend::{PoolConn, Tx, TxContext};
use group::{Finish, Work, WriteKind, WriterContext};
use wakeups::{Topic, Wakeups};

/// The two SQL dialects the store speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dialect {
    /// SQLite 3.35+ (embedded; WAL, `BEGIN IMMEDIATE`).
    Sqlite,
    /// PostgreSQL 12+ (`FOR UPDATE SKIP LOCKED`, `LISTEN/NOTIFY`).
    Postgres,
}

impl Dialect {
    /// The dialect a URL names.
    pub fn of_url(url: &str) -> Result<Self, DatabaseError> {
        if url.starts_with("sqlite:") {
            Ok(Self::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Self::Postgres)
        } else {
            Err(DatabaseError::UnsupportedUrl {
                url: redact_url(url),
            })
        }
    }
}

/// How SQLite syncs commits to disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SqliteSync {
    /// `synchronous=FULL`: every commit is durable (the default).
    Full,
    /// `synchronous=NORMAL`: in WAL mode a power loss may drop the last commits (never
    /// corrupts). Faster; label any figure measured with it.
    Normal,
}

/// Options for [`Database::connect_with`].
#[derive(Clone, Debug)]
pub struct DatabaseOptions {
    /// Pool size (default: 4 for SQLite, 10 for PostgreSQL).
    pub max_connections: Option<u32>,
    /// PostgreSQL schema to create and use (the `search_path`), so several deployments or
    /// test runs can share one database.
    pub schema: Option<String>,
    /// How long to keep retrying before [`DatabaseError::Unreachable`] (default 10 s).
    pub connect_timeout: Duration,
    /// SQLite durability (default [`SqliteSync::Full`]).
    pub sqlite_sync: SqliteSync,
    /// How long a SQLite writer waits for the lock (default 10 s).
    pub sqlite_busy_timeout: Duration,
    /// Writer tasks that group-commit [`Database::write`] work (default: 1 for SQLite,
    /// which has a single writer anyway, 4 for PostgreSQL).
    pub writers: Option<usize>,
    /// The most pieces of work one group commit takes (default 256).
    pub write_batch: usize,
    /// SQLite: where the group writer runs (default [`SqliteWriter::Pinned`] on the last
    /// core the process may use).
    pub sqlite_writer: SqliteWriter,
    /// PostgreSQL: how long a connection may sit idle inside a transaction before the server
    /// ends it (`idle_in_transaction_session_timeout`, default 30 s). A process that hangs
    /// holding a transaction open (frozen, partitioned) would otherwise keep its row locks —
    /// and every other process waiting on them — forever.
    pub idle_in_transaction_timeout: Duration,
    /// Create and upgrade tables: the saga tables on connect and the application's in
    /// [`Database::run_migrations`] (the default). `false` for a role that may only use
    /// tables another role owns and migrates — the console's read-only role, or an API
    /// process with rights to read and write rows only (see `docs/security.md`): the tables
    /// must be there already, and nothing in the schema is created or changed.
    pub migrate: bool,
    /// Bookkeeping writes — the SQL queue's claims, acknowledgements, lease renewals and
    /// give-backs, and the relay's stamps on published outbox rows — commit without waiting
    /// for the disk (the default, `true`): SQLite `synchronous=NORMAL`, PostgreSQL
    /// `synchronous_commit=off`, on a small pool of their own. Each of them only records that
    /// a message was taken or passed on; a crash of the machine (not of the process) can undo
    /// the last few, which at worst delivers or publishes those messages once more — and
    /// every consumer's dedup records, which commit durably with the effects, skip them.
    /// Every effect, saga state, outbox row and queued message still commits durably, and
    /// a later durable commit makes the earlier bookkeeping durable too. `false` flushes
    /// every commit.
    pub relaxed_bookkeeping: bool,
    /// PostgreSQL TLS settings; each one given overrides the URL's.
    pub tls: PostgresTls,
    /// PostgreSQL: a role to `SET ROLE` to on every connection (the login role must be a
    /// member). For a schema several services share, such as the SQL queue's: the tables
    /// its migrations create belong to this role, so every member can use them, whichever
    /// service created them (see `docs/security.md`).
    pub role: Option<String>,
}

/// Where a SQLite database's group writer runs ([`DatabaseOptions::sqlite_writer`]).
///
/// sqlx runs each SQLite connection on a thread of its own: every statement is handed to
/// that thread and its answer handed back. When the two threads sit on different cores,
/// each hand-off wakes the other core (on a virtual machine, an interrupt through the
/// hypervisor), and that — not SQLite — was most of a saga's time: on a 2-core VM, 64 % of
/// the CPU in the kernel's scheduler. On one core a hand-off is a local context switch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SqliteWriter {
    /// On the async runtime's worker threads, with every other task (the writer's
    /// connection thread wherever the OS puts it).
    Runtime,
    /// On a thread of its own, with a connection of its own whose sqlx thread it starts, both
    /// pinned to one CPU core: `core`, or (`None`) the last core the process may use, the
    /// next database's writer the one before, and so on. Measured on a 2-core VM (FTGO,
    /// SQLite in place, one sitting): 4.9 → 3.4–4.3 ms a saga at one in flight, 920 →
    /// 1,050–1,300 sagas/s at 256. Nothing is pinned for an in-memory database (one per
    /// connection: the writer shares the pool's) or with more than one writer.
    Pinned {
        /// The core, if not the default.
        core: Option<usize>,
    },
}

impl Default for SqliteWriter {
    fn default() -> Self {
        Self::Pinned { core: None }
    }
}

/// PostgreSQL TLS settings, as `sslmode`, `sslrootcert`, `sslcert` and `sslkey` give them
/// in the URL, for settings that come from elsewhere (files mounted by the platform, a
/// secret store). They apply to every connection, the `LISTEN` one included. Needs the
/// `postgres-tls` feature for any mode that encrypts.
#[derive(Clone, Debug, Default)]
pub struct PostgresTls {
    /// How much TLS to insist on (the URL's `sslmode`).
    pub mode: Option<SslMode>,
    /// The CA certificate(s) the server's certificate must chain to (PEM).
    pub root_cert: Option<PathBuf>,
    /// The client certificate (PEM), for a server that authenticates by certificate.
    pub client_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    pub client_key: Option<PathBuf>,
}

/// PostgreSQL's `sslmode`s.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SslMode {
    /// No TLS.
    Disable,
    /// TLS if the server offers it (libpq's and sqlx's default).
    Prefer,
    /// TLS, without checking the server's certificate.
    Require,
    /// TLS with a certificate that chains to a trusted root.
    VerifyCa,
    /// As `VerifyCa`, and the certificate names the host connected to.
    VerifyFull,
}

impl SslMode {
    /// The name in a URL (`verify-full`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        }
    }
}

impl PostgresTls {
    fn settings(&self) -> Vec<(&'static str, String)> {
        let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string());
        [
            ("sslmode", self.mode.map(|m| m.as_str().to_owned())),
            ("sslrootcert", path(&self.root_cert)),
            ("sslcert", path(&self.client_cert)),
            ("sslkey", path(&self.client_key)),
        ]
        .into_iter()
        .filter_map(|(key, value)| Some((key, value?)))
        .collect()
    }

    /// `url` with these settings in its query, replacing the URL's own: every connection,
    /// the pool's and the `LISTEN` one, is opened from the one URL.
    fn apply(&self, url: &str) -> String {
        let settings = self.settings();
        if settings.is_empty() {
            return url.to_owned();
        }
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        let mut pairs: Vec<String> = query
            .split('&')
            .filter(|pair| !pair.is_empty())
            .filter(|pair| {
                let key = pair.split_once('=').map_or(*pair, |(key, _)| key);
                !settings.iter().any(|(k, _)| *k == key)
            })
            .map(str::to_owned)
            .collect();
        for (key, value) in settings {
            let value = percent_encoding::utf8_percent_encode(&value, QUERY_VALUE);
            pairs.push(format!("{key}={value}"));
        }
        format!("{base}?{}", pairs.join("&"))
    }
}

/// What a query value must escape (`&`, `=`, `#`, `+`, `%`, spaces, controls…); `/` stays.
const QUERY_VALUE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'/')
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

impl Default for DatabaseOptions {
    fn default() -> Self {
        Self {
            max_connections: None,
            schema: None,
            connect_timeout: Duration::from_secs(10),
            sqlite_sync: SqliteSync::Full,
            sqlite_busy_timeout: Duration::from_secs(10),
            writers: None,
            write_batch: 256,
            sqlite_writer: SqliteWriter::default(),
            idle_in_transaction_timeout: Duration::from_secs(30),
            migrate: true,
            relaxed_bookkeeping: true,
            tls: PostgresTls::default(),
            role: None,
        }
    }
}

/// A pool of one backend.
#[derive(Clone, Debug)]
pub(crate) enum Pool {
    Postgres(PgPool),
    Sqlite(SqlitePool),
}

impl Pool {
    pub(crate) async fn acquire(&self) -> Result<PoolConn, sqlx::Error> {
        Ok(match self {
            Self::Postgres(pool) => PoolConn::Postgres(pool.acquire().await?),
            Self::Sqlite(pool) => PoolConn::Sqlite(pool.acquire().await?),
        })
    }

    /// Begins a write transaction (`BEGIN IMMEDIATE` on SQLite, so writers queue on the lock
    /// instead of failing to upgrade it).
    pub(crate) async fn begin(&self) -> Result<Tx, sqlx::Error> {
        Ok(match self {
            Self::Postgres(pool) => Tx::Postgres(pool.begin().await?),
            Self::Sqlite(pool) => Tx::Sqlite(pool.begin_with("BEGIN IMMEDIATE").await?),
        })
    }

    fn is_closed(&self) -> bool {
        match self {
            Self::Postgres(pool) => pool.is_closed(),
            Self::Sqlite(pool) => pool.is_closed(),
        }
    }
}

#[derive(Debug)]
struct Inner {
    pool: Pool,
    /// For bookkeeping writes ([`DatabaseOptions::relaxed_bookkeeping`]): commits that do not
    /// wait for the disk (or `pool` again, when off).
    relaxed: Pool,
    /// [`DatabaseOptions::relaxed_bookkeeping`].
    relaxed_bookkeeping: bool,
    relaxed_commits: Arc<AtomicU64>,
    dialect: Dialect,
    url: String,
    schema: Option<String>,
    /// PostgreSQL: the server and database (`host:port/name`), to tell co-located databases.
    server: Option<String>,
    wakeups: Arc<Wakeups>,
    commits: Arc<AtomicU64>,
    writers: usize,
    write_batch: usize,
    /// [`DatabaseOptions::migrate`]: `false` makes every migration a no-op.
    migrate: bool,
    /// Where [`Database::write`] sends work; the writer tasks start on first use.
    work: OnceLock<mpsc::Sender<Work>>,
    /// SQLite with [`SqliteWriter::Pinned`]: the writer thread's own pool (one connection,
    /// opened from that thread) and its core.
    pinned_writer: Option<(Pool, group::Core)>,
}

/// Migration versions below this are saga-store's own (`0001_saga_tables.sql`, …); an
/// application's migrations sharing the database must use larger ones (timestamps).
pub const SAGA_MIGRATION_VERSIONS: i64 = 10_000;

/// A pool on the saga database, with its dialect and wake-ups. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Database {
    inner: Arc<Inner>,
}

/// Whether connecting failed because of TLS: its setup (`Error::Tls`), or the server's
/// certificate not verifying (rustls's error inside sqlx's I/O error).
fn is_tls_failure(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Tls(_) => true,
        #[cfg(feature = "postgres-tls")]
        sqlx::Error::Io(io) => crate::error::is_tls_handshake_failure(io),
        _ => false,
    }
}

/// Refuses, before connecting, a PostgreSQL URL whose `sslrootcert`, `sslcert` or `sslkey`
/// names a file that is not there: sqlx would report it as an I/O error, which looks like an
/// unreachable server and would be retried until the connect timeout.
fn check_tls_files(url: &str) -> Result<(), DatabaseError> {
    let Some((_, query)) = url.split_once('?') else {
        return Ok(());
    };
    for (key, value) in query.split('&').filter_map(|pair| pair.split_once('=')) {
        if !matches!(key, "sslrootcert" | "sslcert" | "sslkey") {
            continue;
        }
        let value = percent_encoding::percent_decode_str(value).decode_utf8_lossy();
        if !Path::new(value.as_ref()).is_file() {
            return Err(DatabaseError::Tls {
                url: redact_url(url),
                source: sqlx::Error::Tls(format!("{key} {value:?} is not a readable file").into()),
            });
        }
    }
    Ok(())
}

impl Database {
    /// Opens `url` (`sqlite:path/to/file.db`, `sqlite::memory:`, `postgres://…`) with default
    /// options, and applies the migrations.
    pub async fn connect(url: &str) -> Result<Self, DatabaseError> {
        Self::connect_with(url, DatabaseOptions::default()).await
    }

    /// A SQLite database in a file, created if missing.
    pub async fn sqlite_file(path: &Path) -> Result<Self, DatabaseError> {
        Self::connect(&format!("sqlite://{}?mode=rwc", path.display())).await
    }

    /// Opens `url` with `options`, retrying with backoff until `options.connect_timeout`, and
    /// applies the migrations.
    pub async fn connect_with(url: &str, options: DatabaseOptions) -> Result<Self, DatabaseError> {
        let dialect = Dialect::of_url(url)?;
        let url = &match dialect {
            Dialect::Postgres => options.tls.apply(url),
            Dialect::Sqlite => url.to_owned(),
        };
        if let Some(schema) = &options.schema {
            validate_name(NameKind::SqlIdentifier, schema)
                .map_err(|source| DatabaseError::InvalidSchema { source })?;
        }
        if let Some(role) = &options.role {
            validate_name(NameKind::SqlIdentifier, role)
                .map_err(|source| DatabaseError::InvalidRole { source })?;
        }
        if dialect == Dialect::Postgres {
            check_tls_files(url)?;
        }
        let pool = match dialect {
            Dialect::Sqlite => Pool::Sqlite(sqlite_pool(url, &options, false)?),
            Dialect::Postgres => Pool::Postgres(postgres_pool(url, &options, false)?),
        };
        // An in-memory SQLite database is one per pool: its bookkeeping shares the pool.
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        let relaxed_bookkeeping = options.relaxed_bookkeeping && !in_memory;
        let relaxed = match (relaxed_bookkeeping, dialect) {
            (false, _) => pool.clone(),
            (true, Dialect::Sqlite) => Pool::Sqlite(sqlite_pool(url, &options, true)?),
            (true, Dialect::Postgres) => Pool::Postgres(postgres_pool(url, &options, true)?),
        };
        let writers = options.writers.unwrap_or(match dialect {
            Dialect::Sqlite => 1,
            Dialect::Postgres => 4,
        });
        let pinned_writer = match (dialect, options.sqlite_writer) {
            (Dialect::Sqlite, SqliteWriter::Pinned { core }) if !in_memory && writers == 1 => {
                let one = DatabaseOptions {
                    max_connections: Some(1),
                    ..options.clone()
                };
                let pool = Pool::Sqlite(sqlite_pool(url, &one, false)?);
                Some((pool, group::Core::pick(core)))
            }
            _ => None,
        };
        let database = Self {
            inner: Arc::new(Inner {
                pool,
                relaxed,
                relaxed_bookkeeping,
                relaxed_commits: Arc::default(),
                dialect,
                url: redact_url(url),
                schema: options.schema.clone(),
                server: match dialect {
                    Dialect::Postgres => Some(postgres_server(url)?),
                    Dialect::Sqlite => None,
                },
                wakeups: Arc::default(),
                commits: Arc::default(),
                writers,
                write_batch: options.write_batch.max(1),
                migrate: options.migrate,
                work: OnceLock::new(),
                pinned_writer,
            }),
        };
        database
            .wait_until_reachable(options.connect_timeout)
            .await?;
        database.migrate().await?;
        if dialect == Dialect::Postgres {
            listen::spawn_listener(&database, url);
        }
        Ok(database)
    }

    async fn wait_until_reachable(&self, timeout: Duration) -> Result<(), DatabaseError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut delay = Duration::from_millis(100);
        loop {
            match self.inner.pool.acquire().await {
                Ok(_) => return Ok(()),
                // A certificate or TLS setting does not fix itself: say so at once.
                Err(err) if is_tls_failure(&err) => {
                    return Err(DatabaseError::Tls {
                        url: self.inner.url.clone(),
                        source: err,
                    });
                }
                Err(err) if is_transient(&err) && tokio::time::Instant::now() < deadline => {
                    tracing::warn!(url = %self.inner.url, error = %err, retry_in = ?delay, "database unreachable; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
                Err(err) if is_transient(&err) => {
                    return Err(DatabaseError::Unreachable {
                        url: self.inner.url.clone(),
                        source: err,
                    });
                }
                Err(err) => return Err(err.into()),
            }
        }
    }

    /// Begins a write transaction (`BEGIN IMMEDIATE` on SQLite, so writers queue on the lock
    /// instead of failing to upgrade it).
    pub async fn begin(&self) -> Result<Tx, sqlx::Error> {
        self.inner.pool.begin().await
    }

    /// Commits a transaction begun with [`Database::begin`], counting it (see
    /// [`Database::commits`]), and wakes this process's outbox relay: a saga started in it
    /// ([`start_saga_in`](crate::start_saga_in)) sends its first command at once, not at the
    /// relay's next poll.
    pub async fn commit(&self, tx: Tx) -> Result<(), sqlx::Error> {
        tx.commit().await?;
        self.count_commit();
        self.wake_relay();
        Ok(())
    }

    /// A connection from the pool, for statements of your own outside a transaction.
    pub async fn acquire(&self) -> Result<PoolConn, sqlx::Error> {
        self.inner.pool.acquire().await
    }

    /// Whether the database answers a query within 2 s, for readiness checks.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let ping = async {
            let mut conn = self.inner.pool.acquire().await?;
            crate::on_backend!(conn.conn(), |c| sqlx::query("SELECT 1")
                .execute(c)
                .await
                .map(drop))
        };
        match tokio::time::timeout(Duration::from_secs(2), ping).await {
            Ok(result) => result.map_err(crate::error::store_error),
            Err(_) => Err(StoreError::unavailable(format!(
                "{} did not answer within 2 s",
                self.inner.url
            ))),
        }
    }

    /// The PostgreSQL pool, if this is a PostgreSQL database (for `query!` and the rest of
    /// sqlx's typed API).
    pub fn postgres_pool(&self) -> Option<&PgPool> {
        match &self.inner.pool {
            Pool::Postgres(pool) => Some(pool),
            Pool::Sqlite(_) => None,
        }
    }

    /// The SQLite pool, if this is a SQLite database.
    pub fn sqlite_pool(&self) -> Option<&SqlitePool> {
        match &self.inner.pool {
            Pool::Sqlite(pool) => Some(pool),
            Pool::Postgres(_) => None,
        }
    }

    /// Counts a committed write (a transaction, or a write statement run on its own).
    pub(crate) fn count_commit(&self) {
        self.inner.commits.fetch_add(1, Ordering::Relaxed);
    }

    /// Runs `work` in a transaction shared with other callers' work and commits it with them
    /// (group commit: see [`group`]). `work` gets the transaction inside a savepoint of its
    /// own — as the portable [`Tx`], or as this backend's [`PgTx`](backend::PgTx) /
    /// [`SqliteTx`](backend::SqliteTx), as its parameter's type says; returning
    /// [`Finish::Rollback`] or an error undoes only its writes. The result arrives once the
    /// shared commit is durable; if that commit fails, so does this call. Do not call `write`
    /// from inside `work`: it would wait for itself.
    ///
    /// ```no_run
    /// # async fn example(database: saga_store::Database) -> Result<(), saga_core::ports::StoreError> {
    /// use saga_store::{Finish, PgTx};
    /// let rows = database
    ///     .write(|tx: &mut PgTx| {
    ///         Box::pin(async move {
    ///             let done = sqlx::query("UPDATE accounts SET balance = balance - 5 WHERE id = 1")
    ///                 .execute(&mut **tx)
    ///                 .await
    ///                 .map_err(saga_core::ports::StoreError::rejected)?;
    ///             Ok(Finish::Commit(done.rows_affected()))
    ///         })
    ///     })
    ///     .await?;
    /// # let _ = rows; Ok(()) }
    /// ```
    pub async fn write<C, T, F>(&self, work: F) -> Result<T, StoreError>
    where
        C: TxContext,
        T: Send + 'static,
        F: for<'c> FnOnce(&'c mut C) -> BoxFuture<'c, Result<Finish<T>, StoreError>>
            + Send
            + 'static,
    {
        self.write_as(WriteKind::Plain, work).await
    }

    /// [`Database::write`] for the framework's own kinds of work (see [`WriteKind`]).
    pub(crate) async fn write_as<C, T, F>(&self, kind: WriteKind, work: F) -> Result<T, StoreError>
    where
        C: TxContext,
        T: Send + 'static,
        F: for<'c> FnOnce(&'c mut C) -> BoxFuture<'c, Result<Finish<T>, StoreError>>
            + Send
            + 'static,
    {
        let (work, answer) = Work::new(work, kind);
        let sender = self.inner.work.get_or_init(|| {
            let (pool, core) = match &self.inner.pinned_writer {
                Some((pool, core)) => (pool.clone(), Some(*core)),
                None => (self.inner.pool.clone(), None),
            };
            let context = WriterContext {
                pool,
                core,
                commits: self.inner.commits.clone(),
                wakeups: self.inner.wakeups.clone(),
                outbox_channel: self.outbox_notify_channel(),
                name: self.name(),
                max_batch: self.inner.write_batch,
                writers: self.inner.writers,
            };
            group::spawn_writers(context)
        });
        if sender.send(work).await.is_err() {
            return Err(StoreError::Bug {
                what: "the database's writers have stopped",
            });
        }
        answer.await.unwrap_or(Err(StoreError::Bug {
            what: "the database's writers stopped before answering",
        }))
    }

    /// How many write transactions this process committed on this database through the saga
    /// framework (the store, the relay, the SQL queue, participants' handlers, and callers of
    /// [`Database::commit`]): the durable commits, for benchmarks.
    pub fn commits(&self) -> u64 {
        self.inner.commits.load(Ordering::Relaxed)
    }

    /// The SQL dialect.
    pub fn dialect(&self) -> Dialect {
        self.inner.dialect
    }

    /// The URL, without its password.
    pub fn url(&self) -> &str {
        &self.inner.url
    }

    /// The PostgreSQL schema in use, if one was set.
    pub fn schema(&self) -> Option<&str> {
        self.inner.schema.as_deref()
    }

    /// The database's name in metrics (the `database` label): its schema if it has one, else
    /// the last part of its URL's path — the SQLite file's name, the PostgreSQL database's.
    pub fn name(&self) -> String {
        if let Some(schema) = self.schema() {
            return schema.to_owned();
        }
        let path = self.inner.url.split(['?', '#']).next().unwrap_or_default();
        match path.rsplit(['/', '\\', ':']).next() {
            Some(last) if !last.is_empty() => last.to_owned(),
            _ => "default".to_owned(),
        }
    }

    /// Tells the outbox relay there is work (after committing a transaction of your own that
    /// started a saga without [`Database::commit`], which does this; on PostgreSQL a `NOTIFY`
    /// in the transaction wakes the relays of other processes too).
    pub fn wake_relay(&self) {
        self.inner.wakeups.wake(&Topic::Outbox);
    }

    pub(crate) fn wakeups(&self) -> &Wakeups {
        &self.inner.wakeups
    }

    /// The PostgreSQL `NOTIFY` channel announcing new outbox rows (namespaced by schema).
    pub(crate) fn outbox_notify_channel(&self) -> String {
        self.notify_channel("saga_outbox")
    }

    /// The PostgreSQL `NOTIFY` channel announcing new queue rows, the payload naming their
    /// queue channel (namespaced by schema).
    pub(crate) fn queue_notify_channel(&self) -> String {
        self.notify_channel("saga_queue")
    }

    fn notify_channel(&self, base: &str) -> String {
        match &self.inner.schema {
            Some(schema) => format!("{base}_{schema}"),
            None => base.to_owned(),
        }
    }

    /// Whether two handles share one pool.
    pub fn same_pool(&self, other: &Database) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// Whether `other` is another schema of this one's PostgreSQL database (same host, port
    /// and database name): a transaction of one can write the other's tables, so co-located
    /// services handle their messages in place.
    pub fn is_co_located_with(&self, other: &Database) -> bool {
        self.inner.server.is_some()
            && self.inner.server == other.inner.server
            && self.inner.schema != other.inner.schema
    }

    /// Whether the pool is closed.
    pub fn is_closed(&self) -> bool {
        self.inner.pool.is_closed()
    }

    /// Closes the pool.
    pub async fn close(&self) {
        let mut pools = vec![&self.inner.pool];
        if self.inner.relaxed_bookkeeping {
            pools.push(&self.inner.relaxed);
        }
        if let Some((pool, _)) = &self.inner.pinned_writer {
            pools.push(pool);
        }
        for pool in pools {
            match pool {
                Pool::Postgres(pool) => pool.close().await,
                Pool::Sqlite(pool) => pool.close().await,
            }
        }
    }

    /// A connection for a bookkeeping write, whose commit need not wait for the disk
    /// ([`DatabaseOptions::relaxed_bookkeeping`]); count the write with
    /// [`Database::count_relaxed_commit`].
    pub(crate) async fn acquire_relaxed(&self) -> Result<PoolConn, sqlx::Error> {
        self.inner.relaxed.acquire().await
    }

    /// Begins a bookkeeping transaction (see [`Database::acquire_relaxed`]); end it with
    /// [`Database::commit_relaxed`].
    pub(crate) async fn begin_relaxed(&self) -> Result<Tx, sqlx::Error> {
        self.inner.relaxed.begin().await
    }

    /// Commits a bookkeeping transaction, counting it.
    pub(crate) async fn commit_relaxed(&self, tx: Tx) -> Result<(), sqlx::Error> {
        tx.commit().await?;
        self.count_relaxed_commit();
        Ok(())
    }

    /// Counts a bookkeeping commit made outside [`Database::commit_relaxed`].
    pub(crate) fn count_relaxed_commit(&self) {
        match self.inner.relaxed_bookkeeping {
            true => self.inner.relaxed_commits.fetch_add(1, Ordering::Relaxed),
            false => self.inner.commits.fetch_add(1, Ordering::Relaxed),
        };
    }

    /// Bookkeeping commits that did not wait for the disk so far (see
    /// [`DatabaseOptions::relaxed_bookkeeping`]; with it off they count as [`Database::commits`]).
    pub fn relaxed_commits(&self) -> u64 {
        self.inner.relaxed_commits.load(Ordering::Relaxed)
    }
}

/// The pool of `url`; `relaxed`: the small one for bookkeeping writes, whose commits do not
/// wait for the disk (see [`DatabaseOptions::relaxed_bookkeeping`]).
fn sqlite_pool(
    url: &str,
    options: &DatabaseOptions,
    relaxed: bool,
) -> Result<SqlitePool, DatabaseError> {
    let connect = SqliteConnectOptions::from_str(url)?
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(match (relaxed, options.sqlite_sync) {
            (false, SqliteSync::Full) => SqliteSynchronous::Full,
            // In WAL mode: the commit is written, not flushed; the next flushing commit of
            // any connection flushes it too.
            (true, _) | (_, SqliteSync::Normal) => SqliteSynchronous::Normal,
        })
        .busy_timeout(options.sqlite_busy_timeout);
    let size = options.max_connections.unwrap_or(4);
    Ok(SqlitePoolOptions::new()
        .max_connections(if relaxed { size.min(2) } else { size })
        .acquire_timeout(Duration::from_secs(5))
        .connect_lazy_with(connect))
}

/// Where `url` points: `host:port/database` (the socket's path for a host).
fn postgres_server(url: &str) -> Result<String, DatabaseError> {
    let connect = PgConnectOptions::from_str(url)?;
    let host = match connect.get_socket() {
        Some(socket) => socket.display().to_string(),
        None => connect.get_host().to_owned(),
    };
    // Without a database name, PostgreSQL takes the user's.
    let name = connect
        .get_database()
        .unwrap_or_else(|| connect.get_username());
    Ok(format!("{host}:{}/{name}", connect.get_port()))
}

/// The pool of `url`; `relaxed`: the small one for bookkeeping writes, whose commits do not
/// wait for the WAL flush (see [`DatabaseOptions::relaxed_bookkeeping`]).
fn postgres_pool(
    url: &str,
    options: &DatabaseOptions,
    relaxed: bool,
) -> Result<PgPool, DatabaseError> {
    let mut connect = PgConnectOptions::from_str(url)?;
    if relaxed {
        connect = connect.options([("synchronous_commit", "off")]);
    }
    let size = options.max_connections.unwrap_or(10);
    let schema = options.schema.clone();
    let role = options.role.clone();
    let idle_in_transaction = options.idle_in_transaction_timeout.as_millis();
    Ok(PgPoolOptions::new()
        .max_connections(if relaxed { size.min(4) } else { size })
        .acquire_timeout(Duration::from_secs(5))
        .after_connect(move |conn, _meta| {
            let (schema, role) = (schema.clone(), role.clone());
            Box::pin(async move {
                conn.execute(sqlx::AssertSqlSafe(format!(
                    "SET idle_in_transaction_session_timeout = {idle_in_transaction}"
                )))
                .await?;
                if let Some(role) = role {
                    // Checked to be a plain identifier; before the schema, which it may own.
                    conn.execute(sqlx::AssertSqlSafe(format!("SET ROLE \"{role}\"")))
                        .await?;
                }
                if let Some(schema) = schema {
                    // The name was checked to be a plain identifier. `CREATE SCHEMA IF NOT
                    // EXISTS` would need the CREATE privilege on the database even when the
                    // schema exists: a role that may use only its own schema could not connect.
                    conn.execute(sqlx::AssertSqlSafe(format!(
                        "DO $$ BEGIN \
                           IF NOT EXISTS (SELECT FROM pg_namespace WHERE nspname = '{schema}') \
                           THEN CREATE SCHEMA \"{schema}\"; END IF; \
                         EXCEPTION WHEN duplicate_schema OR unique_violation THEN NULL; \
                         END $$; SET search_path TO \"{schema}\""
                    )))
                    .await?;
                }
                Ok(())
            })
        })
        .connect_lazy_with(connect))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `sslmode=require` gives an encrypted session (the machine's PostgreSQL has `ssl = on`);
    /// `verify-full` checks the certificate and its name; a certificate that does not verify,
    /// or a certificate file that is not there, is reported at once as a TLS error, not
    /// retried until the connect timeout like an unreachable server.
    #[cfg(feature = "postgres-tls")]
    #[tokio::test]
    async fn postgres_over_tls() {
        let Ok(url) = std::env::var("SAGA_TEST_POSTGRES_URL") else {
            assert!(
                std::env::var("SAGA_REQUIRE_POSTGRES").as_deref() != Ok("1"),
                "SAGA_REQUIRE_POSTGRES=1 but SAGA_TEST_POSTGRES_URL is not set"
            );
            eprintln!("postgres TLS test did not run: set SAGA_TEST_POSTGRES_URL");
            return;
        };
        let join = if url.contains('?') { '&' } else { '?' };
        let schema = format!("saga_tls_{}", uuid::Uuid::now_v7().simple());
        let options = DatabaseOptions {
            schema: Some(schema.clone()),
            ..DatabaseOptions::default()
        };
        let database = Database::connect_with(&format!("{url}{join}sslmode=require"), options)
            .await
            .expect("connects over TLS");
        let pool = database.postgres_pool().expect("PostgreSQL");
        let ssl: bool =
            sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
                .fetch_one(pool)
                .await
                .expect("reads pg_stat_ssl");
        assert!(ssl, "the session is encrypted");
        let drop = format!("DROP SCHEMA \"{schema}\" CASCADE");
        sqlx::raw_sql(sqlx::AssertSqlSafe(drop))
            .execute(pool)
            .await
            .expect("drops the schema");
        database.close().await;

        // The server's certificate verified against its CA (`SAGA_TEST_POSTGRES_CA`: the
        // machine's self-signed one, as `.ci/run` sets it), by name: `localhost` is the name
        // in the certificate, `127.0.0.1` is not.
        match std::env::var("SAGA_TEST_POSTGRES_CA") {
            Ok(ca) => {
                let verified = format!("{url}{join}sslmode=verify-full&sslrootcert={ca}")
                    .replace("@127.0.0.1:", "@localhost:");
                let database = Database::connect(&verified).await.expect("verify-full");
                database.close().await;
                let began = std::time::Instant::now();
                let by_address = verified.replace("@localhost:", "@127.0.0.1:");
                let err = Database::connect(&by_address)
                    .await
                    .expect_err("wrong name");
                assert!(matches!(err, DatabaseError::Tls { .. }), "{err:?}");
                assert!(err.to_string().contains("not valid for name"), "{err}");
                assert!(began.elapsed() < Duration::from_secs(5), "not retried");
            }
            Err(_) => eprintln!(
                "postgres verify-full test did not run: set SAGA_TEST_POSTGRES_CA to the \
                 server's CA certificate"
            ),
        }

        let began = std::time::Instant::now();
        let missing = format!("{url}{join}sslmode=verify-full&sslrootcert=/nonexistent/root.crt");
        let err = Database::connect(&missing).await.expect_err("refused");
        assert!(matches!(err, DatabaseError::Tls { .. }), "{err:?}");
        assert!(err.to_string().contains("sslrootcert"), "{err}");
        assert!(
            began.elapsed() < Duration::from_secs(5),
            "reported at once, not retried"
        );
    }

    #[test]
    fn tls_settings_replace_the_urls_own() {
        let tls = PostgresTls {
            mode: Some(SslMode::VerifyFull),
            root_cert: Some(PathBuf::from("/etc/certs/my ca&x.pem")),
            ..PostgresTls::default()
        };
        assert_eq!(
            tls.apply("postgres://u@h/db?sslmode=disable&application_name=a"),
            "postgres://u@h/db?application_name=a&sslmode=verify-full\
             &sslrootcert=/etc/certs/my%20ca%26x.pem"
        );
        assert_eq!(
            PostgresTls::default().apply("postgres://u@h/db"),
            "postgres://u@h/db"
        );
        let connect = PgConnectOptions::from_str(&tls.apply("postgres://u@h/db")).expect("parses");
        assert!(matches!(
            connect.get_ssl_mode(),
            sqlx::postgres::PgSslMode::VerifyFull
        ));
    }

    /// A schema name that could break out of its quotes is refused before any connection.
    #[tokio::test]
    async fn an_injected_schema_name_is_refused() {
        for schema in ["x\"; DROP TABLE y; --", "a b", "ftgo_order\0", "1abc", ""] {
            let options = DatabaseOptions {
                schema: Some(schema.to_owned()),
                ..DatabaseOptions::default()
            };
            let err = Database::connect_with("postgres://nobody@127.0.0.1:1/none", options)
                .await
                .expect_err(schema);
            assert!(
                matches!(err, DatabaseError::InvalidSchema { .. }),
                "{schema:?}: {err}"
            );
        }
    }
}
