//! The error behind an error: what a store, a transport or a decoder reported, kept as the
//! source of saga-core's own error types so callers can walk down to it and downcast it.

use std::error::Error;
use std::fmt;
use std::sync::Arc;

/// The error behind a store, transport or message failure. Shared, so that one failure can
/// reach every caller it concerns (all the pieces of work of a group commit, say).
///
/// As the `#[source]` of an error it is the underlying error *itself*, so
/// `err.source().and_then(|e| e.downcast_ref::<sqlx::Error>())` finds the driver's error;
/// [`ErrorSource::error`] gives it directly.
#[derive(Clone)]
pub struct ErrorSource(Arc<dyn Error + Send + Sync + 'static>);

impl ErrorSource {
    /// Wraps `error` (or a message, as a plain error).
    pub fn new(error: impl Into<Box<dyn Error + Send + Sync + 'static>>) -> Self {
        Self(Arc::from(error.into()))
    }

    /// The underlying error, e.g. to downcast it.
    pub fn error(&self) -> &(dyn Error + Send + Sync + 'static) {
        &*self.0
    }
}

/// Not an `Error` itself (on purpose): an error type's `#[source]` field of this type then
/// yields the underlying error, not a wrapper around it.
impl std::ops::Deref for ErrorSource {
    type Target = dyn Error + Send + Sync + 'static;

    fn deref(&self) -> &Self::Target {
        &*self.0
    }
}

impl fmt::Display for ErrorSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&*self.0, f)
    }
}

impl fmt::Debug for ErrorSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

/// Wraps any error (or a message, as a plain error) as an [`ErrorSource`].
pub fn source(error: impl Into<Box<dyn Error + Send + Sync + 'static>>) -> ErrorSource {
    ErrorSource::new(error)
}
