//! The NATS JetStream transport: how saga scales past one machine.
//!
//! Every channel is a subject `<prefix>.<channel>` in one stream (created on start-up,
//! work-queue retention: a message is removed once acknowledged). Each channel has one durable
//! pull consumer, shared by every instance of the service that listens on it — the instances
//! compete for its messages, so they share the work. The outbox relay publishes with the
//! message id as `Nats-Msg-Id`, so the server drops a republished duplicate within the
//! duplicate window (and consumers' dedup records catch anything later). Consumers
//! acknowledge only after their local transaction committed; an unacknowledged message comes
//! back after `ack_wait`.
//!
//! A message whose envelope cannot be read, or that was delivered `max_deliver` times without
//! being acknowledged, is published to the dead-letter stream (`<prefix>_dead.<channel>`)
//! with the reason in a `saga-dead-letter-reason` header, and acknowledged: no message blocks a
//! channel. A message over the server's size limit is refused at publish time with
//! [`TransportError::TooLarge`]; the relay sets such an outbox row aside as a dead letter.
//!
//! The client reconnects by itself with backoff; while NATS is down, publishing fails (the
//! relay keeps the rows in the outbox and retries), and consumers log and retry.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::consumer::{AckPolicy, PullConsumer, pull};
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream::{self, RetentionPolicy, StorageType};
use async_nats::jetstream::{self, AckKind};
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use saga_core::ports::{Delivery, Transport, TransportError};
use saga_core::{Headers, Message, MessageId};

/// The header carrying a dead letter's reason.
pub const DEAD_LETTER_REASON: &str = "saga-dead-letter-reason";
const NATS_MSG_ID: &str = "Nats-Msg-Id";

/// Settings of the NATS transport (documented defaults are what `ftgo` uses).
#[derive(Clone, Debug)]
pub struct NatsOptions {
    /// The stream holding every channel (default `SAGA`).
    pub stream: String,
    /// The subject prefix: channel `x` is subject `<prefix>.x` (default `saga`).
    pub subject_prefix: String,
    /// How long a delivered message may stay unacknowledged before it is redelivered
    /// (default 30 s).
    pub ack_wait: Duration,
    /// Deliveries after which a message is dead-lettered (default 10).
    pub max_deliver: u32,
    /// The window in which the server drops a republished `Nats-Msg-Id` (default 2 min).
    pub duplicate_window: Duration,
    /// How long an unconsumed message is kept (default 7 days).
    pub max_age: Duration,
    /// Stream replicas (default 1; 3 on a cluster).
    pub replicas: usize,
    /// How long to keep trying to reach the server at start-up (default 10 s).
    pub connect_timeout: Duration,
}

impl Default for NatsOptions {
    fn default() -> Self {
        Self {
            stream: "SAGA".to_owned(),
            subject_prefix: "saga".to_owned(),
            ack_wait: Duration::from_secs(30),
            max_deliver: 10,
            duplicate_window: Duration::from_secs(120),
            max_age: Duration::from_secs(7 * 24 * 3600),
            replicas: 1,
            connect_timeout: Duration::from_secs(10),
        }
    }
}

/// A message that cannot be delivered, and why.
struct Rejected {
    message: Box<jetstream::Message>,
    reason: String,
}

impl Rejected {
    fn new(message: jetstream::Message, reason: String) -> Self {
        Self {
            message: Box::new(message),
            reason,
        }
    }
}

/// saga-core's transport port over NATS JetStream.
#[derive(Debug)]
pub struct NatsTransport {
    client: async_nats::Client,
    jetstream: jetstream::Context,
    options: NatsOptions,
    consumers: tokio::sync::Mutex<HashMap<String, PullConsumer>>,
    in_flight: Mutex<HashMap<u64, jetstream::Message>>,
    next_receipt: AtomicU64,
}

fn unavailable(err: impl std::fmt::Display) -> TransportError {
    TransportError::Unavailable(err.to_string())
}

/// How long any single exchange with the server may take. While NATS is away, requests can
/// otherwise wait for an answer that never comes (a pull request sent into a dead
/// connection); a deadline turns that into an error the caller backs off from.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs `exchange`, failing with [`TransportError::Unavailable`] after `limit`.
async fn within<T, E: std::fmt::Display>(
    what: &str,
    limit: Duration,
    exchange: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, TransportError> {
    match tokio::time::timeout(limit, exchange).await {
        Ok(result) => result.map_err(|err| unavailable(format!("{what}: {err}"))),
        Err(_) => Err(unavailable(format!(
            "{what}: no answer from NATS within {} ms",
            limit.as_millis()
        ))),
    }
}

/// A durable consumer name for a channel (NATS names allow no `.`, `*`, `>` or spaces).
fn consumer_name(channel: &str) -> String {
    channel
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

impl NatsTransport {
    /// Connects to `url` (retrying until `options.connect_timeout`) and creates the streams.
    pub async fn connect(url: &str, options: NatsOptions) -> Result<Self, TransportError> {
        let deadline = tokio::time::Instant::now() + options.connect_timeout;
        let mut delay = Duration::from_millis(100);
        let client = loop {
            let attempt = async_nats::ConnectOptions::new()
                .connection_timeout(Duration::from_secs(2))
                .event_callback(|event| async move {
                    match event {
                        async_nats::Event::Connected => tracing::info!("NATS connected"),
                        async_nats::Event::Closed => tracing::info!("NATS connection closed"),
                        async_nats::Event::Disconnected => {
                            tracing::warn!("NATS disconnected; reconnecting with backoff");
                        }
                        other => tracing::warn!(event = %other, "NATS event"),
                    }
                })
                .connect(url)
                .await;
            match attempt {
                Ok(client) => break client,
                Err(err) if tokio::time::Instant::now() < deadline => {
                    tracing::warn!(url, error = %err, retry_in = ?delay, "NATS unreachable; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
                Err(err) => {
                    return Err(TransportError::Unavailable(format!(
                        "cannot reach NATS at {url}: {err}"
                    )));
                }
            }
        };
        let jetstream = jetstream::new(client.clone());
        let transport = Self {
            client,
            jetstream,
            options,
            consumers: tokio::sync::Mutex::new(HashMap::new()),
            in_flight: Mutex::new(HashMap::new()),
            next_receipt: AtomicU64::new(1),
        };
        transport.create_streams().await?;
        Ok(transport)
    }

    async fn create_streams(&self) -> Result<(), TransportError> {
        let o = &self.options;
        self.jetstream
            .get_or_create_stream(stream::Config {
                name: o.stream.clone(),
                subjects: vec![format!("{}.>", o.subject_prefix)],
                retention: RetentionPolicy::WorkQueue,
                storage: StorageType::File,
                duplicate_window: o.duplicate_window,
                max_age: o.max_age,
                num_replicas: o.replicas,
                ..Default::default()
            })
            .await
            .map_err(|e| unavailable(format!("cannot create stream {}: {e}", o.stream)))?;
        self.jetstream
            .get_or_create_stream(stream::Config {
                name: format!("{}_DEAD", o.stream),
                subjects: vec![format!("{}_dead.>", o.subject_prefix)],
                retention: RetentionPolicy::Limits,
                storage: StorageType::File,
                max_age: o.max_age,
                num_replicas: o.replicas,
                ..Default::default()
            })
            .await
            .map_err(|e| unavailable(format!("cannot create the dead-letter stream: {e}")))?;
        Ok(())
    }

    /// The NATS client.
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// Deletes both streams (for tests and tear-down).
    pub async fn delete_streams(&self) -> Result<(), TransportError> {
        for name in [
            self.options.stream.clone(),
            format!("{}_DEAD", self.options.stream),
        ] {
            self.jetstream
                .delete_stream(&name)
                .await
                .map_err(unavailable)?;
        }
        Ok(())
    }

    fn subject(&self, channel: &str) -> String {
        format!("{}.{channel}", self.options.subject_prefix)
    }

    async fn consumer(&self, channel: &str) -> Result<PullConsumer, TransportError> {
        let mut consumers = self.consumers.lock().await;
        if let Some(consumer) = consumers.get(channel) {
            return Ok(consumer.clone());
        }
        let name = consumer_name(channel);
        let stream = within(
            "looking up the stream",
            EXCHANGE_TIMEOUT,
            self.jetstream.get_stream(&self.options.stream),
        )
        .await?;
        let creating = stream.get_or_create_consumer(
            &name,
            pull::Config {
                durable_name: Some(name.clone()),
                filter_subject: self.subject(channel),
                ack_policy: AckPolicy::Explicit,
                ack_wait: self.options.ack_wait,
                // Redelivery continues past our limit, so we see the message and
                // dead-letter it ourselves.
                max_deliver: -1,
                ..Default::default()
            },
        );
        let consumer = within("creating a consumer", EXCHANGE_TIMEOUT, creating).await?;
        consumers.insert(channel.to_owned(), consumer.clone());
        Ok(consumer)
    }

    /// Turns a JetStream message into a delivery, or says why it cannot be one.
    fn delivery(&self, channel: &str, message: jetstream::Message) -> Result<Delivery, Rejected> {
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

    fn lock_in_flight(&self) -> std::sync::MutexGuard<'_, HashMap<u64, jetstream::Message>> {
        self.in_flight
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Moves a message to the dead-letter stream with `reason`, then acknowledges it.
    async fn dead_letter(
        &self,
        channel: &str,
        message: jetstream::Message,
        reason: String,
    ) -> Result<(), TransportError> {
        tracing::warn!(channel, %reason, "NATS message dead-lettered");
        let mut headers = message.headers.clone().unwrap_or_default();
        headers.insert(DEAD_LETTER_REASON, reason.as_str());
        let subject = format!("{}_dead.{channel}", self.options.subject_prefix);
        let publish = PublishMessage::build()
            .payload(message.payload.clone())
            .headers(headers);
        let sending = self.jetstream.send_publish(subject, publish);
        let ack = within("publishing a dead letter", EXCHANGE_TIMEOUT, sending).await?;
        within("storing a dead letter", EXCHANGE_TIMEOUT, ack.into_future()).await?;
        within(
            "acknowledging a dead letter",
            EXCHANGE_TIMEOUT,
            message.ack(),
        )
        .await
    }

    async fn collect(
        &self,
        channel: &str,
        messages: Vec<jetstream::Message>,
        into: &mut Vec<Delivery>,
    ) -> Result<(), TransportError> {
        for message in messages {
            match self.delivery(channel, message) {
                Ok(delivery) => into.push(delivery),
                Err(rejected) => {
                    self.dead_letter(channel, *rejected.message, rejected.reason)
                        .await?;
                }
            }
        }
        Ok(())
    }

    async fn pull(
        consumer: &PullConsumer,
        max: usize,
        wait: Option<Duration>,
    ) -> Result<Vec<jetstream::Message>, TransportError> {
        let limit = wait.unwrap_or_default() + EXCHANGE_TIMEOUT;
        let exchange = async {
            let mut batch = match wait {
                Some(wait) => {
                    consumer
                        .batch()
                        .max_messages(max)
                        .expires(wait)
                        .messages()
                        .await
                }
                None => consumer.fetch().max_messages(max).messages().await,
            }
            .map_err(|e| e.to_string())?;
            let mut messages = Vec::new();
            while let Some(message) = batch.next().await {
                messages.push(message.map_err(|e| e.to_string())?);
            }
            Ok::<_, String>(messages)
        };
        within("pulling messages", limit, exchange).await
    }

    fn take(&self, delivery: &Delivery) -> Option<jetstream::Message> {
        self.lock_in_flight().remove(&delivery.receipt)
    }
}

#[async_trait]
impl Transport for NatsTransport {
    async fn publish(&self, messages: &[Message]) -> Result<(), TransportError> {
        let mut acks = Vec::with_capacity(messages.len());
        for message in messages {
            let mut headers = HeaderMap::new();
            headers.insert(NATS_MSG_ID, message.id.to_string().as_str());
            for (name, value) in message.headers.iter() {
                headers.insert(name, value);
            }
            let publish = PublishMessage::build()
                .payload(Bytes::from(message.payload.clone()))
                .headers(headers);
            let sending = self
                .jetstream
                .send_publish(self.subject(&message.destination), publish);
            let ack = tokio::time::timeout(EXCHANGE_TIMEOUT, sending)
                .await
                .map_err(|_| {
                    unavailable(format!("publishing {}: no answer from NATS", message.id))
                })?
                .map_err(|err| match err.kind() {
                    PublishErrorKind::MaxPayloadExceeded => TransportError::TooLarge {
                        id: message.id,
                        size: message.payload.len(),
                        limit: self.client.server_info().max_payload,
                    },
                    _ => unavailable(format!("publishing {}: {err}", message.id)),
                })?;
            acks.push(ack);
        }
        for ack in acks {
            within(
                "waiting for a publish ack",
                EXCHANGE_TIMEOUT,
                ack.into_future(),
            )
            .await?;
        }
        Ok(())
    }

    async fn receive(
        &self,
        channel: &str,
        _group: &str,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Delivery>, TransportError> {
        let consumer = self.consumer(channel).await?;
        let mut deliveries = Vec::new();
        let available = Self::pull(&consumer, max, None).await?;
        self.collect(channel, available, &mut deliveries).await?;
        if deliveries.is_empty() && wait >= Duration::from_millis(10) {
            // Wait for the first message, then take what else is there.
            let first = Self::pull(&consumer, 1, Some(wait)).await?;
            self.collect(channel, first, &mut deliveries).await?;
            if !deliveries.is_empty() && max > 1 {
                let more = Self::pull(&consumer, max - 1, None).await?;
                self.collect(channel, more, &mut deliveries).await?;
            }
        }
        Ok(deliveries)
    }

    async fn ack(
        &self,
        _channel: &str,
        _group: &str,
        delivery: &Delivery,
    ) -> Result<(), TransportError> {
        match self.take(delivery) {
            Some(message) => within("acknowledging", EXCHANGE_TIMEOUT, message.ack()).await,
            None => Ok(()),
        }
    }

    async fn release(
        &self,
        _channel: &str,
        _group: &str,
        delivery: &Delivery,
        delay: Duration,
    ) -> Result<(), TransportError> {
        match self.take(delivery) {
            Some(message) => {
                let nak = message.ack_with(AckKind::Nak(Some(delay)));
                within("giving a message back", EXCHANGE_TIMEOUT, nak).await
            }
            None => Ok(()),
        }
    }
}
