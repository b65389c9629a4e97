//! A minimal OTLP/HTTP trace collector that keeps the spans it receives in memory: for the
//! tests (one saga's trace across every process), the benchmark's overhead run, and the
//! waterfall picture in the docs ([`super::waterfall`]). Point a real deployment at a real
//! collector (the OpenTelemetry Collector, Jaeger, Tempo) instead.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use prost::Message as _;
use serde::Serialize;

/// The largest export request taken, in bytes.
const MAX_REQUEST_BYTES: usize = 16 * 1024 * 1024;

/// One span as the collector received it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CollectedSpan {
    /// The `service.name` of the process that sent it.
    pub service: String,
    /// 32 hex digits.
    pub trace_id: String,
    /// 16 hex digits.
    pub span_id: String,
    /// The parent's span id; `None` for a root span.
    pub parent_span_id: Option<String>,
    /// The span's name (`process order.replies`, `publish kitchen.commands`, …).
    pub name: String,
    /// `internal`, `server`, `client`, `producer` or `consumer`.
    pub kind: &'static str,
    /// Start and end, in nanoseconds since the epoch.
    pub start_unix_nanos: u64,
    /// End, in nanoseconds since the epoch.
    pub end_unix_nanos: u64,
    /// Its attributes, values as text.
    pub attributes: BTreeMap<String, String>,
    /// The spans it links to: `(trace id, span id)`.
    pub links: Vec<(String, String)>,
    /// Whether its status is an error.
    pub error: bool,
}

impl CollectedSpan {
    /// An attribute's value.
    pub fn attribute(&self, name: &str) -> Option<&str> {
        self.attributes.get(name).map(String::as_str)
    }
}

/// A running collector.
#[derive(Debug)]
pub struct Collector {
    address: SocketAddr,
    state: Arc<Received>,
    server: tokio::task::JoinHandle<()>,
}

/// What a collector received.
#[derive(Debug, Default)]
struct Received {
    /// Keep the spans (else only count the requests, as a sink).
    keep: bool,
    spans: Mutex<Vec<CollectedSpan>>,
    requests: std::sync::atomic::AtomicU64,
    bytes: std::sync::atomic::AtomicU64,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn text(value: Option<&AnyValue>) -> String {
    match value.and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn attributes(list: &[KeyValue]) -> BTreeMap<String, String> {
    list.iter()
        .map(|kv| (kv.key.clone(), text(kv.value.as_ref())))
        .collect()
}

fn kind_name(kind: i32) -> &'static str {
    match kind {
        2 => "server",
        3 => "client",
        4 => "producer",
        5 => "consumer",
        _ => "internal",
    }
}

/// The spans of one export request.
fn spans_of(request: ExportTraceServiceRequest) -> Vec<CollectedSpan> {
    let mut spans = Vec::new();
    for resource_spans in request.resource_spans {
        let resource = resource_spans
            .resource
            .map(|r| attributes(&r.attributes))
            .unwrap_or_default();
        let service = resource
            .get("service.name")
            .cloned()
            .unwrap_or_else(|| "unknown".to_owned());
        for scope in resource_spans.scope_spans {
            for span in scope.spans {
                spans.push(CollectedSpan {
                    service: service.clone(),
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: (!span.parent_span_id.is_empty())
                        .then(|| hex(&span.parent_span_id)),
                    name: span.name,
                    kind: kind_name(span.kind),
                    start_unix_nanos: span.start_time_unix_nano,
                    end_unix_nanos: span.end_time_unix_nano,
                    attributes: attributes(&span.attributes),
                    links: span
                        .links
                        .iter()
                        .map(|l| (hex(&l.trace_id), hex(&l.span_id)))
                        .collect(),
                    // Status code 2 is ERROR.
                    error: span.status.is_some_and(|s| s.code == 2),
                });
            }
        }
    }
    spans
}

async fn export(State(state): State<Arc<Received>>, body: Bytes) -> Response {
    use std::sync::atomic::Ordering::Relaxed;
    state.requests.fetch_add(1, Relaxed);
    state.bytes.fetch_add(body.len() as u64, Relaxed);
    let answer = || {
        let answer = ExportTraceServiceResponse::default().encode_to_vec();
        ([(header::CONTENT_TYPE, "application/x-protobuf")], answer).into_response()
    };
    if !state.keep {
        return answer();
    }
    match ExportTraceServiceRequest::decode(body) {
        Ok(request) => {
            let received = spans_of(request);
            state
                .spans
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .extend(received);
            answer()
        }
        Err(err) => (
            StatusCode::BAD_REQUEST,
            format!("not an OTLP trace export request: {err}"),
        )
            .into_response(),
    }
}

impl Collector {
    /// Starts a collector on `listen` (port 0 picks a free one); it takes OTLP/HTTP protobuf
    /// at `/v1/traces` and keeps the spans.
    pub async fn start(listen: SocketAddr) -> std::io::Result<Self> {
        Self::start_with(listen, true).await
    }

    /// Starts a sink: it takes export requests as a collector does, counts them and keeps
    /// nothing (for the benchmark, where a collector would run elsewhere).
    pub async fn start_discarding(listen: SocketAddr) -> std::io::Result<Self> {
        Self::start_with(listen, false).await
    }

    async fn start_with(listen: SocketAddr, keep: bool) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(listen).await?;
        let address = listener.local_addr()?;
        let state = Arc::new(Received {
            keep,
            ..Received::default()
        });
        let router = axum::Router::new()
            .route("/v1/traces", post(export))
            .layer(DefaultBodyLimit::max(MAX_REQUEST_BYTES))
            .with_state(state.clone());
        let server = tokio::spawn(async move {
            if let Err(err) = axum::serve(listener, router).await {
                tracing::warn!(error = %err, "the trace collector stopped");
            }
        });
        Ok(Self {
            address,
            state,
            server,
        })
    }

    /// How many export requests and bytes it received.
    pub fn received(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (
            self.state.requests.load(Relaxed),
            self.state.bytes.load(Relaxed),
        )
    }

    /// The base URL to give exporters (`--otlp-endpoint`).
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<CollectedSpan> {
        self.state
            .spans
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The spans of one trace received so far, in start order.
    pub fn trace(&self, trace_id: &str) -> Vec<CollectedSpan> {
        let mut spans: Vec<CollectedSpan> = self
            .spans()
            .into_iter()
            .filter(|s| s.trace_id == trace_id)
            .collect();
        spans.sort_by_key(|s| s.start_unix_nanos);
        spans
    }
}

/// What keeps `spans` (one trace) from being one tree in causal order under the span
/// `parent` (the caller's, outside the trace): a span with no parent or a parent not in the
/// trace, more or less than one child of `parent`, a child that starts before its parent.
/// Empty when they are one tree.
pub fn tree_problems(spans: &[CollectedSpan], parent: &str) -> Vec<String> {
    let by_id: BTreeMap<&str, &CollectedSpan> =
        spans.iter().map(|s| (s.span_id.as_str(), s)).collect();
    let mut problems = Vec::new();
    let tops: Vec<&str> = spans
        .iter()
        .filter(|s| s.parent_span_id.as_deref() == Some(parent))
        .map(|s| s.name.as_str())
        .collect();
    if tops.len() != 1 {
        problems.push(format!(
            "{} spans continue the caller's: {tops:?}",
            tops.len()
        ));
    }
    for span in spans {
        let label = format!("`{}` ({})", span.name, span.service);
        match span.parent_span_id.as_deref() {
            None => problems.push(format!("{label} is a root of its own")),
            Some(id) if id == parent => {}
            Some(id) => match by_id.get(id) {
                None => problems.push(format!("{label}: its parent is not in the trace")),
                // One machine, one clock: a child starts after its parent (1 ms slack).
                Some(up) if span.start_unix_nanos + 1_000_000 < up.start_unix_nanos => {
                    problems.push(format!("{label} starts before its parent `{}`", up.name));
                }
                Some(_) => {}
            },
        }
    }
    problems
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.server.abort();
    }
}
