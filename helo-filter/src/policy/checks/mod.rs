//! The checks, one unit each. Offline checks look at the parsed argument, the client address and
//! the local identity; DNS checks also look at the answers gathered for the name.
//!
//! Every check returns `Some(explanation)` when it fails and `None` otherwise; DNS checks return
//! a [`DnsOutcome`] so that a temporary DNS failure is never mistaken for a failure of the check.

use std::net::IpAddr;

use super::{
    deny::DenyList,
    reason::Reason,
    rfc5321::{AddressLiteral, DomainName, Parsed},
};
use crate::addr;
pub use crate::dns::Answer;

pub mod bad_literal_ip;
pub mod bare_ip;
pub mod denylisted;
pub mod dns_mismatch;
pub mod dynamic;
pub mod impersonation;
pub mod invalid_tld;
pub mod literal_mismatch;
pub mod literal_not_allowed;
pub mod localhost;
pub mod no_dns;
pub mod not_fqdn;
pub mod rdns_mismatch;
pub mod session;
pub mod syntax;

/// Who we are: names, domains and addresses a client must not claim.
#[derive(Clone, Debug, Default)]
pub struct Identity {
    /// Our host names, lower-cased, without trailing dots.
    pub names: Vec<String>,
    /// Our domains, lower-cased, without trailing dots.
    pub domains: Vec<String>,
    /// Our addresses.
    pub addrs: Vec<IpAddr>,
}

impl Identity {
    /// Normalises names (case, trailing dot) and drops duplicates.
    pub fn normalized(mut self) -> Identity {
        for list in [&mut self.names, &mut self.domains] {
            for n in list.iter_mut() {
                *n = n.trim().trim_end_matches('.').to_ascii_lowercase();
            }
            list.retain(|n| !n.is_empty());
            list.sort();
            list.dedup();
        }
        self.addrs = self.addrs.iter().map(|&a| addr::canonical(a)).collect();
        self.addrs.sort();
        self.addrs.dedup();
        self
    }

    /// Whether `ip` is one of ours.
    pub fn is_our_addr(&self, ip: IpAddr) -> bool {
        self.addrs.iter().any(|&a| addr::same_address(a, ip))
    }
}

/// Everything an offline check may look at.
pub struct Subject<'a> {
    /// The parsed HELO argument, `None` when the session had no HELO.
    pub parsed: Option<&'a Parsed>,
    /// The client's address.
    pub client: IpAddr,
    /// Our identity.
    pub identity: &'a Identity,
    /// The operator's deny list.
    pub deny: &'a DenyList,
    /// The data path found no HELO (or another command before it).
    pub no_helo: bool,
    /// The data path saw commands pipelined behind the HELO.
    pub pipelined: bool,
}

impl Subject<'_> {
    /// The domain, when the argument is a valid one.
    pub fn domain(&self) -> Option<&DomainName> {
        match self.parsed {
            Some(Parsed::Domain(d)) => Some(d),
            _ => None,
        }
    }

    /// The address literal, when the argument is a valid one.
    pub fn literal(&self) -> Option<&AddressLiteral> {
        match self.parsed {
            Some(Parsed::Literal(l)) => Some(l),
            _ => None,
        }
    }

    /// A domain worth asking DNS about: a dotted name that is neither a localhost name nor under
    /// an invalid top-level domain (such a name cannot exist in public DNS).
    pub fn resolvable_domain(&self) -> Option<&DomainName> {
        self.domain().filter(|d| {
            d.has_dot()
                && !localhost::is_localhost_name(d.as_str())
                && invalid_tld::check_tld(d).is_none()
        })
    }
}

/// One offline check.
pub type OfflineCheck = fn(&Subject<'_>) -> Option<String>;

/// Every offline check, in reason order.
pub const OFFLINE: [(Reason, OfflineCheck); 13] = [
    (Reason::NoHelo, session::no_helo),
    (Reason::Pipelining, session::pipelining),
    (Reason::BareIp, bare_ip::check),
    (Reason::Syntax, syntax::check),
    (Reason::NotFqdn, not_fqdn::check),
    (Reason::Localhost, localhost::check),
    (Reason::BadLiteralIp, bad_literal_ip::check),
    (Reason::Impersonation, impersonation::check),
    (Reason::LiteralNotAllowed, literal_not_allowed::check),
    (Reason::Denylisted, denylisted::check),
    (Reason::InvalidTld, invalid_tld::check),
    (Reason::LiteralMismatch, literal_mismatch::check),
    (Reason::Dynamic, dynamic::check),
];

/// DNS answers gathered for one evaluation.
#[derive(Clone, Debug)]
pub struct DnsFacts {
    /// A records of the HELO name.
    pub a: Answer<IpAddr>,
    /// AAAA records of the HELO name.
    pub aaaa: Answer<IpAddr>,
    /// MX exchanges of the HELO name (lower-cased, without trailing dots).
    pub mx: Answer<String>,
    /// PTR names of the client address (lower-cased, without trailing dots).
    pub ptr: Answer<String>,
}

impl Default for DnsFacts {
    fn default() -> Self {
        DnsFacts {
            a: Answer::NotAsked,
            aaaa: Answer::NotAsked,
            mx: Answer::NotAsked,
            ptr: Answer::NotAsked,
        }
    }
}

/// The result of a DNS check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DnsOutcome {
    /// Passed, or not applicable.
    Pass,
    /// Failed, with an explanation.
    Fail(String),
    /// Could not be decided: a lookup it needs failed temporarily.
    TempFail,
}

/// One DNS check.
pub type DnsCheck = fn(&Subject<'_>, &DnsFacts) -> DnsOutcome;

/// Every DNS check, in reason order.
pub const DNS: [(Reason, DnsCheck); 3] = [
    (Reason::NoDns, no_dns::check),
    (Reason::DnsMismatch, dns_mismatch::check),
    (Reason::RdnsMismatch, rdns_mismatch::check),
];

/// The registered domain (public suffix plus one label) of a lower-cased name, if any.
pub fn registered_domain(name: &str) -> Option<&str> {
    let d = psl::domain(name.as_bytes())?;
    if !d.suffix().is_known() {
        return None;
    }
    std::str::from_utf8(d.as_bytes()).ok()
}

#[cfg(test)]
pub(crate) mod test_support {
    use super::*;
    use crate::policy::rfc5321;

    /// Runs `f` with a subject built from a HELO and a client, the spec's example identity and
    /// the given deny patterns.
    pub fn with_subject<R>(helo: &str, client: &str, f: impl FnOnce(&Subject<'_>) -> R) -> R {
        let parsed = rfc5321::parse(helo.as_bytes());
        let identity = Identity {
            names: vec!["mx.example.org".into()],
            domains: vec!["example.org".into()],
            addrs: vec![
                "198.51.100.25".parse().unwrap(),
                "2001:db8:25::25".parse().unwrap(),
            ],
        };
        let deny = DenyList::new(vec![
            crate::policy::deny::DenyPattern::parse("*.spam.example.com").unwrap(),
        ]);
        let s = Subject {
            parsed: Some(&parsed),
            client: client.parse().unwrap(),
            identity: &identity,
            deny: &deny,
            no_helo: false,
            pipelined: false,
        };
        f(&s)
    }

    /// Whether an offline check fails for this HELO and client.
    pub fn fails(check: OfflineCheck, helo: &str, client: &str) -> bool {
        with_subject(helo, client, |s| check(s).is_some())
    }
}
