//! The SQL saga store: saga-core's [`SagaStore`] port on SQLite or PostgreSQL.
//!
//! [`SqlSagaStore::write_unit`] writes a [`UnitOfWork`] inside a transaction — the caller's
//! own one for a transactional start, or the store's for everything else — in this order:
//! the dedup record (a duplicate stops everything), the saga row with its optimistic version
//! check (a concurrent change stops everything), then the timeline, the outbox and dead
//! letters.
//!
//! Timers are not rows of their own: a saga waits for at most one thing at a time, and its
//! row holds when that wait ends (`deadline`, with `pending_kind` saying whether a reply
//! times out or a retry is due). [`SagaStore::due_timers`] reads the instances whose deadline
//! has passed; the optimistic version check makes a timer fired by two processes at once take
//! effect once.

use async_trait::async_trait;
use saga_core::Timestamp;
use saga_core::message::failure_reply_for;
use saga_core::ports::{
    CommitOutcome, DeadLetter, HistoryRecord, OutboxEntry, SagaRecord, SagaStore, SagaWrite,
    StalledSaga, StoreError, TimerRecord, UnitOfWork,
};
use saga_core::{Message, SagaId};
use sqlx::AnyConnection;
use sqlx::{AssertSqlSafe, Row, query};

use crate::bulk;
use crate::codec::{
    self, SAGA_COLUMNS, direction_name, encode_headers, pending_columns, saga_id_text, status_name,
    to_i64, to_u64,
};
use crate::database::{Database, Dialect, NotifyTopic, Topic};
use crate::error::{corrupt, store_error};
use crate::group::Finish;
use futures_util::future::join_all;
use std::sync::Arc;

/// saga-core's store port over a [`Database`].
#[derive(Clone, Debug)]
pub struct SqlSagaStore {
    database: Database,
}

fn now() -> i64 {
    to_i64(Timestamp::now().as_millis())
}

impl SqlSagaStore {
    /// A store on `database` (migrated by [`Database::connect`]).
    pub fn new(database: Database) -> Self {
        Self { database }
    }

    /// The database.
    pub fn database(&self) -> &Database {
        &self.database
    }

    /// Writes `unit` inside an open transaction, without committing. On anything but
    /// [`CommitOutcome::Committed`] the caller must roll back.
    pub async fn write_unit(
        &self,
        conn: &mut AnyConnection,
        unit: &UnitOfWork,
    ) -> Result<CommitOutcome, StoreError> {
        let outcome = self.write_unit_quietly(conn, unit).await?;
        if outcome == CommitOutcome::Committed
            && !unit.outbox.is_empty()
            && self.database.dialect() == Dialect::Postgres
        {
            query("SELECT pg_notify($1, '')")
                .bind(self.database.notify_channel(NotifyTopic::Outbox))
                .execute(&mut *conn)
                .await
                .map_err(store_error)?;
        }
        Ok(outcome)
    }

    /// [`SqlSagaStore::write_unit`] without telling the relay about new outbox rows (group
    /// commits tell it once per batch).
    pub(crate) async fn write_unit_quietly(
        &self,
        conn: &mut AnyConnection,
        unit: &UnitOfWork,
    ) -> Result<CommitOutcome, StoreError> {
        let at = now();
        if let Some(consumed) = &unit.consumed {
            let inserted = query(
                "INSERT INTO saga_received (consumer, message_id, received_at) \
                 VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            )
            .bind(&consumed.consumer)
            .bind(consumed.message_id.to_string())
            .bind(at)
            .execute(&mut *conn)
            .await
            .map_err(store_error)?;
            if inserted.rows_affected() == 0 {
                return Ok(CommitOutcome::Duplicate);
            }
        }
        if let Some(write) = &unit.saga
            && !write_saga(conn, write, at).await?
        {
            return Ok(CommitOutcome::Conflict);
        }
        for entry in &unit.history {
            let event = serde_json::to_string(&entry.event).map_err(|e| corrupt("history", e))?;
            query("INSERT INTO saga_history (saga_id, at, event) VALUES ($1, $2, $3)")
                .bind(saga_id_text(entry.saga_id))
                .bind(to_i64(entry.at.as_millis()))
                .bind(event)
                .execute(&mut *conn)
                .await
                .map_err(store_error)?;
        }
        let outbox: Vec<&Message> = unit.outbox.iter().collect();
        bulk::insert_outbox(conn, &outbox, at, self.database.queue_in_place()).await?;
        for dead in &unit.dead_letters {
            insert_dead_letter(conn, dead).await?;
        }
        Ok(CommitOutcome::Committed)
    }
}

impl SqlSagaStore {
    /// With the queue in place, the channels the units' messages go to (they skip the relay,
    /// so their consumers must be woken here).
    fn queued_destinations(&self, units: &[UnitOfWork]) -> Vec<String> {
        match self.database.queue_in_place() {
            true => bulk::destinations(units),
            false => Vec::new(),
        }
    }

    fn wake_queues(&self, destinations: Vec<String>) {
        for destination in destinations {
            self.database.wakeups().wake(&Topic::Queue(destination));
        }
    }

    /// Commits units one by one, concurrently, so they still share group commits.
    async fn commit_each(&self, units: Vec<UnitOfWork>) -> Result<Vec<CommitOutcome>, StoreError> {
        join_all(units.into_iter().map(|unit| self.commit(unit)))
            .await
            .into_iter()
            .collect()
    }
}

/// Inserts or updates the saga row; `false` on an optimistic-version conflict.
async fn write_saga(
    conn: &mut AnyConnection,
    write: &SagaWrite,
    at: i64,
) -> Result<bool, StoreError> {
    let record = &write.record;
    let state = &record.state;
    let (pending_kind, pending_request) = pending_columns(state.pending);
    let completed =
        serde_json::to_string(&state.completed_steps).map_err(|e| corrupt("completed_steps", e))?;
    let data = serde_json::to_string(&record.data).map_err(|e| corrupt("saga data", e))?;
    let deadline = state.deadline.map(|d| to_i64(d.as_millis()));
    let sql = match write.expected_version {
        None => {
            "INSERT INTO saga_instances (saga_id, saga_type, definition_version, status, \
             direction, current_step, pending_kind, pending_request_id, deadline, attempt, \
             completed_steps, compensation_reason, last_error, next_request_id, data, version, \
             created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $17)"
        }
        Some(_) => {
            "UPDATE saga_instances SET saga_type = $2, definition_version = $3, status = $4, \
             direction = $5, current_step = $6, pending_kind = $7, pending_request_id = $8, \
             deadline = $9, attempt = $10, completed_steps = $11, compensation_reason = $12, \
             last_error = $13, next_request_id = $14, data = $15, version = $16, updated_at = $17 \
             WHERE saga_id = $1 AND version = $18"
        }
    };
    let mut statement = query(sql)
        .bind(saga_id_text(state.saga_id))
        .bind(&state.saga_type)
        .bind(&state.definition_version)
        .bind(status_name(state.status))
        .bind(direction_name(state.direction))
        .bind(state.current_step.as_deref())
        .bind(pending_kind)
        .bind(pending_request)
        .bind(deadline)
        .bind(i64::from(state.attempt))
        .bind(completed)
        .bind(state.compensation_reason.as_deref())
        .bind(state.last_error.as_deref())
        .bind(to_i64(state.next_request_id))
        .bind(data)
        .bind(to_i64(record.version))
        .bind(at);
    if let Some(expected) = write.expected_version {
        statement = statement.bind(to_i64(expected));
    }
    let written = statement.execute(&mut *conn).await;
    match written {
        Ok(result) => Ok(result.rows_affected() == 1),
        // Two starts of one id cannot happen (ids are fresh UUIDs); treat like a conflict.
        Err(sqlx::Error::Database(err)) if err.is_unique_violation() => Ok(false),
        Err(err) => Err(store_error(err)),
    }
}

/// Inserts a dead letter. Text PostgreSQL cannot store (NUL characters) is stored with each
/// NUL written as `\u0000` and the reason says so: a dead letter is never lost to its own
/// content.
pub(crate) async fn insert_dead_letter(
    conn: &mut AnyConnection,
    dead: &DeadLetter,
) -> Result<(), StoreError> {
    let (payload, escaped_payload) = codec::without_nul(&dead.message.payload);
    let headers = encode_headers(&dead.message.headers);
    let (headers, escaped_headers) = codec::without_nul(&headers);
    let (destination, _) = codec::without_nul(&dead.message.destination);
    let (consumer, _) = codec::without_nul(&dead.consumer);
    let (reason, _) = codec::without_nul(&dead.reason);
    let reason = match escaped_payload || escaped_headers {
        true => format!("{reason} (NUL characters stored as \\u0000)"),
        false => reason.into_owned(),
    };
    query(
        "INSERT INTO saga_dead_letters \
         (consumer, message_id, destination, headers, payload, reason, at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(consumer.as_ref())
    .bind(dead.message.id.to_string())
    .bind(destination.as_ref())
    .bind(headers.as_ref())
    .bind(payload.as_ref())
    .bind(reason)
    .bind(to_i64(dead.at.as_millis()))
    .execute(&mut *conn)
    .await
    .map_err(store_error)?;
    Ok(())
}

#[async_trait]
impl SagaStore for SqlSagaStore {
    async fn load(&self, saga_id: SagaId) -> Result<Option<SagaRecord>, StoreError> {
        let sql = AssertSqlSafe(format!(
            "SELECT {SAGA_COLUMNS} FROM saga_instances WHERE saga_id = $1"
        ));
        let row = query(sql)
            .bind(saga_id_text(saga_id))
            .fetch_optional(self.database.pool())
            .await
            .map_err(store_error)?;
        row.as_ref().map(codec::saga_record).transpose()
    }

    /// Group-commits the unit with other callers' work (see [`Database::write`]).
    async fn commit(&self, unit: UnitOfWork) -> Result<CommitOutcome, StoreError> {
        let store = self.clone();
        let wakes_relay = !unit.outbox.is_empty();
        let destinations = self.queued_destinations(std::slice::from_ref(&unit));
        let outcome = self
            .database
            .submit(
                move |tx| {
                    Box::pin(async move {
                        let outcome = store.write_unit_quietly(tx, &unit).await?;
                        Ok(match outcome {
                            CommitOutcome::Committed => Finish::Commit(outcome),
                            other => Finish::Rollback(other),
                        })
                    })
                },
                wakes_relay,
            )
            .await?;
        if outcome == CommitOutcome::Committed {
            self.wake_queues(destinations);
        }
        Ok(outcome)
    }

    /// One query per 500 ids.
    async fn load_many(&self, saga_ids: &[SagaId]) -> Result<Vec<SagaRecord>, StoreError> {
        let mut conn = self.database.pool().acquire().await.map_err(store_error)?;
        load_many_on(&mut conn, saga_ids).await
    }

    /// Writes the units with one multi-row statement per table, in one group-committed
    /// transaction; if one of them turns out a duplicate or a conflict, undoes that and
    /// commits them one by one instead (see `bulk.rs`).
    async fn commit_all(&self, units: Vec<UnitOfWork>) -> Result<Vec<CommitOutcome>, StoreError> {
        if units.len() > 1 && bulk::eligible(&units) {
            let shared = Arc::new(units);
            let batch = shared.clone();
            let wakes_relay = batch.iter().any(|u| !u.outbox.is_empty());
            let in_place = self.database.queue_in_place();
            let written = self
                .database
                .submit(
                    move |tx| {
                        Box::pin(async move {
                            Ok(if bulk::write_units(tx, &batch, now(), in_place).await? {
                                Finish::Commit(true)
                            } else {
                                Finish::Rollback(false)
                            })
                        })
                    },
                    wakes_relay,
                )
                .await?;
            if written {
                self.wake_queues(self.queued_destinations(&shared));
                return Ok(vec![CommitOutcome::Committed; shared.len()]);
            }
            tracing::debug!(
                units = shared.len(),
                "batch held a duplicate or a conflict; committing one by one"
            );
            let units = Arc::try_unwrap(shared).unwrap_or_else(|shared| (*shared).clone());
            return self.commit_each(units).await;
        }
        self.commit_each(units).await
    }

    /// The instances whose deadline has passed, as the timer each waits for.
    async fn due_timers(
        &self,
        now: Timestamp,
        limit: usize,
    ) -> Result<Vec<TimerRecord>, StoreError> {
        let rows = query(
            "SELECT saga_id, pending_kind, pending_request_id, attempt, deadline \
             FROM saga_instances WHERE deadline IS NOT NULL AND deadline <= $1 \
             AND status IN ('running', 'compensating') ORDER BY deadline LIMIT $2",
        )
        .bind(to_i64(now.as_millis()))
        .bind(to_i64(limit as u64))
        .fetch_all(self.database.pool())
        .await
        .map_err(store_error)?;
        rows.iter().map(codec::due_timer).collect()
    }

    async fn stalled(
        &self,
        now: Timestamp,
        idle: std::time::Duration,
        limit: usize,
    ) -> Result<Vec<StalledSaga>, StoreError> {
        let idle = u64::try_from(idle.as_millis()).unwrap_or(u64::MAX);
        let cutoff = to_i64(now.as_millis().saturating_sub(idle));
        let rows = query(
            "SELECT saga_id, saga_type, status, current_step, deadline, updated_at \
             FROM saga_instances WHERE status IN ('running', 'compensating') \
             AND ((deadline IS NULL AND updated_at < $1) OR deadline < $1) \
             ORDER BY updated_at LIMIT $2",
        )
        .bind(cutoff)
        .bind(to_i64(limit as u64))
        .fetch_all(self.database.pool())
        .await
        .map_err(store_error)?;
        rows.iter().map(codec::stalled_saga).collect()
    }

    async fn history(&self, saga_id: SagaId) -> Result<Vec<HistoryRecord>, StoreError> {
        let rows = query("SELECT at, event FROM saga_history WHERE saga_id = $1 ORDER BY id")
            .bind(saga_id_text(saga_id))
            .fetch_all(self.database.pool())
            .await
            .map_err(store_error)?;
        rows.iter()
            .map(|row| {
                let event: String = row.try_get("event").map_err(|e| corrupt("event", e))?;
                Ok(HistoryRecord {
                    saga_id,
                    at: Timestamp(to_u64(row.try_get("at").map_err(|e| corrupt("at", e))?)),
                    event: serde_json::from_str(&event).map_err(|e| corrupt("event", e))?,
                })
            })
            .collect()
    }

    async fn unpublished(&self, limit: usize) -> Result<Vec<OutboxEntry>, StoreError> {
        let mut conn = self.database.pool().acquire().await.map_err(store_error)?;
        unpublished_on(&mut conn, limit).await
    }

    async fn mark_published(&self, sequences: &[u64]) -> Result<(), StoreError> {
        let mut conn = self.database.pool().acquire().await.map_err(store_error)?;
        mark_published_on(&mut conn, sequences).await?;
        self.database.count_commit();
        Ok(())
    }

    /// Dead letter, failure reply and the "published" mark commit together.
    async fn set_aside(&self, entry: &OutboxEntry, reason: &str) -> Result<(), StoreError> {
        let in_place = self.database.queue_in_place();
        let dead = DeadLetter {
            consumer: "outbox-relay".to_owned(),
            message: entry.message.clone(),
            reason: reason.to_owned(),
            at: Timestamp::now(),
        };
        let reply = failure_reply_for(&entry.message, reason);
        let sequence = entry.sequence;
        self.database
            .submit(
                move |tx| {
                    Box::pin(async move {
                        insert_dead_letter(tx, &dead).await?;
                        mark_published_on(tx, &[sequence]).await?;
                        let replies: Vec<&Message> = reply.iter().collect();
                        bulk::insert_outbox(tx, &replies, now(), in_place).await?;
                        Ok(Finish::Commit(()))
                    })
                },
                true,
            )
            .await
    }

    async fn dead_letters(&self) -> Result<Vec<DeadLetter>, StoreError> {
        let rows = query(
            "SELECT consumer, message_id, destination, headers, payload, reason, at \
             FROM saga_dead_letters ORDER BY id",
        )
        .fetch_all(self.database.pool())
        .await
        .map_err(store_error)?;
        rows.iter().map(codec::dead_letter).collect()
    }
}

/// Saga records of `saga_ids` (those that exist), read on `conn`, one query per 500 ids.
pub(crate) async fn load_many_on(
    conn: &mut AnyConnection,
    saga_ids: &[SagaId],
) -> Result<Vec<SagaRecord>, StoreError> {
    let mut records = Vec::with_capacity(saga_ids.len());
    for chunk in saga_ids.chunks(500) {
        let sql = AssertSqlSafe(format!(
            "SELECT {SAGA_COLUMNS} FROM saga_instances WHERE saga_id IN ({})",
            bulk::placeholders(conn, chunk.len())
        ));
        let mut statement = query(sql);
        for &saga_id in chunk {
            statement = statement.bind(saga_id_text(saga_id));
        }
        let rows = statement.fetch_all(&mut *conn).await.map_err(store_error)?;
        for row in &rows {
            records.push(codec::saga_record(row)?);
        }
    }
    Ok(records)
}

/// Outbox rows not yet published, in order, read on `conn`.
pub(crate) async fn unpublished_on(
    conn: &mut AnyConnection,
    limit: usize,
) -> Result<Vec<OutboxEntry>, StoreError> {
    let rows = query(
        "SELECT sequence, message_id, destination, headers, payload FROM saga_outbox \
         WHERE published_at IS NULL ORDER BY sequence LIMIT $1",
    )
    .bind(to_i64(limit as u64))
    .fetch_all(&mut *conn)
    .await
    .map_err(store_error)?;
    rows.iter()
        .map(|row| {
            let id: String = row
                .try_get("message_id")
                .map_err(|e| corrupt("message_id", e))?;
            let headers: String = row.try_get("headers").map_err(|e| corrupt("headers", e))?;
            let message = codec::message(
                &id,
                row.try_get("destination")
                    .map_err(|e| corrupt("destination", e))?,
                &headers,
                row.try_get("payload").map_err(|e| corrupt("payload", e))?,
            )
            .map_err(|e| corrupt("outbox message", e))?;
            Ok(OutboxEntry {
                sequence: to_u64(
                    row.try_get("sequence")
                        .map_err(|e| corrupt("sequence", e))?,
                ),
                message,
            })
        })
        .collect()
}

/// Marks outbox rows as published, on `conn`.
pub(crate) async fn mark_published_on(
    conn: &mut AnyConnection,
    sequences: &[u64],
) -> Result<(), StoreError> {
    let (Some(&first), Some(&last)) = (sequences.iter().min(), sequences.iter().max()) else {
        return Ok(());
    };
    let at = now();
    let contiguous = last - first + 1 == sequences.len() as u64;
    if contiguous {
        // The usual case: one statement.
        query(
            "UPDATE saga_outbox SET published_at = $1 \
             WHERE sequence >= $2 AND sequence <= $3 AND published_at IS NULL",
        )
        .bind(at)
        .bind(to_i64(first))
        .bind(to_i64(last))
        .execute(&mut *conn)
        .await
        .map_err(store_error)?;
        return Ok(());
    }
    for &sequence in sequences {
        query("UPDATE saga_outbox SET published_at = $1 WHERE sequence = $2")
            .bind(at)
            .bind(to_i64(sequence))
            .execute(&mut *conn)
            .await
            .map_err(store_error)?;
    }
    Ok(())
}
