//! The deployment files against the real daemon: every series the Grafana dashboard queries
//! is exported by a running daemon, the dashboard is valid JSON, systemd accepts the unit;
//! and JSON logs escape what a client sent.

use std::{collections::BTreeSet, process::Command, time::Duration};

use helo_filter_tests::e2e::*;
use serde_json::Value;
use xtask::{daemon::Daemon, paths, sessions};

fn workspace_file(path: &str) -> std::path::PathBuf {
    paths::workspace_root().join(path)
}

/// Every `expr` of the dashboard.
fn expressions(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("expr", Value::String(expr)) => out.push(expr.clone()),
                    _ => expressions(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| expressions(v, out)),
        _ => {}
    }
}

/// The `helo_filter_*` series names an expression reads.
fn series(expr: &str) -> Vec<String> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|word| word.starts_with("helo_filter_"))
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_dashboard_queries_only_series_the_daemon_exports() {
    let text = std::fs::read_to_string(workspace_file("deploy/grafana/helo-filter.json"))
        .expect("the dashboard");
    let dashboard: Value = serde_json::from_str(&text).expect("the dashboard is valid JSON");
    let mut exprs = Vec::new();
    expressions(&dashboard, &mut exprs);
    assert!(exprs.len() >= 10, "only {} queries", exprs.len());
    let wanted: BTreeSet<String> = exprs.iter().flat_map(|e| series(e)).collect();

    let lab = lab("m");
    let daemon = Daemon::start(&lab, &[], false).expect("starting the daemon");
    // One judged session, so that the histograms have observations too.
    let _ = sessions::swaks_transcript(&lab, v4(1, 55001), sessions::Greeting::Ehlo, "localhost");
    let page = wait_for_metric(&daemon, "helo_filter_helo_to_action_seconds_count", |v| {
        v >= 1.0
    });
    let exported: BTreeSet<&str> = page
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    let missing: Vec<&String> = wanted
        .iter()
        .filter(|s| !exported.contains(s.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "queried but not exported: {missing:?}\n{page}"
    );
}

/// `systemd-analyze verify` accepts the unit, which is `Type=notify` (the daemon reports
/// READY=1 once attached), reloads synchronously through the CLI, and has a watchdog.
#[test]
fn systemd_accepts_the_unit() {
    // The unit names the installed binary; verify a copy that names the built one.
    let unit = std::fs::read_to_string(workspace_file("deploy/systemd/helo-filter.service"))
        .expect("the unit");
    let settings: Vec<&str> = unit
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .collect();
    for wanted in [
        "Type=notify",
        "NotifyAccess=main",
        "ExecStart=/usr/bin/helo-filter run --config /etc/helo-filter/helo-filter.toml",
        "ExecReload=/usr/bin/helo-filter reload",
        "WatchdogSec=30s",
        "LimitNOFILE=65536",
        "Restart=on-failure",
    ] {
        assert!(settings.contains(&wanted), "the unit lacks {wanted:?}");
    }
    let binary = paths::daemon_binary();
    let dir = std::env::temp_dir().join(format!("hf-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let copy = dir.join("helo-filter.service");
    std::fs::write(
        &copy,
        unit.replace("/usr/bin/helo-filter", &binary.to_string_lossy()),
    )
    .expect("copy");
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output()
        .expect("systemd-analyze (Debian package systemd)");
    let _ = std::fs::remove_dir_all(&dir);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "systemd-analyze verify: {said}");
    assert!(!said.contains("helo-filter.service"), "{said}");
}

/// `--log-format json`: one JSON object per line; a verdict's facts are keys of their own
/// (not text in a message), and a HELO's control characters escaped (no raw escape sequence
/// reaches the log).
#[test]
fn json_logs_carry_the_verdict_as_keys_and_escape_what_clients_send() {
    let lab = lab("j");
    let mut daemon =
        Daemon::start(&lab, &["--log-format", "json"], false).expect("starting the daemon");
    let _ = sessions::raw_session(
        &lab,
        v4(1, 55101),
        &[b"EHLO evil\x1b[31m.example\r\n"],
        Duration::ZERO,
    );
    let line = daemon
        .wait_for(Duration::from_secs(10), |l| {
            l.contains("\"client\":\"203.0.113.11:55101\"")
        })
        .expect("the session is logged");
    let record: Value = serde_json::from_str(&line).expect("a JSON log line");
    assert_eq!(record["message"], "verdict", "{record}");
    assert_eq!(record["kind"], "helo", "{record}");
    assert_eq!(record["verb"], "EHLO", "{record}");
    assert_eq!(record["line"], "EHLO evil\\x1b[31m.example", "{record}");
    assert_eq!(record["verdict"], "reject", "{record}");
    assert_eq!(record["reasons"], "syntax", "{record}");
    assert_eq!(record["action"], "reply", "{record}");
    assert!(record["score"].is_u64(), "{record}");
    assert!(
        record["server"]
            .as_str()
            .is_some_and(|s| s.ends_with(":25")),
        "{record}"
    );
    assert!(!line.contains('\x1b'), "{line}");
    assert!(
        daemon
            .lines()
            .iter()
            .all(|l| serde_json::from_str::<Value>(l).is_ok())
    );
}
