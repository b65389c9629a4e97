//! Semantic locks: the isolation countermeasure for sagas.
//!
//! A compensatable step leaves the record it touched in a `*_PENDING` state (an order
//! `APPROVAL_PENDING`, a ticket `CREATE_PENDING`). Until the saga that set it releases it (a
//! retriable step confirms, or a compensation undoes), other work that meets the record is
//! refused with a [`Locked`] error, which a participant turns into a failure reply.
//!
//! Derive [`SemanticLock`] for a state enum and mark the pending variants:
//!
//! ```
//! use saga_core::SemanticLock;
//!
//! #[derive(Clone, Copy, Debug, PartialEq, Eq, SemanticLock)]
//! #[semantic_lock(record = "Order")]
//! enum OrderState {
//!     #[pending]
//!     ApprovalPending,
//!     Approved,
//!     #[pending]
//!     CancelPending,
//!     Cancelled,
//!     Rejected,
//! }
//!
//! let mut state = OrderState::Approved;
//! state.lock(42, OrderState::CancelPending).unwrap();
//! let err = state.lock(42, OrderState::CancelPending).unwrap_err();
//! assert_eq!(err.to_string(), "Order 42 is locked in state CANCEL_PENDING by a saga in progress");
//! state.release(OrderState::Cancelled).unwrap();
//! assert!(!state.is_pending());
//!
//! // States are stored by name, and read back with the derive's round trip.
//! assert_eq!(OrderState::from_state_name("CANCELLED"), Ok(OrderState::Cancelled));
//! assert_eq!(OrderState::all().len(), 5);
//!
//! // A saga command's guarded move: `expected → next`, a no-op when replayed.
//! let mut state = OrderState::ApprovalPending;
//! assert_eq!(state.advance(42, OrderState::ApprovalPending, OrderState::Approved), Ok(true));
//! assert_eq!(state.advance(42, OrderState::ApprovalPending, OrderState::Approved), Ok(false));
//! let err = state.advance(42, OrderState::CancelPending, OrderState::Cancelled).unwrap_err();
//! assert_eq!(err.to_string(), "Order 42 is APPROVED, not CANCEL_PENDING");
//! ```
//!
//! In a participant, a [`Locked`] error is a business refusal: `.map_err(CommandFailed::from)?`
//! turns it into a failure reply (a bare `?` would make it a transient failure, tried again).
//! A stored name that is no state ([`UnknownState`]) is corrupt data, and a bare `?` is right.

use std::fmt;

/// A record was met in a pending state held by another saga.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Locked {
    /// The record is pending; the work that met it is refused.
    #[error("{record} {id} is locked in state {state} by a saga in progress")]
    Pending {
        /// The record kind, e.g. `Order`.
        record: &'static str,
        /// The record id.
        id: String,
        /// Its pending state, e.g. `APPROVAL_PENDING`.
        state: &'static str,
    },
    /// A guarded move found the record in another state than the one it moves from.
    #[error("{record} {id} is {state}, not {expected}")]
    WrongState {
        /// The record kind.
        record: &'static str,
        /// The record id.
        id: String,
        /// The state found.
        state: &'static str,
        /// The state the move expected.
        expected: &'static str,
    },
    /// A pending state was expected (to release, or as the new lock) but not found.
    #[error("{record} is in state {state}, which is not a pending state")]
    NotPending {
        /// The record kind.
        record: &'static str,
        /// The state found.
        state: &'static str,
    },
}

/// A stored state name that is none of the enum's states.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown {record} state {name:?}")]
pub struct UnknownState {
    /// The record kind.
    pub record: &'static str,
    /// The name found.
    pub name: String,
}

impl From<Locked> for crate::message::CommandFailed {
    fn from(locked: Locked) -> Self {
        Self::new(locked.to_string())
    }
}

/// A record state enum with pending (locked) states. Derive it with `#[derive(SemanticLock)]`.
pub trait SemanticLock: Sized {
    /// The record kind named in errors, e.g. `Order`.
    const RECORD: &'static str;

    /// Whether this state is a pending (locked) state.
    fn is_pending(&self) -> bool;

    /// The state's name in `SCREAMING_SNAKE_CASE`, e.g. `APPROVAL_PENDING`.
    fn state_name(&self) -> &'static str;

    /// Every state, in declaration order. The derive lists them when no variant carries
    /// data; otherwise (and by default) the list is empty.
    fn all() -> &'static [Self]
    where
        Self: 'static,
    {
        &[]
    }

    /// The state stored as `name` (see [`state_name`](Self::state_name)). The derive reads
    /// every data-free variant; by default nothing is read.
    fn from_state_name(name: &str) -> Result<Self, UnknownState> {
        Err(UnknownState {
            record: Self::RECORD,
            name: name.to_owned(),
        })
    }

    /// The guarded move a saga command makes: from `expected` to `next`, for record `id`.
    ///
    /// - `Ok(false)`: the record is in `next` already (the command was replayed); nothing to do.
    /// - `Ok(true)`: moved. Leaving a pending `expected` releases the lock; entering a pending
    ///   `next` takes it; otherwise it is a plain [`transition`](Self::transition).
    /// - [`Locked::Pending`] when another saga holds the record, [`Locked::WrongState`] when it
    ///   is in any other state than `expected`.
    fn advance(&mut self, id: impl fmt::Display, expected: Self, next: Self) -> Result<bool, Locked>
    where
        Self: PartialEq,
    {
        if *self == next {
            return Ok(false);
        }
        if *self != expected {
            self.ensure_unlocked(&id)?;
            return Err(Locked::WrongState {
                record: Self::RECORD,
                id: id.to_string(),
                state: self.state_name(),
                expected: expected.state_name(),
            });
        }
        if expected.is_pending() {
            self.release(next)?;
        } else if next.is_pending() {
            self.lock(id, next)?;
        } else {
            self.transition(id, next)?;
        }
        Ok(true)
    }

    /// Refuses with [`Locked::Pending`] when the record is pending.
    fn ensure_unlocked(&self, id: impl fmt::Display) -> Result<(), Locked> {
        if self.is_pending() {
            Err(Locked::Pending {
                record: Self::RECORD,
                id: id.to_string(),
                state: self.state_name(),
            })
        } else {
            Ok(())
        }
    }

    /// A guarded transition: moves to `next` unless the record is pending (held by a saga),
    /// and returns the previous state.
    fn transition(&mut self, id: impl fmt::Display, next: Self) -> Result<Self, Locked> {
        self.ensure_unlocked(id)?;
        Ok(std::mem::replace(self, next))
    }

    /// Takes the lock: moves an unlocked record into the pending state `pending`.
    fn lock(&mut self, id: impl fmt::Display, pending: Self) -> Result<Self, Locked> {
        if !pending.is_pending() {
            return Err(Locked::NotPending {
                record: Self::RECORD,
                state: pending.state_name(),
            });
        }
        self.transition(id, pending)
    }

    /// Releases the lock (for the saga that holds it): moves a pending record to `next`.
    fn release(&mut self, next: Self) -> Result<Self, Locked> {
        if !self.is_pending() {
            return Err(Locked::NotPending {
                record: Self::RECORD,
                state: self.state_name(),
            });
        }
        Ok(std::mem::replace(self, next))
    }
}
