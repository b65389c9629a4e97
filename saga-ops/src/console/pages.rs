//! The console's pages, rendered with maud (which escapes every value it is given).

use axum::http::StatusCode;
use maud::{DOCTYPE, Markup, PreEscaped, html};
use saga_core::Timestamp;
use saga_core::engine::{OperatorCommand, SagaStatus};
use saga_store::{Resolution, StoreStats, StoredDeadLetter, StoredSaga, VersionStatus};

use super::{Console, ListQuery};
use crate::svg;
use crate::view::{SagaView, direction_name, format_age, format_time, last_reason, timeline_rows};

/// A banner above a page: what an action did.
pub(crate) enum Notice {
    /// It worked.
    Done(String),
    /// It was refused or is not applied yet.
    Problem(String),
}

const STYLE: &str = "
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#111827;background:#f9fafb}
header{background:#111827;color:#f9fafb;padding:10px 24px;display:flex;gap:24px;align-items:center}
header a{color:#e5e7eb;text-decoration:none}header a:hover{color:#fff}header strong{font-size:16px}
main{padding:18px 24px;max-width:1280px}
h1{font-size:20px;margin:4px 0 14px}h2{font-size:16px;margin:22px 0 8px}
table{border-collapse:collapse;width:100%;background:#fff;border:1px solid #e5e7eb}
th,td{text-align:left;padding:6px 10px;border-bottom:1px solid #e5e7eb;vertical-align:top}
th{background:#f3f4f6;font-weight:600;font-size:12px;text-transform:uppercase;color:#374151}
td.mono,code,pre{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:12px}
td.mono{white-space:nowrap}
pre{background:#fff;border:1px solid #e5e7eb;padding:10px;overflow:auto;max-height:420px}
.status{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;font-weight:600}
.status-running{background:#dbeafe;color:#1e40af}.status-compensating{background:#fef3c7;color:#92400e}
.status-completed{background:#dcfce7;color:#166534}.status-compensated{background:#e5e7eb;color:#374151}
.status-failed{background:#fee2e2;color:#991b1b}
form.filters{display:flex;gap:10px;flex-wrap:wrap;align-items:end;margin-bottom:14px}
label{display:flex;flex-direction:column;font-size:12px;color:#374151;gap:3px}
input,select,textarea{font:inherit;padding:5px 7px;border:1px solid #d1d5db;border-radius:4px;background:#fff}
button,.button{font:inherit;padding:6px 14px;border-radius:4px;border:1px solid #1d4ed8;background:#1d4ed8;color:#fff;cursor:pointer;text-decoration:none;display:inline-block}
.button.secondary{background:#fff;color:#1d4ed8}.button.danger,button.danger{background:#b91c1c;border-color:#b91c1c;color:#fff}
.notice{padding:10px 14px;border-radius:4px;margin-bottom:14px}.done{background:#dcfce7;color:#166534}.problem{background:#fee2e2;color:#991b1b}
dl.fields{display:grid;grid-template-columns:190px 1fr;gap:4px 12px;background:#fff;border:1px solid #e5e7eb;padding:12px;margin:0}
dl.fields dt{color:#6b7280}dl.fields dd{margin:0}
.actions{display:flex;gap:10px;margin:14px 0}
.graph{background:#fff;border:1px solid #e5e7eb;overflow:auto;padding:8px}
.pager{margin-top:10px;display:flex;gap:14px;align-items:center}
.muted{color:#6b7280}
";

/// `path` under the console's mount point (the list itself is the mount point).
pub(crate) fn link(console: &Console, path: &str) -> String {
    match (path, console.options.base_path.is_empty()) {
        ("/", false) => console.options.base_path.clone(),
        _ => format!("{}{path}", console.options.base_path),
    }
}

fn layout(console: &Console, title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                link rel="icon" href="data:,";
                title { (title) " · saga console" }
                style { (PreEscaped(STYLE)) }
            }
            body {
                header {
                    strong { "saga console" }
                    a href=(link(console, "/")) { "Sagas" }
                    a href=(link(console, "/dead-letters")) { "Dead letters" }
                    a href=(link(console, "/stats")) { "Stats" }
                }
                main { (body) }
            }
        }
    }
}

fn status_badge(status: SagaStatus) -> Markup {
    html! { span class=(format!("status status-{}", status.as_str())) { (status.as_str()) } }
}

fn notice(notice: Option<&Notice>) -> Markup {
    html! {
        @match notice {
            Some(Notice::Done(text)) => div.notice.done role="status" { (text) },
            Some(Notice::Problem(text)) => div.notice.problem role="alert" { (text) },
            None => {},
        }
    }
}

fn query_string(query: &ListQuery, page: usize) -> String {
    let mut pairs: Vec<(&str, String)> = Vec::new();
    if let Some(t) = &query.filter.saga_type {
        pairs.push(("type", t.clone()));
    }
    for status in &query.filter.statuses {
        pairs.push(("status", status.as_str().to_owned()));
    }
    if let Some(step) = &query.filter.current_step {
        pairs.push(("step", step.clone()));
    }
    if let Some(version) = &query.filter.definition_version {
        pairs.push(("version", version.clone()));
    }
    pairs.push(("page", page.to_string()));
    serde_urlencoded::to_string(pairs).unwrap_or_default()
}

const STATUSES: [SagaStatus; 5] = [
    SagaStatus::Running,
    SagaStatus::Compensating,
    SagaStatus::Completed,
    SagaStatus::Compensated,
    SagaStatus::Failed,
];

pub(crate) fn list(
    console: &Console,
    query: &ListQuery,
    sagas: &[StoredSaga],
    total: u64,
    types: &[String],
    now: Timestamp,
) -> Markup {
    let size = console.options.page_size;
    let first = (query.page - 1) * size;
    let status = query.filter.statuses.first().copied();
    let body = html! {
        h1 { "Sagas" }
        form.filters method="get" action=(link(console, "/")) {
            label { "Type"
                select name="type" {
                    option value="" { "any" }
                    @for t in types {
                        option value=(t) selected[query.filter.saga_type.as_deref() == Some(t.as_str())] { (t) }
                    }
                }
            }
            label { "Status"
                select name="status" {
                    option value="" { "any" }
                    @for s in STATUSES {
                        option value=(s.as_str()) selected[status == Some(s)] { (s.as_str()) }
                    }
                }
            }
            label { "Step" input name="step" value=(query.filter.current_step.as_deref().unwrap_or("")); }
            label { "Definition version" input name="version" value=(query.filter.definition_version.as_deref().unwrap_or("")); }
            button type="submit" { "Filter" }
            a.button.secondary href=(link(console, "/")) { "Clear" }
        }
        @if sagas.is_empty() {
            p.muted { "No sagas match." }
        } @else {
            table #sagas {
                thead { tr { th { "Id" } th { "Type" } th { "Status" } th { "Step" } th { "Direction" } th { "Age" } th { "Last reason" } } }
                tbody {
                    @for saga in sagas {
                        @let state = &saga.record.state;
                        tr data-saga=(state.saga_id) {
                            td.mono { a href=(link(console, &format!("/sagas/{}", state.saga_id))) { (state.saga_id) } }
                            td { (state.saga_type) }
                            td { (status_badge(state.status)) }
                            td { (state.current_step.as_deref().unwrap_or("–")) }
                            td { (direction_name(state)) }
                            td { (format_age(now, saga.created_at)) }
                            td { (last_reason(state).unwrap_or("")) }
                        }
                    }
                }
            }
            div.pager {
                span.muted { (first + 1) "–" (first + sagas.len()) " of " (total) }
                @if query.page > 1 {
                    a href=(format!("{}?{}", link(console, "/"), query_string(query, query.page - 1))) { "← newer" }
                }
                @if ((first + sagas.len()) as u64) < total {
                    a href=(format!("{}?{}", link(console, "/"), query_string(query, query.page + 1))) { "older →" }
                }
            }
        }
    };
    layout(console, "Sagas", body)
}

fn actions_for(console: &Console, view: &SagaView) -> Markup {
    let state = &view.saga.record.state;
    let id = state.saga_id;
    let commands: &[OperatorCommand] = match state.status {
        SagaStatus::Failed => &[OperatorCommand::Retry, OperatorCommand::Skip],
        SagaStatus::Running => &[OperatorCommand::Cancel],
        _ => &[],
    };
    html! {
        @if !commands.is_empty() {
            div.actions {
                @for command in commands {
                    a.button.danger[*command == OperatorCommand::Cancel]
                        href=(link(console, &format!("/sagas/{id}/{command}")))
                        data-action=(command.as_str()) { (command.as_str()) "…" }
                }
            }
        }
    }
}

pub(crate) fn saga(console: &Console, view: &SagaView, banner: Option<Notice>) -> Markup {
    let state = &view.saga.record.state;
    let data = serde_json::to_string_pretty(&view.saga.record.data).unwrap_or_default();
    let body = html! {
        (notice(banner.as_ref()))
        h1 { (state.saga_type) " " span.mono.muted { (state.saga_id) } " " (status_badge(state.status)) }
        (actions_for(console, view))
        dl.fields {
            dt { "Status" } dd #status { (state.status.as_str()) }
            dt { "Step" } dd { (state.current_step.as_deref().unwrap_or("–")) " (" (direction_name(state)) ")" }
            dt { "Attempt" } dd { (state.attempt) }
            dt { "Deadline" } dd { (state.deadline.map(format_time).unwrap_or_else(|| "–".to_owned())) }
            dt { "Completed steps" } dd { (state.completed_steps.join(", ")) }
            @if let Some(reason) = &state.compensation_reason { dt { "Turned back because" } dd { (reason) } }
            @if let Some(error) = &state.last_error { dt { "Last error" } dd #last-error { (error) } }
            dt { "Definition version" } dd.mono { (state.definition_version) }
            dt { "Started" } dd { (format_time(view.saga.created_at)) }
            dt { "Updated" } dd { (format_time(view.saga.updated_at)) }
        }
        h2 { "Graph" }
        @match &view.definition {
            Some(definition) => {
                @if view.definition_differs() {
                    p.muted { "Version " (state.definition_version) " is not recorded here; drawn on the newest." }
                }
                div.graph #graph { (PreEscaped(svg::render(&definition.graph, Some(&view.path)))) }
            }
            None => p.muted { "No orchestrator has recorded " (state.saga_type) " in this database yet." },
        }
        h2 { "Timeline" }
        table #timeline {
            thead { tr { th { "At" } th { "After" } th { "Event" } th { "Detail" } } }
            tbody {
                @for row in timeline_rows(&view.timeline) {
                    tr {
                        td.mono { (row.at) }
                        td.mono { (row.after) }
                        td { (row.kind) }
                        td { (row.detail) }
                    }
                }
            }
        }
        h2 { "Data" }
        pre #data { (data) }
    };
    layout(
        console,
        &format!("{} {}", state.saga_type, state.saga_id),
        body,
    )
}

fn reason_form(console: &Console, action: &str, back: &str, what: &str, danger: bool) -> Markup {
    html! {
        form method="post" action=(action) {
            input type="hidden" name="form_token" value=(console.form_token);
            p { label { "Why (recorded with the action)" textarea name="reason" rows="3" cols="70" required maxlength="1000" {} } }
            p { label { "Your name" input name="actor" maxlength="100" placeholder="console"; } }
            div.actions {
                button.danger[danger] type="submit" { "Confirm " (what) }
                a.button.secondary href=(back) { "Back" }
            }
        }
    }
}

pub(crate) fn confirm_saga(console: &Console, view: &SagaView, command: OperatorCommand) -> Markup {
    let state = &view.saga.record.state;
    let explain = match command {
        OperatorCommand::Retry => {
            "Sends the current step (or compensation) again, with a fresh retry budget."
        }
        OperatorCommand::Skip => {
            "Treats the current step (or compensation) as done and moves on. Use it only when you have made sure its effect happened (or does not matter)."
        }
        OperatorCommand::Cancel => {
            "Aborts the saga and compensates the steps that ran, in reverse order. Refused once it has reached its pivot."
        }
    };
    let action = link(console, &format!("/sagas/{}/{command}", state.saga_id));
    let body = html! {
        h1 { (command.as_str()) " " (state.saga_type) " " span.mono.muted { (state.saga_id) } }
        p { (explain) }
        p { "It is " (status_badge(state.status)) " at " strong { (state.current_step.as_deref().unwrap_or("–")) } "." }
        (reason_form(console, &action, &link(console, &format!("/sagas/{}", state.saga_id)), command.as_str(), command != OperatorCommand::Retry))
    };
    layout(console, &format!("{command} {}", state.saga_id), body)
}

fn resolution(letter: &StoredDeadLetter) -> Markup {
    html! {
        @match &letter.resolution {
            None => span.muted { "open" },
            Some(Resolution::Replayed { at, message_id, by, reason }) => span { "replayed as " code { (message_id) } " by " (by) " at " (format_time(*at)) ": " (reason) },
            Some(Resolution::Discarded { at, by, reason }) => span { "discarded by " (by) " at " (format_time(*at)) ": " (reason) },
            Some(other) => span { (format!("{other:?}")) },
        }
    }
}

pub(crate) fn dead_letters(
    console: &Console,
    letters: &[(&str, StoredDeadLetter)],
    all: bool,
) -> Markup {
    let body = html! {
        h1 { "Dead letters" }
        p {
            @if all { a href=(link(console, "/dead-letters")) { "Show open ones only" } }
            @else { a href=(link(console, "/dead-letters?all=1")) { "Show replayed and discarded too" } }
        }
        @if letters.is_empty() {
            p.muted { "No dead letters." }
        } @else {
            table #dead-letters {
                thead { tr { th { "Database" } th { "Id" } th { "At" } th { "Channel" } th { "Type" } th { "Reason" } th { "Resolved" } } }
                tbody {
                    @for (db, letter) in letters {
                        @let dead = &letter.dead_letter;
                        tr data-dead-letter=(letter.id) data-database=(db) {
                            td { (db) }
                            td { a href=(link(console, &format!("/dead-letters/{db}/{}", letter.id))) { (letter.id) } }
                            td.mono { (format_time(dead.at)) }
                            td { (dead.message.destination) }
                            td { (dead.message.headers.get(saga_core::message::headers::MESSAGE_TYPE).unwrap_or("–")) }
                            td { (dead.reason) }
                            td { (resolution(letter)) }
                        }
                    }
                }
            }
        }
    };
    layout(console, "Dead letters", body)
}

pub(crate) fn dead_letter(
    console: &Console,
    db: &str,
    letter: &StoredDeadLetter,
    banner: Option<Notice>,
) -> Markup {
    let dead = &letter.dead_letter;
    let payload = serde_json::from_str::<serde_json::Value>(&dead.message.payload)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or_else(|| dead.message.payload.clone());
    let here = format!("/dead-letters/{db}/{}", letter.id);
    let body = html! {
        (notice(banner.as_ref()))
        h1 { "Dead letter " (letter.id) " " span.muted { "in " (db) } }
        @if letter.resolution.is_none() {
            div.actions {
                a.button href=(link(console, &format!("{here}/replay"))) data-action="replay" { "replay…" }
                a.button.danger href=(link(console, &format!("{here}/discard"))) data-action="discard" { "discard…" }
            }
        }
        dl.fields {
            dt { "At" } dd { (format_time(dead.at)) }
            dt { "Consumer" } dd { (dead.consumer) }
            dt { "Channel" } dd { (dead.message.destination) }
            dt { "Message" } dd.mono { (dead.message.id) }
            dt { "Reason" } dd { (dead.reason) }
            dt { "Resolved" } dd #resolution { (resolution(letter)) }
        }
        h2 { "Headers" }
        table { tbody { @for (name, value) in dead.message.headers.iter() { tr { td.mono { (name) } td.mono { (value) } } } } }
        h2 { "Payload" }
        pre { (payload) }
    };
    layout(console, &format!("Dead letter {}", letter.id), body)
}

pub(crate) fn confirm_dead_letter(
    console: &Console,
    db: &str,
    letter: &StoredDeadLetter,
    action: &str,
) -> Markup {
    let explain = match action {
        "replay" => {
            "Puts the message back on its channel as a new message, with a fresh delivery count. It is replayed at most once."
        }
        _ => "Gives the message up for good, recording why.",
    };
    let here = format!("/dead-letters/{db}/{}", letter.id);
    let target = link(console, &format!("{here}/{action}"));
    let body = html! {
        h1 { (action) " dead letter " (letter.id) " " span.muted { "in " (db) } }
        p { (explain) }
        p { "Channel " strong { (letter.dead_letter.message.destination) } ": " (letter.dead_letter.reason) }
        (reason_form(console, &target, &link(console, &here), action, action == "discard"))
    };
    layout(
        console,
        &format!("{action} dead letter {}", letter.id),
        body,
    )
}

fn backlog(console: &Console, name: &str, stats: &StoreStats, now: Timestamp) -> Markup {
    html! {
        tr {
            td { (name) }
            td { (stats.outbox_backlog) @if let Some(at) = stats.outbox_oldest { span.muted { " (oldest " (format_age(now, at)) ")" } } }
            td { (stats.queue.iter().map(|c| c.messages).sum::<u64>())
                @for channel in &stats.queue { br; span.muted { (channel.channel) ": " (channel.messages) } } }
            td { a href=(link(console, "/dead-letters")) { (stats.dead_letters) " open" } }
        }
    }
}

pub(crate) fn stats(
    console: &Console,
    stats: &StoreStats,
    versions: &[VersionStatus],
    others: &[(&str, StoreStats)],
    now: Timestamp,
) -> Markup {
    let body = html! {
        h1 { "Stats" }
        table #stats {
            thead { tr { th { "Type" } th { "Status" } th { "Sagas" } } }
            tbody {
                @for (saga_type, status, n) in &stats.sagas {
                    tr { td { a href=(format!("{}?{}", link(console, "/"), serde_urlencoded::to_string([("type", saga_type.as_str()), ("status", status.as_str())]).unwrap_or_default())) { (saga_type) } } td { (status_badge(*status)) } td { (n) } }
                }
            }
        }
        dl.fields style="margin-top:14px" {
            dt { "Oldest running" }
            dd { @match &stats.oldest_running {
                Some((id, saga_type, at)) => { a.mono href=(link(console, &format!("/sagas/{id}"))) { (id) } " (" (saga_type) ", " (format_age(now, *at)) ")" },
                None => "–",
            } }
        }
        h2 { "Definition versions" }
        table #versions {
            thead { tr { th { "Type" } th { "Version" } th { "Running" } th { "Parked" } th { "Registered by the newest start" } } }
            tbody {
                @for v in versions {
                    tr {
                        td { (v.saga_type) }
                        td.mono { a href=(format!("{}?{}", link(console, "/"), serde_urlencoded::to_string([("type", v.saga_type.as_str()), ("version", v.version.as_str())]).unwrap_or_default())) { (v.version) } }
                        td { (v.running) }
                        td { (v.parked) }
                        td { @match &v.role {
                            Some(role) => (role.to_string()),
                            None if v.is_stranded() => span.problem { "no — stranded: deploy a build that keeps this version (retired) or migrates it" },
                            None => span.muted { "no" },
                        } }
                    }
                }
            }
        }
        h2 { "What waits, per database" }
        table #backlogs {
            thead { tr { th { "Database" } th { "Outbox backlog" } th { "Queue depth" } th { "Dead letters" } } }
            tbody {
                (backlog(console, &console.options.name, stats, now))
                @for (name, other) in others { (backlog(console, name, other, now)) }
            }
        }
    };
    layout(console, "Stats", body)
}

pub(crate) fn login(console: &Console, problem: Option<&str>) -> Markup {
    let body = html! {
        h1 { "Sign in" }
        @if let Some(problem) = problem { div.notice.problem { (problem) } }
        form method="post" action=(link(console, "/login")) {
            input type="hidden" name="form_token" value=(console.form_token);
            p { label { "Console token" input type="password" name="token" required autocomplete="current-password"; } }
            button type="submit" { "Sign in" }
        }
    };
    layout(console, "Sign in", body)
}

pub(crate) fn error(console: &Console, status: StatusCode, message: &str) -> Markup {
    let body = html! {
        h1 { (status.as_u16()) " " (status.canonical_reason().unwrap_or("")) }
        p #error { (message) }
        p { a href=(link(console, "/")) { "Back to the sagas" } }
    };
    layout(console, status.canonical_reason().unwrap_or("error"), body)
}
