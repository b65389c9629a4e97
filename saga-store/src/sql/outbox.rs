//! `saga_outbox`: messages written in the same transaction as the state change that produced
//! them, published in order by the relay, which stamps `published_at`.

use saga_core::Message;
use saga_core::ports::{OutboxEntry, StoreError};
use sqlx::{AssertSqlSafe, query};

use crate::db::backend::Conn;
use crate::error::store_error;
use crate::on_backend;
use crate::sql::{Bind, CHUNK, Col, Get, headers_json, message, to_i64, to_u64, values};

/// Appends `messages`, in order, one statement per [`CHUNK`].
pub(crate) async fn insert_many(
    mut conn: Conn<'_>,
    messages: &[&Message],
    at: i64,
) -> Result<(), StoreError> {
    let dialect = conn.dialect();
    for chunk in messages.chunks(CHUNK) {
        let headers: Vec<_> = chunk.iter().map(|m| headers_json(&m.headers)).collect();
        let sql = format!(
            "INSERT INTO saga_outbox (message_id, destination, headers, payload, created_at) \
             VALUES {}",
            values(dialect, chunk.len(), &[Col::Plain; 5])
        );
        on_backend!(conn.reborrow(), |c| {
            let mut statement = query(AssertSqlSafe(sql));
            for (message, headers) in chunk.iter().zip(&headers) {
                statement = statement
                    .bind_id(message.id.0)
                    .bind(message.destination.as_str())
                    .bind_json(headers)
                    .bind(message.payload.as_str())
                    .bind(at);
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
