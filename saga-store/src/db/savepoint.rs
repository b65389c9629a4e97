//! A savepoint taken again and again inside one transaction, so that undoing one piece of
//! work keeps the rest. Between two pieces, releasing one savepoint and taking the next is
//! one round trip. The last one is released as soon as its piece is done: an open savepoint
//! makes the database keep undo data for every later write of the transaction (measured:
//! leaving it open cost ~30 % of in-place throughput on SQLite).

use saga_core::ports::StoreError;

use crate::db::backend::Tx;
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

async fn run(tx: &mut Tx, sql: &'static str) -> Result<(), StoreError> {
    on_backend!(tx.conn(), |c| sqlx::raw_sql(sql).execute(c).await.map(drop)).map_err(store_error)
}
