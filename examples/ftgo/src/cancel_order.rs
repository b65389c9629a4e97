//! CancelOrderSaga: cancel an approved order. The order is put in `CANCEL_PENDING` by the
//! transaction that starts the saga (so a second cancel, or a cancel of an order still being
//! created, is refused at once); then the ticket is put in `CANCEL_PENDING`, the card
//! authorization is reversed (the pivot), and both cancellations are confirmed.

use saga_core::saga;
use serde::{Deserialize, Serialize};

use crate::messages::{
    BeginCancelTicket, Cents, ConfirmCancelOrder, ConfirmCancelTicket, ReverseAuthorization,
    UndoBeginCancelOrder, UndoBeginCancelTicket,
};

/// What CancelOrderSaga carries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CancelOrderData {
    /// The order, already `CANCEL_PENDING`.
    pub order_id: i64,
    /// Who ordered it.
    pub consumer_id: i64,
    /// What was authorized.
    pub order_total: Cents,
}

fn undo_begin_cancel(data: &CancelOrderData) -> UndoBeginCancelOrder {
    UndoBeginCancelOrder {
        order_id: data.order_id,
    }
}

fn begin_cancel_ticket(data: &CancelOrderData) -> BeginCancelTicket {
    BeginCancelTicket {
        order_id: data.order_id,
    }
}

fn undo_begin_cancel_ticket(data: &CancelOrderData) -> UndoBeginCancelTicket {
    UndoBeginCancelTicket {
        order_id: data.order_id,
    }
}

fn reverse_authorization(data: &CancelOrderData) -> ReverseAuthorization {
    ReverseAuthorization {
        consumer_id: data.consumer_id,
        order_id: data.order_id,
        order_total: data.order_total,
    }
}

fn confirm_cancel_ticket(data: &CancelOrderData) -> ConfirmCancelTicket {
    ConfirmCancelTicket {
        order_id: data.order_id,
    }
}

fn confirm_cancel_order(data: &CancelOrderData) -> ConfirmCancelOrder {
    ConfirmCancelOrder {
        order_id: data.order_id,
    }
}

saga! {
    /// Cancels an approved order across the Kitchen and Accounting services.
    pub saga CancelOrderSaga(CancelOrderData) {
        compensatable begin_cancel          { compensate: undo_begin_cancel }
        compensatable begin_cancel_ticket   { invoke: begin_cancel_ticket,
                                              compensate: undo_begin_cancel_ticket }
        pivot         reverse_authorization { invoke: reverse_authorization }
        retriable     confirm_ticket_cancel { invoke: confirm_cancel_ticket }
        retriable     confirm_order_cancel  { invoke: confirm_cancel_order }
    }
}
