//! What a DNS failure leaves on a verdict: `dns_error=SERVER:KIND` with the note or reason
//! `dns_tempfail`, and the note `dns_unqueryable` (never a `dns_tempfail`) for a name that cannot
//! be sent as a question.

use std::{
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use super::*;
use crate::dns::{
    DnsErrorKind, DnsSettings,
    test_server::{BadServer, Misbehaviour},
};

fn engine(server: std::net::SocketAddr, fail_closed: bool) -> PolicyEngine {
    let settings = PolicySettings {
        dns_fail_closed: fail_closed,
        ..PolicySettings::default()
    };
    let dns = DnsClient::new(DnsSettings {
        servers: vec![server],
        deadline: Duration::from_millis(400),
        ..DnsSettings::default()
    })
    .unwrap();
    PolicyEngine::new(settings, Some(dns))
}

fn input(helo: &str) -> HeloInput {
    HeloInput::new(helo, "203.0.113.10".parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tempfail_carries_its_server_and_kind() {
    for (how, kind) in [
        (Misbehaviour::Rcode(2), DnsErrorKind::Servfail),
        (Misbehaviour::Rcode(5), DnsErrorKind::Refused),
        (Misbehaviour::CutShort, DnsErrorKind::Malformed),
        (Misbehaviour::Silent, DnsErrorKind::Timeout),
    ] {
        let server = BadServer::start(how);
        let want = DnsFailure {
            server: server.addr.to_string(),
            kind,
        };
        let v = engine(server.addr, false)
            .evaluate(&input("mail.example.net"))
            .await;
        assert!(v.has_note(Note::DnsTempfail), "{how:?}: {v:?}");
        assert_eq!(v.dns_error.as_ref(), Some(&want), "{how:?}");
        assert_eq!(
            v.dns_error_field(),
            format!(" dns_error={}:{}", server.addr, kind.as_str())
        );
        let v = engine(server.addr, true)
            .evaluate(&input("mail.example.net"))
            .await;
        assert_eq!(v.primary(), Some(Reason::DnsTempfail), "{how:?}: {v:?}");
        assert_eq!(v.dns_error.as_ref(), Some(&want), "{how:?}");
        assert!(
            v.reasons[0].explanation.contains(kind.as_str()),
            "{how:?}: {v:?}"
        );
    }
}

#[tokio::test]
async fn no_dns_error_without_a_dns_failure() {
    let v = PolicyEngine::new(PolicySettings::default(), None)
        .evaluate(&input("mail.example.net"))
        .await;
    assert_eq!(v.dns_error, None);
    assert_eq!(v.dns_error_field(), "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unqueryable_name_skips_the_dns_checks_with_a_note() {
    let server = BadServer::start(Misbehaviour::Silent);
    let e = engine(server.addr, true);
    let parsed = rfc5321::Parsed::Domain(rfc5321::DomainName::unchecked("a b.example.net"));
    let t = Instant::now();
    let v = e
        .evaluate_parsed(&input("a b.example.net"), Some(&parsed))
        .await;
    assert!(
        t.elapsed() < Duration::from_millis(100),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(v.notes, [Note::DnsUnqueryable], "{v:?}");
    assert!(!v.reason_codes().any(|r| r == Reason::DnsTempfail), "{v:?}");
    assert_eq!(v.dns_error, None);
    assert_eq!(
        server.queries.load(Ordering::Relaxed),
        0,
        "nothing was sent"
    );
}
