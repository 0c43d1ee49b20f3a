//! Our own identity is an impossible claim, never a mismatch (helo-policy.md): a literal of one
//! of our addresses from outside rejects with `impersonation` alone, without the soft
//! `literal_mismatch` and its score.

use std::net::IpAddr;

use super::{corpus_tests::spec_settings, *};

async fn verdict(helo: &str, client: &str) -> Verdict {
    let engine = PolicyEngine::new(spec_settings(), None);
    let client: IpAddr = client.parse().unwrap();
    engine
        .evaluate(&HeloInput::new(helo.as_bytes(), client))
        .await
}

#[tokio::test]
async fn our_own_literal_is_impersonation_and_nothing_else() {
    for (helo, client) in [
        ("[198.51.100.25]", "203.0.113.10"),
        ("[IPv6:2001:db8:25::25]", "2001:db8:1::10"),
        ("[IPv6:2001:db8:25::25]", "203.0.113.10"),
    ] {
        let v = verdict(helo, client).await;
        let codes: Vec<Reason> = v.reason_codes().collect();
        assert_eq!(
            (v.decision, codes, v.score),
            (Decision::Reject, vec![Reason::Impersonation], 0),
            "{helo} from {client}: {v:?}"
        );
    }
    // Another routable literal still scores as a mismatch.
    let v = verdict("[198.51.100.26]", "203.0.113.10").await;
    let codes: Vec<Reason> = v.reason_codes().collect();
    assert_eq!(
        (v.decision, codes, v.score),
        (Decision::Accept, vec![Reason::LiteralMismatch], 2)
    );
}
