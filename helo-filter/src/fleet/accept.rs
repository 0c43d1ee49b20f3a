//! What a member takes from the fleet: local rules win. A denial is refused when it is wider
//! than a source (IPv4 /32, IPv6 /64; an operator's CIDR no wider than /16 or /48), lasts
//! longer than this member's own `deny_ttl_secs`, has already ended, or covers what this
//! member never denies: an allow entry, a trusted network, one of our own addresses.

use std::net::IpAddr;

use ipnet::IpNet;

use super::wire::{Denial, DenialKind};

/// A few seconds of clock difference between members are not a longer TTL.
const CLOCK_SLACK_SECS: u64 = 5;

/// This member's rules, as configured now.
#[derive(Clone, Debug, Default)]
pub struct LocalRules {
    /// Allow entries (the file's and the operator's) and trusted networks.
    pub never_denied: Vec<IpNet>,
    pub our_addrs: Vec<IpAddr>,
    pub max_ttl_secs: u64,
}

/// Why a fleet denial is not enforced here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    TooWide,
    TooLong,
    Ended,
    Covers(String),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::TooWide => f.write_str("wider than a fleet entry may be"),
            Refusal::TooLong => f.write_str("longer than [reputation] deny_ttl_secs"),
            Refusal::Ended => f.write_str("already ended"),
            Refusal::Covers(what) => write!(f, "it covers {what}"),
        }
    }
}

fn narrow_enough(net: IpNet, kind: DenialKind) -> bool {
    let (v4, v6) = match kind {
        DenialKind::Reputation => (32, 64),
        DenialKind::Operator => (16, 48),
    };
    match net {
        IpNet::V4(n) => n.prefix_len() >= v4,
        IpNet::V6(n) => n.prefix_len() >= v6,
    }
}

/// Whether this member enforces `denial` at Unix time `now`.
pub fn judge(denial: &Denial, now: u64, rules: &LocalRules) -> Result<(), Refusal> {
    if !narrow_enough(denial.net, denial.kind) {
        return Err(Refusal::TooWide);
    }
    if denial.expires_at <= now {
        return Err(Refusal::Ended);
    }
    if denial.expires_at - now > rules.max_ttl_secs + CLOCK_SLACK_SECS {
        return Err(Refusal::TooLong);
    }
    let net = denial.net;
    if let Some(kept) = rules
        .never_denied
        .iter()
        .find(|n| n.contains(&net) || net.contains(*n))
    {
        return Err(Refusal::Covers(format!("{kept}, allowed or trusted here")));
    }
    if let Some(ours) = rules.our_addrs.iter().find(|a| net.contains(*a)) {
        return Err(Refusal::Covers(format!("our own address {ours}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn denial(net: &str, kind: DenialKind, expires_at: u64) -> Denial {
        Denial {
            net: net.parse().unwrap(),
            kind,
            expires_at,
            member: "mx1".into(),
            made_at_ms: 0,
            comment: None,
        }
    }

    #[test]
    fn local_rules_win() {
        let rules = LocalRules {
            never_denied: vec![
                "192.0.2.0/24".parse().unwrap(),
                "127.0.0.0/8".parse().unwrap(),
            ],
            our_addrs: vec!["198.51.100.25".parse().unwrap()],
            max_ttl_secs: 3_600,
        };
        let now = 1_000_000;
        let judged = |net: &str, kind, ttl: u64| judge(&denial(net, kind, now + ttl), now, &rules);
        use DenialKind::*;
        assert_eq!(judged("203.0.113.10/32", Reputation, 3_600), Ok(()));
        assert_eq!(judged("2001:db8:1::/64", Reputation, 60), Ok(()));
        assert_eq!(
            judged("203.0.113.0/24", Reputation, 60),
            Err(Refusal::TooWide)
        );
        assert_eq!(
            judged("2001:db8::/48", Reputation, 60),
            Err(Refusal::TooWide)
        );
        assert_eq!(judged("203.0.0.0/16", Operator, 60), Ok(()));
        assert_eq!(judged("203.0.0.0/15", Operator, 60), Err(Refusal::TooWide));
        assert_eq!(
            judged("203.0.113.10/32", Reputation, 7_200),
            Err(Refusal::TooLong)
        );
        assert_eq!(
            judged("203.0.113.10/32", Reputation, 0),
            Err(Refusal::Ended)
        );
        assert!(matches!(
            judged("192.0.2.7/32", Reputation, 60),
            Err(Refusal::Covers(_))
        ));
        assert!(matches!(
            judged("192.0.0.0/16", Operator, 60),
            Err(Refusal::Covers(_))
        ));
        assert!(matches!(
            judged("198.51.100.25/32", Reputation, 60),
            Err(Refusal::Covers(_))
        ));
    }
}
