//! DNS behaviour against a real dnsmasq: answers, TTL and negative caching, deadlines, shared
//! queries, and a slow name not delaying a fast one.

use std::{
    net::IpAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use xtask::dns_fixture::{Dnsmasq, black_hole, free_port};

use super::*;

fn client(server: SocketAddr, tweak: impl FnOnce(&mut DnsSettings)) -> DnsClient {
    let mut s = DnsSettings {
        servers: vec![server],
        ..DnsSettings::default()
    };
    tweak(&mut s);
    DnsClient::new(s).expect("build the DNS client")
}

fn addrs(a: &DnsAnswer) -> Vec<IpAddr> {
    a.addresses().records().to_vec()
}

/// Polls (every 10 ms) until `ready` holds; false after `timeout`.
async fn eventually(timeout: Duration, mut ready: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while !ready() {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixture_records_and_negative_answers() {
    let d = Dnsmasq::start(None, &[]);
    let c = client(d.addr, |_| {});
    let a = c.lookup(RecordKind::A, "mail.example.net").await;
    assert_eq!(addrs(&a), ["203.0.113.10".parse::<IpAddr>().unwrap()]);
    let aaaa = c.lookup(RecordKind::Aaaa, "v6.example.net.").await;
    assert_eq!(addrs(&aaaa), ["2001:db8:1::10".parse::<IpAddr>().unwrap()]);
    let mx = c.lookup(RecordKind::Mx, "MXONLY.example.net").await;
    assert_eq!(mx.names().records(), ["mail.example.net".to_string()]);
    let ptr = c
        .lookup(
            RecordKind::Ptr,
            &reverse_name("203.0.113.10".parse().unwrap()),
        )
        .await;
    assert!(
        ptr.names()
            .records()
            .contains(&"mail.example.net".to_string()),
        "{ptr:?}"
    );
    assert_eq!(
        c.lookup(RecordKind::A, "nothing.example.net").await,
        DnsAnswer::NoRecords { nxdomain: true }
    );
    assert_eq!(
        c.lookup(RecordKind::A, "txtonly.example.net").await,
        DnsAnswer::NoRecords { nxdomain: false }
    );
    assert_eq!(
        c.lookup(RecordKind::Mx, "mail.example.net").await,
        DnsAnswer::NoRecords { nxdomain: false }
    );
}

#[test]
fn reverse_names() {
    assert_eq!(
        reverse_name("203.0.113.10".parse().unwrap()),
        "10.113.0.203.in-addr.arpa."
    );
    assert_eq!(
        reverse_name("::ffff:203.0.113.10".parse().unwrap()),
        "10.113.0.203.in-addr.arpa."
    );
    assert_eq!(
        reverse_name("2001:db8::1".parse().unwrap()),
        "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa."
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn positive_answers_are_cached_for_their_ttl() {
    let d = Dnsmasq::start(Some(300), &[]);
    let c = client(d.addr, |_| {});
    let first = c.lookup(RecordKind::A, "mail.example.net").await;
    let second = c.lookup(RecordKind::A, "mail.example.net").await;
    assert_eq!(first, second);
    assert_eq!(
        d.queries("A", "mail.example.net"),
        1,
        "the second lookup sent no query"
    );
    let st = c.stats();
    assert_eq!((st.cache_hits, st.cache_misses, st.wire_queries), (1, 1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_zero_is_not_cached() {
    let d = Dnsmasq::start(None, &[]);
    let c = client(d.addr, |_| {});
    c.lookup(RecordKind::A, "mail.example.net").await;
    c.lookup(RecordKind::A, "mail.example.net").await;
    assert_eq!(d.queries("A", "mail.example.net"), 2);
    assert_eq!(c.stats().cache_hits, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negative_answers_are_cached_for_the_default_negative_ttl() {
    let d = Dnsmasq::start(None, &[]);
    // Seconds of margin: the lookups below all fall within the TTL even on a loaded machine.
    const NEGATIVE_TTL: Duration = Duration::from_secs(2);
    let c = client(d.addr, |s| s.negative_ttl = NEGATIVE_TTL);
    let first = Instant::now();
    for _ in 0..3 {
        assert_eq!(
            c.lookup(RecordKind::A, "nothing.example.net").await,
            DnsAnswer::NoRecords { nxdomain: true }
        );
        assert_eq!(
            c.lookup(RecordKind::A, "txtonly.example.net").await,
            DnsAnswer::NoRecords { nxdomain: false }
        );
    }
    assert_eq!(d.queries("A", "nothing.example.net"), 1, "NXDOMAIN cached");
    assert_eq!(d.queries("A", "txtonly.example.net"), 1, "NODATA cached");
    // Polled: the entry lapses after the negative TTL, never before it.
    loop {
        c.lookup(RecordKind::A, "nothing.example.net").await;
        if d.queries("A", "nothing.example.net") == 2 {
            break;
        }
        assert!(
            first.elapsed() < NEGATIVE_TTL + Duration::from_secs(5),
            "not expired {:?} after the first lookup",
            first.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        first.elapsed() >= NEGATIVE_TTL,
        "expired after {:?}, before the {NEGATIVE_TTL:?} negative TTL",
        first.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_has_a_cap() {
    let d = Dnsmasq::start(Some(300), &[]);
    let c = client(d.addr, |s| s.cache_entries = 2);
    for n in ["mail.example.net", "other.example.net", "server.domain.xyz"] {
        c.lookup(RecordKind::A, n).await;
    }
    assert_eq!(c.cache_len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_server_gives_a_timeout_within_the_deadline() {
    let (_sock, addr) = black_hole();
    let c = client(addr, |s| s.deadline = Duration::from_millis(300));
    let t = Instant::now();
    let a = c.lookup(RecordKind::A, "mail.example.net").await;
    assert_eq!(a, DnsAnswer::TempFail(TempFailKind::Timeout));
    assert!(
        t.elapsed() < Duration::from_millis(1500),
        "{:?}",
        t.elapsed()
    );
    // Temporary failures are not cached.
    c.lookup(RecordKind::A, "mail.example.net").await;
    assert_eq!(c.stats().wire_queries, 2);
    assert_eq!(c.stats().tempfails, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servfail_is_a_tempfail_not_a_negative_answer() {
    // dnsmasq forwards this domain to a port where nothing listens and answers with an error
    // code, not with NXDOMAIN.
    let dead = free_port();
    let d = Dnsmasq::start(
        None,
        &[format!("--server=/broken.example.net/127.0.0.1#{dead}")],
    );
    let c = client(d.addr, |s| s.deadline = Duration::from_secs(3));
    let a = c.lookup(RecordKind::A, "host.broken.example.net").await;
    assert!(a.is_tempfail(), "{a:?}");
    assert!(!matches!(a, DnsAnswer::NoRecords { .. }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_one_name_sends_one_query() {
    let d = Dnsmasq::start(Some(300), &[]);
    let c = client(d.addr, |_| {});
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            c.lookup(RecordKind::A, "other.example.net").await
        }));
    }
    for t in tasks {
        assert_eq!(
            addrs(&t.await.unwrap()),
            ["192.0.2.99".parse::<IpAddr>().unwrap()]
        );
    }
    assert_eq!(d.queries("A", "other.example.net"), 1);
    let st = c.stats();
    assert_eq!(st.wire_queries, 1);
    assert_eq!(st.cache_hits + st.cache_misses, 32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_without_caching_still_shares_one_query() {
    // TTL 0: nothing is cached, so only the in-flight sharing can merge the burst.
    let (_sock, hole) = black_hole();
    let d = Dnsmasq::start(
        None,
        &[format!(
            "--server=/slow.example.net/{}#{}",
            hole.ip(),
            hole.port()
        )],
    );
    let c = client(d.addr, |s| s.deadline = Duration::from_millis(500));
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            c.lookup(RecordKind::A, "x.slow.example.net").await
        }));
    }
    for t in tasks {
        assert!(t.await.unwrap().is_tempfail());
    }
    assert_eq!(c.stats().wire_queries, 1);
    assert_eq!(c.stats().shared, 15);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_name_does_not_delay_a_fast_one() {
    let (_sock, hole) = black_hole();
    let d = Dnsmasq::start(
        None,
        &[format!(
            "--server=/slow.example.net/{}#{}",
            hole.ip(),
            hole.port()
        )],
    );
    // A deadline of seconds: the fast lookup must end long before it, even under load.
    const DEADLINE: Duration = Duration::from_secs(3);
    let c = client(d.addr, |s| s.deadline = DEADLINE);
    let slow = {
        let c = c.clone();
        tokio::spawn(async move {
            let t = Instant::now();
            (
                c.lookup(RecordKind::A, "x.slow.example.net").await,
                t.elapsed(),
            )
        })
    };
    // The slow query is on the wire before the fast one starts.
    assert!(
        eventually(Duration::from_secs(1), || c.stats().wire_queries >= 1).await,
        "the slow lookup never reached the wire"
    );
    let t = Instant::now();
    let fast = c.lookup(RecordKind::A, "mail.example.net").await;
    let fast_time = t.elapsed();
    assert_eq!(addrs(&fast), ["203.0.113.10".parse::<IpAddr>().unwrap()]);
    assert!(fast_time < DEADLINE / 2, "fast lookup took {fast_time:?}");
    assert!(!slow.is_finished(), "the slow lookup is still waiting");
    let (slow_answer, slow_time) = slow.await.unwrap();
    assert!(slow_answer.is_tempfail());
    assert!(
        slow_time >= DEADLINE - Duration::from_millis(100),
        "{slow_time:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_in_flight_bound_makes_lookups_wait_for_a_slot() {
    let (_sock, hole) = black_hole();
    let c = client(hole, |s| {
        s.deadline = Duration::from_secs(3);
        s.max_in_flight = 1;
    });
    let spawn = |name: &'static str| {
        let c = c.clone();
        tokio::spawn(async move { c.lookup(RecordKind::A, name).await })
    };
    let (a, b) = (spawn("one.example.net"), spawn("two.example.net"));
    // Polled until one is on the wire; then time for a second one to get there too if the
    // bound did not hold it (the first's deadline is seconds away).
    assert!(
        eventually(Duration::from_secs(1), || c.stats().wire_queries >= 1).await,
        "no lookup reached the wire"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        c.stats().wire_queries,
        1,
        "the second lookup waits for the only slot"
    );
    assert!(a.await.unwrap().is_tempfail());
    assert!(b.await.unwrap().is_tempfail());
}

#[derive(Default)]
struct Recorder {
    hits: std::sync::atomic::AtomicU64,
    misses: std::sync::atomic::AtomicU64,
    wire: Mutex<Vec<RecordKind>>,
}

impl DnsObserver for Recorder {
    fn cache_lookup(&self, hit: bool) {
        let c = if hit { &self.hits } else { &self.misses };
        c.fetch_add(1, Ordering::Relaxed);
    }
    fn wire_lookup(&self, kind: RecordKind, _elapsed: Duration, _answer: &DnsAnswer) {
        self.wire.lock().push(kind);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_observer_sees_cache_and_wire_events() {
    let d = Dnsmasq::start(Some(300), &[]);
    let rec = Arc::new(Recorder::default());
    let c = DnsClient::with_observer(
        DnsSettings {
            servers: vec![d.addr],
            ..DnsSettings::default()
        },
        Some(rec.clone()),
    )
    .unwrap();
    c.lookup(RecordKind::Mx, "mxonly.example.net").await;
    c.lookup(RecordKind::Mx, "mxonly.example.net").await;
    assert_eq!(rec.hits.load(Ordering::Relaxed), 1);
    assert_eq!(rec.misses.load(Ordering::Relaxed), 1);
    assert_eq!(*rec.wire.lock(), [RecordKind::Mx]);
}

// Servers that answer badly: every lookup ends by its deadline (plus a little) with a
// temporary failure of the right kind, never a hang.

use super::test_server::{BadServer, Misbehaviour};

const BAD_DEADLINE: Duration = Duration::from_millis(500);

async fn timed_lookup(how: Misbehaviour) -> (DnsAnswer, Duration, BadServer) {
    let server = BadServer::start(how);
    let c = client(server.addr, |s| s.deadline = BAD_DEADLINE);
    let t = Instant::now();
    let a = c.lookup(RecordKind::A, "mail.example.net").await;
    let elapsed = t.elapsed();
    assert!(
        elapsed < BAD_DEADLINE + Duration::from_secs(1),
        "{how:?}: {elapsed:?}"
    );
    (a, elapsed, server)
}

fn kind_of(a: &DnsAnswer) -> DnsErrorKind {
    a.tempfail()
        .unwrap_or_else(|| panic!("not a tempfail: {a:?}"))
        .error_kind()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_servers_give_a_classified_tempfail_within_the_deadline() {
    for (how, want) in [
        (Misbehaviour::WrongId, DnsErrorKind::Timeout),
        (Misbehaviour::Garbage, DnsErrorKind::Timeout),
        (Misbehaviour::GarbageWithId, DnsErrorKind::Malformed),
        (Misbehaviour::CutShort, DnsErrorKind::Malformed),
        // hickory gives up on a truncated answer it cannot complete: no usable answer.
        (Misbehaviour::TcBit, DnsErrorKind::Malformed),
        (Misbehaviour::Silent, DnsErrorKind::Timeout),
        (Misbehaviour::Rcode(2), DnsErrorKind::Servfail),
        (Misbehaviour::Rcode(5), DnsErrorKind::Refused),
    ] {
        let (a, elapsed, server) = timed_lookup(how).await;
        eprintln!("{how:?}: {a:?} after {elapsed:?}");
        assert_eq!(kind_of(&a), want, "{how:?}: {a:?}");
        assert!(server.queries.load(Ordering::Relaxed) >= 1, "{how:?}");
    }
}

#[test]
fn tempfail_kinds_map_to_dns_error_kinds() {
    use DnsErrorKind as K;
    for (t, k) in [
        (TempFailKind::Timeout, K::Timeout),
        (TempFailKind::Busy, K::Timeout),
        (
            TempFailKind::ResponseCode(ResponseCode::ServFail),
            K::Servfail,
        ),
        (
            TempFailKind::ResponseCode(ResponseCode::Refused),
            K::Refused,
        ),
        (TempFailKind::ResponseCode(ResponseCode::NotImp), K::Refused),
        (
            TempFailKind::ResponseCode(ResponseCode::FormErr),
            K::Malformed,
        ),
        (TempFailKind::Malformed("x".into()), K::Malformed),
        (TempFailKind::Io("x".into()), K::Io),
    ] {
        assert_eq!(t.error_kind(), k, "{t:?}");
    }
    let io = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
    assert_eq!(
        TempFailKind::from_net_error(&NetError::from(io)).error_kind(),
        K::Io
    );
    assert_eq!(
        TempFailKind::from_net_error(&NetError::Timeout),
        TempFailKind::Timeout
    );
    assert_eq!(
        TempFailKind::from_net_error(&NetError::Dns(DnsError::ResponseCode(
            ResponseCode::ServFail
        ))),
        TempFailKind::ResponseCode(ResponseCode::ServFail)
    );
    assert_eq!(
        [K::Timeout, K::Servfail, K::Refused, K::Malformed, K::Io].map(K::as_str),
        ["timeout", "servfail", "refused", "malformed", "io"]
    );
}

#[test]
fn the_server_label_is_the_only_server_or_system() {
    let one: SocketAddr = "127.0.0.1:5353".parse().unwrap();
    let v6: SocketAddr = "[::1]:53".parse().unwrap();
    assert_eq!(server_label([one]), "127.0.0.1:5353");
    assert_eq!(server_label([one, one]), "127.0.0.1:5353");
    assert_eq!(server_label([v6]), "[::1]:53");
    assert_eq!(server_label([one, v6]), "system");
    assert_eq!(server_label([]), "system");
    let c = client(one, |_| {});
    let f = c.failure(&TempFailKind::ResponseCode(ResponseCode::Refused));
    assert_eq!(f.to_string(), "127.0.0.1:5353:refused");
}

#[test]
fn underscores_make_a_valid_question_and_bad_names_do_not() {
    for ok in [
        "my_host.example.net",
        "my_host.example.net.",
        "_dmarc.example.net",
        "host_.example.net",
        "MY_HOST.Example.NET",
    ] {
        let n = query_name(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        assert!(n.is_fqdn(), "{ok}");
        assert_eq!(
            n.to_ascii().to_ascii_lowercase(),
            format!("{}.", ok.trim_end_matches('.').to_ascii_lowercase())
        );
    }
    let long_label = format!("{}.example.net", "a".repeat(64));
    let long_name = format!("{}.net", vec!["a".repeat(63); 4].join("."));
    for bad in [
        "",
        ".",
        "a..example.net",
        "a b.example.net",
        "caf\u{e9}.example.net",
        "a\\.b.example.net",
        long_label.as_str(),
        long_name.as_str(),
    ] {
        assert!(query_name(bad).is_err(), "{bad:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_underscore_name_is_looked_up_and_an_unqueryable_one_is_not() {
    let d = Dnsmasq::start(
        None,
        &["--host-record=my_host.example.net,203.0.113.77".into()],
    );
    let c = client(d.addr, |_| {});
    let a = c.lookup(RecordKind::A, "my_host.example.net").await;
    assert_eq!(addrs(&a), ["203.0.113.77".parse::<IpAddr>().unwrap()]);
    assert_eq!(d.queries("A", "my_host.example.net"), 1);
    let bad = c.lookup(RecordKind::A, "a b.example.net").await;
    assert!(matches!(bad, DnsAnswer::Unqueryable(_)), "{bad:?}");
    assert!(!bad.is_tempfail());
    assert_eq!(c.stats().tempfails, 0);
    assert_eq!(c.stats().wire_queries, 1, "nothing sent for the bad name");
}
