//! `invalid_tld`: the top-level domain is not delegated (not a known ICANN suffix in the public
//! suffix list) or is special-use. Single-label names are left to `not_fqdn` and localhost names
//! to `localhost`.

use super::{Subject, localhost};
use crate::policy::rfc5321::DomainName;

/// Special-use or commonly squatted private TLDs that never resolve on the Internet.
pub const SPECIAL_USE: [&str; 9] = [
    "invalid",
    "test",
    "example",
    "local",
    "localhost",
    "lan",
    "home",
    "corp",
    "internal",
];

/// Whether a lower-cased label is a delegated top-level domain: an explicit ICANN entry of the
/// public suffix list (the list's implicit `*` rule does not count).
pub fn is_delegated_tld(tld: &str) -> bool {
    match psl::suffix(tld.as_bytes()) {
        Some(s) => s.typ() == Some(psl::Type::Icann) && s.as_bytes() == tld.as_bytes(),
        None => false,
    }
}

/// Why the name's TLD is invalid, if it is.
pub fn check_tld(d: &DomainName) -> Option<String> {
    let tld = d.tld();
    if SPECIAL_USE.contains(&tld) {
        return Some(format!(".{tld} is a special-use top-level domain"));
    }
    (!is_delegated_tld(tld)).then(|| format!(".{tld} is not a delegated top-level domain"))
}

/// Fails for a dotted name under an invalid TLD.
pub fn check(s: &Subject<'_>) -> Option<String> {
    let d = s.domain()?;
    if !d.has_dot() || localhost::is_localhost_name(d.as_str()) {
        return None;
    }
    check_tld(d)
}

#[cfg(test)]
mod tests {
    use super::{super::test_support::fails, *};

    #[test]
    fn known_icann_tlds_only() {
        for t in [
            "com", "net", "org", "de", "xyz", "online", "xn--p1ai", "museum",
        ] {
            assert!(is_delegated_tld(t), "{t}");
        }
        for t in ["nosuchtld", "invalid2", "x", "blogspot", "zz"] {
            assert!(!is_delegated_tld(t), "{t}");
        }
    }

    #[test]
    fn table() {
        for bad in [
            "printer.local",
            "mail.example.invalid",
            "mail.example.nosuchtld",
            "host.test",
            "host.example",
            "pc.lan",
            "pc.home",
            "dc1.corp",
            "svc.internal",
        ] {
            assert!(fails(check, bad, "203.0.113.10"), "{bad}");
        }
        for good in [
            "mail.example.net",
            "server",
            "localhost.localdomain",
            "a.b.co.uk",
        ] {
            assert!(!fails(check, good, "203.0.113.10"), "{good}");
        }
    }
}
