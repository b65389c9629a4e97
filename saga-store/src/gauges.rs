//! The store gauges: every [`RuntimeOptions::gauges_every`], each database's
//! [`SqlSagaStore::stats`] — sagas by type and status, outbox backlog and its oldest row's
//! age, queue depth, unresolved dead letters — set as `metrics` gauges (names in
//! [`saga_core::telemetry::names`]), labelled with the database's [name](Database::name).

use std::collections::BTreeSet;
use std::sync::Arc;

use saga_core::Timestamp;
use saga_core::telemetry::names;

use crate::db::Database;
use crate::options::RuntimeOptions;
use crate::store::{SqlSagaStore, StoreStats};
use crate::worker::Shutdown;

/// The label sets set before, so that one that disappears (no more sagas in a status, an
/// emptied channel) goes back to zero instead of keeping its last value.
#[derive(Default)]
struct Seen {
    instances: BTreeSet<(String, &'static str)>,
    channels: BTreeSet<String>,
}

fn record(database: &str, stats: &StoreStats, seen: &mut Seen, now: Timestamp) {
    let db = database.to_owned();
    let mut instances = BTreeSet::new();
    for (saga_type, status, count) in &stats.sagas {
        metrics::gauge!(names::INSTANCES, "database" => db.clone(), "saga_type" => saga_type.clone(), "status" => status.as_str())
            .set(*count as f64);
        instances.insert((saga_type.clone(), status.as_str()));
    }
    for (saga_type, status) in seen.instances.difference(&instances) {
        metrics::gauge!(names::INSTANCES, "database" => db.clone(), "saga_type" => saga_type.clone(), "status" => *status)
            .set(0.0);
    }
    seen.instances = instances;
    metrics::gauge!(names::OUTBOX_BACKLOG, "database" => db.clone())
        .set(stats.outbox_backlog as f64);
    let oldest_age = stats.outbox_oldest.map_or(0, |oldest| {
        now.as_millis().saturating_sub(oldest.as_millis())
    });
    metrics::gauge!(names::OUTBOX_OLDEST_AGE, "database" => db.clone())
        .set(oldest_age as f64 / 1000.0);
    let mut channels = BTreeSet::new();
    for backlog in &stats.queue {
        metrics::gauge!(names::QUEUE_DEPTH, "database" => db.clone(), "channel" => backlog.channel.clone())
            .set(backlog.messages as f64);
        channels.insert(backlog.channel.clone());
    }
    for channel in seen.channels.difference(&channels) {
        metrics::gauge!(names::QUEUE_DEPTH, "database" => db.clone(), "channel" => channel.clone())
            .set(0.0);
    }
    seen.channels = channels;
    metrics::gauge!(names::DEAD_LETTERS_UNRESOLVED, "database" => db)
        .set(stats.dead_letters as f64);
}

/// Samples `database`'s gauges until shutdown.
pub(crate) async fn gauges_loop(
    database: Database,
    options: Arc<RuntimeOptions>,
    mut shutdown: Shutdown,
) {
    let Some(every) = options.gauges_every else {
        return;
    };
    let name = database.name();
    let store = SqlSagaStore::new(database);
    let mut seen = Seen::default();
    // The first sample after one interval: at start-up the workers have better things to do
    // with the database.
    loop {
        if shutdown.pause(every, None).await {
            return;
        }
        match store.stats().await {
            Ok(stats) => record(&name, &stats, &mut seen, Timestamp::now()),
            Err(err) => {
                tracing::debug!(database = %name, error = %err, "cannot sample the store gauges")
            }
        }
    }
}
