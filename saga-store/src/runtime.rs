//! The workers, wired together: [`RuntimeBuilder`] collects what to run, [`SagaRuntime`] runs
//! it as tokio tasks until shut down.
//!
//! - an **outbox relay** and a **retention** task per database ([`crate::outbox`]);
//! - a **reply consumer**, a **timer loop** and a **watchdog** per orchestrator, which also
//!   records the saga types it runs in `saga_definitions` (for the `saga` CLI and console);
//! - a **command consumer** per participant (`consume`);
//! - a **gauges** sampler per database (`gauges`), for metrics.
//!
//! With the queue in the consumers' own database ([`RuntimeBuilder::in_place`]) the consumers
//! of that database take, handle and answer each batch in one transaction. Every loop
//! survives errors: it logs them, backs off and tries again, so a database or broker that goes
//! away and comes back loses nothing.

use std::collections::HashMap;
use std::sync::Arc;

use saga_core::orchestrator::OrchestratorError;
use saga_core::participant::Participant;
use saga_core::ports::{Delivery, Transport};
use saga_core::versions::UnknownVersionPolicy;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::consume::commands::{self, Commands};
use crate::consume::{Consumer, SharedOrchestrator, Verdict, in_place, replies, timers};
use crate::db::Database;
use crate::db::backend::TxContext;
use crate::gauges;
use crate::options::RuntimeOptions;
use crate::outbox::{relay, retention};
use crate::store::SqlSagaStore;
use crate::transport::sql::SqlTransport;
use crate::worker::{Backoff, Shutdown};

/// Collects what to run, then starts it.
pub struct RuntimeBuilder {
    transport: Arc<dyn Transport>,
    options: RuntimeOptions,
    databases: Vec<Database>,
    orchestrators: Vec<SharedOrchestrator>,
    participants: Vec<(Database, Arc<dyn Commands>)>,
    /// The queue whose database's consumers handle messages in place.
    in_place: Option<SqlTransport>,
}

impl std::fmt::Debug for RuntimeBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuntimeBuilder")
            .field("options", &self.options)
            .field("databases", &self.databases.len())
            .field("orchestrators", &self.orchestrators.len())
            .field("participants", &self.participants.len())
            .field("in_place", &self.in_place.is_some())
            .finish_non_exhaustive()
    }
}

impl RuntimeBuilder {
    /// Handles messages in place where the SQL-table queue `queue` lives in the consumer's
    /// own database — or, co-located, in another schema of the same PostgreSQL database: each
    /// batch of messages is taken from the queue, handled, and answered into the queue in
    /// **one** transaction on the consumer's database (shared by group commit with other
    /// work), with no relay pass and no separate claim or acknowledgement. Participants on
    /// such a database reply straight into the queue; build orchestrators with
    /// [`SqlSagaStore::in_place`] (or [`SqlSagaStore::co_located`]) so their commands do
    /// too. Whatever a pass cannot take (a
    /// retry, a conflict, an error) goes to the ordinary consumer over the builder's
    /// transport, with its leases, delivery counts and dead letters.
    pub fn in_place(mut self, queue: SqlTransport) -> Self {
        self.in_place = Some(queue);
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

    /// Runs an orchestrator: its reply consumer, its timers, its watchdog, and its store's
    /// relay.
    pub fn orchestrator(mut self, orchestrator: SharedOrchestrator) -> Self {
        let database = orchestrator.store().database().clone();
        self.add_database(&database);
        self.orchestrators.push(orchestrator);
        self
    }

    /// Runs a participant whose handlers work in transactions on `database` — the portable
    /// [`Tx`](crate::Tx), or that backend's own [`PgTx`](crate::PgTx) /
    /// [`SqliteTx`](crate::SqliteTx) — and that database's relay (which publishes the
    /// participant's replies).
    ///
    /// # Panics
    ///
    /// If the participant's handlers take one backend's transactions and `database` is of the
    /// other.
    pub fn participant<C: TxContext>(
        mut self,
        database: &Database,
        participant: Participant<C>,
    ) -> Self {
        self.add_database(database);
        let participant = commands::erase(database, participant);
        self.participants.push((database.clone(), participant));
        self
    }

    /// Relays (and applies retention to) a database that has no orchestrator or participant
    /// here.
    pub fn relay(mut self, database: &Database) -> Self {
        self.add_database(database);
        self
    }

    /// The queue to handle `database`'s messages in place with, if it is that database's or
    /// in another schema of the same PostgreSQL database.
    fn in_place_queue(&self, database: &Database) -> Option<SqlTransport> {
        self.in_place
            .as_ref()
            .filter(|queue| {
                queue.database().same_pool(database)
                    || database.is_co_located_with(queue.database())
            })
            .cloned()
    }

    /// The channels handled in place, each with its database and handler: a pass on one
    /// handles the messages it sends to the others on the same database in the same
    /// transaction.
    fn local_channels(&self) -> in_place::LocalChannels {
        let mut handlers = HashMap::new();
        for orchestrator in &self.orchestrators {
            let database = orchestrator.store().database();
            if self.in_place_queue(database).is_some() {
                handlers.insert(
                    orchestrator.reply_channel().to_owned(),
                    (
                        database.clone(),
                        in_place::reply_handler(orchestrator.clone()),
                    ),
                );
            }
        }
        for (database, participant) in &self.participants {
            if let Some(queue) = self.in_place_queue(database) {
                handlers.insert(
                    participant.channel().to_owned(),
                    (
                        database.clone(),
                        in_place::command_handler(participant.clone(), queue),
                    ),
                );
            }
        }
        in_place::LocalChannels::new(handlers)
    }

    /// Checks each orchestrator's sagas in flight against the versions it registers
    /// ([`Orchestrator::prepare_versions`](saga_core::orchestrator::Orchestrator::prepare_versions):
    /// refused or parked per [`RuntimeOptions::unknown_versions`]), then starts every worker.
    /// A database that does not answer is tried again for up to
    /// [`VERSION_CHECK_PATIENCE`] before the start fails.
    pub async fn start(self) -> Result<SagaRuntime, StartError> {
        for orchestrator in &self.orchestrators {
            check_versions(orchestrator, self.options.unknown_versions).await?;
        }
        Ok(self.start_workers())
    }

    fn start_workers(self) -> SagaRuntime {
        let (stop, signal) = watch::channel(false);
        let shutdown = Shutdown(signal);
        let mut tasks = Vec::new();
        // Tasks that end once done (not workers): waited for at shutdown, not watched.
        let mut once = Vec::new();
        let options = Arc::new(self.options.clone());
        let local = self.local_channels();
        for database in &self.databases {
            tasks.push(tokio::spawn(relay::relay_loop(
                SqlSagaStore::new(database.clone()),
                self.transport.clone(),
                options.clone(),
                shutdown.clone(),
            )));
            tasks.push(tokio::spawn(retention::retention_loop(
                database.clone(),
                options.clone(),
                shutdown.clone(),
            )));
            if options.gauges_every.is_some() {
                tasks.push(tokio::spawn(gauges::gauges_loop(
                    database.clone(),
                    options.clone(),
                    shutdown.clone(),
                )));
            }
        }
        for orchestrator in &self.orchestrators {
            orchestrator.set_messaging_system(
                match self.in_place_queue(orchestrator.store().database()) {
                    Some(queue) => queue.system(),
                    None => self.transport.system(),
                },
            );
            once.push(tokio::spawn(record_definitions(
                orchestrator.clone(),
                shutdown.clone(),
            )));
            let consumer = || {
                replies::consumer(
                    orchestrator.clone(),
                    self.transport.clone(),
                    options.clone(),
                )
            };
            let database = orchestrator.store().database();
            let channel = Channel {
                name: orchestrator.reply_channel(),
                database,
                queue: self.in_place_queue(database),
                local: &local,
            };
            tasks.extend(self.spawn_channel(channel, consumer, &options, &shutdown));
            tasks.push(tokio::spawn(timers::timer_loop(
                orchestrator.clone(),
                options.clone(),
                shutdown.clone(),
            )));
            tasks.push(tokio::spawn(timers::watchdog_loop(
                orchestrator.clone(),
                self.transport.clone(),
                options.clone(),
                shutdown.clone(),
            )));
        }
        for (database, participant) in &self.participants {
            let queue = self.in_place_queue(database);
            let consumer = || {
                commands::consumer(
                    database.clone(),
                    participant.clone(),
                    self.transport.clone(),
                    options.clone(),
                    queue.clone(),
                )
            };
            let channel = Channel {
                name: participant.channel(),
                database,
                queue: queue.clone(),
                local: &local,
            };
            tasks.extend(self.spawn_channel(channel, consumer, &options, &shutdown));
        }
        SagaRuntime { stop, tasks, once }
    }

    /// Starts the consumers of `channel` ([`RuntimeOptions::channel_consumers`] of them):
    /// in-place passes when it has an in-place queue (each with a leased consumer of its own
    /// as its fallback), else leased consumers — one only, unless the transport keeps each
    /// saga's messages in order across consumers ([`Transport::orders_each_saga`]).
    fn spawn_channel<C, Fut>(
        &self,
        channel: Channel<'_>,
        consumer: impl Fn() -> Consumer<C>,
        options: &Arc<RuntimeOptions>,
        shutdown: &Shutdown,
    ) -> Vec<JoinHandle<()>>
    where
        C: FnMut(Vec<Delivery>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Vec<(Delivery, Verdict)>> + Send + 'static,
    {
        let database = channel.database;
        let passes = channel.queue.map(|queue| in_place::ChannelPasses {
            channel: channel.name.to_owned(),
            database: database.clone(),
            local: channel.local.clone(),
            queue,
        });
        let mut count = options.channel_consumers_on(database.dialect(), passes.is_some());
        if passes.is_none() && !self.transport.orders_each_saga() && count > 1 {
            if options.channel_consumers.is_some() {
                tracing::warn!(
                    asked = count,
                    "the transport does not keep a saga's messages in order across consumers; \
                     each channel gets one"
                );
            }
            count = 1;
        }
        (0..count)
            .map(|n| match &passes {
                Some(passes) => tokio::spawn(in_place::pass_loop(
                    passes.clone(),
                    n == 0,
                    consumer(),
                    options.clone(),
                    shutdown.clone(),
                )),
                None => tokio::spawn(consumer().run(shutdown.clone())),
            })
            .collect()
    }
}

/// A channel to start consumers for: its name, the database its handling transactions run
/// on, and, handled in place, its queue and the runtime's in-place channels.
struct Channel<'a> {
    name: &'a str,
    database: &'a Database,
    queue: Option<SqlTransport>,
    local: &'a in_place::LocalChannels,
}

/// How long [`RuntimeBuilder::start`] keeps trying to read the sagas in flight from a
/// database that does not answer.
pub const VERSION_CHECK_PATIENCE: std::time::Duration = std::time::Duration::from_secs(30);

/// Why a runtime did not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// An orchestrator's sagas in flight include versions it cannot run, its registered
    /// versions contradict each other, or its database could not be read.
    #[error("the orchestrator on `{reply_channel}` cannot start: {source}")]
    Versions {
        /// The orchestrator's reply channel.
        reply_channel: String,
        /// Why.
        #[source]
        source: Box<OrchestratorError>,
    },
}

/// The start-up version check of one orchestrator, tried again while its database does not
/// answer (for up to [`VERSION_CHECK_PATIENCE`]).
async fn check_versions(
    orchestrator: &SharedOrchestrator,
    policy: UnknownVersionPolicy,
) -> Result<(), StartError> {
    let give_up = tokio::time::Instant::now() + VERSION_CHECK_PATIENCE;
    let mut backoff = Backoff::new(std::time::Duration::from_secs(2));
    loop {
        let error = match orchestrator.prepare_versions(policy).await {
            Ok(report) => {
                for (version, coverage) in &report.versions {
                    tracing::info!(
                        saga_type = %version.saga_type,
                        version = %version.version,
                        running = version.running,
                        parked = version.parked,
                        coverage = ?coverage,
                        "sagas in flight"
                    );
                }
                return Ok(());
            }
            Err(error) => error,
        };
        let transient = matches!(&error, OrchestratorError::Store(err) if err.is_transient());
        if !transient || tokio::time::Instant::now() >= give_up {
            return Err(StartError::Versions {
                reply_channel: orchestrator.reply_channel().to_owned(),
                source: Box::new(error),
            });
        }
        tracing::warn!(error = %error, "cannot read the sagas in flight yet; retrying");
        tokio::time::sleep(backoff.next()).await;
    }
}

/// Records the saga types `orchestrator` runs, retrying until the database takes them.
async fn record_definitions(orchestrator: SharedOrchestrator, mut shutdown: Shutdown) {
    let sagas = orchestrator.definitions();
    let mut backoff = Backoff::new(std::time::Duration::from_secs(5));
    loop {
        match orchestrator
            .store()
            .record_definitions(orchestrator.reply_channel(), &sagas)
            .await
        {
            Ok(()) => return,
            Err(err) => {
                tracing::warn!(error = %err, "cannot record the saga definitions yet; retrying");
                if shutdown.pause(backoff.next(), None).await {
                    return;
                }
            }
        }
    }
}

/// Running workers; [`SagaRuntime::shutdown`] stops them after the messages in hand.
#[derive(Debug)]
pub struct SagaRuntime {
    stop: watch::Sender<bool>,
    /// The worker loops: each runs until shutdown.
    tasks: Vec<JoinHandle<()>>,
    /// Tasks that end once done.
    once: Vec<JoinHandle<()>>,
}

/// A cheap handle that tells whether a runtime's workers still run (for readiness checks).
#[derive(Clone, Debug)]
pub struct WorkersHandle {
    tasks: Arc<[tokio::task::AbortHandle]>,
    stop: watch::Receiver<bool>,
}

impl WorkersHandle {
    /// How many workers have stopped although no shutdown was asked for (a worker loop
    /// ends only on shutdown, or by panicking); `None` once shutdown was asked for.
    pub fn stopped_unexpectedly(&self) -> Option<usize> {
        if *self.stop.borrow() {
            return None;
        }
        Some(self.tasks.iter().filter(|t| t.is_finished()).count())
    }
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
            in_place: None,
        }
    }

    /// A handle that tells whether the workers still run.
    pub fn workers(&self) -> WorkersHandle {
        WorkersHandle {
            tasks: self.tasks.iter().map(JoinHandle::abort_handle).collect(),
            stop: self.stop.subscribe(),
        }
    }

    /// Stops every worker and waits for them.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for task in self.tasks.into_iter().chain(self.once) {
            if let Err(err) = task.await
                && err.is_panic()
            {
                tracing::error!(error = %err, "a saga worker panicked");
            }
        }
    }
}
