//! What the distributed tests share: a deployment started by `run-distributed.sh` (every
//! FTGO service its own process, on PostgreSQL and NATS JetStream), and orders placed
//! through its API.

// Each test binary uses only part of it.
#![allow(dead_code)]

use std::io::Write as _;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use saga_store::nats::{NatsOptions, NatsTransport};
use saga_store::{Database, DatabaseOptions};
use serde_json::{Value, json};
use sqlx::{AssertSqlSafe, Row};

pub(crate) const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/run-distributed.sh");

pub(crate) fn notice(text: &str) {
    let _ = writeln!(std::io::stderr(), "{text}");
}

pub(crate) fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

pub(crate) fn required(names: &[&str], test: &str) -> Option<Vec<String>> {
    let values: Vec<Option<String>> = names.iter().map(|n| env(n)).collect();
    if values.iter().all(Option::is_some) {
        return Some(values.into_iter().flatten().collect());
    }
    let missing: Vec<&str> = names
        .iter()
        .zip(&values)
        .filter(|(_, v)| v.is_none())
        .map(|(n, _)| *n)
        .collect();
    assert!(
        env("SAGA_REQUIRE_DISTRIBUTED").as_deref() != Some("1"),
        "SAGA_REQUIRE_DISTRIBUTED=1 but {missing:?} not set"
    );
    notice(&format!(
        "distributed test `{test}` did not run: set {}",
        missing.join(", ")
    ));
    None
}

/// A running deployment; stopped (and its schemas and streams removed) on drop.
pub(crate) struct Deployment {
    pub(crate) run_dir: PathBuf,
    pub(crate) vars: Vec<(&'static str, String)>,
    pub(crate) base: String,
    /// The Order service process's health endpoints.
    pub(crate) health: String,
    /// The first service process's health port; process `i` of run-distributed.sh's list
    /// (order, consumer, kitchen-1, kitchen-2, accounting) listens on this plus `i`.
    pub(crate) health_base: u16,
    pub(crate) database_url: String,
    pub(crate) prefix: String,
    pub(crate) nats_url: String,
    pub(crate) stream: String,
}

/// The first of `n` consecutive free ports, below the range the system hands out for
/// outgoing connections: the processes bind them only later, and a port from that range
/// could meanwhile be taken by any connection (another test's to PostgreSQL, say) — which
/// made a service fail with "address already in use".
pub(crate) fn free_ports(n: u16) -> u16 {
    let ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    // Spread the candidates over [ephemeral − 12,000, ephemeral − 100) from a per-call seed.
    static CALLS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut seed = u64::from(std::process::id()) << 16 | u64::from(call);
    let (low, span) = (ephemeral.saturating_sub(12_000).max(1_024), 11_900u64);
    for _ in 0..1_000 {
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        let first = low + u16::try_from((seed >> 33) % span).unwrap_or(0);
        let free = (0..n).all(|i| std::net::TcpListener::bind(("127.0.0.1", first + i)).is_ok());
        if first.checked_add(n).is_some_and(|end| end < ephemeral) && free {
            return first;
        }
    }
    panic!("no {n} consecutive free ports below {ephemeral}")
}

/// A free port for a process to bind later (see [`free_ports`]).
pub(crate) fn free_port() -> u16 {
    free_ports(1)
}

impl Deployment {
    pub(crate) fn start(database_url: &str, nats_url: &str) -> Self {
        Self::start_with(database_url, nats_url, Vec::new())
    }

    /// Starts a deployment whose processes also get the environment `extra`.
    pub(crate) fn start_with(
        database_url: &str,
        nats_url: &str,
        extra: Vec<(&'static str, String)>,
    ) -> Self {
        let deployment = Self::configure(database_url, nats_url, extra);
        deployment.script(&["start"]);
        deployment
    }

    /// A deployment with its names and ports chosen, not started yet (`script(&["start"])`).
    pub(crate) fn configure(
        database_url: &str,
        nats_url: &str,
        extra: Vec<(&'static str, String)>,
    ) -> Self {
        let unique = format!("{}_{}", std::process::id(), uuid::Uuid::now_v7().simple());
        let unique = &unique[..unique.len().min(30)];
        let prefix = format!("ftgo_dist_{unique}");
        let stream = format!("FTGO_DIST_{unique}").to_uppercase();
        let port = free_port();
        let health = free_ports(5);
        let run_dir = std::env::temp_dir().join(&prefix);
        std::fs::create_dir_all(&run_dir).expect("run dir");
        let mut vars = vec![
            ("DATABASE_URL", database_url.to_owned()),
            ("NATS_URL", nats_url.to_owned()),
            ("SCHEMA_PREFIX", prefix.clone()),
            ("NATS_STREAM", stream.clone()),
            ("LISTEN", format!("127.0.0.1:{port}")),
            ("RUN_DIR", run_dir.display().to_string()),
            ("FTGO_BIN", env!("CARGO_BIN_EXE_ftgo").to_owned()),
            ("RUST_LOG", "info".to_owned()),
            ("HEALTH_BASE_PORT", health.to_string()),
        ];
        vars.extend(extra);
        Self {
            health: format!("http://127.0.0.1:{health}"),
            health_base: health,
            run_dir,
            vars,
            base: format!("http://127.0.0.1:{port}"),
            database_url: database_url.to_owned(),
            prefix,
            nats_url: nats_url.to_owned(),
            stream,
        }
    }

    pub(crate) fn script(&self, args: &[&str]) {
        let output = Command::new("bash")
            .arg(SCRIPT)
            .args(args)
            .envs(self.vars.iter().map(|(k, v)| (*k, v.as_str())))
            .output()
            .expect("script runs");
        assert!(
            output.status.success(),
            "run-distributed.sh {args:?} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// SIGKILLs one process.
    pub(crate) fn kill(&self, name: &str) {
        let pid =
            std::fs::read_to_string(self.run_dir.join(format!("{name}.pid"))).expect("pid file");
        let status = Command::new("kill")
            .args(["-KILL", pid.trim()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -KILL {name}");
    }

    pub(crate) async fn schema(&self, service: &str) -> Database {
        let options = DatabaseOptions {
            schema: Some(format!("{}_{service}", self.prefix)),
            ..DatabaseOptions::default()
        };
        Database::connect_with(&self.database_url, options)
            .await
            .expect("opens")
    }

    /// Drops the schemas and the NATS streams.
    pub(crate) async fn remove_data(&self) {
        // A plain pool: `Database::connect` would put the saga tables in the default schema.
        let db = sqlx::PgPool::connect(&self.database_url)
            .await
            .expect("opens");
        for name in ["order", "consumer", "kitchen", "accounting", "messages"] {
            let drop = format!("DROP SCHEMA IF EXISTS \"{}_{name}\" CASCADE", self.prefix);
            let _ = sqlx::query(AssertSqlSafe(drop)).execute(&db).await;
        }
        db.close().await;
        let options = NatsOptions {
            stream: self.stream.clone(),
            subject_prefix: self.stream.to_lowercase(),
            connect_timeout: Duration::from_secs(5),
            ..NatsOptions::default()
        };
        if let Ok(nats) = NatsTransport::connect(&self.nats_url, options).await {
            let _ = nats.delete_streams().await;
        }
    }
}

impl Drop for Deployment {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(SCRIPT)
            .arg("stop")
            .envs(self.vars.iter().map(|(k, v)| (*k, v.as_str())))
            .output();
    }
}

/// The order for index `i`: six in ten approved, then one each of: blocked consumer, closed
/// restaurant, card limit, disabled card.
pub(crate) fn order_for(i: usize) -> (Value, &'static str) {
    let (consumer, restaurant, item, quantity, outcome) = match i % 10 {
        0..=5 => (
            1,
            1 + (i % 2) as i64,
            if i.is_multiple_of(2) {
                "samosa"
            } else {
                "margherita"
            },
            1,
            "APPROVED",
        ),
        6 => (666, 1, "samosa", 1, "REJECTED"),
        7 => (1, 13, "soup", 1, "REJECTED"),
        8 => (2, 1, "chicken-vindaloo", 4, "REJECTED"),
        _ => (3, 2, "margherita", 1, "REJECTED"),
    };
    (
        json!({
            "consumer_id": consumer,
            "restaurant_id": restaurant,
            "line_items": [{ "menu_item_id": item, "quantity": quantity }]
        }),
        outcome,
    )
}

pub(crate) async fn place(client: &reqwest::Client, base: &str, i: usize) -> (i64, &'static str) {
    let (body, outcome) = order_for(i);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match client
            .post(format!("{base}/orders"))
            .json(&body)
            .send()
            .await
        {
            Ok(response) if response.status() == reqwest::StatusCode::CREATED => {
                let placed: Value = response.json().await.expect("json");
                return (placed["order_id"].as_i64().expect("order id"), outcome);
            }
            other => {
                assert!(
                    Instant::now() < deadline,
                    "placing order {i} failed: {other:?}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Places orders `range` through the API, 8 at a time; returns `(order id, expected state)`.
pub(crate) async fn place_all(
    base: &str,
    range: std::ops::Range<usize>,
) -> Vec<(i64, &'static str)> {
    let client = reqwest::Client::new();
    let mut placed = Vec::new();
    let indexes: Vec<usize> = range.collect();
    for chunk in indexes.chunks(8) {
        let futures = chunk.iter().map(|&i| place(&client, base, i));
        placed.extend(futures_util::future::join_all(futures).await);
    }
    placed
}

/// Waits until no order is pending; panics with the counts after `timeout`.
pub(crate) async fn wait_until_settled(orders: &Database, expected: usize, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let rows = sqlx::query("SELECT state, COUNT(*) AS n FROM ftgo_orders GROUP BY state")
            .fetch_all(orders.postgres_pool().expect("PostgreSQL"))
            .await
            .expect("counts");
        let counts: Vec<(String, i64)> = rows
            .iter()
            .map(|r| {
                (
                    r.try_get("state").expect("state"),
                    r.try_get("n").expect("n"),
                )
            })
            .collect();
        let total: i64 = counts.iter().map(|(_, n)| n).sum();
        let pending = counts.iter().any(|(s, _)| s.ends_with("_PENDING"));
        if !pending && total == i64::try_from(expected).expect("fits") {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "orders not settled after {timeout:?}: {counts:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Every order in its expected state, and consistent across the services.
pub(crate) async fn assert_consistent(deployment: &Deployment, placed: &[(i64, &'static str)]) {
    let orders = deployment.schema("order").await;
    let kitchen = deployment.schema("kitchen").await;
    let accounting = deployment.schema("accounting").await;
    let states = |db: &Database, sql: &'static str| {
        let db = db.clone();
        async move {
            sqlx::query(sql)
                .fetch_all(db.postgres_pool().expect("PostgreSQL"))
                .await
                .expect("reads")
                .iter()
                .map(|r| {
                    (
                        r.try_get::<i64, _>(0).expect("id"),
                        r.try_get::<String, _>(1).expect("state"),
                    )
                })
                .collect::<std::collections::HashMap<i64, String>>()
        }
    };
    let order_states = states(&orders, "SELECT id, state FROM ftgo_orders").await;
    let tickets = states(&kitchen, "SELECT order_id, state FROM ftgo_tickets").await;
    let authorizations = states(
        &accounting,
        "SELECT order_id, state FROM ftgo_authorizations",
    )
    .await;
    assert_eq!(order_states.len(), placed.len());
    for (order_id, expected) in placed {
        let state = order_states.get(order_id).map(String::as_str);
        assert_eq!(state, Some(*expected), "order {order_id}");
        let ticket = tickets.get(order_id).map(String::as_str);
        let authorization = authorizations.get(order_id).map(String::as_str);
        match *expected {
            "APPROVED" => {
                assert_eq!(
                    ticket,
                    Some("AWAITING_ACCEPTANCE"),
                    "ticket of approved order {order_id}"
                );
                assert_eq!(
                    authorization,
                    Some("AUTHORIZED"),
                    "authorization of approved order {order_id}"
                );
            }
            _ => {
                assert!(
                    matches!(ticket, None | Some("CANCELLED")),
                    "rejected order {order_id} has ticket {ticket:?}"
                );
                assert_eq!(
                    authorization, None,
                    "rejected order {order_id} has an authorization"
                );
            }
        }
    }
    // One ticket and one authorization at most per order (the keys), none for unknown orders.
    assert!(tickets.keys().all(|id| order_states.contains_key(id)));
    assert!(
        authorizations
            .keys()
            .all(|id| order_states.contains_key(id))
    );
    for db in [orders, kitchen, accounting] {
        db.close().await;
    }
}
