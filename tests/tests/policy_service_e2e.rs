//! The Postfix policy service: its protocol under malformed, oversized and concurrent
//! requests; a real Postfix asking it at RCPT time (good, bogus, DNS timing out, fail-open
//! and fail-closed); and the listener inside `helo-filter run` feeding reputation once per
//! SMTP session.

use std::{
    net::{SocketAddr, TcpStream, UdpSocket},
    os::unix::net::UnixStream,
    process::Child,
    time::Duration,
};

use helo_filter_tests::{e2e::*, policy_client::*, require_root};
use xtask::{
    daemon::{Daemon, cli, metric_value},
    http,
    lab::{self, Lab},
    netns, process,
    sessions::{self, Greeting},
};

const REJECT: &str = "550 5.7.1 Access denied - bogus HELO";

/// `helo-filter policy` on a Unix socket in the host's namespace (no DNS), killed on drop.
struct Service {
    child: Child,
    socket: std::path::PathBuf,
    metrics: SocketAddr,
}

impl Service {
    fn start(config: &str) -> Service {
        require_root();
        let dir = std::env::temp_dir().join(format!("hf-policy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let config_file = dir.join("helo-filter.toml");
        std::fs::write(&config_file, config).expect("config");
        let socket = dir.join("policy.sock");
        let (mut command, metrics) = policy_service_command(&config_file, &socket);
        let child = command
            .env("RUST_LOG", "warn")
            .spawn()
            .expect("starting helo-filter policy");
        let mut service = Service {
            child,
            socket,
            metrics,
        };
        let up = process::wait_until(Duration::from_secs(10), || {
            UnixStream::connect(&service.socket).is_ok()
        });
        assert!(
            up.is_ok(),
            "the service never listened: {:?}",
            service.child.try_wait()
        );
        service
    }

    fn connect(&self) -> PolicyClient<UnixStream> {
        let stream = UnixStream::connect(&self.socket).expect("connecting");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        PolicyClient::new(stream)
    }

    fn scrape(&self) -> String {
        http::get_ok(self.metrics, "/metrics").expect("the metrics page")
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn requests_total(page: &str, action: &str) -> Option<f64> {
    metric_value(
        page,
        &format!("helo_filter_policy_requests_total{{action=\"{action}\"}}"),
    )
}

/// One persistent connection takes good, bogus and broken requests in turn: each gets its
/// reply (the broken ones `DUNNO`) and the connection stays in step; then many clients at
/// once. The reject's code and text come from the old `[postfix]` names of the reply table's
/// defaults, one reason's from its `[replies.reasons]` entry (a 4xx: counted `defer`);
/// `[lists] allow` is trusted.
#[test]
fn the_protocol_survives_malformed_and_oversized_requests() {
    let service = Service::start(
        "[postfix]\nreject_code = 554\nreject_text = \"5.7.0 Go away\"\n\
         [replies.reasons.not_fqdn]\ncode = 450\nenhanced = \"4.7.1\"\n\
         text = \"Helo command rejected: need fully-qualified hostname\"\n\
         [lists]\nallow = [\"198.51.100.0/24\"]\n",
    );
    let mut client = service.connect();
    let long = "x".repeat(10_000);
    let many: String = (0..200).map(|i| format!("attr{i}=v\n")).collect();
    let cases: Vec<(String, &str)> = vec![
        (
            rcpt_request("203.0.113.10", "mail.example.net", "a1"),
            "DUNNO",
        ),
        (
            rcpt_request("203.0.113.11", "localhost", "a2"),
            "554 5.7.0 Go away (localhost)",
        ),
        (
            rcpt_request("203.0.113.11", "", "a3"),
            "554 5.7.0 Go away (no_helo)",
        ),
        (
            rcpt_request("2001:db8:1::11", "[192.168.1.1]", "a4"),
            "554 5.7.0 Go away (bad_literal_ip)",
        ),
        ("this line has no equals sign\n\n".to_owned(), "DUNNO"),
        (rcpt_request("203.0.113.12", &long, "a5"), "DUNNO"),
        (format!("request=smtpd_access_policy\n{many}\n"), "DUNNO"),
        (
            "request=smtpd_access_policy\nhelo_name=localhost\n\n".to_owned(),
            "DUNNO",
        ),
        (rcpt_request("not-an-ip", "localhost", "a6"), "DUNNO"),
        // Still in step after all that.
        (
            rcpt_request("203.0.113.13", "mon-serveur", "a7"),
            "450 4.7.1 Helo command rejected: need fully-qualified hostname (not_fqdn)",
        ),
        // Loopback (trusted by default) and the allow list.
        (rcpt_request("127.0.0.1", "localhost", "a8"), "DUNNO"),
        (rcpt_request("198.51.100.7", "localhost", "a9"), "DUNNO"),
    ];
    for (request, expected) in &cases {
        let got = client.ask(request.as_bytes());
        assert_eq!(
            &got,
            expected,
            "request {:?}",
            request.chars().take(120).collect::<String>()
        );
    }

    let threads: Vec<_> = (0..32)
        .map(|t| {
            let mut client = service.connect();
            std::thread::spawn(move || {
                for i in 0..25 {
                    let instance = format!("t{t}-{i}");
                    let (helo, expected) = if i % 2 == 0 {
                        ("mail.example.net", "DUNNO")
                    } else {
                        ("localhost", "554 5.7.0 Go away (localhost)")
                    };
                    let got = client.ask(rcpt_request("203.0.113.14", helo, &instance).as_bytes());
                    assert_eq!(got, expected);
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("a concurrent client failed");
    }

    let page = service.scrape();
    assert_eq!(requests_total(&page, "error"), Some(5.0), "{page}");
    assert_eq!(
        requests_total(&page, "reject"),
        Some(3.0 + 32.0 * 12.0),
        "{page}"
    );
    assert_eq!(requests_total(&page, "defer"), Some(1.0), "{page}");
    assert_eq!(
        requests_total(&page, "dunno"),
        Some(3.0 + 32.0 * 13.0),
        "{page}"
    );
}

/// The policy service on TCP port 10031 in the MX namespace, which Postfix asks.
const POLICY_LISTEN: &str = "inet:127.0.0.1:10031";

/// A real Postfix with `check_policy_service`: the five bogus HELOs are refused at RCPT TO
/// with the reply Postfix renders for a policy reject, a good session is queued; with DNS
/// timing out, a fail-open service lets a good session through and a fail-closed one
/// defers it.
#[test]
fn postfix_refuses_bogus_helos_at_rcpt_time() {
    require_root();
    let mut lab = Lab::create(&unique_name("p")).expect("creating the lab");
    lab.start_dns().expect("starting dnsmasq");
    let policy = POLICY_LISTEN.strip_prefix("inet:").expect("inet");
    lab.start_postfix(&format!(
        "smtpd_recipient_restrictions = permit_mynetworks, reject_unauth_destination, \
         check_policy_service inet:{policy}"
    ))
    .expect("starting Postfix");
    let service = Daemon::start_policy_service(&lab, POLICY_LISTEN, &[], false)
        .expect("starting the policy service");

    let bogus = [
        (v4(1, 48001), Greeting::Helo, "127.0.0.1", "bare_ip"),
        (
            v4(2, 48002),
            Greeting::Ehlo,
            "[192.168.1.1]",
            "bad_literal_ip",
        ),
        (v6(1, 48003), Greeting::Ehlo, "localhost", "localhost"),
        (v4(3, 48004), Greeting::Helo, "mon-serveur", "not_fqdn"),
        (v6(4, 48005), Greeting::Ehlo, "fakedomain.xyz", "no_dns"),
    ];
    for (client, greeting, helo, reason) in bogus {
        let (completed, transcript) =
            sessions::swaks_transcript(&lab, client, greeting, helo).expect("swaks");
        assert!(!completed, "{helo}: the session completed:\n{transcript}");
        let expected = format!(
            "<** 550 5.7.1 <postmaster@example.org>: Recipient address rejected: \
             Access denied - bogus HELO ({reason})"
        );
        assert!(
            transcript.lines().any(|l| l == expected),
            "{helo}: expected {expected:?} at RCPT TO:\n{transcript}"
        );
    }
    sessions::swaks(&lab, v4(0, 48006), Greeting::Ehlo, "mail.example.net")
        .expect("the good session is queued");
    let page = service.scrape().expect("metrics");
    assert_eq!(requests_total(&page, "reject"), Some(5.0), "{page}");

    // DNS times out: a silent server where dnsmasq was.
    lab.stop_dns();
    let _silent = netns::in_netns(&lab.filter_ns, || {
        UdpSocket::bind(lab::DNS_SERVER).expect("binding the silent DNS server")
    });
    sessions::swaks(&lab, v4(0, 48007), Greeting::Ehlo, "relay.example.net")
        .expect("fail-open: the good session is queued although DNS times out");
    drop(service);

    let config = std::env::temp_dir().join(format!("hf-fail-closed-{}.toml", std::process::id()));
    std::fs::write(&config, "[dns]\nfail_closed = true\ndeadline_ms = 500\n").expect("config");
    let args = ["--config", config.to_str().expect("utf-8 path")];
    let _service = Daemon::start_policy_service(&lab, POLICY_LISTEN, &args, false)
        .expect("starting the fail-closed policy service");
    let _ = std::fs::remove_file(&config);
    let (completed, transcript) =
        sessions::swaks_transcript(&lab, v4(0, 48008), Greeting::Ehlo, "relay2.example.net")
            .expect("swaks");
    assert!(
        !completed,
        "fail-closed: the session completed:\n{transcript}"
    );
    let deferred = "<** 450 4.7.1 <postmaster@example.org>: Recipient address rejected: \
                    HELO check failed temporarily - try again later (dns_tempfail)";
    assert!(
        transcript.lines().any(|l| l == deferred),
        "fail-closed: expected {deferred:?}:\n{transcript}"
    );

    let postfix = lab.postfix().expect("Postfix runs");
    let queued = process::wait_until(Duration::from_secs(15), || {
        postfix.log().matches("status=sent").count() >= 2
    });
    assert!(
        queued.is_ok(),
        "two good messages were not delivered:\n{}",
        postfix.log()
    );
}

/// `helo-filter run --policy-listen`: Postfix asks once per recipient, but a session's
/// rejection raises its source's reputation once (de-duplicated on `instance`); the second
/// rejected session crosses the threshold and the source's SYNs are dropped in XDP.
#[test]
fn the_daemons_policy_listener_feeds_reputation_once_per_session() {
    let lab = lab("q");
    // A reject weighs 2 (at full weight: under the default `reply` a reject counts a
    // quarter): one session stays under 3, two cross it.
    let args = [
        "--action",
        "rst",
        "--policy-listen",
        POLICY_LISTEN,
        "--reputation-threshold",
        "3",
    ];
    let daemon = Daemon::start(&lab, &args, false).expect("starting the daemon");
    let policy: SocketAddr = POLICY_LISTEN
        .strip_prefix("inet:")
        .and_then(|a| a.parse().ok())
        .expect("inet address");
    let ask_three_recipients = |instance: &'static str| {
        netns::in_netns(&lab.filter_ns, move || {
            let stream = TcpStream::connect(policy).expect("the policy listener");
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .expect("timeout");
            let mut client = PolicyClient::new(stream);
            for _ in 0..3 {
                let reply =
                    client.ask(rcpt_request("203.0.113.11", "localhost", instance).as_bytes());
                assert_eq!(reply, format!("{REJECT} (localhost)"));
            }
        })
    };
    // The source's score, read from the daemon (`reputation show --json`); it decays
    // slowly, so a session's 2 reads as a little under 2.
    let score = || -> f64 {
        let out = cli(&lab, &["reputation", "show", "203.0.113.11", "--json"]).expect("the CLI");
        assert!(
            out.status.success(),
            "reputation show: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let shown: serde_json::Value =
            serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("reputation show: {e}"));
        shown["score"]
            .as_f64()
            .unwrap_or_else(|| panic!("no score: {shown}"))
    };
    let once = |sessions: f64| move |s: f64| (2.0 * sessions - 0.1..=2.0 * sessions).contains(&s);
    ask_three_recipients("session-one");
    let mut seen = 0.0;
    let _ = process::wait_until(Duration::from_secs(5), || {
        seen = score();
        seen > 0.0
    });
    assert!(
        once(1.0)(seen),
        "one session (three recipients) scored {seen}, not one reject's 2"
    );
    assert!(
        connects(&lab, v4(1, 49001)),
        "denied after one session (three recipients)"
    );
    ask_three_recipients("session-two");
    let denied = process::wait_until(Duration::from_secs(5), || !connects(&lab, v4(1, 49002)));
    assert!(denied.is_ok(), "not denied after two sessions");
    let seen = score();
    assert!(
        once(2.0)(seen),
        "two sessions (six recipients) scored {seen}, not two rejects' 4"
    );
    let page = wait_for_metric(&daemon, "helo_filter_syn_dropped_total", |v| v >= 1.0);
    assert_eq!(requests_total(&page, "reject"), Some(6.0), "{page}");
    let logged = daemon
        .lines()
        .iter()
        .filter(|l| l.contains("policy client=203.0.113.11 "))
        .count();
    assert_eq!(
        logged,
        2,
        "one log line per session:\n{}",
        daemon.lines().join("\n")
    );
}

/// Postfix's habits, against a real Postfix that asks at CONNECT (`smtpd_delay_reject = no`,
/// a misplaced check) and at RCPT: the CONNECT request, before any HELO, gets `DUNNO` and a
/// warning in the log, not a reject of every client; with `[replies] style = "postfix"` each
/// reason gets Postfix's own code (450 for a name that does not resolve, 504 for one not
/// fully qualified, 501 for no name at all); in monitor mode a bogus HELO gets `WARN`, which
/// Postfix logs and lets the mail through — and that maillog, replayed through `check
/// --replay`, gives the verdicts back. The standalone service counts verdicts and reasons on
/// its own endpoint.
#[test]
fn the_policy_service_keeps_postfixs_habits() {
    require_root();
    let mut lab = Lab::create(&unique_name("ph")).expect("creating the lab");
    lab.start_dns().expect("starting dnsmasq");
    let policy = POLICY_LISTEN.strip_prefix("inet:").expect("inet");
    lab.start_postfix(&format!(
        "smtpd_delay_reject = no\n\
         smtpd_client_restrictions = check_policy_service inet:{policy}\n\
         smtpd_recipient_restrictions = permit_mynetworks, reject_unauth_destination, \
         check_policy_service inet:{policy}"
    ))
    .expect("starting Postfix");
    let dir = std::env::temp_dir().join(format!("hf-habits-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let config = dir.join("postfix-style.toml");
    std::fs::write(&config, "[replies]\nstyle = \"postfix\"\n").expect("config");
    let args = ["--config", config.to_str().expect("utf-8 path")];
    let service = Daemon::start_policy_service(&lab, POLICY_LISTEN, &args, false)
        .expect("starting the policy service");

    sessions::swaks(&lab, v4(0, 49001), Greeting::Ehlo, "mail.example.net")
        .expect("a good session passes the CONNECT check and is queued");
    let connect_warning = service
        .lines()
        .into_iter()
        .find(|l| l.contains("protocol_state=CONNECT"));
    assert!(
        connect_warning.is_some_and(|l| l.contains("answered DUNNO")),
        "no warning about the check at CONNECT:\n{}",
        service.lines().join("\n")
    );
    let rcpt_rejected =
        "<postmaster@example.org>: Recipient address rejected: Helo command rejected";
    for (client, greeting, helo, reply) in [
        (
            v4(1, 49002),
            Greeting::Ehlo,
            "fakedomain.xyz",
            format!("<** 450 4.7.1 {rcpt_rejected}: Host not found (no_dns)"),
        ),
        (
            v6(2, 49003),
            Greeting::Helo,
            "mon-serveur",
            format!("<** 504 5.5.2 {rcpt_rejected}: need fully-qualified hostname (not_fqdn)"),
        ),
        (
            v4(3, 49004),
            Greeting::Helo,
            "127.0.0.1",
            format!("<** 501 5.5.2 {rcpt_rejected}: Invalid name (bare_ip)"),
        ),
    ] {
        let (completed, transcript) =
            sessions::swaks_transcript(&lab, client, greeting, helo).expect("swaks");
        assert!(!completed, "{helo}: the session completed:\n{transcript}");
        assert!(
            transcript.lines().any(|l| l == reply),
            "{helo}: expected {reply:?} at RCPT TO:\n{transcript}"
        );
    }
    let page = service.scrape().expect("metrics");
    for reason in ["no_dns", "not_fqdn", "bare_ip"] {
        assert_metric(
            &page,
            &format!("helo_filter_verdicts_total{{verdict=\"reject\",reason=\"{reason}\"}}"),
            1.0,
        );
    }
    assert_metric(
        &page,
        "helo_filter_verdicts_total{verdict=\"accept\",reason=\"none\"}",
        1.0,
    );
    drop(service);

    let monitor = ["--config", args[1], "--monitor"];
    let service = Daemon::start_policy_service(&lab, POLICY_LISTEN, &monitor, false)
        .expect("starting the monitoring policy service");
    sessions::swaks(&lab, v6(4, 49005), Greeting::Ehlo, "localhost")
        .expect("monitor mode: the bogus session is queued");
    let postfix = lab.postfix().expect("Postfix runs");
    let warned = process::wait_until(Duration::from_secs(10), || {
        postfix
            .log()
            .lines()
            .any(|l| l.contains("warn: RCPT from") && l.contains("bogus HELO (localhost)"))
    });
    assert!(
        warned.is_ok(),
        "Postfix logged no WARN for the bogus HELO:\n{}",
        postfix.log()
    );
    let page = service.scrape().expect("metrics");
    assert_metric(
        &page,
        "helo_filter_policy_requests_total{action=\"warn\"}",
        1.0,
    );

    // Last week's maillog, replayed: the WARN line and the NOQUEUE rejects carry the pairs.
    let maillog = dir.join("maillog");
    std::fs::write(&maillog, postfix.log()).expect("maillog copy");
    let replay = std::process::Command::new(xtask::paths::daemon_binary())
        .args(["check", "--offline", "--no-config", "--json", "--replay"])
        .arg(&maillog)
        .output()
        .expect("check --replay runs");
    let out = String::from_utf8_lossy(&replay.stdout);
    assert!(replay.status.success(), "check --replay failed: {out}");
    let totals: serde_json::Value = out
        .lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("no totals line:\n{out}"));
    let reasons = &totals["totals"]["reasons"];
    for reason in ["localhost", "not_fqdn", "bare_ip"] {
        assert!(
            reasons[reason].as_u64().is_some_and(|n| n >= 1),
            "{reason} missing from the replay's totals: {totals}"
        );
    }
    assert!(
        out.lines()
            .any(|l| l.contains("\"helo\":\"localhost\"") && l.contains("\"verdict\":\"reject\"")),
        "{out}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
