//! The shared corpus (`tests-data/helo-public.tsv`) as a table test of the engine: offline rows
//! without DNS, `dns` rows against a real dnsmasq serving `tests-data/dns-fixture.txt`.

use std::{net::IpAddr, time::Duration};

use xtask::dns_fixture::{Dnsmasq, black_hole};

use super::*;
use crate::dns::{DnsClient, DnsSettings};

/// One corpus row, with its reason codes as the engine's reasons.
#[derive(Debug)]
pub(crate) struct Row {
    pub line: usize,
    pub helo: String,
    pub client: IpAddr,
    pub reject: bool,
    pub reasons: Vec<Reason>,
    pub dns: bool,
    /// Every soft reason the verdict lists, in reason order.
    pub soft: Vec<Reason>,
    pub score: u32,
}

/// Reads the corpus.
pub(crate) fn corpus() -> Vec<Row> {
    xtask::corpus::corpus()
        .into_iter()
        .map(|row| {
            let line = row.line;
            let codes = |list: &[String]| -> Vec<Reason> {
                list.iter()
                    .map(|c| {
                        Reason::from_code(c)
                            .unwrap_or_else(|| panic!("line {line}: unknown reason {c:?}"))
                    })
                    .collect()
            };
            let soft = codes(&row.soft);
            assert!(
                soft.iter().all(|r| r.is_soft()),
                "line {line}: a hard reason in the soft column: {:?}",
                row.soft
            );
            Row {
                reasons: codes(&row.reasons),
                soft,
                score: row.score,
                line,
                helo: row.helo,
                client: row.client,
                reject: row.reject,
                dns: row.dns,
            }
        })
        .collect()
}

/// The spec's example identity, standard bundle.
pub(crate) fn spec_settings() -> PolicySettings {
    PolicySettings {
        identity: Identity {
            names: vec!["mx.example.org".into()],
            domains: vec!["example.org".into()],
            addrs: vec![
                "198.51.100.25".parse().unwrap(),
                "2001:db8:25::25".parse().unwrap(),
            ],
        },
        ..PolicySettings::default()
    }
}

/// Checks one verdict against its row; returns a description of the mismatch.
pub(crate) fn mismatch(row: &Row, v: &Verdict) -> Option<String> {
    let codes: Vec<&str> = v.reason_codes().map(Reason::as_str).collect();
    if v.is_reject() != row.reject {
        return Some(format!(
            "line {} {:?} from {}: got {} {codes:?}, want {}",
            row.line,
            row.helo,
            row.client,
            v.decision.as_str(),
            if row.reject { "reject" } else { "accept" }
        ));
    }
    if row.reject
        && !row
            .reasons
            .contains(&v.primary().expect("a reject has a primary"))
    {
        return Some(format!(
            "line {} {:?}: primary {} not among {:?} (all: {codes:?})",
            row.line,
            row.helo,
            v.primary_label(),
            row.reasons
        ));
    }
    if !row.reject && v.reasons.iter().any(|f| !f.reason.is_soft()) {
        return Some(format!(
            "line {} {:?}: accept with a hard reason {codes:?}",
            row.line, row.helo
        ));
    }
    let soft: Vec<Reason> = v.reason_codes().filter(|r| r.is_soft()).collect();
    if soft != row.soft || v.score != row.score {
        return Some(format!(
            "line {} {:?} from {}: soft {soft:?} score {}, want soft {:?} score {} (all: {codes:?})",
            row.line, row.helo, row.client, v.score, row.soft, row.score
        ));
    }
    None
}

#[tokio::test]
async fn every_offline_row() {
    let engine = PolicyEngine::new(spec_settings(), None);
    let rows: Vec<Row> = corpus().into_iter().filter(|r| !r.dns).collect();
    assert!(rows.len() >= 40, "only {} offline rows", rows.len());
    let failures: Vec<String> = {
        let mut f = Vec::new();
        for row in &rows {
            let v = engine
                .evaluate(&HeloInput::new(row.helo.as_bytes(), row.client))
                .await;
            assert!(v.has_note(Note::Offline));
            assert_eq!(
                v,
                engine.evaluate_offline(&HeloInput::new(row.helo.as_bytes(), row.client))
            );
            f.extend(mismatch(row, &v));
        }
        f
    };
    assert!(
        failures.is_empty(),
        "{} rows failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dns_row_against_dnsmasq() {
    let d = Dnsmasq::start(Some(60), &[]);
    let dns = DnsClient::new(DnsSettings {
        servers: vec![d.addr],
        ..DnsSettings::default()
    })
    .unwrap();
    let engine = PolicyEngine::new(spec_settings(), Some(dns));
    let rows: Vec<Row> = corpus().into_iter().filter(|r| r.dns).collect();
    assert!(rows.len() >= 8, "only {} dns rows", rows.len());
    let mut failures = Vec::new();
    for row in &rows {
        let v = engine
            .evaluate(&HeloInput::new(row.helo.as_bytes(), row.client))
            .await;
        assert!(
            v.notes.is_empty(),
            "line {}: unexpected notes {:?}",
            row.line,
            v.notes
        );
        failures.extend(mismatch(row, &v));
    }
    assert!(
        failures.is_empty(),
        "{} rows failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_checks_score_as_the_spec_says() {
    let d = Dnsmasq::start(Some(60), &[]);
    let dns = DnsClient::new(DnsSettings {
        servers: vec![d.addr],
        ..DnsSettings::default()
    })
    .unwrap();
    let engine = PolicyEngine::new(spec_settings(), Some(dns));
    let eval = |h: &'static str, ip: &'static str| {
        let engine = engine.clone();
        async move {
            engine
                .evaluate(&HeloInput::new(h, ip.parse().unwrap()))
                .await
        }
    };
    let v = eval("mail.example.net", "203.0.113.10").await;
    assert_eq!(
        (v.decision, v.reasons.len(), v.score),
        (Decision::Accept, 0, 0)
    );
    let v = eval("other.example.net", "203.0.113.10").await;
    let codes: Vec<_> = v.reason_codes().collect();
    assert_eq!(
        codes,
        [Reason::DnsMismatch],
        "same registered domain as the PTR name"
    );
    assert_eq!(v.score, 1);
    let v = eval("server.domain.xyz", "203.0.113.10").await;
    let codes: Vec<_> = v.reason_codes().collect();
    assert_eq!(codes, [Reason::DnsMismatch, Reason::RdnsMismatch]);
    assert_eq!(v.score, 2);
    let v = eval("nothing.example.net", "203.0.113.10").await;
    assert_eq!(v.primary(), Some(Reason::NoDns));
    // Strict: soft DNS failures reject.
    let mut strict = spec_settings();
    strict.table = CheckTable::from_bundle(Bundle::Strict);
    let strict = PolicyEngine::new(strict, engine.dns().cloned());
    let v = strict
        .evaluate(&HeloInput::new(
            "other.example.net",
            "203.0.113.10".parse().unwrap(),
        ))
        .await;
    assert_eq!(v.primary(), Some(Reason::DnsMismatch));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_tempfail_is_fail_open_by_default_and_fail_closed_on_request() {
    let (_sock, hole) = black_hole();
    let settings = DnsSettings {
        servers: vec![hole],
        deadline: Duration::from_millis(300),
        ..DnsSettings::default()
    };
    let open = PolicyEngine::new(
        spec_settings(),
        Some(DnsClient::new(settings.clone()).unwrap()),
    );
    let input = HeloInput::new("mail.example.net", "203.0.113.10".parse().unwrap());
    let v = open.evaluate(&input).await;
    assert_eq!(v.decision, Decision::Accept);
    assert!(v.has_note(Note::DnsTempfail), "{v:?}");
    assert!(v.reasons.is_empty(), "{v:?}");
    // Offline failures still count while DNS is down.
    let v = open
        .evaluate(&HeloInput::new("server", "203.0.113.10".parse().unwrap()))
        .await;
    assert_eq!(v.primary(), Some(Reason::NotFqdn));

    let mut closed_settings = spec_settings();
    closed_settings.dns_fail_closed = true;
    let closed = PolicyEngine::new(closed_settings, Some(DnsClient::new(settings).unwrap()));
    let v = closed.evaluate(&input).await;
    assert_eq!(v.primary(), Some(Reason::DnsTempfail), "{v:?}");
    assert!(!v.has_note(Note::DnsTempfail));
}

#[tokio::test]
async fn session_findings_enter_the_verdict() {
    let engine = PolicyEngine::new(spec_settings(), None);
    let client: IpAddr = "203.0.113.10".parse().unwrap();
    let v = engine.evaluate(&HeloInput::without_helo(client)).await;
    assert_eq!(v.primary(), Some(Reason::NoHelo));
    assert_eq!(v.reasons.len(), 1);
    let mut input = HeloInput::new("mail.example.net", client);
    input.pipelined = true;
    let v = engine.evaluate(&input).await;
    assert_eq!(v.primary(), Some(Reason::Pipelining));
    input.helo = Some(b"localhost".to_vec());
    let v = engine.evaluate(&input).await;
    let codes: Vec<_> = v.reason_codes().map(Reason::as_str).collect();
    assert_eq!(codes, ["pipelining", "localhost"]);
}

#[tokio::test]
async fn trusted_clients_skip_every_check() {
    let engine = PolicyEngine::new(spec_settings(), None);
    let v = engine
        .evaluate(&HeloInput::new("localhost", "127.0.0.1".parse().unwrap()))
        .await;
    assert_eq!(v, Verdict::unjudged(Note::Trusted));
    let v = engine
        .evaluate(&HeloInput::new(
            "localhost",
            "::ffff:127.0.0.1".parse().unwrap(),
        ))
        .await;
    assert!(v.has_note(Note::Trusted));
    let mut s = spec_settings();
    s.trusted_networks = vec!["203.0.113.0/24".parse().unwrap()];
    let engine = PolicyEngine::new(s, None);
    let v = engine
        .evaluate(&HeloInput::new("localhost", "203.0.113.9".parse().unwrap()))
        .await;
    assert!(v.has_note(Note::Trusted));
    let v = engine
        .evaluate(&HeloInput::new("localhost", "127.0.0.1".parse().unwrap()))
        .await;
    assert_eq!(
        v.primary(),
        Some(Reason::Localhost),
        "loopback no longer trusted"
    );
}

#[test]
fn bundles_change_the_verdict() {
    let client: IpAddr = "203.0.113.10".parse().unwrap();
    let with = |b: Bundle| {
        let mut s = spec_settings();
        s.table = CheckTable::from_bundle(b);
        PolicyEngine::new(s, None)
    };
    let lenient = with(Bundle::Lenient);
    let v = lenient.evaluate_offline(&HeloInput::new("server", client));
    assert_eq!(v.decision, Decision::Accept);
    assert_eq!(v.score, 3, "not_fqdn scores in lenient");
    let v = lenient.evaluate_offline(&HeloInput::new("printer.local", client));
    assert_eq!(v.decision, Decision::Accept);
    let v = lenient.evaluate_offline(&HeloInput::new("localhost", client));
    assert_eq!(v.primary(), Some(Reason::Localhost));

    let strict = with(Bundle::Strict);
    let v = strict.evaluate_offline(&HeloInput::new("[203.0.113.10]", client));
    assert_eq!(v.primary(), Some(Reason::LiteralNotAllowed));
    let v = strict.evaluate_offline(&HeloInput::new("[203.0.113.11]", client));
    let codes: Vec<_> = v.reason_codes().map(Reason::as_str).collect();
    assert_eq!(codes, ["literal_not_allowed", "literal_mismatch"]);
    assert_eq!(v.score, 2);
    let v = strict.evaluate_offline(&HeloInput::new("c-203-0-113-10.dyn.example.net", client));
    assert_eq!(v.primary(), Some(Reason::Dynamic));

    let standard = with(Bundle::Standard);
    let v = standard.evaluate_offline(&HeloInput::new("[203.0.113.11]", client));
    assert_eq!((v.decision, v.score), (Decision::Accept, 2));
    assert_eq!(v.reasons[0].reason, Reason::LiteralMismatch);
}

#[test]
fn per_check_modes_weights_and_threshold() {
    let client: IpAddr = "203.0.113.10".parse().unwrap();
    let mut s = spec_settings();
    s.table.set_mode(Reason::NotFqdn, CheckMode::Off);
    s.table.set_mode(Reason::LiteralMismatch, CheckMode::Reject);
    s.table.set_weight(Reason::Dynamic, 5);
    s.score_threshold = Some(5);
    let e = PolicyEngine::new(s, None);
    assert_eq!(
        e.evaluate_offline(&HeloInput::new("server", client))
            .decision,
        Decision::Accept
    );
    assert_eq!(
        e.evaluate_offline(&HeloInput::new("[203.0.113.11]", client))
            .primary(),
        Some(Reason::LiteralMismatch)
    );
    let v = e.evaluate_offline(&HeloInput::new("c-203-0-113-10.dyn.example.net", client));
    assert_eq!(v.primary(), Some(Reason::Dynamic));
    assert!(v.has_note(Note::ScoreThreshold));
    assert_eq!(v.score, 5);
}

#[test]
fn deny_patterns_reject() {
    let client: IpAddr = "203.0.113.10".parse().unwrap();
    let mut s = spec_settings();
    s.deny = DenyList::new(vec![
        DenyPattern::parse("friend.example.net").unwrap(),
        DenyPattern::parse("*.bots.example.com").unwrap(),
        DenyPattern::parse(r"/oem\d*\.example\.net/").unwrap(),
    ]);
    let e = PolicyEngine::new(s, None);
    for h in [
        "friend.example.net",
        "bots.example.com",
        "x.bots.example.com",
        "OEM7.example.net",
    ] {
        let v = e.evaluate_offline(&HeloInput::new(h, client));
        assert_eq!(v.primary(), Some(Reason::Denylisted), "{h}");
    }
    assert_eq!(
        e.evaluate_offline(&HeloInput::new("mail.example.net", client))
            .decision,
        Decision::Accept
    );
}

#[test]
fn arbitrary_bytes_always_give_a_verdict() {
    let mut s = spec_settings();
    s.deny = DenyList::new(vec![DenyPattern::parse("/.*x.*/").unwrap()]);
    let engine = PolicyEngine::new(s, None);
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    let pieces: [&[u8]; 12] = [
        b"[",
        b"]",
        b"IPv6:",
        b":",
        b".",
        b"-",
        b"mail",
        b"203.0.113.10",
        b"localhost",
        b" ",
        b"\xff",
        b"example.org",
    ];
    for i in 0..20_000u32 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let mut helo = Vec::new();
        for k in 0..(state % 9) {
            let x = state.rotate_right(k as u32 * 7);
            if x & 3 == 0 {
                helo.push((x >> 11) as u8);
            } else {
                helo.extend_from_slice(pieces[(x >> 5) as usize % pieces.len()]);
            }
        }
        let client: IpAddr = if i % 2 == 0 {
            std::net::Ipv4Addr::from((state >> 20) as u32).into()
        } else {
            std::net::Ipv6Addr::from(u128::from(state) << 64 | u128::from(state)).into()
        };
        let mut input = HeloInput::new(helo, client);
        input.pipelined = i % 7 == 0;
        let v = engine.evaluate_offline(&input);
        if v.is_reject() {
            assert!(v.primary().is_some());
        }
        assert!(
            v.reasons
                .windows(2)
                .skip(1)
                .all(|w| w[0].reason < w[1].reason)
        );
    }
}

/// Validations per second with DNS off (printed; run with `--nocapture` to see it).
#[test]
fn offline_throughput_smoke() {
    let engine = PolicyEngine::new(spec_settings(), None);
    let rows = corpus();
    let inputs: Vec<HeloInput> = rows
        .iter()
        .map(|r| HeloInput::new(r.helo.as_bytes(), r.client))
        .collect();
    let start = std::time::Instant::now();
    let mut n = 0u64;
    while start.elapsed() < Duration::from_millis(300) {
        for i in &inputs {
            std::hint::black_box(engine.evaluate_offline(i));
            n += 1;
        }
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    println!(
        "offline validations per second (one thread, debug build unless --release): {rate:.0}"
    );
    assert!(n > 0);
}

mod properties {
    use proptest::prelude::*;

    use super::*;

    /// HELO names of every shape the policy tells apart: host names (one label or more,
    /// ours among them), localhost, bare IPv4 addresses and address literals.
    fn helo_name() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?(\\.[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?){0,3}",
            Just("localhost".to_owned()),
            Just("mx.example.org".to_owned()),
            Just("mail.example.net".to_owned()),
            (any::<u8>(), any::<u8>()).prop_map(|(a, b)| format!("10.{a}.{b}.1")),
            (any::<u8>(), any::<u8>()).prop_map(|(a, b)| format!("[192.168.{a}.{b}]")),
        ]
    }

    fn judged(engine: &PolicyEngine, name: &str) -> (Decision, Vec<Reason>) {
        let client: IpAddr = "203.0.113.10".parse().expect("an address");
        let verdict = engine.evaluate_offline(&HeloInput::new(name.as_bytes(), client));
        (verdict.decision, verdict.reason_codes().collect())
    }

    proptest! {
        /// A name's verdict does not depend on its case (DNS names are case-insensitive).
        #[test]
        fn case_variants_of_a_name_get_the_same_verdict(name in helo_name(), upper in any::<bool>()) {
            let engine = PolicyEngine::new(spec_settings(), None);
            let variant = if upper {
                name.to_ascii_uppercase()
            } else {
                name.chars()
                    .enumerate()
                    .map(|(i, c)| if i % 2 == 0 { c.to_ascii_uppercase() } else { c })
                    .collect()
            };
            prop_assert_eq!(judged(&engine, &name), judged(&engine, &variant), "{} / {}", name, variant);
        }

        /// Nor on a trailing dot (the root, which an absolute name may spell out).
        #[test]
        fn a_trailing_dot_does_not_change_a_host_names_verdict(name in helo_name()) {
            prop_assume!(!name.starts_with('['));
            let engine = PolicyEngine::new(spec_settings(), None);
            prop_assert_eq!(judged(&engine, &name), judged(&engine, &format!("{name}.")), "{}", name);
        }
    }
}
