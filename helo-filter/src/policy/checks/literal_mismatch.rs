//! `literal_mismatch` (soft): a routable address literal that is not the client's address.

use super::Subject;
use crate::addr;

/// Flags a routable literal other than the client's address.
pub fn check(s: &Subject<'_>) -> Option<String> {
    let l = s.literal()?;
    (addr::is_routable(l.ip) && !addr::same_address(l.ip, s.client)).then(|| {
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
}
