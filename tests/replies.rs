//! Replies made by hand, for tests that drive an orchestrator without participants.

use saga_core::message::headers;
use saga_core::{Headers, Message, RequestId, SagaId};

/// A successful reply of type `reply_type` (an empty payload) to request `request_id` of
/// saga `saga_id`, on channel `replies`.
pub fn success(replies: &str, reply_type: &str, saga_id: SagaId, request_id: RequestId) -> Message {
    Message::new(
        replies,
        Headers::new()
            .with(headers::MESSAGE_TYPE, reply_type)
            .with(headers::SAGA_ID, saga_id)
            .with(headers::REQUEST_ID, request_id)
            .with(headers::REPLY_OUTCOME, "success"),
        "null".to_owned(),
    )
}
