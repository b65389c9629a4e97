//! The `saga` binary itself: help, a fresh database, and errors that say what is wrong with
//! exit code 2 (the CLI's behaviour on real data is tested in `tests/ops_cli.rs`).

use std::process::Command;

fn saga(args: &[&str]) -> (i32, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_saga"))
        .args(args)
        .env_remove("SAGA_DATABASE_URL")
        .env_remove("SAGA_SCHEMA")
        .output()
        .expect("the saga binary runs");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn the_binary_lists_its_commands() {
    let (code, out, _) = saga(&["--help"]);
    assert_eq!(code, 0);
    for command in [
        "list",
        "show",
        "graph",
        "retry",
        "skip",
        "cancel",
        "dead-letters",
        "stats",
        "console",
    ] {
        assert!(out.contains(command), "{command} missing from:\n{out}");
    }
}

#[test]
fn the_binary_works_on_a_fresh_database_and_explains_its_errors() {
    let dir = std::env::temp_dir().join(format!("saga_binary_{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir).expect("a temp dir");
    let url = format!("sqlite://{}?mode=rwc", dir.join("saga.db").display());
    let (code, out, err) = saga(&["--database-url", &url, "stats"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("no sagas") && out.contains("dead letters     0 unresolved"),
        "{out}"
    );

    let (code, _, err) = saga(&["list"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("error: no saga database: give --database-url"),
        "{err}"
    );

    let (code, _, err) = saga(&[
        "--database-url",
        &url,
        "show",
        &uuid::Uuid::now_v7().to_string(),
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("error: no saga"), "{err}");

    let (code, _, err) = saga(&["--database-url", &url, "console", "--listen", "0.0.0.0:0"]);
    assert_eq!(code, 2);
    assert!(err.contains("with no token"), "{err}");

    let (code, _, err) = saga(&["--database-url", "mysql://nowhere/db", "stats"]);
    assert_eq!(code, 2);
    assert!(
        err.starts_with("error: cannot open the saga database"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(dir);
}
