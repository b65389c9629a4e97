use saga_core::{saga, StepFailure};
use serde::{Deserialize, Serialize};

#[derive(Clone, Serialize, Deserialize)]
pub struct Data;

fn run(_: &mut Data) -> Result<(), StepFailure> { Ok(()) }

saga! {
    pub saga PivotInGroup(Data) {
        parallel {
            compensatable reserve { local: run }
            pivot charge { local: run }
        }
    }
}

saga! {
    pub saga Mixed(Data) {
        parallel {
            compensatable reserve { local: run }
            retriable notify { local: run }
        }
    }
}

saga! {
    pub saga Lone(Data) {
        parallel {
            compensatable reserve { local: run }
        }
        pivot charge { local: run }
    }
}

saga! {
    pub saga Nested(Data) {
        parallel {
            compensatable a { local: run }
            parallel {
                compensatable b { local: run }
            }
        }
    }
}

fn main() {}
