use saga_core::Reply;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Reply)]
pub enum Verdict {
    #[success]
    Approved,
    Declined { reason: String },
}

fn main() {}
