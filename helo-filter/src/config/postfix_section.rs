//! `[postfix]`: the policy service's listener, and the old names of the reply table's
//! defaults (see `replies`).

use std::{fmt, net::SocketAddr, path::PathBuf};

use serde::Deserialize;

use super::ReplyText;

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

/// The old `reject_code`: 5xx (a permanent reject).
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

/// `[postfix]`: the policy service's listener, and the old names of `[replies]` keys.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PostfixSection {
    /// Where `helo-filter run` serves policy requests (unset: it does not).
    pub listen: Option<ListenAddr>,
    /// Group given the Unix socket (mode 0660), so that Postfix's smtpd can connect.
    pub socket_group: String,
    /// Old name of `[replies] code`.
    pub reject_code: Option<RejectCode>,
    /// Old name of `[replies] enhanced` and `text` together (`5.7.1 Access denied`).
    pub reject_text: Option<ReplyText>,
    /// Old name of `[replies.reasons.dns_tempfail] enhanced` and `text` together.
    pub defer_text: Option<ReplyText>,
}

impl Default for PostfixSection {
    fn default() -> Self {
        PostfixSection {
            listen: None,
            socket_group: "postfix".to_owned(),
            reject_code: None,
            reject_text: None,
            defer_text: None,
        }
    }
}
