//! End to end, injected faults: the DNS server gone, slow or answering garbage during a flood
//! of good and bogus sessions; the daemon frozen in mid-flood; the ring buffer full. Each test
//! prints its figures (sessions, fail-opens, waits, peaks of the bounded queues).

use std::{
    net::{IpAddr, SocketAddr},
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use helo_filter::dns::test_server::{BadServer, Misbehaviour};
use helo_filter_common::KernelConfig;
use helo_filter_tests::e2e::*;
use xtask::{
    bench::load::{Load, Outcomes},
    daemon::{Daemon, metric_value},
    lab::{self, Lab},
    netns, process,
    sessions::CONNECT_TIMEOUT,
};

/// A HELO the lab's DNS knows (its A record is the first client's address).
const GOOD_NAME: &str = "mail.example.net";
/// HELOs the policy refuses without asking DNS (so a DNS fault cannot let them through).
const BOGUS: [&str; 4] = ["localhost", "127.0.0.1", "[192.168.1.1]", "mon-serveur"];
const DNS_TEMPFAIL: &str = "helo_filter_fail_open_total{cause=\"dns_tempfail\"}";
const DAEMON_ABSENT: &str = "helo_filter_fail_open_total{cause=\"daemon_absent\"}";
const RINGBUF_DROPPED: &str = "helo_filter_ringbuf_dropped_total";
const QUEUE: &str = "helo_filter_policy_queue_sessions";
const DNS_IN_FLIGHT: &str = "helo_filter_dns_in_flight";
const TASKS: &str = "helo_filter_runtime_tasks";
/// The daemon's bounds: `run`'s policy queue and `[dns] max_in_flight`'s default.
const POLICY_QUEUE: f64 = 4096.0;
const MAX_DNS_IN_FLIGHT: f64 = 256.0;

/// `count` good sessions (each greeting with a name of its own, so that each asks DNS anew:
/// names that only a DNS fault lets through) from the first client address of each family,
/// `concurrency` at once.
fn good_load(count: usize, concurrency: usize) -> Load {
    Load {
        sources: vec![IpAddr::V4(lab::client_v4(0)), IpAddr::V6(lab::client_v6(0))],
        // Leaked: `Load` takes static names, and a test process is short-lived.
        helos: (0..count)
            .map(|i| &*Box::leak(format!("m{i}.example.net").into_boxed_str()))
            .collect(),
        count,
        concurrency,
        think: Duration::ZERO,
        connect_timeout: CONNECT_TIMEOUT,
    }
}

/// [`good_load`] greeting with [`GOOD_NAME`], which passes with DNS working.
fn known_good_load(count: usize, concurrency: usize) -> Load {
    Load {
        helos: vec![GOOD_NAME],
        ..good_load(count, concurrency)
    }
}

/// `count` sessions greeting with [`BOGUS`] HELOs from the other client addresses.
fn bogus_load(count: usize, concurrency: usize) -> Load {
    Load {
        sources: (1..lab::CLIENTS)
            .flat_map(|i| [IpAddr::V4(lab::client_v4(i)), IpAddr::V6(lab::client_v6(i))])
            .collect(),
        helos: BOGUS.to_vec(),
        count,
        concurrency,
        think: Duration::ZERO,
        connect_timeout: CONNECT_TIMEOUT,
    }
}

/// Plays the good and the bogus load at once.
fn flood(lab: &Lab, good: &Load, bogus: &Load) -> (Outcomes, Outcomes) {
    thread::scope(|s| {
        let good = s.spawn(|| good.run(lab));
        let bogus = bogus.run(lab);
        (good.join().expect("the good load"), bogus)
    })
}

/// The gauges whose peaks [`with_peaks`] records: the policy queue, DNS queries in flight,
/// the runtime's tasks.
const PEAK_GAUGES: [&str; 3] = [QUEUE, DNS_IN_FLIGHT, TASKS];

/// Runs `work` while scraping the daemon every 100 ms: its result, and the highest value
/// of each of [`PEAK_GAUGES`] seen meanwhile.
fn with_peaks<T: Send>(daemon: &Daemon, work: impl FnOnce() -> T + Send) -> (T, [f64; 3]) {
    let done = AtomicBool::new(false);
    thread::scope(|s| {
        let scraping = s.spawn(|| {
            let mut peaks = [0.0f64; 3];
            while !done.load(Ordering::Relaxed) {
                if let Ok(page) = daemon.scrape() {
                    for (peak, gauge) in peaks.iter_mut().zip(PEAK_GAUGES) {
                        *peak = peak.max(metric_value(&page, gauge).unwrap_or(0.0));
                    }
                }
                thread::sleep(Duration::from_millis(100));
            }
            peaks
        });
        let result = work();
        done.store(true, Ordering::Relaxed);
        (result, scraping.join().expect("the scraping thread"))
    })
}

fn value(page: &str, series: &str) -> f64 {
    metric_value(page, series).unwrap_or_else(|| panic!("no {series}:\n{page}"))
}

/// A flood of good and bogus sessions with a DNS fault: where the lab's dnsmasq was,
/// nothing (`None`) or a misbehaving server; the daemon reads `config`.
fn dns_fault_under_flood(test: &str, fault: &str, server: Option<Misbehaviour>, config: &str) {
    // More good sessions at once than the in-flight limit has slots for their queries
    // (A, AAAA and MX each; the client's PTR is shared).
    const GOOD: usize = 200;
    const BOGUS_SESSIONS: usize = 60;

    let mut lab = lab(test);
    let config = config_file(&lab, config);
    let args = ["--config", &config, NO_REPUTATION[0], NO_REPUTATION[1]];
    let daemon = Daemon::start(&lab, &args, false).expect("starting the daemon");
    // The daemon's idle task count, once every task of its start runs (the gauge is sampled
    // every second): what "no task piles up" comes back to.
    thread::sleep(Duration::from_millis(2500));
    let idle = value(&daemon.scrape().expect("scraping"), TASKS);
    lab.stop_dns();
    let _server = server.map(|how| {
        netns::in_netns(&lab.filter_ns, move || {
            BadServer::start_at(lab::DNS_SERVER.parse().expect("an address"), how)
        })
    });
    let before = daemon.scrape().expect("scraping");
    let started = Instant::now();
    let ((good, bogus), [queue, in_flight, tasks]) = with_peaks(&daemon, || {
        flood(&lab, &good_load(GOOD, 100), &bogus_load(BOGUS_SESSIONS, 16))
    });
    let took = started.elapsed();

    assert_eq!(
        good.delivered, GOOD,
        "{fault}: good sessions did not all deliver: {good:?}"
    );
    assert_eq!(
        bogus.delivered, 0,
        "{fault}: bogus sessions were delivered (judged without DNS, they must be refused): \
         {bogus:?}"
    );
    let page = wait_for_metric(&daemon, DNS_TEMPFAIL, |v| {
        v - value(&before, DNS_TEMPFAIL) >= GOOD as f64
    });
    let fail_opens = value(&page, DNS_TEMPFAIL) - value(&before, DNS_TEMPFAIL);
    assert_eq!(
        fail_opens, GOOD as f64,
        "{fault}: one dns_tempfail fail-open per good session:\n{page}"
    );
    assert!(queue <= POLICY_QUEUE, "{fault}: policy queue {queue}");
    assert!(
        in_flight <= MAX_DNS_IN_FLIGHT,
        "{fault}: {in_flight} DNS queries in flight"
    );
    // Every query and judging task ends by its deadline: the runtime is back to its idle
    // count, give or take the few tasks of a scrape, a sweep and the resolver's connections
    // (a pile-up would be hundreds: the flood peaks there).
    let settled = process::wait_until(Duration::from_secs(10), || {
        daemon
            .scrape()
            .is_ok_and(|page| value(&page, TASKS) <= idle + 8.0)
    });
    let after = daemon.scrape().expect("scraping");
    assert!(
        settled.is_ok(),
        "{fault}: tasks piled up: {} alive after the flood, {idle} idle",
        value(&after, TASKS)
    );
    assert_eq!(value(&after, DNS_IN_FLIGHT), 0.0, "{fault}: {after}");
    eprintln!(
        "DNS {fault}: {GOOD} good sessions delivered and {} bogus refused or cut of \
         {BOGUS_SESSIONS} in {took:?}; fail-open dns_tempfail +{fail_opens}; peaks: policy queue \
         {queue} (of 4096), DNS in flight {in_flight} (of 256), tasks {tasks} (idle {idle}, \
         after {})",
        bogus.refused + bogus.cut,
        value(&after, TASKS)
    );
}

/// The DNS server gone (nothing listens where it was): good mail flows, each good session
/// counted as a dns_tempfail fail-open; bogus HELOs that need no DNS are still refused; the
/// queues stay within bounds and no task piles up.
#[test]
fn dns_gone_during_a_flood_fails_open() {
    dns_fault_under_flood("dg", "gone", None, "");
}

/// The DNS server answering each query 2 s late (NXDOMAIN), past the daemon's deadline, made
/// 1 s here (at the default 2 s an answer may still win the race, and judge its session):
/// as [`dns_gone_during_a_flood_fails_open`], each query holding its slot to the deadline and
/// its late answer discarded.
#[test]
fn slow_dns_during_a_flood_fails_open() {
    let slow = Misbehaviour::Late(Duration::from_secs(2));
    dns_fault_under_flood("ds", "slow", Some(slow), "[dns]\ndeadline_ms = 1000\n");
}

/// The DNS server answering garbage (the query's id, then junk): as
/// [`dns_gone_during_a_flood_fails_open`].
#[test]
fn garbage_dns_during_a_flood_fails_open() {
    dns_fault_under_flood("dj", "garbage", Some(Misbehaviour::GarbageWithId), "");
}

/// One good session every 100 ms from `client` until `until`: when each sent its HELO
/// (from `start`), and how long its MAIL FROM waited.
fn timed_sessions(
    lab: &Lab,
    client: SocketAddr,
    start: Instant,
    until: Instant,
) -> Vec<(Duration, MailFromTimes)> {
    let mut times = Vec::new();
    while Instant::now() < until {
        let began = start.elapsed();
        times.push((began, timed_mail_from(lab, client)));
        thread::sleep(Duration::from_millis(100));
    }
    times
}

/// The daemon frozen (SIGSTOP) for 10 s in mid-flood: the gate fails open once the heartbeat
/// is older than its timeout (3 s, the default) and mail flows all along; sessions that
/// start once the heartbeat is stale are not held at all; after SIGCONT the daemon judges
/// again (a bogus session is refused).
#[test]
fn a_daemon_frozen_mid_flood_fails_open_and_resumes() {
    const FREEZE: Duration = Duration::from_secs(10);
    const BEFORE: Duration = Duration::from_secs(2);
    const AFTER: Duration = Duration::from_secs(3);
    let heartbeat = Duration::from_millis(KernelConfig::DEFAULT_HEARTBEAT_TIMEOUT_MS.into());
    // The gate's hold shows at the client's next retransmission of its MAIL FROM (the
    // backoff doubles from 200 ms: 0.2, 0.6, 1.4, 3.0, 6.2 s after the first send).
    let retransmission = Duration::from_millis(3200);

    let lab = lab("fz");
    let daemon = Daemon::start(&lab, &NO_REPUTATION, false).expect("starting the daemon");
    let start = Instant::now();
    let until = start + BEFORE + FREEZE + AFTER;
    let lab = &lab;
    let (timed, (good, bogus)) = thread::scope(|s| {
        // Six timed clients: each has one session held in the 3 s the heartbeat stays fresh
        // (it takes that long), started at a point of its own.
        let timers: Vec<_> = (0..3)
            .flat_map(|i| [v4(i, 0), v6(i, 0)])
            .map(|client| s.spawn(move || timed_sessions(lab, client, start, until)))
            .collect();
        // Both loads think 20 ms before each command, so that they span the freeze. A bogus
        // session judged just before it waits out the freeze: its flow is condemned, and the
        // 550 that ends it comes from the daemon.
        let think = Duration::from_millis(20);
        let good = Load {
            think,
            ..known_good_load(800, 8)
        };
        let bogus = Load {
            think,
            ..bogus_load(200, 4)
        };
        let flooding = s.spawn(move || flood(lab, &good, &bogus));
        thread::sleep(BEFORE);
        daemon.signal(libc::SIGSTOP);
        thread::sleep(FREEZE);
        daemon.signal(libc::SIGCONT);
        let timed: Vec<_> = timers
            .into_iter()
            .flat_map(|t| t.join().expect("timed sessions"))
            .collect();
        (timed, flooding.join().expect("the flood"))
    });
    let (stopped, thawed) = (BEFORE, BEFORE + FREEZE);
    let frozen: Vec<_> = timed
        .iter()
        .filter(|(began, _)| (stopped..thawed).contains(began))
        .collect();
    let stale: Vec<_> = frozen
        .iter()
        .filter(|(began, _)| *began >= stopped + heartbeat + Duration::from_millis(500))
        .collect();
    assert!(
        stale.len() >= 5,
        "{} timed sessions with the heartbeat stale: too few to tell",
        stale.len()
    );
    let slowest_stale = stale.iter().map(|(_, t)| t.since_mail_from).max().unwrap();
    assert!(
        slowest_stale < Duration::from_secs(1),
        "with the heartbeat stale, a MAIL FROM waited {slowest_stale:?} (the gate must be off)"
    );
    let slowest_frozen = frozen.iter().map(|(_, t)| t.since_helo).max().unwrap();
    assert!(
        slowest_frozen <= heartbeat + retransmission,
        "with the daemon frozen, a MAIL FROM was answered {slowest_frozen:?} after its HELO: \
         the gate must fail open by the heartbeat timeout ({heartbeat:?}) and the client's \
         next retransmission"
    );
    assert_eq!(good.delivered, good.total(), "good sessions: {good:?}");

    let reject = reject_reply("localhost");
    refused_at_mail_from(lab, v4(1, 47101), "localhost", &reject);
    let page = wait_for_metric(&daemon, DAEMON_ABSENT, |v| v >= 1.0);
    let held_before: Vec<_> = frozen
        .iter()
        .filter(|(began, _)| *began < stopped + heartbeat)
        .map(|(_, t)| t.since_helo)
        .collect();
    eprintln!(
        "frozen 10 s in mid-flood: flood {}/{} good delivered in {:?}, bogus {} refused, {} \
         cut, {} delivered (unjudged while frozen) in {:?}; {} timed sessions during the freeze: {} while the \
         heartbeat was fresh (MAIL FROM answered at most {:?} after the HELO, median {:?}), {} \
         once stale (at most {slowest_stale:?}); fail-open daemon_absent {}; after SIGCONT a \
         bogus session is refused",
        good.delivered,
        good.total(),
        good.elapsed,
        bogus.refused,
        bogus.cut,
        bogus.delivered,
        bogus.elapsed,
        frozen.len(),
        held_before.len(),
        held_before.iter().max().copied().unwrap_or_default(),
        median(held_before.clone()),
        stale.len(),
        value(&page, DAEMON_ABSENT)
    );
}

/// `[kernel] ringbuf_bytes = 4096` (a few events): a burst of concurrent sessions overflows
/// the ring buffer; the sessions whose segments found no room pass unjudged (counted), every
/// good session delivers, the daemon lives on and still judges. The pinned buffer has the
/// size asked for, and a restart asking for another size is refused, naming `detach`.
#[test]
fn a_full_ring_buffer_passes_sessions_unjudged() {
    const SESSIONS: usize = 300;

    let lab = lab("rb");
    let config = config_file(&lab, "[kernel]\nringbuf_bytes = 4096\n");
    let args = ["--config", &config, NO_REPUTATION[0], NO_REPUTATION[1]];
    let daemon = Daemon::start(&lab, &args, false).expect("starting the daemon");
    let pinned = lab.bpffs_dir().expect("the pins").join("maps/EVENTS");
    let info = aya::maps::MapInfo::from_pin(&pinned).expect("the pinned ring buffer");
    assert_eq!(info.max_entries(), 4096, "the pinned ring buffer's size");

    let before = daemon.scrape().expect("scraping");
    let good = known_good_load(SESSIONS, 100).run(&lab);
    assert_eq!(good.delivered, SESSIONS, "the burst: {good:?}");
    let page = wait_for_metric(&daemon, RINGBUF_DROPPED, |v| v > 0.0);
    let dropped = value(&page, RINGBUF_DROPPED) - value(&before, RINGBUF_DROPPED);
    let judged = value(&page, "helo_filter_helo_events_total")
        - value(&before, "helo_filter_helo_events_total");
    assert!(
        judged < SESSIONS as f64,
        "every session of the burst was judged ({judged}): the ring buffer never filled"
    );
    let reject = reject_reply("localhost");
    refused_at_mail_from(&lab, v4(1, 47201), "localhost", &reject);
    eprintln!(
        "ring buffer of 4096 bytes, a burst of {SESSIONS} sessions 100 at once in {:?}: all \
         delivered; {dropped} segments found it full, {judged} HELOs judged; a bogus session \
         afterwards is refused",
        good.elapsed
    );

    // The pinned buffer keeps its size: a restart asking for the default is refused.
    daemon.stop().expect("stopping the daemon");
    let refused = Daemon::start(&lab, &NO_REPUTATION, false)
        .err()
        .expect("a restart with another ring-buffer size must be refused");
    let message = format!("{refused:#}");
    assert!(
        message.contains("holds 4096 bytes and [kernel] ringbuf_bytes is 1048576")
            && message.contains("`helo-filter detach` first"),
        "{message}"
    );
}

/// A verdict enforced on a session that has already ended (what a daemon thawed after a
/// freeze does for the sessions that ran meanwhile): destroying its MTA socket finds none,
/// and must not take the socket listening on the same address instead (the kernel's lookup by
/// addresses falls back to it), which would leave the MTA accepting no more mail.
#[test]
fn destroying_an_ended_session_leaves_the_mta_listening() {
    let lab = lab("de");
    let client = v4(0, 40000);
    assert!(
        connects(&lab, client),
        "the MTA does not accept connections"
    );
    let server = server_of(client);
    let destroyed = netns::in_netns(&lab.mx_ns, move || {
        helo_filter::pipeline::sock_destroy::destroy_tcp_socket(server, client)
            .map_err(|e| e.to_string())
    });
    assert_eq!(destroyed, Ok(false), "no socket of {client} to destroy");
    assert!(
        connects(&lab, client),
        "the MTA's listener is gone: it accepts no more connections"
    );
}
