//! The four FTGO services as in-memory participants: a test double of `ftgo::services` for
//! runs on saga-core's in-memory runtime (no database at all).

use std::collections::{HashMap, HashSet};

use saga_core::participant::Participant;
use saga_core::{CommandFailed, SemanticLock};

use ftgo::messages::{
    ApproveOrder, AuthorizeCard, CancelCreateTicket, CardAuthorization, Cents, ConfirmCreateTicket,
    ConsumerVerification, CreateTicket, OrderApproved, OrderRejected, RejectOrder, TicketCancelled,
    TicketConfirmed, TicketCreated, ValidateOrderByConsumer, channels,
};

/// The life of an order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, SemanticLock)]
pub(crate) enum OrderState {
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
pub(crate) enum TicketState {
    /// Created by CreateOrderSaga, not yet confirmed.
    #[pending]
    CreatePending,
    /// Confirmed; the restaurant may accept it.
    AwaitingAcceptance,
    /// Cancelled by a compensation.
    Cancelled,
}

/// The Order service's records.
#[derive(Clone, Debug, Default)]
pub(crate) struct Orders {
    /// Order states by order id.
    pub(crate) states: HashMap<i64, OrderState>,
}

/// The Consumer service's records.
#[derive(Clone, Debug, Default)]
pub(crate) struct Consumers {
    /// Consumers who may not order.
    pub(crate) blocked: HashSet<i64>,
}

/// The Kitchen service's records.
#[derive(Clone, Debug, Default)]
pub(crate) struct Kitchen {
    /// Restaurants that refuse tickets.
    pub(crate) closed_restaurants: HashSet<i64>,
    /// Tickets by order id.
    pub(crate) tickets: HashMap<i64, TicketState>,
    /// How many tickets were ever created (to prove effects are not duplicated).
    pub(crate) tickets_created: usize,
}

/// The Accounting service's records.
#[derive(Clone, Debug, Default)]
pub(crate) struct Accounting {
    /// The largest amount a card may be authorized for.
    pub(crate) limit: Cents,
    /// Authorizations by order id.
    pub(crate) authorizations: HashMap<i64, String>,
    /// How many authorizations were ever made.
    pub(crate) authorizations_made: usize,
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
pub(crate) fn order_service() -> Participant<Orders> {
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
pub(crate) fn consumer_service() -> Participant<Consumers> {
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
pub(crate) fn kitchen_service() -> Participant<Kitchen> {
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
pub(crate) fn accounting_service() -> Participant<Accounting> {
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

// ----- the system ------------------------------------------------------------------------

use std::sync::Arc;

use saga_core::memory::{InMemoryRuntime, InMemoryStore, InMemoryTransport};
use saga_core::orchestrator::{Orchestrator, OrchestratorError};
use saga_core::{SagaId, SagaStatus};
use tokio::sync::Mutex;

use ftgo::create_order::{CreateOrderData, CreateOrderSaga};
use ftgo::messages::LineItem;

/// The blocked consumer in the sample data.
pub(crate) const BLOCKED_CONSUMER: i64 = 666;
/// The closed restaurant in the sample data.
pub(crate) const CLOSED_RESTAURANT: i64 = 13;
/// The card limit in the sample data, in cents.
pub(crate) const CARD_LIMIT: Cents = 10_000;

/// FTGO in one process, with sample data: consumer [`BLOCKED_CONSUMER`] is blocked,
/// restaurant [`CLOSED_RESTAURANT`] is closed, and cards are limited to [`CARD_LIMIT`].
pub(crate) struct FtgoSystem {
    /// The runtime: orchestrator, participants, transport, clock.
    pub(crate) runtime: InMemoryRuntime,
    /// The Order service's records.
    pub(crate) orders: Arc<Mutex<Orders>>,
    /// The Consumer service's records.
    pub(crate) consumers: Arc<Mutex<Consumers>>,
    /// The Kitchen service's records.
    pub(crate) kitchen: Arc<Mutex<Kitchen>>,
    /// The Accounting service's records.
    pub(crate) accounting: Arc<Mutex<Accounting>>,
}

impl std::fmt::Debug for FtgoSystem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FtgoSystem")
            .field("runtime", &self.runtime)
            .finish_non_exhaustive()
    }
}

impl FtgoSystem {
    /// The system over `transport`, with the sample data.
    pub(crate) fn new(transport: InMemoryTransport) -> Self {
        let orders = Arc::new(Mutex::new(Orders::default()));
        let consumers = Arc::new(Mutex::new(Consumers {
            blocked: HashSet::from([BLOCKED_CONSUMER]),
        }));
        let kitchen = Arc::new(Mutex::new(Kitchen {
            closed_restaurants: HashSet::from([CLOSED_RESTAURANT]),
            ..Kitchen::default()
        }));
        let accounting = Arc::new(Mutex::new(Accounting {
            limit: CARD_LIMIT,
            ..Accounting::default()
        }));
        let orchestrator =
            Orchestrator::new(Arc::new(InMemoryStore::new()), channels::ORDER_SAGA_REPLIES)
                .register::<CreateOrderSaga>();
        let runtime = InMemoryRuntime::new(orchestrator, transport)
            .participant(order_service(), orders.clone())
            .participant(consumer_service(), consumers.clone())
            .participant(kitchen_service(), kitchen.clone())
            .participant(accounting_service(), accounting.clone());
        Self {
            runtime,
            orders,
            consumers,
            kitchen,
            accounting,
        }
    }

    /// Creates the order (`APPROVAL_PENDING`) and starts CreateOrderSaga for it, as the Order
    /// service does.
    pub(crate) async fn place_order(
        &self,
        order_id: i64,
        consumer_id: i64,
        restaurant_id: i64,
        line_items: Vec<LineItem>,
        total: Cents,
    ) -> Result<SagaId, OrchestratorError> {
        self.orders
            .lock()
            .await
            .states
            .insert(order_id, OrderState::ApprovalPending);
        let data = CreateOrderData::new(order_id, consumer_id, restaurant_id, line_items, total);
        self.runtime
            .orchestrator()
            .start::<CreateOrderSaga>(data)
            .await
    }

    /// A saga's status.
    pub(crate) async fn status(&self, saga_id: SagaId) -> Result<SagaStatus, OrchestratorError> {
        Ok(self
            .runtime
            .orchestrator()
            .load(saga_id)
            .await?
            .state
            .status)
    }
}
