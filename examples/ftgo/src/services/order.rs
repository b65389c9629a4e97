//! The Order service: creates orders and starts CreateOrderSaga in the same transaction,
//! starts CancelOrderSaga for approved orders, and handles the commands the sagas send back
//! to it (approve, reject, confirm or undo a cancellation).

use std::sync::Arc;

use saga_core::orchestrator::{FinishedObserver, Orchestrator, OrchestratorError};
use saga_core::participant::{HandlerError, Participant};
use saga_core::ports::StoreError;
use saga_core::{CommandFailed, Locked, SagaId, SemanticLock, Timestamp};
use saga_store::{
    Conn, Database, DatabaseError, Finish, SqlSagaStore, Tx, on_backend, start_saga_in,
};
use serde::{Deserialize, Serialize};
use sqlx::{query, query_as, query_scalar};

use crate::cancel_order::{CancelOrderData, CancelOrderSaga};
use crate::create_order::{
    CreateOrderData, CreateOrderFlavor, CreateOrderSaga, SequentialCreateOrderSaga,
};
use crate::messages::{
    ApproveOrder, CancelUndone, Cents, ConfirmCancelOrder, CreateTicket, LineItem, OrderApproved,
    OrderCancelled, OrderRejected, RejectOrder, UndoBeginCancelOrder, channels,
};

/// The life of an order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, SemanticLock)]
pub enum OrderState {
    /// Created; CreateOrderSaga is running.
    #[pending]
    ApprovalPending,
    /// CreateOrderSaga completed.
    Approved,
    /// CreateOrderSaga turned back.
    Rejected,
    /// CancelOrderSaga is running.
    #[pending]
    CancelPending,
    /// CancelOrderSaga completed.
    Cancelled,
}

/// A menu item of a restaurant, as the Order service knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MenuItem {
    /// The restaurant.
    pub restaurant_id: i64,
    /// The item's id.
    pub menu_item_id: String,
    /// Its name.
    pub name: String,
    /// Its price in cents.
    pub price: Cents,
}

/// The sample menus.
pub fn sample_menus() -> Vec<MenuItem> {
    let item = |restaurant_id, id: &str, name: &str, price| MenuItem {
        restaurant_id,
        menu_item_id: id.to_owned(),
        name: name.to_owned(),
        price,
    };
    vec![
        item(1, "chicken-vindaloo", "Chicken Vindaloo", 1_250),
        item(1, "samosa", "Samosa", 450),
        item(1, "naan", "Garlic Naan", 300),
        item(2, "margherita", "Pizza Margherita", 1_100),
        item(2, "tiramisu", "Tiramisu", 650),
        item(13, "soup", "Soup of the Day", 700),
        item(21, "night-burger", "Night Burger", 950),
    ]
}

/// A request to place an order (as the HTTP API receives it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewOrder {
    /// Who orders.
    pub consumer_id: i64,
    /// From where.
    pub restaurant_id: i64,
    /// What; quantities are checked to be positive.
    pub line_items: Vec<NewLineItem>,
}

/// One requested line; the quantity is signed so a negative one can be refused clearly.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewLineItem {
    /// The menu item.
    pub menu_item_id: String,
    /// How many (must be 1 or more).
    pub quantity: i64,
}

/// A placed order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlacedOrder {
    /// The new order's id.
    pub order_id: i64,
    /// Its total, in cents.
    pub total: Cents,
    /// The CreateOrderSaga working on it.
    pub saga_id: SagaId,
}

/// An order as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderRecord {
    /// The id.
    pub order_id: i64,
    /// Who ordered.
    pub consumer_id: i64,
    /// From where.
    pub restaurant_id: i64,
    /// What.
    pub line_items: Vec<LineItem>,
    /// For how much.
    pub total: Cents,
    /// Its state.
    pub state: OrderState,
    /// Why it was rejected, if it was.
    pub reason: Option<String>,
    /// The CreateOrderSaga.
    pub create_saga_id: Option<SagaId>,
    /// The CancelOrderSaga, if a cancellation started.
    pub cancel_saga_id: Option<SagaId>,
}

/// Why an order request was refused.
#[derive(Debug, thiserror::Error)]
pub enum OrderError {
    /// The request is invalid.
    #[error("{0}")]
    Invalid(String),
    /// No such order.
    #[error("no order {0}")]
    NotFound(i64),
    /// A saga holds the order.
    #[error(transparent)]
    Locked(#[from] Locked),
    /// The order is in a state that does not allow this.
    #[error("order {order_id} is {state}; {what}")]
    WrongState {
        /// The order.
        order_id: i64,
        /// Its state.
        state: &'static str,
        /// What is not allowed.
        what: &'static str,
    },
    /// Starting the saga failed.
    #[error(transparent)]
    Saga(#[from] OrchestratorError),
    /// The database failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// Stored data is unreadable.
    #[error("corrupt order data: {0}")]
    Corrupt(String),
    /// The write could not be committed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The order's commands would be larger than the transport carries.
    #[error(
        "the order is too large: its kitchen ticket would be a {size}-byte message, over the \
         transport's limit of {limit} bytes; order fewer distinct items"
    )]
    TooLarge {
        /// The size of the largest command, with headers.
        size: usize,
        /// The transport's limit.
        limit: usize,
    },
}

impl OrderError {
    /// Whether the failure is a database that is (momentarily) out of reach: worth retrying.
    pub fn is_unavailable(&self) -> bool {
        match self {
            Self::Database(err) => saga_store::error::is_transient(err),
            Self::Store(err) | Self::Saga(OrchestratorError::Store(err)) => {
                matches!(err, StoreError::Unavailable { .. })
            }
            _ => false,
        }
    }
}

/// Room left for a command's headers (saga id and type, step, request id, reply channel,
/// deadline, message id) when checking its size against the transport's limit.
const HEADER_ALLOWANCE: usize = 1024;

/// The Order service.
#[derive(Clone, Debug)]
pub struct OrderService {
    database: Database,
    orchestrator: Arc<Orchestrator<SqlSagaStore>>,
    /// The largest message the transport carries, if it has a limit.
    message_limit: Option<usize>,
    /// Which CreateOrderSaga definition it runs.
    flavor: CreateOrderFlavor,
}

fn now() -> i64 {
    i64::try_from(Timestamp::now().as_millis()).unwrap_or(i64::MAX)
}

impl OrderService {
    /// Opens the service on its database: migrates, seeds the menus, registers the sagas.
    pub async fn open(database: Database) -> Result<Self, DatabaseError> {
        Self::open_on(
            SqlSagaStore::new(database),
            None,
            CreateOrderFlavor::default(),
        )
        .await
    }

    /// Like [`OrderService::open`], on the database of `store` (which decides whether the
    /// sagas' messages go through the outbox or straight into an in-place queue), with
    /// `observer` told whenever a saga finishes, running the CreateOrderSaga of `flavor`.
    pub async fn open_on(
        store: SqlSagaStore,
        observer: Option<FinishedObserver>,
        flavor: CreateOrderFlavor,
    ) -> Result<Self, DatabaseError> {
        let database = store.database().clone();
        database
            .run_migrations(sqlx::migrate!("migrations/order"))
            .await?;
        let mut tx = database.begin().await?;
        for item in sample_menus() {
            on_backend!(tx.conn(), |c| {
                query(
                    "INSERT INTO ftgo_restaurant_menus (restaurant_id, menu_item_id, name, price) \
                     VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                )
                .bind(item.restaurant_id)
                .bind(&item.menu_item_id)
                .bind(&item.name)
                .bind(item.price)
                .execute(c)
                .await
                .map(drop)
            })?;
        }
        database.commit(tx).await?;
        let orchestrator = Orchestrator::new(Arc::new(store), channels::ORDER_SAGA_REPLIES);
        let orchestrator = match flavor {
            CreateOrderFlavor::Parallel => orchestrator.register::<CreateOrderSaga>(),
            CreateOrderFlavor::Sequential => orchestrator.register::<SequentialCreateOrderSaga>(),
        }
        .register::<CancelOrderSaga>();
        let orchestrator = match observer {
            Some(observer) => orchestrator.on_finished(move |id, status| observer(id, status)),
            None => orchestrator,
        };
        Ok(Self {
            database,
            orchestrator: Arc::new(orchestrator),
            message_limit: None,
            flavor,
        })
    }

    /// Refuses orders whose commands would exceed `limit` bytes (the transport's
    /// [`max_message_bytes`](saga_core::ports::Transport::max_message_bytes)) before anything
    /// is stored, instead of letting their saga fail later.
    pub fn with_message_limit(mut self, limit: Option<usize>) -> Self {
        self.message_limit = limit;
        self
    }

    /// The service's database.
    pub fn database(&self) -> &Database {
        &self.database
    }

    /// The saga orchestrator living in this service.
    pub fn orchestrator(&self) -> &Arc<Orchestrator<SqlSagaStore>> {
        &self.orchestrator
    }

    /// Validates and prices `request`, stores the order `APPROVAL_PENDING` and starts
    /// CreateOrderSaga — all in one transaction.
    pub async fn place_order(&self, request: &NewOrder) -> Result<PlacedOrder, OrderError> {
        if request.line_items.is_empty() {
            return Err(OrderError::Invalid(
                "an order needs at least one line item".to_owned(),
            ));
        }
        let orchestrator = self.orchestrator.clone();
        let request = request.clone();
        let (limit, flavor) = (self.message_limit, self.flavor);
        // Group-committed with other orders' and the sagas' writes.
        let placed = self
            .database
            .write(move |tx: &mut Tx| {
                Box::pin(async move {
                    settle(place_in(tx, &orchestrator, &request, limit, flavor).await)
                })
            })
            .await??;
        self.database.wake_relay();
        Ok(placed)
    }

    /// Starts cancelling an approved order: `CANCEL_PENDING` and CancelOrderSaga in one
    /// transaction. An order still held by a saga is refused with [`OrderError::Locked`].
    pub async fn cancel_order(&self, order_id: i64) -> Result<SagaId, OrderError> {
        let orchestrator = self.orchestrator.clone();
        let saga_id = self
            .database
            .write(move |tx: &mut Tx| {
                Box::pin(async move { settle(cancel_in(tx, &orchestrator, order_id).await) })
            })
            .await??;
        self.database.wake_relay();
        Ok(saga_id)
    }

    /// An order, if it exists.
    pub async fn order(&self, order_id: i64) -> Result<Option<OrderRecord>, OrderError> {
        let mut conn = self.database.acquire().await?;
        load_order(conn.conn(), order_id).await
    }

    /// The Order service as a participant (commands sent by its own sagas).
    pub fn participant(&self) -> Participant<Tx> {
        Participant::new("order-service", channels::ORDER)
            .handle_async::<ApproveOrder>(|tx, cmd, _| Box::pin(approve_order(tx, cmd)))
            .handle_async::<RejectOrder>(|tx, cmd, _| Box::pin(reject_order(tx, cmd)))
            .handle_async::<ConfirmCancelOrder>(|tx, cmd, _| {
                Box::pin(confirm_cancel_order(tx, cmd))
            })
            .handle_async::<UndoBeginCancelOrder>(|tx, cmd, _| {
                Box::pin(undo_begin_cancel_order(tx, cmd))
            })
    }
}

/// A business outcome for a group-committed write: an error rolls back the order's writes
/// (and only them), and is handed back to the caller.
fn settle<T>(result: Result<T, OrderError>) -> Result<Finish<Result<T, OrderError>>, StoreError> {
    Ok(match result {
        Ok(value) => Finish::Commit(Ok(value)),
        Err(err) => Finish::Rollback(Err(err)),
    })
}

/// Prices and stores an order and starts its saga, in `tx`.
async fn place_in(
    tx: &mut Tx,
    orchestrator: &Orchestrator<SqlSagaStore>,
    request: &NewOrder,
    message_limit: Option<usize>,
    flavor: CreateOrderFlavor,
) -> Result<PlacedOrder, OrderError> {
    let menu = menu_of(tx.conn(), request.restaurant_id).await?;
    if menu.is_empty() {
        return Err(OrderError::Invalid(format!(
            "unknown restaurant {}",
            request.restaurant_id
        )));
    }
    let mut line_items = Vec::new();
    let mut total: Cents = 0;
    for line in &request.line_items {
        let Some(item) = menu.iter().find(|m| m.menu_item_id == line.menu_item_id) else {
            return Err(OrderError::Invalid(format!(
                "restaurant {} has no menu item {:?}",
                request.restaurant_id, line.menu_item_id
            )));
        };
        let quantity = u32::try_from(line.quantity)
            .ok()
            .filter(|q| (1..=100).contains(q))
            .ok_or_else(|| {
                OrderError::Invalid(format!(
                    "quantity of {:?} must be between 1 and 100, not {}",
                    line.menu_item_id, line.quantity
                ))
            })?;
        total += item.price * i64::from(quantity);
        line_items.push(LineItem {
            menu_item_id: line.menu_item_id.clone(),
            quantity,
        });
    }
    if let Some(limit) = message_limit {
        // The kitchen ticket carries every line item: the saga's largest command.
        let ticket = CreateTicket {
            order_id: i64::MAX,
            restaurant_id: request.restaurant_id,
            line_items: line_items.clone(),
        };
        let size = serde_json::to_vec(&ticket).map_or(usize::MAX, |b| b.len()) + HEADER_ALLOWANCE;
        if size > limit {
            return Err(OrderError::TooLarge { size, limit });
        }
    }
    let order_id: i64 = on_backend!(tx.conn(), |c| {
        query_scalar(
            "UPDATE ftgo_order_ids SET next = next + 1 WHERE name = 'orders' RETURNING next - 1",
        )
        .fetch_one(c)
        .await
    })?;
    let items_json =
        serde_json::to_string(&line_items).map_err(|e| OrderError::Corrupt(e.to_string()))?;
    let data = CreateOrderData::new(
        order_id,
        request.consumer_id,
        request.restaurant_id,
        line_items,
        total,
    );
    let saga_id = match flavor {
        CreateOrderFlavor::Parallel => {
            start_saga_in::<CreateOrderSaga>(orchestrator, &mut *tx, data).await?
        }
        CreateOrderFlavor::Sequential => {
            start_saga_in::<SequentialCreateOrderSaga>(orchestrator, &mut *tx, data).await?
        }
    };
    on_backend!(tx.conn(), |c| {
        query(
            "INSERT INTO ftgo_orders (id, consumer_id, restaurant_id, line_items, total, state, \
                 create_saga_id, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(order_id)
        .bind(request.consumer_id)
        .bind(request.restaurant_id)
        .bind(&items_json)
        .bind(total)
        .bind(OrderState::ApprovalPending.state_name())
        .bind(saga_id.to_string())
        .bind(now())
        .execute(c)
        .await
        .map(drop)
    })?;
    Ok(PlacedOrder {
        order_id,
        total,
        saga_id,
    })
}

/// Marks an approved order `CANCEL_PENDING` and starts its CancelOrderSaga, in `tx`.
async fn cancel_in(
    tx: &mut Tx,
    orchestrator: &Orchestrator<SqlSagaStore>,
    order_id: i64,
) -> Result<SagaId, OrderError> {
    let order = load_order(tx.conn(), order_id)
        .await?
        .ok_or(OrderError::NotFound(order_id))?;
    let mut state = order.state;
    state.lock(order_id, OrderState::CancelPending)?;
    if order.state != OrderState::Approved {
        return Err(OrderError::WrongState {
            order_id,
            state: order.state.state_name(),
            what: "only an approved order can be cancelled",
        });
    }
    let data = CancelOrderData {
        order_id,
        consumer_id: order.consumer_id,
        order_total: order.total,
    };
    let saga_id = start_saga_in::<CancelOrderSaga>(orchestrator, &mut *tx, data).await?;
    // Guarded on the state read above: a concurrent cancel that got here first wins.
    let updated = on_backend!(tx.conn(), |c| {
        query("UPDATE ftgo_orders SET state = $1, cancel_saga_id = $2 WHERE id = $3 AND state = $4")
            .bind(state.state_name())
            .bind(saga_id.to_string())
            .bind(order_id)
            .bind(order.state.state_name())
            .execute(c)
            .await
            .map(|done| done.rows_affected())
    })?;
    if updated != 1 {
        return Err(OrderError::Locked(Locked::Pending {
            record: OrderState::RECORD,
            id: order_id.to_string(),
            state: OrderState::CancelPending.state_name(),
        }));
    }
    Ok(saga_id)
}

async fn menu_of(conn: Conn<'_>, restaurant_id: i64) -> Result<Vec<MenuItem>, sqlx::Error> {
    let rows: Vec<(i64, String, String, i64)> = on_backend!(conn, |c| {
        query_as(
            "SELECT restaurant_id, menu_item_id, name, price FROM ftgo_restaurant_menus \
             WHERE restaurant_id = $1",
        )
        .bind(restaurant_id)
        .fetch_all(c)
        .await
    })?;
    Ok(rows
        .into_iter()
        .map(|(restaurant_id, menu_item_id, name, price)| MenuItem {
            restaurant_id,
            menu_item_id,
            name,
            price,
        })
        .collect())
}

/// An order's row, as stored.
#[derive(sqlx::FromRow)]
struct OrderRow {
    consumer_id: i64,
    restaurant_id: i64,
    line_items: String,
    total: i64,
    state: String,
    reason: Option<String>,
    create_saga_id: Option<String>,
    cancel_saga_id: Option<String>,
}

async fn load_order(conn: Conn<'_>, order_id: i64) -> Result<Option<OrderRecord>, OrderError> {
    let row: Option<OrderRow> = on_backend!(conn, |c| {
        query_as(
            "SELECT consumer_id, restaurant_id, line_items, total, state, reason, \
             create_saga_id, cancel_saga_id FROM ftgo_orders WHERE id = $1",
        )
        .bind(order_id)
        .fetch_optional(c)
        .await
    })?;
    let Some(row) = row else {
        return Ok(None);
    };
    let corrupt = |e: &dyn std::fmt::Display| OrderError::Corrupt(format!("order {order_id}: {e}"));
    let saga = |text: Option<String>| -> Result<Option<SagaId>, OrderError> {
        text.map(|t| t.parse().map_err(|e| corrupt(&e))).transpose()
    };
    Ok(Some(OrderRecord {
        order_id,
        consumer_id: row.consumer_id,
        restaurant_id: row.restaurant_id,
        line_items: serde_json::from_str(&row.line_items).map_err(|e| corrupt(&e))?,
        total: row.total,
        state: OrderState::from_state_name(&row.state).map_err(|e| corrupt(&e))?,
        reason: row.reason,
        create_saga_id: saga(row.create_saga_id)?,
        cancel_saga_id: saga(row.cancel_saga_id)?,
    }))
}

async fn order_state(tx: &mut Tx, order_id: i64) -> Result<Option<OrderState>, HandlerError> {
    let state: Option<String> = on_backend!(tx.conn(), |c| {
        query_scalar("SELECT state FROM ftgo_orders WHERE id = $1")
            .bind(order_id)
            .fetch_optional(c)
            .await
    })?;
    Ok(state
        .map(|name| OrderState::from_state_name(&name))
        .transpose()?)
}

/// Moves an order from `from` to `to` for the saga that holds it (see
/// [`SemanticLock::advance`]).
async fn release_order(
    tx: &mut Tx,
    order_id: i64,
    from: OrderState,
    to: OrderState,
    reason: Option<&str>,
) -> Result<(), HandlerError> {
    let mut next = order_state(tx, order_id)
        .await?
        .ok_or_else(|| HandlerError::refused(format!("no order {order_id}")))?;
    if !next
        .advance(order_id, from, to)
        .map_err(CommandFailed::from)?
    {
        return Ok(());
    }
    on_backend!(tx.conn(), |c| {
        query("UPDATE ftgo_orders SET state = $1, reason = COALESCE($2, reason) WHERE id = $3")
            .bind(next.state_name())
            .bind(reason)
            .bind(order_id)
            .execute(c)
            .await
            .map(drop)
    })?;
    Ok(())
}

async fn approve_order(tx: &mut Tx, cmd: ApproveOrder) -> Result<OrderApproved, HandlerError> {
    // A resent ApproveOrder (its first reply was lost) can find the order cancelled since:
    // only an approved order can be cancelled, so it was approved before.
    if let Some(OrderState::CancelPending | OrderState::Cancelled) =
        order_state(tx, cmd.order_id).await?
    {
        return Ok(OrderApproved);
    }
    release_order(
        tx,
        cmd.order_id,
        OrderState::ApprovalPending,
        OrderState::Approved,
        None,
    )
    .await?;
    Ok(OrderApproved)
}

async fn reject_order(tx: &mut Tx, cmd: RejectOrder) -> Result<OrderRejected, HandlerError> {
    release_order(
        tx,
        cmd.order_id,
        OrderState::ApprovalPending,
        OrderState::Rejected,
        Some(&cmd.reason),
    )
    .await?;
    Ok(OrderRejected)
}

async fn confirm_cancel_order(
    tx: &mut Tx,
    cmd: ConfirmCancelOrder,
) -> Result<OrderCancelled, HandlerError> {
    release_order(
        tx,
        cmd.order_id,
        OrderState::CancelPending,
        OrderState::Cancelled,
        None,
    )
    .await?;
    Ok(OrderCancelled)
}

async fn undo_begin_cancel_order(
    tx: &mut Tx,
    cmd: UndoBeginCancelOrder,
) -> Result<CancelUndone, HandlerError> {
    release_order(
        tx,
        cmd.order_id,
        OrderState::CancelPending,
        OrderState::Approved,
        None,
    )
    .await?;
    Ok(CancelUndone)
}
