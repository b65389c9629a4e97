//! Traces and metrics of FTGO distributed (five processes, PostgreSQL and NATS JetStream):
//! every process exports its spans over OTLP to a collector in this test, and one order's
//! spans must form one trace, one tree in causal order, with the messaging and saga
//! attributes; the processes' `/metrics` must add up to what the databases say happened.
//!
//! Needs `SAGA_TEST_POSTGRES_URL` and `SAGA_TEST_NATS_URL`; without them it says it did not
//! run. With `SAGA_UPDATE_DOCS=1` it also rewrites `docs/trace-waterfall.svg`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ftgo::observability::collector::{CollectedSpan, Collector, tree_problems};
use ftgo::observability::waterfall::waterfall_svg;
use serde_json::Value;
use sqlx::Row;

mod common;
use common::{Deployment, env, notice, order_for, place_all, required, wait_until_settled};

/// The five kinds of process (two Kitchen instances share a service name).
const SERVICES: [&str; 5] = [
    "ftgo-api",
    "ftgo-order",
    "ftgo-consumer",
    "ftgo-kitchen",
    "ftgo-accounting",
];

fn random_hex(len: usize) -> String {
    let mut hex = String::new();
    while hex.len() < len {
        hex.push_str(&uuid::Uuid::new_v4().simple().to_string());
    }
    hex.truncate(len);
    hex
}

/// Places order `i` with a `traceparent` whose parent is a (made-up) client span; returns
/// the trace id, that client span's id and the API's answer.
async fn place_traced(base: &str, i: usize) -> (String, String, Value) {
    let (trace_id, span_id) = (random_hex(32), random_hex(16));
    let (body, _) = order_for(i);
    let response = reqwest::Client::new()
        .post(format!("{base}/orders"))
        .header("traceparent", format!("00-{trace_id}-{span_id}-01"))
        .json(&body)
        .send()
        .await
        .expect("the API answers");
    assert_eq!(response.status(), reqwest::StatusCode::CREATED);
    (trace_id, span_id, response.json().await.expect("json"))
}

/// Waits until the collector holds spans of `trace_id` from every kind of process and they
/// stop coming; returns them.
async fn collected_trace(collector: &Collector, trace_id: &str) -> Vec<CollectedSpan> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = 0;
    loop {
        let spans = collector.trace(trace_id);
        let services: BTreeSet<&str> = spans.iter().map(|s| s.service.as_str()).collect();
        if SERVICES.iter().all(|s| services.contains(s)) && spans.len() == last {
            return spans;
        }
        last = spans.len();
        assert!(
            Instant::now() < deadline,
            "trace {trace_id}: spans from {services:?} only ({} spans)",
            spans.len()
        );
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
}

/// The spans form one tree under the client's span, opened by the API's `POST /orders`.
fn assert_one_tree(spans: &[CollectedSpan], client_span: &str) {
    let problems = tree_problems(spans, client_span);
    assert!(problems.is_empty(), "not one tree: {problems:#?}");
    let top = spans
        .iter()
        .find(|s| s.parent_span_id.as_deref() == Some(client_span))
        .expect("a top span");
    assert_eq!(
        (top.service.as_str(), top.kind, top.name.as_str()),
        ("ftgo-api", "server", "POST /orders")
    );
}

fn named<'a>(spans: &'a [CollectedSpan], name: &str) -> Vec<&'a CollectedSpan> {
    spans.iter().filter(|s| s.name == name).collect()
}

/// The spans carry the messaging and saga attributes.
fn assert_attributes(spans: &[CollectedSpan], saga_id: &str) {
    for (channel, service) in [
        ("consumerService", "ftgo-consumer"),
        ("kitchenService", "ftgo-kitchen"),
        ("accountingService", "ftgo-accounting"),
        ("orderService.sagaReplies", "ftgo-order"),
    ] {
        let process = named(spans, &format!("process {channel}"));
        assert!(!process.is_empty(), "no `process {channel}` span");
        for span in process {
            assert_eq!(span.service, service);
            assert_eq!(span.kind, "consumer");
            assert_eq!(span.attribute("messaging.system"), Some("nats"));
            assert_eq!(span.attribute("messaging.destination.name"), Some(channel));
            assert_eq!(
                span.attribute("messaging.message.conversation_id"),
                Some(saga_id)
            );
            assert_eq!(span.attribute("saga.id"), Some(saga_id));
            assert_eq!(span.attribute("saga.type"), Some("CreateOrderSaga"));
            assert!(
                span.attribute("messaging.message.id")
                    .is_some_and(|id| id.len() == 36)
            );
        }
    }
    let publish: Vec<&CollectedSpan> = spans.iter().filter(|s| s.kind == "producer").collect();
    assert!(!publish.is_empty(), "no publish span");
    for span in publish {
        assert!(span.name.starts_with("publish "), "{}", span.name);
        assert_eq!(span.attribute("messaging.system"), Some("nats"));
        assert_eq!(span.attribute("messaging.batch.message_count"), Some("1"));
    }
    // The API starts the saga, so it sends the first commands — the parallel group's two;
    // the Order service's orchestrator sends the rest.
    for (step, service) in [
        ("verify_consumer", "ftgo-api"),
        ("create_ticket", "ftgo-api"),
        ("authorize_card", "ftgo-order"),
    ] {
        let sent = named(spans, step);
        assert_eq!(sent.len(), 1, "one `{step}` span");
        assert_eq!(sent[0].service, service);
        assert_eq!(sent[0].attribute("saga.step"), Some(step));
        assert_eq!(sent[0].attribute("saga.direction"), Some("forward"));
        assert_eq!(sent[0].attribute("saga.id"), Some(saga_id));
    }
}

/// One process's metrics, parsed.
async fn scrape(address: &str) -> prometheus_parse::Scrape {
    let body = reqwest::get(format!("{address}/metrics"))
        .await
        .expect("metrics answer")
        .text()
        .await
        .expect("text");
    prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_owned())))
        .expect("Prometheus text")
}

/// The sum over `scrapes` of the samples of `name` whose labels include `labels`.
fn total(scrapes: &[prometheus_parse::Scrape], name: &str, labels: &[(&str, &str)]) -> f64 {
    scrapes
        .iter()
        .flat_map(|s| &s.samples)
        .filter(|s| s.metric == name)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            prometheus_parse::Value::Histogram(ref buckets) => {
                buckets.last().map_or(0.0, |b| b.count)
            }
            prometheus_parse::Value::Summary(_) => 0.0,
        })
        .sum()
}

/// Sagas by status in the Order service's database.
async fn stored_statuses(deployment: &Deployment) -> BTreeMap<String, f64> {
    let orders = deployment.schema("order").await;
    let rows = sqlx::query(
        "SELECT status, COUNT(*) AS n FROM saga_instances \
         WHERE saga_type = 'CreateOrderSaga' GROUP BY status",
    )
    .fetch_all(orders.postgres_pool().expect("PostgreSQL"))
    .await
    .expect("counts");
    orders.close().await;
    rows.iter()
        .map(|r| {
            let n: i64 = r.try_get("n").expect("n");
            (r.try_get("status").expect("status"), n as f64)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_per_saga_across_five_processes_and_metrics_that_add_up() {
    let Some(urls) = required(
        &["SAGA_TEST_POSTGRES_URL", "SAGA_TEST_NATS_URL"],
        "traces and metrics",
    ) else {
        return;
    };
    let collector = Collector::start(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .expect("a collector");
    let deployment = Deployment::start_with(
        &urls[0],
        &urls[1],
        vec![
            ("OTEL_EXPORTER_OTLP_ENDPOINT", collector.endpoint()),
            ("OTEL_BSP_SCHEDULE_DELAY", "200".to_owned()),
        ],
    );
    // One approved and one compensated order, traced from the client; then a demo-sized run.
    let (approved_trace, approved_client, approved) = place_traced(&deployment.base, 0).await;
    let orders = deployment.schema("order").await;
    wait_until_settled(&orders, 1, Duration::from_secs(60)).await;
    let (declined_trace, declined_client, declined) = place_traced(&deployment.base, 8).await;
    wait_until_settled(&orders, 2, Duration::from_secs(60)).await;
    place_all(&deployment.base, 2..40).await;
    wait_until_settled(&orders, 40, Duration::from_secs(120)).await;
    orders.close().await;

    let spans = collected_trace(&collector, &approved_trace).await;
    assert_one_tree(&spans, &approved_client);
    let saga_id = approved["saga_id"].as_str().expect("saga id");
    assert_attributes(&spans, saga_id);
    assert!(
        spans.iter().all(|s| !s.name.starts_with("compensate ")),
        "an approved order compensates nothing"
    );
    let compensated = collected_trace(&collector, &declined_trace).await;
    assert_one_tree(&compensated, &declined_client);
    let undone: BTreeSet<&str> = compensated
        .iter()
        .filter(|s| s.name.starts_with("compensate "))
        .map(|s| s.name.as_str())
        .collect();
    assert_eq!(
        undone,
        BTreeSet::from(["compensate create_order", "compensate create_ticket"]),
        "the declined order's compensations"
    );
    for span in compensated
        .iter()
        .filter(|s| s.name.starts_with("compensate "))
    {
        assert_eq!(span.attribute("saga.direction"), Some("compensation"));
        assert_eq!(span.attribute("saga.id"), declined["saga_id"].as_str());
    }
    let svg = waterfall_svg(
        "CreateOrderSaga, card declined: one trace, five processes",
        &compensated,
    );
    let target = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("trace-waterfall.svg");
    std::fs::write(&target, &svg).expect("writes the waterfall");
    if env("SAGA_UPDATE_DOCS").as_deref() == Some("1") {
        let docs = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../docs/trace-waterfall.svg"
        );
        std::fs::write(docs, &svg).expect("writes docs/trace-waterfall.svg");
    }
    notice(&format!(
        "{} + {} spans in the two traces; waterfall at {}",
        spans.len(),
        compensated.len(),
        target.display()
    ));

    // Metrics: the API starts sagas, the Order service finishes them.
    let api = scrape(&deployment.base).await;
    let mut processes = Vec::new();
    for i in 0..5 {
        let address = format!("http://127.0.0.1:{}", deployment.health_base + i);
        processes.push(scrape(&address).await);
    }
    let both = [api, processes[0].clone()];
    let saga = ("saga_type", "CreateOrderSaga");
    let started = total(&both, "saga_started_total", &[saga]);
    let finished = |outcome| total(&both, "saga_finished_total", &[saga, ("outcome", outcome)]);
    let stored = stored_statuses(&deployment).await;
    let stored_count = |status: &str| stored.get(status).copied().unwrap_or(0.0);
    assert_eq!(started, 40.0, "sagas started");
    assert_eq!(finished("completed"), stored_count("completed"));
    assert_eq!(finished("compensated"), stored_count("compensated"));
    assert_eq!(finished("failed"), stored_count("failed"));
    let running = stored_count("running") + stored_count("compensating");
    assert_eq!(
        started,
        finished("completed") + finished("compensated") + finished("failed") + running,
        "started = completed + compensated + failed + running"
    );
    let approved_orders = [0, 8]
        .into_iter()
        .chain(2..40)
        .filter(|&i| order_for(i).1 == "APPROVED")
        .count();
    assert_eq!(finished("completed"), approved_orders as f64);
    let durations = total(&both, "saga_duration_seconds", &[saga]);
    assert_eq!(durations, started, "a duration per finished saga");
    let steps = total(
        &both,
        "saga_step_duration_seconds",
        &[saga, ("step", "authorize_card"), ("direction", "forward")],
    );
    assert!(steps >= 30.0, "authorize_card timed {steps} times");
    // Every participant handled its commands; refusals and duplicates are counted apart.
    let handled = |outcome| {
        total(
            &processes,
            "saga_messages_handled_total",
            &[("outcome", outcome)],
        )
    };
    assert!(handled("ok") >= 40.0 * 3.0, "ok: {}", handled("ok"));
    assert!(handled("refused") >= 4.0, "refused: {}", handled("refused"));
    let consumer_ok = total(
        &processes[1..2],
        "saga_messages_handled_total",
        &[("channel", "consumerService"), ("outcome", "ok")],
    );
    assert!(consumer_ok >= 36.0, "consumerService ok: {consumer_ok}");
    let waited = total(
        &processes,
        "saga_message_wait_seconds",
        &[("channel", "kitchenService")],
    );
    assert!(waited >= 40.0, "kitchenService waits timed: {waited}");
    assert!(
        total(
            &processes,
            "saga_relay_published_total",
            &[("system", "nats")]
        ) >= 100.0
    );
    assert!(total(&processes, "saga_group_commit_seconds", &[]) > 0.0);
    assert!(total(&processes, "saga_group_commit_batch_size", &[]) > 0.0);
    // The gauges are sampled every 10 s: wait for a sample taken after the sagas started.
    let order_health = format!("http://127.0.0.1:{}", deployment.health_base);
    let deadline = Instant::now() + Duration::from_secs(30);
    let sampled = loop {
        let scraped = scrape(&order_health).await;
        let stored_completed = stored_count("completed");
        let gauge = total(
            std::slice::from_ref(&scraped),
            "saga_instances",
            &[saga, ("status", "completed")],
        );
        if gauge == stored_completed {
            break scraped;
        }
        assert!(
            Instant::now() < deadline,
            "saga_instances{{status=completed}} is {gauge}, the database has {stored_completed}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    let gauges: BTreeSet<&str> = sampled
        .samples
        .iter()
        .map(|s| s.metric.as_str())
        .filter(|m| !m.ends_with("_total"))
        .collect();
    for gauge in [
        "saga_instances",
        "saga_outbox_backlog",
        "saga_outbox_oldest_age_seconds",
        "saga_dead_letters_unresolved",
    ] {
        assert!(
            gauges.contains(gauge),
            "the Order service has no {gauge}: {gauges:?}"
        );
    }
    // No saga or message ids in labels: the label values stay few.
    for scrape in std::iter::once(&both[0]).chain(&processes) {
        for sample in &scrape.samples {
            for (name, value) in sample.labels.iter() {
                assert!(
                    uuid::Uuid::parse_str(value).is_err(),
                    "{} has an id in its label {name}",
                    sample.metric
                );
            }
        }
    }
    deployment.script(&["stop"]);
    deployment.remove_data().await;
}
