//! One seed's run: the system, the network between its nodes, and the loop that lets the
//! seed pick what happens next.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use super::{Faults, RequestOutcome, RunRequest, SeedRun, SimRng, SimSaga, Simulation};
use crate::clock::{Clock, ManualClock};
use crate::engine::{
    BranchState, OperatorCommand, OperatorRequest, Pending, SagaState, SagaStatus, SagaTimer,
};
use crate::ids::{MessageId, SagaId, Timestamp};
use crate::invariants::{self, StepKinds};
use crate::memory::{CommandHandled, InMemoryStore};
use crate::message::{CommandFailed, Message, headers};
use crate::orchestrator::{Handled, Orchestrator};
use crate::ports::SagaStore;

/// Node 0 is the orchestrator; participant `i` is node `i + 1`.
const ORCHESTRATOR: usize = 0;
const BATCH: usize = 64;
const OPERATOR_ROUNDS: u32 = 3;

/// A message published and not yet acknowledged by its consumer.
struct InTransit {
    message: Message,
    /// When it can be delivered.
    ready: Timestamp,
    /// The node that consumes its channel, if any does.
    consumer: Option<usize>,
}

/// A process of the system: its store survives a crash; the rest does not.
struct Node {
    name: String,
    store: Arc<InMemoryStore>,
    /// While it is down, when it comes back.
    down_until: Option<Timestamp>,
}

/// A request not yet made.
struct Waiting<W> {
    label: String,
    at: Timestamp,
    run: Box<RunRequest<W>>,
}

#[derive(Clone, Copy, Debug)]
enum Action {
    Deliver(usize),
    /// Several replies handled as one batch, as the durable consumers do.
    DeliverReplies,
    Relay(usize),
    FireTimers,
    Request,
}

/// The readable trace: numbered messages, sagas by the request that started them.
#[derive(Default)]
struct Trace {
    enabled: bool,
    lines: Vec<String>,
    messages: HashMap<MessageId, usize>,
    sagas: HashMap<String, String>,
}

impl Trace {
    fn message(&mut self, message: &Message) -> String {
        let next = self.messages.len() + 1;
        let number = *self.messages.entry(message.id).or_insert(next);
        let kind = message
            .headers
            .get(headers::MESSAGE_TYPE)
            .unwrap_or("message");
        let saga = message
            .headers
            .get(headers::SAGA_ID)
            .and_then(|id| self.sagas.get(id))
            .map_or_else(String::new, |label| format!(" [{label}"));
        let step = match (saga.is_empty(), message.headers.get(headers::SAGA_STEP)) {
            (false, Some(step)) => format!(" / {step}]"),
            (false, None) => "]".to_owned(),
            (true, _) => String::new(),
        };
        format!("m{number} {kind}{saga}{step}")
    }

    fn saga(&self, saga_id: SagaId) -> String {
        self.sagas
            .get(&saga_id.to_string())
            .cloned()
            .unwrap_or_else(|| saga_id.to_string())
    }
}

pub(super) struct Run<'s, W> {
    sim: &'s Simulation<W>,
    seed: u64,
    rng: SimRng,
    faults: Faults,
    clock: ManualClock,
    start: Timestamp,
    world: W,
    orchestrator: Option<Orchestrator<InMemoryStore>>,
    reply_channel: String,
    nodes: Vec<Node>,
    network: Vec<InTransit>,
    requests: VecDeque<Waiting<W>>,
    outcomes: Vec<RequestOutcome>,
    sagas: Vec<(SagaId, String)>,
    calm: bool,
    events: BTreeMap<&'static str, u64>,
    trace: Trace,
}

/// Why a run stopped before its checks.
type Stop = String;

impl<'s, W: Clone + Send + 'static> Run<'s, W> {
    pub(super) fn new(sim: &'s Simulation<W>, seed: u64, traced: bool) -> Self {
        let mut rng = SimRng::new(seed);
        let faults = sim.faults.for_seed(&mut rng);
        let scenario = (sim.scenario)(&mut rng);
        let start = Timestamp(1_700_000_000_000);
        let clock = ManualClock::starting_at(start);
        let store = Arc::new(InMemoryStore::new());
        let orchestrator =
            (sim.orchestrator)(store.clone()).with_clock(Arc::new(clock.clone()) as Arc<dyn Clock>);
        let reply_channel = orchestrator.reply_channel().to_owned();
        let mut nodes = vec![Node {
            name: "orchestrator".to_owned(),
            store,
            down_until: None,
        }];
        nodes.extend(sim.participants.iter().map(|p| Node {
            name: p.name().to_owned(),
            store: Arc::new(InMemoryStore::new()),
            down_until: None,
        }));
        let mut requests: Vec<Waiting<W>> = scenario
            .requests
            .into_iter()
            .map(|r| Waiting {
                label: r.label,
                at: Timestamp(start.as_millis() + millis(r.after)),
                run: r.run,
            })
            .collect();
        requests.sort_by_key(|r| r.at);
        let mut run = Self {
            sim,
            seed,
            rng,
            faults,
            clock,
            start,
            world: scenario.world,
            orchestrator: Some(orchestrator),
            reply_channel,
            nodes,
            network: Vec::new(),
            requests: requests.into(),
            outcomes: Vec::new(),
            sagas: Vec::new(),
            calm: false,
            events: BTreeMap::new(),
            trace: Trace {
                enabled: traced,
                ..Trace::default()
            },
        };
        let faults = run.faults;
        run.note(|_| {
            format!(
                "seed {seed}: drop {:.2}, duplicate {:.2}, delay {:.2}, participant failure {:.2}, \
                 crash {:.2}",
                faults.drop,
                faults.duplicate,
                faults.delay,
                faults.participant_failure,
                faults.crash
            )
        });
        run
    }

    /// Where the run's ids come from: a generator of their own (so a trace does not shift
    /// the other decisions) and the run's clock.
    pub(super) fn id_source(&self) -> (SimRng, ManualClock) {
        (SimRng::new(self.seed ^ 0x05ee_d1d5), self.clock.clone())
    }

    pub(super) async fn run(mut self) -> SeedRun {
        let driven = self.drive().await;
        let sagas = self.load_sagas().await;
        let problem = match (&driven, &sagas) {
            (Err(stop), _) | (Ok(()), Err(stop)) => Some(stop.clone()),
            (Ok(()), Ok(sagas)) => self.check(sagas).await.err(),
        };
        if let Some(problem) = &problem {
            let problem = problem.clone();
            self.note(|_| format!("FAILED: {problem}"));
        }
        SeedRun {
            seed: self.seed,
            problem,
            sagas: sagas.unwrap_or_default(),
            events: self.events,
            trace: self.trace.lines,
        }
    }

    /// Every saga started, as it stands now, in the order they started.
    async fn load_sagas(&self) -> Result<Vec<SimSaga>, Stop> {
        let mut sagas = Vec::with_capacity(self.sagas.len());
        for (saga_id, label) in &self.sagas {
            sagas.push(self.saga(*saga_id, label).await?);
        }
        Ok(sagas)
    }

    /// Lets the seed pick events until the system is quiet after the faults stopped.
    async fn drive(&mut self) -> Result<(), Stop> {
        let mut operator_rounds = 0;
        for step in 1..=self.sim.max_steps {
            if !self.calm && step > self.sim.fault_steps && self.requests.is_empty() {
                self.calm_down();
            }
            self.restart_due();
            let actions = self.enabled().await?;
            if actions.is_empty() {
                if let Some(next) = self.next_time().await? {
                    // Sometimes a little further, so that several messages are ready at once
                    // (and timers are polled late, as they are).
                    let slack = match self.rng.chance(0.5) {
                        true => self.rng.below(30),
                        false => 0,
                    };
                    self.clock.set(Timestamp(next.as_millis() + slack));
                } else if !self.calm {
                    self.calm_down();
                } else if operator_rounds < OPERATOR_ROUNDS && self.retry_parked().await? {
                    operator_rounds += 1;
                } else {
                    return Ok(());
                }
                continue;
            }
            let action = actions[self.rng.index(actions.len())];
            self.perform(action).await?;
        }
        Err(format!(
            "no quiet after {} events: the system keeps itself busy",
            self.sim.max_steps
        ))
    }

    fn now(&self) -> Timestamp {
        self.clock.now()
    }

    fn up(&self, node: usize) -> bool {
        self.nodes.get(node).is_some_and(|n| n.down_until.is_none())
    }

    fn count(&mut self, event: &'static str) {
        *self.events.entry(event).or_default() += 1;
    }

    /// Adds a trace line, when the run is traced.
    fn note(&mut self, line: impl FnOnce(&mut Trace) -> String) {
        if !self.trace.enabled {
            return;
        }
        let elapsed = self
            .now()
            .as_millis()
            .saturating_sub(self.start.as_millis());
        let text = line(&mut self.trace);
        self.trace.lines.push(format!(
            "[+{}.{:03}s] {text}",
            elapsed / 1000,
            elapsed % 1000
        ));
    }

    fn calm_down(&mut self) {
        self.calm = true;
        for node in &mut self.nodes {
            if node.down_until.is_some() {
                node.down_until = Some(Timestamp(0));
            }
        }
        self.note(|_| "faults stop".to_owned());
    }

    /// Brings back the nodes whose downtime is over; an orchestrator starts afresh on its
    /// store.
    fn restart_due(&mut self) {
        let now = self.now();
        for index in 0..self.nodes.len() {
            if self.nodes[index].down_until.is_none_or(|until| until > now) {
                continue;
            }
            self.nodes[index].down_until = None;
            if index == ORCHESTRATOR {
                let clock = Arc::new(self.clock.clone()) as Arc<dyn Clock>;
                self.orchestrator = Some(
                    (self.sim.orchestrator)(self.nodes[index].store.clone()).with_clock(clock),
                );
            }
            let name = self.nodes[index].name.clone();
            self.note(|_| format!("{name} restarts"));
        }
    }

    fn crash(&mut self, node: usize, what_is_lost: &str) {
        let down = self.rng.between(100, 5_000);
        let until = Timestamp(self.now().as_millis() + down);
        self.nodes[node].down_until = Some(until);
        if node == ORCHESTRATOR {
            self.orchestrator = None;
        }
        self.count("crashes");
        let name = self.nodes[node].name.clone();
        self.note(|_| format!("{name} CRASHES {what_is_lost} (down {down} ms)"));
    }

    /// Whether the node that just committed crashes before its next step.
    fn crashes(&mut self) -> bool {
        !self.calm && self.rng.chance(self.faults.crash)
    }

    async fn enabled(&mut self) -> Result<Vec<Action>, Stop> {
        let now = self.now();
        let mut actions: Vec<Action> = self
            .network
            .iter()
            .enumerate()
            .filter(|(_, t)| t.ready <= now && t.consumer.is_some_and(|c| self.up(c)))
            .map(|(i, _)| Action::Deliver(i))
            .collect();
        // As likely as delivering any one of them on its own.
        for _ in 1..self.ready_replies().len() {
            actions.push(Action::DeliverReplies);
        }
        for node in 0..self.nodes.len() {
            if self.up(node)
                && !self.nodes[node]
                    .store
                    .unpublished(1)
                    .await
                    .map_err(stop)?
                    .is_empty()
            {
                actions.push(Action::Relay(node));
            }
        }
        if self.up(ORCHESTRATOR) {
            let store = &self.nodes[ORCHESTRATOR].store;
            if !store.due_timers(now, 1).await.map_err(stop)?.is_empty() {
                actions.push(Action::FireTimers);
            }
            if self.requests.front().is_some_and(|r| r.at <= now) {
                actions.push(Action::Request);
            }
        }
        Ok(actions)
    }

    /// When something next becomes possible: a delayed message, a timer, a request, a
    /// restart.
    async fn next_time(&self) -> Result<Option<Timestamp>, Stop> {
        let now = self.now();
        let timer = self.nodes[ORCHESTRATOR]
            .store
            .due_timers(Timestamp(u64::MAX), 1)
            .await
            .map_err(stop)?
            .first()
            .map(|t| t.due);
        let next = self
            .network
            .iter()
            .filter(|t| t.consumer.is_some())
            .map(|t| t.ready)
            .chain(timer)
            .chain(self.requests.front().map(|r| r.at))
            .chain(self.nodes.iter().filter_map(|n| n.down_until))
            .filter(|at| *at > now)
            .min();
        Ok(next)
    }

    async fn perform(&mut self, action: Action) -> Result<(), Stop> {
        match action {
            Action::Deliver(index) => self.deliver(index).await,
            Action::DeliverReplies => self.deliver_replies().await,
            Action::Relay(node) => self.relay(node).await,
            Action::FireTimers => self.fire_timers().await,
            Action::Request => self.request().await,
        }
    }

    /// Delivers a message to its consumer, which handles it in one transaction and then
    /// acknowledges it — unless it crashes in between.
    async fn deliver(&mut self, index: usize) -> Result<(), Stop> {
        let Some(node) = self.network[index].consumer else {
            return Ok(());
        };
        let message = self.network[index].message.clone();
        let now = self.now();
        if node == ORCHESTRATOR {
            let Some(orchestrator) = &self.orchestrator else {
                return Ok(());
            };
            let handled = orchestrator
                .handle_reply(&message)
                .await
                .map_err(|err| format!("the orchestrator failed on a reply: {err}"))?;
            self.count("replies handled");
            self.note(|t| {
                format!(
                    "orchestrator <- {}: {}",
                    t.message(&message),
                    shown(&handled)
                )
            });
        } else {
            if !self.calm && self.rng.chance(self.faults.participant_failure) {
                let back = self.rng.between(50, 2_000);
                self.network[index].ready = Timestamp(now.as_millis() + back);
                self.count("participant failures");
                let name = self.nodes[node].name.clone();
                self.note(|t| {
                    format!(
                        "{name}: database unavailable, {} comes back in {back} ms",
                        t.message(&message)
                    )
                });
                return Ok(());
            }
            let endpoint = &self.sim.participants[node - 1];
            let store = self.nodes[node].store.clone();
            let handled = endpoint
                .handle(&mut self.world, &store, &message, now)
                .await
                .map_err(stop)?;
            self.count("commands handled");
            let name = self.nodes[node].name.clone();
            if let CommandHandled::Retry = handled {
                let back = self.rng.between(50, 2_000);
                self.network[index].ready = Timestamp(now.as_millis() + back);
                self.note(|t| {
                    format!(
                        "{name} <- {}: transient failure, again in {back} ms",
                        t.message(&message)
                    )
                });
                return Ok(());
            }
            self.note(|t| {
                let what = match &handled {
                    CommandHandled::Duplicate => "duplicate, dropped".to_owned(),
                    CommandHandled::Retry => String::new(),
                    CommandHandled::Committed {
                        reply: None,
                        dead_letter: None,
                        ..
                    } => "not run (its saga stopped waiting), no reply".to_owned(),
                    CommandHandled::Committed {
                        dead_letter: Some(why),
                        ..
                    } => format!("DEAD-LETTERED: {why}"),
                    CommandHandled::Committed {
                        reply: Some(reply),
                        outcome,
                        ..
                    } => {
                        let why = match reply.decode::<CommandFailed>() {
                            Ok(failed) if *outcome == "refused" => format!(" ({})", failed.reason),
                            _ => String::new(),
                        };
                        format!("{outcome}{why}, replies {}", t.message(reply))
                    }
                };
                format!("{name} <- {}: {what}", t.message(&message))
            });
        }
        if self.crashes() {
            self.crash(node, "before acknowledging: the message comes again");
        } else {
            self.network.remove(index);
        }
        Ok(())
    }

    /// The replies the orchestrator could be handed now, by position in the network.
    fn ready_replies(&self) -> Vec<usize> {
        if !self.up(ORCHESTRATOR) {
            return Vec::new();
        }
        let now = self.now();
        self.network
            .iter()
            .enumerate()
            .filter(|(_, t)| t.ready <= now && t.consumer == Some(ORCHESTRATOR))
            .map(|(i, _)| i)
            .collect()
    }

    /// Hands the orchestrator a few ready replies, in any order, as one batch
    /// ([`Orchestrator::handle_replies`]: one load, one commit, one by one what cannot
    /// share them), then acknowledges them all — unless it crashes first.
    async fn deliver_replies(&mut self) -> Result<(), Stop> {
        let mut ready = self.ready_replies();
        let most = u64::try_from(ready.len().min(8)).unwrap_or(8);
        let take = usize::try_from(self.rng.between(2, most)).unwrap_or(2);
        let mut batch = Vec::with_capacity(take);
        for _ in 0..take {
            batch.push(ready.swap_remove(self.rng.index(ready.len())));
        }
        let messages: Vec<Message> = batch
            .iter()
            .map(|&i| self.network[i].message.clone())
            .collect();
        let Some(orchestrator) = &self.orchestrator else {
            return Ok(());
        };
        let results = orchestrator.handle_replies(&messages).await;
        self.count("reply batches");
        for (message, result) in messages.iter().zip(results) {
            let handled =
                result.map_err(|err| format!("the orchestrator failed on a batch: {err}"))?;
            self.count("replies handled");
            self.note(|t| {
                format!(
                    "orchestrator <- {} (in a batch of {take}): {}",
                    t.message(message),
                    shown(&handled)
                )
            });
        }
        if self.crashes() {
            self.crash(ORCHESTRATOR, "before acknowledging a batch: it comes again");
            return Ok(());
        }
        batch.sort_unstable();
        for index in batch.into_iter().rev() {
            self.network.remove(index);
        }
        Ok(())
    }

    /// Publishes a node's outbox rows and marks them published — unless it crashes in
    /// between, and publishes them again after its restart.
    async fn relay(&mut self, node: usize) -> Result<(), Stop> {
        let store = self.nodes[node].store.clone();
        let entries = store.unpublished(BATCH).await.map_err(stop)?;
        for entry in &entries {
            self.publish(&entry.message);
        }
        if self.crashes() {
            self.crash(
                node,
                "before marking its outbox rows published: they go out again",
            );
            return Ok(());
        }
        let sequences: Vec<u64> = entries.iter().map(|e| e.sequence).collect();
        store.mark_published(&sequences).await.map_err(stop)
    }

    /// Puts a message on the network: lost, duplicated or delayed as the seed decides.
    fn publish(&mut self, message: &Message) {
        let consumer = if message.destination == self.reply_channel {
            Some(ORCHESTRATOR)
        } else {
            self.sim
                .participants
                .iter()
                .position(|p| p.channel() == message.destination)
                .map(|i| i + 1)
        };
        let faulty = !self.calm;
        if faulty && self.rng.chance(self.faults.drop) {
            self.count("messages lost");
            self.note(|t| format!("network LOSES {}", t.message(message)));
            return;
        }
        let copies = match faulty && self.rng.chance(self.faults.duplicate) {
            true => {
                self.count("messages duplicated");
                2
            }
            false => 1,
        };
        for _ in 0..copies {
            let delay = match faulty && self.rng.chance(self.faults.delay) {
                true => {
                    self.count("messages delayed");
                    self.rng.below(millis(self.faults.max_delay))
                }
                false => self.rng.below(20),
            };
            self.network.push(InTransit {
                message: message.clone(),
                ready: Timestamp(self.now().as_millis() + delay),
                consumer,
            });
            self.note(|t| {
                format!(
                    "publish {} to `{}`{}",
                    t.message(message),
                    message.destination,
                    match (copies, delay) {
                        (2, d) => format!(" (TWICE, this copy in {d} ms)"),
                        (_, d) if d >= 20 => format!(" (DELAYED {d} ms)"),
                        _ => String::new(),
                    }
                )
            });
        }
    }

    async fn fire_timers(&mut self) -> Result<(), Stop> {
        let now = self.now();
        let store = self.nodes[ORCHESTRATOR].store.clone();
        let due = store.due_timers(now, BATCH).await.map_err(stop)?;
        // Which of them the saga still waits for (a timer outlives the reply that beat it).
        let mut live = Vec::new();
        if self.trace.enabled {
            for timer in &due {
                let record = store.load(timer.saga_id).await.map_err(stop)?;
                live.push(record.is_some_and(|r| awaits(&r.state, &timer.timer)));
            }
        }
        let Some(orchestrator) = &self.orchestrator else {
            return Ok(());
        };
        orchestrator
            .fire_due_timers(BATCH)
            .await
            .map_err(|err| format!("the orchestrator failed firing timers: {err}"))?;
        self.count("timers fired");
        self.note(|t| {
            let fired: Vec<String> = due
                .iter()
                .zip(&live)
                .map(|(timer, live)| {
                    let kind = match timer.timer {
                        SagaTimer::Timeout { .. } => "timeout",
                        SagaTimer::RetryDue { .. } => "retry",
                    };
                    let stale = if *live { "" } else { " (stale)" };
                    format!("{kind} of {}{stale}", t.saga(timer.saga_id))
                })
                .collect();
            format!("timers fire: {}", fired.join(", "))
        });
        if self.crashes() {
            self.crash(ORCHESTRATOR, "after firing timers");
        }
        Ok(())
    }

    /// Makes the next request: its changes and the saga start commit together, or neither.
    async fn request(&mut self) -> Result<(), Stop> {
        let Some(waiting) = self.requests.pop_front() else {
            return Ok(());
        };
        let Some(orchestrator) = &self.orchestrator else {
            self.requests.push_front(waiting);
            return Ok(());
        };
        let before = self.world.clone();
        let label = waiting.label;
        let start = match (waiting.run)(&mut self.world) {
            Ok(start) => start,
            Err(reason) => {
                self.world = before;
                self.count("requests refused");
                self.note(|_| format!("request `{label}` refused: {reason}"));
                self.outcomes.push(RequestOutcome {
                    label,
                    outcome: Err(reason),
                });
                return Ok(());
            }
        };
        let saga_type = start.saga_type;
        let prepared = (start.prepare)(orchestrator, self.now())
            .map_err(|err| format!("request `{label}` could not start its saga: {err}"))?;
        self.nodes[ORCHESTRATOR]
            .store
            .commit(prepared.unit.clone())
            .await
            .map_err(stop)?;
        orchestrator.started(&prepared);
        let saga_id = prepared.saga_id;
        self.count("sagas started");
        self.trace.sagas.insert(saga_id.to_string(), label.clone());
        self.note(|_| format!("request `{label}` starts its {saga_type}"));
        self.sagas.push((saga_id, label.clone()));
        self.outcomes.push(RequestOutcome {
            label,
            outcome: Ok(saga_id),
        });
        if self.crashes() {
            self.crash(ORCHESTRATOR, "after starting a saga");
        }
        Ok(())
    }

    /// An operator retries every parked saga; whether there was one.
    async fn retry_parked(&mut self) -> Result<bool, Stop> {
        let Some(orchestrator) = &self.orchestrator else {
            return Ok(false);
        };
        let mut any = false;
        let mut lines = Vec::new();
        for (saga_id, label) in &self.sagas {
            let record = orchestrator.load(*saga_id).await.map_err(stop)?;
            if record.state.status != SagaStatus::Failed {
                continue;
            }
            any = true;
            let request =
                OperatorRequest::new(OperatorCommand::Retry, "simulation", "faults stopped");
            let result = orchestrator.operator(*saga_id, request).await;
            lines.push(match result {
                Ok(status) => format!(
                    "operator retries parked `{label}` ({}): now {}",
                    record.state.last_error.unwrap_or_default(),
                    status.as_str()
                ),
                Err(err) => format!("operator retry of `{label}` refused: {err}"),
            });
        }
        self.count_n("operator retries", lines.len());
        for line in lines {
            self.note(|_| line);
        }
        Ok(any)
    }

    fn count_n(&mut self, event: &'static str, n: usize) {
        if n > 0 {
            *self.events.entry(event).or_default() += u64::try_from(n).unwrap_or(u64::MAX);
        }
    }

    async fn saga(&self, saga_id: SagaId, label: &str) -> Result<SimSaga, Stop> {
        let store = &self.nodes[ORCHESTRATOR].store;
        let record = store
            .load(saga_id)
            .await
            .map_err(stop)?
            .ok_or_else(|| format!("saga `{label}` is not in the store"))?;
        let history = store
            .history(saga_id)
            .await
            .map_err(stop)?
            .into_iter()
            .map(|h| h.event)
            .collect();
        Ok(SimSaga {
            request: label.to_owned(),
            saga_id,
            saga_type: record.state.saga_type.clone(),
            version: record.state.definition_version.clone(),
            status: record.state.status,
            current_step: record.state.current_step.clone(),
            last_error: record.state.last_error.clone(),
            history,
        })
    }

    /// The checks of a quiet system (see the module docs).
    async fn check(&mut self, sagas: &[SimSaga]) -> Result<(), Stop> {
        if let Some(stuck) = self.network.iter().find(|t| t.consumer.is_none()) {
            let message = stuck.message.clone();
            let shown = self.trace.message(&message);
            return Err(format!(
                "{shown} to `{}` was never delivered: nothing consumes that channel",
                message.destination
            ));
        }
        let definitions =
            (self.sim.orchestrator)(self.nodes[ORCHESTRATOR].store.clone()).definitions();
        for saga in sagas {
            let label = &saga.request;
            if !saga.status.is_terminal() {
                return Err(format!(
                    "saga `{label}` ({}) ended {} at step {:?}: {}",
                    saga.saga_type,
                    saga.status.as_str(),
                    saga.current_step.as_deref().unwrap_or("-"),
                    saga.last_error.as_deref().unwrap_or("no error")
                ));
            }
            let steps = definitions
                .iter()
                .find(|d| d.saga_type == saga.saga_type && d.version == saga.version)
                .map(|d| StepKinds::of_graph(&d.graph))
                .ok_or_else(|| {
                    format!(
                        "saga `{label}` ran on version `{}` of {}, which the orchestrator does not \
                         register",
                        saga.version, saga.saga_type
                    )
                })?;
            let ran = |step: &str| invariants::ran_in(&saga.history, step);
            if let Some(problem) = invariants::timeline_problem(
                &steps,
                &saga.history,
                saga.status,
                saga.last_error.as_deref(),
                &ran,
            ) {
                return Err(format!("saga `{label}` ({}): {problem}", saga.saga_type));
            }
        }
        for node in &self.nodes {
            let dead = node.store.dead_letters().await.map_err(stop)?;
            if let Some(letter) = dead.first() {
                let shown = self.trace.message(&letter.message);
                return Err(format!(
                    "{} dead-lettered {shown}: {}",
                    node.name, letter.reason
                ));
            }
        }
        let ending = super::Ending {
            world: &self.world,
            requests: &self.outcomes,
            sagas,
        };
        for (name, check) in &self.sim.invariants {
            check(&ending).map_err(|problem| format!("invariant `{name}`: {problem}"))?;
        }
        Ok(())
    }
}

/// What handling a reply did, for the trace.
fn shown(handled: &Handled) -> String {
    match handled {
        Handled::Applied(status) => format!("applied, saga {}", status.as_str()),
        Handled::Ignored(why) => format!("ignored: {why}"),
        Handled::Duplicate => "duplicate, dropped".to_owned(),
        Handled::DeadLettered(why) => format!("DEAD-LETTERED: {why}"),
        Handled::Refused(why) => format!("refused: {why}"),
    }
}

/// Whether `state` waits for `timer`: its reply or retry, or a parallel branch's.
fn awaits(state: &SagaState, timer: &SagaTimer) -> bool {
    let request = match timer {
        SagaTimer::Timeout { request_id, .. } | SagaTimer::RetryDue { request_id } => *request_id,
    };
    let is = |pending: &Pending| match pending {
        Pending::Reply { request_id } | Pending::Retry { request_id } => *request_id == request,
    };
    state.pending.as_ref().is_some_and(is)
        || state
            .branches
            .iter()
            .any(|b| matches!(&b.state, BranchState::Waiting { pending } if is(pending)))
}

fn stop(err: impl std::fmt::Display) -> Stop {
    format!("a store failed: {err}")
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
