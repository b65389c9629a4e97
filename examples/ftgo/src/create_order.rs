//! CreateOrderSaga, as in *Microservices Patterns*: create the order (`APPROVAL_PENDING`),
//! verify the consumer and create the kitchen ticket — at once: neither depends on the
//! other — authorize the card (the pivot), then confirm the ticket and approve the order.
//!
//! The book runs every step one after the other; that version is kept as
//! [`SequentialCreateOrderSaga`] (`ftgo --sequential`), a definition of the same saga type.
//!
//! The order row itself is created by the transaction that starts the saga, so the first
//! step does nothing going forward; it only carries the compensation that rejects the order.

use std::time::Duration;

use saga_core::{RetryPolicy, saga};
use serde::{Deserialize, Serialize};

use crate::messages::{
    ApproveOrder, AuthorizeCard, CancelCreateTicket, CardAuthorization, Cents, ConfirmCreateTicket,
    CreateTicket, LineItem, RejectOrder, TicketCreated, ValidateOrderByConsumer,
};

/// What CreateOrderSaga carries from step to step.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateOrderData {
    /// The order, already `APPROVAL_PENDING`.
    pub order_id: i64,
    /// Who ordered.
    pub consumer_id: i64,
    /// From where.
    pub restaurant_id: i64,
    /// What.
    pub line_items: Vec<LineItem>,
    /// For how much.
    pub order_total: Cents,
    /// The kitchen ticket, once created.
    pub ticket_id: Option<i64>,
    /// The card authorization, once given.
    pub authorization_id: Option<String>,
}

impl CreateOrderData {
    /// Data for a new order.
    pub fn new(
        order_id: i64,
        consumer_id: i64,
        restaurant_id: i64,
        line_items: Vec<LineItem>,
        order_total: Cents,
    ) -> Self {
        Self {
            order_id,
            consumer_id,
            restaurant_id,
            line_items,
            order_total,
            ticket_id: None,
            authorization_id: None,
        }
    }
}

/// The compensation of `create_order`: reject the order.
pub fn reject_order(data: &CreateOrderData) -> RejectOrder {
    RejectOrder {
        order_id: data.order_id,
        reason: "create order saga failed".to_owned(),
    }
}

/// `verify_consumer`: ask the Consumer service whether the consumer may order.
pub fn validate_order_by_consumer(data: &CreateOrderData) -> ValidateOrderByConsumer {
    ValidateOrderByConsumer {
        consumer_id: data.consumer_id,
        order_id: data.order_id,
        order_total: data.order_total,
    }
}

/// `create_ticket`: ask the kitchen for a ticket.
pub fn create_ticket(data: &CreateOrderData) -> CreateTicket {
    CreateTicket {
        order_id: data.order_id,
        restaurant_id: data.restaurant_id,
        line_items: data.line_items.clone(),
    }
}

/// Keeps the ticket id from the kitchen's reply.
pub fn ticket_created(data: &mut CreateOrderData, reply: &TicketCreated) {
    data.ticket_id = Some(reply.ticket_id);
}

/// The compensation of `create_ticket`.
pub fn cancel_create_ticket(data: &CreateOrderData) -> CancelCreateTicket {
    CancelCreateTicket {
        order_id: data.order_id,
    }
}

/// `authorize_card`, the pivot: ask Accounting to authorize the card.
pub fn authorize_card(data: &CreateOrderData) -> AuthorizeCard {
    AuthorizeCard {
        consumer_id: data.consumer_id,
        order_id: data.order_id,
        order_total: data.order_total,
    }
}

/// Keeps the authorization id.
pub fn card_authorized(data: &mut CreateOrderData, reply: &CardAuthorization) {
    if let CardAuthorization::Authorized { authorization_id } = reply {
        data.authorization_id = Some(authorization_id.clone());
    }
}

/// `confirm_ticket`: tell the kitchen the ticket stands.
pub fn confirm_create_ticket(data: &CreateOrderData) -> ConfirmCreateTicket {
    ConfirmCreateTicket {
        // The ticket id comes from the kitchen's reply; the ticket is keyed by order.
        ticket_id: data.ticket_id.unwrap_or(data.order_id),
    }
}

/// `approve_order`: tell the Order service the order is approved.
pub fn approve_order(data: &CreateOrderData) -> ApproveOrder {
    ApproveOrder {
        order_id: data.order_id,
    }
}

saga! {
    /// Creates an order across the Consumer, Kitchen and Accounting services, verifying the
    /// consumer and creating the kitchen ticket at once.
    pub saga CreateOrderSaga(CreateOrderData) {
        compensatable create_order    { compensate: reject_order }
        parallel {
            compensatable verify_consumer { invoke: validate_order_by_consumer }
            compensatable create_ticket   { invoke: create_ticket, on_reply: ticket_created,
                                            compensate: cancel_create_ticket }
        }
        pivot         authorize_card  { invoke: authorize_card, on_reply: card_authorized }
        retriable     confirm_ticket  { invoke: confirm_create_ticket,
                                        retry: RetryPolicy::exponential(Duration::from_millis(200))
                                            .max_attempts(5) }
        retriable     approve_order   { invoke: approve_order }
    }
}

saga! {
    /// CreateOrderSaga as the book has it, every step after the previous one: the same saga
    /// type, another definition (its own version). A service runs one or the other.
    #[saga(name = "CreateOrderSaga")]
    pub saga SequentialCreateOrderSaga(CreateOrderData) {
        compensatable create_order    { compensate: reject_order }
        compensatable verify_consumer { invoke: validate_order_by_consumer }
        compensatable create_ticket   { invoke: create_ticket, on_reply: ticket_created,
                                        compensate: cancel_create_ticket }
        pivot         authorize_card  { invoke: authorize_card, on_reply: card_authorized }
        retriable     confirm_ticket  { invoke: confirm_create_ticket,
                                        retry: RetryPolicy::exponential(Duration::from_millis(200))
                                            .max_attempts(5) }
        retriable     approve_order   { invoke: approve_order }
    }
}

/// Which CreateOrderSaga definition the Order service runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CreateOrderFlavor {
    /// [`CreateOrderSaga`]: the consumer verified while the ticket is created.
    #[default]
    Parallel,
    /// [`SequentialCreateOrderSaga`]: the book's order, one step after the other.
    Sequential,
}
