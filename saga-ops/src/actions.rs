//! Operator actions: send a request to a saga's orchestrator and wait for its answer in the
//! saga's timeline; select the sagas a bulk action applies to.

use std::time::{Duration, Instant};

use saga_core::SagaId;
use saga_core::engine::{HistoryEvent, OperatorRequest, SagaStatus};
use saga_core::operator::answers;
use saga_core::ports::SagaStore;
use saga_store::{SagaFilter, SqlSagaStore, StoredSaga};

use crate::OpsError;

/// What became of an operator request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// The saga took it; its status afterwards.
    Applied(SagaStatus),
    /// The saga refused it, for this reason (recorded in its timeline).
    Refused(String),
    /// No answer within the wait: no orchestrator has taken it yet. It stays in the outbox
    /// and applies when one does.
    Pending,
}

impl std::fmt::Display for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Applied(status) => write!(f, "applied; the saga is {status}"),
            Self::Refused(why) => write!(f, "refused: {why}"),
            Self::Pending => f.write_str(
                "sent, not applied yet: no orchestrator has taken it (is the service running?); \
                 it applies when one does",
            ),
        }
    }
}

/// Sends `request` for `saga_id` and waits up to `wait` for the saga's answer.
pub async fn request(
    store: &SqlSagaStore,
    saga_id: SagaId,
    request: &OperatorRequest,
    wait: Duration,
) -> Result<Answer, OpsError> {
    // The timeline is append-only: the answer is an entry after the ones there now.
    let before = store.history(saga_id).await?.len();
    store.request_operator(saga_id, request).await?;
    let deadline = Instant::now() + wait;
    loop {
        let timeline = store.history(saga_id).await?;
        let answer = timeline
            .iter()
            .skip(before)
            .find(|entry| answers(&entry.event, request));
        match answer.map(|entry| &entry.event) {
            Some(HistoryEvent::OperatorRefused { refused, .. }) => {
                return Ok(Answer::Refused(refused.clone()));
            }
            Some(_) => {
                let status = store
                    .find_saga(saga_id)
                    .await?
                    .map(|s| s.record.state.status)
                    .ok_or_else(|| OpsError::NotFound(format!("saga {saga_id} disappeared")))?;
                return Ok(Answer::Applied(status));
            }
            None if Instant::now() >= deadline => return Ok(Answer::Pending),
            None => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Every saga `filter` selects, newest first, refusing more than `max` (a bulk action that
/// large is more likely a mistake in the filter).
pub async fn select(
    store: &SqlSagaStore,
    filter: &SagaFilter,
    max: usize,
) -> Result<Vec<StoredSaga>, OpsError> {
    let count = store.count_sagas(filter).await?;
    if count > max as u64 {
        return Err(OpsError::Usage(format!(
            "the filter selects {count} sagas, more than --max {max}; narrow it or raise --max"
        )));
    }
    Ok(store.find_sagas(filter, max, 0).await?)
}

/// Whether `filter` selects every saga (a bulk action needs some condition).
pub fn selects_everything(filter: &SagaFilter) -> bool {
    *filter == SagaFilter::default()
}
