//! The durable-store conformance suite, run against SQLite and PostgreSQL alike.
//!
//! PostgreSQL runs need `SAGA_TEST_POSTGRES_URL` (each test gets its own schema); without it
//! those tests say they did not run.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use saga_core::message::{headers, limits};
use saga_core::orchestrator::Handled;
use saga_core::ports::{Delivery, SagaStore, Transport, TransportError};
use saga_core::{Headers, Message, SagaStatus};
use saga_store::{
    Database, DatabaseError, DatabaseOptions, Dialect, RetentionPolicy, Tx, apply_retention,
    lock_table, on_backend,
};
use saga_tests::harness::{Layout, PaymentSystem};
use saga_tests::payment::{FLAKY_AMOUNT, LEDGER, Ledger, PaymentSaga, REPLIES};
use saga_tests::testdb::{Backend, TestDb, execute};

const WAIT: Duration = Duration::from_secs(60);

/// A backend, and where messages go and are handled.
#[derive(Clone, Copy, Debug)]
struct Mode {
    backend: Backend,
    layout: Layout,
}

async fn system(mode: Mode, test: &str) -> Option<PaymentSystem> {
    let system = PaymentSystem::on(TestDb::open(mode.backend, test).await?, mode.layout).await;
    Some(system)
}

/// Payments 1..=n; every fourth over the limit (compensated), one flaky confirm.
fn payments(n: i64) -> Vec<(i64, i64)> {
    (1..=n)
        .map(|p| {
            let amount = match p % 4 {
                0 => 500,
                1 => FLAKY_AMOUNT,
                _ => 10 + p % 50,
            };
            (p, amount)
        })
        .collect()
}

async fn transactional_start_rolled_back_leaves_nothing(mode: Mode) {
    let Some(system) = system(mode, "transactional_start").await else {
        return;
    };
    let database = &system.db.database;
    execute(
        database,
        "CREATE TABLE orders (id BIGINT PRIMARY KEY, state TEXT NOT NULL)",
    )
    .await
    .expect("orders table");
    let insert_order = async |tx: &mut Tx| {
        on_backend!(tx.conn(), |c| {
            sqlx::query("INSERT INTO orders (id, state) VALUES (1, 'APPROVAL_PENDING')")
                .execute(c)
                .await
                .map(drop)
        })
        .expect("inserts");
    };

    let mut tx = database.begin().await.expect("begins");
    insert_order(&mut tx).await;
    let data = saga_tests::payment::PaymentData {
        payment: 1,
        amount: 5,
    };
    let rolled_back =
        saga_store::start_saga_in::<PaymentSaga>(&system.orchestrator, &mut tx, data.clone())
            .await
            .expect("starts");
    tx.rollback().await.expect("rolls back");
    assert!(
        system
            .store
            .load(rolled_back)
            .await
            .expect("loads")
            .is_none()
    );
    // In place, the saga's commands go straight into the queue instead of the outbox.
    let sent = &system.sent_table();
    assert_eq!(system.count("orders").await, 0);
    assert_eq!(system.count(sent).await, 0);
    assert_eq!(system.count("saga_history").await, 0);

    let mut tx = database.begin().await.expect("begins");
    insert_order(&mut tx).await;
    let committed = saga_store::start_saga_in::<PaymentSaga>(&system.orchestrator, &mut tx, data)
        .await
        .expect("starts");
    tx.commit().await.expect("commits");
    let record = system
        .store
        .load(committed)
        .await
        .expect("loads")
        .expect("exists");
    assert_eq!(record.state.status, SagaStatus::Running);
    assert_eq!(record.state.current_step.as_deref(), Some("reserve"));
    assert_eq!(system.count("orders").await, 1);
    assert_eq!(system.count(sent).await, 1, "the first command");
    system.cleanup().await;
}

/// In place, messages go straight into the queue in the transaction that produces them, the
/// first commands included: the outbox stays empty; otherwise every message passed through
/// it.
async fn in_place_messages_skip_the_outbox(mode: Mode) {
    let Some(system) = system(mode, "in_place_path").await else {
        return;
    };
    let ids = system.start(&payments(8)).await;
    system
        .run_to_end(Arc::new(system.sql_transport()), &ids)
        .await;
    let outbox = system.count("saga_outbox").await;
    let received = system.count("saga_received").await;
    assert!(received >= 8 * 4, "{received} messages handled");
    if system.in_place() {
        assert_eq!(outbox, 0, "no message went through the outbox");
    } else {
        assert_eq!(outbox, received, "every message went through the outbox");
    }
    system.cleanup().await;
}

/// A transport that publishes every message twice.
struct Duplicating<T>(T);

#[async_trait]
impl<T: Transport> Transport for Duplicating<T> {
    async fn publish(&self, messages: &[Message]) -> Result<(), TransportError> {
        self.0.publish(messages).await?;
        self.0.publish(messages).await
    }
    async fn receive(
        &self,
        c: &str,
        g: &str,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Delivery>, TransportError> {
        self.0.receive(c, g, max, wait).await
    }
    async fn ack(&self, c: &str, g: &str, d: &Delivery) -> Result<(), TransportError> {
        self.0.ack(c, g, d).await
    }
    async fn release(
        &self,
        c: &str,
        g: &str,
        d: &Delivery,
        delay: Duration,
    ) -> Result<(), TransportError> {
        self.0.release(c, g, d, delay).await
    }
}

async fn every_message_delivered_twice_has_one_effect(mode: Mode) {
    let Some(system) = system(mode, "duplicate_delivery").await else {
        return;
    };
    let ids = system.start(&payments(24)).await;
    let transport = Duplicating(system.sql_transport());
    system.run_to_end(Arc::new(transport), &ids).await;
    assert_eq!(system.count_in(&ids, SagaStatus::Compensated).await, 6);
    assert_eq!(system.count_in(&ids, SagaStatus::Completed).await, 18);
    system.cleanup().await;
}

async fn concurrent_replies_to_one_saga_stay_consistent(mode: Mode) {
    let Some(system) = system(mode, "concurrent_replies").await else {
        return;
    };
    let ids = system.start(&[(1, 5)]).await;
    let saga = ids[0];
    let before = system
        .store
        .load(saga)
        .await
        .expect("loads")
        .expect("exists");
    // Eight copies of the reply to `reserve` (request 1), each under its own message id,
    // handled at once: exactly one moves the saga.
    let reply = |_: usize| {
        Message::new(
            REPLIES,
            Headers::new()
                .with(headers::MESSAGE_TYPE, "Done")
                .with(headers::SAGA_ID, saga)
                .with(headers::REQUEST_ID, 1)
                .with(headers::REPLY_OUTCOME, "success"),
            "null".to_owned(),
        )
    };
    let mut tasks = Vec::new();
    for i in 0..8 {
        let orchestrator = system.orchestrator.clone();
        let message = reply(i);
        tasks.push(tokio::spawn(async move {
            orchestrator.handle_reply(&message).await
        }));
    }
    let mut applied = 0;
    for task in tasks {
        match task.await.expect("joins").expect("handles") {
            Handled::Applied(_) => applied += 1,
            Handled::Ignored(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(applied, 1);
    let after = system
        .store
        .load(saga)
        .await
        .expect("loads")
        .expect("exists");
    assert_eq!(after.version, before.version + 1);
    assert_eq!(after.state.current_step.as_deref(), Some("charge"));
    assert_eq!(
        system.count(&system.sent_table()).await,
        2,
        "reserve, then exactly one charge"
    );
    system.cleanup().await;
}

/// A transport that publishes, then reports failure the first `n` times — as if the relay
/// crashed after publishing and before marking the rows published.
struct CrashAfterPublish<T> {
    inner: T,
    crashes_left: AtomicUsize,
}

#[async_trait]
impl<T: Transport> Transport for CrashAfterPublish<T> {
    async fn publish(&self, messages: &[Message]) -> Result<(), TransportError> {
        self.inner.publish(messages).await?;
        if self
            .crashes_left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(TransportError::unavailable(std::io::Error::other(
                "relay crashed after publishing",
            )));
        }
        Ok(())
    }
    async fn receive(
        &self,
        c: &str,
        g: &str,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Delivery>, TransportError> {
        self.inner.receive(c, g, max, wait).await
    }
    async fn ack(&self, c: &str, g: &str, d: &Delivery) -> Result<(), TransportError> {
        self.inner.ack(c, g, d).await
    }
    async fn release(
        &self,
        c: &str,
        g: &str,
        d: &Delivery,
        delay: Duration,
    ) -> Result<(), TransportError> {
        self.inner.release(c, g, d, delay).await
    }
}

async fn crash_between_commit_and_publish_loses_nothing(mode: Mode) {
    let Some(system) = system(mode, "crash_after_publish").await else {
        return;
    };
    let ids = system.start(&payments(12)).await;
    let transport = CrashAfterPublish {
        inner: system.sql_transport(),
        crashes_left: AtomicUsize::new(5),
    };
    system.run_to_end(Arc::new(transport), &ids).await;
    system.cleanup().await;
}

async fn poison_messages_are_dead_lettered_and_the_channels_keep_flowing(mode: Mode) {
    let Some(system) = system(mode, "poison").await else {
        return;
    };
    let transport = system.sql_transport();
    let typed = |t: &str| Headers::new().with(headers::MESSAGE_TYPE, t);
    let with_reply = |t: &str| {
        typed(t)
            .with(headers::REPLY_TO, REPLIES)
            .with(headers::SAGA_ID, saga_core::SagaId::new())
            .with(headers::REQUEST_ID, 1)
    };
    transport
        .publish(&[
            Message::new(LEDGER, with_reply("Reserve"), "{bad json".to_owned()),
            Message::new(LEDGER, typed("Teleport"), "{}".to_owned()),
            Message::new(LEDGER, Headers::new(), "{}".to_owned()),
            Message::new(REPLIES, typed("Done"), "null".to_owned()),
            // Over the incoming limits: set aside before anything is decoded.
            Message::new(
                LEDGER,
                (0..limits::MAX_HEADERS)
                    .fold(with_reply("Reserve"), |h, i| h.with(format!("x-{i}"), i)),
                "{}".to_owned(),
            ),
            Message::new(
                REPLIES,
                typed("Done").with("tracestate", "v".repeat(limits::MAX_HEADER_VALUE_BYTES + 1)),
                "{}".to_owned(),
            ),
        ])
        .await
        .expect("publishes");
    // A row whose envelope itself is unreadable (PostgreSQL's `uuid` and `jsonb` columns
    // take only well-formed values, so there the headers are JSON but not headers).
    let (id, headers) = match system.db.database.dialect() {
        Dialect::Sqlite => ("not-a-uuid", "{oops"),
        Dialect::Postgres => ("0190a0a0-0000-7000-8000-00000000beef", "[1]"),
    };
    execute(
        &system.db.database,
        &format!(
            "INSERT INTO {} (channel, message_id, headers, payload, enqueued_at, \
             visible_at) VALUES ('ledger', '{id}', '{headers}', 'x', 0, 0)",
            system.queue_table()
        ),
    )
    .await
    .expect("inserts");
    let ids = system.start(&payments(4)).await;
    system.run_to_end(Arc::new(transport), &ids).await;

    let dead = system.dead_letters().await;
    let reasons: Vec<String> = dead
        .iter()
        .map(|d| format!("{}: {}", d.consumer, d.reason))
        .collect();
    let expect = [
        "ledger: malformed payload for `Reserve`",
        "ledger: participant `ledger` has no handler for command type `Teleport`",
        "ledger: unusable command: missing header `message-type`",
        "unusable reply: missing header `saga-id`",
        "ledger: unusable command: header count is 68, over the limit of 64",
        "unusable reply: a header value's bytes is 4097, over the limit of 4096",
        "transport:ledger: unreadable envelope",
        // The malformed Reserve named a reply channel, so the ledger answered with a failure
        // reply — to a saga that does not exist, which the orchestrator sets aside.
        "orchestrator:payments.replies: no saga with id",
    ];
    for expected in expect {
        assert!(
            reasons.iter().any(|r| r.contains(expected)),
            "no `{expected}` in {reasons:#?}"
        );
    }
    assert_eq!(dead.len(), expect.len(), "{reasons:#?}");
    system.cleanup().await;
}

async fn retry_timers_survive_a_restart_and_fire_once(mode: Mode) {
    let Some(system) = system(mode, "timers_restart").await else {
        return;
    };
    // The flaky confirm is refused once; its retry waits 300 ms: the saga's deadline.
    let ids = system.start(&[(1, FLAKY_AMOUNT)]).await;
    let runtime = system
        .run(Arc::new(system.sql_transport()), Ledger::default())
        .await;
    let deadline = tokio::time::Instant::now() + WAIT;
    let retries_pending = "SELECT COUNT(*) AS n FROM saga_instances WHERE pending_kind = 'retry'";
    while system.scalar(retries_pending).await == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no retry was scheduled"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    runtime.shutdown().await;
    let parked = system
        .store
        .load(ids[0])
        .await
        .expect("loads")
        .expect("exists");
    assert_eq!(parked.state.status, SagaStatus::Running);

    // A new process: a fresh pool on the same database.
    let restarted = system.restarted().await;
    let runtime = restarted
        .run(Arc::new(restarted.sql_transport()), Ledger::default())
        .await;
    restarted.wait_terminal(&ids, WAIT).await;
    runtime.shutdown().await;
    assert_eq!(restarted.statuses(&ids).await, [SagaStatus::Completed]);
    let history = restarted.store.history(ids[0]).await.expect("history");
    let retries = history
        .iter()
        .filter(|h| {
            matches!(
                &h.event,
                saga_core::engine::HistoryEvent::RetryScheduled { .. }
            )
        })
        .count();
    let confirms = history
        .iter()
        .filter(|h| matches!(&h.event, saga_core::engine::HistoryEvent::CommandSent { step, .. } if step == "confirm"))
        .count();
    assert_eq!(
        (retries, confirms),
        (1, 2),
        "one retry, two sends of confirm"
    );
    assert_eq!(
        restarted
            .scalar("SELECT COUNT(*) AS n FROM saga_instances WHERE deadline IS NOT NULL")
            .await,
        0,
        "a finished saga waits for nothing"
    );
    restarted.assert_effects_consistent(&ids).await;
    system.cleanup().await;
}

async fn retention_deletes_only_old_processed_rows(mode: Mode) {
    let Some(system) = system(mode, "retention").await else {
        return;
    };
    let ids = system.start(&payments(4)).await;
    let runtime = system
        .run(Arc::new(system.sql_transport()), Ledger::default())
        .await;
    system.wait_terminal(&ids, WAIT).await;
    runtime.shutdown().await;
    let database = &system.db.database;
    let outbox = system.count("saga_outbox").await;
    let received = system.count("saga_received").await;
    // In place nothing goes through the outbox.
    assert!((outbox > 0 || system.in_place()) && received > 0);
    // Nothing is old enough yet.
    let policy = RetentionPolicy {
        batch: 3,
        ..RetentionPolicy::default()
    };
    assert_eq!(
        apply_retention(database, &policy)
            .await
            .expect("runs")
            .outbox,
        0
    );
    // Age every row, and add one unpublished row that must survive.
    execute(
        database,
        "UPDATE saga_outbox SET published_at = 1 WHERE published_at IS NOT NULL; \
         UPDATE saga_received SET received_at = 1",
    )
    .await
    .expect("ages");
    execute(
        database,
        "INSERT INTO saga_outbox (message_id, destination, headers, payload, created_at) \
         VALUES ('0190a0a0-0000-7000-8000-000000000000', 'x', '{}', 'null', 1)",
    )
    .await
    .expect("inserts");
    let report = apply_retention(database, &policy).await.expect("runs");
    assert_eq!(report.outbox, u64::try_from(outbox).expect("count"));
    assert_eq!(report.received, u64::try_from(received).expect("count"));
    assert_eq!(
        system.count("saga_outbox").await,
        1,
        "the unpublished row stays"
    );
    assert_eq!(system.count("saga_received").await, 0);
    system.cleanup().await;
}

async fn a_killed_worker_process_is_restarted_and_every_saga_finishes_once(mode: Mode) {
    let Some(system) = system(mode, "sigkill").await else {
        return;
    };
    let ids = system.start(&payments(200)).await;
    let spawn = || {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_saga-test-worker"));
        if system.in_place() {
            command.arg("--in-place");
        }
        if let Some(queue) = system.queue.as_ref().and_then(|q| q.schema.as_ref()) {
            command.args(["--queue-schema", queue]);
        }
        command.args([
            "--url",
            &system.db.url,
            "--delay-ms",
            "3",
            "--lease-ms",
            "1000",
        ]);
        if let Some(schema) = &system.db.schema {
            command.args(["--schema", schema]);
        }
        command.kill_on_drop(true).spawn().expect("worker starts")
    };
    let mut child = spawn();
    // Let it get well into the run, then kill it without warning.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let effects: i64 = system.effects().await.values().sum();
        if effects >= 150 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the worker made no progress"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.start_kill().expect("SIGKILL");
    let status = child.wait().await.expect("exits");
    assert!(!status.success(), "killed, not finished: {status:?}");
    let statuses = system.statuses(&ids).await;
    let unfinished = statuses.iter().filter(|s| !s.is_terminal()).count();
    assert!(unfinished > 0, "the kill came too late to prove anything");

    let mut child = spawn();
    system.wait_terminal(&ids, WAIT).await;
    child.start_kill().expect("stops");
    let _ = child.wait().await;
    system.assert_effects_consistent(&ids).await;
    system.cleanup().await;
}

async fn semantic_locks_are_held_by_one_saga_at_a_time(mode: Mode) {
    let Some(system) = system(mode, "locks").await else {
        return;
    };
    let database = &system.db.database;
    let (first, second) = (saga_core::SagaId::new(), saga_core::SagaId::new());
    let mut tx = database.begin().await.expect("begins");
    lock_table::acquire(&mut tx, "order:7", first, "APPROVAL_PENDING")
        .await
        .expect("locks");
    // Taking it again for the same saga is fine.
    lock_table::acquire(&mut tx, "order:7", first, "APPROVAL_PENDING")
        .await
        .expect("idempotent");
    tx.commit().await.expect("commits");

    let mut tx = database.begin().await.expect("begins");
    let err = lock_table::acquire(&mut tx, "order:7", second, "CANCEL_PENDING")
        .await
        .expect_err("held");
    assert_eq!(
        err.to_string(),
        format!("order:7 is locked in state APPROVAL_PENDING by saga {first}")
    );
    assert!(
        !lock_table::release(&mut tx, "order:7", second)
            .await
            .expect("runs"),
        "not the holder"
    );
    assert!(
        lock_table::release(&mut tx, "order:7", first)
            .await
            .expect("runs")
    );
    lock_table::acquire(&mut tx, "order:7", second, "CANCEL_PENDING")
        .await
        .expect("free now");
    let holder = lock_table::holder(&mut tx, "order:7")
        .await
        .expect("reads")
        .expect("held");
    assert_eq!(holder.saga_id, second);
    tx.commit().await.expect("commits");
    system.cleanup().await;
}

async fn an_unreachable_database_is_a_clear_error(mode: Mode) {
    let url = match mode.backend {
        Backend::Sqlite => "sqlite:///nonexistent-dir-for-saga-tests/x.db".to_owned(),
        Backend::Postgres => "postgres://postgres@127.0.0.1:1/test".to_owned(),
    };
    let options = DatabaseOptions {
        connect_timeout: Duration::from_millis(500),
        ..DatabaseOptions::default()
    };
    let err = Database::connect_with(&url, options)
        .await
        .expect_err("fails");
    let text = err.to_string();
    match mode.backend {
        Backend::Postgres => {
            assert!(matches!(err, DatabaseError::Unreachable { .. }), "{text}");
            assert!(
                text.contains("cannot reach the database at postgres://postgres@127.0.0.1:1/test"),
                "{text}"
            );
        }
        Backend::Sqlite => assert!(text.contains("unable to open database file"), "{text}"),
    }
}

macro_rules! conformance {
    ($backend:ident, $variant:expr) => {
        mod $backend {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn transactional_start_rolled_back_leaves_nothing() {
                super::transactional_start_rolled_back_leaves_nothing($variant).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn in_place_messages_skip_the_outbox() {
                super::in_place_messages_skip_the_outbox($variant).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn every_message_delivered_twice_has_one_effect() {
                super::every_message_delivered_twice_has_one_effect($variant).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn concurrent_replies_to_one_saga_stay_consistent() {
                super::concurrent_replies_to_one_saga_stay_consistent($variant).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn crash_between_commit_and_publish_loses_nothing() {
                super::crash_between_commit_and_publish_loses_nothing($variant).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn poison_messages_are_dead_lettered_and_the_channels_keep_flowing() {
                super::poison_messages_are_dead_lettered_and_the_channels_keep_flowing($variant)
                    .await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn retry_timers_survive_a_restart_and_fire_once() {
                super::retry_timers_survive_a_restart_and_fire_once($variant).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn retention_deletes_only_old_processed_rows() {
                super::retention_deletes_only_old_processed_rows($variant).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_killed_worker_process_is_restarted_and_every_saga_finishes_once() {
                super::a_killed_worker_process_is_restarted_and_every_saga_finishes_once($variant)
                    .await;
            }

            #[tokio::test]
            async fn semantic_locks_are_held_by_one_saga_at_a_time() {
                super::semantic_locks_are_held_by_one_saga_at_a_time($variant).await;
            }

            #[tokio::test]
            async fn an_unreachable_database_is_a_clear_error() {
                super::an_unreachable_database_is_a_clear_error($variant).await;
            }
        }
    };
}

conformance!(
    sqlite,
    Mode {
        backend: Backend::Sqlite,
        layout: Layout::Outbox,
    }
);
conformance!(
    postgres,
    Mode {
        backend: Backend::Postgres,
        layout: Layout::Outbox,
    }
);
conformance!(
    sqlite_in_place,
    Mode {
        backend: Backend::Sqlite,
        layout: Layout::InPlace,
    }
);
conformance!(
    postgres_in_place,
    Mode {
        backend: Backend::Postgres,
        layout: Layout::InPlace,
    }
);
conformance!(
    postgres_co_located,
    Mode {
        backend: Backend::Postgres,
        layout: Layout::CoLocated,
    }
);

/// PostgreSQL only: every connection of the running system is terminated
/// (`pg_terminate_backend`) three times mid-run; the workers reconnect and finish everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_connections_dropped_mid_run_recover_and_lose_nothing() {
    let Some(url) = saga_tests::testdb::postgres_url_for("connections_dropped_mid_run") else {
        return;
    };
    let schema_db = TestDb::postgres(&url).await;
    let application = schema_db.schema.clone().expect("schema");
    let separator = if url.contains('?') { '&' } else { '?' };
    let tagged_url = format!("{url}{separator}application_name={application}");
    // The system under test connects with an application name we can find it by.
    let tagged = TestDb::reopen(&tagged_url, schema_db.schema.as_deref()).await;
    let system = PaymentSystem::new(TestDb::with_database(&schema_db, tagged));
    let ids = system.start(&payments(120)).await;
    let runtime = system
        .run(
            Arc::new(system.sql_transport()),
            Ledger {
                delay: Duration::from_millis(2),
            },
        )
        .await;
    let admin = schema_db.database.clone();
    let mut terminated = 0;
    for threshold in [60, 150, 250] {
        let deadline = tokio::time::Instant::now() + WAIT;
        while system.effects().await.values().sum::<i64>() < threshold {
            assert!(tokio::time::Instant::now() < deadline, "no progress");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let pool = admin.postgres_pool().expect("PostgreSQL");
        let killed: i64 = sqlx::query_scalar(
            "SELECT COUNT(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE application_name = $1",
        )
        .bind(&application)
        .fetch_one(pool)
        .await
        .expect("terminates");
        terminated += killed;
    }
    assert!(terminated >= 3, "terminated {terminated} connections");
    system.wait_terminal(&ids, WAIT).await;
    runtime.shutdown().await;
    system.assert_effects_consistent(&ids).await;
    schema_db.cleanup().await;
}
