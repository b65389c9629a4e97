//! Logs, traces and metrics for the `ftgo` binary.
//!
//! - **Logs** go to stderr as text or JSON ([`LogFormat`]), filtered by `RUST_LOG` (default
//!   `warn`).
//! - **Traces**, off by default: with an OTLP endpoint ([`Otlp`]) the spans saga and FTGO
//!   emit (at `info`, whatever `RUST_LOG` says) are exported over OTLP/HTTP (protobuf) by a
//!   `tracing-opentelemetry` layer. The SDK's `OTEL_*` variables apply, e.g. sampling with
//!   `OTEL_TRACES_SAMPLER=parentbased_traceidratio OTEL_TRACES_SAMPLER_ARG=0.1`. saga-core's `opentelemetry` feature joins them into one
//!   trace per saga across every process, through the W3C trace context in each message.
//! - **Metrics**: a Prometheus recorder for saga's `metrics` ([`install_metrics`]), rendered
//!   at `/metrics` ([`crate::health::router`]).
//!
//! [`collector`] is a small in-memory OTLP collector (for the tests and the benchmark) and
//! [`waterfall`] draws one trace as an SVG.

pub mod collector;
pub mod waterfall;

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider};
use tracing_subscriber::Layer as _;
use tracing_subscriber::filter::{EnvFilter, Targets};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, with the events' fields (`saga_id`, `saga_type`, …).
    Json,
}

/// Where to export traces.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Otlp {
    /// The collector's base URL (`http://127.0.0.1:4318`); spans go to `<endpoint>/v1/traces`.
    pub endpoint: String,
    /// The `service.name` of this process's spans.
    pub service_name: String,
}

/// Why telemetry could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TelemetryError {
    /// The OTLP exporter could not be built (a malformed endpoint, say).
    #[error("cannot export traces to {endpoint}: {source}")]
    Exporter {
        /// The endpoint as given.
        endpoint: String,
        /// The exporter's error.
        #[source]
        source: opentelemetry_otlp::ExporterBuildError,
    },
    /// A global subscriber or recorder was installed already.
    #[error("telemetry is set up already: {0}")]
    AlreadySet(String),
}

/// Installed telemetry; [`Telemetry::shutdown`] flushes the spans not yet exported.
#[derive(Debug)]
pub struct Telemetry {
    traces: Option<SdkTracerProvider>,
}

/// The targets whose spans are exported: saga's and FTGO's.
fn exported_spans() -> Targets {
    Targets::new()
        .with_target("saga_core", tracing::Level::INFO)
        .with_target("saga_store", tracing::Level::INFO)
        .with_target("ftgo", tracing::Level::INFO)
}

/// Installs the global subscriber: logs in `format`, and spans exported to `otlp` if given.
pub fn init(format: LogFormat, otlp: Option<&Otlp>) -> Result<Telemetry, TelemetryError> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    let logs = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let logs = match format {
        LogFormat::Text => logs.boxed(),
        LogFormat::Json => logs
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .boxed(),
    }
    .with_filter(filter);
    let traces = match otlp {
        Some(otlp) => Some(tracer_provider(otlp)?),
        None => None,
    };
    // Source locations, thread names and busy/idle times would add five attributes (and
    // their allocations) to every span: saga's own attributes say where a span comes from.
    let spans = traces.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("ftgo"))
            .with_location(false)
            .with_threads(false)
            .with_tracked_inactivity(false)
            .with_filter(exported_spans())
    });
    tracing_subscriber::registry()
        .with(logs)
        .with(spans)
        .try_init()
        .map_err(|err| TelemetryError::AlreadySet(err.to_string()))?;
    Ok(Telemetry { traces })
}

fn tracer_provider(otlp: &Otlp) -> Result<SdkTracerProvider, TelemetryError> {
    let endpoint = format!("{}/v1/traces", otlp.endpoint.trim_end_matches('/'));
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(endpoint)
        .with_timeout(Duration::from_secs(5))
        .build()
        .map_err(|source| TelemetryError::Exporter {
            endpoint: otlp.endpoint.clone(),
            source,
        })?;
    let resource = Resource::builder()
        .with_service_name(otlp.service_name.clone())
        .build();
    // A saga makes about 20 spans: the SDK's defaults (a queue of 2048, batches of 512) drop
    // spans at a few hundred sagas a second. The `OTEL_BSP_*` variables still win.
    let mut batches = BatchConfigBuilder::default();
    if std::env::var_os("OTEL_BSP_MAX_QUEUE_SIZE").is_none() {
        batches = batches.with_max_queue_size(32_768);
    }
    if std::env::var_os("OTEL_BSP_MAX_EXPORT_BATCH_SIZE").is_none() {
        batches = batches.with_max_export_batch_size(4096);
    }
    let processor = BatchSpanProcessor::builder(exporter)
        .with_batch_config(batches.build())
        .build();
    Ok(SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_resource(resource)
        .build())
}

impl Telemetry {
    /// Exports the spans buffered so far, now.
    pub fn flush(&self) {
        if let Some(provider) = &self.traces
            && let Err(err) = provider.force_flush()
        {
            tracing::warn!(error = %err, "could not flush the spans");
        }
    }

    /// Exports the spans still buffered and stops the exporter.
    pub fn shutdown(self) {
        if let Some(provider) = self.traces
            && let Err(err) = provider.shutdown()
        {
            tracing::warn!(error = %err, "could not flush the last spans");
        }
    }
}

/// Histogram buckets for durations, in seconds: 1 ms to 60 s.
const SECONDS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Histogram buckets for batch sizes.
const SIZES: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

static METRICS: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the Prometheus recorder (once per process) and returns its handle; `None` if
/// another recorder was installed first.
pub fn install_metrics() -> Option<PrometheusHandle> {
    METRICS
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), SECONDS)
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Suffix("_batch_size".to_owned()), SIZES)
                });
            let builder = match builder {
                Ok(builder) => builder,
                Err(err) => {
                    tracing::warn!(error = %err, "metrics are off");
                    return None;
                }
            };
            match builder.install_recorder() {
                Ok(handle) => {
                    let upkeep = handle.clone();
                    // Drains the histograms' buffers now and then (no HTTP listener does it).
                    std::thread::Builder::new()
                        .name("metrics-upkeep".to_owned())
                        .spawn(move || {
                            loop {
                                std::thread::sleep(Duration::from_secs(5));
                                upkeep.run_upkeep();
                            }
                        })
                        .ok()?;
                    Some(handle)
                }
                Err(err) => {
                    tracing::warn!(error = %err, "metrics are off");
                    None
                }
            }
        })
        .clone()
}

/// The installed recorder's handle, if [`install_metrics`] installed one.
pub fn metrics() -> Option<&'static PrometheusHandle> {
    METRICS.get().and_then(Option::as_ref)
}
