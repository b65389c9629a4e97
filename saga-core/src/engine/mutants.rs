//! Deliberately broken engine behaviours, to prove that the checks catch real bugs
//! ([`crate::explore`], the property tests). Compiled in only with the `mutants` feature,
//! and even then inert: a test switches one on for its own thread with [`with`].

use std::cell::Cell;

/// A bug the engine can be made to have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Mutant {
    /// A saga that turns back compensates its steps first to last.
    CompensationsInForwardOrder,
    /// A reply to an earlier request is taken for the one awaited: a duplicate or late reply
    /// moves the saga on (and a compensation can be counted done twice).
    StaleRepliesAccepted,
    /// The first step's compensation never runs, so what it locked stays locked.
    FirstCompensationSkipped,
}

thread_local! {
    static ACTIVE: Cell<Option<Mutant>> = const { Cell::new(None) };
}

/// Runs `run` with `mutant` switched on in this thread.
#[cfg(feature = "mutants")]
pub fn with<R>(mutant: Mutant, run: impl FnOnce() -> R) -> R {
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            ACTIVE.with(|active| active.set(None));
        }
    }
    ACTIVE.with(|active| active.set(Some(mutant)));
    let _reset = Reset;
    run()
}

/// Whether `mutant` is switched on in this thread.
pub(crate) fn active(mutant: Mutant) -> bool {
    cfg!(feature = "mutants") && ACTIVE.with(|active| active.get() == Some(mutant))
}

/// The mutant switched on in this thread, to carry into threads it starts.
pub(crate) fn current() -> Option<Mutant> {
    ACTIVE.with(Cell::get)
}

/// Switches `mutant` on (or every mutant off) in this thread.
pub(crate) fn set(mutant: Option<Mutant>) {
    ACTIVE.with(|active| active.set(mutant));
}
