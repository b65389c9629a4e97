//! Operator actions are safe while FTGO runs under load: an "operator" keeps cancelling
//! running sagas and skipping or retrying parked ones while orders pour in; afterwards every
//! saga has finished, every request was answered exactly once (applied or refused, in its
//! saga's timeline), and the services agree on every order: an approved order has a ticket
//! and an authorization, a rejected one has neither.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ftgo::app::{Ftgo, FtgoOptions, Storage};
use ftgo::services::order::NewOrder;
use saga_core::SagaId;
use saga_core::engine::{HistoryEvent, OperatorCommand, OperatorRequest, SagaStatus};
use saga_core::operator::answers;
use saga_core::ports::SagaStore;
use saga_store::{SagaFilter, SqlSagaStore};
use saga_tests::operating;
use saga_tests::testdb::{Backend, postgres_url_for, remove_ftgo_storage, unique};
use tokio::task::JoinSet;

const ORDERS: usize = 90;
const WAIT: Duration = Duration::from_secs(120);

/// A third each: approved (Luigi's), refused by the kitchen (Night Owl), parked at
/// confirm_ticket (Graveyard Shift, nobody on shift).
fn order(n: usize) -> NewOrder {
    operating::one_item_order([2, 13, 21][n % 3])
}

/// Every request the operator sent, by saga.
type Sent = HashMap<SagaId, Vec<OperatorRequest>>;

async fn send(store: &SqlSagaStore, sent: &mut Sent, saga_id: SagaId, command: OperatorCommand) {
    let n: usize = sent.values().map(Vec::len).sum();
    let request = OperatorRequest::new(command, "load-operator", format!("request #{n}"));
    store
        .request_operator(saga_id, &request)
        .await
        .expect("the request is written");
    sent.entry(saga_id).or_default().push(request);
}

/// Keeps acting on sagas until `stop`: cancels a few running ones (some before their pivot,
/// some after — those are refused), skips every other parked one and retries the rest.
async fn operate(store: SqlSagaStore, stop: Arc<AtomicBool>) -> Sent {
    let mut sent = Sent::new();
    let mut round = 0usize;
    while !stop.load(Ordering::Relaxed) {
        round += 1;
        let running = SagaFilter {
            statuses: vec![SagaStatus::Running],
            ..SagaFilter::default()
        };
        for saga in store.find_sagas(&running, 2, 0).await.expect("lists") {
            send(
                &store,
                &mut sent,
                saga.record.state.saga_id,
                OperatorCommand::Cancel,
            )
            .await;
        }
        let parked = SagaFilter {
            statuses: vec![SagaStatus::Failed],
            ..SagaFilter::default()
        };
        for saga in store.find_sagas(&parked, 3, 0).await.expect("lists") {
            let command = match round % 2 {
                0 => OperatorCommand::Skip,
                _ => OperatorCommand::Retry,
            };
            send(&store, &mut sent, saga.record.state.saga_id, command).await;
        }
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    sent
}

/// The statuses of `ids`, in order.
async fn statuses(store: &SqlSagaStore, ids: &[SagaId]) -> Vec<SagaStatus> {
    let mut statuses = Vec::with_capacity(ids.len());
    for id in ids {
        let record = store.load(*id).await.expect("loads").expect("exists");
        statuses.push(record.state.status);
    }
    statuses
}

async fn operator_actions_under_load_lose_nothing_and_apply_once(backend: Backend) {
    let storage = match backend {
        Backend::Sqlite => Storage::Sqlite {
            dir: std::env::temp_dir().join(unique("ops_load")),
        },
        Backend::Postgres => {
            let Some(url) = postgres_url_for("ops_load") else {
                return;
            };
            Storage::Postgres {
                url,
                schema_prefix: unique("ops_load"),
            }
        }
    };
    let mut options = FtgoOptions::new(storage.clone());
    options.runtime.poll_interval = Duration::from_millis(50);
    options.transport.poll_interval = Duration::from_millis(50);
    let ftgo = Arc::new(Ftgo::start(options).await.expect("FTGO starts"));
    let store = ftgo.orders.orchestrator().store().as_ref().clone();
    // As `saga` does, the operator acts once the runtime has told the database its sagas.
    operating::wait_for_definitions(&ftgo).await;

    let stop = Arc::new(AtomicBool::new(false));
    let operator = tokio::spawn(operate(store.clone(), stop.clone()));
    let mut placing = JoinSet::new();
    for n in 0..ORDERS {
        let ftgo = ftgo.clone();
        placing.spawn(async move {
            let placed = ftgo.orders.place_order(&order(n)).await.expect("placed");
            (placed.order_id, placed.saga_id)
        });
        if n % 8 == 7 {
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
    }
    let placed: Vec<(i64, SagaId)> = placing.join_all().await;
    // Let the operator work while the last sagas run and park.
    tokio::time::sleep(Duration::from_secs(4)).await;
    stop.store(true, Ordering::Relaxed);
    let mut sent = operator.await.expect("the operator ran");

    // A Graveyard Shift saga parks once its retries run out, which on a slow machine can be
    // later than the operator's rounds: wait for one (or for every saga to have finished),
    // so that a retry is applied below.
    let ids: Vec<SagaId> = placed.iter().map(|(_, id)| *id).collect();
    let deadline = Instant::now() + WAIT;
    'parked: loop {
        let mut running = 0;
        for status in statuses(&store, &ids).await {
            match status {
                SagaStatus::Failed => break 'parked,
                status if !status.is_terminal() => running += 1,
                _ => {}
            }
        }
        if running == 0 {
            // The operator finished every one (its retries were applied then).
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no saga parked at confirm_ticket"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Then staff the kitchen and retry whatever is still parked, until nothing is.
    assert!(ftgo.kitchen.set_staffed(21, true).await.expect("staffs"));
    let deadline = Instant::now() + WAIT;
    loop {
        let mut unfinished = 0;
        for (id, status) in ids.iter().zip(statuses(&store, &ids).await) {
            match status {
                SagaStatus::Failed => {
                    send(&store, &mut sent, *id, OperatorCommand::Retry).await;
                    unfinished += 1;
                }
                status if !status.is_terminal() => unfinished += 1,
                _ => {}
            }
        }
        if unfinished == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{unfinished} sagas never finished"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Every request was answered, exactly once, in its saga's timeline.
    let requests: usize = sent.values().map(Vec::len).sum();
    assert!(requests >= 10, "the operator acted only {requests} times");
    let deadline = Instant::now() + WAIT;
    let mut outcomes: HashMap<&'static str, usize> = HashMap::new();
    for (saga_id, requests) in &sent {
        let timeline = loop {
            let timeline: Vec<HistoryEvent> = store
                .history(*saga_id)
                .await
                .expect("history")
                .into_iter()
                .map(|h| h.event)
                .collect();
            let answered = requests
                .iter()
                .all(|r| timeline.iter().any(|e| answers(e, r)));
            if answered {
                break timeline;
            }
            assert!(
                Instant::now() < deadline,
                "saga {saga_id}: a request was lost: {timeline:#?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        for request in requests {
            let answers: Vec<&HistoryEvent> =
                timeline.iter().filter(|e| answers(e, request)).collect();
            assert_eq!(
                answers.len(),
                1,
                "saga {saga_id}, {request:?}: {answers:#?}"
            );
            let kind = match (answers[0], request.command) {
                (HistoryEvent::OperatorRefused { .. }, _) => "refused",
                (_, OperatorCommand::Cancel) => "cancel applied",
                (_, OperatorCommand::Skip) => "skip applied",
                (_, _) => "retry applied",
            };
            *outcomes.entry(kind).or_default() += 1;
        }
    }
    saga_tests::testdb::notice(&format!(
        "{requests} operator requests under load: {outcomes:?}"
    ));
    assert!(
        outcomes.get("retry applied").is_some_and(|n| *n > 0),
        "{outcomes:?}"
    );

    // The services agree on every order.
    let skipped: Vec<SagaId> = sent
        .iter()
        .filter(|(_, requests)| requests.iter().any(|r| r.command == OperatorCommand::Skip))
        .map(|(id, _)| *id)
        .collect();
    for (order_id, saga_id) in &placed {
        let view = ftgo
            .order_view(*order_id)
            .await
            .expect("loads")
            .expect("exists");
        let status = store
            .load(*saga_id)
            .await
            .expect("loads")
            .expect("exists")
            .state
            .status;
        match view.state_name {
            "APPROVED" => {
                assert_eq!(status, SagaStatus::Completed);
                assert_eq!(
                    view.authorization_state.as_deref(),
                    Some("AUTHORIZED"),
                    "order {order_id}"
                );
                // A skipped confirmation leaves the ticket unconfirmed: that is what skip means.
                let ticket = view.ticket_state.unwrap_or("none");
                assert!(
                    ticket == "AWAITING_ACCEPTANCE"
                        || (ticket == "CREATE_PENDING" && skipped.contains(saga_id)),
                    "order {order_id}: ticket {ticket}"
                );
            }
            "REJECTED" => {
                assert_eq!(status, SagaStatus::Compensated, "order {order_id}");
                assert_eq!(view.authorization_state, None, "order {order_id}");
                assert!(
                    matches!(view.ticket_state, None | Some("CANCELLED")),
                    "order {order_id}: ticket {:?}",
                    view.ticket_state
                );
            }
            other => panic!("order {order_id} ended {other}"),
        }
    }
    ftgo.shutdown().await;
    remove_ftgo_storage(storage).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_operator_actions_under_load_lose_nothing_and_apply_once() {
    operator_actions_under_load_lose_nothing_and_apply_once(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_operator_actions_under_load_lose_nothing_and_apply_once() {
    operator_actions_under_load_lose_nothing_and_apply_once(Backend::Postgres).await;
}
