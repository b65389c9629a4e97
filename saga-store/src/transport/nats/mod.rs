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
//! Each process reads a channel through one long-lived pull subscription with idle
//! heartbeats: a message is delivered as soon as it is stored, and a subscription that stops
//! hearing from the server (the server restarted, the consumer was deleted) is dropped and
//! opened again, recreating the consumer — and the streams — when they are gone.
//!
//! A message whose envelope cannot be read, or that was delivered `max_deliver` times without
//! being acknowledged, is published to the dead-letter stream (`<prefix>_dead.<channel>`)
//! with the reason in a `saga-dead-letter-reason` header (its payload cut to fit when the
//! copy would exceed the server's limit), and acknowledged: no message blocks a channel. When
//! it is a command whose saga waits for the answer, the saga gets a failure reply first. A
//! message the server would refuse (over its size limit, or addressed to a name that is not a
//! channel) is refused before publishing ([`Transport::check`]); the relay sets it aside.
//!
//! The client reconnects by itself with backoff; while NATS is down, publishing fails (the
//! relay keeps the rows in the outbox and retries), and consumers log and retry.
//!
//! Files: `envelope` (a saga message as NATS headers and back), `dead_letters` (the
//! dead-letter stream). This file, at about 700 lines, keeps the connection, the streams, the
//! per-channel subscriptions and the `Transport` operations together: every operation works
//! on the same subscription and in-flight state, and splitting them would only spread that
//! state across files.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, PullConsumer, pull};
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream::{self, RetentionPolicy, StorageType};
use async_nats::jetstream::{self, AckKind};
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::{FutureExt as _, StreamExt, TryStreamExt as _};
use saga_core::ports::{ChannelBacklog, Delivery, Transport, TransportError, check_destination};
use saga_core::{Message, Timestamp};

use crate::secrets::redact_url;

mod dead_letters;
mod envelope;
mod security;

pub use dead_letters::NatsDeadLetter;
use envelope::{nats_headers, wire_size};
pub use security::{NatsAuth, NatsTls};

/// The header carrying a dead letter's reason.
pub const DEAD_LETTER_REASON: &str = "saga-dead-letter-reason";
/// On a dead letter whose payload was cut to fit the server's limit: the original size.
pub const DEAD_LETTER_TRUNCATED: &str = "saga-dead-letter-truncated";
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
    /// The credentials to present (default: only what the URL carries).
    pub auth: NatsAuth,
    /// TLS beyond what the URL asks for: a CA, a client certificate (default: none).
    pub tls: NatsTls,
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
            auth: NatsAuth::default(),
            tls: NatsTls::default(),
        }
    }
}

/// saga-core's transport port over NATS JetStream.
pub struct NatsTransport {
    client: async_nats::Client,
    jetstream: jetstream::Context,
    options: NatsOptions,
    /// Each channel's pull subscription, opened on first receive.
    subscriptions: tokio::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<pull::Stream>>>>,
    in_flight: Mutex<HashMap<u64, jetstream::Message>>,
    next_receipt: AtomicU64,
}

impl std::fmt::Debug for NatsTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsTransport")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// How often the server tells an idle subscription it is still there; two missed in a row
/// and the subscription is opened again.
const IDLE_HEARTBEAT: Duration = Duration::from_secs(2);
/// How long one pull request of a subscription stays open on the server.
const PULL_EXPIRES: Duration = Duration::from_secs(30);
/// Messages a subscription asks for at a time (and so holds, delivered but unread, at most).
const PULL_BATCH: usize = 64;

/// Something that went wrong talking to the server, as an unavailable transport.
fn unavailable(
    err: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
) -> TransportError {
    TransportError::unavailable(err)
}

/// An exchange with the server that failed, with the client's error as its source.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
struct ExchangeFailed {
    what: &'static str,
    #[source]
    source: Box<dyn std::error::Error + Send + Sync + 'static>,
}

/// An exchange with the server that got no answer in time.
#[derive(Debug, thiserror::Error)]
#[error("{what}: no answer from NATS within {millis} ms")]
struct NoAnswer {
    what: &'static str,
    millis: u128,
}

/// How long any single exchange with the server may take. While NATS is away, requests can
/// otherwise wait for an answer that never comes (a pull request sent into a dead
/// connection); a deadline turns that into an error the caller backs off from.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs `exchange`, failing with [`TransportError::Unavailable`] after `limit`.
async fn within<T, E: Into<Box<dyn std::error::Error + Send + Sync + 'static>>>(
    what: &'static str,
    limit: Duration,
    exchange: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, TransportError> {
    match tokio::time::timeout(limit, exchange).await {
        Ok(result) => result.map_err(|err| {
            unavailable(ExchangeFailed {
                what,
                source: err.into(),
            })
        }),
        Err(_) => Err(unavailable(NoAnswer {
            what,
            millis: limit.as_millis(),
        })),
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
    /// Connects to `url` (retrying until `options.connect_timeout` while the server cannot be
    /// reached) and creates the streams. Credentials the server refuses, a certificate that
    /// does not verify or a file that is not there fail at once, as
    /// [`TransportError::Misconfigured`].
    pub async fn connect(url: &str, options: NatsOptions) -> Result<Self, TransportError> {
        let shown = redact_url(url);
        let (url, auth) = security::credentials_from_url(url, &options.auth)?;
        let url = url.as_str();
        let secured = security::secured_options(&auth, &options.tls)?;
        let deadline = tokio::time::Instant::now() + options.connect_timeout;
        let mut delay = Duration::from_millis(100);
        let client = loop {
            let attempt = secured
                .clone()
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
                Err(err) if security::is_misconfiguration(&err) => {
                    return Err(TransportError::misconfigured(format!(
                        "NATS at {shown} refused the connection: {err}"
                    )));
                }
                Err(err) if tokio::time::Instant::now() < deadline => {
                    tracing::warn!(url = %shown, error = %err, retry_in = ?delay, "NATS unreachable; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
                Err(err) => {
                    return Err(TransportError::unavailable(format!(
                        "cannot reach NATS at {shown}: {err}"
                    )));
                }
            }
        };
        let jetstream = jetstream::new(client.clone());
        let transport = Self {
            client,
            jetstream,
            options,
            subscriptions: tokio::sync::Mutex::new(HashMap::new()),
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

    /// The durable consumer of `channel`, created (with the streams, if they are gone) when
    /// it does not exist.
    async fn consumer(&self, channel: &str) -> Result<PullConsumer, TransportError> {
        let name = consumer_name(channel);
        let stream = match within(
            "looking up the stream",
            EXCHANGE_TIMEOUT,
            self.jetstream.get_stream(&self.options.stream),
        )
        .await
        {
            Ok(stream) => stream,
            Err(err) => {
                tracing::warn!(stream = %self.options.stream, error = %err, "the stream is missing; creating it again");
                self.create_streams().await?;
                within(
                    "looking up the stream",
                    EXCHANGE_TIMEOUT,
                    self.jetstream.get_stream(&self.options.stream),
                )
                .await?
            }
        };
        if let Ok(Ok(consumer)) =
            tokio::time::timeout(EXCHANGE_TIMEOUT, stream.get_consumer(&name)).await
        {
            return Ok(consumer);
        }
        let creating = stream.create_consumer(pull::Config {
            durable_name: Some(name.clone()),
            filter_subject: self.subject(channel),
            ack_policy: AckPolicy::Explicit,
            ack_wait: self.options.ack_wait,
            // Redelivery continues past our limit, so we see the message and
            // dead-letter it ourselves.
            max_deliver: -1,
            ..Default::default()
        });
        let consumer = within("creating a consumer", EXCHANGE_TIMEOUT, creating).await?;
        tracing::warn!(channel, consumer = %name, "created the channel's durable consumer (it did not exist)");
        Ok(consumer)
    }

    /// The pull subscription of `channel`, opened when there is none.
    async fn subscription(
        &self,
        channel: &str,
    ) -> Result<Arc<tokio::sync::Mutex<pull::Stream>>, TransportError> {
        let mut subscriptions = self.subscriptions.lock().await;
        if let Some(subscription) = subscriptions.get(channel) {
            return Ok(subscription.clone());
        }
        let consumer = self.consumer(channel).await?;
        let opening = consumer
            .stream()
            .max_messages_per_batch(PULL_BATCH)
            .expires(PULL_EXPIRES)
            .heartbeat(IDLE_HEARTBEAT)
            .messages();
        let stream = within("subscribing", EXCHANGE_TIMEOUT, opening).await?;
        let subscription = Arc::new(tokio::sync::Mutex::new(stream));
        subscriptions.insert(channel.to_owned(), subscription.clone());
        Ok(subscription)
    }

    /// Drops `channel`'s subscription after an error, so the next receive opens it again
    /// (and recreates what is missing).
    async fn forget(&self, channel: &str, why: &str) {
        tracing::warn!(channel, %why, "NATS subscription failed; opening it again");
        self.subscriptions.lock().await.remove(channel);
    }

    fn lock_in_flight(&self) -> std::sync::MutexGuard<'_, HashMap<u64, jetstream::Message>> {
        self.in_flight
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Turns pulled messages into deliveries; each one that cannot be delivered is
    /// dead-lettered on its own — and if even that fails, given back for later — so one bad
    /// message never costs the others.
    async fn collect(&self, channel: &str, messages: Vec<jetstream::Message>) -> Vec<Delivery> {
        let mut deliveries = Vec::with_capacity(messages.len());
        for message in messages {
            match self.delivery(channel, message) {
                Ok(delivery) => deliveries.push(delivery),
                Err(rejected) => {
                    let message = *rejected.message;
                    if let Err(err) = self.dead_letter(channel, &message, &rejected.reason).await {
                        tracing::warn!(channel, error = %err, "could not dead-letter a message; it comes back later");
                        let nak = message.ack_with(AckKind::Nak(Some(Duration::from_secs(1))));
                        let _ = within("giving a message back", EXCHANGE_TIMEOUT, nak).await;
                    }
                }
            }
        }
        deliveries
    }

    /// The server's limit on a message (payload and headers), in bytes.
    fn limit(&self) -> usize {
        self.client.server_info().max_payload
    }

    /// Publishes one message and waits for the stream to store it.
    async fn publish_one(&self, message: &Message) -> Result<(), TransportError> {
        self.publish(std::slice::from_ref(message)).await
    }

    fn take(&self, delivery: &Delivery) -> Option<jetstream::Message> {
        self.lock_in_flight().remove(&delivery.receipt)
    }
}

impl NatsTransport {
    /// One pull for [`Transport::receive`]: what arrives within `wait`, poison set aside.
    async fn receive_once(
        &self,
        channel: &str,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Delivery>, TransportError> {
        let subscription = self.subscription(channel).await?;
        let mut stream = subscription.lock().await;
        let mut pulled = Vec::new();
        let first = match wait.is_zero() {
            true => stream.next().now_or_never(),
            false => tokio::time::timeout(wait, stream.next()).await.ok(),
        };
        let failure = match first {
            None => return Ok(Vec::new()),
            Some(None) => Some("the subscription ended".to_owned()),
            Some(Some(Err(err))) => Some(err.to_string()),
            Some(Some(Ok(message))) => {
                pulled.push(message);
                let mut failure = None;
                while pulled.len() < max {
                    match stream.next().now_or_never() {
                        Some(Some(Ok(message))) => pulled.push(message),
                        Some(Some(Err(err))) => {
                            failure = Some(err.to_string());
                            break;
                        }
                        Some(None) => {
                            failure = Some("the subscription ended".to_owned());
                            break;
                        }
                        None => break,
                    }
                }
                failure
            }
        };
        drop(stream);
        if let Some(why) = failure {
            self.forget(channel, &why).await;
            if pulled.is_empty() {
                return Err(unavailable(format!("receiving from {channel}: {why}")));
            }
        }
        Ok(self.collect(channel, pulled).await)
    }
}

#[async_trait]
impl Transport for NatsTransport {
    fn system(&self) -> &'static str {
        "nats"
    }

    /// The destination must be a channel name (a valid sequence of subject tokens) and the
    /// message, headers included, within the server's `max_payload`.
    fn check(&self, message: &Message) -> Result<(), TransportError> {
        check_destination(message)?;
        let size = wire_size(&nats_headers(message), message.payload.len())
            + self.subject(&message.destination).len();
        let limit = self.limit();
        if size > limit {
            return Err(TransportError::TooLarge {
                id: message.id,
                size,
                limit,
            });
        }
        Ok(())
    }

    fn max_message_bytes(&self) -> Option<usize> {
        Some(self.limit())
    }

    fn lease(&self) -> Option<Duration> {
        Some(self.options.ack_wait)
    }

    /// Connected to the server now (the client reconnects by itself after an outage).
    async fn ready(&self) -> Result<(), TransportError> {
        match self.client.connection_state() {
            async_nats::connection::State::Connected => Ok(()),
            state => Err(unavailable(format!("the NATS connection is {state}"))),
        }
    }

    async fn publish(&self, messages: &[Message]) -> Result<(), TransportError> {
        for message in messages {
            self.check(message)?;
        }
        let mut acks = Vec::with_capacity(messages.len());
        for message in messages {
            let publish = PublishMessage::build()
                .payload(Bytes::from(message.payload.clone()))
                .headers(nats_headers(message));
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
                        limit: self.limit(),
                    },
                    _ => unavailable(format!("publishing {}: {err}", message.id)),
                })?;
            acks.push(ack);
        }
        for ack in acks {
            let stored = tokio::time::timeout(EXCHANGE_TIMEOUT, ack.into_future()).await;
            match stored {
                Ok(Ok(_)) => {}
                Ok(Err(err)) if err.kind() == PublishErrorKind::StreamNotFound => {
                    tracing::warn!(stream = %self.options.stream, "no stream takes the messages; creating the streams again");
                    self.create_streams().await?;
                    return Err(unavailable("the stream was missing; it was created again"));
                }
                Ok(Err(err)) => {
                    return Err(unavailable(format!("waiting for a publish ack: {err}")));
                }
                Err(_) => {
                    return Err(unavailable(format!(
                        "waiting for a publish ack: no answer from NATS within {} ms",
                        EXCHANGE_TIMEOUT.as_millis()
                    )));
                }
            }
        }
        Ok(())
    }

    /// Waits up to `wait` for the first message on the channel's subscription, then takes
    /// what else has arrived, up to `max`.
    async fn receive(
        &self,
        channel: &str,
        _group: &str,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Delivery>, TransportError> {
        // Poison messages are set aside by `collect`: a batch of only those waits on for the
        // rest of `wait` rather than returning nothing early.
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let deliveries = self.receive_once(channel, max, left).await?;
            if !deliveries.is_empty() || left.is_zero() {
                return Ok(deliveries);
            }
        }
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

    /// Closes the channel's subscription, giving back (`nak`) what it had prefetched: they go
    /// to another instance now rather than after `ack_wait`. The next receive opens it again.
    async fn pause(&self, channel: &str, _group: &str) {
        let Some(subscription) = self.subscriptions.lock().await.remove(channel) else {
            return;
        };
        let mut stream = subscription.lock().await;
        let mut given_back = 0;
        while let Some(Some(Ok(message))) = stream.next().now_or_never() {
            let nak = message.ack_with(AckKind::Nak(None));
            if within("giving a message back", EXCHANGE_TIMEOUT, nak)
                .await
                .is_ok()
            {
                given_back += 1;
            }
        }
        tracing::debug!(channel, given_back, "subscription paused");
    }

    /// A work-in-progress ack per delivery: the server starts its `ack_wait` again (the
    /// consumer's `ack_wait`, whatever `by` asks).
    async fn extend(
        &self,
        _channel: &str,
        _group: &str,
        deliveries: &[Delivery],
        _by: Duration,
    ) -> Result<(), TransportError> {
        let messages: Vec<jetstream::Message> = {
            let in_flight = self.lock_in_flight();
            deliveries
                .iter()
                .filter_map(|d| in_flight.get(&d.receipt).cloned())
                .collect()
        };
        for message in messages {
            within(
                "extending a delivery",
                EXCHANGE_TIMEOUT,
                message.ack_with(AckKind::Progress),
            )
            .await?;
        }
        Ok(())
    }

    /// Subjects that hold messages but have no consumer, whose first message is older than
    /// `older_than`.
    async fn unconsumed(
        &self,
        older_than: Duration,
    ) -> Result<Vec<ChannelBacklog>, TransportError> {
        let stream = within(
            "looking up the stream",
            EXCHANGE_TIMEOUT,
            self.jetstream.get_stream(&self.options.stream),
        )
        .await?;
        let listing = stream
            .consumers()
            .map_ok(|info| info.config.filter_subject)
            .try_collect::<Vec<_>>();
        let consumed: Vec<String> = within("listing consumers", EXCHANGE_TIMEOUT, listing).await?;
        let filter = format!("{}.>", self.options.subject_prefix);
        let counting = async {
            let info = stream
                .info_with_subjects(&filter)
                .await
                .map_err(|e| e.to_string())?;
            info.try_collect::<Vec<(String, usize)>>()
                .await
                .map_err(|e| e.to_string())
        };
        let subjects = within("listing subjects", EXCHANGE_TIMEOUT, counting).await?;
        let cutoff = Timestamp::now()
            .as_millis()
            .saturating_sub(u64::try_from(older_than.as_millis()).unwrap_or(u64::MAX));
        let prefix = format!("{}.", self.options.subject_prefix);
        let mut backlogs = Vec::new();
        for (subject, count) in subjects {
            if count == 0 || consumed.contains(&subject) {
                continue;
            }
            let first = within(
                "reading a subject's first message",
                EXCHANGE_TIMEOUT,
                stream.get_first_raw_message_by_subject(&subject, 1),
            )
            .await?;
            let at = u64::try_from(first.time.unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
            if at < cutoff {
                backlogs.push(ChannelBacklog {
                    channel: subject.strip_prefix(&prefix).unwrap_or(&subject).to_owned(),
                    messages: count as u64,
                    oldest: Some(Timestamp(at)),
                });
            }
        }
        Ok(backlogs)
    }

    async fn dead_letter(
        &self,
        channel: &str,
        _group: &str,
        delivery: &Delivery,
        reason: &str,
    ) -> Result<(), TransportError> {
        let Some(message) = self.take(delivery) else {
            return Err(TransportError::failed(format!(
                "message {} is not in hand",
                delivery.message.id
            )));
        };
        match NatsTransport::dead_letter(self, channel, &message, reason).await {
            Ok(()) => Ok(()),
            Err(err) => {
                self.lock_in_flight().insert(delivery.receipt, message);
                Err(err)
            }
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
