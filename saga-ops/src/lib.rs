//! # saga-ops
//!
//! Operating sagas without writing SQL against a live system: the `saga` command-line tool
//! ([`cli`]) and a web console ([`console`]) that find sagas, show a saga's timeline and its
//! path through its graph, and repair them — `retry` and `skip` a parked saga, `cancel` a
//! running one, replay or discard dead letters.
//!
//! Both work on one saga database (a SQLite file, or a PostgreSQL URL and schema) and need
//! none of the sagas' Rust types: orchestrators record their definitions (graph, version,
//! reply channel) in `saga_definitions` when their runtime starts. Actions never touch a saga
//! row: an operator request goes through the database's outbox to the orchestrator, which
//! applies it in its own transaction (see [`saga_store::SqlSagaStore::request_operator`]),
//! so they are safe while services run.
//!
//! | module | what |
//! |---|---|
//! | [`view`] | a saga with its timeline, definition and path; time formatting |
//! | [`actions`] | operator requests that wait for the saga's answer; bulk selection |
//! | [`svg`] | a saga graph drawn as SVG, the instance's path highlighted |
//! | [`cli`] | the `saga` command |
//! | [`console`] | the console: an axum `Router` to mount in any service |

pub mod actions;
pub mod cli;
pub mod console;
mod error;
pub mod svg;
pub mod view;

pub use error::OpsError;
