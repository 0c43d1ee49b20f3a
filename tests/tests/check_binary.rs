//! The whole corpus through the `helo-filter check --json` binary: its verdict, its exit
//! status, one JSON object on one line, and for rejects a primary reason the row allows.
//! DNS rows resolve through the fixture dnsmasq.

use std::process::Command;

use xtask::{
    corpus::{IDENTITY_ARGS, corpus},
    dns_fixture::Dnsmasq,
    paths::daemon_binary,
};

#[test]
fn every_corpus_row_through_the_check_binary() {
    let binary = daemon_binary();
    assert!(
        binary.exists(),
        "{} missing: cargo xtask test builds it",
        binary.display()
    );
    let dns = Dnsmasq::start(Some(60), &[]);
    let rows = corpus();
    assert!(rows.len() >= 50, "the corpus has {} rows", rows.len());
    let mut failures = Vec::new();
    for row in &rows {
        let mut command = Command::new(&binary);
        command
            .args(["check", "--json", "--ip", &row.client.to_string()])
            .args(IDENTITY_ARGS);
        if row.dns {
            command.args(["--dns-server", &dns.addr.to_string()]);
        } else {
            command.arg("--offline");
        }
        let out = command
            .arg("--")
            .arg(&row.helo)
            .output()
            .expect("running check");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let what = format!("line {} {:?} from {}", row.line, row.helo, row.client);
        assert_eq!(
            stdout.lines().count(),
            1,
            "{what}: one line expected: {stdout}"
        );
        let json: serde_json::Value = serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {stdout}"));
        let verdict = json["verdict"].as_str().unwrap_or_default();
        let reasons: Vec<&str> = json["reasons"]
            .as_array()
            .map(|a| a.iter().filter_map(|r| r.as_str()).collect())
            .unwrap_or_default();
        let expected_exit = if row.reject { 1 } else { 0 };
        let want = if row.reject { "reject" } else { "accept" };
        if verdict != want || out.status.code() != Some(expected_exit) {
            failures.push(format!(
                "{what}: got {verdict} {reasons:?} ({}), want {want}",
                out.status
            ));
        } else if row.reject
            && !reasons
                .first()
                .is_some_and(|r| row.reasons.iter().any(|a| a == r))
        {
            failures.push(format!(
                "{what}: primary {reasons:?} not among {:?}",
                row.reasons
            ));
        }
        assert_eq!(json["helo"], row.helo.as_str(), "{what}");
        assert!(
            json["score"].is_number() && json["notes"].is_array(),
            "{what}: {stdout}"
        );
    }
    assert!(
        failures.is_empty(),
        "{} rows failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn usage_errors_exit_2() {
    let status = Command::new(daemon_binary())
        .args(["check", "--json", "mail.example.net"])
        .output()
        .expect("running check");
    assert_eq!(
        status.status.code(),
        Some(2),
        "a missing --ip is a usage error"
    );
    let status = Command::new(daemon_binary())
        .args([
            "check",
            "--ip",
            "203.0.113.10",
            "--offline",
            "--",
            "-mail.example.net",
        ])
        .output()
        .expect("running check");
    assert_eq!(
        status.status.code(),
        Some(1),
        "a HELO after -- may start with '-'"
    );
}
