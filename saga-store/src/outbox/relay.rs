//! The outbox relay of one database: publishes committed outbox rows, in order, with
//! saga-core's one relay algorithm ([`saga_core::relay::relay_batch`]: rows the transport can
//! never take are set aside, their sagas told) — while this process holds the relay's lease
//! ([`crate::sql::leases`]): one relay per database at a time, replaced within
//! [`RuntimeOptions::relay_lease`] when its holder dies or hangs.

use std::sync::Arc;

use saga_core::ports::Transport;
use saga_core::relay::relay_batch;

use crate::db::Database;
use crate::db::wakeups::Topic;
use crate::options::RuntimeOptions;
use crate::sql::leases::Lease;
use crate::store::SqlSagaStore;
use crate::worker::{Backoff, Shutdown};

/// The lease name of the relay of `database`'s outbox (one per schema).
fn lease_name(database: &Database) -> String {
    format!("outbox-relay:{}", database.schema().unwrap_or("public"))
}

/// Relays `store`'s outbox until shutdown.
pub(crate) async fn relay_loop(
    store: SqlSagaStore,
    transport: Arc<dyn Transport>,
    options: Arc<RuntimeOptions>,
    mut shutdown: Shutdown,
) {
    let database = store.database().clone();
    let wake = database.wakeups().get(&Topic::Outbox);
    let mut lease = Lease::new(database.clone(), lease_name(&database), options.relay_lease);
    // Idle pauses stay short enough to renew the lease in time.
    let idle = options.poll_interval.min(options.relay_lease / 4);
    let mut backoff = Backoff::new(options.max_backoff);
    while !shutdown.requested() {
        match lease.hold().await {
            Ok(true) => {}
            Ok(false) => {
                if shutdown.pause(idle, None).await {
                    break;
                }
                continue;
            }
            Err(err) => {
                tracing::warn!(error = %err, "outbox relay cannot reach its database");
                if shutdown.pause(backoff.next(), None).await {
                    break;
                }
                continue;
            }
        }
        match relay_batch(&store, transport.as_ref(), options.batch_size).await {
            Ok(relayed) => {
                backoff.reset();
                if relayed.total() == options.batch_size || relayed.set_aside > 0 {
                    continue;
                }
                if shutdown.pause(idle, Some(&wake)).await {
                    break;
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, "outbox relay failed; rows stay in the outbox");
                if shutdown.pause(backoff.next(), None).await {
                    break;
                }
            }
        }
    }
    lease.release().await;
}
