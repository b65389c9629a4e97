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
//! ```

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
    /// A pending state was expected (to release, or as the new lock) but not found.
    #[error("{record} is in state {state}, which is not a pending state")]
    NotPending {
        /// The record kind.
        record: &'static str,
        /// The state found.
        state: &'static str,
    },
}

/// A record state enum with pending (locked) states. Derive it with `#[derive(SemanticLock)]`.
pub trait SemanticLock: Sized {
    /// The record kind named in errors, e.g. `Order`.
    const RECORD: &'static str;

    /// Whether this state is a pending (locked) state.
    fn is_pending(&self) -> bool;

    /// The state's name in `SCREAMING_SNAKE_CASE`, e.g. `APPROVAL_PENDING`.
    fn state_name(&self) -> &'static str;

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
