use saga_core::{saga, Reply};
use serde::{Deserialize, Serialize};

#[derive(Clone, Default, Serialize, Deserialize)]
struct Data;

#[derive(Serialize, Deserialize, Reply)]
struct Charged;

fn charge(_: &Data) -> Charged {
    Charged
}

saga! {
    saga Payment(Data) {
        pivot charge { invoke: charge }
    }
}

fn main() {}
