//! The HTTP API (axum):
//!
//! | method | path | what | answers |
//! |---|---|---|---|
//! | `POST` | `/orders` | place an order (starts CreateOrderSaga) | `201` with the order id, total and saga id |
//! | `GET` | `/orders/{id}` | the order, its ticket and authorization, its sagas and their timelines | `200`, `404` |
//! | `POST` | `/orders/{id}/cancel` | cancel an approved order (starts CancelOrderSaga) | `202`, `404`, `409` when a saga holds the order or it is not approved |
//! | `GET` | `/health` | liveness | `200` |
//! | `GET` | `/health/live`, `/health/ready` | liveness; readiness: databases, transport and workers ([`crate::health`]) | `200`, `503` with the failing checks |
//! | `GET` | `/metrics` | saga's metrics, Prometheus text format | `200` |
//! | | `/console/…` | the operator console ([`saga_ops::console`]): sagas, timelines, graphs, dead letters, retry / skip / cancel / replay / discard | HTML |
//!
//! Every `/orders` request runs in a `server` span that continues the trace of an incoming
//! W3C `traceparent` header; the saga it starts joins that trace.
//!
//! Errors are JSON: `{"error": {"code": "invalid_order", "message": "…"}}`, with `400` for a
//! malformed body or path, or a request that is not valid HTTP (`bad_request`), `408` when a
//! request (its body included) takes longer than its timeout ([`REQUEST_TIMEOUT`] by
//! default; `timeout`), `413` for a body over 2 MB or an order whose
//! commands would not fit the transport (`too_large`), `415` without a JSON content type, `422`
//! for invalid orders (`invalid_order`), `404`, `405`, `409` (`locked`, `wrong_state`), `503`
//! with `Retry-After` while a database is unreachable (`unavailable`) and `500`.

use std::sync::Arc;
use std::time::Duration;

use axum::error_handling::HandleErrorLayer;
use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{MatchedPath, Path, Request, State};
use axum::http::StatusCode;
use axum::http::header;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;
use serde_json::json;

use crate::app::{Ftgo, FtgoError, OrderView};
use crate::services::order::{NewOrder, OrderError, PlacedOrder};

/// An API error: a status, a stable code and a message.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({ "error": { "code": self.code, "message": self.message } });
        let mut response = (self.status, Json(body)).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        }
        response
    }
}

/// How long a request may take by default, reading its body included; a client that sends
/// its body slower than that gets `408` and the connection back
/// ([`FtgoOptions::request_timeout`](crate::app::FtgoOptions::request_timeout)).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

impl From<OrderError> for ApiError {
    fn from(err: OrderError) -> Self {
        match err {
            OrderError::Invalid(message) => {
                Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_order", message)
            }
            OrderError::NotFound(id) => {
                Self::new(StatusCode::NOT_FOUND, "not_found", format!("no order {id}"))
            }
            OrderError::Locked(locked) => {
                Self::new(StatusCode::CONFLICT, "locked", locked.to_string())
            }
            err @ OrderError::WrongState { .. } => {
                Self::new(StatusCode::CONFLICT, "wrong_state", err.to_string())
            }
            err @ OrderError::TooLarge { .. } => {
                Self::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", err.to_string())
            }
            err if err.is_unavailable() => unavailable(err),
            err => internal(err),
        }
    }
}

fn unavailable(err: impl std::fmt::Display) -> ApiError {
    tracing::warn!(error = %err, "request failed: a database is unavailable");
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        format!("the service is unavailable; try again shortly ({err})"),
    )
}

impl From<FtgoError> for ApiError {
    fn from(err: FtgoError) -> Self {
        match err {
            FtgoError::Order(err) => err.into(),
            err if err.is_unavailable() => unavailable(err),
            err => internal(err),
        }
    }
}

fn internal(err: impl std::fmt::Display) -> ApiError {
    tracing::error!(error = %err, "request failed");
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        err.to_string(),
    )
}

fn bad_json(rejection: JsonRejection) -> ApiError {
    let (status, code) = match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => (StatusCode::UNSUPPORTED_MEDIA_TYPE, "bad_request"),
        _ => (StatusCode::BAD_REQUEST, "bad_request"),
    };
    ApiError::new(status, code, rejection.body_text())
}

/// A request that outlived the request timeout (or another middleware failure).
fn timed_out(err: tower::BoxError, timeout: Duration) -> ApiError {
    if err.is::<tower::timeout::error::Elapsed>() {
        ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "timeout",
            format!("the request took longer than {} ms", timeout.as_millis()),
        )
    } else {
        internal(err)
    }
}

fn bad_path(rejection: PathRejection) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "bad_request",
        rejection.body_text(),
    )
}

/// The answer to a cancel request.
#[derive(Debug, Serialize)]
pub struct CancelStarted {
    /// The order.
    pub order_id: i64,
    /// Its state now.
    pub state: &'static str,
    /// The CancelOrderSaga.
    pub saga_id: saga_core::SagaId,
}

async fn place_order(
    State(ftgo): State<Arc<Ftgo>>,
    body: Result<Json<NewOrder>, JsonRejection>,
) -> Result<(StatusCode, Json<PlacedOrder>), ApiError> {
    let Json(request) = body.map_err(bad_json)?;
    let placed = ftgo.orders.place_order(&request).await?;
    Ok((StatusCode::CREATED, Json(placed)))
}

async fn get_order(
    State(ftgo): State<Arc<Ftgo>>,
    id: Result<Path<i64>, PathRejection>,
) -> Result<Json<OrderView>, ApiError> {
    let Path(order_id) = id.map_err(bad_path)?;
    ftgo.order_view(order_id)
        .await?
        .map(Json)
        .ok_or_else(|| OrderError::NotFound(order_id).into())
}

async fn cancel_order(
    State(ftgo): State<Arc<Ftgo>>,
    id: Result<Path<i64>, PathRejection>,
) -> Result<(StatusCode, Json<CancelStarted>), ApiError> {
    let Path(order_id) = id.map_err(bad_path)?;
    let saga_id = ftgo.orders.cancel_order(order_id).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(CancelStarted {
            order_id,
            state: "CANCEL_PENDING",
            saga_id,
        }),
    ))
}

async fn health() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not take that method",
    )
}

/// Runs a request in a `server` span named after its route (`POST /orders/{id}/cancel`),
/// parented on the request's `traceparent` header if it has a valid one.
async fn traced(request: Request, next: Next) -> Response {
    let route = request.extensions().get::<MatchedPath>().map_or_else(
        || request.uri().path().to_owned(),
        |p| p.as_str().to_owned(),
    );
    let span = tracing::info_span!(
        "http request",
        otel.name = format!("{} {route}", request.method()),
        otel.kind = "server",
        http.request.method = %request.method(),
        http.route = %route,
        http.response.status_code = tracing::field::Empty,
    );
    let parent = {
        let headers = request.headers();
        let header = |name: &str| headers.get(name).and_then(|value| value.to_str().ok());
        header("traceparent")
            .and_then(|tp| saga_core::trace::TraceContext::parse(tp, header("tracestate")).ok())
    };
    if let Some(parent) = parent {
        saga_core::trace::set_parent(&span, &parent);
    }
    let response = tracing::Instrument::instrument(next.run(request), span.clone()).await;
    span.record("http.response.status_code", response.status().as_u16());
    response
}

/// The API's routes over a running FTGO, with the operator console at `/console`: the sagas
/// from the Order service's database, dead letters and backlogs from every database.
pub fn router(ftgo: Arc<Ftgo>) -> Router {
    let timeout = ftgo.options().request_timeout;
    let console = saga_ops::console::router(
        ftgo.orders.orchestrator().store().as_ref().clone(),
        saga_ops::console::ConsoleOptions {
            token: ftgo.options().console_token.clone(),
            base_path: "/console".to_owned(),
            name: "order".to_owned(),
            databases: ftgo.console_databases(),
            ..saga_ops::console::ConsoleOptions::default()
        },
    );
    Router::new()
        .route("/orders", post(place_order))
        .route("/orders/{id}", get(get_order))
        .route("/orders/{id}/cancel", post(cancel_order))
        .route("/health", get(health))
        .route_layer(middleware::from_fn(traced))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(
            tower::ServiceBuilder::new()
                .layer(HandleErrorLayer::new(move |err| async move {
                    timed_out(err, timeout)
                }))
                .timeout(timeout),
        )
        .with_state(ftgo.clone())
        .merge(crate::health::router(ftgo))
        .nest("/console", console)
        .route(
            "/console/",
            get(|| async { axum::response::Redirect::permanent("/console") }),
        )
}

/// Serves the API on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    ftgo: Arc<Ftgo>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(crate::protocol_errors::JsonErrors(listener), router(ftgo))
        .with_graceful_shutdown(shutdown)
        .await
}
