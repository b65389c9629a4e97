//! `saga_locks`, the semantic-lock table: which saga holds which business resource.
//!
//! A participant that puts a record into a `*_PENDING` state can also record the lock here,
//! in the same transaction, naming the resource (e.g. `order:1001`) and the saga; other work
//! asks [`holder`] and is refused with a precise reason; the saga's confirming or compensating
//! command calls [`release`]. Each function takes the transaction (`&mut Tx`, `&mut PgTx`,
//! `&mut SqliteTx`) or its connection ([`Tx::conn`](crate::Tx::conn)).

use saga_core::ports::StoreError;
use saga_core::{SagaId, Timestamp};
use sqlx::query;

use crate::db::backend::Conn;
use crate::error::store_error;
use crate::on_backend;
use crate::sql::{Bind, Get, to_i64};

/// Who holds a resource.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockHolder {
    /// The saga.
    pub saga_id: SagaId,
    /// The pending state it put the resource in.
    pub state: String,
}

/// Why a lock was not taken.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
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
    Store(#[from] StoreError),
}

/// Takes the lock on `resource` for `saga_id` (idempotent for the same saga).
pub async fn acquire<'c>(
    conn: impl Into<Conn<'c>>,
    resource: &str,
    saga_id: SagaId,
    state: &str,
) -> Result<(), LockError> {
    let mut conn = conn.into();
    loop {
        let inserted = on_backend!(conn.reborrow(), |c| {
            query(
                "INSERT INTO saga_locks (resource, saga_id, state, locked_at) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
            )
            .bind(resource)
            .bind_id(saga_id.0)
            .bind(state)
            .bind(to_i64(Timestamp::now().as_millis()))
            .execute(c)
            .await
            .map(|done| done.rows_affected() == 1)
            .map_err(store_error)
        })?;
        if inserted {
            return Ok(());
        }
        match holder(conn.reborrow(), resource).await? {
            Some(holder) if holder.saga_id == saga_id => return Ok(()),
            Some(holder) => {
                return Err(LockError::Held {
                    resource: resource.to_owned(),
                    holder,
                });
            }
            // Released in between: try again.
            None => {}
        }
    }
}

/// Who holds `resource`, if anyone.
pub async fn holder<'c>(
    conn: impl Into<Conn<'c>>,
    resource: &str,
) -> Result<Option<LockHolder>, StoreError> {
    on_backend!(conn.into(), |c| {
        query("SELECT saga_id, state FROM saga_locks WHERE resource = $1")
            .bind(resource)
            .fetch_optional(c)
            .await
            .map_err(store_error)?
            .map(|row| {
                Ok(LockHolder {
                    saga_id: SagaId(row.id("saga_id")?),
                    state: row.text("state")?,
                })
            })
            .transpose()
    })
}

/// Releases `resource` if `saga_id` holds it; returns whether it did.
pub async fn release<'c>(
    conn: impl Into<Conn<'c>>,
    resource: &str,
    saga_id: SagaId,
) -> Result<bool, StoreError> {
    on_backend!(conn.into(), |c| {
        query("DELETE FROM saga_locks WHERE resource = $1 AND saga_id = $2")
            .bind(resource)
            .bind_id(saga_id.0)
            .execute(c)
            .await
            .map(|done| done.rows_affected() == 1)
            .map_err(store_error)
    })
}
