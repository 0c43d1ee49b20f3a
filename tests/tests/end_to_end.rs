//! End to end in network namespaces: real swaks sessions against real smtp-sink, the
//! real daemon attached to the MX side (resolving through the fixture dnsmasq), and what
//! it reports: each session's client, command line and verdict.

use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
    process::Command,
    time::Duration,
};

use helo_filter_tests::require_root;
use xtask::{
    daemon::{Daemon, metric_value},
    lab::{self, Lab},
    sessions::{self, Greeting},
};

/// A lab name unique to this test process and test.
fn lab(test: &str) -> Lab {
    require_root();
    let name = format!("hf{}{test}", std::process::id() % 100_000);
    let mut lab = Lab::create(&name).expect("creating the lab");
    lab.start_smtp_sink().expect("starting smtp-sink");
    lab.start_dns().expect("starting dnsmasq");
    lab
}

/// A lab whose MX runs a real Postfix (no HELO restrictions of its own) instead of smtp-sink.
fn postfix_lab(test: &str) -> Lab {
    require_root();
    let name = format!("hf{}{test}", std::process::id() % 100_000);
    let mut lab = Lab::create(&name).expect("creating the lab");
    lab.start_dns().expect("starting dnsmasq");
    lab.start_postfix("").expect("starting Postfix");
    lab
}

fn v4(i: usize, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(lab::client_v4(i)), port)
}

fn v6(i: usize, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V6(lab::client_v6(i)), port)
}

fn server_of(client: SocketAddr) -> SocketAddr {
    SocketAddr::new(sessions::mx_for(client.ip()), lab::SMTP_PORT)
}

fn helo_line(client: SocketAddr, verb: &str, line: &str, pipelined: bool) -> String {
    format!(
        "helo client={client} server={} verb={verb} pipelined={pipelined} line=\"{line}\"",
        server_of(client)
    )
}

fn no_helo_line(client: SocketAddr, cause: &str, line: &str) -> String {
    format!(
        "no_helo client={client} server={} cause={cause} line=\"{line}\"",
        server_of(client)
    )
}

/// What the daemon must say about one session: the report up to the verdict, the verdict,
/// and the primary reason of a reject.
type Expected = (String, String, Option<String>);

/// The session reports in the daemon's log, without the logger's prefix, split into the
/// report, the verdict and the primary reason (the first of `reasons` on a reject).
fn reports(daemon: &Daemon) -> BTreeSet<Expected> {
    daemon
        .lines()
        .iter()
        .filter_map(|l| l.split_once("] ").map(|(_, message)| message))
        .filter(|m| m.starts_with("helo ") || m.starts_with("no_helo "))
        .map(|m| {
            let (report, verdict) = m
                .split_once(" verdict=")
                .expect("a verdict on every report");
            let decision = verdict.split(' ').next().unwrap_or_default().to_owned();
            let primary = verdict
                .split_once("reasons=")
                .and_then(|(_, r)| r.split([',', ' ']).next())
                .filter(|_| decision == "reject")
                .map(str::to_owned);
            (report.to_owned(), decision, primary)
        })
        .collect()
}

fn wait_for_reports(daemon: &Daemon, expected: &BTreeSet<Expected>) {
    // Whatever the wait's outcome, the comparison below says what differs.
    let _ = lab::wait_until(Duration::from_secs(15), || {
        reports(daemon).len() >= expected.len()
    });
    let got = reports(daemon);
    assert_eq!(
        &got,
        expected,
        "\nmissing: {:#?}\nunexpected: {:#?}",
        expected.difference(&got).collect::<Vec<_>>(),
        got.difference(expected).collect::<Vec<_>>()
    );
}

const ACCEPT: (&str, Option<&str>) = ("accept", None);

const fn reject(reason: &'static str) -> (&'static str, Option<&'static str>) {
    ("reject", Some(reason))
}

/// In monitor mode nothing is enforced, so every session runs to its end and the daemon
/// reports each one (enforcement has its own test below).
#[test]
fn every_session_is_reported_exactly_with_its_client_and_verdict() {
    let lab = lab("a");
    let daemon = Daemon::start(&lab, &["--monitor"], false).expect("starting the daemon");
    let mut expected = BTreeSet::new();
    let mut expect = |report: String, (verdict, reason): (&'static str, Option<&'static str>)| {
        expected.insert((report, verdict.to_owned(), reason.map(str::to_owned)));
    };

    let swaks_sessions = [
        (v4(0, 41001), Greeting::Ehlo, "mail.example.net", ACCEPT),
        (v6(0, 41002), Greeting::Ehlo, "v6.example.net", ACCEPT),
        (v4(1, 41003), Greeting::Helo, "127.0.0.1", reject("bare_ip")),
        (v6(1, 41004), Greeting::Helo, "127.0.0.1", reject("bare_ip")),
        (
            v4(2, 41005),
            Greeting::Ehlo,
            "[192.168.1.1]",
            reject("bad_literal_ip"),
        ),
        (
            v4(3, 41006),
            Greeting::Helo,
            "localhost",
            reject("localhost"),
        ),
        (
            v6(3, 41007),
            Greeting::Ehlo,
            "localhost",
            reject("localhost"),
        ),
        (
            v4(4, 41008),
            Greeting::Helo,
            "mon-serveur",
            reject("not_fqdn"),
        ),
        (
            v6(4, 41009),
            Greeting::Ehlo,
            "fakedomain.xyz",
            reject("no_dns"),
        ),
        (
            v4(0, 41010),
            Greeting::Helo,
            "fakedomain.xyz",
            reject("no_dns"),
        ),
        (
            v4(1, 41017),
            Greeting::Ehlo,
            "mx.example.org",
            reject("impersonation"),
        ),
    ];
    for (client, greeting, name, verdict) in swaks_sessions {
        sessions::swaks(&lab, client, greeting, name).expect("swaks session");
        let verb = match greeting {
            Greeting::Helo => "HELO",
            Greeting::Ehlo => "EHLO",
        };
        expect(
            helo_line(client, verb, &format!("{verb} {name}"), false),
            verdict,
        );
    }

    // A bot writing a few bytes per segment, the verb itself split.
    let client = v4(0, 41011);
    let chunks: [&[u8]; 6] = [b"EH", b"LO ", b"mail.", b"example", b".net\r", b"\n"];
    sessions::raw_session(&lab, client, &chunks, Duration::from_millis(30)).expect("dribble");
    expect(
        helo_line(client, "EHLO", "EHLO mail.example.net", false),
        ACCEPT,
    );

    // The same over IPv6, one byte per segment.
    let client = v6(0, 41012);
    let line = b"HELO v6.example.net\r\n";
    let bytes: Vec<&[u8]> = line.chunks(1).collect();
    sessions::raw_session(&lab, client, &bytes, Duration::from_millis(20)).expect("bytes");
    expect(
        helo_line(client, "HELO", "HELO v6.example.net", false),
        ACCEPT,
    );

    // NOOP first is skipped; pipelining is flagged; MAIL FROM first is no_helo.
    let client = v4(2, 41013);
    let noop_then_helo: [&[u8]; 2] = [b"NOOP\r\n", b"HELO server.domain.xyz\r\n"];
    sessions::raw_session(&lab, client, &noop_then_helo, Duration::from_millis(50)).expect("noop");
    expect(
        helo_line(client, "HELO", "HELO server.domain.xyz", false),
        ACCEPT,
    );

    let client = v4(3, 41014);
    let pipelined: [&[u8]; 1] = [b"EHLO mail.example.net\r\nMAIL FROM:<a@example.net>\r\n"];
    sessions::raw_session(&lab, client, &pipelined, Duration::ZERO).expect("pipelined");
    expect(
        helo_line(client, "EHLO", "EHLO mail.example.net", true),
        reject("pipelining"),
    );

    let client = v6(3, 41015);
    let mail_first: [&[u8]; 1] = [b"MAIL FROM:<bot@example.net>\r\n"];
    sessions::raw_session(&lab, client, &mail_first, Duration::ZERO).expect("mail first");
    expect(
        no_helo_line(client, "other_command", "MAIL FROM:<bot@example.net>"),
        reject("no_helo"),
    );

    // Dribbling past the 32-segment cap without ever finishing a line.
    let client = v4(4, 41016);
    let mut dribble: Vec<&[u8]> = vec![b"X"; 40];
    dribble.push(b"\r\n");
    sessions::raw_session(&lab, client, &dribble, Duration::from_millis(20)).expect("cap");
    expect(no_helo_line(client, "cap_exceeded", ""), reject("no_helo"));

    wait_for_reports(&daemon, &expected);
    for line in daemon.lines().iter().filter(|l| l.contains(" verdict=")) {
        let wanted = if line.contains(" verdict=reject ") {
            "action=monitor"
        } else {
            "action=none"
        };
        assert!(line.ends_with(wanted), "{line}");
    }
    let page = daemon.scrape().expect("scraping");
    let monitored = metric_value(&page, "helo_filter_actions_total{action=\"monitor\"}");
    let rejects = expected
        .iter()
        .filter(|(_, verdict, _)| verdict == "reject")
        .count();
    assert_eq!(monitored, Some(rejects as f64), "{page}");
    assert_eq!(
        metric_value(&page, "helo_filter_actions_total{action=\"rst\"}"),
        Some(0.0)
    );

    let status = daemon.stop().expect("stopping the daemon");
    assert!(status.success(), "the daemon exited with {status}");
    let link = Command::new("ip")
        .args(["-n", &lab.mx_ns, "link", "show", "dev", &lab.mx_iface])
        .output()
        .expect("ip link");
    let link = String::from_utf8_lossy(&link.stdout);
    assert!(
        !link.contains("xdp"),
        "XDP still attached after SIGTERM:\n{link}"
    );
}

#[test]
fn metrics_show_the_kernel_counters_move() {
    let lab = lab("b");
    let daemon = Daemon::start(&lab, &[], false).expect("starting the daemon");
    let page = daemon.scrape().expect("scraping");
    let series = |kind: &str| format!("helo_filter_xdp_packets_total{{kind=\"{kind}\"}}");
    let present_at_start = [
        series("seen"),
        series("smtp"),
        series("helo"),
        series("continuation"),
        "helo_filter_ringbuf_dropped_total".to_owned(),
        "helo_filter_helo_events_total".to_owned(),
        "helo_filter_fail_open_total{cause=\"queue_full\"}".to_owned(),
        "helo_filter_fail_open_total{cause=\"dns_tempfail\"}".to_owned(),
        "helo_filter_fail_open_total{cause=\"gate_deadline\"}".to_owned(),
        "helo_filter_fail_open_total{cause=\"daemon_absent\"}".to_owned(),
        "helo_filter_verdicts_total{verdict=\"accept\",reason=\"none\"}".to_owned(),
        "helo_filter_verdicts_total{verdict=\"reject\",reason=\"bare_ip\"}".to_owned(),
        "helo_filter_check_failures_total{reason=\"dns_mismatch\"}".to_owned(),
        "helo_filter_dns_cache_total{result=\"hit\"}".to_owned(),
        "helo_filter_dns_cache_total{result=\"miss\"}".to_owned(),
    ];
    for name in &present_at_start {
        assert!(
            metric_value(&page, name).is_some(),
            "{name} missing:\n{page}"
        );
    }
    let attached = format!(
        "helo_filter_xdp_attached{{iface=\"{}\",mode=\"native\"}}",
        lab.mx_iface
    );
    assert_eq!(metric_value(&page, &attached), Some(1.0), "{page}");
    let before = |name: &str| metric_value(&page, name).unwrap_or(f64::NAN);
    let (seen, smtp, helo, events) = (
        before(&series("seen")),
        before(&series("smtp")),
        before(&series("helo")),
        before("helo_filter_helo_events_total"),
    );

    sessions::swaks(&lab, v4(0, 42001), Greeting::Ehlo, "mail.example.net").expect("swaks");
    let split: [&[u8]; 2] = [b"HELO mail.exa", b"mple.net\r\n"];
    sessions::raw_session(&lab, v4(1, 42002), &split, Duration::from_millis(50)).expect("split");

    // The daemon copies the kernel counters every second.
    let mut page = String::new();
    let moved = lab::wait_until(Duration::from_secs(10), || {
        page = daemon.scrape().unwrap_or_default();
        metric_value(&page, &series("helo")) == Some(helo + 2.0)
    });
    assert!(
        moved.is_ok(),
        "the helo counter did not reach {}:\n{page}",
        helo + 2.0
    );
    let now = |name: &str| metric_value(&page, name).unwrap_or(f64::NAN);
    assert!(now(&series("seen")) > seen);
    assert!(
        now(&series("smtp")) >= smtp + 10.0,
        "a session is more than 10 packets"
    );
    assert!(now(&series("continuation")) >= 1.0);
    assert_eq!(now("helo_filter_helo_events_total"), events + 2.0);
    assert_eq!(now("helo_filter_ringbuf_dropped_total"), 0.0);

    // The policy stage: two accepts (the second client is not mail.example.net's address: a
    // soft dns_mismatch), DNS answers cached between them, two validations timed.
    let accepts = "helo_filter_verdicts_total{verdict=\"accept\",reason=\"none\"}";
    assert_eq!(now(accepts), before(accepts) + 2.0, "{page}");
    let mismatch = "helo_filter_check_failures_total{reason=\"dns_mismatch\"}";
    assert_eq!(now(mismatch), before(mismatch) + 1.0, "{page}");
    assert!(
        now("helo_filter_dns_cache_total{result=\"hit\"}") >= 1.0,
        "{page}"
    );
    assert!(
        now("helo_filter_dns_cache_total{result=\"miss\"}") >= 1.0,
        "{page}"
    );
    assert_eq!(
        now("helo_filter_validation_duration_seconds_count"),
        2.0,
        "{page}"
    );
    assert!(
        page.contains("helo_filter_validation_duration_seconds_bucket{le=\"0.001\"}"),
        "validation time is a histogram with buckets:\n{page}"
    );
    assert!(
        now("helo_filter_dns_lookup_duration_seconds_count{type=\"a\"}") >= 1.0,
        "{page}"
    );
}

#[test]
fn several_interfaces_and_the_generic_fallback() {
    let lab = lab("c");
    // Loopback has no native XDP: auto mode must fall back to generic and say so.
    // Monitor mode: the HELO names here do not resolve, and this test is about capture.
    let daemon =
        Daemon::start(&lab, &["--iface", "lo", "--monitor"], false).expect("starting the daemon");
    let lines = daemon.lines().join("\n");
    assert!(
        lines.contains("lo: native XDP unavailable") && lines.contains("running in generic mode"),
        "{lines}"
    );
    assert!(lines.contains("attached iface=lo mode=generic"), "{lines}");
    assert!(
        lines.contains(&format!("attached iface={} mode=native", lab.mx_iface)),
        "{lines}"
    );
    let page = daemon.scrape().expect("scraping");
    assert_eq!(
        metric_value(
            &page,
            "helo_filter_xdp_attached{iface=\"lo\",mode=\"generic\"}"
        ),
        Some(1.0),
        "{page}"
    );
    // Both interfaces capture: a client on each.
    let mut daemon = daemon;
    sessions::swaks(&lab, v4(0, 43001), Greeting::Ehlo, "veth.example.net").expect("swaks");
    let local = Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.mx_ns,
            "swaks",
            "--server",
            "198.51.100.25",
        ])
        .args([
            "--local-interface",
            "198.51.100.25",
            "--local-port",
            "43002",
        ])
        .args(["--helo", "loopback.example.net", "--from", "a@example.net"])
        .args(["--to", "b@example.org", "--silent", "2"])
        .status()
        .expect("swaks on loopback");
    assert!(local.success());
    for wanted in [
        "line=\"EHLO veth.example.net\"",
        "line=\"EHLO loopback.example.net\"",
    ] {
        daemon
            .wait_for(Duration::from_secs(10), |l| l.contains(wanted))
            .unwrap_or_else(|e| panic!("{wanted}: {e}\n{}", daemon.lines().join("\n")));
    }
}

/// Plays each bogus session with swaks and checks it was cut before its MAIL FROM got a
/// 250.
fn assert_reset_before_mail_from(lab: &Lab, bogus: &[(SocketAddr, Greeting, &str)]) {
    for &(client, greeting, name) in bogus {
        let (completed, transcript) =
            sessions::swaks_transcript(lab, client, greeting, name).expect("swaks");
        assert!(!completed, "{name}: the session completed:\n{transcript}");
        let after_mail = transcript
            .split_once("-> MAIL FROM")
            .map_or("", |(_, rest)| rest);
        assert!(
            !after_mail
                .lines()
                .any(|l| l.trim_start().starts_with("<-  250")),
            "{name}: MAIL FROM was answered:\n{transcript}"
        );
    }
}

/// Enforcing (deployment mx, action rst): each bogus session is reset before its MAIL FROM
/// is answered; a good one completes.
#[test]
fn bogus_sessions_are_reset_before_mail_from_is_answered() {
    let lab = lab("d");
    let daemon = Daemon::start(&lab, &[], false).expect("starting the daemon");
    let bogus = [
        (v4(1, 44001), Greeting::Helo, "127.0.0.1"),
        (v6(1, 44002), Greeting::Ehlo, "[192.168.1.1]"),
        (v4(2, 44003), Greeting::Ehlo, "localhost"),
        (v6(3, 44004), Greeting::Helo, "mon-serveur"),
        (v4(4, 44005), Greeting::Ehlo, "fakedomain.xyz"),
    ];
    assert_reset_before_mail_from(&lab, &bogus);
    for (client, greeting, name) in [
        (v4(0, 44006), Greeting::Ehlo, "mail.example.net"),
        (v6(0, 44007), Greeting::Helo, "v6.example.net"),
    ] {
        sessions::swaks(&lab, client, greeting, name).expect("a good session completes");
    }
    // The action is counted before its log line is written: wait for the lines first.
    assert_resets_logged(&daemon, 5);
    let page = daemon.scrape().expect("scraping");
    let actions = metric_value(&page, "helo_filter_actions_total{action=\"rst\"}");
    assert_eq!(actions, Some(5.0), "{page}");
    let timed = metric_value(&page, "helo_filter_helo_to_action_seconds_count");
    assert_eq!(timed, Some(5.0), "{page}");
    eprintln!(
        "HELO→action: p50 ≤ {} s, p99 ≤ {} s (histogram bucket bounds, 5 resets)",
        bucket_quantile(&page, "helo_filter_helo_to_action_seconds", 0.5),
        bucket_quantile(&page, "helo_filter_helo_to_action_seconds", 0.99)
    );
}

/// The upper bound of the histogram bucket holding quantile `q` (what the closing notes
/// report; Prometheus would interpolate within it).
fn bucket_quantile(page: &str, histogram: &str, q: f64) -> String {
    let total = metric_value(page, &format!("{histogram}_count")).unwrap_or(0.0);
    let prefix = format!("{histogram}_bucket{{le=\"");
    page.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(&prefix)?;
            let (le, count) = rest.split_once("\"} ")?;
            Some((le.to_owned(), count.trim().parse::<f64>().ok()?))
        })
        .find(|(_, count)| *count >= q * total)
        .map_or_else(|| "?".to_owned(), |(le, _)| le)
}

/// Waits (briefly) for `n` sessions logged with `action=rst`, and no more.
fn assert_resets_logged(daemon: &Daemon, n: usize) {
    let resets = || {
        daemon
            .lines()
            .iter()
            .filter(|l| l.ends_with("action=rst"))
            .count()
    };
    let _ = lab::wait_until(Duration::from_secs(10), || resets() >= n);
    assert_eq!(resets(), n, "{}", daemon.lines().join("\n"));
}

/// The five bogus HELOs against a real Postfix: each session is reset before MAIL FROM is
/// answered, Postfix logs the lost connection and queues nothing; a good session's message
/// is delivered.
#[test]
fn postfix_sees_bogus_sessions_aborted_and_queues_nothing() {
    let lab = postfix_lab("e");
    let daemon = Daemon::start(&lab, &[], false).expect("starting the daemon");
    let bogus = [
        (v4(1, 45001), Greeting::Helo, "127.0.0.1"),
        (v4(2, 45002), Greeting::Ehlo, "[192.168.1.1]"),
        (v6(1, 45003), Greeting::Ehlo, "localhost"),
        (v4(3, 45004), Greeting::Helo, "mon-serveur"),
        (v6(4, 45005), Greeting::Ehlo, "fakedomain.xyz"),
    ];
    assert_reset_before_mail_from(&lab, &bogus);
    sessions::swaks(&lab, v4(0, 45006), Greeting::Ehlo, "mail.example.net")
        .expect("the good session completes");

    let postfix = lab.postfix().expect("Postfix runs");
    let delivered = lab::wait_until(Duration::from_secs(15), || {
        postfix.log().contains("status=sent")
    });
    let log = postfix.log();
    assert!(
        delivered.is_ok(),
        "the good message was not delivered:\n{log}"
    );
    for (client, _, name) in bogus {
        let ip = format!("[{}]", client.ip());
        assert!(
            log.lines()
                .any(|l| l.contains("lost connection") && l.contains(&ip)),
            "{name}: Postfix did not log the lost connection of {ip}:\n{log}"
        );
        assert!(
            !log.lines()
                .any(|l| l.contains(": client=") && l.contains(&ip)),
            "{name}: Postfix queued mail from {ip}:\n{log}"
        );
    }
    assert_resets_logged(&daemon, 5);
}

fn timed_good_session(lab: &Lab, client: SocketAddr) -> Duration {
    let started = std::time::Instant::now();
    sessions::swaks(lab, client, Greeting::Ehlo, "mail.example.net").expect("good session");
    started.elapsed()
}

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values[values.len() / 2]
}

/// The gate in real sessions: swaks sends MAIL FROM the instant the EHLO reply arrives and
/// still completes (the added delay is printed, not asserted); a pipelining bot is cut
/// before its commands reach Postfix.
#[test]
fn the_gate_lets_fast_good_clients_through_and_cuts_pipelining_bots() {
    let lab = postfix_lab("f");
    let mut daemon = Daemon::start(&lab, &[], false).expect("starting the daemon");
    let with_filter: Vec<Duration> = (0..10)
        .map(|i| timed_good_session(&lab, v4(0, 46000 + i)))
        .collect();

    let client = v4(1, 46100);
    let bot: [&[u8]; 1] = [b"EHLO mail.example.net\r\nMAIL FROM:<bot@example.net>\r\nRCPT TO:<postmaster@example.org>\r\n"];
    let outcome = sessions::raw_session(&lab, client, &bot, Duration::ZERO);
    assert!(
        outcome.is_err(),
        "the pipelining bot got a reply: {outcome:?}"
    );
    let postfix = lab.postfix().expect("Postfix runs");
    let ip = format!("[{}]", client.ip());
    let cut = lab::wait_until(Duration::from_secs(10), || {
        postfix
            .log()
            .lines()
            .any(|l| l.contains("lost connection") && l.contains(&ip))
    });
    let log = postfix.log();
    assert!(cut.is_ok(), "no lost connection for {ip}:\n{log}");
    let bot_lines: Vec<&str> = log.lines().filter(|l| l.contains(&ip)).collect();
    assert!(
        bot_lines
            .iter()
            .all(|l| !l.contains("EHLO") && !l.contains("MAIL") && !l.contains("RCPT")),
        "the bot's commands reached Postfix: {bot_lines:#?}"
    );
    let wanted = format!("client={client} ");
    let line = daemon
        .wait_for(Duration::from_secs(10), |l| l.contains(&wanted))
        .expect("the bot's session is reported");
    assert!(
        line.contains("pipelined=true") && line.contains("reasons=pipelining"),
        "{line}"
    );

    let status = daemon.stop().expect("stopping the daemon");
    assert!(status.success());
    let without: Vec<Duration> = (0..10)
        .map(|i| timed_good_session(&lab, v4(0, 46200 + i)))
        .collect();
    eprintln!(
        "good session (swaks, EHLO to QUIT) median: {:?} with the filter enforcing, {:?} without",
        median(with_filter),
        median(without)
    );
}

/// A frozen daemon: the gate opens by itself after its deadline (counted), and once the
/// heartbeat is stale it holds nothing at all (counted).
#[test]
fn a_frozen_daemon_fails_open() {
    let lab = lab("g");
    let args = [
        "--monitor",
        "--gate-deadline-ms",
        "1000",
        "--heartbeat-timeout-ms",
        "4000",
    ];
    let daemon = Daemon::start(&lab, &args, false).expect("starting the daemon");
    daemon.signal(libc::SIGSTOP);
    // The heartbeat is still fresh: the gate holds MAIL FROM until its deadline.
    let held = timed_good_session(&lab, v4(0, 47001));
    assert!(
        held >= Duration::from_millis(1000),
        "MAIL FROM was not held: {held:?}"
    );
    // Past the heartbeat timeout the gate is off.
    std::thread::sleep(Duration::from_secs(4));
    let free = timed_good_session(&lab, v4(0, 47002));
    daemon.signal(libc::SIGCONT);
    let mut page = String::new();
    let counted = lab::wait_until(Duration::from_secs(10), || {
        page = daemon.scrape().unwrap_or_default();
        metric_value(
            &page,
            "helo_filter_fail_open_total{cause=\"daemon_absent\"}",
        )
        .is_some_and(|v| v >= 1.0)
    });
    assert!(counted.is_ok(), "{page}");
    assert_eq!(
        metric_value(
            &page,
            "helo_filter_fail_open_total{cause=\"gate_deadline\"}"
        ),
        Some(1.0),
        "{page}"
    );
    eprintln!(
        "frozen daemon: session held {held:?} by the gate deadline, {free:?} once the heartbeat was stale"
    );
    // A killed daemon takes its program with it: sessions flow as if it had never been.
    daemon.signal(libc::SIGKILL);
    let after_kill = timed_good_session(&lab, v4(0, 47003));
    eprintln!("killed daemon: session took {after_kill:?}");
}

/// Whether `client` can open a TCP connection to the MX's port 25 within a second.
fn connects(lab: &Lab, client: SocketAddr) -> bool {
    let server = server_of(client);
    lab::in_netns(&lab.client_ns, move || {
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(client),
            socket2::Type::STREAM,
            None,
        )
        .expect("socket");
        socket.set_reuse_address(true).expect("SO_REUSEADDR");
        socket
            .bind(&SocketAddr::new(client.ip(), 0).into())
            .expect("bind");
        socket
            .connect_timeout(&server.into(), Duration::from_secs(1))
            .is_ok()
    })
}

/// Repeated bogus HELOs get a source denied: its SYNs go unanswered (counted) while other
/// sources connect; after the denial expires it connects again.
#[test]
fn repeat_offenders_are_denied_at_syn_time_until_the_denial_expires() {
    let lab = lab("h");
    let args = ["--reputation-threshold", "3.5", "--deny-ttl", "3"];
    let mut daemon = Daemon::start(&lab, &args, false).expect("starting the daemon");
    let offender = v4(2, 48001);
    assert!(connects(&lab, offender), "not denied yet");
    for (i, name) in ["localhost", "mon-serveur"].into_iter().enumerate() {
        let client = SocketAddr::new(offender.ip(), 48010 + i as u16);
        let (completed, _) =
            sessions::swaks_transcript(&lab, client, Greeting::Helo, name).expect("swaks");
        assert!(!completed);
    }
    daemon
        .wait_for(Duration::from_secs(10), |l| {
            l.contains("denied 203.0.113.12/32")
        })
        .expect("the offender is denied");
    assert!(
        !connects(&lab, offender),
        "a denied source's SYN was answered"
    );
    assert!(
        connects(&lab, v4(3, 48002)),
        "another source is not affected"
    );
    let mut page = String::new();
    let counted = lab::wait_until(Duration::from_secs(5), || {
        page = daemon.scrape().unwrap_or_default();
        metric_value(&page, "helo_filter_syn_dropped_total").is_some_and(|v| v >= 1.0)
            && metric_value(&page, "helo_filter_deny_entries{origin=\"reputation\"}") == Some(1.0)
    });
    assert!(counted.is_ok(), "{page}");
    assert!(
        metric_value(&page, "helo_filter_reputation_sources") >= Some(1.0),
        "{page}"
    );
    let released = lab::wait_until(Duration::from_secs(10), || connects(&lab, offender));
    assert!(released.is_ok(), "the denial did not expire");
}

/// Allow-listed sources are left alone whatever they say; operator deny entries drop SYNs.
#[test]
fn allow_and_deny_lists() {
    let lab = lab("i");
    let args = [
        "--allow",
        "203.0.113.13/32",
        "--deny-source",
        "2001:db8:1::/64",
    ];
    let daemon = Daemon::start(&lab, &args, false).expect("starting the daemon");
    sessions::swaks(&lab, v4(3, 49001), Greeting::Helo, "localhost")
        .expect("an allow-listed source is not reset");
    assert!(!connects(&lab, v6(0, 49002)), "a denied /64 connected");
    assert!(connects(&lab, v4(0, 49003)));
    let page = daemon.scrape().expect("scraping");
    assert_eq!(
        metric_value(&page, "helo_filter_allow_entries"),
        Some(1.0),
        "{page}"
    );
    assert_eq!(
        metric_value(&page, "helo_filter_deny_entries{origin=\"operator\"}"),
        Some(1.0),
        "{page}"
    );
    assert!(
        !daemon
            .lines()
            .iter()
            .any(|l| l.contains("client=203.0.113.13:")),
        "the allow-listed session was captured: {:#?}",
        daemon.lines()
    );
}

/// With `[dns] fail_closed`, a DNS failure is an enforced reject.
#[test]
fn dns_fail_closed_turns_a_dns_failure_into_a_reset() {
    let mut lab = lab("j");
    let config = std::env::temp_dir().join(format!("hf-failclosed-{}.toml", std::process::id()));
    std::fs::write(&config, "[dns]\nfail_closed = true\ndeadline_ms = 300\n").expect("config");
    let args = ["--config", config.to_str().expect("utf-8 path")];
    let mut daemon = Daemon::start(&lab, &args, false).expect("starting the daemon");
    let _ = std::fs::remove_file(&config);
    // The fixture DNS server goes away: every lookup fails.
    lab.stop_dns();
    let (completed, transcript) =
        sessions::swaks_transcript(&lab, v4(0, 50001), Greeting::Ehlo, "mail.example.net")
            .expect("swaks");
    assert!(!completed, "{transcript}\n{}", daemon.lines().join("\n"));
    let line = daemon
        .wait_for(Duration::from_secs(10), |l| {
            l.contains("client=203.0.113.10:50001")
        })
        .expect("the session is reported");
    assert!(
        line.contains("reasons=dns_tempfail") && line.ends_with("action=rst"),
        "{line}"
    );
}

/// A raw client says `HELO localhost`, reads the reply, waits for the verdict, sends
/// MAIL FROM and reads again: how the connection then fails (`UnexpectedEof` for a FIN),
/// or the reply if there was one (as an error).
fn next_command_after_bogus_helo(
    lab: &Lab,
    client: SocketAddr,
) -> Result<std::io::ErrorKind, String> {
    use std::io::{BufRead as _, BufReader, ErrorKind, Write as _};

    let server = server_of(client);
    lab::in_netns(&lab.client_ns, move || -> Result<ErrorKind, String> {
        let stream = sessions::connect_from(client, server).map_err(|e| e.to_string())?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        stream
            .set_read_timeout(Some(Duration::from_secs(3)))
            .map_err(|e| e.to_string())?;
        let mut reader = BufReader::new(stream.try_clone().map_err(|e| e.to_string())?);
        let mut line = String::new();
        reader.read_line(&mut line).map_err(|e| e.to_string())?;
        let mut writer = stream;
        writer
            .write_all(b"HELO localhost\r\n")
            .map_err(|e| e.to_string())?;
        line.clear();
        reader.read_line(&mut line).map_err(|e| e.to_string())?;
        // Time for the verdict, then the next command. From here on, how the connection
        // fails is the outcome (a RST may already have come back for the client's ACK).
        std::thread::sleep(Duration::from_millis(500));
        if let Err(e) = writer.write_all(b"MAIL FROM:<bot@example.net>\r\n") {
            return Ok(e.kind());
        }
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) => Ok(ErrorKind::UnexpectedEof),
            Ok(_) => Err(format!("MAIL FROM was answered: {line}")),
            Err(e) => Ok(e.kind()),
        }
    })
}

/// Action `drop` on an MX: after a bogus HELO the client's next command gets no answer and
/// no RST, while the MTA's socket is gone at once.
#[test]
fn drop_mode_leaves_the_client_in_silence_and_frees_the_mta() {
    use std::io::ErrorKind;

    let lab = lab("k");
    // Through the configuration file's `[enforce]` section, this time.
    let config = std::env::temp_dir().join(format!("hf-drop-{}.toml", std::process::id()));
    std::fs::write(&config, "[enforce]\naction = \"drop\"\n").expect("config");
    let args = ["--config", config.to_str().expect("utf-8 path")];
    let mut daemon = Daemon::start(&lab, &args, false).expect("starting the daemon");
    let _ = std::fs::remove_file(&config);
    let client = v4(1, 51001);
    let outcome = next_command_after_bogus_helo(&lab, client);
    let kind = outcome.expect("the session");
    assert!(
        matches!(kind, ErrorKind::WouldBlock | ErrorKind::TimedOut),
        "the client got {kind:?} instead of silence"
    );
    let line = daemon
        .wait_for(Duration::from_secs(5), |l| {
            l.contains("client=203.0.113.11:51001")
        })
        .expect("the session is reported");
    assert!(line.ends_with("action=drop"), "{line}");
    let sockets = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.mx_ns,
            "ss",
            "-Htn",
            "state",
            "established",
        ])
        .args(["( dport = :51001 )"])
        .output()
        .expect("ss");
    let sockets = String::from_utf8_lossy(&sockets.stdout);
    assert!(
        sockets.trim().is_empty(),
        "the MTA's socket is still there: {sockets}"
    );
    let page = daemon.scrape().expect("scraping");
    assert!(
        metric_value(&page, "helo_filter_condemned_dropped_total").is_some_and(|v| v >= 1.0),
        "{page}"
    );
    assert_eq!(
        metric_value(&page, "helo_filter_actions_total{action=\"drop\"}"),
        Some(1.0)
    );
}

/// Deployment `gateway` (three namespaces: client, gateway running the filter, MX): a bogus
/// client's next packet is answered with a RST built in XDP; a good session goes through.
/// Generic XDP: on veth, natively transmitted frames are dropped unless the peer runs XDP.
#[test]
fn gateway_mode_answers_bogus_clients_with_a_rst() {
    require_root();
    let name = format!("hf{}l", std::process::id() % 100_000);
    let mut lab = Lab::create_with_gateway(&name).expect("creating the gateway lab");
    lab.start_smtp_sink().expect("starting smtp-sink");
    lab.start_dns().expect("starting dnsmasq");
    let args = ["--deployment", "gateway", "--xdp-mode", "generic"];
    let daemon = Daemon::start(&lab, &args, false).expect("starting the daemon");
    let bogus = [
        (v4(1, 52001), Greeting::Helo, "localhost"),
        (v6(2, 52002), Greeting::Ehlo, "[192.168.1.1]"),
    ];
    assert_reset_before_mail_from(&lab, &bogus);
    // What exactly the client gets: a RST (the MTA behind the gateway never closed).
    let kind = next_command_after_bogus_helo(&lab, v4(3, 52004)).expect("the session");
    assert_eq!(kind, std::io::ErrorKind::ConnectionReset);
    sessions::swaks(&lab, v4(0, 52003), Greeting::Ehlo, "mail.example.net")
        .expect("a good session goes through the gateway");
    assert_resets_logged(&daemon, 3);
    let page = daemon.scrape().expect("scraping");
    assert!(
        metric_value(&page, "helo_filter_condemned_dropped_total").is_some_and(|v| v >= 1.0),
        "no packet of a condemned flow was answered:\n{page}"
    );
}
