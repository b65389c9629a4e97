//! The outbox relay: publishes committed outbox rows to the transport, in order.
//!
//! One algorithm for every store and transport. A row the transport can never take — too
//! large, addressed to a name that is not a channel, refused as it is — is set aside
//! ([`SagaStore::set_aside`]): kept as a dead letter with the reason, and its saga told with a
//! failure reply, so it neither blocks the rows behind it nor leaves its saga waiting. Any other
//! publish failure keeps the rows in the outbox for the next pass.

use tracing::Instrument as _;

use crate::ports::{OutboxEntry, SagaStore, StoreError, Transport, TransportError};
use crate::{telemetry, trace};

/// Why a relay pass stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RelayError {
    /// Reading or marking the outbox failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Publishing failed; the rows stay in the outbox and are published on a later pass.
    #[error(transparent)]
    Transport(#[from] TransportError),
}

/// What one relay pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Relayed {
    /// Rows published.
    pub published: usize,
    /// Rows set aside as dead letters.
    pub set_aside: usize,
}

impl Relayed {
    /// Rows the pass took out of the outbox, either way.
    pub fn total(&self) -> usize {
        self.published + self.set_aside
    }
}

/// Publishes up to `limit` unpublished outbox rows and marks them published. Rows are marked
/// only after the transport accepted them, so a crash in between publishes them again
/// (at-least-once; consumers deduplicate on the message id).
pub async fn relay_batch<S, T>(
    store: &S,
    transport: &T,
    limit: usize,
) -> Result<Relayed, RelayError>
where
    S: SagaStore + ?Sized,
    T: Transport + ?Sized,
{
    let entries = store.unpublished(limit).await?;
    let mut relayed = Relayed::default();
    let mut fit: Vec<OutboxEntry> = Vec::with_capacity(entries.len());
    for entry in entries {
        match transport.check(&entry.message) {
            Ok(()) => fit.push(entry),
            Err(err) => {
                set_aside(store, &entry, &err).await?;
                relayed.set_aside += 1;
            }
        }
    }
    if fit.is_empty() {
        return Ok(relayed);
    }
    let messages: Vec<_> = fit.iter().map(|e| e.message.clone()).collect();
    let span = trace::publish_span(transport.system(), &messages);
    let started = std::time::Instant::now();
    let published = transport.publish(&messages).instrument(span.clone()).await;
    if published.is_ok() {
        telemetry::relay_published(transport.system(), messages.len(), started.elapsed());
    }
    if let Err(err) = published {
        trace::record_error(&span, err.class());
        let Some(id) = err.refused_message() else {
            return Err(err.into());
        };
        let Some(entry) = fit.iter().find(|e| e.message.id == id) else {
            return Err(err.into());
        };
        // The rows before it may have gone out; the next pass publishes them again and the
        // consumers' dedup (and a broker's duplicate window) absorbs the repeat.
        set_aside(store, entry, &err).await?;
        relayed.set_aside += 1;
        return Ok(relayed);
    }
    let sequences: Vec<u64> = fit.iter().map(|e| e.sequence).collect();
    store.mark_published(&sequences).await?;
    relayed.published = fit.len();
    Ok(relayed)
}

async fn set_aside<S: SagaStore + ?Sized>(
    store: &S,
    entry: &OutboxEntry,
    error: &TransportError,
) -> Result<(), StoreError> {
    let reason = format!("the transport cannot take it: {error}");
    telemetry::dead_lettered(telemetry::DeadLetterReason::Undeliverable);
    tracing::error!(message_id = %entry.message.id, destination = %entry.message.destination, %reason, "outbox message set aside as a dead letter");
    store.set_aside(entry, &reason).await
}
