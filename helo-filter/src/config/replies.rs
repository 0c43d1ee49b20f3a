//! `[replies]`: the one reply table, what a rejected client is told per reason: an SMTP
//! code, an enhanced status code (RFC 3463) and a text, sent as `CODE ENHANCED TEXT
//! (reason)`. Action `reply` answers the client with it; the Postfix policy service answers
//! Postfix with it. Unset, every reason gets the seed's `550 5.7.1 Access denied - bogus
//! HELO`, and `dns_tempfail` (a DNS failure under a fail-closed policy) a temporary
//! `451 4.7.1 HELO check failed temporarily - try again later`, so that the sender tries
//! again rather than bounce.
//!
//! `style = "postfix"` starts from Postfix's own HELO restrictions' replies instead, where
//! they have one: `501 5.5.2` for a name that is not one (`reject_invalid_helo_hostname`),
//! `504 5.5.2` for one that is not fully qualified (`reject_non_fqdn_helo_hostname`), and a
//! temporary `450 4.7.1` for one that does not resolve (`reject_unknown_helo_hostname`:
//! DNS may be wrong for a while). Per-reason keys override either style.
//!
//! `[postfix] reject_code`, `reject_text` and `defer_text`, from before the table, are
//! still read as old names of the table's defaults.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::PostfixSection;
use crate::policy::Reason;

/// The seed's answer: every reason's unless set otherwise.
const DEFAULT_REJECT: (u16, &str, &str) = (550, "5.7.1", "Access denied - bogus HELO");
/// A DNS failure under a fail-closed policy: try again later.
const DEFAULT_TEMPFAIL: (u16, &str, &str) = (
    451,
    "4.7.1",
    "HELO check failed temporarily - try again later",
);

/// Which replies the table starts from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplyStyle {
    /// The seed's `550 5.7.1 Access denied - bogus HELO` for every reason.
    #[default]
    Seed,
    /// Postfix's codes and texts for the reasons its HELO restrictions share.
    Postfix,
}

/// Postfix's reply for a reason its own HELO restrictions reject for.
fn postfix_style(reason: Reason) -> Option<(u16, &'static str, &'static str)> {
    const INVALID_NAME: (u16, &str, &str) = (501, "5.5.2", "Helo command rejected: Invalid name");
    match reason {
        Reason::Syntax | Reason::BareIp | Reason::BadLiteralIp => Some(INVALID_NAME),
        Reason::NotFqdn => Some((
            504,
            "5.5.2",
            "Helo command rejected: need fully-qualified hostname",
        )),
        Reason::NoDns => Some((450, "4.7.1", "Helo command rejected: Host not found")),
        _ => None,
    }
}

/// A refusal's reply code: 4xx (try again later) or 5xx (permanent).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplyCode(pub u16);

impl<'de> Deserialize<'de> for ReplyCode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let code = u16::deserialize(d)?;
        if !(400..=599).contains(&code) {
            return Err(serde::de::Error::custom(format!(
                "{code}: a refusal's code is 4xx or 5xx"
            )));
        }
        Ok(ReplyCode(code))
    }
}

/// An enhanced status code (RFC 3463), `class.subject.detail`, of a refusal (class 4 or 5).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnhancedCode(pub String);

impl EnhancedCode {
    /// Reads `class.subject.detail`: class 4 or 5, subject and detail of 1 to 3 digits.
    pub fn parse(s: &str) -> Option<EnhancedCode> {
        let mut parts = s.split('.');
        let class = parts.next()?;
        let valid = matches!(class, "4" | "5")
            && parts
                .by_ref()
                .take(2)
                .all(|p| (1..=3).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()))
            && s.split('.').count() == 3;
        valid.then(|| EnhancedCode(s.to_owned()))
    }

    /// The class digit: 4 or 5.
    fn class(&self) -> u16 {
        u16::from(self.0.as_bytes()[0] - b'0')
    }
}

impl<'de> Deserialize<'de> for EnhancedCode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        EnhancedCode::parse(&s).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "{s:?}: an enhanced status code is 4.X.Y or 5.X.Y (RFC 3463)"
            ))
        })
    }
}

/// Text of a reply: printable ASCII on one line (it goes into the SMTP reply as is).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplyText(pub String);

impl<'de> Deserialize<'de> for ReplyText {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        if text.trim().is_empty() || !text.bytes().all(|b| (0x20..=0x7e).contains(&b)) {
            return Err(serde::de::Error::custom(
                "reply text: printable ASCII on one line, not empty",
            ));
        }
        Ok(ReplyText(text))
    }
}

/// A reason, as a key of `[replies.reasons]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ReasonKey(pub Reason);

impl<'de> Deserialize<'de> for ReasonKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Reason::from_code(&s).map(ReasonKey).ok_or_else(|| {
            let known: Vec<&str> = Reason::ALL.iter().map(|r| r.as_str()).collect();
            serde::de::Error::custom(format!(
                "unknown reason {s:?}, expected one of {}",
                known.join(", ")
            ))
        })
    }
}

/// One reply, or one reason's keys over the table's default.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplyKeys {
    pub code: Option<ReplyCode>,
    pub enhanced: Option<EnhancedCode>,
    pub text: Option<ReplyText>,
}

/// `[replies]`: the default reply (`code`, `enhanced`, `text`) and `[replies.reasons.NAME]`
/// entries over it.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RepliesSection {
    pub style: ReplyStyle,
    pub code: Option<ReplyCode>,
    pub enhanced: Option<EnhancedCode>,
    pub text: Option<ReplyText>,
    pub reasons: BTreeMap<ReasonKey, ReplyKeys>,
}

/// A reply as sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    /// Absent only when an old `[postfix] reject_text` had none.
    pub enhanced: Option<EnhancedCode>,
    pub text: String,
}

impl Reply {
    fn new((code, enhanced, text): (u16, &str, &str)) -> Reply {
        Reply {
            code,
            enhanced: Some(EnhancedCode(enhanced.to_owned())),
            text: text.to_owned(),
        }
    }

    /// The reply over `keys`: each key set replaces this reply's.
    fn over(&self, keys: &ReplyKeys) -> Reply {
        Reply {
            code: keys.code.map_or(self.code, |c| c.0),
            enhanced: keys.enhanced.clone().or_else(|| self.enhanced.clone()),
            text: keys
                .text
                .as_ref()
                .map_or(self.text.clone(), |t| t.0.clone()),
        }
    }

    /// A 4xx: the sender keeps the message and tries again later.
    pub fn is_temporary(&self) -> bool {
        self.code < 500
    }

    /// The enhanced code and text, without the reply code: `ENHANCED TEXT (reason)`.
    pub fn text_for(&self, reason: Reason) -> String {
        match &self.enhanced {
            Some(enhanced) => format!("{} {} ({})", enhanced.0, self.text, reason.as_str()),
            None => format!("{} ({})", self.text, reason.as_str()),
        }
    }

    /// The whole reply line, without its CRLF: `CODE ENHANCED TEXT (reason)`.
    pub fn line_for(&self, reason: Reason) -> String {
        format!("{} {}", self.code, self.text_for(reason))
    }

    /// Whether the enhanced code's class is the reply code's (RFC 3463: 5.X.Y with 5xx).
    pub fn classes_agree(&self) -> bool {
        self.enhanced
            .as_ref()
            .is_none_or(|e| e.class() == self.code / 100)
    }
}

/// The reply table as configured: one reply per reason.
#[derive(Clone, Debug, PartialEq)]
pub struct Replies {
    by_reason: BTreeMap<Reason, Reply>,
}

impl Default for Replies {
    fn default() -> Self {
        Replies::new(&RepliesSection::default(), &PostfixSection::default())
    }
}

impl Replies {
    /// The table from `[replies]` over the defaults, with the old `[postfix]` keys as the
    /// defaults' values where set (the configuration check refuses an old key beside its
    /// new one).
    pub fn new(section: &RepliesSection, old: &PostfixSection) -> Replies {
        let mut reject = Reply::new(DEFAULT_REJECT);
        if let Some(code) = old.reject_code {
            reject.code = code.0;
        }
        if let Some(text) = &old.reject_text {
            (reject.enhanced, reject.text) = split_enhanced(&text.0);
        }
        let reject = reject.over(&ReplyKeys {
            code: section.code,
            enhanced: section.enhanced.clone(),
            text: section.text.clone(),
        });
        let mut tempfail = Reply::new(DEFAULT_TEMPFAIL);
        if let Some(text) = &old.defer_text {
            (tempfail.enhanced, tempfail.text) = split_enhanced(&text.0);
        }
        let by_reason = Reason::ALL
            .into_iter()
            .map(|reason| {
                let styled = match section.style {
                    ReplyStyle::Postfix => postfix_style(reason).map(Reply::new),
                    ReplyStyle::Seed => None,
                };
                let base = match styled {
                    Some(styled) => styled,
                    None if reason == Reason::DnsTempfail => tempfail.clone(),
                    None => reject.clone(),
                };
                let reply = match section.reasons.get(&ReasonKey(reason)) {
                    Some(keys) => base.over(keys),
                    None => base,
                };
                (reason, reply)
            })
            .collect();
        Replies { by_reason }
    }

    /// The reply to a session rejected for `reason`.
    pub fn reply(&self, reason: Reason) -> &Reply {
        &self.by_reason[&reason]
    }

    /// Every reason's reply.
    pub fn iter(&self) -> impl Iterator<Item = (Reason, &Reply)> {
        self.by_reason.iter().map(|(r, reply)| (*r, reply))
    }
}

/// An old `[postfix]` text, `5.7.1 Access denied`: its enhanced code if it starts with one,
/// and the rest.
fn split_enhanced(text: &str) -> (Option<EnhancedCode>, String) {
    match text.split_once(' ') {
        Some((first, rest)) => match EnhancedCode::parse(first) {
            Some(code) => (Some(code), rest.to_owned()),
            None => (None, text.to_owned()),
        },
        None => (None, text.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(toml_text: &str) -> Replies {
        #[derive(Deserialize)]
        struct File {
            #[serde(default)]
            replies: RepliesSection,
            #[serde(default)]
            postfix: PostfixSection,
        }
        let file: File = toml::from_str(toml_text).expect("parses");
        Replies::new(&file.replies, &file.postfix)
    }

    #[test]
    fn unset_every_reason_gets_the_seeds_reject_and_a_dns_failure_a_temporary_one() {
        let replies = Replies::default();
        for reason in Reason::ALL {
            let line = replies.reply(reason).line_for(reason);
            if reason == Reason::DnsTempfail {
                assert_eq!(
                    line,
                    "451 4.7.1 HELO check failed temporarily - try again later (dns_tempfail)"
                );
            } else {
                assert_eq!(
                    line,
                    format!("550 5.7.1 Access denied - bogus HELO ({})", reason.as_str())
                );
            }
        }
    }

    #[test]
    fn a_reasons_entry_sets_its_own_keys_over_the_default() {
        let replies = table(
            "[replies]\ntext = \"Go away\"\n\
             [replies.reasons.no_dns]\ncode = 450\nenhanced = \"4.7.1\"\n\
             text = \"Helo command rejected: Host not found\"\n\
             [replies.reasons.localhost]\ncode = 554\n",
        );
        assert_eq!(
            replies.reply(Reason::NoDns).line_for(Reason::NoDns),
            "450 4.7.1 Helo command rejected: Host not found (no_dns)"
        );
        assert!(replies.reply(Reason::NoDns).is_temporary());
        assert_eq!(
            replies.reply(Reason::Localhost).line_for(Reason::Localhost),
            "554 5.7.1 Go away (localhost)"
        );
        assert_eq!(
            replies.reply(Reason::BareIp).line_for(Reason::BareIp),
            "550 5.7.1 Go away (bare_ip)"
        );
    }

    #[test]
    fn the_postfix_style_answers_as_postfix_would_and_reason_keys_still_win() {
        let replies = table(
            "[replies]\nstyle = \"postfix\"\ntext = \"Go away\"\n\
             [replies.reasons.syntax]\ntext = \"Bad name\"\n",
        );
        let line = |reason: Reason| replies.reply(reason).line_for(reason);
        assert_eq!(
            line(Reason::NoDns),
            "450 4.7.1 Helo command rejected: Host not found (no_dns)"
        );
        assert_eq!(
            line(Reason::NotFqdn),
            "504 5.5.2 Helo command rejected: need fully-qualified hostname (not_fqdn)"
        );
        assert_eq!(
            line(Reason::BareIp),
            "501 5.5.2 Helo command rejected: Invalid name (bare_ip)"
        );
        assert_eq!(line(Reason::Syntax), "501 5.5.2 Bad name (syntax)");
        assert_eq!(
            line(Reason::Localhost),
            "550 5.7.1 Go away (localhost)",
            "a reason Postfix has no restriction for keeps the table's default"
        );
        assert!(replies.iter().all(|(_, r)| r.classes_agree()));
    }

    #[test]
    fn the_old_postfix_keys_set_the_defaults() {
        let replies = table(
            "[postfix]\nreject_code = 554\nreject_text = \"5.7.0 Go away\"\n\
             defer_text = \"Later\"\n",
        );
        assert_eq!(
            replies.reply(Reason::NotFqdn).line_for(Reason::NotFqdn),
            "554 5.7.0 Go away (not_fqdn)"
        );
        assert_eq!(
            replies
                .reply(Reason::DnsTempfail)
                .line_for(Reason::DnsTempfail),
            "451 Later (dns_tempfail)",
            "an old text without an enhanced code keeps none"
        );
    }

    #[test]
    fn enhanced_codes_and_reasons_are_read_strictly() {
        for good in ["5.7.1", "4.7.0", "5.123.999"] {
            assert!(EnhancedCode::parse(good).is_some(), "{good}");
        }
        for bad in ["2.0.0", "5.7", "5.7.1.1", "5.x.1", "5.1234.1", "", "5..1"] {
            assert!(EnhancedCode::parse(bad).is_none(), "{bad}");
        }
        let mismatched = table("[replies]\ncode = 450\n");
        assert!(!mismatched.reply(Reason::BareIp).classes_agree());
        assert!(Replies::default().iter().all(|(_, r)| r.classes_agree()));
        let unknown: Result<RepliesSection, _> =
            toml::from_str("[reasons.no_such_reason]\ncode = 550\n");
        let error = unknown.expect_err("unknown reason").to_string();
        assert!(
            error.contains("unknown reason \"no_such_reason\""),
            "{error}"
        );
    }
}
