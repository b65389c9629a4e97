//! PaymentSaga: reserve (compensatable, undone by release) → charge (pivot; refused above
//! 100) → confirm (retriable; refused once for amount 13). The ledger participant records each
//! effect in `test_effects`, in the handler's transaction, so tests can count them.

use std::time::Duration;

use async_trait::async_trait;
use saga_core::message::CommandMeta;
use saga_core::participant::{CommandHandler, HandlerError, Participant};
use saga_core::{Command, Reply, RetryPolicy, saga};
use saga_store::{Database, Dialect, Tx, on_backend};
use serde::{Deserialize, Serialize};
use sqlx::{query, query_scalar};

/// The ledger's channel.
pub const LEDGER: &str = "ledger";
/// Where the ledger replies.
pub const REPLIES: &str = "payments.replies";
/// Amounts above this are refused by `charge`, so the saga compensates.
pub const LIMIT: i64 = 100;
/// A `confirm` of this amount is refused once, then succeeds on retry.
pub const FLAKY_AMOUNT: i64 = 13;

/// The saga data.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentData {
    /// The payment's business id.
    pub payment: i64,
    /// How much.
    pub amount: i64,
}

/// Reserve funds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Command)]
#[command(channel = "ledger", reply = Done)]
pub struct Reserve {
    /// The payment.
    pub payment: i64,
    /// How much.
    pub amount: i64,
}

/// Release reserved funds (the compensation of `Reserve`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Command)]
#[command(channel = "ledger", reply = Done)]
pub struct Release {
    /// The payment.
    pub payment: i64,
}

/// Charge the reserved funds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Command)]
#[command(channel = "ledger", reply = ChargeResult)]
pub struct Charge {
    /// The payment.
    pub payment: i64,
    /// How much.
    pub amount: i64,
}

/// Confirm the payment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Command)]
#[command(channel = "ledger", reply = Done)]
pub struct Confirm {
    /// The payment.
    pub payment: i64,
    /// How much.
    pub amount: i64,
}

/// A plain success.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Reply)]
pub struct Done;

/// The charge verdict.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Reply)]
pub enum ChargeResult {
    /// Charged.
    #[success]
    Charged,
    /// Refused.
    #[failure]
    Refused {
        /// Why.
        reason: String,
    },
}

fn reserve(d: &PaymentData) -> Reserve {
    Reserve {
        payment: d.payment,
        amount: d.amount,
    }
}
fn release(d: &PaymentData) -> Release {
    Release { payment: d.payment }
}
fn charge(d: &PaymentData) -> Charge {
    Charge {
        payment: d.payment,
        amount: d.amount,
    }
}
fn confirm(d: &PaymentData) -> Confirm {
    Confirm {
        payment: d.payment,
        amount: d.amount,
    }
}

saga! {
    /// Reserve, charge (the pivot), confirm.
    pub saga PaymentSaga(PaymentData) {
        compensatable reserve { invoke: reserve, compensate: release }
        pivot charge { invoke: charge }
        retriable confirm { invoke: confirm,
                            retry: RetryPolicy::fixed(Duration::from_millis(300)).max_attempts(5) }
    }
}

/// Creates the effects table (idempotent).
pub async fn create_effects_table(database: &Database) -> Result<(), sqlx::Error> {
    let id = match database.dialect() {
        Dialect::Sqlite => "INTEGER PRIMARY KEY AUTOINCREMENT",
        Dialect::Postgres => "BIGSERIAL PRIMARY KEY",
    };
    let create = format!(
        "CREATE TABLE IF NOT EXISTS test_effects (id {id}, saga TEXT NOT NULL, \
         payment BIGINT NOT NULL, action TEXT NOT NULL)"
    );
    crate::testdb::execute(database, &create).await.map(drop)
}

/// The ledger participant: records effects, optionally slowly.
#[derive(Clone, Debug, Default)]
pub struct Ledger {
    /// A pause inside every handler (to make runs long enough to interrupt).
    pub delay: Duration,
}

async fn record(
    ctx: &mut Tx,
    meta: &CommandMeta,
    payment: i64,
    action: &str,
) -> Result<(), HandlerError> {
    let saga = meta.saga_id.map(|id| id.to_string()).unwrap_or_default();
    on_backend!(ctx.conn(), |c| {
        query("INSERT INTO test_effects (saga, payment, action) VALUES ($1, $2, $3)")
            .bind(&saga)
            .bind(payment)
            .bind(action)
            .execute(c)
            .await
            .map(drop)
    })?;
    Ok(())
}

impl Ledger {
    async fn pause(&self) {
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
    }
}

#[async_trait]
impl CommandHandler<Reserve, Tx> for Ledger {
    async fn handle(
        &self,
        ctx: &mut Tx,
        cmd: Reserve,
        meta: &CommandMeta,
    ) -> Result<Done, HandlerError> {
        self.pause().await;
        record(ctx, meta, cmd.payment, "reserve").await?;
        Ok(Done)
    }
}

#[async_trait]
impl CommandHandler<Release, Tx> for Ledger {
    async fn handle(
        &self,
        ctx: &mut Tx,
        cmd: Release,
        meta: &CommandMeta,
    ) -> Result<Done, HandlerError> {
        self.pause().await;
        record(ctx, meta, cmd.payment, "release").await?;
        Ok(Done)
    }
}

#[async_trait]
impl CommandHandler<Charge, Tx> for Ledger {
    async fn handle(
        &self,
        ctx: &mut Tx,
        cmd: Charge,
        meta: &CommandMeta,
    ) -> Result<ChargeResult, HandlerError> {
        self.pause().await;
        if cmd.amount > LIMIT {
            return Ok(ChargeResult::Refused {
                reason: format!("amount {} over the limit of {LIMIT}", cmd.amount),
            });
        }
        record(ctx, meta, cmd.payment, "charge").await?;
        Ok(ChargeResult::Charged)
    }
}

#[async_trait]
impl CommandHandler<Confirm, Tx> for Ledger {
    async fn handle(
        &self,
        ctx: &mut Tx,
        cmd: Confirm,
        meta: &CommandMeta,
    ) -> Result<Done, HandlerError> {
        self.pause().await;
        if cmd.amount == FLAKY_AMOUNT && count(ctx, meta, "confirm_refused").await? == 0 {
            // Kept, so that the retry finds it and succeeds.
            record(ctx, meta, cmd.payment, "confirm_refused").await?;
            return Err(HandlerError::refused_keeping_writes(
                "ledger busy, try again",
            ));
        }
        record(ctx, meta, cmd.payment, "confirm").await?;
        Ok(Done)
    }
}

/// How many `action` effects the saga of `meta` has.
async fn count(ctx: &mut Tx, meta: &CommandMeta, action: &str) -> Result<i64, HandlerError> {
    let saga = meta.saga_id.map(|id| id.to_string()).unwrap_or_default();
    let n = on_backend!(ctx.conn(), |c| {
        query_scalar("SELECT COUNT(*) FROM test_effects WHERE saga = $1 AND action = $2")
            .bind(&saga)
            .bind(action)
            .fetch_one(c)
            .await
    })?;
    Ok(n)
}

/// The ledger as a participant working in transactions.
pub fn ledger_participant(ledger: Ledger) -> Participant<Tx> {
    Participant::new("ledger", LEDGER)
        .handle::<Reserve>(ledger.clone())
        .handle::<Release>(ledger.clone())
        .handle::<Charge>(ledger.clone())
        .handle::<Confirm>(ledger)
}
