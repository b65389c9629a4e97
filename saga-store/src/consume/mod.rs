//! Consuming: the loops that take messages off a channel and handle them.
//!
//! - [`Consumer`] here: the leased consumer every channel has (one or more, as
//!   [`RuntimeOptions::channel_consumers`] says) — receive a batch, hand it to a handler,
//!   acknowledge or hold each message as its verdict says;
//! - [`commands`]: a participant's command handling (dedup, handler, reply in one
//!   transaction per batch);
//! - [`replies`]: the orchestrator's reply handling;
//! - [`timers`]: the orchestrator's timer loop and watchdog;
//! - [`in_place`]: consumers that take, handle and answer a batch in one transaction when the
//!   queue is in their own database, with the leased consumer as their fallback.

pub(crate) mod commands;
pub(crate) mod in_place;
pub(crate) mod replies;
pub(crate) mod timers;

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use saga_core::orchestrator::Orchestrator;
use saga_core::ports::{Delivery, ErrorSource, StoreError, Transport};

use crate::options::RuntimeOptions;
use crate::store::SqlSagaStore;
use crate::worker::{Backoff, Shutdown};

pub(crate) type SharedTransport = Arc<dyn Transport>;
pub(crate) type SharedOrchestrator = Arc<Orchestrator<SqlSagaStore>>;

/// Sets a delivery aside as a dead letter (its saga told); `false` — and a warning — when the
/// transport could not, and the consumer keeps it.
async fn set_aside(
    transport: &dyn Transport,
    channel: &str,
    group: &str,
    delivery: &Delivery,
    reason: &str,
) -> bool {
    match transport
        .dead_letter(channel, group, delivery, reason)
        .await
    {
        Ok(()) => {
            saga_core::telemetry::dead_lettered(saga_core::telemetry::DeadLetterReason::Poison);
            saga_core::telemetry::message_handled(channel, "dead_letter");
            true
        }
        Err(err) => {
            tracing::warn!(%channel, message_id = %delivery.message.id, error = %err, "could not set a failing message aside; keeping it");
            false
        }
    }
}

impl Verdict {
    fn reason(&self) -> String {
        match self {
            Self::Done => "handled".to_owned(),
            Self::Retry(error) => error.to_string(),
            Self::Failed(error) => error.to_string(),
        }
    }
}

/// A batch's handling in progress: each delivery with its verdict.
pub(crate) type Handling = BoxFuture<'static, Vec<(Delivery, Verdict)>>;

/// What handling one delivery came to.
pub(crate) enum Verdict {
    /// Done (or a duplicate): acknowledge it.
    Done,
    /// The handler asked for another try (a transient failure), because of this.
    Retry(ErrorSource),
    /// Handling failed: try again after backing off. A transient failure (the database is
    /// away) is tried for as long as it lasts; a permanent one is set aside after
    /// [`RuntimeOptions::permanent_failures`] tries.
    Failed(StoreError),
}

/// A delivery that failed for a transient reason, kept by its consumer to be tried again.
#[derive(Debug)]
struct Held {
    delivery: Delivery,
    /// When to try again.
    due: tokio::time::Instant,
    /// Failed tries so far.
    tries: u32,
    /// Of those, the last ones in a row that failed for a permanent reason.
    permanent: u32,
    /// When it first failed.
    since: tokio::time::Instant,
}

/// Receives batches from a channel and hands each to `handle`, acknowledging or keeping each
/// delivery as its verdict says.
///
/// A delivery that fails for a transient reason is not given back to the transport: the
/// consumer holds it, renews its lease ([`Transport::extend`]) and tries it again itself
/// after a backoff. Its delivery count — the poison budget — thus grows only when a consumer
/// took it and never answered (crashed, hung), however long the database stays away; and
/// while it holds [`RuntimeOptions::hold_limit`] messages it takes no new ones. On shutdown
/// it gives what it holds back.
pub(crate) struct Consumer<F> {
    channel: String,
    group: String,
    transport: SharedTransport,
    options: Arc<RuntimeOptions>,
    backoff: Backoff,
    handle: F,
    held: Vec<Held>,
    /// When the held deliveries' leases were last renewed.
    extended: tokio::time::Instant,
    /// It holds as many as it may, and told the transport it takes no new ones for now.
    paused: bool,
}

impl<F, Fut> Consumer<F>
where
    F: FnMut(Vec<Delivery>) -> Fut,
    Fut: std::future::Future<Output = Vec<(Delivery, Verdict)>>,
{
    pub(crate) fn new(
        channel: String,
        group: String,
        transport: SharedTransport,
        options: Arc<RuntimeOptions>,
        handle: F,
    ) -> Self {
        Self {
            channel,
            group,
            transport,
            backoff: Backoff::new(options.max_backoff),
            options,
            handle,
            held: Vec::new(),
            extended: tokio::time::Instant::now(),
            paused: false,
        }
    }

    /// Runs until shutdown.
    pub(crate) async fn run(mut self, mut shutdown: Shutdown) {
        while !shutdown.requested() {
            let wait = self.options.poll_interval;
            if self.pass(&mut shutdown, wait).await {
                break;
            }
        }
        self.stop().await;
    }

    /// Whether it holds deliveries to try again.
    pub(crate) fn holds_any(&self) -> bool {
        !self.held.is_empty()
    }

    /// Gives every held delivery back to the transport (at shutdown).
    pub(crate) async fn stop(&mut self) {
        for held in std::mem::take(&mut self.held) {
            give_back(
                self.transport.as_ref(),
                &self.channel,
                &self.group,
                &held.delivery,
                Duration::ZERO,
            )
            .await;
        }
    }

    /// Renews the leases of the held deliveries every third of [`RuntimeOptions::hold_lease`]
    /// (or of the transport's own lease, if that is shorter).
    async fn extend_held(&mut self) {
        let lease = self
            .transport
            .lease()
            .map_or(self.options.hold_lease, |lease| {
                lease.min(self.options.hold_lease)
            });
        let every = lease / 3;
        if self.held.is_empty() || self.extended.elapsed() < every {
            return;
        }
        self.extended = tokio::time::Instant::now();
        let deliveries: Vec<Delivery> = self.held.iter().map(|h| h.delivery.clone()).collect();
        let renewed = self
            .transport
            .extend(
                &self.channel,
                &self.group,
                &deliveries,
                self.options.hold_lease,
            )
            .await;
        if let Err(err) = renewed {
            // Not fatal: a lease that runs out lets another consumer take the message, and
            // the dedup records turn the second handling away.
            tracing::warn!(channel = %self.channel, held = deliveries.len(), error = %err, "could not renew held messages' leases");
        }
    }

    /// Handles one batch — the held deliveries that are due, then new ones (waiting up to
    /// `wait` for them) while it holds fewer than its limit; `true` on shutdown.
    pub(crate) async fn pass(&mut self, shutdown: &mut Shutdown, wait: Duration) -> bool {
        self.extend_held().await;
        let now = tokio::time::Instant::now();
        let (due, later): (Vec<Held>, Vec<Held>) = std::mem::take(&mut self.held)
            .into_iter()
            .partition(|held| held.due <= now);
        self.held = later;
        let mut tries: std::collections::HashMap<u64, (u32, u32, tokio::time::Instant)> = due
            .iter()
            .map(|h| (h.delivery.receipt, (h.tries, h.permanent, h.since)))
            .collect();
        let mut deliveries: Vec<Delivery> = due.into_iter().map(|h| h.delivery).collect();
        // The due ones are still held while they are tried again.
        let holding = self.held.len() + deliveries.len();
        let room = self
            .options
            .batch_size
            .saturating_sub(deliveries.len())
            .min(self.options.hold_limit.saturating_sub(holding));
        // With held deliveries waiting, wait no longer than until the next one is due.
        let next_due = self.held.iter().map(|h| h.due).min();
        let wait = match (deliveries.is_empty(), next_due) {
            (false, _) => Duration::ZERO,
            (true, Some(due)) => wait.min(due.saturating_duration_since(now)),
            (true, None) => wait,
        };
        let (channel, group) = (&self.channel, &self.group);
        let transport = self.transport.as_ref();
        let full = holding >= self.options.hold_limit;
        if full && !self.paused {
            tracing::warn!(%channel, held = holding, "holding as many failing messages as allowed; taking no new ones until some succeed");
            transport.pause(channel, group).await;
        }
        self.paused = full;
        if room > 0 {
            match transport.receive(channel, group, room, wait).await {
                Ok(fresh) => deliveries.extend(fresh),
                Err(err) => {
                    tracing::warn!(%channel, error = %err, "cannot receive messages");
                    if deliveries.is_empty() {
                        return shutdown.pause(self.backoff.next(), None).await;
                    }
                }
            }
        } else if deliveries.is_empty() && shutdown.pause(wait, None).await {
            return true;
        }
        if deliveries.is_empty() {
            return false;
        }
        let handled = (self.handle)(deliveries).await;
        let mut done = Vec::with_capacity(handled.len());
        let mut failed_pause = None;
        let max_backoff = self.options.max_backoff;
        for (delivery, verdict) in handled {
            let (tried, permanent, since) =
                tries
                    .remove(&delivery.receipt)
                    .unwrap_or((0, 0, tokio::time::Instant::now()));
            let tried = tried + 1;
            if !matches!(verdict, Verdict::Done) && since.elapsed() >= self.options.hold_at_most {
                let reason = format!(
                    "still failing after {} s and {tried} tries: {}",
                    since.elapsed().as_secs(),
                    verdict.reason()
                );
                if set_aside(transport, channel, group, &delivery, &reason).await {
                    continue;
                }
            }
            let (delay, permanent) = match verdict {
                Verdict::Done => {
                    done.push(delivery);
                    continue;
                }
                Verdict::Retry(error) => {
                    let delay = retry_delay(tried, max_backoff);
                    tracing::info!(%channel, message_id = %delivery.message.id, %error, tries = tried, ?delay, "message will be tried again");
                    (delay, 0)
                }
                Verdict::Failed(error) if error.is_transient() => {
                    tracing::warn!(%channel, message_id = %delivery.message.id, %error, tries = tried, "message not handled; trying it again after a pause");
                    (*failed_pause.get_or_insert_with(|| self.backoff.next()), 0)
                }
                Verdict::Failed(error) => {
                    let permanent = permanent + 1;
                    if permanent >= self.options.permanent_failures {
                        let reason = format!("failed {permanent} times in a row: {error}");
                        if set_aside(transport, channel, group, &delivery, &reason).await {
                            continue;
                        }
                    }
                    tracing::warn!(%channel, message_id = %delivery.message.id, %error, tries = tried, "message failed; trying it again after a pause");
                    (retry_delay(tried, max_backoff), permanent)
                }
            };
            if self.held.is_empty() {
                self.extended = tokio::time::Instant::now();
            }
            self.held.push(Held {
                delivery,
                due: tokio::time::Instant::now() + delay,
                tries: tried,
                permanent,
                since,
            });
        }
        if !done.is_empty() {
            if failed_pause.is_none() {
                self.backoff.reset();
            }
            if let Err(err) = transport.ack_all(channel, group, &done).await {
                // Not fatal: the messages come again and their dedup records turn them away.
                tracing::warn!(%channel, count = done.len(), error = %err, "ack failed");
            }
        }
        match failed_pause {
            Some(delay) => shutdown.pause(delay, None).await,
            None => false,
        }
    }
}

/// The delay before trying a message again after its `tries`-th transient failure.
fn retry_delay(tries: u32, max: Duration) -> Duration {
    let exponent = tries.saturating_sub(1).min(16);
    (Duration::from_millis(100) * 2u32.pow(exponent)).min(max)
}

async fn give_back(
    transport: &dyn Transport,
    channel: &str,
    group: &str,
    delivery: &Delivery,
    delay: Duration,
) {
    if let Err(err) = transport.release(channel, group, delivery, delay).await {
        // Not fatal: the lease runs out and the message comes again.
        tracing::warn!(%channel, message_id = %delivery.message.id, error = %err, "release failed");
    }
}
