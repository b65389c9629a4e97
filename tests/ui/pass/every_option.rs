#![deny(missing_docs, unused_imports)]
//! A saga using every DSL option compiles, and its definition has the declared shape.
//! `retry:` and `timeout:` resolve the user's own imports (and so use them).

use std::time::Duration;

use saga_core::{saga, Command, Reply, RetryPolicy, Saga, StepFailure, StepKind};
use serde::{Deserialize, Serialize};

/// Data.
#[derive(Clone, Default, Serialize, Deserialize)]
pub struct Data {
    international: bool,
    reserved: bool,
    receipt: Option<String>,
}

/// Charge.
#[derive(Serialize, Deserialize, Command)]
#[command(channel = "accounting", reply = Charged, type_name = "shop.Charge")]
pub struct Charge;

/// Charged.
#[derive(Serialize, Deserialize, Reply)]
pub enum Charged {
    /// Ok.
    #[success]
    Ok {
        /// Receipt.
        receipt: String,
    },
    /// Declined.
    #[failure]
    Declined {
        /// Why.
        reason: String,
    },
}

/// Customs check.
#[derive(Serialize, Deserialize, Command)]
#[command(channel = "customs", reply = Cleared)]
pub struct CheckCustoms;

/// Cleared.
#[derive(Serialize, Deserialize, Reply)]
pub struct Cleared;

/// Cancel customs.
#[derive(Serialize, Deserialize, Command)]
#[command(channel = "customs", reply = Cleared)]
pub struct CancelCustoms;

/// Email.
#[derive(Serialize, Deserialize, Command)]
#[command(channel = "email", reply = Cleared)]
pub struct Email;

fn reserve(data: &mut Data) -> Result<(), StepFailure> {
    data.reserved = true;
    Ok(())
}
fn release(data: &mut Data) -> Result<(), StepFailure> {
    data.reserved = false;
    Ok(())
}
fn is_international(data: &Data) -> bool {
    data.international
}
fn check_customs(_: &Data) -> CheckCustoms {
    CheckCustoms
}
fn cancel_customs(_: &Data) -> CancelCustoms {
    CancelCustoms
}
fn charge(_: &Data) -> Charge {
    Charge
}
fn charged(data: &mut Data, reply: &Charged) {
    if let Charged::Ok { receipt } = reply {
        data.receipt = Some(receipt.clone());
    }
}
fn email(_: &Data) -> Email {
    Email
}

saga! {
    /// Ships an order.
    #[saga(timeout = Duration::from_secs(90))]
    pub saga ShipSaga(Data) {
        compensatable reserve { local: reserve, compensate: local(release) }
        compensatable customs { invoke: check_customs, when: is_international,
                                compensate: cancel_customs, timeout: Duration::from_secs(5),
                                on_timeout: retry, }
        pivot charge { invoke: charge, on_reply: charged, timeout: Duration::from_secs(30), on_timeout: fail }
        retriable tell { notify: email }
        retriable done {}
        retriable retried { invoke: check_customs, timeout: none,
                            retry: RetryPolicy::exponential(Duration::from_millis(50)).max_attempts(3) }
    }
}

fn main() {
    let definition = ShipSaga::definition();
    assert_eq!(ShipSaga::NAME, "ShipSaga");
    assert_eq!(ShipSaga::STEPS, ["reserve", "customs", "charge", "tell", "done", "retried"]);
    assert_eq!(definition.name(), "ShipSaga");
    let kinds: Vec<StepKind> = definition.steps().iter().map(|s| s.kind()).collect();
    assert_eq!(
        kinds,
        [
            StepKind::Compensatable,
            StepKind::Compensatable,
            StepKind::Pivot,
            StepKind::Retriable,
            StepKind::Retriable,
            StepKind::Retriable
        ]
    );
    assert!(definition.steps()[1].is_conditional());
    assert_eq!(definition.steps()[2].action().describe(), "shop.Charge → accounting");
    assert_eq!(definition.steps()[5].retry_policy().max_attempts, Some(3));
    let timeouts: Vec<_> = definition.steps().iter().map(|s| s.timeout()).collect();
    let secs = |s| Some(std::time::Duration::from_secs(s));
    assert_eq!(timeouts, [secs(90), secs(5), secs(30), secs(90), secs(90), None]);
}
