//! Seeded simulation of the whole FTGO system (`saga_core::simulation`): the orchestrator,
//! the four services with their own records, stores, network and clock in one process, with
//! lost, duplicated, delayed and reordered messages, failing databases and crash-restarts.
//! Each seed places a few orders and tries to cancel some of them while they are still being
//! created; every run must end with every saga finished and the services agreeing
//! (`saga_tests::ftgo_simulation`).
//!
//! `SAGA_SIM_SEEDS=100000` runs a longer search; `SAGA_SIM_SEED=n` replays one seed with
//! its trace. The checks are shown to catch real bugs: engine mutants and a kitchen that
//! forgets to release its lock.

use ftgo::create_order::SequentialCreateOrderSaga;
use ftgo::messages::{CancelCreateTicket, TicketCancelled};
use saga_core::engine::mutants::{self, Mutant};
use saga_core::simulation::{Faults, SimulationReport, seeds_from_env};
use saga_tests::ftgo_simulation::{ftgo, ftgo_on, ftgo_with};
use saga_tests::in_memory_ftgo::{Kitchen, kitchen_service};

/// The seeds CI runs.
const SEEDS: u64 = 10_000;

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
            "reply batches",
        ] {
            assert!(
                report.events.get(event).copied().unwrap_or(0) > 0,
                "{event}: {report}"
            );
        }
    }
}

#[test]
fn ftgo_on_the_sequential_create_order_saga_keeps_its_invariants() {
    let report = ftgo_on::<SequentialCreateOrderSaga>(kitchen_service()).check(0..SEEDS / 4);
    println!("FTGO simulation, sequential CreateOrderSaga: {report}");
}

#[test]
fn the_same_seed_makes_the_same_run() {
    let simulation = ftgo();
    for seed in 0..100 {
        let first = simulation.run_seed(seed);
        let second = simulation.run_seed(seed);
        assert!(first.trace.len() > 10, "{:?}", first.trace);
        assert_eq!(first.trace, second.trace, "seed {seed}");
        assert_eq!(first.events, second.events, "seed {seed}");
        // Down to the saga ids (and so the retry jitter derived from them).
        assert_eq!(first.sagas, second.sagas, "seed {seed}");
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
