//! Databases for the SQL modules' unit tests: a fresh SQLite file always, and a fresh
//! PostgreSQL schema when `SAGA_TEST_POSTGRES_URL` is set (otherwise the test says on stderr
//! that the PostgreSQL half did not run). Each is migrated, and removed by [`TestDb::drop`].

use std::path::PathBuf;

use crate::db::{Database, DatabaseOptions};

/// One migrated test database.
pub(crate) struct TestDb {
    pub(crate) database: Database,
    dir: Option<PathBuf>,
    schema: Option<String>,
}

fn unique(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::now_v7().simple())
}

/// The databases to run a unit test on.
pub(crate) async fn databases(test: &str) -> Vec<TestDb> {
    let dir = std::env::temp_dir().join(unique("saga_sql_test"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let sqlite = Database::sqlite_file(&dir.join("saga.db"))
        .await
        .expect("SQLite opens");
    let mut databases = vec![TestDb {
        database: sqlite,
        dir: Some(dir),
        schema: None,
    }];
    match std::env::var("SAGA_TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => {
            let schema = unique("saga_sql_test");
            let options = DatabaseOptions {
                schema: Some(schema.clone()),
                ..DatabaseOptions::default()
            };
            let database = Database::connect_with(&url, options)
                .await
                .expect("PostgreSQL opens");
            databases.push(TestDb {
                database,
                dir: None,
                schema: Some(schema),
            });
        }
        _ => eprintln!(
            "unit test `{test}` ran on SQLite only: set SAGA_TEST_POSTGRES_URL for PostgreSQL"
        ),
    }
    databases
}

impl TestDb {
    /// Closes and removes the database.
    pub(crate) async fn drop(self) {
        if let Some(schema) = &self.schema
            && let Some(pool) = self.database.postgres_pool()
        {
            let drop = format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE");
            let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(drop)).execute(pool).await;
        }
        self.database.close().await;
        if let Some(dir) = self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}
