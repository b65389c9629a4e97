//! `saga_history`: the append-only timeline of every saga, one row per transition, the event
//! as JSON (`jsonb` on PostgreSQL).

use saga_core::ports::{HistoryRecord, StoreError};
use saga_core::{SagaId, Timestamp};
use sqlx::{AssertSqlSafe, query};

use crate::db::Dialect;
use crate::db::backend::Conn;
use crate::error::{corrupt, store_error};
use crate::on_backend;
use crate::sql::{Bind, CHUNK, Col, Get, to_u64, values_from};

/// Parameters per row of [`insert_sql`].
pub(crate) const INSERT_COLUMNS: usize = 3;

/// [`insert_many`]'s statement for `rows` entries, its parameters numbered from `first`.
pub(crate) fn insert_sql(dialect: Dialect, first: usize, rows: usize) -> String {
    format!(
        "INSERT INTO saga_history (saga_id, at, event) VALUES {}",
        values_from(dialect, first, rows, &[Col::Plain; INSERT_COLUMNS])
    )
}

/// The entries' events as JSON, to bind.
pub(crate) fn events(entries: &[&HistoryRecord]) -> Result<Vec<serde_json::Value>, StoreError> {
    entries
        .iter()
        .map(|entry| serde_json::to_value(&entry.event).map_err(|e| corrupt("history event", e)))
        .collect()
}

/// Binds an `(entry, its event)` pair of [`insert_sql`] to `$q`.
macro_rules! bind_entry {
    ($q:expr, $pair:expr) => {{
        let (entry, event) = $pair;
        $q.bind_id(entry.saga_id.0)
            .bind($crate::sql::to_i64(entry.at.as_millis()))
            .bind_json(event)
    }};
}
pub(crate) use bind_entry;

/// Appends `entries`, one statement per [`CHUNK`].
pub(crate) async fn insert_many(
    mut conn: Conn<'_>,
    entries: &[&HistoryRecord],
) -> Result<(), StoreError> {
    let dialect = conn.dialect();
    for chunk in entries.chunks(CHUNK) {
        let events = events(chunk)?;
        let sql = insert_sql(dialect, 1, chunk.len());
        on_backend!(conn.reborrow(), |c| {
            let mut statement = query(AssertSqlSafe(sql));
            for entry in chunk.iter().zip(&events) {
                statement = bind_entry!(statement, entry);
            }
            statement.execute(c).await.map(drop).map_err(store_error)
        })?;
    }
    Ok(())
}

/// A saga's timeline, oldest first.
pub(crate) async fn list(
    conn: Conn<'_>,
    saga_id: SagaId,
) -> Result<Vec<HistoryRecord>, StoreError> {
    on_backend!(conn, |c| {
        query("SELECT at, event FROM saga_history WHERE saga_id = $1 ORDER BY id")
            .bind_id(saga_id.0)
            .fetch_all(c)
            .await
            .map_err(store_error)?
            .iter()
            .map(|row| {
                Ok(HistoryRecord {
                    saga_id,
                    at: Timestamp(to_u64(row.int("at")?)),
                    event: serde_json::from_value(row.json("event")?)
                        .map_err(|e| corrupt("history event", e))?,
                })
            })
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use saga_core::engine::HistoryEvent;

    use super::*;
    use crate::sql::testing::databases;

    #[tokio::test]
    async fn a_timeline_reads_back_in_order_per_saga() {
        for db in databases("history").await {
            let mut tx = db.database.begin().await.expect("begins");
            let (saga, other) = (SagaId::new(), SagaId::new());
            let entries: Vec<HistoryRecord> = (0..CHUNK as u64 + 3)
                .map(|i| HistoryRecord {
                    saga_id: if i % 2 == 0 { saga } else { other },
                    at: Timestamp(1_000 + i),
                    event: match i {
                        0 => HistoryEvent::Started,
                        _ => HistoryEvent::StepSucceeded {
                            step: format!("step \"{i}\" ✓"),
                        },
                    },
                })
                .collect();
            let refs: Vec<&HistoryRecord> = entries.iter().collect();
            insert_many(tx.conn(), &refs).await.expect("appends");
            let timeline = list(tx.conn(), saga).await.expect("reads");
            let expected: Vec<HistoryRecord> = entries
                .iter()
                .filter(|e| e.saga_id == saga)
                .cloned()
                .collect();
            assert_eq!(timeline, expected);
            assert!(
                list(tx.conn(), SagaId::new())
                    .await
                    .expect("reads")
                    .is_empty()
            );
            tx.rollback().await.expect("rolls back");
            db.drop().await;
        }
    }
}
