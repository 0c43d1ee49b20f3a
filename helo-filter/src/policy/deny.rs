//! Operator deny patterns: an exact name, `*.suffix` (the suffix itself and every name under
//! it) or `/regex/` (matched against the whole lower-cased name, case-insensitively).

use std::fmt;

use regex::{Regex, RegexBuilder};

/// One deny entry.
#[derive(Clone, Debug)]
pub enum DenyPattern {
    /// The name itself, lower-cased, without a trailing dot.
    Exact(String),
    /// The suffix without `*.`, lower-cased: matches it and every name under it.
    Suffix(String),
    /// The pattern as written (between the slashes) and its compiled, anchored form.
    Regex { source: String, regex: Regex },
}

/// Why a pattern is not acceptable.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DenyPatternError {
    /// Nothing to match.
    #[error("empty deny pattern")]
    Empty,
    /// `/…/` whose body does not compile.
    #[error("invalid regex in deny pattern {pattern:?}: {message}")]
    BadRegex { pattern: String, message: String },
    /// A name or suffix with a character no HELO argument can hold (white space, a control
    /// character): it would never match.
    #[error(
        "deny pattern {0:?} can never match: a HELO argument holds no white space or control \
         characters"
    )]
    Unmatchable(String),
    /// `*.` with nothing after it, or a `*` elsewhere than at the front.
    #[error("invalid wildcard in deny pattern {0:?}: only a leading \"*.\" is allowed")]
    BadWildcard(String),
}

impl DenyPattern {
    /// Parses one pattern.
    pub fn parse(text: &str) -> Result<DenyPattern, DenyPatternError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(DenyPatternError::Empty);
        }
        if text.len() >= 2 && text.starts_with('/') && text.ends_with('/') {
            let body = &text[1..text.len() - 1];
            if body.is_empty() {
                return Err(DenyPatternError::Empty);
            }
            let regex = RegexBuilder::new(&format!("^(?:{body})$"))
                .case_insensitive(true)
                .size_limit(1 << 20)
                .build()
                .map_err(|e| DenyPatternError::BadRegex {
                    pattern: text.to_string(),
                    message: e.to_string(),
                })?;
            return Ok(DenyPattern::Regex {
                source: body.to_string(),
                regex,
            });
        }
        // The argument of HELO ends at the first space, and control characters are not
        // part of it (the line parser stops there too).
        if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(DenyPatternError::Unmatchable(text.to_string()));
        }
        let lower = text.trim_end_matches('.').to_ascii_lowercase();
        if let Some(suffix) = lower.strip_prefix("*.") {
            if suffix.is_empty() || suffix.contains('*') {
                return Err(DenyPatternError::BadWildcard(text.to_string()));
            }
            return Ok(DenyPattern::Suffix(suffix.to_string()));
        }
        if lower.contains('*') || lower.is_empty() {
            return Err(DenyPatternError::BadWildcard(text.to_string()));
        }
        Ok(DenyPattern::Exact(lower))
    }

    /// Whether `name` (lower-cased, no trailing dot) matches.
    pub fn matches(&self, name: &str) -> bool {
        match self {
            DenyPattern::Exact(n) => n == name,
            DenyPattern::Suffix(s) => {
                name == s
                    || (name.len() > s.len()
                        && name.ends_with(s.as_str())
                        && name.as_bytes()[name.len() - s.len() - 1] == b'.')
            }
            DenyPattern::Regex { regex, .. } => regex.is_match(name),
        }
    }
}

impl fmt::Display for DenyPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DenyPattern::Exact(n) => f.write_str(n),
            DenyPattern::Suffix(s) => write!(f, "*.{s}"),
            DenyPattern::Regex { source, .. } => write!(f, "/{source}/"),
        }
    }
}

impl PartialEq for DenyPattern {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (DenyPattern::Exact(a), DenyPattern::Exact(b))
            | (DenyPattern::Suffix(a), DenyPattern::Suffix(b)) => a == b,
            (DenyPattern::Regex { source: a, .. }, DenyPattern::Regex { source: b, .. }) => a == b,
            _ => false,
        }
    }
}

impl Eq for DenyPattern {}

impl TryFrom<String> for DenyPattern {
    type Error = DenyPatternError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        DenyPattern::parse(&s)
    }
}

impl<'de> serde::Deserialize<'de> for DenyPattern {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        DenyPattern::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// The operator's deny list.
#[derive(Clone, Debug, Default)]
pub struct DenyList {
    patterns: Vec<DenyPattern>,
}

impl DenyList {
    /// A list of the given patterns.
    pub fn new(patterns: Vec<DenyPattern>) -> DenyList {
        DenyList { patterns }
    }

    /// The first pattern that matches `name`.
    pub fn find(&self, name: &str) -> Option<&DenyPattern> {
        self.patterns.iter().find(|p| p.matches(name))
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.patterns.len()
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, name: &str) -> bool {
        DenyPattern::parse(p).unwrap().matches(name)
    }

    #[test]
    fn exact() {
        assert!(m("bad.example.com", "bad.example.com"));
        assert!(m("BAD.example.com.", "bad.example.com"));
        assert!(!m("bad.example.com", "x.bad.example.com"));
    }

    #[test]
    fn suffix_matches_itself_and_below() {
        assert!(m("*.spam.example", "spam.example"));
        assert!(m("*.spam.example", "a.b.spam.example"));
        assert!(!m("*.spam.example", "notspam.example"));
        assert!(!m("*.spam.example", "example"));
    }

    #[test]
    fn regex_is_whole_name_and_case_insensitive() {
        assert!(m(r"/mail\d+\.example\.com/", "mail42.example.com"));
        assert!(!m(r"/mail\d+\.example\.com/", "xmail42.example.com.evil"));
        assert!(m("/(?:friend|oem)/", "friend"));
        assert!(m("/FRIEND/", "friend"));
        assert!(!m("/friend/", "friendly"));
    }

    #[test]
    fn patterns_no_helo_can_match_are_refused() {
        for text in ["foo bar", "*.spam example", "bad\texample", "x\u{1b}y"] {
            assert_eq!(
                DenyPattern::parse(text).unwrap_err(),
                DenyPatternError::Unmatchable(text.to_string()),
                "{text:?}"
            );
        }
        // A regex says what it matches itself.
        assert!(DenyPattern::parse("/foo[ ]?bar/").is_ok());
    }

    #[test]
    fn bad_patterns() {
        assert_eq!(
            DenyPattern::parse(" ").unwrap_err(),
            DenyPatternError::Empty
        );
        assert_eq!(
            DenyPattern::parse("//").unwrap_err(),
            DenyPatternError::Empty
        );
        assert!(matches!(
            DenyPattern::parse("/(/").unwrap_err(),
            DenyPatternError::BadRegex { .. }
        ));
        assert!(matches!(
            DenyPattern::parse("a.*.example").unwrap_err(),
            DenyPatternError::BadWildcard(_)
        ));
        assert!(matches!(
            DenyPattern::parse("*.").unwrap_err(),
            DenyPatternError::BadWildcard(_)
        ));
    }
}
