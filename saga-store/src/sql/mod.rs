//! The SQL, one file per table: each holds that table's statements (single-row and
//! multi-row) and its row codec, and nothing else touches the table.
//!
//! Every statement is written once and compiled for both backends with
//! [`on_backend!`](crate::on_backend); where the backends' column types differ — ids are
//! `uuid` and JSON is `jsonb` on PostgreSQL, both `TEXT` on SQLite — the `Bind` and `Get`
//! helpers pick each backend's encoding.

pub(crate) mod dead_letters;
pub(crate) mod definitions;
pub(crate) mod history;
pub(crate) mod instances;
pub(crate) mod leases;
pub mod locks;
pub(crate) mod outbox;
pub(crate) mod queue;
pub(crate) mod received;
#[cfg(test)]
pub(crate) mod testing;
pub(crate) mod units;

use std::time::Duration;

use saga_core::ports::StoreError;
use saga_core::{Headers, Message, MessageId};
use sqlx::postgres::PgRow;
use sqlx::query::Query;
use sqlx::sqlite::SqliteRow;
use sqlx::{Postgres, Row, Sqlite};
use uuid::Uuid;

use crate::db::Dialect;
use crate::error::corrupt;

/// Rows per multi-row statement (the widest row binds 18 parameters; SQLite allows 32 766).
pub(crate) const CHUNK: usize = 200;

/// `i64` for a `u64` column value (values beyond `i64::MAX` never occur: they are
/// milliseconds, sequences and counters).
pub(crate) fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// `u64` from an `i64` column value.
pub(crate) fn to_u64(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

/// A duration in milliseconds, saturating.
pub(crate) fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// The type of a column in a multi-row `VALUES` list, which PostgreSQL needs spelled out
/// where it cannot infer it (`UPDATE … FROM (VALUES …)`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Col {
    /// No cast: the target column says the type.
    Plain,
    /// `TEXT`.
    Text,
    /// `BIGINT`.
    BigInt,
    /// An id: `UUID` on PostgreSQL, `TEXT` on SQLite.
    Id,
    /// JSON: `JSONB` on PostgreSQL, `TEXT` on SQLite.
    Json,
}

/// The parameter number `n` on `dialect`: `$n` on PostgreSQL, a plain `?` on SQLite (where
/// sqlx looks numbered parameters up by name, which costs time quadratic in their count).
pub(crate) fn parameter(dialect: Dialect, n: usize) -> String {
    match dialect {
        Dialect::Postgres => format!("${n}"),
        Dialect::Sqlite => "?".to_owned(),
    }
}

/// `rows` rows of parameters, `(…), (…)`, numbered from 1, each column cast as `cols` says.
pub(crate) fn values(dialect: Dialect, rows: usize, cols: &[Col]) -> String {
    values_from(dialect, 1, rows, cols)
}

/// [`values`], numbered from `first` (for a statement that follows others in one query).
pub(crate) fn values_from(dialect: Dialect, first: usize, rows: usize, cols: &[Col]) -> String {
    let mut sql = String::new();
    let mut n = first - 1;
    for row in 0..rows {
        if row > 0 {
            sql.push_str(", ");
        }
        sql.push('(');
        for (column, col) in cols.iter().enumerate() {
            if column > 0 {
                sql.push_str(", ");
            }
            n += 1;
            let p = parameter(dialect, n);
            let cast = match (dialect, col) {
                (_, Col::Plain) | (Dialect::Sqlite, _) => p,
                (Dialect::Postgres, Col::Text) => format!("CAST({p} AS TEXT)"),
                (Dialect::Postgres, Col::BigInt) => format!("CAST({p} AS BIGINT)"),
                (Dialect::Postgres, Col::Id) => format!("CAST({p} AS UUID)"),
                (Dialect::Postgres, Col::Json) => format!("CAST({p} AS JSONB)"),
            };
            sql.push_str(&cast);
        }
        sql.push(')');
    }
    sql
}

/// `count` parameters for an `IN (…)` list, numbered from `first`.
pub(crate) fn placeholders(dialect: Dialect, first: usize, count: usize) -> String {
    (first..first + count)
        .map(|n| parameter(dialect, n))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Binds the column types that differ between the backends.
pub(crate) trait Bind: Sized {
    /// An id (a saga id, a message id): `uuid` on PostgreSQL, its text on SQLite.
    fn bind_id(self, id: Uuid) -> Self;
    /// An id or `NULL`.
    fn bind_opt_id(self, id: Option<Uuid>) -> Self;
    /// A JSON value: `jsonb` on PostgreSQL, its text on SQLite.
    fn bind_json(self, value: &serde_json::Value) -> Self;
}

impl Bind for Query<'_, Postgres, <Postgres as sqlx::Database>::Arguments> {
    fn bind_id(self, id: Uuid) -> Self {
        self.bind(id)
    }
    fn bind_opt_id(self, id: Option<Uuid>) -> Self {
        self.bind(id)
    }
    fn bind_json(self, value: &serde_json::Value) -> Self {
        self.bind(sqlx::types::Json(value))
    }
}

impl Bind for Query<'_, Sqlite, <Sqlite as sqlx::Database>::Arguments> {
    fn bind_id(self, id: Uuid) -> Self {
        self.bind(id.to_string())
    }
    fn bind_opt_id(self, id: Option<Uuid>) -> Self {
        self.bind(id.map(|id| id.to_string()))
    }
    fn bind_json(self, value: &serde_json::Value) -> Self {
        self.bind(value.to_string())
    }
}

/// Reads columns, each backend in its own types, every failure a [`StoreError::Corrupt`].
pub(crate) trait Get {
    /// A `TEXT` column.
    fn text(&self, column: &'static str) -> Result<String, StoreError>;
    /// A nullable `TEXT` column.
    fn opt_text(&self, column: &'static str) -> Result<Option<String>, StoreError>;
    /// A `BIGINT` column.
    fn int(&self, column: &'static str) -> Result<i64, StoreError>;
    /// A nullable `BIGINT` column.
    fn opt_int(&self, column: &'static str) -> Result<Option<i64>, StoreError>;
    /// An id column (see [`Bind::bind_id`]).
    fn id(&self, column: &'static str) -> Result<Uuid, StoreError>;
    /// A JSON column (see [`Bind::bind_json`]).
    fn json(&self, column: &'static str) -> Result<serde_json::Value, StoreError>;
}

impl Get for PgRow {
    fn text(&self, column: &'static str) -> Result<String, StoreError> {
        self.try_get(column).map_err(|e| corrupt(column, e))
    }
    fn opt_text(&self, column: &'static str) -> Result<Option<String>, StoreError> {
        self.try_get(column).map_err(|e| corrupt(column, e))
    }
    fn int(&self, column: &'static str) -> Result<i64, StoreError> {
        self.try_get(column).map_err(|e| corrupt(column, e))
    }
    fn opt_int(&self, column: &'static str) -> Result<Option<i64>, StoreError> {
        self.try_get(column).map_err(|e| corrupt(column, e))
    }
    fn id(&self, column: &'static str) -> Result<Uuid, StoreError> {
        self.try_get(column).map_err(|e| corrupt(column, e))
    }
    fn json(&self, column: &'static str) -> Result<serde_json::Value, StoreError> {
        self.try_get::<sqlx::types::Json<serde_json::Value>, _>(column)
            .map(|json| json.0)
            .map_err(|e| corrupt(column, e))
    }
}

impl Get for SqliteRow {
    fn text(&self, column: &'static str) -> Result<String, StoreError> {
        self.try_get(column).map_err(|e| corrupt(column, e))
    }
    fn opt_text(&self, column: &'static str) -> Result<Option<String>, StoreError> {
        self.try_get(column).map_err(|e| corrupt(column, e))
    }
    fn int(&self, column: &'static str) -> Result<i64, StoreError> {
        self.try_get(column).map_err(|e| corrupt(column, e))
    }
    fn opt_int(&self, column: &'static str) -> Result<Option<i64>, StoreError> {
        self.try_get(column).map_err(|e| corrupt(column, e))
    }
    fn id(&self, column: &'static str) -> Result<Uuid, StoreError> {
        self.text(column)?.parse().map_err(|e| corrupt(column, e))
    }
    fn json(&self, column: &'static str) -> Result<serde_json::Value, StoreError> {
        serde_json::from_str(&self.text(column)?).map_err(|e| corrupt(column, e))
    }
}

/// Headers as stored: a JSON object of strings.
pub(crate) fn headers_json(headers: &Headers) -> serde_json::Value {
    serde_json::to_value(headers).unwrap_or_default()
}

/// Headers read back.
pub(crate) fn headers_of(value: serde_json::Value) -> Result<Headers, serde_json::Error> {
    serde_json::from_value(value)
}

/// A message read back from its columns.
pub(crate) fn message(
    id: Uuid,
    destination: String,
    headers: serde_json::Value,
    payload: String,
) -> Result<Message, StoreError> {
    Ok(Message {
        id: MessageId(id),
        destination,
        headers: headers_of(headers).map_err(|e| corrupt("headers", e))?,
        payload,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_casts_parameters_per_dialect() {
        assert_eq!(
            values(Dialect::Postgres, 2, &[Col::Plain, Col::BigInt]),
            "($1, CAST($2 AS BIGINT)), ($3, CAST($4 AS BIGINT))"
        );
        assert_eq!(
            values(Dialect::Postgres, 1, &[Col::Id, Col::Json, Col::Text]),
            "(CAST($1 AS UUID), CAST($2 AS JSONB), CAST($3 AS TEXT))"
        );
        assert_eq!(
            values(Dialect::Sqlite, 2, &[Col::Id, Col::Json]),
            "(?, ?), (?, ?)"
        );
        assert_eq!(placeholders(Dialect::Postgres, 2, 3), "$2, $3, $4");
        assert_eq!(placeholders(Dialect::Sqlite, 2, 2), "?, ?");
    }

    #[test]
    fn nul_characters_are_escaped() {
        assert_eq!(without_nul("a\0b"), ("a\\u0000b".into(), true));
        assert_eq!(without_nul("ab"), ("ab".into(), false));
    }
}
