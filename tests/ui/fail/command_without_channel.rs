use saga_core::{Command, Reply};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Reply)]
pub struct Done;

#[derive(Serialize, Deserialize, Command)]
#[command(reply = Done)]
pub struct Work;

fn main() {}
