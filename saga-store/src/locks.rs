//! The semantic-lock table: which saga holds which business resource.
//!
//! A participant that puts a record into a `*_PENDING` state can also record the lock here,
//! in the same transaction, naming the resource (e.g. `order:1001`) and the saga; other work
//! asks [`holder`] and is refused with a precise reason; the saga's confirming or compensating
//! command calls [`release`].

use saga_core::{SagaId, Timestamp};
use sqlx::AnyConnection;
use sqlx::{Row, query};

use crate::codec::{saga_id_text, to_i64};

/// Who holds a resource.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockHolder {
    /// The saga.
    pub saga_id: String,
    /// The pending state it put the resource in.
    pub state: String,
}

/// Why a lock was not taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another saga holds the resource.
    #[error("{resource} is locked in state {} by saga {}", holder.state, holder.saga_id)]
    Held {
        /// The resource.
        resource: String,
        /// Who holds it.
        holder: LockHolder,
    },
    /// The database failed.
    #[error(transparent)]
    Sql(#[from] sqlx::Error),
}

/// Takes the lock on `resource` for `saga_id` (idempotent for the same saga).
pub async fn acquire(
    conn: &mut AnyConnection,
    resource: &str,
    saga_id: SagaId,
    state: &str,
) -> Result<(), LockError> {
    let inserted = query(
        "INSERT INTO saga_locks (resource, saga_id, state, locked_at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT DO NOTHING",
    )
    .bind(resource)
    .bind(saga_id_text(saga_id))
    .bind(state)
    .bind(to_i64(Timestamp::now().as_millis()))
    .execute(&mut *conn)
    .await?;
    if inserted.rows_affected() == 1 {
        return Ok(());
    }
    match holder(conn, resource).await? {
        Some(holder) if holder.saga_id == saga_id_text(saga_id) => Ok(()),
        Some(holder) => Err(LockError::Held {
            resource: resource.to_owned(),
            holder,
        }),
        // Released in between: try once more.
        None => Box::pin(acquire(conn, resource, saga_id, state)).await,
    }
}

/// Who holds `resource`, if anyone.
pub async fn holder(
    conn: &mut AnyConnection,
    resource: &str,
) -> Result<Option<LockHolder>, sqlx::Error> {
    let row = query("SELECT saga_id, state FROM saga_locks WHERE resource = $1")
        .bind(resource)
        .fetch_optional(&mut *conn)
        .await?;
    row.map(|row| {
        Ok(LockHolder {
            saga_id: row.try_get("saga_id")?,
            state: row.try_get("state")?,
        })
    })
    .transpose()
}

/// Releases `resource` if `saga_id` holds it; returns whether it did.
pub async fn release(
    conn: &mut AnyConnection,
    resource: &str,
    saga_id: SagaId,
) -> Result<bool, sqlx::Error> {
    let deleted = query("DELETE FROM saga_locks WHERE resource = $1 AND saga_id = $2")
        .bind(resource)
        .bind(saga_id_text(saga_id))
        .execute(&mut *conn)
        .await?;
    Ok(deleted.rows_affected() == 1)
}
