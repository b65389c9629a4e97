use saga_core::{saga, StepFailure};
use serde::{Deserialize, Serialize};

#[derive(Clone, Serialize, Deserialize)]
pub struct Data;

fn run(_: &mut Data) -> Result<(), StepFailure> { Ok(()) }

saga! {
    #[saga(name = "Order", version = "1", retired)]
    pub saga OrderV1(Data) { pivot charge { local: run } }
}

saga! {
    #[saga(name = "Order", version = "2", retired)]
    pub saga OrderV2(Data) { pivot charge { local: run } }
}

saga! {
    #[saga(version = "2", previous(OrderV1, OrderV2))]
    pub saga Order(Data) { pivot charge { local: run } }
}

fn main() {}
