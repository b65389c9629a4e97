//! Exhaustive exploration of both FTGO sagas (`saga_core::explore`): every way their steps
//! can answer — success, failure, a timeout before or after the participant acted, a
//! duplicate reply, an operator's retry or skip of a parked saga — up to the bounds, each
//! path checked against the saga invariants. And the checker is shown to catch real bugs:
//! engine mutants (`saga_core::engine::mutants`) are each found, with a script reaching them.

use ftgo::cancel_order::{CancelOrderData, CancelOrderSaga};
use ftgo::create_order::{CreateOrderSaga, SequentialCreateOrderSaga};
use ftgo::messages::{
    ApproveOrder, AuthorizationReversal, AuthorizeCard, BeginCancelTicket, CancelCreateTicket,
    CancelUndone, CardAuthorization, ConfirmCancelOrder, ConfirmCancelTicket, ConfirmCreateTicket,
    ConsumerVerification, CreateTicket, OrderApproved, OrderCancelled, OrderRejected, RejectOrder,
    ReverseAuthorization, TicketCancelPending, TicketCancelUndone, TicketCancelled,
    TicketConfirmed, TicketCreated, UndoBeginCancelOrder, UndoBeginCancelTicket,
    ValidateOrderByConsumer,
};
use saga_core::Saga;
use saga_core::engine::mutants::{self, Mutant};
use saga_core::explore::{Exploration, ExplorationReport, Violation};
use saga_core::testing::SagaTest;
use saga_tests::create_order::data;

fn create_order<S: Saga<Data = ftgo::create_order::CreateOrderData>>() -> ExplorationReport {
    create_order_exploration::<S>().check()
}

fn create_order_exploration<S: Saga<Data = ftgo::create_order::CreateOrderData>>() -> Exploration<S>
{
    Exploration::<S>::new(data())
        .success::<ValidateOrderByConsumer>(ConsumerVerification::Verified)
        .success::<CreateTicket>(TicketCreated { ticket_id: 55 })
        .success::<CancelCreateTicket>(TicketCancelled)
        .success::<RejectOrder>(OrderRejected)
        .success::<AuthorizeCard>(CardAuthorization::Authorized {
            authorization_id: "auth-1".to_owned(),
        })
        .success::<ConfirmCreateTicket>(TicketConfirmed)
        .success::<ApproveOrder>(OrderApproved)
}

fn assert_every_ending(report: &ExplorationReport) {
    for ending in ["completed", "compensated", "failed"] {
        assert!(
            report.endings.get(ending).copied().unwrap_or(0) > 0,
            "no path ends {ending}: {report:?}"
        );
    }
}

#[test]
fn every_path_of_create_order_saga_keeps_the_invariants() {
    let report = create_order::<CreateOrderSaga>();
    assert_every_ending(&report);
    println!("CreateOrderSaga: {report:?}");
}

#[test]
fn every_path_of_the_sequential_create_order_saga_keeps_the_invariants() {
    let report = create_order::<SequentialCreateOrderSaga>();
    assert_every_ending(&report);
    println!("SequentialCreateOrderSaga: {report:?}");
}

#[test]
fn every_path_of_cancel_order_saga_keeps_the_invariants() {
    let data = CancelOrderData {
        order_id: 1001,
        consumer_id: 7,
        order_total: 2_450,
    };
    let report = Exploration::<CancelOrderSaga>::new(data)
        .success::<BeginCancelTicket>(TicketCancelPending)
        .success::<UndoBeginCancelTicket>(TicketCancelUndone)
        .success::<UndoBeginCancelOrder>(CancelUndone)
        .success::<ReverseAuthorization>(AuthorizationReversal::Reversed)
        .success::<ConfirmCancelTicket>(TicketCancelled)
        .success::<ConfirmCancelOrder>(OrderCancelled)
        .check();
    assert_every_ending(&report);
    println!("CancelOrderSaga: {report:?}");
}

/// The violation the explorer finds in CreateOrderSaga (both definitions) with `mutant` on.
fn caught(mutant: Mutant) -> Vec<Violation> {
    mutants::with(mutant, || {
        [
            create_order_exploration::<SequentialCreateOrderSaga>().run(),
            create_order_exploration::<CreateOrderSaga>().run(),
        ]
        .into_iter()
        .map(|report| report.violation.expect("the mutant is caught"))
        .collect()
    })
}

#[test]
fn the_explorer_catches_compensations_run_in_forward_order() {
    for violation in caught(Mutant::CompensationsInForwardOrder) {
        assert!(
            violation.problem.contains("not in reverse order"),
            "{violation}"
        );
        assert!(!violation.script.is_empty(), "{violation}");
        println!("{violation}");
    }
}

#[test]
fn the_explorer_catches_a_duplicate_reply_taken_for_the_awaited_one() {
    let violations = caught(Mutant::StaleRepliesAccepted);
    // The sequential saga waits for one reply at a time, so the duplicate moves it.
    // (applied, or refused as a reply of the wrong type to the step awaited now)
    assert!(
        violations[0].problem.contains("duplicate"),
        "{}",
        violations[0]
    );
    assert_eq!(
        violations[0].script.last().map(String::as_str),
        Some(".duplicate_last_reply()")
    );
}

#[test]
fn the_explorer_catches_a_lock_that_is_never_released() {
    for violation in caught(Mutant::FirstCompensationSkipped) {
        assert!(
            violation
                .problem
                .contains("took effect and were not undone"),
            "{violation}"
        );
    }
}

/// The script the explorer printed for the forward-order mutant, pasted as it came: it runs
/// in the unit-test DSL and reproduces the violation.
#[test]
fn an_explorer_script_pastes_into_a_unit_test() {
    let test = mutants::with(Mutant::CompensationsInForwardOrder, || {
        SagaTest::<SequentialCreateOrderSaga>::given(data())
            .expect_command_of("verify_consumer") // ValidateOrderByConsumer {"consumer_id":7,"order_id":1001,"order_total":2450}
            .reply_to("verify_consumer", ConsumerVerification::Verified)
            .expect_command_of("create_ticket") // CreateTicket {"order_id":1001,"restaurant_id":3,"line_items":[{"menu_item_id":"chicken-vindaloo","quantity":2}]}
            .reply_to("create_ticket", TicketCreated { ticket_id: 55 })
            .expect_command_of("authorize_card") // AuthorizeCard {"consumer_id":7,"order_id":1001,"order_total":2450}
            .fail_step("authorize_card", "refused")
            .expect_compensation_of("create_order") // RejectOrder {"order_id":1001,"reason":"create order saga failed"}
            .reply_to("create_order", OrderRejected)
            .expect_compensation_of("create_ticket") // CancelCreateTicket {"order_id":1001}
            .reply_to("create_ticket", TicketCancelled)
    });
    assert_eq!(test.compensated_steps(), ["create_order", "create_ticket"]);
}
