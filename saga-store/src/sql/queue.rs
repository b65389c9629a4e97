//! `saga_queue`: the SQL-table transport's durable queue, one row per message on a channel.
//! A consumer claims rows by moving `visible_at` a lease into the future (`FOR UPDATE SKIP
//! LOCKED` on PostgreSQL) and counting the delivery, or — handling them in place — takes them
//! (deletes and returns them) inside the transaction that handles them.

use saga_core::Message;
use saga_core::ports::{ChannelBacklog, StoreError};
use saga_core::{MessageId, Timestamp};
use sqlx::{AssertSqlSafe, query};

use std::sync::Arc;

use crate::db::backend::Conn;
use crate::db::savepoint::Glued;
use crate::db::{Database, Dialect};
use crate::error::store_error;
use crate::on_backend;
use crate::sql::{
    Bind, CHUNK, Col, Get, headers_json, headers_of, placeholders, to_i64, to_u64, values_from,
};

/// A row as claimed or taken.
#[derive(Debug)]
pub(crate) struct QueueRow {
    /// The row id (the delivery's receipt).
    pub(crate) id: i64,
    /// The message, or what could be read of an envelope that cannot be.
    pub(crate) message: Result<Message, Unreadable>,
    /// Deliveries so far, this one included.
    pub(crate) deliveries: i64,
}

/// An envelope that cannot be read, as stored.
#[derive(Debug)]
pub(crate) struct Unreadable {
    /// The message id as stored.
    pub(crate) message_id: String,
    /// The headers as stored.
    pub(crate) headers: String,
    /// The payload.
    pub(crate) payload: String,
    /// Why it cannot be read.
    pub(crate) reason: String,
}

fn queue_row(row: &impl Get, channel: &str) -> Result<QueueRow, StoreError> {
    let payload = row.text("payload")?;
    let message = match (row.id("message_id"), row.json("headers")) {
        (Ok(id), Ok(headers)) => match headers_of(headers.clone()) {
            Ok(headers) => Ok(Message {
                id: MessageId(id),
                destination: channel.to_owned(),
                headers,
                payload,
            }),
            Err(err) => Err(Unreadable {
                message_id: id.to_string(),
                headers: headers.to_string(),
                payload,
                reason: format!("unreadable headers: {err}"),
            }),
        },
        (id, headers) => Err(Unreadable {
            message_id: row.text("message_id").unwrap_or_default(),
            headers: row.text("headers").unwrap_or_default(),
            payload,
            reason: match (id, headers) {
                (Err(err), _) => format!("invalid message id: {err}"),
                (_, Err(err)) => format!("unreadable headers: {err}"),
                _ => "unreadable".to_owned(),
            },
        }),
    };
    Ok(QueueRow {
        id: row.int("id")?,
        message,
        deliveries: row.int("deliveries")?,
    })
}

/// How statements name the SQL-table transport's tables — the queue and its dead letters:
/// schema-qualified when the queue's database has a schema, so that co-located services
/// (other schemas of the same PostgreSQL database) reach them from their own transactions,
/// whose `search_path` is their own schema; plain otherwise.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct QueueTables {
    queue: Arc<str>,
    dead_letters: Arc<str>,
}

impl QueueTables {
    /// The tables of `database`.
    pub(crate) fn of(database: &Database) -> Self {
        // The schema is a checked SQL identifier (`DatabaseOptions::schema`).
        let name = |table: &str| -> Arc<str> {
            match database.schema() {
                Some(schema) => format!("\"{schema}\".{table}").into(),
                None => table.into(),
            }
        };
        Self {
            queue: name("saga_queue"),
            dead_letters: name("saga_dead_letters"),
        }
    }

    /// The queue table.
    pub(crate) fn queue(&self) -> &str {
        &self.queue
    }

    /// The dead-letter table.
    pub(crate) fn dead_letters(&self) -> &str {
        &self.dead_letters
    }
}

/// Parameters per row of [`insert_sql`].
pub(crate) const INSERT_COLUMNS: usize = 6;

/// [`insert_many`]'s statement for `rows` messages, its parameters numbered from `first`.
pub(crate) fn insert_sql(
    dialect: Dialect,
    table: &QueueTables,
    first: usize,
    rows: usize,
) -> String {
    format!(
        "INSERT INTO {} (channel, message_id, headers, payload, enqueued_at, visible_at) \
         VALUES {}",
        table.queue(),
        values_from(dialect, first, rows, &[Col::Plain; INSERT_COLUMNS])
    )
}

/// Binds a `(message, its headers as JSON)` pair of [`insert_sql`] to `$q`.
macro_rules! bind_message {
    ($q:expr, $pair:expr, $at:expr) => {{
        let (message, headers) = $pair;
        $q.bind(message.destination.as_str())
            .bind_id(message.id.0)
            .bind_json(headers)
            .bind(message.payload.as_str())
            .bind($at)
            .bind($at)
    }};
}
pub(crate) use bind_message;

/// Appends `messages` (visible at once), in order, one statement per [`CHUNK`]; `glued` runs
/// before them.
pub(crate) async fn insert_many(
    mut conn: Conn<'_>,
    table: &QueueTables,
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
        let sql = insert_sql(dialect, table, 1, chunk.len());
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

/// On PostgreSQL, a `NOTIFY` on `notify_channel` naming each of `channels` (delivered by the
/// commit, so consumers in every process wake); nothing on SQLite.
pub(crate) async fn notify(
    conn: Conn<'_>,
    notify_channel: &str,
    channels: &[&str],
) -> Result<(), StoreError> {
    let Conn::Postgres(c) = conn else {
        return Ok(());
    };
    if channels.is_empty() {
        return Ok(());
    }
    // One round trip for all of them.
    query("SELECT pg_notify($1, channel) FROM unnest($2::text[]) AS channel")
        .bind(notify_channel)
        .bind(channels)
        .execute(&mut *c)
        .await
        .map(drop)
        .map_err(store_error)
}

/// Claims up to `max` visible rows of `channel` until `lease_end`, counting the delivery.
pub(crate) async fn claim(
    conn: Conn<'_>,
    channel: &str,
    now: Timestamp,
    lease_end: Timestamp,
    max: usize,
) -> Result<Vec<QueueRow>, StoreError> {
    let sql = match conn.dialect() {
        Dialect::Postgres => {
            "UPDATE saga_queue SET visible_at = $1, deliveries = deliveries + 1 \
             WHERE id IN (SELECT id FROM saga_queue WHERE channel = $2 AND visible_at <= $3 \
                          ORDER BY id LIMIT $4 FOR UPDATE SKIP LOCKED) \
             RETURNING id, message_id, headers, payload, deliveries"
        }
        Dialect::Sqlite => {
            "UPDATE saga_queue SET visible_at = $1, deliveries = deliveries + 1 \
             WHERE id IN (SELECT id FROM saga_queue WHERE channel = $2 AND visible_at <= $3 \
                          ORDER BY id LIMIT $4) \
             RETURNING id, message_id, headers, payload, deliveries"
        }
    };
    on_backend!(conn, |c| {
        query(sql)
            .bind(to_i64(lease_end.as_millis()))
            .bind(channel)
            .bind(to_i64(now.as_millis()))
            .bind(to_i64(max as u64))
            .fetch_all(c)
            .await
            .map_err(store_error)?
            .iter()
            .map(|row| queue_row(row, channel))
            .collect()
    })
}

/// Takes (deletes and returns) up to `max` visible rows of `channel`; taking counts as a
/// delivery, as a claim does (`deliveries + 1`).
/// `glued` runs before it.
pub(crate) async fn take(
    mut conn: Conn<'_>,
    table: &QueueTables,
    glued: Glued,
    channel: &str,
    now: Timestamp,
    max: usize,
) -> Result<Vec<QueueRow>, StoreError> {
    let lock = match conn.dialect() {
        Dialect::Postgres => " FOR UPDATE SKIP LOCKED",
        Dialect::Sqlite => "",
    };
    let table = table.queue();
    let sql = format!(
        "DELETE FROM {table} WHERE id IN (SELECT id FROM {table} \
         WHERE channel = $1 AND visible_at <= $2 ORDER BY id LIMIT $3{lock}) \
         RETURNING id, message_id, headers, payload, deliveries + 1 AS deliveries"
    );
    glued.run_unfused(conn.reborrow()).await?;
    let sql = glued.before(&sql);
    on_backend!(conn, |c| {
        query(AssertSqlSafe(sql))
            .bind(channel)
            .bind(to_i64(now.as_millis()))
            .bind(to_i64(max as u64))
            .fetch_all(c)
            .await
            .map_err(store_error)?
            .iter()
            .map(|row| queue_row(row, channel))
            .collect()
    })
}

/// Whether `channel` has a row visible at `now`: a read, which on SQLite does not wait for
/// the writer.
pub(crate) async fn any_visible(
    conn: Conn<'_>,
    channel: &str,
    now: Timestamp,
) -> Result<bool, StoreError> {
    on_backend!(conn, |c| {
        query("SELECT 1 FROM saga_queue WHERE channel = $1 AND visible_at <= $2 LIMIT 1")
            .bind(channel)
            .bind(to_i64(now.as_millis()))
            .fetch_optional(c)
            .await
            .map(|row| row.is_some())
            .map_err(store_error)
    })
}

/// Deletes rows by id, one statement per 500.
pub(crate) async fn delete(
    mut conn: Conn<'_>,
    table: &QueueTables,
    ids: &[i64],
) -> Result<(), StoreError> {
    let dialect = conn.dialect();
    for chunk in ids.chunks(500) {
        let sql = format!(
            "DELETE FROM {} WHERE id IN ({})",
            table.queue(),
            placeholders(dialect, 1, chunk.len())
        );
        on_backend!(conn.reborrow(), |c| {
            let mut statement = query(AssertSqlSafe(sql));
            for id in chunk {
                statement = statement.bind(*id);
            }
            statement.execute(c).await.map(drop).map_err(store_error)
        })?;
    }
    Ok(())
}

/// Makes a row visible again at `visible`, not counting the delivery (the consumer gave it
/// back unprocessed).
pub(crate) async fn release(conn: Conn<'_>, id: i64, visible: Timestamp) -> Result<(), StoreError> {
    on_backend!(conn, |c| {
        query(
            "UPDATE saga_queue SET visible_at = $1, \
             deliveries = CASE WHEN deliveries > 0 THEN deliveries - 1 ELSE 0 END WHERE id = $2",
        )
        .bind(to_i64(visible.as_millis()))
        .bind(id)
        .execute(c)
        .await
        .map(drop)
        .map_err(store_error)
    })
}

/// Keeps rows invisible until `visible` (a lease renewal), one statement per 500.
pub(crate) async fn extend(
    mut conn: Conn<'_>,
    ids: &[i64],
    visible: Timestamp,
) -> Result<(), StoreError> {
    let dialect = conn.dialect();
    for chunk in ids.chunks(500) {
        let sql = format!(
            "UPDATE saga_queue SET visible_at = {} WHERE id IN ({})",
            placeholders(dialect, 1, 1),
            placeholders(dialect, 2, chunk.len())
        );
        on_backend!(conn.reborrow(), |c| {
            let mut statement = query(AssertSqlSafe(sql)).bind(to_i64(visible.as_millis()));
            for id in chunk {
                statement = statement.bind(*id);
            }
            statement.execute(c).await.map(drop).map_err(store_error)
        })?;
    }
    Ok(())
}

/// Channels holding messages never delivered that were enqueued before `cutoff`.
pub(crate) async fn unconsumed(
    conn: Conn<'_>,
    cutoff: i64,
) -> Result<Vec<ChannelBacklog>, StoreError> {
    on_backend!(conn, |c| {
        query(
            "SELECT channel, COUNT(*) AS messages, MIN(enqueued_at) AS oldest FROM saga_queue \
             WHERE deliveries = 0 AND enqueued_at < $1 GROUP BY channel ORDER BY channel",
        )
        .bind(cutoff)
        .fetch_all(c)
        .await
        .map_err(store_error)?
        .iter()
        .map(|row| {
            Ok(ChannelBacklog {
                channel: row.text("channel")?,
                messages: to_u64(row.int("messages")?),
                oldest: Some(Timestamp(to_u64(row.int("oldest")?))),
            })
        })
        .collect()
    })
}

/// Every channel's messages waiting in the queue (in flight included), with the oldest's
/// enqueue time.
pub(crate) async fn depth(conn: Conn<'_>) -> Result<Vec<ChannelBacklog>, StoreError> {
    on_backend!(conn, |c| {
        query(
            "SELECT channel, COUNT(*) AS messages, MIN(enqueued_at) AS oldest FROM saga_queue \
             GROUP BY channel ORDER BY channel",
        )
        .fetch_all(c)
        .await
        .map_err(store_error)?
        .iter()
        .map(|row| {
            Ok(ChannelBacklog {
                channel: row.text("channel")?,
                messages: to_u64(row.int("messages")?),
                oldest: row.opt_int("oldest")?.map(|ms| Timestamp(to_u64(ms))),
            })
        })
        .collect()
    })
}

#[cfg(test)]
mod tests {
    use saga_core::Headers;

    use super::*;
    use crate::sql::testing::databases;

    fn message(channel: &str, n: usize) -> Message {
        Message::new(
            channel,
            Headers::new().with("message-type", "Reserve"),
            format!(r#"{{"n":{n}}}"#),
        )
    }

    fn readable(rows: &[QueueRow]) -> Vec<Message> {
        rows.iter()
            .map(|row| row.message.as_ref().expect("readable").clone())
            .collect()
    }

    #[tokio::test]
    async fn claimed_rows_are_hidden_for_the_lease_and_taken_rows_are_gone() {
        for db in databases("queue").await {
            let table = &QueueTables::of(&db.database);
            let mut tx = db.database.begin().await.expect("begins");
            let ledger: Vec<Message> = (0..4).map(|n| message("ledger", n)).collect();
            let other = message("other", 9);
            let mut refs: Vec<&Message> = ledger.iter().collect();
            refs.push(&other);
            insert_many(tx.conn(), table, Glued::NONE, &refs, 100)
                .await
                .expect("enqueues");

            let claimed = claim(tx.conn(), "ledger", Timestamp(100), Timestamp(1_000), 2)
                .await
                .expect("claims");
            let mut got = readable(&claimed);
            got.sort_by_key(|m| m.payload.clone());
            assert_eq!(got, ledger[..2]);
            assert!(claimed.iter().all(|row| row.deliveries == 1));
            // Hidden until the lease ends: the next claim gets the other two.
            let rest = claim(tx.conn(), "ledger", Timestamp(200), Timestamp(1_000), 10)
                .await
                .expect("claims");
            assert_eq!(rest.len(), 2);
            // Given back with its delivery uncounted, the first is visible at once.
            release(tx.conn(), claimed[0].id, Timestamp(200))
                .await
                .expect("releases");
            delete(tx.conn(), table, &[claimed[1].id])
                .await
                .expect("deletes");
            let taken = take(tx.conn(), table, Glued::NONE, "ledger", Timestamp(300), 10)
                .await
                .expect("takes");
            assert_eq!(taken.len(), 1);
            assert_eq!(taken[0].deliveries, 1, "a release does not count");
            assert!(
                take(tx.conn(), table, Glued::NONE, "ledger", Timestamp(300), 10)
                    .await
                    .expect("takes")
                    .is_empty()
            );
            // After the lease, the two claimed by the second claim come back.
            let again = take(
                tx.conn(),
                table,
                Glued::NONE,
                "ledger",
                Timestamp(1_000),
                10,
            )
            .await
            .expect("takes");
            assert_eq!(again.len(), 2);
            assert!(again.iter().all(|row| row.deliveries == 2));
            assert_eq!(
                readable(
                    &take(tx.conn(), table, Glued::NONE, "other", Timestamp(1_000), 10)
                        .await
                        .expect("takes")
                ),
                std::slice::from_ref(&other)
            );
            tx.rollback().await.expect("rolls back");
            db.drop().await;
        }
    }
}
