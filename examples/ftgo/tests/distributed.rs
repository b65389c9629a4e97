//! FTGO distributed: every service its own process (two Kitchen instances), on PostgreSQL and
//! NATS JetStream, started and stopped by `run-distributed.sh`, driven through the HTTP API:
//! processes killed, NATS stopped, and the liveness soak (every fault at once).
//!
//! Needs `SAGA_TEST_POSTGRES_URL` and `SAGA_TEST_NATS_URL`; the NATS outage test also needs
//! `SAGA_TEST_NATS_STOP` and `SAGA_TEST_NATS_START` (shell commands that stop and start the
//! server). Without them the tests say they did not run.

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use saga_store::Database;
use serde_json::Value;
use sqlx::Row;

mod common;
use common::{
    Deployment, assert_consistent, notice, place, place_all, required, wait_until_settled,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_orders_survive_killed_kitchen_and_order_processes() {
    let Some(urls) = required(
        &["SAGA_TEST_POSTGRES_URL", "SAGA_TEST_NATS_URL"],
        "killed processes",
    ) else {
        return;
    };
    let deployment = Deployment::start(&urls[0], &urls[1]);
    let mut placed = place_all(&deployment.base, 0..150).await;
    // Mid-run: one Kitchen instance and the Order service die without warning.
    deployment.kill("kitchen-1");
    deployment.kill("order");
    placed.extend(place_all(&deployment.base, 150..300).await);
    deployment.script(&["start-one", "order"]);
    placed.extend(place_all(&deployment.base, 300..500).await);
    let orders = deployment.schema("order").await;
    wait_until_settled(&orders, 500, Duration::from_secs(180)).await;
    orders.close().await;
    assert_consistent(&deployment, &placed).await;
    let approved = placed.iter().filter(|(_, s)| *s == "APPROVED").count();
    assert_eq!(approved, 300);
    deployment.script(&["stop"]);
    deployment.remove_data().await;
}

/// Restarts NATS when dropped, so a failing test never leaves it stopped.
struct NatsGuard(String);

impl Drop for NatsGuard {
    fn drop(&mut self) {
        let _ = Command::new("bash").args(["-c", &self.0]).status();
    }
}

/// Polls `/health/ready` until it says `ready` (within 20 s); returns its body.
async fn wait_for_readiness(base: &str, ready: bool) -> Value {
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("an HTTP client");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(response) = client.get(format!("{base}/health/ready")).send().await {
            let status = response.status();
            let body: Value = response.json().await.unwrap_or_default();
            if status.is_success() == ready && body["ready"] == ready {
                return body;
            }
            assert!(
                Instant::now() < deadline,
                "readiness never became {ready}: {status} {body:#}"
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn nats_up(url: &str) -> bool {
    let address = url.trim_start_matches("nats://");
    std::net::TcpStream::connect(address).is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ten_second_nats_outage_loses_nothing() {
    let Some(vars) = required(
        &[
            "SAGA_TEST_POSTGRES_URL",
            "SAGA_TEST_NATS_URL",
            "SAGA_TEST_NATS_STOP",
            "SAGA_TEST_NATS_START",
        ],
        "NATS outage",
    ) else {
        return;
    };
    let (database_url, nats_url, stop, start) = (&vars[0], &vars[1], &vars[2], &vars[3]);
    let deployment = Deployment::start(database_url, nats_url);
    let mut placed = place_all(&deployment.base, 0..100).await;

    let guard = NatsGuard(start.clone());
    let status = Command::new("bash")
        .args(["-c", stop])
        .status()
        .expect("stop runs");
    assert!(status.success(), "stopping NATS failed");
    let stopped = Instant::now();
    while nats_up(nats_url) {
        assert!(
            stopped.elapsed() < Duration::from_secs(10),
            "NATS did not stop"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The API and the Order service say they are not ready while NATS is down, and why.
    wait_for_readiness(&deployment.health, false).await;
    let readiness = wait_for_readiness(&deployment.base, false).await;
    let transport = readiness["checks"]
        .as_array()
        .and_then(|checks| checks.iter().find(|c| c["name"] == "transport"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(transport["ok"], false, "{readiness:#}");
    // Orders keep coming while NATS is down: they wait in the Order service's outbox.
    placed.extend(place_all(&deployment.base, 100..200).await);
    tokio::time::sleep(Duration::from_secs(10).saturating_sub(stopped.elapsed())).await;
    drop(guard);
    let restarted = Instant::now();
    while !nats_up(nats_url) {
        assert!(
            restarted.elapsed() < Duration::from_secs(20),
            "NATS did not come back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_for_readiness(&deployment.base, true).await;
    wait_for_readiness(&deployment.health, true).await;
    placed.extend(place_all(&deployment.base, 200..250).await);
    let orders = deployment.schema("order").await;
    wait_until_settled(&orders, 250, Duration::from_secs(180)).await;
    orders.close().await;
    assert_consistent(&deployment, &placed).await;
    deployment.script(&["stop"]);
    deployment.remove_data().await;
}

impl Deployment {
    /// Sends `signal` (`-STOP`, `-CONT`, …) to one process.
    fn signal(&self, name: &str, signal: &str) {
        let pid =
            std::fs::read_to_string(self.run_dir.join(format!("{name}.pid"))).expect("pid file");
        let status = Command::new("kill")
            .args([signal, pid.trim()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill {signal} {name}");
    }

    /// The NATS subject of a channel.
    fn subject(&self, channel: &str) -> String {
        format!("{}.{channel}", self.stream.to_lowercase())
    }
}

/// Makes every write of the Kitchen service's handlers fail with SQLSTATE 53100 (disk full)
/// until [`accept_kitchen_writes`].
async fn refuse_kitchen_writes(kitchen: &Database) {
    for sql in [
        "CREATE OR REPLACE FUNCTION soak_disk_full() RETURNS trigger AS $$ \
         BEGIN RAISE EXCEPTION 'could not extend file: No space left on device (injected)' \
         USING ERRCODE = '53100'; END $$ LANGUAGE plpgsql",
        "CREATE TRIGGER soak_disk_full BEFORE INSERT ON saga_received \
         FOR EACH STATEMENT EXECUTE FUNCTION soak_disk_full()",
    ] {
        sqlx::query(sql)
            .execute(kitchen.postgres_pool().expect("PostgreSQL"))
            .await
            .expect("installs the fault");
    }
}

async fn accept_kitchen_writes(kitchen: &Database) {
    sqlx::query("DROP TRIGGER soak_disk_full ON saga_received")
        .execute(kitchen.postgres_pool().expect("PostgreSQL"))
        .await
        .expect("removes the fault");
}

/// Publishes messages no service can use to the services' channels, behind the framework's
/// back: bad `reply-to`s, no message id, not JSON, a NUL byte, one just under the size limit.
async fn inject_poison(deployment: &Deployment) {
    let client = async_nats::connect(&deployment.nats_url)
        .await
        .expect("NATS connects");
    let js = async_nats::jetstream::new(client.clone());
    let limit = client.server_info().max_payload;
    let command = |reply_to: &str, payload: &str| {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(
            "Nats-Msg-Id",
            saga_core::MessageId::new().to_string().as_str(),
        );
        headers.insert("message-type", "CreateTicket");
        headers.insert("saga-id", saga_core::SagaId::new().to_string().as_str());
        headers.insert("request-id", "1");
        headers.insert("reply-to", reply_to);
        (headers, payload.to_owned())
    };
    let kitchen = deployment.subject("kitchenService");
    let consumer = deployment.subject("consumerService");
    let poison = [
        (kitchen.clone(), command("bad channel", "{}")),
        (kitchen.clone(), command("a..b", "{}")),
        (
            consumer.clone(),
            command("orderService.replies", "not json"),
        ),
        (
            consumer.clone(),
            command("orderService.replies", "{\"x\":\"\u{0}\"}"),
        ),
    ];
    for (subject, (headers, payload)) in poison {
        js.publish_with_headers(subject, headers, payload.into())
            .await
            .expect("sent")
            .await
            .expect("stored");
    }
    js.publish(kitchen.clone(), "no id".into())
        .await
        .expect("sent")
        .await
        .expect("stored");
    js.publish(kitchen, "p".repeat(limit - 20).into())
        .await
        .expect("sent")
        .await
        .expect("stored");
}

/// Places orders at about `per_second` until `stop` is set; returns what it placed.
async fn place_steadily(
    base: String,
    per_second: u64,
    stop: Arc<AtomicBool>,
) -> Vec<(i64, &'static str)> {
    let client = reqwest::Client::new();
    let mut placed = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(1000 / per_second));
    let mut i = 0;
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        placed.push(place(&client, &base, i).await);
        i += 1;
    }
    placed
}

/// The distributed FTGO under load while everything goes wrong at once — the Kitchen's
/// database refuses writes for 60 s, the Accounting service is frozen (SIGSTOP) for 20 s, a
/// random service is killed and restarted, poison is published to the channels — and once
/// the faults stop, every saga is terminal or parked with a reason, every order is settled,
/// and the counts add up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_saga_ends_whatever_breaks() {
    let Some(urls) = required(
        &["SAGA_TEST_POSTGRES_URL", "SAGA_TEST_NATS_URL"],
        "liveness soak",
    ) else {
        return;
    };
    let deployment = Deployment::start(&urls[0], &urls[1]);
    let stop = Arc::new(AtomicBool::new(false));
    let loader = tokio::spawn(place_steadily(deployment.base.clone(), 8, stop.clone()));
    tokio::time::sleep(Duration::from_secs(5)).await;

    let kitchen = deployment.schema("kitchen").await;
    refuse_kitchen_writes(&kitchen).await;
    notice("soak: the Kitchen's database refuses writes for 60 s");
    let outage = Instant::now();
    tokio::time::sleep(Duration::from_secs(5)).await;
    inject_poison(&deployment).await;
    notice("soak: poison published to the kitchen and consumer channels");
    tokio::time::sleep(Duration::from_secs(5)).await;
    deployment.signal("accounting", "-STOP");
    notice("soak: accounting frozen for 20 s");
    tokio::time::sleep(Duration::from_secs(20)).await;
    deployment.signal("accounting", "-CONT");
    let victims = ["order", "consumer", "kitchen-1", "kitchen-2", "accounting"];
    let victim = victims[usize::try_from(std::process::id()).unwrap_or(0) % victims.len()];
    deployment.kill(victim);
    notice(&format!(
        "soak: {victim} killed (SIGKILL); restarted in 5 s"
    ));
    tokio::time::sleep(Duration::from_secs(5)).await;
    deployment.script(&["start-one", victim]);
    tokio::time::sleep(Duration::from_secs(60).saturating_sub(outage.elapsed())).await;
    let orders = deployment.schema("order").await;
    let held_up: i64 =
        sqlx::query("SELECT COUNT(*) AS n FROM ftgo_orders WHERE state = 'APPROVAL_PENDING'")
            .fetch_one(orders.postgres_pool().expect("PostgreSQL"))
            .await
            .expect("counts")
            .try_get("n")
            .expect("n");
    assert!(held_up > 50, "the outage held sagas up ({held_up} waiting)");
    accept_kitchen_writes(&kitchen).await;
    notice("soak: the Kitchen's database accepts writes again");
    tokio::time::sleep(Duration::from_secs(10)).await;
    stop.store(true, Ordering::Relaxed);
    let placed = loader.await.expect("the load ran");
    notice(&format!(
        "soak: {} orders placed ({held_up} waited out the outage); waiting for every saga to end",
        placed.len()
    ));
    let deadline = Instant::now() + Duration::from_secs(240);
    let (statuses, unexplained) = loop {
        let rows = sqlx::query(
            "SELECT status, COUNT(*) AS n, COUNT(*) FILTER (WHERE status = 'failed' \
             AND (last_error IS NULL OR last_error = '')) AS unexplained \
             FROM saga_instances GROUP BY status",
        )
        .fetch_all(orders.postgres_pool().expect("PostgreSQL"))
        .await
        .expect("counts");
        let statuses: std::collections::BTreeMap<String, i64> = rows
            .iter()
            .map(|r| {
                (
                    r.try_get("status").expect("status"),
                    r.try_get("n").expect("n"),
                )
            })
            .collect();
        let unexplained: i64 = rows
            .iter()
            .map(|r| r.try_get::<i64, _>("unexplained").expect("n"))
            .sum();
        let moving = ["running", "compensating"]
            .iter()
            .filter_map(|s| statuses.get(*s))
            .sum::<i64>();
        if moving == 0 {
            break (statuses, unexplained);
        }
        assert!(
            Instant::now() < deadline,
            "sagas still moving after the faults stopped: {statuses:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    notice(&format!("soak: sagas {statuses:?}"));
    assert_eq!(unexplained, 0, "every parked saga has a reason");
    let total: i64 = statuses.values().sum();
    assert_eq!(
        total,
        i64::try_from(placed.len()).expect("fits"),
        "one saga per order"
    );
    let parked = statuses.get("failed").copied().unwrap_or(0);
    if parked == 0 {
        wait_until_settled(&orders, placed.len(), Duration::from_secs(30)).await;
        assert_consistent(&deployment, &placed).await;
    } else {
        notice(&format!("soak: {parked} sagas parked, with their reasons"));
    }
    orders.close().await;
    kitchen.close().await;
    deployment.script(&["stop"]);
    deployment.remove_data().await;
}
