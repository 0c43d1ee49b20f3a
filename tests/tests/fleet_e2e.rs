//! End to end, a fleet of two MX appliances sharing their denials through a real
//! redis-server (with a password, on a link joining both MX namespaces): a source denied by
//! its reputation on one is dropped at the SYN on the other within a second; operator
//! denials shared and lifted with `--fleet`; local allow entries win; Redis killed and
//! restarted; and a member that was down enforces what the fleet denied meanwhile before it
//! says READY=1.

use std::{net::SocketAddr, time::Duration};

use helo_filter_tests::{e2e::*, require_root};
use serde_json::Value;
use xtask::{
    daemon::{Daemon, metric_value},
    fleet_lab::FleetLab,
    lab::Lab,
    process,
    sessions::{self, Greeting},
};

/// A low reputation threshold: under action `reply` one rejected session denies a source.
const REPUTATION: &str = "[reputation]\nthreshold = 0.5\ndeny_ttl_secs = \"1h\"\n";

fn start_member(fleet: &FleetLab, i: usize) -> Daemon {
    let config = fleet.member_config(i, REPUTATION).expect("member config");
    let config = config.to_string_lossy();
    Daemon::start(&fleet.members[i], &["--config", &config], false)
        .unwrap_or_else(|e| panic!("starting member {}: {e:#}", i + 1))
}

fn status(lab: &Lab) -> Value {
    serde_json::from_str(&cli_ok(lab, &["status", "--json"])).expect("status JSON")
}

/// Waits up to `within` for `client`'s SYNs to `lab`'s MX to go unanswered (each try waits a
/// second for the connect).
fn dropped_within(lab: &Lab, client: SocketAddr, within: Duration) -> bool {
    process::wait_until(within, || !connects(lab, client)).is_ok()
}

/// Waits up to `within` for every member's `status` to say `connected` (true or false).
fn fleet_connected_within(labs: [&Lab; 2], connected: bool, within: Duration) -> bool {
    process::wait_until(within, || {
        labs.iter()
            .all(|lab| status(lab)["fleet"]["connected"] == connected)
    })
    .is_ok()
}

fn bogus_session(lab: &Lab, client: SocketAddr) {
    let _ = sessions::swaks_transcript(lab, client, Greeting::Ehlo, "localhost");
}

#[test]
fn a_fleet_shares_its_denials_through_redis() {
    require_root();
    let mut fleet = FleetLab::create(&unique_name("fl"), 2).expect("the fleet lab");
    let mx1 = start_member(&fleet, 0);
    let mut mx2 = Some(start_member(&fleet, 1));
    let (lab1, lab2) = (&fleet.members[0], &fleet.members[1]);
    for lab in [lab1, lab2] {
        let s = status(lab);
        assert_eq!(s["fleet"]["connected"], true, "{s}");
    }

    // Reputation on MX1 → S dropped at the SYN on MX2, within a second of the denial.
    let source = v4(0, 0);
    for port in [56001, 56002] {
        bogus_session(lab1, SocketAddr::new(source.ip(), port));
    }
    let mut mx1 = mx1;
    mx1.wait_for(Duration::from_secs(10), |l| {
        l.contains(&format!("denied {}/32", source.ip())) && l.contains("reputation")
    })
    .expect("MX1 denies the source by its reputation");
    let received = mx2
        .as_mut()
        .expect("MX2 runs")
        .wait_for(Duration::from_secs(5), |l| {
            l.contains(&format!("fleet: denied {}/32", source.ip()))
        })
        .expect("MX2 takes the fleet's denial");
    let lag_ms: u64 = received
        .split(", ")
        .last()
        .and_then(|tail| tail.split(" ms").next())
        .and_then(|ms| ms.parse().ok())
        .unwrap_or_else(|| panic!("no lag in {received:?}"));
    assert!(lag_ms < 1_000, "propagation took {lag_ms} ms: {received}");
    assert!(
        !connects(lab2, source),
        "MX2 still answers the denied source"
    );
    let page = mx2.as_ref().expect("MX2 runs").scrape().expect("metrics");
    assert_eq!(
        metric_value(
            &page,
            "helo_filter_fleet_denials_total{direction=\"received\"}"
        ),
        Some(1.0),
        "{page}"
    );
    let listed: Value =
        serde_json::from_str(&cli_ok(lab2, &["deny", "list", "--json"])).expect("deny list JSON");
    let entry = listed["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .find(|e| e["net"] == format!("{}/32", source.ip()))
        .unwrap_or_else(|| panic!("no fleet entry: {listed}"))
        .clone();
    assert_eq!(entry["source"], "fleet", "{entry}");
    assert_eq!(entry["member"], "mx1", "{entry}");
    let explained: Value = serde_json::from_str(&cli_ok(
        lab2,
        &["explain", &source.ip().to_string(), "--json"],
    ))
    .expect("explain JSON");
    assert_eq!(explained["standing"], "denied", "{explained}");
    assert_eq!(explained["deny"][0]["source"], "fleet", "{explained}");

    // An operator's `deny add --fleet` on MX2 → enforced on MX1; `deny del --fleet` → lifted
    // on both.
    let shared = v4(1, 0);
    cli_ok(
        lab2,
        &[
            "deny",
            "add",
            &shared.ip().to_string(),
            "--fleet",
            "--ttl",
            "10m",
        ],
    );
    assert!(
        dropped_within(lab1, shared, Duration::from_secs(3)),
        "MX1 does not enforce MX2's shared denial"
    );
    assert!(!connects(lab2, shared));
    cli_ok(lab2, &["deny", "del", &shared.ip().to_string(), "--fleet"]);
    let lifted = process::wait_until(Duration::from_secs(5), || {
        connects(lab1, shared) && connects(lab2, shared)
    });
    assert!(lifted.is_ok(), "deny del --fleet did not lift it on both");

    // Local rules win: a source allow-listed on MX2 is not denied there by the fleet.
    let partner = v4(2, 0);
    cli_ok(lab2, &["allow", "add", &partner.ip().to_string()]);
    cli_ok(
        lab1,
        &[
            "deny",
            "add",
            &partner.ip().to_string(),
            "--fleet",
            "--ttl",
            "10m",
        ],
    );
    assert!(dropped_within(lab1, partner, Duration::from_secs(3)));
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        connects(lab2, partner),
        "the fleet denied a source MX2 allow-lists"
    );

    // Redis killed: both keep enforcing and judging, mail flows, errors counted.
    fleet.redis_mut().stop();
    let (lab1, lab2) = (&fleet.members[0], &fleet.members[1]);
    assert!(
        fleet_connected_within([lab1, lab2], false, Duration::from_secs(10)),
        "the members did not notice Redis gone"
    );
    assert!(
        !connects(lab2, source),
        "MX2 stopped enforcing without Redis"
    );
    for lab in [lab1, lab2] {
        sessions::swaks(lab, v4(3, 56010), Greeting::Ehlo, "mail.example.net")
            .expect("mail flows without Redis");
    }
    let page = mx2.as_ref().expect("MX2 runs").scrape().expect("metrics");
    let errors: f64 = page
        .lines()
        .filter(|l| l.starts_with("helo_filter_fleet_errors_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(errors >= 1.0, "no fleet error counted:\n{page}");
    // A denial made meanwhile on MX1 reaches MX2 once Redis is back.
    let meanwhile = v6(0, 0);
    cli_ok(
        lab1,
        &[
            "deny",
            "add",
            &meanwhile.ip().to_string(),
            "--fleet",
            "--ttl",
            "10m",
        ],
    );
    fleet.redis_mut().start().expect("restarting Redis");
    let (lab1, lab2) = (&fleet.members[0], &fleet.members[1]);
    assert!(
        fleet_connected_within([lab1, lab2], true, Duration::from_secs(15)),
        "the members did not reconnect"
    );
    assert!(
        dropped_within(lab2, meanwhile, Duration::from_secs(5)),
        "the denial made while Redis was down did not reach MX2"
    );

    // MX2 down while MX1 denies: enforced on MX2 before it says it is ready.
    mx2.take().expect("MX2 runs").stop().expect("stopping MX2");
    let while_down = v6(1, 0);
    cli_ok(
        lab1,
        &[
            "deny",
            "add",
            &while_down.ip().to_string(),
            "--fleet",
            "--ttl",
            "10m",
        ],
    );
    let _mx2 = start_member(&fleet, 1);
    let lab2 = &fleet.members[1];
    assert!(
        !connects(lab2, while_down),
        "MX2 answered a source the fleet denied while it was down"
    );
    drop(mx1);
}
