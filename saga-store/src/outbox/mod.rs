//! The outbox, after the transaction that filled it: the relay that publishes it
//! (`relay`) and the retention that empties it of what was published ([`retention`]).

pub(crate) mod relay;
pub mod retention;
