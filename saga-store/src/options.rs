//! The settings of the workers, with their defaults and what each bounds.

use std::time::Duration;

use saga_core::orchestrator::WatchdogAction;
use saga_core::versions::UnknownVersionPolicy;

use crate::db::Dialect;

/// How old processed rows must be before retention deletes them.
#[derive(Clone, Debug)]
pub struct RetentionPolicy {
    /// Published outbox rows are kept this long (default 1 hour).
    pub published_outbox: Duration,
    /// Dedup records are kept this long (default 7 days). Keep it longer than any redelivery
    /// can take, or a very late duplicate would be processed again.
    pub received_messages: Duration,
    /// How often retention runs (default 5 minutes).
    pub interval: Duration,
    /// Rows deleted per statement (default 10 000), to keep transactions short.
    pub batch: usize,
}

impl Default for RetentionPolicy {
    fn default() -> Self {
        Self {
            published_outbox: Duration::from_secs(3600),
            received_messages: Duration::from_secs(7 * 24 * 3600),
            interval: Duration::from_secs(300),
            batch: 10_000,
        }
    }
}

/// Settings of the workers.
#[derive(Clone, Debug)]
pub struct RuntimeOptions {
    /// Messages handled per batch (default 64).
    pub batch_size: usize,
    /// In place: how many passes of other local channels one pass may chain onto its
    /// transaction (default 16; 0 turns chaining off). See
    /// [`RuntimeBuilder::in_place`](crate::RuntimeBuilder::in_place).
    pub chained_passes: usize,
    /// How many consumers each channel has in this process, each taking batches of its own
    /// (in place: passes running at once, each in a transaction of its own; otherwise leased
    /// consumers). Default: 1 on SQLite, whose single writer runs one transaction at a time
    /// anyway (measured: more only cost throughput there). On PostgreSQL, where one consumer
    /// per channel made the sagas in flight travel as one herd, channel after channel, while
    /// the machine sat two-thirds idle: 4 in place (4 passes of 8 messages doubled the
    /// throughput at 32 and 256 sagas in flight), 2 leased (20–50 % more at 256 in flight,
    /// as much as 4 gave, and at 8 in flight no loss, where 4 cost up to 15 %). Each saga's
    /// messages on a channel are still handled one at a time, in order: the SQL queue hands
    /// out only a saga's oldest message. A transport that cannot keep that order across
    /// consumers (NATS: [`Transport::orders_each_saga`](saga_core::ports::Transport::orders_each_saga))
    /// gets one leased consumer per channel whatever this says.
    pub channel_consumers: Option<usize>,
    /// In place: the most messages one pass takes. Default: `batch_size` on SQLite; 8 on
    /// PostgreSQL, so that the messages waiting on a channel spread over its
    /// [`channel_consumers`](Self::channel_consumers) and each pass's answers reach the next
    /// channel sooner.
    pub pass_batch: Option<usize>,
    /// How long an idle loop waits for a wake-up before looking for work anyway (default
    /// 500 ms).
    pub poll_interval: Duration,
    /// How often the timer loop looks for due timers (default 50 ms).
    pub timer_interval: Duration,
    /// The longest pause after repeated errors (default 5 s).
    pub max_backoff: Duration,
    /// Retention of processed rows.
    pub retention: RetentionPolicy,
    /// How long the relay of a database keeps its lease without renewing it (default 10 s):
    /// when the process holding it dies or hangs, another process's relay takes over within
    /// this time.
    pub relay_lease: Duration,
    /// How long a consumer keeps a message it failed to handle for a transient reason (a
    /// database refusing writes, a lost connection) away from other consumers between two
    /// renewals while it tries again itself (default 15 s; renewed every third of it).
    /// Messages held this way do not use up their poison budget.
    pub hold_lease: Duration,
    /// The most messages a consumer holds for another try; while it holds that many it takes
    /// no new ones (default 256).
    pub hold_limit: usize,
    /// How many times in a row a message may fail for a reason that is not transient (a
    /// constraint its writes break, data the store cannot read) before it is set aside as a
    /// dead letter and its saga told (default 5).
    pub permanent_failures: u32,
    /// How long a consumer keeps trying a message that keeps failing for transient reasons
    /// before it sets it aside as a dead letter, to be replayed once the cause is fixed
    /// (default 1 hour). A command's saga usually stops waiting much sooner (its step's
    /// timeout); this bounds the rest, such as notifications.
    pub hold_at_most: Duration,
    /// The stuck-saga watchdog.
    pub watchdog: WatchdogOptions,
    /// How often each database's store gauges (sagas by status, outbox backlog, queue depth,
    /// dead letters) are sampled for metrics (default 10 s; `None`: never). Each sample runs
    /// a handful of `COUNT` queries.
    pub gauges_every: Option<Duration>,
    /// What [`RuntimeBuilder::start`](crate::RuntimeBuilder::start) does with sagas in flight
    /// on a definition version no orchestrator here registers (neither current, retired nor
    /// migrated): refuse to start (the default), or park them in `failed` with the reason.
    pub unknown_versions: UnknownVersionPolicy,
}

/// Settings of the stuck-saga watchdog (see [`Orchestrator::watchdog`](saga_core::orchestrator::Orchestrator::watchdog)).
#[derive(Clone, Debug)]
pub struct WatchdogOptions {
    /// How often it looks (default 1 minute).
    pub interval: Duration,
    /// A running saga with no deadline that has not changed for this long, or whose deadline
    /// is overdue by this much, is stuck (default 15 minutes).
    pub idle: Duration,
    /// Report stuck sagas, or report and park them (default: park).
    pub action: WatchdogAction,
    /// Channels whose oldest message nobody has taken for this long are reported (default 5
    /// minutes).
    pub unconsumed_after: Duration,
}

impl Default for WatchdogOptions {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(60),
            idle: Duration::from_secs(15 * 60),
            action: WatchdogAction::Park,
            unconsumed_after: Duration::from_secs(5 * 60),
        }
    }
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        Self {
            batch_size: 64,
            chained_passes: 16,
            channel_consumers: None,
            pass_batch: None,
            poll_interval: Duration::from_millis(500),
            timer_interval: Duration::from_millis(50),
            max_backoff: Duration::from_secs(5),
            retention: RetentionPolicy::default(),
            relay_lease: Duration::from_secs(10),
            hold_lease: Duration::from_secs(15),
            hold_limit: 256,
            permanent_failures: 5,
            hold_at_most: Duration::from_secs(3600),
            gauges_every: Some(Duration::from_secs(10)),
            watchdog: WatchdogOptions::default(),
            unknown_versions: UnknownVersionPolicy::Refuse,
        }
    }
}

impl RuntimeOptions {
    /// [`channel_consumers`](Self::channel_consumers), or its default on `dialect`, in place
    /// or leased.
    pub(crate) fn channel_consumers_on(&self, dialect: Dialect, in_place: bool) -> usize {
        let default = match (dialect, in_place) {
            (Dialect::Sqlite, _) => 1,
            (Dialect::Postgres, true) => 4,
            (Dialect::Postgres, false) => 2,
        };
        self.channel_consumers.unwrap_or(default).max(1)
    }

    /// [`pass_batch`](Self::pass_batch), or its default on `dialect`.
    pub(crate) fn pass_batch_on(&self, dialect: Dialect) -> usize {
        let default = match dialect {
            Dialect::Sqlite => self.batch_size,
            Dialect::Postgres => 8,
        };
        self.pass_batch.unwrap_or(default).max(1)
    }
}
