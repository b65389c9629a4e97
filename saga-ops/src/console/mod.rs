//! The web console: an axum [`Router`] any service can mount (FTGO mounts it at `/console`),
//! or that `saga console` serves on its own. Pages are rendered on the server with no script
//! and no external assets, so it works with no internet.
//!
//! - **Reading:** the saga list with filters and paging, a saga's page (state, data, timeline,
//!   its graph with the path drawn), dead letters, stats.
//! - **Acting:** retry, skip, cancel, replay and discard each go through a confirmation page
//!   that asks for a reason, then a `POST`; actions reach orchestrators as operator requests
//!   (see [`crate::actions`]).
//! - **Safety:** bound to localhost by default ([`serve`] refuses any other address without a
//!   token); with a token every page needs it — as `Authorization: Bearer …`, or entered once
//!   on the login page (a `SameSite=Strict`, `HttpOnly` cookie) — compared in constant time.
//!   Every `POST` carries a per-process form token and is refused when `Sec-Fetch-Site` or
//!   `Origin` say it comes from another site. Bad input (an unknown id, a malformed filter) is
//!   a 4xx page, never a 500; bodies are capped at 16 KiB.

mod pages;

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, RawForm, RawQuery, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use maud::Markup;
use saga_core::engine::{OperatorCommand, OperatorRequest, SagaStatus};
use saga_core::{SagaId, Timestamp};
use saga_store::secrets::{ExposeSecret, SecretString};
use saga_store::{SagaFilter, SqlSagaStore};
use subtle::ConstantTimeEq;

use crate::OpsError;
use crate::actions::{self, Answer};
use crate::view::SagaView;

/// How the console behaves.
#[derive(Clone, Debug)]
pub struct ConsoleOptions {
    /// The secret every request must carry; `None` for none (loopback only). `Debug` does not
    /// show it.
    pub token: Option<SecretString>,
    /// Where the router is mounted (`/console` in FTGO, empty when served on its own): the
    /// prefix of every link it renders.
    pub base_path: String,
    /// How long an action waits for the saga's answer before reporting it pending.
    pub wait: Duration,
    /// Sagas per page.
    pub page_size: usize,
    /// What the sagas' own database is called on the dead letters and stats pages.
    pub name: String,
    /// Other databases of the deployment whose dead letters and backlogs to show too (a
    /// database per service, the SQL queue's), by name.
    pub databases: Vec<(String, SqlSagaStore)>,
}

impl Default for ConsoleOptions {
    fn default() -> Self {
        Self {
            token: None,
            base_path: String::new(),
            wait: Duration::from_secs(5),
            page_size: 50,
            name: "sagas".to_owned(),
            databases: Vec::new(),
        }
    }
}

/// What every handler shares.
#[derive(Debug)]
pub(crate) struct Console {
    store: SqlSagaStore,
    options: ConsoleOptions,
    /// The per-process token every form carries (against cross-site requests).
    form_token: String,
}

type Shared = Arc<Console>;

impl Console {
    /// Every database by name, the sagas' own first.
    fn databases(&self) -> impl Iterator<Item = (&str, &SqlSagaStore)> {
        std::iter::once((self.options.name.as_str(), &self.store)).chain(
            self.options
                .databases
                .iter()
                .map(|(name, store)| (name.as_str(), store)),
        )
    }
}

const COOKIE: &str = "saga_console_token";
const BODY_LIMIT: usize = 16 * 1024;

/// A page that says what went wrong, with its status.
#[derive(Debug)]
pub(crate) struct PageError {
    status: StatusCode,
    message: String,
}

impl PageError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }
}

impl From<OpsError> for PageError {
    fn from(err: OpsError) -> Self {
        match err {
            OpsError::NotFound(what) => Self::not_found(what),
            OpsError::Usage(what) => Self::bad_request(what),
            OpsError::Request(err @ saga_store::OperatorRequestError::UnknownSaga(_)) => {
                Self::not_found(err.to_string())
            }
            OpsError::DeadLetter(err @ saga_store::DeadLetterError::NotFound(_)) => {
                Self::not_found(err.to_string())
            }
            OpsError::DeadLetter(err @ saga_store::DeadLetterError::Resolved { .. }) => {
                Self::new(StatusCode::CONFLICT, err.to_string())
            }
            other => {
                tracing::warn!(error = %other, "console request failed");
                Self::new(StatusCode::SERVICE_UNAVAILABLE, other.to_string())
            }
        }
    }
}

impl From<saga_core::ports::StoreError> for PageError {
    fn from(err: saga_core::ports::StoreError) -> Self {
        OpsError::from(err).into()
    }
}

/// A rendered page, or the page saying why not.
type Page = Result<Markup, PageError>;

/// The console's router over `store`.
pub fn router(store: SqlSagaStore, options: ConsoleOptions) -> Router {
    let console = Arc::new(Console {
        store,
        options,
        form_token: uuid::Uuid::new_v4().simple().to_string(),
    });
    Router::new()
        .route("/", get(list_page))
        .route("/sagas/{id}", get(saga_page))
        .route(
            "/sagas/{id}/{action}",
            get(confirm_saga_action).post(saga_action),
        )
        .route("/dead-letters", get(dead_letters_page))
        .route("/dead-letters/{db}/{id}", get(dead_letter_page))
        .route(
            "/dead-letters/{db}/{id}/{action}",
            get(confirm_dead_letter_action).post(dead_letter_action),
        )
        .route("/stats", get(stats_page))
        .route("/login", get(login_page).post(login))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(console.clone(), guard))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(console)
}

/// Serves the console on `listen` until Ctrl-C; refuses a non-loopback address without a
/// token.
pub async fn serve(
    store: SqlSagaStore,
    options: ConsoleOptions,
    listen: SocketAddr,
    notes: &mut dyn Write,
) -> Result<(), OpsError> {
    if !listen.ip().is_loopback()
        && options
            .token
            .as_ref()
            .is_none_or(|t| t.expose_secret().is_empty())
    {
        return Err(OpsError::Usage(format!(
            "the console would listen on {listen}, beyond this machine, with no token: give \
             --token (or set SAGA_CONSOLE_TOKEN), or listen on 127.0.0.1"
        )));
    }
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let address = listener.local_addr()?;
    writeln!(notes, "saga console on http://{address}/ (Ctrl-C stops it)")?;
    axum::serve(listener, router(store, options))
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}

fn same(a: &str, b: &str) -> bool {
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

/// The token a request carries: a bearer token or the login cookie.
fn presented_token(headers: &HeaderMap) -> Option<String> {
    if let Some(bearer) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    {
        return Some(bearer.trim().to_owned());
    }
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_owned())
}

/// Whether a state-changing request may come from where it says it comes from.
fn same_site(headers: &HeaderMap) -> bool {
    let header_text = |name| {
        headers
            .get(name)
            .and_then(|v: &header::HeaderValue| v.to_str().ok())
    };
    if let Some(site) = header_text("sec-fetch-site")
        && site != "same-origin"
        && site != "none"
    {
        return false;
    }
    match (
        header_text(header::ORIGIN.as_str()),
        header_text(header::HOST.as_str()),
    ) {
        (Some(origin), Some(host)) => {
            let origin = origin
                .strip_prefix("http://")
                .or_else(|| origin.strip_prefix("https://"))
                .unwrap_or(origin);
            origin == host
        }
        (Some(_), None) => false,
        (None, _) => true,
    }
}

/// Checks the token (when there is one) and that `POST`s come from the console's own pages.
async fn guard(State(console): State<Shared>, request: Request, next: Next) -> Response {
    let is_post = request.method() == axum::http::Method::POST;
    if is_post && !same_site(request.headers()) {
        return PageError::new(
            StatusCode::FORBIDDEN,
            "refused: this request comes from another site",
        )
        .into_response();
    }
    let login = request.uri().path() == "/login";
    if let Some(token) = console
        .options
        .token
        .as_ref()
        .map(ExposeSecret::expose_secret)
        && !login
    {
        let ok = presented_token(request.headers()).is_some_and(|t| same(&t, token));
        if !ok {
            return match is_post {
                true => PageError::new(StatusCode::UNAUTHORIZED, "a valid console token is needed")
                    .into_response(),
                false => Redirect::to(&pages::link(&console, "/login")).into_response(),
            };
        }
    }
    let mut response = next.run(request).await;
    if let Some(ErrorMessage(message)) = response.extensions_mut().remove::<ErrorMessage>() {
        // Rendered again inside the console's layout, which knows its links.
        let status = response.status();
        response = (status, pages::error(&console, status, &message)).into_response();
    }
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        header::HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'",
        ),
    );
    headers.insert(
        header::X_FRAME_OPTIONS,
        header::HeaderValue::from_static("DENY"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        header::HeaderValue::from_static("same-origin"),
    );
    response
}

/// A form's fields; a field given twice is a bad request.
fn form_fields(body: &[u8]) -> Result<BTreeMap<String, String>, PageError> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(body)
        .map_err(|err| PageError::bad_request(format!("malformed form: {err}")))?;
    let mut fields = BTreeMap::new();
    for (name, value) in pairs {
        if fields.insert(name.clone(), value).is_some() {
            return Err(PageError::bad_request(format!(
                "form field `{name}` given twice"
            )));
        }
    }
    Ok(fields)
}

/// The reason and actor of a confirmed action form, after checking its form token.
fn confirmed(console: &Console, body: &[u8]) -> Result<(String, String), PageError> {
    let fields = form_fields(body)?;
    let token = fields.get("form_token").map(String::as_str).unwrap_or("");
    if !same(token, &console.form_token) {
        return Err(PageError::new(
            StatusCode::FORBIDDEN,
            "refused: the form is stale or comes from another site; reload the page",
        ));
    }
    let reason = fields.get("reason").map(|r| r.trim()).unwrap_or("");
    if reason.is_empty() {
        return Err(PageError::bad_request("say why: the reason is required"));
    }
    if reason.chars().count() > 1000 {
        return Err(PageError::bad_request(
            "the reason is limited to 1000 characters",
        ));
    }
    let actor = fields
        .get("actor")
        .map(|a| a.trim())
        .filter(|a| !a.is_empty())
        .unwrap_or("console");
    if actor.chars().count() > 100 {
        return Err(PageError::bad_request(
            "the name is limited to 100 characters",
        ));
    }
    Ok((reason.to_owned(), format!("{actor} (console)")))
}

fn saga_id(id: &str) -> Result<SagaId, PageError> {
    id.parse()
        .map_err(|_| PageError::bad_request(format!("`{id}` is not a saga id")))
}

fn operator_command(action: &str) -> Result<OperatorCommand, PageError> {
    action
        .parse()
        .map_err(|_| PageError::not_found(format!("no action `{action}`")))
}

/// The list's filter and page, read from the query string.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct ListQuery {
    pub(crate) filter: SagaFilter,
    pub(crate) page: usize,
}

fn list_query(raw: Option<&str>) -> Result<ListQuery, PageError> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(raw.unwrap_or(""))
        .map_err(|err| PageError::bad_request(format!("malformed query: {err}")))?;
    let mut query = ListQuery {
        page: 1,
        ..ListQuery::default()
    };
    for (key, value) in pairs {
        let value = value.trim().to_owned();
        if value.is_empty() {
            continue;
        }
        match key.as_str() {
            "type" => query.filter.saga_type = Some(value),
            "status" => query.filter.statuses.push(
                value
                    .parse::<SagaStatus>()
                    .map_err(PageError::bad_request)?,
            ),
            "step" => query.filter.current_step = Some(value),
            "version" => query.filter.definition_version = Some(value),
            "page" => {
                query.page = value
                    .parse()
                    .ok()
                    .filter(|p| *p >= 1 && *p <= 1_000_000)
                    .ok_or_else(|| PageError::bad_request(format!("`{value}` is not a page")))?;
            }
            other => return Err(PageError::bad_request(format!("unknown filter `{other}`"))),
        }
    }
    Ok(query)
}

async fn list_page(State(console): State<Shared>, RawQuery(raw): RawQuery) -> Page {
    let query = list_query(raw.as_deref())?;
    let size = console.options.page_size;
    let offset = (query.page - 1) * size;
    let sagas = console
        .store
        .find_sagas(&query.filter, size, offset)
        .await?;
    let total = console.store.count_sagas(&query.filter).await?;
    let types: Vec<String> = {
        let mut types: Vec<String> = console
            .store
            .definitions()
            .await?
            .into_iter()
            .map(|d| d.saga_type)
            .collect();
        types.dedup();
        types
    };
    Ok(pages::list(
        &console,
        &query,
        &sagas,
        total,
        &types,
        Timestamp::now(),
    ))
}

async fn load_view(console: &Console, id: &str) -> Result<SagaView, PageError> {
    let saga_id = saga_id(id)?;
    SagaView::load(&console.store, saga_id)
        .await?
        .ok_or_else(|| PageError::not_found(format!("no saga {saga_id}")))
}

async fn saga_page(State(console): State<Shared>, Path(id): Path<String>) -> Page {
    let view = load_view(&console, &id).await?;
    Ok(pages::saga(&console, &view, None))
}

async fn confirm_saga_action(
    State(console): State<Shared>,
    Path((id, action)): Path<(String, String)>,
) -> Page {
    let command = operator_command(&action)?;
    let view = load_view(&console, &id).await?;
    Ok(pages::confirm_saga(&console, &view, command))
}

async fn saga_action(
    State(console): State<Shared>,
    Path((id, action)): Path<(String, String)>,
    RawForm(body): RawForm,
) -> Page {
    let command = operator_command(&action)?;
    let saga_id = saga_id(&id)?;
    let (reason, actor) = confirmed(&console, &body)?;
    let request = OperatorRequest::new(command, actor, reason);
    let answer = actions::request(&console.store, saga_id, &request, console.options.wait).await?;
    let view = load_view(&console, &id).await?;
    let notice = match &answer {
        Answer::Applied(_) => pages::Notice::Done(format!("{command}: {answer}")),
        _ => pages::Notice::Problem(format!("{command}: {answer}")),
    };
    Ok(pages::saga(&console, &view, Some(notice)))
}

fn dead_letter_id(id: &str) -> Result<i64, PageError> {
    id.parse()
        .map_err(|_| PageError::bad_request(format!("`{id}` is not a dead letter id")))
}

/// The database named `name`: the sagas' own, or one of [`ConsoleOptions::databases`].
fn database<'c>(console: &'c Console, name: &str) -> Result<&'c SqlSagaStore, PageError> {
    console
        .databases()
        .find(|(n, _)| *n == name)
        .map(|(_, store)| store)
        .ok_or_else(|| PageError::not_found(format!("no database `{name}` in this console")))
}

async fn stored_letter(
    store: &SqlSagaStore,
    name: &str,
    id: i64,
) -> Result<saga_store::StoredDeadLetter, PageError> {
    store
        .stored_dead_letter(id)
        .await?
        .ok_or_else(|| PageError::not_found(format!("no dead letter {id} in `{name}`")))
}

async fn dead_letters_page(State(console): State<Shared>, RawQuery(raw): RawQuery) -> Page {
    let all = match raw.as_deref() {
        None | Some("") => false,
        Some("all=1") => true,
        Some(other) => return Err(PageError::bad_request(format!("unknown filter `{other}`"))),
    };
    let mut letters = Vec::new();
    for (name, store) in console.databases() {
        for letter in store.stored_dead_letters(0, 1_000, !all).await? {
            letters.push((name, letter));
        }
    }
    Ok(pages::dead_letters(&console, &letters, all))
}

async fn dead_letter_page(
    State(console): State<Shared>,
    Path((db, id)): Path<(String, String)>,
) -> Page {
    let store = database(&console, &db)?;
    let letter = stored_letter(store, &db, dead_letter_id(&id)?).await?;
    Ok(pages::dead_letter(&console, &db, &letter, None))
}

fn dead_letter_action_name(action: &str) -> Result<&'static str, PageError> {
    match action {
        "replay" => Ok("replay"),
        "discard" => Ok("discard"),
        other => Err(PageError::not_found(format!("no action `{other}`"))),
    }
}

async fn confirm_dead_letter_action(
    State(console): State<Shared>,
    Path((db, id, action)): Path<(String, String, String)>,
) -> Page {
    let action = dead_letter_action_name(&action)?;
    let store = database(&console, &db)?;
    let letter = stored_letter(store, &db, dead_letter_id(&id)?).await?;
    Ok(pages::confirm_dead_letter(&console, &db, &letter, action))
}

async fn dead_letter_action(
    State(console): State<Shared>,
    Path((db, id, action)): Path<(String, String, String)>,
    RawForm(body): RawForm,
) -> Page {
    let action = dead_letter_action_name(&action)?;
    let store = database(&console, &db)?;
    let id = dead_letter_id(&id)?;
    let (reason, actor) = confirmed(&console, &body)?;
    let notice = match action {
        "replay" => {
            let message = store
                .replay_dead_letter(id, &actor, &reason)
                .await
                .map_err(OpsError::from)?;
            format!("replayed as message {message}")
        }
        _ => {
            store
                .discard_dead_letter(id, &actor, &reason)
                .await
                .map_err(OpsError::from)?;
            "discarded".to_owned()
        }
    };
    let letter = stored_letter(store, &db, id).await?;
    Ok(pages::dead_letter(
        &console,
        &db,
        &letter,
        Some(pages::Notice::Done(notice)),
    ))
}

async fn stats_page(State(console): State<Shared>) -> Page {
    let stats = console.store.stats().await?;
    let versions = console.store.versions().await?;
    let mut others = Vec::new();
    for (name, store) in console.databases().skip(1) {
        others.push((name, store.stats().await?));
    }
    Ok(pages::stats(
        &console,
        &stats,
        &versions,
        &others,
        Timestamp::now(),
    ))
}

async fn login_page(State(console): State<Shared>) -> Markup {
    pages::login(&console, None)
}

async fn login(State(console): State<Shared>, RawForm(body): RawForm) -> Response {
    let fields = match form_fields(&body) {
        Ok(fields) => fields,
        Err(err) => return err.into_response(),
    };
    let form_ok = same(
        fields.get("form_token").map(String::as_str).unwrap_or(""),
        &console.form_token,
    );
    let Some(expected) = console
        .options
        .token
        .as_ref()
        .map(ExposeSecret::expose_secret)
    else {
        return Redirect::to(&pages::link(&console, "/")).into_response();
    };
    let given = fields.get("token").map(String::as_str).unwrap_or("");
    if !form_ok || !same(given, expected) {
        return (
            StatusCode::UNAUTHORIZED,
            pages::login(&console, Some("that token is not right")),
        )
            .into_response();
    }
    let path = match console.options.base_path.is_empty() {
        true => "/".to_owned(),
        false => console.options.base_path.clone(),
    };
    let cookie = format!("{COOKIE}={given}; Path={path}; HttpOnly; SameSite=Strict");
    Response::builder()
        .status(StatusCode::SEE_OTHER)
        .header(header::LOCATION, pages::link(&console, "/"))
        .header(header::SET_COOKIE, cookie)
        .body(Body::empty())
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

async fn not_found() -> PageError {
    PageError::not_found("no such page")
}

/// The message of an error page, for [`guard`] to render in the console's layout.
#[derive(Clone, Debug)]
struct ErrorMessage(String);

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let mut response = (self.status, self.message.clone()).into_response();
        response.extensions_mut().insert(ErrorMessage(self.message));
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_list_query_is_validated_not_guessed() {
        let query = list_query(Some(
            "type=CreateOrderSaga&status=failed&status=running&page=2",
        ))
        .expect("parses");
        assert_eq!(query.filter.saga_type.as_deref(), Some("CreateOrderSaga"));
        assert_eq!(
            query.filter.statuses,
            [SagaStatus::Failed, SagaStatus::Running]
        );
        assert_eq!(query.page, 2);
        assert_eq!(
            list_query(Some("status=&type=")).expect("empty is no filter"),
            ListQuery {
                page: 1,
                ..ListQuery::default()
            }
        );
        for bad in ["status=exploded", "page=0", "page=x", "colour=red", "%zz=1"] {
            let err = list_query(Some(bad)).expect_err(bad);
            assert_eq!(
                err.status,
                StatusCode::BAD_REQUEST,
                "{bad}: {}",
                err.message
            );
        }
    }

    #[test]
    fn posts_from_other_sites_are_refused() {
        let headers = |pairs: &[(&'static str, &'static str)]| {
            let mut map = HeaderMap::new();
            for (k, v) in pairs {
                map.insert(*k, header::HeaderValue::from_static(v));
            }
            map
        };
        assert!(same_site(&headers(&[("host", "127.0.0.1:8090")])));
        assert!(same_site(&headers(&[
            ("host", "127.0.0.1:8090"),
            ("origin", "http://127.0.0.1:8090"),
            ("sec-fetch-site", "same-origin"),
        ])));
        assert!(!same_site(&headers(&[
            ("host", "127.0.0.1:8090"),
            ("origin", "http://evil.example"),
        ])));
        assert!(!same_site(&headers(&[("sec-fetch-site", "cross-site")])));
    }

    #[test]
    fn tokens_are_read_from_a_bearer_header_or_the_cookie() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            header::HeaderValue::from_static("Bearer s3cret"),
        );
        assert_eq!(presented_token(&headers).as_deref(), Some("s3cret"));
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            header::HeaderValue::from_static("a=b; saga_console_token=abc"),
        );
        assert_eq!(presented_token(&headers).as_deref(), Some("abc"));
        assert!(same("abc", "abc") && !same("abc", "abd") && !same("abc", "ab"));
    }
}
