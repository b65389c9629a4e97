//! CreateOrderSaga, step by step, with the saga unit-test DSL: the book's sequential
//! definition (`SequentialCreateOrderSaga`), then the one FTGO runs, which verifies the
//! consumer while the kitchen ticket is created.

use ftgo::create_order::{CreateOrderSaga, SequentialCreateOrderSaga};
use ftgo::messages::{
    ApproveOrder, CancelCreateTicket, CardAuthorization, ConfirmCreateTicket, ConsumerVerification,
    OrderApproved, OrderRejected, TicketCancelled, TicketConfirmed, TicketCreated,
};
use saga_core::engine::HistoryEvent;
use saga_core::testing::{CommandSet, SagaTest};
use saga_core::{OperatorCommand, SagaStatus};

use saga_tests::create_order::{ORDER, authorize, create_ticket, data, reject, validate};

/// The saga up to the point where the ticket exists.
fn ticket_created() -> SagaTest<SequentialCreateOrderSaga> {
    SagaTest::<SequentialCreateOrderSaga>::given(data())
        .expect_command_to("consumerService", validate())
        .reply(ConsumerVerification::Verified)
        .expect_command_to("kitchenService", create_ticket())
        .reply(TicketCreated { ticket_id: 55 })
}

#[test]
fn happy_path_approves_the_order() {
    ticket_created()
        .expect_command_to("accountingService", authorize())
        .reply(CardAuthorization::Authorized {
            authorization_id: "auth-1".to_owned(),
        })
        .expect_command_to("kitchenService", ConfirmCreateTicket { ticket_id: 55 })
        .reply(TicketConfirmed)
        .expect_command_to("orderService", ApproveOrder { order_id: ORDER })
        .reply(OrderApproved)
        .expect_completed()
        .expect_compensated_steps(&[])
        .expect_data(|d| {
            assert_eq!(d.ticket_id, Some(55));
            assert_eq!(d.authorization_id.as_deref(), Some("auth-1"));
        });
}

#[test]
fn invalid_consumer_rejects_the_order() {
    let test = SagaTest::<SequentialCreateOrderSaga>::given(data())
        .expect_command(validate())
        .reply(ConsumerVerification::Invalid {
            reason: "consumer 7 is blocked".to_owned(),
        })
        .expect_compensation(reject())
        .reply(OrderRejected)
        .expect_compensated()
        .expect_compensated_steps(&["create_order"])
        .expect_data(|d| assert_eq!(d.ticket_id, None));
    assert_eq!(
        test.state().compensation_reason.as_deref(),
        Some("consumer 7 is blocked")
    );
}

#[test]
fn ticket_refused_rejects_the_order() {
    SagaTest::<SequentialCreateOrderSaga>::given(data())
        .expect_command(validate())
        .reply(ConsumerVerification::Verified)
        .expect_command(create_ticket())
        .fail("restaurant 3 is closed")
        // The failed step itself is not compensated: no CancelCreateTicket.
        .expect_compensation(reject())
        .reply(OrderRejected)
        .expect_compensated()
        .expect_compensated_steps(&["create_order"]);
}

#[test]
fn card_declined_cancels_the_ticket_then_rejects_the_order() {
    let test = ticket_created()
        .expect_command(authorize())
        .reply(CardAuthorization::Declined {
            reason: "limit exceeded".to_owned(),
        })
        .expect_compensation(CancelCreateTicket { order_id: ORDER })
        .reply(TicketCancelled)
        .expect_compensation(reject())
        .reply(OrderRejected)
        .expect_compensated()
        .expect_compensated_steps(&["create_ticket", "create_order"]);
    assert_eq!(
        test.state().compensation_reason.as_deref(),
        Some("limit exceeded")
    );
    // Verified, created and declined forward; two compensations backward.
    let compensations: Vec<_> = test
        .sent()
        .iter()
        .filter(|c| c.compensation)
        .map(|c| c.command_type.as_str())
        .collect();
    assert_eq!(compensations, ["CancelCreateTicket", "RejectOrder"]);
}

#[test]
fn confirm_ticket_failing_twice_is_retried_and_completes_without_compensation() {
    ticket_created()
        .expect_command(authorize())
        .reply(CardAuthorization::Authorized {
            authorization_id: "auth-2".to_owned(),
        })
        .expect_command(ConfirmCreateTicket { ticket_id: 55 })
        .fail("kitchen database unavailable")
        .expect_retry_scheduled()
        .fire_retry()
        .expect_command(ConfirmCreateTicket { ticket_id: 55 })
        .fail("kitchen database unavailable")
        .expect_retry_scheduled()
        .fire_retry()
        .expect_command(ConfirmCreateTicket { ticket_id: 55 })
        .reply(TicketConfirmed)
        .expect_command(ApproveOrder { order_id: ORDER })
        .reply(OrderApproved)
        .expect_completed()
        .expect_compensated_steps(&[]);
}

#[test]
fn a_compensation_that_keeps_failing_parks_the_saga_until_an_operator_retries() {
    // The default retry policy allows 10 attempts at the compensation.
    let mut test = ticket_created()
        .expect_command(authorize())
        .reply(CardAuthorization::Declined {
            reason: "card disabled".to_owned(),
        })
        .expect_compensation(CancelCreateTicket { order_id: ORDER });
    for attempt in 1..=10 {
        test = test.fail("kitchen refuses to cancel");
        if attempt < 10 {
            test = test
                .expect_retry_scheduled()
                .fire_retry()
                .expect_compensation(CancelCreateTicket { order_id: ORDER });
        }
    }
    let test = test
        .expect_failed(
            "compensation of `create_ticket` failed after 10 attempts: kitchen refuses to cancel",
        )
        .operator(OperatorCommand::Retry)
        .expect_status(SagaStatus::Compensating)
        .expect_compensation(CancelCreateTicket { order_id: ORDER })
        .reply(TicketCancelled)
        .expect_compensation(reject())
        .reply(OrderRejected)
        .expect_compensated()
        .expect_compensated_steps(&["create_ticket", "create_order"]);
    assert_eq!(test.state().last_error, None);
}

/// The card is declined and the ticket's cancellation keeps failing past its retry limit:
/// the saga parks in `failed`, compensating.
fn parked_cancelling_the_ticket() -> SagaTest<SequentialCreateOrderSaga> {
    let mut test = ticket_created()
        .expect_command(authorize())
        .fail("accounting down")
        .expect_compensation(CancelCreateTicket { order_id: ORDER });
    for attempt in 1..=10 {
        test = test.fail("still failing");
        if attempt < 10 {
            test = test
                .fire_retry()
                .expect_compensation(CancelCreateTicket { order_id: ORDER });
        }
    }
    test
}

#[test]
fn operator_skip_moves_a_parked_compensation_on() {
    parked_cancelling_the_ticket()
        .expect_failed("still failing")
        .operator(OperatorCommand::Skip)
        .expect_compensation(reject())
        .reply(OrderRejected)
        .expect_compensated();
}

#[test]
fn an_operator_cancel_is_refused_once_the_pivot_is_reached() {
    ticket_created()
        .expect_command(authorize())
        .expect_refused(OperatorCommand::Cancel, "has reached `authorize_card`")
        .reply(CardAuthorization::Authorized {
            authorization_id: "auth-1".to_owned(),
        })
        .expect_command(ConfirmCreateTicket { ticket_id: 55 })
        .expect_refused(OperatorCommand::Cancel, "has reached `authorize_card`");
}

#[test]
fn an_operator_cancel_before_the_pivot_undoes_what_ran_in_reverse() {
    SagaTest::<SequentialCreateOrderSaga>::given(data())
        .expect_command(validate())
        .cancel("duplicate order")
        // verify_consumer changes nothing, so only the order is rejected.
        .expect_compensation(reject())
        .reply(OrderRejected)
        .expect_compensated()
        .expect_compensated_steps(&["create_order"]);
}

#[test]
fn an_operator_cancel_while_a_step_awaits_its_reply_undoes_that_step_too() {
    let test = SagaTest::<SequentialCreateOrderSaga>::given(data())
        .expect_command(validate())
        .reply(ConsumerVerification::Verified)
        .expect_command(create_ticket())
        .cancel("the customer phoned to cancel")
        .expect_status(SagaStatus::Compensating)
        // The ticket may have been created: it is cancelled, then the order rejected.
        .expect_compensation(CancelCreateTicket { order_id: ORDER })
        .reply(TicketCancelled)
        .expect_compensation(reject())
        .reply(OrderRejected)
        .expect_compensated()
        .expect_compensated_steps(&["create_ticket", "create_order"]);
    let reason = test.state().compensation_reason.clone().unwrap_or_default();
    assert_eq!(reason, "cancelled by test: the customer phoned to cancel");
}

#[test]
fn retry_and_skip_are_refused_on_a_running_saga_and_cancel_on_a_parked_one() {
    let running = ticket_created().expect_command(authorize());
    running
        .expect_refused(OperatorCommand::Retry, "parked in `failed`")
        .expect_refused(OperatorCommand::Skip, "parked in `failed`");
    parked_cancelling_the_ticket()
        .expect_failed("still failing")
        .expect_refused(OperatorCommand::Cancel, "at or after its pivot");
}

// ----- CreateOrderSaga: verify_consumer ‖ create_ticket ----------------------------------

/// Started: the consumer check and the ticket go out together.
fn forked() -> SagaTest<CreateOrderSaga> {
    SagaTest::<CreateOrderSaga>::given(data()).expect_commands_in_any_order(
        CommandSet::new()
            .command(create_ticket())
            .command(validate()),
    )
}

#[test]
fn parallel_both_answer_in_any_order_and_the_saga_goes_on() {
    let test = forked()
        .reply_to("create_ticket", TicketCreated { ticket_id: 55 })
        .expect_no_command()
        .reply_to("verify_consumer", ConsumerVerification::Verified)
        .expect_command_to("accountingService", authorize())
        .reply(CardAuthorization::Authorized {
            authorization_id: "auth-1".to_owned(),
        })
        .expect_command(ConfirmCreateTicket { ticket_id: 55 })
        .reply(TicketConfirmed)
        .expect_command(ApproveOrder { order_id: ORDER })
        .reply(OrderApproved)
        .expect_completed()
        .expect_data(|d| assert_eq!(d.ticket_id, Some(55)));
    let fork_and_join: Vec<&HistoryEvent> = test
        .history()
        .iter()
        .filter(|e| matches!(e, HistoryEvent::Forked { .. } | HistoryEvent::Joined { .. }))
        .collect();
    let steps = vec!["verify_consumer".to_owned(), "create_ticket".to_owned()];
    let group = "verify_consumer".to_owned();
    assert_eq!(
        fork_and_join,
        [
            &HistoryEvent::Forked {
                group: group.clone(),
                steps: steps.clone()
            },
            &HistoryEvent::Joined { group, steps },
        ]
    );
}

#[test]
fn parallel_an_invalid_consumer_waits_for_the_ticket_then_cancels_it() {
    forked()
        .reply_to(
            "verify_consumer",
            ConsumerVerification::Invalid {
                reason: "consumer 7 is blocked".to_owned(),
            },
        )
        // Nothing is undone while the ticket may still be created.
        .expect_no_command()
        .expect_status(SagaStatus::Running)
        .reply_to("create_ticket", TicketCreated { ticket_id: 55 })
        .expect_compensation(CancelCreateTicket { order_id: ORDER })
        .reply(TicketCancelled)
        .expect_compensation(reject())
        .reply(OrderRejected)
        .expect_compensated()
        .expect_compensated_steps(&["create_ticket", "create_order"]);
}

#[test]
fn parallel_both_failing_rejects_the_order_only() {
    let test = forked()
        .fail_step("create_ticket", "restaurant 3 is closed")
        .reply_to(
            "verify_consumer",
            ConsumerVerification::Invalid {
                reason: "consumer 7 is blocked".to_owned(),
            },
        )
        .expect_compensation(reject())
        .reply(OrderRejected)
        .expect_compensated()
        .expect_compensated_steps(&["create_order"]);
    assert_eq!(
        test.state().compensation_reason.as_deref(),
        Some("restaurant 3 is closed")
    );
}

#[test]
fn parallel_a_ticket_that_times_out_is_cancelled_in_case_it_was_created() {
    forked()
        .reply_to("verify_consumer", ConsumerVerification::Verified)
        .time_out_step("create_ticket")
        .expect_compensation(CancelCreateTicket { order_id: ORDER })
        // The kitchen's answer to the timed-out command comes after all: too late.
        .late_reply_to("create_ticket", TicketCreated { ticket_id: 55 })
        .reply(TicketCancelled)
        .expect_compensation(reject())
        .late_reply_to("create_ticket", TicketCreated { ticket_id: 55 })
        .reply(OrderRejected)
        .expect_compensated()
        .expect_compensated_steps(&["create_ticket", "create_order"]);
}

#[test]
fn parallel_duplicate_and_late_replies_change_nothing() {
    forked()
        .reply_to("create_ticket", TicketCreated { ticket_id: 55 })
        .duplicate_last_reply()
        .reply_to("verify_consumer", ConsumerVerification::Verified)
        .expect_command(authorize())
        // The consumer's answer again, after the join: stale.
        .duplicate_last_reply()
        .reply(CardAuthorization::Declined {
            reason: "limit exceeded".to_owned(),
        })
        .expect_compensation(CancelCreateTicket { order_id: ORDER })
        .reply(TicketCancelled)
        .expect_compensation(reject())
        .reply(OrderRejected)
        .expect_compensated()
        .expect_compensated_steps(&["create_ticket", "create_order"]);
}

#[test]
fn parallel_an_operator_cancel_undoes_the_steps_still_awaiting_their_replies() {
    forked()
        .reply_to("verify_consumer", ConsumerVerification::Verified)
        .cancel("the customer phoned to cancel")
        .expect_compensation(CancelCreateTicket { order_id: ORDER })
        .reply(TicketCancelled)
        // The ticket's reply, after the cancel: stale.
        .expect_compensation(reject())
        .reply(OrderRejected)
        .expect_compensated()
        .expect_compensated_steps(&["create_ticket", "create_order"]);
}
