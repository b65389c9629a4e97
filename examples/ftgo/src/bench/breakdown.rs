//! Where a saga's time goes: a metrics recorder that sums the framework's own timings —
//! group-committed transactions, their `COMMIT`s, relay publishes, message waits — so a run
//! can say how much of each saga was spent in statements, in durable flushes, in the relay,
//! and (at one saga in flight, where nothing overlaps) how much between them.
//!
//! It is installed as the process's recorder when `ftgo bench` runs without
//! `--observe metrics` (which installs the Prometheus one instead).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use metrics::{
    Counter, Gauge, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder, SharedString, Unit,
};
use saga_core::telemetry::names;
use serde::Serialize;

/// The histograms summed, whatever their labels.
const TIMED: &[&str] = &[
    names::GROUP_COMMIT_LATENCY,
    names::COMMIT_LATENCY,
    names::RELAY_PUBLISH,
    names::MESSAGE_WAIT,
];

/// A histogram's count and sum (in nanoseconds, the values being seconds).
#[derive(Default)]
struct Sum {
    count: AtomicU64,
    nanos: AtomicU64,
}

impl HistogramFn for Sum {
    fn record(&self, seconds: f64) {
        self.count.fetch_add(1, Ordering::Relaxed);
        self.nanos
            .fetch_add((seconds.max(0.0) * 1e9) as u64, Ordering::Relaxed);
    }
}

/// Counts and sums, by histogram name.
#[derive(Clone, Copy, Debug, Default)]
struct Totals {
    count: u64,
    seconds: f64,
}

/// The recorder: sums the [`TIMED`] histograms, ignores every other metric.
pub(crate) struct Breakdown {
    sums: HashMap<&'static str, Arc<Sum>>,
}

static INSTALLED: OnceLock<Option<&'static Breakdown>> = OnceLock::new();

impl Breakdown {
    /// Installs it as the process's recorder (once); `None` if another recorder was there
    /// first.
    pub(crate) fn install() -> Option<&'static Self> {
        *INSTALLED.get_or_init(|| {
            let recorder: &'static Self = Box::leak(Box::new(Self {
                sums: TIMED.iter().map(|name| (*name, Arc::default())).collect(),
            }));
            metrics::set_global_recorder(recorder)
                .ok()
                .map(|()| recorder)
        })
    }

    fn totals(&self) -> HashMap<&'static str, Totals> {
        self.sums
            .iter()
            .map(|(name, sum)| {
                let totals = Totals {
                    count: sum.count.load(Ordering::Relaxed),
                    seconds: sum.nanos.load(Ordering::Relaxed) as f64 / 1e9,
                };
                (*name, totals)
            })
            .collect()
    }

    /// A mark to measure from.
    pub(crate) fn mark(&self) -> Mark {
        Mark(self.totals())
    }
}

/// The totals at one moment.
pub(crate) struct Mark(HashMap<&'static str, Totals>);

impl Mark {
    /// What was recorded since `self`, per saga of `sagas`; `mean_latency_ms` and
    /// `concurrency` say how much of a saga's time the figures account for.
    pub(crate) fn since(
        &self,
        recorder: &Breakdown,
        sagas: usize,
        concurrency: usize,
        mean_latency_ms: f64,
    ) -> PerSaga {
        let now = recorder.totals();
        let delta = |name: &str| {
            let (before, after) = (
                self.0.get(name).copied().unwrap_or_default(),
                now.get(name).copied().unwrap_or_default(),
            );
            Totals {
                count: after.count.saturating_sub(before.count),
                seconds: (after.seconds - before.seconds).max(0.0),
            }
        };
        let per_saga = |seconds: f64| seconds * 1000.0 / sagas.max(1) as f64;
        let (groups, commits, relay, wait) = (
            delta(names::GROUP_COMMIT_LATENCY),
            delta(names::COMMIT_LATENCY),
            delta(names::RELAY_PUBLISH),
            delta(names::MESSAGE_WAIT),
        );
        let in_transactions_ms = per_saga((groups.seconds - commits.seconds).max(0.0));
        let commit_ms = per_saga(commits.seconds);
        let relay_publish_ms = per_saga(relay.seconds);
        let busy = in_transactions_ms + commit_ms + relay_publish_ms;
        PerSaga {
            group_commits: groups.count as f64 / sagas.max(1) as f64,
            in_transactions_ms,
            commit_ms,
            relay_publish_ms,
            relay_publishes: relay.count as f64 / sagas.max(1) as f64,
            messages_waited: wait.count as f64 / sagas.max(1) as f64,
            wait_per_message_ms: match wait.count {
                0 => 0.0,
                n => wait.seconds * 1000.0 / n as f64,
            },
            between_ms: (concurrency == 1).then(|| (mean_latency_ms - busy).max(0.0)),
        }
    }
}

/// Where one saga's time went, on average (busy times summed over the run, divided by the
/// sagas; at more than one in flight they overlap, so they are work per saga, not latency).
#[derive(Clone, Debug, Serialize)]
pub struct PerSaga {
    /// Group-committed transactions (every consumer pass, participant batch and order
    /// placement is one of these, or part of one).
    pub group_commits: f64,
    /// Time inside those transactions before their `COMMIT`: the statements (take, dedup,
    /// handlers, saga and queue writes) and the hand-offs between them.
    pub in_transactions_ms: f64,
    /// Time in their `COMMIT`s: the durable flushes.
    pub commit_ms: f64,
    /// Time in the relay's publish calls (per service: into the queue database or NATS).
    pub relay_publish_ms: f64,
    /// Relay publish calls.
    pub relay_publishes: f64,
    /// Messages whose wait was measured (commands taken, replies applied).
    pub messages_waited: f64,
    /// A message's mean wait from being produced to being taken — which includes its
    /// producer's commit, the relay and the delivery (millisecond clock).
    pub wait_per_message_ms: f64,
    /// At one saga in flight: the mean latency less the busy times above — the time between
    /// the steps' work (wake-ups, hand-offs, polling, and commits outside group commits:
    /// relay stamps, queue claims and acknowledgements).
    pub between_ms: Option<f64>,
}

impl std::fmt::Display for PerSaga {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.1} group commits: {:.2} ms in their transactions + {:.2} ms committing; relay {:.2} ms in {:.1} publishes; {:.1} messages waited {:.2} ms each",
            self.group_commits,
            self.in_transactions_ms,
            self.commit_ms,
            self.relay_publish_ms,
            self.relay_publishes,
            self.messages_waited,
            self.wait_per_message_ms
        )?;
        if let Some(between) = self.between_ms {
            write!(f, "; {between:.2} ms between them")?;
        }
        Ok(())
    }
}

impl Recorder for Breakdown {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, _: &Key, _: &Metadata<'_>) -> Counter {
        Counter::noop()
    }

    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::noop()
    }

    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        match self.sums.get(key.name()) {
            Some(sum) => Histogram::from_arc(sum.clone()),
            None => Histogram::noop(),
        }
    }
}
