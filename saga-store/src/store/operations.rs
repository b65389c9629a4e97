//! What operators and their tools (the `saga` CLI, the console) do with a store: find sagas,
//! read their timelines and graphs, count what is where, and ask orchestrators to act.
//!
//! Reads are plain queries. Actions never update a saga row themselves: an operator request
//! is written to this database's outbox, addressed to the reply channel of the orchestrator
//! that runs the saga's type (recorded in `saga_definitions` when its runtime started), and
//! that orchestrator applies it like a reply, in its own transaction with its optimistic
//! version check (see [`saga_core::operator`]). So a request is safe while services run, is
//! applied once, and waits in the outbox while no orchestrator runs.

use saga_core::engine::{OperatorRequest, SagaStatus};
use saga_core::operator::operator_message;
use std::collections::BTreeMap;

use saga_core::orchestrator::RegisteredSaga;
use saga_core::ports::{ChannelBacklog, SagaStore, StoreError, UnitOfWork};
use saga_core::versions::VersionRole;
use saga_core::{MessageId, SagaId, Timestamp};

use crate::error::store_error;
use crate::sql;
use crate::sql::definitions::StoredDefinition;
use crate::sql::instances::{SagaFilter, StoredSaga};
use crate::store::SqlSagaStore;

/// What `saga stats` shows: where the sagas are and what waits.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// `(saga type, status, count)`, by type and status.
    pub sagas: Vec<(String, SagaStatus, u64)>,
    /// The running (or compensating) saga that started first.
    pub oldest_running: Option<(SagaId, String, Timestamp)>,
    /// Messages the relay has yet to publish.
    pub outbox_backlog: u64,
    /// When the oldest of them was written.
    pub outbox_oldest: Option<Timestamp>,
    /// Messages in this database's queue table, per channel.
    pub queue: Vec<ChannelBacklog>,
    /// Dead letters nobody has acted on.
    pub dead_letters: u64,
}

/// What `saga versions` shows for one version of a saga type: its sagas in flight, and what
/// the newest start of an orchestrator running the type registered it as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VersionStatus {
    /// The saga type.
    pub saga_type: String,
    /// The definition version.
    pub version: String,
    /// Its sagas running or compensating.
    pub running: u64,
    /// Its sagas parked in `failed`.
    pub parked: u64,
    /// What the newest start registered it as (current, retired, migrated); `None` when the
    /// newest start did not register it.
    pub role: Option<VersionRole>,
    /// When an orchestrator last recorded it, if ever.
    pub registered_at: Option<Timestamp>,
}

impl VersionStatus {
    /// Sagas in flight on a version the running deployment does not register: they cannot
    /// move until it does (or a migration from it is deployed).
    pub fn is_stranded(&self) -> bool {
        self.role.is_none() && self.running + self.parked > 0
    }
}

/// Why an operator request could not be sent.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OperatorRequestError {
    /// No saga with this id here.
    #[error("no saga {0} in this database")]
    UnknownSaga(SagaId),
    /// No orchestrator has recorded the saga's type here, so nobody would apply the request.
    #[error(
        "no orchestrator has registered saga type `{0}` in this database; start the service \
         that runs it (its runtime records its sagas when it starts), or check the database \
         and schema"
    )]
    Unregistered(String),
    /// The request could not be encoded.
    #[error("cannot encode the operator request: {0}")]
    Encode(#[source] saga_core::message::MessageError),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl SqlSagaStore {
    /// Records the saga types `orchestrator_sagas` an orchestrator on `reply_channel` runs
    /// (done by [`crate::RuntimeBuilder::start`]).
    pub async fn record_definitions(
        &self,
        reply_channel: &str,
        orchestrator_sagas: &[RegisteredSaga],
    ) -> Result<(), StoreError> {
        let now = Timestamp::now();
        let mut conn = self.database().acquire().await.map_err(store_error)?;
        for saga in orchestrator_sagas {
            let definition = StoredDefinition {
                saga_type: saga.saga_type.clone(),
                version: saga.version.clone(),
                role: saga.role.clone(),
                reply_channel: reply_channel.to_owned(),
                graph: saga.graph.clone(),
                registered_at: now,
            };
            sql::definitions::upsert(conn.conn(), &definition).await?;
        }
        Ok(())
    }

    /// The saga definitions orchestrators recorded here, by type, newest registration first.
    pub async fn definitions(&self) -> Result<Vec<StoredDefinition>, StoreError> {
        let mut conn = self.database().acquire().await.map_err(store_error)?;
        sql::definitions::list(conn.conn()).await
    }

    /// Every version of every saga type that has sagas in flight here or was recorded by an
    /// orchestrator, by type and version: the sagas in flight on each, and what the newest
    /// orchestrator start registered it as (each start records all its versions at once).
    pub async fn versions(&self) -> Result<Vec<VersionStatus>, StoreError> {
        let definitions = self.definitions().await?;
        let in_flight = self.in_flight_versions().await?;
        let mut versions: BTreeMap<(String, String), VersionStatus> = BTreeMap::new();
        let newest = |saga_type: &str| {
            definitions
                .iter()
                .filter(|d| d.saga_type == saga_type)
                .map(|d| d.registered_at)
                .max()
        };
        for definition in &definitions {
            let key = (definition.saga_type.clone(), definition.version.clone());
            let in_newest = newest(&definition.saga_type) == Some(definition.registered_at);
            versions.insert(
                key,
                VersionStatus {
                    saga_type: definition.saga_type.clone(),
                    version: definition.version.clone(),
                    running: 0,
                    parked: 0,
                    role: in_newest.then(|| definition.role.clone()),
                    registered_at: Some(definition.registered_at),
                },
            );
        }
        for flight in in_flight {
            let key = (flight.saga_type.clone(), flight.version.clone());
            let status = versions.entry(key).or_insert_with(|| VersionStatus {
                saga_type: flight.saga_type.clone(),
                version: flight.version.clone(),
                running: 0,
                parked: 0,
                role: None,
                registered_at: None,
            });
            status.running = flight.running;
            status.parked = flight.parked;
        }
        Ok(versions.into_values().collect())
    }

    /// The recorded definition of `saga_type` at `version`, or (when that version was never
    /// recorded) its newest.
    pub async fn definition(
        &self,
        saga_type: &str,
        version: Option<&str>,
    ) -> Result<Option<StoredDefinition>, StoreError> {
        let all = self.definitions().await?;
        let of_type = || all.iter().filter(|d| d.saga_type == saga_type);
        Ok(version
            .and_then(|v| of_type().find(|d| d.version == v))
            .or_else(|| of_type().next())
            .cloned())
    }

    /// The sagas `filter` selects, newest first: `limit` after skipping `offset`.
    pub async fn find_sagas(
        &self,
        filter: &SagaFilter,
        limit: usize,
        offset: usize,
    ) -> Result<Vec<StoredSaga>, StoreError> {
        let mut conn = self.database().acquire().await.map_err(store_error)?;
        sql::instances::search(conn.conn(), filter, limit, offset).await
    }

    /// How many sagas `filter` selects.
    pub async fn count_sagas(&self, filter: &SagaFilter) -> Result<u64, StoreError> {
        let mut conn = self.database().acquire().await.map_err(store_error)?;
        sql::instances::count(conn.conn(), filter).await
    }

    /// One saga with its created and updated times.
    pub async fn find_saga(&self, saga_id: SagaId) -> Result<Option<StoredSaga>, StoreError> {
        let mut conn = self.database().acquire().await.map_err(store_error)?;
        sql::instances::find(conn.conn(), saga_id).await
    }

    /// Where the sagas are and what waits.
    pub async fn stats(&self) -> Result<StoreStats, StoreError> {
        let mut conn = self.database().acquire().await.map_err(store_error)?;
        let sagas = sql::instances::counts(conn.conn()).await?;
        let running = SagaFilter {
            statuses: vec![SagaStatus::Running, SagaStatus::Compensating],
            ..SagaFilter::default()
        };
        let oldest_running = sql::instances::oldest(conn.conn(), &running)
            .await?
            .map(|s| {
                (
                    s.record.state.saga_id,
                    s.record.state.saga_type,
                    s.created_at,
                )
            });
        let (outbox_backlog, outbox_oldest) = sql::outbox::backlog(conn.conn()).await?;
        let queue = sql::queue::depth(conn.conn()).await?;
        let dead_letters = sql::dead_letters::unresolved_count(conn.conn()).await?;
        Ok(StoreStats {
            sagas,
            oldest_running,
            outbox_backlog,
            outbox_oldest,
            queue,
            dead_letters,
        })
    }

    /// Sends `request` for saga `saga_id` to the orchestrator that runs its type, through this
    /// database's outbox (see the module docs); returns the request message's id. Whether
    /// the saga took it shows in its timeline (see [`saga_core::operator::answers`]).
    pub async fn request_operator(
        &self,
        saga_id: SagaId,
        request: &OperatorRequest,
    ) -> Result<MessageId, OperatorRequestError> {
        let saga = self
            .find_saga(saga_id)
            .await?
            .ok_or(OperatorRequestError::UnknownSaga(saga_id))?;
        let state = &saga.record.state;
        let definition = self
            .definition(&state.saga_type, Some(&state.definition_version))
            .await?
            .ok_or_else(|| OperatorRequestError::Unregistered(state.saga_type.clone()))?;
        let message = operator_message(&definition.reply_channel, saga_id, request)
            .map_err(OperatorRequestError::Encode)?;
        let id = message.id;
        // A unit of work that only sends: the outbox, or with the queue in place the queue.
        self.commit(UnitOfWork {
            outbox: vec![message],
            ..UnitOfWork::default()
        })
        .await?;
        tracing::info!(%saga_id, command = %request.command, actor = %request.actor, message_id = %id, "operator request sent");
        Ok(id)
    }
}
