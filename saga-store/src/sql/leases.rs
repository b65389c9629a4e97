//! `saga_leases` — leases: how a singleton role (the outbox relay of a database) is held by one process at a
//! time and passed on when its holder dies **or hangs**.
//!
//! A lease is a row in `saga_leases`: the role's name, its holder and when it expires. The
//! holder renews it while it works ([`Lease::hold`] before every piece of work); another
//! process takes it only once it has expired. A holder that was frozen (SIGSTOP, a long GC
//! pause, a partition) finds on waking that its renewal fails, and stops: at most the work it
//! had in hand when it froze is done twice — for the relay, a message published twice, which
//! the consumers' dedup absorbs. Expiry is read on the database's clock on PostgreSQL, so the
//! processes' clocks need not agree.

use std::time::Duration;

use saga_core::ports::StoreError;
use sqlx::query;

use crate::db::{Database, Dialect};
use crate::error::store_error;
use crate::on_backend;
use crate::sql::to_i64;

/// One process's claim on a named singleton role.
#[derive(Debug)]
pub(crate) struct Lease {
    database: Database,
    name: String,
    holder: String,
    duration: Duration,
    /// When this process last renewed it (its own clock), if it holds it.
    renewed: Option<tokio::time::Instant>,
}

/// Takes the lease if it is free or expired, renews it if we hold it.
const ACQUIRE_POSTGRES: &str = "INSERT INTO saga_leases (name, holder, expires_at) \
     VALUES ($1, $2, CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT) + $3) \
     ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at \
     WHERE saga_leases.holder = excluded.holder \
     OR saga_leases.expires_at < CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)";

const ACQUIRE_SQLITE: &str = "INSERT INTO saga_leases (name, holder, expires_at) \
     VALUES ($1, $2, $4 + $3) \
     ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at \
     WHERE saga_leases.holder = excluded.holder OR saga_leases.expires_at < $4";

impl Lease {
    /// A claim on role `name`, held for `duration` after each renewal.
    pub(crate) fn new(database: Database, name: String, duration: Duration) -> Self {
        Self {
            database,
            name,
            holder: uuid::Uuid::now_v7().to_string(),
            duration,
            renewed: None,
        }
    }

    /// Makes sure this process holds the lease for at least two thirds of its duration:
    /// renews it when a third has passed since the last renewal, or takes it if it is free.
    /// `false` when another holder has it.
    pub(crate) async fn hold(&mut self) -> Result<bool, StoreError> {
        let fresh = self
            .renewed
            .is_some_and(|at| at.elapsed() < self.duration / 3);
        if fresh {
            return Ok(true);
        }
        let started = tokio::time::Instant::now();
        let duration = to_i64(self.duration.as_millis() as u64);
        let now = to_i64(saga_core::Timestamp::now().as_millis());
        let mut conn = self.database.acquire().await.map_err(store_error)?;
        let held = on_backend!(conn.conn(), |c| {
            let statement = match self.database.dialect() {
                Dialect::Postgres => query(ACQUIRE_POSTGRES)
                    .bind(&self.name)
                    .bind(&self.holder)
                    .bind(duration),
                Dialect::Sqlite => query(ACQUIRE_SQLITE)
                    .bind(&self.name)
                    .bind(&self.holder)
                    .bind(duration)
                    .bind(now),
            };
            statement.execute(c).await.map(|done| done.rows_affected())
        })
        .map_err(store_error)?
            == 1;
        self.database.count_commit();
        let was_held = self.renewed.is_some();
        self.renewed = held.then_some(started);
        match (was_held, held) {
            (false, true) => {
                tracing::info!(role = %self.name, holder = %self.holder, "took the lease")
            }
            (true, false) => {
                tracing::warn!(role = %self.name, holder = %self.holder, "lost the lease to another holder")
            }
            _ => {}
        }
        Ok(held)
    }

    /// Gives the lease up (at shutdown), so another process can take it at once.
    pub(crate) async fn release(&mut self) {
        if self.renewed.take().is_none() {
            return;
        }
        let released = match self.database.acquire().await {
            Ok(mut conn) => on_backend!(conn.conn(), |c| {
                query("DELETE FROM saga_leases WHERE name = $1 AND holder = $2")
                    .bind(&self.name)
                    .bind(&self.holder)
                    .execute(c)
                    .await
                    .map(drop)
            }),
            Err(err) => Err(err),
        };
        if let Err(err) = released {
            tracing::warn!(role = %self.name, error = %err, "could not give the lease up; it expires by itself");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn database() -> (Database, std::path::PathBuf) {
        let dir =
            std::env::temp_dir().join(format!("saga_lease_{}", uuid::Uuid::now_v7().simple()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let database = Database::sqlite_file(&dir.join("lease.db"))
            .await
            .expect("opens");
        (database, dir)
    }

    #[tokio::test]
    async fn one_holder_at_a_time_and_a_silent_holder_loses_it() {
        let (database, dir) = database().await;
        // Long enough that a loaded machine (the whole test suite at once) cannot let the
        // second's fresh lease expire between its take-over and the first's next ask.
        let lease = Duration::from_secs(2);
        let mut first = Lease::new(database.clone(), "relay".to_owned(), lease);
        let mut second = Lease::new(database.clone(), "relay".to_owned(), lease);
        assert!(first.hold().await.expect("holds"));
        assert!(!second.hold().await.expect("asks"), "taken");
        assert!(first.hold().await.expect("renews"), "its own lease");
        // The first stops renewing (it hangs); once the lease expires the second takes it…
        tokio::time::sleep(lease + Duration::from_millis(50)).await;
        assert!(second.hold().await.expect("takes over"));
        // …and the first, waking up, finds it gone.
        assert!(!first.hold().await.expect("asks"), "lost to the second");
        second.release().await;
        assert!(first.hold().await.expect("takes it back at once"));
        let mut other_role = Lease::new(database.clone(), "other".to_owned(), lease);
        assert!(
            other_role.hold().await.expect("holds"),
            "roles are independent"
        );
        database.close().await;
        let _ = std::fs::remove_dir_all(dir);
    }
}
