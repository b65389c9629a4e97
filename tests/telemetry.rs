//! Traces and metrics in one process, with no servers: FTGO embedded (SQLite, the SQL queue)
//! behind its HTTP API, with the `ftgo` binary's telemetry — spans exported over OTLP to an
//! in-process collector, a Prometheus recorder. An order placed with a `traceparent` is one
//! trace tree with the messaging and saga attributes, and the metrics count what happened.
//! (Across processes, over NATS: `examples/ftgo/tests/observability.rs`.)

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ftgo::app::{Ftgo, FtgoOptions, Storage};
use ftgo::observability::collector::{CollectedSpan, Collector, tree_problems};
use ftgo::observability::{self, LogFormat, Otlp};
use saga_tests::testdb::unique;
use serde_json::{Value, json};

/// Places an order with a `traceparent`; returns the trace id, the client span's id and the
/// API's answer.
async fn place(client: &reqwest::Client, base: &str, order: Value) -> (String, String, Value) {
    let trace_id = uuid::Uuid::new_v4().simple().to_string();
    let span_id = trace_id[..16].to_owned();
    let response = client
        .post(format!("{base}/orders"))
        .header("traceparent", format!("00-{trace_id}-{span_id}-01"))
        .json(&order)
        .send()
        .await
        .expect("the API answers");
    assert_eq!(response.status(), reqwest::StatusCode::CREATED);
    (trace_id, span_id, response.json().await.expect("json"))
}

/// Waits until the order is no longer pending; returns its state.
async fn settled(client: &reqwest::Client, base: &str, order_id: i64) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let order: Value = client
            .get(format!("{base}/orders/{order_id}"))
            .send()
            .await
            .expect("the API answers")
            .json()
            .await
            .expect("json");
        let state = order["state_name"].as_str().unwrap_or_default().to_owned();
        if !state.is_empty() && !state.ends_with("_PENDING") {
            return state;
        }
        assert!(Instant::now() < deadline, "order {order_id} still {state}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The spans of `trace_id`, once the last one (the Order service's `approve_order` or
/// `reject_order` reply being applied) has arrived.
async fn trace(
    collector: &Collector,
    telemetry: &observability::Telemetry,
    trace_id: &str,
    spans: usize,
) -> Vec<CollectedSpan> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        telemetry.flush();
        let collected = collector.trace(trace_id);
        if collected.len() >= spans {
            return collected;
        }
        assert!(
            Instant::now() < deadline,
            "trace {trace_id}: {} spans: {:#?}",
            collected.len(),
            collected.iter().map(|s| &s.name).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The value of the one sample of `name` with exactly these labels (0 when absent).
fn sample(metrics: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    let found: Vec<f64> = metrics
        .samples
        .iter()
        .filter(|s| s.metric == name && s.labels.len() == labels.len())
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match &s.value {
            prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Gauge(v) => *v,
            prometheus_parse::Value::Histogram(buckets) => buckets.last().map_or(0.0, |b| b.count),
            _ => f64::NAN,
        })
        .collect();
    assert!(found.len() <= 1, "{name} {labels:?}: {found:?}");
    found.first().copied().unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embedded_order_is_one_trace_and_the_metrics_count_it() {
    let collector = Collector::start(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .expect("a collector");
    let otlp = Otlp {
        endpoint: collector.endpoint(),
        service_name: "ftgo-embedded".to_owned(),
    };
    let telemetry = observability::init(LogFormat::Text, Some(&otlp)).expect("telemetry");
    let metrics = observability::install_metrics().expect("a Prometheus recorder");

    let dir = std::env::temp_dir().join(unique("ftgo_telemetry"));
    let mut options = FtgoOptions::new(Storage::Sqlite { dir: dir.clone() });
    options.runtime.poll_interval = Duration::from_millis(50);
    options.transport.poll_interval = Duration::from_millis(50);
    let ftgo = Arc::new(Ftgo::start(options).await.expect("FTGO starts"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a port");
    let base = format!("http://{}", listener.local_addr().expect("an address"));
    let server = tokio::spawn(ftgo::api::serve(
        listener,
        ftgo.clone(),
        std::future::pending(),
    ));
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("a client");

    let approved_order = json!({ "consumer_id": 1, "restaurant_id": 1,
        "line_items": [{ "menu_item_id": "samosa", "quantity": 1 }] });
    let (trace_id, client_span, placed) = place(&client, &base, approved_order).await;
    let order_id = placed["order_id"].as_i64().expect("an order id");
    assert_eq!(settled(&client, &base, order_id).await, "APPROVED");
    // Over the card limit: the saga compensates.
    let declined_order = json!({ "consumer_id": 2, "restaurant_id": 1,
        "line_items": [{ "menu_item_id": "chicken-vindaloo", "quantity": 4 }] });
    let (declined_trace, declined_client, declined) = place(&client, &base, declined_order).await;
    let declined_id = declined["order_id"].as_i64().expect("an order id");
    assert_eq!(settled(&client, &base, declined_id).await, "REJECTED");

    // POST, start, 6 steps sent and their commands processed and replied to.
    let spans = trace(&collector, &telemetry, &trace_id, 1 + 1 + 6 * 2).await;
    let problems = tree_problems(&spans, &client_span);
    assert!(problems.is_empty(), "not one tree: {problems:#?}");
    let saga_id = placed["saga_id"].as_str().expect("a saga id");
    let process: Vec<&CollectedSpan> = spans.iter().filter(|s| s.kind == "consumer").collect();
    assert!(process.len() >= 10, "{} process spans", process.len());
    for span in process {
        assert_eq!(span.attribute("messaging.system"), Some("saga_sql_queue"));
        assert_eq!(
            span.attribute("messaging.message.conversation_id"),
            Some(saga_id)
        );
        assert!(span.name.starts_with("process "), "{}", span.name);
    }
    let steps: Vec<&str> = spans
        .iter()
        .filter(|s| s.attribute("saga.direction") == Some("forward") && s.kind == "internal")
        .filter_map(|s| s.attribute("saga.step"))
        .collect();
    for step in [
        "verify_consumer",
        "create_ticket",
        "authorize_card",
        "approve_order",
    ] {
        assert!(steps.contains(&step), "no `{step}` span in {steps:?}");
    }
    let declined_spans = trace(&collector, &telemetry, &declined_trace, 1 + 1 + 5 * 2).await;
    let problems = tree_problems(&declined_spans, &declined_client);
    assert!(problems.is_empty(), "not one tree: {problems:#?}");
    assert!(
        declined_spans
            .iter()
            .any(|s| s.name == "compensate create_ticket"),
        "the declined order's ticket is compensated"
    );

    // A step retried on a timer joins the saga's trace too (through its stored context):
    // the unstaffed restaurant refuses to confirm the ticket until it is staffed.
    let night_order = json!({ "consumer_id": 1, "restaurant_id": 21,
        "line_items": [{ "menu_item_id": "night-burger", "quantity": 1 }] });
    let (night_trace, night_client, night) = place(&client, &base, night_order).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !collector
        .trace(&night_trace)
        .iter()
        .any(|s| s.name == "timer confirm_ticket")
    {
        assert!(
            Instant::now() < deadline,
            "confirm_ticket was never retried"
        );
        telemetry.flush();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ftgo.kitchen.set_staffed(21, true).await.expect("staffs"));
    let night_id = night["order_id"].as_i64().expect("an order id");
    assert_eq!(settled(&client, &base, night_id).await, "APPROVED");
    let night_spans = trace(&collector, &telemetry, &night_trace, 1 + 1 + 7 * 2).await;
    let problems = tree_problems(&night_spans, &night_client);
    assert!(problems.is_empty(), "not one tree: {problems:#?}");
    let retry = night_spans
        .iter()
        .find(|s| s.name == "timer confirm_ticket")
        .expect("the timer's span");
    assert_eq!(retry.attribute("saga.step"), Some("confirm_ticket"));
    let start = night_spans
        .iter()
        .find(|s| s.name == "start CreateOrderSaga")
        .expect("the start span");
    assert_eq!(
        retry.parent_span_id.as_deref(),
        Some(start.span_id.as_str()),
        "a timer's span is a child of the saga's stored context: its start"
    );

    // An order is settled once its last command ran; its saga finishes (and is counted) when
    // the orchestrator has taken that command's reply: wait for that too.
    let sagas: Vec<saga_core::SagaId> = [&placed, &declined, &night]
        .iter()
        .map(|order| {
            let id = order["saga_id"].as_str().expect("a saga id");
            id.parse().expect("a saga id")
        })
        .collect();
    ftgo.wait_for_sagas(&sagas, Duration::from_secs(60), |_, _| {})
        .await
        .expect("every saga finishes");
    let text = metrics.render();
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
        .expect("Prometheus text");
    let saga = ("saga_type", "CreateOrderSaga");
    assert_eq!(sample(&scrape, "saga_started_total", &[saga]), 3.0);
    for (outcome, count) in [("completed", 2.0), ("compensated", 1.0)] {
        let labels = [saga, ("outcome", outcome)];
        assert_eq!(sample(&scrape, "saga_finished_total", &labels), count);
        assert_eq!(sample(&scrape, "saga_duration_seconds", &labels), count);
    }
    let refused = [("channel", "accountingService"), ("outcome", "refused")];
    assert_eq!(
        sample(&scrape, "saga_messages_handled_total", &refused),
        1.0
    );
    let step = [
        saga,
        ("step", "create_ticket"),
        ("direction", "compensation"),
    ];
    assert_eq!(sample(&scrape, "saga_step_duration_seconds", &step), 1.0);

    server.abort();
    ftgo.shutdown().await;
    telemetry.shutdown();
    let _ = std::fs::remove_dir_all(dir);
}
