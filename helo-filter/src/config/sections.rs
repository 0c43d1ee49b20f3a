//! The daemon's own sections of the configuration file: `[enforce]`, `[reputation]`,
//! `[lists]`, `[kernel]`, `[control]`, `[metrics]` and `[state]` (the policy engine's
//! `[policy]` and `[dns]` are in `policy_sections`, `[postfix]` in `postfix_section`).

use std::{net::SocketAddr, num::NonZeroU64, path::PathBuf};

use helo_filter_common::KernelConfig;
use ipnet::IpNet;
use serde::Deserialize;

use crate::{
    config::{ReputationWeights, duration},
    kernel::XdpModeChoice,
};

/// What is done about a rejected session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// The client reads `550 5.7.1 Access denied - bogus HELO (<reason>)` (the reason's
    /// `[replies]` entry) in answer to its next command, then the connection ends; the MTA
    /// is freed (on an MX its socket is destroyed once it has answered the HELO, at most
    /// 1 s after the verdict; in a gateway it is sent a RST).
    Reply,
    /// The server-side socket is destroyed; the client gets a RST.
    Rst,
    /// The server-side socket is destroyed; the client gets silence.
    Drop,
    /// Monitor mode: nothing is done.
    #[value(skip)]
    #[serde(skip)]
    Monitor,
}

impl Action {
    pub const ALL: [Action; 4] = [Action::Reply, Action::Rst, Action::Drop, Action::Monitor];

    /// The `action` label of `helo_filter_actions_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Reply => "reply",
            Action::Rst => "rst",
            Action::Drop => "drop",
            Action::Monitor => "monitor",
        }
    }
}

/// How a denied source's SYN is answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DenyAnswer {
    /// Silence: the client's connect times out.
    Drop,
    /// A RST: the client's connect is refused at once.
    Rst,
}

/// Where the filter sits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Deployment {
    /// The MTA runs on this host.
    Mx,
    /// This host forwards SMTP traffic to MTAs elsewhere.
    Gateway,
}

impl Deployment {
    pub fn as_str(self) -> &'static str {
        match self {
            Deployment::Mx => "mx",
            Deployment::Gateway => "gateway",
        }
    }
}

/// `[enforce]`: where the filter sits and what it does.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EnforceSection {
    pub deployment: Deployment,
    pub action: Action,
    pub monitor: bool,
    pub deny_answer: DenyAnswer,
    #[serde(deserialize_with = "duration::millis")]
    pub gate_deadline_ms: u32,
    #[serde(deserialize_with = "duration::millis")]
    pub heartbeat_timeout_ms: u32,
    /// The known-good cache: a source whose last this many sessions were accepted is no
    /// longer gated (0: off).
    pub known_good_after: u32,
    /// How long a source stays known-good after its last accepted session.
    #[serde(deserialize_with = "duration::secs")]
    pub known_good_ttl_secs: u64,
    /// Whether an accepted flow's segment that the gate held is handed to the MTA at the
    /// verdict (re-injected) rather than left to the client's retransmission.
    pub reinject_held: bool,
}

impl EnforceSection {
    /// The action enforced: `monitor` enforces nothing, whatever `action` says.
    pub fn enforced_action(&self) -> Action {
        if self.monitor {
            Action::Monitor
        } else {
            self.action
        }
    }

    /// Whether held segments are re-injected: the gate holds nothing in monitor mode.
    pub fn reinjects(&self) -> bool {
        self.reinject_held && self.enforced_action() != Action::Monitor
    }
}

impl Default for EnforceSection {
    fn default() -> Self {
        EnforceSection {
            deployment: Deployment::Mx,
            action: Action::Reply,
            monitor: false,
            deny_answer: DenyAnswer::Drop,
            gate_deadline_ms: KernelConfig::DEFAULT_GATE_DEADLINE_MS,
            heartbeat_timeout_ms: KernelConfig::DEFAULT_HEARTBEAT_TIMEOUT_MS,
            known_good_after: 0,
            known_good_ttl_secs: 86_400,
            reinject_held: true,
        }
    }
}

/// `[reputation]`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReputationSection {
    pub threshold: f64,
    #[serde(deserialize_with = "duration::secs")]
    pub half_life_secs: u64,
    #[serde(deserialize_with = "duration::secs")]
    pub deny_ttl_secs: u64,
    pub max_denied: usize,
    /// What a reject adds to its source's score, unless its primary reason has a weight of
    /// its own in `weights`.
    pub reject_weight: f64,
    /// Opt-in: what an accepted session adds per point of soft score (0: an accept counts as
    /// clean whatever its soft score, as the spec says; above 0 it can deny legitimate
    /// relays, see `warnings`).
    pub soft_score_weight: f64,
    /// Under action `reply`, the fraction of its weight a reject counts: a sender that
    /// stops after the 550 keeps hearing it (it is not SYN-dropped after a few messages, its
    /// later mail then deferred, not bounced), while one that floods is still denied.
    pub reply_weight: f64,
    pub weights: ReputationWeights,
}

impl Default for ReputationSection {
    fn default() -> Self {
        ReputationSection {
            threshold: 5.0,
            half_life_secs: 3600,
            deny_ttl_secs: 3600,
            max_denied: 10_000,
            reject_weight: 2.0,
            soft_score_weight: 0.0,
            reply_weight: 0.25,
            weights: ReputationWeights::default(),
        }
    }
}

impl ReputationSection {
    /// Settings that are valid but risky, one sentence each (`config check` prints them,
    /// the daemon logs them at start).
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        if self.soft_score_weight > 0.0 {
            warnings.push(format!(
                "[reputation] soft_score_weight = {}: accepted sessions with a soft score \
                 (e.g. a HELO that resolves to another address) raise their source's \
                 reputation and can get a legitimate relay denied (its SYNs dropped); \
                 RFC 5321 4.1.4 forbids refusing mail on that basis",
                self.soft_score_weight
            ));
        }
        warnings
    }
}

/// `[lists]`: operator entries, CIDRs.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListsSection {
    /// Left alone: no capture, no gate, trusted by the policy.
    pub allow: Vec<IpNet>,
    /// SYNs to the SMTP ports dropped (or answered with a RST), no expiry.
    pub deny: Vec<IpNet>,
}

/// `[kernel]`: where and how the program is attached.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KernelSection {
    /// Interfaces to attach to (`--iface` flags replace them).
    pub interfaces: Vec<String>,
    /// TCP ports the MTA listens on, at most 8.
    pub smtp_ports: Vec<u16>,
    pub xdp_mode: XdpModeChoice,
    /// Bytes of the ring buffer that carries captured segments to the daemon: a power of two,
    /// at least a page. Changing it needs `helo-filter detach` (the buffer is pinned).
    pub ringbuf_bytes: u32,
}

impl Default for KernelSection {
    fn default() -> Self {
        KernelSection {
            interfaces: Vec::new(),
            smtp_ports: vec![25],
            xdp_mode: XdpModeChoice::Auto,
            ringbuf_bytes: helo_filter_common::maps::EVENTS_DEFAULT_BYTES,
        }
    }
}

/// Where the daemon listens for the operator, and the CLI looks for it.
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/helo-filter/control.sock";

/// `[control]`: the operator's control socket.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControlSection {
    pub socket: PathBuf,
}

impl Default for ControlSection {
    fn default() -> Self {
        ControlSection {
            socket: PathBuf::from(DEFAULT_CONTROL_SOCKET),
        }
    }
}

/// `[metrics]`: the Prometheus endpoint.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSection {
    pub listen: SocketAddr,
}

impl Default for MetricsSection {
    fn default() -> Self {
        MetricsSection {
            listen: SocketAddr::from(([127, 0, 0, 1], 9725)),
        }
    }
}

/// `[state]`: what outlives the daemon.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StateSection {
    /// Lists and reputation snapshots.
    pub dir: PathBuf,
    /// Where the kernel maps and links are pinned (on a BPF file system).
    pub bpffs_dir: PathBuf,
    /// Seconds between reputation snapshots (also written at every denial and at exit).
    #[serde(deserialize_with = "duration::secs")]
    pub snapshot_interval_secs: NonZeroU64,
}

impl Default for StateSection {
    fn default() -> Self {
        StateSection {
            dir: PathBuf::from("/var/lib/helo-filter"),
            bpffs_dir: PathBuf::from("/sys/fs/bpf/helo-filter"),
            snapshot_interval_secs: NonZeroU64::new(60).expect("nonzero"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{config::PolicyFile, pipeline::reputation::ReputationSettings, policy::Reason};

    #[test]
    fn the_daemon_sections_parse() {
        let text = "[enforce]\ndeployment = \"gateway\"\naction = \"drop\"\ndeny_answer = \"rst\"\n\
                    gate_deadline_ms = 800\n[reputation]\nthreshold = 3.5\ndeny_ttl_secs = 60\n\
                    [reputation.weights]\nno_helo = 4.5\n\
                    [lists]\nallow = [\"192.0.2.0/24\"]\ndeny = [\"2001:db8:bad::/48\"]\n";
        let file = PolicyFile::parse(text, "t.toml").expect("a valid file");
        assert_eq!(file.enforce.deployment, Deployment::Gateway);
        assert_eq!(file.enforce.action, Action::Drop);
        assert_eq!(file.enforce.gate_deadline_ms, 800);
        assert_eq!(
            file.enforce.heartbeat_timeout_ms,
            KernelConfig::DEFAULT_HEARTBEAT_TIMEOUT_MS
        );
        let settings = ReputationSettings::from(&file.reputation);
        assert_eq!(settings.threshold, 3.5);
        assert_eq!(settings.deny_ttl, Duration::from_secs(60));
        assert_eq!(settings.reason_weights.get(&Reason::NoHelo), Some(&4.5));
        assert_eq!(settings.reason_weights.get(&Reason::BareIp), None);
        assert_eq!(settings.soft_score_weight, 0.0, "off unless set");
        assert!(file.reputation.warnings().is_empty());
        assert_eq!(file.lists.allow, ["192.0.2.0/24".parse::<IpNet>().unwrap()]);
        let mut file = PolicyFile {
            kernel: KernelSection {
                smtp_ports: vec![25, 587],
                ..KernelSection::default()
            },
            ..file
        };
        let kernel = file.kernel_config();
        assert_eq!(
            (kernel.port_count, kernel.options, kernel.gate_deadline_ms),
            (
                2,
                KernelConfig::DENY_WITH_RST
                    | KernelConfig::DROP_MTA_PACKETS
                    | KernelConfig::REPORT_HELD,
                800
            ),
            "held segments are reported to be re-injected"
        );
        file.enforce.reinject_held = false;
        assert_eq!(
            file.kernel_config().options,
            KernelConfig::DENY_WITH_RST | KernelConfig::DROP_MTA_PACKETS
        );
        let default = PolicyFile::default();
        assert_eq!(
            default.kernel_config().options,
            KernelConfig::REPORT_HELD,
            "under `reply`, the default, held segments are reported for the answer"
        );
        let mut monitor = default;
        monitor.enforce.monitor = true;
        assert_eq!(monitor.kernel_config().options, 0);
    }

    #[test]
    fn bad_daemon_settings_are_located_errors() {
        let cases = [
            (
                "[enforce]\ndeployment = \"router\"\n",
                "t.toml:2:",
                "enforce.deployment",
            ),
            (
                "[enforce]\naction = \"monitor\"\n",
                "t.toml:2:",
                "enforce.action",
            ),
            (
                "[reputation]\nthreshhold = 2\n",
                "t.toml:2:",
                "reputation.threshhold",
            ),
            (
                "[lists]\nallow = [\"10.0.0.0/33\"]\n",
                "t.toml:2:",
                "lists.allow",
            ),
            (
                "[enforcement]\nmonitor = true\n",
                "t.toml:1:",
                "enforcement",
            ),
        ];
        for (text, location, key) in cases {
            let error = PolicyFile::parse(text, "t.toml")
                .expect_err(text)
                .to_string();
            assert!(error.starts_with(location), "{text:?}: {error}");
            assert!(error.contains(key), "{text:?}: {error}");
        }
    }

    #[test]
    fn counting_accepted_soft_scores_is_an_opt_in_with_a_warning() {
        let text = "[reputation]\nsoft_score_weight = 0.5\n";
        let file = PolicyFile::parse(text, "t.toml").expect("a valid file");
        let settings = ReputationSettings::from(&file.reputation);
        assert_eq!(settings.soft_score_weight, 0.5);
        let warnings = file.reputation.warnings();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("soft_score_weight"), "{warnings:?}");
        assert!(warnings[0].contains("legitimate"), "{warnings:?}");
    }
}
