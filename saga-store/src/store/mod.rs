//! The SQL saga store: saga-core's [`SagaStore`] port on SQLite or PostgreSQL.
//!
//! [`SqlSagaStore::write_unit`] writes a [`UnitOfWork`] inside a transaction — the caller's
//! own one for a transactional start ([`start_saga_in`]), or the store's for everything
//! else — in this order: the dedup record (a duplicate stops everything), the saga row with
//! its optimistic version check (a concurrent change stops everything), then the timeline, the
//! outgoing messages and dead letters. Batches of units go through [`SagaStore::commit_all`]:
//! one multi-row statement per table, falling back to one by one on a duplicate or a conflict.
//!
//! Timers are not rows of their own: a saga waits for at most one thing at a time, and its
//! row holds when that wait ends (`deadline`, with `pending_kind` saying whether a reply
//! times out or a retry is due). [`SagaStore::due_timers`] reads the instances whose deadline
//! has passed; the optimistic version check makes a timer fired by two processes at once take
//! effect once.

mod dead_letters;
mod operations;

pub use crate::sql::dead_letters::{Resolution, StoredDeadLetter};
pub use crate::sql::definitions::StoredDefinition;
pub use crate::sql::instances::{SagaFilter, StoredSaga};
pub use dead_letters::DeadLetterError;
pub use operations::{OperatorRequestError, StoreStats, VersionStatus};

use std::sync::Arc;

use async_trait::async_trait;
use futures_util::future::join_all;
use saga_core::message::failure_reply_for;
use saga_core::orchestrator::{Orchestrator, OrchestratorError};
use saga_core::ports::{
    CommitOutcome, DeadLetter, HistoryRecord, InFlightVersion, OutboxEntry, SagaRecord, SagaStore,
    StalledSaga, StoreError, TimerRecord, UnitOfWork,
};
use saga_core::{Message, Saga, SagaId, Timestamp};

use crate::db::backend::{Conn, Tx};
use crate::db::group::{Finish, WriteKind};
use crate::db::savepoint::Glued;
use crate::db::{Database, Dialect};
use crate::error::{DatabaseError, store_error};
use crate::sql::{self, to_i64};
use crate::transport::sql::SqlTransport;

/// saga-core's store port over a [`Database`].
#[derive(Clone, Debug)]
pub struct SqlSagaStore {
    database: Database,
    /// The queue outgoing messages go straight into, if not through the outbox (see
    /// [`SqlSagaStore::in_place`], [`SqlSagaStore::co_located`]).
    queue: Option<SqlTransport>,
}

fn now() -> i64 {
    to_i64(Timestamp::now().as_millis())
}

impl SqlSagaStore {
    /// A store on `database` (migrated by [`Database::connect`]) whose outgoing messages go
    /// through the outbox and its relay.
    pub fn new(database: Database) -> Self {
        Self {
            database,
            queue: None,
        }
    }

    /// A store whose outgoing messages go straight into `database`'s own SQL-table queue, in
    /// the transaction that produces them — for a deployment that keeps the queue in this
    /// database and handles messages in place
    /// ([`RuntimeBuilder::in_place`](crate::RuntimeBuilder::in_place)): no outbox, no relay.
    pub fn in_place(database: Database) -> Self {
        let queue = Some(SqlTransport::new(database.clone()));
        Self { database, queue }
    }

    /// A store on `database` whose outgoing messages go straight into the SQL-table queue of
    /// `queue`, another schema of the same PostgreSQL database (co-located services), in the
    /// transaction that produces them: no outbox, no relay. Run its orchestrator with
    /// [`RuntimeBuilder::in_place`](crate::RuntimeBuilder::in_place) on that queue, so its
    /// replies are handled in place too. The database's role needs rights on the queue's
    /// tables (see `docs/security.md`).
    pub fn co_located(database: Database, queue: &SqlTransport) -> Result<Self, DatabaseError> {
        if !database.is_co_located_with(queue.database()) {
            return Err(DatabaseError::NotCoLocated {
                database: database.name(),
                queue: queue.database().name(),
            });
        }
        Ok(Self {
            database,
            queue: Some(queue.clone()),
        })
    }

    /// The database.
    pub fn database(&self) -> &Database {
        &self.database
    }

    /// Whether outgoing messages go straight into the queue.
    pub fn is_in_place(&self) -> bool {
        self.queue.is_some()
    }

    /// The queue outgoing messages go straight into, in place.
    pub(crate) fn queue(&self) -> Option<&SqlTransport> {
        self.queue.as_ref()
    }

    /// Writes `unit` inside an open transaction, without committing. On anything but
    /// [`CommitOutcome::Committed`] the caller must roll back.
    pub async fn write_unit(
        &self,
        conn: impl Into<Conn<'_>>,
        unit: &UnitOfWork,
    ) -> Result<CommitOutcome, StoreError> {
        let mut conn = conn.into();
        let outcome = self.write_unit_quietly(conn.reborrow(), unit).await?;
        if outcome == CommitOutcome::Committed && !unit.outbox.is_empty() {
            let sqlite = conn.dialect() == Dialect::Sqlite;
            self.announce(conn, &unit.outbox).await?;
            if self.queue.is_some() && sqlite {
                // Woken now, before the commit: on SQLite's single writer a pass handed in
                // while this transaction is still open joins it (see `Database::write`), so a
                // saga started in a group-committed write takes its first steps in the same
                // transaction. A pass that comes too early finds nothing, and the commit's
                // wake-up (`Database::commit`, `Database::wake_relay`) brings it back.
                self.wake_queues(&destinations(unit.outbox.iter()));
            }
        }
        Ok(outcome)
    }

    /// On PostgreSQL, the `NOTIFY` that tells other processes about new outgoing messages
    /// (delivered by the commit): the relay, or with the queue in place the channels'
    /// consumers.
    async fn announce(&self, conn: Conn<'_>, messages: &[Message]) -> Result<(), StoreError> {
        let Conn::Postgres(c) = conn else {
            return Ok(());
        };
        if let Some(queue) = &self.queue {
            return queue.notify(Conn::Postgres(c), messages).await;
        }
        sqlx::query("SELECT pg_notify($1, '')")
            .bind(self.database.outbox_notify_channel())
            .execute(&mut *c)
            .await
            .map_err(store_error)?;
        Ok(())
    }

    /// [`SqlSagaStore::write_unit`] without telling anyone about new outgoing messages (group
    /// commits tell the relay once per group).
    pub(crate) async fn write_unit_quietly(
        &self,
        mut conn: Conn<'_>,
        unit: &UnitOfWork,
    ) -> Result<CommitOutcome, StoreError> {
        let at = now();
        if let Some(consumed) = &unit.consumed
            && !sql::received::insert(conn.reborrow(), &consumed.consumer, consumed.message_id, at)
                .await?
        {
            return Ok(CommitOutcome::Duplicate);
        }
        if let Some(write) = &unit.saga
            && !sql::instances::write(conn.reborrow(), write, at).await?
        {
            return Ok(CommitOutcome::Conflict);
        }
        let history: Vec<&HistoryRecord> = unit.history.iter().collect();
        sql::history::insert_many(conn.reborrow(), &history).await?;
        let outbox: Vec<&Message> = unit.outbox.iter().collect();
        self.send(conn.reborrow(), &outbox, at).await?;
        for dead in &unit.dead_letters {
            sql::dead_letters::insert(conn.reborrow(), dead).await?;
        }
        Ok(CommitOutcome::Committed)
    }

    /// Writes outgoing messages: into the outbox, or with the queue in place straight into
    /// the queue.
    pub(crate) async fn send(
        &self,
        conn: Conn<'_>,
        messages: &[&Message],
        at: i64,
    ) -> Result<(), StoreError> {
        send(conn, self.queue.as_ref(), Glued::NONE, messages, at).await
    }

    /// Writes `units` with one multi-row statement per table; `false` when a dedup record
    /// already existed or a saga row had moved on (the caller undoes the transaction's work
    /// and goes one by one). Units that start sagas are not taken (see [`batchable`]).
    pub(crate) async fn write_units(
        &self,
        mut conn: Conn<'_>,
        units: &[UnitOfWork],
        at: i64,
    ) -> Result<bool, StoreError> {
        let consumed: Vec<(&str, saga_core::MessageId)> = units
            .iter()
            .filter_map(|u| u.consumed.as_ref())
            .map(|c| (c.consumer.as_str(), c.message_id))
            .collect();
        let writes: Vec<_> = units.iter().filter_map(|u| u.saga.as_ref()).collect();
        let history: Vec<&HistoryRecord> = units.iter().flat_map(|u| &u.history).collect();
        let outgoing: Vec<&Message> = units.iter().flat_map(|u| &u.outbox).collect();
        let parts = sql::units::Parts {
            consumed: &consumed,
            writes: &writes,
            history: &history,
            outgoing: &outgoing,
            queue: self.queue.as_ref().map(SqlTransport::tables),
        };
        match sql::units::write(conn.reborrow(), &parts, at).await? {
            Some(written) if !written => return Ok(false),
            Some(_) => {}
            // Too many for one statement: a statement per table and chunk.
            None => {
                if !sql::received::insert_all(conn.reborrow(), &consumed, at).await?
                    || !sql::instances::update_many(conn.reborrow(), &writes, at).await?
                {
                    return Ok(false);
                }
                sql::history::insert_many(conn.reborrow(), &history).await?;
                self.send(conn.reborrow(), &outgoing, at).await?;
            }
        }
        for dead in units.iter().flat_map(|u| &u.dead_letters) {
            sql::dead_letters::insert(conn.reborrow(), dead).await?;
        }
        Ok(true)
    }

    /// With the queue in place, the channels the units' messages go to (they skip the relay,
    /// so their consumers are woken here).
    fn queued_destinations(&self, units: &[UnitOfWork]) -> Vec<String> {
        match self.queue {
            Some(_) => destinations(units.iter().flat_map(|u| &u.outbox)),
            None => Vec::new(),
        }
    }

    fn wake_queues(&self, destinations: &[String]) {
        if let Some(queue) = &self.queue {
            queue.wake_channels(destinations);
        }
    }

    /// Commits units one by one, concurrently, so they still share group commits.
    async fn commit_each(&self, units: Vec<UnitOfWork>) -> Result<Vec<CommitOutcome>, StoreError> {
        join_all(units.into_iter().map(|unit| self.commit(unit)))
            .await
            .into_iter()
            .collect()
    }

    /// The kind of group-committed work that writes `units`.
    fn kind_for(&self, units: &[UnitOfWork]) -> WriteKind {
        match self.queue.is_none() && units.iter().any(|u| !u.outbox.is_empty()) {
            true => WriteKind::Outbox,
            false => WriteKind::Plain,
        }
    }
}

/// Writes outgoing messages into the outbox — or, in place, straight into `queue`; `glued`
/// runs first.
pub(crate) async fn send(
    conn: Conn<'_>,
    queue: Option<&SqlTransport>,
    glued: Glued,
    messages: &[&Message],
    at: i64,
) -> Result<(), StoreError> {
    match queue {
        Some(queue) => sql::queue::insert_many(conn, queue.tables(), glued, messages, at).await,
        None => sql::outbox::insert_many(conn, glued, messages, at).await,
    }
}

/// Whether the multi-row path can take these units: no new sagas (starts commit on their
/// own, one insert each).
pub(crate) fn batchable(units: &[UnitOfWork]) -> bool {
    units.iter().all(|unit| {
        unit.saga
            .as_ref()
            .is_none_or(|write| write.expected_version.is_some())
    })
}

/// The channels `messages` go to, each once.
pub(crate) fn destinations<'m>(messages: impl Iterator<Item = &'m Message>) -> Vec<String> {
    let mut destinations: Vec<String> = messages.map(|m| m.destination.clone()).collect();
    destinations.sort_unstable();
    destinations.dedup();
    destinations
}

#[async_trait]
impl SagaStore for SqlSagaStore {
    async fn load(&self, saga_id: SagaId) -> Result<Option<SagaRecord>, StoreError> {
        let mut conn = self.database.acquire().await.map_err(store_error)?;
        sql::instances::load(conn.conn(), saga_id).await
    }

    /// Group-commits the unit with other callers' work (see [`Database::write`]).
    async fn commit(&self, unit: UnitOfWork) -> Result<CommitOutcome, StoreError> {
        let store = self.clone();
        let kind = self.kind_for(std::slice::from_ref(&unit));
        let destinations = self.queued_destinations(std::slice::from_ref(&unit));
        let outcome = self
            .database
            .write_as(kind, move |tx: &mut Tx| {
                Box::pin(async move {
                    let outcome = store.write_unit_quietly(tx.conn(), &unit).await?;
                    if outcome == CommitOutcome::Committed && store.queue.is_some() {
                        store.announce(tx.conn(), &unit.outbox).await?;
                    }
                    Ok(match outcome {
                        CommitOutcome::Committed => Finish::Commit(outcome),
                        other => Finish::Rollback(other),
                    })
                })
            })
            .await?;
        if outcome == CommitOutcome::Committed {
            self.wake_queues(&destinations);
        }
        Ok(outcome)
    }

    /// One query per 500 ids.
    async fn load_many(&self, saga_ids: &[SagaId]) -> Result<Vec<SagaRecord>, StoreError> {
        let mut conn = self.database.acquire().await.map_err(store_error)?;
        sql::instances::load_many(conn.conn(), saga_ids).await
    }

    /// Writes the units with one multi-row statement per table, in one group-committed
    /// transaction; if one of them turns out a duplicate or a conflict, undoes that and
    /// commits them one by one instead.
    async fn commit_all(&self, units: Vec<UnitOfWork>) -> Result<Vec<CommitOutcome>, StoreError> {
        if units.len() < 2 || !batchable(&units) {
            return self.commit_each(units).await;
        }
        let shared = Arc::new(units);
        let batch = shared.clone();
        let store = self.clone();
        let written = self
            .database
            .write_as(self.kind_for(&shared), move |tx: &mut Tx| {
                Box::pin(async move {
                    if !store.write_units(tx.conn(), &batch, now()).await? {
                        return Ok(Finish::Rollback(false));
                    }
                    let outgoing: Vec<Message> =
                        batch.iter().flat_map(|u| u.outbox.clone()).collect();
                    if store.queue.is_some() && !outgoing.is_empty() {
                        store.announce(tx.conn(), &outgoing).await?;
                    }
                    Ok(Finish::Commit(true))
                })
            })
            .await?;
        if written {
            self.wake_queues(&self.queued_destinations(&shared));
            return Ok(vec![CommitOutcome::Committed; shared.len()]);
        }
        tracing::debug!(
            units = shared.len(),
            "batch held a duplicate or a conflict; committing one by one"
        );
        let units = Arc::try_unwrap(shared).unwrap_or_else(|shared| (*shared).clone());
        self.commit_each(units).await
    }

    /// The instances whose deadline has passed, as the timer each waits for.
    async fn due_timers(
        &self,
        now: Timestamp,
        limit: usize,
    ) -> Result<Vec<TimerRecord>, StoreError> {
        let mut conn = self.database.acquire().await.map_err(store_error)?;
        sql::instances::due(conn.conn(), now, limit).await
    }

    async fn stalled(
        &self,
        now: Timestamp,
        idle: std::time::Duration,
        limit: usize,
    ) -> Result<Vec<StalledSaga>, StoreError> {
        let cutoff = to_i64(now.as_millis().saturating_sub(sql::millis(idle)));
        let mut conn = self.database.acquire().await.map_err(store_error)?;
        sql::instances::stalled(conn.conn(), cutoff, limit).await
    }

    async fn in_flight_versions(&self) -> Result<Vec<InFlightVersion>, StoreError> {
        let mut conn = self.database.acquire().await.map_err(store_error)?;
        sql::instances::in_flight_versions(conn.conn()).await
    }

    async fn running_on_version(
        &self,
        saga_type: &str,
        version: &str,
        limit: usize,
    ) -> Result<Vec<SagaId>, StoreError> {
        let mut conn = self.database.acquire().await.map_err(store_error)?;
        sql::instances::running_on_version(conn.conn(), saga_type, version, limit).await
    }

    async fn history(&self, saga_id: SagaId) -> Result<Vec<HistoryRecord>, StoreError> {
        let mut conn = self.database.acquire().await.map_err(store_error)?;
        sql::history::list(conn.conn(), saga_id).await
    }

    async fn unpublished(&self, limit: usize) -> Result<Vec<OutboxEntry>, StoreError> {
        let mut conn = self.database.acquire().await.map_err(store_error)?;
        sql::outbox::unpublished(conn.conn(), limit).await
    }

    /// Bookkeeping: a stamp lost in a crash of the machine publishes the rows once more,
    /// which their consumers' dedup records skip.
    async fn mark_published(&self, sequences: &[u64]) -> Result<(), StoreError> {
        let mut conn = self.database.acquire_relaxed().await.map_err(store_error)?;
        sql::outbox::mark_published(conn.conn(), sequences, now()).await?;
        self.database.count_relaxed_commit();
        Ok(())
    }

    async fn dead_letters(&self) -> Result<Vec<DeadLetter>, StoreError> {
        let mut conn = self.database.acquire().await.map_err(store_error)?;
        sql::dead_letters::all(conn.conn()).await
    }

    /// Dead letter, failure reply and the "published" mark commit together.
    async fn set_aside(&self, entry: &OutboxEntry, reason: &str) -> Result<(), StoreError> {
        let dead = DeadLetter {
            consumer: "outbox-relay".to_owned(),
            message: entry.message.clone(),
            reason: reason.to_owned(),
            at: Timestamp::now(),
        };
        let reply = failure_reply_for(&entry.message, reason);
        let sequence = entry.sequence;
        let store = self.clone();
        self.database
            .write_as(WriteKind::Outbox, move |tx: &mut Tx| {
                Box::pin(async move {
                    let at = now();
                    sql::dead_letters::insert(tx.conn(), &dead).await?;
                    sql::outbox::mark_published(tx.conn(), &[sequence], at).await?;
                    let replies: Vec<&Message> = reply.iter().collect();
                    store.send(tx.conn(), &replies, at).await?;
                    Ok(Finish::Commit(()))
                })
            })
            .await
    }
}

/// Starts a saga inside the caller's transaction — the portable [`Tx`] or a backend's own
/// ([`PgTx`](crate::PgTx), [`SqliteTx`](crate::SqliteTx)): the saga row, its timeline and its first commands are written to
/// it, so they commit — or roll back — with the caller's own writes. Call
/// [`Database::wake_relay`] after committing on SQLite to publish at once (otherwise the
/// relay's next poll does). The saga counts as started (`saga_started_total`) once it is
/// written, so a caller that then rolls back over-counts by one.
pub async fn start_saga_in<S: Saga>(
    orchestrator: &Orchestrator<SqlSagaStore>,
    tx: impl Into<Conn<'_>>,
    data: S::Data,
) -> Result<SagaId, OrchestratorError> {
    let prepared = orchestrator.prepare_start::<S>(data, orchestrator.clock().now())?;
    match orchestrator.store().write_unit(tx, &prepared.unit).await? {
        CommitOutcome::Committed => {
            orchestrator.started(&prepared);
            Ok(prepared.saga_id)
        }
        _ => Err(OrchestratorError::Store(StoreError::Bug {
            what: "starting a saga wrote nothing (its id was taken)",
        })),
    }
}
