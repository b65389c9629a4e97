//! A connection pool to the saga database, SQLite or PostgreSQL, chosen by URL.
//!
//! The store, the SQL-table transport and participants' handlers all work through a
//! [`Database`]: one pool, the SQL dialect, the migrations, and in-process wake-ups (fed by
//! `LISTEN/NOTIFY` on PostgreSQL) so that workers react to new work without polling delays.

use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures_util::future::BoxFuture;
use saga_core::ports::StoreError;
use tokio::sync::{mpsc, watch};

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{Any, AnyPool, Executor};
use tokio::sync::Notify;

use crate::error::{DatabaseError, is_transient};
use crate::group::{Answer, Finish, Work, WriterContext, spawn_writers, unwrap_value};

/// A transaction on the saga database. Participants' handlers get one as their context, so
/// their business writes commit together with the dedup record and the reply.
pub type Tx = sqlx::Transaction<'static, Any>;

/// The two SQL dialects the store speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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
            Err(DatabaseError::UnsupportedUrl(redact(url)))
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
    /// PostgreSQL: how long a connection may sit idle inside a transaction before the server
    /// ends it (`idle_in_transaction_session_timeout`, default 30 s). A process that hangs
    /// holding a transaction open (frozen, partitioned) would otherwise keep its row locks —
    /// and every other process waiting on them — forever.
    pub idle_in_transaction_timeout: Duration,
}

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
            idle_in_transaction_timeout: Duration::from_secs(30),
        }
    }
}

/// Wake-up topics.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Topic {
    /// New outbox rows.
    Outbox,
    /// New messages on a queue channel.
    Queue(String),
}

/// In-process wake-ups, one [`Notify`] per topic, and a counter of committed outbox writes
/// that any number of in-database consumers can watch without missing a change.
#[derive(Debug)]
pub(crate) struct Wakeups {
    topics: Mutex<HashMap<Topic, Arc<Notify>>>,
    outbox_writes: watch::Sender<u64>,
}

impl Default for Wakeups {
    fn default() -> Self {
        Self {
            topics: Mutex::default(),
            outbox_writes: watch::Sender::new(0),
        }
    }
}

impl Wakeups {
    pub(crate) fn get(&self, topic: &Topic) -> Arc<Notify> {
        let mut topics = self
            .topics
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        topics.entry(topic.clone()).or_default().clone()
    }

    pub(crate) fn wake(&self, topic: &Topic) {
        self.get(topic).notify_one();
        if *topic == Topic::Outbox {
            self.outbox_writes
                .send_modify(|count| *count = count.wrapping_add(1));
        }
    }

    /// Changes whenever outbox rows (or, with the queue in the same database, queue rows)
    /// were committed.
    pub(crate) fn outbox_writes(&self) -> watch::Receiver<u64> {
        self.outbox_writes.subscribe()
    }
}

#[derive(Debug)]
struct Inner {
    pool: AnyPool,
    dialect: Dialect,
    url: String,
    schema: Option<String>,
    wakeups: Arc<Wakeups>,
    commits: Arc<AtomicU64>,
    writers: usize,
    write_batch: usize,
    /// Where [`Database::write`] sends work; the writer tasks start on first use.
    work: OnceLock<mpsc::Sender<Work>>,
    /// Outgoing messages go straight into this database's queue table (see
    /// [`Database::queue_in_place`]).
    queue_in_place: std::sync::atomic::AtomicBool,
}

/// A pool on the saga database, with its dialect and wake-ups. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Database {
    inner: Arc<Inner>,
}

/// Removes the password from a URL, for messages.
pub(crate) fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &url[scheme + 3..at];
            match credentials.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &url[..scheme + 3],
                    &credentials[..colon],
                    &url[at..]
                ),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

fn valid_identifier(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with(|c: char| c.is_ascii_digit())
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
        sqlx::any::install_default_drivers();
        let dialect = Dialect::of_url(url)?;
        if let Some(schema) = &options.schema
            && !valid_identifier(schema)
        {
            return Err(DatabaseError::InvalidSchema(schema.clone()));
        }
        let connect_options = AnyConnectOptions::from_str(url)?;
        let pool = Self::pool_options(dialect, &options).connect_lazy_with(connect_options);
        let database = Self {
            inner: Arc::new(Inner {
                pool,
                dialect,
                url: redact(url),
                schema: options.schema.clone(),
                wakeups: Arc::default(),
                commits: Arc::default(),
                writers: options.writers.unwrap_or(match dialect {
                    Dialect::Sqlite => 1,
                    Dialect::Postgres => 4,
                }),
                write_batch: options.write_batch.max(1),
                work: OnceLock::new(),
                queue_in_place: std::sync::atomic::AtomicBool::new(false),
            }),
        };
        database
            .wait_until_reachable(options.connect_timeout)
            .await?;
        database.migrate().await?;
        #[cfg(feature = "postgres")]
        if dialect == Dialect::Postgres {
            crate::listen::spawn_listener(&database, url);
        }
        Ok(database)
    }

    fn pool_options(dialect: Dialect, options: &DatabaseOptions) -> AnyPoolOptions {
        let max = options.max_connections.unwrap_or(match dialect {
            Dialect::Sqlite => 4,
            Dialect::Postgres => 10,
        });
        let schema = options.schema.clone();
        let sync = options.sqlite_sync;
        let busy = options.sqlite_busy_timeout.as_millis();
        let idle_in_transaction = options.idle_in_transaction_timeout.as_millis();
        AnyPoolOptions::new()
            .max_connections(max)
            .acquire_timeout(Duration::from_secs(5))
            .after_connect(move |conn, _meta| {
                let schema = schema.clone();
                Box::pin(async move {
                    match dialect {
                        Dialect::Sqlite => {
                            conn.execute("PRAGMA journal_mode = WAL").await?;
                            conn.execute(match sync {
                                SqliteSync::Full => "PRAGMA synchronous = FULL",
                                SqliteSync::Normal => "PRAGMA synchronous = NORMAL",
                            })
                            .await?;
                            conn.execute(sqlx::AssertSqlSafe(format!(
                                "PRAGMA busy_timeout = {busy}"
                            )))
                            .await?;
                        }
                        Dialect::Postgres => {
                            conn.execute(sqlx::AssertSqlSafe(format!(
                                "SET idle_in_transaction_session_timeout = {idle_in_transaction}"
                            )))
                            .await?;
                            if let Some(schema) = schema {
                                // The name was checked to be a plain identifier.
                                conn.execute(sqlx::AssertSqlSafe(format!(
                                    "CREATE SCHEMA IF NOT EXISTS \"{schema}\"; \
                                     SET search_path TO \"{schema}\""
                                )))
                                .await?;
                            }
                        }
                    }
                    Ok(())
                })
            })
    }

    async fn wait_until_reachable(&self, timeout: Duration) -> Result<(), DatabaseError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut delay = Duration::from_millis(100);
        loop {
            match self.inner.pool.acquire().await {
                Ok(_) => return Ok(()),
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

    /// Applies the saga tables' migrations (idempotent). The application's own migrations
    /// may share the database: see [`Database::run_migrations`].
    pub async fn migrate(&self) -> Result<(), DatabaseError> {
        let migrator = match self.inner.dialect {
            Dialect::Sqlite => sqlx::migrate!("migrations/sqlite"),
            Dialect::Postgres => sqlx::migrate!("migrations/postgres"),
        };
        self.run_migrations(migrator).await
    }

    /// Applies a set of migrations that shares the database with others (the saga tables',
    /// the application's): migrations applied by another set are not an error. Give each set
    /// its own version numbers.
    pub async fn run_migrations(
        &self,
        mut migrator: sqlx::migrate::Migrator,
    ) -> Result<(), DatabaseError> {
        migrator.set_ignore_missing(true);
        migrator.run(&self.inner.pool).await?;
        Ok(())
    }

    /// Begins a write transaction (`BEGIN IMMEDIATE` on SQLite, so writers queue on the lock
    /// instead of failing to upgrade it).
    pub async fn begin(&self) -> Result<Tx, sqlx::Error> {
        match self.inner.dialect {
            Dialect::Sqlite => self.inner.pool.begin_with("BEGIN IMMEDIATE").await,
            Dialect::Postgres => self.inner.pool.begin().await,
        }
    }

    /// Commits a transaction begun with [`Database::begin`], counting it (see
    /// [`Database::commits`]).
    pub async fn commit(&self, tx: Tx) -> Result<(), sqlx::Error> {
        tx.commit().await?;
        self.count_commit();
        Ok(())
    }

    /// Counts a committed write (a transaction, or a write statement run on its own).
    pub(crate) fn count_commit(&self) {
        self.inner.commits.fetch_add(1, Ordering::Relaxed);
    }

    /// Runs `work` in a transaction shared with other callers' work and commits it with them
    /// (group commit: see [`crate::group`]). `work` gets the transaction inside a savepoint
    /// of its own; returning [`Finish::Rollback`] or an error undoes only its writes. The
    /// result arrives once the shared commit is durable; if that commit fails, so does this
    /// call. Do not call `write` from inside `work`: it would wait for itself.
    ///
    /// ```no_run
    /// # async fn example(database: saga_store::Database) -> Result<(), saga_core::ports::StoreError> {
    /// use saga_store::Finish;
    /// let rows = database
    ///     .write(|tx| {
    ///         Box::pin(async move {
    ///             let done = sqlx::query("UPDATE accounts SET balance = balance - 5 WHERE id = 1")
    ///                 .execute(&mut **tx)
    ///                 .await
    ///                 .map_err(|e| saga_core::ports::StoreError::Other(e.to_string()))?;
    ///             Ok(Finish::Commit(done.rows_affected()))
    ///         })
    ///     })
    ///     .await?;
    /// # let _ = rows; Ok(()) }
    /// ```
    pub async fn write<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(&'c mut Tx) -> BoxFuture<'c, Result<Finish<T>, StoreError>>
            + Send
            + 'static,
    {
        self.submit(work, false).await
    }

    /// [`Database::write`] for work that may write outbox rows: the relay is woken (and on
    /// PostgreSQL notified once per batch) after the commit.
    pub(crate) async fn submit<T, F>(&self, work: F, wakes_relay: bool) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(&'c mut Tx) -> BoxFuture<'c, Result<Finish<T>, StoreError>>
            + Send
            + 'static,
    {
        self.hand_over(Work::new(work, wakes_relay, false)).await
    }

    /// [`Database::write`] for an in-place pass, which reads only inside the transaction
    /// (see `Work::reads_inside`).
    pub(crate) async fn submit_pass<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(&'c mut Tx) -> BoxFuture<'c, Result<Finish<T>, StoreError>>
            + Send
            + 'static,
    {
        self.hand_over(Work::new(work, false, true)).await
    }

    async fn hand_over<T: 'static>(&self, (work, result): (Work, Answer)) -> Result<T, StoreError> {
        let sender = self.inner.work.get_or_init(|| {
            let context = WriterContext {
                pool: self.inner.pool.clone(),
                dialect: self.inner.dialect,
                commits: self.inner.commits.clone(),
                wakeups: self.inner.wakeups.clone(),
                outbox_channel: self.notify_channel(NotifyTopic::Outbox),
                max_batch: self.inner.write_batch,
                writers: self.inner.writers,
            };
            spawn_writers(context, self.inner.writers)
        });
        let stopped = || StoreError::Unavailable("the database's writers have stopped".into());
        sender.send(work).await.map_err(|_| stopped())?;
        let value = result.await.map_err(|_| stopped())??;
        unwrap_value(value)
    }

    /// How many write transactions this process committed on this database through the saga
    /// framework (the store, the relay, the SQL queue, participants' handlers, and callers of
    /// [`Database::commit`]): the durable commits, for benchmarks.
    pub fn commits(&self) -> u64 {
        self.inner.commits.load(Ordering::Relaxed)
    }

    /// The pool, for queries of your own.
    pub fn pool(&self) -> &AnyPool {
        &self.inner.pool
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

    /// Tells the outbox relay there is work (after committing a transaction of your own that
    /// started a saga; on PostgreSQL a `NOTIFY` in the transaction does this already).
    pub fn wake_relay(&self) {
        self.inner.wakeups.wake(&Topic::Outbox);
    }

    /// Whether outgoing messages skip the outbox and go straight into this database's queue
    /// table, in the transaction that produces them: set by [`crate::SagaRuntime::embedded`]
    /// when the SQL-table transport lives in this database, so a message costs no relay pass
    /// and no separate commit.
    pub fn queue_in_place(&self) -> bool {
        self.inner.queue_in_place.load(Ordering::Relaxed)
    }

    pub(crate) fn set_queue_in_place(&self) {
        self.inner.queue_in_place.store(true, Ordering::Relaxed);
    }

    pub(crate) fn wakeups(&self) -> &Wakeups {
        &self.inner.wakeups
    }

    /// The `NOTIFY` channel for a topic (namespaced by schema).
    pub(crate) fn notify_channel(&self, topic: NotifyTopic) -> String {
        let base = match topic {
            NotifyTopic::Outbox => "saga_outbox",
            NotifyTopic::Queue => "saga_queue",
        };
        match &self.inner.schema {
            Some(schema) => format!("{base}_{schema}"),
            None => base.to_owned(),
        }
    }

    /// Whether two handles share one pool.
    pub fn same_pool(&self, other: &Database) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// Closes the pool.
    pub async fn close(&self) {
        self.inner.pool.close().await;
    }
}

/// PostgreSQL `NOTIFY` channels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum NotifyTopic {
    /// New outbox rows.
    Outbox,
    /// New queue rows; the payload names the channel.
    Queue,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords_only() {
        assert_eq!(
            redact("postgres://user:secret@host:5432/db"),
            "postgres://user:***@host:5432/db"
        );
        assert_eq!(redact("postgres://user@host/db"), "postgres://user@host/db");
        assert_eq!(redact("sqlite://x.db"), "sqlite://x.db");
    }

    #[test]
    fn schema_names_must_be_identifiers() {
        assert!(valid_identifier("saga_test_1"));
        assert!(!valid_identifier("x\"; DROP TABLE y"));
        assert!(!valid_identifier("1abc"));
        assert!(!valid_identifier(""));
    }
}
