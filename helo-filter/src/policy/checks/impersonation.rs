//! `impersonation`: the client claims to be us. A client that is itself one of our addresses may
//! use our names.

use super::Subject;

/// Fails for our host names, names inside our domains, and our addresses as literals.
pub fn check(s: &Subject<'_>) -> Option<String> {
    if s.identity.is_our_addr(s.client) {
        return None;
    }
    if let Some(d) = s.domain() {
        let name = d.as_str();
        if s.identity.names.iter().any(|n| n == name) {
            return Some(format!("{name:?} is this server's own host name"));
        }
        if let Some(dom) = s.identity.domains.iter().find(|dom| {
            name == dom.as_str()
                || (name.len() > dom.len()
                    && name.ends_with(dom.as_str())
                    && name.as_bytes()[name.len() - dom.len() - 1] == b'.')
        }) {
            return Some(format!("{name:?} is inside this server's domain {dom:?}"));
        }
    }
    if let Some(l) = s.literal()
        && s.identity.is_our_addr(l.ip)
    {
        return Some(format!("[{}] is this server's own address", l.ip));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::{super::test_support::fails, check};

    #[test]
    fn table() {
        assert!(fails(check, "mx.example.org", "203.0.113.10"));
        assert!(fails(check, "MX.EXAMPLE.ORG.", "203.0.113.10"));
        assert!(fails(check, "relay7.example.org", "203.0.113.10"));
        assert!(fails(check, "example.org", "203.0.113.10"));
        assert!(fails(check, "[198.51.100.25]", "203.0.113.10"));
        assert!(fails(check, "[IPv6:2001:db8:25::25]", "203.0.113.10"));
        assert!(!fails(check, "notexample.org", "203.0.113.10"));
        assert!(!fails(check, "mail.example.net", "203.0.113.10"));
        // Our own address connecting to us may use our name.
        assert!(!fails(check, "mx.example.org", "198.51.100.25"));
    }
}
