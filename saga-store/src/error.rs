//! Errors, and the mapping of sqlx errors onto saga-core's port errors.

use saga_core::ports::{StoreError, TransportError};

/// Why a database could not be opened or prepared.
#[derive(Debug, thiserror::Error)]
pub enum DatabaseError {
    /// The URL names no supported database.
    #[error("unsupported database URL `{0}`: expected sqlite:… or postgres://…")]
    UnsupportedUrl(String),
    /// The database did not answer (after the configured retries).
    #[error("cannot reach the database at {url}: {source}")]
    Unreachable {
        /// The URL, with any password removed.
        url: String,
        /// The last connection error.
        #[source]
        source: sqlx::Error,
    },
    /// A schema name that is not a plain identifier.
    #[error("invalid schema name {0:?}: use letters, digits and underscores")]
    InvalidSchema(String),
    /// Applying the migrations failed.
    #[error("migrating the database failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// Any other database error while opening it.
    #[error("database error while opening: {0}")]
    Sql(#[from] sqlx::Error),
}

/// Whether an sqlx error means the database is (momentarily) out of reach.
pub(crate) fn is_connection_error(err: &sqlx::Error) -> bool {
    matches!(
        err,
        sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed
            | sqlx::Error::Protocol(_)
    ) || matches!(err, sqlx::Error::Database(db) if db.code().is_some_and(|code| {
        // PostgreSQL: admin shutdown, crash shutdown, cannot connect now, connection failures.
        matches!(code.as_ref(), "57P01" | "57P02" | "57P03" | "08000" | "08003" | "08006" | "08001" | "08004")
    }))
}

/// Maps an sqlx error onto a [`StoreError`].
pub(crate) fn store_error(err: sqlx::Error) -> StoreError {
    if is_connection_error(&err) {
        StoreError::Unavailable(err.to_string())
    } else {
        StoreError::Other(err.to_string())
    }
}

/// Maps an sqlx error onto a [`TransportError`].
pub(crate) fn transport_error(err: sqlx::Error) -> TransportError {
    if is_connection_error(&err) {
        TransportError::Unavailable(err.to_string())
    } else {
        TransportError::Other(err.to_string())
    }
}

/// A store failure met by the transport (they share the database): still "unavailable" when
/// it was.
pub(crate) fn transport_error_of(err: StoreError) -> TransportError {
    match err {
        StoreError::Unavailable(reason) => TransportError::Unavailable(reason),
        other => TransportError::Other(other.to_string()),
    }
}

/// A stored value that does not read back.
pub(crate) fn corrupt(what: &str, err: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {err}"))
}
