//! The two backends, typed: a transaction or connection is a PostgreSQL one or a SQLite one,
//! never an erased "any" — so code that writes to it can use each driver's own types
//! (`uuid::Uuid`, `jsonb`, timestamps, arrays) and sqlx's checked `query!` macros.
//!
//! - A participant that runs on one backend takes that backend's transaction as its context:
//!   `Participant<PgTx>` or `Participant<SqliteTx>`.
//! - Code that runs on either (the FTGO example, chosen by a flag) takes [`Tx`] and writes its
//!   SQL once with [`on_backend!`](crate::on_backend): the body is compiled for each backend,
//!   each arm with its own concrete types, so there are no generic bounds to spell out and a
//!   statement that does not fit one backend fails to compile there.

use sqlx::pool::PoolConnection;
use sqlx::{PgConnection, Postgres, Sqlite, SqliteConnection};

use crate::db::Dialect;

/// A transaction on a PostgreSQL saga database.
pub type PgTx = sqlx::Transaction<'static, Postgres>;
/// A transaction on a SQLite saga database.
pub type SqliteTx = sqlx::Transaction<'static, Sqlite>;

/// A transaction on a saga database, of whichever backend it is.
#[derive(Debug)]
pub enum Tx {
    /// A PostgreSQL transaction.
    Postgres(PgTx),
    /// A SQLite transaction.
    Sqlite(SqliteTx),
}

impl Tx {
    /// The transaction's connection, to run statements on (see [`on_backend!`](crate::on_backend)).
    pub fn conn(&mut self) -> Conn<'_> {
        match self {
            Self::Postgres(tx) => Conn::Postgres(tx),
            Self::Sqlite(tx) => Conn::Sqlite(tx),
        }
    }

    /// Which backend it is on.
    pub fn dialect(&self) -> Dialect {
        match self {
            Self::Postgres(_) => Dialect::Postgres,
            Self::Sqlite(_) => Dialect::Sqlite,
        }
    }

    /// The PostgreSQL transaction, if it is one.
    pub fn as_postgres(&mut self) -> Option<&mut PgTx> {
        match self {
            Self::Postgres(tx) => Some(tx),
            Self::Sqlite(_) => None,
        }
    }

    /// The SQLite transaction, if it is one.
    pub fn as_sqlite(&mut self) -> Option<&mut SqliteTx> {
        match self {
            Self::Sqlite(tx) => Some(tx),
            Self::Postgres(_) => None,
        }
    }

    /// Commits.
    pub async fn commit(self) -> Result<(), sqlx::Error> {
        match self {
            Self::Postgres(tx) => tx.commit().await,
            Self::Sqlite(tx) => tx.commit().await,
        }
    }

    /// Rolls back.
    pub async fn rollback(self) -> Result<(), sqlx::Error> {
        match self {
            Self::Postgres(tx) => tx.rollback().await,
            Self::Sqlite(tx) => tx.rollback().await,
        }
    }
}

/// A borrowed connection on a saga database — of a transaction ([`Tx::conn`]) or from the
/// pool ([`PoolConn::conn`]).
#[derive(Debug)]
pub enum Conn<'c> {
    /// A PostgreSQL connection.
    Postgres(&'c mut PgConnection),
    /// A SQLite connection.
    Sqlite(&'c mut SqliteConnection),
}

impl Conn<'_> {
    /// Which backend it is on.
    pub fn dialect(&self) -> Dialect {
        match self {
            Self::Postgres(_) => Dialect::Postgres,
            Self::Sqlite(_) => Dialect::Sqlite,
        }
    }

    /// The same connection, borrowed again (to pass it on and keep using it).
    pub fn reborrow(&mut self) -> Conn<'_> {
        match self {
            Self::Postgres(conn) => Conn::Postgres(conn),
            Self::Sqlite(conn) => Conn::Sqlite(conn),
        }
    }
}

impl<'c> From<&'c mut Tx> for Conn<'c> {
    fn from(tx: &'c mut Tx) -> Self {
        tx.conn()
    }
}

impl<'c> From<&'c mut PgTx> for Conn<'c> {
    fn from(tx: &'c mut PgTx) -> Self {
        Conn::Postgres(tx)
    }
}

impl<'c> From<&'c mut SqliteTx> for Conn<'c> {
    fn from(tx: &'c mut SqliteTx) -> Self {
        Conn::Sqlite(tx)
    }
}

impl<'c> From<&'c mut PoolConn> for Conn<'c> {
    fn from(conn: &'c mut PoolConn) -> Self {
        conn.conn()
    }
}

/// A connection taken from a saga database's pool.
#[derive(Debug)]
pub enum PoolConn {
    /// A PostgreSQL connection.
    Postgres(PoolConnection<Postgres>),
    /// A SQLite connection.
    Sqlite(PoolConnection<Sqlite>),
}

impl PoolConn {
    /// The connection, to run statements on.
    pub fn conn(&mut self) -> Conn<'_> {
        match self {
            Self::Postgres(conn) => Conn::Postgres(conn),
            Self::Sqlite(conn) => Conn::Sqlite(conn),
        }
    }

    /// Closes the connection instead of returning it to the pool.
    pub async fn close(self) -> Result<(), sqlx::Error> {
        use sqlx::Connection as _;
        match self {
            Self::Postgres(conn) => conn.detach().close().await,
            Self::Sqlite(conn) => conn.detach().close().await,
        }
    }
}

/// Runs `body` with `$conn` bound to the concrete connection of a [`Conn`]: written once,
/// compiled for each backend (each arm sees `&mut PgConnection` or `&mut SqliteConnection`,
/// so binds and row types are checked per backend).
///
/// ```no_run
/// # async fn example(tx: &mut saga_store::Tx) -> Result<(), sqlx::Error> {
/// use saga_store::on_backend;
/// let state: Option<String> = on_backend!(tx.conn(), |c| {
///     sqlx::query_scalar("SELECT state FROM tickets WHERE order_id = $1")
///         .bind(1001_i64)
///         .fetch_optional(c)
///         .await
/// })?;
/// # let _ = state; Ok(()) }
/// ```
#[macro_export]
macro_rules! on_backend {
    ($conn:expr, |$c:ident| $body:expr) => {
        match $conn {
            $crate::Conn::Postgres($c) => $body,
            $crate::Conn::Sqlite($c) => $body,
        }
    };
}

/// What a participant's handlers (or a [`Database::write`](crate::Database::write) closure)
/// work in: the portable [`Tx`], or one backend's transaction ([`PgTx`], [`SqliteTx`]).
pub trait TxContext: Send + 'static {
    /// The backend this context needs, if only one.
    const BACKEND: Option<Dialect>;

    /// This context inside `tx`, if `tx` is of its backend.
    fn from_tx(tx: &mut Tx) -> Option<&mut Self>;
}

impl TxContext for Tx {
    const BACKEND: Option<Dialect> = None;

    fn from_tx(tx: &mut Tx) -> Option<&mut Self> {
        Some(tx)
    }
}

impl TxContext for PgTx {
    const BACKEND: Option<Dialect> = Some(Dialect::Postgres);

    fn from_tx(tx: &mut Tx) -> Option<&mut Self> {
        tx.as_postgres()
    }
}

impl TxContext for SqliteTx {
    const BACKEND: Option<Dialect> = Some(Dialect::Sqlite);

    fn from_tx(tx: &mut Tx) -> Option<&mut Self> {
        tx.as_sqlite()
    }
}
