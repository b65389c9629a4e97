use saga_core::{saga, Command};
use serde::{Deserialize, Serialize};

#[derive(Clone, Default, Serialize, Deserialize)]
struct Data;

#[derive(Serialize, Deserialize, Command)]
#[command(channel = "mail", notification)]
struct Email;

fn email(_: &Data) -> Email {
    Email
}

saga! {
    saga Mailer(Data) {
        retriable tell { invoke: email }
    }
}

fn main() {}
