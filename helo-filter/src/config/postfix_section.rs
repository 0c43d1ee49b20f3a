//! `[postfix]`: the policy service's listener, and the replies that both it and action
//! `reply` give a rejected client.

use std::{fmt, net::SocketAddr, path::PathBuf};

use serde::Deserialize;

use crate::policy::Reason;

/// Where the service listens: `unix:PATH` or `inet:HOST:PORT`, as in Postfix's
/// `check_policy_service`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListenAddr {
    Unix(PathBuf),
    Inet(SocketAddr),
}

impl std::str::FromStr for ListenAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(path) = s.strip_prefix("unix:") {
            if !path.starts_with('/') {
                return Err(format!("{s:?}: the socket path must be absolute"));
            }
            Ok(ListenAddr::Unix(PathBuf::from(path)))
        } else if let Some(addr) = s.strip_prefix("inet:") {
            addr.parse()
                .map(ListenAddr::Inet)
                .map_err(|_| format!("{s:?}: expected inet:IP:PORT (an IPv6 address in brackets)"))
        } else {
            Err(format!("{s:?}: expected unix:PATH or inet:IP:PORT"))
        }
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Unix(path) => write!(f, "unix:{}", path.display()),
            ListenAddr::Inet(addr) => write!(f, "inet:{addr}"),
        }
    }
}

impl<'de> Deserialize<'de> for ListenAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// A reply's status code: 5xx (a permanent reject).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RejectCode(pub u16);

impl<'de> Deserialize<'de> for RejectCode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let code = u16::deserialize(d)?;
        if !(500..=599).contains(&code) {
            return Err(serde::de::Error::custom(format!(
                "{code}: a reject code is 5xx"
            )));
        }
        Ok(RejectCode(code))
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

/// `[postfix]`: the policy service's listener and replies.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PostfixSection {
    /// Where `helo-filter run` serves policy requests (unset: it does not).
    pub listen: Option<ListenAddr>,
    /// Group given the Unix socket (mode 0660), so that Postfix's smtpd can connect.
    pub socket_group: String,
    /// The reject's code; the reply is `CODE TEXT (reason)`.
    pub reject_code: RejectCode,
    pub reject_text: ReplyText,
    /// Under a fail-closed DNS policy, a DNS failure answers
    /// `DEFER_IF_PERMIT TEXT (dns_tempfail)`.
    pub defer_text: ReplyText,
}

impl Default for PostfixSection {
    fn default() -> Self {
        PostfixSection {
            listen: None,
            socket_group: "postfix".to_owned(),
            reject_code: RejectCode(550),
            reject_text: ReplyText("5.7.1 Access denied - bogus HELO".to_owned()),
            defer_text: ReplyText(
                "4.7.1 HELO check failed temporarily - try again later".to_owned(),
            ),
        }
    }
}

impl PostfixSection {
    /// The reply to a session rejected for `reason`, `CODE TEXT (reason)`: what the policy
    /// service answers Postfix, and what action `reply` answers the client itself.
    pub fn reject_reply(&self, reason: Reason) -> String {
        format!(
            "{} {} ({})",
            self.reject_code.0,
            self.reject_text.0,
            reason.as_str()
        )
    }

    /// The SMTP reply action `reply` gives a session rejected for `reason`: the reject, or
    /// for a DNS failure under a fail-closed policy a temporary `451` with the defer text,
    /// as the policy service defers it: the sender tries again later.
    pub fn smtp_reply(&self, reason: Reason) -> String {
        match reason {
            Reason::DnsTempfail => format!("451 {} ({})", self.defer_text.0, reason.as_str()),
            _ => self.reject_reply(reason),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dns_failure_is_answered_for_later_and_every_other_reason_with_the_seeds_reject() {
        let replies = PostfixSection::default();
        assert_eq!(
            replies.smtp_reply(Reason::Localhost),
            "550 5.7.1 Access denied - bogus HELO (localhost)"
        );
        assert_eq!(
            replies.smtp_reply(Reason::DnsTempfail),
            "451 4.7.1 HELO check failed temporarily - try again later (dns_tempfail)"
        );
    }
}
