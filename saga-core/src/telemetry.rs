//! Metrics: what saga counts and times, through the `metrics` crate.
//!
//! saga only records; the application installs a recorder (FTGO: a Prometheus exporter) or
//! none, and then every call here costs next to nothing. Every metric is named `saga_…`;
//! labels are bounded — saga types, steps, channels, outcomes, databases — never ids.
//! The README's "Observability" section lists them with their labels.

use std::time::Duration;

use crate::Timestamp;

/// The metric names.
pub mod names {
    /// Counter, `saga_type`: sagas started (committed).
    pub const SAGAS_STARTED: &str = "saga_started_total";
    /// Counter, `saga_type`, `outcome` (`completed`, `compensated`, `failed`): sagas that
    /// finished, or were parked in `failed` (each time they were parked).
    pub const SAGAS_FINISHED: &str = "saga_finished_total";
    /// Histogram, `saga_type`, `outcome`: from start to finish (or to being parked).
    pub const SAGA_DURATION: &str = "saga_duration_seconds";
    /// Histogram, `saga_type`, `step`, `direction` (`forward`, `compensation`): from a step's
    /// command being produced to its reply being applied.
    pub const STEP_DURATION: &str = "saga_step_duration_seconds";
    /// Counter, `channel`, `outcome` (`ok`, `refused`, `transient`, `dead_letter`,
    /// `duplicate`, `ignored`, `error`): messages consumers handled.
    pub const MESSAGES_HANDLED: &str = "saga_messages_handled_total";
    /// Histogram, `channel`: from a message being produced to a consumer taking it — the
    /// time a command or reply waits (Temporal's schedule-to-start).
    pub const MESSAGE_WAIT: &str = "saga_message_wait_seconds";
    /// Counter, `reason` (see [`DeadLetterReason`](super::DeadLetterReason)): messages set aside as dead letters.
    pub const DEAD_LETTERS: &str = "saga_dead_letters_total";
    /// Histogram, `system`: one relay publish call (a batch) to the transport.
    pub const RELAY_PUBLISH: &str = "saga_relay_publish_seconds";
    /// Counter, `system`: messages the relay published.
    pub const RELAY_PUBLISHED: &str = "saga_relay_published_total";
    /// Histogram, `database`: units of work one group commit wrote.
    pub const GROUP_COMMIT_SIZE: &str = "saga_group_commit_batch_size";
    /// Histogram, `database`: one group commit, from its first write to its commit.
    pub const GROUP_COMMIT_LATENCY: &str = "saga_group_commit_seconds";
    /// Histogram, `database`: the `COMMIT` of one group commit alone — the durable flush.
    pub const COMMIT_LATENCY: &str = "saga_commit_seconds";
    /// Gauge, `database`, `saga_type`, `status`: saga instances stored (sampled).
    pub const INSTANCES: &str = "saga_instances";
    /// Gauge, `database`: outbox rows not yet published (sampled).
    pub const OUTBOX_BACKLOG: &str = "saga_outbox_backlog";
    /// Gauge, `database`: age of the oldest unpublished outbox row, 0 when none (sampled).
    pub const OUTBOX_OLDEST_AGE: &str = "saga_outbox_oldest_age_seconds";
    /// Gauge, `database`, `channel`: messages in the SQL queue table (sampled).
    pub const QUEUE_DEPTH: &str = "saga_queue_depth";
    /// Gauge, `database`: dead letters nobody has acted on (sampled).
    pub const DEAD_LETTERS_UNRESOLVED: &str = "saga_dead_letters_unresolved";
}

/// Why a message was set aside, as a bounded metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DeadLetterReason {
    /// Its headers or payload could not be read.
    Unusable,
    /// No handler for its type.
    NoHandler,
    /// The transport can never carry it (too large, a bad destination, refused).
    Undeliverable,
    /// It kept failing (a poison message).
    Poison,
    /// Applying it failed for good (the engine or an operator request refused it).
    Rejected,
}

impl DeadLetterReason {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unusable => "unusable",
            Self::NoHandler => "no_handler",
            Self::Undeliverable => "undeliverable",
            Self::Poison => "poison",
            Self::Rejected => "rejected",
        }
    }
}

fn seconds_between(from: Timestamp, to: Timestamp) -> f64 {
    Duration::from_millis(to.as_millis().saturating_sub(from.as_millis())).as_secs_f64()
}

/// A saga of `saga_type` started.
pub fn saga_started(saga_type: &str) {
    metrics::counter!(names::SAGAS_STARTED, "saga_type" => saga_type.to_owned()).increment(1);
}

/// A saga of `saga_type` that started at `started` reached `outcome` (`completed`,
/// `compensated`, `failed`) at `now`.
pub fn saga_finished(
    saga_type: &str,
    outcome: &'static str,
    started: Option<Timestamp>,
    now: Timestamp,
) {
    metrics::counter!(names::SAGAS_FINISHED, "saga_type" => saga_type.to_owned(), "outcome" => outcome)
        .increment(1);
    if let Some(started) = started {
        metrics::histogram!(names::SAGA_DURATION, "saga_type" => saga_type.to_owned(), "outcome" => outcome)
            .record(seconds_between(started, now));
    }
}

/// The reply to `step`'s command (produced at `sent`) was applied at `now`.
pub fn step_replied(
    saga_type: &str,
    step: &str,
    direction: &'static str,
    sent: Timestamp,
    now: Timestamp,
) {
    metrics::histogram!(
        names::STEP_DURATION,
        "saga_type" => saga_type.to_owned(),
        "step" => step.to_owned(),
        "direction" => direction,
    )
    .record(seconds_between(sent, now));
}

/// A consumer of `channel` handled a message; `outcome` as in [`names::MESSAGES_HANDLED`].
pub fn message_handled(channel: &str, outcome: &'static str) {
    metrics::counter!(names::MESSAGES_HANDLED, "channel" => channel.to_owned(), "outcome" => outcome)
        .increment(1);
}

/// A consumer took `message` at `now`: records how long it waited since it was produced.
pub fn message_taken(message: &crate::Message, now: Timestamp) {
    if let Some(produced) = message.id.created_at() {
        message_waited(&message.destination, produced, now);
    }
}

/// A message of `channel` produced at `produced` was taken at `now`.
pub fn message_waited(channel: &str, produced: Timestamp, now: Timestamp) {
    metrics::histogram!(names::MESSAGE_WAIT, "channel" => channel.to_owned())
        .record(seconds_between(produced, now));
}

/// A message was set aside as a dead letter.
pub fn dead_lettered(reason: DeadLetterReason) {
    metrics::counter!(names::DEAD_LETTERS, "reason" => reason.as_str()).increment(1);
}

/// The relay published `count` messages to `system` in one call that took `elapsed`.
pub fn relay_published(system: &'static str, count: usize, elapsed: Duration) {
    metrics::histogram!(names::RELAY_PUBLISH, "system" => system).record(elapsed.as_secs_f64());
    metrics::counter!(names::RELAY_PUBLISHED, "system" => system).increment(count as u64);
}

/// A group commit on `database` wrote `size` units of work in `elapsed`, of which its
/// `COMMIT` took `commit`.
pub fn group_committed(database: &str, size: usize, elapsed: Duration, commit: Duration) {
    metrics::histogram!(names::GROUP_COMMIT_SIZE, "database" => database.to_owned())
        .record(size as f64);
    metrics::histogram!(names::GROUP_COMMIT_LATENCY, "database" => database.to_owned())
        .record(elapsed.as_secs_f64());
    metrics::histogram!(names::COMMIT_LATENCY, "database" => database.to_owned())
        .record(commit.as_secs_f64());
}
