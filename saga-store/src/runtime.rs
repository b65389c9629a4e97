//! The workers that keep sagas moving, as tokio tasks:
//!
//! - an **outbox relay** per database: publishes committed outbox rows, in order, to the
//!   transport — one active relay per database at a time, holding an expiring lease
//!   (`crate::lease`), so a relay that dies or hangs is replaced;
//! - a **reply consumer** and a **timer loop** per orchestrator (a batch of replies: one
//!   load, one multi-row write, see `Orchestrator::handle_replies`);
//! - a **command consumer** per participant, handling each batch of commands in one
//!   transaction with their dedup records and their replies (one by one if any of them asks
//!   for a retry or fails);
//! - with the queue in the consumer's own database ([`RuntimeBuilder::in_place`]), consumers
//!   that take, handle and answer a batch in one transaction (`in_place`), with the leased
//!   consumer above as their fallback;
//! - a **retention** task per database, deleting old published outbox and dedup rows;
//! - a **watchdog** per orchestrator, reporting (and by default parking) sagas that stopped
//!   moving, and channels whose messages nobody takes.
//!
//! Every loop survives errors: it logs them, backs off (up to `max_backoff`) and tries again,
//! so a database or broker that goes away and comes back loses nothing.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::{BoxFuture, join_all};
use saga_core::orchestrator::{Orchestrator, OrchestratorError, WatchdogAction};
use saga_core::participant::Participant;
use saga_core::ports::{DeadLetter, Delivery, StoreError, Transport};
use saga_core::relay::relay_batch;
use saga_core::{Message, Timestamp};
use sqlx::{AssertSqlSafe, query};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::bulk;
use crate::codec::to_i64;
use crate::database::{Database, Topic, Tx};
use crate::error::store_error;
use crate::group::Finish;
use crate::in_place;
use crate::lease::Lease;
use crate::store::{SqlSagaStore, insert_dead_letter};
use crate::transport::SqlTransport;

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
}

/// Settings of the stuck-saga watchdog (see [`Orchestrator::watchdog`]).
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
            poll_interval: Duration::from_millis(500),
            timer_interval: Duration::from_millis(50),
            max_backoff: Duration::from_secs(5),
            retention: RetentionPolicy::default(),
            relay_lease: Duration::from_secs(10),
            hold_lease: Duration::from_secs(15),
            hold_limit: 256,
            permanent_failures: 5,
            hold_at_most: Duration::from_secs(3600),
            watchdog: WatchdogOptions::default(),
        }
    }
}

/// Exponential backoff after errors.
#[derive(Debug)]
pub(crate) struct Backoff {
    current: Duration,
    max: Duration,
}

impl Backoff {
    pub(crate) fn new(max: Duration) -> Self {
        Self {
            current: Duration::from_millis(50),
            max,
        }
    }

    pub(crate) fn next(&mut self) -> Duration {
        let delay = self.current;
        self.current = (self.current * 2).min(self.max);
        delay
    }

    pub(crate) fn reset(&mut self) {
        self.current = Duration::from_millis(50);
    }
}

/// A stop signal shared by the workers.
#[derive(Clone, Debug)]
pub(crate) struct Shutdown(watch::Receiver<bool>);

impl Shutdown {
    pub(crate) fn requested(&self) -> bool {
        *self.0.borrow()
    }

    /// Returns once shutdown is requested.
    pub(crate) async fn stopped(mut self) {
        let _ = self.0.wait_for(|stop| *stop).await;
    }

    /// Sleeps for `duration`, or until `wake` fires, or until shutdown; `true` on shutdown.
    pub(crate) async fn pause(
        &mut self,
        duration: Duration,
        wake: Option<&tokio::sync::Notify>,
    ) -> bool {
        let stop = self.0.wait_for(|stop| *stop);
        match wake {
            Some(notify) => tokio::select! {
                _ = stop => return true,
                _ = notify.notified() => {}
                () = tokio::time::sleep(duration) => {}
            },
            None => tokio::select! {
                _ = stop => return true,
                () = tokio::time::sleep(duration) => {}
            },
        }
        self.requested()
    }
}

type SharedTransport = Arc<dyn Transport>;
pub(crate) type SharedOrchestrator = Arc<Orchestrator<SqlSagaStore>>;

/// Collects what to run, then starts it.
pub struct RuntimeBuilder {
    transport: SharedTransport,
    options: RuntimeOptions,
    databases: Vec<Database>,
    orchestrators: Vec<SharedOrchestrator>,
    participants: Vec<(Database, Arc<Participant<Tx>>)>,
    /// The queue handled in place (see [`RuntimeBuilder::in_place`]).
    embedded: Option<SqlTransport>,
}

impl std::fmt::Debug for RuntimeBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuntimeBuilder")
            .field("options", &self.options)
            .field("databases", &self.databases.len())
            .field("orchestrators", &self.orchestrators.len())
            .field("participants", &self.participants.len())
            .field("embedded", &self.embedded.is_some())
            .finish_non_exhaustive()
    }
}

impl RuntimeBuilder {
    /// Handles messages in place where the SQL-table queue `queue` lives in the consumer's
    /// own database: orchestrators and participants on that database skip the outbox, and
    /// each batch of messages is taken from the queue, handled, and answered into the queue
    /// in **one** transaction (shared by group commit with other work), with no relay pass
    /// and no separate claim or acknowledgement. Whatever a pass cannot take (a retry, a
    /// conflict, an error) goes to the ordinary consumer over the builder's transport, with
    /// its leases, delivery counts and dead letters. From then on that database handle
    /// writes outgoing messages straight into its queue.
    pub fn in_place(mut self, queue: SqlTransport) -> Self {
        self.embedded = Some(queue);
        self
    }

    /// Overrides the worker settings.
    pub fn options(mut self, options: RuntimeOptions) -> Self {
        self.options = options;
        self
    }

    fn add_database(&mut self, database: &Database) {
        if !self.databases.iter().any(|d| d.same_pool(database)) {
            self.databases.push(database.clone());
        }
    }

    /// Runs an orchestrator: its reply consumer, its timers, and its store's relay.
    pub fn orchestrator(mut self, orchestrator: SharedOrchestrator) -> Self {
        let database = orchestrator.store().database().clone();
        self.add_database(&database);
        self.orchestrators.push(orchestrator);
        self
    }

    /// Runs a participant whose handlers work in transactions on `database`, and that
    /// database's relay (which publishes the participant's replies).
    pub fn participant(mut self, database: &Database, participant: Participant<Tx>) -> Self {
        self.add_database(database);
        self.participants
            .push((database.clone(), Arc::new(participant)));
        self
    }

    /// Relays (and applies retention to) a database that has no orchestrator or participant
    /// here.
    pub fn relay(mut self, database: &Database) -> Self {
        self.add_database(database);
        self
    }

    /// Starts every worker.
    pub fn start(self) -> SagaRuntime {
        let (stop, signal) = watch::channel(false);
        let shutdown = Shutdown(signal);
        let mut tasks = Vec::new();
        let options = Arc::new(self.options);
        for database in self.databases {
            tasks.push(tokio::spawn(relay_loop(
                SqlSagaStore::new(database.clone()),
                self.transport.clone(),
                options.clone(),
                shutdown.clone(),
            )));
            tasks.push(tokio::spawn(retention_loop(
                database,
                options.clone(),
                shutdown.clone(),
            )));
        }
        // With the queue in the consumer's own database, a message is taken, handled and
        // answered in one transaction (see `in_place`).
        let in_place = |database: &Database| {
            self.embedded
                .as_ref()
                .filter(|queue| queue.database().same_pool(database))
                .inspect(|_| database.set_queue_in_place())
                .cloned()
        };
        for orchestrator in self.orchestrators {
            let consumer = reply_consumer(
                orchestrator.clone(),
                self.transport.clone(),
                options.clone(),
            );
            tasks.push(match in_place(orchestrator.store().database()) {
                Some(queue) => tokio::spawn(in_place::reply_loop(
                    orchestrator.clone(),
                    queue,
                    consumer,
                    options.clone(),
                    shutdown.clone(),
                )),
                None => tokio::spawn(consumer.run(shutdown.clone())),
            });
            tasks.push(tokio::spawn(timer_loop(
                orchestrator.clone(),
                options.clone(),
                shutdown.clone(),
            )));
            tasks.push(tokio::spawn(watchdog_loop(
                orchestrator,
                self.transport.clone(),
                options.clone(),
                shutdown.clone(),
            )));
        }
        for (database, participant) in self.participants {
            let consumer = command_consumer(
                database.clone(),
                participant.clone(),
                self.transport.clone(),
                options.clone(),
            );
            tasks.push(match in_place(&database) {
                Some(queue) => tokio::spawn(in_place::command_loop(
                    participant,
                    queue,
                    consumer,
                    options.clone(),
                    shutdown.clone(),
                )),
                None => tokio::spawn(consumer.run(shutdown.clone())),
            });
        }
        SagaRuntime { stop, tasks }
    }
}

/// Running workers; [`SagaRuntime::shutdown`] stops them after the messages in hand.
#[derive(Debug)]
pub struct SagaRuntime {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl SagaRuntime {
    /// Collects workers over `transport`.
    pub fn builder(transport: Arc<dyn Transport>) -> RuntimeBuilder {
        RuntimeBuilder {
            transport,
            options: RuntimeOptions::default(),
            databases: Vec::new(),
            orchestrators: Vec::new(),
            participants: Vec::new(),
            embedded: None,
        }
    }

    /// Collects workers over the SQL-table queue in `transport`'s database, for an embedded
    /// deployment where sagas, participants and the queue share that one database: the same
    /// as `builder(transport).in_place(transport)` (see [`RuntimeBuilder::in_place`]).
    pub fn embedded(transport: SqlTransport) -> RuntimeBuilder {
        Self::builder(Arc::new(transport.clone())).in_place(transport)
    }

    /// Stops every worker and waits for them.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            if let Err(err) = task.await
                && err.is_panic()
            {
                tracing::error!(error = %err, "a saga worker panicked");
            }
        }
    }
}

/// The lease name of the relay of `database`'s outbox (one per schema).
fn relay_lease_name(database: &Database) -> String {
    format!("outbox-relay:{}", database.schema().unwrap_or("public"))
}

/// Publishes the outbox of one database while this process holds the relay's lease (see
/// [`crate::lease`]): one relay per database at a time, replaced within
/// [`RuntimeOptions::relay_lease`] when its holder dies or hangs.
async fn relay_loop(
    store: SqlSagaStore,
    transport: SharedTransport,
    options: Arc<RuntimeOptions>,
    mut shutdown: Shutdown,
) {
    let database = store.database().clone();
    let wake = database.wakeups().get(&Topic::Outbox);
    let mut lease = Lease::new(
        database.clone(),
        relay_lease_name(&database),
        options.relay_lease,
    );
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

/// Sets a delivery aside as a dead letter (its saga told); `false` — and a warning — when the
/// transport could not, and the consumer keeps it.
async fn set_aside(
    transport: &dyn Transport,
    channel: &str,
    group: &str,
    delivery: &Delivery,
    reason: &str,
) -> bool {
    match transport
        .dead_letter(channel, group, delivery, reason)
        .await
    {
        Ok(()) => true,
        Err(err) => {
            tracing::warn!(%channel, message_id = %delivery.message.id, error = %err, "could not set a failing message aside; keeping it");
            false
        }
    }
}

impl Verdict {
    fn reason(&self) -> String {
        match self {
            Self::Done => "handled".to_owned(),
            Self::Retry(reason) => reason.clone(),
            Self::Failed(error) => error.to_string(),
        }
    }
}

/// A batch's handling in progress: each delivery with its verdict.
pub(crate) type Handling = BoxFuture<'static, Vec<(Delivery, Verdict)>>;

/// What handling one delivery came to.
pub(crate) enum Verdict {
    /// Done (or a duplicate): acknowledge it.
    Done,
    /// The handler asked for another try (a transient failure), for this reason.
    Retry(String),
    /// Handling failed: try again after backing off. A transient failure (the database is
    /// away) is tried for as long as it lasts; a permanent one is set aside after
    /// [`RuntimeOptions::permanent_failures`] tries.
    Failed(StoreError),
}

/// A delivery that failed for a transient reason, kept by its consumer to be tried again.
#[derive(Debug)]
struct Held {
    delivery: Delivery,
    /// When to try again.
    due: tokio::time::Instant,
    /// Failed tries so far.
    tries: u32,
    /// Of those, the last ones in a row that failed for a permanent reason.
    permanent: u32,
    /// When it first failed.
    since: tokio::time::Instant,
}

/// Receives batches from a channel and hands each to `handle`, acknowledging or keeping each
/// delivery as its verdict says.
///
/// A delivery that fails for a transient reason is not given back to the transport: the
/// consumer holds it, renews its lease ([`Transport::extend`]) and tries it again itself
/// after a backoff. Its delivery count — the poison budget — thus grows only when a consumer
/// took it and never answered (crashed, hung), however long the database stays away; and
/// while it holds [`RuntimeOptions::hold_limit`] messages it takes no new ones. On shutdown
/// it gives what it holds back.
pub(crate) struct Consumer<F> {
    channel: String,
    group: String,
    transport: SharedTransport,
    options: Arc<RuntimeOptions>,
    backoff: Backoff,
    handle: F,
    held: Vec<Held>,
    /// When the held deliveries' leases were last renewed.
    extended: tokio::time::Instant,
    /// It holds as many as it may, and told the transport it takes no new ones for now.
    paused: bool,
}

impl<F, Fut> Consumer<F>
where
    F: FnMut(Vec<Delivery>) -> Fut,
    Fut: std::future::Future<Output = Vec<(Delivery, Verdict)>>,
{
    fn new(
        channel: String,
        group: String,
        transport: SharedTransport,
        options: Arc<RuntimeOptions>,
        handle: F,
    ) -> Self {
        Self {
            channel,
            group,
            transport,
            backoff: Backoff::new(options.max_backoff),
            options,
            handle,
            held: Vec::new(),
            extended: tokio::time::Instant::now(),
            paused: false,
        }
    }

    /// Runs until shutdown.
    async fn run(mut self, mut shutdown: Shutdown) {
        while !shutdown.requested() {
            let wait = self.options.poll_interval;
            if self.pass(&mut shutdown, wait).await {
                break;
            }
        }
        self.stop().await;
    }

    /// Whether it holds deliveries to try again.
    pub(crate) fn holds_any(&self) -> bool {
        !self.held.is_empty()
    }

    /// Gives every held delivery back to the transport (at shutdown).
    pub(crate) async fn stop(&mut self) {
        for held in std::mem::take(&mut self.held) {
            give_back(
                self.transport.as_ref(),
                &self.channel,
                &self.group,
                &held.delivery,
                Duration::ZERO,
            )
            .await;
        }
    }

    /// Renews the leases of the held deliveries every third of [`RuntimeOptions::hold_lease`]
    /// (or of the transport's own lease, if that is shorter).
    async fn extend_held(&mut self) {
        let lease = self
            .transport
            .lease()
            .map_or(self.options.hold_lease, |lease| {
                lease.min(self.options.hold_lease)
            });
        let every = lease / 3;
        if self.held.is_empty() || self.extended.elapsed() < every {
            return;
        }
        self.extended = tokio::time::Instant::now();
        let deliveries: Vec<Delivery> = self.held.iter().map(|h| h.delivery.clone()).collect();
        let renewed = self
            .transport
            .extend(
                &self.channel,
                &self.group,
                &deliveries,
                self.options.hold_lease,
            )
            .await;
        if let Err(err) = renewed {
            // Not fatal: a lease that runs out lets another consumer take the message, and
            // the dedup records turn the second handling away.
            tracing::warn!(channel = %self.channel, held = deliveries.len(), error = %err, "could not renew held messages' leases");
        }
    }

    /// Handles one batch — the held deliveries that are due, then new ones (waiting up to
    /// `wait` for them) while it holds fewer than its limit; `true` on shutdown.
    pub(crate) async fn pass(&mut self, shutdown: &mut Shutdown, wait: Duration) -> bool {
        self.extend_held().await;
        let now = tokio::time::Instant::now();
        let (due, later): (Vec<Held>, Vec<Held>) = std::mem::take(&mut self.held)
            .into_iter()
            .partition(|held| held.due <= now);
        self.held = later;
        let mut tries: std::collections::HashMap<u64, (u32, u32, tokio::time::Instant)> = due
            .iter()
            .map(|h| (h.delivery.receipt, (h.tries, h.permanent, h.since)))
            .collect();
        let mut deliveries: Vec<Delivery> = due.into_iter().map(|h| h.delivery).collect();
        // The due ones are still held while they are tried again.
        let holding = self.held.len() + deliveries.len();
        let room = self
            .options
            .batch_size
            .saturating_sub(deliveries.len())
            .min(self.options.hold_limit.saturating_sub(holding));
        // With held deliveries waiting, wait no longer than until the next one is due.
        let next_due = self.held.iter().map(|h| h.due).min();
        let wait = match (deliveries.is_empty(), next_due) {
            (false, _) => Duration::ZERO,
            (true, Some(due)) => wait.min(due.saturating_duration_since(now)),
            (true, None) => wait,
        };
        let (channel, group) = (&self.channel, &self.group);
        let transport = self.transport.as_ref();
        let full = holding >= self.options.hold_limit;
        if full && !self.paused {
            tracing::warn!(%channel, held = holding, "holding as many failing messages as allowed; taking no new ones until some succeed");
            transport.pause(channel, group).await;
        }
        self.paused = full;
        if room > 0 {
            match transport.receive(channel, group, room, wait).await {
                Ok(fresh) => deliveries.extend(fresh),
                Err(err) => {
                    tracing::warn!(%channel, error = %err, "cannot receive messages");
                    if deliveries.is_empty() {
                        return shutdown.pause(self.backoff.next(), None).await;
                    }
                }
            }
        } else if deliveries.is_empty() && shutdown.pause(wait, None).await {
            return true;
        }
        if deliveries.is_empty() {
            return false;
        }
        let handled = (self.handle)(deliveries).await;
        let mut done = Vec::with_capacity(handled.len());
        let mut failed_pause = None;
        let max_backoff = self.options.max_backoff;
        for (delivery, verdict) in handled {
            let (tried, permanent, since) =
                tries
                    .remove(&delivery.receipt)
                    .unwrap_or((0, 0, tokio::time::Instant::now()));
            let tried = tried + 1;
            if !matches!(verdict, Verdict::Done) && since.elapsed() >= self.options.hold_at_most {
                let reason = format!(
                    "still failing after {} s and {tried} tries: {}",
                    since.elapsed().as_secs(),
                    verdict.reason()
                );
                if set_aside(transport, channel, group, &delivery, &reason).await {
                    continue;
                }
            }
            let (delay, permanent) = match verdict {
                Verdict::Done => {
                    done.push(delivery);
                    continue;
                }
                Verdict::Retry(reason) => {
                    let delay = retry_delay(tried, max_backoff);
                    tracing::info!(%channel, message_id = %delivery.message.id, %reason, tries = tried, ?delay, "message will be tried again");
                    (delay, 0)
                }
                Verdict::Failed(error) if error.is_transient() => {
                    tracing::warn!(%channel, message_id = %delivery.message.id, %error, tries = tried, "message not handled; trying it again after a pause");
                    (*failed_pause.get_or_insert_with(|| self.backoff.next()), 0)
                }
                Verdict::Failed(error) => {
                    let permanent = permanent + 1;
                    if permanent >= self.options.permanent_failures {
                        let reason = format!("failed {permanent} times in a row: {error}");
                        if set_aside(transport, channel, group, &delivery, &reason).await {
                            continue;
                        }
                    }
                    tracing::warn!(%channel, message_id = %delivery.message.id, %error, tries = tried, "message failed; trying it again after a pause");
                    (retry_delay(tried, max_backoff), permanent)
                }
            };
            if self.held.is_empty() {
                self.extended = tokio::time::Instant::now();
            }
            self.held.push(Held {
                delivery,
                due: tokio::time::Instant::now() + delay,
                tries: tried,
                permanent,
                since,
            });
        }
        if !done.is_empty() {
            if failed_pause.is_none() {
                self.backoff.reset();
            }
            if let Err(err) = transport.ack_all(channel, group, &done).await {
                // Not fatal: the messages come again and their dedup records turn them away.
                tracing::warn!(%channel, count = done.len(), error = %err, "ack failed");
            }
        }
        match failed_pause {
            Some(delay) => shutdown.pause(delay, None).await,
            None => false,
        }
    }
}

/// The orchestrator's reply consumer: one load and one commit per batch (see
/// [`Orchestrator::handle_replies`]).
pub(crate) fn reply_consumer(
    orchestrator: SharedOrchestrator,
    transport: SharedTransport,
    options: Arc<RuntimeOptions>,
) -> Consumer<impl FnMut(Vec<Delivery>) -> Handling> {
    let channel = orchestrator.reply_channel().to_owned();
    let group = format!("orchestrator:{channel}");
    Consumer::new(
        channel,
        group,
        transport,
        options,
        move |deliveries| -> BoxFuture<'static, _> {
            let orchestrator = orchestrator.clone();
            Box::pin(async move {
                let messages: Vec<Message> = deliveries.iter().map(|d| d.message.clone()).collect();
                let results = orchestrator.handle_replies(&messages).await;
                deliveries
                    .into_iter()
                    .zip(results)
                    .map(|(delivery, result)| {
                        let verdict = match result {
                            Ok(_) => Verdict::Done,
                            Err(OrchestratorError::Store(err)) => Verdict::Failed(err),
                            // The saga kept changing under concurrent writers: try later.
                            Err(err @ OrchestratorError::Contended(..)) => {
                                Verdict::Failed(StoreError::Unavailable(err.to_string()))
                            }
                            Err(err) => Verdict::Failed(StoreError::Other(err.to_string())),
                        };
                        (delivery, verdict)
                    })
                    .collect()
            })
        },
    )
}

async fn timer_loop(
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

/// Every [`WatchdogOptions::interval`]: reports (and per [`WatchdogOptions::action`] parks)
/// the orchestrator's sagas that stopped moving, and reports channels whose messages nobody
/// takes.
async fn watchdog_loop(
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

/// What handling one command did.
pub(crate) enum Handled {
    Done,
    Duplicate,
    Retry(String),
}

/// Handles one command in one (group-committed) transaction: dedup record, the handler's own
/// writes, the reply (into the outbox) and any dead letter.
async fn handle_command(
    store: &SqlSagaStore,
    participant: Arc<Participant<Tx>>,
    message: Message,
) -> Result<Handled, StoreError> {
    let in_place = store.database().queue_in_place();
    store
        .database()
        .submit(
            move |tx| {
                Box::pin(async move {
                    let ran =
                        run_commands_in(tx, &participant, std::slice::from_ref(&message), in_place)
                            .await?;
                    Ok(match ran {
                        Ok((mut outcomes, _)) => match outcomes.pop() {
                            Some(Handled::Done) => Finish::Commit(Handled::Done),
                            // A duplicate: nothing was written.
                            _ => Finish::Rollback(Handled::Duplicate),
                        },
                        Err(reason) => Finish::Rollback(Handled::Retry(reason)),
                    })
                })
            },
            true,
        )
        .await
}

/// Runs a batch of commands inside `tx`: one statement records them all as received (a
/// duplicate is skipped), each handler runs, one statement queues all replies. Returns each
/// command's outcome and the replies' channels, or — if a handler asked for a retry — its
/// reason, and the caller must undo the batch.
pub(crate) async fn run_commands_in(
    tx: &mut Tx,
    participant: &Participant<Tx>,
    batch: &[Message],
    in_place: bool,
) -> Result<Result<(Vec<Handled>, Vec<String>), String>, StoreError> {
    let now = Timestamp::now();
    let at = to_i64(now.as_millis());
    let ids: Vec<_> = batch.iter().map(|m| m.id).collect();
    let mut fresh = bulk::insert_received(tx, participant.name(), &ids, at).await?;
    let mut outcomes = Vec::with_capacity(batch.len());
    let mut replies = Vec::new();
    let mut dead_letters = Vec::new();
    for message in batch {
        // `remove`: a message twice in one batch runs once.
        if !fresh.remove(&message.id.to_string()) {
            outcomes.push(Handled::Duplicate);
            continue;
        }
        let dispatch = participant.dispatch(tx, message).await;
        if let Some(reason) = dispatch.retry {
            return Ok(Err(reason));
        }
        replies.extend(dispatch.reply);
        dead_letters.extend(dispatch.dead_letter.map(|reason| DeadLetter {
            consumer: participant.name().to_owned(),
            message: message.clone(),
            reason,
            at: now,
        }));
        outcomes.push(Handled::Done);
    }
    let replies: Vec<&Message> = replies.iter().collect();
    bulk::insert_outbox(tx, &replies, at, in_place).await?;
    for dead in &dead_letters {
        insert_dead_letter(tx, dead).await?;
    }
    let destinations = replies.iter().map(|m| m.destination.clone()).collect();
    Ok(Ok((outcomes, destinations)))
}

/// Handles a batch of commands in one transaction: one statement records them all as
/// received (duplicates are skipped), each handler runs, one statement queues all replies.
/// If any handler asks for a retry, or anything fails, the batch is undone and its commands
/// are handled one by one ([`handle_command`]), so one bad command affects only itself.
async fn handle_commands(
    store: &SqlSagaStore,
    participant: &Arc<Participant<Tx>>,
    messages: Vec<Message>,
) -> Vec<Result<Handled, StoreError>> {
    if messages.len() > 1 {
        let batch = messages.clone();
        let participant_in_tx = participant.clone();
        let in_place = store.database().queue_in_place();
        let batched = store
            .database()
            .submit(
                move |tx| {
                    Box::pin(async move {
                        Ok(
                            match run_commands_in(tx, &participant_in_tx, &batch, in_place).await? {
                                Ok((outcomes, _)) => Finish::Commit(Some(outcomes)),
                                Err(_) => Finish::Rollback(None),
                            },
                        )
                    })
                },
                true,
            )
            .await;
        match batched {
            Ok(Some(outcomes)) => return outcomes.into_iter().map(Ok).collect(),
            Ok(None) => {
                tracing::debug!("a command asked for a retry; handling the batch one by one")
            }
            Err(err) => tracing::debug!(error = %err, "batch failed; handling it one by one"),
        }
    }
    // One by one, concurrently, so their transactions still share group commits.
    join_all(
        messages
            .into_iter()
            .map(|message| handle_command(store, participant.clone(), message)),
    )
    .await
}

/// A participant's command consumer: batches handled in one transaction where they can be
/// (see [`handle_commands`]).
pub(crate) fn command_consumer(
    database: Database,
    participant: Arc<Participant<Tx>>,
    transport: SharedTransport,
    options: Arc<RuntimeOptions>,
) -> Consumer<impl FnMut(Vec<Delivery>) -> Handling> {
    let store = Arc::new(SqlSagaStore::new(database));
    let channel = participant.channel().to_owned();
    let group = participant.name().to_owned();
    Consumer::new(
        channel,
        group,
        transport,
        options,
        move |deliveries| -> BoxFuture<'static, _> {
            let (store, participant) = (store.clone(), participant.clone());
            Box::pin(async move {
                let messages = deliveries.iter().map(|d| d.message.clone()).collect();
                let results = handle_commands(&store, &participant, messages).await;
                deliveries
                    .into_iter()
                    .zip(results)
                    .map(|(delivery, result)| {
                        let verdict = match result {
                            Ok(Handled::Done | Handled::Duplicate) => Verdict::Done,
                            Ok(Handled::Retry(reason)) => Verdict::Retry(reason),
                            Err(err) => Verdict::Failed(err),
                        };
                        (delivery, verdict)
                    })
                    .collect()
            })
        },
    )
}

/// The delay before trying a message again after its `tries`-th transient failure.
fn retry_delay(tries: u32, max: Duration) -> Duration {
    let exponent = tries.saturating_sub(1).min(16);
    (Duration::from_millis(100) * 2u32.pow(exponent)).min(max)
}

async fn give_back(
    transport: &dyn Transport,
    channel: &str,
    group: &str,
    delivery: &Delivery,
    delay: Duration,
) {
    if let Err(err) = transport.release(channel, group, delivery, delay).await {
        // Not fatal: the lease runs out and the message comes again.
        tracing::warn!(%channel, message_id = %delivery.message.id, error = %err, "release failed");
    }
}

async fn retention_loop(database: Database, options: Arc<RuntimeOptions>, mut shutdown: Shutdown) {
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
    let mut report = RetentionReport::default();
    loop {
        let deleted = query(
            "DELETE FROM saga_outbox WHERE sequence IN (SELECT sequence FROM saga_outbox \
             WHERE published_at IS NOT NULL AND published_at < $1 LIMIT $2)",
        )
        .bind(outbox_cutoff)
        .bind(batch)
        .execute(database.pool())
        .await
        .map_err(store_error)?
        .rows_affected();
        report.outbox += deleted;
        if deleted < policy.batch as u64 {
            break;
        }
    }
    loop {
        let deleted = query(AssertSqlSafe(
            "DELETE FROM saga_received WHERE (consumer, message_id) IN \
             (SELECT consumer, message_id FROM saga_received WHERE received_at < $1 LIMIT $2)",
        ))
        .bind(received_cutoff)
        .bind(batch)
        .execute(database.pool())
        .await
        .map_err(store_error)?
        .rows_affected();
        report.received += deleted;
        if deleted < policy.batch as u64 {
            break;
        }
    }
    Ok(report)
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
