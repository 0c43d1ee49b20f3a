//! `[policy]` and `[dns]`: the policy engine's sections.

use std::{
    net::{IpAddr, SocketAddr},
    num::{NonZeroU32, NonZeroU64, NonZeroUsize},
};

use ipnet::IpNet;
use serde::Deserialize;

use super::duration;
use crate::{
    dns::DnsSettings,
    policy::{Bundle, CheckMode, DenyPattern, Reason, rfc5321},
};

/// A host or domain name, validated as an RFC 5321 domain, lower-cased, no trailing dot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostName(pub String);

impl<'de> Deserialize<'de> for HostName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        HostName::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl HostName {
    /// Validates a name.
    pub fn parse(s: &str) -> Result<HostName, String> {
        rfc5321::parse_domain(s.trim())
            .map(|d| HostName(d.as_str().to_string()))
            .map_err(|e| format!("invalid name {s:?}: {e}"))
    }
}

macro_rules! per_check {
    ($(#[$meta:meta])* $name:ident, $t:ty) => {
        $(#[$meta])*
        #[derive(Clone, Debug, Default, PartialEq, Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(missing_docs)]
        pub struct $name {
            pub no_helo: Option<$t>,
            pub pipelining: Option<$t>,
            pub bare_ip: Option<$t>,
            pub syntax: Option<$t>,
            pub not_fqdn: Option<$t>,
            pub localhost: Option<$t>,
            pub bad_literal_ip: Option<$t>,
            pub impersonation: Option<$t>,
            pub literal_not_allowed: Option<$t>,
            pub denylisted: Option<$t>,
            pub invalid_tld: Option<$t>,
            pub no_dns: Option<$t>,
            pub literal_mismatch: Option<$t>,
            pub dynamic: Option<$t>,
            pub dns_mismatch: Option<$t>,
            pub rdns_mismatch: Option<$t>,
        }

        impl $name {
            /// Every configurable check with its value, if set.
            pub fn entries(&self) -> [(Reason, Option<$t>); 16] {
                [
                    (Reason::NoHelo, self.no_helo),
                    (Reason::Pipelining, self.pipelining),
                    (Reason::BareIp, self.bare_ip),
                    (Reason::Syntax, self.syntax),
                    (Reason::NotFqdn, self.not_fqdn),
                    (Reason::Localhost, self.localhost),
                    (Reason::BadLiteralIp, self.bad_literal_ip),
                    (Reason::Impersonation, self.impersonation),
                    (Reason::LiteralNotAllowed, self.literal_not_allowed),
                    (Reason::Denylisted, self.denylisted),
                    (Reason::InvalidTld, self.invalid_tld),
                    (Reason::NoDns, self.no_dns),
                    (Reason::LiteralMismatch, self.literal_mismatch),
                    (Reason::Dynamic, self.dynamic),
                    (Reason::DnsMismatch, self.dns_mismatch),
                    (Reason::RdnsMismatch, self.rdns_mismatch),
                ]
            }
        }
    };
}

per_check!(
    /// `[policy.checks]`: a mode (`off`, `score`, `reject`) per check, over the bundle's.
    CheckModes,
    CheckMode
);
per_check!(
    /// `[policy.weights]`: a score weight per check, over the defaults.
    CheckWeights,
    u32
);
per_check!(
    /// `[reputation.weights]`: what a reject adds to its source's score, per primary reason,
    /// over `[reputation] reject_weight`.
    ReputationWeights,
    f64
);

/// The `[policy]` section.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicySection {
    /// `lenient`, `standard` or `strict`.
    pub bundle: Bundle,
    /// Our host names (impersonation).
    pub our_names: Vec<HostName>,
    /// Our domains (impersonation: the domain and every name under it).
    pub our_domains: Vec<HostName>,
    /// Our addresses (impersonation by literal).
    pub our_addrs: Vec<IpAddr>,
    /// Clients accepted without checks; unset means loopback only.
    pub trusted_networks: Option<Vec<IpNet>>,
    /// HELO names rejected as `denylisted`: `name`, `*.suffix`, `/regex/`.
    pub deny_helo: Vec<DenyPattern>,
    /// The old name of `deny_helo` (still read, with a warning): "deny" also names the
    /// source CIDRs of `[lists] deny`, which drop SYNs.
    #[serde(rename = "deny")]
    pub deprecated_deny: Vec<DenyPattern>,
    /// Reject when the score reaches this (unset: never by score alone).
    pub score_threshold: Option<NonZeroU32>,
    /// Per-check modes.
    pub checks: CheckModes,
    /// Per-check weights.
    pub weights: CheckWeights,
}

impl Default for PolicySection {
    fn default() -> Self {
        PolicySection {
            bundle: Bundle::Standard,
            our_names: Vec::new(),
            our_domains: Vec::new(),
            our_addrs: Vec::new(),
            trusted_networks: None,
            deny_helo: Vec::new(),
            deprecated_deny: Vec::new(),
            score_threshold: None,
            checks: CheckModes::default(),
            weights: CheckWeights::default(),
        }
    }
}

impl PolicySection {
    /// Every HELO deny pattern: `deny_helo`'s and the old `deny`'s.
    pub fn helo_patterns(&self) -> impl Iterator<Item = &DenyPattern> {
        self.deny_helo.iter().chain(&self.deprecated_deny)
    }
}

/// The `[dns]` section.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DnsSection {
    /// Run the DNS checks at all.
    pub enabled: bool,
    /// `ADDR:PORT` of the servers to ask; empty: the system configuration.
    pub servers: Vec<SocketAddr>,
    /// Deadline of one lookup in milliseconds.
    #[serde(deserialize_with = "duration::millis")]
    pub deadline_ms: NonZeroU64,
    /// Cap on cached answers (0 disables the cache).
    pub cache_entries: usize,
    /// TTL in seconds of a negative answer without an SOA.
    #[serde(deserialize_with = "duration::secs")]
    pub negative_ttl_secs: u64,
    /// Upper bound in seconds on any cached TTL.
    #[serde(deserialize_with = "duration::secs")]
    pub max_ttl_secs: u64,
    /// Bound on DNS queries in flight.
    pub max_in_flight: NonZeroUsize,
    /// A temporary DNS failure rejects (`dns_tempfail`) instead of being ignored.
    pub fail_closed: bool,
}

impl Default for DnsSection {
    fn default() -> Self {
        let d = DnsSettings::default();
        DnsSection {
            enabled: true,
            servers: Vec::new(),
            deadline_ms: NonZeroU64::new(d.deadline.as_millis() as u64).expect("nonzero"),
            cache_entries: d.cache_entries,
            negative_ttl_secs: d.negative_ttl.as_secs(),
            max_ttl_secs: d.max_ttl.as_secs(),
            max_in_flight: NonZeroUsize::new(d.max_in_flight).expect("nonzero"),
            fail_closed: false,
        }
    }
}
