//! Shared harness for saga's cross-crate tests: a small payment saga with a ledger
//! participant that records every effect in a table, helpers to open SQLite and PostgreSQL
//! test databases, and a system wrapper to run and inspect it. Used by the `[[test]]` targets
//! of this package and by the `saga-test-worker` binary (the child process the crash tests
//! kill).

pub mod create_order;
pub mod faults;
pub mod ftgo_simulation;
pub mod harness;
pub mod in_memory_ftgo;
pub mod operating;
pub mod payment;
pub mod replies;
pub mod testdb;
