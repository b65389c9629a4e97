//! A PaymentSaga system on a test database: start payments, run workers, wait for terminal
//! states, and inspect the effects the ledger recorded.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use saga_core::SagaId;
use saga_core::engine::SagaStatus;
use saga_core::orchestrator::Orchestrator;
use saga_core::ports::{DeadLetter, SagaStore, Transport};
use saga_store::on_backend;
use saga_store::{
    RuntimeOptions, SagaRuntime, SqlSagaStore, SqlTransport, SqlTransportOptions, start_saga_in,
};

use crate::payment::{Ledger, PaymentData, PaymentSaga, REPLIES, ledger_participant};
use crate::testdb::TestDb;

/// PaymentSaga's orchestrator and store on a test database.
#[derive(Debug)]
pub struct PaymentSystem {
    /// The database.
    pub db: TestDb,
    /// The store.
    pub store: SqlSagaStore,
    /// The orchestrator.
    pub orchestrator: Arc<Orchestrator<SqlSagaStore>>,
    /// Where messages go and are handled.
    pub layout: Layout,
    /// With [`Layout::CoLocated`], the queue's schema.
    pub queue: Option<TestDb>,
    /// Settings of [`PaymentSystem::sql_transport`].
    pub transport_options: SqlTransportOptions,
}

/// Where a test system's messages go and are handled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// Through the outbox, the relay, leases and acknowledgements.
    Outbox,
    /// In place (`SqlSagaStore::in_place`, `RuntimeBuilder::in_place`), the queue in the
    /// same database.
    InPlace,
    /// In place, the queue in another schema of the same PostgreSQL database
    /// (`SqlSagaStore::co_located`): PostgreSQL only.
    CoLocated,
}

/// Transport settings for tests: short leases and polls.
pub fn test_transport_options() -> SqlTransportOptions {
    SqlTransportOptions {
        lease: Duration::from_secs(1),
        poll_interval: Duration::from_millis(50),
        ..SqlTransportOptions::default()
    }
}

/// Worker settings for tests: short polls.
pub fn test_runtime_options() -> RuntimeOptions {
    RuntimeOptions {
        poll_interval: Duration::from_millis(50),
        max_backoff: Duration::from_millis(500),
        ..RuntimeOptions::default()
    }
}

impl PaymentSystem {
    /// The system on `db`, its messages through the outbox.
    pub fn new(db: TestDb) -> Self {
        Self::with_queue(db, Layout::Outbox, None)
    }

    /// The system on `db` in `layout` (co-located: with the queue in a fresh schema beside
    /// `db`'s).
    pub async fn on(db: TestDb, layout: Layout) -> Self {
        let queue = match layout {
            Layout::CoLocated => Some(TestDb::postgres(&db.url).await),
            Layout::Outbox | Layout::InPlace => None,
        };
        Self::with_queue(db, layout, queue)
    }

    fn with_queue(db: TestDb, layout: Layout, queue: Option<TestDb>) -> Self {
        let options = test_transport_options();
        let store = match (layout, &queue) {
            (Layout::InPlace, _) => SqlSagaStore::in_place(db.database.clone()),
            (Layout::CoLocated, Some(queue)) => {
                let queue = SqlTransport::with_options(queue.database.clone(), options.clone());
                SqlSagaStore::co_located(db.database.clone(), &queue).expect("co-located")
            }
            _ => SqlSagaStore::new(db.database.clone()),
        };
        let orchestrator =
            Arc::new(Orchestrator::new(Arc::new(store.clone()), REPLIES).register::<PaymentSaga>());
        Self {
            db,
            store,
            orchestrator,
            layout,
            queue,
            transport_options: options,
        }
    }

    /// The same system as a restarted process would open it: new pools on the same
    /// databases. The copy owns no cleanup.
    pub async fn restarted(&self) -> Self {
        let queue = match &self.queue {
            Some(queue) => Some(queue.restarted().await),
            None => None,
        };
        Self::with_queue(self.db.restarted().await, self.layout, queue)
    }

    /// Whether messages are handled in place (the queue in the database or beside it).
    pub fn in_place(&self) -> bool {
        self.layout != Layout::Outbox
    }

    /// The queue table, as a statement on the test database names it.
    pub fn queue_table(&self) -> String {
        match &self.queue {
            Some(queue) => format!(
                "\"{}\".saga_queue",
                queue.schema.as_deref().unwrap_or_default()
            ),
            None => "saga_queue".to_owned(),
        }
    }

    /// The table a saga's outgoing messages are written to: the queue in place, else the
    /// outbox.
    pub fn sent_table(&self) -> String {
        match self.in_place() {
            true => self.queue_table(),
            false => "saga_outbox".to_owned(),
        }
    }

    /// The SQL-table transport on the queue's database (the test database's, unless
    /// co-located).
    pub fn sql_transport(&self) -> SqlTransport {
        let database = self.queue.as_ref().unwrap_or(&self.db).database.clone();
        SqlTransport::with_options(database, self.transport_options.clone())
    }

    /// Every dead letter: the store's, and co-located the queue's (where the transport sets
    /// messages aside).
    pub async fn dead_letters(&self) -> Vec<DeadLetter> {
        let mut dead = self.store.dead_letters().await.expect("reads");
        if let Some(queue) = &self.queue {
            let queue = SqlSagaStore::new(queue.database.clone());
            dead.extend(queue.dead_letters().await.expect("reads"));
        }
        dead
    }

    /// Removes the test database (and the queue's).
    pub async fn cleanup(self) {
        if let Some(queue) = self.queue {
            queue.cleanup().await;
        }
        self.db.cleanup().await;
    }

    /// Starts one payment saga per `(payment, amount)`, each in its own transaction.
    pub async fn start(&self, payments: &[(i64, i64)]) -> Vec<SagaId> {
        let mut ids = Vec::new();
        for &(payment, amount) in payments {
            let mut tx = self.db.database.begin().await.expect("begins");
            let id = start_saga_in::<PaymentSaga>(
                &self.orchestrator,
                &mut tx,
                PaymentData { payment, amount },
            )
            .await
            .expect("starts");
            tx.commit().await.expect("commits");
            ids.push(id);
        }
        self.db.database.wake_relay();
        ids
    }

    /// Runs the orchestrator and the ledger over `transport`.
    pub async fn run(&self, transport: Arc<dyn Transport>, ledger: Ledger) -> SagaRuntime {
        self.run_with(transport, ledger, test_runtime_options())
            .await
    }

    /// [`PaymentSystem::run`] with other worker settings.
    pub async fn run_with(
        &self,
        transport: Arc<dyn Transport>,
        ledger: Ledger,
        options: RuntimeOptions,
    ) -> SagaRuntime {
        let builder = SagaRuntime::builder(transport);
        let builder = match self.in_place() {
            true => builder.in_place(self.sql_transport()),
            false => builder,
        };
        builder
            .options(options)
            .orchestrator(self.orchestrator.clone())
            .participant(&self.db.database, ledger_participant(ledger))
            .start()
            .await
            .expect("the runtime starts")
    }

    /// Runs the workers over `transport` until every saga in `ids` is terminal, stops them,
    /// and checks the effects (see [`PaymentSystem::assert_effects_consistent`]).
    pub async fn run_to_end(&self, transport: Arc<dyn Transport>, ids: &[SagaId]) {
        let runtime = self.run(transport, Ledger::default()).await;
        self.wait_terminal(ids, Duration::from_secs(60)).await;
        runtime.shutdown().await;
        self.assert_effects_consistent(ids).await;
    }

    /// How many of `ids` are in `status`.
    pub async fn count_in(&self, ids: &[SagaId], status: SagaStatus) -> usize {
        self.statuses(ids)
            .await
            .iter()
            .filter(|s| **s == status)
            .count()
    }

    /// The statuses of `ids`.
    pub async fn statuses(&self, ids: &[SagaId]) -> Vec<SagaStatus> {
        let mut statuses = Vec::new();
        for id in ids {
            let record = self.store.load(*id).await.expect("loads");
            statuses.push(record.map_or(SagaStatus::Created, |r| r.state.status));
        }
        statuses
    }

    /// Waits until every saga in `ids` is terminal; panics with the stragglers after `timeout`.
    pub async fn wait_terminal(&self, ids: &[SagaId], timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let statuses = self.statuses(ids).await;
            if statuses.iter().all(|s| s.is_terminal()) {
                return;
            }
            if tokio::time::Instant::now() > deadline {
                let mut counts: BTreeMap<String, usize> = BTreeMap::new();
                for status in statuses {
                    *counts.entry(status.to_string()).or_default() += 1;
                }
                panic!("sagas not terminal after {timeout:?}: {counts:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Every effect the ledger recorded: `(saga, action) → count`.
    pub async fn effects(&self) -> BTreeMap<(String, String), i64> {
        let mut conn = self.db.database.acquire().await.expect("connects");
        let rows: Vec<(String, String, i64)> = on_backend!(conn.conn(), |c| {
            sqlx::query_as("SELECT saga, action, COUNT(*) FROM test_effects GROUP BY saga, action")
                .fetch_all(c)
                .await
        })
        .expect("reads effects");
        rows.into_iter()
            .map(|(saga, action, n)| ((saga, action), n))
            .collect()
    }

    /// Asserts no effect happened twice, and that each saga's effects match its outcome:
    /// completed → reserve, charge, confirm; compensated → reserve, release.
    pub async fn assert_effects_consistent(&self, ids: &[SagaId]) {
        let effects = self.effects().await;
        let duplicated: Vec<_> = effects.iter().filter(|(_, n)| **n > 1).collect();
        assert!(duplicated.is_empty(), "duplicated effects: {duplicated:?}");
        for (id, status) in ids.iter().zip(self.statuses(ids).await) {
            let saga = id.to_string();
            let has = |action: &str| effects.contains_key(&(saga.clone(), action.to_owned()));
            match status {
                SagaStatus::Completed => assert!(
                    has("reserve") && has("charge") && has("confirm") && !has("release"),
                    "completed saga {saga} has effects {:?}",
                    effects
                        .keys()
                        .filter(|(s, _)| *s == saga)
                        .collect::<Vec<_>>()
                ),
                SagaStatus::Compensated => assert!(
                    has("reserve") && has("release") && !has("charge") && !has("confirm"),
                    "compensated saga {saga} has effects {:?}",
                    effects
                        .keys()
                        .filter(|(s, _)| *s == saga)
                        .collect::<Vec<_>>()
                ),
                other => panic!("saga {saga} is {other}"),
            }
        }
    }

    /// How many rows a table has.
    pub async fn count(&self, table: &str) -> i64 {
        self.scalar(&format!("SELECT COUNT(*) AS n FROM {table}"))
            .await
    }

    /// The first column of the one row `sql` returns.
    pub async fn scalar(&self, sql: &str) -> i64 {
        crate::testdb::scalar(&self.db.database, sql)
            .await
            .expect("counts")
    }
}
