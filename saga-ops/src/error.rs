//! What can go wrong while operating sagas.

use saga_core::ports::StoreError;
use saga_store::{DatabaseError, DeadLetterError, OperatorRequestError};

/// Why an operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpsError {
    /// The database could not be opened.
    #[error("cannot open the saga database: {0}")]
    Database(#[from] DatabaseError),
    /// A query failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// An operator request could not be sent.
    #[error(transparent)]
    Request(#[from] OperatorRequestError),
    /// A dead letter could not be replayed or discarded.
    #[error(transparent)]
    DeadLetter(#[from] DeadLetterError),
    /// Something asked for does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The request does not make sense.
    #[error("{0}")]
    Usage(String),
    /// Output could not be written.
    #[error("cannot write the output: {0}")]
    Output(#[from] std::io::Error),
}
