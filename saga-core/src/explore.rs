//! Exhaustive exploration of one saga definition: every way its steps can answer, up to a
//! bound, each path checked against the invariants a saga must keep.
//!
//! From a start, the explorer branches at every point on what can happen next: each command
//! awaiting its reply succeeds (the participant acted), fails (it did not), or times out —
//! before the participant acted or after; a scheduled retry fires; a delivered reply comes
//! again; an operator cancels it before its pivot; a parked saga gets an operator `retry` or
//! `skip`. States already seen are not explored twice. On every path it checks:
//!
//! - the saga ends completed, compensated, or parked in `failed` with a reason;
//! - a compensated saga undid every compensatable step that took effect, each once, in
//!   reverse order, and nothing that never ran (skipped by its condition, never reached, or
//!   refused by its participant);
//! - a completed saga undid nothing;
//! - once the pivot succeeded, no compensation and no compensatable step runs;
//! - a duplicate reply changes nothing.
//!
//! Locks a step takes (its `*_PENDING` records) are released by its compensation or by the
//! saga completing, so "each effect undone once, or the saga completed" is also "every lock
//! released".
//!
//! ```
//! # use saga_core::explore::Exploration;
//! # use saga_core::{saga, Command, Reply, StepFailure};
//! # use serde::{Deserialize, Serialize};
//! # #[derive(Clone, Serialize, Deserialize)] struct Data;
//! # #[derive(Debug, Serialize, Deserialize, Command)]
//! # #[command(channel = "bank", reply = Done)] struct Charge;
//! # #[derive(Debug, Serialize, Deserialize, Reply)] struct Done;
//! # fn charge(_: &Data) -> Charge { Charge }
//! # fn note(_: &mut Data) -> Result<(), StepFailure> { Ok(()) }
//! # saga! { saga Pay(Data) { compensatable note { local: note, compensate: local(note) } pivot charge { invoke: charge } } }
//! let report = Exploration::<Pay>::new(Data).success::<Charge>(Done).check();
//! assert!(report.paths > 1);
//! ```

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt::{self, Debug};

use crate::definition::{IncomingReply, Saga, SagaDefinition, StepKind};
use crate::engine::{
    self, BranchState, HistoryEvent, OperatorCommand, OperatorRequest, Outcome, Pending,
    SagaAction, SagaEvent, SagaInstance, SagaState, SagaStatus, SagaTimer,
};
use crate::ids::{RequestId, SagaId, Timestamp};
use crate::invariants::{self, StepKinds};
use crate::message::{Command, CommandFailed, Reply};

/// Explores every outcome of one saga definition from `data` (see the module docs).
pub struct Exploration<S: Saga> {
    data: S::Data,
    /// A success reply per command type, as JSON and as the Rust the script prints.
    successes: BTreeMap<&'static str, (IncomingReply, String)>,
    max_events: usize,
    failures_per_step: u32,
}

impl<S: Saga> Debug for Exploration<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Exploration")
            .field("saga", &S::definition().name())
            .field("successes", &self.successes.keys().collect::<Vec<_>>())
            .field("max_events", &self.max_events)
            .field("failures_per_step", &self.failures_per_step)
            .finish()
    }
}

/// What an exploration found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExplorationReport {
    /// Paths followed to their end (terminal, parked, or the bound).
    pub paths: usize,
    /// Distinct states reached.
    pub states: usize,
    /// How the paths ended: `completed`, `compensated`, `failed` (parked), `bound`.
    pub endings: BTreeMap<String, usize>,
    /// The first broken invariant, with the unit-test DSL script that reaches it.
    pub violation: Option<Violation>,
}

/// A broken invariant and how to reach it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// What is wrong.
    pub problem: String,
    /// The unit-test DSL calls that reach it, one per line, ready to follow
    /// `SagaTest::<S>::given(data)`: each command asserted by its step (its payload in a
    /// comment), each reply as the Rust that builds it (from its `Debug` form).
    pub script: Vec<String>,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}\nreached by:", self.problem)?;
        writeln!(f, "SagaTest::<_>::given(data)")?;
        for line in &self.script {
            writeln!(f, "    {line}")?;
        }
        Ok(())
    }
}

/// What the world outside the saga did on one path.
#[derive(Clone, Default, PartialEq, Eq)]
struct World {
    /// Forward steps that took effect at their participant (or ran locally).
    effective: BTreeSet<String>,
    /// Forward steps whose command was sent (they may have taken effect).
    sent: BTreeSet<String>,
    /// Failures (failure replies and timeouts) given to each step on this path.
    failures: BTreeMap<String, u32>,
    /// Operator actions given on this path.
    operator: u32,
    /// The last reply delivered, to deliver again.
    last_reply: Option<(RequestId, IncomingReply)>,
    /// The reply to the request that last timed out (and the Rust the script prints), to
    /// deliver late.
    late: Option<(RequestId, String, IncomingReply, String)>,
}

/// One state of the search: the saga, the world, and the path that led here.
#[derive(Clone)]
struct Node<D> {
    instance: SagaInstance<D>,
    history: Vec<HistoryEvent>,
    world: World,
    script: Vec<String>,
    /// Events on the path so far (the script also holds the command assertions).
    events: usize,
    now: Timestamp,
}

/// Something that can happen next.
#[derive(Clone, Debug)]
enum Choice {
    Succeed {
        request: RequestId,
        step: String,
    },
    Fail {
        request: RequestId,
        step: String,
    },
    TimeOut {
        request: RequestId,
        attempt: u32,
        step: String,
        acted: bool,
        due: Timestamp,
    },
    FireRetry {
        request: RequestId,
        due: Timestamp,
    },
    Duplicate,
    /// The reply to a request that timed out arrives after all.
    Late,
    Operator(OperatorCommand),
    /// Fail the step (a retriable one, a compensation) or time it out (the pivot) again and
    /// again, firing its retries, until the saga moves on or parks.
    Exhaust {
        step: String,
    },
}

impl<S: Saga> Exploration<S> {
    /// Explores the saga started with `data`: at most 60 events per path, and at most two
    /// failures (failure replies or timeouts) per step — enough to show a retry, a
    /// compensation's retry and a turn back; steps whose retry limit is two or less also
    /// reach their park.
    pub fn new(data: S::Data) -> Self {
        Self {
            data,
            successes: BTreeMap::new(),
            max_events: 60,
            failures_per_step: 2,
        }
    }

    /// The reply a participant gives command `C` when it succeeds. Every command the saga
    /// sends and waits for needs one; failures are generic (`CommandFailed`).
    #[track_caller]
    pub fn success<C: Command>(mut self, reply: impl Reply + Debug) -> Self {
        let incoming = IncomingReply::from_reply(&reply)
            .unwrap_or_else(|err| panic!("cannot encode the reply to {}: {err}", C::TYPE));
        self.successes.insert(C::TYPE, (incoming, rust_of(&reply)));
        self
    }

    /// The most events one path may take.
    pub fn max_events(mut self, events: usize) -> Self {
        self.max_events = events;
        self
    }

    /// How many failures one step may be given on one path.
    pub fn failures_per_step(mut self, failures: u32) -> Self {
        self.failures_per_step = failures;
        self
    }

    /// Explores, and panics with the first broken invariant and the script reaching it.
    #[track_caller]
    pub fn check(&self) -> ExplorationReport {
        let report = self.run();
        if let Some(violation) = &report.violation {
            panic!(
                "{}: {} paths, {} states explored; {violation}",
                S::definition().name(),
                report.paths,
                report.states
            );
        }
        report
    }

    /// Explores every path (up to the bounds) and reports the first broken invariant.
    pub fn run(&self) -> ExplorationReport {
        let definition = S::definition();
        let now = Timestamp(1_700_000_000_000);
        let mut report = ExplorationReport::default();
        let start = match engine::start(definition, SagaId::new(), self.data.clone(), now) {
            Ok(start) => start,
            Err(err) => {
                report.violation = Some(Violation {
                    problem: format!("the saga does not start: {err}"),
                    script: Vec::new(),
                });
                return report;
            }
        };
        let mut world = World::default();
        note_actions(&mut world, &start.actions, &start.history);
        let root = Node {
            script: expect_lines(&start.actions).collect(),
            events: 0,
            instance: start.instance,
            history: start.history,
            world,
            now,
        };
        let mut seen: HashSet<String> = HashSet::new();
        let mut stack = vec![root];
        while let Some(node) = stack.pop() {
            let key = state_key(definition, &node);
            if !seen.insert(key) {
                continue;
            }
            report.states += 1;
            let status = node.instance.state.status;
            let choices = self.choices(&node);
            if status.is_terminal() || choices.is_empty() || node.events >= self.max_events {
                report.paths += 1;
                let ending = match status {
                    _ if status.is_finished() => status.as_str(),
                    _ if node.events >= self.max_events => "bound",
                    _ => "stuck",
                };
                *report.endings.entry(ending.to_owned()).or_default() += 1;
                if let Some(problem) = self.final_problem(&node) {
                    report.violation = Some(Violation {
                        problem,
                        script: node.script,
                    });
                    return report;
                }
                continue;
            }
            for choice in choices.into_iter().rev() {
                match self.step(&node, &choice) {
                    Ok(next) => stack.push(next),
                    Err((problem, script)) => {
                        report.violation = Some(Violation { problem, script });
                        return report;
                    }
                }
            }
        }
        report
    }

    /// What can happen next to the saga at `node`.
    fn choices(&self, node: &Node<S::Data>) -> Vec<Choice> {
        let state = &node.instance.state;
        if state.status.is_terminal() {
            return Vec::new();
        }
        if state.status == SagaStatus::Failed {
            if node.world.operator >= 2 {
                return Vec::new();
            }
            return vec![
                Choice::Operator(OperatorCommand::Retry),
                Choice::Operator(OperatorCommand::Skip),
            ];
        }
        let mut choices = Vec::new();
        for (step, pending, attempt, deadline) in waits(&node.instance.state) {
            let failures = node.world.failures.get(&step).copied().unwrap_or(0);
            match pending {
                Pending::Reply { request_id } => {
                    choices.push(Choice::Succeed {
                        request: request_id,
                        step: step.clone(),
                    });
                    if failures < self.failures_per_step {
                        choices.push(Choice::Fail {
                            request: request_id,
                            step: step.clone(),
                        });
                        let exhaustible = match definition_kind(S::definition(), &step) {
                            _ if state.direction == engine::Direction::Backward => true,
                            Some(StepKind::Retriable) => true,
                            Some(StepKind::Pivot) => deadline.is_some(),
                            _ => false,
                        };
                        if exhaustible && failures == 0 {
                            choices.push(Choice::Exhaust { step: step.clone() });
                        }
                        if let Some(due) = deadline {
                            for acted in [false, true] {
                                choices.push(Choice::TimeOut {
                                    request: request_id,
                                    attempt,
                                    step: step.clone(),
                                    acted,
                                    due,
                                });
                            }
                        }
                    }
                }
                Pending::Retry { request_id } => choices.push(Choice::FireRetry {
                    request: request_id,
                    due: deadline.unwrap_or(node.now),
                }),
            }
        }
        if node.world.last_reply.is_some() {
            choices.push(Choice::Duplicate);
        }
        let awaited = |request: RequestId| {
            waits(state).iter().any(|(_, pending, ..)| {
                *pending
                    == Pending::Reply {
                        request_id: request,
                    }
            })
        };
        // A reply to the request awaited again (resent after its timeout) is no longer late.
        if node.world.late.as_ref().is_some_and(|(r, ..)| !awaited(*r)) {
            choices.push(Choice::Late);
        }
        if self.can_cancel(node) {
            choices.push(Choice::Operator(OperatorCommand::Cancel));
        }
        choices
    }

    /// Whether an operator may cancel the saga at `node`: running forward, with only
    /// compensatable steps run or awaited so far (before its pivot), within the path's
    /// operator budget.
    fn can_cancel(&self, node: &Node<S::Data>) -> bool {
        let definition = S::definition();
        let state = &node.instance.state;
        let compensatable =
            |name: &str| definition_kind(definition, name) == Some(StepKind::Compensatable);
        state.status == SagaStatus::Running
            && state.direction == engine::Direction::Forward
            && node.world.operator < 2
            && state.completed_steps.iter().all(|s| compensatable(s))
            && state.current_step.as_deref().is_some_and(compensatable)
            && state.branches.iter().all(|b| compensatable(&b.step))
    }

    /// Applies `choice` at `node`: the next node, or the invariant it breaks.
    fn step(
        &self,
        node: &Node<S::Data>,
        choice: &Choice,
    ) -> Result<Node<S::Data>, (String, Vec<String>)> {
        let definition = S::definition();
        let mut next = node.clone();
        let (event, line) = match choice {
            Choice::Succeed { request, step } => {
                let command = self.command_of(step, next.instance.state.direction);
                let Some((reply, shown)) = command.and_then(|c| self.successes.get(c)) else {
                    let problem = format!(
                        "no success reply for {} (step `{step}`): add `.success::<{}>(..)`",
                        command.unwrap_or("its command"),
                        command.unwrap_or("TheCommand")
                    );
                    return Err((problem, next.script));
                };
                if next.instance.state.direction == engine::Direction::Forward {
                    next.world.effective.insert(step.clone());
                }
                next.world.last_reply = Some((*request, reply.clone()));
                (
                    SagaEvent::Reply {
                        request_id: *request,
                        reply: reply.clone(),
                    },
                    format!(".reply_to({step:?}, {shown})"),
                )
            }
            Choice::Fail { request, step } => {
                *next.world.failures.entry(step.clone()).or_default() += 1;
                let reply = IncomingReply::from_reply(&CommandFailed::new("refused"))
                    .map_err(|err| (err.to_string(), next.script.clone()))?;
                next.world.last_reply = Some((*request, reply.clone()));
                (
                    SagaEvent::Reply {
                        request_id: *request,
                        reply,
                    },
                    format!(".fail_step({step:?}, \"refused\")"),
                )
            }
            Choice::TimeOut {
                request,
                attempt,
                step,
                acted,
                due,
            } => {
                *next.world.failures.entry(step.clone()).or_default() += 1;
                if *acted && next.instance.state.direction == engine::Direction::Forward {
                    next.world.effective.insert(step.clone());
                }
                next.world.late = self.late_reply(*request, step, *acted, &next);
                next.now = next.now.max(*due);
                let line = match acted {
                    true => format!(".time_out_step({step:?}) // after its participant acted"),
                    false => format!(".time_out_step({step:?})"),
                };
                (
                    SagaEvent::Timer(SagaTimer::Timeout {
                        request_id: *request,
                        attempt: *attempt,
                    }),
                    line,
                )
            }
            Choice::FireRetry { request, due } => {
                next.now = next.now.max(*due);
                (
                    SagaEvent::Timer(SagaTimer::RetryDue {
                        request_id: *request,
                    }),
                    ".fire_retry()".to_owned(),
                )
            }
            Choice::Duplicate => {
                let Some((request, reply)) = next.world.last_reply.clone() else {
                    return Err(("no reply to duplicate".to_owned(), next.script));
                };
                let event = SagaEvent::Reply {
                    request_id: request,
                    reply,
                };
                next.script.push(".duplicate_last_reply()".to_owned());
                next.events += 1;
                return match engine::transition(definition, &next.instance, &event, next.now) {
                    Ok(Outcome::Ignored(_)) => {
                        next.world.last_reply = None;
                        Ok(next)
                    }
                    Ok(Outcome::Applied(t)) => Err((
                        format!("a duplicate reply was applied: {:?}", t.history),
                        next.script,
                    )),
                    Err(err) => Err((
                        format!("the engine refused a duplicate: {err}"),
                        next.script,
                    )),
                };
            }
            Choice::Late => {
                let Some((request, step, reply, shown)) = next.world.late.take() else {
                    return Err(("no late reply to deliver".to_owned(), next.script));
                };
                next.script
                    .push(format!(".late_reply_to({step:?}, {shown})"));
                let event = SagaEvent::Reply {
                    request_id: request,
                    reply,
                };
                return match engine::transition(definition, &next.instance, &event, next.now) {
                    Ok(Outcome::Ignored(_)) => Ok(next),
                    Ok(Outcome::Applied(t)) => Err((
                        format!(
                            "a late reply to step `{step}` (its command timed out) was applied: \
                             {:?}",
                            t.history
                        ),
                        next.script,
                    )),
                    Err(err) => Err((
                        format!("the engine refused a late reply: {err}"),
                        next.script,
                    )),
                };
            }
            Choice::Exhaust { step } => {
                next.world
                    .failures
                    .insert(step.clone(), self.failures_per_step);
                for _ in 0..1_000 {
                    if next.instance.state.status != SagaStatus::Running
                        && next.instance.state.status != SagaStatus::Compensating
                    {
                        break;
                    }
                    let wait = self.wait_of(&next, step);
                    let Some((pending, attempt, deadline)) = wait else {
                        break;
                    };
                    let pivot = definition_kind(definition, step) == Some(StepKind::Pivot)
                        && next.instance.state.direction == engine::Direction::Forward;
                    let choice = match (pending, pivot) {
                        (Pending::Reply { request_id }, true) => Choice::TimeOut {
                            request: request_id,
                            attempt,
                            step: step.clone(),
                            acted: false,
                            due: deadline.unwrap_or(next.now),
                        },
                        (Pending::Reply { request_id }, false) => Choice::Fail {
                            request: request_id,
                            step: step.clone(),
                        },
                        (Pending::Retry { request_id }, _) => Choice::FireRetry {
                            request: request_id,
                            due: deadline.unwrap_or(next.now),
                        },
                    };
                    next = self.step(&next, &choice)?;
                    next.world
                        .failures
                        .insert(step.clone(), self.failures_per_step);
                }
                return Ok(next);
            }
            Choice::Operator(command) => {
                next.world.operator += 1;
                let line = match command {
                    OperatorCommand::Cancel => ".cancel(\"explorer\")".to_owned(),
                    _ => format!(".operator(OperatorCommand::{command:?})"),
                };
                (
                    SagaEvent::Operator(OperatorRequest::new(*command, "explorer", "")),
                    line,
                )
            }
        };
        next.script.push(line);
        next.events += 1;
        let outcome = match engine::transition(definition, &next.instance, &event, next.now) {
            Ok(outcome) => outcome,
            Err(err) => return Err((format!("the engine refused {event:?}: {err}"), next.script)),
        };
        let Outcome::Applied(transition) = outcome else {
            // A live event the engine ignores leaves the saga waiting forever.
            return Err((
                format!("the engine ignored a live event: {event:?}"),
                next.script,
            ));
        };
        note_actions(&mut next.world, &transition.actions, &transition.history);
        next.script.extend(expect_lines(&transition.actions));
        next.instance = transition.instance;
        next.history.extend(transition.history);
        // No transition that follows the pivot's success (or contains it) undoes anything or
        // runs a compensatable step.
        if let Some(problem) =
            invariants::after_pivot_problem(&StepKinds::of_definition(definition), &next.history)
        {
            return Err((problem, next.script));
        }
        Ok(next)
    }

    /// What step `step` waits for at `node`, if it waits.
    fn wait_of(
        &self,
        node: &Node<S::Data>,
        step: &str,
    ) -> Option<(Pending, u32, Option<Timestamp>)> {
        waits(&node.instance.state)
            .into_iter()
            .find(|(waiting, ..)| waiting == step)
            .map(|(_, pending, attempt, deadline)| (pending, attempt, deadline))
    }

    /// What the participant of a timed-out request answers when its reply comes late: the
    /// command's success reply when it acted, else a failure.
    fn late_reply(
        &self,
        request: RequestId,
        step: &str,
        acted: bool,
        node: &Node<S::Data>,
    ) -> Option<(RequestId, String, IncomingReply, String)> {
        let success = self
            .command_of(step, node.instance.state.direction)
            .and_then(|command| self.successes.get(command));
        let (reply, shown) = match (acted, success) {
            (true, Some((reply, shown))) => (reply.clone(), shown.clone()),
            _ => (
                IncomingReply::from_reply(&CommandFailed::new("refused")).ok()?,
                "CommandFailed::new(\"refused\")".to_owned(),
            ),
        };
        Some((request, step.to_owned(), reply, shown))
    }

    /// The command type the step sends in `direction`.
    fn command_of(&self, step: &str, direction: engine::Direction) -> Option<&'static str> {
        let (_, step) = S::definition().step(step)?;
        let action = match direction {
            engine::Direction::Forward => step.action(),
            engine::Direction::Backward => step.compensation()?,
        };
        match action {
            crate::definition::Action::Command(command) => Some(command.command_type),
            _ => None,
        }
    }

    /// The invariants of a path's end.
    fn final_problem(&self, node: &Node<S::Data>) -> Option<String> {
        let definition = S::definition();
        let state = &node.instance.state;
        let world = &node.world;
        let ran = |step: &str| world.sent.contains(step) || world.effective.contains(step);
        if let Some(problem) = invariants::timeline_problem(
            &StepKinds::of_definition(definition),
            &node.history,
            state.status,
            state.last_error.as_deref(),
            &ran,
        ) {
            return Some(problem);
        }
        if state.status != SagaStatus::Compensated {
            return None;
        }
        let compensated = invariants::compensated(&node.history);
        let undoable = |name: &&String| {
            definition
                .step(name)
                .is_some_and(|(_, s)| s.compensation().is_some())
        };
        let missing: Vec<&String> = world
            .effective
            .iter()
            .filter(undoable)
            .filter(|s| !compensated.contains(&s.as_str()))
            .collect();
        match missing.is_empty() {
            true => None,
            false => Some(format!(
                "the saga is compensated but {missing:?} took effect and were not undone \
                 (their locks stay held)"
            )),
        }
    }
}

/// `value` as the Rust that builds it, from its `Debug` form: an enum variant gets its type's
/// name (`CardAuthorization::Authorized { .. }`) and a string literal `.into()`.
fn rust_of<R: Debug>(value: &R) -> String {
    let full = std::any::type_name::<R>();
    let name = full
        .split('<')
        .next()
        .and_then(|path| path.rsplit("::").next())
        .unwrap_or(full);
    let debug = format!("{value:?}");
    let mut rust = String::with_capacity(debug.len() + name.len());
    let named = debug
        .strip_prefix(name)
        .is_some_and(|rest| !rest.starts_with(|c: char| c.is_alphanumeric() || c == '_'));
    if !named {
        rust.push_str(name);
        rust.push_str("::");
    }
    let mut in_string = false;
    let mut escaped = false;
    for c in debug.chars() {
        rust.push(c);
        match c {
            _ if escaped => escaped = false,
            '\\' if in_string => escaped = true,
            '"' if in_string => {
                in_string = false;
                rust.push_str(".into()");
            }
            '"' => in_string = true,
            _ => {}
        }
    }
    rust
}

/// What the saga waits for — its own wait, or one per branch of a parallel group — as
/// `(step, pending, attempt, deadline)`.
fn waits(state: &SagaState) -> Vec<(String, Pending, u32, Option<Timestamp>)> {
    if state.branches.is_empty() {
        let step = state.current_step.clone().unwrap_or_default();
        return state
            .pending
            .map(|pending| (step, pending, state.attempt, state.deadline))
            .into_iter()
            .collect();
    }
    state
        .branches
        .iter()
        .filter_map(|b| match b.state {
            BranchState::Waiting { pending } => {
                Some((b.step.clone(), pending, b.attempt, b.deadline))
            }
            _ => None,
        })
        .collect()
}

fn definition_kind<D>(definition: &SagaDefinition<D>, step: &str) -> Option<StepKind> {
    definition.step(step).map(|(_, s)| s.kind())
}

/// The unit-test DSL lines that assert the commands `actions` send (payloads in comments).
fn expect_lines(actions: &[SagaAction]) -> impl Iterator<Item = String> + '_ {
    actions.iter().filter_map(|action| match action {
        SagaAction::Send(command) => Some(format!(
            ".{}({:?}) // {} {}",
            match command.compensation {
                true => "expect_compensation_of",
                false => "expect_command_of",
            },
            command.step,
            command.command_type,
            command.payload
        )),
        _ => None,
    })
}

/// Records the forward commands `actions` send and the local steps `history` ran.
fn note_actions(world: &mut World, actions: &[SagaAction], history: &[HistoryEvent]) {
    for action in actions {
        if let SagaAction::Send(command) = action
            && !command.compensation
        {
            world.sent.insert(command.step.clone());
        }
    }
    for event in history {
        if let HistoryEvent::StepSucceeded { step } = event {
            world.effective.insert(step.clone());
        }
    }
}

/// Whether the pivot of `definition` has succeeded in `history`.
fn pivot_succeeded<D>(definition: &SagaDefinition<D>, history: &[HistoryEvent]) -> bool {
    let Some(pivot) = definition.pivot() else {
        return false;
    };
    history
        .iter()
        .any(|e| matches!(e, HistoryEvent::StepSucceeded { step } if step == pivot.name()))
}

/// A state's identity: the saga's state and data, and what the world did.
fn state_key<D: serde::Serialize>(definition: &SagaDefinition<D>, node: &Node<D>) -> String {
    let data = serde_json::to_string(&node.instance.data).unwrap_or_default();
    let state = serde_json::to_string(&node.instance.state).unwrap_or_default();
    let compensated: Vec<&HistoryEvent> = node
        .history
        .iter()
        .filter(|e| {
            matches!(
                e,
                HistoryEvent::StepCompensated { .. } | HistoryEvent::StepSkipped { .. }
            )
        })
        .collect();
    let world = &node.world;
    format!(
        "{state}|{data}|{:?}|{:?}|{:?}|{}|{:?}|{:?}|{compensated:?}|{}",
        world.effective,
        world.sent,
        world.failures,
        world.operator,
        world.last_reply,
        world
            .late
            .as_ref()
            .map(|(request, step, ..)| (request, step)),
        pivot_succeeded(definition, &node.history)
    )
}

#[cfg(test)]
mod tests {
    use super::rust_of;

    #[derive(Debug)]
    #[allow(dead_code, clippy::enum_variant_names)] // read through Debug; a tricky name
    enum Answer {
        Declined { reason: String },
        Fine,
        AnswerLater,
    }

    #[derive(Debug)]
    #[allow(dead_code)] // read through Debug only
    struct Created {
        id: i64,
        note: Option<String>,
    }

    #[test]
    fn replies_print_as_the_rust_that_builds_them() {
        let declined = Answer::Declined {
            reason: "over \"the\" limit".to_owned(),
        };
        assert_eq!(
            rust_of(&declined),
            r#"Answer::Declined { reason: "over \"the\" limit".into() }"#
        );
        assert_eq!(rust_of(&Answer::Fine), "Answer::Fine");
        // A variant whose name starts with its type's is still a variant.
        assert_eq!(rust_of(&Answer::AnswerLater), "Answer::AnswerLater");
        let created = Created {
            id: 55,
            note: Some("hot".to_owned()),
        };
        assert_eq!(
            rust_of(&created),
            r#"Created { id: 55, note: Some("hot".into()) }"#
        );
    }
}
