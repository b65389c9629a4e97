//! The orchestrator's reply consumer: one load and one commit per batch (see
//! [`Orchestrator::handle_replies`](saga_core::orchestrator::Orchestrator::handle_replies)).

use std::sync::Arc;

use saga_core::Message;
use saga_core::orchestrator::OrchestratorError;
use saga_core::ports::{Delivery, StoreError, source};

use crate::consume::{Consumer, Handling, SharedOrchestrator, SharedTransport, Verdict};
use crate::options::RuntimeOptions;

/// What a reply's failure means for the consumer: the store's own classification, or for a
/// saga that kept changing under concurrent writers, another try later.
fn verdict(result: Result<saga_core::orchestrator::Handled, OrchestratorError>) -> Verdict {
    match result {
        Ok(_) => Verdict::Done,
        Err(OrchestratorError::Store(err)) => Verdict::Failed(err),
        Err(err @ OrchestratorError::Contended { .. }) => {
            Verdict::Failed(StoreError::Unavailable {
                source: source(err),
            })
        }
        Err(err) => Verdict::Failed(StoreError::rejected(err)),
    }
}

/// The orchestrator's leased reply consumer.
pub(crate) fn consumer(
    orchestrator: SharedOrchestrator,
    transport: SharedTransport,
    options: Arc<RuntimeOptions>,
) -> Consumer<impl FnMut(Vec<Delivery>) -> Handling> {
    let channel = orchestrator.reply_channel().to_owned();
    let group = format!("orchestrator:{channel}");
    Consumer::new(
        channel,
        group,
        transport,
        options,
        move |deliveries| -> Handling {
            let orchestrator = orchestrator.clone();
            Box::pin(async move {
                let messages: Vec<Message> = deliveries.iter().map(|d| d.message.clone()).collect();
                let results = orchestrator.handle_replies(&messages).await;
                deliveries
                    .into_iter()
                    .zip(results)
                    .map(|(delivery, result)| (delivery, verdict(result)))
                    .collect()
            })
        },
    )
}
