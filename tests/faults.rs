//! Faults the liveness tests inject: a transport that refuses chosen messages, a database
//! that refuses every write for a while (as a full disk or a failover does), and a database
//! that refuses one chosen message for good.

use std::time::Duration;

use crate::testdb::{TestDb, execute};
use async_trait::async_trait;
use saga_core::message::headers;
use saga_core::ports::{ChannelBacklog, Delivery, Transport, TransportError};
use saga_core::{Headers, Message, MessageId, SagaId};
use saga_store::{Database, DatabaseOptions, Dialect};

/// A `Reserve` command to the ledger that no saga of the test sent, answered to `reply_to`
/// (`None`: a one-way command).
pub fn stray_command(reply_to: Option<&str>) -> Message {
    let mut headers = Headers::new()
        .with(headers::MESSAGE_TYPE, "Reserve")
        .with(headers::SAGA_ID, SagaId::new())
        .with(headers::REQUEST_ID, 1);
    if let Some(reply_to) = reply_to {
        headers.insert(headers::REPLY_TO, reply_to);
    }
    Message::new(
        crate::payment::LEDGER,
        headers,
        r#"{"payment":9999,"amount":1}"#.to_owned(),
    )
}

/// A transport that refuses (as permanently unfit) every message `refuse` picks, and passes
/// everything else to `inner`.
pub struct Refusing<T> {
    /// The real transport.
    pub inner: T,
    /// Which messages to refuse.
    pub refuse: fn(&Message) -> bool,
}

#[async_trait]
impl<T: Transport> Transport for Refusing<T> {
    fn check(&self, message: &Message) -> Result<(), TransportError> {
        if (self.refuse)(message) {
            return Err(TransportError::refused(
                message.id,
                std::io::Error::other("refused by the test"),
            ));
        }
        self.inner.check(message)
    }
    fn lease(&self) -> Option<Duration> {
        self.inner.lease()
    }
    async fn publish(&self, messages: &[Message]) -> Result<(), TransportError> {
        self.inner.publish(messages).await
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
    async fn ack_all(&self, c: &str, g: &str, d: &[Delivery]) -> Result<(), TransportError> {
        self.inner.ack_all(c, g, d).await
    }
    async fn extend(
        &self,
        c: &str,
        g: &str,
        d: &[Delivery],
        by: Duration,
    ) -> Result<(), TransportError> {
        self.inner.extend(c, g, d, by).await
    }
    async fn dead_letter(
        &self,
        c: &str,
        g: &str,
        d: &Delivery,
        reason: &str,
    ) -> Result<(), TransportError> {
        self.inner.dead_letter(c, g, d, reason).await
    }
    async fn unconsumed(
        &self,
        older_than: Duration,
    ) -> Result<Vec<ChannelBacklog>, TransportError> {
        self.inner.unconsumed(older_than).await
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

/// The test database opened again so that its writes fail fast while another connection
/// holds SQLite's write lock (a 20 ms busy timeout instead of 10 s); PostgreSQL as usual.
pub async fn impatient(db: &TestDb) -> TestDb {
    let options = DatabaseOptions {
        schema: db.schema.clone(),
        sqlite_busy_timeout: Duration::from_millis(20),
        ..DatabaseOptions::default()
    };
    let database = Database::connect_with(&db.url, options)
        .await
        .expect("reopens");
    TestDb::with_database(db, database)
}

/// Makes every write to `db` fail for `outage` with a transient error, as a database whose
/// disk is full does: PostgreSQL refuses inserts into the dedup table with SQLSTATE 53100
/// (`disk_full`); on SQLite another connection holds the write lock, so writers get
/// `SQLITE_BUSY` (open the system with [`impatient`]). Returns once the outage is over.
pub async fn refuse_writes_for(db: &TestDb, outage: Duration) {
    match db.database.dialect() {
        Dialect::Postgres => {
            let admin = TestDb::reopen(&db.url, db.schema.as_deref()).await;
            for sql in [
                "CREATE OR REPLACE FUNCTION saga_test_disk_full() RETURNS trigger AS $$ \
                 BEGIN RAISE EXCEPTION 'could not extend file: No space left on device (injected)' \
                 USING ERRCODE = '53100'; END $$ LANGUAGE plpgsql",
                "CREATE TRIGGER saga_test_disk_full BEFORE INSERT ON saga_received \
                 FOR EACH STATEMENT EXECUTE FUNCTION saga_test_disk_full()",
            ] {
                execute(&admin, sql).await.expect("installs the fault");
            }
            tokio::time::sleep(outage).await;
            execute(&admin, "DROP TRIGGER saga_test_disk_full ON saga_received")
                .await
                .expect("removes the fault");
            admin.close().await;
        }
        Dialect::Sqlite => {
            let blocker = TestDb::reopen(&db.url, None).await;
            let tx = blocker.begin().await.expect("takes the write lock");
            tokio::time::sleep(outage).await;
            tx.rollback().await.expect("releases the write lock");
            blocker.close().await;
        }
    }
}

/// Makes recording message `id` as received fail for good (a constraint violation), so the
/// consumer can never handle it.
pub async fn refuse_message(db: &TestDb, id: MessageId) {
    let statements = match db.database.dialect() {
        Dialect::Postgres => vec![
            format!(
                "CREATE OR REPLACE FUNCTION saga_test_refuse() RETURNS trigger AS $$ \
                 BEGIN IF NEW.message_id = '{id}' THEN \
                 RAISE EXCEPTION 'refused by the test' USING ERRCODE = '23514'; END IF; \
                 RETURN NEW; END $$ LANGUAGE plpgsql"
            ),
            "CREATE TRIGGER saga_test_refuse BEFORE INSERT ON saga_received \
             FOR EACH ROW EXECUTE FUNCTION saga_test_refuse()"
                .to_owned(),
        ],
        Dialect::Sqlite => vec![format!(
            "CREATE TRIGGER saga_test_refuse BEFORE INSERT ON saga_received \
             WHEN NEW.message_id = '{id}' BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
        )],
    };
    for sql in statements {
        execute(&db.database, &sql)
            .await
            .expect("installs the fault");
    }
}
