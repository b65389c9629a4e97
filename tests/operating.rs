//! FTGO set up for the operating tests (the CLI, the console, operator actions under load):
//! one-item orders at the sample restaurants, waiting for a saga's status, and a message the
//! orchestrator sets aside as a dead letter.

use std::time::{Duration, Instant};

use ftgo::app::Ftgo;
use ftgo::services::order::{NewLineItem, NewOrder};
use saga_core::message::headers;
use saga_core::ports::{SagaStore, UnitOfWork};
use saga_core::{Headers, Message, SagaId, SagaStatus};

/// An order of one item on `restaurant_id`'s menu: Luigi's (2) approves, the closed Night
/// Owl (13) refuses, Graveyard Shift (21) parks at `confirm_ticket` (nobody on shift).
pub fn one_item_order(restaurant_id: i64) -> NewOrder {
    let item = match restaurant_id {
        13 => "soup",
        21 => "night-burger",
        _ => "margherita",
    };
    NewOrder {
        consumer_id: 1,
        restaurant_id,
        line_items: vec![NewLineItem {
            menu_item_id: item.to_owned(),
            quantity: 1,
        }],
    }
}

/// Places [`one_item_order`] on `restaurant_id`; its CreateOrderSaga's id.
pub async fn place(ftgo: &Ftgo, restaurant_id: i64) -> SagaId {
    ftgo.orders
        .place_order(&one_item_order(restaurant_id))
        .await
        .expect("placed")
        .saga_id
}

/// Waits (at most 30 s) until the Order service's runtime has recorded the sagas it runs:
/// operator requests are refused until then (no orchestrator is known to apply them).
pub async fn wait_for_definitions(ftgo: &Ftgo) {
    let store = ftgo.orders.orchestrator().store();
    let deadline = Instant::now() + Duration::from_secs(30);
    while store.definitions().await.map_or(true, |d| d.is_empty()) {
        assert!(
            Instant::now() < deadline,
            "the saga definitions were never recorded"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits (at most `timeout`) until saga `saga_id` is `status`.
pub async fn wait_for_status(ftgo: &Ftgo, saga_id: SagaId, status: SagaStatus, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let now = ftgo.saga_status(saga_id).await.expect("reads");
        if now == Some(status) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "saga {saga_id} is {now:?}, not {status}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends the orchestrator an unusable message (type `NotAReply`, `payload`) on its reply
/// channel and waits (at most `timeout`) until it is dead-lettered; the message and the dead
/// letter's id.
pub async fn dead_letter_a_bogus_reply(
    ftgo: &Ftgo,
    payload: &str,
    timeout: Duration,
) -> (Message, i64) {
    let orchestrator = ftgo.orders.orchestrator();
    let store = orchestrator.store();
    let bogus = Message::new(
        orchestrator.reply_channel(),
        Headers::new().with(headers::MESSAGE_TYPE, "NotAReply"),
        payload.to_owned(),
    );
    store
        .commit(UnitOfWork {
            outbox: vec![bogus.clone()],
            ..UnitOfWork::default()
        })
        .await
        .expect("commits");
    let deadline = Instant::now() + timeout;
    loop {
        let letters = store.stored_dead_letters(0, 10, true).await.expect("lists");
        if let Some(letter) = letters
            .iter()
            .find(|l| l.dead_letter.message.id == bogus.id)
        {
            return (bogus, letter.id);
        }
        assert!(
            Instant::now() < deadline,
            "the bogus reply was not dead-lettered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
