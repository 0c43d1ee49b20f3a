//! `literal_mismatch` (soft): a routable address literal that is not the client's address.
//! One of our own addresses is not a mismatch but an impossible claim: `impersonation` says
//! so, and the literal is not scored a second time.

use super::Subject;
use crate::addr;

/// Flags a routable literal other than the client's address and other than ours.
pub fn check(s: &Subject<'_>) -> Option<String> {
    let l = s.literal()?;
    (addr::is_routable(l.ip)
        && !addr::same_address(l.ip, s.client)
        && !s.identity.is_our_addr(l.ip))
    .then(|| {
        format!(
            "the literal [{}] is not the client's address {}",
            l.ip, s.client
        )
    })
}

#[cfg(test)]
mod tests {
    use super::{super::test_support::fails, check};

    #[test]
    fn table() {
        assert!(fails(check, "[203.0.113.11]", "203.0.113.10"));
        assert!(fails(check, "[IPv6:2001:db8:1::11]", "2001:db8:1::10"));
        assert!(!fails(check, "[203.0.113.10]", "203.0.113.10"));
        assert!(!fails(check, "[IPv6:::ffff:203.0.113.10]", "203.0.113.10"));
        assert!(!fails(check, "[127.0.0.1]", "203.0.113.10"));
    }

    /// "Our own identity is not a mismatch" (helo-policy.md): our addresses as literals, from
    /// outside or from our other address, are left to `impersonation`.
    #[test]
    fn our_own_addresses_are_not_a_mismatch() {
        assert!(!fails(check, "[198.51.100.25]", "203.0.113.10"));
        assert!(!fails(check, "[IPv6:2001:db8:25::25]", "2001:db8:1::10"));
        assert!(!fails(check, "[IPv6:::ffff:198.51.100.25]", "203.0.113.10"));
        assert!(!fails(check, "[198.51.100.25]", "2001:db8:25::25"));
        // Next door is not ours: still a mismatch.
        assert!(fails(check, "[198.51.100.26]", "203.0.113.10"));
    }
}
