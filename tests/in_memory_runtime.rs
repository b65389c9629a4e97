//! CreateOrderSaga end to end in one process: the orchestrator and four participants over
//! the in-memory store and transport, including a transport that duplicates and reorders
//! messages, and poison messages.

use ftgo::messages::{LineItem, channels};
use saga_core::memory::{Faults, InMemoryTransport};
use saga_core::message::headers;
use saga_core::orchestrator::Handled;
use saga_core::ports::{SagaStore, Transport};
use saga_core::{Headers, Message, SagaId, SagaStatus};
use saga_tests::in_memory_ftgo::{
    BLOCKED_CONSUMER as BLOCKED, CLOSED_RESTAURANT as CLOSED, FtgoSystem, OrderState, TicketState,
};

async fn place(
    system: &FtgoSystem,
    order_id: i64,
    consumer: i64,
    restaurant: i64,
    total: i64,
) -> SagaId {
    let items = vec![LineItem {
        menu_item_id: "samosa".to_owned(),
        quantity: 3,
    }];
    system
        .place_order(order_id, consumer, restaurant, items, total)
        .await
        .expect("saga starts")
}

async fn status(system: &FtgoSystem, saga_id: SagaId) -> SagaStatus {
    system.status(saga_id).await.expect("saga exists")
}

#[tokio::test]
async fn every_outcome_runs_to_its_terminal_state() {
    let system = FtgoSystem::new(InMemoryTransport::new());
    let approved = place(&system, 1, 1, 1, 1_000).await;
    let consumer_invalid = place(&system, 2, BLOCKED, 1, 1_000).await;
    let kitchen_refuses = place(&system, 3, 1, CLOSED, 1_000).await;
    let card_declined = place(&system, 4, 1, 1, 50_000).await;
    system.runtime.run_until_idle().await.expect("runs");

    assert_eq!(status(&system, approved).await, SagaStatus::Completed);
    assert_eq!(
        status(&system, consumer_invalid).await,
        SagaStatus::Compensated
    );
    assert_eq!(
        status(&system, kitchen_refuses).await,
        SagaStatus::Compensated
    );
    assert_eq!(
        status(&system, card_declined).await,
        SagaStatus::Compensated
    );

    let orders = system.orders.lock().await;
    assert_eq!(orders.states[&1], OrderState::Approved);
    assert_eq!(orders.states[&2], OrderState::Rejected);
    assert_eq!(orders.states[&3], OrderState::Rejected);
    assert_eq!(orders.states[&4], OrderState::Rejected);
    let kitchen = system.kitchen.lock().await;
    assert_eq!(kitchen.tickets[&1], TicketState::AwaitingAcceptance);
    // Created while the consumer was checked, then cancelled.
    assert_eq!(kitchen.tickets[&2], TicketState::Cancelled);
    assert!(!kitchen.tickets.contains_key(&3));
    assert_eq!(kitchen.tickets[&4], TicketState::Cancelled);
    let accounting = system.accounting.lock().await;
    assert_eq!(accounting.authorizations.len(), 1);
    assert!(system.consumers.lock().await.blocked.contains(&BLOCKED));

    // The timeline of the declined order shows both compensations, in reverse order.
    let history = system
        .runtime
        .orchestrator()
        .store()
        .history(card_declined)
        .await
        .expect("history");
    let compensated: Vec<String> = history
        .iter()
        .filter_map(|h| match &h.event {
            saga_core::engine::HistoryEvent::StepCompensated { step } => Some(step.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(compensated, ["create_ticket", "create_order"]);
    assert!(
        system
            .runtime
            .dead_letters()
            .await
            .expect("reads")
            .is_empty()
    );
}

#[tokio::test]
async fn duplicated_and_reordered_messages_have_one_effect() {
    for seed in 0..20 {
        let system = FtgoSystem::new(InMemoryTransport::with_faults(Faults {
            seed,
            duplicate: 0.3,
            reorder: 0.3,
        }));
        let mut sagas = Vec::new();
        for order in 0..12 {
            let (consumer, restaurant, total) = match order % 4 {
                0 => (1, 1, 500),
                1 => (BLOCKED, 1, 500),
                2 => (1, CLOSED, 500),
                _ => (1, 1, 99_999),
            };
            sagas.push((
                order,
                place(&system, order, consumer, restaurant, total).await,
            ));
        }
        system.runtime.run_until_idle().await.expect("runs");
        for (order, saga) in &sagas {
            let expected = if order % 4 == 0 {
                SagaStatus::Completed
            } else {
                SagaStatus::Compensated
            };
            assert_eq!(
                status(&system, *saga).await,
                expected,
                "seed {seed}, order {order}"
            );
        }
        let kitchen = system.kitchen.lock().await;
        // Tickets are created for orders 0 (approved), 1 (blocked consumer, checked while
        // the ticket is created) and 3 (declined card), once each.
        assert_eq!(kitchen.tickets_created, 9, "seed {seed}");
        let accounting = system.accounting.lock().await;
        assert_eq!(accounting.authorizations_made, 3, "seed {seed}");
        let handled = system.runtime.handled();
        assert!(
            handled
                .iter()
                .all(|h| !matches!(h, Handled::DeadLettered(_))),
            "seed {seed}: {handled:?}"
        );
    }
}

#[tokio::test]
async fn poison_messages_are_dead_lettered_and_the_channel_keeps_flowing() {
    let system = FtgoSystem::new(InMemoryTransport::new());
    let typed = |message_type: &str| Headers::new().with(headers::MESSAGE_TYPE, message_type);
    let poison = [
        Message::new(
            channels::KITCHEN,
            typed("CreateTicket"),
            "{not json".to_owned(),
        ),
        Message::new(channels::KITCHEN, typed("MakePizza"), "{}".to_owned()),
        Message::new(channels::KITCHEN, Headers::new(), "{}".to_owned()),
        Message::new(
            channels::ORDER_SAGA_REPLIES,
            typed("TicketCreated"),
            "{}".to_owned(),
        ),
    ];
    system
        .runtime
        .transport()
        .publish(&poison)
        .await
        .expect("publishes");
    let saga = place(&system, 10, 1, 1, 100).await;
    system.runtime.run_until_idle().await.expect("runs");

    assert_eq!(status(&system, saga).await, SagaStatus::Completed);
    let dead = system.runtime.dead_letters().await.expect("reads");
    let reasons: Vec<&str> = dead.iter().map(|d| d.reason.as_str()).collect();
    assert_eq!(dead.len(), 4, "{reasons:?}");
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("malformed payload for `CreateTicket`")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("no handler for command type `MakePizza`")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("missing header `message-type`")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("unusable reply: missing header `saga-id`")),
        "{reasons:?}"
    );
}

#[tokio::test]
async fn a_stale_reply_changes_nothing() {
    let system = FtgoSystem::new(InMemoryTransport::new());
    let saga = place(&system, 20, 1, 1, 100).await;
    system.runtime.run_until_idle().await.expect("runs");
    let before = system
        .runtime
        .orchestrator()
        .load(saga)
        .await
        .expect("loads");
    // A reply to request 1 arrives again under a new message id.
    let late = Message::new(
        channels::ORDER_SAGA_REPLIES,
        Headers::new()
            .with(headers::MESSAGE_TYPE, "ConsumerVerification")
            .with(headers::SAGA_ID, saga)
            .with(headers::REQUEST_ID, 1)
            .with(headers::REPLY_OUTCOME, "failure"),
        r#"{"Invalid":{"reason":"late"}}"#.to_owned(),
    );
    let handled = system
        .runtime
        .orchestrator()
        .handle_reply(&late)
        .await
        .expect("handles");
    assert!(matches!(handled, Handled::Ignored(_)), "{handled:?}");
    let after = system
        .runtime
        .orchestrator()
        .load(saga)
        .await
        .expect("loads");
    assert_eq!(before, after);
}
