//! The Consumer service: verifies that a consumer may place an order.

use saga_core::participant::{HandlerError, Participant};
use saga_store::{Database, DatabaseError, Tx, on_backend};
use sqlx::{query, query_scalar};

use crate::messages::{ConsumerVerification, ValidateOrderByConsumer, channels};
use crate::services::ServiceTime;

/// A consumer of the sample data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SampleConsumer {
    /// The id.
    pub id: i64,
    /// The name.
    pub name: &'static str,
    /// Whether they are blocked from ordering.
    pub blocked: bool,
}

/// The sample consumers: Ada (1), Bob (2), Carol (3) and Mallory (666, blocked).
pub const SAMPLE_CONSUMERS: [SampleConsumer; 4] = [
    SampleConsumer {
        id: 1,
        name: "Ada",
        blocked: false,
    },
    SampleConsumer {
        id: 2,
        name: "Bob",
        blocked: false,
    },
    SampleConsumer {
        id: 3,
        name: "Carol",
        blocked: false,
    },
    SampleConsumer {
        id: 666,
        name: "Mallory",
        blocked: true,
    },
];

/// The Consumer service.
#[derive(Clone, Debug)]
pub struct ConsumerService {
    database: Database,
    service_time: ServiceTime,
}

impl ConsumerService {
    /// Opens the service on its database: migrates and seeds the sample consumers.
    pub async fn open(database: Database) -> Result<Self, DatabaseError> {
        database
            .run_migrations(sqlx::migrate!("migrations/consumer"))
            .await?;
        let mut conn = database.acquire().await?;
        for consumer in SAMPLE_CONSUMERS {
            on_backend!(conn.conn(), |c| {
                query("INSERT INTO ftgo_consumers (id, name, blocked) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING")
                    .bind(consumer.id)
                    .bind(consumer.name)
                    .bind(i64::from(consumer.blocked))
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

    /// The same service, taking `time` more over each forward command of CreateOrderSaga.
    pub fn with_service_time(mut self, time: ServiceTime) -> Self {
        self.service_time = time;
        self
    }

    /// The Consumer service as a participant.
    pub fn participant(&self) -> Participant<Tx> {
        let time = self.service_time;
        Participant::new("consumer-service", channels::CONSUMER)
            .handle_async::<ValidateOrderByConsumer>(move |tx, cmd, _| {
                Box::pin(async move {
                    time.spend().await;
                    validate_order_by_consumer(tx, cmd).await
                })
            })
    }
}

async fn validate_order_by_consumer(
    tx: &mut Tx,
    cmd: ValidateOrderByConsumer,
) -> Result<ConsumerVerification, HandlerError> {
    let blocked: Option<i64> = on_backend!(tx.conn(), |c| {
        query_scalar("SELECT blocked FROM ftgo_consumers WHERE id = $1")
            .bind(cmd.consumer_id)
            .fetch_optional(c)
            .await
    })?;
    let verdict = match blocked {
        None => ConsumerVerification::Invalid {
            reason: format!("unknown consumer {}", cmd.consumer_id),
        },
        Some(blocked) if blocked != 0 => ConsumerVerification::Invalid {
            reason: format!("consumer {} is blocked", cmd.consumer_id),
        },
        Some(_) => ConsumerVerification::Verified,
    };
    Ok(verdict)
}
