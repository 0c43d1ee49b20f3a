//! The configuration file: its `[policy]` and `[dns]` sections (the daemon's `[enforce]`,
//! `[reputation]` and `[lists]` are defined in `crate::config`), and the loader.
//!
//! Every section rejects unknown keys, and the file unknown sections; every value is
//! validated while it is read, so that an error names the file, the line and the key (from
//! toml's span information).

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::num::{NonZeroU32, NonZeroU64, NonZeroUsize};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

use crate::config::{
    ControlSection, EnforceSection, KernelSection, ListsSection, MetricsSection, ReputationSection,
    StateSection,
};
use crate::dns::{DnsBuildError, DnsClient, DnsObserver, DnsSettings};
use crate::policy::rfc5321;
use crate::policy::{
    Bundle, CheckMode, CheckTable, DenyList, DenyPattern, Identity, PolicyEngine, PolicySettings,
    Reason, default_trusted_networks,
};
use crate::postfix::PostfixSection;

/// A host or domain name, validated as an RFC 5321 domain, lower-cased, no trailing dot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostName(pub String);

impl<'de> Deserialize<'de> for HostName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        HostName::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl HostName {
    /// Validates a name.
    pub fn parse(s: &str) -> Result<HostName, String> {
        rfc5321::parse_domain(s.trim())
            .map(|d| HostName(d.as_str().to_string()))
            .map_err(|e| format!("invalid name {s:?}: {e}"))
    }
}

macro_rules! per_check {
    ($(#[$meta:meta])* $name:ident, $t:ty) => {
        $(#[$meta])*
        #[derive(Clone, Debug, Default, PartialEq, Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(missing_docs)]
        pub struct $name {
            pub no_helo: Option<$t>,
            pub pipelining: Option<$t>,
            pub bare_ip: Option<$t>,
            pub syntax: Option<$t>,
            pub not_fqdn: Option<$t>,
            pub localhost: Option<$t>,
            pub bad_literal_ip: Option<$t>,
            pub impersonation: Option<$t>,
            pub literal_not_allowed: Option<$t>,
            pub denylisted: Option<$t>,
            pub invalid_tld: Option<$t>,
            pub no_dns: Option<$t>,
            pub literal_mismatch: Option<$t>,
            pub dynamic: Option<$t>,
            pub dns_mismatch: Option<$t>,
            pub rdns_mismatch: Option<$t>,
        }

        impl $name {
            /// Every configurable check with its value, if set.
            pub fn entries(&self) -> [(Reason, Option<$t>); 16] {
                [
                    (Reason::NoHelo, self.no_helo),
                    (Reason::Pipelining, self.pipelining),
                    (Reason::BareIp, self.bare_ip),
                    (Reason::Syntax, self.syntax),
                    (Reason::NotFqdn, self.not_fqdn),
                    (Reason::Localhost, self.localhost),
                    (Reason::BadLiteralIp, self.bad_literal_ip),
                    (Reason::Impersonation, self.impersonation),
                    (Reason::LiteralNotAllowed, self.literal_not_allowed),
                    (Reason::Denylisted, self.denylisted),
                    (Reason::InvalidTld, self.invalid_tld),
                    (Reason::NoDns, self.no_dns),
                    (Reason::LiteralMismatch, self.literal_mismatch),
                    (Reason::Dynamic, self.dynamic),
                    (Reason::DnsMismatch, self.dns_mismatch),
                    (Reason::RdnsMismatch, self.rdns_mismatch),
                ]
            }
        }
    };
}

per_check!(
    /// `[policy.checks]`: a mode (`off`, `score`, `reject`) per check, over the bundle's.
    CheckModes,
    CheckMode
);
per_check!(
    /// `[policy.weights]`: a score weight per check, over the defaults.
    CheckWeights,
    u32
);
per_check!(
    /// `[reputation.weights]`: what a reject adds to its source's score, per primary reason,
    /// over `[reputation] reject_weight`.
    ReputationWeights,
    f64
);

/// The `[policy]` section.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicySection {
    /// `lenient`, `standard` or `strict`.
    pub bundle: Bundle,
    /// Our host names (impersonation).
    pub our_names: Vec<HostName>,
    /// Our domains (impersonation: the domain and every name under it).
    pub our_domains: Vec<HostName>,
    /// Our addresses (impersonation by literal).
    pub our_addrs: Vec<IpAddr>,
    /// Clients accepted without checks; unset means loopback only.
    pub trusted_networks: Option<Vec<IpNet>>,
    /// Deny patterns: `name`, `*.suffix`, `/regex/`.
    pub deny: Vec<DenyPattern>,
    /// Reject when the score reaches this (unset: never by score alone).
    pub score_threshold: Option<NonZeroU32>,
    /// Per-check modes.
    pub checks: CheckModes,
    /// Per-check weights.
    pub weights: CheckWeights,
}

impl Default for PolicySection {
    fn default() -> Self {
        PolicySection {
            bundle: Bundle::Standard,
            our_names: Vec::new(),
            our_domains: Vec::new(),
            our_addrs: Vec::new(),
            trusted_networks: None,
            deny: Vec::new(),
            score_threshold: None,
            checks: CheckModes::default(),
            weights: CheckWeights::default(),
        }
    }
}

/// The `[dns]` section.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DnsSection {
    /// Run the DNS checks at all.
    pub enabled: bool,
    /// `ADDR:PORT` of the servers to ask; empty: the system configuration.
    pub servers: Vec<SocketAddr>,
    /// Deadline of one lookup in milliseconds.
    pub deadline_ms: NonZeroU64,
    /// Cap on cached answers (0 disables the cache).
    pub cache_entries: usize,
    /// TTL in seconds of a negative answer without an SOA.
    pub negative_ttl_secs: u64,
    /// Upper bound in seconds on any cached TTL.
    pub max_ttl_secs: u64,
    /// Bound on DNS queries in flight.
    pub max_in_flight: NonZeroUsize,
    /// A temporary DNS failure rejects (`dns_tempfail`) instead of being ignored.
    pub fail_closed: bool,
}

impl Default for DnsSection {
    fn default() -> Self {
        let d = DnsSettings::default();
        DnsSection {
            enabled: true,
            servers: Vec::new(),
            deadline_ms: NonZeroU64::new(d.deadline.as_millis() as u64).expect("nonzero"),
            cache_entries: d.cache_entries,
            negative_ttl_secs: d.negative_ttl.as_secs(),
            max_ttl_secs: d.max_ttl.as_secs(),
            max_in_flight: NonZeroUsize::new(d.max_in_flight).expect("nonzero"),
            fail_closed: false,
        }
    }
}

/// The configuration file: the policy engine's sections, which this module owns, and the
/// daemon's (`crate::config`). An unknown section is an error like an unknown key.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PolicyFile {
    /// `[policy]`
    pub policy: PolicySection,
    /// `[dns]`
    pub dns: DnsSection,
    /// `[enforce]`
    pub enforce: EnforceSection,
    /// `[reputation]`
    pub reputation: ReputationSection,
    /// `[lists]`
    pub lists: ListsSection,
    /// `[postfix]`
    pub postfix: PostfixSection,
    /// `[kernel]`
    pub kernel: KernelSection,
    /// `[control]`
    pub control: ControlSection,
    /// `[metrics]`
    pub metrics: MetricsSection,
    /// `[state]`
    pub state: StateSection,
}

/// A configuration error, located when possible.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{file}: cannot read: {source}")]
    Io {
        /// The file.
        file: String,
        /// The reason.
        source: std::io::Error,
    },
    /// A bad key or value.
    #[error("{}", Located(.file, .line, .column, .key, .message))]
    Invalid {
        /// The file.
        file: String,
        /// 1-based line, 0 when unknown.
        line: usize,
        /// 1-based column, 0 when unknown.
        column: usize,
        /// The dotted key, e.g. `policy.checks.syntax`, empty when unknown.
        key: String,
        /// What is wrong.
        message: String,
    },
}

struct Located<'a>(&'a String, &'a usize, &'a usize, &'a String, &'a String);

impl fmt::Display for Located<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Located(file, line, column, key, message) = *self;
        write!(f, "{file}")?;
        if *line > 0 {
            write!(f, ":{line}:{column}")?;
        }
        if !key.is_empty() {
            write!(f, ": key `{key}`")?;
        }
        write!(f, ": {message}")
    }
}

impl PolicyFile {
    /// Reads and validates a file.
    pub fn load(path: &Path) -> Result<PolicyFile, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            file: file.clone(),
            source,
        })?;
        PolicyFile::parse(&text, &file)
    }

    /// Parses and validates text; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<PolicyFile, ConfigError> {
        toml::from_str::<PolicyFile>(text).map_err(|e| locate(text, file, &e))
    }

    /// The engine settings.
    pub fn settings(&self) -> PolicySettings {
        let p = &self.policy;
        let mut table = CheckTable::from_bundle(p.bundle);
        for (reason, mode) in p.checks.entries() {
            if let Some(mode) = mode {
                table.set_mode(reason, mode);
            }
        }
        for (reason, weight) in p.weights.entries() {
            if let Some(weight) = weight {
                table.set_weight(reason, weight);
            }
        }
        PolicySettings {
            table,
            identity: Identity {
                names: p.our_names.iter().map(|n| n.0.clone()).collect(),
                domains: p.our_domains.iter().map(|n| n.0.clone()).collect(),
                addrs: p.our_addrs.clone(),
            },
            deny: DenyList::new(p.deny.clone()),
            // Allow-listed sources are trusted too, whatever path asks the engine.
            trusted_networks: p
                .trusted_networks
                .clone()
                .unwrap_or_else(default_trusted_networks)
                .into_iter()
                .chain(self.lists.allow.iter().copied())
                .collect(),
            score_threshold: p.score_threshold.map(NonZeroU32::get),
            dns_fail_closed: self.dns.fail_closed,
        }
    }

    /// The DNS client settings.
    pub fn dns_settings(&self) -> DnsSettings {
        let d = &self.dns;
        DnsSettings {
            servers: d.servers.clone(),
            deadline: Duration::from_millis(d.deadline_ms.get()),
            cache_entries: d.cache_entries,
            negative_ttl: Duration::from_secs(d.negative_ttl_secs),
            max_ttl: Duration::from_secs(d.max_ttl_secs),
            max_in_flight: d.max_in_flight.get(),
        }
    }

    /// Builds the engine; with `[dns] enabled = false` it runs offline. `observer` sees the DNS
    /// client's cache and wire lookups (the daemon's metrics). Must be called inside a tokio
    /// runtime when DNS is enabled.
    pub fn build_engine(
        &self,
        observer: Option<Arc<dyn DnsObserver>>,
    ) -> Result<PolicyEngine, DnsBuildError> {
        Ok(PolicyEngine::new(
            self.settings(),
            self.dns_client(observer)?,
        ))
    }

    /// The DNS client `[dns]` asks for (none with `enabled = false`).
    pub fn dns_client(
        &self,
        observer: Option<Arc<dyn DnsObserver>>,
    ) -> Result<Option<DnsClient>, DnsBuildError> {
        if self.dns.enabled {
            DnsClient::with_observer(self.dns_settings(), observer).map(Some)
        } else {
            Ok(None)
        }
    }
}

/// Turns a toml error into a located one: line and column from the span, the dotted key from the
/// nearest table header and the `key =` at or above the error.
fn locate(text: &str, file: &str, e: &toml::de::Error) -> ConfigError {
    let message = e.message().trim().to_string();
    let Some(span) = e.span() else {
        return ConfigError::Invalid {
            file: file.to_string(),
            line: 0,
            column: 0,
            key: String::new(),
            message,
        };
    };
    let start = span.start.min(text.len());
    let before = &text[..start];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = text[line_start..start].chars().count() + 1;
    let lines: Vec<&str> = text.lines().collect();
    let mut key = String::new();
    let mut table = String::new();
    for idx in (0..line.min(lines.len())).rev() {
        let l = strip_comment(lines[idx]).trim();
        if l.starts_with('[') {
            table = l.trim_matches(|c| c == '[' || c == ']').trim().to_string();
            break;
        }
        if key.is_empty() {
            if idx + 1 == line && !l.contains('=') {
                // The span is a key itself (an unknown field).
                let snippet = &text[start..span.end.min(text.len())];
                key = snippet.trim().trim_matches('"').to_string();
            } else if let Some((k, _)) = l.split_once('=') {
                key = k.trim().trim_matches('"').to_string();
            }
        }
    }
    let dotted = match (table.is_empty(), key.is_empty()) {
        (true, _) => key,
        (false, true) => table,
        (false, false) => format!("{table}.{key}"),
    };
    ConfigError::Invalid {
        file: file.to_string(),
        line,
        column,
        key: dotted,
        message,
    }
}

fn strip_comment(line: &str) -> &str {
    // Good enough for locating keys: a '#' outside quotes starts a comment.
    let mut in_str = false;
    for (i, c) in line.char_indices() {
        match c {
            '"' | '\'' => in_str = !in_str,
            '#' if !in_str => return &line[..i],
            _ => {}
        }
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Note;

    fn err(text: &str) -> String {
        PolicyFile::parse(text, "bad.toml").unwrap_err().to_string()
    }

    #[test]
    fn empty_file_gives_the_defaults() {
        let f = PolicyFile::parse("", "empty.toml").unwrap();
        assert_eq!(f, PolicyFile::default());
        let s = f.settings();
        assert_eq!(s.table, CheckTable::from_bundle(Bundle::Standard));
        assert_eq!(s.trusted_networks, default_trusted_networks());
        assert!(!s.dns_fail_closed);
        let d = f.dns_settings();
        assert_eq!(d, DnsSettings::default());
    }

    #[test]
    fn the_example_file_parses_and_sets_every_key() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join("docs")
            .join("helo-filter.example.toml");
        let f = PolicyFile::load(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(f.policy.bundle, Bundle::Standard);
        assert_eq!(f.policy.our_names, [HostName("mx.example.org".into())]);
        assert!(f.policy.checks.entries().iter().all(|(_, m)| m.is_some()));
        assert!(f.policy.weights.entries().iter().all(|(_, w)| w.is_some()));
        assert_eq!(f.dns.deadline_ms.get(), 2000);
        // The documented values are the defaults.
        assert_eq!(
            f.settings().table,
            CheckTable::from_bundle(Bundle::Standard)
        );
        assert_eq!(f.dns_settings().negative_ttl, Duration::from_secs(60));
        assert_eq!(f.postfix, PostfixSection::default());
        assert_eq!(f.kernel, KernelSection::default());
        assert_eq!(f.control, ControlSection::default());
        assert_eq!(f.metrics, MetricsSection::default());
        assert_eq!(f.state, StateSection::default());
    }

    #[test]
    fn a_full_section_is_applied() {
        let text = r#"
[policy]
bundle = "strict"
our_names = ["MX.Example.ORG."]
our_domains = ["example.org"]
our_addrs = ["198.51.100.25", "2001:db8:25::25"]
trusted_networks = ["10.0.0.0/8"]
deny = ["bad.example.net", "*.spam.example", "/x\\d+\\.example\\.com/"]
score_threshold = 4

[policy.checks]
dynamic = "off"

[policy.weights]
dns_mismatch = 3

[dns]
servers = ["127.0.0.1:5353", "[::1]:53"]
deadline_ms = 500
fail_closed = true

[enforce]
monitor = true
"#;
        let f = PolicyFile::parse(text, "t.toml").unwrap();
        let s = f.settings();
        assert_eq!(s.table.mode(Reason::Dynamic), CheckMode::Off);
        assert_eq!(s.table.mode(Reason::LiteralNotAllowed), CheckMode::Reject);
        assert_eq!(s.table.weight(Reason::DnsMismatch), 3);
        assert_eq!(s.identity.names, ["mx.example.org"]);
        assert_eq!(s.deny.len(), 3);
        assert_eq!(s.score_threshold, Some(4));
        assert!(s.dns_fail_closed);
        let d = f.dns_settings();
        assert_eq!(d.servers.len(), 2);
        assert_eq!(d.deadline, Duration::from_millis(500));
    }

    #[test]
    fn unknown_keys_name_file_line_and_key() {
        let e = err("[policy]\nbundle = \"standard\"\nbundel = \"strict\"\n");
        assert!(e.starts_with("bad.toml:3:1: key `policy.bundel`"), "{e}");
        assert!(e.contains("unknown field"), "{e}");
        let e = err("[policy.checks]\nsyntax = \"reject\"\nsyntx = \"off\"\n");
        assert!(
            e.starts_with("bad.toml:3:1: key `policy.checks.syntx`"),
            "{e}"
        );
        let e = err("[dns]\ntimeout = 3\n");
        assert!(e.starts_with("bad.toml:2:1: key `dns.timeout`"), "{e}");
    }

    #[test]
    fn bad_values_name_file_line_and_key() {
        let cases = [
            (
                "[policy]\nbundle = \"paranoid\"\n",
                2,
                "policy.bundle",
                "paranoid",
            ),
            (
                "[policy.checks]\nsyntax = \"maybe\"\n",
                2,
                "policy.checks.syntax",
                "maybe",
            ),
            (
                "[policy]\nour_addrs = [\"198.51.100.300\"]\n",
                2,
                "policy.our_addrs",
                "address",
            ),
            (
                "[policy]\ntrusted_networks = [\"10.0.0.0/33\"]\n",
                2,
                "policy.trusted_networks",
                "",
            ),
            (
                "[policy]\ndeny = [\n  \"ok.example\",\n  \"/(/\",\n]\n",
                2,
                "policy.deny",
                "regex",
            ),
            (
                "[policy]\nour_names = [\"-bad.example\"]\n",
                2,
                "policy.our_names",
                "hyphen",
            ),
            (
                "[policy]\nscore_threshold = 0\n",
                2,
                "policy.score_threshold",
                "nonzero",
            ),
            (
                "[policy.weights]\ndynamic = -1\n",
                2,
                "policy.weights.dynamic",
                "",
            ),
            ("[dns]\nservers = [\"127.0.0.1\"]\n", 2, "dns.servers", ""),
            ("[dns]\ndeadline_ms = 0\n", 2, "dns.deadline_ms", "nonzero"),
            ("[dns]\nfail_closed = \"yes\"\n", 2, "dns.fail_closed", ""),
            ("[policy]\nbundle = \n", 2, "", ""),
            (
                "[postfix]\nreject_code = 450\n",
                2,
                "postfix.reject_code",
                "5xx",
            ),
            (
                "[postfix]\nreject_text = \"a\\nb\"\n",
                2,
                "postfix.reject_text",
                "one line",
            ),
            (
                "[postfix]\nlisten = \"tcp:1.2.3.4:5\"\n",
                2,
                "postfix.listen",
                "unix:PATH",
            ),
            (
                "[postfix]\nlisten = \"unix:relative.sock\"\n",
                2,
                "postfix.listen",
                "absolute",
            ),
        ];
        for (text, line, key, needle) in cases {
            let e = err(text);
            assert!(
                e.starts_with(&format!("bad.toml:{line}:")),
                "{text:?} -> {e}"
            );
            if !key.is_empty() {
                assert!(e.contains(&format!("key `{key}`")), "{text:?} -> {e}");
            }
            assert!(e.contains(needle), "{text:?} -> {e}");
        }
    }

    #[test]
    fn a_missing_file_is_an_io_error() {
        let e = PolicyFile::load(Path::new("/nonexistent/helo-filter.toml")).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("/nonexistent/helo-filter.toml: cannot read"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn dns_disabled_builds_an_offline_engine() {
        let f = PolicyFile::parse("[dns]\nenabled = false\n", "t.toml").unwrap();
        let e = f.build_engine(None).unwrap();
        let v = e
            .evaluate(&crate::policy::HeloInput::new(
                "mail.example.net",
                "203.0.113.10".parse().unwrap(),
            ))
            .await;
        assert!(v.has_note(Note::Offline));
    }
}
