//! The transport conformance suite, written once and run against every transport: the
//! in-memory one, the SQL-table queue on SQLite and on PostgreSQL, and NATS JetStream
//! (`SAGA_TEST_NATS_URL`; without it those tests say they did not run).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use saga_core::memory::InMemoryTransport;
use saga_core::ports::Transport;
use saga_core::{Headers, Message};
use saga_store::nats::{NatsOptions, NatsTransport};
use saga_store::{SqlTransport, SqlTransportOptions};
use saga_tests::testdb::{Backend, TestDb};

/// The lease (ack wait) transports get in these tests.
const LEASE: Duration = Duration::from_secs(1);

/// A transport to test, and what to clean up afterwards.
struct UnderTest {
    transport: Arc<dyn Transport>,
    /// Whether an unacknowledged delivery comes back by itself after [`LEASE`].
    leases: bool,
    /// Whether a delivery given back with `release` counts as one (NATS cannot tell a
    /// redelivery after a `nak` from one after a crash; the SQL queue does not count it).
    release_counts: bool,
    db: Option<TestDb>,
    nats: Option<Arc<NatsTransport>>,
}

impl UnderTest {
    async fn cleanup(self) {
        if let Some(db) = self.db {
            db.cleanup().await;
        }
        if let Some(nats) = self.nats {
            nats.delete_streams().await.expect("streams deleted");
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Memory,
    Sql(Backend),
    Nats,
}

/// NATS settings for one test: streams of its own, the test lease.
fn nats_options() -> NatsOptions {
    let name = saga_tests::testdb::unique("t");
    NatsOptions {
        stream: name.to_uppercase(),
        subject_prefix: name,
        ack_wait: LEASE,
        ..NatsOptions::default()
    }
}

async fn open(kind: Kind, test: &str) -> Option<UnderTest> {
    match kind {
        Kind::Memory => Some(UnderTest {
            transport: Arc::new(InMemoryTransport::new()),
            leases: false,
            release_counts: true,
            db: None,
            nats: None,
        }),
        Kind::Nats => {
            let url = saga_tests::testdb::nats_url(test)?;
            let nats = Arc::new(
                NatsTransport::connect(&url, nats_options())
                    .await
                    .expect("NATS connects"),
            );
            Some(UnderTest {
                transport: nats.clone(),
                leases: true,
                release_counts: true,
                db: None,
                nats: Some(nats),
            })
        }
        Kind::Sql(backend) => {
            let db = TestDb::open(backend, test).await?;
            let transport = SqlTransport::with_options(
                db.database.clone(),
                SqlTransportOptions {
                    lease: LEASE,
                    poll_interval: Duration::from_millis(50),
                    ..SqlTransportOptions::default()
                },
            );
            Some(UnderTest {
                transport: Arc::new(transport),
                leases: true,
                release_counts: false,
                db: Some(db),
                nats: None,
            })
        }
    }
}

fn channel(test: &str) -> String {
    format!("conformance.{test}.{}", uuid::Uuid::now_v7().simple())
}

fn message(channel: &str, n: usize) -> Message {
    Message::new(
        channel,
        Headers::new()
            .with("message-type", "Numbered")
            .with("n", n)
            .with("unicode", "naïve ☕"),
        format!(r#"{{"n":{n},"text":"line\nbreak \"quoted\""}}"#),
    )
}

/// Receives until `count` deliveries arrived (acking each), or panics after 10 s.
async fn drain(t: &dyn Transport, channel: &str, count: usize) -> Vec<Message> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut received = Vec::new();
    while received.len() < count {
        assert!(
            Instant::now() < deadline,
            "got {} of {count}",
            received.len()
        );
        for delivery in t
            .receive(channel, "g", 16, Duration::from_millis(200))
            .await
            .expect("receives")
        {
            t.ack(channel, "g", &delivery).await.expect("acks");
            received.push(delivery.message);
        }
    }
    received
}

async fn delivers_in_order_with_the_envelope_intact(kind: Kind) {
    let Some(under) = open(kind, "order").await else {
        return;
    };
    let channel = channel("order");
    let sent: Vec<Message> = (0..40).map(|n| message(&channel, n)).collect();
    under
        .transport
        .publish(&sent[..25])
        .await
        .expect("publishes");
    under
        .transport
        .publish(&sent[25..])
        .await
        .expect("publishes");
    let received = drain(under.transport.as_ref(), &channel, sent.len()).await;
    assert_eq!(received, sent);
    under.cleanup().await;
}

async fn ack_removes_and_release_redelivers(kind: Kind) {
    let Some(under) = open(kind, "release").await else {
        return;
    };
    let t = under.transport.as_ref();
    let channel = channel("release");
    let sent = message(&channel, 1);
    t.publish(std::slice::from_ref(&sent))
        .await
        .expect("publishes");
    let first = t
        .receive(&channel, "g", 1, Duration::from_secs(2))
        .await
        .expect("receives");
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].attempt, 1);
    t.release(&channel, "g", &first[0], Duration::ZERO)
        .await
        .expect("releases");
    let second = t
        .receive(&channel, "g", 1, Duration::from_secs(2))
        .await
        .expect("receives");
    assert_eq!(second.len(), 1);
    assert_eq!(second[0].message, sent);
    let expected = if under.release_counts { 2 } else { 1 };
    assert_eq!(
        second[0].attempt, expected,
        "a released delivery counts only where the transport cannot tell it apart"
    );
    t.ack(&channel, "g", &second[0]).await.expect("acks");
    let none = t
        .receive(&channel, "g", 1, Duration::from_millis(300))
        .await
        .expect("receives");
    assert!(none.is_empty(), "acknowledged messages do not come back");
    under.cleanup().await;
}

async fn release_with_a_delay_hides_the_message_until_then(kind: Kind) {
    let Some(under) = open(kind, "delay").await else {
        return;
    };
    if !under.leases {
        // The in-memory transport redelivers released messages at once.
        under.cleanup().await;
        return;
    }
    let t = under.transport.as_ref();
    let channel = channel("delay");
    t.publish(&[message(&channel, 1)]).await.expect("publishes");
    let first = t
        .receive(&channel, "g", 1, Duration::from_secs(2))
        .await
        .expect("receives");
    let released = Instant::now();
    t.release(&channel, "g", &first[0], Duration::from_millis(600))
        .await
        .expect("releases");
    let early = t
        .receive(&channel, "g", 1, Duration::from_millis(200))
        .await
        .expect("receives");
    assert!(early.is_empty(), "hidden during the delay");
    let later = t
        .receive(&channel, "g", 1, Duration::from_secs(3))
        .await
        .expect("receives");
    assert_eq!(later.len(), 1);
    assert!(released.elapsed() >= Duration::from_millis(550));
    under.cleanup().await;
}

async fn an_unacknowledged_delivery_comes_back_after_the_lease(kind: Kind) {
    let Some(under) = open(kind, "lease").await else {
        return;
    };
    if !under.leases {
        under.cleanup().await;
        return;
    }
    let t = under.transport.as_ref();
    let channel = channel("lease");
    t.publish(&[message(&channel, 7)]).await.expect("publishes");
    // A consumer takes it and dies without acknowledging.
    let taken = t
        .receive(&channel, "g", 1, Duration::from_secs(2))
        .await
        .expect("receives");
    assert_eq!(taken.len(), 1);
    let again = t
        .receive(&channel, "g", 1, LEASE * 4)
        .await
        .expect("receives");
    assert_eq!(again.len(), 1, "redelivered after the lease");
    assert_eq!(again[0].message, taken[0].message);
    assert!(again[0].attempt >= 2);
    under.cleanup().await;
}

async fn consumers_of_one_group_share_the_work(kind: Kind) {
    let Some(under) = open(kind, "share").await else {
        return;
    };
    let channel = channel("share");
    let sent: Vec<Message> = (0..60).map(|n| message(&channel, n)).collect();
    under.transport.publish(&sent).await.expect("publishes");
    let mut workers = Vec::new();
    for _ in 0..3 {
        let t = under.transport.clone();
        let channel = channel.clone();
        workers.push(tokio::spawn(async move {
            let mut got = Vec::new();
            loop {
                let batch = t
                    .receive(&channel, "g", 4, Duration::from_millis(300))
                    .await
                    .expect("receives");
                if batch.is_empty() {
                    return got;
                }
                for delivery in batch {
                    t.ack(&channel, "g", &delivery).await.expect("acks");
                    got.push(delivery.message.id);
                }
            }
        }));
    }
    let mut all = Vec::new();
    for worker in workers {
        all.extend(worker.await.expect("joins"));
    }
    let unique: BTreeSet<_> = all.iter().collect();
    assert_eq!(all.len(), sent.len(), "each message once");
    assert_eq!(unique.len(), sent.len());
    under.cleanup().await;
}

async fn a_waiting_receiver_wakes_when_a_message_arrives(kind: Kind) {
    let Some(under) = open(kind, "wake").await else {
        return;
    };
    if !under.leases {
        under.cleanup().await;
        return;
    }
    let channel = channel("wake");
    let t = under.transport.clone();
    let receiver = {
        let channel = channel.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let got = t
                .receive(&channel, "g", 1, Duration::from_secs(5))
                .await
                .expect("receives");
            (got.len(), started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(150)).await;
    under
        .transport
        .publish(&[message(&channel, 1)])
        .await
        .expect("publishes");
    let (count, waited) = receiver.await.expect("joins");
    assert_eq!(count, 1);
    assert!(waited < Duration::from_secs(2), "woke after {waited:?}");
    under.cleanup().await;
}

async fn a_large_payload_round_trips(kind: Kind) {
    let Some(under) = open(kind, "large").await else {
        return;
    };
    let channel = channel("large");
    let big = Message::new(
        &channel,
        Headers::new().with("message-type", "Big"),
        format!("\"{}\"", "x".repeat(256 * 1024)),
    );
    under
        .transport
        .publish(std::slice::from_ref(&big))
        .await
        .expect("publishes");
    let received = drain(under.transport.as_ref(), &channel, 1).await;
    assert_eq!(received, [big]);
    under.cleanup().await;
}

macro_rules! conformance {
    ($module:ident, $kind:expr) => {
        mod $module {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn delivers_in_order_with_the_envelope_intact() {
                super::delivers_in_order_with_the_envelope_intact($kind).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn ack_removes_and_release_redelivers() {
                super::ack_removes_and_release_redelivers($kind).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn release_with_a_delay_hides_the_message_until_then() {
                super::release_with_a_delay_hides_the_message_until_then($kind).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn an_unacknowledged_delivery_comes_back_after_the_lease() {
                super::an_unacknowledged_delivery_comes_back_after_the_lease($kind).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn consumers_of_one_group_share_the_work() {
                super::consumers_of_one_group_share_the_work($kind).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_waiting_receiver_wakes_when_a_message_arrives() {
                super::a_waiting_receiver_wakes_when_a_message_arrives($kind).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_large_payload_round_trips() {
                super::a_large_payload_round_trips($kind).await;
            }
        }
    };
}

conformance!(memory, Kind::Memory);
conformance!(sql_sqlite, Kind::Sql(Backend::Sqlite));
conformance!(sql_postgres, Kind::Sql(Backend::Postgres));
conformance!(nats, Kind::Nats);
