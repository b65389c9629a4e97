//! The four FTGO services as saga participants, with in-memory state.
//!
//! Each service keeps its records in its own state (its "database") and reacts only to
//! commands. Records that a saga is still working on sit in `*_PENDING` states — semantic
//! locks, through [`SemanticLock`] — and are released by the confirming or compensating
//! command.

use std::collections::{HashMap, HashSet};

use saga_core::participant::Participant;
use saga_core::{CommandFailed, SemanticLock};

use crate::messages::{
    ApproveOrder, AuthorizeCard, CancelCreateTicket, CardAuthorization, Cents, ConfirmCreateTicket,
    ConsumerVerification, CreateTicket, OrderApproved, OrderRejected, RejectOrder, TicketCancelled,
    TicketConfirmed, TicketCreated, ValidateOrderByConsumer, channels,
};

/// The life of an order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, SemanticLock)]
pub enum OrderState {
    /// Created; CreateOrderSaga is running.
    #[pending]
    ApprovalPending,
    /// CreateOrderSaga completed.
    Approved,
    /// CreateOrderSaga turned back.
    Rejected,
}

/// The life of a kitchen ticket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, SemanticLock)]
pub enum TicketState {
    /// Created by CreateOrderSaga, not yet confirmed.
    #[pending]
    CreatePending,
    /// Confirmed; the restaurant may accept it.
    AwaitingAcceptance,
    /// Cancelled by a compensation.
    Cancelled,
}

/// The Order service's records.
#[derive(Debug, Default)]
pub struct Orders {
    /// Order states by order id.
    pub states: HashMap<i64, OrderState>,
}

/// The Consumer service's records.
#[derive(Debug, Default)]
pub struct Consumers {
    /// Consumers who may not order.
    pub blocked: HashSet<i64>,
}

/// The Kitchen service's records.
#[derive(Debug, Default)]
pub struct Kitchen {
    /// Restaurants that refuse tickets.
    pub closed_restaurants: HashSet<i64>,
    /// Tickets by order id.
    pub tickets: HashMap<i64, TicketState>,
    /// How many tickets were ever created (to prove effects are not duplicated).
    pub tickets_created: usize,
}

/// The Accounting service's records.
#[derive(Debug, Default)]
pub struct Accounting {
    /// The largest amount a card may be authorized for.
    pub limit: Cents,
    /// Authorizations by order id.
    pub authorizations: HashMap<i64, String>,
    /// How many authorizations were ever made.
    pub authorizations_made: usize,
}

fn failed(err: impl ToString) -> CommandFailed {
    CommandFailed::new(err.to_string())
}

fn order_state(orders: &mut Orders, order_id: i64) -> Result<&mut OrderState, CommandFailed> {
    orders
        .states
        .get_mut(&order_id)
        .ok_or_else(|| failed(format!("no order {order_id}")))
}

/// The Order service as a participant: approves and rejects orders.
pub fn order_service() -> Participant<Orders> {
    Participant::new("order-service", channels::ORDER)
        .handle_fn(|orders: &mut Orders, cmd: ApproveOrder, _| {
            let state = order_state(orders, cmd.order_id)?;
            if *state != OrderState::Approved {
                state.release(OrderState::Approved).map_err(failed)?;
            }
            Ok(OrderApproved)
        })
        .handle_fn(|orders: &mut Orders, cmd: RejectOrder, _| {
            let state = order_state(orders, cmd.order_id)?;
            if *state != OrderState::Rejected {
                state.release(OrderState::Rejected).map_err(failed)?;
            }
            Ok(OrderRejected)
        })
}

/// The Consumer service as a participant: refuses blocked consumers.
pub fn consumer_service() -> Participant<Consumers> {
    Participant::new("consumer-service", channels::CONSUMER).handle_fn(
        |consumers: &mut Consumers, cmd: ValidateOrderByConsumer, _| {
            if consumers.blocked.contains(&cmd.consumer_id) {
                Ok(ConsumerVerification::Invalid {
                    reason: format!("consumer {} is blocked", cmd.consumer_id),
                })
            } else {
                Ok(ConsumerVerification::Verified)
            }
        },
    )
}

/// The Kitchen service as a participant: creates, confirms and cancels tickets, and refuses
/// tickets for closed restaurants.
pub fn kitchen_service() -> Participant<Kitchen> {
    Participant::new("kitchen-service", channels::KITCHEN)
        .handle_fn(|kitchen: &mut Kitchen, cmd: CreateTicket, _| {
            if kitchen.closed_restaurants.contains(&cmd.restaurant_id) {
                return Err(failed(format!(
                    "restaurant {} is closed",
                    cmd.restaurant_id
                )));
            }
            if kitchen.tickets.contains_key(&cmd.order_id) {
                return Err(failed(format!(
                    "a ticket for order {} exists",
                    cmd.order_id
                )));
            }
            kitchen
                .tickets
                .insert(cmd.order_id, TicketState::CreatePending);
            kitchen.tickets_created += 1;
            Ok(TicketCreated {
                ticket_id: cmd.order_id,
            })
        })
        .handle_fn(|kitchen: &mut Kitchen, cmd: ConfirmCreateTicket, _| {
            let state = kitchen
                .tickets
                .get_mut(&cmd.ticket_id)
                .ok_or_else(|| failed(format!("no ticket {}", cmd.ticket_id)))?;
            if *state != TicketState::AwaitingAcceptance {
                state
                    .release(TicketState::AwaitingAcceptance)
                    .map_err(failed)?;
            }
            Ok(TicketConfirmed)
        })
        .handle_fn(|kitchen: &mut Kitchen, cmd: CancelCreateTicket, _| {
            // Nothing to cancel is fine: compensations must tolerate "never happened".
            if let Some(state) = kitchen.tickets.get_mut(&cmd.order_id)
                && *state != TicketState::Cancelled
            {
                state.release(TicketState::Cancelled).map_err(failed)?;
            }
            Ok(TicketCancelled)
        })
}

/// The Accounting service as a participant: authorizes cards up to a limit.
pub fn accounting_service() -> Participant<Accounting> {
    Participant::new("accounting-service", channels::ACCOUNTING).handle_fn(
        |accounting: &mut Accounting, cmd: AuthorizeCard, _| {
            if cmd.order_total > accounting.limit {
                return Ok(CardAuthorization::Declined {
                    reason: format!("limit exceeded: {} > {}", cmd.order_total, accounting.limit),
                });
            }
            let id = format!("auth-{}", cmd.order_id);
            accounting.authorizations.insert(cmd.order_id, id.clone());
            accounting.authorizations_made += 1;
            Ok(CardAuthorization::Authorized {
                authorization_id: id,
            })
        },
    )
}
