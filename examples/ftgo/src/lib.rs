//! The FTGO order-creation example: the book's food-delivery system, built on saga.
//!
//! - [`messages`]: the commands and replies of the Order, Consumer, Kitchen and Accounting
//!   services;
//! - [`create_order`] and [`cancel_order`]: the two sagas;
//! - [`services`]: the four services, each on its own database;
//! - [`app`]: all four wired together with the saga workers, embedded (SQLite) or on
//!   PostgreSQL;
//! - [`api`]: the HTTP API;
//! - [`health`] and [`observability`]: health checks, logs, traces and metrics;
//! - [`demo`]: the demo `cargo run -p ftgo` runs.

pub mod api;
pub mod app;
pub mod bench;
pub mod cancel_order;
pub mod create_order;
pub mod demo;
pub mod health;
pub mod messages;
pub mod observability;
pub mod protocol_errors;
pub mod services;
