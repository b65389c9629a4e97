//! Migrations: the saga tables' (`migrations/sqlite`, `migrations/postgres`) and the
//! application's, sharing one database. On PostgreSQL, `0003` carries a database created by
//! saga-store 0.1 forward in place: ids become `uuid` and JSON `jsonb`, rows kept.

use super::{Database, Dialect, Pool};
use crate::error::DatabaseError;

impl Database {
    /// Applies the saga tables' migrations (idempotent). The application's own migrations
    /// may share the database: see [`Database::run_migrations`].
    pub async fn migrate(&self) -> Result<(), DatabaseError> {
        let migrator = match self.inner.dialect {
            Dialect::Sqlite => sqlx::migrate!("migrations/sqlite"),
            Dialect::Postgres => sqlx::migrate!("migrations/postgres"),
        };
        self.run_shared(migrator).await
    }

    /// Applies a set of the application's migrations that shares the database with the saga
    /// tables' (and other sets): migrations applied by another set are not an error. Each set
    /// needs its own version numbers: saga-store keeps those below
    /// [`SAGA_MIGRATION_VERSIONS`](super::SAGA_MIGRATION_VERSIONS) (`0001`…), so number yours
    /// by timestamp (`20261122000100_orders.sql`, as `sqlx migrate add` does). A set that uses
    /// a kept number is refused with [`DatabaseError::ReservedMigrationVersion`] before
    /// anything runs.
    pub async fn run_migrations(
        &self,
        migrator: sqlx::migrate::Migrator,
    ) -> Result<(), DatabaseError> {
        if let Some(reserved) = migrator
            .iter()
            .find(|m| m.version < super::SAGA_MIGRATION_VERSIONS)
        {
            return Err(DatabaseError::ReservedMigrationVersion {
                version: reserved.version,
                description: reserved.description.to_string(),
            });
        }
        self.run_shared(migrator).await
    }

    async fn run_shared(&self, mut migrator: sqlx::migrate::Migrator) -> Result<(), DatabaseError> {
        if !self.inner.migrate {
            tracing::debug!(url = %self.inner.url, "not migrating: opened with migrate = false");
            return Ok(());
        }
        migrator.set_ignore_missing(true);
        match &self.inner.pool {
            Pool::Postgres(pool) => migrator.run(pool).await?,
            Pool::Sqlite(pool) => migrator.run(pool).await?,
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;
    use std::str::FromStr;

    use saga_core::ports::SagaStore;
    use saga_core::{MessageId, SagaId};
    use sqlx::AssertSqlSafe;
    use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

    use crate::db::DatabaseOptions;
    use crate::sql::{dead_letters, locks, outbox};
    use crate::store::SqlSagaStore;

    use super::*;

    /// Rows as saga-store 0.1 wrote them (ids and JSON as text), one per table.
    fn old_rows(saga: SagaId, message: MessageId) -> String {
        format!(
            "INSERT INTO saga_instances (saga_id, saga_type, definition_version, status, \
             direction, current_step, pending_kind, pending_request_id, deadline, attempt, \
             completed_steps, next_request_id, data, version, created_at, updated_at) \
             VALUES ('{saga}', 'CreateOrderSaga', '1', 'running', 'forward', 'reserve', \
             'reply', 1, 99, 1, '[\"validate\"]', 2, '{{\"order_id\": 1001}}', 3, 1, 2); \
             INSERT INTO saga_history (saga_id, at, event) VALUES ('{saga}', 1, \
             '{{\"event\":\"started\"}}'); \
             INSERT INTO saga_outbox (message_id, destination, headers, payload, created_at) \
             VALUES ('{message}', 'kitchen', '{{\"message-type\":\"CreateTicket\"}}', '{{}}', 1); \
             INSERT INTO saga_received (consumer, message_id, received_at) \
             VALUES ('kitchen', '{message}', 1); \
             INSERT INTO saga_dead_letters (consumer, message_id, destination, headers, payload, \
             reason, at) VALUES ('kitchen', '{message}', 'kitchen', '{{}}', '{{not json', \
             'malformed payload', 1); \
             INSERT INTO saga_locks (resource, saga_id, state, locked_at) \
             VALUES ('order:1001', '{saga}', 'APPROVAL_PENDING', 1); \
             INSERT INTO saga_queue (channel, message_id, headers, payload, enqueued_at, \
             visible_at) VALUES ('kitchen', '{message}', '{{}}', '{{}}', 1, 1)"
        )
    }

    /// A set of the application's migrations numbered like saga-store's is refused before it
    /// runs, with the fix; one numbered by timestamp runs beside the saga tables.
    #[tokio::test]
    async fn an_application_migration_may_not_use_saga_stores_numbers() {
        let dir = std::env::temp_dir().join(format!("saga_migrations_{}", uuid::Uuid::now_v7()));
        let (mine, clashing) = (dir.join("mine"), dir.join("clashing"));
        std::fs::create_dir_all(&mine).expect("creates");
        std::fs::create_dir_all(&clashing).expect("creates");
        std::fs::write(
            mine.join("20261122000100_orders.sql"),
            "CREATE TABLE orders (id BIGINT PRIMARY KEY);",
        )
        .expect("writes");
        std::fs::write(
            clashing.join("0003_orders.sql"),
            "CREATE TABLE clash (id BIGINT PRIMARY KEY);",
        )
        .expect("writes");
        let url = format!("sqlite://{}?mode=rwc", dir.join("saga.db").display());
        let database = Database::connect(&url).await.expect("opens and migrates");

        let refused = database
            .run_migrations(sqlx::migrate::Migrator::new(clashing).await.expect("reads"))
            .await
            .expect_err("refused");
        assert!(
            matches!(
                refused,
                DatabaseError::ReservedMigrationVersion { version: 3, .. }
            ),
            "{refused:?}"
        );
        assert!(
            refused
                .to_string()
                .contains("number your migrations by timestamp"),
            "{refused}"
        );
        database
            .run_migrations(sqlx::migrate::Migrator::new(mine).await.expect("reads"))
            .await
            .expect("runs beside the saga tables");
        // Both sets stay applied: running the saga tables' again is not an error.
        database.migrate().await.expect("idempotent");
        database.close().await;
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn a_postgres_database_of_saga_store_0_1_is_carried_forward() {
        let Some(url) = std::env::var("SAGA_TEST_POSTGRES_URL")
            .ok()
            .filter(|url| !url.is_empty())
        else {
            eprintln!("migration test did not run: set SAGA_TEST_POSTGRES_URL");
            return;
        };
        let schema = format!("saga_migrate_{}", uuid::Uuid::now_v7().simple());
        let options = PgConnectOptions::from_str(&url)
            .expect("a PostgreSQL URL")
            .options([("search_path", schema.as_str())]);
        let old = PgPoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await
            .expect("connects");
        let create = format!("CREATE SCHEMA \"{schema}\"");
        sqlx::raw_sql(AssertSqlSafe(create))
            .execute(&old)
            .await
            .expect("creates");
        // The tables as 0.1 left them: migrations 0001 and 0002 only.
        let mut migrator = sqlx::migrate!("migrations/postgres");
        let before: Vec<_> = migrator
            .migrations
            .iter()
            .filter(|m| m.version <= 2)
            .cloned()
            .collect();
        migrator.migrations = Cow::Owned(before);
        migrator.run(&old).await.expect("migrates to 0.1");
        let (saga, message) = (SagaId::new(), MessageId::new());
        sqlx::raw_sql(AssertSqlSafe(old_rows(saga, message)))
            .execute(&old)
            .await
            .expect("writes 0.1 rows");
        old.close().await;

        let options = DatabaseOptions {
            schema: Some(schema.clone()),
            ..DatabaseOptions::default()
        };
        let database = Database::connect_with(&url, options)
            .await
            .expect("opens and migrates");
        let store = SqlSagaStore::new(database.clone());
        let record = store.load(saga).await.expect("loads").expect("kept");
        assert_eq!(record.data["order_id"], 1001);
        assert_eq!(record.version, 3);
        assert_eq!(record.state.completed_steps, ["validate"]);
        assert_eq!(store.history(saga).await.expect("reads").len(), 1);
        let mut conn = database.acquire().await.expect("connects");
        let entries = outbox::unpublished(conn.conn(), 10).await.expect("reads");
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].message.id, message);
        assert_eq!(
            entries[0].message.headers.get("message-type"),
            Some("CreateTicket")
        );
        let holder = locks::holder(&mut conn, "order:1001").await.expect("reads");
        assert_eq!(holder.map(|h| h.saga_id), Some(saga));
        let dead = dead_letters::all(conn.conn()).await.expect("reads");
        assert_eq!(dead[0].message.payload, "{not json");
        drop(conn);
        let pool = database.postgres_pool().expect("PostgreSQL");
        let order: String = sqlx::query_scalar("SELECT data->>'order_id' FROM saga_instances")
            .fetch_one(pool)
            .await
            .expect("queries");
        assert_eq!(order, "1001");
        let drop = format!("DROP SCHEMA \"{schema}\" CASCADE");
        sqlx::raw_sql(AssertSqlSafe(drop))
            .execute(pool)
            .await
            .expect("drops");
        database.close().await;
    }
}
