//! The envelope on the wire: a saga message as NATS headers (`Nats-Msg-Id` carries its id)
//! and a payload, and a JetStream message read back — or rejected with the reason.

use std::sync::atomic::Ordering;

use async_nats::HeaderMap;
use async_nats::jetstream;
use saga_core::ports::Delivery;
use saga_core::{Headers, Message, MessageId};

use super::{NATS_MSG_ID, NatsTransport};

/// A message that cannot be delivered, and why.
pub(super) struct Rejected {
    pub(super) message: Box<jetstream::Message>,
    pub(super) reason: String,
}

impl Rejected {
    fn new(message: jetstream::Message, reason: String) -> Self {
        Self {
            message: Box::new(message),
            reason,
        }
    }
}

impl NatsTransport {
    /// Turns a JetStream message into a delivery, or says why it cannot be one.
    pub(super) fn delivery(
        &self,
        channel: &str,
        message: jetstream::Message,
    ) -> Result<Delivery, Rejected> {
        let attempt = match message.info() {
            Ok(info) => u32::try_from(info.delivered).unwrap_or(u32::MAX),
            Err(err) => return Err(Rejected::new(message, format!("no delivery info: {err}"))),
        };
        if attempt > self.options.max_deliver {
            let reason = format!("delivered {} times without being acknowledged", attempt - 1);
            return Err(Rejected::new(message, reason));
        }
        let mut headers = Headers::new();
        let mut id = None;
        if let Some(map) = &message.headers {
            for (name, values) in map.iter() {
                let name: &str = name.as_ref();
                let Some(value) = values.first() else {
                    continue;
                };
                if name == NATS_MSG_ID {
                    id = Some(value.as_str().to_owned());
                } else {
                    headers.insert(name, value.as_str());
                }
            }
        }
        let id: MessageId = match id.as_deref().map(str::parse) {
            Some(Ok(id)) => id,
            Some(Err(err)) => {
                return Err(Rejected::new(
                    message,
                    format!("invalid Nats-Msg-Id: {err}"),
                ));
            }
            None => return Err(Rejected::new(message, "no Nats-Msg-Id header".to_owned())),
        };
        let payload = match std::str::from_utf8(&message.payload) {
            Ok(text) => text.to_owned(),
            Err(err) => {
                return Err(Rejected::new(
                    message,
                    format!("payload is not UTF-8: {err}"),
                ));
            }
        };
        let receipt = self.next_receipt.fetch_add(1, Ordering::Relaxed);
        let delivery = Delivery {
            message: Message {
                id,
                destination: channel.to_owned(),
                headers,
                payload,
            },
            attempt,
            receipt,
        };
        self.lock_in_flight().insert(receipt, message);
        Ok(delivery)
    }
}

/// The bytes a message with `headers` and a payload of `payload` bytes takes against the
/// server's `max_payload` (the header block as sent, plus the payload).
pub(super) fn wire_size(headers: &HeaderMap, payload: usize) -> usize {
    let block: usize = headers
        .iter()
        .map(|(name, values)| {
            let name: &str = name.as_ref();
            values
                .iter()
                .map(|v| name.len() + v.as_str().len() + 4)
                .sum::<usize>()
        })
        .sum();
    "NATS/1.0\r\n\r\n".len() + block + payload
}

/// The NATS headers a message is published with.
pub(super) fn nats_headers(message: &Message) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(NATS_MSG_ID, message.id.to_string().as_str());
    for (name, value) in message.headers.iter() {
        headers.insert(name, value);
    }
    headers
}

/// A JetStream message read back as a saga message, when its id and payload can be read.
pub(super) fn readable(channel: &str, message: &jetstream::Message) -> Option<Message> {
    let map = message.headers.as_ref()?;
    let mut headers = Headers::new();
    let mut id = None;
    for (name, values) in map.iter() {
        let name: &str = name.as_ref();
        let Some(value) = values.first() else {
            continue;
        };
        if name == NATS_MSG_ID {
            id = value.as_str().parse().ok();
        } else {
            headers.insert(name, value.as_str());
        }
    }
    Some(Message {
        id: id?,
        destination: channel.to_owned(),
        headers,
        payload: std::str::from_utf8(&message.payload).ok()?.to_owned(),
    })
}
