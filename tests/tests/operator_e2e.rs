//! End to end, the operator's surface: every CLI subcommand against a running daemon, with
//! its effect checked in the kernel; protection across SIGTERM and `kill -9`; corrupt state
//! and bad configuration; malformed control requests and a non-root user.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::{fs::PermissionsExt as _, net::UnixStream},
    process::{Command, Output},
    time::Duration,
};

use helo_filter_tests::{e2e::*, require_root};
use serde_json::Value;
use xtask::{
    daemon::{Daemon, cli},
    lab::Lab,
    paths, process,
    sessions::{self, Greeting},
};

/// Runs a subcommand with `--json` and parses its one line.
fn json(lab: &Lab, args: &[&str]) -> Value {
    let mut with = args.to_vec();
    with.push("--json");
    let text = cli_ok(lab, &with);
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{args:?}: {e}: {text}"))
}

fn refused(lab: &Lab, args: &[&str]) -> String {
    let out: Output = cli(lab, args).expect("the CLI runs");
    assert_eq!(
        out.status.code(),
        Some(1),
        "helo-filter {args:?} was not refused"
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn nets(list: &Value) -> Vec<(String, String)> {
    list["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| {
            (
                e["net"].as_str().unwrap_or_default().to_owned(),
                e["source"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

fn completes(lab: &Lab, client: std::net::SocketAddr, helo: &str) -> bool {
    sessions::swaks_transcript(lab, client, Greeting::Ehlo, helo)
        .expect("swaks")
        .0
}

/// Plays a session that the filter must reset for `reason`: what the client saw (connected,
/// then cut before its MAIL FROM was answered: never a refusal, a lost connect or a whole
/// session) and the daemon's log line for that client (a reject for `reason`, acted on with a
/// reset).
fn assert_reset_for(
    daemon: &Daemon,
    lab: &Lab,
    client: std::net::SocketAddr,
    helo: &str,
    reason: &str,
) {
    let run = sessions::swaks_run(lab, client, Greeting::Ehlo, helo)
        .unwrap_or_else(|e| panic!("{client} {helo}: {e:#}"));
    let transcript = &run.transcript;
    assert!(
        matches!(run.outcome, sessions::SwaksOutcome::Cut { .. }),
        "{client} {helo}: {} (not a reset):\n{transcript}",
        run.outcome
    );
    assert!(
        !mail_from_answered(transcript),
        "{client} {helo}: MAIL FROM was answered:\n{transcript}"
    );
    let tag = format!("client={client} ");
    let mut line = None;
    let _ = process::wait_until(Duration::from_secs(5), || {
        line = daemon.lines().into_iter().find(|l| l.contains(&tag));
        line.is_some()
    });
    let line =
        line.unwrap_or_else(|| panic!("no log line for {client}:\n{}", daemon.lines().join("\n")));
    let field = |name: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(name))
            .unwrap_or_default()
            .to_owned()
    };
    assert!(
        line.contains(&format!("line=\"EHLO {helo}\""))
            && field("verdict=") == "reject"
            && field("reasons=").split(',').any(|r| r == reason)
            && field("action=") == "rst",
        "{client} {helo}: not logged as a reset for {reason}: {line}"
    );
}

/// The reply action `reply` gives a HELO rejected for `reason` with the default texts.
fn seed_reject(reason: &str) -> String {
    format!("550 5.7.1 Access denied - bogus HELO ({reason})")
}

/// The value of one of `status`'s facts (`deployment  mx`), for a person's output.
fn fact(status: &str, name: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name).filter(|rest| rest.starts_with("  ")))
        .map(|rest| rest.trim().to_owned())
        .unwrap_or_else(|| panic!("no {name:?} in status:\n{status}"))
}

/// Every subcommand, and what it does to the kernel and the policy.
#[test]
fn every_cli_subcommand_acts_on_the_running_daemon() {
    let lab = lab("o");
    let config = config_file(&lab, "[policy]\nbundle = \"standard\"\n");
    let args = [
        "--config",
        &config,
        "--action",
        "rst",
        NO_REPUTATION[0],
        NO_REPUTATION[1],
    ];
    let daemon = Daemon::start(&lab, &args, false).expect("starting the daemon");

    // deny add: the source's SYNs are dropped.
    cli_ok(
        &lab,
        &["deny", "add", "203.0.113.14", "--comment", "spam run"],
    );
    assert!(!connects(&lab, v4(4, 53001)), "a denied source connected");
    // deny add --ttl: dropped, then let go when the time is up. Expiry counts whole
    // seconds, so a TTL of 10 s is in force for at least 9: room for the checks below.
    let added = std::time::Instant::now();
    cli_ok(&lab, &["deny", "add", "203.0.113.13/32", "--ttl", "10"]);
    assert!(!connects(&lab, v4(3, 53002)), "a denied source connected");
    // allow add --ttl: left alone, then judged again.
    cli_ok(&lab, &["allow", "add", "2001:db8:1::13", "--ttl", "10"]);
    assert!(
        completes(&lab, v6(3, 53005), "localhost"),
        "an allow-listed source was cut"
    );
    assert!(
        added.elapsed() < Duration::from_secs(9),
        "the in-force checks outlasted the TTL ({:?}): the test is too slow to tell",
        added.elapsed()
    );
    // Both lapse within a few seconds of their end (polled, never a fixed sleep).
    let lapse = Duration::from_secs(10 + 5);
    let lapsed = process::wait_until(lapse.saturating_sub(added.elapsed()), || {
        connects(&lab, v4(3, 53003))
    });
    assert!(lapsed.is_ok(), "the --ttl deny entry did not expire");
    let mut port = 53006;
    let lapsed = process::wait_until(lapse.saturating_sub(added.elapsed()), || {
        port += 1;
        !completes(&lab, v6(3, port), "localhost")
    });
    assert!(lapsed.is_ok(), "allow --ttl did not expire");
    assert!(nets(&json(&lab, &["allow", "list"])).is_empty());
    let denied = nets(&json(&lab, &["deny", "list"]));
    assert!(
        denied.contains(&("203.0.113.14/32".into(), "operator".into())),
        "{denied:?}"
    );
    assert!(
        !denied.iter().any(|(net, _)| net == "203.0.113.13/32"),
        "{denied:?}"
    );
    // deny del: the source connects again.
    cli_ok(&lab, &["deny", "del", "203.0.113.14"]);
    assert!(
        connects(&lab, v4(4, 53004)),
        "deny del left the source denied"
    );
    assert!(refused(&lab, &["deny", "del", "203.0.113.14"]).contains("not in the deny list"));
    let out = cli(&lab, &["deny", "del", "203.0.113.14", "--json"]).expect("the CLI runs");
    assert_eq!(out.status.code(), Some(1));
    let line: Value = serde_json::from_slice(&out.stdout).expect("a JSON line");
    assert_eq!(line["ok"], false, "{line}");
    assert_eq!(line["kind"], "not_found", "{line}");

    // allow add: an allow-listed source's bogus HELO passes; allow del ends that.
    cli_ok(
        &lab,
        &["allow", "add", "203.0.113.12", "--comment", "partner"],
    );
    assert!(
        completes(&lab, v4(2, 53010), "localhost"),
        "an allow-listed source was cut"
    );
    let allowed = json(&lab, &["allow", "list"]);
    assert_eq!(allowed["entries"][0]["comment"], "partner", "{allowed}");
    cli_ok(&lab, &["allow", "del", "203.0.113.12"]);
    assert_reset_for(&daemon, &lab, v4(2, 53011), "localhost", "localhost");

    // deny add --helo: a good name matching the pattern is now bogus.
    assert!(completes(&lab, v4(0, 53020), "mail.example.net"));
    cli_ok(&lab, &["deny", "add", "--helo", "*.example.net"]);
    assert_reset_for(
        &daemon,
        &lab,
        v4(0, 53021),
        "mail.example.net",
        "denylisted",
    );
    let helo = json(&lab, &["deny", "list"])["helo"].clone();
    assert_eq!(helo[0]["pattern"], "*.example.net", "{helo}");
    cli_ok(&lab, &["deny", "del", "--helo", "*.example.net"]);
    assert!(completes(&lab, v4(0, 53022), "mail.example.net"));
    assert!(refused(&lab, &["deny", "add", "--helo", "/(/"]).contains("--helo"));

    // reputation: the bogus sessions above raised 203.0.113.12's score.
    let listed = json(&lab, &["reputation", "list", "--top", "5"]);
    assert_eq!(
        listed["sources"][0]["source"], "203.0.113.12/32",
        "{listed}"
    );
    let shown = json(&lab, &["reputation", "show", "203.0.113.12"]);
    assert!(shown["score"].as_f64().unwrap_or(0.0) > 1.9, "{shown}");
    cli_ok(&lab, &["reputation", "reset", "203.0.113.12"]);
    let shown = json(&lab, &["reputation", "show", "203.0.113.12"]);
    assert_eq!(shown["score"].as_f64(), Some(0.0), "{shown}");

    // status and flows.
    let status = json(&lab, &["status"]);
    assert_eq!(
        status["interfaces"][0]["name"],
        lab.filter_iface.as_str(),
        "{status}"
    );
    assert!(status["interfaces"][0]["mode"].is_string(), "{status}");
    assert_eq!(status["deployment"], "mx");
    assert_eq!(status["bundle"], "standard");
    assert_eq!(status["monitor"], false);
    assert!(
        status["counters"]["PacketsSeen"].as_u64().unwrap_or(0) > 0,
        "{status}"
    );
    let flows = json(&lab, &["flows", "--limit", "50"]);
    assert!(
        flows["flows"].as_array().expect("flows").iter().any(|f| {
            f["line"] == "EHLO localhost" && f["verdict"] == "reject" && f["action"] == "rst"
        }),
        "{flows}"
    );
    assert_eq!(fact(&cli_ok(&lab, &["status"]), "deployment"), "mx");

    // reload: a new deny pattern in the file takes effect; a bad file is refused and the
    // running configuration kept.
    config_file(&lab, "[policy]\ndeny_helo = [\"mail.example.net\"]\n");
    cli_ok(&lab, &["reload"]);
    assert_reset_for(
        &daemon,
        &lab,
        v4(0, 53030),
        "mail.example.net",
        "denylisted",
    );
    config_file(&lab, "[policy]\nbundle = \"paranoid\"\n");
    let refusal = refused(&lab, &["reload"]);
    assert!(
        refusal.contains("reload refused") && refusal.contains(":2:"),
        "{refusal}"
    );
    assert_reset_for(
        &daemon,
        &lab,
        v4(0, 53031),
        "mail.example.net",
        "denylisted",
    );

    // config check, offline.
    let good = config_file(&lab, "[policy]\nbundle = \"strict\"\n");
    assert!(cli_ok(&lab, &["config", "check", &good]).contains("valid"));
    let bad = config_file(&lab, "[dns]\ndeadline_ms = 0\n");
    let error = refused(&lab, &["config", "check", &bad]);
    assert!(
        error.contains(":2:") && error.contains("key `dns.deadline_ms`"),
        "{error}"
    );

    // detach: nothing pinned or attached any more, and the daemon is gone.
    let pins = lab.bpffs_dir().expect("pins");
    cli_ok(&lab, &["detach"]);
    let exited = process::wait_until(Duration::from_secs(10), || !lab.control_socket().exists());
    assert!(exited.is_ok(), "the daemon did not exit after detach");
    assert!(!pins.exists(), "{} is still there", pins.display());
    let link = Command::new("ip")
        .args([
            "-n",
            &lab.filter_ns,
            "link",
            "show",
            "dev",
            &lab.filter_iface,
        ])
        .output()
        .expect("ip link");
    let link = String::from_utf8_lossy(&link.stdout);
    assert!(!link.contains("xdp"), "XDP is still attached: {link}");
    drop(daemon);
}

/// `status` says what is enforced: after a reload that changes a reloadable key (`[policy]
/// bundle`) and one that needs a restart (`[enforce] action`), the bundle follows the file,
/// the action stays the enforced one and `[enforce]` is pending a restart; after a refused
/// reload the previous file stays in force and the refusal is shown with its error.
#[test]
fn status_tells_what_is_enforced_across_reloads() {
    let lab = lab("w");
    let config = config_file(&lab, "[policy]\nbundle = \"standard\"\n");
    let _daemon = Daemon::start(&lab, &["--config", &config], false).expect("starting the daemon");
    let status = json(&lab, &["status"]);
    let start = &status["configuration"];
    assert_eq!(start["file"], config.as_str(), "{status}");
    assert_eq!(start["applied"], serde_json::json!([]), "{status}");
    assert_eq!(start["pending_restart"], serde_json::json!([]), "{status}");
    assert!(start["refused"].is_null(), "{status}");
    let loaded_at = start["loaded_at"].as_u64().expect("loaded_at");

    // A good reload: the bundle is applied, the action waits for a restart.
    std::thread::sleep(Duration::from_millis(1100));
    config_file(
        &lab,
        "[policy]\nbundle = \"strict\"\n\n[enforce]\naction = \"drop\"\n",
    );
    let reloaded = json(&lab, &["reload"]);
    assert_eq!(
        reloaded["applied"],
        serde_json::json!(["policy"]),
        "{reloaded}"
    );
    assert_eq!(
        reloaded["pending_restart"],
        serde_json::json!(["enforce"]),
        "{reloaded}"
    );
    let status = json(&lab, &["status"]);
    assert_eq!(status["bundle"], "strict", "{status}");
    assert_eq!(
        status["action"], "reply",
        "the enforced action changed: {status}"
    );
    let after = &status["configuration"];
    assert_eq!(after["applied"], serde_json::json!(["policy"]), "{status}");
    assert_eq!(
        after["pending_restart"],
        serde_json::json!(["enforce"]),
        "{status}"
    );
    assert!(after["refused"].is_null(), "{status}");
    let reloaded_at = after["loaded_at"].as_u64().expect("loaded_at");
    assert!(reloaded_at > loaded_at, "{status}");
    let human = cli_ok(&lab, &["status"]);
    assert_eq!(fact(&human, "action"), "reply", "{human}");
    assert!(
        fact(&human, "pending restart").starts_with("enforce (changed in the file"),
        "{human}"
    );

    // A refused reload: the previous file stays in force, and status says why.
    config_file(&lab, "[policy]\nbundle = \"paranoid\"\n");
    let refusal = refused(&lab, &["reload"]);
    assert!(refusal.contains("reload refused"), "{refusal}");
    let status = json(&lab, &["status"]);
    assert_eq!(status["bundle"], "strict", "{status}");
    assert_eq!(status["action"], "reply", "{status}");
    let kept = &status["configuration"];
    assert_eq!(kept["loaded_at"].as_u64(), Some(reloaded_at), "{status}");
    assert_eq!(
        kept["pending_restart"],
        serde_json::json!(["enforce"]),
        "{status}"
    );
    let error = kept["refused"]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains(&format!("{config}:2:")) && error.contains("bundle"),
        "{status}"
    );
    let human = cli_ok(&lab, &["status"]);
    assert!(
        fact(&human, "reload refused").contains("the configuration above stays in force"),
        "{human}"
    );

    // With --json a refusal is one JSON line on stdout, with its kind.
    let out = cli(&lab, &["reload", "--json"]).expect("the CLI runs");
    assert_eq!(out.status.code(), Some(1));
    let line: Value = serde_json::from_slice(&out.stdout).expect("a JSON line");
    assert_eq!(line["ok"], false, "{line}");
    assert_eq!(line["kind"], "invalid_config", "{line}");
    assert!(
        line["error"]
            .as_str()
            .unwrap_or_default()
            .contains("reload refused"),
        "{line}"
    );
}

/// SIGTERM and `kill -9` leave the kernel side in place: while the daemon is down the deny
/// list holds and good sessions flow; a restarted daemon adopts the pinned program and has
/// every list entry and reputation.
#[test]
fn protection_outlives_the_daemon() {
    // The gate holds a MAIL FROM for 3 s while the heartbeat is fresh; it goes stale 2 s
    // after the daemon's last beat, and every "stale" session starts 2 s after that: a free
    // MAIL FROM is answered within 1 s, a held one after 2.5 s at least.
    const HEARTBEAT_TIMEOUT: Duration = Duration::from_millis(2000);
    const FREE: Duration = Duration::from_millis(1000);
    let stale = HEARTBEAT_TIMEOUT + Duration::from_secs(2);
    let lab = lab("r");
    let heartbeat_ms = HEARTBEAT_TIMEOUT.as_millis().to_string();
    // Rejects at full weight (2): under the default `reply` a reject counts a quarter.
    let args = [
        "--action",
        "rst",
        "--reputation-threshold",
        "3",
        "--heartbeat-timeout-ms",
        &heartbeat_ms,
        "--gate-deadline-ms",
        "3000",
    ];
    let daemon = Daemon::start(&lab, &args, false).expect("starting the daemon");
    cli_ok(&lab, &["deny", "add", "203.0.113.14", "--comment", "kept"]);
    cli_ok(&lab, &["allow", "add", "2001:db8:1::12/128"]);
    // Two rejects (weight 2 each) cross the threshold of 3: 203.0.113.11 is denied.
    for port in [54001, 54002] {
        assert!(!completes(&lab, v4(1, port), "localhost"));
    }
    let denied = process::wait_until(Duration::from_secs(5), || !connects(&lab, v4(1, 54003)));
    assert!(denied.is_ok(), "reputation did not deny 203.0.113.11");

    let expect_kept = |when: &str| {
        let denied = nets(&json(&lab, &["deny", "list"]));
        assert!(
            denied.contains(&("203.0.113.14/32".into(), "operator".into())),
            "{when}: {denied:?}"
        );
        assert!(
            denied.contains(&("203.0.113.11/32".into(), "reputation".into())),
            "{when}: {denied:?}"
        );
        let allowed = nets(&json(&lab, &["allow", "list"]));
        assert!(
            allowed.contains(&("2001:db8:1::12/128".into(), "operator".into())),
            "{when}: {allowed:?}"
        );
        let score = json(&lab, &["reputation", "show", "203.0.113.11"])["score"].as_f64();
        assert!(score.unwrap_or(0.0) >= 3.0, "{when}: score {score:?}");
    };
    let expect_protected = |when: &str, port: u16, gone: std::time::Instant| {
        assert!(
            !connects(&lab, v4(4, port)),
            "{when}: the operator's denial lapsed"
        );
        assert!(
            !connects(&lab, v4(1, port)),
            "{when}: the reputation denial lapsed"
        );
        // The heartbeat is stale: the gate is off, a good session's MAIL FROM is not held,
        // and the session flows.
        std::thread::sleep(stale.saturating_sub(gone.elapsed()));
        let waited = mail_from_wait(&lab, v4(0, port));
        assert!(
            waited < FREE,
            "{when}: MAIL FROM waited {waited:?} with the heartbeat stale (the gate must be off)"
        );
        sessions::swaks(&lab, v4(0, port + 1), Greeting::Ehlo, "mail.example.net")
            .unwrap_or_else(|e| panic!("{when}: a good session failed: {e}"));
    };

    let status = daemon.stop().expect("SIGTERM");
    let gone = std::time::Instant::now();
    assert!(status.success(), "{status:?}");
    expect_protected("after SIGTERM", 54010, gone);
    let mut daemon = Daemon::start(&lab, &args, false).expect("restarting");
    daemon
        .wait_for(Duration::from_secs(5), |l| l.contains("adopted=true"))
        .expect("the pinned link was adopted");
    expect_kept("after SIGTERM and a restart");

    daemon.signal(libc::SIGKILL);
    let gone = std::time::Instant::now();
    drop(daemon);
    expect_protected("after kill -9", 54020, gone);
    let _daemon = Daemon::start(&lab, &args, false).expect("restarting after kill -9");
    expect_kept("after kill -9 and a restart");
}

/// A corrupt state file stops the daemon with a message naming it; so do a map pinned with
/// another layout and a bad configuration file (file, line and key).
#[test]
fn corrupt_state_and_bad_configuration_stop_the_daemon() {
    let lab = lab("s");
    std::fs::create_dir_all(lab.state_dir()).expect("state dir");
    let lists = lab.state_dir().join("lists.json");
    std::fs::write(&lists, "{\"version\": 1, \"allow\": [").expect("corrupt file");
    let error = Daemon::start(&lab, &[], false)
        .err()
        .expect("refused")
        .to_string();
    assert!(
        error.contains(&format!("state file {} is corrupt", lists.display())),
        "{error}"
    );
    std::fs::remove_file(&lists).expect("remove");
    // A map pinned by "another version" (another layout) is refused, not misread.
    let flows = lab.bpffs_dir().expect("pins").join("maps/FLOWS");
    std::fs::create_dir_all(flows.parent().expect("maps dir")).expect("maps dir");
    let made = Command::new("bpftool")
        .args(["map", "create"])
        .arg(&flows)
        .args([
            "type", "hash", "key", "4", "value", "4", "entries", "16", "name", "FLOWS",
        ])
        .output()
        .expect("bpftool");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let error = Daemon::start(&lab, &[], false)
        .err()
        .expect("refused")
        .to_string();
    assert!(
        error.contains(&format!(
            "the map pinned at {} was made by another version",
            flows.display()
        )),
        "{error}"
    );
    std::fs::remove_file(&flows).expect("remove");
    let config = config_file(&lab, "[reputation]\nthreshold = \"high\"\n");
    let error = Daemon::start(&lab, &["--config", &config], false)
        .err()
        .expect("refused")
        .to_string();
    assert!(
        error.contains(&format!("{config}:2:")) && error.contains("key `reputation.threshold`"),
        "{error}"
    );
}

/// A second daemon refuses to start. Garbage, an oversized line and a wrong version get
/// error responses on the same connection, which then still serves; the socket is root's
/// (0600) and a non-root user gets a one-line permission error.
#[test]
fn the_control_socket_answers_malformed_requests_and_refuses_others() {
    let lab = lab("t");
    let _daemon = Daemon::start(&lab, &[], false).expect("starting the daemon");
    let second = Daemon::start(&lab, &[], false)
        .err()
        .expect("a second daemon")
        .to_string();
    assert!(
        second.contains("another helo-filter daemon is running"),
        "{second}"
    );
    let socket = lab.control_socket();
    let mode = std::fs::metadata(&socket)
        .expect("socket")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "socket mode {mode:o}");
    let stream = UnixStream::connect(&socket).expect("connecting");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("a read timeout");
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut writer = stream;
    let mut ask = |line: &[u8]| -> Value {
        writer.write_all(line).expect("write");
        writer.write_all(b"\n").expect("write");
        let mut answer = String::new();
        reader.read_line(&mut answer).expect("answer");
        serde_json::from_str(&answer).expect("a JSON answer")
    };
    let oversized = vec![b'x'; 70_000];
    for (request, needle, kind) in [
        (&b"garbage"[..], "not JSON", "bad_request"),
        (
            br#"{"version":9,"command":"status"}"#,
            "unsupported protocol version 9",
            "unsupported_version",
        ),
        (
            br#"{"version":1,"command":"self_destruct"}"#,
            "unknown variant",
            "bad_request",
        ),
        (
            br#"{"version":1,"command":"allow_add","net":"203.0.113.0/33"}"#,
            "malformed",
            "bad_request",
        ),
        (&oversized, "longer than 65536 bytes", "bad_request"),
    ] {
        let answer = ask(request);
        assert_eq!(answer["ok"], false, "{answer}");
        assert_eq!(answer["kind"], kind, "{answer}");
        assert!(
            answer["error"]
                .as_str()
                .unwrap_or_default()
                .contains(needle),
            "{answer}"
        );
    }
    let answer = ask(br#"{"version":1,"command":"status"}"#);
    assert_eq!(answer["ok"], true, "{answer}");

    // A copy anyone may run (the build tree may sit in root's home).
    let binary = std::env::temp_dir().join(format!("helo-filter-cli-{}", std::process::id()));
    std::fs::copy(paths::daemon_binary(), &binary).expect("copying the binary");
    std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&binary)
        .args(["status", "--control-socket"])
        .arg(&socket)
        .output()
        .expect("setpriv (util-linux)");
    let _ = std::fs::remove_file(&binary);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("permission denied") && stderr.trim().lines().count() == 1,
        "{stderr}"
    );
}

/// No daemon at all: the CLI says so in one line.
#[test]
fn without_a_daemon_the_cli_says_why() {
    require_root();
    let out = Command::new(paths::daemon_binary())
        .args([
            "status",
            "--control-socket",
            "/nonexistent/helo-filter.sock",
        ])
        .output()
        .expect("the CLI runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.contains("is the daemon running"), "{stderr}");
}

/// `reload` of each section of the file, one at a time from the same start: `[policy]`,
/// `[dns]` and `[lists]` are applied and change what clients see; every other section waits
/// for a restart (status says so) and changes nothing meanwhile. (`[control]` and
/// `[metrics]` hold only keys the lab sets by flags, which win over the file; the unit
/// tests cover those sections.)
#[test]
fn each_section_is_applied_by_a_reload_or_waits_for_a_restart() {
    let mut lab = lab("rs");
    let base = "[policy]\nbundle = \"standard\"\n";
    let config = config_file(&lab, base);
    let daemon = Daemon::start(
        &lab,
        &["--config", &config, NO_REPUTATION[0], NO_REPUTATION[1]],
        false,
    )
    .expect("starting the daemon");
    let reload = |lab: &Lab, text: &str| -> Value {
        config_file(lab, &format!("{base}{text}"));
        json(lab, &["reload"])
    };
    let mut port = 48100;
    let mut next_client = || {
        port += 1;
        v4(3, port)
    };

    // Applied at once.
    assert!(completes(&lab, next_client(), "mail.example.net"));
    let reloaded = reload(&lab, "deny_helo = [\"mail.example.net\"]\n");
    assert_eq!(
        reloaded["applied"],
        serde_json::json!(["policy"]),
        "{reloaded}"
    );
    assert_eq!(
        reloaded["pending_restart"],
        serde_json::json!([]),
        "{reloaded}"
    );
    assert!(
        !completes(&lab, next_client(), "mail.example.net"),
        "the reloaded [policy] deny pattern did not reject"
    );

    let denied = v4(4, 48200);
    assert!(connects(&lab, denied));
    let reloaded = reload(&lab, &format!("[lists]\ndeny = [\"{}/32\"]\n", denied.ip()));
    assert_eq!(
        reloaded["applied"],
        serde_json::json!(["policy", "lists"]),
        "{reloaded}"
    );
    assert!(
        !connects(&lab, denied),
        "the reloaded [lists] deny entry did not drop the SYN"
    );
    let reloaded = reload(&lab, "");
    assert_eq!(
        reloaded["applied"],
        serde_json::json!(["lists"]),
        "{reloaded}"
    );
    assert!(
        connects(&lab, denied),
        "the [lists] entry outlived its removal"
    );

    // Each waits for a restart, and is put back before the next.
    let restart_only = [
        ("enforce", "[enforce]\naction = \"drop\"\n"),
        ("reputation", "[reputation]\nhalf_life_secs = 60\n"),
        ("postfix", "[postfix]\nreject_text = \"5.7.1 Go away\"\n"),
        ("kernel", "[kernel]\nsmtp_ports = [2525]\n"),
        ("state", "[state]\nsnapshot_interval_secs = 5\n"),
    ];
    for (section, text) in restart_only {
        let reloaded = reload(&lab, text);
        assert_eq!(
            reloaded["applied"],
            serde_json::json!([]),
            "{section}: {reloaded}"
        );
        assert_eq!(
            reloaded["pending_restart"],
            serde_json::json!([section]),
            "{section}: {reloaded}"
        );
        let status = json(&lab, &["status"]);
        assert_eq!(
            status["configuration"]["pending_restart"],
            serde_json::json!([section]),
            "{section}: {status}"
        );
        // Still what the start enforced: the reply (its text too) on port 25, metrics on the
        // old address.
        assert_eq!(status["action"], "reply", "{section}: {status}");
        refused_at_mail_from(&lab, next_client(), "localhost", &seed_reject("localhost"));
        daemon
            .scrape()
            .unwrap_or_else(|e| panic!("{section}: metrics gone: {e:#}"));
        let reloaded = reload(&lab, "");
        assert_eq!(
            reloaded["pending_restart"],
            serde_json::json!([]),
            "{section}: {reloaded}"
        );
    }

    // [dns] last, with the DNS server gone: a lookup failure passes (fail-open) until a
    // reload makes it fail closed.
    lab.stop_dns();
    assert!(
        completes(&lab, next_client(), "mx1.example.net"),
        "a DNS failure did not fail open"
    );
    let reloaded = reload(&lab, "[dns]\nfail_closed = true\n");
    assert_eq!(
        reloaded["applied"],
        serde_json::json!(["dns"]),
        "{reloaded}"
    );
    refused_at_mail_from(
        &lab,
        next_client(),
        "mx2.example.net",
        "451 4.7.1 HELO check failed temporarily - try again later (dns_tempfail)",
    );
    daemon.stop().expect("stopping the daemon");
}
