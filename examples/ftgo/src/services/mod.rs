//! The four FTGO services. Each owns its database and talks to the others only through
//! messages: the Order service orchestrates the sagas (and handles its own approve, reject and
//! cancel commands); the Consumer, Kitchen and Accounting services are participants.
//!
//! Records a saga is still working on sit in `*_PENDING` states — semantic locks, declared
//! with `#[derive(SemanticLock)]` — and other work that meets them is refused with the reason.

pub mod accounting;
pub mod consumer;
pub mod kitchen;
pub mod order;

use saga_core::SemanticLock;
use saga_core::participant::HandlerError;

/// Decides a state change a saga command asks for: `Ok(None)` when the record is in `to`
/// already (a replayed command), `Ok(Some(to))` to move it. Moving out of a pending state
/// releases the saga's semantic lock; moving into one takes it (refused when another saga
/// holds the record).
pub(crate) fn advance<S: StoredState + PartialEq + std::fmt::Debug>(
    current: S,
    id: i64,
    from: S,
    to: S,
) -> Result<Option<S>, HandlerError> {
    if current == to {
        return Ok(None);
    }
    let refused = |reason: String| HandlerError::refused(reason);
    if current != from {
        current
            .ensure_unlocked(id)
            .map_err(|e| refused(e.to_string()))?;
        return Err(refused(format!(
            "{} {id} is {}, not {}",
            S::RECORD,
            current.state_name(),
            from.state_name()
        )));
    }
    let mut next = current;
    let moved = if from.is_pending() {
        next.release(to)
    } else if to.is_pending() {
        next.lock(id, to)
    } else {
        next.transition(id, to)
    };
    moved.map_err(|e| refused(e.to_string()))?;
    Ok(Some(next))
}

/// A state enum whose states are stored by their `SCREAMING_SNAKE_CASE` names.
pub trait StoredState: SemanticLock + Copy + 'static {
    /// Every state.
    const ALL: &'static [Self];

    /// The state stored as `name`.
    fn from_stored(name: &str) -> Result<Self, HandlerError> {
        Self::ALL
            .iter()
            .copied()
            .find(|state| state.state_name() == name)
            .ok_or_else(|| {
                HandlerError::transient(format!("unknown {} state {name:?}", Self::RECORD))
            })
    }
}
