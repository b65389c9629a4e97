//! The workers that keep sagas moving, as tokio tasks:
//!
//! - an **outbox relay** per database: publishes committed outbox rows, in order, to the
//!   transport (on PostgreSQL a single active relay per schema, elected with an advisory lock);
//! - a **reply consumer** and a **timer loop** per orchestrator (a batch of replies: one
//!   load, one multi-row write, see `Orchestrator::handle_replies`);
//! - a **command consumer** per participant, handling each batch of commands in one
//!   transaction with their dedup records and their replies (one by one if any of them asks
//!   for a retry or fails);
//! - with the queue in the consumer's own database ([`RuntimeBuilder::in_place`]), consumers
//!   that take, handle and answer a batch in one transaction (`in_place`), with the leased
//!   consumer above as their fallback;
//! - a **retention** task per database, deleting old published outbox and dedup rows.
//!
//! Every loop survives errors: it logs them, backs off (up to `max_backoff`) and tries again,
//! so a database or broker that goes away and comes back loses nothing.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::{BoxFuture, join_all};
use saga_core::orchestrator::Orchestrator;
use saga_core::participant::Participant;
use saga_core::ports::{DeadLetter, Delivery, StoreError, Transport, TransportError};
use saga_core::{Message, Timestamp};
use sqlx::{AssertSqlSafe, query};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::bulk;
use crate::codec::to_i64;
use crate::database::{Database, Dialect, Topic, Tx};
use crate::error::store_error;
use crate::group::Finish;
use crate::in_place;
use crate::store::{SqlSagaStore, insert_dead_letter, mark_published_on, unpublished_on};
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
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        Self {
            batch_size: 64,
            poll_interval: Duration::from_millis(500),
            timer_interval: Duration::from_millis(50),
            max_backoff: Duration::from_secs(5),
            retention: RetentionPolicy::default(),
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
                orchestrator,
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

/// A stable advisory-lock key for the relay of one schema.
fn relay_lock_key(database: &Database) -> i64 {
    let name = format!("saga_relay:{}", database.schema().unwrap_or("public"));
    i64::from_ne_bytes(saga_core::definition::stable_hash(&name).to_ne_bytes())
}

async fn relay_loop(
    store: SqlSagaStore,
    transport: SharedTransport,
    options: Arc<RuntimeOptions>,
    mut shutdown: Shutdown,
) {
    let database = store.database().clone();
    let wake = database.wakeups().get(&Topic::Outbox);
    let mut backoff = Backoff::new(options.max_backoff);
    while !shutdown.requested() {
        let mut conn = match database.pool().acquire().await {
            Ok(conn) => conn,
            Err(err) => {
                tracing::warn!(error = %err, "outbox relay cannot reach its database");
                if shutdown.pause(backoff.next(), None).await {
                    return;
                }
                continue;
            }
        };
        if database.dialect() == Dialect::Postgres {
            let leader: Result<bool, _> = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
                .bind(relay_lock_key(&database))
                .fetch_one(&mut *conn)
                .await;
            match leader {
                Ok(true) => tracing::debug!("outbox relay is the active relay"),
                Ok(false) => {
                    drop(conn);
                    if shutdown.pause(options.poll_interval, None).await {
                        return;
                    }
                    continue;
                }
                Err(err) => {
                    tracing::warn!(error = %err, "outbox relay cannot take its lock");
                    if shutdown.pause(backoff.next(), None).await {
                        return;
                    }
                    continue;
                }
            }
        }
        // Relay while the connection (and with it the lock) lasts.
        loop {
            let relayed =
                relay_batch(&database, &mut conn, transport.as_ref(), options.batch_size).await;
            match relayed {
                Ok(Relayed::SetAside) => continue,
                Ok(Relayed::Published(count)) => {
                    backoff.reset();
                    if count == options.batch_size {
                        continue;
                    }
                    if shutdown.pause(options.poll_interval, Some(&wake)).await {
                        break;
                    }
                }
                Err(err) => {
                    tracing::warn!(error = %err, "outbox relay failed; rows stay in the outbox");
                    let _ = shutdown.pause(backoff.next(), None).await;
                    break;
                }
            }
        }
        // Close rather than return the connection: it may hold the advisory lock.
        let _ = conn.close().await;
    }
}

/// What one relay pass did.
enum Relayed {
    /// Published this many rows.
    Published(usize),
    /// Set a row the transport can never take aside as a dead letter.
    SetAside,
}

/// Publishes one batch of outbox rows on `conn`. A row the transport can never take (over
/// its size limit) is set aside as a dead letter, so it does not hold up the rows behind it.
async fn relay_batch(
    database: &Database,
    conn: &mut sqlx::AnyConnection,
    transport: &dyn Transport,
    limit: usize,
) -> Result<Relayed, String> {
    let entries = unpublished_on(conn, limit)
        .await
        .map_err(|e| e.to_string())?;
    if entries.is_empty() {
        return Ok(Relayed::Published(0));
    }
    let messages: Vec<Message> = entries.iter().map(|e| e.message.clone()).collect();
    match transport.publish(&messages).await {
        Ok(()) => {}
        Err(TransportError::TooLarge { id, size, limit }) => {
            let Some(entry) = entries.iter().find(|e| e.message.id == id) else {
                return Err(format!("the transport refused unknown message {id}"));
            };
            let reason = format!("{size} bytes is over the transport's limit of {limit}");
            tracing::error!(message_id = %id, %reason, "outbox message dead-lettered");
            let dead = DeadLetter {
                consumer: "outbox-relay".to_owned(),
                message: entry.message.clone(),
                reason,
                at: Timestamp::now(),
            };
            insert_dead_letter(conn, &dead)
                .await
                .map_err(|e| e.to_string())?;
            mark_published_on(conn, &[entry.sequence])
                .await
                .map_err(|e| e.to_string())?;
            database.count_commit();
            // The rows before it were published; the next pass republishes them (the
            // consumers' dedup, and NATS's duplicate window, absorb that) and goes on.
            return Ok(Relayed::SetAside);
        }
        Err(err) => return Err(err.to_string()),
    }
    let sequences: Vec<u64> = entries.iter().map(|e| e.sequence).collect();
    mark_published_on(conn, &sequences)
        .await
        .map_err(|e| e.to_string())?;
    database.count_commit();
    Ok(Relayed::Published(entries.len()))
}

/// A batch's handling in progress: each delivery with its verdict.
pub(crate) type Handling = BoxFuture<'static, Vec<(Delivery, Verdict)>>;

/// What handling one delivery came to.
pub(crate) enum Verdict {
    /// Done (or a duplicate): acknowledge it.
    Done,
    /// Give it back, to be delivered again after this delay.
    Retry(Duration),
    /// Handling failed (e.g. the database is away): give it back and back off.
    Failed(String),
}

/// Receives batches from a channel and hands each to `handle`, acknowledging, giving back or
/// backing off per delivery as its verdict says.
pub(crate) struct Consumer<F> {
    channel: String,
    group: String,
    transport: SharedTransport,
    options: Arc<RuntimeOptions>,
    backoff: Backoff,
    handle: F,
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
        }
    }

    /// Runs until shutdown.
    async fn run(mut self, mut shutdown: Shutdown) {
        while !shutdown.requested() {
            let wait = self.options.poll_interval;
            if self.pass(&mut shutdown, wait).await {
                return;
            }
        }
    }

    /// Receives one batch (waiting up to `wait` for it) and handles it; `true` on shutdown.
    pub(crate) async fn pass(&mut self, shutdown: &mut Shutdown, wait: Duration) -> bool {
        let (channel, group) = (&self.channel, &self.group);
        let transport = self.transport.as_ref();
        let deliveries = match transport
            .receive(channel, group, self.options.batch_size, wait)
            .await
        {
            Ok(deliveries) => deliveries,
            Err(err) => {
                tracing::warn!(%channel, error = %err, "cannot receive messages");
                return shutdown.pause(self.backoff.next(), None).await;
            }
        };
        if deliveries.is_empty() {
            return false;
        }
        let handled = (self.handle)(deliveries).await;
        let mut done = Vec::with_capacity(handled.len());
        let mut failed_pause = None;
        for (delivery, verdict) in handled {
            match verdict {
                Verdict::Done => done.push(delivery),
                Verdict::Retry(delay) => {
                    give_back(transport, channel, group, &delivery, delay).await;
                }
                Verdict::Failed(error) => {
                    tracing::warn!(%channel, message_id = %delivery.message.id, %error, "message not handled; it will be redelivered");
                    let delay = *failed_pause.get_or_insert_with(|| self.backoff.next());
                    give_back(transport, channel, group, &delivery, delay).await;
                }
            }
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
                            Err(err) => Verdict::Failed(err.to_string()),
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
    let max_backoff = options.max_backoff;
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
                        Ok(Handled::Retry(reason)) => {
                            let delay = retry_delay(delivery.attempt, max_backoff);
                            tracing::info!(message_id = %delivery.message.id, %reason, ?delay, "command will be retried");
                            Verdict::Retry(delay)
                        }
                        Err(err) => Verdict::Failed(err.to_string()),
                    };
                    (delivery, verdict)
                })
                .collect()
            })
        },
    )
}

/// The delay before redelivering a message after its `attempt`-th transient failure.
fn retry_delay(attempt: u32, max: Duration) -> Duration {
    let exponent = attempt.saturating_sub(1).min(16);
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
