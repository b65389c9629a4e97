//! Replies made by hand, for tests that drive an orchestrator without participants.

use saga_core::engine::Pending;
use saga_core::message::headers;
use saga_core::orchestrator::Orchestrator;
use saga_core::ports::SagaStore;
use saga_core::{Headers, Message, SagaId};

/// Answers saga `saga_id`'s outstanding command with a successful reply of type
/// `reply_type` (an empty payload) on the orchestrator's channel `replies`, and applies it.
pub async fn succeed<S: SagaStore + ?Sized>(
    orchestrator: &Orchestrator<S>,
    replies: &str,
    reply_type: &str,
    saga_id: SagaId,
) {
    let record = orchestrator.load(saga_id).await.expect("loads");
    let Some(Pending::Reply { request_id }) = record.state.pending else {
        panic!("saga {saga_id} waits for no reply");
    };
    let reply = Message::new(
        replies,
        Headers::new()
            .with(headers::MESSAGE_TYPE, reply_type)
            .with(headers::SAGA_ID, saga_id)
            .with(headers::REQUEST_ID, request_id)
            .with(headers::REPLY_OUTCOME, "success"),
        "null".to_owned(),
    );
    orchestrator.handle_reply(&reply).await.expect("applies");
}
