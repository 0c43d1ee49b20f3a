//! `syntax`: not an RFC 5321 domain nor a well-formed address literal.

use super::Subject;
use crate::policy::rfc5321::Parsed;

/// Fails when the parser rejected the argument.
pub fn check(s: &Subject<'_>) -> Option<String> {
    match s.parsed? {
        Parsed::Invalid(e) => Some(e.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::{super::test_support::fails, check};

    #[test]
    fn table() {
        for bad in [
            "",
            "mail..example.net",
            "-a.example.net",
            "[1.2.3]",
            "a b",
            "m\u{e9}.example",
        ] {
            assert!(fails(check, bad, "203.0.113.10"), "{bad:?}");
        }
        for good in ["mail.example.net", "server", "[1.2.3.4]", "1.2.3.4"] {
            assert!(!fails(check, good, "203.0.113.10"), "{good:?}");
        }
    }
}
