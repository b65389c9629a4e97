//! The SQL-table transport: a durable queue in the database itself (`saga_queue`, see
//! `sql::queue`).
//!
//! Publishing inserts rows. A consumer claims visible rows of its channel by moving their
//! `visible_at` a lease into the future (on PostgreSQL with `FOR UPDATE SKIP LOCKED`, so any
//! number of processes share a channel safely); acknowledging deletes the row; a consumer that
//! dies lets its lease run out and the message is delivered again.
//!
//! All consumers of a channel compete for its messages (one consumer group per channel). A
//! row whose envelope cannot be read, or that has been delivered `max_deliveries` times without
//! being acknowledged (or given back), is moved to `saga_dead_letters` with the reason, so no
//! message blocks a channel; when it is a command whose saga waits for the answer, a failure
//! reply goes to the saga in the same transaction. Giving a message back
//! ([`Transport::release`]) or renewing its lease ([`Transport::extend`]) does not count as a
//! delivery: the poison limit counts only deliveries nobody answered.

use std::time::Duration;

use async_trait::async_trait;
use saga_core::message::failure_reply_for;
use saga_core::ports::{
    ChannelBacklog, DeadLetter, Delivery, StoreError, Transport, TransportError, check_destination,
};
use saga_core::{Headers, Message, MessageId, Timestamp};

use crate::db::backend::Conn;
use crate::db::savepoint::Glued;
use crate::db::wakeups::Topic;
use crate::db::{Database, Dialect};
use crate::error::{store_error, transport_error, transport_error_of};
use crate::sql::queue::{QueueRow, QueueTables};
use crate::sql::{self, to_i64, to_u64};

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

/// saga-core's transport port over a queue table.
#[derive(Clone, Debug)]
pub struct SqlTransport {
    database: Database,
    options: SqlTransportOptions,
    tables: QueueTables,
}

/// A message the PostgreSQL queue cannot store.
#[derive(Debug, thiserror::Error)]
#[error("it holds NUL characters, which PostgreSQL text cannot store")]
struct HoldsNul;

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

impl SqlTransport {
    /// A transport on `database`'s queue table.
    pub fn new(database: Database) -> Self {
        Self::with_options(database, SqlTransportOptions::default())
    }

    /// A transport with non-default settings.
    pub fn with_options(database: Database, options: SqlTransportOptions) -> Self {
        let tables = QueueTables::of(&database);
        Self {
            database,
            options,
            tables,
        }
    }

    /// The database holding the queue.
    pub fn database(&self) -> &Database {
        &self.database
    }

    /// The queue's tables, as statements of this database or a co-located one name them.
    pub(crate) fn tables(&self) -> &QueueTables {
        &self.tables
    }

    /// Inserts `messages` into the queue inside an open transaction (to publish atomically
    /// with other writes to the same database); on PostgreSQL, consumers in every process are
    /// told at commit.
    pub async fn publish_in(
        &self,
        mut conn: Conn<'_>,
        messages: &[Message],
    ) -> Result<(), TransportError> {
        let refs: Vec<&Message> = messages.iter().collect();
        let at = to_i64(Timestamp::now().as_millis());
        sql::queue::insert_many(conn.reborrow(), &self.tables, Glued::NONE, &refs, at)
            .await
            .map_err(transport_error_of)?;
        self.notify(conn, messages)
            .await
            .map_err(transport_error_of)
    }

    /// On PostgreSQL, tells the consumers of every process (at the commit of the transaction
    /// on `conn`) about `messages` put into the queue.
    pub(crate) async fn notify(
        &self,
        conn: Conn<'_>,
        messages: &[Message],
    ) -> Result<(), StoreError> {
        let channels = crate::store::destinations(messages.iter());
        let channels: Vec<&str> = channels.iter().map(String::as_str).collect();
        let notify = self.database.queue_notify_channel();
        sql::queue::notify(conn, &notify, &channels).await
    }

    /// Publishes `messages` in one transaction; when that fails for a reason that is not
    /// transient, finds the one message the queue cannot take by publishing them one by one,
    /// so the caller can set exactly that one aside.
    async fn publish_batch(&self, messages: &[Message]) -> Result<(), TransportError> {
        let attempt = async {
            let mut tx = self.database.begin().await.map_err(transport_error)?;
            self.publish_in(tx.conn(), messages).await?;
            self.database.commit(tx).await.map_err(transport_error)
        };
        match attempt.await {
            Err(TransportError::Failed { source }) if messages.len() > 1 => {
                tracing::debug!(error = %source, "a queue batch failed; publishing its messages one by one");
                for message in messages {
                    Box::pin(self.publish_batch(std::slice::from_ref(message))).await?;
                }
                Ok(())
            }
            Err(TransportError::Failed { source }) => Err(TransportError::Refused {
                id: messages.first().map(|m| m.id).unwrap_or_default(),
                source,
            }),
            other => other,
        }
    }

    /// Wakes local consumers of the channels `messages` went to.
    pub fn wake_consumers(&self, messages: &[Message]) {
        self.wake_channels(&crate::store::destinations(messages.iter()));
    }

    /// Wakes the local consumers of `channels`.
    pub(crate) fn wake_channels(&self, channels: &[String]) {
        self.database.wakeups().wake_channels(channels);
    }

    async fn claim(&self, channel: &str, max: usize) -> Result<Vec<Delivery>, TransportError> {
        let now = Timestamp::now();
        let lease_end = now.plus(self.options.lease);
        // Bookkeeping: lost in a crash of the machine, the rows are simply claimed again
        // (with any dead letters set aside in the same transaction).
        let mut tx = self
            .database
            .begin_relaxed()
            .await
            .map_err(transport_error)?;
        let rows = sql::queue::claim(tx.conn(), channel, now, lease_end, max)
            .await
            .map_err(transport_error_of)?;
        let claimed = !rows.is_empty();
        let taken = self
            .read_rows(tx.conn(), channel, rows, now)
            .await
            .map_err(transport_error_of)?;
        if claimed {
            self.database
                .commit_relaxed(tx)
                .await
                .map_err(transport_error)?;
            self.database.wakeups().wake_channels(&taken.replied_to);
        } else {
            // Nothing was claimed: there is nothing to make durable.
            tx.rollback().await.map_err(transport_error)?;
        }
        Ok(taken.deliveries)
    }

    /// Turns claimed or taken rows into deliveries, in queue order; a row whose envelope
    /// cannot be read, or that was delivered too often, is moved to the dead letters instead
    /// — and its saga told when it waits for an answer.
    async fn read_rows(
        &self,
        mut conn: Conn<'_>,
        channel: &str,
        rows: Vec<QueueRow>,
        now: Timestamp,
    ) -> Result<Taken, StoreError> {
        let mut taken = Taken::default();
        let mut set_aside = Vec::new();
        for row in rows {
            let attempt = u32::try_from(row.deliveries).unwrap_or(u32::MAX);
            let (message, problem) = match row.message {
                Ok(message) if attempt <= self.options.max_deliveries => {
                    taken.deliveries.push(Delivery {
                        message,
                        attempt,
                        receipt: to_u64(row.id),
                    });
                    continue;
                }
                Ok(message) => {
                    let problem =
                        format!("delivered {} times without being acknowledged", attempt - 1);
                    (message, problem)
                }
                Err(unreadable) => {
                    let problem = format!("unreadable envelope: {}", unreadable.reason);
                    let message = Message {
                        id: unreadable
                            .message_id
                            .parse()
                            .unwrap_or_else(|_| MessageId::new()),
                        destination: channel.to_owned(),
                        headers: Headers::new().with("x-stored-headers", unreadable.headers),
                        payload: unreadable.payload,
                    };
                    (message, problem)
                }
            };
            tracing::warn!(channel, message_id = %message.id, %problem, "queue message dead-lettered");
            if let Some(reply) = failure_reply_for(&message, &problem) {
                sql::queue::insert_many(
                    conn.reborrow(),
                    &self.tables,
                    Glued::NONE,
                    &[&reply],
                    to_i64(now.as_millis()),
                )
                .await?;
                self.notify(conn.reborrow(), std::slice::from_ref(&reply))
                    .await?;
                taken.replied_to.push(reply.destination);
            }
            let dead = DeadLetter {
                consumer: format!("transport:{channel}"),
                message,
                reason: problem,
                at: now,
            };
            sql::dead_letters::insert_into(conn.reborrow(), self.tables.dead_letters(), &dead)
                .await?;
            set_aside.push(row.id);
            taken.set_aside += 1;
        }
        sql::queue::delete(conn, &self.tables, &set_aside).await?;
        taken.deliveries.sort_by_key(|d| d.receipt);
        Ok(taken)
    }

    /// Whether `channel` has a message visible now, read on a connection of its own (outside
    /// any transaction): a cheap look before a pass that would otherwise take the writer for
    /// nothing.
    pub(crate) async fn any_visible(&self, channel: &str) -> Result<bool, StoreError> {
        let mut conn = self.database.acquire().await.map_err(store_error)?;
        sql::queue::any_visible(conn.conn(), channel, Timestamp::now()).await
    }

    /// Takes up to `max` visible messages of `channel` out of the queue inside an open
    /// transaction, without a lease: one statement deletes and returns them (on PostgreSQL
    /// skipping rows other consumers hold), so they are gone if the transaction commits and
    /// back if it rolls back. The transaction may be on a co-located database (another schema
    /// of the queue's PostgreSQL database). Unreadable rows are dead-lettered in the
    /// transaction, among the dead letters of the database it is on. `glued` runs first.
    pub(crate) async fn take_in(
        &self,
        mut conn: Conn<'_>,
        glued: Glued,
        channel: &str,
        max: usize,
    ) -> Result<Taken, StoreError> {
        let now = Timestamp::now();
        let rows =
            sql::queue::take(conn.reborrow(), &self.tables, glued, channel, now, max).await?;
        self.read_rows(conn, channel, rows, now).await
    }
}

#[async_trait]
impl Transport for SqlTransport {
    fn system(&self) -> &'static str {
        "saga_sql_queue"
    }

    fn orders_each_saga(&self) -> bool {
        true
    }

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
            return Err(TransportError::refused(message.id, HoldsNul));
        }
        if let Some(limit) = self.options.max_message_bytes {
            let size =
                message.payload.len() + sql::headers_json(&message.headers).to_string().len();
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

    async fn ready(&self) -> Result<(), TransportError> {
        self.database.ping().await.map_err(transport_error_of)
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
        let ids: Vec<i64> = deliveries.iter().map(|d| to_i64(d.receipt)).collect();
        let mut conn = self
            .database
            .acquire_relaxed()
            .await
            .map_err(transport_error)?;
        sql::queue::extend(conn.conn(), &ids, Timestamp::now().plus(by))
            .await
            .map_err(transport_error_of)?;
        self.database.count_relaxed_commit();
        Ok(())
    }

    async fn unconsumed(
        &self,
        older_than: Duration,
    ) -> Result<Vec<ChannelBacklog>, TransportError> {
        let cutoff = to_i64(
            Timestamp::now()
                .as_millis()
                .saturating_sub(sql::millis(older_than)),
        );
        let mut conn = self.database.acquire().await.map_err(transport_error)?;
        sql::queue::unconsumed(conn.conn(), cutoff)
            .await
            .map_err(transport_error_of)
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
        channel: &str,
        group: &str,
        delivery: &Delivery,
    ) -> Result<(), TransportError> {
        self.ack_all(channel, group, std::slice::from_ref(delivery))
            .await
    }

    /// Deletes the rows; when a later message of one of their sagas waits behind them (the
    /// queue hands out a saga's messages one at a time), wakes the channel's consumers, here
    /// and (PostgreSQL) in other processes, instead of leaving it to their next poll.
    async fn ack_all(
        &self,
        channel: &str,
        _group: &str,
        deliveries: &[Delivery],
    ) -> Result<(), TransportError> {
        let ids: Vec<i64> = deliveries.iter().map(|d| to_i64(d.receipt)).collect();
        // Bookkeeping: an acknowledgement lost in a crash of the machine redelivers the
        // messages, which their consumers' dedup records skip.
        let mut conn = self
            .database
            .acquire_relaxed()
            .await
            .map_err(transport_error)?;
        let waiting = sql::queue::acknowledge(conn.conn(), &self.tables, channel, &ids)
            .await
            .map_err(transport_error_of)?;
        self.database.count_relaxed_commit();
        if waiting {
            self.wake_channels(&[channel.to_owned()]);
            let notify = self.database.queue_notify_channel();
            sql::queue::notify(conn.conn(), &notify, &[channel])
                .await
                .map_err(transport_error_of)?;
        }
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
        sql::dead_letters::insert(tx.conn(), &dead)
            .await
            .map_err(transport_error_of)?;
        let replies: Vec<Message> = failure_reply_for(&delivery.message, reason)
            .into_iter()
            .collect();
        self.publish_in(tx.conn(), &replies).await?;
        sql::queue::delete(tx.conn(), &self.tables, &[to_i64(delivery.receipt)])
            .await
            .map_err(transport_error_of)?;
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
        let mut conn = self
            .database
            .acquire_relaxed()
            .await
            .map_err(transport_error)?;
        sql::queue::release(
            conn.conn(),
            to_i64(delivery.receipt),
            Timestamp::now().plus(delay),
        )
        .await
        .map_err(transport_error_of)?;
        self.database.count_relaxed_commit();
        Ok(())
    }
}
