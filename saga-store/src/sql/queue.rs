//! `saga_queue`: the SQL-table transport's durable queue, one row per message on a channel.
//! A consumer claims rows by moving `visible_at` a lease into the future (`FOR UPDATE SKIP
//! LOCKED` on PostgreSQL) and counting the delivery, or — handling them in place — takes them
//! (deletes and returns them) inside the transaction that handles them.
//!
//! One saga's messages on a channel go out one at a time, in order, however many consumers
//! (threads or processes) the channel has: a row is handed out only while it is the oldest of
//! its channel with its `ordering_key` (a hash of its saga id), so a later one waits until the
//! earlier is acknowledged, taken for good or set aside — through leases, retries and
//! backoffs. The engine relies on it: a saga cancelled while its command is queued sends the
//! compensation behind the command, and it must not overtake it.

use saga_core::Message;
use saga_core::message::headers;
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
    Bind, CHUNK, Col, Get, headers_json, headers_of, parameter, placeholders, to_i64, to_u64,
    values_from,
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

/// Which rows keep order among themselves: a stable hash (FNV-1a) of the saga id, or of the
/// message id for a message of no saga.
pub(crate) fn ordering_key(message: &Message) -> i64 {
    let id = message.id.0.to_string();
    let key = message.headers.get(headers::SAGA_ID).unwrap_or(id.as_str());
    let hash = key.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    });
    i64::from_ne_bytes(hash.to_ne_bytes())
}

/// The condition that a row (`m`) is the oldest of its channel with its key, which is all a
/// consumer may be handed (see the module's documentation). A scalar subquery, which
/// PostgreSQL runs as one index probe per candidate row: written as `NOT EXISTS` (an anti
/// join) it cost in-place passes 10–20 % of their throughput at 8 sagas in flight; this way
/// they run within noise of no check at all (BENCHMARKS.md, 2026-12-06).
fn oldest_of_its_key(table: &str) -> String {
    format!(
        "m.id = (SELECT min(e.id) FROM {table} AS e WHERE e.channel = m.channel \
         AND e.ordering_key = m.ordering_key)"
    )
}

/// Parameters per row of [`insert_sql`].
pub(crate) const INSERT_COLUMNS: usize = 7;

/// [`insert_many`]'s statement for `rows` messages, its parameters numbered from `first`.
pub(crate) fn insert_sql(
    dialect: Dialect,
    table: &QueueTables,
    first: usize,
    rows: usize,
) -> String {
    format!(
        "INSERT INTO {} (channel, message_id, headers, payload, enqueued_at, visible_at, \
         ordering_key) VALUES {}",
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
            .bind($crate::sql::queue::ordering_key(message))
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
    let sql = format!(
        "UPDATE saga_queue SET visible_at = $1, deliveries = deliveries + 1 \
         WHERE id IN (SELECT id FROM saga_queue AS m WHERE channel = $2 AND visible_at <= $3 \
                      AND {} ORDER BY id LIMIT $4{}) \
         RETURNING id, message_id, headers, payload, deliveries",
        oldest_of_its_key("saga_queue"),
        skip_locked(conn.dialect()),
    );
    on_backend!(conn, |c| {
        query(AssertSqlSafe(sql))
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
    let table = table.queue();
    let sql = format!(
        "DELETE FROM {table} WHERE id IN (SELECT id FROM {table} AS m \
         WHERE channel = $1 AND visible_at <= $2 AND {} ORDER BY id LIMIT $3{}) \
         RETURNING id, message_id, headers, payload, deliveries + 1 AS deliveries",
        oldest_of_its_key(table),
        skip_locked(conn.dialect()),
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

/// On PostgreSQL, the lock that keeps two consumers from taking the same rows, skipping rows
/// another holds; nothing on SQLite, whose writer is one at a time.
fn skip_locked(dialect: Dialect) -> &'static str {
    match dialect {
        Dialect::Postgres => " FOR UPDATE OF m SKIP LOCKED",
        Dialect::Sqlite => "",
    }
}

/// Whether `channel` has a row a consumer may be handed at `now`: a read, which on SQLite does not wait for
/// the writer.
pub(crate) async fn any_visible(
    conn: Conn<'_>,
    channel: &str,
    now: Timestamp,
) -> Result<bool, StoreError> {
    let sql = format!(
        "SELECT 1 FROM saga_queue AS m WHERE channel = $1 AND visible_at <= $2 AND {} LIMIT 1",
        oldest_of_its_key("saga_queue")
    );
    on_backend!(conn, |c| {
        query(AssertSqlSafe(sql))
            .bind(channel)
            .bind(to_i64(now.as_millis()))
            .fetch_optional(c)
            .await
            .map(|row| row.is_some())
            .map_err(store_error)
    })
}

/// Deletes rows by id, one statement per 500; returns the deleted rows' ordering keys.
pub(crate) async fn delete(
    mut conn: Conn<'_>,
    table: &QueueTables,
    ids: &[i64],
) -> Result<Vec<i64>, StoreError> {
    let dialect = conn.dialect();
    let mut keys = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(500) {
        let sql = format!(
            "DELETE FROM {} WHERE id IN ({}) RETURNING ordering_key",
            table.queue(),
            placeholders(dialect, 1, chunk.len())
        );
        let deleted: Vec<i64> = on_backend!(conn.reborrow(), |c| {
            let mut statement = query(AssertSqlSafe(sql));
            for id in chunk {
                statement = statement.bind(*id);
            }
            statement
                .fetch_all(c)
                .await
                .map_err(store_error)?
                .iter()
                .map(|row| row.int("ordering_key"))
                .collect::<Result<_, _>>()
        })?;
        keys.extend(deleted);
    }
    Ok(keys)
}

/// Deletes the acknowledged rows `ids` of `channel`, and says whether a later message of one
/// of their sagas waits on the channel: it may be handed out now, so the channel's consumers
/// should look again (they looked when it arrived, and passed it over).
pub(crate) async fn acknowledge(
    mut conn: Conn<'_>,
    table: &QueueTables,
    channel: &str,
    ids: &[i64],
) -> Result<bool, StoreError> {
    let dialect = conn.dialect();
    let mut keys = delete(conn.reborrow(), table, ids).await?;
    keys.sort_unstable();
    keys.dedup();
    for chunk in keys.chunks(500) {
        let sql = format!(
            "SELECT 1 FROM {} WHERE channel = {} AND ordering_key IN ({}) LIMIT 1",
            table.queue(),
            // Numbered alike: SQLite's anonymous `?` after a `$1` would take argument 1 again.
            parameter(dialect, 1),
            placeholders(dialect, 2, chunk.len())
        );
        let waiting = on_backend!(conn.reborrow(), |c| {
            let mut statement = query(AssertSqlSafe(sql)).bind(channel);
            for key in chunk {
                statement = statement.bind(*key);
            }
            statement
                .fetch_optional(c)
                .await
                .map(|row| row.is_some())
                .map_err(store_error)
        })?;
        if waiting {
            return Ok(true);
        }
    }
    Ok(false)
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
    use saga_core::{Headers, SagaId};

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

    fn of_saga(n: usize, saga: &str) -> Message {
        let mut message = message("ledger", n);
        message.headers = message.headers.with(headers::SAGA_ID, saga);
        message
    }

    fn payloads(rows: &[QueueRow]) -> Vec<String> {
        let mut got: Vec<String> = readable(rows).into_iter().map(|m| m.payload).collect();
        got.sort();
        got
    }

    /// The payloads of up to `max` rows of `ledger` taken at `at`.
    async fn take_ledger(conn: Conn<'_>, table: &QueueTables, at: u64, max: usize) -> Vec<String> {
        let taken = take(conn, table, Glued::NONE, "ledger", Timestamp(at), max)
            .await
            .expect("takes");
        payloads(&taken)
    }

    /// A saga's later message waits while an earlier one is leased, backing off or being
    /// taken by another consumer; other sagas' messages go on.
    #[tokio::test]
    async fn one_sagas_messages_go_out_one_at_a_time_in_order() {
        for db in databases("queue_order").await {
            let table = &QueueTables::of(&db.database);
            let (a, b) = (SagaId::new().to_string(), SagaId::new().to_string());
            let queued = [
                of_saga(1, &a),
                of_saga(2, &a),
                of_saga(3, &b),
                of_saga(4, &a),
            ];
            let mut tx = db.database.begin().await.expect("begins");
            insert_many(
                tx.conn(),
                table,
                Glued::NONE,
                &queued.iter().collect::<Vec<_>>(),
                100,
            )
            .await
            .expect("enqueues");
            tx.commit().await.expect("commits");

            if db.database.dialect() == Dialect::Postgres {
                // Two consumers at once: while one takes saga a's first, the other gets b's.
                let mut first = db.database.begin().await.expect("begins");
                let mut second = db.database.begin().await.expect("begins");
                let one = take_ledger(first.conn(), table, 100, 1).await;
                assert_eq!(one, [r#"{"n":1}"#]);
                let other = take_ledger(second.conn(), table, 100, 10).await;
                assert_eq!(other, [r#"{"n":3}"#]);
                first.rollback().await.expect("rolls back");
                second.rollback().await.expect("rolls back");
            }

            let mut tx = db.database.begin().await.expect("begins");
            let claimed = claim(tx.conn(), "ledger", Timestamp(100), Timestamp(10_000), 10)
                .await
                .expect("claims");
            assert_eq!(payloads(&claimed), [r#"{"n":1}"#, r#"{"n":3}"#]);
            let first = claimed
                .iter()
                .find(|r| payloads(std::slice::from_ref(r)) == [r#"{"n":1}"#]);
            let first = first.expect("claimed").id;
            // Leased, then backing off: a's second waits.
            assert!(
                claim(tx.conn(), "ledger", Timestamp(200), Timestamp(1_000), 10)
                    .await
                    .expect("claims")
                    .is_empty()
            );
            release(tx.conn(), first, Timestamp(5_000))
                .await
                .expect("releases");
            assert!(
                !any_visible(tx.conn(), "ledger", Timestamp(2_000))
                    .await
                    .expect("reads")
            );
            // Acknowledged: a's second, and only it; the acknowledgement says it waits.
            assert!(
                acknowledge(tx.conn(), table, "ledger", &[first])
                    .await
                    .expect("deletes")
            );
            let second = take_ledger(tx.conn(), table, 2_000, 10).await;
            assert_eq!(second, [r#"{"n":2}"#]);
            let third = take_ledger(tx.conn(), table, 2_000, 10).await;
            assert_eq!(third, [r#"{"n":4}"#]);
            tx.rollback().await.expect("rolls back");
            db.drop().await;
        }
    }
}
