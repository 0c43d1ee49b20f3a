//! End to end, what an installed helo-filter reads and shows by itself: the configuration
//! in /etc/helo-filter/helo-filter.toml (bind-mounted from a test directory in a mount
//! namespace of the commands' own) read alike by `check`, the daemon and the operator CLI,
//! which finds the control socket there; durations with units; and `explain` on a running
//! daemon.

use std::{net::SocketAddr, path::PathBuf, process::Output};

use helo_filter_tests::e2e::*;
use serde_json::Value;
use xtask::{
    daemon::{Daemon, EtcOverlay},
    lab::Lab,
    paths::daemon_binary,
    sessions::{self, Greeting},
};

/// A directory holding `helo-filter.toml` with `text`, for an [`EtcOverlay`].
fn etc_dir(lab: &Lab, text: &str) -> PathBuf {
    let dir = lab.daemon_dir().join("etc-helo-filter");
    std::fs::create_dir_all(&dir).expect("etc dir");
    std::fs::write(dir.join("helo-filter.toml"), text).expect("config");
    dir
}

/// `helo-filter ARGS` on the host, seeing `etc` as /etc/helo-filter.
fn with_etc(etc: &EtcOverlay, args: &[&str]) -> Output {
    etc.command(None, &daemon_binary().to_string_lossy())
        .args(args)
        .output()
        .expect("helo-filter runs")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The identity of `helo-policy.md` in a file, and where the lab's daemon listens.
fn identity_file(lab: &Lab, extra: &str) -> String {
    format!(
        "[policy]\nour_names = [\"mx.example.org\"]\nour_domains = [\"example.org\"]\n\
         our_addrs = [\"198.51.100.25\", \"2001:db8:25::25\"]\n\
         [control]\nsocket = \"{}\"\n{extra}",
        lab.control_socket().display()
    )
}

/// Plays `EHLO helo` from `client` and returns the daemon's verdict line for it.
fn judged(daemon: &Daemon, lab: &Lab, client: SocketAddr, helo: &str) -> String {
    let _ = sessions::swaks_transcript(lab, client, Greeting::Ehlo, helo).expect("swaks");
    verdict_line(daemon, client)
}

/// The operator docs' troubleshooting case: `mx.example.org` from a stranger is accepted by
/// a bare `check`, and rejected as `impersonation` once the file with our identity is in
/// /etc — by `check` and by the daemon alike, neither told where the file is. The CLI finds
/// the daemon's control socket in the same file; `explain` says why an address is treated
/// as it is; durations take units in the file and in flags.
#[test]
fn the_default_file_is_read_by_check_the_daemon_and_the_cli() {
    let lab = lab("etc");
    let etc = EtcOverlay::new(&etc_dir(
        &lab,
        &identity_file(
            &lab,
            "[reputation]\ndeny_ttl_secs = \"2h\"\nthreshold = 1000\n",
        ),
    ))
    .expect("the /etc overlay");

    let bare = with_etc(
        &etc,
        &[
            "check",
            "--no-config",
            "--offline",
            "--ip",
            "203.0.113.5",
            "mx.example.org",
        ],
    );
    assert_eq!(bare.status.code(), Some(0), "{}", stdout(&bare));
    let checked = with_etc(
        &etc,
        &[
            "check",
            "--offline",
            "--ip",
            "203.0.113.5",
            "mx.example.org",
        ],
    );
    assert_eq!(checked.status.code(), Some(1), "{}", stdout(&checked));
    assert!(
        stdout(&checked).contains("impersonation"),
        "{}",
        stdout(&checked)
    );
    let named = with_etc(
        &etc,
        &[
            "check",
            "-c",
            "/nonexistent/helo-filter.toml",
            "--offline",
            "--ip",
            "203.0.113.5",
            "x.example",
        ],
    );
    assert_eq!(
        named.status.code(),
        Some(2),
        "a missing -c file is an error"
    );
    assert!(
        String::from_utf8_lossy(&named.stderr).contains("/nonexistent/helo-filter.toml"),
        "{named:?}"
    );

    let daemon = Daemon::start_reading_etc(&lab, &etc, &[], false).expect("starting the daemon");
    let client = v4(4, 51001);
    let line = judged(&daemon, &lab, client, "mx.example.org");
    assert!(
        line.contains(" verdict=reject reasons=impersonation"),
        "the daemon judged otherwise than check: {line}"
    );

    // No --control-socket: the CLI reads it from the file.
    let status = with_etc(&etc, &["status", "--json"]);
    assert!(status.status.success(), "{status:?}");
    let status: Value = serde_json::from_slice(&status.stdout).expect("status JSON");
    assert_eq!(
        status["configuration"]["file"], "/etc/helo-filter/helo-filter.toml",
        "{status}"
    );

    // A duration with a unit in a flag; the file's `deny_ttl_secs = "2h"` was read too.
    let added = with_etc(
        &etc,
        &[
            "deny",
            "add",
            "203.0.113.0/24",
            "--ttl",
            "1d",
            "--comment",
            "a bot farm",
            "--json",
        ],
    );
    assert!(added.status.success(), "{added:?}");
    let entry: Value = serde_json::from_slice(&added.stdout).expect("entry JSON");
    let ttl = entry["expires_in_secs"].as_u64().expect("an expiry");
    assert!((86_390..=86_400).contains(&ttl), "--ttl 1d gave {entry}");
    let refused = with_etc(&etc, &["deny", "add", "203.0.113.7", "--ttl", "1y"]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("90s, 15m, 12h, 1d, 1w"),
        "{refused:?}"
    );

    // explain: the deny entry that covers the address, and its last session.
    let explained = with_etc(&etc, &["explain", "203.0.113.14", "--json"]);
    assert!(explained.status.success(), "{explained:?}");
    let x: Value = serde_json::from_slice(&explained.stdout).expect("explanation JSON");
    assert_eq!(x["standing"], "denied", "{x}");
    assert_eq!(x["deny"][0]["net"], "203.0.113.0/24", "{x}");
    assert_eq!(x["deny"][0]["comment"], "a bot farm", "{x}");
    let session = &x["sessions"][0];
    assert_eq!(session["line"], "EHLO mx.example.org", "{x}");
    assert_eq!(session["verdict"], "reject", "{x}");
    assert_eq!(session["reasons"][0], "impersonation", "{x}");
    let human = stdout(&with_etc(&etc, &["explain", "203.0.113.14"]));
    for expected in [
        "203.0.113.14: denied",
        "DENY ENTRY",
        "203.0.113.0/24  operator  in 1d",
        "a bot farm",
        "EHLO mx.example.org",
        "impersonation",
    ] {
        assert!(human.contains(expected), "{expected:?} missing:\n{human}");
    }
    let unknown = with_etc(&etc, &["explain", "198.51.100.99", "--json"]);
    let x: Value = serde_json::from_slice(&unknown.stdout).expect("explanation JSON");
    assert_eq!(x["standing"], "judged", "{x}");
    assert_eq!(x["sessions"], Value::Array(Vec::new()), "{x}");
    drop(daemon);
}
