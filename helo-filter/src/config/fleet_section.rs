//! `[fleet]`: the MX appliances that share their denials through one Redis (docs/fleet.md).
//! Off unless `redis` is set. The password is read from `password_file`, never written in
//! this file, which is world-readable.

use std::path::PathBuf;

use serde::Deserialize;

/// Where the fleet's Redis is: a `redis://` or `rediss://` (TLS) URL without a password,
/// `redis://HOST:PORT` (an IPv6 host in brackets).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedisUrl(pub String);

impl std::str::FromStr for RedisUrl {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let Some(rest) = s
            .strip_prefix("redis://")
            .or_else(|| s.strip_prefix("rediss://"))
        else {
            return Err(format!(
                "{s:?}: expected redis://HOST[:PORT] or rediss://HOST[:PORT]"
            ));
        };
        let authority = rest.split('/').next().unwrap_or_default();
        if authority.is_empty() {
            return Err(format!("{s:?}: no host"));
        }
        if authority.contains('@') {
            return Err(format!(
                "{s:?}: no user or password in the URL (the configuration file is \
                 world-readable): set [fleet] user and password_file"
            ));
        }
        if rest.contains('/') && !rest.ends_with('/') {
            return Err(format!(
                "{s:?}: no database in the URL: set [fleet] database"
            ));
        }
        Ok(RedisUrl(s.trim_end_matches('/').to_owned()))
    }
}

impl<'de> Deserialize<'de> for RedisUrl {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// Whether a kind of denial is shared with the fleet or kept on this member.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    Shared,
    Local,
}

/// `[fleet]`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FleetSection {
    /// The fleet's Redis; none: this appliance is no member of a fleet.
    pub redis: Option<RedisUrl>,
    /// The Redis ACL user (none: the default user).
    pub user: Option<String>,
    /// A file holding the password on its first line (none: no AUTH).
    pub password_file: Option<PathBuf>,
    /// The Redis database number.
    pub database: u32,
    /// Names the fleet: every key and channel starts with it, so fleets can share a Redis.
    pub prefix: String,
    /// This member's name (none: the host name).
    pub name: Option<String>,
    /// Reputation denials: shared by default (a bot denied on one MX is denied on all).
    pub reputation: Scope,
    /// Operator deny entries: local by default; `deny add --fleet` shares one.
    pub operator: Scope,
    /// Fleet denials held here at most; the earliest to expire are let go first.
    pub max_denied: usize,
}

impl Default for FleetSection {
    fn default() -> Self {
        FleetSection {
            redis: None,
            user: None,
            password_file: None,
            database: 0,
            prefix: "helo-filter".to_owned(),
            name: None,
            reputation: Scope::Shared,
            operator: Scope::Local,
            max_denied: 10_000,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_a_host_and_nothing_secret() {
        for good in [
            "redis://127.0.0.1:6379",
            "rediss://redis.example.org",
            "redis://[2001:db8:f1ee::1]:6379/",
        ] {
            assert!(good.parse::<RedisUrl>().is_ok(), "{good}");
        }
        for (bad, why) in [
            ("http://redis.example.org", "expected redis://"),
            ("redis://", "no host"),
            ("redis://:secret@redis.example.org", "password_file"),
            ("redis://redis.example.org/2", "[fleet] database"),
        ] {
            let error = bad.parse::<RedisUrl>().unwrap_err();
            assert!(error.contains(why), "{bad}: {error}");
        }
    }
}
