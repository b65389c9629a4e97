//! Conversions between saga-core's values and table columns.

use saga_core::engine::{Direction, Pending, SagaState, SagaStatus, SagaTimer};
use saga_core::ports::{DeadLetter, SagaRecord, StalledSaga, StoreError, TimerRecord};
use saga_core::{Headers, Message, MessageId, RequestId, SagaId, Timestamp};
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::error::corrupt;

/// `i64` for a `u64` column value (values beyond `i64::MAX` never occur: they are
/// milliseconds, sequences and counters).
pub(crate) fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// `u64` from an `i64` column value.
pub(crate) fn to_u64(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

pub(crate) fn status_name(status: SagaStatus) -> &'static str {
    status.as_str()
}

fn parse_status(name: &str) -> Result<SagaStatus, StoreError> {
    Ok(match name {
        "created" => SagaStatus::Created,
        "running" => SagaStatus::Running,
        "compensating" => SagaStatus::Compensating,
        "completed" => SagaStatus::Completed,
        "compensated" => SagaStatus::Compensated,
        "failed" => SagaStatus::Failed,
        other => return Err(corrupt("saga status", format!("unknown status {other:?}"))),
    })
}

pub(crate) fn direction_name(direction: Direction) -> &'static str {
    match direction {
        Direction::Forward => "forward",
        Direction::Backward => "backward",
    }
}

fn parse_direction(name: &str) -> Result<Direction, StoreError> {
    match name {
        "forward" => Ok(Direction::Forward),
        "backward" => Ok(Direction::Backward),
        other => Err(corrupt(
            "saga direction",
            format!("unknown direction {other:?}"),
        )),
    }
}

/// `(kind, request id)` columns of a pending wait.
pub(crate) fn pending_columns(pending: Option<Pending>) -> (Option<&'static str>, Option<i64>) {
    match pending {
        None => (None, None),
        Some(Pending::Reply { request_id }) => (Some("reply"), Some(to_i64(request_id.0))),
        Some(Pending::Retry { request_id }) => (Some("retry"), Some(to_i64(request_id.0))),
    }
}

fn parse_pending(
    kind: Option<String>,
    request: Option<i64>,
) -> Result<Option<Pending>, StoreError> {
    match (kind.as_deref(), request) {
        (None, _) => Ok(None),
        (Some("reply"), Some(id)) => Ok(Some(Pending::Reply {
            request_id: RequestId(to_u64(id)),
        })),
        (Some("retry"), Some(id)) => Ok(Some(Pending::Retry {
            request_id: RequestId(to_u64(id)),
        })),
        (Some(other), id) => Err(corrupt(
            "pending request",
            format!("kind {other:?} with request id {id:?}"),
        )),
    }
}

/// The columns `SELECT`ed for a saga record, in [`saga_record`]'s order.
pub(crate) const SAGA_COLUMNS: &str = "saga_id, saga_type, definition_version, status, direction, \
     current_step, pending_kind, pending_request_id, deadline, attempt, completed_steps, \
     compensation_reason, last_error, next_request_id, data, version";

fn get<'r, T>(row: &'r AnyRow, column: &str) -> Result<T, StoreError>
where
    T: sqlx::Decode<'r, sqlx::Any> + sqlx::Type<sqlx::Any>,
{
    row.try_get(column).map_err(|err| corrupt(column, err))
}

/// Reads a saga record from a row with [`SAGA_COLUMNS`].
pub(crate) fn saga_record(row: &AnyRow) -> Result<SagaRecord, StoreError> {
    let saga_id: String = get(row, "saga_id")?;
    let completed: String = get(row, "completed_steps")?;
    let data: String = get(row, "data")?;
    let state = SagaState {
        saga_id: saga_id.parse().map_err(|err| corrupt("saga_id", err))?,
        saga_type: get(row, "saga_type")?,
        definition_version: get(row, "definition_version")?,
        status: parse_status(&get::<String>(row, "status")?)?,
        direction: parse_direction(&get::<String>(row, "direction")?)?,
        current_step: get(row, "current_step")?,
        pending: parse_pending(get(row, "pending_kind")?, get(row, "pending_request_id")?)?,
        deadline: get::<Option<i64>>(row, "deadline")?.map(|ms| Timestamp(to_u64(ms))),
        attempt: u32::try_from(get::<i64>(row, "attempt")?).unwrap_or(u32::MAX),
        completed_steps: serde_json::from_str(&completed)
            .map_err(|err| corrupt("completed_steps", err))?,
        compensation_reason: get(row, "compensation_reason")?,
        last_error: get(row, "last_error")?,
        next_request_id: to_u64(get(row, "next_request_id")?),
    };
    Ok(SagaRecord {
        state,
        data: serde_json::from_str(&data).map_err(|err| corrupt("saga data", err))?,
        version: to_u64(get(row, "version")?),
    })
}

/// The timer a due instance waits for, from `saga_id, pending_kind, pending_request_id,
/// attempt, deadline`: a reply timeout or a retry backoff.
pub(crate) fn due_timer(row: &AnyRow) -> Result<TimerRecord, StoreError> {
    let saga_id: String = get(row, "saga_id")?;
    let saga_id = saga_id.parse().map_err(|err| corrupt("saga_id", err))?;
    let pending = parse_pending(get(row, "pending_kind")?, get(row, "pending_request_id")?)?;
    let attempt = u32::try_from(get::<i64>(row, "attempt")?).unwrap_or(u32::MAX);
    let timer = match pending {
        Some(Pending::Reply { request_id }) => SagaTimer::Timeout {
            request_id,
            attempt,
        },
        Some(Pending::Retry { request_id }) => SagaTimer::RetryDue { request_id },
        None => {
            return Err(corrupt(
                "saga deadline",
                format!("saga {saga_id} has a deadline but waits for nothing"),
            ));
        }
    };
    Ok(TimerRecord {
        saga_id,
        timer,
        due: Timestamp(to_u64(get(row, "deadline")?)),
    })
}

/// A stalled saga from `saga_id, saga_type, status, current_step, deadline, updated_at`.
pub(crate) fn stalled_saga(row: &AnyRow) -> Result<StalledSaga, StoreError> {
    let saga_id: String = get(row, "saga_id")?;
    Ok(StalledSaga {
        saga_id: saga_id.parse().map_err(|err| corrupt("saga_id", err))?,
        saga_type: get(row, "saga_type")?,
        status: parse_status(&get::<String>(row, "status")?)?,
        current_step: get(row, "current_step")?,
        deadline: get::<Option<i64>>(row, "deadline")?.map(|ms| Timestamp(to_u64(ms))),
        updated_at: Timestamp(to_u64(get(row, "updated_at")?)),
    })
}

/// `text` with every NUL character written as `\u0000` (PostgreSQL's text types cannot hold
/// NUL), and whether there was any.
pub(crate) fn without_nul(text: &str) -> (std::borrow::Cow<'_, str>, bool) {
    match text.contains('\0') {
        true => (text.replace('\0', "\\u0000").into(), true),
        false => (text.into(), false),
    }
}

/// Headers as stored (JSON text).
pub(crate) fn encode_headers(headers: &Headers) -> String {
    serde_json::to_string(headers).unwrap_or_else(|_| "{}".to_owned())
}

/// Reads a message from `message_id`, `destination`-like, `headers`, `payload` values.
pub(crate) fn message(
    id: &str,
    destination: String,
    headers: &str,
    payload: String,
) -> Result<Message, String> {
    let id: MessageId = id
        .parse()
        .map_err(|err| format!("invalid message id {id:?}: {err}"))?;
    let headers: Headers =
        serde_json::from_str(headers).map_err(|err| format!("unreadable headers: {err}"))?;
    Ok(Message {
        id,
        destination,
        headers,
        payload,
    })
}

/// Reads a dead letter row (`consumer, message_id, destination, headers, payload, reason, at`).
pub(crate) fn dead_letter(row: &AnyRow) -> Result<DeadLetter, StoreError> {
    let id: String = get(row, "message_id")?;
    let headers: String = get(row, "headers")?;
    let destination: String = get(row, "destination")?;
    let payload: String = get(row, "payload")?;
    // A dead letter may hold unreadable headers; keep what can be read.
    let message =
        message(&id, destination.clone(), &headers, payload.clone()).unwrap_or_else(|_| Message {
            id: id.parse().unwrap_or_default(),
            destination,
            headers: Headers::new().with("x-unreadable-headers", headers),
            payload,
        });
    Ok(DeadLetter {
        consumer: get(row, "consumer")?,
        message,
        reason: get(row, "reason")?,
        at: Timestamp(to_u64(get(row, "at")?)),
    })
}

/// A saga id as stored.
pub(crate) fn saga_id_text(id: SagaId) -> String {
    id.to_string()
}
