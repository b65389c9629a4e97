//! The four FTGO services as in-memory participants: a test double of `ftgo::services` for
//! runs on saga-core's in-memory runtime and in simulations (no database at all). Each
//! handler follows its `ftgo::services` counterpart: the same states, the same semantic
//! locks, the same answers to a replayed command.

use std::collections::{HashMap, HashSet};

use saga_core::participant::Participant;
use saga_core::{CommandFailed, SemanticLock};

pub use ftgo::services::kitchen::TicketState;
pub use ftgo::services::order::OrderState;

use ftgo::messages::{
    ApproveOrder, AuthorizationReversal, AuthorizeCard, BeginCancelTicket, CancelCreateTicket,
    CancelUndone, CardAuthorization, Cents, ConfirmCancelOrder, ConfirmCancelTicket,
    ConfirmCreateTicket, ConsumerVerification, CreateTicket, OrderApproved, OrderCancelled,
    OrderRejected, RejectOrder, ReverseAuthorization, TicketCancelPending, TicketCancelUndone,
    TicketCancelled, TicketConfirmed, TicketCreated, UndoBeginCancelOrder, UndoBeginCancelTicket,
    ValidateOrderByConsumer, channels,
};

/// The Order service's records.
#[derive(Clone, Debug, Default)]
pub struct Orders {
    /// Order states by order id.
    pub states: HashMap<i64, OrderState>,
}

/// The Consumer service's records.
#[derive(Clone, Debug, Default)]
pub struct Consumers {
    /// Consumers who may not order.
    pub blocked: HashSet<i64>,
}

/// The Kitchen service's records.
#[derive(Clone, Debug, Default)]
pub struct Kitchen {
    /// Restaurants that refuse tickets.
    pub closed_restaurants: HashSet<i64>,
    /// Tickets by order id.
    pub tickets: HashMap<i64, TicketState>,
    /// How many tickets were ever created (to prove effects are not duplicated).
    pub tickets_created: usize,
}

/// A card authorization's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Authorization {
    /// The amount is held.
    Authorized,
    /// Released again by CancelOrderSaga.
    Reversed,
}

/// The Accounting service's records.
#[derive(Clone, Debug, Default)]
pub struct Accounting {
    /// The largest amount a card may be authorized for.
    pub limit: Cents,
    /// Authorizations by order id.
    pub authorizations: HashMap<i64, Authorization>,
    /// How many authorizations were ever made.
    pub authorizations_made: usize,
    /// How many were ever reversed.
    pub reversals_made: usize,
}

fn failed(err: impl ToString) -> CommandFailed {
    CommandFailed::new(err.to_string())
}

/// Moves record `id` from `from` to `to` through its semantic lock; a replayed command
/// finds it there already (see [`SemanticLock::advance`]).
fn advance<S: SemanticLock + PartialEq>(
    state: Option<&mut S>,
    id: i64,
    from: S,
    to: S,
) -> Result<(), CommandFailed> {
    let state = state.ok_or_else(|| failed(format!("no record {id}")))?;
    state.advance(id, from, to).map_err(failed)?;
    Ok(())
}

/// The Order service as a participant: approves, rejects, and confirms or undoes
/// cancellations.
pub fn order_service() -> Participant<Orders> {
    use OrderState::{ApprovalPending, Approved, CancelPending, Cancelled, Rejected};
    Participant::new("order-service", channels::ORDER)
        .handle_fn(|orders: &mut Orders, cmd: ApproveOrder, _| {
            let id = cmd.order_id;
            // Resent after its reply was lost, and cancelled since: approved before.
            if let Some(CancelPending | Cancelled) = orders.states.get(&id) {
                return Ok(OrderApproved);
            }
            advance(orders.states.get_mut(&id), id, ApprovalPending, Approved)?;
            Ok(OrderApproved)
        })
        .handle_fn(|orders: &mut Orders, cmd: RejectOrder, _| {
            let id = cmd.order_id;
            advance(orders.states.get_mut(&id), id, ApprovalPending, Rejected)?;
            Ok(OrderRejected)
        })
        .handle_fn(|orders: &mut Orders, cmd: ConfirmCancelOrder, _| {
            let id = cmd.order_id;
            advance(orders.states.get_mut(&id), id, CancelPending, Cancelled)?;
            Ok(OrderCancelled)
        })
        .handle_fn(|orders: &mut Orders, cmd: UndoBeginCancelOrder, _| {
            let id = cmd.order_id;
            advance(orders.states.get_mut(&id), id, CancelPending, Approved)?;
            Ok(CancelUndone)
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
    use TicketState::{AwaitingAcceptance, CancelPending, Cancelled, CreatePending};
    Participant::new("kitchen-service", channels::KITCHEN)
        .handle_fn(|kitchen: &mut Kitchen, cmd: CreateTicket, _| {
            if kitchen.closed_restaurants.contains(&cmd.restaurant_id) {
                return Err(failed(format!(
                    "restaurant {} is closed",
                    cmd.restaurant_id
                )));
            }
            match kitchen.tickets.get(&cmd.order_id) {
                None => {
                    kitchen.tickets.insert(cmd.order_id, CreatePending);
                    kitchen.tickets_created += 1;
                }
                Some(CreatePending) => {}
                Some(other) => {
                    return Err(failed(format!(
                        "the ticket for order {} is already {}",
                        cmd.order_id,
                        other.state_name()
                    )));
                }
            }
            Ok(TicketCreated {
                ticket_id: cmd.order_id,
            })
        })
        .handle_fn(|kitchen: &mut Kitchen, cmd: ConfirmCreateTicket, _| {
            let id = cmd.ticket_id;
            // Resent after its reply was lost, and being cancelled since: confirmed before.
            if let Some(CancelPending | Cancelled) = kitchen.tickets.get(&id) {
                return Ok(TicketConfirmed);
            }
            advance(
                kitchen.tickets.get_mut(&id),
                id,
                CreatePending,
                AwaitingAcceptance,
            )?;
            Ok(TicketConfirmed)
        })
        .handle_fn(|kitchen: &mut Kitchen, cmd: CancelCreateTicket, _| {
            // Nothing to cancel is fine: a compensation must tolerate "it never happened".
            let id = cmd.order_id;
            if let Some(state) = kitchen.tickets.get_mut(&id) {
                advance(Some(state), id, CreatePending, Cancelled)?;
            }
            Ok(TicketCancelled)
        })
        .handle_fn(|kitchen: &mut Kitchen, cmd: BeginCancelTicket, _| {
            let id = cmd.order_id;
            advance(
                kitchen.tickets.get_mut(&id),
                id,
                AwaitingAcceptance,
                CancelPending,
            )?;
            Ok(TicketCancelPending)
        })
        .handle_fn(|kitchen: &mut Kitchen, cmd: UndoBeginCancelTicket, _| {
            let id = cmd.order_id;
            advance(
                kitchen.tickets.get_mut(&id),
                id,
                CancelPending,
                AwaitingAcceptance,
            )?;
            Ok(TicketCancelUndone)
        })
        .handle_fn(|kitchen: &mut Kitchen, cmd: ConfirmCancelTicket, _| {
            let id = cmd.order_id;
            advance(kitchen.tickets.get_mut(&id), id, CancelPending, Cancelled)?;
            Ok(TicketCancelled)
        })
}

/// The Accounting service as a participant: authorizes cards up to a limit and reverses
/// authorizations.
pub fn accounting_service() -> Participant<Accounting> {
    Participant::new("accounting-service", channels::ACCOUNTING)
        .handle_fn(|accounting: &mut Accounting, cmd: AuthorizeCard, _| {
            let authorized = CardAuthorization::Authorized {
                authorization_id: format!("auth-{}", cmd.order_id),
            };
            if accounting.authorizations.contains_key(&cmd.order_id) {
                return Ok(authorized);
            }
            if cmd.order_total > accounting.limit {
                return Ok(CardAuthorization::Declined {
                    reason: format!("limit exceeded: {} > {}", cmd.order_total, accounting.limit),
                });
            }
            accounting
                .authorizations
                .insert(cmd.order_id, Authorization::Authorized);
            accounting.authorizations_made += 1;
            Ok(authorized)
        })
        .handle_fn(
            |accounting: &mut Accounting, cmd: ReverseAuthorization, _| {
                Ok(match accounting.authorizations.get_mut(&cmd.order_id) {
                    Some(state @ Authorization::Authorized) => {
                        *state = Authorization::Reversed;
                        accounting.reversals_made += 1;
                        AuthorizationReversal::Reversed
                    }
                    Some(Authorization::Reversed) => AuthorizationReversal::Reversed,
                    None => AuthorizationReversal::Refused {
                        reason: format!("no authorization for order {}", cmd.order_id),
                    },
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
pub const BLOCKED_CONSUMER: i64 = 666;
/// The closed restaurant in the sample data.
pub const CLOSED_RESTAURANT: i64 = 13;
/// The card limit in the sample data, in cents.
pub const CARD_LIMIT: Cents = 10_000;

/// FTGO in one process, with sample data: consumer [`BLOCKED_CONSUMER`] is blocked,
/// restaurant [`CLOSED_RESTAURANT`] is closed, and cards are limited to [`CARD_LIMIT`].
pub struct FtgoSystem {
    /// The runtime: orchestrator, participants, transport, clock.
    pub runtime: InMemoryRuntime,
    /// The Order service's records.
    pub orders: Arc<Mutex<Orders>>,
    /// The Consumer service's records.
    pub consumers: Arc<Mutex<Consumers>>,
    /// The Kitchen service's records.
    pub kitchen: Arc<Mutex<Kitchen>>,
    /// The Accounting service's records.
    pub accounting: Arc<Mutex<Accounting>>,
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
    pub fn new(transport: InMemoryTransport) -> Self {
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
    pub async fn place_order(
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
    pub async fn status(&self, saga_id: SagaId) -> Result<SagaStatus, OrchestratorError> {
        Ok(self
            .runtime
            .orchestrator()
            .load(saga_id)
            .await?
            .state
            .status)
    }
}
