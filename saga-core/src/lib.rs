//! # saga-core
//!
//! The model and the engine of the saga framework, with no I/O of its own:
//!
//! - [`definition`]: saga definitions — compensatable, pivot and retriable steps, commands,
//!   local steps, notifications, compensations, conditions, retry and timeout policies;
//! - [`engine`]: the pure transition function `(definition, state, event) -> (state, actions)`;
//! - [`message`]: the envelope, headers, and the [`Command`] / [`Reply`] traits;
//! - [`ports`]: the store and transport traits the runtime is written against, and their
//!   errors (each keeps its [`error::ErrorSource`]);
//! - [`orchestrator`] and [`participant`]: the dispatch logic over those ports;
//! - [`memory`]: in-memory store and transport, so a whole saga runs in one test;
//! - [`lock`]: semantic locks for participants' records;
//! - [`operator`]: operator requests (`retry`, `skip`, `cancel`) as messages to an
//!   orchestrator, for tools that have only its database;
//! - [`testing`]: the saga unit-test DSL;
//! - [`graph`]: a definition as plain-data state graph, rendered in Mermaid or DOT, bare
//!   ([`SagaDefinition::to_mermaid`], [`SagaDefinition::to_dot`]) or with one instance's path;
//! - [`trace`]: W3C trace context in every message and saga, and the spans saga emits;
//! - [`telemetry`]: the metrics saga records (through the `metrics` crate).
//!
//! | feature | default | what |
//! |---|---|---|
//! | `macros` | yes | re-exports the `saga!` DSL and the `Command`, `Reply` and `SemanticLock` derives |
//! | `opentelemetry` | no | saga's spans join OpenTelemetry traces (see [`trace`]) |
//!
//! ## Where to start
//!
//! - A saga: the `saga!` DSL (its rustdoc has the step kinds and every option) and, for its
//!   tests, [`testing::SagaTest`].
//! - A participant: [`participant::Participant`] and [`participant::HandlerError`] — what a
//!   refusal, a transient error and a malformed message each do. The repository's
//!   `docs/participants.md` is the guide (which error when, the two retry mechanisms, semantic
//!   locks, deployment layouts, migrations).
//! - Running it durably: the `saga-store` crate.

pub mod clock;
pub mod definition;
pub mod engine;
pub mod error;
pub mod explore;
pub mod graph;
pub mod ids;
mod invariants;
pub mod lock;
pub mod memory;
pub mod message;
pub mod operator;
pub mod orchestrator;
pub mod participant;
pub mod ports;
pub mod relay;
pub mod simulation;
pub mod telemetry;
pub mod testing;
pub mod timeline;
pub mod trace;
pub mod versions;

pub use definition::{
    Action, RetryPolicy, Saga, SagaData, SagaDefinition, Step, StepDefinition, StepFailure,
    StepKind, TimeoutAction,
};
pub use engine::{OperatorCommand, OperatorRequest, SagaStatus};
pub use ids::{MessageId, RequestId, SagaId, Timestamp};
pub use lock::{Locked, SemanticLock, UnknownState};
pub use message::{
    AwaitedReply, Command, CommandFailed, Headers, Message, NoReply, Reply, ReplyOutcome,
};

#[cfg(feature = "macros")]
pub use saga_macros::{Command, Reply, SemanticLock};

#[cfg(feature = "macros")]
#[doc = include_str!("saga_macro.md")]
pub use saga_macros::saga;

/// Paths used by code the macros generate. Not a public API: it may change in any release.
#[doc(hidden)]
pub mod __private {
    pub use crate::definition::{
        ReplyCheck, ReplyOf, RetryPolicy, Saga, SagaDefinition, Step, StepDefinition, StepFailure,
        TimeoutAction,
    };
    pub use crate::lock::{SemanticLock, UnknownState};
    pub use crate::message::{AwaitedReply, Command, NoReply, Reply, ReplyOutcome};
    pub use crate::versions::SagaVersion;
    pub use std::sync::OnceLock;
    pub use std::time::Duration;

    /// Whether two strings are equal, in a const context: how the `saga!` macro checks at
    /// compile time that two versions of one saga type have different version ids.
    pub const fn str_eq(a: &str, b: &str) -> bool {
        let (a, b) = (a.as_bytes(), b.as_bytes());
        if a.len() != b.len() {
            return false;
        }
        let mut i = 0;
        while i < a.len() {
            if a[i] != b[i] {
                return false;
            }
            i += 1;
        }
        true
    }

    /// Whether two explicit version ids are the same (`None`, a graph hash, is never known
    /// at compile time).
    pub const fn same_version(a: Option<&str>, b: Option<&str>) -> bool {
        match (a, b) {
            (Some(a), Some(b)) => str_eq(a, b),
            _ => false,
        }
    }

    /// Builds a definition the macro has already checked; a failure here is a bug in the
    /// macro, reported with the saga name.
    pub fn checked<D: crate::definition::SagaData>(
        builder: crate::definition::SagaDefinitionBuilder<D>,
    ) -> SagaDefinition<D> {
        match builder.build() {
            Ok(definition) => definition,
            Err(error) => panic!("saga! generated an invalid definition: {error}"),
        }
    }
}
