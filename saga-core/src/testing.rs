//! The saga unit-test DSL: drive a saga through the pure engine, step by step, asserting
//! the commands it sends and reacting with replies, timeouts and operator commands.
//!
//! ```
//! # use saga_core::testing::SagaTest;
//! # use saga_core::{saga, Command, Reply};
//! # use serde::{Deserialize, Serialize};
//! #[derive(Clone, Serialize, Deserialize)]
//! struct Data { amount: u32 }
//!
//! #[derive(Debug, Serialize, Deserialize, Command)]
//! #[command(channel = "accounting", reply = Authorized)]
//! struct Authorize { amount: u32 }
//!
//! #[derive(Debug, Serialize, Deserialize, Reply)]
//! struct Authorized;
//!
//! fn authorize(data: &Data) -> Authorize { Authorize { amount: data.amount } }
//!
//! saga! {
//!     /// Authorizes a payment.
//!     saga PaySaga(Data) {
//!         pivot authorize { invoke: authorize }
//!     }
//! }
//!
//! SagaTest::<PaySaga>::given(Data { amount: 7 })
//!     .expect_command(Authorize { amount: 7 })
//!     .reply(Authorized)
//!     .expect_completed();
//! ```
//!
//! Every sent command must be asserted with `expect_command` (or `expect_compensation`)
//! before the saga is answered, and a test fails with both payloads pretty-printed when a
//! command differs from the expected one.

use std::collections::VecDeque;
use std::time::Duration;

use crate::definition::{IncomingReply, Saga};
use crate::engine::{
    self, BranchState, EngineError, HistoryEvent, OperatorCommand, OperatorRequest, Outcome,
    OutgoingCommand, Pending, SagaAction, SagaEvent, SagaInstance, SagaState, SagaStatus,
    SagaTimer,
};
use crate::ids::{SagaId, Timestamp};
use crate::message::{Command, CommandFailed, Headers, Message, Reply, headers};

/// Commands expected together, in any order
/// ([`SagaTest::expect_commands_in_any_order`]).
#[derive(Debug, Default)]
pub struct CommandSet(Vec<(String, String, serde_json::Value)>);

impl CommandSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `command` (type, channel and payload compared structurally).
    #[track_caller]
    pub fn command<C: Command>(mut self, command: C) -> Self {
        let json = serde_json::to_value(&command)
            .unwrap_or_else(|err| panic!("cannot serialize the expected {}: {err}", C::TYPE));
        self.0
            .push((C::TYPE.to_owned(), C::CHANNEL.to_owned(), json));
        self
    }
}

/// A saga under test. Each method consumes and returns the test, so steps chain.
pub struct SagaTest<S: Saga> {
    instance: SagaInstance<S::Data>,
    now: Timestamp,
    unasserted: VecDeque<OutgoingCommand>,
    sent: Vec<OutgoingCommand>,
    timers: Vec<(SagaTimer, Timestamp)>,
    history: Vec<HistoryEvent>,
    /// The last reply given, for [`SagaTest::duplicate_last_reply`].
    last_reply: Option<SagaEvent>,
    /// Requests that timed out, by step, for [`SagaTest::late_reply_to`].
    timed_out: Vec<(String, crate::ids::RequestId)>,
}

impl<S: Saga> std::fmt::Debug for SagaTest<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SagaTest")
            .field("state", &self.instance.state)
            .field("unasserted", &self.unasserted)
            .field("timers", &self.timers)
            .finish_non_exhaustive()
    }
}

fn pretty(payload: &serde_json::Value) -> String {
    serde_json::to_string_pretty(payload).unwrap_or_else(|_| payload.to_string())
}

impl<S: Saga> SagaTest<S> {
    /// Starts a saga with `data` (at a fixed, fake time).
    #[track_caller]
    pub fn given(data: S::Data) -> Self {
        let definition = S::definition();
        let instance = SagaInstance::new(definition, SagaId::new(), data);
        let test = Self {
            instance,
            now: Timestamp(1_700_000_000_000),
            unasserted: VecDeque::new(),
            sent: Vec::new(),
            timers: Vec::new(),
            history: Vec::new(),
            last_reply: None,
            timed_out: Vec::new(),
        };
        test.event(SagaEvent::Start)
    }

    #[track_caller]
    fn event(mut self, event: SagaEvent) -> Self {
        if matches!(event, SagaEvent::Reply { .. }) {
            self.last_reply = Some(event.clone());
        }
        let outcome = engine::transition(S::definition(), &self.instance, &event, self.now)
            .unwrap_or_else(|err| panic!("the engine refused {event:?}: {err}"));
        let transition = match outcome {
            Outcome::Applied(t) => *t,
            Outcome::Ignored(why) => panic!("{event:?} was ignored: {why}"),
        };
        self.apply(transition);
        self
    }

    fn apply(&mut self, transition: engine::Transition<S::Data>) {
        self.instance = transition.instance;
        self.history.extend(transition.history);
        for action in transition.actions {
            match action {
                SagaAction::Send(command) => {
                    self.sent.push(command.clone());
                    self.unasserted.push_back(command);
                }
                SagaAction::Schedule { timer, due } => self.timers.push((timer, due)),
                SagaAction::Finished(_) | SagaAction::Parked { .. } => {}
            }
        }
    }

    #[track_caller]
    fn next_command<C: Command>(&mut self, expected: &C, compensation: bool) {
        let expected_json = serde_json::to_value(expected)
            .unwrap_or_else(|err| panic!("cannot serialize the expected {}: {err}", C::TYPE));
        let Some(actual) = self.unasserted.pop_front() else {
            panic!(
                "expected command {} to `{}`, but the saga sent nothing more (status {}, step {:?})",
                C::TYPE,
                C::CHANNEL,
                self.instance.state.status,
                self.instance.state.current_step
            );
        };
        assert_eq!(
            (actual.command_type.as_str(), actual.channel.as_str()),
            (C::TYPE, C::CHANNEL),
            "step `{}` sent a different command (type, channel) than expected",
            actual.step
        );
        assert_eq!(
            actual.compensation,
            compensation,
            "command {} of step `{}`: compensation = {}, expected {compensation}",
            C::TYPE,
            actual.step,
            actual.compensation
        );
        let actual_json: serde_json::Value = serde_json::from_str(&actual.payload)
            .unwrap_or_else(|err| panic!("the saga sent invalid JSON: {err}"));
        assert!(
            actual_json == expected_json,
            "command {} of step `{}` differs:\n--- expected\n{}\n--- sent\n{}",
            C::TYPE,
            actual.step,
            pretty(&expected_json),
            pretty(&actual_json)
        );
    }

    /// Asserts that the next command sent is `expected` (type, channel and payload compared
    /// structurally), going forward.
    #[track_caller]
    pub fn expect_command<C: Command>(mut self, expected: C) -> Self {
        self.next_command(&expected, false);
        self
    }

    /// Asserts that the next command sent goes to `channel` and equals `expected`.
    #[track_caller]
    pub fn expect_command_to<C: Command>(self, channel: &str, expected: C) -> Self {
        assert_eq!(
            C::CHANNEL,
            channel,
            "{} is sent to `{}`, not `{channel}`",
            C::TYPE,
            C::CHANNEL
        );
        self.expect_command(expected)
    }

    /// Asserts that the next commands sent are those of `set`, in any order: the commands of
    /// a parallel group's steps go out together, in no order the saga promises.
    ///
    /// ```ignore
    /// test.expect_commands_in_any_order(
    ///     CommandSet::new().command(VerifyConsumer { .. }).command(CreateTicket { .. }),
    /// )
    /// ```
    #[track_caller]
    pub fn expect_commands_in_any_order(mut self, set: CommandSet) -> Self {
        let mut expected = set.0;
        let sent: Vec<OutgoingCommand> = (0..expected.len())
            .map_while(|_| self.unasserted.pop_front())
            .collect();
        assert_eq!(
            sent.len(),
            expected.len(),
            "expected {} commands, the saga sent {}: {sent:?}",
            expected.len(),
            sent.len()
        );
        for actual in &sent {
            let actual_json: serde_json::Value = serde_json::from_str(&actual.payload)
                .unwrap_or_else(|err| panic!("the saga sent invalid JSON: {err}"));
            let position = expected.iter().position(|(command_type, channel, json)| {
                *command_type == actual.command_type
                    && *channel == actual.channel
                    && *json == actual_json
                    && !actual.compensation
            });
            match position {
                Some(position) => {
                    expected.remove(position);
                }
                None => panic!(
                    "step `{}` sent {} to `{}`, which the set does not expect:\n{}\n--- still \
                     expected\n{expected:#?}",
                    actual.step,
                    actual.command_type,
                    actual.channel,
                    pretty(&actual_json)
                ),
            }
        }
        self
    }

    /// Asserts that the next command sent is `expected`, as a compensation.
    #[track_caller]
    pub fn expect_compensation<C: Command>(mut self, expected: C) -> Self {
        self.next_command(&expected, true);
        self
    }

    /// Asserts that step `step` sent its (forward) command, whatever the payload, among the
    /// commands not asserted yet — the form exploration scripts take
    /// ([`crate::explore`]), with the payload in a comment.
    #[track_caller]
    pub fn expect_command_of(mut self, step: &str) -> Self {
        self.take_command_of(step, false);
        self
    }

    /// Asserts that step `step` sent its compensation, whatever the payload, among the
    /// commands not asserted yet.
    #[track_caller]
    pub fn expect_compensation_of(mut self, step: &str) -> Self {
        self.take_command_of(step, true);
        self
    }

    #[track_caller]
    fn take_command_of(&mut self, step: &str, compensation: bool) {
        let position = self
            .unasserted
            .iter()
            .position(|c| c.step == step && c.compensation == compensation);
        match position {
            Some(position) => {
                self.unasserted.remove(position);
            }
            None => panic!(
                "step `{step}` sent no {}; not asserted yet: {:?}",
                if compensation {
                    "compensation"
                } else {
                    "command"
                },
                self.unasserted
            ),
        }
    }

    /// Asserts that every command sent so far has been asserted.
    #[track_caller]
    pub fn expect_no_command(self) -> Self {
        assert!(
            self.unasserted.is_empty(),
            "unexpected commands: {:?}",
            self.unasserted
        );
        self
    }

    #[track_caller]
    fn pending_request(&self) -> crate::ids::RequestId {
        assert!(
            self.unasserted.is_empty(),
            "assert the commands the saga sent before replying: {:?}",
            self.unasserted
        );
        let waiting: Vec<&str> = self
            .instance
            .state
            .branches
            .iter()
            .filter(|b| b.is_unfinished())
            .map(|b| b.step.as_str())
            .collect();
        assert!(
            waiting.len() < 2,
            "steps {waiting:?} wait together: answer one with `reply_to(step, ..)`"
        );
        match self.instance.state.pending {
            Some(Pending::Reply { request_id }) => request_id,
            other => panic!(
                "the saga waits for no reply (status {}, pending {other:?})",
                self.instance.state.status
            ),
        }
    }

    /// The request step `step` waits for the reply to (a step of a parallel group, or the
    /// current step).
    #[track_caller]
    fn request_of(&self, step: &str) -> crate::ids::RequestId {
        assert!(
            self.unasserted.is_empty(),
            "assert the commands the saga sent before replying: {:?}",
            self.unasserted
        );
        let state = &self.instance.state;
        let pending = match state.branches.iter().find(|b| b.step == step) {
            Some(branch) => match branch.state {
                BranchState::Waiting { pending } => Some(pending),
                _ => None,
            },
            None if state.current_step.as_deref() == Some(step) => state.pending,
            None => None,
        };
        match pending {
            Some(Pending::Reply { request_id }) => request_id,
            other => panic!(
                "step `{step}` waits for no reply (status {}, pending {other:?}, branches {:?})",
                state.status, state.branches
            ),
        }
    }

    /// Answers the command of step `step` — one of a parallel group's, which wait together
    /// — with `reply`.
    #[track_caller]
    pub fn reply_to<R: Reply>(self, step: &str, reply: R) -> Self {
        let request_id = self.request_of(step);
        let reply = IncomingReply::from_reply(&reply)
            .unwrap_or_else(|err| panic!("cannot encode the reply: {err}"));
        self.event(SagaEvent::Reply { request_id, reply })
    }

    /// Answers the command of step `step` with a generic failure.
    #[track_caller]
    pub fn fail_step(self, step: &str, reason: &str) -> Self {
        self.reply_to(step, CommandFailed::new(reason))
    }

    /// Fires the timeout of step `step`'s command.
    #[track_caller]
    pub fn time_out_step(mut self, step: &str) -> Self {
        let request_id = self.request_of(step);
        let state = &self.instance.state;
        let (attempt, deadline) = match state.branches.iter().find(|b| b.step == step) {
            Some(branch) => (branch.attempt, branch.deadline),
            None => (state.attempt, state.deadline),
        };
        let Some(due) = deadline else {
            panic!("step {step:?} has no timeout configured");
        };
        let timer = SagaTimer::Timeout {
            request_id,
            attempt,
        };
        self.now = self.now.max(due);
        self.timers.retain(|(t, _)| *t != timer);
        self.timed_out.push((step.to_owned(), request_id));
        self.event(SagaEvent::Timer(timer))
    }

    /// Delivers `reply` late: to step `step`'s command that last timed out, once the saga
    /// stopped waiting for it. Panics unless the engine ignores it.
    #[track_caller]
    pub fn late_reply_to<R: Reply>(self, step: &str, reply: R) -> Self {
        let Some(request_id) = self
            .timed_out
            .iter()
            .rev()
            .find(|(timed_out, _)| timed_out == step)
            .map(|(_, request_id)| *request_id)
        else {
            panic!("no command of step `{step}` timed out");
        };
        let reply = IncomingReply::from_reply(&reply)
            .unwrap_or_else(|err| panic!("cannot encode the reply: {err}"));
        self.expect_ignored(SagaEvent::Reply { request_id, reply }, "late reply")
    }

    /// Answers the outstanding command with `reply`; its value decides success or failure.
    #[track_caller]
    pub fn reply<R: Reply>(self, reply: R) -> Self {
        let request_id = self.pending_request();
        let reply = IncomingReply::from_reply(&reply)
            .unwrap_or_else(|err| panic!("cannot encode the reply: {err}"));
        self.event(SagaEvent::Reply { request_id, reply })
    }

    /// Delivers the last reply again, as a broker that delivers twice does, and asserts the
    /// saga ignores it and sends nothing.
    #[track_caller]
    pub fn duplicate_last_reply(self) -> Self {
        let Some(event) = self.last_reply.clone() else {
            panic!("no reply has been given yet");
        };
        self.expect_ignored(event, "duplicate reply")
    }

    #[track_caller]
    fn expect_ignored(self, event: SagaEvent, what: &str) -> Self {
        match engine::transition(S::definition(), &self.instance, &event, self.now) {
            Ok(Outcome::Ignored(_)) => self,
            Ok(Outcome::Applied(t)) => panic!("the {what} was applied: {:?}", t.history),
            Err(err) => panic!("the engine refused the {what}: {err}"),
        }
    }

    /// Answers the outstanding command with a generic failure (as a participant whose handler
    /// returned an error does).
    #[track_caller]
    pub fn fail(self, reason: &str) -> Self {
        self.reply(CommandFailed::new(reason))
    }

    /// Fires the outstanding command's timeout.
    #[track_caller]
    pub fn time_out(mut self) -> Self {
        let state = &self.instance.state;
        let Some(Pending::Reply { request_id }) = state.pending else {
            panic!("no reply is outstanding (status {})", state.status);
        };
        let timer = SagaTimer::Timeout {
            request_id,
            attempt: state.attempt,
        };
        let Some(due) = state.deadline else {
            panic!("step {:?} has no timeout configured", state.current_step);
        };
        let step = state.current_step.clone().unwrap_or_default();
        self.now = self.now.max(due);
        self.timers.retain(|(t, _)| *t != timer);
        self.timed_out.push((step, request_id));
        self.event(SagaEvent::Timer(timer))
    }

    /// Waits out the scheduled retry backoff and fires the retry.
    #[track_caller]
    pub fn fire_retry(mut self) -> Self {
        let state = &self.instance.state;
        let Some(Pending::Retry { request_id }) = state.pending else {
            panic!(
                "no retry is scheduled (status {}, pending {:?})",
                state.status, state.pending
            );
        };
        if let Some(due) = state.deadline {
            self.now = self.now.max(due);
        }
        let timer = SagaTimer::RetryDue { request_id };
        self.timers.retain(|(t, _)| *t != timer);
        self.event(SagaEvent::Timer(timer))
    }

    /// Moves the fake clock forward without firing anything.
    pub fn advance(mut self, by: Duration) -> Self {
        self.now = self.now.plus(by);
        self
    }

    /// Gives an operator command (by the operator `test`, with no reason).
    #[track_caller]
    pub fn operator(self, command: OperatorCommand) -> Self {
        self.event(SagaEvent::Operator(OperatorRequest::new(
            command, "test", "",
        )))
    }

    /// An operator cancels the saga with `reason`: it turns back and compensates what ran.
    #[track_caller]
    pub fn cancel(self, reason: &str) -> Self {
        self.event(SagaEvent::Operator(OperatorRequest::new(
            OperatorCommand::Cancel,
            "test",
            reason,
        )))
    }

    /// Asserts that the saga refuses operator `command`, for a reason containing `why`, and
    /// that nothing changed.
    #[track_caller]
    pub fn expect_refused(self, command: OperatorCommand, why: &str) -> Self {
        let event = SagaEvent::Operator(OperatorRequest::new(command, "test", ""));
        match engine::transition(S::definition(), &self.instance, &event, self.now) {
            Err(EngineError::OperatorRefused { why: actual, .. }) => assert!(
                actual.contains(why),
                "{command} was refused because {actual:?}, which does not contain {why:?}"
            ),
            Err(other) => panic!("{command} failed with {other}, not a refusal"),
            Ok(_) => panic!("{command} was not refused"),
        }
        self
    }

    /// Asserts the saga's status.
    #[track_caller]
    pub fn expect_status(self, status: SagaStatus) -> Self {
        assert_eq!(
            self.instance.state.status, status,
            "saga status (last error: {:?})",
            self.instance.state.last_error
        );
        self
    }

    /// Asserts the saga completed and every command was asserted.
    #[track_caller]
    pub fn expect_completed(self) -> Self {
        self.expect_no_command()
            .expect_status(SagaStatus::Completed)
    }

    /// Asserts the saga was compensated and every command was asserted.
    #[track_caller]
    pub fn expect_compensated(self) -> Self {
        self.expect_no_command()
            .expect_status(SagaStatus::Compensated)
    }

    /// Asserts the saga is parked in `failed` with a reason containing `reason`.
    #[track_caller]
    pub fn expect_failed(self, reason: &str) -> Self {
        let test = self.expect_no_command().expect_status(SagaStatus::Failed);
        let error = test.instance.state.last_error.clone().unwrap_or_default();
        assert!(
            error.contains(reason),
            "failure reason {error:?} does not contain {reason:?}"
        );
        test
    }

    /// Asserts that a retry is scheduled (after a failure or a compensation failure).
    #[track_caller]
    pub fn expect_retry_scheduled(self) -> Self {
        assert!(
            matches!(self.instance.state.pending, Some(Pending::Retry { .. })),
            "expected a scheduled retry, found {:?}",
            self.instance.state.pending
        );
        self
    }

    /// Runs assertions on the saga data.
    #[track_caller]
    pub fn expect_data(self, check: impl FnOnce(&S::Data)) -> Self {
        check(&self.instance.data);
        self
    }

    /// The saga data.
    pub fn data(&self) -> &S::Data {
        &self.instance.data
    }

    /// The saga state (everything but the data).
    pub fn state(&self) -> &SagaState {
        &self.instance.state
    }

    /// The timeline so far.
    pub fn history(&self) -> &[HistoryEvent] {
        &self.history
    }

    /// Every command sent so far, in order.
    pub fn sent(&self) -> &[OutgoingCommand] {
        &self.sent
    }

    /// The steps compensated so far, in the order they were undone.
    pub fn compensated_steps(&self) -> Vec<&str> {
        self.history
            .iter()
            .filter_map(|event| match event {
                HistoryEvent::StepCompensated { step } => Some(step.as_str()),
                _ => None,
            })
            .collect()
    }

    /// Asserts the steps compensated so far, in order.
    #[track_caller]
    pub fn expect_compensated_steps(self, steps: &[&str]) -> Self {
        assert_eq!(self.compensated_steps(), steps, "compensated steps");
        self
    }
}

/// Stored JSON that no longer decodes as the current type: see [`decode_stored`].
#[derive(Debug, thiserror::Error)]
#[error(
    "stored JSON does not decode as `{type_name}`: {source}. A field was renamed or removed, or \
     a required field added: give new fields `#[serde(default)]` (or make them `Option`), keep \
     old names with `#[serde(alias = \"…\")]`, or convert old data in a `Migration`"
)]
pub struct StoredDecodeError {
    /// The type it was decoded as.
    pub type_name: &'static str,
    /// serde's error, with the field and position.
    #[source]
    pub source: serde_json::Error,
}

/// `command` as saga `saga_id` sends it, answered to `reply_to` — for driving a
/// participant's handlers directly in a test ([`Participant::dispatch`](crate::participant::Participant::dispatch)).
/// Each call is a new message, as a resend after a lost reply is.
#[track_caller]
pub fn command_message<C: Command>(command: &C, saga_id: SagaId, reply_to: &str) -> Message {
    let headers = Headers::new()
        .with(headers::MESSAGE_TYPE, C::TYPE)
        .with(headers::SAGA_ID, saga_id)
        .with(headers::REQUEST_ID, 1)
        .with(headers::REPLY_TO, reply_to);
    let payload = serde_json::to_string(command)
        .unwrap_or_else(|err| panic!("cannot serialize the command {}: {err}", C::TYPE));
    Message::new(C::CHANNEL, headers, payload)
}

/// Decodes JSON an earlier version stored — saga data, a command's or a reply's payload —
/// as the current type `T`, the way the orchestrator and participants will: the test helper
/// that catches a breaking change before it is deployed. Keep samples of what each deployed
/// version wrote (e.g. `tests/fixtures/v1/*.json`) and decode them in a test.
///
/// serde's defaults are what make a change compatible: an unknown field is ignored (unless
/// the type says `#[serde(deny_unknown_fields)]`), an `Option` field that is missing is
/// `None`, and any other missing field needs `#[serde(default)]`.
///
/// ```
/// # use serde::Deserialize;
/// #[derive(Deserialize)]
/// struct Order { id: i64, note: Option<String> }       // `note` added in version 2
///
/// let order: Order = saga_core::testing::decode_stored(r#"{"id": 7, "from": "v3"}"#).unwrap();
/// assert_eq!((order.id, order.note), (7, None));
/// ```
pub fn decode_stored<T: serde::de::DeserializeOwned>(stored: &str) -> Result<T, StoredDecodeError> {
    serde_json::from_str(stored).map_err(|source| StoredDecodeError {
        type_name: std::any::type_name::<T>(),
        source,
    })
}
