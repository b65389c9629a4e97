use saga_core::{saga, Command, Reply};
use serde::{Deserialize, Serialize};

#[derive(Clone, Serialize, Deserialize)]
pub struct Data;

#[derive(Serialize, Deserialize, Command)]
#[command(channel = "participant", reply = Done)]
pub struct Work;

#[derive(Serialize, Deserialize, Reply)]
pub struct Done;

#[derive(Serialize, Deserialize, Command)]
#[command(channel = "participant", reply = Done)]
pub struct Undo;

fn work(_: &Data) -> Work { Work }
fn undo(_: &Data) -> Undo { Undo }

saga! {
    pub saga S(Data) {
        pivot charge { invoke: work }
        retriable confirm { invoke: work, compensate: undo }
    }
}
fn main() {}
