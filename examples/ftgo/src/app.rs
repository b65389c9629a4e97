//! FTGO assembled: the four services, each on its own database, the message queue they talk
//! through, and the saga workers — embedded on SQLite files or on PostgreSQL schemas.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use saga_core::engine::{HistoryEvent, SagaStatus};
use saga_core::orchestrator::{FinishedObserver, OrchestratorError};
use saga_core::ports::{SagaStore, Transport, TransportError};
use saga_core::{SagaId, Timestamp};
use saga_store::nats::{NatsOptions, NatsTransport};
use saga_store::secrets::redact_url;
use saga_store::{
    Database, DatabaseError, DatabaseOptions, RuntimeOptions, SagaRuntime, SqlSagaStore,
    SqlTransport, SqlTransportOptions, SqliteSync,
};
use serde::Serialize;

use crate::create_order::CreateOrderFlavor;
use crate::services::ServiceTime;
use crate::services::accounting::AccountingService;
use crate::services::consumer::ConsumerService;
use crate::services::kitchen::KitchenService;
use crate::services::order::{OrderError, OrderRecord, OrderService};

/// Where the services keep their data (`Debug` shows the URL without its password).
#[derive(Clone, PartialEq, Eq)]
pub enum Storage {
    /// One SQLite file per service (and one for the message queue) in a directory.
    Sqlite {
        /// The directory.
        dir: PathBuf,
    },
    /// One schema per service (and one for the queue) in a PostgreSQL database.
    Postgres {
        /// The database URL.
        url: String,
        /// The schemas are `<prefix>_order`, `<prefix>_kitchen`, … and `<prefix>_messages`.
        schema_prefix: String,
    },
}

/// The services, by database name.
pub const SERVICES: [&str; 4] = ["order", "consumer", "kitchen", "accounting"];
/// The message queue's database name.
pub const MESSAGES: &str = "messages";
/// The database name of an in-place deployment ([`Layout::InPlace`]).
pub const SHARED: &str = "ftgo";

impl Storage {
    /// Opens the database `name` (a service's, or [`MESSAGES`]) with `options` (their
    /// `schema` is `name`'s on PostgreSQL).
    pub async fn open(
        &self,
        name: &str,
        options: DatabaseOptions,
    ) -> Result<Database, DatabaseError> {
        match self {
            Storage::Sqlite { dir } => {
                std::fs::create_dir_all(dir)
                    .map_err(|err| DatabaseError::Sql(sqlx::Error::Io(err)))?;
                let url = format!(
                    "sqlite://{}?mode=rwc",
                    dir.join(format!("{name}.db")).display()
                );
                // SET ROLE is PostgreSQL's.
                let options = DatabaseOptions {
                    role: None,
                    ..options
                };
                Database::connect_with(&url, options).await
            }
            Storage::Postgres { url, schema_prefix } => {
                let options = DatabaseOptions {
                    schema: Some(format!("{schema_prefix}_{name}")),
                    ..options
                };
                Database::connect_with(url, options).await
            }
        }
    }
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Sqlite { dir } => f.debug_struct("Sqlite").field("dir", dir).finish(),
            Self::Postgres { url, schema_prefix } => f
                .debug_struct("Postgres")
                .field("url", &redact_url(url))
                .field("schema_prefix", schema_prefix)
                .finish(),
        }
    }
}

/// Where NATS is, when the services talk over NATS JetStream instead of the SQL queue
/// (`Debug` shows the URL without its credentials).
#[derive(Clone)]
pub struct NatsSettings {
    /// The server, e.g. `nats://127.0.0.1:4222`.
    pub url: String,
    /// Streams, consumers, credentials and TLS.
    pub options: NatsOptions,
}

impl std::fmt::Debug for NatsSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsSettings")
            .field("url", &redact_url(&self.url))
            .field("options", &self.options)
            .finish()
    }
}

/// How to run FTGO.
#[derive(Clone, Debug)]
pub struct FtgoOptions {
    /// Where the data lives.
    pub storage: Storage,
    /// SQLite durability (default: `FULL`).
    pub sqlite_sync: SqliteSync,
    /// Worker settings.
    pub runtime: RuntimeOptions,
    /// Settings of the SQL-table queue (the default transport).
    pub transport: SqlTransportOptions,
    /// Talk over NATS JetStream instead of the SQL-table queue.
    pub nats: Option<NatsSettings>,
    /// Connections per database pool (default: the store's, 4 for SQLite and 10 for
    /// PostgreSQL). FTGO opens one pool per service (and one for the queue).
    pub max_connections: Option<u32>,
    /// Told whenever a saga finishes (metrics, benchmarks).
    pub saga_observer: Option<SagaObserver>,
    /// How long an API request may take, reading its body included (default 10 s).
    pub request_timeout: Duration,
    /// The token the operator console (`/console` on the API) asks for; `None` for none,
    /// which `ftgo serve` allows only on a loopback address.
    pub console_token: Option<saga_store::secrets::SecretString>,
    /// Where the services keep their data and how messages reach them (default: a database
    /// per service). Ignored with NATS, which always goes through the outbox.
    pub layout: Layout,
    /// Create and upgrade tables when opening a database (the default); `false` for a role
    /// that may only read and write rows, once the services have migrated their schemas.
    pub migrate: bool,
    /// PostgreSQL, SQL queue: the role every service `SET ROLE`s to in the shared queue
    /// schema (`<prefix>_messages`), so its tables belong to that role and not to whichever
    /// service created them (see `docs/security.md`).
    pub queue_role: Option<String>,
    /// Which CreateOrderSaga definition the Order service runs (default: verifying the
    /// consumer while the ticket is created; `Sequential`: the book's order).
    pub create_order: CreateOrderFlavor,
    /// What each participant adds to each forward command of CreateOrderSaga (default none;
    /// benchmarks only).
    pub service_time: ServiceTime,
}

/// Where FTGO's services keep their data, and how messages reach them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Layout {
    /// A database per service (SQLite file or PostgreSQL schema) and one for the queue:
    /// messages go through each database's outbox and relay, and leased consumers claim and
    /// acknowledge them — what services on separate databases do.
    #[default]
    PerService,
    /// All four services and the queue in **one** database (`ftgo.db`, or the
    /// `<prefix>_ftgo` schema), messages handled **in place**: taken from the queue, handled
    /// and answered in one transaction, with no outbox or relay (`SqlSagaStore::in_place`,
    /// `RuntimeBuilder::in_place`).
    InPlace,
    /// PostgreSQL: a schema per service and one for the queue, all in one database. Each
    /// service handles its messages in place in its own transactions and writes what it
    /// sends straight into the queue's schema: no outbox, relay or leases, yet every service
    /// keeps its own tables (`SqlSagaStore::co_located`, `RuntimeBuilder::in_place`).
    CoLocated,
}

impl Layout {
    /// Its name in flags and benchmark reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PerService => "per-service",
            Self::InPlace => "in-place",
            Self::CoLocated => "co-located",
        }
    }
}

/// A callback told whenever a saga finishes.
#[derive(Clone)]
pub struct SagaObserver(pub FinishedObserver);

impl std::fmt::Debug for SagaObserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SagaObserver")
    }
}

impl FtgoOptions {
    /// Defaults for `storage`, with short polls (every wake-up is in-process or `NOTIFY`d,
    /// so polling is only the fallback).
    pub fn new(storage: Storage) -> Self {
        Self {
            storage,
            sqlite_sync: SqliteSync::Full,
            runtime: RuntimeOptions {
                poll_interval: Duration::from_millis(200),
                ..RuntimeOptions::default()
            },
            transport: SqlTransportOptions {
                poll_interval: Duration::from_millis(200),
                lease: Duration::from_secs(10),
                ..SqlTransportOptions::default()
            },
            nats: None,
            max_connections: None,
            saga_observer: None,
            request_timeout: crate::api::REQUEST_TIMEOUT,
            console_token: None,
            layout: Layout::PerService,
            migrate: true,
            queue_role: None,
            create_order: CreateOrderFlavor::default(),
            service_time: ServiceTime::default(),
        }
    }

    /// The layout FTGO runs with: [`FtgoOptions::layout`], or [`Layout::PerService`] over
    /// NATS.
    pub fn layout(&self) -> Layout {
        match self.nats {
            Some(_) => Layout::PerService,
            None => self.layout,
        }
    }

    /// Whether the services share one database with the queue ([`Layout::InPlace`]).
    pub fn is_in_place(&self) -> bool {
        self.layout() == Layout::InPlace
    }

    /// Opens the database `name` with these options (the one shared database, whatever the
    /// name, with [`Layout::InPlace`]).
    pub async fn database(&self, name: &str) -> Result<Database, DatabaseError> {
        let name = if self.is_in_place() { SHARED } else { name };
        let options = DatabaseOptions {
            sqlite_sync: self.sqlite_sync,
            max_connections: self.max_connections,
            migrate: self.migrate,
            // The queue's schema is shared: its tables belong to the queue's role.
            role: (name == MESSAGES)
                .then(|| self.queue_role.clone())
                .flatten(),
            ..DatabaseOptions::default()
        };
        self.storage.open(name, options).await
    }

    /// Opens the transport: NATS if configured, else the SQL queue in the `messages`
    /// database (returned too, so it can be closed).
    async fn transport(
        &self,
        shared: Option<&Database>,
    ) -> Result<(Arc<dyn Transport>, Option<Database>), FtgoError> {
        if let Some(nats) = &self.nats {
            let transport = NatsTransport::connect(&nats.url, nats.options.clone()).await?;
            return Ok((Arc::new(transport), None));
        }
        let messages = match shared {
            Some(database) => database.clone(),
            None => self.database(MESSAGES).await?,
        };
        let transport = SqlTransport::with_options(messages.clone(), self.transport.clone());
        Ok((Arc::new(transport), Some(messages)))
    }

    /// The Order service's saga store on `database`: its commands go through the outbox, or
    /// in place straight into the queue in `messages`.
    fn order_store(
        &self,
        database: Database,
        messages: Option<&Database>,
    ) -> Result<SqlSagaStore, FtgoError> {
        Ok(match (self.layout(), messages) {
            (Layout::InPlace, _) => SqlSagaStore::in_place(database),
            (Layout::CoLocated, Some(messages)) => {
                SqlSagaStore::co_located(database, &self.queue(messages))?
            }
            _ => SqlSagaStore::new(database),
        })
    }

    /// The SQL-table queue in `messages`, with these options.
    fn queue(&self, messages: &Database) -> SqlTransport {
        SqlTransport::with_options(messages.clone(), self.transport.clone())
    }

    /// A runtime builder over `transport` with these options, handling messages in place in
    /// the queue in `messages` when the layout does.
    fn runtime_builder(
        &self,
        transport: Arc<dyn Transport>,
        messages: Option<&Database>,
    ) -> saga_store::RuntimeBuilder {
        let builder = SagaRuntime::builder(transport).options(self.runtime.clone());
        match (self.layout(), messages) {
            (Layout::InPlace | Layout::CoLocated, Some(messages)) => {
                builder.in_place(self.queue(messages))
            }
            _ => builder,
        }
    }
}

/// Why FTGO could not start or answer.
#[derive(Debug, thiserror::Error)]
pub enum FtgoError {
    /// A database could not be opened.
    #[error(transparent)]
    Database(#[from] DatabaseError),
    /// An order operation failed.
    #[error(transparent)]
    Order(#[from] OrderError),
    /// A query failed.
    #[error("database error: {0}")]
    Sql(#[from] sqlx::Error),
    /// The saga store failed.
    #[error(transparent)]
    Store(#[from] saga_core::ports::StoreError),
    /// The transport could not be reached.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The orchestrator could not read a saga.
    #[error(transparent)]
    Orchestrator(#[from] OrchestratorError),
    /// The saga workers refused to start.
    #[error(transparent)]
    Start(#[from] saga_store::StartError),
    /// Sagas did not finish in time.
    #[error("{0} sagas did not finish within {1:?}")]
    Timeout(usize, Duration),
}

impl FtgoError {
    /// Whether the failure is a database or broker that is (momentarily) out of reach.
    pub fn is_unavailable(&self) -> bool {
        match self {
            Self::Order(err) => err.is_unavailable(),
            Self::Sql(err) => saga_store::error::is_transient(err),
            Self::Store(err) | Self::Orchestrator(OrchestratorError::Store(err)) => {
                matches!(err, saga_core::ports::StoreError::Unavailable { .. })
            }
            Self::Database(DatabaseError::Unreachable { .. }) => true,
            Self::Transport(err) => matches!(err, TransportError::Unavailable { .. }),
            _ => false,
        }
    }
}

/// The four services and their message queue.
pub struct Ftgo {
    /// The Order service (and the saga orchestrator).
    pub orders: OrderService,
    /// The Consumer service.
    pub consumers: ConsumerService,
    /// The Kitchen service.
    pub kitchen: KitchenService,
    /// The Accounting service.
    pub accounting: AccountingService,
    /// The database holding the message queue (none over NATS).
    pub messages: Option<Database>,
    transport: Arc<dyn Transport>,
    runtime: tokio::sync::Mutex<Option<SagaRuntime>>,
    options: FtgoOptions,
}

impl std::fmt::Debug for Ftgo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ftgo")
            .field("storage", &self.options.storage)
            .field("nats", &self.options.nats)
            .field(
                "workers",
                &self.runtime.try_lock().map(|r| r.is_some()).ok(),
            )
            .finish_non_exhaustive()
    }
}

/// One saga of an order, for display.
#[derive(Clone, Debug, Serialize)]
pub struct SagaView {
    /// The saga id.
    pub saga_id: SagaId,
    /// `CreateOrderSaga` or `CancelOrderSaga`.
    pub saga_type: String,
    /// Its status.
    pub status: SagaStatus,
    /// The step it is at, if running.
    pub current_step: Option<String>,
    /// Why it turned back, if it did.
    pub compensation_reason: Option<String>,
    /// Its last error, if any.
    pub last_error: Option<String>,
    /// Its timeline.
    pub history: Vec<HistoryView>,
}

/// One timeline entry.
#[derive(Clone, Debug, Serialize)]
pub struct HistoryView {
    /// When (ms since the epoch).
    pub at: Timestamp,
    /// What happened.
    #[serde(flatten)]
    pub event: HistoryEvent,
}

/// An order with what the other services know of it (API composition).
#[derive(Clone, Debug, Serialize)]
pub struct OrderView {
    /// The order.
    #[serde(flatten)]
    pub order: OrderRecord,
    /// The order state's name, e.g. `APPROVAL_PENDING`.
    pub state_name: &'static str,
    /// The kitchen ticket's state, if there is a ticket.
    pub ticket_state: Option<&'static str>,
    /// The card authorization's state, if there is one.
    pub authorization_state: Option<String>,
    /// The sagas that worked on the order, oldest first.
    pub sagas: Vec<SagaView>,
}

impl Ftgo {
    /// The options FTGO runs with.
    pub fn options(&self) -> &FtgoOptions {
        &self.options
    }

    /// Opens every database and service; the saga workers are not running yet.
    pub async fn open(options: FtgoOptions) -> Result<Self, FtgoError> {
        let observer = options.saga_observer.clone().map(|o| o.0);
        // One pool for everything in place.
        let shared = match options.is_in_place() {
            true => Some(options.database(SHARED).await?),
            false => None,
        };
        let database = async |name: &str| match &shared {
            Some(database) => Ok::<_, DatabaseError>(database.clone()),
            None => options.database(name).await,
        };
        let (transport, messages) = options.transport(shared.as_ref()).await?;
        let order_database = database("order").await?;
        let store = options.order_store(order_database, messages.as_ref())?;
        let orders = OrderService::open_on(store, observer, options.create_order)
            .await?
            .with_message_limit(transport.max_message_bytes());
        let time = options.service_time;
        let consumers = ConsumerService::open(database("consumer").await?)
            .await?
            .with_service_time(time);
        let kitchen = KitchenService::open(database("kitchen").await?)
            .await?
            .with_service_time(time);
        let accounting = AccountingService::open(database("accounting").await?)
            .await?
            .with_service_time(time);
        Ok(Self {
            orders,
            consumers,
            kitchen,
            accounting,
            messages,
            transport,
            runtime: tokio::sync::Mutex::new(None),
            options,
        })
    }

    /// Opens everything and starts the saga workers.
    pub async fn start(options: FtgoOptions) -> Result<Self, FtgoError> {
        let ftgo = Self::open(options).await?;
        ftgo.start_workers().await?;
        Ok(ftgo)
    }

    /// Starts the saga workers (relays, consumers, timers) if they are not running; fails
    /// when the orchestrator refuses to start (sagas in flight on a version it does not run).
    pub async fn start_workers(&self) -> Result<(), FtgoError> {
        let mut slot = self.runtime.lock().await;
        if slot.is_some() {
            return Ok(());
        }
        let builder = self
            .options
            .runtime_builder(self.transport.clone(), self.messages.as_ref());
        let runtime = builder
            .orchestrator(self.orders.orchestrator().clone())
            .participant(self.orders.database(), self.orders.participant())
            .participant(self.consumers.database(), self.consumers.participant())
            .participant(self.kitchen.database(), self.kitchen.participant())
            .participant(self.accounting.database(), self.accounting.participant())
            .start()
            .await?;
        *slot = Some(runtime);
        Ok(())
    }

    /// Every database by name (one, in place).
    fn named_databases(&self) -> Vec<(&str, &Database)> {
        if self.options.is_in_place() {
            return vec![(SHARED, self.orders.database())];
        }
        let services = [
            ("order", self.orders.database()),
            ("consumer", self.consumers.database()),
            ("kitchen", self.kitchen.database()),
            ("accounting", self.accounting.database()),
        ];
        services
            .into_iter()
            .chain(self.messages.as_ref().map(|db| (MESSAGES, db)))
            .collect()
    }

    /// The databases besides the Order service's, by name, for the console's dead letters and
    /// backlogs (none in place: everything is in the one database).
    pub fn console_databases(&self) -> Vec<(String, SqlSagaStore)> {
        // The first of the named databases is the Order service's (or the shared one).
        self.named_databases()
            .into_iter()
            .skip(1)
            .map(|(name, db)| (name.to_owned(), SqlSagaStore::new(db.clone())))
            .collect()
    }

    /// Stops the saga workers (after the messages in hand), keeping the databases open;
    /// [`Ftgo::start_workers`] starts them again.
    pub async fn stop_workers(&self) {
        if let Some(runtime) = self.runtime.lock().await.take() {
            runtime.shutdown().await;
        }
    }

    /// Stops the workers and closes the databases (it may be called on a shared handle,
    /// e.g. while the API server still holds one).
    pub async fn shutdown(&self) {
        if let Some(runtime) = self.runtime.lock().await.take() {
            runtime.shutdown().await;
        }
        for database in [
            Some(self.orders.database()),
            Some(self.consumers.database()),
            Some(self.kitchen.database()),
            Some(self.accounting.database()),
            self.messages.as_ref(),
        ]
        .into_iter()
        .flatten()
        {
            database.close().await;
        }
    }

    /// A saga's status.
    pub async fn saga_status(&self, saga_id: SagaId) -> Result<Option<SagaStatus>, FtgoError> {
        let store = self.orders.orchestrator().store();
        Ok(store.load(saga_id).await?.map(|r| r.state.status))
    }

    /// Waits until every saga in `ids` [is finished](SagaStatus::is_finished) (completed,
    /// compensated or parked), calling `progress(finished, total)` as they finish.
    pub async fn wait_for_sagas(
        &self,
        ids: &[SagaId],
        timeout: Duration,
        mut progress: impl FnMut(usize, usize),
    ) -> Result<(), FtgoError> {
        let orchestrator = self.orders.orchestrator();
        let deadline = tokio::time::Instant::now() + timeout;
        progress(0, ids.len());
        for (finished, id) in ids.iter().enumerate() {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match orchestrator.wait(*id, left).await {
                Ok(_) => progress(finished + 1, ids.len()),
                Err(OrchestratorError::WaitTimedOut { .. }) => {
                    return Err(FtgoError::Timeout(ids.len() - finished, timeout));
                }
                Err(err) => return Err(err.into()),
            }
        }
        Ok(())
    }

    /// An order as the API shows it: its state, its ticket's and authorization's states, and
    /// its sagas with their timelines.
    pub async fn order_view(&self, order_id: i64) -> Result<Option<OrderView>, FtgoError> {
        let Some(order) = self.orders.order(order_id).await? else {
            return Ok(None);
        };
        let store = self.orders.orchestrator().store();
        let mut sagas = Vec::new();
        for saga_id in [order.create_saga_id, order.cancel_saga_id]
            .into_iter()
            .flatten()
        {
            let Some(record) = store.load(saga_id).await? else {
                continue;
            };
            let history = store
                .history(saga_id)
                .await?
                .into_iter()
                .map(|h| HistoryView {
                    at: h.at,
                    event: h.event,
                })
                .collect();
            let state = record.state;
            sagas.push(SagaView {
                saga_id,
                saga_type: state.saga_type,
                status: state.status,
                current_step: state.current_step,
                compensation_reason: state.compensation_reason,
                last_error: state.last_error,
                history,
            });
        }
        use saga_core::SemanticLock as _;
        Ok(Some(OrderView {
            state_name: order.state.state_name(),
            ticket_state: self
                .kitchen
                .ticket_state(order_id)
                .await?
                .map(|s| s.state_name()),
            authorization_state: self.accounting.authorization_state(order_id).await?,
            order,
            sagas,
        }))
    }
}

/// One of the four services.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServiceName {
    /// The Order service (and the saga orchestrator).
    Order,
    /// The Consumer service.
    Consumer,
    /// The Kitchen service.
    Kitchen,
    /// The Accounting service.
    Accounting,
}

#[async_trait::async_trait]
impl crate::health::Ready for Ftgo {
    /// Every database and the transport answer, and the workers run if this process started
    /// them (`ftgo serve --api-only` runs none).
    async fn readiness(&self) -> crate::health::Readiness {
        let workers = self.runtime.lock().await.as_ref().map(SagaRuntime::workers);
        crate::health::readiness(
            &self.named_databases(),
            self.transport.as_ref(),
            workers.as_ref(),
        )
        .await
    }
}

impl ServiceName {
    /// The database name, as in [`SERVICES`].
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Order => "order",
            Self::Consumer => "consumer",
            Self::Kitchen => "kitchen",
            Self::Accounting => "accounting",
        }
    }
}

/// One service running on its own, as its own process: its database, its participant (and,
/// for the Order service, the orchestrator), and the saga workers for them. Run several of
/// one service and they share its channel's work.
pub struct ServiceProcess {
    name: ServiceName,
    runtime: SagaRuntime,
    databases: Vec<Database>,
    transport: Arc<dyn Transport>,
}

impl std::fmt::Debug for ServiceProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceProcess")
            .field("name", &self.name)
            .field("runtime", &self.runtime)
            .finish_non_exhaustive()
    }
}

#[async_trait::async_trait]
impl crate::health::Ready for ServiceProcess {
    async fn readiness(&self) -> crate::health::Readiness {
        let names = [self.name.as_str(), MESSAGES];
        let databases: Vec<(&str, &Database)> =
            names.into_iter().zip(self.databases.iter()).collect();
        let workers = self.runtime.workers();
        crate::health::readiness(&databases, self.transport.as_ref(), Some(&workers)).await
    }
}

impl ServiceProcess {
    /// Opens `name`'s database and the transport, and starts its workers.
    pub async fn start(name: ServiceName, options: FtgoOptions) -> Result<Self, FtgoError> {
        let database = options.database(name.as_str()).await?;
        let (transport, messages) = options.transport(None).await?;
        let builder = options.runtime_builder(transport.clone(), messages.as_ref());
        let builder = match name {
            ServiceName::Order => {
                let store = options.order_store(database.clone(), messages.as_ref())?;
                let orders = OrderService::open_on(store, None, options.create_order).await?;
                builder
                    .orchestrator(orders.orchestrator().clone())
                    .participant(&database, orders.participant())
            }
            ServiceName::Consumer => {
                let consumers = ConsumerService::open(database.clone())
                    .await?
                    .with_service_time(options.service_time);
                builder.participant(&database, consumers.participant())
            }
            ServiceName::Kitchen => {
                let kitchen = KitchenService::open(database.clone())
                    .await?
                    .with_service_time(options.service_time);
                builder.participant(&database, kitchen.participant())
            }
            ServiceName::Accounting => {
                let accounting = AccountingService::open(database.clone())
                    .await?
                    .with_service_time(options.service_time);
                builder.participant(&database, accounting.participant())
            }
        };
        Ok(Self {
            name,
            runtime: builder.start().await?,
            databases: std::iter::once(database).chain(messages).collect(),
            transport,
        })
    }

    /// Stops the workers (after the messages in hand) and closes the databases.
    pub async fn shutdown(self) {
        self.runtime.shutdown().await;
        for database in self.databases {
            database.close().await;
        }
    }
}
