use saga_core::{saga, StepFailure};
use serde::{Deserialize, Serialize};

#[derive(Clone, Serialize, Deserialize)]
pub struct Data;

fn run(_: &mut Data) -> Result<(), StepFailure> { Ok(()) }

saga! {
    #[saga(name = "Order", retired)]
    pub saga OrderV1(Data) { pivot charge { local: run } }
}

saga! {
    #[saga(previous(OrderV1), versoin = "2")]
    pub saga Order(Data) { pivot charge { local: run } }
}

fn main() {}
