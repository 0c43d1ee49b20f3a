//! `denylisted`: the name matches an operator deny pattern.

use super::Subject;

/// Fails when a deny pattern matches the name.
pub fn check(s: &Subject<'_>) -> Option<String> {
    let d = s.domain()?;
    let p = s.deny.find(d.as_str())?;
    Some(format!("{:?} matches the deny pattern {p}", d.as_str()))
}

#[cfg(test)]
mod tests {
    use super::{super::test_support::fails, check};

    #[test]
    fn table() {
        assert!(fails(check, "spam.example.com", "203.0.113.10"));
        assert!(fails(check, "a.SPAM.example.com", "203.0.113.10"));
        assert!(!fails(check, "nospam.example.com", "203.0.113.10"));
    }
}
