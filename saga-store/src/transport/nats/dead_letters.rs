//! The dead-letter stream (`<prefix>_dead.<channel>`): a message no consumer can use is moved
//! there with its reason, and operators list, replay or discard what it holds.

use async_nats::jetstream;
use async_nats::jetstream::message::PublishMessage;
use saga_core::message::failure_reply_for;
use saga_core::ports::TransportError;
use saga_core::{Headers, Message, MessageId};

use super::envelope::{readable, wire_size};
use super::{
    DEAD_LETTER_REASON, DEAD_LETTER_TRUNCATED, EXCHANGE_TIMEOUT, NATS_MSG_ID, NatsTransport, within,
};

impl NatsTransport {
    /// Moves a message to the dead-letter stream with `reason` — telling its saga first, when
    /// it is a command that waits for an answer — then acknowledges it.
    pub(super) async fn dead_letter(
        &self,
        channel: &str,
        message: &jetstream::Message,
        reason: &str,
    ) -> Result<(), TransportError> {
        tracing::warn!(channel, %reason, "NATS message dead-lettered");
        if let Some(command) = readable(channel, message)
            && let Some(reply) = failure_reply_for(&command, reason)
        {
            self.publish_one(&reply).await?;
        }
        let mut headers = message.headers.clone().unwrap_or_default();
        headers.insert(DEAD_LETTER_REASON, reason);
        let mut payload = message.payload.clone();
        let limit = self.limit();
        let size = wire_size(&headers, payload.len());
        if size > limit {
            // Keep what fits; the reason and the original size say what happened.
            headers.insert(DEAD_LETTER_TRUNCATED, payload.len().to_string().as_str());
            let keep = limit.saturating_sub(wire_size(&headers, 0) + 256);
            payload = payload.slice(..keep.min(payload.len()));
        }
        let subject = format!("{}_dead.{channel}", self.options.subject_prefix);
        let publish = PublishMessage::build().payload(payload).headers(headers);
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
}

/// A message in the NATS dead-letter stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NatsDeadLetter {
    /// Its sequence in the dead-letter stream: how to name it to replay or discard it.
    pub sequence: u64,
    /// The channel it was sent to.
    pub channel: String,
    /// Why it was set aside.
    pub reason: String,
    /// The message, as far as it can be read (`None`: no readable id or payload).
    pub message: Option<Message>,
}

impl NatsTransport {
    fn dead_stream_name(&self) -> String {
        format!("{}_DEAD", self.options.stream)
    }

    /// The dead letters with a sequence from `from` on, oldest first, at most `limit`.
    pub async fn dead_letters(
        &self,
        from: u64,
        limit: usize,
    ) -> Result<Vec<NatsDeadLetter>, TransportError> {
        let stream = within(
            "looking up the dead-letter stream",
            EXCHANGE_TIMEOUT,
            self.jetstream.get_stream(self.dead_stream_name()),
        )
        .await?;
        let info = within(
            "reading the stream's state",
            EXCHANGE_TIMEOUT,
            stream.get_info(),
        )
        .await?;
        let (first, last) = (
            info.state.first_sequence.max(from),
            info.state.last_sequence,
        );
        let mut letters = Vec::new();
        for sequence in first..=last {
            if letters.len() >= limit {
                break;
            }
            if let Ok(Ok(raw)) =
                tokio::time::timeout(EXCHANGE_TIMEOUT, stream.get_raw_message(sequence)).await
            {
                letters.push(self.read_dead_letter(raw));
            }
        }
        Ok(letters)
    }

    fn read_dead_letter(&self, raw: jetstream::message::StreamMessage) -> NatsDeadLetter {
        let prefix = format!("{}_dead.", self.options.subject_prefix);
        let channel = raw
            .subject
            .as_str()
            .strip_prefix(&prefix)
            .unwrap_or(raw.subject.as_str())
            .to_owned();
        let header = |name: &str| raw.headers.get(name).map(|v| v.as_str().to_owned());
        let mut headers = Headers::new();
        for (name, values) in raw.headers.iter() {
            let name: &str = name.as_ref();
            if name != NATS_MSG_ID
                && name != DEAD_LETTER_REASON
                && name != DEAD_LETTER_TRUNCATED
                && let Some(value) = values.first()
            {
                headers.insert(name, value.as_str());
            }
        }
        let id = header(NATS_MSG_ID).and_then(|id| id.parse::<MessageId>().ok());
        let payload = std::str::from_utf8(&raw.payload).ok().map(str::to_owned);
        let truncated = header(DEAD_LETTER_TRUNCATED).is_some();
        NatsDeadLetter {
            sequence: raw.sequence,
            reason: header(DEAD_LETTER_REASON).unwrap_or_default(),
            message: match (id, payload, truncated) {
                (Some(id), Some(payload), false) => Some(Message {
                    id,
                    destination: channel.clone(),
                    headers,
                    payload,
                }),
                _ => None,
            },
            channel,
        }
    }

    /// Puts dead letter `sequence` back on its channel under a new message id (the original's
    /// in `saga-replay-of`), then removes it from the dead-letter stream; returns the new id.
    /// A dead letter whose message cannot be read (or was cut to fit) cannot be replayed.
    pub async fn replay_dead_letter(&self, sequence: u64) -> Result<MessageId, TransportError> {
        let stream = within(
            "looking up the dead-letter stream",
            EXCHANGE_TIMEOUT,
            self.jetstream.get_stream(self.dead_stream_name()),
        )
        .await?;
        let raw = within(
            "reading a dead letter",
            EXCHANGE_TIMEOUT,
            stream.get_raw_message(sequence),
        )
        .await?;
        let letter = self.read_dead_letter(raw);
        let Some(original) = letter.message else {
            return Err(TransportError::failed(format!(
                "dead letter {sequence} cannot be replayed: its message is unreadable or was cut to fit"
            )));
        };
        let mut replay = Message::new(
            original.destination.clone(),
            original.headers.clone(),
            original.payload,
        );
        replay.headers.insert(
            saga_core::message::headers::REPLAY_OF,
            original.id.to_string(),
        );
        self.publish_one(&replay).await?;
        self.discard_dead_letter(sequence).await?;
        tracing::info!(dead_letter = sequence, message_id = %replay.id, channel = %original.destination, "NATS dead letter replayed");
        Ok(replay.id)
    }

    /// Removes dead letter `sequence` from the dead-letter stream.
    pub async fn discard_dead_letter(&self, sequence: u64) -> Result<(), TransportError> {
        let stream = within(
            "looking up the dead-letter stream",
            EXCHANGE_TIMEOUT,
            self.jetstream.get_stream(self.dead_stream_name()),
        )
        .await?;
        within(
            "deleting a dead letter",
            EXCHANGE_TIMEOUT,
            stream.delete_message(sequence),
        )
        .await?;
        Ok(())
    }
}
