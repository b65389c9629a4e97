//! `ftgo --log-format json`: every log line is one JSON object, and saga events carry the
//! saga's id and type as fields.

use std::process::Command;

#[test]
fn json_logs_are_one_object_per_line_with_saga_fields() {
    let dir = std::env::temp_dir().join(format!("ftgo_logs_{}", std::process::id()));
    let output = Command::new(env!("CARGO_BIN_EXE_ftgo"))
        .args(["--log-format", "json", "--data-dir"])
        .arg(&dir)
        .env("RUST_LOG", "info")
        .output()
        .expect("the demo runs");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    // The demo's own progress lines are text; log lines are JSON objects.
    let logs: Vec<serde_json::Value> = stderr
        .lines()
        .filter(|line| line.starts_with('{'))
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    assert!(!logs.is_empty(), "no JSON log lines in:\n{stderr}");
    let finished: Vec<&serde_json::Value> = logs
        .iter()
        .filter(|l| l["message"] == "saga finished")
        .collect();
    assert_eq!(finished.len(), 7, "{stderr}");
    for line in finished {
        assert!(
            line["saga_id"].as_str().is_some_and(|id| id.len() == 36),
            "{line}"
        );
        assert!(
            line["saga_type"]
                .as_str()
                .is_some_and(|t| t.ends_with("OrderSaga")),
            "{line}"
        );
        assert!(
            line["level"] == "INFO" && line["timestamp"].is_string(),
            "{line}"
        );
    }
}
