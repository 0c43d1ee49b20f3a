//! End to end in network namespaces, reputation and lists: repeat offenders denied at SYN
//! time until their denial expires; allow-listed sources left alone; operator denials.

use std::{net::SocketAddr, time::Duration};

use helo_filter_tests::e2e::*;
use xtask::{
    daemon::{Daemon, metric_value},
    process,
    sessions::{self, Greeting},
};

/// Repeated bogus HELOs get a source denied: its SYNs go unanswered (counted) while other
/// sources connect; after the denial expires it connects again.
#[test]
fn repeat_offenders_are_denied_at_syn_time_until_the_denial_expires() {
    let lab = lab("h");
    let args = ["--reputation-threshold", "3.5", "--deny-ttl", "5"];
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
    wait_for_metric(&daemon, "helo_filter_syn_dropped_total", |v| v >= 1.0);
    let denied = "helo_filter_deny_entries{origin=\"reputation\"}";
    let page = wait_for_metric(&daemon, denied, |v| v == 1.0);
    assert!(
        metric_value(&page, "helo_filter_reputation_sources") >= Some(1.0),
        "{page}"
    );
    let released = process::wait_until(Duration::from_secs(20), || connects(&lab, offender));
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
