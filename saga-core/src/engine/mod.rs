//! The engine: a pure transition function `(definition, state, event) -> (state, actions)`.
//!
//! Nothing here does I/O or reads a clock. The orchestrator loads an instance, feeds it an
//! event with the current time, and commits the new state together with the returned actions
//! (commands to send, timers to schedule) in one local transaction.
//!
//! State refers to steps by **name**. The forward steps that have run are kept in
//! [`SagaState::completed_steps`]; when the saga turns back, that list is the compensation
//! stack, unwound from the end. The steps of a parallel group run as [`Branch`]es, each with
//! its own request, attempts and deadline (see `engine/parallel.rs`).

pub mod mutants;
mod parallel;

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use parallel::{Branch, BranchState};

use crate::definition::{
    Action, CommandAction, IncomingReply, SagaData, SagaDefinition, StepDefinition, StepKind,
    TimeoutAction,
};
use crate::ids::{RequestId, SagaId, Timestamp};
use crate::message::MessageError;

/// Where a saga instance is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SagaStatus {
    /// Built but not started yet (never stored).
    Created,
    /// Going forward.
    Running,
    /// Turning back: running compensations in reverse order.
    Compensating,
    /// Terminal: every step succeeded.
    Completed,
    /// Terminal: the saga turned back and every completed step was undone.
    Compensated,
    /// Parked: a retriable step or a compensation kept failing past its retry limit, or the
    /// watchdog found it stuck. An operator `retry` or `skip` moves it on.
    Failed,
}

impl SagaStatus {
    /// The lowercase name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Running => "running",
            Self::Compensating => "compensating",
            Self::Completed => "completed",
            Self::Compensated => "compensated",
            Self::Failed => "failed",
        }
    }

    /// Completed or compensated: nothing more will happen.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Compensated)
    }

    /// Terminal, or parked in `failed`: nothing more happens unless an operator acts. What
    /// a caller waiting for a saga waits for ([`Orchestrator::wait`](crate::orchestrator::Orchestrator::wait)).
    pub fn is_finished(self) -> bool {
        self.is_terminal() || self == Self::Failed
    }
}

impl std::str::FromStr for SagaStatus {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "created" => Self::Created,
            "running" => Self::Running,
            "compensating" => Self::Compensating,
            "completed" => Self::Completed,
            "compensated" => Self::Compensated,
            "failed" => Self::Failed,
            other => {
                return Err(format!(
                    "unknown saga status `{other}` (expected running, compensating, completed, \
                     compensated or failed)"
                ));
            }
        })
    }
}

impl fmt::Display for SagaStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which way the saga is moving.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Running steps.
    Forward,
    /// Running compensations.
    Backward,
}

/// What the saga is waiting for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Pending {
    /// The reply to the command sent with this request id.
    Reply {
        /// The outstanding request.
        request_id: RequestId,
    },
    /// The backoff timer, after which the command is sent again with this request id.
    Retry {
        /// The request id the retry will use.
        request_id: RequestId,
    },
}

/// Everything about a saga instance except its data.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SagaState {
    /// The instance id.
    pub saga_id: SagaId,
    /// The saga type (definition name).
    pub saga_type: String,
    /// The definition version the instance started with.
    pub definition_version: String,
    /// Where the saga is in its life.
    pub status: SagaStatus,
    /// Which way it is moving.
    pub direction: Direction,
    /// The step being run or compensated, by name.
    pub current_step: Option<String>,
    /// What it is waiting for.
    pub pending: Option<Pending>,
    /// When the pending reply times out or the pending retry is due.
    pub deadline: Option<Timestamp>,
    /// Attempts made at the current step or compensation.
    pub attempt: u32,
    /// The forward steps that ran, in order; the compensation stack when turning back.
    pub completed_steps: Vec<String>,
    /// Why the saga turned back, once it has.
    pub compensation_reason: Option<String>,
    /// The last error: why it is parked in `failed`, or the last failed attempt.
    pub last_error: Option<String>,
    /// The next request id to hand out.
    pub next_request_id: u64,
    /// Steps of its definition this instance does not run: steps added by a newer version
    /// that a [migration](crate::versions::Migration::skip_step) told instances started
    /// before it to skip.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skip_steps: Vec<String>,
    /// The steps of the parallel group in flight, each where it is; empty outside a group.
    /// While a group runs, `current_step`, `pending`, `deadline` and `attempt` are those of
    /// the branch whose deadline comes first (the saga's one timer).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub branches: Vec<Branch>,
}

/// A saga instance: its state and its typed data.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SagaInstance<D> {
    /// Everything but the data.
    pub state: SagaState,
    /// The saga data.
    pub data: D,
}

impl<D: SagaData> SagaInstance<D> {
    /// A new, not yet started instance of `definition`.
    pub fn new(definition: &SagaDefinition<D>, saga_id: SagaId, data: D) -> Self {
        Self {
            state: SagaState {
                saga_id,
                saga_type: definition.name().to_owned(),
                definition_version: definition.version().to_owned(),
                status: SagaStatus::Created,
                direction: Direction::Forward,
                current_step: None,
                pending: None,
                deadline: None,
                attempt: 0,
                completed_steps: Vec::new(),
                compensation_reason: None,
                last_error: None,
                next_request_id: 1,
                skip_steps: Vec::new(),
                branches: Vec::new(),
            },
            data,
        }
    }
}

/// A command an operator gives a saga.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OperatorCommand {
    /// Parked sagas only: try the current step or compensation again, with a fresh retry
    /// budget.
    Retry,
    /// Parked sagas only: treat the current step or compensation as done and move on.
    Skip,
    /// Running sagas before their pivot only: abort, and compensate the compensatable steps
    /// that ran (the one awaiting its reply included, since it may have taken effect) in
    /// reverse order.
    Cancel,
}

impl OperatorCommand {
    /// The lowercase name (`retry`, `skip`, `cancel`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Retry => "retry",
            Self::Skip => "skip",
            Self::Cancel => "cancel",
        }
    }
}

impl fmt::Display for OperatorCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for OperatorCommand {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "retry" => Ok(Self::Retry),
            "skip" => Ok(Self::Skip),
            "cancel" => Ok(Self::Cancel),
            other => Err(format!(
                "unknown operator command `{other}` (expected retry, skip or cancel)"
            )),
        }
    }
}

/// An operator's command with who gave it and why, as the saga's timeline records it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct OperatorRequest {
    /// What to do.
    pub command: OperatorCommand,
    /// Who asked (a user name, `console`, a script's name).
    pub actor: String,
    /// Why.
    pub reason: String,
}

impl OperatorRequest {
    /// `command`, asked by `actor` because of `reason`.
    pub fn new(
        command: OperatorCommand,
        actor: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        Self {
            command,
            actor: actor.into(),
            reason: reason.into(),
        }
    }
}

/// A timer the engine asked for; it comes back as [`SagaEvent::Timer`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SagaTimer {
    /// The reply to `request_id` (sent for the `attempt`-th time) is overdue.
    Timeout {
        /// The outstanding request.
        request_id: RequestId,
        /// Which send of it the timer guards.
        attempt: u32,
    },
    /// The backoff before retrying with `request_id` is over.
    RetryDue {
        /// The request id the retry uses.
        request_id: RequestId,
    },
}

/// Something that happens to a saga.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SagaEvent {
    /// Start the saga.
    Start,
    /// A participant replied.
    Reply {
        /// The request id the reply echoes.
        request_id: RequestId,
        /// The reply.
        reply: IncomingReply,
    },
    /// A timer fired.
    Timer(SagaTimer),
    /// An operator acted.
    Operator(OperatorRequest),
}

/// A command (or notification) the orchestrator must send.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutgoingCommand {
    /// The step it belongs to.
    pub step: String,
    /// `true` when it undoes the step.
    pub compensation: bool,
    /// The request id the reply must echo; `None` for a one-way notification.
    pub request_id: Option<RequestId>,
    /// The destination channel.
    pub channel: String,
    /// The command type.
    pub command_type: String,
    /// The JSON payload.
    pub payload: String,
}

/// What the orchestrator must do after a transition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum SagaAction {
    /// Send a command or notification (through the outbox).
    Send(OutgoingCommand),
    /// Fire `timer` at `due`.
    Schedule {
        /// The timer.
        timer: SagaTimer,
        /// When it fires.
        due: Timestamp,
    },
    /// The saga reached a terminal state.
    Finished(SagaStatus),
    /// The saga is parked in `failed`, awaiting an operator.
    Parked {
        /// Why.
        reason: String,
    },
}

/// One entry of a saga's timeline.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
#[non_exhaustive]
pub enum HistoryEvent {
    /// The saga started.
    Started,
    /// A command or notification was sent.
    CommandSent {
        /// The step.
        step: String,
        /// The command type.
        command_type: String,
        /// The channel.
        channel: String,
        /// Whether it undoes the step.
        compensation: bool,
        /// Which attempt this is.
        attempt: u32,
    },
    /// A forward step succeeded.
    StepSucceeded {
        /// The step.
        step: String,
    },
    /// A step's condition was false, so it did not run.
    StepSkipped {
        /// The step.
        step: String,
    },
    /// A forward step failed.
    StepFailed {
        /// The step.
        step: String,
        /// Why.
        reason: String,
    },
    /// No reply came before the deadline.
    TimedOut {
        /// The step.
        step: String,
        /// The attempt that timed out.
        attempt: u32,
        /// Whether it was a compensation.
        compensation: bool,
    },
    /// A retry was scheduled.
    RetryScheduled {
        /// The step.
        step: String,
        /// The attempt that will run.
        attempt: u32,
        /// When.
        due: Timestamp,
    },
    /// The saga turned back.
    CompensationStarted {
        /// The step whose failure turned it back.
        step: String,
        /// Why.
        reason: String,
    },
    /// A step was undone.
    StepCompensated {
        /// The step.
        step: String,
    },
    /// A compensation failed.
    CompensationFailed {
        /// The step.
        step: String,
        /// Why.
        reason: String,
    },
    /// The saga parked in `failed`.
    Parked {
        /// The step.
        step: String,
        /// Why.
        reason: String,
    },
    /// An operator acted.
    Operator {
        /// The command.
        command: OperatorCommand,
        /// The step it applied to.
        step: String,
        /// Who (empty in timelines written before operators were named).
        #[serde(default, skip_serializing_if = "String::is_empty")]
        actor: String,
        /// Why.
        #[serde(default, skip_serializing_if = "String::is_empty")]
        reason: String,
    },
    /// An operator command the saga refused (it changed nothing else).
    OperatorRefused {
        /// The command.
        command: OperatorCommand,
        /// Who asked.
        actor: String,
        /// Why they asked.
        reason: String,
        /// Why it was refused.
        refused: String,
    },
    /// The steps of a parallel group started together.
    Forked {
        /// The group, by the name of its first step.
        group: String,
        /// The steps that run (those whose condition held).
        steps: Vec<String>,
    },
    /// Every step of a parallel group has answered (or timed out).
    Joined {
        /// The group, by the name of its first step.
        group: String,
        /// The steps that ran.
        steps: Vec<String>,
    },
    /// The instance moved to another version of its definition, by a declared
    /// [migration](crate::versions::Migration).
    Migrated {
        /// The version it started with (or was on).
        from: String,
        /// The version it is on now.
        to: String,
    },
    /// A terminal state was reached.
    Finished {
        /// Completed or compensated.
        status: SagaStatus,
    },
}

/// A transition's result: the new instance and what to do about it.
#[derive(Clone, Debug, PartialEq)]
pub struct Transition<D> {
    /// The instance after the event.
    pub instance: SagaInstance<D>,
    /// What the orchestrator must do.
    pub actions: Vec<SagaAction>,
    /// What happened, for the saga's timeline.
    pub history: Vec<HistoryEvent>,
}

/// Why an event changed nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Ignored {
    /// A reply whose request id is not the one the saga waits for (late or duplicate).
    StaleReply {
        /// The reply's request id.
        request_id: RequestId,
    },
    /// A timer that no longer applies.
    StaleTimer(SagaTimer),
    /// The saga already finished.
    Finished(SagaStatus),
}

impl fmt::Display for Ignored {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::StaleReply { request_id } => write!(f, "stale reply to request {request_id}"),
            Self::StaleTimer(timer) => write!(f, "stale timer {timer:?}"),
            Self::Finished(status) => write!(f, "saga already {status}"),
        }
    }
}

/// What an event did.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome<D> {
    /// The event moved the saga.
    Applied(Box<Transition<D>>),
    /// The event changed nothing.
    Ignored(Ignored),
}

impl<D> Outcome<D> {
    /// The transition, if the event was applied.
    pub fn applied(self) -> Option<Transition<D>> {
        match self {
            Self::Applied(t) => Some(*t),
            Self::Ignored(_) => None,
        }
    }
}

/// Why the engine refused an event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// The state names a step the definition does not have (the definition changed).
    #[error(
        "saga `{saga_type}` has no step `{step}` (the instance was started with definition {version})"
    )]
    UnknownStep {
        /// The saga type.
        saga_type: String,
        /// The missing step.
        step: String,
        /// The instance's definition version.
        version: String,
    },
    /// A reply could not be decoded or does not fit the command.
    #[error("malformed reply for step `{step}`: {error}")]
    MalformedReply {
        /// The step.
        step: String,
        /// What is wrong.
        #[source]
        error: MessageError,
    },
    /// A command could not be encoded.
    #[error("cannot encode the command of step `{step}`: {error}")]
    Encode {
        /// The step.
        step: String,
        /// What went wrong.
        #[source]
        error: MessageError,
    },
    /// `Start` sent to a saga that has started.
    #[error("saga {0} has already started")]
    AlreadyStarted(SagaId),
    /// An operator command the saga's state does not allow (e.g. `retry` on a running saga,
    /// `cancel` after the pivot).
    #[error("{command} refused for saga {saga_id} ({status}): {why}")]
    OperatorRefused {
        /// The saga.
        saga_id: SagaId,
        /// The command.
        command: OperatorCommand,
        /// Its status.
        status: SagaStatus,
        /// Why, and what to do instead.
        why: String,
    },
    /// The state is inconsistent with the definition (e.g. waiting on a step with no command).
    #[error("saga {saga_id} is in an inconsistent state: {problem}")]
    Inconsistent {
        /// The saga.
        saga_id: SagaId,
        /// What is wrong.
        problem: Inconsistency,
    },
}

/// How a saga's state contradicts its definition.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Inconsistency {
    /// It is running but at no step.
    #[error("no current step")]
    NoCurrentStep,
    /// It is compensating a step that has no compensation.
    #[error("step `{step}` has no compensation")]
    NoCompensation {
        /// The step.
        step: String,
    },
    /// It waits for a reply at a step that sends no command.
    #[error("waiting for a reply at step `{step}`, which sends no command")]
    NoCommand {
        /// The step.
        step: String,
    },
}

/// Applies `event` at time `now` to `instance`, returning the new instance and the actions
/// to take, or why the event changed nothing. Never mutates its inputs.
pub fn transition<D: SagaData>(
    definition: &SagaDefinition<D>,
    instance: &SagaInstance<D>,
    event: &SagaEvent,
    now: Timestamp,
) -> Result<Outcome<D>, EngineError> {
    let mut machine = Machine {
        definition,
        instance: instance.clone(),
        actions: Vec::new(),
        history: Vec::new(),
        now,
        forking: false,
    };
    if let Some(ignored) = machine.apply(event)? {
        return Ok(Outcome::Ignored(ignored));
    }
    Ok(Outcome::Applied(Box::new(Transition {
        instance: machine.instance,
        actions: machine.actions,
        history: machine.history,
    })))
}

/// Starts a new instance: the same as [`transition`] with [`SagaEvent::Start`] on
/// [`SagaInstance::new`].
pub fn start<D: SagaData>(
    definition: &SagaDefinition<D>,
    saga_id: SagaId,
    data: D,
    now: Timestamp,
) -> Result<Transition<D>, EngineError> {
    let instance = SagaInstance::new(definition, saga_id, data);
    match transition(definition, &instance, &SagaEvent::Start, now)? {
        Outcome::Applied(t) => Ok(*t),
        Outcome::Ignored(_) => Err(EngineError::AlreadyStarted(saga_id)),
    }
}

/// The result of one attempt at a step or compensation.
enum Progress {
    /// It finished.
    Done,
    /// A command went out; the saga waits for the reply.
    Waiting,
    /// It failed.
    Failed(String),
}

struct Machine<'d, D> {
    definition: &'d SagaDefinition<D>,
    instance: SagaInstance<D>,
    actions: Vec<SagaAction>,
    history: Vec<HistoryEvent>,
    now: Timestamp,
    /// Starting (or restarting) the branches of a group: their outcomes are gathered before
    /// the group decides anything.
    forking: bool,
}

type Step<'d, D> = (usize, &'d StepDefinition<D>);

impl<'d, D: SagaData> Machine<'d, D> {
    fn apply(&mut self, event: &SagaEvent) -> Result<Option<Ignored>, EngineError> {
        let status = self.instance.state.status;
        if status.is_terminal() {
            if let SagaEvent::Operator(request) = event {
                // An operator hears why nothing happened.
                return Err(self.refuse(request.command, format!("it has finished ({status})")));
            }
            return Ok(Some(Ignored::Finished(status)));
        }
        match event {
            SagaEvent::Start => {
                if status != SagaStatus::Created {
                    return Err(EngineError::AlreadyStarted(self.instance.state.saga_id));
                }
                self.instance.state.status = SagaStatus::Running;
                self.history.push(HistoryEvent::Started);
                self.run_forward_from(0)?;
                Ok(None)
            }
            SagaEvent::Reply { request_id, reply } => {
                if self.in_group() {
                    return self.on_branch_reply(*request_id, reply);
                }
                let state = &self.instance.state;
                let waiting = matches!(
                    state.pending,
                    Some(Pending::Reply { request_id: expected }) if expected == *request_id
                ) || (mutants::active(mutants::Mutant::StaleRepliesAccepted)
                    && matches!(state.pending, Some(Pending::Reply { .. })));
                // "Never handled" is about one send; after a resend it says nothing.
                let about_an_earlier_send = reply
                    .undelivered_before
                    .is_some_and(|deadline| state.deadline != Some(deadline));
                if !waiting || about_an_earlier_send {
                    return Ok(Some(Ignored::StaleReply {
                        request_id: *request_id,
                    }));
                }
                self.on_reply(reply)?;
                Ok(None)
            }
            SagaEvent::Timer(timer) => self.on_timer(*timer),
            SagaEvent::Operator(request) => {
                self.on_operator(request)?;
                Ok(None)
            }
        }
    }

    // ----- lookups -------------------------------------------------------------------------

    fn current(&self) -> Result<Step<'d, D>, EngineError> {
        let state = &self.instance.state;
        let name = state
            .current_step
            .as_deref()
            .ok_or_else(|| self.inconsistent(Inconsistency::NoCurrentStep))?;
        self.step_named(name)
    }

    fn step_named(&self, name: &str) -> Result<Step<'d, D>, EngineError> {
        let definition = self.definition;
        definition
            .step(name)
            .ok_or_else(|| EngineError::UnknownStep {
                saga_type: definition.name().to_owned(),
                step: name.to_owned(),
                version: self.instance.state.definition_version.clone(),
            })
    }

    fn inconsistent(&self, problem: Inconsistency) -> EngineError {
        EngineError::Inconsistent {
            saga_id: self.instance.state.saga_id,
            problem,
        }
    }

    /// The action the current step runs in the current direction.
    fn current_action(&self, step: &'d StepDefinition<D>) -> Result<&'d Action<D>, EngineError> {
        match self.instance.state.direction {
            Direction::Forward => Ok(step.action()),
            Direction::Backward => step.compensation().ok_or_else(|| {
                self.inconsistent(Inconsistency::NoCompensation {
                    step: step.name().to_owned(),
                })
            }),
        }
    }

    // ----- state changes -------------------------------------------------------------------

    fn enter(&mut self, step: &StepDefinition<D>) {
        let state = &mut self.instance.state;
        state.current_step = Some(step.name().to_owned());
        state.attempt = 0;
        state.pending = None;
        state.deadline = None;
    }

    fn allocate_request(&mut self) -> RequestId {
        let state = &mut self.instance.state;
        let id = RequestId(state.next_request_id);
        state.next_request_id += 1;
        id
    }

    fn send(
        &mut self,
        step: &StepDefinition<D>,
        command: &CommandAction<D>,
        request_id: Option<RequestId>,
    ) -> Result<(), EngineError> {
        let compensation = self.instance.state.direction == Direction::Backward;
        let payload = command
            .build(&self.instance.data)
            .map_err(|error| EngineError::Encode {
                step: step.name().to_owned(),
                error,
            })?;
        self.history.push(HistoryEvent::CommandSent {
            step: step.name().to_owned(),
            command_type: command.command_type.to_owned(),
            channel: command.channel.to_owned(),
            compensation,
            attempt: self.instance.state.attempt,
        });
        self.actions.push(SagaAction::Send(OutgoingCommand {
            step: step.name().to_owned(),
            compensation,
            request_id,
            channel: command.channel.to_owned(),
            command_type: command.command_type.to_owned(),
            payload,
        }));
        Ok(())
    }

    fn await_reply(&mut self, step: &StepDefinition<D>, request_id: RequestId) {
        let state = &mut self.instance.state;
        state.pending = Some(Pending::Reply { request_id });
        state.deadline = step.timeout().map(|timeout| self.now.plus(timeout));
        if let Some(due) = state.deadline {
            self.actions.push(SagaAction::Schedule {
                timer: SagaTimer::Timeout {
                    request_id,
                    attempt: state.attempt,
                },
                due,
            });
        }
    }

    /// One attempt at the current step's action in the current direction. `request_id` is
    /// reused when given (timeouts, scheduled retries), else a fresh one is allocated.
    fn attempt(
        &mut self,
        step: &'d StepDefinition<D>,
        request_id: Option<RequestId>,
    ) -> Result<Progress, EngineError> {
        self.instance.state.attempt += 1;
        match self.current_action(step)? {
            Action::Noop => Ok(Progress::Done),
            Action::Local(run) => match run(&mut self.instance.data) {
                Ok(()) => Ok(Progress::Done),
                Err(failure) => Ok(Progress::Failed(failure.reason)),
            },
            Action::Notify(command) => {
                self.send(step, command, None)?;
                Ok(Progress::Done)
            }
            Action::Command(command) => {
                let request_id = match request_id {
                    Some(id) => id,
                    None => self.allocate_request(),
                };
                self.send(step, command, Some(request_id))?;
                self.await_reply(step, request_id);
                Ok(Progress::Waiting)
            }
        }
    }

    /// Reacts to the result of an attempt, in whichever direction the saga is moving.
    fn after_attempt(
        &mut self,
        (index, step): Step<'d, D>,
        progress: Progress,
        uncertain: bool,
    ) -> Result<(), EngineError> {
        if self.in_group() && self.instance.state.direction == Direction::Forward {
            return self.after_branch_attempt(step, progress, uncertain);
        }
        match (self.instance.state.direction, progress) {
            (_, Progress::Waiting) => Ok(()),
            (Direction::Forward, Progress::Done) => {
                self.step_succeeded(step);
                self.run_forward_from(index + 1)
            }
            (Direction::Forward, Progress::Failed(reason)) => {
                self.forward_failed(step, reason, uncertain)
            }
            (Direction::Backward, Progress::Done) => {
                self.instance.state.completed_steps.pop();
                self.history.push(HistoryEvent::StepCompensated {
                    step: step.name().to_owned(),
                });
                self.run_compensations()
            }
            (Direction::Backward, Progress::Failed(reason)) => {
                self.history.push(HistoryEvent::CompensationFailed {
                    step: step.name().to_owned(),
                    reason: reason.clone(),
                });
                self.retry_or_park(step, reason)
            }
        }
    }

    fn step_succeeded(&mut self, step: &StepDefinition<D>) {
        let state = &mut self.instance.state;
        state.completed_steps.push(step.name().to_owned());
        state.pending = None;
        state.deadline = None;
        self.history.push(HistoryEvent::StepSucceeded {
            step: step.name().to_owned(),
        });
    }

    fn run_forward_from(&mut self, from: usize) -> Result<(), EngineError> {
        let definition = self.definition;
        let next = definition
            .steps()
            .iter()
            .enumerate()
            .skip(from)
            .find(|(_, step)| self.runs(step));
        let Some((index, step)) = next else {
            return self.finish(SagaStatus::Completed);
        };
        if step.group().is_some() {
            return self.start_group(index);
        }
        self.enter(step);
        let progress = self.attempt(step, None)?;
        self.after_attempt((index, step), progress, false)
    }

    /// Whether `step` runs for this instance: its condition holds and no migration told the
    /// instance to skip it. A step that does not run is recorded as skipped.
    fn runs(&mut self, step: &StepDefinition<D>) -> bool {
        let state = &self.instance.state;
        let skipped = state.skip_steps.iter().any(|s| s == step.name());
        let runs = !skipped && step.applies_to(&self.instance.data);
        if !runs {
            self.history.push(HistoryEvent::StepSkipped {
                step: step.name().to_owned(),
            });
        }
        runs
    }

    fn forward_failed(
        &mut self,
        step: &'d StepDefinition<D>,
        reason: String,
        uncertain: bool,
    ) -> Result<(), EngineError> {
        self.history.push(HistoryEvent::StepFailed {
            step: step.name().to_owned(),
            reason: reason.clone(),
        });
        if step.kind() == StepKind::Retriable {
            self.retry_or_park(step, reason)?;
            if self.in_group() && self.instance.state.status != SagaStatus::Failed {
                self.save_branch(step.name());
                return self.group_progress();
            }
            return Ok(());
        }
        // A timed-out step may have taken effect, so it is undone with the others.
        if uncertain && step.compensation().is_some() {
            self.instance
                .state
                .completed_steps
                .push(step.name().to_owned());
        }
        if self.in_group() {
            return self.branch_failed(step, reason);
        }
        self.turn_back(step.name(), reason, true)
    }

    /// Turns the saga back at `step` because of `reason` — a failure, recorded as its last
    /// error too, or an operator's cancel — and compensates what ran.
    fn turn_back(&mut self, step: &str, reason: String, failed: bool) -> Result<(), EngineError> {
        let state = &mut self.instance.state;
        if mutants::active(mutants::Mutant::CompensationsInForwardOrder) {
            state.completed_steps.reverse();
        }
        state.status = SagaStatus::Compensating;
        state.direction = Direction::Backward;
        state.compensation_reason = Some(reason.clone());
        state.last_error = failed.then(|| reason.clone());
        self.history.push(HistoryEvent::CompensationStarted {
            step: step.to_owned(),
            reason,
        });
        self.run_compensations()
    }

    fn run_compensations(&mut self) -> Result<(), EngineError> {
        loop {
            let Some(name) = self.instance.state.completed_steps.last() else {
                return self.finish(SagaStatus::Compensated);
            };
            let (index, step) = self.step_named(name)?;
            let skipped = index == 0 && mutants::active(mutants::Mutant::FirstCompensationSkipped);
            if step.compensation().is_none() || skipped {
                self.instance.state.completed_steps.pop();
                continue;
            }
            self.enter(step);
            let progress = self.attempt(step, None)?;
            return self.after_attempt((index, step), progress, false);
        }
    }

    fn retry_or_park(
        &mut self,
        step: &'d StepDefinition<D>,
        reason: String,
    ) -> Result<(), EngineError> {
        let attempts = self.instance.state.attempt;
        let policy = step.retry_policy();
        self.instance.state.last_error = Some(reason.clone());
        if !policy.allows_another(attempts) {
            let reason = format!(
                "{} `{}` failed after {attempts} attempt{}: {reason}",
                match self.instance.state.direction {
                    Direction::Forward => "step",
                    Direction::Backward => "compensation of",
                },
                step.name(),
                if attempts == 1 { "" } else { "s" },
            );
            return self.park(step, reason);
        }
        let request_id = self.allocate_request();
        let due = self
            .now
            .plus(policy.backoff(attempts, self.instance.state.saga_id));
        let state = &mut self.instance.state;
        state.pending = Some(Pending::Retry { request_id });
        state.deadline = Some(due);
        self.history.push(HistoryEvent::RetryScheduled {
            step: step.name().to_owned(),
            attempt: attempts + 1,
            due,
        });
        self.actions.push(SagaAction::Schedule {
            timer: SagaTimer::RetryDue { request_id },
            due,
        });
        Ok(())
    }

    fn park(&mut self, step: &StepDefinition<D>, reason: String) -> Result<(), EngineError> {
        self.halt_branches();
        let state = &mut self.instance.state;
        state.status = SagaStatus::Failed;
        state.pending = None;
        state.deadline = None;
        state.last_error = Some(reason.clone());
        self.history.push(HistoryEvent::Parked {
            step: step.name().to_owned(),
            reason: reason.clone(),
        });
        self.actions.push(SagaAction::Parked { reason });
        Ok(())
    }

    fn finish(&mut self, status: SagaStatus) -> Result<(), EngineError> {
        let state = &mut self.instance.state;
        state.status = status;
        state.current_step = None;
        state.pending = None;
        state.deadline = None;
        state.attempt = 0;
        self.history.push(HistoryEvent::Finished { status });
        self.actions.push(SagaAction::Finished(status));
        Ok(())
    }

    // ----- events --------------------------------------------------------------------------

    fn on_reply(&mut self, reply: &IncomingReply) -> Result<(), EngineError> {
        let (index, step) = self.current()?;
        let Action::Command(command) = self.current_action(step)? else {
            return Err(self.inconsistent(Inconsistency::NoCommand {
                step: step.name().to_owned(),
            }));
        };
        let failure = command
            .apply_reply(&mut self.instance.data, reply)
            .map_err(|error| EngineError::MalformedReply {
                step: step.name().to_owned(),
                error,
            })?;
        let progress = match failure {
            None => Progress::Done,
            Some(reason) => Progress::Failed(reason),
        };
        self.after_attempt((index, step), progress, false)
    }

    fn on_timer(&mut self, timer: SagaTimer) -> Result<Option<Ignored>, EngineError> {
        let state = &self.instance.state;
        if state.status == SagaStatus::Failed {
            return Ok(Some(Ignored::StaleTimer(timer)));
        }
        if self.in_group() {
            let Some(branch) = self.branch_for_timer(timer) else {
                return Ok(Some(Ignored::StaleTimer(timer)));
            };
            self.focus(&branch);
        } else {
            let live = match (timer, state.pending) {
                (
                    SagaTimer::Timeout {
                        request_id,
                        attempt,
                    },
                    Some(Pending::Reply {
                        request_id: pending,
                    }),
                ) => request_id == pending && attempt == state.attempt,
                (
                    SagaTimer::RetryDue { request_id },
                    Some(Pending::Retry {
                        request_id: pending,
                    }),
                ) => request_id == pending,
                _ => false,
            };
            if !live {
                return Ok(Some(Ignored::StaleTimer(timer)));
            }
        }
        let current = self.current()?;
        match timer {
            SagaTimer::Timeout {
                request_id,
                attempt,
            } => self.on_timeout(current, request_id, attempt)?,
            SagaTimer::RetryDue { request_id } => {
                let progress = self.attempt(current.1, Some(request_id))?;
                self.after_attempt(current, progress, false)?;
            }
        }
        Ok(None)
    }

    fn on_timeout(
        &mut self,
        (index, step): Step<'d, D>,
        request_id: RequestId,
        attempt: u32,
    ) -> Result<(), EngineError> {
        let backward = self.instance.state.direction == Direction::Backward;
        self.history.push(HistoryEvent::TimedOut {
            step: step.name().to_owned(),
            attempt,
            compensation: backward,
        });
        let resend = backward || step.timeout_action() == TimeoutAction::Retry;
        if resend && step.retry_policy().allows_another(attempt) {
            let progress = self.attempt(step, Some(request_id))?;
            return self.after_attempt((index, step), progress, false);
        }
        let timeout = step.timeout().unwrap_or(Duration::ZERO);
        let reason = format!(
            "no reply within {} ms (attempt {attempt})",
            timeout.as_millis()
        );
        if backward {
            self.history.push(HistoryEvent::CompensationFailed {
                step: step.name().to_owned(),
                reason: reason.clone(),
            });
            return self.retry_or_park(step, reason);
        }
        if step.kind() == StepKind::Pivot && resend {
            // The pivot may have taken effect and cannot be undone: neither going on nor
            // turning back is safe until someone finds out.
            self.history.push(HistoryEvent::StepFailed {
                step: step.name().to_owned(),
                reason: reason.clone(),
            });
            let reason = format!(
                "pivot `{}` got no reply after {attempt} attempt{} ({reason}); whether it took \
                 effect is unknown — retry sends it again, skip treats it as done",
                step.name(),
                if attempt == 1 { "" } else { "s" },
            );
            return self.park(step, reason);
        }
        self.forward_failed(step, reason, true)
    }

    fn refuse(&self, command: OperatorCommand, why: impl Into<String>) -> EngineError {
        let state = &self.instance.state;
        EngineError::OperatorRefused {
            saga_id: state.saga_id,
            command,
            status: state.status,
            why: why.into(),
        }
    }

    fn on_operator(&mut self, request: &OperatorRequest) -> Result<(), EngineError> {
        let command = request.command;
        let status = self.instance.state.status;
        match command {
            OperatorCommand::Retry | OperatorCommand::Skip if status != SagaStatus::Failed => {
                return Err(self.refuse(
                    command,
                    "retry and skip apply only to sagas parked in `failed`",
                ));
            }
            OperatorCommand::Cancel => return self.cancel(request),
            OperatorCommand::Retry | OperatorCommand::Skip => {}
        }
        if self.in_group() && self.instance.state.direction == Direction::Forward {
            return self.resume_group(request);
        }
        let current = self.current()?;
        let step = current.1;
        self.history.push(HistoryEvent::Operator {
            command,
            step: step.name().to_owned(),
            actor: request.actor.clone(),
            reason: request.reason.clone(),
        });
        let state = &mut self.instance.state;
        state.status = match state.direction {
            Direction::Forward => SagaStatus::Running,
            Direction::Backward => SagaStatus::Compensating,
        };
        state.last_error = None;
        match command {
            OperatorCommand::Retry => {
                state.attempt = 0;
                let progress = self.attempt(step, None)?;
                self.after_attempt(current, progress, false)
            }
            _ => self.after_attempt(current, Progress::Done, false),
        }
    }

    /// Aborts a running saga before its pivot: the step awaiting its reply may have taken
    /// effect, so it is undone with the steps before it (as after a timeout).
    fn cancel(&mut self, request: &OperatorRequest) -> Result<(), EngineError> {
        let command = request.command;
        let state = &self.instance.state;
        if state.status != SagaStatus::Running || state.direction != Direction::Forward {
            return Err(self.refuse(
                command,
                match state.status {
                    SagaStatus::Compensating => "it is compensating already".to_owned(),
                    SagaStatus::Failed => "it is parked at or after its pivot, which cannot be \
                                          undone; retry or skip it instead"
                        .to_owned(),
                    status => format!("cancel applies only to running sagas, not {status} ones"),
                },
            ));
        }
        let (_, step) = self.current()?;
        let ran_pivot = self.definition.steps().iter().find(|s| {
            s.kind() != StepKind::Compensatable
                && (s.name() == step.name() || state.completed_steps.iter().any(|c| c == s.name()))
        });
        if let Some(pivot) = ran_pivot {
            return Err(self.refuse(
                command,
                format!(
                    "it has reached `{}`, past the point where it can turn back; it will finish \
                     on its own",
                    pivot.name()
                ),
            ));
        }
        self.history.push(HistoryEvent::Operator {
            command,
            step: step.name().to_owned(),
            actor: request.actor.clone(),
            reason: request.reason.clone(),
        });
        if self.in_group() {
            self.abandon_group();
        } else {
            let awaiting = matches!(state.pending, Some(Pending::Reply { .. }));
            if awaiting && step.compensation().is_some() {
                self.instance
                    .state
                    .completed_steps
                    .push(step.name().to_owned());
            }
        }
        let reason = match request.reason.is_empty() {
            true => format!("cancelled by {}", request.actor),
            false => format!("cancelled by {}: {}", request.actor, request.reason),
        };
        self.turn_back(step.name(), reason, false)
    }
}
