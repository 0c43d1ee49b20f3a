//! End to end in network namespaces: monitor mode holds nothing. A fast client (swaks sends
//! MAIL FROM the instant the EHLO reply arrives) is not delayed by a verdict that takes
//! seconds, where the same client is held until that verdict when the daemon enforces; the
//! monitoring daemon still logs and counts every verdict.
//!
//! The verdict is made slow on purpose: the lab's DNS server is replaced by a UDP socket that
//! never answers, so every verdict waits for the DNS deadline (3 s) and then accepts with the
//! note `dns_tempfail` (fail-open).

use std::{
    net::{SocketAddr, UdpSocket},
    time::{Duration, Instant},
};

use helo_filter_tests::e2e::*;
use xtask::{
    daemon::{Daemon, metric_value},
    lab::{self, Lab},
    netns, process,
    sessions::{self, Greeting},
};

/// How long every verdict takes (the DNS deadline against a silent server).
const VERDICT_DELAY: Duration = Duration::from_secs(3);
/// A second of margin on each side of it: an unheld session must end well before, a held
/// one cannot end much before.
const MARGIN: Duration = Duration::from_secs(1);

const GATE_HELD: &str = "helo_filter_gate_held_total";
const HELO_EVENTS: &str = "helo_filter_xdp_packets_total{kind=\"helo\"}";

/// A swaks session greeting with `name`, timed; it must complete.
fn timed_swaks(lab: &Lab, client: SocketAddr, name: &str) -> Duration {
    let started = Instant::now();
    sessions::swaks(lab, client, Greeting::Ehlo, name)
        .unwrap_or_else(|e| panic!("{name} from {client}: {e:#}"));
    started.elapsed()
}

/// The daemon's verdict line for `client` (waits up to 15 s for it).
fn verdict_line(daemon: &Daemon, client: SocketAddr) -> String {
    let find = || {
        daemon
            .lines()
            .into_iter()
            .find(|l| l.contains(&format!(" client={client} ")) && l.contains(" verdict="))
    };
    let _ = process::wait_until(Duration::from_secs(15), || find().is_some());
    find().unwrap_or_else(|| {
        panic!(
            "no verdict logged for {client}:\n{}",
            daemon.lines().join("\n")
        )
    })
}

#[test]
fn monitor_mode_holds_nothing_where_enforcing_holds_until_the_verdict() {
    let mut lab = lab("mn");
    lab.stop_dns();
    let _silent = netns::in_netns(&lab.filter_ns, || {
        UdpSocket::bind(lab::DNS_SERVER).expect("binding the silent DNS server")
    });
    let config = std::env::temp_dir().join(format!("hf-monitor-{}.toml", std::process::id()));
    std::fs::write(
        &config,
        format!("[dns]\ndeadline_ms = {}\n", VERDICT_DELAY.as_millis()),
    )
    .expect("config");
    let config_arg = config.to_str().expect("utf-8 path").to_owned();
    let args = |monitor: bool| {
        let mut args = vec!["--config", &config_arg, NO_REPUTATION[0], NO_REPUTATION[1]];
        if monitor {
            args.push("--monitor");
        }
        args
    };

    // Monitor mode: nothing waits for the verdicts, good or bogus.
    let daemon = Daemon::start(&lab, &args(true), false).expect("starting the monitor daemon");
    let good = v4(0, 42001);
    let swaks_took = timed_swaks(&lab, good, "mail.example.net");
    let raw = v4(1, 42002);
    let raw_waited = mail_from_wait(&lab, raw);
    let bogus = v4(2, 42003);
    let bogus_took = timed_swaks(&lab, bogus, "localhost");
    for (what, took) in [
        ("the good swaks session", swaks_took),
        ("the raw client's MAIL FROM", raw_waited),
        ("the bogus swaks session", bogus_took),
    ] {
        assert!(
            took < VERDICT_DELAY - MARGIN,
            "monitor mode: {what} took {took:?}, held for the verdict"
        );
    }
    // Every verdict is still logged, as monitor mode logs it.
    for client in [good, raw] {
        let line = verdict_line(&daemon, client);
        assert!(
            line.contains(" verdict=accept ")
                && line.contains("dns_tempfail")
                && line.ends_with(" action=none"),
            "{line}"
        );
    }
    let line = verdict_line(&daemon, bogus);
    assert!(
        line.contains(" verdict=reject reasons=localhost") && line.ends_with(" action=monitor"),
        "{line}"
    );
    // Captured, never held: the kernel's counters are copied together, once a second.
    let page = wait_for_metric(&daemon, HELO_EVENTS, |v| v >= 3.0);
    assert_eq!(metric_value(&page, GATE_HELD), Some(0.0), "{page}");
    let page = wait_for_metric(
        &daemon,
        "helo_filter_actions_total{action=\"monitor\"}",
        |v| v >= 1.0,
    );
    assert_eq!(
        metric_value(&page, "helo_filter_actions_total{action=\"monitor\"}"),
        Some(1.0),
        "{page}"
    );
    let status = daemon.stop().expect("stopping the monitor daemon");
    assert!(status.success(), "the monitor daemon exited with {status}");

    // Enforcing, the same clients wait for the same slow verdicts.
    let daemon = Daemon::start(&lab, &args(false), false).expect("starting the enforcing daemon");
    let _ = std::fs::remove_file(&config);
    let swaks_took = timed_swaks(&lab, v4(0, 42011), "mail.example.net");
    let raw_waited = mail_from_wait(&lab, v4(1, 42012));
    for (what, took) in [
        ("the good swaks session", swaks_took),
        ("the raw client's MAIL FROM", raw_waited),
    ] {
        assert!(
            took >= VERDICT_DELAY - MARGIN,
            "enforcing: {what} took only {took:?}, not held for the verdict"
        );
    }
    wait_for_metric(&daemon, GATE_HELD, |v| v >= 2.0);
    let status = daemon.stop().expect("stopping the enforcing daemon");
    assert!(
        status.success(),
        "the enforcing daemon exited with {status}"
    );
}
