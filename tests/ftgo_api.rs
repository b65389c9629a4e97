//! FTGO's HTTP API over real HTTP: the server (`ftgo::api::serve`) on a local port, over
//! FTGO on SQLite files with its saga workers, driven with an HTTP client — the answers'
//! statuses and JSON bodies for every outcome and every kind of refused request.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ftgo::app::{Ftgo, FtgoOptions, Storage};
use reqwest::StatusCode;
use saga_tests::testdb::unique;
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How long sagas may take (generous: the point is that they finish, not how fast).
const WAIT: Duration = Duration::from_secs(60);

fn unique_dir() -> PathBuf {
    std::env::temp_dir().join(unique("ftgo_api"))
}

/// The API served on a local port over FTGO on a fresh directory.
struct Server {
    base: String,
    client: reqwest::Client,
    shutdown: oneshot::Sender<()>,
    task: JoinHandle<std::io::Result<()>>,
    ftgo: Arc<Ftgo>,
    dir: PathBuf,
}

impl Server {
    /// Starts the API; with `workers`, the saga workers run too (without, every order stays
    /// `APPROVAL_PENDING`).
    async fn start(workers: bool) -> Self {
        Self::start_with(workers, |_| {}).await
    }

    /// [`Server::start`] with options of its own.
    async fn start_with(workers: bool, tweak: impl FnOnce(&mut FtgoOptions)) -> Self {
        let dir = unique_dir();
        let mut options = FtgoOptions::new(Storage::Sqlite { dir: dir.clone() });
        options.runtime.poll_interval = Duration::from_millis(50);
        options.transport.poll_interval = Duration::from_millis(50);
        tweak(&mut options);
        let ftgo = Ftgo::open(options).await.expect("FTGO opens");
        if workers {
            ftgo.start_workers().await.expect("the workers start");
        }
        let ftgo = Arc::new(ftgo);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binds a local port");
        let address = listener.local_addr().expect("a local address");
        let (shutdown, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(ftgo::api::serve(listener, ftgo.clone(), async move {
            let _ = stopped.await;
        }));
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("an HTTP client");
        Self {
            base: format!("http://{address}"),
            client,
            shutdown,
            task,
            ftgo,
            dir,
        }
    }

    /// Stops the server cleanly, then FTGO, and removes the directory.
    async fn stop(self) {
        let Self {
            client,
            shutdown,
            task,
            ftgo,
            dir,
            ..
        } = self;
        drop(client);
        shutdown.send(()).expect("the server is still running");
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("the server stops within 10 s")
            .expect("the server task did not panic")
            .expect("the server stopped without an error");
        // Shutting down works on a shared handle: no need to wait for axum's last copies.
        ftgo.shutdown().await;
        let _ = std::fs::remove_dir_all(dir);
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The status and JSON body of an answer (which must be JSON).
    async fn answer(response: reqwest::Response) -> (StatusCode, Value) {
        let status = response.status();
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let text = response.text().await.expect("a body");
        assert!(
            content_type.starts_with("application/json"),
            "{status}: content type {content_type:?}, body {text:?}"
        );
        let body = serde_json::from_str(&text)
            .unwrap_or_else(|err| panic!("{status}: body {text:?} is not JSON: {err}"));
        (status, body)
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        let response = self.client.get(self.url(path)).send().await;
        Self::answer(response.expect("GET answered")).await
    }

    async fn post(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        let response = self.client.post(self.url(path)).json(body).send().await;
        Self::answer(response.expect("POST answered")).await
    }

    async fn post_raw(&self, path: &str, body: &'static str) -> (StatusCode, Value) {
        let response = self
            .client
            .post(self.url(path))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await;
        Self::answer(response.expect("POST answered")).await
    }

    /// Places an order, expecting `201`; its id, total and saga id.
    async fn place(&self, order: &Value) -> (i64, i64, String) {
        let (status, body) = self.post("/orders", order).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let order_id = body["order_id"].as_i64().expect("an order id");
        let total = body["total"].as_i64().expect("a total");
        let saga_id = body["saga_id"].as_str().expect("a saga id").to_owned();
        assert!(!saga_id.is_empty());
        (order_id, total, saga_id)
    }

    /// `GET /orders/{id}` until its saga number `saga` is terminal.
    async fn wait_for_saga(&self, order_id: i64, saga: usize) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let (status, body) = self.get(&format!("/orders/{order_id}")).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            if matches!(
                body["sagas"][saga]["status"].as_str(),
                Some("completed" | "compensated")
            ) {
                return body;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "saga {saga} of order {order_id} did not finish: {body}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

/// The error code and message of an error answer.
fn error_of(body: &Value) -> (&str, &str) {
    let error = &body["error"];
    let code = error["code"].as_str().expect("an error code");
    let message = error["message"].as_str().expect("an error message");
    assert!(!message.is_empty(), "{body}");
    (code, message)
}

fn events(saga: &Value) -> Vec<&str> {
    saga["history"]
        .as_array()
        .expect("a history")
        .iter()
        .map(|entry| {
            assert!(entry["at"].as_u64().is_some(), "{entry}");
            entry["event"].as_str().expect("an event")
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placed_order_is_approved_then_cancelled() {
    let server = Server::start(true).await;
    let (order_id, total, saga_id) = server
        .place(&json!({
            "consumer_id": 1,
            "restaurant_id": 2,
            "line_items": [
                { "menu_item_id": "margherita", "quantity": 1 },
                { "menu_item_id": "tiramisu", "quantity": 2 }
            ]
        }))
        .await;
    assert_eq!(total, 2_400);

    let body = server.wait_for_saga(order_id, 0).await;
    assert_eq!(body["order_id"], order_id);
    assert_eq!(body["consumer_id"], 1);
    assert_eq!(body["restaurant_id"], 2);
    assert_eq!(body["total"], 2_400);
    assert_eq!(body["state_name"], "APPROVED", "{body}");
    assert_eq!(body["ticket_state"], "AWAITING_ACCEPTANCE");
    assert_eq!(body["authorization_state"], "AUTHORIZED");
    assert_eq!(body["line_items"].as_array().map(Vec::len), Some(2));
    let sagas = body["sagas"].as_array().expect("sagas");
    assert_eq!(sagas.len(), 1);
    let saga = &sagas[0];
    assert_eq!(saga["saga_id"], saga_id.as_str());
    assert_eq!(saga["saga_type"], "CreateOrderSaga");
    assert_eq!(saga["status"], "completed");
    assert_eq!(saga["compensation_reason"], Value::Null);
    let history = events(saga);
    assert!(!history.is_empty());
    assert_eq!(history.first(), Some(&"started"), "{history:?}");
    assert_eq!(history.last(), Some(&"finished"), "{history:?}");
    assert_eq!(
        history.iter().filter(|e| **e == "step_succeeded").count(),
        6,
        "{history:?}"
    );

    let (status, body) = server
        .post(&format!("/orders/{order_id}/cancel"), &json!({}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["order_id"], order_id);
    assert_eq!(body["state"], "CANCEL_PENDING");
    let cancel_saga = body["saga_id"].as_str().expect("a saga id").to_owned();

    let body = server.wait_for_saga(order_id, 1).await;
    assert_eq!(body["state_name"], "CANCELLED", "{body}");
    assert_eq!(body["ticket_state"], "CANCELLED");
    assert_eq!(body["authorization_state"], "REVERSED");
    assert_eq!(body["cancel_saga_id"], cancel_saga.as_str());
    let cancel = &body["sagas"][1];
    assert_eq!(cancel["saga_id"], cancel_saga.as_str());
    assert_eq!(cancel["saga_type"], "CancelOrderSaga");
    assert_eq!(cancel["status"], "completed");
    assert!(!events(cancel).is_empty());

    // A cancelled order cannot be cancelled again.
    let (status, body) = server
        .post(&format!("/orders/{order_id}/cancel"), &json!({}))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(error_of(&body).0, "wrong_state");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_of_a_pending_order_is_409_locked() {
    // No workers: the order stays APPROVAL_PENDING.
    let server = Server::start(false).await;
    let (order_id, total, saga_id) = server
        .place(&json!({
            "consumer_id": 1,
            "restaurant_id": 1,
            "line_items": [{ "menu_item_id": "samosa", "quantity": 2 }]
        }))
        .await;
    assert_eq!(total, 900);

    let (status, body) = server.get(&format!("/orders/{order_id}")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["state_name"], "APPROVAL_PENDING");
    assert_eq!(body["ticket_state"], Value::Null);
    assert_eq!(body["authorization_state"], Value::Null);
    assert_eq!(body["sagas"][0]["saga_id"], saga_id.as_str());
    assert_eq!(body["sagas"][0]["status"], "running");

    let (status, body) = server
        .post(&format!("/orders/{order_id}/cancel"), &json!({}))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(
        body,
        json!({ "error": {
            "code": "locked",
            "message": format!(
                "Order {order_id} is locked in state APPROVAL_PENDING by a saga in progress"
            ),
        }})
    );
    let (_, body) = server.get(&format!("/orders/{order_id}")).await;
    assert_eq!(body["state_name"], "APPROVAL_PENDING", "nothing changed");
    assert_eq!(body["sagas"].as_array().map(Vec::len), Some(1));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_of_a_rejected_order_is_409_wrong_state() {
    let server = Server::start(true).await;
    let (order_id, _, _) = server
        .place(&json!({
            "consumer_id": 666,
            "restaurant_id": 1,
            "line_items": [{ "menu_item_id": "samosa", "quantity": 2 }]
        }))
        .await;
    let body = server.wait_for_saga(order_id, 0).await;
    assert_eq!(body["state_name"], "REJECTED", "{body}");
    // Created while the consumer was checked, then cancelled.
    assert_eq!(body["ticket_state"], "CANCELLED");
    assert_eq!(body["authorization_state"], Value::Null);
    let saga = &body["sagas"][0];
    assert_eq!(saga["status"], "compensated");
    let reason = saga["compensation_reason"].as_str().expect("a reason");
    assert!(reason.contains("consumer 666 is blocked"), "{reason}");
    assert!(events(saga).contains(&"compensation_started"));

    let (status, body) = server
        .post(&format!("/orders/{order_id}/cancel"), &json!({}))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(
        error_of(&body),
        (
            "wrong_state",
            format!("order {order_id} is REJECTED; only an approved order can be cancelled")
                .as_str()
        )
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_orders_are_422() {
    let server = Server::start(true).await;
    let cases = [
        (
            json!({ "consumer_id": 1, "restaurant_id": 1, "line_items": [] }),
            "an order needs at least one line item",
        ),
        (
            json!({ "consumer_id": 1, "restaurant_id": 1,
                    "line_items": [{ "menu_item_id": "samosa", "quantity": -1 }] }),
            "quantity of \"samosa\" must be between 1 and 100, not -1",
        ),
        (
            json!({ "consumer_id": 1, "restaurant_id": 1,
                    "line_items": [{ "menu_item_id": "samosa", "quantity": 0 }] }),
            "quantity of \"samosa\" must be between 1 and 100, not 0",
        ),
        (
            json!({ "consumer_id": 1, "restaurant_id": 99,
                    "line_items": [{ "menu_item_id": "samosa", "quantity": 1 }] }),
            "unknown restaurant 99",
        ),
        (
            json!({ "consumer_id": 1, "restaurant_id": 2,
                    "line_items": [{ "menu_item_id": "samosa", "quantity": 1 }] }),
            "restaurant 2 has no menu item \"samosa\"",
        ),
    ];
    for (order, message) in cases {
        let (status, body) = server.post("/orders", &order).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{order}: {body}");
        assert_eq!(
            body,
            json!({ "error": { "code": "invalid_order", "message": message } })
        );
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_are_400() {
    let server = Server::start(true).await;
    for body in [
        r#"{"consumer_id": 1, "restaurant_id": 1, "line_items": ["#,
        "not json at all",
    ] {
        let (status, answer) = server.post_raw("/orders", body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {answer}");
        assert_eq!(error_of(&answer).0, "bad_request");
    }

    // Well-formed JSON that is not an order is refused too, as JSON.
    let (status, answer) = server
        .post(
            "/orders",
            &json!({ "consumer_id": "one", "restaurant_id": 1, "line_items": [] }),
        )
        .await;
    assert!(status.is_client_error(), "{status}: {answer}");
    error_of(&answer);

    for (path, post) in [("/orders/abc", false), ("/orders/abc/cancel", true)] {
        let (status, answer) = if post {
            server.post(path, &json!({})).await
        } else {
            server.get(path).await
        };
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {answer}");
        assert_eq!(error_of(&answer).0, "bad_request");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_orders_and_routes_are_404() {
    let server = Server::start(true).await;
    let (status, body) = server.get("/orders/987654").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(
        body,
        json!({ "error": { "code": "not_found", "message": "no order 987654" } })
    );
    let (status, body) = server.post("/orders/987654/cancel", &json!({})).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(error_of(&body), ("not_found", "no order 987654"));

    for path in ["/nowhere", "/orders/1/2/3", "/"] {
        let (status, body) = server.get(path).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {body}");
        assert_eq!(error_of(&body), ("not_found", "no such route"));
    }

    let (status, body) = server.get("/health").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({ "status": "ok" }));
    server.stop().await;
}

/// Sends `request` as raw bytes and reads the whole answer (the server closes, or `wait`
/// passes): its status line and its body.
async fn raw_exchange(base: &str, request: &[u8], wait: Duration) -> (String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let address = base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .expect("connects");
    // The server may answer (and close) before it has read everything.
    let _ = stream.write_all(request).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(wait, stream.read_to_end(&mut answer)).await;
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text.lines().next().unwrap_or_default().to_owned();
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_that_are_not_http_are_answered_with_json() {
    let server = Server::start(false).await;
    for request in [
        &b"GARBAGE\r\n\r\n"[..],
        b"GET /orders/1 HTTP/1.1\r\nHost: x\r\nNot A Header\r\n\r\n",
    ] {
        let (status, body) = raw_exchange(&server.base, request, Duration::from_secs(5)).await;
        assert_eq!(status, "HTTP/1.1 400 Bad Request", "{body}");
        let body: Value = serde_json::from_str(&body).expect("a JSON body");
        assert_eq!(error_of(&body).0, "bad_request");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_the_limit_is_413() {
    let server = Server::start(false).await;
    let mut request = b"POST /orders HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 20000000\r\n\r\n".to_vec();
    request.extend(std::iter::repeat_n(b' ', 3_000_000));
    let (status, body) = raw_exchange(&server.base, &request, Duration::from_secs(10)).await;
    assert_eq!(status, "HTTP/1.1 413 Payload Too Large", "{body}");
    let body: Value = serde_json::from_str(&body).expect("a JSON body");
    assert_eq!(error_of(&body).0, "too_large");
    server.stop().await;
}

/// hyper's limits (100 headers, a 400 KB head) hold on the API: the answer is 431, at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_or_too_long_headers_are_431() {
    let server = Server::start(false).await;
    let many: String = (0..150).map(|i| format!("X-H{i}: v\r\n")).collect();
    let long = format!("X-Long: {}\r\n", "v".repeat(600_000));
    for headers in [many, long] {
        let request = format!("GET /orders/1 HTTP/1.1\r\nHost: x\r\n{headers}\r\n");
        let (status, _) =
            raw_exchange(&server.base, request.as_bytes(), Duration::from_secs(5)).await;
        assert_eq!(status, "HTTP/1.1 431 Request Header Fields Too Large");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_sends_its_body_too_slowly_gets_408() {
    let server =
        Server::start_with(false, |o| o.request_timeout = Duration::from_millis(500)).await;
    let started = std::time::Instant::now();
    // Five bytes announced, four sent, and then nothing.
    let request = b"POST /orders HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 5\r\n\r\n{\"a\"";
    let (status, body) = raw_exchange(&server.base, request, Duration::from_secs(10)).await;
    assert_eq!(status, "HTTP/1.1 408 Request Timeout", "{body}");
    let body: Value = serde_json::from_str(&body).expect("a JSON body");
    assert_eq!(error_of(&body).0, "timeout");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "answered after {:?}",
        started.elapsed()
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_database_is_503_with_retry_after() {
    let server = Server::start(false).await;
    server.ftgo.orders.database().close().await;
    let order = json!({
        "consumer_id": 1, "restaurant_id": 1,
        "line_items": [{ "menu_item_id": "samosa", "quantity": 1 }]
    });
    let response = server
        .client
        .post(server.url("/orders"))
        .json(&order)
        .send()
        .await
        .expect("answered");
    assert_eq!(
        response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .map(|v| v.as_bytes()),
        Some(&b"1"[..])
    );
    let (status, body) = Server::answer(response).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(error_of(&body).0, "unavailable");
    let (status, body) = server.get("/orders/1").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    server.stop().await;
}

/// An order whose kitchen ticket would not fit the transport is refused before anything is
/// stored, instead of being accepted and then never finishing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_too_large_for_the_transport_is_413_and_stores_nothing() {
    let server =
        Server::start_with(true, |o| o.transport.max_message_bytes = Some(64 * 1024)).await;
    let items: Vec<Value> = (0..3_000)
        .map(|_| json!({ "menu_item_id": "samosa", "quantity": 1 }))
        .collect();
    let order = json!({ "consumer_id": 1, "restaurant_id": 1, "line_items": items });
    let (status, body) = server.post("/orders", &order).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    let (code, message) = error_of(&body);
    assert_eq!(code, "too_large");
    assert!(
        message.contains("over the transport's limit of 65536 bytes"),
        "{message}"
    );
    // A normal order still goes through.
    let (order_id, _, _) = server
        .place(&json!({
            "consumer_id": 1, "restaurant_id": 1,
            "line_items": [{ "menu_item_id": "samosa", "quantity": 1 }]
        }))
        .await;
    assert_eq!(
        order_id, 1001,
        "the refused order used no id: ids start at 1001"
    );
    server.stop().await;
}

/// The console at `/console`: its token guards every page (a bearer header, or the login
/// page's cookie), `POST`s need the page's form token and a same-site origin, bad input is a
/// 4xx page, and a body over 16 KiB is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_needs_its_token_and_refuses_cross_site_posts_and_bad_input() {
    let server = Server::start_with(true, |options| {
        options.console_token = Some("s3cret".into());
    })
    .await;
    let client = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .expect("an HTTP client");
    let get = |path: &str, bearer: Option<&str>| {
        let mut request = client.get(server.url(path));
        if let Some(token) = bearer {
            request = request.bearer_auth(token);
        }
        request.send()
    };

    // No token, a wrong one: to the login page. The right one: the list.
    let anonymous = get("/console", None).await.expect("answers");
    assert_eq!(anonymous.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        anonymous
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok()),
        Some("/console/login")
    );
    let wrong = get("/console", Some("guess")).await.expect("answers");
    assert_eq!(wrong.status(), StatusCode::SEE_OTHER);
    let list = get("/console", Some("s3cret")).await.expect("answers");
    assert_eq!(list.status(), StatusCode::OK);
    assert!(
        list.headers()
            .get("content-security-policy")
            .is_some_and(|v| v.to_str().unwrap_or("").contains("default-src 'none'"))
    );
    let page = list.text().await.expect("a body");
    assert!(page.contains("<h1>Sagas</h1>"), "{page}");

    // Bad input: clear 4xx pages in the console's layout.
    for (path, status, says) in [
        (
            "/console?status=exploded",
            StatusCode::BAD_REQUEST,
            "unknown saga status",
        ),
        (
            "/console/sagas/not-an-id",
            StatusCode::BAD_REQUEST,
            "is not a saga id",
        ),
        (
            "/console/sagas/01a0f0f0-0000-7000-8000-000000000000",
            StatusCode::NOT_FOUND,
            "no saga",
        ),
        (
            "/console/dead-letters/order/x",
            StatusCode::BAD_REQUEST,
            "is not a dead letter id",
        ),
        (
            "/console/dead-letters/kitchen/424242",
            StatusCode::NOT_FOUND,
            "no dead letter 424242 in `kitchen`",
        ),
        (
            "/console/dead-letters/nowhere/1",
            StatusCode::NOT_FOUND,
            "no database `nowhere`",
        ),
        ("/console/stats", StatusCode::OK, "<td>messages</td>"),
        (
            "/console/stats",
            StatusCode::OK,
            "<h2>Definition versions</h2>",
        ),
        ("/console/nowhere", StatusCode::NOT_FOUND, "no such page"),
    ] {
        let response = get(path, Some("s3cret")).await.expect("answers");
        assert_eq!(response.status(), status, "{path}");
        let body = response.text().await.expect("a body");
        assert!(
            body.contains(says) && body.contains("saga console"),
            "{path}: {body}"
        );
    }

    // POSTs: without the token, without the form token, from another site, too big.
    let (_, _, saga) = server
        .place(&json!({
            "consumer_id": 1, "restaurant_id": 2,
            "line_items": [{"menu_item_id": "margherita", "quantity": 1}]
        }))
        .await;
    let action = server.url(&format!("/console/sagas/{saga}/cancel"));
    let form_token = {
        let page = get(&format!("/console/sagas/{saga}/cancel"), Some("s3cret"))
            .await
            .expect("answers")
            .text()
            .await
            .expect("a body");
        let start = page
            .find("name=\"form_token\" value=\"")
            .expect("a form token")
            + 25;
        page[start..start + 32].to_owned()
    };
    let post = |body: String, bearer: Option<&str>, origin: Option<&str>| {
        let mut request = client
            .post(action.clone())
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body);
        if let Some(token) = bearer {
            request = request.bearer_auth(token);
        }
        if let Some(origin) = origin {
            request = request.header("origin", origin);
        }
        request.send()
    };
    let good = format!("form_token={form_token}&reason=test");
    let status = |r: reqwest::Response| r.status();
    assert_eq!(
        status(post(good.clone(), None, None).await.expect("answers")),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        status(
            post("reason=test".to_owned(), Some("s3cret"), None)
                .await
                .expect("answers")
        ),
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        status(
            post(good.clone(), Some("s3cret"), Some("http://evil.example"))
                .await
                .expect("answers")
        ),
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        status(
            post(
                format!("form_token={form_token}&reason="),
                Some("s3cret"),
                None
            )
            .await
            .expect("answers")
        ),
        StatusCode::BAD_REQUEST
    );
    let huge = format!("form_token={form_token}&reason={}", "x".repeat(20_000));
    assert_eq!(
        status(post(huge, Some("s3cret"), None).await.expect("answers")),
        StatusCode::PAYLOAD_TOO_LARGE
    );

    // Signing in on the login page sets the cookie the browser then carries.
    let login_page = get("/console/login", None)
        .await
        .expect("answers")
        .text()
        .await
        .expect("a body");
    let start = login_page
        .find("name=\"form_token\" value=\"")
        .expect("a form token")
        + 25;
    let login_token = &login_page[start..start + 32];
    let login = |token: &str| {
        client
            .post(server.url("/console/login"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("form_token={login_token}&token={token}"))
            .send()
    };
    assert_eq!(
        login("guess").await.expect("answers").status(),
        StatusCode::UNAUTHORIZED
    );
    let signed_in = login("s3cret").await.expect("answers");
    assert_eq!(signed_in.status(), StatusCode::SEE_OTHER);
    let cookie = signed_in
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .expect("a cookie")
        .to_owned();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let with_cookie = client
        .get(server.url("/console/stats"))
        .header("cookie", cookie.split(';').next().unwrap_or_default())
        .send()
        .await
        .expect("answers");
    assert_eq!(with_cookie.status(), StatusCode::OK);

    // A cancel that is allowed goes through (the saga may have finished already: then the
    // saga refuses it, which the page says).
    let done = post(good, Some("s3cret"), Some(&server.base))
        .await
        .expect("answers");
    assert_eq!(done.status(), StatusCode::OK);
    let body = done.text().await.expect("a body");
    assert!(
        body.contains("cancel: applied") || body.contains("cancel: refused"),
        "{body}"
    );
    server.stop().await;
}

fn check_names(readiness: &Value) -> Vec<&str> {
    readiness["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .map(|c| c["name"].as_str().expect("a name"))
        .collect()
}

/// `/health/live` always answers; `/health/ready` checks every database, the transport and
/// the workers (when this process runs them), and says which check fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_checks_every_database_the_transport_and_the_workers() {
    let server = Server::start(true).await;
    let (status, live) = server.get("/health/live").await;
    assert_eq!(
        (status, live["status"].as_str()),
        (StatusCode::OK, Some("live"))
    );
    let (status, ready) = server.get("/health/ready").await;
    assert_eq!(status, StatusCode::OK, "{ready:#}");
    assert_eq!(ready["ready"], true);
    assert_eq!(
        check_names(&ready),
        [
            "order",
            "consumer",
            "kitchen",
            "accounting",
            "messages",
            "transport",
            "workers"
        ]
    );
    // With the workers stopped, the process is not ready: it would take no work.
    server.ftgo.stop_workers().await;
    let (status, ready) = server.get("/health/ready").await;
    assert_eq!(
        status,
        StatusCode::OK,
        "an API without workers is ready: {ready:#}"
    );
    assert!(!check_names(&ready).contains(&"workers"));
    // A database that is gone fails its check, by name.
    server.ftgo.kitchen.database().close().await;
    let (status, ready) = server.get("/health/ready").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{ready:#}");
    let kitchen = ready["checks"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == "kitchen"))
        .expect("a kitchen check");
    assert_eq!(kitchen["ok"], false);
    assert!(
        kitchen["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{kitchen:#}"
    );
    server.stop().await;
}

/// A service process reports its own database, the queue's, the transport and its workers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_process_reports_its_readiness() {
    use ftgo::app::{ServiceName, ServiceProcess};
    use ftgo::health::Ready;
    let dir = unique_dir();
    let options = FtgoOptions::new(Storage::Sqlite { dir: dir.clone() });
    let process = ServiceProcess::start(ServiceName::Kitchen, options)
        .await
        .expect("starts");
    let readiness = process.readiness().await;
    assert!(readiness.ready, "{readiness:?}");
    let names: Vec<&str> = readiness.checks.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["kitchen", "messages", "transport", "workers"]);
    process.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
}
