//! The console in headless Chromium, on a running FTGO: filter to failed sagas, open one, see
//! its timeline and graph, retry it with a reason and see it complete; replay a dead letter
//! (`tests/browser/console.mjs`, driven by playwright-core). Screenshots land in
//! `target/console-screenshots/` (the README shows copies from `docs/`).
//!
//! Runs when `SAGA_TEST_BROWSER=1` (`.ci/run` sets it after `.ci/browser-setup` installed
//! Debian's chromium and playwright-core); otherwise it says it did not run.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ftgo::app::{Ftgo, FtgoOptions, Storage};
use saga_core::engine::HistoryEvent;
use saga_core::ports::SagaStore;
use saga_core::{SagaId, SagaStatus};
use saga_store::Resolution;
use saga_tests::operating;
use saga_tests::testdb::{notice, remove_ftgo_storage, unique};

const WAIT: Duration = Duration::from_secs(60);

fn browser_enabled() -> bool {
    match std::env::var("SAGA_TEST_BROWSER").as_deref() {
        Ok("1") => true,
        _ if std::env::var("SAGA_REQUIRE_BROWSER").as_deref() == Ok("1") => {
            panic!(
                "SAGA_REQUIRE_BROWSER=1 but SAGA_TEST_BROWSER is not 1: the browser suite must run"
            )
        }
        _ => {
            notice(
                "browser test `console_browser` did not run: run .ci/browser-setup, then set SAGA_TEST_BROWSER=1",
            );
            false
        }
    }
}

async fn wait_for(ftgo: &Ftgo, saga_id: SagaId, status: SagaStatus) {
    operating::wait_for_status(ftgo, saga_id, status, WAIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_repairs_sagas_in_the_console_in_a_real_browser() {
    if !browser_enabled() {
        return;
    }
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("browser/console.mjs");
    let modules =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("browser/node_modules/playwright-core");
    assert!(
        modules.exists(),
        "playwright-core is not installed: run .ci/browser-setup"
    );
    let shots = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/console-screenshots");

    let storage = Storage::Sqlite {
        dir: std::env::temp_dir().join(unique("console_browser")),
    };
    let mut options = FtgoOptions::new(storage.clone());
    options.runtime.poll_interval = Duration::from_millis(50);
    options.transport.poll_interval = Duration::from_millis(50);
    let ftgo = Arc::new(Ftgo::start(options).await.expect("FTGO starts"));
    let approved = operating::place(&ftgo, 2).await;
    let refused = operating::place(&ftgo, 13).await;
    let parked = operating::place(&ftgo, 21).await;
    wait_for(&ftgo, approved, SagaStatus::Completed).await;
    wait_for(&ftgo, refused, SagaStatus::Compensated).await;
    wait_for(&ftgo, parked, SagaStatus::Failed).await;
    // The fix an operator would make before retrying: someone is on shift now.
    assert!(ftgo.kitchen.set_staffed(21, true).await.expect("staffs"));
    // A dead letter: an unusable message on the orchestrator's reply channel.
    let store = ftgo.orders.orchestrator().store().clone();
    let (bogus, _) = operating::dead_letter_a_bogus_reply(
        &ftgo,
        "{\"from\": \"a consumer deployed by mistake\"}",
        WAIT,
    )
    .await;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binds");
    let address = listener.local_addr().expect("an address");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(ftgo::api::serve(listener, ftgo.clone(), async {
        let _ = stopped.await;
    }));
    let output = tokio::process::Command::new("node")
        .arg(&script)
        .arg(format!("http://{address}/console"))
        .arg(&shots)
        .output()
        .await
        .expect("node runs (install Node.js)");
    let _ = stop.send(());
    let _ = server.await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the browser test failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("console browser test passed"), "{stdout}");

    // What the browser did is what the database says.
    assert_eq!(
        ftgo.saga_status(parked).await.expect("reads"),
        Some(SagaStatus::Completed)
    );
    let timeline = store.history(parked).await.expect("history");
    assert!(timeline.iter().any(|h| matches!(
        &h.event,
        HistoryEvent::Operator { actor, reason, .. }
            if actor == "browser-test (console)" && reason == "the night shift is staffed now"
    )));
    let letters = store
        .stored_dead_letters(0, 10, false)
        .await
        .expect("lists");
    let replayed = letters
        .iter()
        .find(|l| l.dead_letter.message.id == bogus.id)
        .expect("the dead letter is kept");
    assert!(matches!(
        &replayed.resolution,
        Some(Resolution::Replayed { reason, by, .. })
            if reason == "the consumer is fixed" && by == "console (console)"
    ));
    for shot in ["console-list.png", "console-saga.png"] {
        assert!(shots.join(shot).exists(), "no screenshot {shot}");
    }
    ftgo.shutdown().await;
    remove_ftgo_storage(storage).await;
}
