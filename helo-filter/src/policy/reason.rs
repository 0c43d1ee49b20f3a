//! The fixed set of reason codes and verdict notes.
//!
//! Reason codes become metric labels, so the set is closed: [`Reason::ALL`] lists every code in
//! the order used to pick the primary reason of a verdict.

use std::fmt;

/// A failed check. The declaration order is the evaluation order of the spec: the primary
/// reason of a reject is the first failed check (in this order) whose mode is `reject`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// No HELO/EHLO among the client's first commands (set by the data path).
    NoHelo,
    /// Commands pipelined behind the HELO before the server's greeting reply (data path).
    Pipelining,
    /// An IP address written without brackets.
    BareIp,
    /// Not an RFC 5321 domain nor a well-formed address literal.
    Syntax,
    /// A domain without a dot.
    NotFqdn,
    /// `localhost`, `localdomain` and their relatives.
    Localhost,
    /// An address literal with a non-routable IP that is not the client's.
    BadLiteralIp,
    /// Our own host name, a name in our domains, or one of our addresses.
    Impersonation,
    /// An address literal under a policy that allows none (`strict`).
    LiteralNotAllowed,
    /// The name matches an operator deny pattern.
    Denylisted,
    /// The top-level domain is not delegated or is special-use.
    InvalidTld,
    /// The name has no A, AAAA or MX record.
    NoDns,
    /// A DNS lookup failed temporarily and the policy is fail-closed.
    DnsTempfail,
    /// An address literal with a routable IP other than the client's (soft).
    LiteralMismatch,
    /// The client's IPv4 address appears in the host part of the name (soft).
    Dynamic,
    /// The name resolves, but not to the client's address (soft).
    DnsMismatch,
    /// The client's PTR name does not match the HELO name or its registered domain (soft).
    RdnsMismatch,
}

impl Reason {
    /// Every reason code, in primary-reason order.
    pub const ALL: [Reason; 17] = [
        Reason::NoHelo,
        Reason::Pipelining,
        Reason::BareIp,
        Reason::Syntax,
        Reason::NotFqdn,
        Reason::Localhost,
        Reason::BadLiteralIp,
        Reason::Impersonation,
        Reason::LiteralNotAllowed,
        Reason::Denylisted,
        Reason::InvalidTld,
        Reason::NoDns,
        Reason::DnsTempfail,
        Reason::LiteralMismatch,
        Reason::Dynamic,
        Reason::DnsMismatch,
        Reason::RdnsMismatch,
    ];

    /// The code as it appears in JSON, logs and metric labels.
    pub const fn as_str(self) -> &'static str {
        match self {
            Reason::NoHelo => "no_helo",
            Reason::Pipelining => "pipelining",
            Reason::BareIp => "bare_ip",
            Reason::Syntax => "syntax",
            Reason::NotFqdn => "not_fqdn",
            Reason::Localhost => "localhost",
            Reason::BadLiteralIp => "bad_literal_ip",
            Reason::Impersonation => "impersonation",
            Reason::LiteralNotAllowed => "literal_not_allowed",
            Reason::Denylisted => "denylisted",
            Reason::InvalidTld => "invalid_tld",
            Reason::NoDns => "no_dns",
            Reason::DnsTempfail => "dns_tempfail",
            Reason::LiteralMismatch => "literal_mismatch",
            Reason::Dynamic => "dynamic",
            Reason::DnsMismatch => "dns_mismatch",
            Reason::RdnsMismatch => "rdns_mismatch",
        }
    }

    /// Parses a code written as [`Reason::as_str`] gives it.
    pub fn from_code(code: &str) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.as_str() == code)
    }

    /// A one-line, generic description of what the check looks for.
    pub const fn summary(self) -> &'static str {
        match self {
            Reason::NoHelo => "the client sent no HELO/EHLO before other commands",
            Reason::Pipelining => "the client pipelined commands behind its HELO/EHLO",
            Reason::BareIp => "an IP address given without brackets",
            Reason::Syntax => "not a valid RFC 5321 domain or address literal",
            Reason::NotFqdn => "a host name without a domain",
            Reason::Localhost => "a localhost name",
            Reason::BadLiteralIp => "an address literal with a non-routable address",
            Reason::Impersonation => "claims to be this server or one of its domains",
            Reason::LiteralNotAllowed => "address literals are not allowed by the policy",
            Reason::Denylisted => "the name matches an operator deny pattern",
            Reason::InvalidTld => "the top-level domain does not exist or is special-use",
            Reason::NoDns => "the name has no A, AAAA or MX record",
            Reason::DnsTempfail => "a DNS lookup failed temporarily",
            Reason::LiteralMismatch => "the address literal is not the client's address",
            Reason::Dynamic => "the name embeds the client's address (dynamic pool)",
            Reason::DnsMismatch => "the name does not resolve to the client's address",
            Reason::RdnsMismatch => "the client's reverse DNS name does not match",
        }
    }

    /// Soft checks only add to the score in the `standard` bundle.
    pub const fn is_soft(self) -> bool {
        matches!(
            self,
            Reason::LiteralMismatch | Reason::Dynamic | Reason::DnsMismatch | Reason::RdnsMismatch
        )
    }

    /// Checks that need DNS (skipped by `--offline`).
    pub const fn needs_dns(self) -> bool {
        matches!(
            self,
            Reason::NoDns | Reason::DnsMismatch | Reason::RdnsMismatch | Reason::DnsTempfail
        )
    }

    /// The weight added to the score when the check fails in a non-rejecting mode, unless the
    /// configuration overrides it: the spec's weights for the soft checks, 3 for a hard check
    /// that an operator turned to `score`.
    pub const fn default_weight(self) -> u32 {
        match self {
            Reason::LiteralMismatch => 2,
            Reason::Dynamic | Reason::DnsMismatch | Reason::RdnsMismatch => 1,
            _ => 3,
        }
    }

    /// Position in [`Reason::ALL`].
    pub const fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Annotations on a verdict that are not failures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Note {
    /// The client is in a trusted network; nothing was checked.
    Trusted,
    /// A DNS lookup failed temporarily; the DNS checks it fed were ignored (fail-open).
    DnsTempfail,
    /// DNS checks were skipped on request.
    Offline,
    /// The score reached the configured threshold (the verdict is a reject).
    ScoreThreshold,
    /// The HELO name cannot be encoded as a DNS question; the DNS checks were skipped.
    DnsUnqueryable,
}

impl Note {
    /// Every note, for metric label sets.
    pub const ALL: [Note; 5] = [
        Note::Trusted,
        Note::DnsTempfail,
        Note::Offline,
        Note::ScoreThreshold,
        Note::DnsUnqueryable,
    ];

    /// The note as it appears in JSON and logs.
    pub const fn as_str(self) -> &'static str {
        match self {
            Note::Trusted => "trusted",
            Note::DnsTempfail => "dns_tempfail",
            Note::Offline => "offline",
            Note::ScoreThreshold => "score_threshold",
            Note::DnsUnqueryable => "dns_unqueryable",
        }
    }
}

impl fmt::Display for Note {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_is_in_declaration_order_and_codes_round_trip() {
        for (i, r) in Reason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
            assert_eq!(Reason::from_code(r.as_str()), Some(*r));
        }
        let soft: Vec<_> = Reason::ALL.iter().filter(|r| r.is_soft()).collect();
        assert_eq!(soft.len(), 4);
    }
}
