//! `localhost`: `localhost`, `localhost.localdomain`, `localdomain` and names under
//! `.localhost` or `.localdomain`.

use super::Subject;

/// Whether a lower-cased name is a localhost name.
pub fn is_localhost_name(name: &str) -> bool {
    matches!(name, "localhost" | "localhost.localdomain" | "localdomain")
        || name.ends_with(".localhost")
        || name.ends_with(".localdomain")
}

/// Fails for a localhost name.
pub fn check(s: &Subject<'_>) -> Option<String> {
    let d = s.domain()?;
    is_localhost_name(d.as_str()).then(|| {
        format!(
            "{:?} names the local machine, not an Internet host",
            d.as_str()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::{super::test_support::fails, check};

    #[test]
    fn table() {
        for bad in [
            "localhost",
            "LOCALHOST",
            "localhost.",
            "localhost.localdomain",
            "localdomain",
            "box.localdomain",
            "foo.localhost",
        ] {
            assert!(fails(check, bad, "203.0.113.10"), "{bad}");
        }
        for good in [
            "localhost.example.net",
            "mylocalhost.net",
            "mail.example.net",
        ] {
            assert!(!fails(check, good, "203.0.113.10"), "{good}");
        }
    }
}
