//! `not_fqdn`: a domain without a dot. Localhost names are left to the `localhost` check, which
//! says more.

use super::{Subject, localhost};

/// Fails for a single-label name.
pub fn check(s: &Subject<'_>) -> Option<String> {
    let d = s.domain()?;
    (!d.has_dot() && !localhost::is_localhost_name(d.as_str())).then(|| {
        format!(
            "{:?} is not a fully qualified domain name (it has no dot)",
            d.as_str()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::{super::test_support::fails, check};

    #[test]
    fn table() {
        assert!(fails(check, "server", "203.0.113.10"));
        assert!(fails(check, "mon-serveur", "203.0.113.10"));
        assert!(fails(check, "server.", "203.0.113.10"));
        assert!(!fails(check, "localhost", "203.0.113.10"));
        assert!(!fails(check, "mail.example.net", "203.0.113.10"));
        assert!(!fails(check, "[1.2.3.4]", "203.0.113.10"));
    }
}
