//! The orchestrator: runs saga instances over a [`SagaStore`].
//!
//! For each start, reply, timer or operator command it loads the instance, applies the pure
//! [`engine`], and commits the new state, the timeline, the outgoing commands
//! (into the outbox) and the timers as one [`UnitOfWork`]. A reply that cannot be used is
//! dead-lettered with the reason, so no message blocks the reply channel.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use tracing::Instrument as _;

use crate::clock::{Clock, SystemClock};
use crate::definition::{IncomingReply, Saga};
use crate::engine::{
    self, EngineError, HistoryEvent, OperatorRequest, SagaAction, SagaEvent, SagaState, SagaStatus,
};
use crate::ids::{RequestId, SagaId, Timestamp};
use crate::message::{Headers, Message, MessageError, ReplyOutcome, headers};
use crate::operator;
use crate::ports::{
    CommitOutcome, Consumed, DeadLetter, HistoryRecord, SagaRecord, SagaStore, SagaWrite,
    StalledSaga, StoreError, TimerRecord, UnitOfWork,
};
use crate::telemetry;
use crate::trace::{self, TraceContext};
pub use crate::versions::RegisteredSaga;
use crate::versions::{
    ErasedOutcome, ErasedTransition, Migration, Registry, SagaVersion, UnknownVersionPolicy,
    UnknownVersions, VersionError, VersionReport, erase,
};

/// Why the orchestrator could not do what was asked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OrchestratorError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The engine refused the event.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// No saga with this id.
    #[error("no saga with id {0}")]
    UnknownSaga(SagaId),
    /// The saga type is not registered with this orchestrator.
    #[error("saga type `{0}` is not registered with this orchestrator")]
    UnregisteredType(String),
    /// The saga started on a version of its type that nothing registered runs.
    #[error(
        "saga {saga_id} of type `{saga_type}` started on definition version `{version}`, which \
         this orchestrator does not run (it runs {}); register that version (kept with \
         `#[saga(version = \"{version}\", retired)]` and listed in `previous(..)`) or a \
         `Migration` from it",
        registered.join(", ")
    )]
    UnknownVersion {
        /// The saga.
        saga_id: SagaId,
        /// Its type.
        saga_type: String,
        /// The version it records.
        version: String,
        /// The versions of the type this orchestrator runs.
        registered: Vec<String>,
    },
    /// A start of a retired version (or of a type whose current version is another).
    #[error(
        "`{rust_type}` is version `{version}` of saga `{saga_type}`, which is not its current \
         version ({current}); new sagas start on the current one"
    )]
    NotCurrent {
        /// The saga type.
        saga_type: String,
        /// The version asked for.
        version: String,
        /// The Rust type asked for.
        rust_type: &'static str,
        /// The current version, or `none`.
        current: String,
    },
    /// Sagas in flight on versions nothing registered runs (see
    /// [`Orchestrator::check_versions`]).
    #[error(transparent)]
    UnknownVersions(#[from] UnknownVersions),
    /// The registered versions contradict each other.
    #[error(transparent)]
    Versions(#[from] VersionError),
    /// Saga data could not be converted to or from JSON.
    #[error("saga {saga_id} data does not fit `{saga_type}`: {source}")]
    Data {
        /// The saga.
        saga_id: SagaId,
        /// The saga type.
        saga_type: String,
        /// The (de)serializer's error.
        #[source]
        source: serde_json::Error,
    },
    /// The saga kept changing under concurrent writers.
    #[error("saga {saga_id} kept changing concurrently; gave up after {attempts} attempts")]
    Contended {
        /// The saga.
        saga_id: SagaId,
        /// How many times it was tried.
        attempts: usize,
    },
    /// [`Orchestrator::wait`] gave up: the saga had not finished in time.
    #[error("saga {saga_id} is still {status} after {timeout:?}")]
    WaitTimedOut {
        /// The saga.
        saga_id: SagaId,
        /// Its status when the wait gave up.
        status: SagaStatus,
        /// How long it was waited for.
        timeout: std::time::Duration,
    },
    /// An operator command changed nothing (the saga had moved on, or the event was stale).
    #[error("the operator command had no effect on saga {saga_id}: {handled:?}")]
    NoEffect {
        /// The saga.
        saga_id: SagaId,
        /// What handling it did instead.
        handled: Handled,
    },
}

/// What handling one message did.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Handled {
    /// The saga moved; its status afterwards.
    Applied(SagaStatus),
    /// The message was stale or late and changed nothing (it is still recorded as received).
    Ignored(String),
    /// The message had been processed before.
    Duplicate,
    /// The message could not be used; it was dead-lettered with this reason.
    DeadLettered(String),
    /// An operator request the saga refused; the refusal is in its timeline.
    Refused(String),
}

/// What [`Orchestrator::plan_replies`] decided for a batch of replies.
#[derive(Clone, Debug, Default)]
pub struct ReplyPlan {
    /// The units of work to commit, one per entry of `planned`, in the same order.
    pub units: Vec<UnitOfWork>,
    /// The replies the units handle.
    pub planned: Vec<PlannedReply>,
    /// Positions (in the batch) of replies to handle one by one with
    /// [`Orchestrator::handle_reply`].
    pub one_by_one: Vec<usize>,
}

/// One reply of a [`ReplyPlan`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedReply {
    /// Its position in the batch.
    pub index: usize,
    /// The saga it moves.
    pub saga_id: SagaId,
    /// What it does once committed.
    pub handled: Handled,
    /// What to record once it committed.
    change: Change,
}

/// What a committed event changed, for the metrics and the finished-observers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Change {
    saga_type: String,
    /// The status before (`None` for a start) and after.
    before: Option<SagaStatus>,
    after: Option<SagaStatus>,
    /// For a reply: its step, direction and when the step's command was produced.
    replied: Option<(String, &'static str, Timestamp)>,
    /// For a message: when it was produced.
    produced: Option<Timestamp>,
}

impl Change {
    fn of(before: Option<&SagaRecord>, after: &SagaState, message: Option<&Message>) -> Self {
        let replied = before.zip(message).and_then(|(record, message)| {
            let sent = message
                .headers
                .get(headers::IN_REPLY_TO)?
                .parse::<crate::MessageId>()
                .ok()?
                .created_at()?;
            let step = record.state.current_step.clone()?;
            Some((step, direction_name(record.state.direction), sent))
        });
        Self {
            saga_type: after.saga_type.clone(),
            before: before.map(|r| r.state.status),
            after: Some(after.status),
            replied,
            produced: message.and_then(|m| m.id.created_at()),
        }
    }
}

/// What starting `prepared` changes: a new saga in its first status.
fn start_change(prepared: &PreparedStart) -> Option<Change> {
    let write = prepared.unit.saga.as_ref()?;
    Some(Change::of(None, &write.record.state, None))
}

fn direction_name(direction: engine::Direction) -> &'static str {
    match direction {
        engine::Direction::Forward => "forward",
        engine::Direction::Backward => "compensation",
    }
}

/// The sagas a batch of replies is for (unreadable replies left out), each once.
pub fn reply_saga_ids(messages: &[Message]) -> Vec<SagaId> {
    let mut ids: Vec<SagaId> = messages
        .iter()
        .filter_map(|m| reply_event(m).ok().map(|(id, _)| id))
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// A started saga, not yet committed: for starting a saga inside the caller's own transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PreparedStart {
    /// The new saga's id.
    pub saga_id: SagaId,
    /// Everything to write, in the caller's transaction.
    pub unit: UnitOfWork,
}

/// What [`Orchestrator::watchdog`] does with a saga that stopped moving.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WatchdogAction {
    /// Report it (log and [`WatchdogReport`]) only.
    Report,
    /// Report it and park it in `failed` with the reason.
    #[default]
    Park,
}

/// What one [`Orchestrator::watchdog`] pass found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WatchdogReport {
    /// The sagas that stopped moving.
    pub stalled: Vec<StalledSaga>,
    /// Those it parked.
    pub parked: Vec<SagaId>,
}

/// How many times a conflicting write is retried before giving up.
const MAX_CONFLICT_RETRIES: usize = 16;

/// Runs sagas of the registered types over a store.
pub struct Orchestrator<S: ?Sized> {
    store: Arc<S>,
    /// The saga types it runs: their versions and migrations.
    registry: Registry,
    reply_channel: String,
    consumer: String,
    clock: Arc<dyn Clock>,
    observers: Vec<FinishedObserver>,
    /// The sagas someone [waits](Orchestrator::wait) for, each woken when this orchestrator
    /// finishes it, with how many are waiting.
    waiters: Waiters,
    /// The messaging system replies arrive through, for spans (set by the runtime).
    system: OnceLock<&'static str>,
}

/// The sagas [`Orchestrator::wait`] calls wait for: one `Notify` per saga, shared by its
/// waiters and removed when the last one leaves, so finishing a saga wakes only its own.
#[derive(Default)]
struct Waiters(std::sync::Mutex<HashMap<SagaId, (Arc<tokio::sync::Notify>, usize)>>);

impl Waiters {
    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<SagaId, (Arc<tokio::sync::Notify>, usize)>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// One more waiter for `saga_id`, until the returned guard is dropped.
    fn register(&self, saga_id: SagaId) -> Waiting<'_> {
        let mut waiters = self.lock();
        let (notify, count) = waiters.entry(saga_id).or_default();
        *count += 1;
        Waiting {
            waiters: self,
            saga_id,
            notify: notify.clone(),
        }
    }

    /// Wakes the waiters of `saga_id`, if any.
    fn wake(&self, saga_id: SagaId) {
        if let Some((notify, _)) = self.lock().get(&saga_id) {
            notify.notify_waiters();
        }
    }
}

/// A registered waiter: leaving deregisters it.
struct Waiting<'a> {
    waiters: &'a Waiters,
    saga_id: SagaId,
    notify: Arc<tokio::sync::Notify>,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let mut waiters = self.waiters.lock();
        if let Some((_, count)) = waiters.get_mut(&self.saga_id) {
            *count -= 1;
            if *count == 0 {
                waiters.remove(&self.saga_id);
            }
        }
    }
}

/// Called with a saga's id and terminal status once the transition that finished it has
/// committed.
pub type FinishedObserver = Arc<dyn Fn(SagaId, SagaStatus) + Send + Sync>;

impl<S: ?Sized> std::fmt::Debug for Orchestrator<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut types: Vec<&str> = self.registry.types().collect();
        types.sort();
        f.debug_struct("Orchestrator")
            .field("reply_channel", &self.reply_channel)
            .field("consumer", &self.consumer)
            .field("sagas", &types)
            .finish_non_exhaustive()
    }
}

impl<S: SagaStore + ?Sized> Orchestrator<S> {
    /// An orchestrator over `store` whose participants reply to `reply_channel`. The reply
    /// channel also names the orchestrator as a consumer, for deduplication.
    pub fn new(store: Arc<S>, reply_channel: impl Into<String>) -> Self {
        let reply_channel = reply_channel.into();
        Self {
            store,
            registry: Registry::default(),
            consumer: format!("orchestrator:{reply_channel}"),
            reply_channel,
            clock: Arc::new(SystemClock),
            observers: Vec::new(),
            waiters: Waiters::default(),
            system: OnceLock::new(),
        }
    }

    /// Names the messaging system its replies arrive through (`nats`, `saga_sql_queue`), for
    /// the `messaging.system` attribute of its `process` spans. The runtime that consumes its
    /// replies sets it from its transport; the first name set stays.
    pub fn set_messaging_system(&self, system: &'static str) {
        let _ = self.system.set(system);
    }

    fn messaging_system(&self) -> &'static str {
        self.system.get().copied().unwrap_or("saga")
    }

    /// Calls `observer` whenever a saga of this orchestrator reaches a terminal state
    /// (completed or compensated), after the change committed: for metrics, notifications,
    /// benchmarks.
    pub fn on_finished(
        mut self,
        observer: impl Fn(SagaId, SagaStatus) + Send + Sync + 'static,
    ) -> Self {
        self.observers.push(Arc::new(observer));
        self
    }

    /// Records what a committed event changed, and tells the observers if the saga finished.
    fn changed(&self, saga_id: SagaId, change: &Change) {
        let now = self.clock.now();
        if let Some((step, direction, sent)) = &change.replied {
            telemetry::step_replied(&change.saga_type, step, direction, *sent, now);
        }
        let Some(status) = change.after.filter(|after| Some(*after) != change.before) else {
            return;
        };
        if change.before.is_none() {
            telemetry::saga_started(&change.saga_type);
        }
        if status.is_finished() {
            telemetry::saga_finished(
                &change.saga_type,
                status.as_str(),
                saga_id.created_at(),
                now,
            );
            self.waiters.wake(saga_id);
        }
        if status.is_terminal() {
            for observer in &self.observers {
                observer(saga_id, status);
            }
        }
    }

    /// Waits until saga `saga_id` [is finished](SagaStatus::is_finished) — completed,
    /// compensated, or parked in `failed` — and returns its record; at most `timeout`
    /// ([`OrchestratorError::WaitTimedOut`], with the status it was left in).
    ///
    /// It wakes when this orchestrator finishes a saga and also reads the store every
    /// 250 ms at most, so it sees sagas moved by another process's orchestrator too.
    pub async fn wait(
        &self,
        saga_id: SagaId,
        timeout: std::time::Duration,
    ) -> Result<SagaRecord, OrchestratorError> {
        const MAX_POLL: std::time::Duration = std::time::Duration::from_millis(250);
        let deadline = tokio::time::Instant::now() + timeout;
        let mut poll = std::time::Duration::from_millis(5);
        let waiting = self.waiters.register(saga_id);
        loop {
            // Registered before the read, so a saga finishing in between still wakes us.
            let finished = waiting.notify.notified();
            let record = self.load(saga_id).await?;
            if record.state.status.is_finished() {
                return Ok(record);
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Err(OrchestratorError::WaitTimedOut {
                    saga_id,
                    status: record.state.status,
                    timeout,
                });
            }
            let sleep = tokio::time::sleep_until(deadline.min(now + poll));
            tokio::select! {
                () = finished => {}
                () = sleep => poll = (poll * 2).min(MAX_POLL),
            }
        }
    }

    /// Records how a consumed message was handled.
    fn handled_message(&self, result: &Result<Handled, OrchestratorError>) {
        let outcome = match result {
            Ok(Handled::Applied(_)) => "ok",
            Ok(Handled::Ignored(_)) => "ignored",
            Ok(Handled::Duplicate) => "duplicate",
            Ok(Handled::DeadLettered(_)) => "dead_letter",
            Ok(Handled::Refused(_)) => "refused",
            Err(OrchestratorError::Store(err)) if err.is_transient() => "transient",
            Err(OrchestratorError::Contended { .. }) => "transient",
            Err(_) => "error",
        };
        telemetry::message_handled(&self.reply_channel, outcome);
    }

    /// Reads time from `clock` instead of the system clock (for tests and simulations).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The orchestrator's clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// Registers a saga type, so the orchestrator can start it and handle its replies: `T`
    /// as the type's current version (unless it is retired), with the earlier versions it
    /// lists in `previous(..)`, which finish the instances that started on them.
    ///
    /// Versions that contradict each other (two current ones, two definitions claiming one
    /// version id) are reported by [`Orchestrator::check_versions`], which a runtime runs
    /// before it starts.
    pub fn register<T: Saga>(mut self) -> Self {
        self.registry
            .register(SagaVersion::of::<T>(), T::previous_versions());
        self
    }

    /// Adds a migration: instances on `From`'s version move to `To`'s (registered before)
    /// at their next event. The mapping is checked now — every step of `From` must have a
    /// counterpart of the same kind, in order — so no instance is left on a step that does
    /// not exist.
    pub fn migrate<From: Saga, To: Saga>(
        mut self,
        migration: Migration<From, To>,
    ) -> Result<Self, VersionError> {
        self.registry.migrate(migration)?;
        Ok(self)
    }

    /// Every registered version — current, retired, and the sources of migrations — with
    /// its state graph, by type and version.
    pub fn definitions(&self) -> Vec<RegisteredSaga> {
        self.registry.describe()
    }

    /// Lists the sagas in flight (running, compensating or parked) of this orchestrator's
    /// types, per type and version, with how each version is run. Fails when the registered
    /// versions contradict each other ([`VersionError`]); the versions nothing runs are
    /// [`VersionReport::unknown`].
    pub async fn check_versions(&self) -> Result<VersionReport, OrchestratorError> {
        if let Some(problem) = self.registry.problems().first() {
            return Err(problem.clone().into());
        }
        let mut report = VersionReport::default();
        for in_flight in self.store.in_flight_versions().await? {
            if !self.registry.has_type(&in_flight.saga_type) {
                continue;
            }
            let coverage = self
                .registry
                .coverage(&in_flight.saga_type, &in_flight.version);
            report.versions.push((in_flight, coverage));
        }
        Ok(report)
    }

    /// What a runtime does before it starts: [`Orchestrator::check_versions`], then, for
    /// versions nothing registered runs, refuses ([`OrchestratorError::UnknownVersions`],
    /// naming type, version, count and fix) or parks their running sagas in `failed` with
    /// that reason, per `policy`. Returns the report.
    pub async fn prepare_versions(
        &self,
        policy: UnknownVersionPolicy,
    ) -> Result<VersionReport, OrchestratorError> {
        let report = self.check_versions().await?;
        let unknown: Vec<_> = report.unknown().into_iter().cloned().collect();
        if unknown.is_empty() {
            return Ok(report);
        }
        if policy == UnknownVersionPolicy::Refuse {
            return Err(UnknownVersions(unknown).into());
        }
        for version in &unknown {
            let reason = format!(
                "definition version `{}` of `{}` is not registered in this deployment: deploy a \
                 build that keeps it (retired) or migrates it, then retry",
                version.version, version.saga_type
            );
            loop {
                let ids = self
                    .store
                    .running_on_version(&version.saga_type, &version.version, 500)
                    .await?;
                if ids.is_empty() {
                    break;
                }
                let mut parked = 0;
                for saga_id in ids {
                    parked += usize::from(self.park(saga_id, &reason).await?);
                }
                if parked == 0 {
                    break;
                }
            }
            tracing::warn!(
                saga_type = %version.saga_type,
                version = %version.version,
                running = version.running,
                "in-flight sagas of an unregistered version parked"
            );
        }
        Ok(report)
    }

    /// The channel participants reply to.
    pub fn reply_channel(&self) -> &str {
        &self.reply_channel
    }

    /// The store.
    pub fn store(&self) -> &Arc<S> {
        &self.store
    }

    /// Starts a saga and commits it, with its first commands, in one unit of work.
    pub async fn start<T: Saga>(&self, data: T::Data) -> Result<SagaId, OrchestratorError> {
        let prepared = self.prepare_start::<T>(data, self.clock.now())?;
        let change = start_change(&prepared);
        self.store.commit(prepared.unit).await?;
        if let Some(change) = change {
            self.changed(prepared.saga_id, &change);
        }
        Ok(prepared.saga_id)
    }

    /// Starts a saga without committing: the returned unit of work is for the caller to commit
    /// inside its own transaction (so a business row and the saga commit together).
    pub fn prepare_start<T: Saga>(
        &self,
        data: T::Data,
        now: Timestamp,
    ) -> Result<PreparedStart, OrchestratorError> {
        let definition = T::definition();
        let name = definition.name();
        let current = self.registry.current(name);
        if current != Some(definition.version())
            || self
                .registry
                .version(name, definition.version())
                .map(|v| v.rust_type())
                != Some(std::any::type_name::<T>())
        {
            if !self.registry.has_type(name) {
                return Err(OrchestratorError::UnregisteredType(name.to_owned()));
            }
            return Err(OrchestratorError::NotCurrent {
                saga_type: name.to_owned(),
                version: definition.version().to_owned(),
                rust_type: std::any::type_name::<T>(),
                current: current.unwrap_or("none").to_owned(),
            });
        }
        let saga_id = SagaId::new();
        // The saga's trace: a child of the caller's span (an HTTP request's), or a new root.
        let span = tracing::info_span!(
            "saga start",
            otel.name = format!("start {name}"),
            saga.type = name,
            saga.id = %saga_id,
        );
        let _entered = span.enter();
        let transition = engine::start(T::definition(), saga_id, data, now)?;
        let unit = self.unit_for(
            None,
            trace::current(),
            erase::<T>(transition)?,
            now,
            UnitOfWork::default(),
        );
        Ok(PreparedStart { saga_id, unit })
    }

    /// Tells the orchestrator a [prepared start](Orchestrator::prepare_start) was written,
    /// for its metrics (`saga_started_total`) and its [`Orchestrator::on_finished`]
    /// observers. Call it once the caller's transaction committed.
    pub fn started(&self, prepared: &PreparedStart) {
        if let Some(change) = start_change(prepared) {
            self.changed(prepared.saga_id, &change);
        }
    }

    /// Loads a saga record.
    pub async fn load(&self, saga_id: SagaId) -> Result<SagaRecord, OrchestratorError> {
        self.store
            .load(saga_id)
            .await?
            .ok_or(OrchestratorError::UnknownSaga(saga_id))
    }

    /// Handles a reply message from the reply channel.
    pub async fn handle_reply(&self, message: &Message) -> Result<Handled, OrchestratorError> {
        telemetry::message_taken(message, self.clock.now());
        let result = self.handle_reply_once(message).await;
        self.handled_message(&result);
        result
    }

    async fn handle_reply_once(&self, message: &Message) -> Result<Handled, OrchestratorError> {
        let consumed = Consumed {
            consumer: self.consumer.clone(),
            message_id: message.id,
        };
        if operator::is_operator_message(message) {
            return self.handle_operator_message(message, consumed).await;
        }
        let (saga_id, event) = match reply_event(message) {
            Ok(parsed) => parsed,
            Err(err) => {
                let span = trace::process_span(self.messaging_system(), message, None);
                trace::record_error(&span, "dead_letter");
                return self
                    .dead_letter(message, consumed, format!("unusable reply: {err}"))
                    .instrument(span)
                    .await;
            }
        };
        let base = UnitOfWork {
            consumed: Some(consumed.clone()),
            ..UnitOfWork::default()
        };
        match self.apply_event(saga_id, &event, Some(message), base).await {
            Ok(handled) => Ok(handled),
            Err(OrchestratorError::Store(err)) => Err(OrchestratorError::Store(err)),
            Err(err) => {
                tracing::warn!(%saga_id, message_id = %message.id, error = %err, "reply dead-lettered");
                self.dead_letter(message, consumed, err.to_string()).await
            }
        }
    }

    /// Handles a batch of replies together: loads their sagas with one
    /// [`SagaStore::load_many`], commits every transition with one [`SagaStore::commit_all`],
    /// and handles one by one (as [`Orchestrator::handle_reply`] does) whatever the batch could
    /// not: unusable replies, two replies to one saga, and conflicting writes. The results are
    /// in the order of `messages`.
    pub async fn handle_replies(
        &self,
        messages: &[Message],
    ) -> Vec<Result<Handled, OrchestratorError>> {
        if messages.len() < 2 {
            let mut results = Vec::with_capacity(messages.len());
            for message in messages {
                results.push(self.handle_reply(message).await);
            }
            return results;
        }
        // On a failure each reply meets it again on its own, and reports it.
        let records: Vec<SagaRecord> = self
            .store
            .load_many(&reply_saga_ids(messages))
            .await
            .unwrap_or_default();
        let mut plan = self.plan_replies(messages, records, self.clock.now());
        let units = std::mem::take(&mut plan.units);
        let mut results: Vec<Option<Result<Handled, OrchestratorError>>> =
            messages.iter().map(|_| None).collect();
        let mut one_by_one = std::mem::take(&mut plan.one_by_one);
        match self.store.commit_all(units).await {
            Ok(outcomes) => {
                for (planned, outcome) in plan.planned.into_iter().zip(outcomes) {
                    results[planned.index] = match outcome {
                        CommitOutcome::Committed => {
                            self.committed(&planned);
                            Some(Ok(planned.handled))
                        }
                        CommitOutcome::Duplicate => {
                            let duplicate = Ok(Handled::Duplicate);
                            self.handled_message(&duplicate);
                            Some(duplicate)
                        }
                        CommitOutcome::Conflict => {
                            one_by_one.push(planned.index);
                            None
                        }
                    };
                }
            }
            Err(err) => {
                for planned in plan.planned {
                    let failed = Err(OrchestratorError::Store(err.clone()));
                    self.handled_message(&failed);
                    results[planned.index] = Some(failed);
                }
            }
        }
        one_by_one.sort_unstable();
        for index in one_by_one {
            results[index] = Some(self.handle_reply(&messages[index]).await);
        }
        results
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|| {
                    Err(StoreError::Bug {
                        what: "a reply of the batch was left unhandled",
                    }
                    .into())
                })
            })
            .collect()
    }

    /// Plans a batch of replies against their sagas' `records` (loaded by the caller, e.g.
    /// inside its own transaction) without writing anything: the units of work to commit,
    /// what each will have done, and which replies must be handled one by one instead
    /// (unusable, unknown saga, or a second reply to one saga). After committing the units,
    /// tell the orchestrator with [`Orchestrator::committed`].
    pub fn plan_replies(
        &self,
        messages: &[Message],
        records: Vec<SagaRecord>,
        now: Timestamp,
    ) -> ReplyPlan {
        let records: HashMap<SagaId, SagaRecord> =
            records.into_iter().map(|r| (r.state.saga_id, r)).collect();
        let parsed: Vec<Option<(SagaId, SagaEvent)>> =
            messages.iter().map(|m| reply_event(m).ok()).collect();
        let mut seen: HashMap<SagaId, usize> = HashMap::new();
        for (saga_id, _) in parsed.iter().flatten() {
            *seen.entry(*saga_id).or_default() += 1;
        }
        let mut plan = ReplyPlan::default();
        for (index, (message, parsed)) in messages.iter().zip(parsed).enumerate() {
            let batchable = parsed.and_then(|(saga_id, event)| {
                let record = records
                    .get(&saga_id)
                    .filter(|_| seen.get(&saga_id) == Some(&1))?;
                let base = UnitOfWork {
                    consumed: Some(Consumed {
                        consumer: self.consumer.clone(),
                        message_id: message.id,
                    }),
                    ..UnitOfWork::default()
                };
                let span =
                    trace::process_span(self.messaging_system(), message, record.trace.as_ref());
                let _entered = span.enter();
                match self.registry.apply(record, &event, now).ok()? {
                    ErasedOutcome::Applied(transition) => {
                        let status = transition.state.status;
                        record_outcome(&span, &transition.state);
                        let change = Change::of(Some(record), &transition.state, Some(message));
                        let unit = self.unit_for(
                            Some(record.version),
                            record.trace.clone(),
                            *transition,
                            now,
                            base,
                        );
                        Some((unit, Handled::Applied(status), saga_id, change))
                    }
                    ErasedOutcome::Ignored(why) => {
                        tracing::debug!(%saga_id, %why, "event ignored");
                        span.record(trace::attributes::SAGA_OUTCOME, "ignored");
                        let change = Change {
                            produced: message.id.created_at(),
                            ..Change::default()
                        };
                        Some((base, Handled::Ignored(why), saga_id, change))
                    }
                }
            });
            match batchable {
                Some((unit, handled, saga_id, change)) => {
                    plan.units.push(unit);
                    plan.planned.push(PlannedReply {
                        index,
                        saga_id,
                        handled,
                        change,
                    });
                }
                None => plan.one_by_one.push(index),
            }
        }
        plan
    }

    /// Tells the orchestrator a planned reply's unit of work committed (it tells the
    /// [`Orchestrator::on_finished`] observers if the saga finished).
    pub fn committed(&self, planned: &PlannedReply) {
        if let Some(produced) = planned.change.produced {
            telemetry::message_waited(&self.reply_channel, produced, self.clock.now());
        }
        self.handled_message(&Ok(planned.handled.clone()));
        self.changed(planned.saga_id, &planned.change);
    }

    /// Fires the timers due now (at most `limit`); returns how many fired.
    pub async fn fire_due_timers(&self, limit: usize) -> Result<usize, OrchestratorError> {
        let now = self.clock.now();
        let timers = self.store.due_timers(now, limit).await?;
        let count = timers.len();
        for timer in timers {
            let base = UnitOfWork {
                fired: vec![timer.clone()],
                ..UnitOfWork::default()
            };
            let event = SagaEvent::Timer(timer.timer);
            match self
                .apply_event_at(timer.saga_id, &event, None, base, now)
                .await
            {
                Ok(_) => {}
                Err(OrchestratorError::Store(err)) => return Err(err.into()),
                Err(err) => {
                    // The saga cannot move on by itself: park it, with the reason, rather
                    // than let it wait for a timer that can never be applied.
                    tracing::error!(saga_id = %timer.saga_id, error = %err, "timer could not be applied; parking the saga");
                    let reason = format!("its timer could not be applied: {err}");
                    self.park_with(timer.saga_id, &reason, vec![timer]).await?;
                }
            }
        }
        Ok(count)
    }

    /// Parks a running or compensating saga in `failed` with `reason` (recorded in its
    /// timeline), whatever step it is at: for sagas that stopped moving (see
    /// [`Orchestrator::watchdog`]) or whose state the engine cannot apply events to. A late
    /// reply to its outstanding request is then ignored; an operator `retry` sends the current
    /// step's command again, `skip` moves past it. Returns `false` when the saga was not
    /// running (finished, or parked already).
    pub async fn park(&self, saga_id: SagaId, reason: &str) -> Result<bool, OrchestratorError> {
        self.park_with(saga_id, reason, Vec::new()).await
    }

    async fn park_with(
        &self,
        saga_id: SagaId,
        reason: &str,
        fired: Vec<TimerRecord>,
    ) -> Result<bool, OrchestratorError> {
        for _ in 0..MAX_CONFLICT_RETRIES {
            let record = self.load(saga_id).await?;
            let mut state = record.state.clone();
            if !matches!(state.status, SagaStatus::Running | SagaStatus::Compensating) {
                return Ok(false);
            }
            state.status = SagaStatus::Failed;
            state.pending = None;
            state.deadline = None;
            state.last_error = Some(reason.to_owned());
            let now = self.clock.now();
            let unit = UnitOfWork {
                saga: Some(SagaWrite {
                    record: SagaRecord {
                        state: state.clone(),
                        data: record.data.clone(),
                        version: record.version + 1,
                        trace: record.trace.clone(),
                    },
                    expected_version: Some(record.version),
                }),
                history: vec![HistoryRecord {
                    saga_id,
                    at: now,
                    event: engine::HistoryEvent::Parked {
                        step: state.current_step.clone().unwrap_or_default(),
                        reason: reason.to_owned(),
                    },
                }],
                fired: fired.clone(),
                ..UnitOfWork::default()
            };
            match self.store.commit(unit).await? {
                CommitOutcome::Committed => {
                    tracing::warn!(%saga_id, saga_type = %state.saga_type, %reason, "saga parked in failed; awaiting an operator");
                    let change = Change {
                        saga_type: state.saga_type.clone(),
                        before: Some(record.state.status),
                        after: Some(SagaStatus::Failed),
                        replied: None,
                        produced: None,
                    };
                    self.changed(saga_id, &change);
                    return Ok(true);
                }
                CommitOutcome::Duplicate => return Ok(false),
                CommitOutcome::Conflict => {}
            }
        }
        Err(OrchestratorError::Contended {
            saga_id,
            attempts: MAX_CONFLICT_RETRIES,
        })
    }

    /// Looks for sagas that stopped moving — running or compensating, with no deadline and
    /// no change for longer than `idle`, or with a deadline overdue by more than `idle` — and
    /// reports each (a warning in the log, and the returned report). With
    /// [`WatchdogAction::Park`] it parks them with a reason, so an operator sees them among
    /// the failed sagas. Steps that opted out of a timeout (`no_timeout`) wait by design and
    /// are left alone.
    pub async fn watchdog(
        &self,
        idle: std::time::Duration,
        action: WatchdogAction,
        limit: usize,
    ) -> Result<WatchdogReport, OrchestratorError> {
        let now = self.clock.now();
        let mut report = WatchdogReport::default();
        for stalled in self.store.stalled(now, idle, limit).await? {
            let waits_by_design = stalled.deadline.is_none()
                && self
                    .registry
                    .for_step(&stalled.saga_type, &stalled.definition_version)
                    .is_some_and(|saga| {
                        stalled
                            .current_step
                            .as_deref()
                            .is_some_and(|step| saga.waits_without_deadline(step))
                    });
            if waits_by_design {
                continue;
            }
            let idle_for = now
                .as_millis()
                .saturating_sub(stalled.updated_at.as_millis());
            let why = match stalled.deadline {
                Some(deadline) => format!(
                    "its deadline passed {} ms ago and no timer fired",
                    now.as_millis().saturating_sub(deadline.as_millis())
                ),
                None => format!("it has waited {idle_for} ms with no deadline and no progress"),
            };
            tracing::warn!(
                saga_id = %stalled.saga_id,
                saga_type = %stalled.saga_type,
                status = %stalled.status,
                step = stalled.current_step.as_deref().unwrap_or("-"),
                %why,
                "stuck saga"
            );
            if action == WatchdogAction::Park {
                let reason = format!("stuck: {why} (parked by the watchdog)");
                if self.park(stalled.saga_id, &reason).await? {
                    report.parked.push(stalled.saga_id);
                }
            }
            report.stalled.push(stalled);
        }
        Ok(report)
    }

    /// Applies an operator request (`retry` or `skip` a parked saga, `cancel` a running one)
    /// and returns the saga's status afterwards. A refusal is recorded in the saga's timeline
    /// and returned as [`EngineError::OperatorRefused`].
    pub async fn operator(
        &self,
        saga_id: SagaId,
        request: OperatorRequest,
    ) -> Result<SagaStatus, OrchestratorError> {
        match self
            .apply_operator(saga_id, &request, None, UnitOfWork::default())
            .await
        {
            Ok(Handled::Applied(status)) => Ok(status),
            Ok(handled) => Err(OrchestratorError::NoEffect { saga_id, handled }),
            Err(err) => Err(err),
        }
    }

    /// Applies `request` on top of `base`; when the engine refuses it, commits `base` with the
    /// refusal in the saga's timeline instead, and returns the engine's error.
    async fn apply_operator(
        &self,
        saga_id: SagaId,
        request: &OperatorRequest,
        message: Option<&Message>,
        base: UnitOfWork,
    ) -> Result<Handled, OrchestratorError> {
        let event = SagaEvent::Operator(request.clone());
        match self
            .apply_event(saga_id, &event, message, base.clone())
            .await
        {
            Err(OrchestratorError::Engine(EngineError::OperatorRefused {
                saga_id,
                command,
                status,
                why,
            })) => {
                tracing::warn!(%saga_id, command = %request.command, actor = %request.actor, %why, "operator request refused");
                let mut unit = base;
                unit.history.push(HistoryRecord {
                    saga_id,
                    at: self.clock.now(),
                    event: HistoryEvent::OperatorRefused {
                        command: request.command,
                        actor: request.actor.clone(),
                        reason: request.reason.clone(),
                        refused: why.clone(),
                    },
                });
                self.store.commit(unit).await?;
                Err(EngineError::OperatorRefused {
                    saga_id,
                    command,
                    status,
                    why,
                }
                .into())
            }
            other => other,
        }
    }

    /// Handles an operator request that came as a message (see [`crate::operator`]).
    async fn handle_operator_message(
        &self,
        message: &Message,
        consumed: Consumed,
    ) -> Result<Handled, OrchestratorError> {
        let (saga_id, request) = match operator::parse_operator_message(message) {
            Ok(parsed) => parsed,
            Err(err) => {
                let reason = format!("unusable operator request: {err}");
                return self.dead_letter(message, consumed, reason).await;
            }
        };
        tracing::info!(%saga_id, command = %request.command, actor = %request.actor, reason = %request.reason, "operator request");
        let base = UnitOfWork {
            consumed: Some(consumed.clone()),
            ..UnitOfWork::default()
        };
        match self
            .apply_operator(saga_id, &request, Some(message), base)
            .await
        {
            Ok(handled) => Ok(handled),
            Err(OrchestratorError::Engine(EngineError::OperatorRefused { why, .. })) => {
                Ok(Handled::Refused(why))
            }
            Err(OrchestratorError::Store(err)) => Err(OrchestratorError::Store(err)),
            Err(err) => {
                let reason = format!("operator request for saga {saga_id} failed: {err}");
                self.dead_letter(message, consumed, reason).await
            }
        }
    }

    async fn apply_event(
        &self,
        saga_id: SagaId,
        event: &SagaEvent,
        message: Option<&Message>,
        base: UnitOfWork,
    ) -> Result<Handled, OrchestratorError> {
        self.apply_event_at(saga_id, event, message, base, self.clock.now())
            .await
    }

    /// The span an event is applied in: `process <reply channel>` for a message (parented on
    /// its trace context, else the saga's), `timer <step>` or `operator <command>` otherwise
    /// (parented on the saga's stored trace context).
    fn event_span(
        &self,
        record: &SagaRecord,
        event: &SagaEvent,
        message: Option<&Message>,
    ) -> tracing::Span {
        if let Some(message) = message {
            return trace::process_span(self.messaging_system(), message, record.trace.as_ref());
        }
        let state = &record.state;
        let step = state.current_step.as_deref().unwrap_or_default();
        let name = match event {
            SagaEvent::Operator(request) => format!("operator {}", request.command),
            _ => format!("timer {step}"),
        };
        let span = tracing::info_span!(
            "saga event",
            otel.name = name,
            saga.type = %state.saga_type,
            saga.id = %state.saga_id,
            saga.step = step,
            saga.direction = tracing::field::Empty,
            saga.outcome = tracing::field::Empty,
        );
        if let Some(parent) = &record.trace {
            trace::set_parent(&span, parent);
        }
        span
    }

    async fn apply_event_at(
        &self,
        saga_id: SagaId,
        event: &SagaEvent,
        message: Option<&Message>,
        base: UnitOfWork,
        now: Timestamp,
    ) -> Result<Handled, OrchestratorError> {
        for _ in 0..MAX_CONFLICT_RETRIES {
            let record = self.load(saga_id).await?;
            let span = self.event_span(&record, event, message);
            let applied = span.in_scope(|| -> Result<_, OrchestratorError> {
                Ok(match self.registry.apply(&record, event, now)? {
                    ErasedOutcome::Applied(transition) => {
                        let status = transition.state.status;
                        record_outcome(&span, &transition.state);
                        let change = Change::of(Some(&record), &transition.state, message);
                        let unit = self.unit_for(
                            Some(record.version),
                            record.trace.clone(),
                            *transition,
                            now,
                            base.clone(),
                        );
                        (unit, Handled::Applied(status), change)
                    }
                    ErasedOutcome::Ignored(why) => {
                        tracing::debug!(%saga_id, %why, "event ignored");
                        span.record(trace::attributes::SAGA_OUTCOME, "ignored");
                        (base.clone(), Handled::Ignored(why), Change::default())
                    }
                })
            });
            let (unit, handled, change) = match applied {
                Ok(applied) => applied,
                Err(err) => {
                    trace::record_error(&span, "rejected");
                    return Err(err);
                }
            };
            match self.store.commit(unit).instrument(span).await? {
                CommitOutcome::Committed => {
                    self.changed(saga_id, &change);
                    return Ok(handled);
                }
                CommitOutcome::Duplicate => return Ok(Handled::Duplicate),
                CommitOutcome::Conflict => {
                    tracing::debug!(%saga_id, "concurrent update; retrying");
                }
            }
        }
        Err(OrchestratorError::Contended {
            saga_id,
            attempts: MAX_CONFLICT_RETRIES,
        })
    }

    async fn dead_letter(
        &self,
        message: &Message,
        consumed: Consumed,
        reason: String,
    ) -> Result<Handled, OrchestratorError> {
        telemetry::dead_lettered(match reason.starts_with("unusable") {
            true => telemetry::DeadLetterReason::Unusable,
            false => telemetry::DeadLetterReason::Rejected,
        });
        let unit = UnitOfWork {
            consumed: Some(consumed.clone()),
            dead_letters: vec![DeadLetter {
                consumer: consumed.consumer,
                message: message.clone(),
                reason: reason.clone(),
                at: self.clock.now(),
            }],
            ..UnitOfWork::default()
        };
        match self.store.commit(unit).await? {
            CommitOutcome::Duplicate => Ok(Handled::Duplicate),
            _ => Ok(Handled::DeadLettered(reason)),
        }
    }

    /// Turns a transition into the unit of work that persists it.
    fn unit_for(
        &self,
        previous_version: Option<u64>,
        trace: Option<TraceContext>,
        transition: ErasedTransition,
        now: Timestamp,
        mut unit: UnitOfWork,
    ) -> UnitOfWork {
        let state = transition.state;
        let saga_id = state.saga_id;
        for action in transition.actions {
            match action {
                SagaAction::Send(command) => {
                    let step_span = step_span(&state, &command);
                    let outgoing = step_span.in_scope(|| trace::outgoing(trace.as_ref()));
                    let mut headers = Headers::new()
                        .with(headers::MESSAGE_TYPE, &command.command_type)
                        .with(headers::SAGA_ID, saga_id)
                        .with(headers::SAGA_TYPE, &state.saga_type)
                        .with(headers::SAGA_STEP, &command.step);
                    if let Some(request_id) = command.request_id {
                        headers.insert(headers::REQUEST_ID, request_id.to_string());
                        headers.insert(headers::REPLY_TO, self.reply_channel.clone());
                        if let Some(deadline) = state.deadline {
                            headers.insert(headers::DEADLINE, deadline.as_millis().to_string());
                        }
                    }
                    if let Some(context) = outgoing {
                        context.write_to(&mut headers);
                    }
                    unit.outbox
                        .push(Message::new(command.channel, headers, command.payload));
                }
                SagaAction::Schedule { timer, due } => unit.schedule.push(TimerRecord {
                    saga_id,
                    timer,
                    due,
                }),
                SagaAction::Finished(status) => {
                    tracing::info!(%saga_id, saga_type = %state.saga_type, %status, "saga finished");
                }
                SagaAction::Parked { reason } => {
                    tracing::warn!(%saga_id, saga_type = %state.saga_type, %reason, "saga parked in failed; awaiting an operator");
                }
            }
        }
        unit.history
            .extend(transition.history.into_iter().map(|event| HistoryRecord {
                saga_id,
                at: now,
                event,
            }));
        unit.saga = Some(SagaWrite {
            record: SagaRecord {
                state,
                data: transition.data,
                version: previous_version.map_or(1, |v| v + 1),
                trace,
            },
            expected_version: previous_version,
        });
        unit
    }
}

/// The span of one step's (or compensation's) command being sent: `<step>` or
/// `compensate <step>`; the command carries its trace context.
fn step_span(state: &SagaState, command: &engine::OutgoingCommand) -> tracing::Span {
    let (name, direction) = match command.compensation {
        true => (format!("compensate {}", command.step), "compensation"),
        false => (command.step.clone(), "forward"),
    };
    tracing::info_span!(
        "saga step",
        otel.name = name,
        saga.type = %state.saga_type,
        saga.id = %state.saga_id,
        saga.step = %command.step,
        saga.direction = direction,
        saga.attempt = state.attempt,
        messaging.destination.name = %command.channel,
    )
}

/// Records on an event's span where the saga went: its status and direction afterwards.
fn record_outcome(span: &tracing::Span, state: &SagaState) {
    span.record(trace::attributes::SAGA_OUTCOME, state.status.as_str());
    span.record(
        trace::attributes::SAGA_DIRECTION,
        direction_name(state.direction),
    );
}

/// Reads the saga id and the reply event out of a reply message.
fn reply_event(message: &Message) -> Result<(SagaId, SagaEvent), MessageError> {
    message.check_limits()?;
    let h = &message.headers;
    let saga_id: SagaId = h.parse(headers::SAGA_ID)?;
    let request_id: RequestId = h.parse(headers::REQUEST_ID)?;
    let outcome: ReplyOutcome = h.parse(headers::REPLY_OUTCOME)?;
    let reply_type = message.message_type()?.to_owned();
    let undelivered_before = match h.get(headers::UNDELIVERED) {
        Some(_) if h.get(headers::DEADLINE).is_some() => {
            Some(Timestamp(h.parse(headers::DEADLINE)?))
        }
        _ => None,
    };
    Ok((
        saga_id,
        SagaEvent::Reply {
            request_id,
            reply: IncomingReply {
                reply_type,
                outcome,
                payload: message.payload.clone(),
                undelivered_before,
            },
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Finishing a saga wakes its own waiters only, and the last waiter to leave removes its
    /// entry.
    #[tokio::test]
    async fn a_finished_saga_wakes_only_its_own_waiters() {
        let waiters = Waiters::default();
        let (mine, other) = (SagaId::new(), SagaId::new());
        let first = waiters.register(mine);
        let second = waiters.register(mine);
        let elsewhere = waiters.register(other);
        let (mine_notify, other_notify) = (first.notify.clone(), elsewhere.notify.clone());
        let (woken, not_woken) = (mine_notify.notified(), other_notify.notified());
        tokio::pin!(woken, not_woken);
        woken.as_mut().enable();
        not_woken.as_mut().enable();
        waiters.wake(mine);
        tokio::time::timeout(std::time::Duration::from_secs(5), woken)
            .await
            .expect("its waiter is woken");
        assert!(
            futures_poll_once(not_woken.as_mut()).await.is_none(),
            "another saga's waiter sleeps on"
        );
        drop(first);
        assert_eq!(waiters.lock().get(&mine).map(|(_, n)| *n), Some(1));
        drop(second);
        drop(elsewhere);
        assert!(waiters.lock().is_empty());
    }

    /// Polls `future` once: its output if it was ready.
    async fn futures_poll_once<F: std::future::Future + Unpin>(future: F) -> Option<F::Output> {
        let mut future = future;
        std::future::poll_fn(|cx| {
            std::task::Poll::Ready(match std::pin::Pin::new(&mut future).poll(cx) {
                std::task::Poll::Ready(output) => Some(output),
                std::task::Poll::Pending => None,
            })
        })
        .await
    }
}
