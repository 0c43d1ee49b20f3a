//! End to end, the daemon's life: every refused configuration is refused alike by `config
//! check`, `run` and `reload`; a panicking task ends the daemon instead of leaving it
//! half-alive; a full policy queue passes sessions unjudged.

use std::{process::Command, time::Duration};

use helo_filter_tests::e2e::*;
use xtask::{
    corpus,
    daemon::{Daemon, cli, metric_value},
    paths::daemon_binary,
    sessions::{self, Greeting},
};

/// Keys the lab's daemon is given as flags (`--iface`, `--control-socket`, `--state-dir`,
/// `--bpffs-dir`), which win over the file on `reload` as on `run`.
const SET_BY_THE_LAB_FLAGS: [&str; 4] = [
    "kernel.interfaces",
    "control.socket",
    "state.dir",
    "state.bpffs_dir",
];

fn stderr_of(command: &mut Command) -> (Option<i32>, String) {
    let output = command.output().expect("running helo-filter");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// One configuration file, fed in turn each refused text: `config check` and `run` refuse
/// it, and a running daemon's `reload` refuses it and keeps running, all three with the
/// same message naming the file, the line and the key.
#[test]
fn every_refused_configuration_is_refused_alike_by_check_run_and_reload() {
    let lab = lab("cf");
    let path = lab.daemon_dir().join("helo-filter.toml");
    std::fs::create_dir_all(lab.daemon_dir()).expect("the daemon's directory");
    std::fs::write(&path, "").expect("writing an empty configuration");
    let shown = path.display().to_string();
    let daemon = Daemon::start(&lab, &["--config", &shown], false).expect("starting the daemon");
    let configs = corpus::refused_configs();
    assert!(configs.len() >= 20, "{} configurations", configs.len());
    for config in configs {
        let name = &config.name;
        std::fs::write(&path, &config.text).expect("writing the configuration");
        let located = format!("{shown}:{}:1: key `{}`: ", config.line, config.key);

        let (code, check) = stderr_of(
            Command::new(daemon_binary())
                .args(["config", "check"])
                .arg(&path),
        );
        assert_eq!(code, Some(1), "{name}: config check: {check}");
        let message = check
            .trim()
            .strip_prefix("helo-filter: ")
            .unwrap_or_else(|| panic!("{name}: config check said {check:?}"));
        assert!(
            message.starts_with(&located) && message.contains(&config.words),
            "{name}: {message}"
        );

        let (code, run) = stderr_of(
            Command::new(daemon_binary())
                .args(["run", "--config"])
                .arg(&path),
        );
        assert_eq!(code, Some(1), "{name}: run: {run}");
        assert_eq!(run.trim(), format!("helo-filter: {message}"), "{name}: run");

        let reload = cli(&lab, &["reload"]).expect("reload");
        let refusal = String::from_utf8_lossy(&reload.stderr);
        if SET_BY_THE_LAB_FLAGS.contains(&config.key.as_str()) {
            // The running daemon's flag wins over the file, as it would for `run`.
            assert_eq!(reload.status.code(), Some(0), "{name}: reload: {refusal}");
            continue;
        }
        assert_eq!(reload.status.code(), Some(1), "{name}: reload: {refusal}");
        assert!(
            refusal.contains("reload refused") && refusal.trim_end().ends_with(message),
            "{name}: reload said {refusal:?}, config check {message:?}"
        );
    }
    let status = cli(&lab, &["status"]).expect("status");
    assert!(
        status.status.success(),
        "the daemon stopped serving after the refused reloads"
    );
    daemon.stop().expect("stopping the daemon");
}

/// A panic in the policy stage (set off with the `fault-injection` build's
/// `HELO_FILTER_FAULT=stage_panic`) ends the daemon with status 70 and a log line naming
/// the task; the pinned program then fails open once the heartbeat is stale, so mail flows.
#[test]
fn a_panic_in_the_policy_stage_ends_the_daemon() {
    let lab = lab("pa");
    let mut daemon = Daemon::start_with_env(
        &lab,
        &["--heartbeat-timeout-ms", "1000"],
        &[("HELO_FILTER_FAULT", "stage_panic")],
        false,
    )
    .expect("starting the daemon");
    // The session's HELO is judged, and the judging task panics.
    let _ = sessions::swaks_transcript(&lab, v4(0, 46001), Greeting::Ehlo, "mail.example.net");
    let status = daemon
        .wait_exit(Duration::from_secs(20))
        .unwrap_or_else(|e| {
            panic!(
                "the daemon did not exit after the panic ({e}); log:\n{}",
                daemon.lines().join("\n")
            )
        });
    assert_eq!(
        status.code(),
        Some(70),
        "log:\n{}",
        daemon.lines().join("\n")
    );
    let lines = daemon.lines();
    assert!(
        lines.iter().any(|l| l.contains(
            "task \"policy stage\" panicked: fault injected: stage_panic; exiting with status 70"
        )),
        "no log line names the panicked task:\n{}",
        lines.join("\n")
    );
    // Not half-alive: the process is gone, and the program it left pinned lets mail through
    // once its heartbeat is older than the timeout.
    std::thread::sleep(Duration::from_millis(1500));
    let (completed, transcript) =
        sessions::swaks_transcript(&lab, v4(1, 46002), Greeting::Ehlo, "mail.example.net")
            .expect("swaks");
    assert!(
        completed,
        "a good session did not complete after the daemon exited:\n{transcript}"
    );
}

/// A full policy queue passes sessions unjudged, counted: with the stage stalled by the
/// first session and the queue shrunk to one (the `fault-injection` build's `stage_stall`
/// and `tiny_queue`), the third session finds it full; every session still completes, once
/// the gate's deadline has let it through.
#[test]
fn a_full_policy_queue_passes_sessions_unjudged() {
    let lab = lab("qf");
    let mut daemon = Daemon::start_with_env(
        &lab,
        &[
            "--gate-deadline-ms",
            "1000",
            "--reputation-threshold",
            "1000",
        ],
        &[("HELO_FILTER_FAULT", "stage_stall,tiny_queue")],
        false,
    )
    .expect("starting the daemon");
    let clients = [v4(0, 46101), v4(1, 46102), v4(2, 46103)];
    for client in clients {
        let (completed, transcript) =
            sessions::swaks_transcript(&lab, client, Greeting::Ehlo, "mail.example.net")
                .expect("swaks");
        assert!(
            completed,
            "a session of {client} did not complete with the stage stalled:\n{transcript}"
        );
    }
    let unjudged = format!(
        "policy queue full: passing the session of {} unjudged",
        clients[2]
    );
    daemon
        .wait_for(Duration::from_secs(10), |l| l.contains(&unjudged))
        .unwrap_or_else(|e| {
            panic!(
                "no \"{unjudged}\" line ({e}); log:\n{}",
                daemon.lines().join("\n")
            )
        });
    let page = wait_for_metric(
        &daemon,
        "helo_filter_fail_open_total{cause=\"queue_full\"}",
        |v| v >= 1.0,
    );
    assert_eq!(
        metric_value(&page, "helo_filter_fail_open_total{cause=\"queue_full\"}"),
        Some(1.0),
        "only the third session found the queue full; metrics:\n{page}"
    );
    daemon.stop().expect("stopping the daemon");
}
