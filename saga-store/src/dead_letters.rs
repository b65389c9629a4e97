//! Dead letters as an operator sees them: list them, put one back on its channel, or discard
//! it with a reason.
//!
//! A replayed message goes back through the database's outbox (or straight into its queue
//! when messages are handled in place) under a **new** message id, with the original's id in
//! the `saga-replay-of` header: its consumer recorded the original as received when it set it
//! aside, so the old id would be turned away as a duplicate. Replaying or discarding resolves
//! the dead letter in the same transaction, so a dead letter is replayed at most once.

use saga_core::message::headers;
use saga_core::ports::{DeadLetter, StoreError};
use saga_core::{Message, MessageId, Timestamp};
use sqlx::{Row, query};

use crate::bulk;
use crate::codec::{self, to_i64, to_u64};
use crate::error::{corrupt, store_error};
use crate::group::Finish;
use crate::store::SqlSagaStore;

/// A dead letter as stored, with its id and what became of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredDeadLetter {
    /// Its id in `saga_dead_letters`.
    pub id: i64,
    /// The message, who set it aside, why and when.
    pub dead_letter: DeadLetter,
    /// `None` while nobody has acted on it.
    pub resolution: Option<Resolution>,
}

/// What an operator did with a dead letter.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Resolution {
    /// Put back on its channel as a new message.
    Replayed {
        /// When.
        at: Timestamp,
        /// The id of the message that carries it now.
        message_id: MessageId,
        /// Why, as the operator said.
        reason: String,
    },
    /// Given up on.
    Discarded {
        /// When.
        at: Timestamp,
        /// Why, as the operator said.
        reason: String,
    },
}

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

const COLUMNS: &str = "id, consumer, message_id, destination, headers, payload, reason, at, \
     resolved_at, resolution, resolution_reason, replay_message_id";

fn stored(row: &sqlx::any::AnyRow) -> Result<StoredDeadLetter, StoreError> {
    let get_i64 = |column: &str| -> Result<Option<i64>, StoreError> {
        row.try_get(column).map_err(|e| corrupt(column, e))
    };
    let get_text = |column: &str| -> Result<Option<String>, StoreError> {
        row.try_get(column).map_err(|e| corrupt(column, e))
    };
    let at = get_i64("resolved_at")?.map(|ms| Timestamp(to_u64(ms)));
    let reason = get_text("resolution_reason")?.unwrap_or_default();
    let resolution = match (at, get_text("resolution")?.as_deref()) {
        (Some(at), Some("replayed")) => Some(Resolution::Replayed {
            at,
            message_id: get_text("replay_message_id")?
                .unwrap_or_default()
                .parse()
                .map_err(|e| corrupt("replay_message_id", e))?,
            reason,
        }),
        (Some(at), _) => Some(Resolution::Discarded { at, reason }),
        (None, _) => None,
    };
    Ok(StoredDeadLetter {
        id: get_i64("id")?.unwrap_or_default(),
        dead_letter: codec::dead_letter(row)?,
        resolution,
    })
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
        let unresolved = match unresolved_only {
            true => " AND resolved_at IS NULL",
            false => "",
        };
        let sql = sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM saga_dead_letters WHERE id > $1{unresolved} ORDER BY id LIMIT $2"
        ));
        let rows = query(sql)
            .bind(after)
            .bind(to_i64(limit as u64))
            .fetch_all(self.database().pool())
            .await
            .map_err(store_error)?;
        rows.iter().map(stored).collect()
    }

    /// One dead letter.
    pub async fn stored_dead_letter(
        &self,
        id: i64,
    ) -> Result<Option<StoredDeadLetter>, StoreError> {
        let sql = sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM saga_dead_letters WHERE id = $1"
        ));
        let row = query(sql)
            .bind(id)
            .fetch_optional(self.database().pool())
            .await
            .map_err(store_error)?;
        row.as_ref().map(stored).transpose()
    }

    /// Puts dead letter `id` back on its channel as a new message (see the module docs) and
    /// records that, with `reason`; returns the new message's id.
    pub async fn replay_dead_letter(
        &self,
        id: i64,
        reason: &str,
    ) -> Result<MessageId, DeadLetterError> {
        let letter = self.unresolved(id).await?;
        let original = letter.dead_letter.message;
        let mut replay = Message::new(
            original.destination.clone(),
            original.headers.clone(),
            original.payload.clone(),
        );
        replay
            .headers
            .insert(headers::REPLAY_OF, original.id.to_string());
        let replay_id = replay.id;
        let in_place = self.database().queue_in_place();
        let reason = reason.to_owned();
        self.resolve(id, move |tx, at| {
            Box::pin(async move {
                bulk::insert_outbox(tx, &[&replay], at, in_place).await?;
                Ok(("replayed", Some(replay_id.to_string()), reason))
            })
        })
        .await?;
        if in_place {
            self.database()
                .wakeups()
                .wake(&crate::database::Topic::Queue(original.destination.clone()));
        } else {
            self.database().wake_relay();
        }
        tracing::info!(dead_letter = id, message_id = %replay_id, destination = %original.destination, "dead letter replayed");
        Ok(replay_id)
    }

    /// Gives dead letter `id` up, recording `reason`.
    pub async fn discard_dead_letter(&self, id: i64, reason: &str) -> Result<(), DeadLetterError> {
        self.unresolved(id).await?;
        let reason = reason.to_owned();
        self.resolve(id, move |_, _| {
            Box::pin(async move { Ok(("discarded", None, reason)) })
        })
        .await?;
        tracing::info!(dead_letter = id, "dead letter discarded");
        Ok(())
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

    /// Marks dead letter `id` resolved — only if nobody did so in between — together with
    /// what `act` writes; `act` returns the resolution, the replay's message id and the reason.
    async fn resolve<F>(&self, id: i64, act: F) -> Result<(), DeadLetterError>
    where
        F: for<'c> FnOnce(
                &'c mut crate::Tx,
                i64,
            ) -> futures_util::future::BoxFuture<
                'c,
                Result<(&'static str, Option<String>, String), StoreError>,
            > + Send
            + 'static,
    {
        let at = to_i64(Timestamp::now().as_millis());
        let resolved = self
            .database()
            .write(move |tx| {
                Box::pin(async move {
                    let (resolution, replay_id, reason) = act(tx, at).await?;
                    let updated = query(
                        "UPDATE saga_dead_letters SET resolved_at = $1, resolution = $2, \
                         resolution_reason = $3, replay_message_id = $4 \
                         WHERE id = $5 AND resolved_at IS NULL",
                    )
                    .bind(at)
                    .bind(resolution)
                    .bind(reason)
                    .bind(replay_id)
                    .bind(id)
                    .execute(&mut **tx)
                    .await
                    .map_err(store_error)?;
                    Ok(match updated.rows_affected() {
                        1 => Finish::Commit(true),
                        _ => Finish::Rollback(false),
                    })
                })
            })
            .await?;
        match resolved {
            true => Ok(()),
            false => Err(DeadLetterError::Resolved {
                id,
                what: "resolved",
            }),
        }
    }
}
