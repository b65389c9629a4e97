//! # saga-store
//!
//! Durable sagas on SQL: saga-core's ports implemented with sqlx on **SQLite** (the embedded
//! default: a file, no server) and **PostgreSQL** (production).
//!
//! - [`Database`]: the pool, dialect, migrations and wake-ups, and group commit
//!   ([`Database::write`], [`group`]): many callers' transactions share one durable commit;
//! - [`SqlSagaStore`]: saga instances, timeline, timers, outbox, dedup and dead letters —
//!   one atomic unit of work per handled message, batches of them written with multi-row
//!   statements;
//! - [`SqlTransport`]: a durable queue in the database (`FOR UPDATE SKIP LOCKED` on
//!   PostgreSQL, so several processes share a channel);
//! - [`SagaRuntime`]: the workers — outbox relay, reply consumers, timers, participants'
//!   command consumers, retention; with the queue in the same database
//!   ([`SagaRuntime::embedded`]), messages are handled in place, one transaction per batch;
//! - [`start_saga_in`]: start a saga inside your own transaction;
//! - [`locks`]: the semantic-lock table.
//!
//! | feature | default | what |
//! |---|---|---|
//! | `sqlite` | yes | SQLite driver |
//! | `postgres` | no | PostgreSQL driver and `LISTEN/NOTIFY` wake-ups |
//! | `nats` | no | the NATS JetStream transport ([`nats::NatsTransport`]) |

mod bulk;
mod codec;
pub mod database;
pub mod dead_letters;
pub mod error;
pub mod group;
mod in_place;
mod lease;
#[cfg(feature = "postgres")]
mod listen;
pub mod locks;
#[cfg(feature = "nats")]
pub mod nats;
pub mod runtime;
pub mod store;
pub mod transport;

pub use database::{Database, DatabaseOptions, Dialect, SqliteSync, Tx};
pub use error::DatabaseError;
pub use group::Finish;
pub use runtime::{RetentionPolicy, RuntimeOptions, SagaRuntime, WatchdogOptions, apply_retention};
pub use saga_core;
pub use store::SqlSagaStore;
pub use transport::{SqlTransport, SqlTransportOptions};

use saga_core::orchestrator::{Orchestrator, OrchestratorError};
use saga_core::ports::CommitOutcome;
use saga_core::{Saga, SagaId};

/// Starts a saga inside the caller's transaction: the saga row, its timeline and its first
/// commands are written to `tx`, so they commit — or roll back — with the caller's own
/// writes. Call [`Database::wake_relay`] after committing on SQLite to publish at once
/// (otherwise the relay's next poll does).
pub async fn start_saga_in<S: Saga>(
    orchestrator: &Orchestrator<SqlSagaStore>,
    tx: &mut Tx,
    data: S::Data,
) -> Result<SagaId, OrchestratorError> {
    let prepared = orchestrator.prepare_start::<S>(data, orchestrator.clock().now())?;
    match orchestrator.store().write_unit(tx, &prepared.unit).await? {
        CommitOutcome::Committed => Ok(prepared.saga_id),
        other => Err(OrchestratorError::Store(
            saga_core::ports::StoreError::Other(format!(
                "starting saga {} wrote nothing: {other:?}",
                prepared.saga_id
            )),
        )),
    }
}
