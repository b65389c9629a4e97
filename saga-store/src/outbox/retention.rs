//! Retention: published outbox rows and old dedup records are deleted on a schedule, in
//! batches, so the tables do not grow without end.

use std::sync::Arc;

use saga_core::Timestamp;
use saga_core::ports::StoreError;

use crate::db::Database;
use crate::error::store_error;
use crate::options::{RetentionPolicy, RuntimeOptions};
use crate::sql::{self, millis, to_i64};
use crate::worker::Shutdown;

/// How many rows a retention pass deleted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RetentionReport {
    /// Published outbox rows.
    pub outbox: u64,
    /// Dedup records.
    pub received: u64,
}

/// Deletes published outbox rows and dedup records older than `policy` allows, in batches.
pub async fn apply_retention(
    database: &Database,
    policy: &RetentionPolicy,
) -> Result<RetentionReport, StoreError> {
    let now = Timestamp::now().as_millis();
    let outbox_cutoff = to_i64(now.saturating_sub(millis(policy.published_outbox)));
    let received_cutoff = to_i64(now.saturating_sub(millis(policy.received_messages)));
    let batch = to_i64(policy.batch as u64);
    let mut conn = database.acquire().await.map_err(store_error)?;
    let mut report = RetentionReport::default();
    loop {
        let deleted = sql::outbox::delete_published(conn.conn(), outbox_cutoff, batch).await?;
        report.outbox += deleted;
        if deleted < policy.batch as u64 {
            break;
        }
    }
    loop {
        let deleted = sql::received::delete_older(conn.conn(), received_cutoff, batch).await?;
        report.received += deleted;
        if deleted < policy.batch as u64 {
            break;
        }
    }
    Ok(report)
}

/// Applies retention to `database` every [`RetentionPolicy::interval`] until shutdown.
pub(crate) async fn retention_loop(
    database: Database,
    options: Arc<RuntimeOptions>,
    mut shutdown: Shutdown,
) {
    loop {
        if shutdown.pause(options.retention.interval, None).await {
            return;
        }
        match apply_retention(&database, &options.retention).await {
            Ok(deleted) if deleted.outbox + deleted.received > 0 => {
                tracing::info!(
                    outbox = deleted.outbox,
                    received = deleted.received,
                    "retention deleted processed rows"
                );
            }
            Ok(_) => {}
            Err(err) => tracing::warn!(error = %err, "retention failed; will try again"),
        }
    }
}
