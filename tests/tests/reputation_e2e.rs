//! End to end in network namespaces, reputation and lists: repeat offenders denied at SYN
//! time until their denial expires; accepted mail never leads to a denial (unless the operator
//! opts in); allow-listed sources left alone; operator denials.

use std::{net::SocketAddr, time::Duration};

use helo_filter_tests::e2e::*;
use serde_json::Value;
use xtask::{
    daemon::{Daemon, cli, metric_value},
    lab::Lab,
    process,
    sessions::{self, Greeting},
};

/// Repeated bogus HELOs get a source denied: its SYNs go unanswered (counted) while other
/// sources connect; after the denial expires it connects again.
#[test]
fn repeat_offenders_are_denied_at_syn_time_until_the_denial_expires() {
    let lab = lab("h");
    // Rejects at full weight (2): under the default `reply` a reject counts a quarter.
    let args = [
        "--action",
        "rst",
        "--reputation-threshold",
        "3.5",
        "--deny-ttl",
        "5",
    ];
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

/// Resolves (fixture DNS), but to 203.0.113.20: from any lab client it is accepted with the
/// soft reasons `dns_mismatch` (and `rdns_mismatch`), as a relay behind NAT would be.
const RESOLVES_ELSEWHERE: &str = "server.domain.xyz";
/// The relay: 203.0.113.11.
const RELAY: usize = 1;

/// An operator subcommand with `--json`, parsed; it must succeed.
fn json(lab: &Lab, args: &[&str]) -> Value {
    let mut with = args.to_vec();
    with.push("--json");
    let out = cli(lab, &with).expect("the CLI runs");
    assert!(
        out.status.success(),
        "helo-filter {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{args:?}: {e}: {text}"))
}

/// Whether `deny list` holds a reputation entry for `net`.
fn denied_by_reputation(lab: &Lab, net: &str) -> bool {
    let list = json(lab, &["deny", "list"]);
    list["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .any(|e| e["net"] == net && e["source"] == "reputation")
}

/// Waits for the daemon's verdict line of the session from `client` and returns it.
fn verdict_of(daemon: &mut Daemon, client: SocketAddr) -> String {
    let tag = format!("client={client} ");
    daemon
        .wait_for(Duration::from_secs(10), |l| {
            l.contains(&tag) && l.contains(" verdict=")
        })
        .unwrap_or_else(|e| panic!("no verdict for {client}: {e}"))
}

/// Plays one session per port from the relay, greeting with a name that resolves elsewhere:
/// each must be accepted (its soft reasons still logged) and its message delivered.
fn accepted_relay_sessions(lab: &Lab, daemon: &mut Daemon, ports: std::ops::Range<u16>) {
    for port in ports {
        let client = v4(RELAY, port);
        sessions::swaks(lab, client, Greeting::Ehlo, RESOLVES_ELSEWHERE)
            .unwrap_or_else(|e| panic!("session from port {port} not delivered: {e}"));
        let line = verdict_of(daemon, client);
        assert!(
            line.contains("verdict=accept") && line.contains("dns_mismatch"),
            "the soft score no longer shows: {line}"
        );
        assert!(!line.contains(" score=0 "), "{line}");
    }
}

/// A legitimate relay whose HELO resolves to another address: ten sessions are all accepted
/// and delivered, and the source is never denied (its accepted soft scores count as clean).
#[test]
fn accepted_sessions_with_a_soft_score_never_lead_to_a_denial() {
    let lab = lab("s");
    let mut daemon = Daemon::start(&lab, &[], false).expect("starting the daemon");
    accepted_relay_sessions(&lab, &mut daemon, 56001..56011);
    assert!(connects(&lab, v4(RELAY, 56020)), "the relay cannot connect");
    assert!(
        !denied_by_reputation(&lab, "203.0.113.11/32"),
        "the relay is in the deny list"
    );
    let shown = json(&lab, &["reputation", "show", "203.0.113.11"]);
    assert_eq!(shown["score"].as_f64(), Some(0.0), "{shown}");
    assert!(shown["denied_for_secs"].is_null(), "{shown}");
    assert!(
        !daemon
            .lines()
            .iter()
            .any(|l| l.contains("denied 203.0.113.11")),
        "{}",
        daemon.lines().join("\n")
    );
    let page = daemon.scrape().expect("scraping");
    let denied = "helo_filter_deny_entries{origin=\"reputation\"}";
    assert_eq!(metric_value(&page, denied).unwrap_or(0.0), 0.0, "{page}");
}

/// The same source with rejected HELOs is still denied: three rejects (2 each, plus their soft
/// score) reach the default threshold of 5, and its SYNs go unanswered.
#[test]
fn rejected_sessions_from_the_relay_still_lead_to_a_denial() {
    let lab = lab("t");
    // Rejects at full weight (2): under the default `reply` a reject counts a quarter.
    let mut daemon = Daemon::start(&lab, &["--action", "rst"], false).expect("starting the daemon");
    for port in 56101..56104 {
        let client = v4(RELAY, port);
        let (completed, transcript) =
            sessions::swaks_transcript(&lab, client, Greeting::Ehlo, "localhost").expect("swaks");
        assert!(!completed, "a bogus session completed:\n{transcript}");
        let line = verdict_of(&mut daemon, client);
        assert!(line.contains("verdict=reject"), "{line}");
    }
    daemon
        .wait_for(Duration::from_secs(10), |l| {
            l.contains("denied 203.0.113.11/32")
        })
        .expect("the source is denied");
    assert!(denied_by_reputation(&lab, "203.0.113.11/32"));
    assert!(
        !connects(&lab, v4(RELAY, 56110)),
        "a denied source's SYN was answered"
    );
    let shown = json(&lab, &["reputation", "show", "203.0.113.11"]);
    assert!(shown["score"].as_f64().unwrap_or(0.0) >= 5.0, "{shown}");
}

/// With the opt-in `[reputation] soft_score_weight`, accepted soft scores count again: `config
/// check` warns, the daemon warns at start, and the relay is denied after its third message
/// (3 × 1.0 × its soft score of 2 reaches 5).
#[test]
fn counting_accepted_soft_scores_is_an_opt_in_that_warns() {
    let lab = lab("u");
    let config = config_file(&lab, "[reputation]\nsoft_score_weight = 1.0\n");
    let check = cli(&lab, &["config", "check", &config]).expect("the CLI runs");
    let stderr = String::from_utf8_lossy(&check.stderr);
    assert!(check.status.success(), "{stderr}");
    assert!(
        stderr
            .lines()
            .any(|l| l.starts_with("warning: ") && l.contains("soft_score_weight")),
        "no warning: {stderr}"
    );
    let mut daemon =
        Daemon::start(&lab, &["--config", &config], false).expect("starting the daemon");
    assert!(
        daemon
            .lines()
            .iter()
            .any(|l| l.contains("WARN") && l.contains("soft_score_weight")),
        "the daemon did not warn at start:\n{}",
        daemon.lines().join("\n")
    );
    accepted_relay_sessions(&lab, &mut daemon, 56201..56204);
    daemon
        .wait_for(Duration::from_secs(10), |l| {
            l.contains("denied 203.0.113.11/32")
        })
        .expect("the opt-in denies the relay");
    assert!(denied_by_reputation(&lab, "203.0.113.11/32"));
    assert!(
        !connects(&lab, v4(RELAY, 56210)),
        "the denied relay's SYN was answered"
    );
}
