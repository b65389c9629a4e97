//! The `saga` CLI against databases FTGO populated, on SQLite files and PostgreSQL schemas:
//! list and filters, show, graph (a snapshot of a compensated instance's path), stats, each
//! operator action end to end through a running orchestrator (retry, skip, cancel, bulk and
//! dry run, a refusal, a request that waits for an orchestrator), and dead letters (list,
//! show, replay, discard).
//!
//! The CLI runs through `saga_ops::cli::run`, exactly what the `saga` binary calls.

use std::time::{Duration, Instant};

use clap::Parser;
use ftgo::app::{Ftgo, FtgoOptions, Storage};
use saga_core::engine::HistoryEvent;
use saga_core::message::headers;
use saga_core::ports::SagaStore;
use saga_core::{Headers, Message, SagaId, SagaStatus};
use saga_ops::cli::Cli;
use saga_tests::operating;
use saga_tests::testdb::{Backend, postgres_url_for, unique};

const WAIT: Duration = Duration::from_secs(60);

struct System {
    ftgo: Ftgo,
    storage: Storage,
}

impl System {
    async fn start(backend: Backend, test: &str) -> Option<Self> {
        let storage = match backend {
            Backend::Sqlite => Storage::Sqlite {
                dir: std::env::temp_dir().join(unique("ops_cli")),
            },
            Backend::Postgres => Storage::Postgres {
                url: postgres_url_for(test)?,
                schema_prefix: unique("ops_cli"),
            },
        };
        let mut options = FtgoOptions::new(storage.clone());
        options.runtime.poll_interval = Duration::from_millis(50);
        options.transport.poll_interval = Duration::from_millis(50);
        let ftgo = Ftgo::start(options).await.expect("FTGO starts");
        Some(Self { ftgo, storage })
    }

    /// The CLI's database arguments for the Order service's database (the orchestrator's).
    fn database_args(&self) -> Vec<String> {
        match &self.storage {
            Storage::Sqlite { dir } => vec![
                "--database-url".to_owned(),
                format!("sqlite://{}", dir.join("order.db").display()),
            ],
            Storage::Postgres { url, schema_prefix } => vec![
                "--database-url".to_owned(),
                url.clone(),
                "--schema".to_owned(),
                format!("{schema_prefix}_order"),
            ],
        }
    }

    /// Runs `saga <database args> <args>`; returns the exit code and what it printed.
    async fn saga(&self, args: &[&str]) -> (u8, String) {
        saga(&self.database_args(), args).await
    }

    /// `saga <args>` that must fail with an error; returns its message.
    async fn saga_error(&self, args: &[&str]) -> String {
        let mut argv = vec!["saga".to_owned()];
        argv.extend(self.database_args());
        argv.extend(args.iter().map(|a| (*a).to_owned()));
        let cli = Cli::try_parse_from(&argv).unwrap_or_else(|err| panic!("{argv:?}: {err}"));
        let (mut out, mut err) = (Vec::new(), Vec::new());
        match saga_ops::cli::run(cli, &mut out, &mut err).await {
            Ok(code) => panic!("saga {args:?} succeeded ({code})"),
            Err(e) => e.to_string(),
        }
    }

    async fn place(&self, restaurant_id: i64) -> SagaId {
        operating::place(&self.ftgo, restaurant_id).await
    }

    async fn status(&self, saga_id: SagaId) -> SagaStatus {
        self.ftgo
            .saga_status(saga_id)
            .await
            .expect("reads")
            .expect("exists")
    }

    async fn wait_for(&self, saga_id: SagaId, status: SagaStatus) {
        operating::wait_for_status(&self.ftgo, saga_id, status, WAIT).await;
    }

    async fn timeline(&self, saga_id: SagaId) -> Vec<HistoryEvent> {
        let store = self.ftgo.orders.orchestrator().store();
        store
            .history(saga_id)
            .await
            .expect("history")
            .into_iter()
            .map(|h| h.event)
            .collect()
    }

    async fn cleanup(self) {
        self.ftgo.shutdown().await;
        saga_tests::testdb::remove_ftgo_storage(self.storage).await;
    }
}

/// Runs `saga <database> <args>`; returns the exit code and what it printed.
async fn saga(database: &[String], args: &[&str]) -> (u8, String) {
    let mut argv = vec!["saga".to_owned()];
    argv.extend(database.iter().cloned());
    argv.extend(args.iter().map(|a| (*a).to_owned()));
    let cli = Cli::try_parse_from(&argv).unwrap_or_else(|err| panic!("{argv:?}: {err}"));
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = saga_ops::cli::run(cli, &mut out, &mut err)
        .await
        .unwrap_or_else(|e| panic!("saga {args:?} failed: {e}"));
    let mut text = String::from_utf8(out).expect("UTF-8");
    text.push_str(&String::from_utf8(err).expect("UTF-8"));
    (code, text)
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|err| panic!("not JSON ({err}): {text}"))
}

async fn the_cli_finds_shows_draws_and_repairs_sagas(backend: Backend) {
    let Some(system) = System::start(backend, "ops_cli").await else {
        return;
    };
    // An approved order, one the kitchen refuses (compensated), two that park at
    // confirm_ticket (Graveyard Shift has nobody on shift to confirm tickets).
    let approved = system.place(2).await;
    let refused = system.place(13).await;
    let parked = [system.place(21).await, system.place(21).await];
    system.wait_for(approved, SagaStatus::Completed).await;
    system.wait_for(refused, SagaStatus::Compensated).await;
    for id in parked {
        system.wait_for(id, SagaStatus::Failed).await;
    }

    // list, with filters, as a table and as JSON.
    let (code, table) = system.saga(&["list"]).await;
    assert_eq!(code, 0);
    for id in [approved, refused, parked[0], parked[1]] {
        assert!(table.contains(&id.to_string()), "{table}");
    }
    assert!(table.contains("1–4 of 4"), "{table}");
    let (_, failed) = system.saga(&["list", "--status", "failed", "--json"]).await;
    let failed = json(&failed);
    let ids: Vec<&str> = failed
        .as_array()
        .expect("an array")
        .iter()
        .map(|s| s["saga_id"].as_str().expect("an id"))
        .collect();
    assert_eq!(ids.len(), 2, "{failed:#}");
    assert!(parked.iter().all(|p| ids.contains(&p.to_string().as_str())));
    assert_eq!(failed[0]["current_step"], "confirm_ticket");
    assert!(
        failed[0]["last_reason"]
            .as_str()
            .is_some_and(|r| r.contains("nobody on shift")),
        "{failed:#}"
    );
    let (_, paged) = system.saga(&["list", "--limit", "1", "--page", "2"]).await;
    assert!(paged.contains("2–2 of 4; --page 3 for more"), "{paged}");
    let (_, none) = system.saga(&["list", "--type", "CancelOrderSaga"]).await;
    assert!(none.contains("no sagas match"), "{none}");
    let (_, old) = system.saga(&["list", "--older-than", "1h"]).await;
    assert!(old.contains("no sagas match"), "{old}");
    let (_, stepped) = system
        .saga(&["list", "--step", "confirm_ticket", "--json"])
        .await;
    assert_eq!(json(&stepped).as_array().map(Vec::len), Some(2));

    // show: the instance and its whole timeline.
    let (_, shown) = system.saga(&["show", &parked[0].to_string()]).await;
    for expected in [
        "status              failed",
        "step                confirm_ticket",
        "ConfirmCreateTicket → kitchenService",
        "retry scheduled",
        "parked",
        "nobody on shift",
        "\"order_id\"",
    ] {
        assert!(
            shown.contains(expected),
            "{expected:?} missing in:\n{shown}"
        );
    }
    let (_, shown_json) = system.saga(&["show", &refused.to_string(), "--json"]).await;
    let shown_json = json(&shown_json);
    assert_eq!(shown_json["saga"]["status"], "compensated");
    assert!(
        shown_json["timeline"]
            .as_array()
            .is_some_and(|t| t.len() > 5)
    );

    // graph: the compensated instance's path, and a bare definition.
    let (_, graph) = system.saga(&["graph", &refused.to_string()]).await;
    insta::assert_snapshot!("compensated_create_order_path", graph);
    let (_, dot) = system
        .saga(&["graph", "--type", "CreateOrderSaga", "--format", "dot"])
        .await;
    assert!(dot.starts_with("digraph \"CreateOrderSaga\""), "{dot}");
    assert!(
        !dot.contains("penwidth=3"),
        "a bare graph draws no path: {dot}"
    );

    // stats.
    let (_, stats) = system.saga(&["stats", "--json"]).await;
    let stats = json(&stats);
    let count = |status: &str| {
        stats["sagas"]
            .as_array()
            .and_then(|rows| rows.iter().find(|r| r["status"] == status))
            .map(|r| r["count"].as_u64().unwrap_or(0))
            .unwrap_or(0)
    };
    assert_eq!(
        (count("completed"), count("compensated"), count("failed")),
        (1, 1, 2)
    );

    // Every action needs a reason, a target, and is refused where the rules say so.
    let id = parked[0].to_string();
    assert!(
        system
            .saga_error(&["retry", &id, "--reason", " "])
            .await
            .contains("--reason must say why")
    );
    assert!(
        system
            .saga_error(&["retry", "--reason", "x"])
            .await
            .contains("needs a saga id")
    );
    let (code, refusal) = system
        .saga(&[
            "cancel",
            &approved.to_string(),
            "--reason",
            "too late",
            "--actor",
            "ana",
        ])
        .await;
    assert_eq!(code, 1, "{refusal}");
    assert!(
        refusal.contains("refused: it has finished (completed)"),
        "{refusal}"
    );
    assert!(system.timeline(approved).await.iter().any(|e| matches!(
        e,
        HistoryEvent::OperatorRefused { actor, reason, .. } if actor == "ana" && reason == "too late"
    )));

    // skip one parked saga while the kitchen is still unstaffed: it moves on and completes.
    let (code, skipped) = system
        .saga(&[
            "skip",
            &id,
            "--reason",
            "confirmed by phone",
            "--actor",
            "ana",
        ])
        .await;
    assert_eq!(code, 0, "{skipped}");
    assert!(skipped.contains("applied"), "{skipped}");
    system.wait_for(parked[0], SagaStatus::Completed).await;

    // Staff the kitchen, then retry the other in bulk: a dry run first changes nothing.
    assert!(
        system
            .ftgo
            .kitchen
            .set_staffed(21, true)
            .await
            .expect("staffs")
    );
    let bulk = [
        "retry",
        "--where",
        "status=failed",
        "--type",
        "CreateOrderSaga",
        "--reason",
        "kitchen staffed",
        "--actor",
        "ben",
    ];
    let (_, dry) = system.saga(&[&bulk[..], &["--dry-run"]].concat()).await;
    assert!(dry.contains("dry run: would retry 1 saga"), "{dry}");
    assert!(dry.contains(&parked[1].to_string()), "{dry}");
    assert_eq!(system.status(parked[1]).await, SagaStatus::Failed);
    let (code, retried) = system.saga(&bulk).await;
    assert_eq!(code, 0, "{retried}");
    system.wait_for(parked[1], SagaStatus::Completed).await;
    let timeline = system.timeline(parked[1]).await;
    let operator: Vec<_> = timeline
        .iter()
        .filter(|e| matches!(e, HistoryEvent::Operator { .. }))
        .collect();
    assert_eq!(operator.len(), 1, "applied once: {timeline:#?}");
    assert!(matches!(
        operator[0],
        HistoryEvent::Operator { actor, reason, step, .. }
            if actor == "ben" && reason == "kitchen staffed" && step == "confirm_ticket"
    ));

    // cancel a running saga: with the workers stopped the request waits in the outbox, and
    // applies once an orchestrator runs.
    system.ftgo.stop_workers().await;
    let pending = system.place(2).await;
    let (code, queued) = system
        .saga(&[
            "cancel",
            &pending.to_string(),
            "--reason",
            "customer phoned",
            "--wait",
            "300ms",
        ])
        .await;
    assert_eq!(code, 1, "{queued}");
    assert!(queued.contains("not applied yet"), "{queued}");
    system
        .ftgo
        .start_workers()
        .await
        .expect("the workers start");
    system.wait_for(pending, SagaStatus::Compensated).await;
    let record = system
        .ftgo
        .orders
        .orchestrator()
        .store()
        .load(pending)
        .await
        .expect("loads")
        .expect("exists");
    assert!(
        record
            .state
            .compensation_reason
            .as_deref()
            .is_some_and(|r| r.ends_with(": customer phoned")),
        "{:?}",
        record.state
    );

    // Dead letters: an unusable message on the orchestrator's reply channel is set aside.
    let store = system.ftgo.orders.orchestrator().store();
    let (bogus, letter) =
        operating::dead_letter_a_bogus_reply(&system.ftgo, "{\"surprise\": true}", WAIT).await;
    let (_, listed) = system.saga(&["dead-letters", "list"]).await;
    assert!(
        listed.contains("NotAReply") && listed.contains("unusable reply"),
        "{listed}"
    );
    let (_, shown) = system
        .saga(&["dead-letters", "show", &letter.to_string()])
        .await;
    assert!(shown.contains("\"surprise\": true"), "{shown}");
    let (_, replayed) = system
        .saga(&[
            "dead-letters",
            "replay",
            &letter.to_string(),
            "--reason",
            "try again",
            "--actor",
            "ana",
        ])
        .await;
    assert!(
        replayed.contains(&format!("dead letter {letter} replayed as message")),
        "{replayed}"
    );
    let again = system
        .saga_error(&[
            "dead-letters",
            "replay",
            &letter.to_string(),
            "--reason",
            "twice",
        ])
        .await;
    assert!(again.contains("replayed already"), "{again}");
    // The replay is unusable too: it comes back as a new dead letter, which is discarded.
    let deadline = Instant::now() + WAIT;
    let second = loop {
        let letters = store
            .stored_dead_letters(letter, 10, true)
            .await
            .expect("lists");
        if let Some(l) = letters.first() {
            assert_eq!(
                l.dead_letter.message.headers.get(headers::REPLAY_OF),
                Some(bogus.id.to_string().as_str())
            );
            break l.id;
        }
        assert!(Instant::now() < deadline, "the replay never came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (_, discarded) = system
        .saga(&[
            "dead-letters",
            "discard",
            &second.to_string(),
            "--reason",
            "a test message",
        ])
        .await;
    assert!(discarded.contains("discarded"), "{discarded}");
    let (_, open) = system.saga(&["dead-letters", "list"]).await;
    assert!(open.contains("no dead letters"), "{open}");
    let (_, all) = system
        .saga(&["dead-letters", "list", "--all", "--json"])
        .await;
    let all = json(&all);
    assert_eq!(all.as_array().map(Vec::len), Some(2), "{all:#}");
    assert!(
        all[0]["resolved"]
            .as_str()
            .is_some_and(|r| r.contains("replayed as") && r.contains("by ana"))
    );

    // Unknown ids are clear errors.
    let missing = SagaId::new().to_string();
    assert!(
        system
            .saga_error(&["show", &missing])
            .await
            .contains("no saga")
    );
    assert!(
        system
            .saga_error(&["dead-letters", "show", "999999"])
            .await
            .contains("no dead letter 999999")
    );
    system.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_the_cli_finds_shows_draws_and_repairs_sagas() {
    the_cli_finds_shows_draws_and_repairs_sagas(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_the_cli_finds_shows_draws_and_repairs_sagas() {
    the_cli_finds_shows_draws_and_repairs_sagas(Backend::Postgres).await;
}

#[test]
fn the_cli_refuses_bad_arguments_before_touching_a_database() {
    for bad in [
        vec!["saga", "list", "--status", "exploded"],
        vec!["saga", "list", "--limit", "0"],
        vec!["saga", "show", "not-an-id"],
        vec!["saga", "retry", "--reason"],
        vec!["saga", "graph"],
        vec!["saga", "list", "--older-than", "soon"],
    ] {
        assert!(Cli::try_parse_from(&bad).is_err(), "{bad:?} parsed");
    }
}

/// On NATS, poison messages sit in JetStream's dead-letter stream: the CLI lists, shows,
/// replays and discards them there (`--nats-url`, ids `nats:<sequence>`), and records each
/// action, resolved, in the saga database's `saga_dead_letters`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_the_cli_repairs_dead_letters_in_the_nats_stream() {
    use saga_core::ports::Transport;
    use saga_store::nats::{NatsOptions, NatsTransport};
    let Some(url) = saga_tests::testdb::nats_url("ops_cli_nats") else {
        return;
    };
    let name = unique("opsdl");
    let options = NatsOptions {
        stream: name.to_uppercase(),
        subject_prefix: name.clone(),
        ack_wait: Duration::from_secs(1),
        max_deliver: 1,
        ..NatsOptions::default()
    };
    let nats = NatsTransport::connect(&url, options.clone())
        .await
        .expect("connects");
    let poison: Vec<Message> = (0..2)
        .map(|n| {
            Message::new(
                "ledger",
                Headers::new().with(headers::MESSAGE_TYPE, "Reserve"),
                format!("{{\"n\": {n}}}"),
            )
        })
        .collect();
    nats.publish(&poison).await.expect("publishes");
    for _ in 0..2 {
        let got = nats
            .receive("ledger", "g", 1, Duration::from_secs(2))
            .await
            .expect("receives");
        nats.release("ledger", "g", &got[0], Duration::ZERO)
            .await
            .expect("releases");
    }
    // Past max_deliver: both are moved to the dead-letter stream.
    let deadline = Instant::now() + WAIT;
    let dead = loop {
        let _ = nats
            .receive("ledger", "g", 1, Duration::from_millis(500))
            .await
            .expect("receives");
        let dead = nats.dead_letters(0, 10).await.expect("lists");
        if dead.len() == 2 {
            break dead;
        }
        assert!(Instant::now() < deadline, "{dead:?}");
    };
    let dir = std::env::temp_dir().join(unique("ops_cli_nats"));
    std::fs::create_dir_all(&dir).expect("a dir");
    let database = vec![
        "--database-url".to_owned(),
        format!("sqlite://{}?mode=rwc", dir.join("saga.db").display()),
    ];
    let nats_args = [
        "--nats-url",
        url.as_str(),
        "--nats-stream",
        options.stream.as_str(),
        "--nats-subject-prefix",
        options.subject_prefix.as_str(),
    ];
    // `saga dead-letters <command> … --nats-url …`
    let saga = async |args: &[&str]| saga(&database, &[args, &nats_args[..]].concat()).await;
    let (first, second) = (
        format!("nats:{}", dead[0].sequence),
        format!("nats:{}", dead[1].sequence),
    );
    let (_, listed) = saga(&["dead-letters", "list"]).await;
    assert!(
        listed.contains(&first) && listed.contains(&second),
        "{listed}"
    );
    let (_, shown) = saga(&["dead-letters", "show", &first]).await;
    assert!(
        shown.contains("\"n\": 0") && shown.contains("channel     ledger"),
        "{shown}"
    );
    let (_, replayed) = saga(&[
        "dead-letters",
        "replay",
        &first,
        "--reason",
        "ledger fixed",
        "--actor",
        "ana",
    ])
    .await;
    assert!(
        replayed.contains(&format!("dead letter {first} replayed as message")),
        "{replayed}"
    );
    let back = nats
        .receive("ledger", "g2", 10, Duration::from_secs(2))
        .await
        .expect("receives");
    assert!(
        back.iter()
            .any(|d| d.message.headers.get(headers::REPLAY_OF)
                == Some(poison[0].id.to_string().as_str())),
        "the replay is back on its channel: {back:?}"
    );
    let (_, discarded) = saga(&[
        "dead-letters",
        "discard",
        &second,
        "--reason",
        "a duplicate",
        "--actor",
        "ana",
    ])
    .await;
    assert!(discarded.contains("discarded"), "{discarded}");
    let (_, open) = saga(&["dead-letters", "list", "--json"]).await;
    assert_eq!(json(&open).as_array().map(Vec::len), Some(0), "{open}");
    let (_, all) = saga(&["dead-letters", "list", "--all", "--json"]).await;
    let all = json(&all);
    let resolved: Vec<&str> = all
        .as_array()
        .expect("an array")
        .iter()
        .filter_map(|l| l["resolved"].as_str())
        .collect();
    assert_eq!(resolved.len(), 2, "{all:#}");
    assert!(
        resolved[0].starts_with("replayed as") && resolved[0].contains("by ana"),
        "{all:#}"
    );
    assert!(resolved[1].starts_with("discarded by ana"), "{all:#}");
    nats.delete_streams().await.expect("deleted");
    let _ = std::fs::remove_dir_all(dir);
}
