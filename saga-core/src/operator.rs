//! Operator requests as messages: a tool that has only the orchestrator's database (the
//! `saga` CLI, the console) puts a request in that database's outbox, addressed to the
//! orchestrator's reply channel; the relay delivers it like any reply, and the orchestrator
//! applies it in its own transaction with the same optimistic version check as every other
//! event — never a row update racing with the engine. A refusal is recorded in the saga's
//! timeline ([`HistoryEvent::OperatorRefused`]).

use serde::{Deserialize, Serialize};

use crate::engine::{HistoryEvent, OperatorRequest};
use crate::error::source;
use crate::ids::SagaId;
use crate::message::{Headers, Message, MessageError, headers};

/// The message type of an operator request.
pub const OPERATOR_REQUEST: &str = "saga.OperatorRequest";

#[derive(Serialize, Deserialize)]
struct Payload {
    saga_id: SagaId,
    #[serde(flatten)]
    request: OperatorRequest,
}

/// The message that asks the orchestrator listening on `reply_channel` to apply `request` to
/// saga `saga_id`.
pub fn operator_message(
    reply_channel: &str,
    saga_id: SagaId,
    request: &OperatorRequest,
) -> Result<Message, MessageError> {
    let payload = serde_json::to_string(&Payload {
        saga_id,
        request: request.clone(),
    })
    .map_err(|err| MessageError::Serialize {
        message_type: OPERATOR_REQUEST,
        source: source(err),
    })?;
    let headers = Headers::new()
        .with(headers::MESSAGE_TYPE, OPERATOR_REQUEST)
        .with(headers::SAGA_ID, saga_id);
    Ok(Message::new(reply_channel, headers, payload))
}

/// Whether `message` is an operator request.
pub fn is_operator_message(message: &Message) -> bool {
    message.headers.get(headers::MESSAGE_TYPE) == Some(OPERATOR_REQUEST)
}

/// Reads an operator request message.
pub fn parse_operator_message(
    message: &Message,
) -> Result<(SagaId, OperatorRequest), MessageError> {
    let payload: Payload = message.decode()?;
    Ok((payload.saga_id, payload.request))
}

/// Whether timeline entry `event` is a saga's answer to `request`: the request applied
/// ([`HistoryEvent::Operator`]) or refused ([`HistoryEvent::OperatorRefused`]).
pub fn answers(event: &HistoryEvent, request: &OperatorRequest) -> bool {
    match event {
        HistoryEvent::Operator {
            command,
            actor,
            reason,
            ..
        }
        | HistoryEvent::OperatorRefused {
            command,
            actor,
            reason,
            ..
        } => *command == request.command && *actor == request.actor && *reason == request.reason,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::OperatorCommand;

    #[test]
    fn a_request_round_trips_and_names_its_saga() {
        let saga_id = SagaId::new();
        let request = OperatorRequest::new(OperatorCommand::Cancel, "ana", "customer called");
        let message = operator_message("orders-replies", saga_id, &request).expect("encodes");
        assert!(is_operator_message(&message));
        assert_eq!(message.destination, "orders-replies");
        assert_eq!(
            message.headers.get(headers::SAGA_ID),
            Some(saga_id.to_string().as_str())
        );
        assert_eq!(
            parse_operator_message(&message).expect("decodes"),
            (saga_id, request)
        );
    }

    #[test]
    fn a_malformed_request_is_an_error_not_a_panic() {
        let mut message = operator_message(
            "r",
            SagaId::new(),
            &OperatorRequest::new(OperatorCommand::Retry, "a", "b"),
        )
        .expect("encodes");
        message.payload = r#"{"saga_id":"nope","command":"explode"}"#.to_owned();
        assert!(parse_operator_message(&message).is_err());
    }
}
