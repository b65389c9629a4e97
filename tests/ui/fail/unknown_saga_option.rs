use saga_core::{saga, Command, Reply};
use serde::{Deserialize, Serialize};

#[derive(Clone, Serialize, Deserialize)]
pub struct Data;

#[derive(Serialize, Deserialize, Command)]
#[command(channel = "participant", reply = Done)]
pub struct Work;

#[derive(Serialize, Deserialize, Reply)]
pub struct Done;

fn work(_: &Data) -> Work { Work }

saga! {
    #[saga(timout = Duration::from_secs(5))]
    pub saga S(Data) {
        pivot charge { invoke: work }
    }
}
fn main() {}
