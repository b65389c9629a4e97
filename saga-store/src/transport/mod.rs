//! The transports: how messages travel between channels once they leave a database's outbox.
//!
//! - [`sql`]: a durable queue in the database itself — the embedded default (SQLite) and a
//!   multi-process option on PostgreSQL;
//! - `nats` (feature `nats`): NATS JetStream, to scale past one machine.

#[cfg(feature = "nats")]
pub mod nats;
pub mod sql;
