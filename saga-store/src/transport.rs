//! The SQL-table transport: a durable queue in the database itself.
//!
//! Publishing inserts rows into `saga_queue`. A consumer claims visible rows of its channel by
//! moving their `visible_at` a lease into the future (on PostgreSQL with `FOR UPDATE SKIP
//! LOCKED`, so any number of processes share a channel safely); acknowledging deletes the
//! row; a consumer that dies lets its lease run out and the message is delivered again.
//!
//! All consumers of a channel compete for its messages (one consumer group per channel).
//! A row whose envelope cannot be read, or that has been delivered `max_deliveries` times
//! without being acknowledged (or given back), is moved to `saga_dead_letters` with the
//! reason, so no message blocks a channel; when it is a command whose saga waits for the
//! answer, a failure reply goes to the saga in the same transaction. Giving a message back
//! ([`Transport::release`]) or renewing its lease ([`Transport::extend`]) does not count as a
//! delivery: the poison limit counts only deliveries nobody answered.

use std::time::Duration;

use async_trait::async_trait;
use saga_core::message::failure_reply_for;
use saga_core::ports::{
    ChannelBacklog, DeadLetter, Delivery, StoreError, Transport, TransportError, check_destination,
};
use saga_core::{Headers, Message, MessageId, Timestamp};
use sqlx::AnyConnection;
use sqlx::{AssertSqlSafe, Row, query};

use crate::bulk;
use crate::codec::{self, to_i64, to_u64};
use crate::database::{Database, Dialect, NotifyTopic, Topic};
use crate::error::{corrupt, store_error, transport_error, transport_error_of};
use crate::store::insert_dead_letter;

/// Settings of the SQL-table transport.
#[derive(Clone, Debug)]
pub struct SqlTransportOptions {
    /// How long a claimed message stays invisible to other consumers (default 30 s). A
    /// consumer that dies holding it delays it by this much.
    pub lease: Duration,
    /// Deliveries after which an unacknowledged message is dead-lettered (default 10).
    pub max_deliveries: u32,
    /// How often an idle consumer looks for work when no wake-up arrives (default 1 s).
    pub poll_interval: Duration,
    /// The largest message (payload plus headers as stored) the queue takes, if capped
    /// (default: no cap). Larger outbox rows are set aside by the relay, and services can
    /// refuse such input at their edge ([`Transport::max_message_bytes`]).
    pub max_message_bytes: Option<usize>,
}

impl Default for SqlTransportOptions {
    fn default() -> Self {
        Self {
            lease: Duration::from_secs(30),
            max_deliveries: 10,
            poll_interval: Duration::from_secs(1),
            max_message_bytes: None,
        }
    }
}

/// What reading claimed or taken queue rows gave.
#[derive(Debug, Default)]
pub(crate) struct Taken {
    /// The deliveries, in queue order.
    pub(crate) deliveries: Vec<Delivery>,
    /// How many rows were set aside as dead letters instead.
    pub(crate) set_aside: usize,
    /// The channels that got a failure reply for one of those (to wake after the commit).
    pub(crate) replied_to: Vec<String>,
}

/// saga-core's transport port over a queue table.
#[derive(Clone, Debug)]
pub struct SqlTransport {
    database: Database,
    options: SqlTransportOptions,
}

const CLAIM_POSTGRES: &str = "UPDATE saga_queue SET visible_at = $1, deliveries = deliveries + 1 \
     WHERE id IN (SELECT id FROM saga_queue WHERE channel = $2 AND visible_at <= $3 \
                  ORDER BY id LIMIT $4 FOR UPDATE SKIP LOCKED) \
     RETURNING id, message_id, headers, payload, deliveries";

const CLAIM_SQLITE: &str = "UPDATE saga_queue SET visible_at = $1, deliveries = deliveries + 1 \
     WHERE id IN (SELECT id FROM saga_queue WHERE channel = $2 AND visible_at <= $3 \
                  ORDER BY id LIMIT $4) \
     RETURNING id, message_id, headers, payload, deliveries";

// Taking a message in place is a delivery too: `deliveries + 1`, as a claim counts it.
const TAKE_POSTGRES: &str = "DELETE FROM saga_queue WHERE id IN (SELECT id FROM saga_queue \
     WHERE channel = $1 AND visible_at <= $2 ORDER BY id LIMIT $3 FOR UPDATE SKIP LOCKED) \
     RETURNING id, message_id, headers, payload, deliveries + 1 AS deliveries";

const TAKE_SQLITE: &str = "DELETE FROM saga_queue WHERE id IN (SELECT id FROM saga_queue \
     WHERE channel = $1 AND visible_at <= $2 ORDER BY id LIMIT $3) \
     RETURNING id, message_id, headers, payload, deliveries + 1 AS deliveries";

impl SqlTransport {
    /// A transport on `database`'s queue table.
    pub fn new(database: Database) -> Self {
        Self::with_options(database, SqlTransportOptions::default())
    }

    /// A transport with non-default settings.
    pub fn with_options(database: Database, options: SqlTransportOptions) -> Self {
        Self { database, options }
    }

    /// The database holding the queue.
    pub fn database(&self) -> &Database {
        &self.database
    }

    /// Inserts `messages` into the queue inside an open transaction (to publish atomically with
    /// other writes to the same database).
    pub async fn publish_in(
        &self,
        conn: &mut AnyConnection,
        messages: &[Message],
    ) -> Result<(), TransportError> {
        let refs: Vec<&Message> = messages.iter().collect();
        bulk::insert_queue(conn, &refs, to_i64(Timestamp::now().as_millis()))
            .await
            .map_err(transport_error_of)?;
        self.notify_queued(conn, messages)
            .await
            .map_err(transport_error)
    }

    /// On PostgreSQL, tells consumers in every process (at commit) which channels got
    /// messages; SQLite consumers are in this process and woken after the commit.
    async fn notify_queued(
        &self,
        conn: &mut AnyConnection,
        messages: &[Message],
    ) -> Result<(), sqlx::Error> {
        if self.database.dialect() != Dialect::Postgres {
            return Ok(());
        }
        let mut channels: Vec<&str> = messages.iter().map(|m| m.destination.as_str()).collect();
        channels.sort_unstable();
        channels.dedup();
        for channel in channels {
            query("SELECT pg_notify($1, $2)")
                .bind(self.database.notify_channel(NotifyTopic::Queue))
                .bind(channel)
                .execute(&mut *conn)
                .await?;
        }
        Ok(())
    }

    /// Publishes `messages` in one transaction; when that fails for a reason that is not
    /// transient, finds the one message the queue cannot take by publishing them one by one,
    /// so the caller can set exactly that one aside.
    async fn publish_batch(&self, messages: &[Message]) -> Result<(), TransportError> {
        let attempt = async {
            let mut tx = self.database.begin().await.map_err(transport_error)?;
            self.publish_in(&mut tx, messages).await?;
            self.database.commit(tx).await.map_err(transport_error)
        };
        match attempt.await {
            Err(TransportError::Other(reason)) if messages.len() > 1 => {
                tracing::debug!(%reason, "a queue batch failed; publishing its messages one by one");
                for message in messages {
                    Box::pin(self.publish_batch(std::slice::from_ref(message))).await?;
                }
                Ok(())
            }
            Err(TransportError::Other(reason)) => Err(TransportError::Refused {
                id: messages.first().map(|m| m.id).unwrap_or_default(),
                reason,
            }),
            other => other,
        }
    }

    /// Wakes local consumers of the channels `messages` went to.
    pub fn wake_consumers(&self, messages: &[Message]) {
        for message in messages {
            self.database
                .wakeups()
                .wake(&Topic::Queue(message.destination.clone()));
        }
    }

    async fn claim(&self, channel: &str, max: usize) -> Result<Vec<Delivery>, TransportError> {
        let now = Timestamp::now();
        let lease_end = now.plus(self.options.lease);
        let mut tx = self.database.begin().await.map_err(transport_error)?;
        let sql = match self.database.dialect() {
            Dialect::Postgres => CLAIM_POSTGRES,
            Dialect::Sqlite => CLAIM_SQLITE,
        };
        let rows = query(sql)
            .bind(to_i64(lease_end.as_millis()))
            .bind(channel)
            .bind(to_i64(now.as_millis()))
            .bind(to_i64(max as u64))
            .fetch_all(&mut *tx)
            .await
            .map_err(transport_error)?;
        let rows_claimed = !rows.is_empty();
        let taken = self
            .read_rows(&mut tx, channel, rows, now)
            .await
            .map_err(transport_error_of)?;
        if rows_claimed {
            self.database.commit(tx).await.map_err(transport_error)?;
            self.wake_channels(&taken.replied_to);
        } else {
            // Nothing was claimed: there is nothing to make durable.
            tx.rollback().await.map_err(transport_error)?;
        }
        Ok(taken.deliveries)
    }

    /// Wakes local consumers of `channels`.
    pub(crate) fn wake_channels(&self, channels: &[String]) {
        for channel in channels {
            self.database.wakeups().wake(&Topic::Queue(channel.clone()));
        }
    }

    /// Turns claimed rows into deliveries, in queue order; a row whose envelope cannot be read,
    /// or that was delivered too often, is moved to the dead letters instead.
    async fn read_rows(
        &self,
        conn: &mut AnyConnection,
        channel: &str,
        rows: Vec<sqlx::any::AnyRow>,
        now: Timestamp,
    ) -> Result<Taken, StoreError> {
        let mut taken = Taken::default();
        let deliveries = &mut taken.deliveries;
        for row in rows {
            let column = |e| corrupt("saga_queue", e);
            let id: i64 = row.try_get("id").map_err(column)?;
            let message_id: String = row.try_get("message_id").map_err(column)?;
            let headers: String = row.try_get("headers").map_err(column)?;
            let payload: String = row.try_get("payload").map_err(column)?;
            let count: i64 = row.try_get("deliveries").map_err(column)?;
            let attempt = u32::try_from(count).unwrap_or(u32::MAX);
            let problem =
                match codec::message(&message_id, channel.to_owned(), &headers, payload.clone()) {
                    Ok(message) if attempt <= self.options.max_deliveries => {
                        deliveries.push(Delivery {
                            message,
                            attempt,
                            receipt: to_u64(id),
                        });
                        continue;
                    }
                    Ok(_) => format!("delivered {} times without being acknowledged", attempt - 1),
                    Err(reason) => format!("unreadable envelope: {reason}"),
                };
            tracing::warn!(channel, message_id, %problem, "queue message dead-lettered");
            // A command whose saga waits for the answer: tell the saga.
            let stored = codec::message(&message_id, channel.to_owned(), &headers, payload.clone());
            if let Some(reply) = stored
                .ok()
                .and_then(|command| failure_reply_for(&command, &problem))
            {
                bulk::insert_queue(conn, &[&reply], to_i64(now.as_millis())).await?;
                self.notify_queued(conn, std::slice::from_ref(&reply))
                    .await
                    .map_err(store_error)?;
                taken.replied_to.push(reply.destination);
            }
            taken.set_aside += 1;
            let dead = DeadLetter {
                consumer: format!("transport:{channel}"),
                message: Message {
                    id: message_id.parse().unwrap_or_else(|_| MessageId::new()),
                    destination: channel.to_owned(),
                    headers: Headers::new().with("x-stored-headers", headers),
                    payload,
                },
                reason: problem,
                at: now,
            };
            insert_dead_letter(conn, &dead).await?;
            query("DELETE FROM saga_queue WHERE id = $1")
                .bind(id)
                .execute(&mut *conn)
                .await
                .map_err(store_error)?;
        }
        deliveries.sort_by_key(|d| d.receipt);
        Ok(taken)
    }

    /// Takes up to `max` visible messages of `channel` out of the queue inside an open
    /// transaction, without a lease: one statement deletes and returns them (on PostgreSQL
    /// skipping rows other consumers hold), so they are gone if the transaction commits and
    /// back if it rolls back. Unreadable rows are dead-lettered in the transaction.
    pub(crate) async fn take_in(
        &self,
        conn: &mut AnyConnection,
        channel: &str,
        max: usize,
    ) -> Result<Taken, StoreError> {
        let now = Timestamp::now();
        let sql = match self.database.dialect() {
            Dialect::Postgres => TAKE_POSTGRES,
            Dialect::Sqlite => TAKE_SQLITE,
        };
        let rows = query(sql)
            .bind(channel)
            .bind(to_i64(now.as_millis()))
            .bind(to_i64(max as u64))
            .fetch_all(&mut *conn)
            .await
            .map_err(store_error)?;
        self.read_rows(conn, channel, rows, now).await
    }

    /// Deletes taken messages (see [`SqlTransport::take_in`]).
    pub(crate) async fn delete_in(
        conn: &mut AnyConnection,
        deliveries: &[Delivery],
    ) -> Result<(), StoreError> {
        for chunk in deliveries.chunks(500) {
            let sql = format!(
                "DELETE FROM saga_queue WHERE id IN ({})",
                bulk::placeholders(conn, chunk.len())
            );
            let mut statement = query(AssertSqlSafe(sql));
            for delivery in chunk {
                statement = statement.bind(to_i64(delivery.receipt));
            }
            statement.execute(&mut *conn).await.map_err(store_error)?;
        }
        Ok(())
    }
}

#[async_trait]
impl Transport for SqlTransport {
    /// The destination must be a channel name; on PostgreSQL, whose text columns cannot hold
    /// NUL characters, the payload and headers must have none; and the message must be within
    /// [`SqlTransportOptions::max_message_bytes`], if set.
    fn check(&self, message: &Message) -> Result<(), TransportError> {
        check_destination(message)?;
        let nul = message.payload.contains('\0')
            || message
                .headers
                .iter()
                .any(|(k, v)| k.contains('\0') || v.contains('\0'));
        if nul && self.database.dialect() == Dialect::Postgres {
            return Err(TransportError::Refused {
                id: message.id,
                reason: "it holds NUL characters, which PostgreSQL text cannot store".to_owned(),
            });
        }
        if let Some(limit) = self.options.max_message_bytes {
            let size = message.payload.len() + codec::encode_headers(&message.headers).len();
            if size > limit {
                return Err(TransportError::TooLarge {
                    id: message.id,
                    size,
                    limit,
                });
            }
        }
        Ok(())
    }

    fn max_message_bytes(&self) -> Option<usize> {
        self.options.max_message_bytes
    }

    fn lease(&self) -> Option<Duration> {
        Some(self.options.lease)
    }

    async fn publish(&self, messages: &[Message]) -> Result<(), TransportError> {
        if messages.is_empty() {
            return Ok(());
        }
        self.publish_batch(messages).await?;
        self.wake_consumers(messages);
        Ok(())
    }

    async fn extend(
        &self,
        _channel: &str,
        _group: &str,
        deliveries: &[Delivery],
        by: Duration,
    ) -> Result<(), TransportError> {
        let visible = to_i64(Timestamp::now().plus(by).as_millis());
        let mut conn = self
            .database
            .pool()
            .acquire()
            .await
            .map_err(transport_error)?;
        for chunk in deliveries.chunks(500) {
            let sql = format!(
                "UPDATE saga_queue SET visible_at = {} WHERE id IN ({})",
                bulk::placeholders(&conn, 1),
                bulk::placeholders_from(&conn, 2, chunk.len())
            );
            let mut statement = query(AssertSqlSafe(sql)).bind(visible);
            for delivery in chunk {
                statement = statement.bind(to_i64(delivery.receipt));
            }
            statement
                .execute(&mut *conn)
                .await
                .map_err(transport_error)?;
            self.database.count_commit();
        }
        Ok(())
    }

    async fn unconsumed(
        &self,
        older_than: Duration,
    ) -> Result<Vec<ChannelBacklog>, TransportError> {
        let cutoff = to_i64(
            Timestamp::now()
                .as_millis()
                .saturating_sub(u64::try_from(older_than.as_millis()).unwrap_or(u64::MAX)),
        );
        let rows = query(
            "SELECT channel, COUNT(*) AS messages, MIN(enqueued_at) AS oldest FROM saga_queue \
             WHERE deliveries = 0 AND enqueued_at < $1 GROUP BY channel ORDER BY channel",
        )
        .bind(cutoff)
        .fetch_all(self.database.pool())
        .await
        .map_err(transport_error)?;
        rows.iter()
            .map(|row| {
                let column = |e| transport_error_of(corrupt("saga_queue", e));
                Ok(ChannelBacklog {
                    channel: row.try_get("channel").map_err(column)?,
                    messages: to_u64(row.try_get("messages").map_err(column)?),
                    oldest: Some(Timestamp(to_u64(row.try_get("oldest").map_err(column)?))),
                })
            })
            .collect()
    }

    async fn receive(
        &self,
        channel: &str,
        _group: &str,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Delivery>, TransportError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let wakeup = self
            .database
            .wakeups()
            .get(&Topic::Queue(channel.to_owned()));
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let deliveries = self.claim(channel, max).await?;
            let now = tokio::time::Instant::now();
            if !deliveries.is_empty() || now >= deadline {
                return Ok(deliveries);
            }
            let nap = (deadline - now).min(self.options.poll_interval);
            let _ = tokio::time::timeout(nap, wakeup.notified()).await;
        }
    }

    async fn ack(
        &self,
        _channel: &str,
        _group: &str,
        delivery: &Delivery,
    ) -> Result<(), TransportError> {
        query("DELETE FROM saga_queue WHERE id = $1")
            .bind(to_i64(delivery.receipt))
            .execute(self.database.pool())
            .await
            .map_err(transport_error)?;
        self.database.count_commit();
        Ok(())
    }

    async fn ack_all(
        &self,
        _channel: &str,
        _group: &str,
        deliveries: &[Delivery],
    ) -> Result<(), TransportError> {
        let mut conn = self
            .database
            .pool()
            .acquire()
            .await
            .map_err(transport_error)?;
        Self::delete_in(&mut conn, deliveries)
            .await
            .map_err(transport_error_of)?;
        self.database.count_commit();
        Ok(())
    }

    /// The dead letter, the failure reply to the saga and the row's deletion commit together.
    async fn dead_letter(
        &self,
        channel: &str,
        group: &str,
        delivery: &Delivery,
        reason: &str,
    ) -> Result<(), TransportError> {
        let mut tx = self.database.begin().await.map_err(transport_error)?;
        let dead = DeadLetter {
            consumer: group.to_owned(),
            message: delivery.message.clone(),
            reason: reason.to_owned(),
            at: Timestamp::now(),
        };
        insert_dead_letter(&mut tx, &dead)
            .await
            .map_err(transport_error_of)?;
        let replies: Vec<Message> = failure_reply_for(&delivery.message, reason)
            .into_iter()
            .collect();
        self.publish_in(&mut tx, &replies).await?;
        query("DELETE FROM saga_queue WHERE id = $1")
            .bind(to_i64(delivery.receipt))
            .execute(&mut *tx)
            .await
            .map_err(transport_error)?;
        self.database.commit(tx).await.map_err(transport_error)?;
        self.wake_consumers(&replies);
        tracing::warn!(channel, message_id = %delivery.message.id, %reason, "message set aside as a dead letter");
        Ok(())
    }

    async fn release(
        &self,
        _channel: &str,
        _group: &str,
        delivery: &Delivery,
        delay: Duration,
    ) -> Result<(), TransportError> {
        let visible = Timestamp::now().plus(delay);
        // Given back unprocessed: this delivery does not count toward the poison limit.
        query(
            "UPDATE saga_queue SET visible_at = $1, \
             deliveries = CASE WHEN deliveries > 0 THEN deliveries - 1 ELSE 0 END WHERE id = $2",
        )
        .bind(to_i64(visible.as_millis()))
        .bind(to_i64(delivery.receipt))
        .execute(self.database.pool())
        .await
        .map_err(transport_error)?;
        self.database.count_commit();
        Ok(())
    }
}
