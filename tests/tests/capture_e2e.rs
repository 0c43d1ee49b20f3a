//! End to end in network namespaces, the data path: real swaks and raw sessions against
//! smtp-sink, the real daemon on the MX side (resolving through the fixture dnsmasq), and
//! what it reports for each session: client, command line, verdict; and its metrics.

use std::{collections::BTreeSet, net::SocketAddr, process::Command, time::Duration};

use helo_filter_tests::e2e::*;
use xtask::{
    daemon::{Daemon, metric_value},
    process,
    sessions::{self, Greeting},
};

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
        // The logger's prefix (time, level, target) ends at the policy stage's target.
        .filter_map(|l| l.split_once("::stage: ").map(|(_, message)| message))
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
    let _ = process::wait_until(Duration::from_secs(15), || {
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
/// reports each one (enforcement has its own test below). SIGTERM leaves the program
/// attached; an offline `detach` takes it off.
#[test]
fn every_session_is_reported_exactly_with_its_client_and_verdict() {
    let lab = lab("a");
    let daemon = Daemon::start(
        &lab,
        &["--monitor", NO_REPUTATION[0], NO_REPUTATION[1]],
        false,
    )
    .expect("starting the daemon");
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

    // SIGTERM ends the daemon, not the protection; `detach` (no daemon running: it removes
    // the pins itself) ends that.
    let status = daemon.stop().expect("stopping the daemon");
    assert!(status.success(), "the daemon exited with {status}");
    let link = || {
        let out = Command::new("ip")
            .args(["-n", &lab.mx_ns, "link", "show", "dev", &lab.mx_iface])
            .output()
            .expect("ip link");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(
        link().contains("xdp"),
        "XDP gone after SIGTERM:\n{}",
        link()
    );
    let pins = lab.bpffs_dir().expect("pins");
    let detach = xtask::daemon::cli(&lab, &["detach", "--bpffs-dir", &pins.to_string_lossy()])
        .expect("the CLI runs");
    assert!(
        detach.status.success(),
        "{}",
        String::from_utf8_lossy(&detach.stderr)
    );
    assert!(
        !link().contains("xdp"),
        "XDP still attached after detach:\n{}",
        link()
    );
}

#[test]
fn metrics_show_the_kernel_counters_move() {
    let lab = lab("b");
    let daemon = Daemon::start(&lab, &NO_REPUTATION, false).expect("starting the daemon");
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

    // The daemon copies the kernel counters every second, and judges each session on its
    // own time: wait until every series below has got there (the last session judged too),
    // then check each one, so that a failure names it.
    let accepts = "helo_filter_verdicts_total{verdict=\"accept\",reason=\"none\"}";
    let mismatch = "helo_filter_check_failures_total{reason=\"dns_mismatch\"}";
    let checks = |page: &str| -> Vec<(String, bool)> {
        let now = |name: &str| metric_value(page, name).unwrap_or(f64::NAN);
        vec![
            ("seen moved".to_owned(), now(&series("seen")) > seen),
            (
                "a session is more than 10 packets".to_owned(),
                now(&series("smtp")) >= smtp + 10.0,
            ),
            (
                "two HELO packets".to_owned(),
                now(&series("helo")) == helo + 2.0,
            ),
            (
                "a continuation".to_owned(),
                now(&series("continuation")) >= 1.0,
            ),
            (
                "two HELO events".to_owned(),
                now("helo_filter_helo_events_total") == events + 2.0,
            ),
            (
                "no ring buffer drop".to_owned(),
                now("helo_filter_ringbuf_dropped_total") == 0.0,
            ),
            // The policy stage: two accepts (the second client is not mail.example.net's
            // address: a soft dns_mismatch), DNS answers cached between them, two
            // validations timed.
            (
                "two accepts".to_owned(),
                now(accepts) == before(accepts) + 2.0,
            ),
            (
                "one dns_mismatch".to_owned(),
                now(mismatch) == before(mismatch) + 1.0,
            ),
            (
                "a cache hit".to_owned(),
                now("helo_filter_dns_cache_total{result=\"hit\"}") >= 1.0,
            ),
            (
                "a cache miss".to_owned(),
                now("helo_filter_dns_cache_total{result=\"miss\"}") >= 1.0,
            ),
            (
                "two validations timed".to_owned(),
                now("helo_filter_validation_duration_seconds_count") == 2.0,
            ),
            (
                "an A lookup timed".to_owned(),
                now("helo_filter_dns_lookup_duration_seconds_count{type=\"a\"}") >= 1.0,
            ),
        ]
    };
    let mut page = String::new();
    let _ = process::wait_until(Duration::from_secs(15), || {
        page = daemon.scrape().unwrap_or_default();
        checks(&page).iter().all(|(_, holds)| *holds)
    });
    let failed: Vec<String> = checks(&page)
        .into_iter()
        .filter(|(_, holds)| !holds)
        .map(|(what, _)| what)
        .collect();
    assert!(failed.is_empty(), "not after 15 s: {failed:?}\n{page}");
    assert!(
        page.contains("helo_filter_validation_duration_seconds_bucket{le=\"0.001\"}"),
        "validation time is a histogram with buckets:\n{page}"
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

/// The lab's clients talk to the MX over an 802.1Q VLAN (id 100), the tags written into the
/// frames ([`xtask::lab::Lab::use_vlan`]): the XDP program on the MX's veth sees every client
/// frame tagged and must parse the tag to capture anything (with a parser blind to VLAN tags
/// no session is reported and the bogus ones complete). Enforcing (mx, rst): good sessions
/// over IPv4 and IPv6 complete and are reported accepted with their client; bogus ones are
/// reset before their MAIL FROM is answered, reported rejected with their reason, and their
/// MTA sockets are destroyed.
#[test]
fn sessions_over_a_vlan_are_reported_and_enforced() {
    let lab = vlan_lab("vlan", 100);
    let daemon = Daemon::start(&lab, &RST_NO_REPUTATION, false).expect("starting the daemon");
    let good = [
        (v4(0, 43101), Greeting::Ehlo, "mail.example.net", ACCEPT),
        (v6(0, 43102), Greeting::Helo, "v6.example.net", ACCEPT),
    ];
    let bogus = [
        (v4(1, 43103), Greeting::Helo, "127.0.0.1", reject("bare_ip")),
        (
            v6(3, 43104),
            Greeting::Ehlo,
            "localhost",
            reject("localhost"),
        ),
    ];
    for (client, greeting, name, _) in good {
        sessions::swaks(&lab, client, greeting, name).expect("a good session over the VLAN");
    }
    let played: Vec<_> = bogus
        .iter()
        .map(|&(client, greeting, name, _)| (client, greeting, name))
        .collect();
    assert_reset_before_mail_from(&lab, &played);

    let mut expected = BTreeSet::new();
    for (client, greeting, name, (verdict, reason)) in good.into_iter().chain(bogus) {
        let verb = match greeting {
            Greeting::Helo => "HELO",
            Greeting::Ehlo => "EHLO",
        };
        expected.insert((
            helo_line(client, verb, &format!("{verb} {name}"), false),
            verdict.to_owned(),
            reason.map(str::to_owned),
        ));
    }
    wait_for_reports(&daemon, &expected);
    let clients: Vec<_> = played.iter().map(|&(client, _, _)| client).collect();
    assert_sockets_destroyed(&daemon, &clients, "rst");
}
