//! CancelOrderSaga, step by step, with the saga unit-test DSL.

use ftgo::cancel_order::{CancelOrderData, CancelOrderSaga};
use ftgo::messages::{
    AuthorizationReversal, BeginCancelTicket, CancelUndone, ConfirmCancelOrder,
    ConfirmCancelTicket, OrderCancelled, ReverseAuthorization, TicketCancelPending,
    TicketCancelUndone, TicketCancelled, UndoBeginCancelOrder, UndoBeginCancelTicket,
};
use saga_core::testing::SagaTest;

const ORDER: i64 = 1002;

fn data() -> CancelOrderData {
    CancelOrderData {
        order_id: ORDER,
        consumer_id: 1,
        order_total: 2_800,
    }
}

fn reverse() -> ReverseAuthorization {
    ReverseAuthorization {
        consumer_id: 1,
        order_id: ORDER,
        order_total: 2_800,
    }
}

#[test]
fn cancelling_an_approved_order_cancels_ticket_and_authorization() {
    SagaTest::<CancelOrderSaga>::given(data())
        .expect_command_to("kitchenService", BeginCancelTicket { order_id: ORDER })
        .reply(TicketCancelPending)
        .expect_command_to("accountingService", reverse())
        .reply(AuthorizationReversal::Reversed)
        .expect_command(ConfirmCancelTicket { order_id: ORDER })
        .reply(TicketCancelled)
        .expect_command_to("orderService", ConfirmCancelOrder { order_id: ORDER })
        .reply(OrderCancelled)
        .expect_completed()
        .expect_compensated_steps(&[]);
}

#[test]
fn a_ticket_that_cannot_be_cancelled_puts_the_order_back() {
    SagaTest::<CancelOrderSaga>::given(data())
        .expect_command(BeginCancelTicket { order_id: ORDER })
        .fail("Ticket 1002 is locked in state CREATE_PENDING by a saga in progress")
        .expect_compensation(UndoBeginCancelOrder { order_id: ORDER })
        .reply(CancelUndone)
        .expect_compensated()
        .expect_compensated_steps(&["begin_cancel"]);
}

#[test]
fn a_refused_reversal_undoes_the_ticket_then_the_order() {
    SagaTest::<CancelOrderSaga>::given(data())
        .expect_command(BeginCancelTicket { order_id: ORDER })
        .reply(TicketCancelPending)
        .expect_command(reverse())
        .reply(AuthorizationReversal::Refused {
            reason: "no authorization for order 1002".to_owned(),
        })
        .expect_compensation(UndoBeginCancelTicket { order_id: ORDER })
        .reply(TicketCancelUndone)
        .expect_compensation(UndoBeginCancelOrder { order_id: ORDER })
        .reply(CancelUndone)
        .expect_compensated()
        .expect_compensated_steps(&["begin_cancel_ticket", "begin_cancel"]);
}
