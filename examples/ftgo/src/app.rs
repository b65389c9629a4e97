//! FTGO assembled: the four services, each on its own database, the message queue they talk
//! through, and the saga workers — embedded on SQLite files or on PostgreSQL schemas.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use saga_core::engine::{HistoryEvent, SagaStatus};
use saga_core::ports::SagaStore;
use saga_core::{SagaId, Timestamp};
use saga_store::{
    Database, DatabaseError, DatabaseOptions, RuntimeOptions, SagaRuntime, SqlTransport,
    SqlTransportOptions, SqliteSync,
};
use serde::Serialize;

use crate::services::accounting::AccountingService;
use crate::services::consumer::ConsumerService;
use crate::services::kitchen::KitchenService;
use crate::services::order::{OrderError, OrderRecord, OrderService};

/// Where the services keep their data.
#[derive(Clone, Debug, PartialEq, Eq)]
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

impl Storage {
    /// Opens the database `name` (a service's, or [`MESSAGES`]).
    pub async fn open(
        &self,
        name: &str,
        sqlite_sync: SqliteSync,
    ) -> Result<Database, DatabaseError> {
        match self {
            Storage::Sqlite { dir } => {
                std::fs::create_dir_all(dir)
                    .map_err(|err| DatabaseError::Sql(sqlx::Error::Io(err)))?;
                let url = format!(
                    "sqlite://{}?mode=rwc",
                    dir.join(format!("{name}.db")).display()
                );
                let options = DatabaseOptions {
                    sqlite_sync,
                    ..DatabaseOptions::default()
                };
                Database::connect_with(&url, options).await
            }
            Storage::Postgres { url, schema_prefix } => {
                let options = DatabaseOptions {
                    schema: Some(format!("{schema_prefix}_{name}")),
                    ..DatabaseOptions::default()
                };
                Database::connect_with(url, options).await
            }
        }
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
    /// Queue settings.
    pub transport: SqlTransportOptions,
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
    /// Sagas did not finish in time.
    #[error("{0} sagas did not finish within {1:?}")]
    Timeout(usize, Duration),
}

/// The four services and their message queue.
#[derive(Debug)]
pub struct Ftgo {
    /// The Order service (and the saga orchestrator).
    pub orders: OrderService,
    /// The Consumer service.
    pub consumers: ConsumerService,
    /// The Kitchen service.
    pub kitchen: KitchenService,
    /// The Accounting service.
    pub accounting: AccountingService,
    /// The database holding the message queue.
    pub messages: Database,
    transport: Arc<SqlTransport>,
    runtime: Option<SagaRuntime>,
    options: FtgoOptions,
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
    /// Opens every database and service; the saga workers are not running yet.
    pub async fn open(options: FtgoOptions) -> Result<Self, FtgoError> {
        let sync = options.sqlite_sync;
        let storage = &options.storage;
        let orders = OrderService::open(storage.open("order", sync).await?).await?;
        let consumers = ConsumerService::open(storage.open("consumer", sync).await?).await?;
        let kitchen = KitchenService::open(storage.open("kitchen", sync).await?).await?;
        let accounting = AccountingService::open(storage.open("accounting", sync).await?).await?;
        let messages = storage.open(MESSAGES, sync).await?;
        let transport = Arc::new(SqlTransport::with_options(
            messages.clone(),
            options.transport.clone(),
        ));
        Ok(Self {
            orders,
            consumers,
            kitchen,
            accounting,
            messages,
            transport,
            runtime: None,
            options,
        })
    }

    /// Opens everything and starts the saga workers.
    pub async fn start(options: FtgoOptions) -> Result<Self, FtgoError> {
        let mut ftgo = Self::open(options).await?;
        ftgo.start_workers();
        Ok(ftgo)
    }

    /// Starts the saga workers (relays, consumers, timers) if they are not running.
    pub fn start_workers(&mut self) {
        if self.runtime.is_some() {
            return;
        }
        let runtime = SagaRuntime::builder(self.transport.clone())
            .options(self.options.runtime.clone())
            .orchestrator(self.orders.orchestrator().clone())
            .participant(self.orders.database(), self.orders.participant())
            .participant(self.consumers.database(), self.consumers.participant())
            .participant(self.kitchen.database(), self.kitchen.participant())
            .participant(self.accounting.database(), self.accounting.participant())
            .start();
        self.runtime = Some(runtime);
    }

    /// Stops the workers and closes the databases.
    pub async fn shutdown(mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown().await;
        }
        for database in [
            self.orders.database(),
            self.consumers.database(),
            self.kitchen.database(),
            self.accounting.database(),
            &self.messages,
        ] {
            database.close().await;
        }
    }

    /// A saga's status.
    pub async fn saga_status(&self, saga_id: SagaId) -> Result<Option<SagaStatus>, FtgoError> {
        let store = self.orders.orchestrator().store();
        Ok(store.load(saga_id).await?.map(|r| r.state.status))
    }

    /// Waits until every saga in `ids` is terminal (completed or compensated), calling
    /// `progress(finished, total)` as they finish.
    pub async fn wait_for_sagas(
        &self,
        ids: &[SagaId],
        timeout: Duration,
        mut progress: impl FnMut(usize, usize),
    ) -> Result<(), FtgoError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut last = usize::MAX;
        loop {
            let mut finished = 0;
            for id in ids {
                if self
                    .saga_status(*id)
                    .await?
                    .is_some_and(SagaStatus::is_terminal)
                {
                    finished += 1;
                }
            }
            if finished != last {
                progress(finished, ids.len());
                last = finished;
            }
            if finished == ids.len() {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                return Err(FtgoError::Timeout(ids.len() - finished, timeout));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
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
