//! The real FTGO services (on SQLite) answer a command resent after its first reply was lost,
//! even once CancelOrderSaga has moved the record on. The simulation (tests/simulation.rs)
//! found that they refused it, which parked CreateOrderSaga at a step no retry could pass.

use ftgo::messages::{
    ApproveOrder, BeginCancelTicket, ConfirmCreateTicket, CreateTicket, LineItem,
};
use ftgo::services::kitchen::{KitchenService, TicketState};
use ftgo::services::order::{NewLineItem, NewOrder, OrderService, OrderState};
use saga_core::participant::Participant;
use saga_core::testing::command_message;
use saga_core::{Command, SagaId};
use saga_store::Tx;
use saga_tests::testdb::TestDb;

/// Handles `command` in its own transaction, as a new message (a resend); returns the outcome (`ok`, `refused`, ...).
async fn handle<C: Command>(
    db: &TestDb,
    participant: &Participant<Tx>,
    command: &C,
) -> &'static str {
    let mut tx = db.database.begin().await.expect("a transaction");
    let dispatch = participant
        .dispatch(&mut tx, &command_message(command, SagaId::new(), "replies"))
        .await;
    tx.commit().await.expect("commit");
    dispatch.outcome()
}

#[tokio::test]
async fn a_resent_approve_order_for_a_cancelled_order_is_answered() {
    let db = TestDb::sqlite().await;
    let orders = OrderService::open(db.database.clone())
        .await
        .expect("the order service opens");
    let placed = orders
        .place_order(&NewOrder {
            consumer_id: 1,
            restaurant_id: 1,
            line_items: vec![NewLineItem {
                menu_item_id: "samosa".to_owned(),
                quantity: 2,
            }],
        })
        .await
        .expect("the order is placed");
    let id = placed.order_id;
    let participant = orders.participant();
    let approve = ApproveOrder { order_id: id };
    assert_eq!(handle(&db, &participant, &approve).await, "ok");
    orders
        .cancel_order(id)
        .await
        .expect("an approved order can be cancelled");
    let state = |orders: &OrderService| {
        let orders = orders.clone();
        async move {
            orders
                .order(id)
                .await
                .expect("read")
                .expect("the order")
                .state
        }
    };
    assert_eq!(state(&orders).await, OrderState::CancelPending);
    // The first reply was lost; the saga sends ApproveOrder again.
    assert_eq!(handle(&db, &participant, &approve).await, "ok");
    assert_eq!(state(&orders).await, OrderState::CancelPending);
}

#[tokio::test]
async fn a_resent_confirmation_for_a_ticket_being_cancelled_is_answered() {
    let db = TestDb::sqlite().await;
    let kitchen = KitchenService::open(db.database.clone())
        .await
        .expect("the kitchen service opens");
    let participant = kitchen.participant();
    let create = CreateTicket {
        order_id: 41,
        restaurant_id: 1,
        line_items: vec![LineItem {
            menu_item_id: "samosa".to_owned(),
            quantity: 1,
        }],
    };
    let confirm = ConfirmCreateTicket { ticket_id: 41 };
    assert_eq!(handle(&db, &participant, &create).await, "ok");
    assert_eq!(handle(&db, &participant, &confirm).await, "ok");
    let begin_cancel = BeginCancelTicket { order_id: 41 };
    assert_eq!(handle(&db, &participant, &begin_cancel).await, "ok");
    // The first confirmation's reply was lost; the saga sends it again.
    assert_eq!(handle(&db, &participant, &confirm).await, "ok");
    let state = kitchen.ticket_state(41).await.expect("read");
    assert_eq!(state, Some(TicketState::CancelPending));
    // A ticket still waiting for its creation to be confirmed is not taken for confirmed.
    let unconfirmed = CreateTicket {
        order_id: 42,
        ..create
    };
    assert_eq!(handle(&db, &participant, &unconfirmed).await, "ok");
    let cancel_early = BeginCancelTicket { order_id: 42 };
    assert_eq!(handle(&db, &participant, &cancel_early).await, "refused");
}
