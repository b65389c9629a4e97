//! Liveness over NATS JetStream: bad routing headers, deleted consumers, poison at the size
//! limit, NUL bytes, oversized commands, channels nobody reads and dead-letter replay all end
//! with every saga finished (or told) and the channels flowing; and no delivery stalls.
//! Needs `SAGA_TEST_NATS_URL`; the NUL test also `SAGA_TEST_POSTGRES_URL`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use saga_core::message::headers;
use saga_core::orchestrator::Orchestrator;
use saga_core::ports::{SagaStore, Transport};
use saga_core::{Command, Headers, Message, Reply, SagaStatus, saga};
use saga_store::nats::{DEAD_LETTER_REASON, DEAD_LETTER_TRUNCATED, NatsOptions, NatsTransport};
use saga_store::{SagaRuntime, SqlSagaStore};
use saga_tests::faults::stray_command;
use saga_tests::harness::{PaymentSystem, test_runtime_options};
use saga_tests::payment::{LEDGER, Ledger};
use saga_tests::testdb::{Backend, TestDb, nats_url, unique};
use serde::{Deserialize, Serialize};

const WAIT: Duration = Duration::from_secs(60);

async fn transport(test: &str) -> Option<(NatsOptions, Arc<NatsTransport>)> {
    let url = nats_url(test)?;
    let name = unique("l");
    let options = NatsOptions {
        stream: name.to_uppercase(),
        subject_prefix: name,
        ack_wait: Duration::from_secs(2),
        ..NatsOptions::default()
    };
    let transport = NatsTransport::connect(&url, options.clone())
        .await
        .expect("connects");
    Some((options, Arc::new(transport)))
}

fn payments(n: i64) -> Vec<(i64, i64)> {
    (1..=n)
        .map(|p| (p, if p % 4 == 0 { 500 } else { 20 + p % 50 }))
        .collect()
}

/// A command whose `reply-to` is not a subject (`bad channel`, `a..b`) is dead-lettered by the
/// participant with no reply queued, so the participant's outbox never holds a row NATS
/// refuses, and every later reply is published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_reply_to_never_blocks_a_services_outbox() {
    let Some((_, nats)) = transport("bad_reply_to").await else {
        return;
    };
    let system = PaymentSystem::new(TestDb::sqlite().await);
    nats.publish(&[
        stray_command(Some("bad channel")),
        stray_command(Some("a..b")),
    ])
    .await
    .expect("publishes");
    let ids = system.start(&payments(12)).await;
    system.run_to_end(nats.clone(), &ids).await;
    let dead = system.store.dead_letters().await.expect("reads");
    assert_eq!(dead.len(), 2, "{dead:#?}");
    assert!(
        dead.iter()
            .all(|d| d.reason.contains("invalid header `reply-to`"))
    );
    let unpublished = system
        .scalar("SELECT COUNT(*) AS n FROM saga_outbox WHERE published_at IS NULL")
        .await;
    assert_eq!(unpublished, 0, "the outbox is drained");
    system.db.cleanup().await;
    nats.delete_streams().await.expect("deleted");
}

/// The channel's durable consumer is deleted while sagas run: the transport notices, creates
/// it again (loudly), and every saga finishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_consumer_is_created_again() {
    let Some((options, nats)) = transport("deleted_consumer").await else {
        return;
    };
    let system = PaymentSystem::new(TestDb::sqlite().await);
    let ids = system.start(&payments(40)).await;
    let runtime = system
        .run(
            nats.clone(),
            Ledger {
                delay: Duration::from_millis(10),
            },
        )
        .await;
    let deadline = Instant::now() + WAIT;
    while system.effects().await.values().sum::<i64>() < 10 {
        assert!(Instant::now() < deadline, "no progress");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let js = jetstream::new(nats.client().clone());
    let stream = js.get_stream(&options.stream).await.expect("stream");
    stream
        .delete_consumer(LEDGER)
        .await
        .expect("deletes the consumer");
    system.wait_terminal(&ids, WAIT).await;
    runtime.shutdown().await;
    system.assert_effects_consistent(&ids).await;
    stream.consumer_info(LEDGER).await.expect("it exists again");
    system.db.cleanup().await;
    nats.delete_streams().await.expect("deleted");
}

/// A poison message just under the server's size limit: its dead-letter copy (with the
/// reason added) would not fit, so its payload is cut to fit and the cut recorded; it is
/// acknowledged, and the message behind it is delivered at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_at_the_size_limit_is_dead_lettered_and_the_channel_flows() {
    let Some((options, nats)) = transport("poison_at_limit").await else {
        return;
    };
    let limit = nats.client().server_info().max_payload;
    let js = jetstream::new(nats.client().clone());
    let subject = format!("{}.{LEDGER}", options.subject_prefix);
    // No Nats-Msg-Id: poison. It fits; a copy with one more header would not.
    js.publish(subject, "p".repeat(limit - 20).into())
        .await
        .expect("sent")
        .await
        .expect("stored");
    let good = Message::new(
        LEDGER,
        Headers::new().with(headers::MESSAGE_TYPE, "Reserve"),
        "{}".to_owned(),
    );
    nats.publish(std::slice::from_ref(&good))
        .await
        .expect("publishes");
    let started = Instant::now();
    let mut delivered = Vec::new();
    while delivered.is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "the good message is held up"
        );
        delivered = nats
            .receive(LEDGER, "g", 10, Duration::from_millis(200))
            .await
            .expect("receives");
    }
    assert_eq!(delivered.len(), 1);
    assert_eq!(delivered[0].message, good);
    nats.ack(LEDGER, "g", &delivered[0]).await.expect("acks");
    let dead = nats.dead_letters(0, 10).await.expect("lists");
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].reason, "no Nats-Msg-Id header");
    assert!(dead[0].message.is_none(), "a cut copy is not replayable");
    let dead_stream = js
        .get_stream(format!("{}_DEAD", options.stream))
        .await
        .expect("dead-letter stream");
    let raw = dead_stream
        .get_raw_message(dead[0].sequence)
        .await
        .expect("reads");
    assert_eq!(
        raw.headers.get(DEAD_LETTER_TRUNCATED).map(|v| v.as_str()),
        Some((limit - 20).to_string().as_str())
    );
    assert!(raw.headers.get(DEAD_LETTER_REASON).is_some());
    let again = nats
        .receive(LEDGER, "g", 10, Duration::from_millis(500))
        .await
        .expect("receives");
    assert!(again.is_empty(), "the poison was acknowledged");
    nats.delete_streams().await.expect("deleted");
}

/// A command with a NUL byte in its payload, handled by a participant on PostgreSQL (whose
/// text cannot hold NUL): dead-lettered there with the right reason and the NUL escaped, not
/// redelivered until a misleading "delivered too often".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nul_byte_payload_is_dead_lettered_with_its_reason_on_postgres() {
    let Some((_, nats)) = transport("nul").await else {
        return;
    };
    let Some(db) = TestDb::open(Backend::Postgres, "nul_over_nats").await else {
        nats.delete_streams().await.expect("deleted");
        return;
    };
    let system = PaymentSystem::new(db);
    let poisoned = Message::new(
        LEDGER,
        Headers::new().with(headers::MESSAGE_TYPE, "Reserve"),
        "{\"payment\":1\u{0},\"amount\":1}".to_owned(),
    );
    nats.publish(std::slice::from_ref(&poisoned))
        .await
        .expect("publishes");
    let ids = system.start(&payments(4)).await;
    system.run_to_end(nats.clone(), &ids).await;
    let dead = system.store.dead_letters().await.expect("reads");
    assert_eq!(dead.len(), 1, "{dead:#?}");
    assert_eq!(dead[0].message.id, poisoned.id);
    assert!(
        dead[0].reason.contains("malformed payload"),
        "{}",
        dead[0].reason
    );
    assert!(
        dead[0].reason.contains("NUL characters stored as"),
        "{}",
        dead[0].reason
    );
    assert!(dead[0].message.payload.contains("\\u0000"));
    system.db.cleanup().await;
    nats.delete_streams().await.expect("deleted");
}

/// An upload of whatever size.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Command)]
#[command(channel = "uploads", reply = Uploaded)]
struct Upload {
    blob: String,
}

/// Done.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Reply)]
struct Uploaded;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct UploadData {
    blob: String,
}

fn upload(data: &UploadData) -> Upload {
    Upload {
        blob: data.blob.clone(),
    }
}

saga! {
    /// One step that sends its whole data.
    saga UploadSaga(UploadData) {
        compensatable upload { invoke: upload }
    }
}

/// A saga whose command is over NATS's size limit is told: the relay sets the command aside
/// and sends the saga a failure reply, so the step fails and the saga compensates instead of
/// waiting forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_over_the_size_limit_fails_its_step() {
    let Some((_, nats)) = transport("oversized_command").await else {
        return;
    };
    let db = TestDb::sqlite().await;
    let store = Arc::new(SqlSagaStore::new(db.database.clone()));
    let orchestrator =
        Arc::new(Orchestrator::new(store.clone(), "uploads.replies").register::<UploadSaga>());
    let limit = nats.max_message_bytes().expect("a limit");
    let saga_id = orchestrator
        .start::<UploadSaga>(UploadData {
            blob: "z".repeat(limit),
        })
        .await
        .expect("starts");
    let runtime = SagaRuntime::builder(nats.clone())
        .options(test_runtime_options())
        .orchestrator(orchestrator.clone())
        .start()
        .await
        .expect("the runtime starts");
    let deadline = Instant::now() + WAIT;
    let record = loop {
        let record = store.load(saga_id).await.expect("loads").expect("exists");
        if record.state.status.is_terminal() {
            break record;
        }
        assert!(Instant::now() < deadline, "the saga was never told");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    runtime.shutdown().await;
    assert_eq!(record.state.status, SagaStatus::Compensated);
    let reason = record.state.compensation_reason.unwrap_or_default();
    assert!(reason.contains("over the transport's limit"), "{reason}");
    let dead = store.dead_letters().await.expect("reads");
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].consumer, "outbox-relay");
    db.cleanup().await;
    nats.delete_streams().await.expect("deleted");
}

/// Messages on a subject that has no consumer are reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_nobody_consumes_is_reported() {
    let Some((_, nats)) = transport("unconsumed").await else {
        return;
    };
    let orphan = Message::new("nobody.listens", Headers::new(), "{}".to_owned());
    nats.publish(&[orphan]).await.expect("publishes");
    let listened = Message::new(LEDGER, Headers::new(), "{}".to_owned());
    nats.publish(&[listened]).await.expect("publishes");
    let _ = nats
        .receive(LEDGER, "g", 1, Duration::from_secs(1))
        .await
        .expect("receives");
    tokio::time::sleep(Duration::from_millis(50)).await;
    let backlog = nats
        .unconsumed(Duration::from_millis(10))
        .await
        .expect("reads");
    assert_eq!(backlog.len(), 1, "{backlog:?}");
    assert_eq!(backlog[0].channel, "nobody.listens");
    assert_eq!(backlog[0].messages, 1);
    nats.delete_streams().await.expect("deleted");
}

/// A dead letter in the NATS dead-letter stream is put back on its channel under a new id,
/// and removed from the stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_dead_letter_is_replayed() {
    let url = nats_url("nats_replay");
    let Some(url) = url else {
        return;
    };
    let name = unique("r");
    let options = NatsOptions {
        stream: name.to_uppercase(),
        subject_prefix: name,
        ack_wait: Duration::from_secs(1),
        max_deliver: 1,
        ..NatsOptions::default()
    };
    let nats = NatsTransport::connect(&url, options)
        .await
        .expect("connects");
    let original = Message::new(
        LEDGER,
        Headers::new().with(headers::MESSAGE_TYPE, "Reserve"),
        "{}".to_owned(),
    );
    nats.publish(std::slice::from_ref(&original))
        .await
        .expect("publishes");
    let first = nats
        .receive(LEDGER, "g", 1, Duration::from_secs(2))
        .await
        .expect("receives");
    nats.release(LEDGER, "g", &first[0], Duration::ZERO)
        .await
        .expect("releases");
    // The second delivery is past max_deliver: dead-lettered.
    let none = nats
        .receive(LEDGER, "g", 1, Duration::from_secs(1))
        .await
        .expect("receives");
    assert!(none.is_empty());
    let dead = nats.dead_letters(0, 10).await.expect("lists");
    assert_eq!(dead.len(), 1);
    let replayed = nats
        .replay_dead_letter(dead[0].sequence)
        .await
        .expect("replays");
    assert_ne!(replayed, original.id);
    let back = nats
        .receive(LEDGER, "g", 1, Duration::from_secs(2))
        .await
        .expect("receives");
    assert_eq!(back.len(), 1);
    assert_eq!(back[0].message.id, replayed);
    assert_eq!(back[0].message.payload, original.payload);
    assert_eq!(
        back[0].message.headers.get(headers::REPLAY_OF),
        Some(original.id.to_string().as_str())
    );
    nats.ack(LEDGER, "g", &back[0]).await.expect("acks");
    assert!(nats.dead_letters(0, 10).await.expect("lists").is_empty());
    nats.delete_streams().await.expect("deleted");
}

/// Under a steady load no message waits long between its publish and its delivery, with two
/// processes' worth of consumers sharing the channel: a pull whose answer never comes must not
/// stall a channel for seconds (it did, for ~5.2 s, when each receive was a short pull request
/// waiting on the client's own batch timer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_do_not_stall() {
    let Some((options, nats)) = transport("stalls").await else {
        return;
    };
    let url = nats_url("stalls").expect("configured");
    let second = Arc::new(
        NatsTransport::connect(&url, options)
            .await
            .expect("a second instance connects"),
    );
    let count = 600;
    let publisher = {
        let nats = nats.clone();
        tokio::spawn(async move {
            for i in 0..count {
                let message = Message::new(
                    LEDGER,
                    Headers::new().with("sent-at", saga_core::Timestamp::now().as_millis()),
                    format!("{{\"n\":{i}}}"),
                );
                nats.publish(&[message]).await.expect("publishes");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let received = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let consume = |instance: Arc<NatsTransport>| {
        let received = received.clone();
        tokio::spawn(async move {
            let mut latencies = Vec::new();
            let deadline = Instant::now() + WAIT;
            while received.load(std::sync::atomic::Ordering::SeqCst) < count {
                assert!(Instant::now() < deadline, "not everything arrived");
                let got = instance
                    .receive(LEDGER, "g", 64, Duration::from_millis(200))
                    .await
                    .expect("receives");
                let now = saga_core::Timestamp::now().as_millis();
                for delivery in &got {
                    let sent: u64 = delivery
                        .message
                        .headers
                        .get("sent-at")
                        .and_then(|v| v.parse().ok())
                        .expect("sent-at");
                    latencies.push(now.saturating_sub(sent));
                }
                received.fetch_add(got.len(), std::sync::atomic::Ordering::SeqCst);
                instance.ack_all(LEDGER, "g", &got).await.expect("acks");
            }
            latencies
        })
    };
    let (first, other) = (consume(nats.clone()), consume(second));
    publisher.await.expect("publisher");
    let mut latencies = first.await.expect("first consumer");
    latencies.extend(other.await.expect("second consumer"));
    latencies.sort_unstable();
    let max = latencies.last().copied().unwrap_or_default();
    let p99 = latencies[latencies.len() * 99 / 100];
    saga_tests::testdb::notice(&format!(
        "NATS publish-to-delivery over {} messages, two instances: p50 {} ms, p99 {p99} ms, \
         max {max} ms",
        latencies.len(),
        latencies[latencies.len() / 2]
    ));
    assert!(max < 2_000, "a delivery stalled for {max} ms");
    nats.delete_streams().await.expect("deleted");
}
