//! In-memory implementations of the ports, and a runtime that runs a whole saga system
//! (orchestrator, participants, relay, timers) in one process — for tests and simulations.
//!
//! The transport can inject faults from a seed: duplicate deliveries and reordering, so tests
//! exercise deduplication and stale-reply handling deterministically.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;

use crate::clock::{Clock, ManualClock};
use crate::engine::SagaStatus;
use crate::ids::{SagaId, Timestamp};
use crate::message::{Message, failure_reply_for};
use crate::orchestrator::{Handled, Orchestrator, OrchestratorError};
use crate::participant::Participant;
use crate::ports::{
    CommitOutcome, Consumed, DeadLetter, Delivery, HistoryRecord, InFlightVersion, OutboxEntry,
    SagaRecord, SagaStore, StalledSaga, StoreError, TimerRecord, Transport, TransportError,
    UnitOfWork,
};
use crate::relay::{RelayError, relay_batch};
use crate::simulation::SimRng;

fn guard<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A poisoned lock only means another test thread panicked; the data is still usable.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[derive(Debug, Default)]
struct Tables {
    sagas: HashMap<SagaId, SagaRecord>,
    history: Vec<HistoryRecord>,
    timers: Vec<TimerRecord>,
    outbox: BTreeMap<u64, Message>,
    next_sequence: u64,
    received: HashSet<Consumed>,
    dead_letters: Vec<DeadLetter>,
}

/// A [`SagaStore`] in memory: every commit is atomic under one lock.
#[derive(Debug, Default)]
pub struct InMemoryStore {
    tables: Mutex<Tables>,
}

impl InMemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether `consumed` has been recorded as received.
    pub fn is_received(&self, consumed: &Consumed) -> bool {
        guard(&self.tables).received.contains(consumed)
    }

    /// All saga records.
    pub fn sagas(&self) -> Vec<SagaRecord> {
        let mut sagas: Vec<_> = guard(&self.tables).sagas.values().cloned().collect();
        sagas.sort_by_key(|r| r.state.saga_id);
        sagas
    }
}

#[async_trait]
impl SagaStore for InMemoryStore {
    async fn load(&self, saga_id: SagaId) -> Result<Option<SagaRecord>, StoreError> {
        Ok(guard(&self.tables).sagas.get(&saga_id).cloned())
    }

    async fn commit(&self, unit: UnitOfWork) -> Result<CommitOutcome, StoreError> {
        let mut tables = guard(&self.tables);
        if let Some(consumed) = &unit.consumed
            && tables.received.contains(consumed)
        {
            return Ok(CommitOutcome::Duplicate);
        }
        if let Some(write) = &unit.saga {
            let current = tables
                .sagas
                .get(&write.record.state.saga_id)
                .map(|r| r.version);
            if current != write.expected_version {
                return Ok(CommitOutcome::Conflict);
            }
        }
        if let Some(consumed) = unit.consumed {
            tables.received.insert(consumed);
        }
        if let Some(write) = unit.saga {
            tables
                .sagas
                .insert(write.record.state.saga_id, write.record);
        }
        tables.history.extend(unit.history);
        for message in unit.outbox {
            tables.next_sequence += 1;
            let sequence = tables.next_sequence;
            tables.outbox.insert(sequence, message);
        }
        tables.timers.retain(|t| !unit.fired.contains(t));
        for timer in unit.schedule {
            if !tables.timers.contains(&timer) {
                tables.timers.push(timer);
            }
        }
        tables.dead_letters.extend(unit.dead_letters);
        Ok(CommitOutcome::Committed)
    }

    async fn due_timers(
        &self,
        now: Timestamp,
        limit: usize,
    ) -> Result<Vec<TimerRecord>, StoreError> {
        let tables = guard(&self.tables);
        let mut due: Vec<_> = tables
            .timers
            .iter()
            .filter(|t| t.due <= now)
            .cloned()
            .collect();
        due.sort_by_key(|t| t.due);
        due.truncate(limit);
        Ok(due)
    }

    /// A saga's last change is its newest timeline entry.
    async fn stalled(
        &self,
        now: Timestamp,
        idle: Duration,
        limit: usize,
    ) -> Result<Vec<StalledSaga>, StoreError> {
        let tables = guard(&self.tables);
        let idle = u64::try_from(idle.as_millis()).unwrap_or(u64::MAX);
        let cutoff = Timestamp(now.as_millis().saturating_sub(idle));
        let mut updated: HashMap<SagaId, Timestamp> = HashMap::new();
        for entry in &tables.history {
            let at = updated.entry(entry.saga_id).or_insert(entry.at);
            *at = (*at).max(entry.at);
        }
        let mut stalled: Vec<StalledSaga> = tables
            .sagas
            .values()
            .map(|record| &record.state)
            .filter(|state| matches!(state.status, SagaStatus::Running | SagaStatus::Compensating))
            .filter_map(|state| {
                let updated_at = updated.get(&state.saga_id).copied().unwrap_or(Timestamp(0));
                let stuck = match state.deadline {
                    Some(deadline) => deadline < cutoff,
                    None => updated_at < cutoff,
                };
                stuck.then(|| StalledSaga {
                    saga_id: state.saga_id,
                    saga_type: state.saga_type.clone(),
                    definition_version: state.definition_version.clone(),
                    status: state.status,
                    current_step: state.current_step.clone(),
                    deadline: state.deadline,
                    updated_at,
                })
            })
            .collect();
        stalled.sort_by_key(|s| s.updated_at);
        stalled.truncate(limit);
        Ok(stalled)
    }

    async fn in_flight_versions(&self) -> Result<Vec<InFlightVersion>, StoreError> {
        let tables = guard(&self.tables);
        let mut counts: BTreeMap<(String, String), (u64, u64)> = BTreeMap::new();
        for state in tables.sagas.values().map(|record| &record.state) {
            if state.status.is_terminal() {
                continue;
            }
            let key = (state.saga_type.clone(), state.definition_version.clone());
            let (running, parked) = counts.entry(key).or_default();
            match state.status {
                SagaStatus::Failed => *parked += 1,
                _ => *running += 1,
            }
        }
        Ok(counts
            .into_iter()
            .map(
                |((saga_type, version), (running, parked))| InFlightVersion {
                    saga_type,
                    version,
                    running,
                    parked,
                },
            )
            .collect())
    }

    async fn running_on_version(
        &self,
        saga_type: &str,
        version: &str,
        limit: usize,
    ) -> Result<Vec<SagaId>, StoreError> {
        Ok(guard(&self.tables)
            .sagas
            .values()
            .map(|record| &record.state)
            .filter(|state| {
                matches!(state.status, SagaStatus::Running | SagaStatus::Compensating)
                    && state.saga_type == saga_type
                    && state.definition_version == version
            })
            .map(|state| state.saga_id)
            .take(limit)
            .collect())
    }

    async fn history(&self, saga_id: SagaId) -> Result<Vec<HistoryRecord>, StoreError> {
        Ok(guard(&self.tables)
            .history
            .iter()
            .filter(|h| h.saga_id == saga_id)
            .cloned()
            .collect())
    }

    async fn unpublished(&self, limit: usize) -> Result<Vec<OutboxEntry>, StoreError> {
        Ok(guard(&self.tables)
            .outbox
            .iter()
            .take(limit)
            .map(|(sequence, message)| OutboxEntry {
                sequence: *sequence,
                message: message.clone(),
            })
            .collect())
    }

    async fn mark_published(&self, sequences: &[u64]) -> Result<(), StoreError> {
        let mut tables = guard(&self.tables);
        for sequence in sequences {
            tables.outbox.remove(sequence);
        }
        Ok(())
    }

    async fn dead_letters(&self) -> Result<Vec<DeadLetter>, StoreError> {
        Ok(guard(&self.tables).dead_letters.clone())
    }

    async fn set_aside(&self, entry: &OutboxEntry, reason: &str) -> Result<(), StoreError> {
        let mut tables = guard(&self.tables);
        if tables.outbox.remove(&entry.sequence).is_none() {
            return Ok(());
        }
        tables.dead_letters.push(DeadLetter {
            consumer: "outbox-relay".to_owned(),
            message: entry.message.clone(),
            reason: reason.to_owned(),
            at: Timestamp::now(),
        });
        if let Some(reply) = failure_reply_for(&entry.message, reason) {
            tables.next_sequence += 1;
            let sequence = tables.next_sequence;
            tables.outbox.insert(sequence, reply);
        }
        Ok(())
    }
}

/// Faults the in-memory transport injects, decided by a seeded generator.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Faults {
    /// The generator's seed.
    pub seed: u64,
    /// The chance (0.0–1.0) that a published message is delivered twice.
    pub duplicate: f64,
    /// The chance (0.0–1.0) that a published message jumps ahead of queued ones.
    pub reorder: f64,
}

#[derive(Debug, Default)]
struct Group {
    queue: VecDeque<(Message, u32)>,
    in_flight: HashMap<u64, (Message, u32)>,
}

#[derive(Debug, Default)]
struct Channels {
    /// Every message ever published per channel, for groups that join later.
    log: HashMap<String, Vec<Message>>,
    /// Messages set aside with [`Transport::dead_letter`], with the reason.
    dead: Vec<(Message, String)>,
    groups: HashMap<(String, String), Group>,
    next_receipt: u64,
}

/// A [`Transport`] in memory, with optional fault injection.
#[derive(Debug)]
pub struct InMemoryTransport {
    channels: Mutex<Channels>,
    faults: Faults,
    rng: Mutex<SimRng>,
}

impl Default for InMemoryTransport {
    fn default() -> Self {
        Self::with_faults(Faults::default())
    }
}

impl InMemoryTransport {
    /// A reliable, in-order transport.
    pub fn new() -> Self {
        Self::default()
    }

    /// A transport that duplicates and reorders messages per `faults`.
    pub fn with_faults(faults: Faults) -> Self {
        Self {
            channels: Mutex::new(Channels::default()),
            faults,
            rng: Mutex::new(SimRng::new(faults.seed)),
        }
    }

    /// Puts every delivered but unacknowledged message back in its queue, as a broker does
    /// when a consumer dies.
    pub fn requeue_unacked(&self) {
        let mut channels = guard(&self.channels);
        for group in channels.groups.values_mut() {
            let mut in_flight: Vec<_> = group.in_flight.drain().collect();
            in_flight.sort_by_key(|(receipt, _)| *receipt);
            for (_, entry) in in_flight.into_iter().rev() {
                group.queue.push_front(entry);
            }
        }
    }

    /// The messages consumers set aside ([`Transport::dead_letter`]), with the reasons.
    pub fn set_aside(&self) -> Vec<(Message, String)> {
        guard(&self.channels).dead.clone()
    }

    /// How many messages wait (queued or unacknowledged) across all groups.
    pub fn backlog(&self) -> usize {
        guard(&self.channels)
            .groups
            .values()
            .map(|g| g.queue.len() + g.in_flight.len())
            .sum()
    }

    fn enqueue(&self, group: &mut Group, message: &Message) {
        let mut rng = guard(&self.rng);
        let copies = if rng.chance(self.faults.duplicate) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            if !group.queue.is_empty() && rng.chance(self.faults.reorder) {
                let position = rng.index(group.queue.len());
                group.queue.insert(position, (message.clone(), 0));
            } else {
                group.queue.push_back((message.clone(), 0));
            }
        }
    }
}

#[async_trait]
impl Transport for InMemoryTransport {
    fn system(&self) -> &'static str {
        "in_memory"
    }

    async fn publish(&self, messages: &[Message]) -> Result<(), TransportError> {
        let mut channels = guard(&self.channels);
        for message in messages {
            channels
                .log
                .entry(message.destination.clone())
                .or_default()
                .push(message.clone());
            let keys: Vec<_> = channels
                .groups
                .keys()
                .filter(|(channel, _)| *channel == message.destination)
                .cloned()
                .collect();
            for key in keys {
                if let Some(group) = channels.groups.get_mut(&key) {
                    self.enqueue(group, message);
                }
            }
        }
        Ok(())
    }

    async fn receive(
        &self,
        channel: &str,
        group: &str,
        max: usize,
        _wait: Duration,
    ) -> Result<Vec<Delivery>, TransportError> {
        let mut channels = guard(&self.channels);
        let key = (channel.to_owned(), group.to_owned());
        if !channels.groups.contains_key(&key) {
            let mut fresh = Group::default();
            for message in channels.log.get(channel).cloned().unwrap_or_default() {
                self.enqueue(&mut fresh, &message);
            }
            channels.groups.insert(key.clone(), fresh);
        }
        let mut deliveries = Vec::new();
        while deliveries.len() < max {
            channels.next_receipt += 1;
            let receipt = channels.next_receipt;
            let Some(group) = channels.groups.get_mut(&key) else {
                break;
            };
            let Some((message, attempts)) = group.queue.pop_front() else {
                break;
            };
            group
                .in_flight
                .insert(receipt, (message.clone(), attempts + 1));
            deliveries.push(Delivery {
                message,
                attempt: attempts + 1,
                receipt,
            });
        }
        Ok(deliveries)
    }

    async fn ack(
        &self,
        channel: &str,
        group: &str,
        delivery: &Delivery,
    ) -> Result<(), TransportError> {
        let mut channels = guard(&self.channels);
        if let Some(group) = channels
            .groups
            .get_mut(&(channel.to_owned(), group.to_owned()))
        {
            group.in_flight.remove(&delivery.receipt);
        }
        Ok(())
    }

    /// Drops the delivery and keeps it with the reason; a command's failure reply goes to
    /// its reply channel.
    async fn dead_letter(
        &self,
        channel: &str,
        group: &str,
        delivery: &Delivery,
        reason: &str,
    ) -> Result<(), TransportError> {
        self.ack(channel, group, delivery).await?;
        guard(&self.channels)
            .dead
            .push((delivery.message.clone(), reason.to_owned()));
        let replies: Vec<Message> = failure_reply_for(&delivery.message, reason)
            .into_iter()
            .collect();
        self.publish(&replies).await
    }

    async fn release(
        &self,
        channel: &str,
        group: &str,
        delivery: &Delivery,
        _delay: Duration,
    ) -> Result<(), TransportError> {
        let mut channels = guard(&self.channels);
        if let Some(group) = channels
            .groups
            .get_mut(&(channel.to_owned(), group.to_owned()))
            && let Some(entry) = group.in_flight.remove(&delivery.receipt)
        {
            group.queue.push_back(entry);
        }
        Ok(())
    }
}

/// A participant wired into an [`InMemoryRuntime`], with its own store (dedup + outbox).
#[async_trait]
trait Endpoint: Send + Sync {
    fn channel(&self) -> &str;
    fn name(&self) -> &str;
    fn store(&self) -> &InMemoryStore;
    /// Handles one message; `false` when it must be delivered again later.
    async fn handle(&self, message: &Message) -> Result<bool, StoreError>;
}

struct ParticipantEndpoint<Ctx> {
    participant: Participant<Ctx>,
    ctx: Arc<tokio::sync::Mutex<Ctx>>,
    store: InMemoryStore,
    clock: ManualClock,
}

#[async_trait]
impl<Ctx: Clone + Send + 'static> Endpoint for ParticipantEndpoint<Ctx> {
    fn channel(&self) -> &str {
        self.participant.channel()
    }
    fn name(&self) -> &str {
        self.participant.name()
    }
    fn store(&self) -> &InMemoryStore {
        &self.store
    }

    async fn handle(&self, message: &Message) -> Result<bool, StoreError> {
        // The context lock is held from the dedup check to the commit: one "transaction".
        let mut ctx = self.ctx.lock().await;
        let handled = handle_command(
            &self.participant,
            &mut ctx,
            &self.store,
            message,
            self.clock.now(),
        )
        .await?;
        Ok(!matches!(handled, CommandHandled::Retry))
    }
}

/// What a participant did with one command (see [`handle_command`]).
#[derive(Debug)]
pub(crate) enum CommandHandled {
    /// Received before: nothing done.
    Duplicate,
    /// A transient failure: nothing committed; deliver it again later.
    Retry,
    /// Committed with the dedup record: the reply (if any) is in the outbox.
    Committed {
        /// The reply written to the outbox.
        reply: Option<Message>,
        /// Why the command was set aside, when it was.
        dead_letter: Option<String>,
        /// What the handling came to (see [`Dispatch::outcome`](crate::participant::Dispatch::outcome)).
        outcome: &'static str,
    },
}

/// Handles one command as a participant with a database would, in one "transaction": the
/// dedup check, the handler's changes to `ctx`, the dedup record and the reply commit
/// together, and a handler that fails transiently or refuses leaves `ctx` as it was.
pub(crate) async fn handle_command<Ctx: Clone + Send + 'static>(
    participant: &Participant<Ctx>,
    ctx: &mut Ctx,
    store: &InMemoryStore,
    message: &Message,
    now: Timestamp,
) -> Result<CommandHandled, StoreError> {
    let consumed = Consumed {
        consumer: participant.name().to_owned(),
        message_id: message.id,
    };
    if store.is_received(&consumed) {
        return Ok(CommandHandled::Duplicate);
    }
    // What a rollback returns to.
    let before = ctx.clone();
    let dispatch = participant.dispatch_at(ctx, message, now).await;
    if dispatch.retry.is_some() {
        *ctx = before;
        return Ok(CommandHandled::Retry);
    }
    if dispatch.undo_writes {
        *ctx = before;
    }
    let mut unit = UnitOfWork::consuming(&consumed.consumer, consumed.message_id);
    unit.outbox.extend(dispatch.reply.clone());
    if let Some(reason) = &dispatch.dead_letter {
        unit.dead_letters.push(DeadLetter {
            consumer: consumed.consumer,
            message: message.clone(),
            reason: reason.clone(),
            at: now,
        });
    }
    store.commit(unit).await?;
    Ok(CommandHandled::Committed {
        outcome: dispatch.outcome(),
        reply: dispatch.reply,
        dead_letter: dispatch.dead_letter,
    })
}

/// Why the in-memory runtime stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RuntimeError {
    /// The orchestrator failed.
    #[error(transparent)]
    Orchestrator(#[from] OrchestratorError),
    /// The relay failed.
    #[error(transparent)]
    Relay(#[from] RelayError),
    /// A store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The transport failed.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The system kept producing work past the step limit (a livelock?).
    #[error("no quiescence after {0} rounds")]
    NoQuiescence(usize),
}

/// A whole saga system in one process: an orchestrator and participants over an in-memory
/// transport, with a manual clock. [`InMemoryRuntime::run_until_idle`] pumps messages until
/// nothing moves; [`InMemoryRuntime::advance`] moves time and fires due timers.
pub struct InMemoryRuntime {
    orchestrator: Orchestrator<InMemoryStore>,
    transport: Arc<InMemoryTransport>,
    participants: Vec<Box<dyn Endpoint>>,
    clock: ManualClock,
    /// Orchestrator reply deliveries, counted by outcome (for assertions in tests).
    handled: Mutex<Vec<Handled>>,
}

impl std::fmt::Debug for InMemoryRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InMemoryRuntime")
            .field("orchestrator", &self.orchestrator)
            .field(
                "participants",
                &self
                    .participants
                    .iter()
                    .map(|p| p.name())
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

const GROUP: &str = "default";
const BATCH: usize = 64;
const MAX_ROUNDS: usize = 100_000;

impl InMemoryRuntime {
    /// A runtime around `orchestrator` (whose clock is replaced by the runtime's manual
    /// clock) over `transport`.
    pub fn new(orchestrator: Orchestrator<InMemoryStore>, transport: InMemoryTransport) -> Self {
        let clock = ManualClock::starting_at(Timestamp(1_700_000_000_000));
        Self {
            orchestrator: orchestrator.with_clock(Arc::new(clock.clone())),
            transport: Arc::new(transport),
            participants: Vec::new(),
            clock,
            handled: Mutex::new(Vec::new()),
        }
    }

    /// Adds a participant whose handlers run against `ctx`. Like a database transaction, a
    /// handler's changes to `ctx` are undone when it fails transiently or refuses (see
    /// [`HandlerError`](crate::participant::HandlerError)): `ctx` is cloned before each command.
    pub fn participant<Ctx: Clone + Send + 'static>(
        mut self,
        participant: Participant<Ctx>,
        ctx: Arc<tokio::sync::Mutex<Ctx>>,
    ) -> Self {
        self.participants.push(Box::new(ParticipantEndpoint {
            participant,
            ctx,
            store: InMemoryStore::new(),
            clock: self.clock.clone(),
        }));
        self
    }

    /// The orchestrator.
    pub fn orchestrator(&self) -> &Orchestrator<InMemoryStore> {
        &self.orchestrator
    }

    /// The transport.
    pub fn transport(&self) -> &InMemoryTransport {
        &self.transport
    }

    /// The manual clock.
    pub fn clock(&self) -> &ManualClock {
        &self.clock
    }

    /// What every reply delivery to the orchestrator did, in order.
    pub fn handled(&self) -> Vec<Handled> {
        guard(&self.handled).clone()
    }

    /// Dead letters of every participant and of the orchestrator.
    pub async fn dead_letters(&self) -> Result<Vec<DeadLetter>, StoreError> {
        let mut all = self.orchestrator.store().dead_letters().await?;
        for endpoint in &self.participants {
            all.extend(endpoint.store().dead_letters().await?);
        }
        Ok(all)
    }

    /// One round: relay every outbox, deliver to participants, deliver replies, fire due
    /// timers. Returns how many things happened.
    pub async fn step(&self) -> Result<usize, RuntimeError> {
        let mut work = relay_batch(
            self.orchestrator.store().as_ref(),
            self.transport.as_ref(),
            BATCH,
        )
        .await?
        .total();
        for endpoint in &self.participants {
            work += relay_batch(endpoint.store(), self.transport.as_ref(), BATCH)
                .await?
                .total();
            let deliveries = self
                .transport
                .receive(endpoint.channel(), GROUP, BATCH, Duration::ZERO)
                .await?;
            for delivery in deliveries {
                if endpoint.handle(&delivery.message).await? {
                    self.transport
                        .ack(endpoint.channel(), GROUP, &delivery)
                        .await?;
                } else {
                    self.transport
                        .release(endpoint.channel(), GROUP, &delivery, Duration::ZERO)
                        .await?;
                }
                work += 1;
            }
        }
        let replies = self.orchestrator.reply_channel().to_owned();
        for delivery in self
            .transport
            .receive(&replies, GROUP, BATCH, Duration::ZERO)
            .await?
        {
            let handled = self.orchestrator.handle_reply(&delivery.message).await?;
            guard(&self.handled).push(handled);
            self.transport.ack(&replies, GROUP, &delivery).await?;
            work += 1;
        }
        work += self.orchestrator.fire_due_timers(BATCH).await?;
        Ok(work)
    }

    /// Pumps until a round does nothing; returns the rounds taken.
    pub async fn run_until_idle(&self) -> Result<usize, RuntimeError> {
        for round in 0..MAX_ROUNDS {
            if self.step().await? == 0 {
                return Ok(round);
            }
        }
        Err(RuntimeError::NoQuiescence(MAX_ROUNDS))
    }

    /// Moves the clock forward by `by` and pumps until idle.
    pub async fn advance(&self, by: Duration) -> Result<(), RuntimeError> {
        self.clock.advance(by);
        self.run_until_idle().await?;
        Ok(())
    }

    /// Moves the clock past every pending timer, repeatedly, until no saga waits on a timer
    /// (or `max` has passed in total).
    pub async fn run_timers_until_idle(&self, max: Duration) -> Result<(), RuntimeError> {
        let start = self.clock.now();
        self.run_until_idle().await?;
        loop {
            let next = self
                .orchestrator
                .store()
                .due_timers(Timestamp(u64::MAX), 1)
                .await?;
            let Some(timer) = next.first() else {
                return Ok(());
            };
            if timer.due.as_millis().saturating_sub(start.as_millis())
                > u64::try_from(max.as_millis()).unwrap_or(u64::MAX)
            {
                return Ok(());
            }
            if timer.due > self.clock.now() {
                self.clock.set(timer.due);
            }
            self.run_until_idle().await?;
        }
    }
}
