//! `saga_dead_letters`: messages that could not be processed, with the reason, and what an
//! operator did with each since (replayed as which message, or discarded; when and why).

use saga_core::ports::{DeadLetter, StoreError};
use saga_core::{Headers, Message, MessageId, Timestamp};
use sqlx::{AssertSqlSafe, query};

use crate::db::backend::Conn;
use crate::error::{corrupt, store_error};
use crate::on_backend;
use crate::sql::{Bind, Get, headers_json, headers_of, to_i64, to_u64, without_nul};

/// A dead letter as stored, with its id and what became of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredDeadLetter {
    /// Its id in `saga_dead_letters`.
    pub id: i64,
    /// The message, who set it aside, why and when.
    pub dead_letter: DeadLetter,
    /// `None` while nobody has acted on it.
    pub resolution: Option<Resolution>,
}

/// What an operator did with a dead letter.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Resolution {
    /// Put back on its channel as a new message.
    Replayed {
        /// When.
        at: Timestamp,
        /// The id of the message that carries it now.
        message_id: MessageId,
        /// Who.
        by: String,
        /// Why, as the operator said.
        reason: String,
    },
    /// Given up on.
    Discarded {
        /// When.
        at: Timestamp,
        /// Who.
        by: String,
        /// Why, as the operator said.
        reason: String,
    },
}

/// Inserts a dead letter; returns its id. Text PostgreSQL cannot store (NUL characters) is stored with each
/// NUL written as `\u0000` and the reason says so: a dead letter is never lost to its own
/// content.
pub(crate) async fn insert(conn: Conn<'_>, dead: &DeadLetter) -> Result<i64, StoreError> {
    insert_into(conn, "saga_dead_letters", dead).await
}

/// [`insert`] into `table` (the queue's dead letters, named from a co-located schema: see
/// `QueueTables`).
pub(crate) async fn insert_into(
    conn: Conn<'_>,
    table: &str,
    dead: &DeadLetter,
) -> Result<i64, StoreError> {
    let (payload, escaped_payload) = without_nul(&dead.message.payload);
    let headers: Headers = dead
        .message
        .headers
        .iter()
        .map(|(k, v)| (without_nul(k).0.into_owned(), without_nul(v).0.into_owned()))
        .fold(Headers::new(), |h, (k, v)| h.with(k, v));
    let escaped_headers = headers != dead.message.headers;
    let (destination, _) = without_nul(&dead.message.destination);
    let (consumer, _) = without_nul(&dead.consumer);
    let (reason, _) = without_nul(&dead.reason);
    let reason = match escaped_payload || escaped_headers {
        true => format!("{reason} (NUL characters stored as \\u0000)"),
        false => reason.into_owned(),
    };
    let headers = headers_json(&headers);
    on_backend!(conn, |c| {
        query(AssertSqlSafe(format!(
            "INSERT INTO {table} (consumer, message_id, destination, headers, payload, reason, \
             at) VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id"
        )))
        .bind(consumer.as_ref())
        .bind_id(dead.message.id.0)
        .bind(destination.as_ref())
        .bind_json(&headers)
        .bind(payload.as_ref())
        .bind(reason.as_str())
        .bind(to_i64(dead.at.as_millis()))
        .fetch_one(c)
        .await
        .map_err(store_error)
        .and_then(|row| row.int("id"))
    })
}

const COLUMNS: &str = "id, consumer, message_id, destination, headers, payload, reason, at, \
     resolved_at, resolution, resolution_reason, replay_message_id, resolved_by";

fn dead_letter(row: &impl Get) -> Result<DeadLetter, StoreError> {
    let headers = row.json("headers")?;
    // A dead letter may hold headers that are not a map of strings; keep them as they are.
    let headers = headers_of(headers.clone())
        .unwrap_or_else(|_| Headers::new().with("x-unreadable-headers", headers.to_string()));
    Ok(DeadLetter {
        consumer: row.text("consumer")?,
        message: Message {
            id: MessageId(row.id("message_id")?),
            destination: row.text("destination")?,
            headers,
            payload: row.text("payload")?,
        },
        reason: row.text("reason")?,
        at: Timestamp(to_u64(row.int("at")?)),
    })
}

fn stored(row: &impl Get) -> Result<StoredDeadLetter, StoreError> {
    let at = row.opt_int("resolved_at")?.map(|ms| Timestamp(to_u64(ms)));
    let reason = row.opt_text("resolution_reason")?.unwrap_or_default();
    let by = row.opt_text("resolved_by")?.unwrap_or_default();
    let resolution = match (at, row.opt_text("resolution")?.as_deref()) {
        (Some(at), Some("replayed")) => Some(Resolution::Replayed {
            at,
            message_id: MessageId(row.id("replay_message_id")?),
            by,
            reason,
        }),
        (Some(at), Some("discarded")) => Some(Resolution::Discarded { at, by, reason }),
        (Some(_), other) => {
            return Err(corrupt(
                "dead letter resolution",
                format!("unknown resolution {other:?}"),
            ));
        }
        (None, _) => None,
    };
    Ok(StoredDeadLetter {
        id: row.int("id")?,
        dead_letter: dead_letter(row)?,
        resolution,
    })
}

/// Dead letters with an id above `after`, oldest first, at most `limit`; only those nobody
/// has acted on when `unresolved_only`.
pub(crate) async fn list(
    conn: Conn<'_>,
    after: i64,
    limit: usize,
    unresolved_only: bool,
) -> Result<Vec<StoredDeadLetter>, StoreError> {
    let unresolved = match unresolved_only {
        true => " AND resolved_at IS NULL",
        false => "",
    };
    let sql = format!(
        "SELECT {COLUMNS} FROM saga_dead_letters WHERE id > $1{unresolved} ORDER BY id LIMIT $2"
    );
    on_backend!(conn, |c| {
        query(AssertSqlSafe(sql))
            .bind(after)
            .bind(to_i64(limit as u64))
            .fetch_all(c)
            .await
            .map_err(store_error)?
            .iter()
            .map(stored)
            .collect()
    })
}

/// One dead letter.
pub(crate) async fn get(conn: Conn<'_>, id: i64) -> Result<Option<StoredDeadLetter>, StoreError> {
    let sql = format!("SELECT {COLUMNS} FROM saga_dead_letters WHERE id = $1");
    on_backend!(conn, |c| {
        query(AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(c)
            .await
            .map_err(store_error)?
            .as_ref()
            .map(stored)
            .transpose()
    })
}

/// How a dead letter is resolved.
pub(crate) enum Resolve {
    /// Replayed as this message.
    Replayed(MessageId),
    /// Discarded.
    Discarded,
}

/// Marks dead letter `id` resolved at `at` — only if nobody has; `false` if somebody had.
pub(crate) async fn resolve(
    conn: Conn<'_>,
    id: i64,
    how: Resolve,
    by: &str,
    reason: &str,
    at: i64,
) -> Result<bool, StoreError> {
    let (resolution, replay) = match how {
        Resolve::Replayed(message_id) => ("replayed", Some(message_id.0)),
        Resolve::Discarded => ("discarded", None),
    };
    on_backend!(conn, |c| {
        query(
            "UPDATE saga_dead_letters SET resolved_at = $1, resolution = $2, \
             resolution_reason = $3, replay_message_id = $4, resolved_by = $5 \
             WHERE id = $6 AND resolved_at IS NULL",
        )
        .bind(at)
        .bind(resolution)
        .bind(reason)
        .bind_opt_id(replay)
        .bind(by)
        .bind(id)
        .execute(c)
        .await
        .map(|done| done.rows_affected() == 1)
        .map_err(store_error)
    })
}

/// Every dead letter, oldest first (for [`SagaStore::dead_letters`](saga_core::ports::SagaStore::dead_letters)).
pub(crate) async fn all(conn: Conn<'_>) -> Result<Vec<DeadLetter>, StoreError> {
    let sql = format!("SELECT {COLUMNS} FROM saga_dead_letters ORDER BY id");
    on_backend!(conn, |c| {
        query(AssertSqlSafe(sql))
            .fetch_all(c)
            .await
            .map_err(store_error)?
            .iter()
            .map(dead_letter)
            .collect()
    })
}

/// How many dead letters nobody has acted on.
pub(crate) async fn unresolved_count(conn: Conn<'_>) -> Result<u64, StoreError> {
    on_backend!(conn, |c| {
        let row = query("SELECT COUNT(*) AS n FROM saga_dead_letters WHERE resolved_at IS NULL")
            .fetch_one(c)
            .await
            .map_err(store_error)?;
        Ok(to_u64(row.int("n")?))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::testing::databases;

    fn dead(n: u64, payload: &str) -> DeadLetter {
        DeadLetter {
            consumer: "ledger".to_owned(),
            message: Message::new(
                "ledger",
                Headers::new().with("message-type", "Reserve"),
                payload.to_owned(),
            ),
            reason: format!("malformed payload {n}"),
            at: Timestamp(1_000 + n),
        }
    }

    #[tokio::test]
    async fn a_dead_letter_keeps_any_payload_and_is_resolved_once() {
        for db in databases("dead_letters").await {
            let mut tx = db.database.begin().await.expect("begins");
            let not_json = dead(1, "{not json");
            let with_nul = dead(2, "a\0b");
            insert(tx.conn(), &not_json).await.expect("inserts");
            insert(tx.conn(), &with_nul).await.expect("inserts");
            let stored = list(tx.conn(), 0, 10, true).await.expect("lists");
            assert_eq!(stored.len(), 2);
            assert_eq!(stored[0].dead_letter, not_json);
            assert_eq!(stored[1].dead_letter.message.payload, "a\\u0000b");
            assert!(
                stored[1].dead_letter.reason.contains("NUL characters"),
                "{:?}",
                stored[1].dead_letter.reason
            );
            let (first, second) = (stored[0].id, stored[1].id);
            let replay = MessageId::new();
            assert!(
                resolve(
                    tx.conn(),
                    first,
                    Resolve::Replayed(replay),
                    "ana",
                    "fixed",
                    2_000
                )
                .await
                .expect("resolves")
            );
            assert!(
                !resolve(tx.conn(), first, Resolve::Discarded, "ana", "again", 2_001)
                    .await
                    .expect("runs"),
                "resolved already"
            );
            let replayed = get(tx.conn(), first).await.expect("reads").expect("exists");
            assert_eq!(
                replayed.resolution,
                Some(Resolution::Replayed {
                    at: Timestamp(2_000),
                    message_id: replay,
                    by: "ana".to_owned(),
                    reason: "fixed".to_owned(),
                })
            );
            let unresolved = list(tx.conn(), 0, 10, true).await.expect("lists");
            assert_eq!(
                unresolved.iter().map(|d| d.id).collect::<Vec<_>>(),
                [second]
            );
            assert_eq!(
                list(tx.conn(), first, 10, false)
                    .await
                    .expect("lists")
                    .len(),
                1
            );
            assert_eq!(all(tx.conn()).await.expect("reads").len(), 2);
            assert_eq!(get(tx.conn(), second + 100).await.expect("reads"), None);
            tx.rollback().await.expect("rolls back");
            db.drop().await;
        }
    }
}
