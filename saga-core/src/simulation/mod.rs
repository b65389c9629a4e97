//! Seeded simulation of a whole saga system in one process: the orchestrator, participants
//! with their own state, the stores, a network and a clock, all driven by one seed.
//!
//! Each seed builds a fresh system from a [`Scenario`] (the participants' records and the
//! requests to make), then lets the seed decide everything that can happen next: which
//! message in transit is delivered (so messages arrive in any order; the orchestrator takes
//! replies alone or several as one batch, as the durable consumers do), whether one is lost,
//! delivered twice or delayed past a saga's timeout, whether a participant's database fails
//! a command for a while, when a timer fires, when a request comes in, and when the
//! orchestrator or a participant crashes — between two transactions, losing only what was not
//! committed (a message handled but not yet acknowledged is delivered again; an outbox row
//! published but not yet marked is published again). Time only moves when nothing else can
//! happen, to the next timer, delayed message, request or restart.
//!
//! After a stretch of faults they stop: crashed nodes restart, everything in transit is
//! delivered, and an operator retries each parked saga (up to three times). Then the run is
//! checked:
//!
//! - every saga ended `completed` or `compensated`;
//! - every saga's timeline keeps the rules [`crate::explore`] checks (each compensation
//!   once, in reverse order, only of a step that ran; nothing compensated and no
//!   compensatable step run after the pivot; a completed saga undid nothing);
//! - no message was dead-lettered, and none is left without a consumer;
//! - the invariants the scenario's author adds over the participants' records (for FTGO: an
//!   approved order has a confirmed ticket and an authorization, no effect applied twice,
//!   no record left in a `*_PENDING` state).
//!
//! The same seed always makes the same run. A failing seed is run again with its trace on,
//! and reported with the command that replays it ([`Simulation::replay_command`]).
//!
//! ```
//! # use std::time::Duration;
//! # use saga_core::message::CommandMeta;
//! # use saga_core::orchestrator::Orchestrator;
//! # use saga_core::participant::Participant;
//! # use saga_core::simulation::{Request, Scenario, Simulation, Start};
//! # use saga_core::{saga, Command, Reply, SagaId};
//! # use serde::{Deserialize, Serialize};
//! # #[derive(Clone, Serialize, Deserialize)] struct Data;
//! # #[derive(Debug, Serialize, Deserialize, Command)]
//! # #[command(channel = "bank", reply = Done)] struct Charge;
//! # #[derive(Debug, Serialize, Deserialize, Reply)] struct Done;
//! # fn charge(_: &Data) -> Charge { Charge }
//! # saga! { saga Pay(Data) { pivot charge { invoke: charge } } }
//! /// The bank's records: one entry per charge made.
//! #[derive(Clone, Default)]
//! struct Bank {
//!     charges: Vec<SagaId>,
//! }
//!
//! fn simulation(bank: Participant<Bank>) -> Simulation<Bank> {
//!     Simulation::new(|store| Orchestrator::new(store, "replies").register::<Pay>())
//!         .participant(bank, |world: &mut Bank| world)
//!         .scenario(|_rng| {
//!             Scenario::new(Bank::default()).request(Request::new("pay", Duration::ZERO, |_| {
//!                 Ok(Start::saga::<Pay>(Data))
//!             }))
//!         })
//!         .invariant("charged exactly once", |ending| match ending.world.charges.len() {
//!             1 => Ok(()),
//!             n => Err(format!("charged {n} times")),
//!         })
//! }
//!
//! // A bank that charges for every command it gets: when a reply is lost, the saga sends
//! // the charge again (a new message, so deduplication lets it through).
//! let naive = Participant::new("bank", "bank").handle_fn(
//!     |bank: &mut Bank, _: Charge, meta: &CommandMeta| {
//!         bank.charges.extend(meta.saga_id);
//!         Ok(Done)
//!     },
//! );
//! let report = simulation(naive).run(0..200);
//! assert!(report.failure.is_some_and(|f| f.problem.contains("charged 2 times")));
//!
//! // Charging once per saga passes every seed.
//! let once = Participant::new("bank", "bank").handle_fn(
//!     |bank: &mut Bank, _: Charge, meta: &CommandMeta| {
//!         if let Some(saga) = meta.saga_id
//!             && !bank.charges.contains(&saga)
//!         {
//!             bank.charges.push(saga);
//!         }
//!         Ok(Done)
//!     },
//! );
//! assert_eq!(simulation(once).check(0..200).seeds, 200);
//! ```

mod rng;
mod run;

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

pub use rng::SimRng;

use crate::definition::Saga;
use crate::engine::{HistoryEvent, SagaStatus};
use crate::ids::{SagaId, Timestamp};
use crate::memory::{CommandHandled, InMemoryStore, handle_command};
use crate::message::Message;
use crate::orchestrator::{Orchestrator, OrchestratorError, PreparedStart};
use crate::participant::Participant;
use crate::ports::StoreError;

/// Builds the orchestrator over its store, at the start and at every restart.
type BuildOrchestrator = dyn Fn(Arc<InMemoryStore>) -> Orchestrator<InMemoryStore> + Send + Sync;
type BuildScenario<W> = dyn Fn(&mut SimRng) -> Scenario<W> + Send + Sync;
type Check<W> = dyn Fn(&Ending<'_, W>) -> Result<(), String> + Send + Sync;

/// A simulation of one saga system (see the module docs).
pub struct Simulation<W> {
    orchestrator: Arc<BuildOrchestrator>,
    participants: Vec<Box<dyn Endpoint<W>>>,
    scenario: Arc<BuildScenario<W>>,
    invariants: Vec<(String, Box<Check<W>>)>,
    faults: Faults,
    fault_steps: usize,
    max_steps: usize,
    replay: String,
}

impl<W> fmt::Debug for Simulation<W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Simulation")
            .field(
                "participants",
                &self
                    .participants
                    .iter()
                    .map(|p| p.name())
                    .collect::<Vec<_>>(),
            )
            .field(
                "invariants",
                &self.invariants.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .field("faults", &self.faults)
            .field("fault_steps", &self.fault_steps)
            .finish_non_exhaustive()
    }
}

/// The most of each fault a seed may inject. Each seed turns every kind on or off and picks
/// its rate at random up to these (so some seeds are calm and some are storms).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Faults {
    /// Chance that a published message is lost.
    pub drop: f64,
    /// Chance that a published message is delivered twice.
    pub duplicate: f64,
    /// Chance that a published message is held back, up to [`Faults::max_delay`].
    pub delay: f64,
    /// The longest a message is held back: past a step's timeout, so a command can arrive
    /// after its saga stopped waiting and a reply after the saga timed out.
    pub max_delay: Duration,
    /// Chance, per delivery to a participant, that its database fails the command for a
    /// while (nothing is committed; the message comes back later).
    pub participant_failure: f64,
    /// Chance, after each transaction, that the node that ran it crashes before its next one
    /// (before acknowledging the message, or before marking the outbox rows it published).
    pub crash: f64,
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            drop: 0.1,
            duplicate: 0.2,
            delay: 0.2,
            max_delay: 2 * crate::definition::DEFAULT_REPLY_TIMEOUT,
            participant_failure: 0.1,
            crash: 0.05,
        }
    }
}

impl Faults {
    /// No faults at all.
    pub fn none() -> Self {
        Self {
            drop: 0.0,
            duplicate: 0.0,
            delay: 0.0,
            max_delay: Duration::ZERO,
            participant_failure: 0.0,
            crash: 0.0,
        }
    }

    /// This seed's faults: each kind on (at a random rate up to the maximum) or off.
    fn for_seed(&self, rng: &mut SimRng) -> Self {
        let mut pick = |max: f64| match rng.chance(0.5) {
            true => max * rng.fraction(),
            false => 0.0,
        };
        Self {
            drop: pick(self.drop),
            duplicate: pick(self.duplicate),
            delay: pick(self.delay),
            max_delay: self.max_delay,
            participant_failure: pick(self.participant_failure),
            crash: pick(self.crash),
        }
    }
}

/// What one seed starts from: the participants' records and the requests to make.
pub struct Scenario<W> {
    world: W,
    requests: Vec<Request<W>>,
}

impl<W> fmt::Debug for Scenario<W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scenario")
            .field("requests", &self.requests)
            .finish_non_exhaustive()
    }
}

impl<W> Scenario<W> {
    /// A scenario over `world`, the participants' records.
    pub fn new(world: W) -> Self {
        Self {
            world,
            requests: Vec::new(),
        }
    }

    /// Adds a request.
    pub fn request(mut self, request: Request<W>) -> Self {
        self.requests.push(request);
        self
    }
}

type RunRequest<W> = dyn FnOnce(&mut W) -> Result<Start, String> + Send;

/// A request a service takes (placing an order, cancelling one): in one transaction it
/// changes the records and starts a saga, or refuses.
pub struct Request<W> {
    label: String,
    after: Duration,
    run: Box<RunRequest<W>>,
}

impl<W> fmt::Debug for Request<W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Request")
            .field("label", &self.label)
            .field("after", &self.after)
            .finish_non_exhaustive()
    }
}

impl<W> Request<W> {
    /// A request named `label` (it names its saga in traces and in the [`Ending`]) that
    /// arrives `after` the run starts (or later, while the orchestrator is down). `run`
    /// changes the records and returns the saga to start, or refuses with a reason (its
    /// changes are then undone).
    pub fn new(
        label: impl Into<String>,
        after: Duration,
        run: impl FnOnce(&mut W) -> Result<Start, String> + Send + 'static,
    ) -> Self {
        Self {
            label: label.into(),
            after,
            run: Box::new(run),
        }
    }
}

type Prepare = dyn FnOnce(&Orchestrator<InMemoryStore>, Timestamp) -> Result<PreparedStart, OrchestratorError>
    + Send;

/// The saga a [`Request`] starts.
pub struct Start {
    saga_type: &'static str,
    prepare: Box<Prepare>,
}

impl fmt::Debug for Start {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Start")
            .field("saga_type", &self.saga_type)
            .finish_non_exhaustive()
    }
}

impl Start {
    /// Starts saga `S` with `data`.
    pub fn saga<S: Saga>(data: S::Data) -> Self {
        Self {
            saga_type: S::definition().name(),
            prepare: Box::new(move |orchestrator, now| orchestrator.prepare_start::<S>(data, now)),
        }
    }
}

/// How a run ended, for the invariants.
#[derive(Debug)]
pub struct Ending<'a, W> {
    /// The participants' records.
    pub world: &'a W,
    /// Every request, in the order they came in.
    pub requests: &'a [RequestOutcome],
    /// Every saga started, in the order they started.
    pub sagas: &'a [SimSaga],
}

impl<W> Ending<'_, W> {
    /// The saga request `label` started.
    pub fn saga(&self, label: &str) -> Option<&SimSaga> {
        self.sagas.iter().find(|s| s.request == label)
    }
}

/// What became of a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestOutcome {
    /// Its label.
    pub label: String,
    /// The saga it started, or why it was refused.
    pub outcome: Result<SagaId, String>,
}

/// A saga at the end of a run.
#[derive(Clone, Debug, PartialEq)]
pub struct SimSaga {
    /// The label of the request that started it.
    pub request: String,
    /// Its id.
    pub saga_id: SagaId,
    /// Its type.
    pub saga_type: String,
    /// The definition version it ran on.
    pub version: String,
    /// Its status.
    pub status: SagaStatus,
    /// Its step, or the step it stopped at.
    pub current_step: Option<String>,
    /// Its last error.
    pub last_error: Option<String>,
    /// Its timeline.
    pub history: Vec<HistoryEvent>,
}

/// What a simulation found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SimulationReport {
    /// Seeds run.
    pub seeds: u64,
    /// Sagas started, over all seeds.
    pub sagas: u64,
    /// How the sagas ended (`completed`, `compensated`), over all seeds.
    pub endings: BTreeMap<String, u64>,
    /// Faults injected and events seen, by kind, over all seeds.
    pub events: BTreeMap<String, u64>,
    /// The first failing seed (the lowest of those found).
    pub failure: Option<SeedFailure>,
}

impl SimulationReport {
    fn merge(&mut self, run: &SeedRun) {
        self.seeds += 1;
        self.sagas += u64::try_from(run.sagas.len()).unwrap_or(u64::MAX);
        for saga in &run.sagas {
            *self
                .endings
                .entry(saga.status.as_str().to_owned())
                .or_default() += 1;
        }
        for (kind, count) in &run.events {
            *self.events.entry((*kind).to_owned()).or_default() += count;
        }
    }
}

impl fmt::Display for SimulationReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} seeds, {} sagas", self.seeds, self.sagas)?;
        for (ending, count) in &self.endings {
            write!(f, ", {count} {ending}")?;
        }
        let events: Vec<String> = self
            .events
            .iter()
            .map(|(kind, count)| format!("{kind} {count}"))
            .collect();
        write!(f, "; {}", events.join(", "))
    }
}

/// A seed that broke an invariant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeedFailure {
    /// The seed.
    pub seed: u64,
    /// What is wrong.
    pub problem: String,
    /// The command that runs this seed again.
    pub replay: String,
    /// What happened, one line per event.
    pub trace: Vec<String>,
}

impl fmt::Display for SeedFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "seed {} failed: {}", self.seed, self.problem)?;
        writeln!(f, "replay it with: {}", self.replay)?;
        writeln!(f, "trace:")?;
        for line in &self.trace {
            writeln!(f, "  {line}")?;
        }
        Ok(())
    }
}

/// One seed's run.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SeedRun {
    /// The seed.
    pub seed: u64,
    /// What is wrong, if anything.
    pub problem: Option<String>,
    /// The sagas at the end.
    pub sagas: Vec<SimSaga>,
    /// Faults injected and events seen, by kind.
    pub events: BTreeMap<&'static str, u64>,
    /// What happened (empty unless the run was traced).
    pub trace: Vec<String>,
}

/// The seeds to run: `SAGA_SIM_SEED=n` runs that one seed; `SAGA_SIM_SEEDS=n` runs `0..n`
/// (a longer run); otherwise `0..default`.
pub fn seeds_from_env(default: u64) -> Range<u64> {
    let number = |name: &str| {
        std::env::var(name)
            .ok()
            .and_then(|value| value.trim().parse::<u64>().ok())
    };
    if let Some(seed) = number("SAGA_SIM_SEED") {
        return seed..seed.saturating_add(1);
    }
    0..number("SAGA_SIM_SEEDS").unwrap_or(default)
}

impl<W: Clone + Send + 'static> Simulation<W> {
    /// A simulation whose orchestrator `orchestrator` builds over its store (at the start
    /// and after every crash).
    pub fn new(
        orchestrator: impl Fn(Arc<InMemoryStore>) -> Orchestrator<InMemoryStore> + Send + Sync + 'static,
    ) -> Self {
        Self {
            orchestrator: Arc::new(orchestrator),
            participants: Vec::new(),
            scenario: Arc::new(|_| {
                panic!("a simulation needs a scenario: call Simulation::scenario")
            }),
            invariants: Vec::new(),
            faults: Faults::default(),
            fault_steps: 120,
            max_steps: 20_000,
            replay: "SAGA_SIM_SEED={seed} cargo test".to_owned(),
        }
    }

    /// Adds a participant whose records are the part of the world `records` picks.
    pub fn participant<Ctx: Clone + Send + 'static>(
        mut self,
        participant: Participant<Ctx>,
        records: fn(&mut W) -> &mut Ctx,
    ) -> Self {
        self.participants.push(Box::new(Lensed {
            participant,
            records,
        }));
        self
    }

    /// How each seed starts: the records and the requests, drawn with the seed's generator.
    pub fn scenario(
        mut self,
        scenario: impl Fn(&mut SimRng) -> Scenario<W> + Send + Sync + 'static,
    ) -> Self {
        self.scenario = Arc::new(scenario);
        self
    }

    /// Adds a check of how every run ends.
    pub fn invariant(
        mut self,
        name: impl Into<String>,
        check: impl Fn(&Ending<'_, W>) -> Result<(), String> + Send + Sync + 'static,
    ) -> Self {
        self.invariants.push((name.into(), Box::new(check)));
        self
    }

    /// The most faults a seed may inject (default: [`Faults::default`]).
    pub fn faults(mut self, faults: Faults) -> Self {
        self.faults = faults;
        self
    }

    /// How many events a seed runs with faults before they stop (default 120).
    pub fn fault_steps(mut self, steps: usize) -> Self {
        self.fault_steps = steps;
        self
    }

    /// The command that replays a seed, printed with a failure; `{seed}` is replaced.
    pub fn replay_command(mut self, template: impl Into<String>) -> Self {
        self.replay = template.into();
        self
    }

    /// Runs `seeds` (on every core) and reports the lowest failing seed, traced.
    pub fn run(&self, seeds: Range<u64>) -> SimulationReport
    where
        W: Sync,
    {
        let next = AtomicU64::new(seeds.start);
        let failed_at = AtomicU64::new(u64::MAX);
        let report = Mutex::new(SimulationReport::default());
        let failures = Mutex::new(Vec::new());
        let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mutant = crate::engine::mutants::current();
        std::thread::scope(|scope| {
            for _ in 0..workers {
                scope.spawn(|| {
                    crate::engine::mutants::set(mutant);
                    loop {
                        let seed = next.fetch_add(1, Ordering::Relaxed);
                        if seed >= seeds.end || seed > failed_at.load(Ordering::Relaxed) {
                            return;
                        }
                        let run = self.run_seed_traced(seed, false);
                        if run.problem.is_some() {
                            failed_at.fetch_min(seed, Ordering::Relaxed);
                            lock(&failures).push(seed);
                        }
                        lock(&report).merge(&run);
                    }
                });
            }
        });
        let mut report = report.into_inner().unwrap_or_else(|p| p.into_inner());
        if let Some(seed) = lock(&failures).iter().min().copied() {
            let traced = self.run_seed_traced(seed, true);
            report.failure = Some(SeedFailure {
                seed,
                problem: traced.problem.unwrap_or_else(|| {
                    "the seed failed untraced but passed traced: the run is not deterministic"
                        .to_owned()
                }),
                replay: self.replay.replace("{seed}", &seed.to_string()),
                trace: traced.trace,
            });
        }
        report
    }

    /// Runs `seeds` and panics with the first failing seed, its replay command and trace.
    #[track_caller]
    pub fn check(&self, seeds: Range<u64>) -> SimulationReport
    where
        W: Sync,
    {
        let report = self.run(seeds);
        if let Some(failure) = &report.failure {
            panic!("{report}\n{failure}");
        }
        report
    }

    /// Runs one seed with its trace.
    pub fn run_seed(&self, seed: u64) -> SeedRun {
        self.run_seed_traced(seed, true)
    }

    fn run_seed_traced(&self, seed: u64, traced: bool) -> SeedRun {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime,
            Err(err) => {
                return SeedRun {
                    seed,
                    problem: Some(format!("no runtime to simulate on: {err}")),
                    ..SeedRun::default()
                };
            }
        };
        /// Random ids again once the run is over, however it ends.
        struct RandomIdsAfter;
        impl Drop for RandomIdsAfter {
            fn drop(&mut self) {
                crate::ids::simulate_ids(None);
            }
        }
        let run = run::Run::new(self, seed, traced);
        crate::ids::simulate_ids(Some(run.id_source()));
        let _reset = RandomIdsAfter;
        runtime.block_on(run.run())
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A participant and where its records live in the world.
#[async_trait]
trait Endpoint<W>: Send + Sync {
    fn name(&self) -> &str;
    fn channel(&self) -> &str;
    async fn handle(
        &self,
        world: &mut W,
        store: &InMemoryStore,
        message: &Message,
        now: Timestamp,
    ) -> Result<CommandHandled, StoreError>;
}

struct Lensed<Ctx, W> {
    participant: Participant<Ctx>,
    records: fn(&mut W) -> &mut Ctx,
}

#[async_trait]
impl<Ctx: Clone + Send + 'static, W: Send + 'static> Endpoint<W> for Lensed<Ctx, W> {
    fn name(&self) -> &str {
        self.participant.name()
    }

    fn channel(&self) -> &str {
        self.participant.channel()
    }

    async fn handle(
        &self,
        world: &mut W,
        store: &InMemoryStore,
        message: &Message,
        now: Timestamp,
    ) -> Result<CommandHandled, StoreError> {
        handle_command(
            &self.participant,
            (self.records)(world),
            store,
            message,
            now,
        )
        .await
    }
}
