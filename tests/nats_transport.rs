//! NATS JetStream specifics beyond the shared transport suite: poison messages go to the
//! dead-letter stream and are acknowledged, republished message ids are dropped by the server,
//! oversized messages are refused (and the relay sets them aside), and PaymentSaga runs over
//! NATS with one effect per step. Needs `SAGA_TEST_NATS_URL`.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use futures_util::StreamExt;
use saga_core::ports::{SagaStore, Transport, TransportError};
use saga_core::{Headers, Message, SagaStatus};
use saga_store::nats::{DEAD_LETTER_REASON, NatsOptions, NatsTransport};
use saga_tests::harness::PaymentSystem;
use saga_tests::testdb::{TestDb, nats_url, unique};

async fn transport(
    test: &str,
    tweak: impl FnOnce(&mut NatsOptions),
) -> Option<(String, NatsOptions, Arc<NatsTransport>)> {
    let url = nats_url(test)?;
    let name = unique("n");
    let mut options = NatsOptions {
        stream: name.to_uppercase(),
        subject_prefix: name,
        ack_wait: Duration::from_secs(1),
        ..NatsOptions::default()
    };
    tweak(&mut options);
    let transport = NatsTransport::connect(&url, options.clone())
        .await
        .expect("connects");
    Some((url, options, Arc::new(transport)))
}

/// Every message in the dead-letter stream: `(subject, reason)`.
async fn dead_letters(client: &async_nats::Client, options: &NatsOptions) -> Vec<(String, String)> {
    let js = jetstream::new(client.clone());
    let stream = js
        .get_stream(format!("{}_DEAD", options.stream))
        .await
        .expect("dead-letter stream");
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::Config::default())
        .await
        .expect("consumer");
    let mut batch = consumer
        .fetch()
        .max_messages(100)
        .messages()
        .await
        .expect("fetches");
    let mut found = Vec::new();
    while let Some(Ok(message)) = batch.next().await {
        let reason = message
            .headers
            .as_ref()
            .and_then(|h| h.get(DEAD_LETTER_REASON))
            .map(|v| v.as_str().to_owned())
            .unwrap_or_default();
        found.push((message.subject.to_string(), reason));
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_messages_go_to_the_dead_letter_stream_and_the_channel_flows() {
    let Some((_, options, nats)) = transport("poison", |_| {}).await else {
        return;
    };
    let client = nats.client().clone();
    let subject = format!("{}.ledger", options.subject_prefix);
    // Published behind the framework's back: no id, a bad id, a payload that is not UTF-8.
    let js = jetstream::new(client.clone());
    js.publish(subject.clone(), "{}".into())
        .await
        .expect("sent")
        .await
        .expect("stored");
    let mut bad_id = async_nats::HeaderMap::new();
    bad_id.insert("Nats-Msg-Id", "not-a-uuid");
    js.publish_with_headers(subject.clone(), bad_id, "{}".into())
        .await
        .expect("sent")
        .await
        .expect("stored");
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(
        "Nats-Msg-Id",
        saga_core::MessageId::new().to_string().as_str(),
    );
    js.publish_with_headers(subject.clone(), headers, vec![0xff, 0xfe].into())
        .await
        .expect("sent")
        .await
        .expect("stored");
    let good = Message::new(
        "ledger",
        Headers::new().with("message-type", "Reserve"),
        "{}".to_owned(),
    );
    nats.publish(std::slice::from_ref(&good))
        .await
        .expect("publishes");

    let deliveries = nats
        .receive("ledger", "g", 10, Duration::from_secs(2))
        .await
        .expect("receives");
    assert_eq!(deliveries.len(), 1, "only the good message is delivered");
    assert_eq!(deliveries[0].message, good);
    nats.ack("ledger", "g", &deliveries[0]).await.expect("acks");

    let dead = dead_letters(&client, &options).await;
    let reasons: Vec<&str> = dead.iter().map(|(_, r)| r.as_str()).collect();
    assert_eq!(dead.len(), 3, "{dead:?}");
    assert!(
        dead.iter()
            .all(|(s, _)| s == &format!("{}_dead.ledger", options.subject_prefix))
    );
    assert!(reasons.contains(&"no Nats-Msg-Id header"), "{reasons:?}");
    assert!(
        reasons.iter().any(|r| r.starts_with("invalid Nats-Msg-Id")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.starts_with("payload is not UTF-8")),
        "{reasons:?}"
    );
    let again = nats
        .receive("ledger", "g", 10, Duration::from_millis(300))
        .await
        .expect("receives");
    assert!(again.is_empty(), "poison was acknowledged, not redelivered");
    nats.delete_streams().await.expect("deleted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_redelivered_past_max_deliver_is_dead_lettered() {
    let Some((_, options, nats)) = transport("max_deliver", |o| o.max_deliver = 2).await else {
        return;
    };
    let message = Message::new(
        "ledger",
        Headers::new().with("message-type", "Reserve"),
        "{}".to_owned(),
    );
    nats.publish(&[message]).await.expect("publishes");
    for attempt in 1..=2 {
        let got = nats
            .receive("ledger", "g", 1, Duration::from_secs(2))
            .await
            .expect("receives");
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].attempt, attempt);
        nats.release("ledger", "g", &got[0], Duration::ZERO)
            .await
            .expect("releases");
    }
    let third = nats
        .receive("ledger", "g", 1, Duration::from_secs(1))
        .await
        .expect("receives");
    assert!(
        third.is_empty(),
        "the third delivery is dead-lettered instead"
    );
    let dead = dead_letters(nats.client(), &options).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].1, "delivered 2 times without being acknowledged");
    nats.delete_streams().await.expect("deleted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_republished_message_id_is_delivered_once() {
    let Some((_, _, nats)) = transport("duplicate", |_| {}).await else {
        return;
    };
    let message = Message::new(
        "ledger",
        Headers::new().with("message-type", "Reserve"),
        "{}".to_owned(),
    );
    for _ in 0..3 {
        nats.publish(std::slice::from_ref(&message))
            .await
            .expect("publishes");
    }
    let got = nats
        .receive("ledger", "g", 10, Duration::from_secs(1))
        .await
        .expect("receives");
    assert_eq!(got.len(), 1);
    nats.ack("ledger", "g", &got[0]).await.expect("acks");
    let more = nats
        .receive("ledger", "g", 10, Duration::from_millis(300))
        .await
        .expect("receives");
    assert!(more.is_empty(), "the server dropped the republished copies");
    nats.delete_streams().await.expect("deleted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_message_is_refused_with_the_limit() {
    let Some((_, _, nats)) = transport("oversized", |_| {}).await else {
        return;
    };
    let limit = nats.client().server_info().max_payload;
    let big = Message::new("ledger", Headers::new(), "x".repeat(limit + 1));
    let err = nats
        .publish(std::slice::from_ref(&big))
        .await
        .expect_err("refused");
    assert!(
        matches!(err, TransportError::TooLarge { id, limit: l, .. } if id == big.id && l == limit),
        "{err}"
    );
    nats.delete_streams().await.expect("deleted");
}

/// PaymentSaga on a SQLite store over NATS: every saga finishes with one effect per step, and
/// an outbox row too large for NATS is set aside as a dead letter without holding up the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payment_sagas_run_over_nats_and_an_oversized_outbox_row_is_set_aside() {
    let Some((_, _, nats)) = transport("payments", |_| {}).await else {
        return;
    };
    let system = PaymentSystem::new(TestDb::sqlite().await);
    let limit = nats.client().server_info().max_payload;
    // A message no NATS server here would take, queued ahead of the sagas' commands.
    let oversized = Message::new(
        "ledger",
        Headers::new().with("message-type", "Reserve"),
        "y".repeat(limit + 10),
    );
    let unit = saga_core::ports::UnitOfWork {
        outbox: vec![oversized.clone()],
        ..Default::default()
    };
    system.store.commit(unit).await.expect("commits");
    let payments: Vec<(i64, i64)> = (1..=30)
        .map(|p| (p, if p % 5 == 0 { 500 } else { 10 }))
        .collect();
    let ids = system.start(&payments).await;
    system.run_to_end(nats.clone(), &ids).await;
    assert_eq!(system.count_in(&ids, SagaStatus::Compensated).await, 6);
    let dead = system.store.dead_letters().await.expect("reads");
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].message.id, oversized.id);
    assert!(
        dead[0].reason.contains("over the transport's limit"),
        "{}",
        dead[0].reason
    );
    system.db.cleanup().await;
    nats.delete_streams().await.expect("deleted");
}
