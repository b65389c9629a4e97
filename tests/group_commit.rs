//! Group commit (`Database::write`), on SQLite and PostgreSQL: many callers' work shares
//! commits, yet each piece keeps the guarantees of its own transaction — a rollback, an error
//! or a panic undoes that piece only, and nobody hears "committed" for work that is not. On
//! SQLite both with the writer on a pinned thread of its own (the default) and on the runtime.

use std::collections::BTreeSet;

use futures_util::future::join_all;
use saga_core::ports::StoreError;
use saga_store::error::store_error;
use saga_store::{Database, DatabaseOptions, Finish, SqliteWriter, Tx, on_backend};
use saga_tests::testdb::{Backend, TestDb, execute};
use sqlx::{query, query_scalar};

/// What the `n`-th caller's work does after inserting its row.
fn ending(n: i64) -> &'static str {
    match n {
        n if n % 7 == 3 => "error",
        n if n % 5 == 1 => "rollback",
        13 => "panic",
        _ => "commit",
    }
}

async fn insert_then(database: &Database, n: i64) -> Result<i64, StoreError> {
    database
        .write(move |tx: &mut Tx| {
            Box::pin(async move {
                on_backend!(tx.conn(), |c| {
                    query("INSERT INTO group_rows (n) VALUES ($1)")
                        .bind(n)
                        .execute(c)
                        .await
                        .map(drop)
                })
                .map_err(store_error)?;
                match ending(n) {
                    "error" => Err(StoreError::rejected(std::io::Error::other(format!(
                        "work {n} failed"
                    )))),
                    "rollback" => Ok(Finish::Rollback(-n)),
                    "panic" => panic!("work {n} panics"),
                    _ => Ok(Finish::Commit(n)),
                }
            })
        })
        .await
}

/// A handle of its own on `db`, SQLite's writer on a pinned thread of its own (the default)
/// or on the runtime.
async fn open(db: &TestDb, backend: Backend, on_runtime: bool) -> Database {
    let sqlite_writer = match (backend, on_runtime) {
        (Backend::Sqlite, true) => SqliteWriter::Runtime,
        _ => SqliteWriter::default(),
    };
    let options = DatabaseOptions {
        schema: db.schema.clone(),
        sqlite_writer,
        ..DatabaseOptions::default()
    };
    Database::connect_with(&db.url, options)
        .await
        .expect("opens")
}

async fn each_piece_keeps_its_own_outcome(backend: Backend, on_runtime: bool) {
    let Some(db) = TestDb::open(backend, "group_commit").await else {
        return;
    };
    let database = open(&db, backend, on_runtime).await;
    execute(&database, "CREATE TABLE group_rows (n BIGINT PRIMARY KEY)")
        .await
        .expect("creates the table");
    let before = database.commits();
    const CALLERS: i64 = 200;
    let results = join_all((0..CALLERS).map(|n| insert_then(&database, n))).await;

    let mut expected = BTreeSet::new();
    for (n, result) in (0..CALLERS).zip(&results) {
        match (ending(n), result) {
            ("commit", Ok(value)) => {
                assert_eq!(*value, n);
                expected.insert(n);
            }
            ("rollback", Ok(value)) => assert_eq!(*value, -n),
            ("error", Err(StoreError::Rejected { source })) => {
                assert_eq!(source.to_string(), format!("work {n} failed"));
            }
            ("panic", Err(StoreError::Bug { what })) => assert!(what.contains("panicked")),
            (ending, other) => panic!("work {n} ({ending}) answered {other:?}"),
        }
    }
    let mut conn = database.acquire().await.expect("connects");
    let stored: Vec<i64> = on_backend!(conn.conn(), |c| {
        query_scalar("SELECT n FROM group_rows").fetch_all(c).await
    })
    .expect("reads");
    drop(conn);
    let stored: BTreeSet<i64> = stored.into_iter().collect();
    assert_eq!(stored, expected, "exactly the committed pieces are stored");
    let commits = database.commits() - before;
    assert!(
        commits < expected.len() as u64,
        "{} pieces committed in {commits} commits: they should share commits",
        expected.len()
    );

    // The writers keep working after all that.
    assert_eq!(insert_then(&database, 1000).await.expect("commits"), 1000);
    database.close().await;
    db.cleanup().await;
}

async fn a_closed_database_fails_every_caller(backend: Backend, on_runtime: bool) {
    let Some(db) = TestDb::open(backend, "group_commit_closed").await else {
        return;
    };
    execute(
        &db.database,
        "CREATE TABLE group_rows (n BIGINT PRIMARY KEY)",
    )
    .await
    .expect("creates the table");
    // A second handle, closed (the test's own stays open to clean up).
    let database = open(&db, backend, on_runtime).await;
    database.close().await;
    let results = join_all((0..10).map(|n| insert_then(&database, n * 2))).await;
    for result in results {
        assert!(
            matches!(result, Err(StoreError::Unavailable { .. })),
            "expected unavailable, got {result:?}"
        );
    }
    db.cleanup().await;
}

macro_rules! group_commit {
    ($name:ident, $backend:expr, $on_runtime:expr) => {
        mod $name {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn each_piece_keeps_its_own_outcome() {
                super::each_piece_keeps_its_own_outcome($backend, $on_runtime).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_closed_database_fails_every_caller() {
                super::a_closed_database_fails_every_caller($backend, $on_runtime).await;
            }
        }
    };
}

group_commit!(sqlite, Backend::Sqlite, false);
group_commit!(sqlite_writer_on_the_runtime, Backend::Sqlite, true);
group_commit!(postgres, Backend::Postgres, false);
