//! Liveness on the durable store: whatever breaks, every saga finishes or parks with a reason,
//! and nothing blocks a channel. Run on SQLite and PostgreSQL, each with leased consumers and
//! with in-place handling (the relay and lease tests need the relay, so they run leased
//! only). PostgreSQL runs need `SAGA_TEST_POSTGRES_URL`.

use std::sync::Arc;
use std::time::Duration;

use saga_core::engine::HistoryEvent;
use saga_core::message::headers;
use saga_core::orchestrator::WatchdogAction;
use saga_core::ports::{DeadLetter, SagaStore, Transport, UnitOfWork};
use saga_core::{Headers, Message, SagaId, SagaStatus, Timestamp};
use saga_core::{OperatorCommand, OperatorRequest};
use saga_store::{DeadLetterError, Resolution, RuntimeOptions, SqlTransportOptions, on_backend};
use saga_tests::faults::{self, Refusing};
use saga_tests::harness::{Layout, PaymentSystem, test_runtime_options};
use saga_tests::payment::{LEDGER, Ledger};
use saga_tests::testdb::{Backend, TestDb, execute};
use sqlx::query_scalar;

const WAIT: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Debug)]
struct Mode {
    backend: Backend,
    layout: Layout,
}

async fn system_on(db: TestDb, mode: Mode) -> PaymentSystem {
    PaymentSystem::on(db, mode.layout).await
}

/// Payments 1..=n: every fourth over the limit (compensated), the rest completed.
fn payments(n: i64) -> Vec<(i64, i64)> {
    (1..=n)
        .map(|p| (p, if p % 4 == 0 { 500 } else { 20 + p % 50 }))
        .collect()
}

async fn wait_for_effects(system: &PaymentSystem, at_least: i64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while system.effects().await.values().sum::<i64>() < at_least {
        assert!(tokio::time::Instant::now() < deadline, "no progress");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn saga_record(system: &PaymentSystem, id: SagaId) -> saga_core::ports::SagaRecord {
    system.store.load(id).await.expect("loads").expect("exists")
}

/// The database refuses every write for 8 s — with the tests' 500 ms backoff cap, many more
/// redeliveries than the transport's 10-delivery poison limit — and still every saga ends as
/// it would have, with one effect per step and nothing dead-lettered.
async fn an_outage_longer_than_the_poison_budget_strands_no_saga(mode: Mode) {
    let Some(db) = TestDb::open(mode.backend, "outage").await else {
        return;
    };
    let system = system_on(faults::impatient(&db).await, mode).await;
    let ids = system.start(&payments(48)).await;
    // Small transactions, so that the outage finds sagas mid-flight: in place, a pass with
    // its chained passes would otherwise run all 48 sagas in one transaction.
    let runtime = system
        .run_with(
            Arc::new(system.sql_transport()),
            Ledger {
                delay: Duration::from_millis(5),
            },
            RuntimeOptions {
                batch_size: 2,
                chained_passes: 1,
                ..test_runtime_options()
            },
        )
        .await;
    wait_for_effects(&system, 12).await;
    let unfinished = system
        .statuses(&ids)
        .await
        .iter()
        .filter(|s| !s.is_terminal())
        .count();
    assert!(unfinished > 0, "the outage came too late to prove anything");
    faults::refuse_writes_for(&db, Duration::from_secs(8)).await;
    system.wait_terminal(&ids, WAIT).await;
    runtime.shutdown().await;
    system.assert_effects_consistent(&ids).await;
    let dead = system.dead_letters().await;
    assert!(dead.is_empty(), "nothing is dead-lettered: {dead:#?}");
    if let Some(queue) = system.queue {
        queue.cleanup().await;
    }
    db.cleanup().await;
}

/// Several consumers of each channel at once (`channel_consumers`; in place, passes taking
/// one message each; leased, consumers taking two) while the handlers take their time:
/// every saga still ends as it would have, with one effect per step.
async fn consumers_share_a_channel_and_apply_each_message_once(mode: Mode) {
    let Some(db) = TestDb::open(mode.backend, "channel_consumers").await else {
        return;
    };
    let system = system_on(db, mode).await;
    let ids = system.start(&payments(48)).await;
    let runtime = system
        .run_with(
            Arc::new(system.sql_transport()),
            Ledger {
                delay: Duration::from_millis(2),
            },
            RuntimeOptions {
                channel_consumers: Some(4),
                pass_batch: Some(1),
                batch_size: 2,
                chained_passes: 0,
                ..test_runtime_options()
            },
        )
        .await;
    system.wait_terminal(&ids, WAIT).await;
    runtime.shutdown().await;
    system.assert_effects_consistent(&ids).await;
    assert_eq!(system.count_in(&ids, SagaStatus::Compensated).await, 12);
    system.cleanup().await;
}

/// The transport refuses one saga's `Charge` for good: the relay sets exactly that message
/// aside, the saga hears of it and compensates, and every other message flows.
async fn a_command_the_transport_refuses_fails_its_step_and_blocks_nothing(mode: Mode) {
    let Some(db) = TestDb::open(mode.backend, "refused").await else {
        return;
    };
    let system = system_on(db, mode).await;
    let ids = system.start(&payments(12)).await;
    let transport = Refusing {
        inner: system.sql_transport(),
        refuse: |m| {
            m.headers.get(headers::MESSAGE_TYPE) == Some("Charge")
                && m.payload.contains(r#""payment":6,"#)
        },
    };
    system.run_to_end(Arc::new(transport), &ids).await;
    let refused = saga_record(&system, ids[5]).await;
    assert_eq!(refused.state.status, SagaStatus::Compensated);
    let reason = refused.state.compensation_reason.unwrap_or_default();
    assert!(reason.contains("refused by the test"), "{reason}");
    assert_eq!(
        system.count_in(&ids, SagaStatus::Compensated).await,
        4,
        "payments 4, 8, 12 over the limit, and 6"
    );
    let dead = system.dead_letters().await;
    assert_eq!(dead.len(), 1, "{dead:#?}");
    assert_eq!(dead[0].consumer, "outbox-relay");
    assert_eq!(
        dead[0].message.headers.get(headers::MESSAGE_TYPE),
        Some("Charge")
    );
    system.cleanup().await;
}

/// Commands whose `reply-to` is not a channel name are dead-lettered by the participant with
/// no reply queued anywhere, and the sagas around them finish.
async fn a_bad_reply_to_is_dead_lettered_and_blocks_nothing(mode: Mode) {
    let Some(db) = TestDb::open(mode.backend, "bad_reply_to").await else {
        return;
    };
    let system = system_on(db, mode).await;
    let strays = [
        faults::stray_command(Some("bad channel")),
        faults::stray_command(Some("a..b")),
    ];
    system
        .sql_transport()
        .publish(&strays)
        .await
        .expect("publishes");
    let ids = system.start(&payments(8)).await;
    system
        .run_to_end(Arc::new(system.sql_transport()), &ids)
        .await;
    let dead = system.dead_letters().await;
    assert_eq!(dead.len(), 2, "{dead:#?}");
    for letter in &dead {
        assert_eq!(letter.consumer, "ledger");
        assert!(
            letter.reason.contains("invalid header `reply-to`"),
            "{}",
            letter.reason
        );
    }
    let misaddressed = system
        .scalar(&format!(
            "SELECT (SELECT COUNT(*) FROM {} WHERE channel IN ('bad channel', 'a..b')) \
                 + (SELECT COUNT(*) FROM saga_outbox WHERE destination IN ('bad channel', 'a..b')) \
                 AS n",
            system.queue_table()
        ))
        .await;
    assert_eq!(
        misaddressed, 0,
        "no reply was queued to a name that is not a channel"
    );
    system.cleanup().await;
}

/// A command delivered past the poison limit without ever being answered is dead-lettered
/// by the transport — and its saga is told, so it compensates instead of waiting.
async fn a_poison_command_tells_its_saga(mode: Mode) {
    let Some(db) = TestDb::open(mode.backend, "poison_tells").await else {
        return;
    };
    let mut system = system_on(db, mode).await;
    system.transport_options = SqlTransportOptions {
        lease: Duration::from_millis(200),
        max_deliveries: 2,
        poll_interval: Duration::from_millis(50),
        ..SqlTransportOptions::default()
    };
    let ids = system.start(&[(1, 20)]).await;
    let transport = system.sql_transport();
    saga_core::relay::relay_batch(&system.store, &transport, 10)
        .await
        .expect("relays the first command");
    // Two consumers take it and die before answering.
    for _ in 0..2 {
        let taken = transport
            .receive(LEDGER, "ledger", 1, Duration::from_secs(2))
            .await
            .expect("receives");
        assert_eq!(taken.len(), 1);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let runtime = system.run(Arc::new(transport), Ledger::default()).await;
    system.wait_terminal(&ids, WAIT).await;
    runtime.shutdown().await;
    let record = saga_record(&system, ids[0]).await;
    assert_eq!(record.state.status, SagaStatus::Compensated);
    let reason = record.state.compensation_reason.unwrap_or_default();
    assert!(reason.contains("delivered 2 times"), "{reason}");
    assert!(
        system.effects().await.is_empty(),
        "the poison command never ran"
    );
    system.cleanup().await;
}

/// A message the participant can never record (a constraint refuses it) is tried a few
/// times, then set aside with the reason; its saga compensates and the rest complete.
async fn a_message_that_always_fails_is_set_aside_and_its_saga_told(mode: Mode) {
    let Some(db) = TestDb::open(mode.backend, "always_fails").await else {
        return;
    };
    let system = system_on(db, mode).await;
    let ids = system.start(&payments(6)).await;
    let find = format!(
        "SELECT CAST(message_id AS TEXT) FROM {} \
         WHERE payload LIKE '%\"payment\":2,%' AND CAST(headers AS TEXT) LIKE '%Reserve%'",
        system.sent_table()
    );
    let mut conn = system.db.database.acquire().await.expect("connects");
    let id: String = on_backend!(conn.conn(), |c| {
        query_scalar(sqlx::AssertSqlSafe(find.as_str()))
            .fetch_one(c)
            .await
    })
    .expect("payment 2's first command");
    drop(conn);
    faults::refuse_message(&system.db, id.parse().expect("a message id")).await;
    let runtime = system
        .run(Arc::new(system.sql_transport()), Ledger::default())
        .await;
    system.wait_terminal(&ids, WAIT).await;
    runtime.shutdown().await;
    let record = saga_record(&system, ids[1]).await;
    assert_eq!(record.state.status, SagaStatus::Compensated);
    let reason = record.state.compensation_reason.unwrap_or_default();
    assert!(reason.contains("failed 5 times in a row"), "{reason}");
    let dead = system.dead_letters().await;
    assert_eq!(dead.len(), 1, "{dead:#?}");
    assert_eq!(dead[0].message.id.to_string(), id);
    assert_eq!(system.count_in(&ids, SagaStatus::Completed).await, 4);
    system.cleanup().await;
}

/// A saga that lost its command and its timer is found by the watchdog and parked with the
/// reason; an operator's retry sends the step again and the saga completes.
async fn a_stuck_saga_is_parked_by_the_watchdog_and_an_operator_moves_it_on(mode: Mode) {
    let Some(db) = TestDb::open(mode.backend, "watchdog").await else {
        return;
    };
    let system = system_on(db, mode).await;
    let ids = system.start(&[(1, 20)]).await;
    // Its first command is lost, and so is its deadline: nothing would ever move it.
    let database = &system.db.database;
    execute(database, &format!("DELETE FROM {}", system.sent_table()))
        .await
        .expect("loses the command");
    execute(
        database,
        "UPDATE saga_instances SET deadline = NULL, updated_at = 0",
    )
    .await
    .expect("loses the deadline");
    let stalled = system
        .store
        .stalled(Timestamp::now(), Duration::from_secs(1), 10)
        .await
        .expect("reads");
    assert_eq!(stalled.len(), 1);
    assert_eq!(stalled[0].saga_id, ids[0]);
    assert_eq!(stalled[0].current_step.as_deref(), Some("reserve"));
    // Operators see the same in SQL.
    assert_eq!(
        system
            .scalar("SELECT COUNT(*) AS n FROM saga_stalled WHERE idle_ms > 60000")
            .await,
        1
    );
    let report = system
        .orchestrator
        .watchdog(Duration::from_secs(1), WatchdogAction::Park, 10)
        .await
        .expect("watches");
    assert_eq!(report.parked, ids);
    let parked = saga_record(&system, ids[0]).await;
    assert_eq!(parked.state.status, SagaStatus::Failed);
    let reason = parked.state.last_error.clone().unwrap_or_default();
    assert!(
        reason.contains("stuck") && reason.contains("no deadline"),
        "{reason}"
    );
    let history = system.store.history(ids[0]).await.expect("history");
    assert!(matches!(
        history.last().map(|h| &h.event),
        Some(HistoryEvent::Parked { step, .. }) if step == "reserve"
    ));
    // A second pass finds nothing: parked sagas are not stuck.
    let again = system
        .orchestrator
        .watchdog(Duration::from_secs(1), WatchdogAction::Park, 10)
        .await
        .expect("watches");
    assert!(again.stalled.is_empty());

    let status = system
        .orchestrator
        .operator(
            ids[0],
            OperatorRequest::new(OperatorCommand::Retry, "ops", "the ledger is back"),
        )
        .await
        .expect("retries");
    assert_eq!(status, SagaStatus::Running);
    system
        .run_to_end(Arc::new(system.sql_transport()), &ids)
        .await;
    assert_eq!(system.statuses(&ids).await, [SagaStatus::Completed]);
    system.cleanup().await;
}

/// A dead letter can be put back on its channel once — as a new message the consumer
/// handles — or discarded with a reason; either is recorded.
async fn a_dead_letter_is_replayed_once_or_discarded(mode: Mode) {
    let Some(db) = TestDb::open(mode.backend, "replay").await else {
        return;
    };
    let system = system_on(db, mode).await;
    // Two one-way Reserve commands the ledger once could not take (say, before a deploy).
    let saga = SagaId::new();
    let letter = |payment: i64| DeadLetter {
        consumer: "ledger".to_owned(),
        message: Message::new(
            LEDGER,
            Headers::new()
                .with(headers::MESSAGE_TYPE, "Reserve")
                .with(headers::SAGA_ID, saga),
            format!(r#"{{"payment":{payment},"amount":1}}"#),
        ),
        reason: "participant `ledger` has no handler for command type `Reserve`".to_owned(),
        at: Timestamp::now(),
    };
    let (first, second) = (letter(1), letter(2));
    let unit = UnitOfWork {
        dead_letters: vec![first.clone(), second],
        ..UnitOfWork::default()
    };
    system.store.commit(unit).await.expect("commits");
    let stored = system
        .store
        .stored_dead_letters(0, 10, true)
        .await
        .expect("lists");
    assert_eq!(stored.len(), 2);
    let (a, b) = (stored[0].id, stored[1].id);

    let replayed = system
        .store
        .replay_dead_letter(a, "ops", "the handler is deployed now")
        .await
        .expect("replays");
    assert_ne!(replayed, first.message.id, "a new message id");
    let again = system.store.replay_dead_letter(a, "ops", "twice").await;
    assert!(
        matches!(
            again,
            Err(DeadLetterError::Resolved {
                what: "replayed",
                ..
            })
        ),
        "{again:?}"
    );
    system
        .store
        .discard_dead_letter(b, "ops", "not needed any more")
        .await
        .expect("discards");
    assert!(matches!(
        system.store.discard_dead_letter(b, "ops", "again").await,
        Err(DeadLetterError::Resolved { .. })
    ));
    assert!(matches!(
        system
            .store
            .replay_dead_letter(999_999, "ops", "none")
            .await,
        Err(DeadLetterError::NotFound(999_999))
    ));

    let runtime = system
        .run(Arc::new(system.sql_transport()), Ledger::default())
        .await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while !system
        .effects()
        .await
        .contains_key(&(saga.to_string(), "reserve".to_owned()))
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the replay was not handled"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    runtime.shutdown().await;
    assert_eq!(system.effects().await.len(), 1, "only the replayed one ran");
    let all = system
        .store
        .stored_dead_letters(0, 10, false)
        .await
        .expect("lists");
    assert!(matches!(
        &all[0].resolution,
        Some(Resolution::Replayed { message_id, reason, .. })
            if *message_id == replayed && reason == "the handler is deployed now"
    ));
    assert!(matches!(
        &all[1].resolution,
        Some(Resolution::Discarded { reason, .. }) if reason == "not needed any more"
    ));
    let unresolved = system
        .store
        .stored_dead_letters(0, 10, true)
        .await
        .expect("lists");
    assert!(unresolved.is_empty());
    system.cleanup().await;
}

/// Messages waiting on a channel nobody consumes are reported.
async fn a_channel_nobody_consumes_is_reported(mode: Mode) {
    let Some(db) = TestDb::open(mode.backend, "unconsumed").await else {
        return;
    };
    let system = system_on(db, mode).await;
    let transport = system.sql_transport();
    let orphan = Message::new("nobody.listens", Headers::new(), "{}".to_owned());
    transport.publish(&[orphan]).await.expect("publishes");
    tokio::time::sleep(Duration::from_millis(30)).await;
    let backlog = transport
        .unconsumed(Duration::from_millis(10))
        .await
        .expect("reads");
    assert_eq!(backlog.len(), 1, "{backlog:?}");
    assert_eq!(backlog[0].channel, "nobody.listens");
    assert_eq!(backlog[0].messages, 1);
    let none = transport
        .unconsumed(Duration::from_secs(60))
        .await
        .expect("reads");
    assert!(none.is_empty(), "younger than the threshold: {none:?}");
    system.cleanup().await;
}

/// PostgreSQL, leased: two processes relay one database's outbox. The one holding the relay's
/// lease is frozen (SIGSTOP) — it neither dies nor lets go — and the other takes over once the
/// lease expires, so every saga finishes while it is frozen; when it wakes, it finds its lease
/// gone and nothing happens twice.
async fn a_frozen_relay_is_replaced_within_its_lease(mode: Mode) {
    let Some(db) = TestDb::open(mode.backend, "frozen_relay").await else {
        return;
    };
    let system = system_on(db, mode).await;
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_saga-test-worker"));
    command.args(["--url", &system.db.url, "--relay-lease-ms", "1500"]);
    if let Some(schema) = &system.db.schema {
        command.args(["--schema", schema]);
    }
    let mut child = command.kill_on_drop(true).spawn().expect("worker starts");
    let pid = child.id().expect("a pid").to_string();
    let deadline = tokio::time::Instant::now() + WAIT;
    while system.count("saga_leases").await == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the worker never took the lease"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let holder = || async {
        let mut conn = system.db.database.acquire().await.expect("connects");
        on_backend!(conn.conn(), |c| {
            query_scalar::<_, String>("SELECT holder FROM saga_leases")
                .fetch_one(c)
                .await
        })
        .expect("a holder")
    };
    let frozen = holder().await;
    let signal = |name: &str| {
        let status = std::process::Command::new("kill")
            .args([name, &pid])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill {name}");
    };
    signal("-STOP");
    let ids = system.start(&payments(20)).await;
    let runtime = system
        .run(Arc::new(system.sql_transport()), Ledger::default())
        .await;
    // With the old session lock, nothing was published for as long as the holder was frozen.
    system.wait_terminal(&ids, Duration::from_secs(30)).await;
    assert_ne!(holder().await, frozen, "the relay's lease changed hands");
    signal("-CONT");
    tokio::time::sleep(Duration::from_millis(500)).await;
    child.start_kill().expect("SIGKILL");
    let _ = child.wait().await;
    runtime.shutdown().await;
    system.assert_effects_consistent(&ids).await;
    system.cleanup().await;
}

macro_rules! liveness {
    ($name:ident, $variant:expr) => {
        mod $name {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn an_outage_longer_than_the_poison_budget_strands_no_saga() {
                super::an_outage_longer_than_the_poison_budget_strands_no_saga($variant).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn consumers_share_a_channel_and_apply_each_message_once() {
                super::consumers_share_a_channel_and_apply_each_message_once($variant).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_bad_reply_to_is_dead_lettered_and_blocks_nothing() {
                super::a_bad_reply_to_is_dead_lettered_and_blocks_nothing($variant).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_poison_command_tells_its_saga() {
                super::a_poison_command_tells_its_saga($variant).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_message_that_always_fails_is_set_aside_and_its_saga_told() {
                super::a_message_that_always_fails_is_set_aside_and_its_saga_told($variant).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_stuck_saga_is_parked_by_the_watchdog_and_an_operator_moves_it_on() {
                super::a_stuck_saga_is_parked_by_the_watchdog_and_an_operator_moves_it_on($variant)
                    .await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_dead_letter_is_replayed_once_or_discarded() {
                super::a_dead_letter_is_replayed_once_or_discarded($variant).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_channel_nobody_consumes_is_reported() {
                super::a_channel_nobody_consumes_is_reported($variant).await;
            }
        }
    };
}

const SQLITE: Mode = Mode {
    backend: Backend::Sqlite,
    layout: Layout::Outbox,
};
const SQLITE_IN_PLACE: Mode = Mode {
    backend: Backend::Sqlite,
    layout: Layout::InPlace,
};
const POSTGRES: Mode = Mode {
    backend: Backend::Postgres,
    layout: Layout::Outbox,
};
const POSTGRES_IN_PLACE: Mode = Mode {
    backend: Backend::Postgres,
    layout: Layout::InPlace,
};
const POSTGRES_CO_LOCATED: Mode = Mode {
    backend: Backend::Postgres,
    layout: Layout::CoLocated,
};

liveness!(sqlite, SQLITE);
liveness!(sqlite_in_place, SQLITE_IN_PLACE);
liveness!(postgres, POSTGRES);
liveness!(postgres_in_place, POSTGRES_IN_PLACE);
liveness!(postgres_co_located, POSTGRES_CO_LOCATED);

/// The bookkeeping commits that do not wait for the disk (`relaxed_bookkeeping`: outbox
/// stamps, queue claims and acknowledgements) are what a crash of the machine can undo. The
/// worst case — every one of them undone — is every message published and delivered once
/// more: here, after a run, every outbox row is unstamped, the relay publishes them all again,
/// and the consumers apply nothing twice and move no saga.
async fn lost_bookkeeping_only_redelivers(mode: Mode) {
    let Some(db) = TestDb::open(mode.backend, "lost_bookkeeping").await else {
        return;
    };
    let system = system_on(db, mode).await;
    let ids = system.start(&payments(12)).await;
    system
        .run_to_end(Arc::new(system.sql_transport()), &ids)
        .await;
    let statuses = system.statuses(&ids).await;
    let published = system
        .scalar("SELECT COUNT(*) AS n FROM saga_outbox WHERE published_at IS NOT NULL")
        .await;
    assert!(
        published >= 12 * 4,
        "{published} messages went through the outbox"
    );
    let received = system.count("saga_received").await;

    let unstamped = execute(
        &system.db.database,
        "UPDATE saga_outbox SET published_at = NULL",
    )
    .await
    .expect("unstamps");
    assert_eq!(unstamped, u64::try_from(published).unwrap_or(0));
    let runtime = system
        .run(Arc::new(system.sql_transport()), Ledger::default())
        .await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let left = system
            .scalar("SELECT COUNT(*) AS n FROM saga_outbox WHERE published_at IS NULL")
            .await
            + system.count(&system.queue_table()).await;
        if left == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{left} messages still unpublished or queued"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    runtime.shutdown().await;
    assert_eq!(system.statuses(&ids).await, statuses, "no saga moved");
    assert_eq!(
        system.count("saga_received").await,
        received,
        "every redelivery was a duplicate"
    );
    system.assert_effects_consistent(&ids).await;
    system.cleanup().await;
}

/// Only where messages pass through the relay (in place, they go straight into the queue).
mod relayed {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite_lost_bookkeeping_only_redelivers() {
        super::lost_bookkeeping_only_redelivers(SQLITE).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_lost_bookkeeping_only_redelivers() {
        super::lost_bookkeeping_only_redelivers(POSTGRES).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite_a_command_the_transport_refuses_fails_its_step_and_blocks_nothing() {
        super::a_command_the_transport_refuses_fails_its_step_and_blocks_nothing(SQLITE).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_a_command_the_transport_refuses_fails_its_step_and_blocks_nothing() {
        super::a_command_the_transport_refuses_fails_its_step_and_blocks_nothing(POSTGRES).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_a_frozen_relay_is_replaced_within_its_lease() {
        super::a_frozen_relay_is_replaced_within_its_lease(POSTGRES).await;
    }
}

/// The runtime's defaults keep every wait bounded: a step timeout, a relay lease, a hold
/// limit, a watchdog that parks.
#[test]
fn the_defaults_bound_every_wait() {
    let options = RuntimeOptions::default();
    assert_eq!(options.relay_lease, Duration::from_secs(10));
    assert_eq!(options.watchdog.action, WatchdogAction::Park);
    assert!(options.hold_at_most <= Duration::from_secs(3600));
    assert_eq!(
        saga_core::definition::DEFAULT_REPLY_TIMEOUT,
        Duration::from_secs(300)
    );
}
