//! A batch of units of work — dedup records, saga updates, history, outgoing messages —
//! written with **one** statement instead of one per table: on SQLite one multi-statement
//! query (sqlx runs its statements in turn on its worker thread: one hand-off for all), on
//! PostgreSQL one statement of data-modifying CTEs (one round trip). Every row of every part
//! must be written; the rows written are counted and compared, so a dedup record that already
//! existed or a saga row that had moved on shows as a shortfall (the caller undoes the
//! transaction's work and goes one by one, as after the statements one by one).

use saga_core::Message;
use saga_core::MessageId;
use saga_core::ports::{HistoryRecord, SagaWrite, StoreError};
use sqlx::{AssertSqlSafe, query};

use crate::db::Dialect;
use crate::db::backend::Conn;
use crate::error::store_error;
use crate::on_backend;
use crate::sql::instances::{Columns, bind_columns};
use crate::sql::queue::QueueTables;
use crate::sql::{self, Bind, CHUNK, Get, headers_json, to_i64, to_u64};

/// Parameters one query may carry, with room to spare on both backends (SQLite allows
/// 32,766, PostgreSQL 65,535).
const MAX_PARAMETERS: usize = 30_000;

/// What one batch writes, each part in [`CHUNK`]s or fewer rows.
#[derive(Clone, Copy)]
pub(crate) struct Parts<'a> {
    pub(crate) consumed: &'a [(&'a str, MessageId)],
    pub(crate) writes: &'a [&'a SagaWrite],
    pub(crate) history: &'a [&'a HistoryRecord],
    pub(crate) outgoing: &'a [&'a Message],
    /// The queue outgoing messages go straight into, in place (else into the outbox).
    pub(crate) queue: Option<&'a QueueTables>,
}

impl Parts<'_> {
    /// Each part's rows and parameters per row, in statement order.
    fn widths(&self) -> [(usize, usize); 4] {
        let message = match self.queue {
            Some(_) => sql::queue::INSERT_COLUMNS,
            None => sql::outbox::INSERT_COLUMNS,
        };
        [
            (self.consumed.len(), sql::received::INSERT_COLUMNS),
            (self.writes.len(), sql::instances::UPDATE_COLUMNS.len()),
            (self.history.len(), sql::history::INSERT_COLUMNS),
            (self.outgoing.len(), message),
        ]
    }

    /// Whether one statement can carry them all.
    fn fit(&self) -> bool {
        let widths = self.widths();
        let parameters: usize = widths.iter().map(|(rows, per_row)| rows * per_row).sum();
        widths.iter().all(|&(rows, _)| rows <= CHUNK) && parameters <= MAX_PARAMETERS
    }

    /// Rows the statement must write: every part's, in full.
    fn rows(&self) -> u64 {
        (self.consumed.len() + self.writes.len() + self.history.len() + self.outgoing.len()) as u64
    }
}

/// The statements of the parts that have rows, each numbering its parameters after the one
/// before.
fn statements(dialect: Dialect, parts: &Parts<'_>) -> Vec<(&'static str, String)> {
    let mut first = 1;
    let mut statements = Vec::new();
    for (part, (rows, per_row)) in parts.widths().into_iter().enumerate() {
        if rows == 0 {
            continue;
        }
        statements.push(match part {
            0 => ("r", sql::received::insert_all_sql(dialect, first, rows)),
            1 => ("u", sql::instances::update_many_sql(dialect, first, rows)),
            2 => ("h", sql::history::insert_sql(dialect, first, rows)),
            _ => match parts.queue {
                Some(table) => ("o", sql::queue::insert_sql(dialect, table, first, rows)),
                None => ("o", sql::outbox::insert_sql(dialect, first, rows)),
            },
        });
        first += rows * per_row;
    }
    statements
}

/// The one query: on SQLite the statements in turn; on PostgreSQL each a CTE returning a row
/// per row it wrote, and a count of them all.
fn query_text(dialect: Dialect, statements: &[(&'static str, String)]) -> String {
    match dialect {
        Dialect::Sqlite => statements
            .iter()
            .map(|(_, sql)| sql.as_str())
            .collect::<Vec<_>>()
            .join(";\n"),
        Dialect::Postgres => {
            let ctes: Vec<String> = statements
                .iter()
                .map(|(name, sql)| format!("{name} AS ({sql} RETURNING 1)"))
                .collect();
            let counts: Vec<String> = statements
                .iter()
                .map(|(name, _)| format!("(SELECT count(*) FROM {name})"))
                .collect();
            format!(
                "WITH {} SELECT {} AS written",
                ctes.join(", "),
                counts.join(" + ")
            )
        }
    }
}

/// Writes `parts` with one statement: `Some(true)` when every row was written, `Some(false)`
/// when a dedup record already existed or a saga row had moved on, `None` (nothing done)
/// when they are too many for one statement.
pub(crate) async fn write(
    conn: Conn<'_>,
    parts: &Parts<'_>,
    at: i64,
) -> Result<Option<bool>, StoreError> {
    if !parts.fit() {
        return Ok(None);
    }
    let dialect = conn.dialect();
    let statements = statements(dialect, parts);
    if statements.is_empty() {
        return Ok(Some(true));
    }
    let sql = query_text(dialect, &statements);
    let columns: Vec<Columns<'_>> = parts.writes.iter().map(|w| Columns::of(w)).collect();
    let events = sql::history::events(parts.history)?;
    let headers: Vec<_> = parts
        .outgoing
        .iter()
        .map(|m| headers_json(&m.headers))
        .collect();
    let written = on_backend!(conn, |c| {
        let mut statement = query(AssertSqlSafe(sql));
        for record in parts.consumed {
            statement = sql::received::bind_record!(statement, record, at);
        }
        for (columns, write) in columns.iter().zip(parts.writes) {
            statement =
                bind_columns!(statement, columns, at).bind(write.expected_version.map(to_i64));
        }
        for entry in parts.history.iter().zip(&events) {
            statement = sql::history::bind_entry!(statement, entry);
        }
        for message in parts.outgoing.iter().zip(&headers) {
            statement = match parts.queue {
                Some(_) => sql::queue::bind_message!(statement, message, at),
                None => sql::outbox::bind_message!(statement, message, at),
            };
        }
        match dialect {
            // The rows changed, summed over the statements.
            Dialect::Sqlite => statement
                .execute(c)
                .await
                .map(|done| done.rows_affected())
                .map_err(store_error),
            Dialect::Postgres => statement
                .fetch_one(c)
                .await
                .map_err(store_error)?
                .int("written")
                .map(to_u64),
        }
    })?;
    Ok(Some(written == parts.rows()))
}

#[cfg(test)]
mod tests {
    use saga_core::engine::HistoryEvent;
    use saga_core::{Headers, SagaId, Timestamp};

    use super::*;
    use crate::db::savepoint::Glued;
    use crate::sql::instances::tests::{insert, record};
    use crate::sql::testing::databases;

    #[tokio::test]
    async fn units_write_in_one_statement_and_a_duplicate_or_a_stale_row_shows() {
        for db in databases("units::write").await {
            let table = QueueTables::of(&db.database);
            let mut tx = db.database.begin().await.expect("begins");
            let id = SagaId::new();
            assert!(
                sql::instances::write(tx.conn(), &insert(record(id, 1)), 10)
                    .await
                    .expect("inserts")
            );
            let received = MessageId::new();
            let update = SagaWrite {
                record: record(id, 2),
                expected_version: Some(1),
            };
            let entry = HistoryRecord {
                saga_id: id,
                at: Timestamp(20),
                event: HistoryEvent::StepSucceeded {
                    step: "reserve".to_owned(),
                },
            };
            let command = Message::new(
                "kitchen",
                Headers::new().with("message-type", "Reserve"),
                "{}".to_owned(),
            );
            let (consumed, writes, history, outgoing) = (
                [("orchestrator", received)],
                [&update],
                [&entry],
                [&command],
            );
            let parts = Parts {
                consumed: &consumed,
                writes: &writes,
                history: &history,
                outgoing: &outgoing,
                queue: Some(&table),
            };
            assert_eq!(
                write(tx.conn(), &parts, 20).await.expect("writes"),
                Some(true)
            );
            let loaded = sql::instances::load(tx.conn(), id).await.expect("loads");
            assert_eq!(loaded.map(|r| r.version), Some(2));
            assert_eq!(
                sql::history::list(tx.conn(), id)
                    .await
                    .expect("reads")
                    .len(),
                1
            );
            let queued =
                sql::queue::take(tx.conn(), &table, Glued::NONE, "kitchen", Timestamp(30), 10)
                    .await
                    .expect("takes");
            assert_eq!(queued.len(), 1);

            // Again: the dedup record exists and the row moved on.
            assert_eq!(
                write(tx.conn(), &parts, 30).await.expect("runs"),
                Some(false)
            );
            // A fresh message, but the row moved on.
            let fresh = [("orchestrator", MessageId::new())];
            let stale = Parts {
                consumed: &fresh,
                ..parts
            };
            assert_eq!(
                write(tx.conn(), &stale, 30).await.expect("runs"),
                Some(false)
            );
            // Too many for one statement: nothing done, the caller goes table by table.
            let many: Vec<_> = (0..=CHUNK)
                .map(|_| ("orchestrator", MessageId::new()))
                .collect();
            let too_many = Parts {
                consumed: &many,
                ..parts
            };
            assert_eq!(write(tx.conn(), &too_many, 30).await.expect("runs"), None);
            tx.rollback().await.expect("rolls back");
            db.drop().await;
        }
    }
}
