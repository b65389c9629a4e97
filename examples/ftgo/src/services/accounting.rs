//! The Accounting service: card authorizations. Authorizing is CreateOrderSaga's pivot;
//! reversing is CancelOrderSaga's.

use saga_core::participant::{HandlerError, Participant};
use saga_store::{Conn, Database, DatabaseError, Tx, on_backend};
use sqlx::{query, query_as, query_scalar};

use crate::messages::{
    AuthorizationReversal, AuthorizeCard, CardAuthorization, Cents, ReverseAuthorization, channels,
};
use crate::services::ServiceTime;

/// A consumer's payment account in the sample data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SampleAccount {
    /// The consumer.
    pub consumer_id: i64,
    /// The card limit per order, in cents.
    pub card_limit: Cents,
    /// Whether the card works.
    pub card_enabled: bool,
}

/// The sample accounts: Ada 500.00, Bob 30.00, Carol's card disabled, Mallory 500.00.
pub const SAMPLE_ACCOUNTS: [SampleAccount; 4] = [
    SampleAccount {
        consumer_id: 1,
        card_limit: 50_000,
        card_enabled: true,
    },
    SampleAccount {
        consumer_id: 2,
        card_limit: 3_000,
        card_enabled: true,
    },
    SampleAccount {
        consumer_id: 3,
        card_limit: 50_000,
        card_enabled: false,
    },
    SampleAccount {
        consumer_id: 666,
        card_limit: 50_000,
        card_enabled: true,
    },
];

/// The state of an authorization.
pub const AUTHORIZED: &str = "AUTHORIZED";
/// The state of a reversed authorization.
pub const REVERSED: &str = "REVERSED";

/// The Accounting service.
#[derive(Clone, Debug)]
pub struct AccountingService {
    database: Database,
    service_time: ServiceTime,
}

impl AccountingService {
    /// Opens the service on its database: migrates and seeds the sample accounts.
    pub async fn open(database: Database) -> Result<Self, DatabaseError> {
        database
            .run_migrations(sqlx::migrate!("migrations/accounting"))
            .await?;
        let mut conn = database.acquire().await?;
        for account in SAMPLE_ACCOUNTS {
            on_backend!(conn.conn(), |c| {
                query(
                    "INSERT INTO ftgo_accounts (consumer_id, card_limit, card_enabled) \
                     VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                )
                .bind(account.consumer_id)
                .bind(account.card_limit)
                .bind(i64::from(account.card_enabled))
                .execute(c)
                .await
                .map(drop)
            })?;
        }
        Ok(Self {
            database,
            service_time: ServiceTime::default(),
        })
    }

    /// The service's database.
    pub fn database(&self) -> &Database {
        &self.database
    }

    /// The state of the authorization for `order_id` (`AUTHORIZED`, `REVERSED`), if any.
    pub async fn authorization_state(&self, order_id: i64) -> Result<Option<String>, sqlx::Error> {
        let mut conn = self.database.acquire().await?;
        authorization(conn.conn(), order_id).await
    }

    /// The same service, taking `time` more over each forward command of CreateOrderSaga.
    pub fn with_service_time(mut self, time: ServiceTime) -> Self {
        self.service_time = time;
        self
    }

    /// The Accounting service as a participant.
    pub fn participant(&self) -> Participant<Tx> {
        let time = self.service_time;
        Participant::new("accounting-service", channels::ACCOUNTING)
            .handle_async::<AuthorizeCard>(move |tx, cmd, _| {
                Box::pin(async move {
                    time.spend().await;
                    authorize_card(tx, cmd).await
                })
            })
            .handle_async::<ReverseAuthorization>(|tx, cmd, _| {
                Box::pin(reverse_authorization(tx, cmd))
            })
    }
}

/// The state of the authorization for `order_id`, if any.
async fn authorization(conn: Conn<'_>, order_id: i64) -> Result<Option<String>, sqlx::Error> {
    on_backend!(conn, |c| {
        query_scalar("SELECT state FROM ftgo_authorizations WHERE order_id = $1")
            .bind(order_id)
            .fetch_optional(c)
            .await
    })
}

async fn authorize_card(
    tx: &mut Tx,
    cmd: AuthorizeCard,
) -> Result<CardAuthorization, HandlerError> {
    let authorized = |order_id| CardAuthorization::Authorized {
        authorization_id: format!("auth-{order_id}"),
    };
    if authorization(tx.conn(), cmd.order_id).await?.is_some() {
        return Ok(authorized(cmd.order_id));
    }
    let account: Option<(i64, i64)> = on_backend!(tx.conn(), |c| {
        query_as("SELECT card_limit, card_enabled FROM ftgo_accounts WHERE consumer_id = $1")
            .bind(cmd.consumer_id)
            .fetch_optional(c)
            .await
    })?;
    let Some((limit, card_enabled)) = account else {
        return Ok(CardAuthorization::Declined {
            reason: format!("consumer {} has no card on file", cmd.consumer_id),
        });
    };
    if card_enabled == 0 {
        return Ok(CardAuthorization::Declined {
            reason: format!("card of consumer {} is disabled", cmd.consumer_id),
        });
    }
    if cmd.order_total > limit {
        return Ok(CardAuthorization::Declined {
            reason: format!(
                "card limit exceeded: {} > {}",
                money(cmd.order_total),
                money(limit)
            ),
        });
    }
    on_backend!(tx.conn(), |c| {
        query(
            "INSERT INTO ftgo_authorizations (order_id, consumer_id, amount, state) \
             VALUES ($1, $2, $3, $4)",
        )
        .bind(cmd.order_id)
        .bind(cmd.consumer_id)
        .bind(cmd.order_total)
        .bind(AUTHORIZED)
        .execute(c)
        .await
        .map(drop)
    })?;
    Ok(authorized(cmd.order_id))
}

async fn reverse_authorization(
    tx: &mut Tx,
    cmd: ReverseAuthorization,
) -> Result<AuthorizationReversal, HandlerError> {
    let updated = on_backend!(tx.conn(), |c| {
        query("UPDATE ftgo_authorizations SET state = $1 WHERE order_id = $2 AND state = $3")
            .bind(REVERSED)
            .bind(cmd.order_id)
            .bind(AUTHORIZED)
            .execute(c)
            .await
            .map(|done| done.rows_affected())
    })?;
    if updated == 1 {
        return Ok(AuthorizationReversal::Reversed);
    }
    let state = authorization(tx.conn(), cmd.order_id).await?;
    Ok(match state.as_deref() {
        Some(REVERSED) => AuthorizationReversal::Reversed,
        _ => AuthorizationReversal::Refused {
            reason: format!("no authorization for order {}", cmd.order_id),
        },
    })
}

/// Formats cents as `12.34`.
pub fn money(cents: Cents) -> String {
    format!("{}.{:02}", cents / 100, (cents % 100).abs())
}
