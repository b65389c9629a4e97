//! # saga-store
//!
//! Durable implementations of saga-core's ports: SQL saga stores (SQLite embedded by default,
//! PostgreSQL for production), the transactional outbox and its relay, received-message
//! deduplication, semantic-lock and timer tables, and transports.
//!
//! This crate is being built; today saga-core's in-memory store and transport
//! (`saga_core::memory`) run sagas in one process.

pub use saga_core;
