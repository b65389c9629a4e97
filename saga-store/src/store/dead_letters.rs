//! Dead letters as an operator sees them: list them, put one back on its channel, or discard
//! it with a reason.
//!
//! A replayed message goes back out through this store (its outbox, or straight into the
//! queue when messages are handled in place) under a **new** message id, with the original's
//! id in the `saga-replay-of` header: its consumer recorded the original as received when it
//! set it aside, so the old id would be turned away as a duplicate. Replaying or discarding
//! resolves the dead letter in the same transaction, so a dead letter is replayed at most
//! once.

use saga_core::message::headers;
use saga_core::ports::{DeadLetter, StoreError};
use saga_core::{Message, MessageId, Timestamp};

use crate::db::backend::Tx;
use crate::db::group::{Finish, WriteKind};
use crate::error::store_error;
use crate::sql::dead_letters::{Resolution, Resolve, StoredDeadLetter};
use crate::sql::{self, to_i64};
use crate::store::SqlSagaStore;

/// Why a dead letter could not be replayed or discarded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeadLetterError {
    /// No dead letter with this id.
    #[error("no dead letter {0}")]
    NotFound(i64),
    /// It was replayed or discarded already.
    #[error("dead letter {id} was {what} already")]
    Resolved {
        /// The dead letter.
        id: i64,
        /// `replayed` or `discarded`.
        what: &'static str,
    },
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl SqlSagaStore {
    /// Dead letters with an id above `after`, oldest first, at most `limit`; only those
    /// nobody has acted on when `unresolved_only`.
    pub async fn stored_dead_letters(
        &self,
        after: i64,
        limit: usize,
        unresolved_only: bool,
    ) -> Result<Vec<StoredDeadLetter>, StoreError> {
        let mut conn = self.database().acquire().await.map_err(store_error)?;
        sql::dead_letters::list(conn.conn(), after, limit, unresolved_only).await
    }

    /// One dead letter.
    pub async fn stored_dead_letter(
        &self,
        id: i64,
    ) -> Result<Option<StoredDeadLetter>, StoreError> {
        let mut conn = self.database().acquire().await.map_err(store_error)?;
        sql::dead_letters::get(conn.conn(), id).await
    }

    /// Puts dead letter `id` back on its channel as a new message (see the module docs) and
    /// records that `by` did, with `reason`; returns the new message's id.
    pub async fn replay_dead_letter(
        &self,
        id: i64,
        by: &str,
        reason: &str,
    ) -> Result<MessageId, DeadLetterError> {
        let original = self.unresolved(id).await?.dead_letter.message;
        let mut replay = Message::new(
            original.destination.clone(),
            original.headers.clone(),
            original.payload.clone(),
        );
        replay
            .headers
            .insert(headers::REPLAY_OF, original.id.to_string());
        let replay_id = replay.id;
        let store = self.clone();
        let reason = reason.to_owned();
        let by = by.to_owned();
        let kind = match self.is_in_place() {
            true => WriteKind::Plain,
            false => WriteKind::Outbox,
        };
        let resolved = self
            .database()
            .write_as(kind, move |tx: &mut Tx| {
                Box::pin(async move {
                    let at = to_i64(Timestamp::now().as_millis());
                    let how = Resolve::Replayed(replay_id);
                    if !sql::dead_letters::resolve(tx.conn(), id, how, &by, &reason, at).await? {
                        return Ok(Finish::Rollback(false));
                    }
                    store.send(tx.conn(), &[&replay], at).await?;
                    Ok(Finish::Commit(true))
                })
            })
            .await?;
        if !resolved {
            return Err(DeadLetterError::Resolved {
                id,
                what: "resolved",
            });
        }
        if let Some(queue) = self.queue() {
            queue.wake_channels(std::slice::from_ref(&original.destination));
        }
        tracing::info!(dead_letter = id, message_id = %replay_id, destination = %original.destination, "dead letter replayed");
        Ok(replay_id)
    }

    /// Gives dead letter `id` up, recording that `by` did, with `reason`.
    pub async fn discard_dead_letter(
        &self,
        id: i64,
        by: &str,
        reason: &str,
    ) -> Result<(), DeadLetterError> {
        self.unresolved(id).await?;
        let reason = reason.to_owned();
        let by = by.to_owned();
        let resolved = self
            .database()
            .write(move |tx: &mut Tx| {
                Box::pin(async move {
                    let at = to_i64(Timestamp::now().as_millis());
                    let done = sql::dead_letters::resolve(
                        tx.conn(),
                        id,
                        Resolve::Discarded,
                        &by,
                        &reason,
                        at,
                    )
                    .await?;
                    Ok(match done {
                        true => Finish::Commit(true),
                        false => Finish::Rollback(false),
                    })
                })
            })
            .await?;
        if !resolved {
            return Err(DeadLetterError::Resolved {
                id,
                what: "resolved",
            });
        }
        tracing::info!(dead_letter = id, "dead letter discarded");
        Ok(())
    }

    /// Records a dead letter that was kept elsewhere (NATS's dead-letter stream) and that `by`
    /// has just replayed (as `replayed_as`) or discarded, with `reason`: this table is then
    /// the one record of what operators did with dead letters. Returns its id here.
    pub async fn record_resolved_dead_letter(
        &self,
        dead: DeadLetter,
        replayed_as: Option<MessageId>,
        by: &str,
        reason: &str,
    ) -> Result<i64, StoreError> {
        let (by, reason) = (by.to_owned(), reason.to_owned());
        self.database()
            .write(move |tx: &mut Tx| {
                Box::pin(async move {
                    let at = to_i64(Timestamp::now().as_millis());
                    let id = sql::dead_letters::insert(tx.conn(), &dead).await?;
                    let how = match replayed_as {
                        Some(message_id) => Resolve::Replayed(message_id),
                        None => Resolve::Discarded,
                    };
                    sql::dead_letters::resolve(tx.conn(), id, how, &by, &reason, at).await?;
                    Ok(Finish::Commit(id))
                })
            })
            .await
    }

    async fn unresolved(&self, id: i64) -> Result<StoredDeadLetter, DeadLetterError> {
        let letter = self
            .stored_dead_letter(id)
            .await?
            .ok_or(DeadLetterError::NotFound(id))?;
        match &letter.resolution {
            None => Ok(letter),
            Some(Resolution::Replayed { .. }) => Err(DeadLetterError::Resolved {
                id,
                what: "replayed",
            }),
            Some(_) => Err(DeadLetterError::Resolved {
                id,
                what: "discarded",
            }),
        }
    }
}
