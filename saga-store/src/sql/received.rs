//! `saga_received`: `(consumer, message_id)` of every message a consumer processed — the
//! dedup record. Inserted in the transaction that handles the message; a duplicate insert
//! means the message was handled before.

use std::collections::HashSet;

use saga_core::MessageId;
use saga_core::ports::StoreError;
use sqlx::{AssertSqlSafe, query};

use crate::db::Dialect;
use crate::db::backend::Conn;
use crate::db::savepoint::Glued;
use crate::error::store_error;
use crate::on_backend;
use crate::sql::{Bind, CHUNK, Col, Get, values, values_from};

/// Records `message_id` as received by `consumer`; `false` if it was already.
pub(crate) async fn insert(
    conn: Conn<'_>,
    consumer: &str,
    message_id: MessageId,
    at: i64,
) -> Result<bool, StoreError> {
    on_backend!(conn, |c| {
        query(
            "INSERT INTO saga_received (consumer, message_id, received_at) VALUES ($1, $2, $3) \
             ON CONFLICT DO NOTHING",
        )
        .bind(consumer)
        .bind_id(message_id.0)
        .bind(at)
        .execute(c)
        .await
        .map(|done| done.rows_affected() == 1)
        .map_err(store_error)
    })
}

/// Parameters per row of [`insert_all_sql`].
pub(crate) const INSERT_COLUMNS: usize = 3;

/// [`insert_all`]'s statement for `rows` records, its parameters numbered from `first`.
pub(crate) fn insert_all_sql(dialect: Dialect, first: usize, rows: usize) -> String {
    format!(
        "INSERT INTO saga_received (consumer, message_id, received_at) VALUES {} \
         ON CONFLICT DO NOTHING",
        values_from(dialect, first, rows, &[Col::Plain; INSERT_COLUMNS])
    )
}

/// Binds a `(consumer, message id)` record of [`insert_all_sql`] to `$q`.
macro_rules! bind_record {
    ($q:expr, $record:expr, $at:expr) => {{
        let (consumer, id) = $record;
        $q.bind(*consumer).bind_id(id.0).bind($at)
    }};
}
pub(crate) use bind_record;

/// Records many `(consumer, message id)` pairs, one statement per [`CHUNK`]; `false` if any
/// was already recorded (the caller undoes the transaction's work).
pub(crate) async fn insert_all(
    mut conn: Conn<'_>,
    records: &[(&str, MessageId)],
    at: i64,
) -> Result<bool, StoreError> {
    let dialect = conn.dialect();
    for chunk in records.chunks(CHUNK) {
        let sql = insert_all_sql(dialect, 1, chunk.len());
        let inserted = on_backend!(conn.reborrow(), |c| {
            let mut statement = query(AssertSqlSafe(sql));
            for record in chunk {
                statement = bind_record!(statement, record, at);
            }
            statement
                .execute(c)
                .await
                .map(|done| done.rows_affected())
                .map_err(store_error)
        })?;
        if inserted != chunk.len() as u64 {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Records `message_ids` as received by `consumer`; returns those that were not already.
/// `glued` runs after them.
pub(crate) async fn insert_fresh(
    mut conn: Conn<'_>,
    consumer: &str,
    message_ids: &[MessageId],
    at: i64,
    glued: Glued,
) -> Result<HashSet<MessageId>, StoreError> {
    let dialect = conn.dialect();
    let mut fresh = HashSet::with_capacity(message_ids.len());
    let chunks = message_ids.len().div_ceil(CHUNK);
    for (n, chunk) in message_ids.chunks(CHUNK).enumerate() {
        let sql = format!(
            "INSERT INTO saga_received (consumer, message_id, received_at) VALUES {} \
             ON CONFLICT DO NOTHING RETURNING message_id",
            values(dialect, chunk.len(), &[Col::Plain, Col::Plain, Col::Plain])
        );
        let sql = match n + 1 == chunks {
            true => glued.after(&sql),
            false => sql,
        };
        on_backend!(conn.reborrow(), |c| {
            let mut statement = query(AssertSqlSafe(sql));
            for id in chunk {
                statement = statement.bind(consumer).bind_id(id.0).bind(at);
            }
            for row in statement.fetch_all(c).await.map_err(store_error)? {
                fresh.insert(MessageId(row.id("message_id")?));
            }
            Ok::<_, StoreError>(())
        })?;
    }
    match message_ids.is_empty() {
        true => glued.alone(conn).await?,
        false => glued.run_unfused(conn).await?,
    }
    Ok(fresh)
}

/// Deletes dedup records older than `cutoff`, at most `limit`; returns how many.
pub(crate) async fn delete_older(
    conn: Conn<'_>,
    cutoff: i64,
    limit: i64,
) -> Result<u64, StoreError> {
    on_backend!(conn, |c| {
        query(
            "DELETE FROM saga_received WHERE (consumer, message_id) IN \
             (SELECT consumer, message_id FROM saga_received WHERE received_at < $1 LIMIT $2)",
        )
        .bind(cutoff)
        .bind(limit)
        .execute(c)
        .await
        .map(|done| done.rows_affected())
        .map_err(store_error)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::testing::databases;

    #[tokio::test]
    async fn a_message_is_received_once_per_consumer() {
        for db in databases("received").await {
            let mut tx = db.database.begin().await.expect("begins");
            let (first, second, third) = (MessageId::new(), MessageId::new(), MessageId::new());
            assert!(
                insert(tx.conn(), "kitchen", first, 10)
                    .await
                    .expect("records")
            );
            assert!(
                !insert(tx.conn(), "kitchen", first, 11).await.expect("runs"),
                "duplicate"
            );
            assert!(
                insert(tx.conn(), "accounting", first, 12)
                    .await
                    .expect("records")
            );
            assert!(
                insert_all(tx.conn(), &[("kitchen", second), ("kitchen", third)], 13)
                    .await
                    .expect("records")
            );
            assert!(
                !insert_all(tx.conn(), &[("order", second), ("kitchen", third)], 14)
                    .await
                    .expect("runs"),
                "one of them is a duplicate"
            );
            let fourth = MessageId::new();
            let fresh = insert_fresh(
                tx.conn(),
                "kitchen",
                &[first, fourth, second],
                15,
                Glued::NONE,
            )
            .await
            .expect("records");
            assert_eq!(fresh, HashSet::from([fourth]));
            assert_eq!(delete_older(tx.conn(), 13, 100).await.expect("deletes"), 2);
            tx.rollback().await.expect("rolls back");
            db.drop().await;
        }
    }
}
