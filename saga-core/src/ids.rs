//! Identifiers and time values used throughout the framework.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::clock::{Clock, ManualClock};
use crate::simulation::SimRng;

thread_local! {
    /// While a simulation runs on this thread: the generator and clock its ids come from.
    static SIMULATED: std::cell::RefCell<Option<(SimRng, ManualClock)>> =
        const { std::cell::RefCell::new(None) };
}

/// Makes the ids this thread generates come from `source` — a simulation's seeded generator
/// and clock — so that a seed's runs repeat exactly; `None` goes back to random ids.
pub(crate) fn simulate_ids(source: Option<(SimRng, ManualClock)>) {
    SIMULATED.with(|simulated| *simulated.borrow_mut() = source);
}

/// A fresh UUIDv7: from the clock and randomness, or from a simulation's.
fn fresh_v7() -> Uuid {
    SIMULATED.with(|simulated| match simulated.borrow_mut().as_mut() {
        Some((rng, clock)) => {
            let mut random = [0u8; 10];
            random[..8].copy_from_slice(&rng.next_u64().to_le_bytes());
            random[8..].copy_from_slice(&rng.next_u64().to_le_bytes()[..2]);
            uuid::Builder::from_unix_timestamp_millis(clock.now().as_millis(), &random).into_uuid()
        }
        None => Uuid::now_v7(),
    })
}

/// The identity of one saga instance (a UUIDv7, so ids sort by creation time).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SagaId(pub Uuid);

impl SagaId {
    /// A fresh, time-ordered saga id.
    pub fn new() -> Self {
        Self(fresh_v7())
    }

    /// When the id was made (the saga started), read from the UUIDv7; `None` for an id of
    /// another kind.
    pub fn created_at(&self) -> Option<Timestamp> {
        uuid_time(&self.0)
    }
}

/// The creation time a time-based UUID carries, to the millisecond.
fn uuid_time(uuid: &Uuid) -> Option<Timestamp> {
    let (seconds, nanos) = uuid.get_timestamp()?.to_unix();
    Some(Timestamp(seconds * 1000 + u64::from(nanos) / 1_000_000))
}

impl Default for SagaId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for SagaId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for SagaId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(Self)
    }
}

/// The identity of one message (a UUIDv7); transports and dedup tables key on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MessageId(pub Uuid);

impl MessageId {
    /// A fresh, time-ordered message id.
    pub fn new() -> Self {
        Self(fresh_v7())
    }

    /// When the id was made (the message was produced), read from the UUIDv7; `None` for an
    /// id of another kind.
    pub fn created_at(&self) -> Option<Timestamp> {
        uuid_time(&self.0)
    }
}

impl Default for MessageId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for MessageId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(Self)
    }
}

/// Correlates a command with its reply inside one saga.
///
/// Request ids are a per-saga sequence, allocated by the engine, so the engine stays a pure
/// function. A reply is accepted only when its saga id and request id match the request the
/// saga is waiting for; anything else is stale and changes nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RequestId(pub u64);

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for RequestId {
    type Err = std::num::ParseIntError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse().map(Self)
    }
}

/// A point in time: milliseconds since the Unix epoch.
///
/// The engine never reads a clock; callers pass `now` in, which keeps transitions pure and
/// lets tests control time.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Timestamp(pub u64);

impl Timestamp {
    /// The current wall-clock time.
    pub fn now() -> Self {
        let since_epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO);
        Self(u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX))
    }

    /// This time plus `duration` (saturating).
    pub fn plus(self, duration: Duration) -> Self {
        let millis = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
        Self(self.0.saturating_add(millis))
    }

    /// Milliseconds since the Unix epoch.
    pub fn as_millis(self) -> u64 {
        self.0
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}ms", self.0)
    }
}
