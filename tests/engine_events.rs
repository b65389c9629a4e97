//! The engine's handling of timeouts, stale and malformed replies, operator commands, retry
//! limits and backoff — and the runtime check of the step rules for hand-built definitions.

use std::time::Duration;

use saga_core::definition::{DefinitionError, IncomingReply};
use saga_core::engine::{
    self, EngineError, Ignored, Outcome, Pending, SagaEvent, SagaInstance, SagaTimer,
};
use saga_core::testing::SagaTest;
use saga_core::{
    Command, OperatorCommand, OperatorRequest, Reply, RetryPolicy, Saga, SagaDefinition, SagaId,
    SagaStatus, Step, Timestamp, saga,
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
#[command(channel = "warehouse", reply = Done)]
struct Release {
    id: u32,
}

#[derive(Debug, PartialEq, Serialize, Deserialize, Command)]
#[command(channel = "payments", reply = Done)]
struct Pay {
    id: u32,
}

#[derive(Debug, PartialEq, Serialize, Deserialize, Command)]
#[command(channel = "shipping", reply = Done)]
struct Ship {
    id: u32,
}

#[derive(Debug, PartialEq, Serialize, Deserialize, Reply)]
struct Done;

#[derive(Debug, PartialEq, Serialize, Deserialize, Reply)]
struct Unrelated;

fn reserve(d: &Data) -> Reserve {
    Reserve { id: d.id }
}
fn release(d: &Data) -> Release {
    Release { id: d.id }
}
fn pay(d: &Data) -> Pay {
    Pay { id: d.id }
}
fn ship(d: &Data) -> Ship {
    Ship { id: d.id }
}

saga! {
    /// Reserve (times out fast), pay (the pivot), ship (retried three times at most).
    saga OrderSaga(Data) {
        compensatable reserve { invoke: reserve, compensate: release,
                                timeout: Duration::from_secs(5) }
        pivot pay { invoke: pay }
        retriable ship { invoke: ship, timeout: Duration::from_secs(10),
                         retry: RetryPolicy::fixed(Duration::from_secs(1)).max_attempts(3) }
    }
}

fn data() -> Data {
    Data { id: 9 }
}

#[test]
fn a_timed_out_compensatable_step_is_undone_as_well() {
    // It may have taken effect before its reply got lost, so its compensation runs.
    SagaTest::<OrderSaga>::given(data())
        .expect_command(Reserve { id: 9 })
        .time_out()
        .expect_compensation(Release { id: 9 })
        .reply(Done)
        .expect_compensated()
        .expect_compensated_steps(&["reserve"]);
}

#[test]
fn a_timed_out_retriable_step_is_resent_with_the_same_request_id() {
    let test = SagaTest::<OrderSaga>::given(data())
        .expect_command(Reserve { id: 9 })
        .reply(Done)
        .expect_command(Pay { id: 9 })
        .reply(Done)
        .expect_command(Ship { id: 9 });
    let first = test.state().pending;
    let test = test.time_out().expect_command(Ship { id: 9 });
    assert_eq!(test.state().pending, first, "a resend keeps the request id");
    assert_eq!(test.state().attempt, 2);
    test.reply(Done).expect_completed();
}

#[test]
fn a_retriable_step_that_keeps_timing_out_parks_and_skip_moves_on() {
    SagaTest::<OrderSaga>::given(data())
        .expect_command(Reserve { id: 9 })
        .reply(Done)
        .expect_command(Pay { id: 9 })
        .reply(Done)
        .expect_command(Ship { id: 9 })
        .time_out()
        .expect_command(Ship { id: 9 })
        .time_out()
        .expect_command(Ship { id: 9 })
        .time_out()
        .expect_failed("step `ship` failed after 3 attempts: no reply within 10000 ms (attempt 3)")
        .operator(OperatorCommand::Skip)
        .expect_completed();
}

#[test]
fn a_failed_retriable_step_never_turns_the_saga_back() {
    SagaTest::<OrderSaga>::given(data())
        .expect_command(Reserve { id: 9 })
        .reply(Done)
        .expect_command(Pay { id: 9 })
        .reply(Done)
        .expect_command(Ship { id: 9 })
        .fail("carrier down")
        .fire_retry()
        .expect_command(Ship { id: 9 })
        .fail("carrier down")
        .fire_retry()
        .expect_command(Ship { id: 9 })
        .fail("carrier down")
        .expect_failed("step `ship` failed after 3 attempts: carrier down")
        .expect_compensated_steps(&[])
        .operator(OperatorCommand::Retry)
        .expect_command(Ship { id: 9 })
        .reply(Done)
        .expect_completed();
}

fn start() -> SagaInstance<Data> {
    engine::start(OrderSaga::definition(), SagaId::new(), data(), Timestamp(0))
        .expect("starts")
        .instance
}

fn done() -> IncomingReply {
    IncomingReply::from_reply(&Done).expect("encodes")
}

fn waiting_for(instance: &SagaInstance<Data>) -> saga_core::RequestId {
    match instance.state.pending {
        Some(Pending::Reply { request_id }) => request_id,
        other => panic!("not waiting for a reply: {other:?}"),
    }
}

#[test]
fn duplicate_and_stale_replies_and_timers_change_nothing() {
    let definition = OrderSaga::definition();
    let instance = start();
    let first = waiting_for(&instance);
    let reply = SagaEvent::Reply {
        request_id: first,
        reply: done(),
    };
    let after = engine::transition(definition, &instance, &reply, Timestamp(1))
        .expect("applies")
        .applied()
        .expect("not ignored")
        .instance;
    // The same reply again is stale now.
    let again = engine::transition(definition, &after, &reply, Timestamp(2)).expect("handled");
    assert_eq!(
        again,
        Outcome::Ignored(Ignored::StaleReply { request_id: first })
    );
    // The reserve step's timeout fires late: stale.
    let timer = SagaTimer::Timeout {
        request_id: first,
        attempt: 1,
    };
    let late = engine::transition(
        definition,
        &after,
        &SagaEvent::Timer(timer),
        Timestamp(9_000),
    )
    .expect("handled");
    assert_eq!(late, Outcome::Ignored(Ignored::StaleTimer(timer)));
}

#[test]
fn a_reply_of_the_wrong_type_is_refused_and_changes_nothing() {
    let instance = start();
    let wrong = SagaEvent::Reply {
        request_id: waiting_for(&instance),
        reply: IncomingReply::from_reply(&Unrelated).expect("encodes"),
    };
    let err = engine::transition(OrderSaga::definition(), &instance, &wrong, Timestamp(1))
        .expect_err("refused");
    assert!(
        matches!(err, EngineError::MalformedReply { ref step, .. } if step == "reserve"),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("unexpected reply `Unrelated` to `Reserve` (expected `Done`"),
        "{err}"
    );

    let garbage = SagaEvent::Reply {
        request_id: waiting_for(&instance),
        reply: IncomingReply {
            reply_type: "Done".to_owned(),
            outcome: saga_core::ReplyOutcome::Success,
            payload: "[1, 2".to_owned(),
            undelivered_before: None,
        },
    };
    let err = engine::transition(OrderSaga::definition(), &instance, &garbage, Timestamp(1))
        .expect_err("refused");
    assert!(
        err.to_string().contains("malformed payload for `Done`"),
        "{err}"
    );
}

#[test]
fn operator_commands_apply_only_to_parked_sagas() {
    let instance = start();
    let err = engine::transition(
        OrderSaga::definition(),
        &instance,
        &SagaEvent::Operator(OperatorRequest::new(OperatorCommand::Retry, "test", "")),
        Timestamp(1),
    )
    .expect_err("refused");
    assert!(matches!(
        err,
        EngineError::OperatorRefused {
            status: SagaStatus::Running,
            command: OperatorCommand::Retry,
            ..
        }
    ));
}

#[test]
fn a_state_naming_a_removed_step_is_reported_not_guessed() {
    let mut instance = start();
    instance.state.current_step = Some("renamed_away".to_owned());
    let reply = SagaEvent::Reply {
        request_id: waiting_for(&instance),
        reply: done(),
    };
    let err = engine::transition(OrderSaga::definition(), &instance, &reply, Timestamp(1))
        .expect_err("refused");
    assert!(
        matches!(err, EngineError::UnknownStep { ref step, .. } if step == "renamed_away"),
        "{err}"
    );
}

#[test]
fn saga_state_survives_a_json_round_trip() {
    let instance = start();
    let json = serde_json::to_string(&instance).expect("serializes");
    let back: SagaInstance<Data> = serde_json::from_str(&json).expect("deserializes");
    assert_eq!(back, instance);
    assert!(json.contains(r#""current_step":"reserve""#), "{json}");
}

#[test]
fn backoff_grows_is_capped_and_jitter_stays_within_twenty_percent() {
    let policy = RetryPolicy::exponential(Duration::from_millis(100))
        .max_backoff(Duration::from_secs(2))
        .jitter(false);
    let delays: Vec<u128> = (1..=7)
        .map(|attempt| policy.backoff(attempt, SagaId::new()).as_millis())
        .collect();
    assert_eq!(delays, [100, 200, 400, 800, 1600, 2000, 2000]);

    let jittered = policy.clone().jitter(true);
    let saga = SagaId::new();
    for attempt in 1..=7 {
        let base = policy.backoff(attempt, saga).as_millis();
        let delay = jittered.backoff(attempt, saga).as_millis();
        assert!(
            delay * 5 >= base * 4 && delay * 5 <= base * 6,
            "{delay} vs {base}"
        );
        assert_eq!(
            delay,
            jittered.backoff(attempt, saga).as_millis(),
            "deterministic"
        );
    }
    assert!(policy.allows_another(9));
    assert!(!policy.allows_another(10));
    assert!(
        RetryPolicy::default()
            .forever()
            .allows_another(u32::MAX - 1)
    );
}

#[test]
fn hand_built_definitions_are_checked_at_run_time() {
    let build = |steps: Vec<saga_core::StepDefinition<Data>>| {
        steps
            .into_iter()
            .fold(SagaDefinition::<Data>::builder("Manual"), |b, s| b.step(s))
            .build()
            .map(|d| d.name().to_owned())
    };
    assert_eq!(
        build(vec![]).unwrap_err(),
        DefinitionError::Empty("Manual".to_owned())
    );
    assert!(matches!(
        build(vec![Step::pivot("a").into(), Step::pivot("b").into()]).unwrap_err(),
        DefinitionError::SecondPivot { .. }
    ));
    assert!(matches!(
        build(vec![
            Step::pivot("a").into(),
            Step::compensatable("b").into()
        ])
        .unwrap_err(),
        DefinitionError::CompensatableTooLate { .. }
    ));
    assert!(matches!(
        build(vec![Step::retriable("a").into(), Step::pivot("b").into()]).unwrap_err(),
        DefinitionError::RetriableBeforePivot { .. }
    ));
    assert!(matches!(
        build(vec![Step::pivot("a").compensate(release).into()]).unwrap_err(),
        DefinitionError::CompensationNotAllowed { .. }
    ));
    assert!(matches!(
        build(vec![
            Step::compensatable("a").into(),
            Step::compensatable("a").into()
        ])
        .unwrap_err(),
        DefinitionError::DuplicateStep(_)
    ));
    assert_eq!(
        build(vec![
            Step::compensatable("a").into(),
            Step::retriable("b").into()
        ]),
        Ok("Manual".to_owned()),
        "retriable steps may follow compensatable ones when there is no pivot"
    );
}

/// A one-way command: nothing answers it, so it needs no reply type.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Command)]
#[command(channel = "emails", notification)]
struct Receipt {
    id: u32,
}

fn receipt(d: &Data) -> Receipt {
    Receipt { id: d.id }
}

saga! {
    /// Pay, then tell the customer.
    saga NotifyingSaga(Data) {
        pivot pay { invoke: pay }
        retriable tell { notify: receipt }
    }
}

/// A notification is asserted like any command, and the saga goes on without a reply.
#[test]
fn a_notification_is_asserted_like_a_command_and_needs_no_reply() {
    SagaTest::<NotifyingSaga>::given(data())
        .expect_command(Pay { id: 9 })
        .reply(Done)
        .expect_command(Receipt { id: 9 })
        .expect_completed();
}

/// Its participant's handler answers `NoReply`, and nothing is sent back.
#[tokio::test]
async fn a_notification_handler_sends_nothing_back() {
    use saga_core::message::{Headers, encode_payload, headers};
    use saga_core::participant::Participant;
    use saga_core::{Message, NoReply};

    let participant = Participant::<Vec<u32>>::new("mailer", "emails").handle_async::<Receipt>(
        |sent, receipt, meta| {
            Box::pin(async move {
                assert_eq!(meta.reply_to, None, "a notification names no reply channel");
                sent.push(receipt.id);
                Ok(NoReply)
            })
        },
    );
    let payload = encode_payload(Receipt::TYPE, &Receipt { id: 9 }).expect("encodes");
    let mut routing = Headers::new();
    routing.insert(headers::MESSAGE_TYPE, Receipt::TYPE);
    let message = Message::new("emails", routing, payload);
    let mut sent = Vec::new();
    let dispatch = participant.dispatch(&mut sent, &message).await;
    assert_eq!(sent, [9]);
    assert!(dispatch.reply.is_none(), "{dispatch:?}");
    assert!(dispatch.dead_letter.is_none(), "{dispatch:?}");
}

// ----- parallel groups after the pivot ---------------------------------------------------

#[derive(Debug, PartialEq, Serialize, Deserialize, Command)]
#[command(channel = "mail", reply = Done)]
struct Notify {
    id: u32,
}

fn notify(d: &Data) -> Notify {
    Notify { id: d.id }
}

saga! {
    /// Pay, then ship and notify at once, each retried twice at most.
    saga ShipAndTell(Data) {
        pivot pay { invoke: pay }
        parallel {
            retriable ship   { invoke: ship, retry: RetryPolicy::fixed(Duration::from_secs(1)).max_attempts(2) }
            retriable notify { invoke: notify, retry: RetryPolicy::fixed(Duration::from_secs(1)).max_attempts(2) }
        }
    }
}

/// Paid: shipping and notifying went out together.
fn paid() -> SagaTest<ShipAndTell> {
    SagaTest::<ShipAndTell>::given(data())
        .expect_command(pay(&data()))
        .reply(Done)
        .expect_commands_in_any_order(
            saga_core::testing::CommandSet::new()
                .command(notify(&data()))
                .command(ship(&data())),
        )
}

#[test]
fn a_failing_retriable_step_of_a_group_is_retried_while_the_other_finishes() {
    paid()
        .fail_step("ship", "carrier busy")
        .expect_retry_scheduled()
        .reply_to("notify", Done)
        .fire_retry()
        .expect_command(ship(&data()))
        .reply_to("ship", Done)
        .expect_completed();
}

#[test]
fn a_group_step_out_of_retries_parks_the_saga_and_an_operator_retry_resends_it() {
    let parked = paid()
        .reply_to("notify", Done)
        .fail_step("ship", "carrier busy")
        .fire_retry()
        .expect_command(ship(&data()))
        .fail_step("ship", "carrier still busy")
        .expect_failed("step `ship` failed after 2 attempts: carrier still busy");
    // Retry resends only what had not succeeded; skip counts it done.
    parked
        .operator(OperatorCommand::Retry)
        .expect_status(SagaStatus::Running)
        .expect_command(ship(&data()))
        .reply_to("ship", Done)
        .expect_completed();
    paid()
        .fail_step("notify", "mail down")
        .fail_step("ship", "carrier busy")
        // One timer per saga: the retry due first, then the other.
        .fire_retry()
        .fire_retry()
        .expect_commands_in_any_order(
            saga_core::testing::CommandSet::new()
                .command(ship(&data()))
                .command(notify(&data())),
        )
        .fail_step("ship", "carrier still busy")
        .expect_failed("carrier still busy")
        // `notify` was waiting for its second reply when the saga parked: halted too.
        .operator(OperatorCommand::Skip)
        .expect_completed();
}

#[test]
fn hand_built_groups_follow_the_rules() {
    let lone = SagaDefinition::<Data>::builder("Manual")
        .parallel([Step::compensatable::<Data>("only").invoke(reserve).into()])
        .build();
    assert!(
        matches!(&lone, Err(DefinitionError::Parallel { step, problem }) if step == "only" && problem.contains("at least two")),
        "{lone:?}"
    );
    let with_pivot = SagaDefinition::<Data>::builder("Manual")
        .parallel([
            Step::compensatable::<Data>("a").invoke(reserve).into(),
            Step::pivot::<Data>("b").invoke(pay).into(),
        ])
        .build();
    assert!(
        matches!(&with_pivot, Err(DefinitionError::Parallel { step, .. }) if step == "b"),
        "{with_pivot:?}"
    );
}
