//! The message model: envelopes, headers, and the `Command` / `Reply` traits.
//!
//! Every message, whether a command, a reply or a notification, travels as a [`Message`]: an
//! id, a destination channel, string headers and a JSON payload kept as raw text (so a
//! malformed payload can still be stored and dead-lettered with its reason).

use std::collections::BTreeMap;
use std::fmt;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{ErrorSource, source};
use crate::ids::{MessageId, RequestId, SagaId, Timestamp};

/// Well-known header names.
pub mod headers {
    /// The stable type name of the payload (`Command::TYPE` or `Reply::TYPE`).
    pub const MESSAGE_TYPE: &str = "message-type";
    /// The saga instance a command or reply belongs to.
    pub const SAGA_ID: &str = "saga-id";
    /// The saga type (its definition name) a command or reply belongs to.
    pub const SAGA_TYPE: &str = "saga-type";
    /// The step (by name) that sent the command.
    pub const SAGA_STEP: &str = "saga-step";
    /// The request id a reply must echo.
    pub const REQUEST_ID: &str = "request-id";
    /// The channel a participant sends its reply to; absent for one-way notifications.
    pub const REPLY_TO: &str = "reply-to";
    /// `success` or `failure`, on replies.
    pub const REPLY_OUTCOME: &str = "reply-outcome";
    /// The message id of the command a reply answers.
    pub const IN_REPLY_TO: &str = "in-reply-to";
    /// W3C trace context: the producing span (see [`crate::trace`]).
    pub const TRACEPARENT: &str = "traceparent";
    /// W3C trace context: vendor-specific trace state, passed on with the `traceparent`.
    pub const TRACESTATE: &str = "tracestate";
    /// When the saga stops waiting for the reply to this command (milliseconds since the
    /// epoch). A participant that gets the command later does not run it: the saga has
    /// already timed the step out and moved on.
    pub const DEADLINE: &str = "saga-deadline";
    /// On a replayed message: the id of the dead letter's original message.
    pub const REPLAY_OF: &str = "saga-replay-of";
    /// On a failure reply the framework sends for a command that was never handled (set
    /// aside, dead-lettered): `true`. Such a reply also carries the command's
    /// [`DEADLINE`], so it fails only the send it is about (see
    /// [`IncomingReply::undelivered_before`](crate::definition::IncomingReply)).
    pub const UNDELIVERED: &str = "saga-undelivered";
}

/// The longest channel name, in bytes.
pub const MAX_CHANNEL_LEN: usize = 200;

/// The longest SQL identifier, in bytes (PostgreSQL's limit: a longer one is cut short).
pub const MAX_SQL_IDENTIFIER_LEN: usize = 63;

/// What a name is for, and so which rules [`validate_name`] checks it by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NameKind {
    /// A channel: 1 to [`MAX_CHANNEL_LEN`] bytes of ASCII letters, digits, `_` and `-`, in
    /// one or more tokens separated by single dots (`orderService.replies`). Every transport
    /// carries such a name as it is (a NATS subject token, a queue column).
    Channel,
    /// A name written into SQL as a quoted identifier (a PostgreSQL schema): 1 to
    /// [`MAX_SQL_IDENTIFIER_LEN`] bytes of ASCII letters, digits and `_`, not starting with
    /// a digit. Nothing in it can end the quotes or the statement.
    SqlIdentifier,
}

impl std::fmt::Display for NameKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Channel => "channel",
            Self::SqlIdentifier => "SQL identifier",
        })
    }
}

/// Why a name is not usable.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} name {name:?}: {reason}")]
pub struct InvalidName {
    /// What the name is for.
    pub kind: NameKind,
    /// The name as given.
    pub name: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// Checks a name that saga puts into a transport or into SQL, by the rules of its `kind`:
/// the one check every channel and schema name passes before it is used, so that no name
/// from configuration or from a message header can inject into a statement or a subject.
pub fn validate_name(kind: NameKind, name: &str) -> Result<(), InvalidName> {
    let invalid = |reason| {
        Err(InvalidName {
            kind,
            name: name.to_owned(),
            reason,
        })
    };
    let (max, too_long) = match kind {
        NameKind::Channel => (MAX_CHANNEL_LEN, "it is longer than 200 bytes"),
        NameKind::SqlIdentifier => (MAX_SQL_IDENTIFIER_LEN, "it is longer than 63 bytes"),
    };
    if name.is_empty() {
        return invalid("it is empty");
    }
    if name.len() > max {
        return invalid(too_long);
    }
    match kind {
        NameKind::Channel => {
            if !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
            {
                return invalid("use ASCII letters, digits, `_`, `-` and `.` only");
            }
            if name.split('.').any(str::is_empty) {
                return invalid("a `.` must separate two non-empty parts");
            }
        }
        NameKind::SqlIdentifier => {
            if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return invalid("use ASCII letters, digits and `_` only");
            }
            if name.starts_with(|c: char| c.is_ascii_digit()) {
                return invalid("it starts with a digit");
            }
        }
    }
    Ok(())
}

/// Checks a channel name ([`NameKind::Channel`]), so a message is never accepted under a
/// name that could not be delivered.
pub fn validate_channel(channel: &str) -> Result<(), InvalidName> {
    validate_name(NameKind::Channel, channel)
}

/// Message headers: an ordered string map.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Headers(BTreeMap<String, String>);

impl Headers {
    /// An empty header map.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets a header, replacing any earlier value.
    pub fn insert(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.0.insert(name.into(), value.into());
    }

    /// Builder form of [`Headers::insert`].
    pub fn with(mut self, name: impl Into<String>, value: impl ToString) -> Self {
        self.insert(name, value.to_string());
        self
    }

    /// The value of a header, if present.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// The value of a header, or a [`MessageError::MissingHeader`].
    pub fn require(&self, name: &'static str) -> Result<&str, MessageError> {
        self.get(name).ok_or(MessageError::MissingHeader(name))
    }

    /// Parses a required header.
    pub fn parse<T: std::str::FromStr>(&self, name: &'static str) -> Result<T, MessageError>
    where
        T::Err: std::error::Error + Send + Sync + 'static,
    {
        let raw = self.require(name)?;
        raw.parse()
            .map_err(|err: T::Err| MessageError::InvalidHeader {
                name,
                value: raw.to_owned(),
                source: source(err),
            })
    }

    /// Iterates over all headers in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

/// The envelope every message travels in.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// Unique id; consumers deduplicate on it.
    pub id: MessageId,
    /// The channel the message is sent to.
    pub destination: String,
    /// Headers: type, correlation, reply routing, tracing.
    pub headers: Headers,
    /// The JSON payload, as raw text.
    pub payload: String,
}

impl Message {
    /// A new message with a fresh id.
    pub fn new(destination: impl Into<String>, headers: Headers, payload: String) -> Self {
        Self {
            id: MessageId::new(),
            destination: destination.into(),
            headers,
            payload,
        }
    }

    /// The message type header.
    pub fn message_type(&self) -> Result<&str, MessageError> {
        self.headers.require(headers::MESSAGE_TYPE)
    }

    /// Decodes the payload as `T`.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, MessageError> {
        serde_json::from_str(&self.payload).map_err(|err| MessageError::MalformedPayload {
            message_type: self.headers.get(headers::MESSAGE_TYPE).map(str::to_owned),
            source: source(err),
        })
    }

    /// Parses the payload as untyped JSON.
    pub fn payload_json(&self) -> Result<serde_json::Value, MessageError> {
        self.decode()
    }
}

/// Why a message could not be understood. The decoder's own error is kept as the source;
/// two errors compare equal when they say the same (sources themselves do not compare).
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum MessageError {
    /// A header the message needs is absent.
    #[error("missing header `{0}`")]
    MissingHeader(&'static str),
    /// A header is present but cannot be parsed.
    #[error("invalid header `{name}` = {value:?}: {source}")]
    InvalidHeader {
        /// The header name.
        name: &'static str,
        /// The raw value.
        value: String,
        /// Why it did not parse.
        #[source]
        source: ErrorSource,
    },
    /// The payload is not valid JSON for the declared type.
    #[error("malformed payload{}: {source}", message_type.as_deref().map(|t| format!(" for `{t}`")).unwrap_or_default())]
    MalformedPayload {
        /// The declared message type, when known.
        message_type: Option<String>,
        /// The decoder's error.
        #[source]
        source: ErrorSource,
    },
    /// A payload could not be serialized.
    #[error("cannot serialize `{message_type}`: {source}")]
    Serialize {
        /// The message type.
        message_type: &'static str,
        /// The encoder's error.
        #[source]
        source: ErrorSource,
    },
    /// No handler knows this message type.
    #[error("unknown message type `{0}`")]
    UnknownType(String),
    /// A reply whose type does not answer the command it claims to answer.
    #[error(
        "unexpected reply `{reply_type}` to `{command_type}` (expected `{expected}` or `saga.CommandFailed`)"
    )]
    UnexpectedReply {
        /// The reply's type.
        reply_type: String,
        /// The command it claims to answer.
        command_type: &'static str,
        /// The command's reply type.
        expected: &'static str,
    },
    /// An incoming message over one of the [`limits`]: set aside as a dead letter, never
    /// decoded.
    #[error("{what} is {size}, over the limit of {limit}")]
    OverLimit {
        /// What is too large (`payload bytes`, `header count`, …).
        what: &'static str,
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
}

/// The most an incoming command or reply may carry. A message over any of them is set aside
/// as a dead letter with the reason before anything decodes it, so a hostile or broken
/// producer cannot make a consumer allocate without bound. (NATS's own `max_payload`, 1 MB
/// by default, and the transports' `max_message_bytes` bound what is sent.)
pub mod limits {
    /// Payload bytes.
    pub const MAX_PAYLOAD_BYTES: usize = 8 * 1024 * 1024;
    /// Headers on one message (saga's own use at most a dozen).
    pub const MAX_HEADERS: usize = 64;
    /// Bytes of one header's name.
    pub const MAX_HEADER_NAME_BYTES: usize = 128;
    /// Bytes of one header's value (W3C `tracestate` may take 512).
    pub const MAX_HEADER_VALUE_BYTES: usize = 4096;
}

impl Message {
    /// Checks the message against the incoming [`limits`].
    pub fn check_limits(&self) -> Result<(), MessageError> {
        let over = |what, size, limit| {
            if size > limit {
                Err(MessageError::OverLimit { what, size, limit })
            } else {
                Ok(())
            }
        };
        over(
            "payload bytes",
            self.payload.len(),
            limits::MAX_PAYLOAD_BYTES,
        )?;
        over("header count", self.headers.0.len(), limits::MAX_HEADERS)?;
        for (name, value) in self.headers.iter() {
            over(
                "a header name's bytes",
                name.len(),
                limits::MAX_HEADER_NAME_BYTES,
            )?;
            over(
                "a header value's bytes",
                value.len(),
                limits::MAX_HEADER_VALUE_BYTES,
            )?;
        }
        Ok(())
    }
}

/// Whether a reply reports success or failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplyOutcome {
    /// The command took effect.
    Success,
    /// The command was refused or failed; the saga reacts per the step's kind.
    Failure,
}

impl ReplyOutcome {
    /// The header value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Failure => "failure",
        }
    }
}

impl fmt::Display for ReplyOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq for MessageError {
    fn eq(&self, other: &Self) -> bool {
        std::mem::discriminant(self) == std::mem::discriminant(other)
            && self.to_string() == other.to_string()
    }
}

impl Eq for MessageError {}

/// A `saga-reply-outcome` header that is neither `success` nor `failure`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("expected `success` or `failure`, got {0:?}")]
pub struct UnknownOutcome(pub String);

impl std::str::FromStr for ReplyOutcome {
    type Err = UnknownOutcome;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "success" => Ok(Self::Success),
            "failure" => Ok(Self::Failure),
            other => Err(UnknownOutcome(other.to_owned())),
        }
    }
}

/// A command: a request a saga sends to a participant's channel.
///
/// Derive it with `#[derive(Command)]` and `#[command(channel = "...", reply = ReplyType)]`.
/// The reply type is part of the command's type, so a saga's reply handler that expects a
/// different reply is a compile error.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a command",
    label = "not a `Command`",
    note = "`invoke:`, `notify:` and `compensate:` take a function that builds a command \
            (`#[derive(Command)]`); a reply (`#[derive(Reply)]`) is what the participant answers"
)]
pub trait Command: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The stable type name carried in the `message-type` header.
    const TYPE: &'static str;
    /// The channel the participant that handles this command listens on.
    const CHANNEL: &'static str;
    /// The reply the participant answers with; [`NoReply`] for a one-way notification
    /// (`#[command(channel = "...", notification)]`).
    type Reply: Reply;
}

/// A reply to a command; its value says whether it reports success or failure.
///
/// Derive it with `#[derive(Reply)]`: a struct is a success unless marked
/// `#[reply(failure)]`; an enum marks variants `#[success]` or `#[failure]`.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a reply",
    label = "not a `Reply`",
    note = "a command's `reply = …` and an `on_reply:` handler's second argument are replies \
            (`#[derive(Reply)]`)"
)]
pub trait Reply: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The stable type name carried in the `message-type` header.
    const TYPE: &'static str;
    /// Whether this reply value reports success or failure.
    fn outcome(&self) -> ReplyOutcome;
    /// A human-readable reason, for failure replies.
    fn failure_reason(&self) -> Option<String> {
        None
    }
}

/// The generic failure reply a participant sends when its handler returns an error instead of
/// a typed reply (unknown consumer, locked record, invalid input…).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandFailed {
    /// Why the command failed.
    pub reason: String,
}

impl CommandFailed {
    /// A failure with the given reason.
    pub fn new(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
        }
    }
}

impl fmt::Display for CommandFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

impl Reply for CommandFailed {
    const TYPE: &'static str = "saga.CommandFailed";
    fn outcome(&self) -> ReplyOutcome {
        ReplyOutcome::Failure
    }
    fn failure_reason(&self) -> Option<String> {
        Some(self.reason.clone())
    }
}

/// A reply a saga waits for: every reply but [`NoReply`]. `#[derive(Reply)]` implements it;
/// a hand-written [`Reply`] needs `impl AwaitedReply for MyReply {}` too.
#[diagnostic::on_unimplemented(
    message = "this step waits for a reply to a one-way notification, which nothing sends",
    label = "a notification (its reply is `{Self}`)",
    note = "send a `#[command(…, notification)]` with `notify:`, not `invoke:` or `compensate:`"
)]
pub trait AwaitedReply: Reply {}

impl AwaitedReply for CommandFailed {}

/// The reply type of one-way notifications: no reply is ever sent for them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NoReply;

impl Reply for NoReply {
    const TYPE: &'static str = "saga.NoReply";
    fn outcome(&self) -> ReplyOutcome {
        ReplyOutcome::Success
    }
}

/// The routing facts of an incoming command: who sent it and where to answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandMeta {
    /// The command message's id.
    pub message_id: MessageId,
    /// The command type.
    pub command_type: String,
    /// The saga that sent it, if any.
    pub saga_id: Option<SagaId>,
    /// The saga type that sent it, if any.
    pub saga_type: Option<String>,
    /// The request id to echo in the reply, if a reply is expected.
    pub request_id: Option<RequestId>,
    /// Where to send the reply; `None` for one-way notifications.
    pub reply_to: Option<String>,
    /// When the saga stops waiting for the reply, if it set a deadline.
    pub deadline: Option<Timestamp>,
    /// The trace context the command came with; its reply continues that trace.
    pub trace: Option<crate::trace::TraceContext>,
}

impl CommandMeta {
    /// Reads the routing headers of a command message.
    pub fn from_message(message: &Message) -> Result<Self, MessageError> {
        message.check_limits()?;
        let h = &message.headers;
        let reply_to = h.get(headers::REPLY_TO).map(str::to_owned);
        if let Some(channel) = &reply_to {
            validate_channel(channel).map_err(|err| MessageError::InvalidHeader {
                name: headers::REPLY_TO,
                value: channel.clone(),
                source: source(err),
            })?;
        }
        let deadline = match h.get(headers::DEADLINE) {
            Some(_) => Some(Timestamp(h.parse(headers::DEADLINE)?)),
            None => None,
        };
        let request_id = match h.get(headers::REQUEST_ID) {
            Some(_) => Some(h.parse(headers::REQUEST_ID)?),
            None if reply_to.is_some() => {
                return Err(MessageError::MissingHeader(headers::REQUEST_ID));
            }
            None => None,
        };
        let saga_id = match h.get(headers::SAGA_ID) {
            Some(_) => Some(h.parse(headers::SAGA_ID)?),
            None if reply_to.is_some() => {
                return Err(MessageError::MissingHeader(headers::SAGA_ID));
            }
            None => None,
        };
        Ok(Self {
            message_id: message.id,
            command_type: message.message_type()?.to_owned(),
            saga_id,
            saga_type: h.get(headers::SAGA_TYPE).map(str::to_owned),
            request_id,
            reply_to,
            deadline,
            trace: crate::trace::TraceContext::from_headers(h),
        })
    }

    /// Whether the saga stopped waiting for this command before `now`.
    pub fn expired_at(&self, now: Timestamp) -> bool {
        self.deadline.is_some_and(|deadline| now > deadline)
    }

    /// Builds the reply envelope for this command, or `None` for a one-way notification.
    pub fn reply_message(
        &self,
        reply_type: &str,
        outcome: ReplyOutcome,
        payload: String,
    ) -> Option<Message> {
        let reply_to = self.reply_to.as_deref()?;
        let mut headers = Headers::new()
            .with(headers::MESSAGE_TYPE, reply_type)
            .with(headers::REPLY_OUTCOME, outcome)
            .with(headers::IN_REPLY_TO, self.message_id);
        if let Some(saga_id) = self.saga_id {
            headers.insert(headers::SAGA_ID, saga_id.to_string());
        }
        if let Some(saga_type) = &self.saga_type {
            headers.insert(headers::SAGA_TYPE, saga_type.clone());
        }
        if let Some(request_id) = self.request_id {
            headers.insert(headers::REQUEST_ID, request_id.to_string());
        }
        if let Some(trace) = crate::trace::outgoing(self.trace.as_ref()) {
            trace.write_to(&mut headers);
        }
        Some(Message::new(reply_to, headers, payload))
    }
}

/// The failure reply that tells a saga its command `message` will never be handled (it was
/// set aside, dead-lettered or refused), with `reason`; `None` when nobody waits for an answer:
/// a notification, a reply, or a message whose routing headers cannot be read.
pub fn failure_reply_for(message: &Message, reason: &str) -> Option<Message> {
    if message.headers.get(headers::REPLY_OUTCOME).is_some() {
        return None;
    }
    let meta = CommandMeta::from_message(message).ok()?;
    let payload = encode_payload(CommandFailed::TYPE, &CommandFailed::new(reason)).ok()?;
    let mut reply = meta.reply_message(CommandFailed::TYPE, ReplyOutcome::Failure, payload)?;
    reply.headers.insert(headers::UNDELIVERED, "true");
    if let Some(deadline) = meta.deadline {
        reply
            .headers
            .insert(headers::DEADLINE, deadline.as_millis().to_string());
    }
    Some(reply)
}

/// Serializes a payload, naming the type on failure.
pub fn encode_payload<T: Serialize>(
    message_type: &'static str,
    value: &T,
) -> Result<String, MessageError> {
    serde_json::to_string(value).map_err(|err| MessageError::Serialize {
        message_type,
        source: source(err),
    })
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    #[test]
    fn a_message_over_a_limit_is_refused_before_decoding() {
        let ok = Message::new("c", Headers::new().with("a", "b"), "{}".to_owned());
        assert!(ok.check_limits().is_ok());
        let mut many = Headers::new();
        for i in 0..=limits::MAX_HEADERS {
            many = many.with(format!("h{i}"), "v");
        }
        let cases = [
            Message::new(
                "c",
                Headers::new(),
                "x".repeat(limits::MAX_PAYLOAD_BYTES + 1),
            ),
            Message::new("c", many, String::new()),
            Message::new(
                "c",
                Headers::new().with("n".repeat(limits::MAX_HEADER_NAME_BYTES + 1), "v"),
                String::new(),
            ),
            Message::new(
                "c",
                Headers::new().with("n", "v".repeat(limits::MAX_HEADER_VALUE_BYTES + 1)),
                String::new(),
            ),
        ];
        for message in cases {
            let err = message.check_limits().expect_err("over a limit");
            assert!(matches!(err, MessageError::OverLimit { .. }), "{err}");
            // A command this large is refused before its headers are read.
            let err = CommandMeta::from_message(&message).expect_err("refused");
            assert!(matches!(err, MessageError::OverLimit { .. }), "{err}");
        }
    }

    /// What an attacker would put in a name from configuration or a header: every one is
    /// refused by both kinds' rules, and the plain names pass.
    #[test]
    fn injection_attempts_are_not_names() {
        let attempts = [
            "x\"; DROP TABLE saga_instances; --",
            "ftgo' OR '1'='1",
            "a b",
            "a\0b",
            "a\nb",
            "orders;",
            "$1",
            "a/*c*/",
            "ordérs",
            "a\u{200b}b",
            "*",
            ">",
            "",
        ];
        for attempt in attempts {
            for kind in [NameKind::Channel, NameKind::SqlIdentifier] {
                let err = validate_name(kind, attempt).expect_err(attempt);
                assert_eq!((err.kind, err.name.as_str()), (kind, attempt));
            }
        }
        for (kind, long) in [(NameKind::Channel, 201), (NameKind::SqlIdentifier, 64)] {
            assert!(validate_name(kind, &"a".repeat(long)).is_err(), "{kind}");
            assert!(validate_name(kind, &"a".repeat(long - 1)).is_ok(), "{kind}");
        }
        assert!(validate_name(NameKind::SqlIdentifier, "ftgo_order_2").is_ok());
        assert!(validate_name(NameKind::SqlIdentifier, "ftgo.order").is_err());
        assert!(validate_name(NameKind::SqlIdentifier, "9lives").is_err());
        assert!(validate_name(NameKind::Channel, "orderService.replies").is_ok());
        assert!(validate_name(NameKind::Channel, "a..b").is_err());
    }

    #[test]
    fn a_decoding_error_keeps_the_decoders_error_as_its_source() {
        let message = Message::new(
            "ledger",
            Headers::new().with(headers::MESSAGE_TYPE, "Reserve"),
            "{not json".to_owned(),
        );
        let err = message.decode::<serde_json::Value>().expect_err("not JSON");
        assert!(
            err.to_string()
                .starts_with("malformed payload for `Reserve`: "),
            "{err}"
        );
        let source = err.source().expect("a source");
        assert!(
            source.downcast_ref::<serde_json::Error>().is_some(),
            "{source:?}"
        );

        let headers = Headers::new().with(headers::REPLY_OUTCOME, "maybe");
        let err = headers
            .parse::<ReplyOutcome>(headers::REPLY_OUTCOME)
            .expect_err("unknown outcome");
        let source = err.source().expect("a source");
        assert_eq!(
            source.downcast_ref::<UnknownOutcome>(),
            Some(&UnknownOutcome("maybe".to_owned()))
        );
        assert_eq!(err.clone(), err, "errors compare by what they say");
    }
}
