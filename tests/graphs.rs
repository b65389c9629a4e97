//! Snapshot tests of saga state graphs (Mermaid and DOT): FTGO's CreateOrderSaga and
//! CancelOrderSaga, a saga with no pivot, a saga with local and conditional steps, and one
//! with parallel groups before and after its pivot.

use saga_core::{Command, Reply, Saga, StepFailure, saga};
use serde::{Deserialize, Serialize};

#[test]
fn create_order_saga_mermaid() {
    insta::assert_snapshot!(ftgo::create_order::CreateOrderSaga::definition().to_mermaid());
}

#[test]
fn create_order_saga_dot() {
    insta::assert_snapshot!(ftgo::create_order::CreateOrderSaga::definition().to_dot());
}

#[test]
fn cancel_order_saga_mermaid() {
    insta::assert_snapshot!(ftgo::cancel_order::CancelOrderSaga::definition().to_mermaid());
}

#[test]
fn cancel_order_saga_dot() {
    insta::assert_snapshot!(ftgo::cancel_order::CancelOrderSaga::definition().to_dot());
}

/// A transfer with no pivot: the last compensatable step is the point of no return.
mod no_pivot {
    use super::*;

    #[derive(Clone, Serialize, Deserialize)]
    pub(crate) struct Transfer {
        pub(crate) from: String,
        pub(crate) to: String,
        pub(crate) cents: i64,
    }

    #[derive(Serialize, Deserialize, Command)]
    #[command(channel = "ledger", reply = Posted)]
    pub(crate) struct Debit {
        pub(crate) account: String,
        pub(crate) cents: i64,
    }

    #[derive(Serialize, Deserialize, Command)]
    #[command(channel = "ledger", reply = Posted)]
    pub(crate) struct Credit {
        pub(crate) account: String,
        pub(crate) cents: i64,
    }

    #[derive(Serialize, Deserialize, Reply)]
    pub(crate) struct Posted;

    fn debit(t: &Transfer) -> Debit {
        Debit {
            account: t.from.clone(),
            cents: t.cents,
        }
    }
    fn refund(t: &Transfer) -> Credit {
        Credit {
            account: t.from.clone(),
            cents: t.cents,
        }
    }
    fn credit(t: &Transfer) -> Credit {
        Credit {
            account: t.to.clone(),
            cents: t.cents,
        }
    }

    saga! {
        /// Moves money between two accounts.
        pub(crate) saga TransferSaga(Transfer) {
            compensatable debit_source { invoke: debit, compensate: refund }
            compensatable credit_target { invoke: credit }
        }
    }
}

/// Local steps, a conditional step, a notification.
mod local_and_conditional {
    use super::*;

    #[derive(Clone, Serialize, Deserialize)]
    pub(crate) struct Shipment {
        pub(crate) international: bool,
        pub(crate) reserved: bool,
    }

    #[derive(Serialize, Deserialize, Command)]
    #[command(channel = "customs", reply = Cleared)]
    pub(crate) struct DeclareCustoms;

    #[derive(Serialize, Deserialize, Command)]
    #[command(channel = "customs", reply = Cleared)]
    pub(crate) struct WithdrawDeclaration;

    #[derive(Serialize, Deserialize, Reply)]
    pub(crate) struct Cleared;

    #[derive(Serialize, Deserialize, Command)]
    #[command(channel = "carrier", reply = Cleared)]
    pub(crate) struct BookCarrier;

    #[derive(Serialize, Deserialize, Command)]
    #[command(channel = "notifications", reply = Cleared)]
    pub(crate) struct TellCustomer;

    fn reserve(s: &mut Shipment) -> Result<(), StepFailure> {
        s.reserved = true;
        Ok(())
    }
    fn release(s: &mut Shipment) -> Result<(), StepFailure> {
        s.reserved = false;
        Ok(())
    }
    fn is_international(s: &Shipment) -> bool {
        s.international
    }
    fn declare(_: &Shipment) -> DeclareCustoms {
        DeclareCustoms
    }
    fn withdraw(_: &Shipment) -> WithdrawDeclaration {
        WithdrawDeclaration
    }
    fn book(_: &Shipment) -> BookCarrier {
        BookCarrier
    }
    fn tell(_: &Shipment) -> TellCustomer {
        TellCustomer
    }

    saga! {
        /// Ships a parcel.
        pub(crate) saga ShipmentSaga(Shipment) {
            compensatable reserve_stock { local: reserve, compensate: local(release) }
            compensatable declare_customs { invoke: declare, when: is_international,
                                            compensate: withdraw }
            pivot book_carrier { invoke: book }
            retriable tell_customer { notify: tell }
        }
    }
}

/// Parallel groups on both sides of the pivot, one member conditional, one local.
mod parallel_groups {
    use super::*;

    #[derive(Clone, Serialize, Deserialize)]
    pub(crate) struct Trip {
        pub(crate) insured: bool,
    }

    #[derive(Serialize, Deserialize, Command)]
    #[command(channel = "travel", reply = Done)]
    pub(crate) struct Book;

    #[derive(Serialize, Deserialize, Command)]
    #[command(channel = "travel", reply = Done)]
    pub(crate) struct Cancel;

    #[derive(Serialize, Deserialize, Command)]
    #[command(channel = "mail", reply = Done)]
    pub(crate) struct Tell;

    #[derive(Serialize, Deserialize, Reply)]
    pub(crate) struct Done;

    fn book(_: &Trip) -> Book {
        Book
    }
    fn cancel(_: &Trip) -> Cancel {
        Cancel
    }
    fn tell(_: &Trip) -> Tell {
        Tell
    }
    fn insured(t: &Trip) -> bool {
        t.insured
    }
    fn note(_: &mut Trip) -> Result<(), StepFailure> {
        Ok(())
    }

    saga! {
        pub(crate) saga TripSaga(Trip) {
            parallel {
                compensatable flight { invoke: book, compensate: cancel }
                compensatable hotel  { invoke: book, compensate: cancel }
                compensatable cover  { invoke: book, compensate: cancel, when: insured }
            }
            pivot charge { invoke: book }
            parallel {
                retriable email { invoke: tell }
                retriable log   { local: note }
            }
        }
    }
}

#[test]
fn parallel_groups_mermaid() {
    insta::assert_snapshot!(parallel_groups::TripSaga::definition().to_mermaid());
}

#[test]
fn parallel_groups_dot() {
    insta::assert_snapshot!(parallel_groups::TripSaga::definition().to_dot());
}

#[test]
fn no_pivot_mermaid() {
    insta::assert_snapshot!(no_pivot::TransferSaga::definition().to_mermaid());
}

#[test]
fn no_pivot_dot() {
    insta::assert_snapshot!(no_pivot::TransferSaga::definition().to_dot());
}

#[test]
fn local_and_conditional_mermaid() {
    insta::assert_snapshot!(local_and_conditional::ShipmentSaga::definition().to_mermaid());
}

#[test]
fn local_and_conditional_dot() {
    insta::assert_snapshot!(local_and_conditional::ShipmentSaga::definition().to_dot());
}

#[test]
fn definition_versions_are_stable_and_differ_by_shape() {
    // The book's sequential CreateOrderSaga keeps the version it had before parallel groups
    // existed; running two of its steps at once makes another graph, so another version.
    let sequential = ftgo::create_order::SequentialCreateOrderSaga::definition().version();
    insta::assert_snapshot!(sequential, @"v1-7490ae3d833197f4");
    let parallel = ftgo::create_order::CreateOrderSaga::definition().version();
    let transfer = no_pivot::TransferSaga::definition().version();
    assert_ne!(parallel, transfer);
    assert_ne!(parallel, sequential);
}
