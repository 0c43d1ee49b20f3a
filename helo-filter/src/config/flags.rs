//! The command-line flags that override the configuration file: `check`'s, `policy`'s and
//! `run`'s. Each flag given is recorded against the key it sets, so that a value the
//! validation refuses is reported against the flag, not the file.

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
};

use ipnet::IpNet;

use super::{
    Action, ConfigArgs, ConfigError, DenyAnswer, Deployment, HostName, ListenAddr, Loaded,
    PolicyFile, RedisUrl,
    duration::{self, Unit},
};
use crate::{
    kernel::XdpModeChoice,
    policy::{Bundle, DenyPattern},
};

/// Identity, DNS and policy options shared by `check`, `run` and `policy`.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct PolicyArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// DNS server to ask instead of the system's (repeatable).
    #[arg(long = "dns-server", value_name = "ADDR:PORT")]
    pub dns_server: Vec<SocketAddr>,
    /// Policy bundle, over the configuration file's.
    #[arg(long, value_enum, value_name = "BUNDLE")]
    pub policy: Option<Bundle>,
    /// One of our host names (repeatable; added to the configuration's).
    #[arg(long = "our-name", value_name = "NAME", value_parser = host_name)]
    pub our_name: Vec<HostName>,
    /// One of our domains (repeatable; added to the configuration's).
    #[arg(long = "our-domain", value_name = "DOMAIN", value_parser = host_name)]
    pub our_domain: Vec<HostName>,
    /// One of our addresses (repeatable; added to the configuration's).
    #[arg(long = "our-addr", value_name = "IP")]
    pub our_addr: Vec<IpAddr>,
    /// A HELO name to reject as `denylisted`: NAME, *.SUFFIX or /REGEX/ (repeatable; added
    /// to the configuration's `[policy] deny_helo`).
    #[arg(long = "deny-helo", value_name = "PATTERN", value_parser = deny_pattern)]
    pub deny_helo: Vec<DenyPattern>,
    /// The old name of --deny-helo (still read, with a warning).
    #[arg(long = "deny", value_name = "PATTERN", value_parser = deny_pattern, hide = true)]
    pub deprecated_deny: Vec<DenyPattern>,
}

fn host_name(s: &str) -> Result<HostName, String> {
    HostName::parse(s)
}

fn deny_pattern(s: &str) -> Result<DenyPattern, String> {
    DenyPattern::parse(s).map_err(|e| e.to_string())
}

impl PolicyArgs {
    /// Reads the configuration file (see [`ConfigArgs`]; or takes the defaults) and applies
    /// these options over it. Nothing is validated yet: see [`Loaded::validate`].
    pub fn load(&self) -> Result<Loaded, ConfigError> {
        let mut loaded = self.config.load()?;
        self.apply_to(&mut loaded);
        Ok(loaded)
    }

    fn apply_to(&self, loaded: &mut Loaded) {
        let (file, flags) = (&mut loaded.config, &mut loaded.flags);
        let p = &mut file.policy;
        flags.set("policy.bundle", "--policy", self.policy, &mut p.bundle);
        flags.extend(
            "policy.our_names",
            "--our-name",
            &self.our_name,
            &mut p.our_names,
        );
        flags.extend(
            "policy.our_domains",
            "--our-domain",
            &self.our_domain,
            &mut p.our_domains,
        );
        flags.extend(
            "policy.our_addrs",
            "--our-addr",
            &self.our_addr,
            &mut p.our_addrs,
        );
        flags.extend(
            "policy.deny_helo",
            "--deny-helo",
            &self.deny_helo,
            &mut p.deny_helo,
        );
        if !self.deprecated_deny.is_empty() {
            log::warn!("--deny is deprecated: use --deny-helo (a HELO name pattern)");
            flags.extend(
                "policy.deny_helo",
                "--deny",
                &self.deprecated_deny,
                &mut p.deny_helo,
            );
        }
        if !self.dns_server.is_empty() {
            flags.set(
                "dns.servers",
                "--dns-server",
                Some(self.dns_server.clone()),
                &mut file.dns.servers,
            );
            file.dns.enabled = true;
        }
    }
}

#[derive(Clone, Debug, clap::Args)]
pub struct RunArgs {
    // Every flag overrides the configuration file (whose defaults the flags show); the list
    // flags add to its lists.
    /// Interface to attach to (repeat for several) [default: the file's [kernel] interfaces].
    #[arg(long = "iface", value_name = "IFACE")]
    pub ifaces: Vec<String>,
    /// XDP attach mode [default: auto].
    #[arg(long, value_enum)]
    pub xdp_mode: Option<XdpModeChoice>,
    /// Where the Prometheus endpoint listens (path /metrics) [default: 127.0.0.1:9725].
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics_addr: Option<SocketAddr>,
    /// TCP port the MTA listens on (repeat for several, at most 8) [default: 25].
    #[arg(long = "smtp-port", value_name = "PORT")]
    pub smtp_ports: Vec<u16>,
    /// The operator's control socket [default: /run/helo-filter/control.sock].
    #[arg(long, value_name = "PATH")]
    pub control_socket: Option<PathBuf>,
    /// Lists and reputation snapshots [default: /var/lib/helo-filter].
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Where the kernel maps and links are pinned, on a BPF file system
    /// [default: /sys/fs/bpf/helo-filter].
    #[arg(long, value_name = "DIR")]
    pub bpffs_dir: Option<PathBuf>,
    /// Where the filter sits [default: mx].
    #[arg(long, value_enum)]
    pub deployment: Option<Deployment>,
    /// What to do with a rejected session (the MTA is freed in every case) [default: reply].
    #[arg(long, value_enum)]
    pub action: Option<Action>,
    /// How the SYN of a denied source (the deny list's, reputation's) is answered
    /// [default: drop].
    #[arg(long, value_enum)]
    pub deny_answer: Option<DenyAnswer>,
    /// Enforce nothing: count the actions that would have been taken.
    #[arg(long)]
    pub monitor: bool,
    /// How long the kernel holds a flow's further segments waiting for its verdict before
    /// letting them through (fail-open): milliseconds, or 500ms, 5s, 1m [default: 5s].
    #[arg(long, value_name = "DURATION", value_parser = duration::flag::<u32>(Unit::Millis))]
    pub gate_deadline_ms: Option<u32>,
    /// The known-good cache: a source whose last N sessions were accepted is no longer
    /// gated (its HELO still judged; a reject of it answered with a RST) [default: 0, off].
    #[arg(long, value_name = "N")]
    pub known_good_after: Option<u32>,
    /// Leave an accepted flow's segment that the gate held to the client's retransmission
    /// (≥ 200 ms) instead of handing it to the MTA at the verdict.
    #[arg(long)]
    pub no_reinject: bool,
    /// A daemon heartbeat older than this turns the gate off (the daemon is gone):
    /// milliseconds, or 500ms, 3s [default: 3s].
    #[arg(long, value_name = "DURATION", value_parser = duration::flag::<u32>(Unit::Millis))]
    pub heartbeat_timeout_ms: Option<u32>,
    /// A source (CIDR) the filter leaves alone: no capture, no gate, trusted by the policy
    /// (repeat for several; added to the file's).
    #[arg(long = "allow", value_name = "CIDR", value_parser = parse_net)]
    pub allow: Vec<IpNet>,
    /// A source (CIDR) whose SYNs to the SMTP ports are dropped, with no expiry (repeat for
    /// several; added to the file's).
    #[arg(long = "deny-source", value_name = "CIDR", value_parser = parse_net)]
    pub deny_sources: Vec<IpNet>,
    /// A source (IPv4 /32, IPv6 /64) is denied when its reputation score reaches this
    /// [default: 5].
    #[arg(long, value_name = "SCORE")]
    pub reputation_threshold: Option<f64>,
    /// Reputation scores halve in this time (seconds, or 90s, 15m, 12h, 1d, 1w)
    /// [default: 1h].
    #[arg(long, value_name = "DURATION", value_parser = duration::flag::<u64>(Unit::Secs))]
    pub reputation_half_life: Option<u64>,
    /// How long a source denied by its reputation stays denied (seconds, or 90s, 15m, 12h,
    /// 1d, 1w) [default: 1h].
    #[arg(long, value_name = "DURATION", value_parser = duration::flag::<u64>(Unit::Secs))]
    pub deny_ttl: Option<u64>,
    /// Sources denied by reputation at most; the lowest scores are let go first
    /// [default: 10000].
    #[arg(long, value_name = "N")]
    pub deny_max: Option<usize>,
    /// Also answer Postfix's policy delegation requests here: unix:PATH or inet:IP:PORT
    /// (over the file's `[postfix] listen`).
    #[arg(long, value_name = "ADDR")]
    pub policy_listen: Option<ListenAddr>,
    /// Join the fleet whose Redis is at URL: redis://HOST[:PORT] or rediss:// (over the
    /// file's `[fleet] redis`; the rest of `[fleet]` from the file).
    #[arg(long, value_name = "URL")]
    pub fleet_redis: Option<RedisUrl>,
    #[command(flatten)]
    pub policy: PolicyArgs,
}

/// A CIDR, or a bare address (a /32 or /128).
fn parse_net(s: &str) -> Result<IpNet, String> {
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{s:?} is neither an address nor a CIDR"))
}

impl RunArgs {
    /// Reads the configuration file (or the defaults), applies every flag over it and
    /// validates the result: what `run` starts with and what `reload` re-reads.
    pub fn configuration(&self) -> Result<PolicyFile, ConfigError> {
        let mut loaded = self.policy.load()?;
        self.apply_to(&mut loaded);
        loaded.validate()
    }

    /// Applies the flags given over the file's sections (a flag wins, lists add up, and a
    /// list flag replaces the file's list where it says so).
    fn apply_to(&self, loaded: &mut Loaded) {
        let (file, flags) = (&mut loaded.config, &mut loaded.flags);
        let kernel = &mut file.kernel;
        flags.set(
            "kernel.interfaces",
            "--iface",
            given(&self.ifaces),
            &mut kernel.interfaces,
        );
        flags.set(
            "kernel.smtp_ports",
            "--smtp-port",
            given(&self.smtp_ports),
            &mut kernel.smtp_ports,
        );
        flags.set(
            "kernel.xdp_mode",
            "--xdp-mode",
            self.xdp_mode,
            &mut kernel.xdp_mode,
        );
        flags.set(
            "metrics.listen",
            "--metrics-addr",
            self.metrics_addr,
            &mut file.metrics.listen,
        );
        flags.set(
            "control.socket",
            "--control-socket",
            self.control_socket.clone(),
            &mut file.control.socket,
        );
        flags.set(
            "state.dir",
            "--state-dir",
            self.state_dir.clone(),
            &mut file.state.dir,
        );
        flags.set(
            "state.bpffs_dir",
            "--bpffs-dir",
            self.bpffs_dir.clone(),
            &mut file.state.bpffs_dir,
        );
        let enforce = &mut file.enforce;
        flags.set(
            "enforce.deployment",
            "--deployment",
            self.deployment,
            &mut enforce.deployment,
        );
        flags.set(
            "enforce.action",
            "--action",
            self.action,
            &mut enforce.action,
        );
        flags.set(
            "enforce.deny_answer",
            "--deny-answer",
            self.deny_answer,
            &mut enforce.deny_answer,
        );
        flags.set(
            "enforce.monitor",
            "--monitor",
            self.monitor.then_some(true),
            &mut enforce.monitor,
        );
        flags.set(
            "enforce.gate_deadline_ms",
            "--gate-deadline-ms",
            self.gate_deadline_ms,
            &mut enforce.gate_deadline_ms,
        );
        flags.set(
            "enforce.known_good_after",
            "--known-good-after",
            self.known_good_after,
            &mut enforce.known_good_after,
        );
        flags.set(
            "enforce.reinject_held",
            "--no-reinject",
            self.no_reinject.then_some(false),
            &mut enforce.reinject_held,
        );
        flags.set(
            "enforce.heartbeat_timeout_ms",
            "--heartbeat-timeout-ms",
            self.heartbeat_timeout_ms,
            &mut enforce.heartbeat_timeout_ms,
        );
        let reputation = &mut file.reputation;
        flags.set(
            "reputation.threshold",
            "--reputation-threshold",
            self.reputation_threshold,
            &mut reputation.threshold,
        );
        flags.set(
            "reputation.half_life_secs",
            "--reputation-half-life",
            self.reputation_half_life,
            &mut reputation.half_life_secs,
        );
        flags.set(
            "reputation.deny_ttl_secs",
            "--deny-ttl",
            self.deny_ttl,
            &mut reputation.deny_ttl_secs,
        );
        flags.set(
            "reputation.max_denied",
            "--deny-max",
            self.deny_max,
            &mut reputation.max_denied,
        );
        flags.extend("lists.allow", "--allow", &self.allow, &mut file.lists.allow);
        flags.extend(
            "lists.deny",
            "--deny-source",
            &self.deny_sources,
            &mut file.lists.deny,
        );
        flags.set(
            "postfix.listen",
            "--policy-listen",
            self.policy_listen.clone().map(Some),
            &mut file.postfix.listen,
        );
        flags.set(
            "fleet.redis",
            "--fleet-redis",
            self.fleet_redis.clone().map(Some),
            &mut file.fleet.redis,
        );
    }
}

/// A repeatable flag's values, if it was given at all.
fn given<T: Clone>(values: &[T]) -> Option<Vec<T>> {
    (!values.is_empty()).then(|| values.to_vec())
}
