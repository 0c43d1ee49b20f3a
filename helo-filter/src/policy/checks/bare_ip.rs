//! `bare_ip`: an IP address without brackets.

use super::Subject;
use crate::policy::rfc5321::Parsed;

/// Fails for an IP-shaped argument written without brackets.
pub fn check(s: &Subject<'_>) -> Option<String> {
    match s.parsed? {
        Parsed::BareIp { text, .. } => Some(format!(
            "{text:?} is an IP address without brackets; RFC 5321 requires an address literal such as [192.0.2.1]"
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::{super::test_support::fails, check};

    #[test]
    fn table() {
        assert!(fails(check, "127.0.0.1", "203.0.113.10"));
        assert!(fails(check, "2001:db8:1::10", "2001:db8:1::10"));
        assert!(fails(check, "IPv6:2001:db8:1::10", "2001:db8:1::10"));
        assert!(!fails(check, "[127.0.0.1]", "203.0.113.10"));
        assert!(!fails(check, "mail.example.net", "203.0.113.10"));
    }
}
