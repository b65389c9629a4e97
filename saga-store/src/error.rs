//! Errors: why a database could not be opened, and how sqlx's errors map onto saga-core's
//! port errors — keeping the sqlx error as the source and classifying it (transient or not),
//! which is what callers act on.

use saga_core::ports::{StoreError, TransportError};

/// Why a database could not be opened or prepared.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DatabaseError {
    /// The URL names no supported database.
    #[error("unsupported database URL `{url}`: expected sqlite:… or postgres://…")]
    UnsupportedUrl {
        /// The URL, with any password removed.
        url: String,
    },
    /// The database did not answer (after the configured retries).
    #[error("cannot reach the database at {url}: {source}")]
    Unreachable {
        /// The URL, with any password removed.
        url: String,
        /// The last connection error.
        #[source]
        source: sqlx::Error,
    },
    /// TLS to the database could not be set up: TLS not built in (the `postgres-tls`
    /// feature), a certificate that does not load or verify. A configuration problem, so it
    /// is reported at once instead of retried like an unreachable server.
    #[error(
        "TLS to the database at {url} failed: {source} (check sslmode, sslrootcert, sslcert and \
         sslkey, and that saga-store's `postgres-tls` feature is on)"
    )]
    Tls {
        /// The URL, with any password removed.
        url: String,
        /// The TLS error.
        #[source]
        source: sqlx::Error,
    },
    /// A schema name that is not a plain identifier ([`NameKind::SqlIdentifier`]).
    ///
    /// [`NameKind::SqlIdentifier`]: saga_core::message::NameKind::SqlIdentifier
    #[error("unusable schema: {source}")]
    InvalidSchema {
        /// What is wrong with the name.
        #[source]
        source: saga_core::message::InvalidName,
    },
    /// A role name that is not a plain identifier ([`NameKind::SqlIdentifier`]).
    ///
    /// [`NameKind::SqlIdentifier`]: saga_core::message::NameKind::SqlIdentifier
    #[error("unusable role: {source}")]
    InvalidRole {
        /// What is wrong with the name.
        #[source]
        source: saga_core::message::InvalidName,
    },
    /// An application's migration uses a version number saga-store keeps for its own tables.
    #[error(
        "migration {version} ({description}) uses a version below {}, which saga-store keeps \
         for its own tables; number your migrations by timestamp (e.g. 20261122000100_{description})",
        crate::db::SAGA_MIGRATION_VERSIONS
    )]
    ReservedMigrationVersion {
        /// The version.
        version: i64,
        /// The migration's description.
        description: String,
    },
    /// A store was to write straight into a queue that is not in another schema of its own
    /// PostgreSQL database ([`SqlSagaStore::co_located`](crate::SqlSagaStore::co_located)).
    #[error(
        "database `{database}` and the queue's database `{queue}` are not co-located: both must \
         be schemas of one PostgreSQL database (same host, port and database name); use the \
         outbox (`SqlSagaStore::new`) between separate databases"
    )]
    NotCoLocated {
        /// The store's database (its name in metrics).
        database: String,
        /// The queue's database.
        queue: String,
    },
    /// Applying the migrations failed.
    #[error("migrating the database failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// Any other database error while opening it.
    #[error("database error while opening: {0}")]
    Sql(#[from] sqlx::Error),
}

/// Whether `err` or one of its causes is a failed TLS handshake: rustls's error, also where
/// a TLS stream reports it inside an I/O error (a certificate that does not verify, or the
/// peer's alert when it wanted a client certificate). Such a failure does not fix itself.
#[cfg(any(feature = "postgres-tls", feature = "nats"))]
pub(crate) fn is_tls_handshake_failure(err: &(dyn std::error::Error + 'static)) -> bool {
    std::iter::successors(Some(err), |cause| cause.source()).any(|cause| {
        cause.is::<rustls::Error>()
            || cause
                .downcast_ref::<std::io::Error>()
                .and_then(std::io::Error::get_ref)
                .is_some_and(|inner| inner.is::<rustls::Error>())
    })
}

/// Whether an sqlx error is transient: the database is (momentarily) out of reach, or out of
/// resources, or the statement lost a race — worth retrying later, never a reason to give up
/// on the message being handled.
///
/// PostgreSQL SQLSTATEs: class 08 (connection), 40001 / 40P01 (serialization failure,
/// deadlock), class 53 (insufficient resources: disk full, out of memory, too many
/// connections), 55P03 / 55006 (lock or object in use), 57014 (statement timeout), class 57P
/// (shutdown, cannot connect now), class 58 (system and I/O errors), 25006 (read-only
/// transaction, as during a failover) and 25P03 (idle-in-transaction timeout). SQLite result
/// codes: BUSY, LOCKED, IOERR, FULL, PROTOCOL (primary codes 5, 6, 10, 13, 15).
pub fn is_transient(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| transient_code(&code)),
        _ => false,
    }
}

fn transient_code(code: &str) -> bool {
    // SQLSTATEs have five characters; SQLite's (extended) result codes are below 10 000.
    if code.len() < 5
        && let Ok(sqlite) = code.parse::<u32>()
    {
        return matches!(sqlite & 0xff, 5 | 6 | 10 | 13 | 15);
    }
    let class = code.get(..2).unwrap_or_default();
    matches!(class, "08" | "53" | "58")
        || code.starts_with("57P")
        || matches!(
            code,
            "40001" | "40P01" | "55P03" | "55006" | "57014" | "25006" | "25P03"
        )
}

/// An sqlx error as a [`StoreError`]: unavailable when transient, rejected otherwise — for
/// a [`Database::write`](crate::Database::write) closure that runs statements of its own.
pub fn store_error(err: sqlx::Error) -> StoreError {
    if is_transient(&err) {
        StoreError::unavailable(err)
    } else {
        StoreError::rejected(err)
    }
}

/// An sqlx error as a [`TransportError`]: unavailable when transient, failed otherwise.
pub(crate) fn transport_error(err: sqlx::Error) -> TransportError {
    if is_transient(&err) {
        TransportError::unavailable(err)
    } else {
        TransportError::failed(err)
    }
}

/// A store failure met by the transport (they share the database), keeping its source and
/// whether it is transient.
pub(crate) fn transport_error_of(err: StoreError) -> TransportError {
    match err {
        StoreError::Unavailable { source } => TransportError::Unavailable { source },
        other => TransportError::failed(other),
    }
}

/// A stored value that does not read back.
pub(crate) fn corrupt(
    what: &'static str,
    err: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
) -> StoreError {
    StoreError::corrupt(what, err)
}

#[cfg(test)]
mod tests {
    use super::{store_error, transient_code};

    #[test]
    fn a_store_error_keeps_the_sqlx_error_to_downcast() {
        use std::error::Error as _;
        let err = store_error(sqlx::Error::PoolTimedOut);
        assert!(err.is_transient(), "{err}");
        let source = err.source().expect("a source");
        assert!(
            matches!(
                source.downcast_ref::<sqlx::Error>(),
                Some(sqlx::Error::PoolTimedOut)
            ),
            "{source:?}"
        );
    }

    #[test]
    fn classifies_sqlstates_and_sqlite_codes() {
        for code in [
            "08006", "53100", "53300", "40001", "40P01", "57P01", "57014", "25006", "5", "517",
            "6", "13",
        ] {
            assert!(transient_code(code), "{code} is transient");
        }
        for code in [
            "23505", "22021", "42P01", "42501", "28P01", "19", "2067", "14",
        ] {
            assert!(!transient_code(code), "{code} is not transient");
        }
    }
}
