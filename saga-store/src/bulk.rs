//! Many units of work in a few multi-row statements.
//!
//! The orchestrator commits a batch of replies' transitions together
//! ([`SagaStore::commit_all`](saga_core::ports::SagaStore::commit_all)). Written one unit at a
//! time that is five or six statements per reply; here it is one statement per table for the
//! whole batch. The fast path assumes the common case — no duplicate, no concurrent change —
//! and checks it: if any dedup record already existed or any saga row had moved on, it reports
//! so, the caller undoes the batch's writes and writes the units one at a time, where each
//! gets its own outcome.

use std::collections::HashSet;

use saga_core::ports::{StoreError, UnitOfWork};
use saga_core::{Message, MessageId};
use sqlx::any::AnyArguments;
use sqlx::query::Query;
use sqlx::{Any, AnyConnection, AssertSqlSafe, Row, query};

use crate::codec::{
    direction_name, encode_headers, pending_columns, saga_id_text, status_name, to_i64,
};
use crate::error::{corrupt, store_error};
use crate::store::insert_dead_letter;

/// Rows per statement (the widest row binds 17 parameters; SQLite allows 32 766).
const CHUNK: usize = 200;

/// Whether the fast path can take these units: no new sagas (starts commit on their own).
pub(crate) fn eligible(units: &[UnitOfWork]) -> bool {
    units.iter().all(|unit| {
        unit.saga
            .as_ref()
            .is_none_or(|write| write.expected_version.is_some())
    })
}

/// `rows` rows of parameters for `conn`, each column wrapped in its `casts` template (`{}` is
/// the parameter): numbered from `$1` on PostgreSQL, plain `?` on SQLite (where looking up
/// numbered parameters by name costs time quadratic in their count).
fn values(conn: &AnyConnection, rows: usize, casts: &[&str]) -> String {
    values_in(conn.backend_name() == "SQLite", rows, casts)
}

fn values_in(positional: bool, rows: usize, casts: &[&str]) -> String {
    let mut sql = String::new();
    let mut parameter = 0;
    for row in 0..rows {
        if row > 0 {
            sql.push_str(", ");
        }
        sql.push('(');
        for (column, cast) in casts.iter().enumerate() {
            if column > 0 {
                sql.push_str(", ");
            }
            parameter += 1;
            let placeholder = match positional {
                true => "?".to_owned(),
                false => format!("${parameter}"),
            };
            sql.push_str(&cast.replace("{}", &placeholder));
        }
        sql.push(')');
    }
    sql
}

/// `count` parameters for an `IN (…)` list on `conn` (numbered on PostgreSQL, `?` on
/// SQLite, as in [`values`]).
pub(crate) fn placeholders(conn: &AnyConnection, count: usize) -> String {
    placeholders_from(conn, 1, count)
}

/// [`placeholders`] numbered from `first` (after `first - 1` other parameters).
pub(crate) fn placeholders_from(conn: &AnyConnection, first: usize, count: usize) -> String {
    let positional = conn.backend_name() == "SQLite";
    (first..first + count)
        .map(|i| match positional {
            true => "?".to_owned(),
            false => format!("${i}"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The channels the units' outgoing messages go to, each once.
pub(crate) fn destinations(units: &[UnitOfWork]) -> Vec<String> {
    let mut destinations: Vec<String> = units
        .iter()
        .flat_map(|u| u.outbox.iter().map(|m| m.destination.clone()))
        .collect();
    destinations.sort_unstable();
    destinations.dedup();
    destinations
}

async fn run(
    conn: &mut AnyConnection,
    statement: Query<'_, Any, AnyArguments>,
) -> Result<u64, StoreError> {
    Ok(statement
        .execute(&mut *conn)
        .await
        .map_err(store_error)?
        .rows_affected())
}

const TEXT: &str = "CAST({} AS TEXT)";
const BIGINT: &str = "CAST({} AS BIGINT)";

/// Writes `units` inside `conn`'s transaction. `Ok(false)`: a dedup record already existed or
/// a saga row had changed; the caller must undo what was written and go one by one.
pub(crate) async fn write_units(
    conn: &mut AnyConnection,
    units: &[UnitOfWork],
    at: i64,
    queue_in_place: bool,
) -> Result<bool, StoreError> {
    let consumed: Vec<_> = units.iter().filter_map(|u| u.consumed.as_ref()).collect();
    for chunk in consumed.chunks(CHUNK) {
        let sql = format!(
            "INSERT INTO saga_received (consumer, message_id, received_at) VALUES {} \
             ON CONFLICT DO NOTHING",
            values(conn, chunk.len(), &["{}", "{}", "{}"])
        );
        let mut statement = query(AssertSqlSafe(sql));
        for record in chunk {
            statement = statement
                .bind(&record.consumer)
                .bind(record.message_id.to_string())
                .bind(at);
        }
        if run(conn, statement).await? != chunk.len() as u64 {
            return Ok(false);
        }
    }
    let writes: Vec<_> = units.iter().filter_map(|u| u.saga.as_ref()).collect();
    for chunk in writes.chunks(CHUNK) {
        let casts = [
            TEXT, TEXT, TEXT, TEXT, TEXT, TEXT, TEXT, BIGINT, BIGINT, BIGINT, TEXT, TEXT, TEXT,
            BIGINT, TEXT, BIGINT, BIGINT, BIGINT,
        ];
        let sql = format!(
            "WITH v (saga_id, saga_type, definition_version, status, direction, current_step, \
             pending_kind, pending_request_id, deadline, attempt, completed_steps, \
             compensation_reason, last_error, next_request_id, data, version, updated_at, \
             expected) AS (VALUES {}) \
             UPDATE saga_instances SET saga_type = v.saga_type, \
             definition_version = v.definition_version, status = v.status, \
             direction = v.direction, current_step = v.current_step, \
             pending_kind = v.pending_kind, pending_request_id = v.pending_request_id, \
             deadline = v.deadline, attempt = v.attempt, completed_steps = v.completed_steps, \
             compensation_reason = v.compensation_reason, last_error = v.last_error, \
             next_request_id = v.next_request_id, data = v.data, version = v.version, \
             updated_at = v.updated_at \
             FROM v WHERE saga_instances.saga_id = v.saga_id \
             AND saga_instances.version = v.expected",
            values(conn, chunk.len(), &casts)
        );
        let mut statement = query(AssertSqlSafe(sql));
        for write in chunk {
            let record = &write.record;
            let state = &record.state;
            let (pending_kind, pending_request) = pending_columns(state.pending);
            let completed = serde_json::to_string(&state.completed_steps)
                .map_err(|e| corrupt("completed_steps", e))?;
            let data = serde_json::to_string(&record.data).map_err(|e| corrupt("saga data", e))?;
            statement = statement
                .bind(saga_id_text(state.saga_id))
                .bind(state.saga_type.clone())
                .bind(state.definition_version.clone())
                .bind(status_name(state.status))
                .bind(direction_name(state.direction))
                .bind(state.current_step.clone())
                .bind(pending_kind)
                .bind(pending_request)
                .bind(state.deadline.map(|d| to_i64(d.as_millis())))
                .bind(i64::from(state.attempt))
                .bind(completed)
                .bind(state.compensation_reason.clone())
                .bind(state.last_error.clone())
                .bind(to_i64(state.next_request_id))
                .bind(data)
                .bind(to_i64(record.version))
                .bind(at)
                .bind(write.expected_version.map(to_i64));
        }
        if run(conn, statement).await? != chunk.len() as u64 {
            return Ok(false);
        }
    }
    let history: Vec<_> = units.iter().flat_map(|u| &u.history).collect();
    for chunk in history.chunks(CHUNK) {
        let sql = format!(
            "INSERT INTO saga_history (saga_id, at, event) VALUES {}",
            values(conn, chunk.len(), &["{}", "{}", "{}"])
        );
        let mut statement = query(AssertSqlSafe(sql));
        for entry in chunk {
            let event = serde_json::to_string(&entry.event).map_err(|e| corrupt("history", e))?;
            statement = statement
                .bind(saga_id_text(entry.saga_id))
                .bind(to_i64(entry.at.as_millis()))
                .bind(event);
        }
        run(conn, statement).await?;
    }
    let outbox: Vec<_> = units.iter().flat_map(|u| &u.outbox).collect();
    insert_outbox(conn, &outbox, at, queue_in_place).await?;
    for dead in units.iter().flat_map(|u| &u.dead_letters) {
        insert_dead_letter(conn, dead).await?;
    }
    Ok(true)
}

/// Appends `messages` to the outbox, in order — or, with the queue in place (see
/// [`Database::queue_in_place`](crate::Database::queue_in_place)), straight to the queue.
pub(crate) async fn insert_outbox(
    conn: &mut AnyConnection,
    messages: &[&Message],
    at: i64,
    queue_in_place: bool,
) -> Result<(), StoreError> {
    if queue_in_place {
        return insert_queue(conn, messages, at).await;
    }
    for chunk in messages.chunks(CHUNK) {
        let sql = format!(
            "INSERT INTO saga_outbox (message_id, destination, headers, payload, created_at) \
             VALUES {}",
            values(conn, chunk.len(), &["{}", "{}", "{}", "{}", "{}"])
        );
        let mut statement = query(AssertSqlSafe(sql));
        for message in chunk {
            statement = statement
                .bind(message.id.to_string())
                .bind(message.destination.clone())
                .bind(encode_headers(&message.headers))
                .bind(message.payload.clone())
                .bind(at);
        }
        run(conn, statement).await?;
    }
    Ok(())
}

/// Appends `messages` to the SQL-table queue (visible at once), in order.
pub(crate) async fn insert_queue(
    conn: &mut AnyConnection,
    messages: &[&Message],
    at: i64,
) -> Result<(), StoreError> {
    for chunk in messages.chunks(CHUNK) {
        let sql = format!(
            "INSERT INTO saga_queue (channel, message_id, headers, payload, enqueued_at, \
             visible_at) VALUES {}",
            values(conn, chunk.len(), &["{}", "{}", "{}", "{}", "{}", "{}"])
        );
        let mut statement = query(AssertSqlSafe(sql));
        for message in chunk {
            statement = statement
                .bind(message.destination.clone())
                .bind(message.id.to_string())
                .bind(encode_headers(&message.headers))
                .bind(message.payload.clone())
                .bind(at)
                .bind(at);
        }
        run(conn, statement).await?;
    }
    Ok(())
}

/// Records `message_ids` as received by `consumer`; returns those that were not already.
pub(crate) async fn insert_received(
    conn: &mut AnyConnection,
    consumer: &str,
    message_ids: &[MessageId],
    at: i64,
) -> Result<HashSet<String>, StoreError> {
    let mut fresh = HashSet::with_capacity(message_ids.len());
    for chunk in message_ids.chunks(CHUNK) {
        let sql = format!(
            "INSERT INTO saga_received (consumer, message_id, received_at) VALUES {} \
             ON CONFLICT DO NOTHING RETURNING message_id",
            values(conn, chunk.len(), &["{}", "{}", "{}"])
        );
        let mut statement = query(AssertSqlSafe(sql));
        for id in chunk {
            statement = statement.bind(consumer).bind(id.to_string()).bind(at);
        }
        for row in statement.fetch_all(&mut *conn).await.map_err(store_error)? {
            fresh.insert(
                row.try_get::<String, _>("message_id")
                    .map_err(|e| corrupt("message_id", e))?,
            );
        }
    }
    Ok(fresh)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_parameters_across_rows() {
        assert_eq!(
            values_in(false, 2, &["{}", BIGINT]),
            "($1, CAST($2 AS BIGINT)), ($3, CAST($4 AS BIGINT))"
        );
        assert_eq!(values_in(true, 2, &["{}"]), "(?), (?)");
    }
}
