//! `saga_outbox`: messages written in the same transaction as the state change that produced
//! them, published in order by the relay, which stamps `published_at`.

use saga_core::ports::{OutboxEntry, StoreError};
use saga_core::{Message, Timestamp};
use sqlx::{AssertSqlSafe, query};

use crate::db::Dialect;
use crate::db::backend::Conn;
use crate::db::savepoint::Glued;
use crate::error::store_error;
use crate::on_backend;
use crate::sql::{Bind, CHUNK, Col, Get, headers_json, message, to_i64, to_u64, values_from};

/// Parameters per row of [`insert_sql`].
pub(crate) const INSERT_COLUMNS: usize = 5;

/// [`insert_many`]'s statement for `rows` messages, its parameters numbered from `first`.
pub(crate) fn insert_sql(dialect: Dialect, first: usize, rows: usize) -> String {
    format!(
        "INSERT INTO saga_outbox (message_id, destination, headers, payload, created_at) \
         VALUES {}",
        values_from(dialect, first, rows, &[Col::Plain; INSERT_COLUMNS])
    )
}

/// Binds a `(message, its headers as JSON)` pair of [`insert_sql`] to `$q`.
macro_rules! bind_message {
    ($q:expr, $pair:expr, $at:expr) => {{
        let (message, headers) = $pair;
        $q.bind_id(message.id.0)
            .bind(message.destination.as_str())
            .bind_json(headers)
            .bind(message.payload.as_str())
            .bind($at)
    }};
}
pub(crate) use bind_message;

/// Appends `messages`, in order, one statement per [`CHUNK`]; `glued` runs before them.
pub(crate) async fn insert_many(
    mut conn: Conn<'_>,
    glued: Glued,
    messages: &[&Message],
    at: i64,
) -> Result<(), StoreError> {
    let dialect = conn.dialect();
    if messages.is_empty() {
        return glued.alone(conn).await;
    }
    glued.run_unfused(conn.reborrow()).await?;
    for (n, chunk) in messages.chunks(CHUNK).enumerate() {
        let headers: Vec<_> = chunk.iter().map(|m| headers_json(&m.headers)).collect();
        let sql = insert_sql(dialect, 1, chunk.len());
        let sql = match n {
            0 => glued.before(&sql),
            _ => sql,
        };
        on_backend!(conn.reborrow(), |c| {
            let mut statement = query(AssertSqlSafe(sql));
            for message in chunk.iter().zip(&headers) {
                statement = bind_message!(statement, message, at);
            }
            statement.execute(c).await.map(drop).map_err(store_error)
        })?;
    }
    Ok(())
}

/// Rows not yet published, in order, at most `limit`.
pub(crate) async fn unpublished(
    conn: Conn<'_>,
    limit: usize,
) -> Result<Vec<OutboxEntry>, StoreError> {
    on_backend!(conn, |c| {
        query(
            "SELECT sequence, message_id, destination, headers, payload FROM saga_outbox \
             WHERE published_at IS NULL ORDER BY sequence LIMIT $1",
        )
        .bind(to_i64(limit as u64))
        .fetch_all(c)
        .await
        .map_err(store_error)?
        .iter()
        .map(|row| {
            Ok(OutboxEntry {
                sequence: to_u64(row.int("sequence")?),
                message: message(
                    row.id("message_id")?,
                    row.text("destination")?,
                    row.json("headers")?,
                    row.text("payload")?,
                )?,
            })
        })
        .collect()
    })
}

/// Stamps rows as published at `at`: one statement when the sequences are contiguous (the
/// usual case), else one per row.
pub(crate) async fn mark_published(
    mut conn: Conn<'_>,
    sequences: &[u64],
    at: i64,
) -> Result<(), StoreError> {
    let (Some(&first), Some(&last)) = (sequences.iter().min(), sequences.iter().max()) else {
        return Ok(());
    };
    if last - first + 1 == sequences.len() as u64 {
        return on_backend!(conn, |c| {
            query(
                "UPDATE saga_outbox SET published_at = $1 \
                 WHERE sequence >= $2 AND sequence <= $3 AND published_at IS NULL",
            )
            .bind(at)
            .bind(to_i64(first))
            .bind(to_i64(last))
            .execute(c)
            .await
            .map(drop)
            .map_err(store_error)
        });
    }
    for &sequence in sequences {
        on_backend!(conn.reborrow(), |c| {
            query("UPDATE saga_outbox SET published_at = $1 WHERE sequence = $2")
                .bind(at)
                .bind(to_i64(sequence))
                .execute(c)
                .await
                .map(drop)
                .map_err(store_error)
        })?;
    }
    Ok(())
}

/// Deletes rows published before `cutoff`, at most `limit`; returns how many.
pub(crate) async fn delete_published(
    conn: Conn<'_>,
    cutoff: i64,
    limit: i64,
) -> Result<u64, StoreError> {
    on_backend!(conn, |c| {
        query(
            "DELETE FROM saga_outbox WHERE sequence IN (SELECT sequence FROM saga_outbox \
             WHERE published_at IS NOT NULL AND published_at < $1 LIMIT $2)",
        )
        .bind(cutoff)
        .bind(limit)
        .execute(c)
        .await
        .map(|done| done.rows_affected())
        .map_err(store_error)
    })
}

/// How many messages wait for the relay, and when the oldest was written.
pub(crate) async fn backlog(conn: Conn<'_>) -> Result<(u64, Option<Timestamp>), StoreError> {
    on_backend!(conn, |c| {
        let row = query(
            "SELECT COUNT(*) AS n, MIN(created_at) AS oldest FROM saga_outbox \
             WHERE published_at IS NULL",
        )
        .fetch_one(c)
        .await
        .map_err(store_error)?;
        Ok((
            to_u64(row.int("n")?),
            row.opt_int("oldest")?.map(|ms| Timestamp(to_u64(ms))),
        ))
    })
}

#[cfg(test)]
mod tests {
    use saga_core::Headers;

    use super::*;
    use crate::sql::testing::databases;

    #[tokio::test]
    async fn rows_are_published_in_order_and_retention_takes_only_published_ones() {
        for db in databases("outbox").await {
            let mut tx = db.database.begin().await.expect("begins");
            let messages: Vec<Message> = (0..CHUNK + 2)
                .map(|i| {
                    Message::new(
                        "kitchen",
                        Headers::new()
                            .with("message-type", "CreateTicket")
                            .with("note", format!("«{i}» \"quoted\"")),
                        format!(r#"{{"order_id":{i},"name":"Naïve"}}"#),
                    )
                })
                .collect();
            let refs: Vec<&Message> = messages.iter().collect();
            insert_many(tx.conn(), Glued::NONE, &refs, 10)
                .await
                .expect("appends");
            let entries = unpublished(tx.conn(), 3).await.expect("reads");
            let read: Vec<&Message> = entries.iter().map(|e| &e.message).collect();
            assert_eq!(read, refs[..3]);
            assert!(entries.windows(2).all(|w| w[0].sequence < w[1].sequence));
            // A contiguous run, then a gap.
            let sequences: Vec<u64> = entries.iter().map(|e| e.sequence).collect();
            mark_published(tx.conn(), &sequences, 20)
                .await
                .expect("marks");
            let next = unpublished(tx.conn(), 10).await.expect("reads");
            assert_eq!(next[0].message, messages[3]);
            mark_published(tx.conn(), &[next[0].sequence, next[2].sequence], 30)
                .await
                .expect("marks");
            let left = unpublished(tx.conn(), 1_000).await.expect("reads");
            assert_eq!(left.len(), messages.len() - 5);
            assert_eq!(left[0].message, messages[4]);
            assert_eq!(
                delete_published(tx.conn(), 25, 100).await.expect("deletes"),
                3
            );
            assert_eq!(
                delete_published(tx.conn(), 31, 100).await.expect("deletes"),
                2
            );
            assert_eq!(unpublished(tx.conn(), 1_000).await.expect("reads"), left);
            tx.rollback().await.expect("rolls back");
            db.drop().await;
        }
    }
}
