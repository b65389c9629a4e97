//! The four FTGO services. Each owns its database and talks to the others only through
//! messages: the Order service orchestrates the sagas (and handles its own approve, reject and
//! cancel commands); the Consumer, Kitchen and Accounting services are participants.
//!
//! Records a saga is still working on sit in `*_PENDING` states — semantic locks, declared
//! with `#[derive(SemanticLock)]` — and other work that meets them is refused with the reason.
//! A saga command moves a record with `SemanticLock::advance` (`expected → next`, a no-op when
//! replayed), and states are stored by name (`state_name` / `from_state_name`).

pub mod accounting;
pub mod consumer;
pub mod kitchen;
pub mod order;

/// What calling another system would add to each forward command of CreateOrderSaga a
/// participant handles (verifying a consumer, creating and confirming a ticket, authorizing a
/// card): zero unless a benchmark asks for it (`ftgo bench --service-time-ms`), to show what
/// running steps at once saves when participants take time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceTime(pub std::time::Duration);

impl ServiceTime {
    /// Waits it out, inside the handler's transaction, as a call made there would.
    pub(crate) async fn spend(self) {
        if !self.0.is_zero() {
            tokio::time::sleep(self.0).await;
        }
    }
}
