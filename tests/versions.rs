//! Changing a deployed saga: sagas started on version 1 are in flight when version 2 (a step
//! renamed, a step added, a data field added) is deployed. They finish on the retired
//! version 1 kept beside version 2, or move to version 2 by a declared migration; a build
//! that does neither refuses to start (or parks them, per the setting) and says why. On
//! SQLite and PostgreSQL, through the outbox, the relay and the SQL queue.
//!
//! Also: the migration mapping checks, the registration checks, and payload evolution
//! (added optional fields, unknown fields, a breaking change caught by `decode_stored`).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Parser as _;
use saga_core::engine::{HistoryEvent, OperatorCommand, OperatorRequest, SagaStatus};
use saga_core::orchestrator::{Orchestrator, OrchestratorError};
use saga_core::participant::Participant;
use saga_core::ports::SagaStore;
use saga_core::testing::decode_stored;
use saga_core::versions::{Coverage, Migration, UnknownVersionPolicy, VersionError, VersionRole};
use saga_core::{Command, Reply, SagaId, saga};
use saga_store::{RuntimeOptions, SagaRuntime, SqlSagaStore, SqlTransport, Tx};
use saga_tests::harness::{test_runtime_options, test_transport_options};
use saga_tests::testdb::{Backend, TestDb};
use serde::{Deserialize, Serialize};

const REPLIES: &str = "transfers.replies";

// ----- the two versions ------------------------------------------------------------------

/// Version 1's data.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferDataV1 {
    transfer: i64,
    amount: i64,
}

/// Version 2's data: a field added (optional, so stored version-1 data still decodes).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferData {
    transfer: i64,
    amount: i64,
    /// Set by the fraud check (version 2), or by the migration for instances it moved.
    reference: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Command)]
#[command(channel = "bank", reply = Done)]
struct Hold {
    transfer: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Command)]
#[command(channel = "bank", reply = Done)]
struct Unhold {
    transfer: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Command)]
#[command(channel = "bank", reply = Debited)]
struct Debit {
    transfer: i64,
    amount: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Command)]
#[command(channel = "bank", reply = Checked)]
struct CheckFraud {
    transfer: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Command)]
#[command(channel = "payee", reply = Done)]
struct Credit {
    transfer: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Reply)]
struct Done;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Reply)]
struct Checked {
    reference: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Reply)]
enum Debited {
    #[success]
    Ok,
    #[failure]
    Refused { reason: String },
}

/// Amounts above this are refused by the bank.
const LIMIT: i64 = 100;

trait Amounts {
    fn transfer(&self) -> i64;
    fn amount(&self) -> i64;
}
impl Amounts for TransferDataV1 {
    fn transfer(&self) -> i64 {
        self.transfer
    }
    fn amount(&self) -> i64 {
        self.amount
    }
}
impl Amounts for TransferData {
    fn transfer(&self) -> i64 {
        self.transfer
    }
    fn amount(&self) -> i64 {
        self.amount
    }
}

fn hold<D: Amounts>(d: &D) -> Hold {
    Hold {
        transfer: d.transfer(),
    }
}
fn unhold<D: Amounts>(d: &D) -> Unhold {
    Unhold {
        transfer: d.transfer(),
    }
}
fn debit<D: Amounts>(d: &D) -> Debit {
    Debit {
        transfer: d.transfer(),
        amount: d.amount(),
    }
}
fn credit<D: Amounts>(d: &D) -> Credit {
    Credit {
        transfer: d.transfer(),
    }
}
fn check_fraud(d: &TransferData) -> CheckFraud {
    CheckFraud {
        transfer: d.transfer,
    }
}
fn checked(d: &mut TransferData, reply: &Checked) {
    d.reference = Some(reply.reference.clone());
}

saga! {
    /// Version 1, as it was deployed.
    #[saga(name = "Transfer", version = "1")]
    pub saga TransferV1(TransferDataV1) {
        compensatable hold   { invoke: hold::<TransferDataV1>, compensate: unhold::<TransferDataV1> }
        pivot         debit  { invoke: debit::<TransferDataV1> }
        retriable     credit { invoke: credit::<TransferDataV1> }
    }
}

saga! {
    /// Version 1 kept, retired, beside version 2: it finishes the sagas that started on it.
    #[saga(name = "Transfer", version = "1", retired)]
    pub saga TransferV1Retired(TransferDataV1) {
        compensatable hold   { invoke: hold::<TransferDataV1>, compensate: unhold::<TransferDataV1> }
        pivot         debit  { invoke: debit::<TransferDataV1> }
        retriable     credit { invoke: credit::<TransferDataV1> }
    }
}

saga! {
    /// Version 2 — `hold` renamed `hold_funds`, `check_fraud` added — with version 1 kept.
    #[saga(version = "2", previous(TransferV1Retired))]
    pub saga Transfer(TransferData) {
        compensatable hold_funds  { invoke: hold::<TransferData>, compensate: unhold::<TransferData> }
        compensatable check_fraud { invoke: check_fraud, on_reply: checked }
        pivot         debit       { invoke: debit::<TransferData> }
        retriable     credit      { invoke: credit::<TransferData> }
    }
}

saga! {
    /// Version 2 alone: what a build that dropped version 1 registers.
    #[saga(name = "Transfer", version = "2")]
    pub saga TransferV2Alone(TransferData) {
        compensatable hold_funds  { invoke: hold::<TransferData>, compensate: unhold::<TransferData> }
        compensatable check_fraud { invoke: check_fraud, on_reply: checked }
        pivot         debit       { invoke: debit::<TransferData> }
        retriable     credit      { invoke: credit::<TransferData> }
    }
}

/// Version 1's instances moved onto version 2: `hold` is `hold_funds`, the fraud check they
/// never had is skipped, and their data gets a reference.
fn migration() -> Migration<TransferV1Retired, TransferV2Alone> {
    Migration::new()
        .rename_step("hold", "hold_funds")
        .skip_step("check_fraud")
        .upgrade_data(|old: TransferDataV1| TransferData {
            transfer: old.transfer,
            amount: old.amount,
            reference: Some(format!("migrated-{}", old.transfer)),
        })
}

// ----- participants ------------------------------------------------------------------------

/// What the participants did: `(transfer, action)`, in order.
#[derive(Clone, Debug, Default)]
struct Effects(Arc<Mutex<Vec<(i64, &'static str)>>>);

impl Effects {
    fn record(&self, transfer: i64, action: &'static str) {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push((transfer, action));
    }

    fn of(&self, transfer: i64) -> Vec<&'static str> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .filter(|(t, _)| *t == transfer)
            .map(|(_, action)| *action)
            .collect()
    }
}

fn bank(effects: &Effects) -> Participant<Tx> {
    let (e1, e2, e3, e4) = (
        effects.clone(),
        effects.clone(),
        effects.clone(),
        effects.clone(),
    );
    Participant::new("bank", "bank")
        .handle_fn::<Hold>(move |_, cmd, _| {
            e1.record(cmd.transfer, "hold");
            Ok(Done)
        })
        .handle_fn::<Unhold>(move |_, cmd, _| {
            e2.record(cmd.transfer, "unhold");
            Ok(Done)
        })
        .handle_fn::<Debit>(move |_, cmd, _| {
            if cmd.amount > LIMIT {
                return Ok(Debited::Refused {
                    reason: "over the limit".to_owned(),
                });
            }
            e3.record(cmd.transfer, "debit");
            Ok(Debited::Ok)
        })
        .handle_fn::<CheckFraud>(move |_, cmd, _| {
            e4.record(cmd.transfer, "check_fraud");
            Ok(Checked {
                reference: format!("checked-{}", cmd.transfer),
            })
        })
}

fn payee(effects: &Effects) -> Participant<Tx> {
    let effects = effects.clone();
    Participant::new("payee", "payee").handle_fn::<Credit>(move |_, cmd, _| {
        effects.record(cmd.transfer, "credit");
        Ok(Done)
    })
}

// ----- the deployment ----------------------------------------------------------------------

type Shared = Arc<Orchestrator<SqlSagaStore>>;

async fn runtime(
    db: &TestDb,
    orchestrator: &Shared,
    participants: Vec<Participant<Tx>>,
    options: RuntimeOptions,
) -> Result<SagaRuntime, saga_store::StartError> {
    let transport = SqlTransport::with_options(db.database.clone(), test_transport_options());
    let mut builder = SagaRuntime::builder(Arc::new(transport))
        .options(options)
        .orchestrator(orchestrator.clone());
    for participant in participants {
        builder = builder.participant(&db.database, participant);
    }
    builder.start().await
}

fn orchestrator_on(
    db: &TestDb,
    build: impl FnOnce(Orchestrator<SqlSagaStore>) -> Orchestrator<SqlSagaStore>,
) -> Shared {
    let store = Arc::new(SqlSagaStore::new(db.database.clone()));
    Arc::new(build(Orchestrator::new(store, REPLIES)))
}

async fn wait_until(
    orchestrator: &Shared,
    ids: &[SagaId],
    what: &str,
    done: impl Fn(&saga_core::ports::SagaRecord) -> bool,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let mut all = true;
        for id in ids {
            let record = orchestrator.load(*id).await.expect("loads");
            all &= done(&record);
        }
        if all {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "sagas not {what} after 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Version 1 deployed: transfers 1 and 2 run to `credit` (nobody credits yet) and wait
/// there, transfer 3 is refused and compensated; then version 1 stops, and transfers 4 and 5
/// start with no workers (they wait at `hold`). Returns the ids in transfer order.
async fn deploy_version_1(db: &TestDb, effects: &Effects) -> Vec<SagaId> {
    let v1 = orchestrator_on(db, |o| o.register::<TransferV1>());
    let workers = runtime(db, &v1, vec![bank(effects)], test_runtime_options())
        .await
        .expect("version 1 starts");
    let mut ids = Vec::new();
    for (transfer, amount) in [(1, 10), (2, 20), (3, 500)] {
        let data = TransferDataV1 { transfer, amount };
        ids.push(v1.start::<TransferV1>(data).await.expect("starts"));
    }
    wait_until(&v1, &ids[..2], "at credit", |r| {
        r.state.current_step.as_deref() == Some("credit")
    })
    .await;
    v1.wait(ids[2], Duration::from_secs(30))
        .await
        .expect("finishes");
    workers.shutdown().await;
    for transfer in [4, 5] {
        let data = TransferDataV1 {
            transfer,
            amount: 30,
        };
        ids.push(v1.start::<TransferV1>(data).await.expect("starts"));
    }
    for id in &ids {
        let record = v1.load(*id).await.expect("loads");
        assert_eq!(record.state.definition_version, "1");
    }
    assert_eq!(
        v1.load(ids[2]).await.expect("loads").state.status,
        SagaStatus::Compensated
    );
    ids
}

/// `saga <args>` on `db`, as the binary runs it: exit code, stdout, stderr.
async fn saga_cli(db: &TestDb, args: &[&str]) -> (u8, String, String) {
    let mut argv = vec![
        "saga".to_owned(),
        "--database-url".to_owned(),
        db.url.clone(),
    ];
    if let Some(schema) = &db.schema {
        argv.extend(["--schema".to_owned(), schema.clone()]);
    }
    argv.extend(args.iter().map(|a| (*a).to_owned()));
    let cli = saga_ops::cli::Cli::try_parse_from(&argv).expect("parses");
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = saga_ops::cli::run(cli, &mut out, &mut err)
        .await
        .expect("runs");
    let text = |bytes: Vec<u8>| String::from_utf8(bytes).expect("utf-8");
    (code, text(out), text(err))
}

/// The row of `saga versions` for `version` of Transfer, its cells split on blanks.
fn versions_row(table: &str, version: &str) -> Vec<String> {
    table
        .lines()
        .map(|line| {
            line.split_whitespace()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .find(|cells| cells.first().map(String::as_str) == Some("Transfer") && cells[1] == version)
        .unwrap_or_else(|| panic!("no row for version {version} in:\n{table}"))
}

async fn timeline(orchestrator: &Shared, id: SagaId) -> Vec<HistoryEvent> {
    orchestrator
        .store()
        .history(id)
        .await
        .expect("history")
        .into_iter()
        .map(|h| h.event)
        .collect()
}

async fn finish(orchestrator: &Shared, ids: &[SagaId]) {
    for id in ids {
        let record = orchestrator
            .wait(*id, Duration::from_secs(30))
            .await
            .expect("finishes");
        assert_eq!(
            record.state.status,
            SagaStatus::Completed,
            "{id}: {record:?}"
        );
    }
}

/// Version 2 deployed with version 1 kept, retired: the version-1 sagas finish on version
/// 1's graph (no fraud check, their step still `hold`), new sagas start on version 2.
async fn retired_version_finishes_its_sagas(backend: Backend) {
    let Some(db) = TestDb::open(backend, "retired_version_finishes_its_sagas").await else {
        return;
    };
    let effects = Effects::default();
    let ids = deploy_version_1(&db, &effects).await;

    let v2 = orchestrator_on(&db, |o| o.register::<Transfer>());
    let report = v2.check_versions().await.expect("checks");
    assert_eq!(report.versions.len(), 1, "{report:?}");
    let (in_flight, coverage) = &report.versions[0];
    assert_eq!(
        (
            in_flight.version.as_str(),
            in_flight.running,
            in_flight.parked
        ),
        ("1", 4, 0)
    );
    assert_eq!(*coverage, Coverage::Registered(VersionRole::Retired));
    let workers = runtime(
        &db,
        &v2,
        vec![bank(&effects), payee(&effects)],
        test_runtime_options(),
    )
    .await
    .expect("version 2 starts");
    let new = v2
        .start::<Transfer>(TransferData {
            transfer: 6,
            amount: 40,
            reference: None,
        })
        .await
        .expect("starts on version 2");
    let refused = v2
        .start::<TransferV1Retired>(TransferDataV1 {
            transfer: 7,
            amount: 1,
        })
        .await;
    assert!(
        matches!(refused, Err(OrchestratorError::NotCurrent { .. })),
        "{refused:?}"
    );

    let old: Vec<SagaId> = [0, 1, 3, 4].map(|i| ids[i]).to_vec();
    finish(&v2, &old).await;
    finish(&v2, &[new]).await;
    workers.shutdown().await;

    for (id, transfer) in old.iter().zip([1, 2, 4, 5]) {
        let record = v2.load(*id).await.expect("loads");
        assert_eq!(record.state.definition_version, "1");
        assert_eq!(record.state.completed_steps, ["hold", "debit", "credit"]);
        let history = timeline(&v2, *id).await;
        assert!(
            !history
                .iter()
                .any(|e| matches!(e, HistoryEvent::Migrated { .. })),
            "{history:?}"
        );
        assert_eq!(effects.of(transfer), ["hold", "debit", "credit"]);
    }
    let record = v2.load(new).await.expect("loads");
    assert_eq!(record.state.definition_version, "2");
    assert_eq!(record.data["reference"], "checked-6");
    assert_eq!(effects.of(6), ["hold", "check_fraud", "debit", "credit"]);
    // The versions the orchestrator recorded for tools, with what each is for.
    let recorded: BTreeMap<String, VersionRole> = v2
        .store()
        .definitions()
        .await
        .expect("lists")
        .into_iter()
        .map(|d| (d.version, d.role))
        .collect();
    assert_eq!(recorded.get("2"), Some(&VersionRole::Current));
    assert_eq!(recorded.get("1"), Some(&VersionRole::Retired));
    let (code, table, _) = saga_cli(&db, &["versions", "--check"]).await;
    assert_eq!(code, 0, "{table}");
    assert_eq!(versions_row(&table, "1")[2..], ["0", "0", "retired"]);
    assert_eq!(versions_row(&table, "2")[2..], ["0", "0", "current"]);
    db.cleanup().await;
}

/// Version 2 deployed with a migration from version 1: the version-1 sagas move to version 2
/// at their next event (a `migrated` entry in their timeline), skip the fraud check they
/// never had, and get their data upgraded — wherever they were: waiting at `hold` or at
/// `credit`, past the pivot.
async fn migration_moves_sagas_to_the_new_version(backend: Backend) {
    let Some(db) = TestDb::open(backend, "migration_moves_sagas_to_the_new_version").await else {
        return;
    };
    let effects = Effects::default();
    let ids = deploy_version_1(&db, &effects).await;

    let v2 = orchestrator_on(&db, |o| {
        o.register::<TransferV2Alone>()
            .migrate(migration())
            .expect("the mapping is complete")
    });
    let report = v2.check_versions().await.expect("checks");
    assert_eq!(
        report.versions[0].1,
        Coverage::Registered(VersionRole::MigratedTo("2".to_owned()))
    );
    let workers = runtime(
        &db,
        &v2,
        vec![bank(&effects), payee(&effects)],
        test_runtime_options(),
    )
    .await
    .expect("version 2 starts");
    let old: Vec<SagaId> = [0, 1, 3, 4].map(|i| ids[i]).to_vec();
    finish(&v2, &old).await;
    workers.shutdown().await;

    for (id, transfer) in old.iter().zip([1, 2, 4, 5]) {
        let record = v2.load(*id).await.expect("loads");
        assert_eq!(record.state.definition_version, "2");
        assert_eq!(
            record.state.completed_steps,
            ["hold_funds", "debit", "credit"]
        );
        assert_eq!(record.data["reference"], format!("migrated-{transfer}"));
        let history = timeline(&v2, *id).await;
        let migrated = HistoryEvent::Migrated {
            from: "1".to_owned(),
            to: "2".to_owned(),
        };
        assert_eq!(
            history.iter().filter(|e| **e == migrated).count(),
            1,
            "{history:?}"
        );
        if transfer >= 4 {
            // Migrated while waiting at `hold`: the fraud check came after and was skipped.
            assert!(
                history.contains(&HistoryEvent::StepSkipped {
                    step: "check_fraud".to_owned()
                }),
                "{history:?}"
            );
        }
        assert_eq!(effects.of(transfer), ["hold", "debit", "credit"]);
    }
    // The compensated saga is finished: nothing migrates it.
    assert_eq!(
        v2.load(ids[2])
            .await
            .expect("loads")
            .state
            .definition_version,
        "1"
    );
    db.cleanup().await;
}

/// A build with neither version 1 nor a migration refuses to start, naming the type, the
/// version, the count and the fix; with `Park` it starts and parks them with the reason,
/// and once a build with the migration runs, an operator retry finishes them.
async fn unknown_version_is_refused_or_parked(backend: Backend) {
    let Some(db) = TestDb::open(backend, "unknown_version_is_refused_or_parked").await else {
        return;
    };
    let effects = Effects::default();
    let ids = deploy_version_1(&db, &effects).await;

    let alone = orchestrator_on(&db, |o| o.register::<TransferV2Alone>());
    let (code, table, _) = saga_cli(&db, &["versions"]).await;
    assert_eq!(code, 0, "{table}");
    assert_eq!(versions_row(&table, "1")[2..], ["4", "0", "current"]);
    let refused = runtime(&db, &alone, vec![bank(&effects)], test_runtime_options()).await;
    let error = refused
        .expect_err("version 2 alone refuses to start")
        .to_string();
    for expected in [
        "4 sagas of type `Transfer` in flight (4 running, 0 parked)",
        "definition version `1`, which this build does not register",
        "retired",
        "Migration",
        "unknown_versions = Park",
    ] {
        assert!(error.contains(expected), "`{expected}` not in: {error}");
    }

    let park = RuntimeOptions {
        unknown_versions: UnknownVersionPolicy::Park,
        ..test_runtime_options()
    };
    let workers = runtime(&db, &alone, vec![bank(&effects), payee(&effects)], park)
        .await
        .expect("parks and starts");
    let old: Vec<SagaId> = [0, 1, 3, 4].map(|i| ids[i]).to_vec();
    for id in &old {
        let record = alone.load(*id).await.expect("loads");
        assert_eq!(record.state.status, SagaStatus::Failed);
        let reason = record.state.last_error.unwrap_or_default();
        assert!(
            reason.contains("definition version `1` of `Transfer` is not registered"),
            "{reason}"
        );
    }
    workers.shutdown().await;
    // Version 2 alone has started: version 1 is stranded, and `--check` says so.
    let (code, table, stranded) = saga_cli(&db, &["versions", "--check"]).await;
    assert_eq!(code, 1, "{table}");
    assert_eq!(versions_row(&table, "1")[2..5], ["0", "4", "not"]);
    assert!(
        stranded.contains("stranded: 4 sagas of `Transfer` on version `1`"),
        "{stranded}"
    );
    // Parked, they still need version 1: the default refuses again.
    let again = runtime(&db, &alone, Vec::new(), test_runtime_options()).await;
    assert!(again.is_err(), "{again:?}");

    let fixed = orchestrator_on(&db, |o| {
        o.register::<TransferV2Alone>()
            .migrate(migration())
            .expect("the mapping is complete")
    });
    let workers = runtime(
        &db,
        &fixed,
        vec![bank(&effects), payee(&effects)],
        test_runtime_options(),
    )
    .await
    .expect("the fixed build starts");
    for id in &old {
        let request = OperatorRequest::new(OperatorCommand::Retry, "test", "version 1 is back");
        fixed.operator(*id, request).await.expect("retried");
    }
    finish(&fixed, &old).await;
    workers.shutdown().await;
    db.cleanup().await;
}

macro_rules! on_both_backends {
    ($($test:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(super::Backend::Sqlite).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(super::Backend::Postgres).await;
                }
            )*
        }
    };
}

on_both_backends!(
    retired_version_finishes_its_sagas,
    migration_moves_sagas_to_the_new_version,
    unknown_version_is_refused_or_parked,
);

// ----- registration checks -----------------------------------------------------------------

saga! {
    #[saga(name = "Transfer", version = "3")]
    pub saga TransferDroppedHold(TransferData) {
        compensatable check_fraud { invoke: check_fraud, on_reply: checked }
        pivot         debit       { invoke: debit::<TransferData> }
        retriable     credit      { invoke: credit::<TransferData> }
    }
}

saga! {
    #[saga(name = "Transfer", version = "4")]
    pub saga TransferReordered(TransferData) {
        compensatable check_fraud { invoke: check_fraud, on_reply: checked }
        compensatable hold_funds  { invoke: hold::<TransferData>, compensate: unhold::<TransferData> }
        pivot         debit       { invoke: debit::<TransferData> }
        retriable     credit      { invoke: credit::<TransferData> }
    }
}

saga! {
    #[saga(name = "Transfer", version = "5")]
    pub saga TransferHoldUncompensated(TransferData) {
        compensatable hold   { invoke: hold::<TransferData> }
        pivot         debit  { invoke: debit::<TransferData> }
        retriable     credit { invoke: credit::<TransferData> }
    }
}

fn memory_orchestrator() -> Orchestrator<saga_core::memory::InMemoryStore> {
    Orchestrator::new(
        Arc::new(saga_core::memory::InMemoryStore::default()),
        REPLIES,
    )
}

#[test]
fn a_migration_that_would_strand_an_instance_is_refused_when_registered() {
    let register =
        |build: fn(
            Orchestrator<saga_core::memory::InMemoryStore>,
        )
            -> Result<Orchestrator<saga_core::memory::InMemoryStore>, VersionError>| {
            build(memory_orchestrator())
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
    // Version 3 dropped `hold`: an instance past it could not be compensated.
    let dropped = register(|o| {
        o.register::<TransferDroppedHold>()
            .migrate(Migration::<TransferV1Retired, TransferDroppedHold>::new())
    });
    assert!(
        dropped.contains("step `hold` of saga `Transfer` version `1` has no step in version `3`"),
        "{dropped}"
    );
    assert!(
        dropped.contains("rename_step(\"hold\", \"…\")"),
        "{dropped}"
    );
    // Renamed to a step that does not exist.
    let missing = register(|o| {
        o.register::<Transfer>().migrate(
            Migration::<TransferV1Retired, TransferV2Alone>::new().rename_step("hold", "hold_it"),
        )
    });
    assert!(missing.contains("names step `hold_it`"), "{missing}");
    // In another order: compensations would run in the wrong order.
    let reordered = register(|o| {
        o.register::<TransferReordered>()
            .migrate(Migration::<TransferV2Alone, TransferReordered>::new())
    });
    assert!(
        reordered.contains(
            "steps `hold_funds` and `check_fraud` of saga `Transfer` are in the other order"
        ),
        "{reordered}"
    );
    // `hold` lost its compensation.
    let uncompensated = register(|o| {
        o.register::<TransferHoldUncompensated>()
            .migrate(Migration::<TransferV1Retired, TransferHoldUncompensated>::new())
    });
    assert!(
        uncompensated.contains(
            "(compensatable, compensated) of saga `Transfer` maps to `hold` (compensatable)"
        ),
        "{uncompensated}"
    );
    // Skipping a step old instances have.
    let skip_mapped = register(|o| {
        o.register::<TransferV2Alone>().migrate(
            Migration::<TransferV1Retired, TransferV2Alone>::new()
                .rename_step("hold", "hold_funds")
                .skip_step("hold_funds"),
        )
    });
    assert!(
        skip_mapped.contains("both skipped and the counterpart"),
        "{skip_mapped}"
    );
    // To a version not registered.
    let unregistered = register(|o| o.migrate(migration()));
    assert!(
        unregistered.contains("which is not registered"),
        "{unregistered}"
    );
    // A version both kept and migrated.
    let twice = register(|o| o.register::<Transfer>().migrate(migration()));
    assert!(twice.contains("already registered"), "{twice}");
}

#[tokio::test]
async fn contradicting_registrations_are_reported_before_start() {
    // Two current versions of one type.
    let two = memory_orchestrator()
        .register::<TransferV1>()
        .register::<TransferV2Alone>();
    let error = two
        .check_versions()
        .await
        .expect_err("two current versions");
    assert!(
        error
            .to_string()
            .contains("saga `Transfer` has two current versions, `1` and `2`"),
        "{error}"
    );
    // Two definitions claiming one version (the compile-time check covers `previous(..)`;
    // this is two separate registrations).
    let same = memory_orchestrator()
        .register::<TransferV2Alone>()
        .register::<Transfer>();
    let error = same.check_versions().await.expect_err("one version twice");
    assert!(
        error
            .to_string()
            .contains("are both version `2` of saga `Transfer`"),
        "{error}"
    );
}

// ----- payload evolution -------------------------------------------------------------------

/// Saga data and messages as version 1 stored them, decoded by version 2's types: an added
/// optional field is `None`, an unknown field (written by a newer sender) is ignored.
#[test]
fn stored_version_1_payloads_decode_as_version_2() {
    let data: TransferData = decode_stored(include_str!("fixtures/versions/transfer_data_v1.json"))
        .expect("version-1 data decodes");
    assert_eq!(data.reference, None);
    let from_newer: Hold = decode_stored(r#"{"transfer": 9, "priority": "high"}"#)
        .expect("an unknown field is ignored");
    assert_eq!(from_newer, Hold { transfer: 9 });
    let reply: Checked = decode_stored(include_str!("fixtures/versions/checked_reply_v1.json"))
        .expect("a stored reply decodes");
    assert_eq!(reply.reference, "checked-1");
}

/// A breaking change — a field renamed, or a required field added — is caught by decoding
/// the stored samples of the previous version, with the field named.
#[test]
fn a_breaking_change_is_caught_by_decoding_stored_samples() {
    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Renamed {
        transfer_id: i64,
        amount: i64,
    }
    let error = decode_stored::<Renamed>(include_str!("fixtures/versions/transfer_data_v1.json"))
        .expect_err("a renamed field breaks version-1 data");
    let text = error.to_string();
    assert!(text.contains("missing field `transfer_id`"), "{text}");
    assert!(text.contains("Renamed"), "{text}");
    assert!(text.contains("#[serde(default)]"), "{text}");
}
