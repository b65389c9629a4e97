//! A saga as operators look at it: its row, its timeline, the definition it runs and its
//! path through the definition's graph — and how times and timeline entries read.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use saga_core::engine::{HistoryEvent, SagaState};
use saga_core::graph::SagaPath;
use saga_core::ports::{HistoryRecord, SagaStore};
use saga_core::{SagaId, Timestamp};
use saga_store::{SqlSagaStore, StoredDefinition, StoredSaga};
use serde::Serialize;

use crate::OpsError;

/// A saga with everything there is to show about it.
#[derive(Clone, Debug)]
pub struct SagaView {
    /// Its row.
    pub saga: StoredSaga,
    /// Its timeline, oldest first.
    pub timeline: Vec<HistoryRecord>,
    /// The definition it runs, if an orchestrator recorded it here.
    pub definition: Option<StoredDefinition>,
    /// Its path through the definition's graph.
    pub path: SagaPath,
}

impl SagaView {
    /// Loads saga `saga_id`; `None` if there is none.
    pub async fn load(store: &SqlSagaStore, saga_id: SagaId) -> Result<Option<Self>, OpsError> {
        let Some(saga) = store.find_saga(saga_id).await? else {
            return Ok(None);
        };
        let timeline = store.history(saga_id).await?;
        let state = &saga.record.state;
        let definition = store
            .definition(&state.saga_type, Some(&state.definition_version))
            .await?;
        let path = SagaPath::from_timeline(timeline.iter().map(|h| &h.event), &saga.record.state);
        Ok(Some(Self {
            saga,
            timeline,
            definition,
            path,
        }))
    }

    /// The definition's graph with this saga's path, in Mermaid (`dot`: Graphviz DOT).
    pub fn graph_text(&self, dot: bool) -> Option<String> {
        let graph = &self.definition.as_ref()?.graph;
        Some(match dot {
            true => graph.to_dot(Some(&self.path)),
            false => graph.to_mermaid(Some(&self.path)),
        })
    }

    /// Whether the definition recorded here is not the version the saga started with.
    pub fn definition_differs(&self) -> bool {
        self.definition
            .as_ref()
            .is_some_and(|d| d.version != self.saga.record.state.definition_version)
    }
}

/// Why the saga is where it is: its last error, or why it turned back.
pub fn last_reason(state: &SagaState) -> Option<&str> {
    state
        .last_error
        .as_deref()
        .or(state.compensation_reason.as_deref())
}

fn system_time(at: Timestamp) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(at.as_millis())
}

/// `at` as RFC 3339 in UTC, to the millisecond.
pub fn format_time(at: Timestamp) -> String {
    humantime::format_rfc3339_millis(system_time(at)).to_string()
}

/// How long before `now` `at` was, to the second (`3m 12s`), or `0s`.
pub fn format_age(now: Timestamp, at: Timestamp) -> String {
    format_duration(Duration::from_millis(
        now.as_millis().saturating_sub(at.as_millis()),
    ))
}

/// `duration` to the second (`1h 3m 12s`), or in milliseconds under a second.
pub fn format_duration(duration: Duration) -> String {
    if duration < Duration::from_secs(1) {
        return format!("{}ms", duration.as_millis());
    }
    humantime::format_duration(Duration::from_secs(duration.as_secs())).to_string()
}

/// A timeline entry as shown: when, how long after the one before, what, the details.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimelineRow {
    /// When (RFC 3339).
    pub at: String,
    /// `+12ms` after the entry before (empty for the first).
    pub after: String,
    /// What happened, in a few words.
    pub kind: String,
    /// The details.
    pub detail: String,
}

/// `timeline` as rows to show.
pub fn timeline_rows(timeline: &[HistoryRecord]) -> Vec<TimelineRow> {
    let mut previous: Option<Timestamp> = None;
    timeline
        .iter()
        .map(|entry| {
            let after = previous
                .map(|p| {
                    let gap = entry.at.as_millis().saturating_sub(p.as_millis());
                    format!("+{}", format_duration(Duration::from_millis(gap)))
                })
                .unwrap_or_default();
            previous = Some(entry.at);
            let (kind, detail) = describe(&entry.event);
            TimelineRow {
                at: format_time(entry.at),
                after,
                kind,
                detail,
            }
        })
        .collect()
}

/// One timeline entry as a short kind and a detail line.
pub fn describe(event: &HistoryEvent) -> (String, String) {
    let by = |actor: &str, reason: &str| match (actor.is_empty(), reason.is_empty()) {
        (true, true) => String::new(),
        (false, true) => format!("by {actor}"),
        (true, false) => format!("because {reason}"),
        (false, false) => format!("by {actor}: {reason}"),
    };
    let (kind, detail) = match event {
        HistoryEvent::Started => ("started".to_owned(), String::new()),
        HistoryEvent::CommandSent {
            step,
            command_type,
            channel,
            compensation,
            attempt,
        } => (
            match compensation {
                true => "compensation sent",
                false => "command sent",
            }
            .to_owned(),
            format!("{command_type} → {channel} (step {step}, attempt {attempt})"),
        ),
        HistoryEvent::StepSucceeded { step } => ("step succeeded".to_owned(), step.clone()),
        HistoryEvent::StepSkipped { step } => ("step skipped".to_owned(), step.clone()),
        HistoryEvent::StepFailed { step, reason } => {
            ("step failed".to_owned(), format!("{step}: {reason}"))
        }
        HistoryEvent::TimedOut {
            step,
            attempt,
            compensation,
        } => (
            "timed out".to_owned(),
            format!(
                "{}{step}, attempt {attempt}",
                if *compensation {
                    "compensation of "
                } else {
                    ""
                }
            ),
        ),
        HistoryEvent::RetryScheduled { step, attempt, due } => (
            "retry scheduled".to_owned(),
            format!("{step}, attempt {attempt} at {}", format_time(*due)),
        ),
        HistoryEvent::CompensationStarted { step, reason } => (
            "compensation started".to_owned(),
            format!("at {step}: {reason}"),
        ),
        HistoryEvent::StepCompensated { step } => ("step compensated".to_owned(), step.clone()),
        HistoryEvent::CompensationFailed { step, reason } => (
            "compensation failed".to_owned(),
            format!("{step}: {reason}"),
        ),
        HistoryEvent::Parked { step, reason } => {
            ("parked".to_owned(), format!("at {step}: {reason}"))
        }
        HistoryEvent::Operator {
            command,
            step,
            actor,
            reason,
        } => (
            format!("operator {command}"),
            format!("at {step} {}", by(actor, reason))
                .trim_end()
                .to_owned(),
        ),
        HistoryEvent::OperatorRefused {
            command,
            actor,
            reason,
            refused,
        } => (
            format!("operator {command} refused"),
            format!("{} — refused: {refused}", by(actor, reason)),
        ),
        HistoryEvent::Forked { steps, .. } => ("parallel".to_owned(), steps.join(" ‖ ")),
        HistoryEvent::Joined { steps, .. } => ("joined".to_owned(), steps.join(", ")),
        HistoryEvent::Migrated { from, to } => ("migrated".to_owned(), format!("{from} → {to}")),
        HistoryEvent::Finished { status } => ("finished".to_owned(), status.to_string()),
        other => ("event".to_owned(), format!("{other:?}")),
    };
    (kind, detail)
}

/// A saga as `saga list --json` prints it.
#[derive(Clone, Debug, Serialize)]
pub struct SagaSummary<'s> {
    /// The id.
    pub saga_id: SagaId,
    /// The type.
    pub saga_type: &'s str,
    /// The definition version.
    pub definition_version: &'s str,
    /// The status.
    pub status: &'s str,
    /// The current step.
    pub current_step: Option<&'s str>,
    /// `forward` or `backward`.
    pub direction: &'s str,
    /// Attempts at the current step.
    pub attempt: u32,
    /// Why it is where it is.
    pub last_reason: Option<&'s str>,
    /// When it started (RFC 3339).
    pub created_at: String,
    /// When it last changed (RFC 3339).
    pub updated_at: String,
}

impl<'s> SagaSummary<'s> {
    /// The summary of `saga`.
    pub fn of(saga: &'s StoredSaga) -> Self {
        let state = &saga.record.state;
        Self {
            saga_id: state.saga_id,
            saga_type: &state.saga_type,
            definition_version: &state.definition_version,
            status: state.status.as_str(),
            current_step: state.current_step.as_deref(),
            direction: direction_name(state),
            attempt: state.attempt,
            last_reason: last_reason(state),
            created_at: format_time(saga.created_at),
            updated_at: format_time(saga.updated_at),
        }
    }
}

/// `forward` or `backward`.
pub fn direction_name(state: &SagaState) -> &'static str {
    match state.direction {
        saga_core::engine::Direction::Forward => "forward",
        saga_core::engine::Direction::Backward => "backward",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_ages_read_naturally() {
        assert_eq!(format_time(Timestamp(0)), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_age(Timestamp(200_500), Timestamp(8_000)), "3m 12s");
        assert_eq!(format_age(Timestamp(1), Timestamp(5)), "0ms");
        assert_eq!(format_duration(Duration::from_millis(12)), "12ms");
    }
}
