//! How the `saga` command prints: aligned tables for people, JSON for scripts.

use std::io::{self, Write};

use saga_core::Timestamp;
use saga_store::nats::NatsDeadLetter;
use saga_store::{Resolution, StoreStats, StoredDeadLetter, StoredSaga, VersionStatus};
use serde_json::json;

use crate::view::{
    SagaSummary, SagaView, direction_name, format_age, format_time, last_reason, timeline_rows,
};

/// Prints `rows` under `header`, each column as wide as its widest cell.
fn table(out: &mut dyn Write, header: &[&str], rows: &[Vec<String>]) -> io::Result<()> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |out: &mut dyn Write, cells: Vec<&str>| -> io::Result<()> {
        let last = cells.len().saturating_sub(1);
        let mut text = String::new();
        for (i, (cell, width)) in cells.iter().zip(&widths).enumerate() {
            text.push_str(cell);
            if i < last {
                let pad = width - cell.chars().count() + 2;
                text.extend(std::iter::repeat_n(' ', pad));
            }
        }
        writeln!(out, "{}", text.trim_end())
    };
    line(out, header.to_vec())?;
    for row in rows {
        line(out, row.iter().map(String::as_str).collect())?;
    }
    Ok(())
}

/// At most `max` characters of `text`, with `…` when cut.
fn clip(text: &str, max: usize) -> String {
    match text.chars().count() > max {
        true => format!("{}…", text.chars().take(max - 1).collect::<String>()),
        false => text.to_owned(),
    }
}

fn json_line(out: &mut dyn Write, value: &impl serde::Serialize) -> io::Result<()> {
    serde_json::to_writer_pretty(&mut *out, value).map_err(io::Error::other)?;
    writeln!(out)
}

pub(super) fn sagas_table(
    out: &mut dyn Write,
    sagas: &[StoredSaga],
    now: Timestamp,
    offset: usize,
    total: u64,
    page: u32,
) -> io::Result<()> {
    if sagas.is_empty() {
        return writeln!(out, "no sagas match ({total} in all on this filter)");
    }
    let rows: Vec<Vec<String>> = sagas
        .iter()
        .map(|saga| {
            let state = &saga.record.state;
            vec![
                state.saga_id.to_string(),
                state.saga_type.clone(),
                state.status.to_string(),
                state.current_step.clone().unwrap_or_else(|| "-".to_owned()),
                direction_name(state).to_owned(),
                format_age(now, saga.created_at),
                clip(last_reason(state).unwrap_or("-"), 70),
            ]
        })
        .collect();
    table(
        out,
        &[
            "ID",
            "TYPE",
            "STATUS",
            "STEP",
            "DIRECTION",
            "AGE",
            "LAST REASON",
        ],
        &rows,
    )?;
    let shown_to = offset + sagas.len();
    let more = match (shown_to as u64) < total {
        true => format!("; --page {} for more", page + 1),
        false => String::new(),
    };
    writeln!(out, "\n{}–{shown_to} of {total}{more}", offset + 1)
}

pub(super) fn sagas_json(out: &mut dyn Write, sagas: &[StoredSaga]) -> io::Result<()> {
    let summaries: Vec<SagaSummary<'_>> = sagas.iter().map(SagaSummary::of).collect();
    json_line(out, &summaries)
}

pub(super) fn saga_text(out: &mut dyn Write, view: &SagaView) -> io::Result<()> {
    let state = &view.saga.record.state;
    let field = |out: &mut dyn Write, name: &str, value: &str| writeln!(out, "{name:<20}{value}");
    field(out, "saga", &state.saga_id.to_string())?;
    field(out, "type", &state.saga_type)?;
    field(out, "definition version", &state.definition_version)?;
    field(out, "status", state.status.as_str())?;
    field(out, "direction", direction_name(state))?;
    field(out, "step", state.current_step.as_deref().unwrap_or("-"))?;
    field(out, "attempt", &state.attempt.to_string())?;
    let deadline = state.deadline.map(format_time);
    field(out, "deadline", deadline.as_deref().unwrap_or("-"))?;
    field(out, "completed steps", &state.completed_steps.join(", "))?;
    if let Some(reason) = &state.compensation_reason {
        field(out, "turned back because", reason)?;
    }
    if let Some(error) = &state.last_error {
        field(out, "last error", error)?;
    }
    field(out, "created", &format_time(view.saga.created_at))?;
    field(out, "updated", &format_time(view.saga.updated_at))?;
    field(out, "version", &view.saga.record.version.to_string())?;
    writeln!(out, "\ndata")?;
    let data = serde_json::to_string_pretty(&view.saga.record.data).unwrap_or_default();
    for line in data.lines() {
        writeln!(out, "  {line}")?;
    }
    writeln!(out, "\ntimeline")?;
    let rows: Vec<Vec<String>> = timeline_rows(&view.timeline)
        .into_iter()
        .map(|row| vec![row.at, row.after, row.kind, row.detail])
        .collect();
    table(out, &["AT", "AFTER", "EVENT", "DETAIL"], &rows)
}

pub(super) fn saga_json(out: &mut dyn Write, view: &SagaView) -> io::Result<()> {
    let timeline: Vec<serde_json::Value> = view
        .timeline
        .iter()
        .map(|entry| json!({ "at": format_time(entry.at), "event": entry.event }))
        .collect();
    json_line(
        out,
        &json!({
            "saga": SagaSummary::of(&view.saga),
            "state": view.saga.record.state,
            "data": view.saga.record.data,
            "version": view.saga.record.version,
            "timeline": timeline,
            "path": view.path,
        }),
    )
}

fn resolution(letter: &StoredDeadLetter) -> String {
    match &letter.resolution {
        None => "-".to_owned(),
        Some(Resolution::Replayed {
            at, message_id, by, ..
        }) => format!("replayed as {message_id} by {by} at {}", format_time(*at)),
        Some(Resolution::Discarded { at, by, .. }) => {
            format!("discarded by {by} at {}", format_time(*at))
        }
        Some(other) => format!("{other:?}"),
    }
}

fn message_type(headers: &saga_core::Headers) -> String {
    headers
        .get(saga_core::message::headers::MESSAGE_TYPE)
        .unwrap_or("-")
        .to_owned()
}

pub(super) fn dead_letters_table(
    out: &mut dyn Write,
    letters: &[StoredDeadLetter],
    from_nats: &[NatsDeadLetter],
) -> io::Result<()> {
    if letters.is_empty() && from_nats.is_empty() {
        return writeln!(out, "no dead letters");
    }
    let mut rows: Vec<Vec<String>> = letters
        .iter()
        .map(|letter| {
            let dead = &letter.dead_letter;
            vec![
                letter.id.to_string(),
                format_time(dead.at),
                dead.message.destination.clone(),
                message_type(&dead.message.headers),
                clip(&dead.reason, 60),
                resolution(letter),
            ]
        })
        .collect();
    rows.extend(from_nats.iter().map(|letter| {
        vec![
            format!("nats:{}", letter.sequence),
            "-".to_owned(),
            letter.channel.clone(),
            letter
                .message
                .as_ref()
                .map(|m| message_type(&m.headers))
                .unwrap_or_else(|| "(unreadable)".to_owned()),
            clip(&letter.reason, 60),
            "-".to_owned(),
        ]
    }));
    table(
        out,
        &["ID", "AT", "CHANNEL", "TYPE", "REASON", "RESOLVED"],
        &rows,
    )
}

pub(super) fn dead_letters_json(
    out: &mut dyn Write,
    letters: &[StoredDeadLetter],
    from_nats: &[NatsDeadLetter],
) -> io::Result<()> {
    let mut rows: Vec<serde_json::Value> = letters.iter().map(dead_letter_value).collect();
    rows.extend(from_nats.iter().map(|letter| {
        json!({
            "id": format!("nats:{}", letter.sequence),
            "channel": letter.channel,
            "reason": letter.reason,
            "message_id": letter.message.as_ref().map(|m| m.id.to_string()),
            "headers": letter.message.as_ref().map(|m| &m.headers),
            "payload": letter.message.as_ref().map(|m| &m.payload),
            "resolved": null,
        })
    }));
    json_line(out, &rows)
}

pub(super) fn nats_dead_letter_text(
    out: &mut dyn Write,
    letter: &NatsDeadLetter,
) -> io::Result<()> {
    writeln!(out, "{:<12}nats:{}", "dead letter", letter.sequence)?;
    writeln!(out, "{:<12}{}", "channel", letter.channel)?;
    writeln!(out, "{:<12}{}", "reason", letter.reason)?;
    let Some(message) = &letter.message else {
        return writeln!(out, "\nthe message could not be read (or was cut to fit)");
    };
    writeln!(out, "{:<12}{}", "message", message.id)?;
    message_body(out, message)
}

fn message_body(out: &mut dyn Write, message: &saga_core::Message) -> io::Result<()> {
    writeln!(out, "\nheaders")?;
    for (name, value) in message.headers.iter() {
        writeln!(out, "  {name}: {value}")?;
    }
    writeln!(out, "\npayload")?;
    let payload = serde_json::from_str::<serde_json::Value>(&message.payload)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or_else(|| message.payload.clone());
    for line in payload.lines() {
        writeln!(out, "  {line}")?;
    }
    Ok(())
}

fn dead_letter_value(letter: &StoredDeadLetter) -> serde_json::Value {
    let dead = &letter.dead_letter;
    json!({
        "id": letter.id,
        "at": format_time(dead.at),
        "consumer": dead.consumer,
        "message_id": dead.message.id.to_string(),
        "channel": dead.message.destination,
        "headers": dead.message.headers,
        "payload": dead.message.payload,
        "reason": dead.reason,
        "resolved": letter.resolution.as_ref().map(|_| resolution(letter)),
    })
}

pub(super) fn dead_letter_text(out: &mut dyn Write, letter: &StoredDeadLetter) -> io::Result<()> {
    let dead = &letter.dead_letter;
    writeln!(out, "{:<12}{}", "dead letter", letter.id)?;
    writeln!(out, "{:<12}{}", "at", format_time(dead.at))?;
    writeln!(out, "{:<12}{}", "consumer", dead.consumer)?;
    writeln!(out, "{:<12}{}", "channel", dead.message.destination)?;
    writeln!(out, "{:<12}{}", "message", dead.message.id)?;
    writeln!(out, "{:<12}{}", "reason", dead.reason)?;
    writeln!(out, "{:<12}{}", "resolved", resolution(letter))?;
    if let Some(Resolution::Replayed { reason, .. } | Resolution::Discarded { reason, .. }) =
        &letter.resolution
    {
        writeln!(out, "{:<12}{reason}", "because")?;
    }
    message_body(out, &dead.message)
}

pub(super) fn stats_text(
    out: &mut dyn Write,
    stats: &StoreStats,
    now: Timestamp,
) -> io::Result<()> {
    let rows: Vec<Vec<String>> = stats
        .sagas
        .iter()
        .map(|(saga_type, status, n)| vec![saga_type.clone(), status.to_string(), n.to_string()])
        .collect();
    if rows.is_empty() {
        writeln!(out, "no sagas")?;
    } else {
        table(out, &["TYPE", "STATUS", "SAGAS"], &rows)?;
    }
    writeln!(out)?;
    match &stats.oldest_running {
        Some((id, saga_type, at)) => writeln!(
            out,
            "oldest running   {id} ({saga_type}, started {} ago)",
            format_age(now, *at)
        )?,
        None => writeln!(out, "oldest running   -")?,
    }
    let oldest = stats
        .outbox_oldest
        .map(|at| format!(" (oldest {} ago)", format_age(now, at)))
        .unwrap_or_default();
    writeln!(out, "outbox backlog   {}{oldest}", stats.outbox_backlog)?;
    let queued: u64 = stats.queue.iter().map(|c| c.messages).sum();
    writeln!(out, "queue depth      {queued}")?;
    for channel in &stats.queue {
        writeln!(out, "  {:<30}{}", channel.channel, channel.messages)?;
    }
    writeln!(out, "dead letters     {} unresolved", stats.dead_letters)
}

pub(super) fn stats_json(out: &mut dyn Write, stats: &StoreStats) -> io::Result<()> {
    let sagas: Vec<serde_json::Value> = stats
        .sagas
        .iter()
        .map(|(t, s, n)| json!({ "saga_type": t, "status": s, "count": n }))
        .collect();
    let queue: Vec<serde_json::Value> = stats
        .queue
        .iter()
        .map(|c| json!({ "channel": c.channel, "messages": c.messages }))
        .collect();
    json_line(
        out,
        &json!({
            "sagas": sagas,
            "oldest_running": stats.oldest_running.as_ref().map(|(id, t, at)| json!({
                "saga_id": id, "saga_type": t, "created_at": format_time(*at)
            })),
            "outbox_backlog": stats.outbox_backlog,
            "queue": queue,
            "dead_letters": stats.dead_letters,
        }),
    )
}

fn registered(version: &VersionStatus) -> String {
    match (&version.role, version.registered_at) {
        (Some(role), _) => role.to_string(),
        (None, Some(at)) => format!("not by the newest start (last {})", format_time(at)),
        (None, None) => "never registered here".to_owned(),
    }
}

pub(super) fn versions_text(out: &mut dyn Write, versions: &[VersionStatus]) -> io::Result<()> {
    if versions.is_empty() {
        return writeln!(out, "no saga versions recorded and no sagas in flight");
    }
    let rows: Vec<Vec<String>> = versions
        .iter()
        .map(|v| {
            vec![
                v.saga_type.clone(),
                v.version.clone(),
                v.running.to_string(),
                v.parked.to_string(),
                registered(v),
            ]
        })
        .collect();
    table(
        out,
        &["TYPE", "VERSION", "RUNNING", "PARKED", "REGISTERED"],
        &rows,
    )
}

pub(super) fn versions_json(out: &mut dyn Write, versions: &[VersionStatus]) -> io::Result<()> {
    let versions: Vec<serde_json::Value> = versions
        .iter()
        .map(|v| {
            json!({
                "saga_type": v.saga_type,
                "version": v.version,
                "running": v.running,
                "parked": v.parked,
                "role": v.role.as_ref().map(ToString::to_string),
                "registered_at": v.registered_at.map(format_time),
                "stranded": v.is_stranded(),
            })
        })
        .collect();
    json_line(out, &versions)
}
