//! Test databases: a fresh SQLite file, or a fresh schema in the PostgreSQL database named by
//! `SAGA_TEST_POSTGRES_URL`, so runs never collide.
//!
//! Without that variable the PostgreSQL tests say so on stderr and pass without running —
//! unless `SAGA_REQUIRE_POSTGRES=1` (as `.ci/run` sets), which turns a missing URL into a
//! failure, so CI can never skip them silently.

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

use saga_store::{Database, DatabaseOptions, on_backend};

/// The variable naming the PostgreSQL server for tests.
pub const POSTGRES_URL_VAR: &str = "SAGA_TEST_POSTGRES_URL";
/// Set to `1` to make a missing PostgreSQL URL fail the tests.
pub const REQUIRE_POSTGRES_VAR: &str = "SAGA_REQUIRE_POSTGRES";

/// The variable naming the NATS server for tests.
pub const NATS_URL_VAR: &str = "SAGA_TEST_NATS_URL";
/// Set to `1` to make a missing NATS URL fail the tests.
pub const REQUIRE_NATS_VAR: &str = "SAGA_REQUIRE_NATS";

/// The NATS URL for tests, if configured; panics when it is required but missing. Without it,
/// says on stderr that `test` did not run.
pub fn nats_url(test: &str) -> Option<String> {
    match std::env::var(NATS_URL_VAR) {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            assert!(
                std::env::var(REQUIRE_NATS_VAR).as_deref() != Ok("1"),
                "{REQUIRE_NATS_VAR}=1 but {NATS_URL_VAR} is not set"
            );
            notice(&format!(
                "NATS test `{test}` did not run: set {NATS_URL_VAR} (e.g. nats://127.0.0.1:4222)"
            ));
            None
        }
    }
}

/// A name no other test run uses (letters, digits and underscores).
pub fn unique(prefix: &str) -> String {
    unique_name(prefix)
}

/// Which database a suite runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// A SQLite file.
    Sqlite,
    /// A PostgreSQL schema.
    Postgres,
}

/// A database for one test, with what a child process needs to open it again.
#[derive(Debug)]
pub struct TestDb {
    /// The open database.
    pub database: Database,
    /// Its URL.
    pub url: String,
    /// The PostgreSQL schema, if any.
    pub schema: Option<String>,
    dir: Option<PathBuf>,
}

fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}_{}_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst),
        uuid::Uuid::now_v7()
            .simple()
            .to_string()
            .get(20..)
            .unwrap_or("x")
    )
}

/// Says on the terminal (past the test harness's capture) that a suite did not run.
pub fn notice(text: &str) {
    let _ = writeln!(std::io::stderr(), "{text}");
}

/// The PostgreSQL URL for tests, if configured; panics when it is required but missing.
pub fn postgres_url() -> Option<String> {
    match std::env::var(POSTGRES_URL_VAR) {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            assert!(
                std::env::var(REQUIRE_POSTGRES_VAR).as_deref() != Ok("1"),
                "{REQUIRE_POSTGRES_VAR}=1 but {POSTGRES_URL_VAR} is not set"
            );
            None
        }
    }
}

/// The PostgreSQL URL for `test`, or `None` after saying on stderr that it did not run.
pub fn postgres_url_for(test: &str) -> Option<String> {
    let url = postgres_url();
    if url.is_none() {
        notice(&format!(
            "postgres test `{test}` did not run: set {POSTGRES_URL_VAR} \
             (e.g. postgres://postgres@127.0.0.1:5432/test)"
        ));
    }
    url
}

impl TestDb {
    /// A database on `backend`; `None` (with a notice) when PostgreSQL is not configured.
    pub async fn open(backend: Backend, test: &str) -> Option<Self> {
        match backend {
            Backend::Sqlite => Some(Self::sqlite().await),
            Backend::Postgres => {
                let url = postgres_url_for(test)?;
                Some(Self::postgres(&url).await)
            }
        }
    }

    /// A fresh SQLite file in the temp directory.
    pub async fn sqlite() -> Self {
        let dir = std::env::temp_dir().join(unique_name("saga_test"));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let url = format!("sqlite://{}?mode=rwc", dir.join("saga.db").display());
        let database = Database::connect(&url).await.expect("sqlite opens");
        crate::payment::create_effects_table(&database)
            .await
            .expect("effects table");
        Self {
            database,
            url,
            schema: None,
            dir: Some(dir),
        }
    }

    /// A fresh schema on the PostgreSQL server at `url`.
    pub async fn postgres(url: &str) -> Self {
        let schema = unique_name("saga_test");
        let database = Self::reopen(url, Some(&schema)).await;
        crate::payment::create_effects_table(&database)
            .await
            .expect("effects table");
        Self {
            database,
            url: url.to_owned(),
            schema: Some(schema),
            dir: None,
        }
    }

    /// Opens the database at `url` (in `schema`) again, as a restarted process would.
    pub async fn reopen(url: &str, schema: Option<&str>) -> Database {
        let options = DatabaseOptions {
            schema: schema.map(str::to_owned),
            ..DatabaseOptions::default()
        };
        Database::connect_with(url, options)
            .await
            .expect("test database opens")
    }

    /// A new pool on the same database, as a restarted process would open it. The copy owns
    /// no cleanup (the original does).
    pub async fn restarted(&self) -> TestDb {
        Self::with_database(self, Self::reopen(&self.url, self.schema.as_deref()).await)
    }

    /// Another handle on `original`'s database through `database` (e.g. opened with other
    /// connection settings). The copy owns no cleanup.
    pub fn with_database(original: &TestDb, database: Database) -> TestDb {
        TestDb {
            database,
            url: original.url.clone(),
            schema: original.schema.clone(),
            dir: None,
        }
    }

    /// Closes the pool and removes the database (the SQLite directory or the schema).
    pub async fn cleanup(self) {
        if let Some(schema) = &self.schema {
            let _ = execute(
                &self.database,
                &format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"),
            )
            .await;
        }
        self.database.close().await;
        if let Some(dir) = self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Runs `sql` (statements without parameters, e.g. DDL or a fault to inject) on a connection
/// of `database`; the rows affected.
pub async fn execute(database: &Database, sql: &str) -> Result<u64, sqlx::Error> {
    let mut conn = database.acquire().await?;
    on_backend!(conn.conn(), |c| {
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(c)
            .await
            .map(|done| done.rows_affected())
    })
}

/// The first column of the one row `sql` returns, as an integer.
pub async fn scalar(database: &Database, sql: &str) -> Result<i64, sqlx::Error> {
    let mut conn = database.acquire().await?;
    on_backend!(conn.conn(), |c| {
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .fetch_one(c)
            .await
    })
}

/// Removes an FTGO deployment's storage: its directory, or its schemas
/// (`<prefix>_<service>`, the queue's and the in-place one).
pub async fn remove_ftgo_storage(storage: ftgo::app::Storage) {
    use ftgo::app::{MESSAGES, SERVICES, SHARED, Storage};
    match storage {
        Storage::Sqlite { dir } => {
            let _ = std::fs::remove_dir_all(dir);
        }
        Storage::Postgres { url, schema_prefix } => {
            // A plain pool: connecting through `Database` would create and migrate a schema.
            let pool = sqlx::PgPool::connect(&url)
                .await
                .expect("reconnects to drop the schemas");
            for name in SERVICES.into_iter().chain([MESSAGES, SHARED]) {
                let drop = format!("DROP SCHEMA IF EXISTS \"{schema_prefix}_{name}\" CASCADE");
                sqlx::raw_sql(sqlx::AssertSqlSafe(drop))
                    .execute(&pool)
                    .await
                    .expect("drops the schema");
            }
            pool.close().await;
        }
    }
}
