//! Trace context: one W3C trace per saga, across every service it crosses.
//!
//! Every message carries the `traceparent` (and `tracestate`) of the span that produced it;
//! a saga stores the context it started in ([`SagaRecord::trace`](crate::ports::SagaRecord)),
//! so the steps it runs after a restart, a timer or an operator action join the same trace.
//!
//! saga emits its spans with `tracing`, named and attributed after OpenTelemetry's messaging
//! conventions (`publish <channel>`, `process <channel>`, one span per step and compensation;
//! the [`attributes`] below). With the `opentelemetry` feature those spans are parented on the
//! incoming trace context through `tracing-opentelemetry`, and the context of the current
//! span goes out with every message. Without the feature saga passes the context it received
//! on unchanged, so a service without OpenTelemetry does not break a trace.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::message::{Headers, headers};

/// Span attribute names saga uses (OpenTelemetry's messaging conventions, and saga's own).
pub mod attributes {
    /// `nats`, or the SQL queue's name.
    pub const MESSAGING_SYSTEM: &str = "messaging.system";
    /// The channel.
    pub const DESTINATION: &str = "messaging.destination.name";
    /// The message id.
    pub const MESSAGE_ID: &str = "messaging.message.id";
    /// The saga id: every message of one saga shares it.
    pub const CONVERSATION_ID: &str = "messaging.message.conversation_id";
    /// How many messages one publish or process span covers.
    pub const BATCH_COUNT: &str = "messaging.batch.message_count";
    /// Why a span failed, as a short class (`refused`, `transient`, `dead_letter`, …).
    pub const ERROR_TYPE: &str = "error.type";
    /// The saga type.
    pub const SAGA_TYPE: &str = "saga.type";
    /// The saga id.
    pub const SAGA_ID: &str = "saga.id";
    /// The step, by name.
    pub const SAGA_STEP: &str = "saga.step";
    /// `forward`, or `compensation` while undoing steps.
    pub const SAGA_DIRECTION: &str = "saga.direction";
    /// What a span came to: a reply's outcome, or the saga's status after an event.
    pub const SAGA_OUTCOME: &str = "saga.outcome";
}

/// The longest `tracestate` value kept, in bytes (W3C allows 512).
const MAX_TRACESTATE_LEN: usize = 512;

/// A W3C trace context: the `traceparent` and optional `tracestate` header values.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceContext {
    traceparent: String,
    tracestate: Option<String>,
}

impl fmt::Debug for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.traceparent)
    }
}

/// Why a `traceparent` value was not used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid traceparent {value:?}: {reason}")]
pub struct InvalidTraceContext {
    /// The value as given.
    pub value: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

fn is_lower_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

impl TraceContext {
    /// Checks and keeps a `traceparent` (`00-<32 hex trace id>-<16 hex span id>-<2 hex
    /// flags>`) and its `tracestate`. An all-zero trace or span id is invalid, as W3C says.
    pub fn parse(traceparent: &str, tracestate: Option<&str>) -> Result<Self, InvalidTraceContext> {
        let invalid = |reason| {
            Err(InvalidTraceContext {
                value: traceparent.chars().take(80).collect(),
                reason,
            })
        };
        let parts: Vec<&str> = traceparent.trim().split('-').collect();
        let [version, trace_id, span_id, flags] = parts.as_slice() else {
            return invalid("expected four `-`-separated fields");
        };
        if !is_lower_hex(version, 2) || *version == "ff" {
            return invalid("the version is not two lower-case hex digits");
        }
        if !is_lower_hex(trace_id, 32) || trace_id.bytes().all(|b| b == b'0') {
            return invalid("the trace id is not 32 lower-case hex digits, not all zero");
        }
        if !is_lower_hex(span_id, 16) || span_id.bytes().all(|b| b == b'0') {
            return invalid("the parent id is not 16 lower-case hex digits, not all zero");
        }
        if !is_lower_hex(flags, 2) {
            return invalid("the flags are not two lower-case hex digits");
        }
        let tracestate = tracestate
            .map(str::trim)
            .filter(|s| !s.is_empty() && s.len() <= MAX_TRACESTATE_LEN && s.is_ascii())
            .map(str::to_owned);
        Ok(Self {
            traceparent: format!("{version}-{trace_id}-{span_id}-{flags}"),
            tracestate,
        })
    }

    /// The context a message carries, if it carries a valid one (an invalid one is ignored,
    /// as W3C asks, and logged at debug level).
    pub fn from_headers(headers: &Headers) -> Option<Self> {
        let traceparent = headers.get(headers::TRACEPARENT)?;
        match Self::parse(traceparent, headers.get(headers::TRACESTATE)) {
            Ok(context) => Some(context),
            Err(err) => {
                tracing::debug!(error = %err, "ignoring the message's trace context");
                None
            }
        }
    }

    /// Writes this context into `headers`.
    pub fn write_to(&self, headers: &mut Headers) {
        headers.insert(headers::TRACEPARENT, self.traceparent.clone());
        if let Some(state) = &self.tracestate {
            headers.insert(headers::TRACESTATE, state.clone());
        }
    }

    /// The `traceparent` value.
    pub fn traceparent(&self) -> &str {
        &self.traceparent
    }

    /// The `tracestate` value, if any.
    pub fn tracestate(&self) -> Option<&str> {
        self.tracestate.as_deref()
    }

    /// The trace id (32 hex digits).
    pub fn trace_id(&self) -> &str {
        self.traceparent.get(3..35).unwrap_or_default()
    }

    /// The parent span id (16 hex digits).
    pub fn span_id(&self) -> &str {
        self.traceparent.get(36..52).unwrap_or_default()
    }

    /// The trace flags (bit 0: sampled).
    pub fn flags(&self) -> u8 {
        self.traceparent
            .get(53..55)
            .and_then(|f| u8::from_str_radix(f, 16).ok())
            .unwrap_or_default()
    }
}

/// The trace context of the current span, if spans are exported (the `opentelemetry`
/// feature, with a `tracing-opentelemetry` layer installed) and it belongs to a trace.
pub fn current() -> Option<TraceContext> {
    otel::current()
}

/// The context to send with a message produced now: the current span's, or — when spans are
/// not exported — `received`, the context this work arrived with, passed on unchanged.
pub fn outgoing(received: Option<&TraceContext>) -> Option<TraceContext> {
    current().or_else(|| received.cloned())
}

/// Makes `span` — not yet entered — a child of `parent`, a context that came from
/// elsewhere (a message, a stored saga). Does nothing without the `opentelemetry` feature.
pub fn set_parent(span: &tracing::Span, parent: &TraceContext) {
    otel::set_parent(span, parent);
}

/// Links `span` to `other`: for work caused by several messages at once (a batch), or by a
/// saga whose trace is not the span's parent.
pub fn add_link(span: &tracing::Span, other: &TraceContext) {
    otel::add_link(span, other);
}

/// The span a consumer handles one message in: `process <channel>` (kind `consumer`),
/// parented on the message's trace context, or on `fallback` (the saga's stored context)
/// when the message has none.
pub fn process_span(
    system: &str,
    message: &crate::Message,
    fallback: Option<&TraceContext>,
) -> tracing::Span {
    let h = &message.headers;
    let span = tracing::info_span!(
        "process",
        otel.name = format!("process {}", message.destination),
        otel.kind = "consumer",
        otel.status_code = tracing::field::Empty,
        messaging.system = system,
        messaging.operation.type = "process",
        messaging.destination.name = %message.destination,
        messaging.message.id = %message.id,
        messaging.message.conversation_id = h.get(headers::SAGA_ID).unwrap_or_default(),
        saga.id = h.get(headers::SAGA_ID).unwrap_or_default(),
        saga.type = h.get(headers::SAGA_TYPE).unwrap_or_default(),
        saga.step = h.get(headers::SAGA_STEP).unwrap_or_default(),
        saga.direction = tracing::field::Empty,
        saga.outcome = tracing::field::Empty,
        error.type = tracing::field::Empty,
    );
    if let Some(parent) = TraceContext::from_headers(h).as_ref().or(fallback) {
        set_parent(&span, parent);
    }
    span
}

/// How many messages of a batch a `publish` span links to, at most.
const MAX_LINKS: usize = 32;

/// The span a batch of messages is published in: `publish <channel>` (kind `producer`). For
/// one message it is a child of the message's trace context; for a batch it links to each
/// message's context (up to 32), as OpenTelemetry's conventions say for batches.
pub fn publish_span(system: &str, messages: &[crate::Message]) -> tracing::Span {
    let destination = match messages.split_first() {
        Some((first, rest)) if rest.iter().all(|m| m.destination == first.destination) => {
            first.destination.as_str()
        }
        _ => "",
    };
    let name = match destination {
        "" => "publish".to_owned(),
        channel => format!("publish {channel}"),
    };
    let span = tracing::info_span!(
        "publish",
        otel.name = name,
        otel.kind = "producer",
        otel.status_code = tracing::field::Empty,
        messaging.system = system,
        messaging.operation.type = "send",
        messaging.destination.name = destination,
        messaging.batch.message_count = messages.len(),
        messaging.message.id = tracing::field::Empty,
        messaging.message.conversation_id = tracing::field::Empty,
        error.type = tracing::field::Empty,
    );
    match messages {
        [one] => {
            span.record(attributes::MESSAGE_ID, one.id.to_string());
            if let Some(saga_id) = one.headers.get(headers::SAGA_ID) {
                span.record(attributes::CONVERSATION_ID, saga_id);
            }
            if let Some(parent) = TraceContext::from_headers(&one.headers) {
                set_parent(&span, &parent);
            }
        }
        many => {
            for context in many
                .iter()
                .filter_map(|m| TraceContext::from_headers(&m.headers))
                .take(MAX_LINKS)
            {
                add_link(&span, &context);
            }
        }
    }
    span
}

/// Records on a participant's `process` span what handling the command came to (an outcome
/// of [`Dispatch::outcome`](crate::participant::Dispatch::outcome)): `saga.outcome` is
/// `success` or `failure` (a refusal, also `error.type` `refused`); anything else is an
/// error of that type.
pub fn record_handled(span: &tracing::Span, outcome: &str) {
    match outcome {
        "ok" => {
            span.record(attributes::SAGA_OUTCOME, "success");
        }
        "refused" => {
            span.record(attributes::SAGA_OUTCOME, "failure");
            span.record(attributes::ERROR_TYPE, "refused");
        }
        other => record_error(span, other),
    }
}

/// Records on `span` that its work failed, with a short class of why (`error.type`).
pub fn record_error(span: &tracing::Span, error_type: &str) {
    span.record(attributes::ERROR_TYPE, error_type);
    span.record("otel.status_code", "ERROR");
}

#[cfg(feature = "opentelemetry")]
mod otel {
    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState,
    };
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    use super::TraceContext;

    pub(super) fn current() -> Option<TraceContext> {
        let context = tracing::Span::current().context();
        let span = context.span();
        let sc = span.span_context();
        if !sc.is_valid() {
            return None;
        }
        let traceparent = format!(
            "00-{}-{}-{:02x}",
            sc.trace_id(),
            sc.span_id(),
            sc.trace_flags().to_u8()
        );
        let state = sc.trace_state().header();
        TraceContext::parse(&traceparent, Some(&state)).ok()
    }

    fn span_context(context: &TraceContext) -> Option<SpanContext> {
        let trace_id = TraceId::from_hex(context.trace_id()).ok()?;
        let span_id = SpanId::from_hex(context.span_id()).ok()?;
        let state = context
            .tracestate()
            .and_then(|s| s.parse::<TraceState>().ok())
            .unwrap_or_default();
        Some(SpanContext::new(
            trace_id,
            span_id,
            TraceFlags::new(context.flags()),
            true,
            state,
        ))
    }

    pub(super) fn set_parent(span: &tracing::Span, parent: &TraceContext) {
        let Some(sc) = span_context(parent) else {
            return;
        };
        let cx = opentelemetry::Context::new().with_remote_span_context(sc);
        if let Err(err) = span.set_parent(cx) {
            tracing::trace!(error = %err, "span parent not set");
        }
    }

    pub(super) fn add_link(span: &tracing::Span, other: &TraceContext) {
        if let Some(sc) = span_context(other) {
            span.add_link(sc);
        }
    }
}

#[cfg(not(feature = "opentelemetry"))]
mod otel {
    use super::TraceContext;

    pub(super) fn current() -> Option<TraceContext> {
        None
    }

    pub(super) fn set_parent(_span: &tracing::Span, _parent: &TraceContext) {}

    pub(super) fn add_link(_span: &tracing::Span, _other: &TraceContext) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_traceparent_is_kept_and_read_back() {
        let context = TraceContext::parse(VALID, Some("vendor=abc")).expect("valid");
        assert_eq!(context.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(context.span_id(), "00f067aa0ba902b7");
        assert_eq!(context.flags(), 1);
        let mut headers = Headers::new();
        context.write_to(&mut headers);
        assert_eq!(TraceContext::from_headers(&headers), Some(context));
    }

    #[test]
    fn malformed_traceparents_are_refused_with_the_reason() {
        for (value, reason) in [
            ("", "expected four"),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
                "expected four",
            ),
            (
                "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                "version",
            ),
            (
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
                "trace id",
            ),
            (
                "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
                "trace id",
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
                "parent id",
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
                "flags",
            ),
        ] {
            let err = TraceContext::parse(value, None).expect_err(value);
            assert!(err.reason.contains(reason), "{value}: {err}");
        }
        let headers = Headers::new().with(headers::TRACEPARENT, "garbage");
        assert_eq!(TraceContext::from_headers(&headers), None);
    }

    #[test]
    fn without_exported_spans_the_received_context_is_passed_on() {
        let received = TraceContext::parse(VALID, None).expect("valid");
        assert_eq!(outgoing(Some(&received)), Some(received));
        assert_eq!(outgoing(None), None);
    }
}
