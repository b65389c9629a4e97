//! Liveness in the core, without I/O: every reply wait has a deadline unless a step opts out,
//! commands carry it and expire at participants, bad routing headers are refused on receipt,
//! the watchdog parks sagas that stopped moving (and leaves steps that wait by design
//! alone), and the relay tells a saga when its command can never be sent.

use std::sync::Arc;
use std::time::Duration;

use saga_core::clock::{Clock, ManualClock};
use saga_core::definition::DEFAULT_REPLY_TIMEOUT;
use saga_core::memory::{InMemoryRuntime, InMemoryStore, InMemoryTransport};
use saga_core::message::{CommandMeta, headers, validate_channel};
use saga_core::orchestrator::{Orchestrator, WatchdogAction};
use saga_core::participant::Participant;
use saga_core::ports::SagaStore;
use saga_core::testing::SagaTest;
use saga_core::{
    Command, CommandFailed, Headers, Message, OperatorCommand, Reply, RetryPolicy, Saga, SagaId,
    SagaStatus, Timestamp, saga,
};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct Data {
    id: u32,
}

#[derive(Debug, PartialEq, Serialize, Deserialize, Command)]
#[command(channel = "warehouse", reply = Done)]
struct Reserve {
    id: u32,
}

#[derive(Debug, PartialEq, Serialize, Deserialize, Command)]
#[command(channel = "approvals", reply = Done)]
struct Approve {
    id: u32,
}

/// A command addressed to a name no transport takes: a typo in a channel constant.
#[derive(Debug, PartialEq, Serialize, Deserialize, Command)]
#[command(channel = "ware house", reply = Done)]
struct Misaddressed {
    id: u32,
}

#[derive(Debug, PartialEq, Serialize, Deserialize, Reply)]
struct Done;

fn reserve(d: &Data) -> Reserve {
    Reserve { id: d.id }
}
fn approve(d: &Data) -> Approve {
    Approve { id: d.id }
}
fn misaddressed(d: &Data) -> Misaddressed {
    Misaddressed { id: d.id }
}

saga! {
    /// Every step on the default timeout.
    saga Plain(Data) {
        compensatable reserve { invoke: reserve }
    }
}

saga! {
    /// A saga-wide timeout, one step with its own, one that waits for a human.
    #[saga(timeout = Duration::from_secs(90))]
    saga Tuned(Data) {
        compensatable reserve { invoke: reserve }
        compensatable quick { invoke: reserve, timeout: Duration::from_secs(2) }
        pivot approve { invoke: approve, timeout: none }
    }
}

saga! {
    /// Its only command goes to a name that is not a channel.
    saga Broken(Data) {
        compensatable send { invoke: misaddressed }
    }
}

#[test]
fn every_step_that_waits_has_a_deadline_unless_it_opts_out() {
    assert_eq!(DEFAULT_REPLY_TIMEOUT, Duration::from_secs(300));
    let plain = Plain::definition();
    assert_eq!(plain.steps()[0].timeout(), Some(DEFAULT_REPLY_TIMEOUT));
    let tuned = Tuned::definition();
    let timeouts: Vec<_> = tuned.steps().iter().map(|s| s.timeout()).collect();
    assert_eq!(
        timeouts,
        [
            Some(Duration::from_secs(90)),
            Some(Duration::from_secs(2)),
            None
        ]
    );
    let test = SagaTest::<Plain>::given(Data { id: 1 }).expect_command(Reserve { id: 1 });
    let now = Timestamp(1_700_000_000_000);
    assert_eq!(test.state().deadline, Some(now.plus(DEFAULT_REPLY_TIMEOUT)));
    // Timing out without a reply turns the saga back; the step may have taken effect.
    test.time_out().expect_compensated();
}

#[tokio::test]
async fn commands_carry_the_deadline_their_saga_waits_until() {
    let store = Arc::new(InMemoryStore::new());
    let clock = ManualClock::starting_at(Timestamp(1_000_000));
    let orchestrator = Orchestrator::new(store, "replies")
        .register::<Plain>()
        .with_clock(Arc::new(clock.clone()));
    let prepared = orchestrator
        .prepare_start::<Plain>(Data { id: 1 }, clock.now())
        .expect("starts");
    let command = &prepared.unit.outbox[0];
    let expected = clock
        .now()
        .plus(DEFAULT_REPLY_TIMEOUT)
        .as_millis()
        .to_string();
    assert_eq!(
        command.headers.get(headers::DEADLINE),
        Some(expected.as_str())
    );
    let meta = CommandMeta::from_message(command).expect("readable");
    assert!(!meta.expired_at(clock.now()));
    assert!(
        meta.expired_at(
            clock
                .now()
                .plus(DEFAULT_REPLY_TIMEOUT + Duration::from_millis(1))
        )
    );
}

fn command_with(headers: Headers) -> Message {
    Message::new("warehouse", headers, r#"{"id":1}"#.to_owned())
}

fn routed(reply_to: &str, deadline: Option<u64>) -> Headers {
    let mut h = Headers::new()
        .with(headers::MESSAGE_TYPE, "Reserve")
        .with(headers::SAGA_ID, SagaId::new())
        .with(headers::REQUEST_ID, 1)
        .with(headers::REPLY_TO, reply_to);
    if let Some(deadline) = deadline {
        h.insert(headers::DEADLINE, deadline.to_string());
    }
    h
}

fn counting_participant() -> Participant<u32> {
    Participant::new("warehouse", "warehouse").handle_fn(|runs: &mut u32, _: Reserve, _| {
        *runs += 1;
        Ok::<_, CommandFailed>(Done)
    })
}

#[tokio::test]
async fn a_command_past_its_deadline_is_not_run() {
    let participant = counting_participant();
    let mut runs = 0;
    let now = Timestamp(2_000_000);
    let late = command_with(routed("replies", Some(1_999_999)));
    let dispatch = participant.dispatch_at(&mut runs, &late, now).await;
    assert_eq!(runs, 0, "the handler did not run");
    assert!(
        dispatch.dead_letter.is_none(),
        "an expired command is no poison"
    );
    assert!(
        dispatch.reply.is_none(),
        "no answer: it could be taken for the answer to a resend with the same request id"
    );

    let in_time = command_with(routed("replies", Some(2_000_000)));
    let dispatch = participant.dispatch_at(&mut runs, &in_time, now).await;
    assert_eq!(runs, 1);
    assert_eq!(
        dispatch
            .reply
            .expect("a reply")
            .headers
            .get(headers::REPLY_OUTCOME),
        Some("success")
    );
}

#[tokio::test]
async fn a_reply_to_that_is_not_a_channel_is_refused_on_receipt() {
    let participant = counting_participant();
    let mut runs = 0;
    for bad in ["bad channel", "a..b", "", ".x", "x.", "x>"] {
        let dispatch = participant
            .dispatch(&mut runs, &command_with(routed(bad, None)))
            .await;
        assert!(dispatch.reply.is_none(), "{bad:?}: nothing is sent to it");
        let reason = dispatch.dead_letter.expect("dead-lettered");
        assert!(
            reason.contains("invalid header `reply-to`"),
            "{bad:?}: {reason}"
        );
    }
    assert_eq!(runs, 0);
    for good in ["orderService.replies", "a", "a-b_c.d9"] {
        assert!(validate_channel(good).is_ok(), "{good}");
    }
    assert!(Participant::<u32>::try_new("p", "no spaces please").is_err());
}

#[tokio::test]
async fn the_watchdog_parks_sagas_that_stopped_moving_and_spares_those_that_wait_by_design() {
    let store = Arc::new(InMemoryStore::new());
    let clock = ManualClock::starting_at(Timestamp(1_700_000_000_000));
    let orchestrator = Orchestrator::new(store.clone(), "replies")
        .register::<Plain>()
        .register::<Tuned>()
        .with_clock(Arc::new(clock.clone()));
    let stuck = orchestrator
        .start::<Plain>(Data { id: 1 })
        .await
        .expect("starts");
    let waiting = orchestrator
        .start::<Tuned>(Data { id: 2 })
        .await
        .expect("starts");
    // Move `waiting` to its human approval step, which has no deadline.
    for _ in 0..2 {
        saga_tests::replies::succeed(&orchestrator, "replies", "Done", waiting).await;
    }
    let at_approval = store.load(waiting).await.expect("loads").expect("exists");
    assert_eq!(at_approval.state.current_step.as_deref(), Some("approve"));
    assert_eq!(at_approval.state.deadline, None);

    // Half an hour on, with no timer fired (the timer loop is down, say).
    clock.advance(Duration::from_secs(30 * 60));
    let report = orchestrator
        .watchdog(Duration::from_secs(15 * 60), WatchdogAction::Report, 10)
        .await
        .expect("watches");
    assert_eq!(report.stalled.len(), 1, "{report:?}");
    assert!(report.parked.is_empty(), "report only");
    let report = orchestrator
        .watchdog(Duration::from_secs(15 * 60), WatchdogAction::Park, 10)
        .await
        .expect("watches");
    assert_eq!(report.parked, [stuck]);
    let parked = store.load(stuck).await.expect("loads").expect("exists");
    assert_eq!(parked.state.status, SagaStatus::Failed);
    assert!(
        parked
            .state
            .last_error
            .as_deref()
            .is_some_and(|r| r.contains("deadline passed")),
        "{:?}",
        parked.state.last_error
    );
    let spared = store.load(waiting).await.expect("loads").expect("exists");
    assert_eq!(
        spared.state.status,
        SagaStatus::Running,
        "it waits by design"
    );
}

#[tokio::test]
async fn a_command_the_transport_can_never_carry_fails_its_step() {
    let orchestrator =
        Orchestrator::new(Arc::new(InMemoryStore::new()), "replies").register::<Broken>();
    let runtime = InMemoryRuntime::new(orchestrator, InMemoryTransport::new());
    let saga_id = runtime
        .orchestrator()
        .start::<Broken>(Data { id: 1 })
        .await
        .expect("starts");
    runtime.run_until_idle().await.expect("runs");
    let record = runtime.orchestrator().load(saga_id).await.expect("loads");
    assert_eq!(record.state.status, SagaStatus::Compensated);
    let reason = record.state.compensation_reason.unwrap_or_default();
    assert!(reason.contains("invalid channel name"), "{reason}");
    let dead = runtime.dead_letters().await.expect("reads");
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].consumer, "outbox-relay");
}

saga! {
    /// A pivot that times out fast and is tried twice.
    saga Pivotal(Data) {
        compensatable reserve { invoke: reserve }
        pivot approve { invoke: approve, timeout: Duration::from_secs(1),
                        retry: RetryPolicy::fixed(Duration::from_secs(1)).max_attempts(2) }
    }
}

#[test]
fn a_pivot_that_never_answers_parks_instead_of_turning_back() {
    // It may have taken effect and cannot be undone: resent (same request id), then parked.
    let test = SagaTest::<Pivotal>::given(Data { id: 3 })
        .expect_command(Reserve { id: 3 })
        .reply(Done)
        .expect_command(Approve { id: 3 });
    let request = test.state().pending;
    let test = test.time_out().expect_command(Approve { id: 3 });
    assert_eq!(
        test.state().pending,
        request,
        "a resend keeps the request id"
    );
    let test = test.time_out().expect_no_command();
    assert_eq!(test.state().status, SagaStatus::Failed);
    assert!(test.compensated_steps().is_empty(), "nothing was undone");
    let reason = test.state().last_error.clone().unwrap_or_default();
    assert!(
        reason.contains("whether it took effect is unknown"),
        "{reason}"
    );
    // The operator finds the approval happened and resends; the idempotent answer moves on.
    test.operator(OperatorCommand::Retry)
        .expect_command(Approve { id: 3 })
        .reply(Done)
        .expect_completed();
}

#[test]
fn never_handled_is_about_one_send_and_stale_after_a_resend() {
    use saga_core::definition::IncomingReply;
    use saga_core::engine::{self, Outcome, SagaEvent, SagaInstance};
    let test = SagaTest::<Pivotal>::given(Data { id: 4 })
        .expect_command(Reserve { id: 4 })
        .reply(Done)
        .expect_command(Approve { id: 4 });
    let first_send = test.state().deadline.expect("a deadline");
    let test = test.time_out().expect_command(Approve { id: 4 });
    let second_send = test.state().deadline.expect("a deadline");
    assert_ne!(first_send, second_send);
    let Some(saga_core::engine::Pending::Reply { request_id }) = test.state().pending else {
        panic!("waits for a reply");
    };
    let instance = SagaInstance {
        state: test.state().clone(),
        data: test.data().clone(),
    };
    let undelivered = |before| SagaEvent::Reply {
        request_id,
        reply: IncomingReply {
            undelivered_before: Some(before),
            ..IncomingReply::from_reply(&CommandFailed::new("dead-lettered")).expect("encodes")
        },
    };
    let now = second_send;
    let stale = engine::transition(
        Pivotal::definition(),
        &instance,
        &undelivered(first_send),
        now,
    )
    .expect("handled");
    assert!(matches!(stale, Outcome::Ignored(_)), "{stale:?}");
    let live = engine::transition(
        Pivotal::definition(),
        &instance,
        &undelivered(second_send),
        now,
    )
    .expect("handled");
    let Outcome::Applied(transition) = live else {
        panic!("the current send's failure counts");
    };
    assert_eq!(transition.instance.state.status, SagaStatus::Compensated);
}
