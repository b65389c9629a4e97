//! `Orchestrator::wait`: returns once a saga is finished — completed, compensated, or parked
//! in `failed` (a naive loop on `is_terminal` would hang on the last) — whichever
//! orchestrator finished it, and gives up after its timeout with the status it saw.

use std::sync::Arc;
use std::time::{Duration, Instant};

use saga_core::memory::InMemoryStore;
use saga_core::orchestrator::{Orchestrator, OrchestratorError, WatchdogAction};
use saga_core::ports::SagaStore;
use saga_core::timeline::TimelineSummary;
use saga_core::{Command, Reply, SagaId, SagaStatus, saga};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct Data {
    id: u32,
}

#[derive(Debug, PartialEq, Serialize, Deserialize, Command)]
#[command(channel = "warehouse", reply = Done)]
struct Reserve {
    id: u32,
}

#[derive(Debug, PartialEq, Serialize, Deserialize, Reply)]
struct Done;

fn reserve(d: &Data) -> Reserve {
    Reserve { id: d.id }
}

saga! {
    /// One step: done once its reply arrives.
    saga Reservation(Data) {
        compensatable reserve { invoke: reserve }
    }
}

fn orchestrator(store: &Arc<InMemoryStore>) -> Arc<Orchestrator<InMemoryStore>> {
    Arc::new(Orchestrator::new(store.clone(), "replies").register::<Reservation>())
}

#[tokio::test]
async fn wait_returns_when_this_orchestrator_finishes_the_saga() {
    let store = Arc::new(InMemoryStore::new());
    let orchestrator = orchestrator(&store);
    let saga_id = orchestrator
        .start::<Reservation>(Data { id: 1 })
        .await
        .expect("starts");
    let replier = orchestrator.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(30)).await;
        saga_tests::replies::succeed(&*replier, "replies", "Done", saga_id).await;
    });
    let began = Instant::now();
    let record = orchestrator
        .wait(saga_id, Duration::from_secs(10))
        .await
        .expect("finishes");
    assert_eq!(record.state.status, SagaStatus::Completed);
    assert!(
        began.elapsed() < Duration::from_secs(5),
        "woken, not timed out"
    );

    let history = store.history(saga_id).await.expect("reads");
    let summary = TimelineSummary::of(history.iter().map(|h| &h.event));
    assert_eq!(summary.forward_line(), "reserve");
    assert_eq!(summary.to_string(), "steps: reserve");
}

#[tokio::test]
async fn wait_sees_a_saga_another_orchestrator_finished() {
    let store = Arc::new(InMemoryStore::new());
    let here = orchestrator(&store);
    let elsewhere = orchestrator(&store);
    let saga_id = here
        .start::<Reservation>(Data { id: 2 })
        .await
        .expect("starts");
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(30)).await;
        saga_tests::replies::succeed(&*elsewhere, "replies", "Done", saga_id).await;
    });
    let record = here
        .wait(saga_id, Duration::from_secs(10))
        .await
        .expect("seen in the store");
    assert_eq!(record.state.status, SagaStatus::Completed);
}

#[tokio::test]
async fn wait_returns_on_a_parked_saga() {
    let store = Arc::new(InMemoryStore::new());
    let clock = saga_core::clock::ManualClock::starting_at(saga_core::Timestamp(1_700_000_000_000));
    let orchestrator = Orchestrator::new(store.clone(), "replies")
        .register::<Reservation>()
        .with_clock(Arc::new(clock.clone()));
    let saga_id = orchestrator
        .start::<Reservation>(Data { id: 3 })
        .await
        .expect("starts");
    clock.advance(Duration::from_secs(30 * 60));
    let report = orchestrator
        .watchdog(Duration::from_secs(15 * 60), WatchdogAction::Park, 10)
        .await
        .expect("watches");
    assert_eq!(report.parked, [saga_id]);
    assert!(!SagaStatus::Failed.is_terminal());
    assert!(SagaStatus::Failed.is_finished());
    let record = orchestrator
        .wait(saga_id, Duration::from_secs(10))
        .await
        .expect("a parked saga is finished");
    assert_eq!(record.state.status, SagaStatus::Failed);
    let history = store.history(saga_id).await.expect("reads");
    let summary = TimelineSummary::of(history.iter().map(|h| &h.event));
    assert!(
        summary
            .parked
            .as_deref()
            .is_some_and(|p| p.starts_with("reserve: ")),
        "{summary}"
    );
}

#[tokio::test]
async fn wait_gives_up_with_the_status_it_saw() {
    let store = Arc::new(InMemoryStore::new());
    let orchestrator = orchestrator(&store);
    let saga_id = orchestrator
        .start::<Reservation>(Data { id: 4 })
        .await
        .expect("starts");
    let err = orchestrator
        .wait(saga_id, Duration::from_millis(100))
        .await
        .expect_err("nobody replies");
    assert!(
        matches!(
            err,
            OrchestratorError::WaitTimedOut {
                status: SagaStatus::Running,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("is still running after 100ms"),
        "{err}"
    );
    let unknown = orchestrator
        .wait(SagaId::new(), Duration::from_millis(10))
        .await
        .expect_err("no such saga");
    assert!(
        matches!(unknown, OrchestratorError::UnknownSaga(_)),
        "{unknown:?}"
    );
}
