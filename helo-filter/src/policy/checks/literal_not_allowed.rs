//! `literal_not_allowed`: any address literal, for policies that want a name (`strict`).

use super::Subject;

/// Fails for every well-formed address literal.
pub fn check(s: &Subject<'_>) -> Option<String> {
    let l = s.literal()?;
    Some(format!(
        "the policy requires a resolvable host name, not the address literal [{}]",
        l.ip
    ))
}

#[cfg(test)]
mod tests {
    use super::{super::test_support::fails, check};

    #[test]
    fn table() {
        assert!(fails(check, "[203.0.113.10]", "203.0.113.10"));
        assert!(fails(check, "[IPv6:2001:db8:1::10]", "203.0.113.10"));
        assert!(!fails(check, "mail.example.net", "203.0.113.10"));
    }
}
