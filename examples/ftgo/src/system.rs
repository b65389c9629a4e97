//! The whole FTGO system in one process: the Order service's orchestrator and the four
//! participants over saga-core's in-memory runtime.

use std::collections::HashSet;
use std::sync::Arc;

use saga_core::memory::{InMemoryRuntime, InMemoryStore, InMemoryTransport, RuntimeError};
use saga_core::orchestrator::{Orchestrator, OrchestratorError};
use saga_core::{SagaId, SagaStatus};
use tokio::sync::Mutex;

use crate::create_order::{CreateOrderData, CreateOrderSaga};
use crate::messages::{Cents, LineItem, channels};
use crate::services::{
    Accounting, Consumers, Kitchen, OrderState, Orders, accounting_service, consumer_service,
    kitchen_service, order_service,
};

/// The blocked consumer in the sample data.
pub const BLOCKED_CONSUMER: i64 = 666;
/// The closed restaurant in the sample data.
pub const CLOSED_RESTAURANT: i64 = 13;
/// The card limit in the sample data, in cents.
pub const CARD_LIMIT: Cents = 10_000;

/// FTGO in one process, with sample data: consumer [`BLOCKED_CONSUMER`] is blocked,
/// restaurant [`CLOSED_RESTAURANT`] is closed, and cards are limited to [`CARD_LIMIT`].
pub struct FtgoSystem {
    /// The runtime: orchestrator, participants, transport, clock.
    pub runtime: InMemoryRuntime,
    /// The Order service's records.
    pub orders: Arc<Mutex<Orders>>,
    /// The Consumer service's records.
    pub consumers: Arc<Mutex<Consumers>>,
    /// The Kitchen service's records.
    pub kitchen: Arc<Mutex<Kitchen>>,
    /// The Accounting service's records.
    pub accounting: Arc<Mutex<Accounting>>,
}

impl std::fmt::Debug for FtgoSystem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FtgoSystem")
            .field("runtime", &self.runtime)
            .finish_non_exhaustive()
    }
}

impl FtgoSystem {
    /// The system over `transport`, with the sample data.
    pub fn new(transport: InMemoryTransport) -> Self {
        let orders = Arc::new(Mutex::new(Orders::default()));
        let consumers = Arc::new(Mutex::new(Consumers {
            blocked: HashSet::from([BLOCKED_CONSUMER]),
        }));
        let kitchen = Arc::new(Mutex::new(Kitchen {
            closed_restaurants: HashSet::from([CLOSED_RESTAURANT]),
            ..Kitchen::default()
        }));
        let accounting = Arc::new(Mutex::new(Accounting {
            limit: CARD_LIMIT,
            ..Accounting::default()
        }));
        let orchestrator =
            Orchestrator::new(Arc::new(InMemoryStore::new()), channels::ORDER_SAGA_REPLIES)
                .register::<CreateOrderSaga>();
        let runtime = InMemoryRuntime::new(orchestrator, transport)
            .participant(order_service(), orders.clone())
            .participant(consumer_service(), consumers.clone())
            .participant(kitchen_service(), kitchen.clone())
            .participant(accounting_service(), accounting.clone());
        Self {
            runtime,
            orders,
            consumers,
            kitchen,
            accounting,
        }
    }

    /// Creates the order (`APPROVAL_PENDING`) and starts CreateOrderSaga for it, as the Order
    /// service does.
    pub async fn place_order(
        &self,
        order_id: i64,
        consumer_id: i64,
        restaurant_id: i64,
        line_items: Vec<LineItem>,
        total: Cents,
    ) -> Result<SagaId, OrchestratorError> {
        self.orders
            .lock()
            .await
            .states
            .insert(order_id, OrderState::ApprovalPending);
        let data = CreateOrderData::new(order_id, consumer_id, restaurant_id, line_items, total);
        self.runtime
            .orchestrator()
            .start::<CreateOrderSaga>(data)
            .await
    }

    /// Delivers messages until nothing moves.
    pub async fn run_until_idle(&self) -> Result<usize, RuntimeError> {
        self.runtime.run_until_idle().await
    }

    /// A saga's status.
    pub async fn status(&self, saga_id: SagaId) -> Result<SagaStatus, OrchestratorError> {
        Ok(self
            .runtime
            .orchestrator()
            .load(saga_id)
            .await?
            .state
            .status)
    }
}
