//! The configuration file: its `[policy]` and `[dns]` sections (the daemon's `[enforce]`,
//! `[reputation]` and `[lists]` are defined in `crate::config`), and the loader.
//!
//! Every section rejects unknown keys, and the file unknown sections; every value is
//! validated while it is read, so that an error names the file, the line and the key (from
//! toml's span information).

use std::{fmt, num::NonZeroU32, sync::Arc, time::Duration};

use helo_filter_common::{KernelConfig, MAX_SMTP_PORTS};
use serde::Deserialize;

use super::{
    Action, ControlSection, DenyAnswer, DnsSection, EnforceSection, FleetSection, KernelSection,
    ListsSection, MetricsSection, PolicySection, PostfixSection, Replies, RepliesSection,
    ReputationSection, StateSection, locate::locate,
};
use crate::{
    dns::{DnsBuildError, DnsClient, DnsObserver, DnsSettings},
    policy::{
        CheckTable, DenyList, Identity, PolicyEngine, PolicySettings, default_trusted_networks,
    },
};

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
    /// `[replies]`
    pub replies: RepliesSection,
    /// `[kernel]`
    pub kernel: KernelSection,
    /// `[control]`
    pub control: ControlSection,
    /// `[metrics]`
    pub metrics: MetricsSection,
    /// `[state]`
    pub state: StateSection,
    /// `[fleet]`
    pub fleet: FleetSection,
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
    /// A bad value given on the command line.
    #[error("{flag}: {message}")]
    Flag {
        /// The flag, e.g. `--smtp-port`.
        flag: String,
        /// What is wrong.
        message: String,
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
    /// Settings that are valid but risky or deprecated, one sentence each (`config check`
    /// prints them, the daemon and the policy service log them at start).
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = self.reputation.warnings();
        if !self.policy.deprecated_deny.is_empty() {
            warnings.push(
                "[policy] deny is deprecated: rename it deny_helo (HELO name patterns; \
                 [lists] deny holds source CIDRs)"
                    .to_owned(),
            );
        }
        warnings
    }

    /// Parses text (types and single values are checked here, ranges and cross-key rules by
    /// [`Loaded::validate`]); `file` names it in errors.
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
            deny: DenyList::new(p.helo_patterns().cloned().collect()),
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

    /// The kernel's run-time configuration: the SMTP ports and the `[enforce]` timings (the
    /// ports were checked by [`Loaded::validate`]: at most `MAX_SMTP_PORTS`). Monitor mode
    /// turns the gate off ([`KernelConfig::NO_GATE`]): nothing is held for a verdict.
    pub fn kernel_config(&self) -> KernelConfig {
        let (ports, enforce) = (&self.kernel.smtp_ports, &self.enforce);
        let mut config = KernelConfig {
            ports: [0; MAX_SMTP_PORTS],
            port_count: ports.len() as u32,
            gate_deadline_ms: match enforce.monitor {
                true => KernelConfig::NO_GATE,
                false => enforce.gate_deadline_ms,
            },
            heartbeat_timeout_ms: enforce.heartbeat_timeout_ms,
            options: 0,
        };
        if enforce.deny_answer == DenyAnswer::Rst {
            config.options |= KernelConfig::DENY_WITH_RST;
        }
        if enforce.enforced_action() == Action::Drop {
            config.options |= KernelConfig::DROP_MTA_PACKETS;
        }
        // Held segments are answered under `reply`, and re-injected on an accept.
        if enforce.enforced_action() == Action::Reply || enforce.reinjects() {
            config.options |= KernelConfig::REPORT_HELD;
        }
        config.ports[..ports.len()].copy_from_slice(ports);
        config
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

    /// The reply table: `[replies]`, with the old `[postfix]` names of its defaults.
    pub fn replies(&self) -> Replies {
        Replies::new(&self.replies, &self.postfix)
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

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::{
        config::{HostName, Loaded},
        policy::{Bundle, CheckMode, Note, Reason},
    };

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
        let f = Loaded::read(&path)
            .and_then(Loaded::validate)
            .unwrap_or_else(|e| panic!("{e}"));
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
        assert_eq!(s.deny.len(), 3, "the old name `deny` is still read");
        assert!(
            f.warnings()
                .iter()
                .any(|w| w.contains("rename it deny_helo")),
            "{:?}",
            f.warnings()
        );
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
            (
                "[fleet]\nredis = \"redis://:secret@redis.example.org\"\n",
                2,
                "fleet.redis",
                "password_file",
            ),
            (
                "[fleet]\noperator = \"everywhere\"\n",
                2,
                "fleet.operator",
                "",
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
        let e = Loaded::read(Path::new("/nonexistent/helo-filter.toml")).unwrap_err();
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
