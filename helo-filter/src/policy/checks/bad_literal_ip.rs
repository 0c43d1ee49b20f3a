//! `bad_literal_ip`: an address literal whose address is non-routable and not the client's.

use super::Subject;
use crate::addr;

/// Fails for a non-routable literal that is not the client's own address.
pub fn check(s: &Subject<'_>) -> Option<String> {
    let l = s.literal()?;
    (!addr::is_routable(l.ip) && !addr::same_address(l.ip, s.client)).then(|| {
        format!(
            "the literal [{}] is a non-routable address, and the client is {}",
            l.ip, s.client
        )
    })
}

#[cfg(test)]
mod tests {
    use super::{super::test_support::fails, check};

    #[test]
    fn table() {
        assert!(fails(check, "[127.0.0.1]", "203.0.113.10"));
        assert!(fails(check, "[192.168.1.1]", "203.0.113.10"));
        assert!(fails(check, "[100.64.3.4]", "203.0.113.10"));
        assert!(fails(check, "[240.1.2.3]", "203.0.113.10"));
        assert!(fails(check, "[IPv6:::1]", "2001:db8:1::10"));
        assert!(fails(check, "[IPv6:fe80::1]", "2001:db8:1::10"));
        assert!(fails(check, "[IPv6:::ffff:127.0.0.1]", "203.0.113.10"));
        assert!(!fails(check, "[192.168.1.1]", "192.168.1.1"));
        assert!(!fails(check, "[IPv6:::ffff:192.168.1.1]", "192.168.1.1"));
        assert!(!fails(check, "[203.0.113.11]", "203.0.113.10"));
    }
}
