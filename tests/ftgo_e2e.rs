//! FTGO end to end, on SQLite files and on PostgreSQL schemas alike: every outcome of
//! CreateOrderSaga and CancelOrderSaga, the refusals semantic locks produce and the requests
//! validation refuses — through `ftgo::app::Ftgo`, with the real services (each on its own
//! database), the message queue and the saga workers.
//!
//! PostgreSQL runs need `SAGA_TEST_POSTGRES_URL` (each test gets its own five schemas, dropped
//! at the end); without it those tests say they did not run.

use std::collections::HashMap;
use std::time::Duration;

use ftgo::app::{Ftgo, FtgoOptions, Layout, OrderView, SagaView, Storage};
use ftgo::services::order::{NewLineItem, NewOrder, OrderError, PlacedOrder};
use saga_core::engine::HistoryEvent;
use saga_core::{Locked, SagaId, SagaStatus};
use saga_store::Dialect;
use saga_tests::testdb::{Backend, postgres_url_for, unique};
use tokio::sync::{Semaphore, SemaphorePermit};
use tokio::task::JoinSet;

/// How long sagas may take (generous: the point is that they finish, not how fast).
const WAIT: Duration = Duration::from_secs(60);

/// Every step of CreateOrderSaga, in order.
const CREATE_STEPS: [&str; 6] = [
    "create_order",
    "verify_consumer",
    "create_ticket",
    "authorize_card",
    "confirm_ticket",
    "approve_order",
];

/// Every step of CancelOrderSaga, in order.
const CANCEL_STEPS: [&str; 5] = [
    "begin_cancel",
    "begin_cancel_ticket",
    "reverse_authorization",
    "confirm_ticket_cancel",
    "confirm_order_cancel",
];

/// How many FTGOs may be open on PostgreSQL at once: each opens five pools of up to ten
/// connections (and a `LISTEN` connection per pool), so unbounded test threads would exhaust
/// the server's `max_connections`.
static POSTGRES_SLOTS: Semaphore = Semaphore::const_new(2);

/// A backend, and FTGO's layout on it.
#[derive(Clone, Copy, Debug)]
struct Mode {
    backend: Backend,
    layout: Layout,
}

/// FTGO on fresh storage, removed by [`TestFtgo::cleanup`].
struct TestFtgo {
    ftgo: Ftgo,
    storage: Storage,
    _slot: Option<SemaphorePermit<'static>>,
}

impl TestFtgo {
    /// FTGO on fresh storage, workers not running; `None` (with a notice) when PostgreSQL is
    /// not configured.
    async fn open(mode: Mode, test: &str) -> Option<Self> {
        let (storage, slot) = match mode.backend {
            Backend::Sqlite => {
                let dir = std::env::temp_dir().join(unique("ftgo_e2e"));
                (Storage::Sqlite { dir }, None)
            }
            Backend::Postgres => {
                let url = postgres_url_for(test)?;
                let slot = POSTGRES_SLOTS.acquire().await.expect("never closed");
                let schema_prefix = unique("ftgo_e2e");
                (Storage::Postgres { url, schema_prefix }, Some(slot))
            }
        };
        let mut options = FtgoOptions::new(storage.clone());
        options.layout = mode.layout;
        options.runtime.poll_interval = Duration::from_millis(50);
        options.transport.poll_interval = Duration::from_millis(50);
        match Ftgo::open(options).await {
            Ok(ftgo) => Some(Self {
                ftgo,
                storage,
                _slot: slot,
            }),
            Err(err) => {
                remove_storage(storage).await;
                panic!("FTGO does not open: {err}");
            }
        }
    }

    /// FTGO on fresh storage with its workers running.
    async fn start(mode: Mode, test: &str) -> Option<Self> {
        let system = Self::open(mode, test).await?;
        system
            .ftgo
            .start_workers()
            .await
            .expect("the workers start");
        Some(system)
    }

    /// Stops FTGO and removes its storage (the directory, or the five schemas).
    async fn cleanup(self) {
        self.ftgo.shutdown().await;
        remove_storage(self.storage).await;
    }

    async fn place(&self, request: &NewOrder) -> PlacedOrder {
        self.ftgo
            .orders
            .place_order(request)
            .await
            .expect("the order is placed")
    }

    async fn wait(&self, sagas: &[SagaId]) {
        self.ftgo
            .wait_for_sagas(sagas, WAIT, |_, _| {})
            .await
            .expect("the sagas finish");
    }

    /// Places `request` and waits for its CreateOrderSaga to finish.
    async fn place_and_wait(&self, request: &NewOrder) -> OrderView {
        let placed = self.place(request).await;
        self.wait(&[placed.saga_id]).await;
        let view = self.view(placed.order_id).await;
        assert_eq!(view.order.create_saga_id, Some(placed.saga_id));
        assert_eq!(view.order.total, placed.total);
        view
    }

    /// Cancels `order_id` and waits for its CancelOrderSaga to finish.
    async fn cancel_and_wait(&self, order_id: i64) -> (SagaId, OrderView) {
        let saga_id = self
            .ftgo
            .orders
            .cancel_order(order_id)
            .await
            .expect("the cancellation starts");
        self.wait(&[saga_id]).await;
        (saga_id, self.view(order_id).await)
    }

    async fn view(&self, order_id: i64) -> OrderView {
        self.ftgo
            .order_view(order_id)
            .await
            .expect("the order view loads")
            .expect("the order exists")
    }
}

/// Removes FTGO's storage: the directory, or the five schemas.
async fn remove_storage(storage: Storage) {
    saga_tests::testdb::remove_ftgo_storage(storage).await;
}

fn order(consumer_id: i64, restaurant_id: i64, items: &[(&str, i64)]) -> NewOrder {
    NewOrder {
        consumer_id,
        restaurant_id,
        line_items: items
            .iter()
            .map(|(item, quantity)| NewLineItem {
                menu_item_id: (*item).to_owned(),
                quantity: *quantity,
            })
            .collect(),
    }
}

/// The steps that succeeded going forward, in the order of the definition (the steps of
/// CreateOrderSaga's parallel group answer in either order).
fn succeeded(saga: &SagaView) -> Vec<&str> {
    let mut steps: Vec<&str> = saga
        .history
        .iter()
        .filter_map(|h| match &h.event {
            HistoryEvent::StepSucceeded { step } => Some(step.as_str()),
            _ => None,
        })
        .collect();
    let position = |step: &&str| {
        CREATE_STEPS
            .iter()
            .chain(CANCEL_STEPS.iter())
            .position(|s| s == step)
    };
    steps.sort_by_key(position);
    steps
}

/// CreateOrderSaga's steps that run at once.
const CREATE_GROUP: [&str; 2] = ["verify_consumer", "create_ticket"];

/// The steps that were undone, in the order they were.
fn compensated(saga: &SagaView) -> Vec<&str> {
    saga.history
        .iter()
        .filter_map(|h| match &h.event {
            HistoryEvent::StepCompensated { step } => Some(step.as_str()),
            _ => None,
        })
        .collect()
}

/// The failed forward step and why.
fn failed(saga: &SagaView) -> Vec<(&str, &str)> {
    saga.history
        .iter()
        .filter_map(|h| match &h.event {
            HistoryEvent::StepFailed { step, reason } => Some((step.as_str(), reason.as_str())),
            _ => None,
        })
        .collect()
}

/// The only saga of an order CreateOrderSaga approved or rejected.
fn create_saga(view: &OrderView) -> &SagaView {
    assert_eq!(view.sagas.len(), 1, "one saga: {:?}", view.sagas);
    let saga = &view.sagas[0];
    assert_eq!(saga.saga_type, "CreateOrderSaga");
    assert_eq!(Some(saga.saga_id), view.order.create_saga_id);
    saga
}

fn assert_approved(view: &OrderView) {
    assert_eq!(view.state_name, "APPROVED", "{view:?}");
    assert_eq!(view.ticket_state, Some("AWAITING_ACCEPTANCE"));
    assert_eq!(view.authorization_state.as_deref(), Some("AUTHORIZED"));
    assert_eq!(view.order.reason, None);
    assert_eq!(view.order.cancel_saga_id, None);
    let saga = create_saga(view);
    assert_eq!(saga.status, SagaStatus::Completed);
    assert_eq!(saga.compensation_reason, None);
    assert_eq!(saga.current_step, None);
    assert_eq!(succeeded(saga), CREATE_STEPS);
    assert!(compensated(saga).is_empty());
}

/// A rejected order: `ticket` is the ticket's state (none, or `CANCELLED` when the saga
/// created it before turning back — also when the consumer was refused while the ticket was
/// being created), `failed_step` the step that failed because of `reason`.
fn assert_rejected(view: &OrderView, ticket: Option<&str>, failed_step: &str, reason: &str) {
    assert_eq!(view.state_name, "REJECTED", "{view:?}");
    assert_eq!(view.ticket_state, ticket);
    assert_eq!(view.authorization_state, None);
    assert!(view.order.reason.is_some(), "a rejected order says why");
    assert_eq!(view.order.cancel_saga_id, None);
    let saga = create_saga(view);
    assert_eq!(saga.status, SagaStatus::Compensated);
    let why = saga
        .compensation_reason
        .as_deref()
        .expect("a compensation reason");
    assert!(why.contains(reason), "{why:?} should mention {reason:?}");
    assert_eq!(failed(saga).len(), 1);
    assert_eq!(failed(saga)[0].0, failed_step);
    assert!(failed(saga)[0].1.contains(reason));
    let position = CREATE_STEPS
        .iter()
        .position(|s| *s == failed_step)
        .expect("a CreateOrderSaga step");
    // What ran: the steps before the failed one, and the rest of its parallel group.
    let end = match CREATE_GROUP.contains(&failed_step) {
        true => 1 + CREATE_GROUP.len(),
        false => position,
    };
    let ran: Vec<&str> = CREATE_STEPS[..end]
        .iter()
        .copied()
        .filter(|s| *s != failed_step)
        .collect();
    assert_eq!(succeeded(saga), ran);
    // Undone in reverse; `verify_consumer` has nothing to undo.
    let mut undone: Vec<&str> = ran
        .iter()
        .copied()
        .filter(|s| *s != "verify_consumer")
        .collect();
    undone.reverse();
    assert_eq!(compensated(saga), undone);
}

fn assert_cancelled(view: &OrderView, cancel_saga: SagaId) {
    assert_eq!(view.state_name, "CANCELLED", "{view:?}");
    assert_eq!(view.ticket_state, Some("CANCELLED"));
    assert_eq!(view.authorization_state.as_deref(), Some("REVERSED"));
    assert_eq!(view.order.cancel_saga_id, Some(cancel_saga));
    assert_eq!(view.sagas.len(), 2, "{:?}", view.sagas);
    let (create, cancel) = (&view.sagas[0], &view.sagas[1]);
    assert_eq!(create.saga_type, "CreateOrderSaga");
    assert_eq!(create.status, SagaStatus::Completed);
    assert_eq!(cancel.saga_type, "CancelOrderSaga");
    assert_eq!(cancel.saga_id, cancel_saga);
    assert_eq!(cancel.status, SagaStatus::Completed);
    assert_eq!(cancel.compensation_reason, None);
    assert_eq!(succeeded(cancel), CANCEL_STEPS);
    assert!(compensated(cancel).is_empty());
}

fn assert_locked(result: Result<SagaId, OrderError>, order_id: i64, pending: &str) {
    match result {
        Err(err @ OrderError::Locked(Locked::Pending { .. })) => {
            let OrderError::Locked(Locked::Pending { record, id, state }) = &err else {
                unreachable!()
            };
            assert_eq!(*record, "Order");
            assert_eq!(*id, order_id.to_string());
            assert_eq!(*state, pending);
            assert_eq!(
                err.to_string(),
                format!("Order {order_id} is locked in state {pending} by a saga in progress")
            );
        }
        other => panic!("expected order {order_id} to be locked in {pending}, got {other:?}"),
    }
}

fn assert_wrong_state(result: Result<SagaId, OrderError>, order_id: i64, expected: &str) {
    match result {
        Err(err @ OrderError::WrongState { .. }) => {
            let OrderError::WrongState {
                order_id: id,
                state,
                ..
            } = &err
            else {
                unreachable!()
            };
            assert_eq!(*id, order_id);
            assert_eq!(*state, expected);
            assert_eq!(
                err.to_string(),
                format!("order {order_id} is {expected}; only an approved order can be cancelled")
            );
        }
        other => panic!("expected order {order_id} to be refused as {expected}, got {other:?}"),
    }
}

async fn approved_order(mode: Mode) {
    let Some(system) = TestFtgo::start(mode, "approved_order").await else {
        return;
    };
    // 11.00 + 2 × 6.50
    let view = system
        .place_and_wait(&order(1, 2, &[("margherita", 1), ("tiramisu", 2)]))
        .await;
    assert_approved(&view);
    assert_eq!(view.order.total, 2_400);
    assert_eq!(view.order.consumer_id, 1);
    assert_eq!(view.order.restaurant_id, 2);
    assert_eq!(view.order.line_items.len(), 2);
    system.cleanup().await;
}

/// Operators read saga state in SQL: on PostgreSQL the data is `jsonb` and the ids `uuid`,
/// so `SELECT data->>'order_id' FROM saga_instances` works as written (SQLite's `->>` needs
/// a cast, its JSON being text).
async fn operators_query_saga_data_in_sql(mode: Mode) {
    let Some(system) = TestFtgo::start(mode, "saga_data_in_sql").await else {
        return;
    };
    let view = system.place_and_wait(&order(1, 1, &[("samosa", 2)])).await;
    assert_approved(&view);
    let database = system.ftgo.orders.database();
    let (order_ids, history): (Vec<String>, Vec<String>) = match database.dialect() {
        Dialect::Postgres => {
            let pool = database.postgres_pool().expect("PostgreSQL");
            let types: Vec<String> = sqlx::query_scalar(
                "SELECT data_type FROM information_schema.columns \
                 WHERE table_schema = current_schema() AND table_name = 'saga_instances' \
                 AND column_name IN ('saga_id', 'data') ORDER BY column_name",
            )
            .fetch_all(pool)
            .await
            .expect("reads the catalog");
            assert_eq!(types, ["jsonb", "uuid"]);
            let order_ids = sqlx::query_scalar("SELECT data->>'order_id' FROM saga_instances")
                .fetch_all(pool)
                .await
                .expect("queries saga data");
            let history = sqlx::query_scalar(
                "SELECT event->>'event' FROM saga_history WHERE saga_id = $1 ORDER BY id",
            )
            .bind(view.order.create_saga_id.map(|id| id.0))
            .fetch_all(pool)
            .await
            .expect("queries saga history");
            (order_ids, history)
        }
        Dialect::Sqlite => {
            let pool = database.sqlite_pool().expect("SQLite");
            let order_ids =
                sqlx::query_scalar("SELECT CAST(data->>'order_id' AS TEXT) FROM saga_instances")
                    .fetch_all(pool)
                    .await
                    .expect("queries saga data");
            let history = sqlx::query_scalar(
                "SELECT event->>'event' FROM saga_history WHERE saga_id = $1 ORDER BY id",
            )
            .bind(view.order.create_saga_id.map(|id| id.to_string()))
            .fetch_all(pool)
            .await
            .expect("queries saga history");
            (order_ids, history)
        }
    };
    assert_eq!(order_ids, [view.order.order_id.to_string()]);
    assert_eq!(
        history.first().map(String::as_str),
        Some("started"),
        "{history:?}"
    );
    assert_eq!(
        history.last().map(String::as_str),
        Some("finished"),
        "{history:?}"
    );
    system.cleanup().await;
}

async fn invalid_consumers_are_rejected(mode: Mode) {
    let Some(system) = TestFtgo::start(mode, "invalid_consumers").await else {
        return;
    };
    let blocked = system.place(&order(666, 1, &[("samosa", 2)])).await;
    let unknown = system.place(&order(4242, 1, &[("samosa", 2)])).await;
    system.wait(&[blocked.saga_id, unknown.saga_id]).await;

    let view = system.view(blocked.order_id).await;
    // The ticket was created while the consumer was checked: cancelled.
    assert_rejected(
        &view,
        Some("CANCELLED"),
        "verify_consumer",
        "consumer 666 is blocked",
    );
    let view = system.view(unknown.order_id).await;
    assert_rejected(
        &view,
        Some("CANCELLED"),
        "verify_consumer",
        "unknown consumer 4242",
    );
    system.cleanup().await;
}

async fn closed_kitchen_rejects(mode: Mode) {
    let Some(system) = TestFtgo::start(mode, "closed_kitchen").await else {
        return;
    };
    let view = system.place_and_wait(&order(2, 13, &[("soup", 1)])).await;
    assert_rejected(
        &view,
        None,
        "create_ticket",
        "restaurant 13 (Night Owl) is closed",
    );
    system.cleanup().await;
}

async fn declined_cards_reject(mode: Mode) {
    let Some(system) = TestFtgo::start(mode, "declined_cards").await else {
        return;
    };
    // 4 × 12.50 = 50.00 over Bob's 30.00; Carol's card is disabled.
    let limit = system.place(&order(2, 1, &[("chicken-vindaloo", 4)])).await;
    let disabled = system.place(&order(3, 2, &[("margherita", 1)])).await;
    // Bob can still order within his limit: 2 × 11.00 + 6.50 = 28.50.
    let within = system
        .place(&order(2, 2, &[("margherita", 2), ("tiramisu", 1)]))
        .await;
    system
        .wait(&[limit.saga_id, disabled.saga_id, within.saga_id])
        .await;

    let view = system.view(limit.order_id).await;
    assert_eq!(view.order.total, 5_000);
    assert_rejected(
        &view,
        Some("CANCELLED"),
        "authorize_card",
        "card limit exceeded: 50.00 > 30.00",
    );
    let view = system.view(disabled.order_id).await;
    assert_rejected(
        &view,
        Some("CANCELLED"),
        "authorize_card",
        "card of consumer 3 is disabled",
    );
    let view = system.view(within.order_id).await;
    assert_eq!(view.order.total, 2_850);
    assert_approved(&view);
    system.cleanup().await;
}

async fn approved_order_is_cancelled(mode: Mode) {
    let Some(system) = TestFtgo::start(mode, "cancel_approved").await else {
        return;
    };
    let view = system
        .place_and_wait(&order(1, 1, &[("chicken-vindaloo", 2), ("naan", 1)]))
        .await;
    assert_approved(&view);
    let order_id = view.order.order_id;

    let (cancel_saga, view) = system.cancel_and_wait(order_id).await;
    assert_cancelled(&view, cancel_saga);

    // Cancelled is final.
    assert_wrong_state(
        system.ftgo.orders.cancel_order(order_id).await,
        order_id,
        "CANCELLED",
    );
    // Unknown orders are not found.
    assert!(matches!(
        system.ftgo.orders.cancel_order(987_654).await,
        Err(OrderError::NotFound(987_654))
    ));
    assert!(
        system
            .ftgo
            .order_view(987_654)
            .await
            .expect("loads")
            .is_none()
    );
    system.cleanup().await;
}

async fn cancel_of_a_pending_order_is_refused(mode: Mode) {
    // Workers not running yet: the order stays APPROVAL_PENDING until they start.
    let Some(system) = TestFtgo::open(mode, "cancel_pending").await else {
        return;
    };
    let placed = system.place(&order(1, 2, &[("margherita", 1)])).await;
    let view = system.view(placed.order_id).await;
    assert_eq!(view.state_name, "APPROVAL_PENDING");
    assert_eq!(view.ticket_state, None);
    assert_eq!(view.authorization_state, None);
    assert_eq!(view.sagas.len(), 1);
    assert_eq!(view.sagas[0].status, SagaStatus::Running);
    assert_eq!(
        view.sagas[0].current_step.as_deref(),
        Some("verify_consumer")
    );

    assert_locked(
        system.ftgo.orders.cancel_order(placed.order_id).await,
        placed.order_id,
        "APPROVAL_PENDING",
    );
    let view = system.view(placed.order_id).await;
    assert_eq!(
        view.state_name, "APPROVAL_PENDING",
        "the refusal changed nothing"
    );
    assert_eq!(view.order.cancel_saga_id, None);

    system
        .ftgo
        .start_workers()
        .await
        .expect("the workers start");
    system.wait(&[placed.saga_id]).await;
    let view = system.view(placed.order_id).await;
    assert_approved(&view);

    // Once approved, the same cancel goes through.
    let (cancel_saga, view) = system.cancel_and_wait(placed.order_id).await;
    assert_cancelled(&view, cancel_saga);
    system.cleanup().await;
}

async fn two_cancels_at_once_start_one_saga(mode: Mode) {
    let Some(system) = TestFtgo::start(mode, "two_cancels").await else {
        return;
    };
    let view = system.place_and_wait(&order(1, 1, &[("samosa", 3)])).await;
    assert_approved(&view);
    let order_id = view.order.order_id;

    let (a, b) = tokio::join!(
        system.ftgo.orders.cancel_order(order_id),
        system.ftgo.orders.cancel_order(order_id)
    );
    assert!(
        a.is_ok() != b.is_ok(),
        "exactly one cancel must win: {a:?}, {b:?}"
    );
    let (won, lost) = if a.is_ok() { (a, b) } else { (b, a) };
    let cancel_saga = won.expect("won");
    assert_locked(lost, order_id, "CANCEL_PENDING");

    system.wait(&[cancel_saga]).await;
    let view = system.view(order_id).await;
    assert_cancelled(&view, cancel_saga);
    system.cleanup().await;
}

async fn cancel_of_a_rejected_order_is_refused(mode: Mode) {
    let Some(system) = TestFtgo::start(mode, "cancel_rejected").await else {
        return;
    };
    let view = system.place_and_wait(&order(666, 1, &[("naan", 1)])).await;
    assert_eq!(view.state_name, "REJECTED");
    let order_id = view.order.order_id;
    assert_wrong_state(
        system.ftgo.orders.cancel_order(order_id).await,
        order_id,
        "REJECTED",
    );
    let view = system.view(order_id).await;
    assert_rejected(
        &view,
        Some("CANCELLED"),
        "verify_consumer",
        "consumer 666 is blocked",
    );
    system.cleanup().await;
}

async fn invalid_orders_are_refused(mode: Mode) {
    // No workers needed: validation happens before anything is stored.
    let Some(system) = TestFtgo::open(mode, "invalid_orders").await else {
        return;
    };
    let first = system.place(&order(1, 1, &[("naan", 1)])).await;

    let cases: [(NewOrder, &str); 7] = [
        (order(1, 1, &[]), "an order needs at least one line item"),
        (
            order(1, 1, &[("samosa", 0)]),
            "quantity of \"samosa\" must be between 1 and 100, not 0",
        ),
        (
            order(1, 1, &[("naan", 1), ("samosa", -1)]),
            "quantity of \"samosa\" must be between 1 and 100, not -1",
        ),
        (
            order(1, 1, &[("samosa", 101)]),
            "quantity of \"samosa\" must be between 1 and 100, not 101",
        ),
        (order(1, 99, &[("samosa", 1)]), "unknown restaurant 99"),
        (
            order(1, 1, &[("margherita", 1)]),
            "restaurant 1 has no menu item \"margherita\"",
        ),
        (
            order(1, 2, &[("margherita", 1), ("caviar", 2)]),
            "restaurant 2 has no menu item \"caviar\"",
        ),
    ];
    for (request, expected) in cases {
        match system.ftgo.orders.place_order(&request).await {
            Err(OrderError::Invalid(message)) => {
                assert_eq!(message, expected, "for {request:?}");
            }
            other => panic!("{request:?} should be invalid, got {other:?}"),
        }
    }

    // The refused requests stored nothing: not even an order id was used.
    let next = system.place(&order(1, 1, &[("naan", 1)])).await;
    assert_eq!(next.order_id, first.order_id + 1);
    assert!(
        system
            .ftgo
            .order_view(first.order_id + 2)
            .await
            .expect("loads")
            .is_none()
    );
    system.cleanup().await;
}

/// One kind of order in the mixed batch.
#[derive(Clone, Copy, Debug)]
struct Kind {
    consumer_id: i64,
    restaurant_id: i64,
    items: &'static [(&'static str, i64)],
    total: i64,
    approved: bool,
}

const KINDS: [Kind; 7] = [
    Kind {
        consumer_id: 1,
        restaurant_id: 2,
        items: &[("margherita", 1), ("tiramisu", 2)],
        total: 2_400,
        approved: true,
    },
    Kind {
        consumer_id: 666,
        restaurant_id: 1,
        items: &[("samosa", 2)],
        total: 900,
        approved: false,
    },
    Kind {
        consumer_id: 1,
        restaurant_id: 1,
        items: &[("chicken-vindaloo", 2), ("naan", 1)],
        total: 2_800,
        approved: true,
    },
    Kind {
        consumer_id: 2,
        restaurant_id: 13,
        items: &[("soup", 1)],
        total: 700,
        approved: false,
    },
    Kind {
        consumer_id: 2,
        restaurant_id: 1,
        items: &[("chicken-vindaloo", 4)],
        total: 5_000,
        approved: false,
    },
    Kind {
        consumer_id: 3,
        restaurant_id: 2,
        items: &[("margherita", 1)],
        total: 1_100,
        approved: false,
    },
    Kind {
        consumer_id: 4242,
        restaurant_id: 2,
        items: &[("tiramisu", 1)],
        total: 650,
        approved: false,
    },
];

/// The consistency rule between the services, whatever the interleaving: an approved order
/// has a live ticket and an authorization; a rejected one has neither; a cancelled one has
/// both cancelled.
fn assert_consistent(view: &OrderView) {
    match view.state_name {
        "APPROVED" => {
            assert_eq!(view.ticket_state, Some("AWAITING_ACCEPTANCE"), "{view:?}");
            assert_eq!(
                view.authorization_state.as_deref(),
                Some("AUTHORIZED"),
                "{view:?}"
            );
        }
        "REJECTED" => {
            assert!(
                matches!(view.ticket_state, None | Some("CANCELLED")),
                "{view:?}"
            );
            assert_eq!(view.authorization_state, None, "{view:?}");
        }
        "CANCELLED" => {
            assert_eq!(view.ticket_state, Some("CANCELLED"), "{view:?}");
            assert_eq!(
                view.authorization_state.as_deref(),
                Some("REVERSED"),
                "{view:?}"
            );
        }
        other => panic!("order {} ended {other}", view.order.order_id),
    }
}

async fn mixed_batch_placed_at_once(mode: Mode) {
    let Some(system) = TestFtgo::start(mode, "mixed_batch").await else {
        return;
    };
    const ORDERS: usize = 30;
    let mut placing = JoinSet::new();
    for i in 0..ORDERS {
        let kind = KINDS[i % KINDS.len()];
        let orders = system.ftgo.orders.clone();
        placing.spawn(async move {
            let placed = orders
                .place_order(&order(kind.consumer_id, kind.restaurant_id, kind.items))
                .await
                .expect("the order is placed");
            (kind, placed)
        });
    }
    let placed: Vec<(Kind, PlacedOrder)> = placing.join_all().await;
    assert_eq!(placed.len(), ORDERS);
    let mut ids: Vec<i64> = placed.iter().map(|(_, p)| p.order_id).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), ORDERS, "every order has its own id");
    let sagas: Vec<SagaId> = placed.iter().map(|(_, p)| p.saga_id).collect();
    system.wait(&sagas).await;

    for (kind, placed) in &placed {
        let view = system.view(placed.order_id).await;
        assert_eq!(view.order.total, kind.total);
        assert_eq!(placed.total, kind.total);
        let expected = if kind.approved {
            "APPROVED"
        } else {
            "REJECTED"
        };
        assert_eq!(view.state_name, expected, "{kind:?}: {view:?}");
        assert_eq!(
            view.sagas[0].status,
            if kind.approved {
                SagaStatus::Completed
            } else {
                SagaStatus::Compensated
            }
        );
        assert_consistent(&view);
    }

    // Cancel every other approved order, all at once, while the rest stay approved.
    let mut cancelling = JoinSet::new();
    for (_, placed) in placed.iter().filter(|(k, _)| k.approved).step_by(2) {
        let orders = system.ftgo.orders.clone();
        let order_id = placed.order_id;
        cancelling.spawn(async move {
            let saga = orders
                .cancel_order(order_id)
                .await
                .expect("the cancellation starts");
            (order_id, saga)
        });
    }
    let cancels: HashMap<i64, SagaId> = cancelling.join_all().await.into_iter().collect();
    assert!(cancels.len() >= 4);
    system
        .wait(&cancels.values().copied().collect::<Vec<_>>())
        .await;

    let mut states: HashMap<&str, usize> = HashMap::new();
    for (kind, placed) in &placed {
        let view = system.view(placed.order_id).await;
        assert_consistent(&view);
        match cancels.get(&placed.order_id) {
            Some(cancel_saga) => assert_cancelled(&view, *cancel_saga),
            None if kind.approved => assert_approved(&view),
            None => assert_eq!(view.state_name, "REJECTED"),
        }
        *states.entry(view.state_name).or_default() += 1;
    }
    let approved = placed.iter().filter(|(k, _)| k.approved).count();
    assert_eq!(states.get("CANCELLED").copied(), Some(cancels.len()));
    assert_eq!(
        states.get("APPROVED").copied().unwrap_or(0),
        approved - cancels.len()
    );
    assert_eq!(states.get("REJECTED").copied(), Some(ORDERS - approved));
    system.cleanup().await;
}

macro_rules! ftgo_e2e {
    ($backend:ident, $variant:expr) => {
        mod $backend {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn approved_order() {
                super::approved_order($variant).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn operators_query_saga_data_in_sql() {
                super::operators_query_saga_data_in_sql($variant).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn invalid_consumers_are_rejected() {
                super::invalid_consumers_are_rejected($variant).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn closed_kitchen_rejects() {
                super::closed_kitchen_rejects($variant).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn declined_cards_reject() {
                super::declined_cards_reject($variant).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn approved_order_is_cancelled() {
                super::approved_order_is_cancelled($variant).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn cancel_of_a_pending_order_is_refused() {
                super::cancel_of_a_pending_order_is_refused($variant).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn two_cancels_at_once_start_one_saga() {
                super::two_cancels_at_once_start_one_saga($variant).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn cancel_of_a_rejected_order_is_refused() {
                super::cancel_of_a_rejected_order_is_refused($variant).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn invalid_orders_are_refused() {
                super::invalid_orders_are_refused($variant).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn mixed_batch_placed_at_once() {
                super::mixed_batch_placed_at_once($variant).await;
            }
        }
    };
}

ftgo_e2e!(
    sqlite,
    Mode {
        backend: Backend::Sqlite,
        layout: Layout::PerService,
    }
);
ftgo_e2e!(
    postgres,
    Mode {
        backend: Backend::Postgres,
        layout: Layout::PerService,
    }
);
ftgo_e2e!(
    sqlite_in_place,
    Mode {
        backend: Backend::Sqlite,
        layout: Layout::InPlace,
    }
);
ftgo_e2e!(
    postgres_in_place,
    Mode {
        backend: Backend::Postgres,
        layout: Layout::InPlace,
    }
);
ftgo_e2e!(
    postgres_co_located,
    Mode {
        backend: Backend::Postgres,
        layout: Layout::CoLocated,
    }
);
