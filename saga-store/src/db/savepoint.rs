//! A savepoint taken again and again inside one transaction, so that undoing one piece of
//! work keeps the rest. Between two pieces, releasing one savepoint and taking the next is
//! one round trip. The last one is released as soon as its piece is done: an open savepoint
//! makes the database keep undo data for every later write of the transaction (measured:
//! leaving it open cost ~30 % of in-place throughput on SQLite).
//!
//! On SQLite, taking or releasing one can also ride on the caller's next statement
//! ([`Glued`]): sqlx runs the statements of one query in turn on its worker thread, so the
//! savepoint costs no hand-off of its own.

use saga_core::ports::StoreError;

use crate::db::backend::{Conn, Tx};
use crate::error::store_error;
use crate::on_backend;

/// The statements of one named savepoint.
pub(crate) struct Names {
    take: &'static str,
    take_next: &'static str,
    undo: &'static str,
    release: &'static str,
}

/// Around each command handler of a batch.
pub(crate) const HANDLER: Names = Names {
    take: "SAVEPOINT saga_handler",
    take_next: "RELEASE SAVEPOINT saga_handler; SAVEPOINT saga_handler",
    undo: "ROLLBACK TO SAVEPOINT saga_handler",
    release: "RELEASE SAVEPOINT saga_handler",
};

/// Around each pass chained onto an in-place pass.
pub(crate) const CHAINED_PASS: Names = Names {
    take: "SAVEPOINT saga_chained_pass",
    take_next: "RELEASE SAVEPOINT saga_chained_pass; SAVEPOINT saga_chained_pass",
    undo: "ROLLBACK TO SAVEPOINT saga_chained_pass",
    release: "RELEASE SAVEPOINT saga_chained_pass",
};

/// A savepoint of one name, taken afresh for each piece of work.
pub(crate) struct Savepoint {
    names: &'static Names,
    /// Whether it is taken and not yet released.
    open: bool,
}

impl Savepoint {
    pub(crate) fn new(names: &'static Names) -> Self {
        Self { names, open: false }
    }

    /// Takes a fresh savepoint for the next piece of work.
    pub(crate) async fn take(&mut self, tx: &mut Tx) -> Result<(), StoreError> {
        let sql = match self.open {
            true => self.names.take_next,
            false => self.names.take,
        };
        self.open = true;
        run(tx, sql).await
    }

    /// Takes a fresh savepoint with the caller's next statement (see [`Glued`]).
    pub(crate) fn take_glued(&mut self, tx: &Tx) -> Glued {
        let sql = match self.open {
            true => self.names.take_next,
            false => self.names.take,
        };
        self.open = true;
        Glued::new(tx, Some(sql))
    }

    /// Releases the savepoint, if taken, with the caller's next statement.
    pub(crate) fn release_glued(&mut self, tx: &Tx) -> Glued {
        let sql = std::mem::take(&mut self.open).then_some(self.names.release);
        Glued::new(tx, sql)
    }

    /// Undoes what was written since the savepoint (which stays taken).
    pub(crate) async fn undo(&mut self, tx: &mut Tx) -> Result<(), StoreError> {
        run(tx, self.names.undo).await
    }

    /// Releases the savepoint, if taken.
    pub(crate) async fn release(&mut self, tx: &mut Tx) -> Result<(), StoreError> {
        if !std::mem::take(&mut self.open) {
            return Ok(());
        }
        run(tx, self.names.release).await
    }
}

/// A statement (taking or releasing a savepoint) to run with the caller's next statement,
/// before or after it as the caller's order needs: on SQLite in one query with it, on
/// PostgreSQL (one statement per query) on its own. On SQLite the two succeed or fail
/// together; a caller whose statement failed gives its transaction up as a whole (its
/// consumer takes over) rather than rolling back to the savepoint.
#[must_use = "a glued statement runs only with the caller's statement"]
pub(crate) struct Glued {
    sql: Option<&'static str>,
    /// In one query with the caller's statement (SQLite), else on its own.
    fused: bool,
}

impl Glued {
    /// Nothing to run.
    pub(crate) const NONE: Glued = Glued {
        sql: None,
        fused: false,
    };

    fn new(tx: &Tx, sql: Option<&'static str>) -> Self {
        let fused = matches!(tx, Tx::Sqlite(_));
        Self { sql, fused }
    }

    /// The caller's `sql` with the glued statement first, where it is fused.
    pub(crate) fn before(&self, sql: &str) -> String {
        match (self.sql, self.fused) {
            (Some(glued), true) => format!("{glued};\n{sql}"),
            _ => sql.to_owned(),
        }
    }

    /// The caller's `sql` with the glued statement last, where it is fused.
    pub(crate) fn after(&self, sql: &str) -> String {
        match (self.sql, self.fused) {
            (Some(glued), true) => format!("{sql};\n{glued}"),
            _ => sql.to_owned(),
        }
    }

    /// Runs it on its own where it is not fused: before the caller's statement for
    /// [`before`](Self::before), after it for [`after`](Self::after).
    pub(crate) async fn run_unfused(&self, conn: Conn<'_>) -> Result<(), StoreError> {
        match (self.sql, self.fused) {
            (Some(sql), false) => execute(conn, sql).await,
            _ => Ok(()),
        }
    }

    /// Runs it on its own, for a caller that had no statement to run after all.
    pub(crate) async fn alone(self, conn: Conn<'_>) -> Result<(), StoreError> {
        match self.sql {
            Some(sql) => execute(conn, sql).await,
            None => Ok(()),
        }
    }
}

async fn execute(conn: Conn<'_>, sql: &'static str) -> Result<(), StoreError> {
    on_backend!(conn, |c| sqlx::raw_sql(sql).execute(c).await.map(drop)).map_err(store_error)
}

async fn run(tx: &mut Tx, sql: &'static str) -> Result<(), StoreError> {
    execute(tx.conn(), sql).await
}
