//! Health and metrics endpoints, on the API and on every `ftgo service … --listen` process:
//!
//! - `GET /health/live`: the process answers (`200 {"status":"live"}`);
//! - `GET /health/ready`: every database and the transport answer, and the saga workers run
//!   (`200`, or `503` while something does not), with each check and its error:
//!   `{"ready":false,"checks":[{"name":"transport","ok":false,"error":"the NATS connection is disconnected"}, …]}`;
//! - `GET /metrics`: saga's metrics in Prometheus text format (`404` where no recorder was
//!   installed, see [`crate::observability::install_metrics`]).

use std::sync::Arc;

use async_trait::async_trait;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use saga_core::ports::Transport;
use saga_store::{Database, WorkersHandle};
use serde::Serialize;
use serde_json::json;

/// One readiness check.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Check {
    /// What was checked: a database's name, `transport`, `workers`.
    pub name: String,
    /// Whether it passed.
    pub ok: bool,
    /// Why not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Whether a process can do its work, and why not.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Readiness {
    /// Every check passed.
    pub ready: bool,
    /// The checks.
    pub checks: Vec<Check>,
}

fn check(name: &str, result: Result<(), String>) -> Check {
    Check {
        name: name.to_owned(),
        ok: result.is_ok(),
        error: result.err(),
    }
}

/// Checks `databases`, `transport` and (when this process runs them) `workers`.
pub async fn readiness(
    databases: &[(&str, &Database)],
    transport: &dyn Transport,
    workers: Option<&WorkersHandle>,
) -> Readiness {
    let mut checks = Vec::new();
    for (name, database) in databases {
        let result = database.ping().await.map_err(|e| e.to_string());
        checks.push(check(name, result));
    }
    checks.push(check(
        "transport",
        transport.ready().await.map_err(|e| e.to_string()),
    ));
    if let Some(workers) = workers {
        let result = match workers.stopped_unexpectedly() {
            Some(0) => Ok(()),
            Some(n) => Err(format!("{n} saga workers have stopped")),
            None => Err("the saga workers are shutting down".to_owned()),
        };
        checks.push(check("workers", result));
    }
    Readiness {
        ready: checks.iter().all(|c| c.ok),
        checks,
    }
}

/// Something whose readiness the endpoints report.
#[async_trait]
pub trait Ready: Send + Sync + 'static {
    /// Its readiness now.
    async fn readiness(&self) -> Readiness;
}

async fn live() -> Json<serde_json::Value> {
    Json(json!({ "status": "live" }))
}

async fn ready<T: Ready>(State(source): State<Arc<T>>) -> (StatusCode, Json<Readiness>) {
    let readiness = source.readiness().await;
    let status = match readiness.ready {
        true => StatusCode::OK,
        false => StatusCode::SERVICE_UNAVAILABLE,
    };
    (status, Json(readiness))
}

async fn metrics() -> Response {
    match crate::observability::metrics() {
        Some(handle) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            handle.render(),
        )
            .into_response(),
        None => {
            let error = json!({ "error": { "code": "not_found", "message": "metrics are not enabled in this process" } });
            (StatusCode::NOT_FOUND, Json(error)).into_response()
        }
    }
}

/// `/health/live`, `/health/ready` over `source`, and `/metrics`.
pub fn router<T: Ready>(source: Arc<T>) -> Router {
    Router::new()
        .route("/health/live", get(live))
        .route("/health/ready", get(ready::<T>))
        .route("/metrics", get(metrics))
        .with_state(source)
}
