//! `saga_instances`: one row per saga — its state (step by name, status, direction, what it
//! waits for and until when), its data (`jsonb` on PostgreSQL) and an optimistic-concurrency
//! `version`. The `deadline` is the saga's one timer: [`due`] reads the instances whose
//! deadline has passed.

use saga_core::engine::{Direction, Pending, SagaState, SagaStatus, SagaTimer};
use saga_core::ports::{
    InFlightVersion, SagaRecord, SagaWrite, StalledSaga, StoreError, TimerRecord,
};
use saga_core::trace::TraceContext;
use saga_core::{RequestId, SagaId, Timestamp};
use sqlx::{AssertSqlSafe, query};

use crate::db::Dialect;
use crate::db::backend::Conn;
use crate::error::{corrupt, store_error};
use crate::on_backend;
use crate::sql::{Bind, CHUNK, Col, Get, parameter, placeholders, to_i64, to_u64, values_from};

/// The columns read for a [`SagaRecord`], in [`record`]'s order.
const COLUMNS: &str = "saga_id, saga_type, definition_version, status, direction, current_step, \
     pending_kind, pending_request_id, deadline, attempt, completed_steps, compensation_reason, \
     last_error, next_request_id, data, version, traceparent, tracestate, skip_steps, branches";

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
fn pending_columns(pending: Option<Pending>) -> (Option<&'static str>, Option<i64>) {
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

/// A saga record from a row with [`COLUMNS`].
fn record(row: &impl Get) -> Result<SagaRecord, StoreError> {
    let state = SagaState {
        saga_id: SagaId(row.id("saga_id")?),
        saga_type: row.text("saga_type")?,
        definition_version: row.text("definition_version")?,
        status: parse_status(&row.text("status")?)?,
        direction: parse_direction(&row.text("direction")?)?,
        current_step: row.opt_text("current_step")?,
        pending: parse_pending(
            row.opt_text("pending_kind")?,
            row.opt_int("pending_request_id")?,
        )?,
        deadline: row.opt_int("deadline")?.map(|ms| Timestamp(to_u64(ms))),
        attempt: u32::try_from(row.int("attempt")?).unwrap_or(u32::MAX),
        completed_steps: serde_json::from_value(row.json("completed_steps")?)
            .map_err(|e| corrupt("completed_steps", e))?,
        compensation_reason: row.opt_text("compensation_reason")?,
        last_error: row.opt_text("last_error")?,
        next_request_id: to_u64(row.int("next_request_id")?),
        skip_steps: match row.opt_text("skip_steps")? {
            Some(steps) => serde_json::from_str(&steps).map_err(|e| corrupt("skip_steps", e))?,
            None => Vec::new(),
        },
        branches: match row.opt_text("branches")? {
            Some(branches) => {
                serde_json::from_str(&branches).map_err(|e| corrupt("branches", e))?
            }
            None => Vec::new(),
        },
    };
    // A stored context that no longer parses is dropped: tracing must not fail a saga.
    let trace = match row.opt_text("traceparent")? {
        Some(traceparent) => {
            TraceContext::parse(&traceparent, row.opt_text("tracestate")?.as_deref()).ok()
        }
        None => None,
    };
    Ok(SagaRecord {
        state,
        data: row.json("data")?,
        version: to_u64(row.int("version")?),
        trace,
    })
}

/// The columns a write binds, in statement order.
pub(crate) struct Columns<'w> {
    pub(crate) state: &'w SagaState,
    pub(crate) pending_kind: Option<&'static str>,
    pub(crate) pending_request: Option<i64>,
    pub(crate) completed: serde_json::Value,
    /// The steps to skip as a JSON array, `None` when there are none.
    pub(crate) skip_steps: Option<String>,
    /// The parallel group's branches as a JSON array, `None` outside a group.
    pub(crate) branches: Option<String>,
    pub(crate) record: &'w SagaRecord,
}

impl<'w> Columns<'w> {
    pub(crate) fn of(write: &'w SagaWrite) -> Self {
        let (pending_kind, pending_request) = pending_columns(write.record.state.pending);
        Self {
            state: &write.record.state,
            pending_kind,
            pending_request,
            completed: serde_json::Value::from(write.record.state.completed_steps.clone()),
            skip_steps: match write.record.state.skip_steps.is_empty() {
                true => None,
                false => {
                    Some(serde_json::Value::from(write.record.state.skip_steps.clone()).to_string())
                }
            },
            // Strings, numbers and enums of unit and struct variants: always serializable.
            branches: (!write.record.state.branches.is_empty()).then(|| {
                serde_json::to_string(&write.record.state.branches)
                    .expect("branches are plain data")
            }),
            record: &write.record,
        }
    }
}

/// Binds a write's columns — saga id, type, definition version, status, direction, current
/// step, pending kind, pending request, deadline, attempt, completed steps, compensation
/// reason, last error, next request id, data, version, updated at, skipped steps, branches —
/// to `$q`.
macro_rules! bind_columns {
    ($q:expr, $columns:expr, $at:expr) => {{
        let c = $columns;
        $q.bind_id(c.state.saga_id.0)
            .bind(c.state.saga_type.as_str())
            .bind(c.state.definition_version.as_str())
            .bind(c.state.status.as_str())
            .bind($crate::sql::instances::direction_name(c.state.direction))
            .bind(c.state.current_step.as_deref())
            .bind(c.pending_kind)
            .bind(c.pending_request)
            .bind(c.state.deadline.map(|d| $crate::sql::to_i64(d.as_millis())))
            .bind(i64::from(c.state.attempt))
            .bind_json(&c.completed)
            .bind(c.state.compensation_reason.as_deref())
            .bind(c.state.last_error.as_deref())
            .bind($crate::sql::to_i64(c.state.next_request_id))
            .bind_json(&c.record.data)
            .bind($crate::sql::to_i64(c.record.version))
            .bind($at)
            .bind(c.skip_steps.as_deref())
            .bind(c.branches.as_deref())
    }};
}
pub(crate) use bind_columns;

/// Inserts (`expected_version` `None`) or updates the saga row; `false` when the row had
/// moved on (an optimistic-version conflict) or already existed.
pub(crate) async fn write(conn: Conn<'_>, write: &SagaWrite, at: i64) -> Result<bool, StoreError> {
    let sql = match write.expected_version {
        None => {
            "INSERT INTO saga_instances (saga_id, saga_type, definition_version, status, \
             direction, current_step, pending_kind, pending_request_id, deadline, attempt, \
             completed_steps, compensation_reason, last_error, next_request_id, data, version, \
             updated_at, skip_steps, branches, created_at, traceparent, tracestate) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, \
             $18, $19, $17, $20, $21)"
        }
        Some(_) => {
            "UPDATE saga_instances SET saga_type = $2, definition_version = $3, status = $4, \
             direction = $5, current_step = $6, pending_kind = $7, pending_request_id = $8, \
             deadline = $9, attempt = $10, completed_steps = $11, compensation_reason = $12, \
             last_error = $13, next_request_id = $14, data = $15, version = $16, updated_at = $17, \
             skip_steps = $18, branches = $19 WHERE saga_id = $1 AND version = $20"
        }
    };
    let columns = Columns::of(write);
    let written = on_backend!(conn, |c| {
        let mut statement = bind_columns!(query(sql), &columns, at);
        statement = match write.expected_version {
            Some(expected) => statement.bind(to_i64(expected)),
            None => {
                let trace = write.record.trace.as_ref();
                statement
                    .bind(trace.map(TraceContext::traceparent))
                    .bind(trace.and_then(TraceContext::tracestate))
            }
        };
        statement.execute(c).await.map(|done| done.rows_affected())
    });
    match written {
        Ok(rows) => Ok(rows == 1),
        // Two starts of one id cannot happen (ids are fresh UUIDs); treat like a conflict.
        Err(sqlx::Error::Database(err)) if err.is_unique_violation() => Ok(false),
        Err(err) => Err(store_error(err)),
    }
}

/// The types of [`update_many_sql`]'s columns.
pub(crate) const UPDATE_COLUMNS: [Col; 20] = [
    Col::Id,
    Col::Text,
    Col::Text,
    Col::Text,
    Col::Text,
    Col::Text,
    Col::Text,
    Col::BigInt,
    Col::BigInt,
    Col::BigInt,
    Col::Json,
    Col::Text,
    Col::Text,
    Col::BigInt,
    Col::Json,
    Col::BigInt,
    Col::BigInt,
    Col::Text,
    Col::Text,
    Col::BigInt,
];

/// [`update_many`]'s statement for `rows` writes, its parameters numbered from `first`.
pub(crate) fn update_many_sql(dialect: Dialect, first: usize, rows: usize) -> String {
    format!(
        "WITH v (saga_id, saga_type, definition_version, status, direction, current_step, \
         pending_kind, pending_request_id, deadline, attempt, completed_steps, \
         compensation_reason, last_error, next_request_id, data, version, updated_at, \
         skip_steps, branches, expected) AS (VALUES {}) \
         UPDATE saga_instances SET saga_type = v.saga_type, \
         definition_version = v.definition_version, status = v.status, \
         direction = v.direction, current_step = v.current_step, \
         pending_kind = v.pending_kind, pending_request_id = v.pending_request_id, \
         deadline = v.deadline, attempt = v.attempt, completed_steps = v.completed_steps, \
         compensation_reason = v.compensation_reason, last_error = v.last_error, \
         next_request_id = v.next_request_id, data = v.data, version = v.version, \
         updated_at = v.updated_at, skip_steps = v.skip_steps, branches = v.branches \
         FROM v WHERE saga_instances.saga_id = v.saga_id \
         AND saga_instances.version = v.expected",
        values_from(dialect, first, rows, &UPDATE_COLUMNS)
    )
}

/// Updates many saga rows with one statement per [`CHUNK`]; `false` when any had moved on
/// (the caller undoes the transaction's work and writes them one by one).
pub(crate) async fn update_many(
    mut conn: Conn<'_>,
    writes: &[&SagaWrite],
    at: i64,
) -> Result<bool, StoreError> {
    let dialect = conn.dialect();
    for chunk in writes.chunks(CHUNK) {
        let sql = update_many_sql(dialect, 1, chunk.len());
        let all: Vec<Columns<'_>> = chunk.iter().map(|w| Columns::of(w)).collect();
        let updated = on_backend!(conn.reborrow(), |c| {
            let mut statement = query(AssertSqlSafe(sql));
            for (columns, write) in all.iter().zip(chunk) {
                statement =
                    bind_columns!(statement, columns, at).bind(write.expected_version.map(to_i64));
            }
            statement.execute(c).await.map(|done| done.rows_affected())
        })
        .map_err(store_error)?;
        if updated != chunk.len() as u64 {
            return Ok(false);
        }
    }
    Ok(true)
}

/// A saga record.
pub(crate) async fn load(
    conn: Conn<'_>,
    saga_id: SagaId,
) -> Result<Option<SagaRecord>, StoreError> {
    let sql = AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM saga_instances WHERE saga_id = $1"
    ));
    on_backend!(conn, |c| {
        let row = query(sql)
            .bind_id(saga_id.0)
            .fetch_optional(c)
            .await
            .map_err(store_error)?;
        row.as_ref().map(record).transpose()
    })
}

/// The records of `saga_ids` (those that exist), one query per 500 ids.
pub(crate) async fn load_many(
    mut conn: Conn<'_>,
    saga_ids: &[SagaId],
) -> Result<Vec<SagaRecord>, StoreError> {
    let dialect = conn.dialect();
    let mut records = Vec::with_capacity(saga_ids.len());
    for chunk in saga_ids.chunks(500) {
        let sql = format!(
            "SELECT {COLUMNS} FROM saga_instances WHERE saga_id IN ({})",
            placeholders(dialect, 1, chunk.len())
        );
        on_backend!(conn.reborrow(), |c| {
            let mut statement = query(AssertSqlSafe(sql));
            for saga_id in chunk {
                statement = statement.bind_id(saga_id.0);
            }
            for row in statement.fetch_all(c).await.map_err(store_error)? {
                records.push(record(&row)?);
            }
            Ok::<_, StoreError>(())
        })?;
    }
    Ok(records)
}

/// The timer a due instance waits for: a reply timeout or a retry backoff.
fn due_timer(row: &impl Get) -> Result<TimerRecord, StoreError> {
    let saga_id = SagaId(row.id("saga_id")?);
    let pending = parse_pending(
        row.opt_text("pending_kind")?,
        row.opt_int("pending_request_id")?,
    )?;
    let attempt = u32::try_from(row.int("attempt")?).unwrap_or(u32::MAX);
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
        due: Timestamp(to_u64(row.int("deadline")?)),
    })
}

/// The instances whose deadline has passed at `now`, as the timer each waits for, soonest
/// first, at most `limit`.
pub(crate) async fn due(
    conn: Conn<'_>,
    now: Timestamp,
    limit: usize,
) -> Result<Vec<TimerRecord>, StoreError> {
    on_backend!(conn, |c| {
        query(
            "SELECT saga_id, pending_kind, pending_request_id, attempt, deadline \
             FROM saga_instances WHERE deadline IS NOT NULL AND deadline <= $1 \
             AND status IN ('running', 'compensating') ORDER BY deadline LIMIT $2",
        )
        .bind(to_i64(now.as_millis()))
        .bind(to_i64(limit as u64))
        .fetch_all(c)
        .await
        .map_err(store_error)?
        .iter()
        .map(due_timer)
        .collect()
    })
}

fn stalled_saga(row: &impl Get) -> Result<StalledSaga, StoreError> {
    Ok(StalledSaga {
        saga_id: SagaId(row.id("saga_id")?),
        saga_type: row.text("saga_type")?,
        definition_version: row.text("definition_version")?,
        status: parse_status(&row.text("status")?)?,
        current_step: row.opt_text("current_step")?,
        deadline: row.opt_int("deadline")?.map(|ms| Timestamp(to_u64(ms))),
        updated_at: Timestamp(to_u64(row.int("updated_at")?)),
    })
}

/// Running or compensating sagas with no deadline, unchanged since before `cutoff`, or with a
/// deadline before it; longest idle first, at most `limit`.
pub(crate) async fn stalled(
    conn: Conn<'_>,
    cutoff: i64,
    limit: usize,
) -> Result<Vec<StalledSaga>, StoreError> {
    on_backend!(conn, |c| {
        query(
            "SELECT saga_id, saga_type, definition_version, status, current_step, deadline, \
             updated_at FROM saga_instances WHERE status IN ('running', 'compensating') \
             AND ((deadline IS NULL AND updated_at < $1) OR deadline < $1) \
             ORDER BY updated_at LIMIT $2",
        )
        .bind(cutoff)
        .bind(to_i64(limit as u64))
        .fetch_all(c)
        .await
        .map_err(store_error)?
        .iter()
        .map(stalled_saga)
        .collect()
    })
}

/// The sagas in flight (running, compensating, failed), counted per type and version.
pub(crate) async fn in_flight_versions(conn: Conn<'_>) -> Result<Vec<InFlightVersion>, StoreError> {
    on_backend!(conn, |c| {
        let rows = query(
            "SELECT saga_type, definition_version, \
             SUM(CASE WHEN status = 'failed' THEN 0 ELSE 1 END) AS running, \
             SUM(CASE WHEN status = 'failed' THEN 1 ELSE 0 END) AS parked \
             FROM saga_instances WHERE status IN ('running', 'compensating', 'failed') \
             GROUP BY saga_type, definition_version ORDER BY saga_type, definition_version",
        )
        .fetch_all(c)
        .await
        .map_err(store_error)?;
        rows.iter()
            .map(|row| {
                Ok(InFlightVersion {
                    saga_type: row.text("saga_type")?,
                    version: row.text("definition_version")?,
                    running: to_u64(row.int("running")?),
                    parked: to_u64(row.int("parked")?),
                })
            })
            .collect()
    })
}

/// Up to `limit` running or compensating sagas of `saga_type` on `version`.
pub(crate) async fn running_on_version(
    conn: Conn<'_>,
    saga_type: &str,
    version: &str,
    limit: usize,
) -> Result<Vec<SagaId>, StoreError> {
    on_backend!(conn, |c| {
        query(
            "SELECT saga_id FROM saga_instances WHERE saga_type = $1 AND definition_version = $2 \
             AND status IN ('running', 'compensating') ORDER BY saga_id LIMIT $3",
        )
        .bind(saga_type)
        .bind(version)
        .bind(to_i64(limit as u64))
        .fetch_all(c)
        .await
        .map_err(store_error)?
        .iter()
        .map(|row| Ok(SagaId(row.id("saga_id")?)))
        .collect()
    })
}

/// Which sagas `search` and `count` select; empty fields select all.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SagaFilter {
    /// Of this type.
    pub saga_type: Option<String>,
    /// In any of these statuses.
    pub statuses: Vec<SagaStatus>,
    /// At this step.
    pub current_step: Option<String>,
    /// Started with this definition version.
    pub definition_version: Option<String>,
    /// Created before this time (older than some age).
    pub created_before: Option<Timestamp>,
    /// Created after this time.
    pub created_after: Option<Timestamp>,
    /// Last changed before this time (idle for some time).
    pub updated_before: Option<Timestamp>,
}

/// A saga row: its record and when it was created and last changed.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredSaga {
    /// State, data and version.
    pub record: SagaRecord,
    /// When it started.
    pub created_at: Timestamp,
    /// When it last changed.
    pub updated_at: Timestamp,
}

/// A filter's `WHERE` clause and its parameters, in order.
fn filter_sql(dialect: crate::db::Dialect, filter: &SagaFilter) -> (String, Vec<FilterValue>) {
    let mut clauses = Vec::new();
    let mut values = Vec::new();
    let param = |values: &mut Vec<FilterValue>, value: FilterValue| {
        values.push(value);
        parameter(dialect, values.len())
    };
    if let Some(saga_type) = &filter.saga_type {
        let p = param(&mut values, FilterValue::Text(saga_type.clone()));
        clauses.push(format!("saga_type = {p}"));
    }
    if !filter.statuses.is_empty() {
        let list: Vec<String> = filter
            .statuses
            .iter()
            .map(|status| param(&mut values, FilterValue::Text(status.as_str().to_owned())))
            .collect();
        clauses.push(format!("status IN ({})", list.join(", ")));
    }
    if let Some(step) = &filter.current_step {
        let p = param(&mut values, FilterValue::Text(step.clone()));
        clauses.push(format!("current_step = {p}"));
    }
    if let Some(version) = &filter.definition_version {
        let p = param(&mut values, FilterValue::Text(version.clone()));
        clauses.push(format!("definition_version = {p}"));
    }
    for (column, op, at) in [
        ("created_at", "<", filter.created_before),
        ("created_at", ">", filter.created_after),
        ("updated_at", "<", filter.updated_before),
    ] {
        if let Some(at) = at {
            let p = param(&mut values, FilterValue::Int(to_i64(at.as_millis())));
            clauses.push(format!("{column} {op} {p}"));
        }
    }
    let sql = match clauses.is_empty() {
        true => String::new(),
        false => format!(" WHERE {}", clauses.join(" AND ")),
    };
    (sql, values)
}

/// A parameter of a filter.
enum FilterValue {
    Text(String),
    Int(i64),
}

macro_rules! bind_filter {
    ($statement:expr, $values:expr) => {{
        let mut statement = $statement;
        for value in $values {
            statement = match value {
                FilterValue::Text(text) => statement.bind(text.as_str()),
                FilterValue::Int(int) => statement.bind(*int),
            };
        }
        statement
    }};
}

fn stored_saga(row: &impl Get) -> Result<StoredSaga, StoreError> {
    Ok(StoredSaga {
        record: record(row)?,
        created_at: Timestamp(to_u64(row.int("created_at")?)),
        updated_at: Timestamp(to_u64(row.int("updated_at")?)),
    })
}

/// The sagas `filter` selects, newest first, `limit` of them after skipping `offset`.
pub(crate) async fn search(
    conn: Conn<'_>,
    filter: &SagaFilter,
    limit: usize,
    offset: usize,
) -> Result<Vec<StoredSaga>, StoreError> {
    select(conn, filter, "DESC", limit, offset).await
}

/// The oldest saga `filter` selects.
pub(crate) async fn oldest(
    conn: Conn<'_>,
    filter: &SagaFilter,
) -> Result<Option<StoredSaga>, StoreError> {
    Ok(select(conn, filter, "ASC", 1, 0).await?.into_iter().next())
}

/// One saga with its times.
pub(crate) async fn find(
    conn: Conn<'_>,
    saga_id: SagaId,
) -> Result<Option<StoredSaga>, StoreError> {
    let sql =
        format!("SELECT {COLUMNS}, created_at, updated_at FROM saga_instances WHERE saga_id = $1");
    on_backend!(conn, |c| {
        query(AssertSqlSafe(sql))
            .bind_id(saga_id.0)
            .fetch_optional(c)
            .await
            .map_err(store_error)?
            .as_ref()
            .map(stored_saga)
            .transpose()
    })
}

async fn select(
    conn: Conn<'_>,
    filter: &SagaFilter,
    order: &'static str,
    limit: usize,
    offset: usize,
) -> Result<Vec<StoredSaga>, StoreError> {
    let (clause, values) = filter_sql(conn.dialect(), filter);
    let sql = format!(
        "SELECT {COLUMNS}, created_at, updated_at FROM saga_instances{clause} \
         ORDER BY created_at {order}, saga_id {order} LIMIT {limit} OFFSET {offset}"
    );
    on_backend!(conn, |c| {
        bind_filter!(query(AssertSqlSafe(sql)), &values)
            .fetch_all(c)
            .await
            .map_err(store_error)?
            .iter()
            .map(stored_saga)
            .collect()
    })
}

/// How many sagas `filter` selects.
pub(crate) async fn count(conn: Conn<'_>, filter: &SagaFilter) -> Result<u64, StoreError> {
    let (clause, values) = filter_sql(conn.dialect(), filter);
    let sql = format!("SELECT COUNT(*) AS n FROM saga_instances{clause}");
    on_backend!(conn, |c| {
        let row = bind_filter!(query(AssertSqlSafe(sql)), &values)
            .fetch_one(c)
            .await
            .map_err(store_error)?;
        Ok(to_u64(row.int("n")?))
    })
}

/// How many sagas there are of each type in each status, by type and status.
pub(crate) async fn counts(conn: Conn<'_>) -> Result<Vec<(String, SagaStatus, u64)>, StoreError> {
    on_backend!(conn, |c| {
        query(
            "SELECT saga_type, status, COUNT(*) AS n FROM saga_instances \
             GROUP BY saga_type, status ORDER BY saga_type, status",
        )
        .fetch_all(c)
        .await
        .map_err(store_error)?
        .iter()
        .map(|row| {
            Ok((
                row.text("saga_type")?,
                parse_status(&row.text("status")?)?,
                to_u64(row.int("n")?),
            ))
        })
        .collect()
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use serde_json::json;

    use super::*;
    use crate::sql::testing::databases;

    pub(crate) fn record(saga_id: SagaId, version: u64) -> SagaRecord {
        SagaRecord {
            state: SagaState {
                saga_id,
                saga_type: "TestSaga".to_owned(),
                definition_version: "1".to_owned(),
                status: SagaStatus::Running,
                direction: Direction::Forward,
                current_step: Some("reserve".to_owned()),
                pending: Some(Pending::Reply {
                    request_id: RequestId(3),
                }),
                deadline: Some(Timestamp(5_000)),
                attempt: 2,
                completed_steps: vec!["validate".to_owned()],
                compensation_reason: None,
                last_error: Some("it said \"no\"".to_owned()),
                next_request_id: 4,
                skip_steps: vec!["check_fraud".to_owned()],
                branches: vec![saga_core::engine::Branch {
                    step: "reserve".to_owned(),
                    state: saga_core::engine::BranchState::Waiting {
                        pending: Pending::Reply {
                            request_id: RequestId(3),
                        },
                    },
                    attempt: 2,
                    deadline: Some(Timestamp(5_000)),
                }],
            },
            data: json!({ "order_id": 7, "items": ["naan", "samosa"], "note": null }),
            version,
            trace: TraceContext::parse(
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                Some("vendor=1"),
            )
            .ok(),
        }
    }

    pub(crate) fn insert(record: SagaRecord) -> SagaWrite {
        SagaWrite {
            record,
            expected_version: None,
        }
    }

    #[tokio::test]
    async fn a_saga_row_reads_back_as_written_and_a_stale_write_changes_nothing() {
        for db in databases("instances::write").await {
            // Outside a transaction: on PostgreSQL a failed insert would abort one.
            let mut conn = db.database.acquire().await.expect("connects");
            let id = SagaId::new();
            let first = insert(record(id, 1));
            assert!(write(conn.conn(), &first, 10).await.expect("inserts"));
            assert!(
                !write(conn.conn(), &first, 10).await.expect("runs"),
                "exists"
            );
            let loaded = load(conn.conn(), id).await.expect("loads");
            assert_eq!(loaded, Some(first.record.clone()));

            let mut done = record(id, 2);
            done.state.status = SagaStatus::Completed;
            done.state.pending = None;
            done.state.deadline = None;
            let update = SagaWrite {
                record: done.clone(),
                expected_version: Some(1),
            };
            assert!(write(conn.conn(), &update, 20).await.expect("updates"));
            assert!(
                !write(conn.conn(), &update, 30).await.expect("runs"),
                "stale"
            );
            assert_eq!(load(conn.conn(), id).await.expect("loads"), Some(done));
            assert_eq!(load(conn.conn(), SagaId::new()).await.expect("loads"), None);
            drop(conn);
            db.drop().await;
        }
    }

    #[tokio::test]
    async fn many_rows_update_in_one_statement_or_not_at_all() {
        for db in databases("instances::update_many").await {
            let mut tx = db.database.begin().await.expect("begins");
            // More than one chunk.
            let ids: Vec<SagaId> = (0..CHUNK + 5).map(|_| SagaId::new()).collect();
            for id in &ids {
                assert!(
                    write(tx.conn(), &insert(record(*id, 1)), 10)
                        .await
                        .expect("inserts")
                );
            }
            let updates: Vec<SagaWrite> = ids
                .iter()
                .map(|id| SagaWrite {
                    record: record(*id, 2),
                    expected_version: Some(1),
                })
                .collect();
            let refs: Vec<&SagaWrite> = updates.iter().collect();
            assert!(update_many(tx.conn(), &refs, 20).await.expect("updates"));
            let loaded = load_many(tx.conn(), &ids).await.expect("loads");
            assert_eq!(loaded.len(), ids.len());
            assert!(
                loaded
                    .iter()
                    .all(|r| r.version == 2 && r.data["order_id"] == 7)
            );
            // They are at version 2 now: the same batch is stale.
            assert!(!update_many(tx.conn(), &refs[..3], 30).await.expect("runs"));
            tx.rollback().await.expect("rolls back");
            db.drop().await;
        }
    }

    #[tokio::test]
    async fn due_lists_the_timers_whose_deadline_passed() {
        for db in databases("instances::due").await {
            let mut tx = db.database.begin().await.expect("begins");
            let (soon, later) = (SagaId::new(), SagaId::new());
            let mut retry = record(later, 1);
            retry.state.pending = Some(Pending::Retry {
                request_id: RequestId(9),
            });
            retry.state.deadline = Some(Timestamp(8_000));
            write(tx.conn(), &insert(record(soon, 1)), 10)
                .await
                .expect("inserts");
            write(tx.conn(), &insert(retry), 10).await.expect("inserts");
            let timers = due(tx.conn(), Timestamp(6_000), 10).await.expect("reads");
            assert_eq!(
                timers,
                [TimerRecord {
                    saga_id: soon,
                    timer: SagaTimer::Timeout {
                        request_id: RequestId(3),
                        attempt: 2,
                    },
                    due: Timestamp(5_000),
                }]
            );
            let timers = due(tx.conn(), Timestamp(9_000), 10).await.expect("reads");
            assert_eq!(timers.len(), 2);
            assert_eq!(
                timers[1].timer,
                SagaTimer::RetryDue {
                    request_id: RequestId(9)
                }
            );
            tx.rollback().await.expect("rolls back");
            db.drop().await;
        }
    }
}
