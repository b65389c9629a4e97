//! The commands and replies the FTGO services exchange, grouped by the service that handles
//! them. Each command names its channel and its reply type.

use saga_core::{Command, Reply};
use serde::{Deserialize, Serialize};

/// An amount of money in cents.
pub type Cents = i64;

/// One line of an order: a menu item and how many.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineItem {
    /// The menu item.
    pub menu_item_id: String,
    /// How many.
    pub quantity: u32,
}

/// Channels, one per service.
pub mod channels {
    /// The Order service (also the orchestrator's home).
    pub const ORDER: &str = "orderService";
    /// The Consumer service.
    pub const CONSUMER: &str = "consumerService";
    /// The Kitchen service.
    pub const KITCHEN: &str = "kitchenService";
    /// The Accounting service.
    pub const ACCOUNTING: &str = "accountingService";
    /// Where participants reply to the CreateOrderSaga orchestrator.
    pub const ORDER_SAGA_REPLIES: &str = "orderService.sagaReplies";
}

// ----- Order service ------------------------------------------------------------------------

/// Approve an order that is `APPROVAL_PENDING`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Command)]
#[command(channel = "orderService", reply = OrderApproved)]
pub struct ApproveOrder {
    /// The order.
    pub order_id: i64,
}

/// The order is `APPROVED`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Reply)]
pub struct OrderApproved;

/// Reject an order that is `APPROVAL_PENDING` (the compensation of creating it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Command)]
#[command(channel = "orderService", reply = OrderRejected)]
pub struct RejectOrder {
    /// The order.
    pub order_id: i64,
    /// Why the order was rejected.
    pub reason: String,
}

/// The order is `REJECTED`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Reply)]
pub struct OrderRejected;

// ----- Consumer service ---------------------------------------------------------------------

/// Check that the consumer may place this order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Command)]
#[command(channel = "consumerService", reply = ConsumerVerification)]
pub struct ValidateOrderByConsumer {
    /// The consumer.
    pub consumer_id: i64,
    /// The order.
    pub order_id: i64,
    /// The order total.
    pub order_total: Cents,
}

/// The consumer service's verdict.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Reply)]
pub enum ConsumerVerification {
    /// The consumer may order.
    #[success]
    Verified,
    /// The consumer may not order.
    #[failure]
    Invalid {
        /// Why.
        reason: String,
    },
}

// ----- Kitchen service ----------------------------------------------------------------------

/// Create a ticket in `CREATE_PENDING`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Command)]
#[command(channel = "kitchenService", reply = TicketCreated)]
pub struct CreateTicket {
    /// The order the ticket is for (the ticket's id too).
    pub order_id: i64,
    /// The restaurant.
    pub restaurant_id: i64,
    /// What to cook.
    pub line_items: Vec<LineItem>,
}

/// The ticket exists, `CREATE_PENDING`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Reply)]
pub struct TicketCreated {
    /// The new ticket.
    pub ticket_id: i64,
}

/// Confirm a `CREATE_PENDING` ticket: it becomes `AWAITING_ACCEPTANCE`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Command)]
#[command(channel = "kitchenService", reply = TicketConfirmed)]
pub struct ConfirmCreateTicket {
    /// The ticket.
    pub ticket_id: i64,
}

/// The ticket is `AWAITING_ACCEPTANCE`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Reply)]
pub struct TicketConfirmed;

/// Cancel a `CREATE_PENDING` ticket (the compensation of creating it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Command)]
#[command(channel = "kitchenService", reply = TicketCancelled)]
pub struct CancelCreateTicket {
    /// The order whose ticket to cancel.
    pub order_id: i64,
}

/// The ticket is `CANCELLED` (or never existed).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Reply)]
pub struct TicketCancelled;

// ----- Accounting service -------------------------------------------------------------------

/// Authorize the consumer's card for the order total.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Command)]
#[command(channel = "accountingService", reply = CardAuthorization)]
pub struct AuthorizeCard {
    /// The consumer.
    pub consumer_id: i64,
    /// The order.
    pub order_id: i64,
    /// How much.
    pub order_total: Cents,
}

/// The accounting service's verdict.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Reply)]
pub enum CardAuthorization {
    /// The card was charged.
    #[success]
    Authorized {
        /// The authorization, for reversing it later.
        authorization_id: String,
    },
    /// The card was declined.
    #[failure]
    Declined {
        /// Why (limit exceeded, disabled card…).
        reason: String,
    },
}

// ----- CancelOrderSaga ----------------------------------------------------------------------

/// Confirm the cancellation of a `CANCEL_PENDING` order: it becomes `CANCELLED`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Command)]
#[command(channel = "orderService", reply = OrderCancelled)]
pub struct ConfirmCancelOrder {
    /// The order.
    pub order_id: i64,
}

/// The order is `CANCELLED`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Reply)]
pub struct OrderCancelled;

/// Undo the start of a cancellation: a `CANCEL_PENDING` order goes back to `APPROVED`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Command)]
#[command(channel = "orderService", reply = CancelUndone)]
pub struct UndoBeginCancelOrder {
    /// The order.
    pub order_id: i64,
}

/// The order is `APPROVED` again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Reply)]
pub struct CancelUndone;

/// Start cancelling a ticket: `AWAITING_ACCEPTANCE` → `CANCEL_PENDING`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Command)]
#[command(channel = "kitchenService", reply = TicketCancelPending)]
pub struct BeginCancelTicket {
    /// The order whose ticket to cancel.
    pub order_id: i64,
}

/// The ticket is `CANCEL_PENDING`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Reply)]
pub struct TicketCancelPending;

/// Undo the start of a ticket cancellation: `CANCEL_PENDING` → `AWAITING_ACCEPTANCE`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Command)]
#[command(channel = "kitchenService", reply = TicketCancelUndone)]
pub struct UndoBeginCancelTicket {
    /// The order whose ticket it is.
    pub order_id: i64,
}

/// The ticket is `AWAITING_ACCEPTANCE` again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Reply)]
pub struct TicketCancelUndone;

/// Finish cancelling a ticket: `CANCEL_PENDING` → `CANCELLED`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Command)]
#[command(channel = "kitchenService", reply = TicketCancelled)]
pub struct ConfirmCancelTicket {
    /// The order whose ticket it is.
    pub order_id: i64,
}

/// Reverse the card authorization of an order (refund).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Command)]
#[command(channel = "accountingService", reply = AuthorizationReversal)]
pub struct ReverseAuthorization {
    /// The consumer.
    pub consumer_id: i64,
    /// The order.
    pub order_id: i64,
    /// How much.
    pub order_total: Cents,
}

/// The accounting service's verdict on a reversal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Reply)]
pub enum AuthorizationReversal {
    /// The authorization was reversed.
    #[success]
    Reversed,
    /// It could not be (e.g. no authorization exists).
    #[failure]
    Refused {
        /// Why.
        reason: String,
    },
}
