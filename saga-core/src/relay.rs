//! The outbox relay: publishes committed outbox rows to the transport, in order.

use crate::ports::{SagaStore, StoreError, Transport, TransportError};

/// Why a relay pass stopped.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// Reading or marking the outbox failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Publishing failed; the rows stay in the outbox and are published on a later pass.
    #[error(transparent)]
    Transport(#[from] TransportError),
}

/// Publishes up to `limit` unpublished outbox rows and marks them published; returns how
/// many. Rows are marked only after the transport accepted them, so a crash in between
/// publishes them again (at-least-once; consumers deduplicate on the message id).
pub async fn relay_batch<S, T>(store: &S, transport: &T, limit: usize) -> Result<usize, RelayError>
where
    S: SagaStore + ?Sized,
    T: Transport + ?Sized,
{
    let entries = store.unpublished(limit).await?;
    if entries.is_empty() {
        return Ok(0);
    }
    let messages: Vec<_> = entries.iter().map(|e| e.message.clone()).collect();
    transport.publish(&messages).await?;
    let sequences: Vec<u64> = entries.iter().map(|e| e.sequence).collect();
    store.mark_published(&sequences).await?;
    Ok(entries.len())
}
