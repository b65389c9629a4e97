//! FTGO as a simulated system (`saga_core::simulation`): the four in-memory services
//! ([`crate::in_memory_ftgo`]), orders placed and cancelled at random times, and the business
//! invariants every run must keep. Run by `tests/simulation.rs`; shown in the README.

use std::time::Duration;

use ftgo::cancel_order::{CancelOrderData, CancelOrderSaga};
use ftgo::create_order::{CreateOrderData, CreateOrderSaga};
use ftgo::messages::{LineItem, channels};
use saga_core::Saga;
use saga_core::orchestrator::Orchestrator;
use saga_core::participant::Participant;
use saga_core::simulation::{Ending, Faults, Request, Scenario, SimRng, Simulation, Start};
use saga_core::{SagaStatus, SemanticLock};

use crate::in_memory_ftgo::{
    Accounting, Authorization, BLOCKED_CONSUMER, CARD_LIMIT, CLOSED_RESTAURANT, Consumers, Kitchen,
    OrderState, Orders, TicketState, accounting_service, consumer_service, kitchen_service,
    order_service,
};

/// The four services' records.
#[derive(Clone, Debug, Default)]
pub struct Ftgo {
    /// The Order service's.
    pub orders: Orders,
    /// The Consumer service's.
    pub consumers: Consumers,
    /// The Kitchen service's.
    pub kitchen: Kitchen,
    /// The Accounting service's.
    pub accounting: Accounting,
}

/// A few orders (some for a blocked consumer, a closed restaurant or over the card limit),
/// each placed at a random time, and for some of them one or two cancellations at random
/// times — often while CreateOrderSaga (definition `S`) is still running.
pub fn scenario<S: Saga<Data = CreateOrderData>>(rng: &mut SimRng) -> Scenario<Ftgo> {
    let mut world = Ftgo::default();
    world.consumers.blocked.insert(BLOCKED_CONSUMER);
    world.kitchen.closed_restaurants.insert(CLOSED_RESTAURANT);
    world.accounting.limit = CARD_LIMIT;
    let mut scenario = Scenario::new(world);
    for order_id in 1..=i64::try_from(rng.between(2, 4)).unwrap_or(2) {
        let consumer_id = match rng.chance(0.15) {
            true => BLOCKED_CONSUMER,
            false => 1 + i64::try_from(rng.below(3)).unwrap_or(0),
        };
        let restaurant_id = if rng.chance(0.15) {
            CLOSED_RESTAURANT
        } else {
            1
        };
        let total = match rng.chance(0.15) {
            true => CARD_LIMIT + 1,
            false => 1_000 + 100 * i64::try_from(rng.below(50)).unwrap_or(0),
        };
        let placed = Duration::from_millis(rng.below(3_000));
        scenario = scenario.request(Request::new(
            format!("create order {order_id}"),
            placed,
            move |ftgo: &mut Ftgo| {
                ftgo.orders
                    .states
                    .insert(order_id, OrderState::ApprovalPending);
                let items = vec![LineItem {
                    menu_item_id: "chicken vindaloo".to_owned(),
                    quantity: 1,
                }];
                let data = CreateOrderData::new(order_id, consumer_id, restaurant_id, items, total);
                Ok(Start::saga::<S>(data))
            },
        ));
        let cancels = match rng.below(4) {
            0 | 1 => 0,
            2 => 1,
            _ => 2,
        };
        for attempt in 1..=cancels {
            let at = Duration::from_millis(rng.below(6_000));
            scenario = scenario.request(Request::new(
                format!("cancel order {order_id} #{attempt}"),
                at,
                move |ftgo: &mut Ftgo| cancel(ftgo, order_id, consumer_id, total),
            ));
        }
    }
    scenario
}

/// What the Order service does when asked to cancel: lock the order in `CANCEL_PENDING` and
/// start CancelOrderSaga, in one transaction — only for an approved order.
pub fn cancel(
    ftgo: &mut Ftgo,
    order_id: i64,
    consumer_id: i64,
    total: i64,
) -> Result<Start, String> {
    let state = ftgo
        .orders
        .states
        .get_mut(&order_id)
        .ok_or_else(|| format!("no order {order_id}"))?;
    match state.lock(order_id, OrderState::CancelPending) {
        Ok(OrderState::Approved) => Ok(Start::saga::<CancelOrderSaga>(CancelOrderData {
            order_id,
            consumer_id,
            order_total: total,
        })),
        Ok(other) => Err(format!(
            "order {order_id} is {}: only an approved order can be cancelled",
            other.state_name()
        )),
        Err(locked) => Err(locked.to_string()),
    }
}

/// Every order's records agree across the services, and nothing stays locked.
pub fn services_agree(ending: &Ending<'_, Ftgo>) -> Result<(), String> {
    let ftgo = ending.world;
    let mut ids: Vec<&i64> = ftgo.orders.states.keys().collect();
    ids.sort();
    for id in ids {
        let order = ftgo.orders.states[id];
        let ticket = ftgo.kitchen.tickets.get(id).copied();
        let authorization = ftgo.accounting.authorizations.get(id).copied();
        let consistent = match order {
            OrderState::Approved => {
                ticket == Some(TicketState::AwaitingAcceptance)
                    && authorization == Some(Authorization::Authorized)
            }
            OrderState::Rejected => {
                matches!(ticket, None | Some(TicketState::Cancelled)) && authorization.is_none()
            }
            OrderState::Cancelled => {
                ticket == Some(TicketState::Cancelled)
                    && authorization == Some(Authorization::Reversed)
            }
            OrderState::ApprovalPending | OrderState::CancelPending => false,
        };
        if !consistent {
            return Err(format!(
                "order {id} is {order:?} with ticket {ticket:?} and authorization \
                 {authorization:?}"
            ));
        }
    }
    if let Some((id, ticket)) = ftgo.kitchen.tickets.iter().find(|(_, t)| t.is_pending()) {
        return Err(format!(
            "the ticket of order {id} stays locked in {ticket:?}"
        ));
    }
    Ok(())
}

/// No effect was applied twice: one ticket, one authorization and at most one reversal per
/// order, however often their commands were delivered.
pub fn effects_once(ending: &Ending<'_, Ftgo>) -> Result<(), String> {
    let ftgo = ending.world;
    let tickets = ftgo.kitchen.tickets.len();
    let authorizations = ftgo.accounting.authorizations.len();
    let reversals = ftgo
        .accounting
        .authorizations
        .values()
        .filter(|a| **a == Authorization::Reversed)
        .count();
    match (
        ftgo.kitchen.tickets_created,
        ftgo.accounting.authorizations_made,
        ftgo.accounting.reversals_made,
    ) {
        (t, a, r) if t == tickets && a == authorizations && r == reversals => Ok(()),
        (t, a, r) => Err(format!(
            "{t} tickets created for {tickets} orders, {a} authorizations made for \
             {authorizations}, {r} reversals for {reversals}"
        )),
    }
}

/// Each saga's end matches its order: CreateOrderSaga completed for an order approved (or
/// cancelled since) and compensated for one rejected; CancelOrderSaga completed exactly when
/// the order is cancelled, and at most one per order.
pub fn sagas_match_orders(ending: &Ending<'_, Ftgo>) -> Result<(), String> {
    let ftgo = ending.world;
    for (id, order) in &ftgo.orders.states {
        let created = ending
            .saga(&format!("create order {id}"))
            .ok_or_else(|| format!("order {id} has no CreateOrderSaga"))?;
        let expected = match order {
            OrderState::Rejected => SagaStatus::Compensated,
            _ => SagaStatus::Completed,
        };
        if created.status != expected {
            return Err(format!(
                "order {id} is {order:?} but its CreateOrderSaga is {}",
                created.status.as_str()
            ));
        }
        let cancels_completed = ending
            .sagas
            .iter()
            .filter(|s| s.request.starts_with(&format!("cancel order {id} #")))
            .filter(|s| s.status == SagaStatus::Completed)
            .count();
        let cancelled = usize::from(*order == OrderState::Cancelled);
        if cancels_completed != cancelled {
            return Err(format!(
                "order {id} is {order:?} after {cancels_completed} completed CancelOrderSagas"
            ));
        }
    }
    Ok(())
}

/// FTGO with `kitchen` as its Kitchen service (a broken one, to show it is caught), and
/// up to three in ten messages lost: enough to exhaust a step's retries and park a saga.
pub fn ftgo_with(kitchen: Participant<Kitchen>) -> Simulation<Ftgo> {
    ftgo_on::<CreateOrderSaga>(kitchen)
}

/// FTGO running definition `S` of CreateOrderSaga (the parallel one, or the book's
/// sequential one), with `kitchen` as its Kitchen service.
pub fn ftgo_on<S: Saga<Data = CreateOrderData>>(kitchen: Participant<Kitchen>) -> Simulation<Ftgo> {
    Simulation::new(|store| {
        Orchestrator::new(store, channels::ORDER_SAGA_REPLIES)
            .register::<S>()
            .register::<CancelOrderSaga>()
    })
    .participant(order_service(), |ftgo: &mut Ftgo| &mut ftgo.orders)
    .participant(consumer_service(), |ftgo: &mut Ftgo| &mut ftgo.consumers)
    .participant(kitchen, |ftgo: &mut Ftgo| &mut ftgo.kitchen)
    .participant(accounting_service(), |ftgo: &mut Ftgo| &mut ftgo.accounting)
    .scenario(scenario::<S>)
    .invariant("the services agree on every order", services_agree)
    .invariant("no effect applied twice", effects_once)
    .invariant("each saga's end matches its order", sagas_match_orders)
    .faults(Faults {
        drop: 0.3,
        ..Faults::default()
    })
    .replay_command(
        "SAGA_SIM_SEED={seed} cargo test -p saga-tests --test simulation -- ftgo_under_faults \
         --nocapture",
    )
}

/// FTGO as it is.
pub fn ftgo() -> Simulation<Ftgo> {
    ftgo_with(kitchen_service())
}
