//! A participant in PostgreSQL's own types, inside a saga run by the framework.
//!
//! Its handlers take `&mut PgTx` — the typed transaction a `Participant<PgTx>` gets — and use
//! `uuid`, `jsonb`, `text[]` and `timestamptz` columns through sqlx's checked `query!` macros.
//! The macros are checked at build time against the **offline** query data committed in
//! `tests/.sqlx` (`SQLX_OFFLINE=true` is set in `.cargo/config.toml`, so a build never needs
//! a database). After changing a query, refresh that data against a live database:
//!
//! ```sh
//! psql postgres://postgres@127.0.0.1:5432/test -f tests/sql/typed_devices.sql
//! SQLX_OFFLINE=false DATABASE_URL=postgres://postgres@127.0.0.1:5432/test \
//!   SQLX_OFFLINE_DIR=tests/.sqlx cargo check -p saga-tests --test typed_postgres
//! ```

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use saga_core::message::CommandMeta;
use saga_core::orchestrator::Orchestrator;
use saga_core::participant::{CommandHandler, HandlerError, Participant};
use saga_core::ports::SagaStore;
use saga_core::{Command, Reply, SagaId, SagaStatus, saga};
use saga_store::{PgTx, SagaRuntime, SqlSagaStore, SqlTransport, start_saga_in};
use saga_tests::harness::{test_runtime_options, test_transport_options};
use saga_tests::testdb::{Backend, TestDb, execute};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::types::time::OffsetDateTime;
use uuid::Uuid;

const DEVICES: &str = "devices";
const REPLIES: &str = "devices.replies";
/// The models the fleet runs; activating any other is refused (the pivot fails).
const SUPPORTED: [&str; 2] = ["t-100", "t-200"];

/// The saga data.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeviceData {
    /// The device.
    pub device: Uuid,
    /// Its specification, stored as `jsonb`.
    pub spec: Value,
    /// Its tags, stored as `text[]`.
    pub tags: Vec<String>,
}

/// Register the device (`REGISTERED`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Command)]
#[command(channel = "devices", reply = Done)]
pub struct Register {
    /// The device.
    pub device: Uuid,
    /// Its specification.
    pub spec: Value,
    /// Its tags.
    pub tags: Vec<String>,
}

/// Undo the registration (`UNREGISTERED`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Command)]
#[command(channel = "devices", reply = Done)]
pub struct Unregister {
    /// The device.
    pub device: Uuid,
}

/// Activate the device (`ACTIVE`), if the fleet runs its model.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Command)]
#[command(channel = "devices", reply = Activation)]
pub struct Activate {
    /// The device.
    pub device: Uuid,
}

/// A plain success.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Reply)]
pub struct Done;

/// The activation verdict.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Reply)]
pub enum Activation {
    /// Active.
    #[success]
    Active,
    /// Refused.
    #[failure]
    Refused {
        /// Why.
        reason: String,
    },
}

fn register(d: &DeviceData) -> Register {
    Register {
        device: d.device,
        spec: d.spec.clone(),
        tags: d.tags.clone(),
    }
}
fn unregister(d: &DeviceData) -> Unregister {
    Unregister { device: d.device }
}
fn activate(d: &DeviceData) -> Activate {
    Activate { device: d.device }
}

saga! {
    /// Register a device, then activate it (the pivot).
    pub saga DeviceSaga(DeviceData) {
        compensatable register { invoke: register, compensate: unregister }
        pivot activate { invoke: activate }
    }
}

/// The device registry: handlers on PostgreSQL's typed transaction.
#[derive(Clone, Copy, Debug)]
struct Registry;

#[async_trait]
impl CommandHandler<Register, PgTx> for Registry {
    async fn handle(
        &self,
        tx: &mut PgTx,
        cmd: Register,
        _: &CommandMeta,
    ) -> Result<Done, HandlerError> {
        sqlx::query!(
            "INSERT INTO typed_devices (id, spec, tags, state, registered_at) \
             VALUES ($1, $2, $3, 'REGISTERED', now()) ON CONFLICT (id) DO NOTHING",
            cmd.device,
            cmd.spec,
            &cmd.tags,
        )
        .execute(&mut **tx)
        .await?;
        Ok(Done)
    }
}

#[async_trait]
impl CommandHandler<Unregister, PgTx> for Registry {
    async fn handle(
        &self,
        tx: &mut PgTx,
        cmd: Unregister,
        _: &CommandMeta,
    ) -> Result<Done, HandlerError> {
        sqlx::query!(
            "UPDATE typed_devices SET state = 'UNREGISTERED' WHERE id = $1",
            cmd.device
        )
        .execute(&mut **tx)
        .await?;
        Ok(Done)
    }
}

#[async_trait]
impl CommandHandler<Activate, PgTx> for Registry {
    async fn handle(
        &self,
        tx: &mut PgTx,
        cmd: Activate,
        _: &CommandMeta,
    ) -> Result<Activation, HandlerError> {
        let device = sqlx::query!(
            "SELECT spec, registered_at FROM typed_devices WHERE id = $1",
            cmd.device
        )
        .fetch_optional(&mut **tx)
        .await?;
        let Some(device) = device else {
            return Err(HandlerError::refused(format!(
                "no device {} registered",
                cmd.device
            )));
        };
        let model = device.spec["model"].as_str().unwrap_or_default();
        if !SUPPORTED.contains(&model) {
            return Ok(Activation::Refused {
                reason: format!("the fleet does not run model {model:?}"),
            });
        }
        let activated_at = OffsetDateTime::now_utc().max(device.registered_at);
        sqlx::query!(
            "UPDATE typed_devices SET state = 'ACTIVE', activated_at = $2 WHERE id = $1",
            cmd.device,
            activated_at,
        )
        .execute(&mut **tx)
        .await?;
        Ok(Activation::Active)
    }
}

fn registry() -> Participant<PgTx> {
    Participant::new("registry", DEVICES)
        .handle::<Register>(Registry)
        .handle::<Unregister>(Registry)
        .handle::<Activate>(Registry)
}

/// A device's row, read back through the typed API.
#[derive(Debug)]
struct StoredDevice {
    model: Option<String>,
    tags: Vec<String>,
    state: String,
    registered_at: OffsetDateTime,
    activated_at: Option<OffsetDateTime>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_participant_works_in_uuid_jsonb_arrays_and_timestamps() {
    let Some(db) = TestDb::open(Backend::Postgres, "typed_postgres").await else {
        return;
    };
    let database = db.database.clone();
    execute(&database, include_str!("sql/typed_devices.sql"))
        .await
        .expect("creates the table");
    let store = SqlSagaStore::new(database.clone());
    let orchestrator =
        Arc::new(Orchestrator::new(Arc::new(store.clone()), REPLIES).register::<DeviceSaga>());
    let runtime = SagaRuntime::builder(Arc::new(SqlTransport::with_options(
        database.clone(),
        test_transport_options(),
    )))
    .options(test_runtime_options())
    .orchestrator(orchestrator.clone())
    .participant(&database, registry())
    .start()
    .await
    .expect("the runtime starts");

    let supported = DeviceData {
        device: Uuid::now_v7(),
        spec: json!({ "model": "t-100", "firmware": { "version": [2, 4] } }),
        tags: vec!["north".to_owned(), "rack-7".to_owned()],
    };
    let unsupported = DeviceData {
        device: Uuid::now_v7(),
        spec: json!({ "model": "x-9" }),
        tags: vec![],
    };
    let mut ids = Vec::new();
    for data in [supported.clone(), unsupported.clone()] {
        let mut tx = database.begin().await.expect("begins");
        ids.push(
            start_saga_in::<DeviceSaga>(&orchestrator, &mut tx, data)
                .await
                .expect("starts"),
        );
        database.commit(tx).await.expect("commits");
    }
    database.wake_relay();
    let statuses = wait_terminal(&store, &ids).await;
    runtime.shutdown().await;
    assert_eq!(statuses, [SagaStatus::Completed, SagaStatus::Compensated]);

    let pool = database.postgres_pool().expect("PostgreSQL");
    let read = async |device: Uuid| {
        sqlx::query_as!(
            StoredDevice,
            "SELECT spec->>'model' AS model, tags, state, registered_at, activated_at \
             FROM typed_devices WHERE id = $1",
            device
        )
        .fetch_one(pool)
        .await
        .expect("reads the device")
    };
    let active = read(supported.device).await;
    assert_eq!(active.model.as_deref(), Some("t-100"));
    assert_eq!(active.tags, supported.tags);
    assert_eq!(active.state, "ACTIVE");
    assert!(
        active.activated_at >= Some(active.registered_at),
        "{active:?}"
    );
    let turned_back = read(unsupported.device).await;
    assert_eq!(turned_back.state, "UNREGISTERED");
    assert_eq!(turned_back.activated_at, None);

    // The saga's own row is typed too: `uuid` id, `jsonb` data.
    let (id, firmware): (Uuid, Option<Value>) = sqlx::query_as(
        "SELECT saga_id, data->'spec'->'firmware' FROM saga_instances WHERE saga_id = $1",
    )
    .bind(ids[0].0)
    .fetch_one(pool)
    .await
    .expect("reads the saga");
    assert_eq!(id, ids[0].0);
    assert_eq!(firmware, Some(json!({ "version": [2, 4] })));
    db.cleanup().await;
}

/// Polls until every saga is terminal; their statuses.
async fn wait_terminal(store: &SqlSagaStore, ids: &[SagaId]) -> Vec<SagaStatus> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let mut statuses = Vec::new();
        for id in ids {
            let record = store.load(*id).await.expect("loads").expect("exists");
            statuses.push(record.state.status);
        }
        if statuses.iter().all(|s| s.is_terminal()) {
            return statuses;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not terminal: {statuses:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Wiring a PostgreSQL participant to a SQLite database is a mistake caught at start-up, not
/// when the first command arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_participant_on_sqlite_is_refused_when_wired() {
    let db = TestDb::sqlite().await;
    let transport = Arc::new(SqlTransport::new(db.database.clone()));
    let wired = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        SagaRuntime::builder(transport).participant(&db.database, registry())
    }));
    let panic = wired.expect_err("refused");
    let message = panic.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(
        message.contains("participant `registry` handles commands in PostgreSQL transactions"),
        "{message}"
    );
    db.cleanup().await;
}
