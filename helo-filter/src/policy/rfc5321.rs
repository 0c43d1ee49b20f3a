//! The HELO/EHLO argument per RFC 5321 §4.1.1.1 and §4.1.3: a `Domain` or an address literal.
//!
//! Leniencies, as the spec allows: `_` in labels (like Postfix), a trailing dot (ignored), and an
//! IPv6 literal without the `IPv6:` tag. An argument shaped like an IP address but written
//! without brackets is classified as [`Parsed::BareIp`], never as a syntax error.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

/// Longest name (without the trailing dot) RFC 1035 allows in presentation form.
pub const MAX_NAME_LEN: usize = 253;
/// Longest label.
pub const MAX_LABEL_LEN: usize = 63;

/// A syntactically valid domain: lower-cased, without its trailing dot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DomainName {
    name: String,
}

impl DomainName {
    /// The lower-cased name without a trailing dot.
    pub fn as_str(&self) -> &str {
        &self.name
    }

    /// The labels, left to right.
    pub fn labels(&self) -> impl Iterator<Item = &str> {
        self.name.split('.')
    }

    /// The last label.
    pub fn tld(&self) -> &str {
        self.name.rsplit('.').next().unwrap_or(&self.name)
    }

    /// Whether the name has at least one dot.
    pub fn has_dot(&self) -> bool {
        self.name.contains('.')
    }

    /// The name with a trailing dot, for DNS queries without search-list expansion.
    pub fn fqdn(&self) -> String {
        format!("{}.", self.name)
    }
    /// A name taken as is, without the syntax checks: for tests of what happens after them.
    #[cfg(test)]
    pub(crate) fn unchecked(name: &str) -> DomainName {
        DomainName {
            name: name.to_string(),
        }
    }
}

/// How an address literal was written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LiteralForm {
    /// `[a.b.c.d]`
    V4,
    /// `[IPv6:…]`
    V6Tagged,
    /// `[…]` holding an IPv6 address without the tag (accepted leniently).
    V6Untagged,
}

/// A well-formed address literal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AddressLiteral {
    /// The address as written.
    pub ip: IpAddr,
    /// How it was written.
    pub form: LiteralForm,
}

/// Why an argument is not valid; each variant explains itself through `Display`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SyntaxError {
    /// No argument at all, or only blanks.
    Empty,
    /// A byte outside printable ASCII.
    NotPrintable { byte: u8, offset: usize },
    /// More than one blank-separated word.
    MultipleArguments { count: usize },
    /// An empty label (`a..b`, a leading dot, or only a dot).
    EmptyLabel,
    /// A label longer than 63 characters.
    LabelTooLong { len: usize },
    /// A character other than a letter, a digit, `-` or `_`.
    BadChar { ch: char },
    /// A label that starts with `-`.
    LeadingHyphen { label: String },
    /// A label that ends with `-`.
    TrailingHyphen { label: String },
    /// A name longer than 253 characters.
    NameTooLong { len: usize },
    /// The last label is all digits.
    NumericTld { label: String },
    /// Brackets that do not hold an IPv4 address or an `IPv6:` address.
    BadLiteral { text: String },
}

impl fmt::Display for SyntaxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SyntaxError::Empty => write!(f, "the HELO argument is empty"),
            SyntaxError::NotPrintable { byte, offset } => write!(
                f,
                "byte 0x{byte:02x} at offset {offset} is not printable ASCII"
            ),
            SyntaxError::MultipleArguments { count } => {
                write!(f, "{count} words where RFC 5321 allows one")
            }
            SyntaxError::EmptyLabel => write!(f, "the name has an empty label"),
            SyntaxError::LabelTooLong { len } => {
                write!(
                    f,
                    "a label is {len} characters long (at most {MAX_LABEL_LEN})"
                )
            }
            SyntaxError::BadChar { ch } => write!(f, "character {ch:?} is not allowed in a name"),
            SyntaxError::LeadingHyphen { label } => {
                write!(f, "label {label:?} starts with a hyphen")
            }
            SyntaxError::TrailingHyphen { label } => {
                write!(f, "label {label:?} ends with a hyphen")
            }
            SyntaxError::NameTooLong { len } => {
                write!(
                    f,
                    "the name is {len} characters long (at most {MAX_NAME_LEN})"
                )
            }
            SyntaxError::NumericTld { label } => {
                write!(f, "the last label {label:?} is all digits")
            }
            SyntaxError::BadLiteral { text } => {
                write!(f, "{text:?} is not a well-formed address literal")
            }
        }
    }
}

/// The classification of one HELO argument.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Parsed {
    /// A valid RFC 5321 `Domain`.
    Domain(DomainName),
    /// A valid address literal.
    Literal(AddressLiteral),
    /// An IP address (or something shaped like one) without brackets; the parsed address
    /// when it is a real one.
    BareIp { text: String, ip: Option<IpAddr> },
    /// Anything else.
    Invalid(SyntaxError),
}

/// Blanks that separate words in an SMTP command line.
fn is_blank(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// Classifies a HELO argument: the raw bytes after the verb, with or without surrounding blanks
/// and line ending. Never panics, whatever the bytes.
pub fn parse(raw: &[u8]) -> Parsed {
    let trimmed = trim(raw);
    if trimmed.is_empty() {
        return Parsed::Invalid(SyntaxError::Empty);
    }
    if let Some((offset, &byte)) = trimmed
        .iter()
        .enumerate()
        .find(|&(_, &b)| !(b.is_ascii_graphic() || is_blank(b)))
    {
        return Parsed::Invalid(SyntaxError::NotPrintable { byte, offset });
    }
    let words = trimmed
        .split(|&b| is_blank(b))
        .filter(|w| !w.is_empty())
        .count();
    if words > 1 {
        return Parsed::Invalid(SyntaxError::MultipleArguments { count: words });
    }
    // Printable ASCII only from here on, so this cannot fail.
    let Ok(arg) = std::str::from_utf8(trimmed) else {
        return Parsed::Invalid(SyntaxError::Empty);
    };
    if arg.starts_with('[') {
        return parse_literal(arg);
    }
    if let Some(bare) = ip_shaped(arg) {
        return bare;
    }
    match parse_domain(arg) {
        Ok(d) => Parsed::Domain(d),
        Err(e) => Parsed::Invalid(e),
    }
}

fn trim(raw: &[u8]) -> &[u8] {
    let junk = |b: &u8| is_blank(*b) || *b == b'\r' || *b == b'\n';
    let start = raw.iter().position(|b| !junk(b)).unwrap_or(raw.len());
    let end = raw.iter().rposition(|b| !junk(b)).map_or(start, |e| e + 1);
    &raw[start..end]
}

fn parse_literal(arg: &str) -> Parsed {
    let bad = || {
        Parsed::Invalid(SyntaxError::BadLiteral {
            text: arg.to_string(),
        })
    };
    let Some(inner) = arg
        .strip_prefix('[')
        .and_then(|rest| rest.strip_suffix(']'))
    else {
        return bad();
    };
    if let Some(v6) = strip_prefix_ci(inner, "IPv6:") {
        return match v6.parse::<Ipv6Addr>() {
            Ok(ip) => Parsed::Literal(AddressLiteral {
                ip: IpAddr::V6(ip),
                form: LiteralForm::V6Tagged,
            }),
            Err(_) => bad(),
        };
    }
    if let Ok(ip) = inner.parse::<Ipv4Addr>() {
        return Parsed::Literal(AddressLiteral {
            ip: IpAddr::V4(ip),
            form: LiteralForm::V4,
        });
    }
    if let Ok(ip) = inner.parse::<Ipv6Addr>() {
        return Parsed::Literal(AddressLiteral {
            ip: IpAddr::V6(ip),
            form: LiteralForm::V6Untagged,
        });
    }
    bad()
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

/// An argument that is, or looks like, an IP address without brackets: a real IPv4 or IPv6
/// address (a trailing dot allowed), four dot-separated groups of 1–3 digits (`300.1.1.1`),
/// `IPv6:` followed by anything, or hex digits with at least two colons.
fn ip_shaped(arg: &str) -> Option<Parsed> {
    let bare = |ip: Option<IpAddr>| Parsed::BareIp {
        text: arg.to_string(),
        ip,
    };
    let body = arg.strip_suffix('.').unwrap_or(arg);
    if let Ok(ip) = body.parse::<IpAddr>() {
        return Some(bare(Some(ip)));
    }
    if let Some(rest) = strip_prefix_ci(arg, "IPv6:") {
        return Some(bare(rest.parse::<Ipv6Addr>().ok().map(IpAddr::V6)));
    }
    let groups: Vec<&str> = body.split('.').collect();
    if groups.len() == 4
        && groups
            .iter()
            .all(|g| (1..=3).contains(&g.len()) && g.bytes().all(|b| b.is_ascii_digit()))
    {
        return Some(bare(None));
    }
    if arg.bytes().filter(|&b| b == b':').count() >= 2
        && arg
            .bytes()
            .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
    {
        return Some(bare(None));
    }
    None
}

/// Parses an RFC 5321 `Domain` (with the leniencies of this module).
pub fn parse_domain(arg: &str) -> Result<DomainName, SyntaxError> {
    let name = arg.strip_suffix('.').unwrap_or(arg);
    if name.is_empty() {
        return Err(SyntaxError::EmptyLabel);
    }
    if name.len() > MAX_NAME_LEN {
        return Err(SyntaxError::NameTooLong { len: name.len() });
    }
    let mut last = "";
    for label in name.split('.') {
        if label.is_empty() {
            return Err(SyntaxError::EmptyLabel);
        }
        if label.len() > MAX_LABEL_LEN {
            return Err(SyntaxError::LabelTooLong { len: label.len() });
        }
        if let Some(ch) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
        {
            return Err(SyntaxError::BadChar { ch });
        }
        if label.starts_with('-') {
            return Err(SyntaxError::LeadingHyphen {
                label: label.to_string(),
            });
        }
        if label.ends_with('-') {
            return Err(SyntaxError::TrailingHyphen {
                label: label.to_string(),
            });
        }
        last = label;
    }
    if last.bytes().all(|b| b.is_ascii_digit()) {
        return Err(SyntaxError::NumericTld {
            label: last.to_string(),
        });
    }
    Ok(DomainName {
        name: name.to_ascii_lowercase(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Parsed {
        parse(s.as_bytes())
    }

    fn domain(s: &str) -> String {
        match p(s) {
            Parsed::Domain(d) => d.as_str().to_string(),
            other => panic!("{s:?}: expected a domain, got {other:?}"),
        }
    }

    fn syntax(s: &str) -> SyntaxError {
        match p(s) {
            Parsed::Invalid(e) => e,
            other => panic!("{s:?}: expected a syntax error, got {other:?}"),
        }
    }

    fn literal(s: &str) -> AddressLiteral {
        match p(s) {
            Parsed::Literal(l) => l,
            other => panic!("{s:?}: expected a literal, got {other:?}"),
        }
    }

    fn is_bare(s: &str) -> bool {
        matches!(p(s), Parsed::BareIp { .. })
    }

    #[test]
    fn empty_and_blank_arguments() {
        assert_eq!(syntax(""), SyntaxError::Empty);
        assert_eq!(syntax("   "), SyntaxError::Empty);
        assert_eq!(syntax("\r\n"), SyntaxError::Empty);
    }

    #[test]
    fn surrounding_blanks_and_line_ending_are_ignored() {
        assert_eq!(domain("  mail.example.net \r\n"), "mail.example.net");
    }

    #[test]
    fn more_than_one_argument() {
        assert_eq!(
            syntax("mail.example.net extra"),
            SyntaxError::MultipleArguments { count: 2 }
        );
        assert_eq!(
            syntax("a.example\tb.example c"),
            SyntaxError::MultipleArguments { count: 3 }
        );
    }

    #[test]
    fn non_printable_and_non_ascii() {
        assert!(matches!(
            syntax("m\u{0430}il.example.net"),
            SyntaxError::NotPrintable { byte: 0xd0, .. }
        ));
        assert!(matches!(
            parse(b"mail\x00.example.net"),
            Parsed::Invalid(SyntaxError::NotPrintable { byte: 0, offset: 4 })
        ));
        assert!(matches!(
            parse(b"\xff\xfe"),
            Parsed::Invalid(SyntaxError::NotPrintable { .. })
        ));
    }

    #[test]
    fn labels_letters_digits_hyphen_underscore() {
        assert_eq!(domain("123.example.net"), "123.example.net");
        assert_eq!(domain("a-b.example.net"), "a-b.example.net");
        assert_eq!(domain("_dmarc.example.net"), "_dmarc.example.net");
        assert_eq!(domain("mail_1.example.net"), "mail_1.example.net");
        assert_eq!(
            domain("xn--bcher-kva.example.net"),
            "xn--bcher-kva.example.net"
        );
        assert_eq!(
            syntax("mail!.example.net"),
            SyntaxError::BadChar { ch: '!' }
        );
        assert_eq!(syntax("a/b.example.net"), SyntaxError::BadChar { ch: '/' });
    }

    #[test]
    fn hyphen_rules() {
        assert!(matches!(
            syntax("-mail.example.net"),
            SyntaxError::LeadingHyphen { .. }
        ));
        assert!(matches!(
            syntax("mail-.example.net"),
            SyntaxError::TrailingHyphen { .. }
        ));
        assert!(matches!(
            syntax("mail.-example.net"),
            SyntaxError::LeadingHyphen { .. }
        ));
    }

    #[test]
    fn empty_labels() {
        assert_eq!(syntax("mail..example.net"), SyntaxError::EmptyLabel);
        assert_eq!(syntax(".example.net"), SyntaxError::EmptyLabel);
        assert_eq!(syntax("."), SyntaxError::EmptyLabel);
        assert_eq!(syntax("example.net.."), SyntaxError::EmptyLabel);
    }

    #[test]
    fn label_and_name_lengths() {
        let l63 = "a".repeat(63);
        let l64 = "a".repeat(64);
        assert_eq!(
            domain(&format!("{l63}.example.net")),
            format!("{l63}.example.net")
        );
        assert_eq!(
            syntax(&format!("{l64}.example.net")),
            SyntaxError::LabelTooLong { len: 64 }
        );
        // 253 characters is the limit; a trailing dot does not count.
        let n253 = format!("{}.net", vec!["a".repeat(49); 5].join("."));
        assert_eq!(n253.len(), 253);
        assert_eq!(domain(&n253), n253);
        assert_eq!(domain(&format!("{n253}.")), n253);
        let n254 = format!("b{n253}");
        assert_eq!(syntax(&n254), SyntaxError::NameTooLong { len: 254 });
    }

    #[test]
    fn numeric_last_label() {
        assert!(matches!(
            syntax("mail.example.123"),
            SyntaxError::NumericTld { .. }
        ));
        // A numeric label elsewhere is fine, and a mixed last label too.
        assert_eq!(domain("1.example.n3t"), "1.example.n3t");
    }

    #[test]
    fn trailing_dot_is_ignored_and_case_folded() {
        assert_eq!(domain("MAIL.Example.NET."), "mail.example.net");
        assert_eq!(domain("server."), "server");
    }

    #[test]
    fn bare_ips() {
        assert!(is_bare("127.0.0.1"));
        assert!(is_bare("203.0.113.10."));
        assert!(is_bare("2001:db8:1::10"));
        assert!(is_bare("::1"));
        assert!(is_bare("::ffff:127.0.0.1"));
        assert!(is_bare("IPv6:2001:db8::1"));
        assert!(is_bare("ipv6:::1"));
        assert!(is_bare("IPv6:garbage"));
        assert!(is_bare("300.1.1.1"));
        assert!(is_bare("01.02.03.04"));
        assert!(is_bare("fe80:0:0:0:0:0:0:1:2"));
        assert!(!is_bare("1.2.3.example"));
        assert!(!is_bare("1.2.3.4.example.net"));
        match p("127.0.0.1") {
            Parsed::BareIp { ip, .. } => assert_eq!(ip, Some("127.0.0.1".parse().unwrap())),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn ipv4_literals() {
        let l = literal("[192.168.1.1]");
        assert_eq!(l.ip, "192.168.1.1".parse::<IpAddr>().unwrap());
        assert_eq!(l.form, LiteralForm::V4);
        assert!(matches!(
            syntax("[300.1.1.1]"),
            SyntaxError::BadLiteral { .. }
        ));
        assert!(matches!(syntax("[1.2.3]"), SyntaxError::BadLiteral { .. }));
        assert!(matches!(
            syntax("[01.2.3.4]"),
            SyntaxError::BadLiteral { .. }
        ));
        assert!(matches!(syntax("[1.2.3.4"), SyntaxError::BadLiteral { .. }));
        assert!(matches!(syntax("[]"), SyntaxError::BadLiteral { .. }));
        assert!(matches!(
            syntax("[ 1.2.3.4]"),
            SyntaxError::MultipleArguments { .. }
        ));
        assert!(matches!(
            syntax("[mail.example.net]"),
            SyntaxError::BadLiteral { .. }
        ));
        assert!(matches!(
            syntax("[IPv4:1.2.3.4]"),
            SyntaxError::BadLiteral { .. }
        ));
    }

    #[test]
    fn ipv6_literals() {
        let l = literal("[IPv6:2001:db8:1::10]");
        assert_eq!(l.form, LiteralForm::V6Tagged);
        assert_eq!(l.ip, "2001:db8:1::10".parse::<IpAddr>().unwrap());
        assert_eq!(literal("[ipv6:::1]").ip, "::1".parse::<IpAddr>().unwrap());
        assert_eq!(
            literal("[IPv6:::ffff:127.0.0.1]").form,
            LiteralForm::V6Tagged
        );
        assert_eq!(literal("[2001:db8:1::10]").form, LiteralForm::V6Untagged);
        assert!(matches!(
            syntax("[IPv6:2001:db8::g]"),
            SyntaxError::BadLiteral { .. }
        ));
        assert!(matches!(
            syntax("[IPv6:1.2.3.4]"),
            SyntaxError::BadLiteral { .. }
        ));
        assert!(matches!(
            syntax("[IPv6:fe80::1%eth0]"),
            SyntaxError::BadLiteral { .. }
        ));
        assert!(matches!(syntax("[IPv6:]"), SyntaxError::BadLiteral { .. }));
    }

    #[test]
    fn single_labels_parse_as_domains() {
        assert_eq!(domain("server"), "server");
        assert_eq!(domain("LOCALHOST"), "localhost");
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A small deterministic generator: every verdict path is exercised with junk.
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let alphabet = b"[]:.-_ aZ09IPv6\t\r\n\x00\xff\xc3";
        for _ in 0..20_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let len = (state % 40) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|i| {
                    let x = state.rotate_left(i as u32 * 5);
                    if x & 1 == 0 {
                        alphabet[(x >> 8) as usize % alphabet.len()]
                    } else {
                        (x >> 16) as u8
                    }
                })
                .collect();
            let _ = parse(&bytes);
        }
    }
}
