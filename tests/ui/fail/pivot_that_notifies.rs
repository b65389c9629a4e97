use saga_core::{saga, Command, Reply};
use serde::{Deserialize, Serialize};

#[derive(Clone, Default, Serialize, Deserialize)]
struct Data;

#[derive(Serialize, Deserialize, Command)]
#[command(channel = "mail", reply = Sent)]
struct Email;

#[derive(Serialize, Deserialize, Reply)]
struct Sent;

fn email(_: &Data) -> Email {
    Email
}

saga! {
    saga Mailer(Data) {
        pivot tell { notify: email }
    }
}

fn main() {}
