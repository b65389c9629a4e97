//! The orchestrator's clocks: the timer loop that fires due deadlines (reply timeouts and
//! retry backoffs), and the watchdog that reports — and parks — sagas that stopped moving.

use std::sync::Arc;
use std::time::Duration;

use crate::consume::{SharedOrchestrator, SharedTransport};
use crate::options::RuntimeOptions;
use crate::worker::{Backoff, Shutdown};

/// Fires the orchestrator's due timers every [`RuntimeOptions::timer_interval`] (at once
/// again while a full batch was due) until shutdown.
pub(crate) async fn timer_loop(
    orchestrator: SharedOrchestrator,
    options: Arc<RuntimeOptions>,
    mut shutdown: Shutdown,
) {
    let mut backoff = Backoff::new(options.max_backoff);
    while !shutdown.requested() {
        let pause = match orchestrator.fire_due_timers(options.batch_size).await {
            Ok(fired) if fired == options.batch_size => Duration::ZERO,
            Ok(_) => {
                backoff.reset();
                options.timer_interval
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot fire timers");
                backoff.next()
            }
        };
        if shutdown.pause(pause, None).await {
            return;
        }
    }
}

/// Every [`WatchdogOptions::interval`](crate::WatchdogOptions::interval): reports (and per
/// [`WatchdogOptions::action`](crate::WatchdogOptions::action) parks)
/// the orchestrator's sagas that stopped moving, and reports channels whose messages nobody
/// takes.
pub(crate) async fn watchdog_loop(
    orchestrator: SharedOrchestrator,
    transport: SharedTransport,
    options: Arc<RuntimeOptions>,
    mut shutdown: Shutdown,
) {
    let watchdog = &options.watchdog;
    loop {
        if shutdown.pause(watchdog.interval, None).await {
            return;
        }
        match orchestrator
            .watchdog(watchdog.idle, watchdog.action, options.batch_size)
            .await
        {
            Ok(report) if !report.stalled.is_empty() => tracing::warn!(
                stuck = report.stalled.len(),
                parked = report.parked.len(),
                "the watchdog found stuck sagas"
            ),
            Ok(_) => {}
            Err(err) => tracing::warn!(error = %err, "the watchdog could not look for stuck sagas"),
        }
        match transport.unconsumed(watchdog.unconsumed_after).await {
            Ok(backlogs) => {
                for backlog in backlogs {
                    tracing::warn!(
                        channel = %backlog.channel,
                        messages = backlog.messages,
                        oldest = backlog.oldest.map(|t| t.as_millis()),
                        "messages wait on a channel that no consumer takes them from"
                    );
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, "the watchdog could not read the channels' backlog")
            }
        }
    }
}
