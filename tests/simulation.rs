//! Seeded simulation of the whole FTGO system (`saga_core::simulation`): the orchestrator,
//! the four services with their own records, stores, network and clock in one process, with
//! lost, duplicated, delayed and reordered messages, failing databases and crash-restarts.
//! Each seed places a few orders and tries to cancel some of them while they are still being
//! created; every run must end with every saga finished and the services agreeing.
//!
//! `SAGA_SIM_SEEDS=100000` runs a longer search; `SAGA_SIM_SEED=n` replays one seed with
//! its trace. The checks are shown to catch real bugs: engine mutants, a kitchen that forgets
//! to release its lock, and a definition that forgets a compensation.

use std::time::Duration;

use ftgo::cancel_order::{CancelOrderData, CancelOrderSaga};
use ftgo::create_order::{CreateOrderData, CreateOrderSaga};
use ftgo::messages::{CancelCreateTicket, LineItem, TicketCancelled, channels};
use saga_core::engine::mutants::{self, Mutant};
use saga_core::orchestrator::Orchestrator;
use saga_core::participant::Participant;
use saga_core::simulation::{
    Ending, Faults, Request, Scenario, SimRng, Simulation, SimulationReport, Start, seeds_from_env,
};
use saga_core::{SagaStatus, SemanticLock};
use saga_tests::in_memory_ftgo::{
    Accounting, Authorization, BLOCKED_CONSUMER, CARD_LIMIT, CLOSED_RESTAURANT, Consumers, Kitchen,
    OrderState, Orders, TicketState, accounting_service, consumer_service, kitchen_service,
    order_service,
};

/// The seeds CI runs.
const SEEDS: u64 = 10_000;

/// The four services' records.
#[derive(Clone, Debug, Default)]
struct Ftgo {
    orders: Orders,
    consumers: Consumers,
    kitchen: Kitchen,
    accounting: Accounting,
}

/// A few orders (some for a blocked consumer, a closed restaurant or over the card limit),
/// each placed at a random time, and for some of them one or two cancellations at random
/// times — often while CreateOrderSaga is still running.
fn scenario(rng: &mut SimRng) -> Scenario<Ftgo> {
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
                Ok(Start::saga::<CreateOrderSaga>(data))
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
fn cancel(ftgo: &mut Ftgo, order_id: i64, consumer_id: i64, total: i64) -> Result<Start, String> {
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
fn services_agree(ending: &Ending<'_, Ftgo>) -> Result<(), String> {
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
fn effects_once(ending: &Ending<'_, Ftgo>) -> Result<(), String> {
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
fn sagas_match_orders(ending: &Ending<'_, Ftgo>) -> Result<(), String> {
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

fn ftgo_with(kitchen: Participant<Kitchen>) -> Simulation<Ftgo> {
    Simulation::new(|store| {
        Orchestrator::new(store, channels::ORDER_SAGA_REPLIES)
            .register::<CreateOrderSaga>()
            .register::<CancelOrderSaga>()
    })
    .participant(order_service(), |ftgo: &mut Ftgo| &mut ftgo.orders)
    .participant(consumer_service(), |ftgo: &mut Ftgo| &mut ftgo.consumers)
    .participant(kitchen, |ftgo: &mut Ftgo| &mut ftgo.kitchen)
    .participant(accounting_service(), |ftgo: &mut Ftgo| &mut ftgo.accounting)
    .scenario(scenario)
    .invariant("the services agree on every order", services_agree)
    .invariant("no effect applied twice", effects_once)
    .invariant("each saga's end matches its order", sagas_match_orders)
    // Up to three in ten messages lost: enough to exhaust a step's retries and park a saga.
    .faults(Faults {
        drop: 0.3,
        ..Faults::default()
    })
    .replay_command(
        "SAGA_SIM_SEED={seed} cargo test -p saga-tests --test simulation -- ftgo_under_faults \
         --nocapture",
    )
}

fn ftgo() -> Simulation<Ftgo> {
    ftgo_with(kitchen_service())
}

/// Asserts the simulation caught the bug as `expected`; returns what it said.
fn assert_caught(report: &SimulationReport, expected: &str) -> String {
    let Some(failure) = &report.failure else {
        panic!("the simulation missed the bug: {report}");
    };
    assert!(
        failure.problem.contains(expected),
        "caught, but not as expected (`{expected}`): {failure}"
    );
    assert!(
        failure
            .replay
            .contains(&format!("SAGA_SIM_SEED={}", failure.seed))
    );
    assert!(!failure.trace.is_empty());
    format!(
        "caught at seed {} ({} seeds run): {}",
        failure.seed, report.seeds, failure.problem
    )
}

#[test]
fn ftgo_under_faults_keeps_its_invariants() {
    let seeds = seeds_from_env(SEEDS);
    let simulation = ftgo();
    if seeds.end - seeds.start == 1 {
        let run = simulation.run_seed(seeds.start);
        println!("{}", run.trace.join("\n"));
    }
    let report = simulation.check(seeds.clone());
    println!("FTGO simulation: {report}");
    assert_eq!(report.seeds, seeds.end - seeds.start);
    if report.seeds >= SEEDS {
        // The seeds reach every outcome and every kind of fault.
        for ending in ["completed", "compensated"] {
            assert!(
                report.endings.get(ending).copied().unwrap_or(0) > 0,
                "{report}"
            );
        }
        for event in [
            "messages lost",
            "messages duplicated",
            "messages delayed",
            "participant failures",
            "crashes",
            "requests refused",
            "operator retries",
        ] {
            assert!(
                report.events.get(event).copied().unwrap_or(0) > 0,
                "{event}: {report}"
            );
        }
    }
}

#[test]
fn the_same_seed_makes_the_same_run() {
    let simulation = ftgo();
    for seed in [3, 1_234, 9_999] {
        let first = simulation.run_seed(seed);
        let second = simulation.run_seed(seed);
        assert!(first.trace.len() > 10, "{:?}", first.trace);
        assert_eq!(first.trace, second.trace, "seed {seed}");
        assert_eq!(first.events, second.events, "seed {seed}");
    }
}

#[test]
fn a_calm_network_places_and_cancels_orders() {
    let report = ftgo().faults(Faults::none()).check(0..200);
    assert!(report.endings["completed"] > 0, "{report}");
    assert!(!report.events.contains_key("messages lost"), "{report}");
}

#[test]
fn compensations_in_forward_order_are_caught() {
    let report = mutants::with(Mutant::CompensationsInForwardOrder, || ftgo().run(0..SEEDS));
    println!("{}", assert_caught(&report, "not in reverse order"));
}

#[test]
fn stale_replies_taken_for_the_awaited_one_are_caught() {
    let report = mutants::with(Mutant::StaleRepliesAccepted, || ftgo().run(0..SEEDS));
    println!("{}", assert_caught(&report, ""));
}

#[test]
fn a_skipped_first_compensation_is_caught() {
    let report = mutants::with(Mutant::FirstCompensationSkipped, || ftgo().run(0..SEEDS));
    println!("{}", assert_caught(&report, "ApprovalPending"));
}

#[test]
fn a_kitchen_that_keeps_its_lock_is_caught() {
    // Cancelling a ticket answers "cancelled" but leaves it in CREATE_PENDING.
    let forgetful = kitchen_service()
        .handle_fn(|_: &mut Kitchen, _: CancelCreateTicket, _| Ok(TicketCancelled));
    let report = ftgo_with(forgetful).run(0..SEEDS);
    println!("{}", assert_caught(&report, "CreatePending"));
}
