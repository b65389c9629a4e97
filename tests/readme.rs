//! The README cannot drift from the code: it shows both FTGO sagas' graphs, which must stay
//! equal to what the code renders (and so to the snapshot tests), and every Rust block in it is
//! compiled.

use saga_core::{Saga, SagaDefinition};

fn assert_readme_shows<D>(definition: &SagaDefinition<D>) {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README.md is readable");
    let graph = definition.to_mermaid();
    let block = format!("```mermaid\n{graph}```");
    assert!(
        readme.contains(&block),
        "README.md's mermaid block for {} differs from to_mermaid():\n{graph}",
        definition.name()
    );
}

#[test]
fn readme_shows_the_current_create_order_graph() {
    assert_readme_shows(ftgo::create_order::CreateOrderSaga::definition());
}

#[test]
fn readme_shows_the_current_cancel_order_graph() {
    assert_readme_shows(ftgo::cancel_order::CancelOrderSaga::definition());
}

/// How many Rust blocks README.md has (counted by `build.rs`).
mod blocks {
    include!(concat!(env!("OUT_DIR"), "/readme_blocks.rs"));
}

/// Every Rust block of the README is compiled below, each in the context it assumes (the
/// imports and helpers around it in the real code). A new block needs a module here.
#[test]
fn every_rust_block_of_the_readme_is_compiled() {
    assert_eq!(
        blocks::COUNT,
        10,
        "README.md's Rust blocks changed: give each new one a `block_<n>` module in readme.rs"
    );
}

/// Commands and replies.
#[allow(dead_code, unused_imports, unreachable_pub, missing_docs)]
mod block_0 {
    use ftgo::messages::LineItem;

    fn compiles() {
        include!(concat!(env!("OUT_DIR"), "/readme_block_0.rs"))
    }
}

/// The saga.
#[allow(dead_code, unused_imports, unreachable_pub, missing_docs)]
mod block_1 {
    use ftgo::create_order::{
        CreateOrderData, approve_order, authorize_card, cancel_create_ticket, card_authorized,
        confirm_create_ticket, reject_order, validate_order_by_consumer,
    };
    use ftgo::messages::{CreateTicket, TicketCreated};

    fn compiles() {
        include!(concat!(env!("OUT_DIR"), "/readme_block_1.rs"))
    }
}

/// A participant on in-memory state, with a semantic lock.
#[allow(dead_code, unused_imports, unreachable_pub, missing_docs)]
mod block_2 {
    use std::collections::HashMap;

    use ftgo::messages::{ConfirmCreateTicket, TicketConfirmed};
    use saga_core::participant::Participant;
    use saga_core::{CommandFailed, SemanticLock};

    fn compiles() {
        let _ = include!(concat!(env!("OUT_DIR"), "/readme_block_2.rs"));
    }
}

/// A participant on a transaction, with an async closure handler.
#[allow(dead_code, unused_imports, unreachable_pub, missing_docs)]
mod block_3 {
    use ftgo::messages::{ConfirmCreateTicket, TicketConfirmed};
    use ftgo::services::kitchen::TicketState;
    use saga_core::participant::{HandlerError, Participant};
    use saga_core::{CommandFailed, SemanticLock};
    use saga_store::{Tx, on_backend};

    async fn ticket_state(tx: &mut Tx, ticket: i64) -> Result<TicketState, HandlerError> {
        let name: String = on_backend!(tx.conn(), |c| {
            sqlx::query_scalar("SELECT state FROM ftgo_tickets WHERE order_id = $1")
                .bind(ticket)
                .fetch_one(c)
                .await
        })?;
        Ok(TicketState::from_state_name(&name)?)
    }
    async fn set_ticket_state(
        tx: &mut Tx,
        ticket: i64,
        state: TicketState,
    ) -> Result<(), sqlx::Error> {
        on_backend!(tx.conn(), |c| {
            sqlx::query("UPDATE ftgo_tickets SET state = $1 WHERE order_id = $2")
                .bind(state.state_name())
                .bind(ticket)
                .execute(c)
                .await
                .map(drop)
        })
    }

    fn compiles() {
        let _ = include!(concat!(env!("OUT_DIR"), "/readme_block_3.rs"));
    }
}

/// A saga unit test (the same test runs in `create_order_saga.rs`).
#[allow(
    dead_code,
    unused_imports,
    unreachable_pub,
    missing_docs,
    unnameable_test_items
)]
mod block_4 {
    use ftgo::create_order::CreateOrderSaga;
    use ftgo::messages::{
        CancelCreateTicket, CardAuthorization, ConsumerVerification, OrderRejected,
        TicketCancelled, TicketCreated,
    };
    use saga_tests::create_order::{authorize, create_ticket, data, reject, validate};

    fn compiles() {
        include!(concat!(env!("OUT_DIR"), "/readme_block_4.rs"))
    }
}

/// Proving a saga: the FTGO simulation.
#[allow(
    dead_code,
    unused_imports,
    unreachable_pub,
    missing_docs,
    unused_variables
)]
mod block_5 {
    use std::time::Duration;

    use ftgo::cancel_order::CancelOrderSaga;
    use ftgo::create_order::{CreateOrderData, CreateOrderSaga};
    use ftgo::messages::channels;
    use saga_core::orchestrator::Orchestrator;
    use saga_core::simulation::{Request, Scenario, Simulation, Start, seeds_from_env};
    use saga_tests::ftgo_simulation::{Ftgo, cancel, services_agree};
    use saga_tests::in_memory_ftgo::{
        OrderState, accounting_service, consumer_service, kitchen_service, order_service,
    };

    fn order(order_id: i64) -> CreateOrderData {
        CreateOrderData::new(order_id, 7, 1, Vec::new(), 1_250)
    }

    fn compiles() {
        include!(concat!(env!("OUT_DIR"), "/readme_block_5.rs"));
    }
}

/// Durable sagas: the store, a transactional start, the runtime, waiting.
#[allow(
    dead_code,
    unused_imports,
    unreachable_pub,
    missing_docs,
    unused_variables
)]
mod block_6 {
    use std::sync::Arc;
    use std::time::Duration;

    use ftgo::create_order::{CreateOrderData, CreateOrderSaga};
    use saga_core::orchestrator::Orchestrator;
    use saga_core::participant::Participant;
    use saga_core::ports::SagaStore;
    use saga_core::timeline::TimelineSummary;
    use saga_store::{Tx, on_backend};

    async fn compiles(
        kitchen_db: saga_store::Database,
        kitchen_participant: Participant<Tx>,
        id: i64,
        data: CreateOrderData,
    ) -> Result<(), Box<dyn std::error::Error>> {
        include!(concat!(env!("OUT_DIR"), "/readme_block_6.rs"));
        Ok(())
    }
}

/// A PostgreSQL participant with checked queries (as in `typed_postgres.rs`, whose offline
/// query data this block's `query!` uses).
#[allow(
    dead_code,
    unused_imports,
    unreachable_pub,
    missing_docs,
    non_local_definitions
)]
mod block_7 {
    use async_trait::async_trait;
    use saga_core::message::CommandMeta;
    use saga_core::participant::{CommandHandler, HandlerError};
    use saga_core::{Command, Reply};
    use saga_store::PgTx;
    use serde::{Deserialize, Serialize};

    #[derive(Serialize, Deserialize, Command)]
    #[command(channel = "devices", reply = Done)]
    struct Register {
        device: uuid::Uuid,
        spec: serde_json::Value,
        tags: Vec<String>,
    }

    #[derive(Serialize, Deserialize, Reply)]
    struct Done;

    struct Registry;

    fn compiles() {
        include!(concat!(env!("OUT_DIR"), "/readme_block_7.rs"))
    }
}

/// Changing a deployed saga: a retired version beside the current one.
#[allow(
    dead_code,
    unused_imports,
    unused_variables,
    unreachable_pub,
    missing_docs
)]
mod block_8 {
    use std::sync::Arc;

    use ftgo::create_order::{
        CreateOrderData, approve_order, authorize_card, cancel_create_ticket, card_authorized,
        confirm_create_ticket, create_ticket, reject_order, ticket_created,
        validate_order_by_consumer,
    };
    use saga_core::memory::InMemoryStore;
    use saga_core::orchestrator::Orchestrator;
    use saga_core::{StepFailure, saga};

    fn check_fraud(_: &mut CreateOrderData) -> Result<(), StepFailure> {
        Ok(())
    }

    fn compiles(store: Arc<InMemoryStore>) {
        include!(concat!(env!("OUT_DIR"), "/readme_block_8.rs"))
    }
}

/// Changing a deployed saga: a migration (the sagas it names declared here, version 2
/// without `previous`).
#[allow(
    dead_code,
    unused_imports,
    unused_variables,
    unreachable_pub,
    missing_docs
)]
mod block_9 {
    use std::sync::Arc;

    use ftgo::create_order::{
        CreateOrderData, approve_order, authorize_card, cancel_create_ticket, card_authorized,
        confirm_create_ticket, create_ticket, reject_order, ticket_created,
        validate_order_by_consumer,
    };
    use saga_core::memory::InMemoryStore;
    use saga_core::orchestrator::Orchestrator;
    use saga_core::versions::{Migration, VersionError};
    use saga_core::{StepFailure, saga};
    use serde::{Deserialize, Serialize};

    #[derive(Clone, Serialize, Deserialize)]
    struct CreateOrderDataV1 {
        order: CreateOrderData,
    }

    impl From<CreateOrderDataV1> for CreateOrderData {
        fn from(old: CreateOrderDataV1) -> Self {
            old.order
        }
    }

    fn reject_v1(d: &CreateOrderDataV1) -> ftgo::messages::RejectOrder {
        reject_order(&d.order)
    }
    fn create_ticket_v1(d: &CreateOrderDataV1) -> ftgo::messages::CreateTicket {
        create_ticket(&d.order)
    }

    saga! {
        #[saga(name = "CreateOrderSaga", version = "1", retired)]
        saga CreateOrderSagaV1(CreateOrderDataV1) {
            compensatable create_order  { compensate: reject_v1 }
            compensatable create_ticket { invoke: create_ticket_v1 }
        }
    }

    saga! {
        #[saga(version = "2")]
        saga CreateOrderSaga(CreateOrderData) {
            compensatable create_order { compensate: reject_order }
            compensatable check_fraud  { local: check_fraud }
            compensatable open_ticket  { invoke: create_ticket }
        }
    }

    fn check_fraud(_: &mut CreateOrderData) -> Result<(), StepFailure> {
        Ok(())
    }

    fn compiles(store: Arc<InMemoryStore>) -> Result<(), VersionError> {
        include!(concat!(env!("OUT_DIR"), "/readme_block_9.rs"));
        Ok(())
    }
}
