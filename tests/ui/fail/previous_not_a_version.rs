use saga_core::{saga, StepFailure};
use serde::{Deserialize, Serialize};

#[derive(Clone, Serialize, Deserialize)]
pub struct Data;

fn run(_: &mut Data) -> Result<(), StepFailure> { Ok(()) }

saga! {
    #[saga(version = "1")]
    pub saga Invoice(Data) { pivot charge { local: run } }
}

saga! {
    #[saga(version = "2", previous(Invoice))]
    pub saga Order(Data) { pivot charge { local: run } }
}

fn main() {}
