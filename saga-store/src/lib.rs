//! # saga-store
//!
//! Durable sagas on SQL: saga-core's ports implemented with sqlx on **SQLite** (the embedded
//! default: a file, no server) and **PostgreSQL** (production), with typed transactions for
//! participants.
//!
//! ## Getting started
//!
//! 1. Open the database: [`Database::connect`] with `sqlite://…?mode=rwc` or
//!    `postgres://…` (it runs saga-store's migrations; yours go through
//!    [`Database::run_migrations`]).
//! 2. The orchestrator keeps its sagas in a [`SqlSagaStore`]; start a saga in the same
//!    transaction as your business row with [`start_saga_in`], then [`Database::commit`].
//! 3. Participants are `saga_core::participant::Participant<Tx>` (or `<PgTx>`, `<SqliteTx>`):
//!    each command's handler, its dedup record and its reply commit in one transaction, and a
//!    refusal undoes the handler's writes.
//! 4. [`SagaRuntime::builder`] with a transport ([`SqlTransport`], or NATS) runs the workers:
//!    relay, consumers, timers, retention.
//!
//! The repository's `docs/participants.md` is the guide to writing participants (which error
//! to return when, semantic locks and [`lock_table`], the deployment layouts with a complete
//! snippet each, migrations); its examples are this crate's doctests. `examples/hello-saga` is
//! the smallest complete program.
//!
//! ## Typed backends
//!
//! A transaction is a PostgreSQL one or a SQLite one, never an erased "any": a participant
//! written for PostgreSQL takes a [`PgTx`] (`Participant<PgTx>`) and uses sqlx's PostgreSQL
//! types (`uuid::Uuid`, `jsonb`, timestamps, arrays) and checked `query!` macros — with
//! offline query data (`cargo sqlx prepare`, checked into the repository) or against a live
//! database at build time (`DATABASE_URL`), as sqlx documents. Code that runs on either
//! backend (the FTGO example, chosen by a flag) takes the portable [`Tx`] and writes each
//! statement once with [`on_backend!`]: the body is compiled for each backend with its
//! concrete types, so nothing generic has to be spelled out and a statement that does not fit
//! one backend fails to compile there. On PostgreSQL, ids are `uuid` and saga data, history
//! events and headers are `jsonb` (`SELECT data->>'order_id' FROM saga_instances` works);
//! on SQLite they are `TEXT`. Databases created by saga-store 0.1 are carried forward by
//! migration `0003`.
//!
//! ## The folders follow a message's trip
//!
//! | folder | what |
//! |---|---|
//! | [`db`] | the pool, options and dialect; migrations; typed transactions ([`db::backend`]); group commit ([`db::group`]); in-process wake-ups and PostgreSQL `LISTEN` |
//! | [`sql`] | one file per table: its statements (single-row and multi-row) and row codec |
//! | [`store`] | the [`SagaStore`](saga_core::ports::SagaStore) port: units of work, transactional start; what operators do (find sagas, stats, operator requests, dead letters) |
//! | [`transport`] | [`SqlTransport`] (the queue table) and, with `nats`, `NatsTransport` |
//! | [`outbox`] | the relay that publishes the outbox, under an expiring lease, and retention |
//! | `consume` | the consumers: leased, in place, replies, commands, timers and the watchdog |
//! | [`runtime`] | wiring only: [`RuntimeBuilder`] and [`SagaRuntime`] |
//!
//! Imports point one way, from lower to higher: `error`, `worker`, [`options`], [`secrets`] → [`db`] →
//! [`sql`] → [`store`] → [`transport`] → [`outbox`] → `consume` → [`runtime`].
//!
//! | feature | default | what |
//! |---|---|---|
//! | `postgres-tls` | yes | TLS to PostgreSQL with rustls (no OpenSSL): `sslmode=require`, `verify-ca`, `verify-full`, and `sslrootcert`, `sslcert`, `sslkey` in the URL or [`PostgresTls`]; a TLS or certificate error is reported at once ([`DatabaseError::Tls`]), not retried. See `docs/security.md` |
//! | `nats` | no | the NATS JetStream transport ([`transport::nats::NatsTransport`]) |

/// `docs/participants.md`, whose examples are compiled as this crate's doctests.
#[cfg(doctest)]
#[doc = include_str!("../../docs/participants.md")]
pub struct ParticipantsGuide;

/// `docs/security.md`, whose example is compiled as a doctest too.
#[cfg(doctest)]
#[doc = include_str!("../../docs/security.md")]
pub struct SecurityGuide;

mod consume;
pub mod db;
pub mod error;
mod gauges;
pub mod options;
pub mod outbox;
pub mod runtime;
pub mod secrets;
pub mod sql;
pub mod store;
pub mod transport;
mod worker;

pub use db::backend::{Conn, PgTx, PoolConn, SqliteTx, Tx, TxContext};
pub use db::group::Finish;
pub use db::{
    Database, DatabaseOptions, Dialect, PostgresTls, SAGA_MIGRATION_VERSIONS, SqliteSync,
    SqliteWriter, SslMode,
};
pub use error::DatabaseError;
pub use options::{RetentionPolicy, RuntimeOptions, WatchdogOptions};
pub use outbox::retention::{RetentionReport, apply_retention};
pub use runtime::{RuntimeBuilder, SagaRuntime, StartError, WorkersHandle};
pub use saga_core;
pub use sql::locks as lock_table;
pub use store::{
    DeadLetterError, OperatorRequestError, Resolution, SagaFilter, SqlSagaStore, StoreStats,
    StoredDeadLetter, StoredDefinition, StoredSaga, VersionStatus, start_saga_in,
};
#[cfg(feature = "nats")]
pub use transport::nats;
pub use transport::sql::{SqlTransport, SqlTransportOptions};
