//! `helo-filter run`: load and attach the XDP program, read its captures, hand sessions
//! to the policy stage, export metrics, and detach cleanly on SIGINT/SIGTERM.

use std::{
    collections::HashSet,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context as _, bail};
use aya::maps::{HashMap, RingBuf};
use helo_filter_common::{maps, origin};
use ipnet::IpNet;
use log::{error, info, warn};
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::mpsc,
};

use crate::{
    capture::{self, Limits},
    check_cmd::PolicyArgs,
    config,
    enforce::{Action, Deployment, Enforcer},
    kernel::{self, CounterReader, Heartbeat, XdpModeChoice},
    lists::KernelLists,
    metrics,
    policy_config::PolicyFile,
    postfix::{ListenAddr, Listener, PolicyService},
    reputation::Reputation,
    stage::{Stage, policy_stage},
};

/// Sessions waiting for the policy stage; past this they are passed unjudged (counted).
const POLICY_QUEUE: usize = 4096;
const COUNTER_REFRESH: Duration = Duration::from_secs(1);
/// How often the daemon tells the kernel it is alive.
const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(500);
/// How often expired denials end and the deny-list cap is enforced.
const REPUTATION_SWEEP: Duration = Duration::from_secs(1);

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Interface to attach to (repeat for several).
    #[arg(long = "iface", value_name = "IFACE", required = true)]
    pub ifaces: Vec<String>,
    /// XDP attach mode: auto tries native and falls back to generic with a warning.
    #[arg(long, value_enum, default_value_t = XdpModeChoice::Auto)]
    pub xdp_mode: XdpModeChoice,
    /// Where the Prometheus endpoint listens (path /metrics).
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:9725")]
    pub metrics_addr: SocketAddr,
    /// TCP port the MTA listens on (repeat for several, at most 8).
    #[arg(long = "smtp-port", value_name = "PORT", default_values_t = [25u16])]
    pub smtp_ports: Vec<u16>,
    // The flags below override the configuration file's `[enforce]`, `[reputation]` and
    // `[lists]` (whose defaults they show).
    /// Where the filter sits: `mx` (the MTA runs on this host) or `gateway` (this host
    /// forwards SMTP traffic to MTAs elsewhere) [default: mx].
    #[arg(long, value_enum)]
    pub deployment: Option<Deployment>,
    /// What to do with a rejected session: `rst` (the client gets a RST) or `drop` (the
    /// client gets silence). On an MX the MTA's socket is destroyed at once either way
    /// [default: rst].
    #[arg(long, value_enum)]
    pub action: Option<Action>,
    /// How a denied source's SYN is answered: `drop` (silence) or `rst` [default: drop].
    #[arg(long, value_enum)]
    pub deny_answer: Option<Action>,
    /// Enforce nothing: count the actions that would have been taken.
    #[arg(long)]
    pub monitor: bool,
    /// How long the kernel holds a flow's further segments waiting for its verdict before
    /// letting them through (fail-open) [default: 5000].
    #[arg(long, value_name = "MS")]
    pub gate_deadline_ms: Option<u32>,
    /// A daemon heartbeat older than this turns the gate off (the daemon is gone)
    /// [default: 3000].
    #[arg(long, value_name = "MS")]
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
    /// Reputation scores halve in this many seconds [default: 3600].
    #[arg(long, value_name = "SECS")]
    pub reputation_half_life: Option<u64>,
    /// How long a source denied by its reputation stays denied, in seconds [default: 3600].
    #[arg(long, value_name = "SECS")]
    pub deny_ttl: Option<u64>,
    /// Sources denied by reputation at most; the lowest scores are let go first
    /// [default: 10000].
    #[arg(long, value_name = "N")]
    pub deny_max: Option<usize>,
    /// Also answer Postfix's policy delegation requests here: unix:PATH or inet:IP:PORT
    /// (over the file's `[postfix] listen`).
    #[arg(long, value_name = "ADDR")]
    pub policy_listen: Option<ListenAddr>,
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
    /// Applies the flags given over the file's sections.
    fn apply_to(&self, file: &mut PolicyFile) {
        let enforce = &mut file.enforce;
        enforce.deployment = self.deployment.unwrap_or(enforce.deployment);
        enforce.action = self.action.unwrap_or(enforce.action);
        enforce.deny_answer = self.deny_answer.unwrap_or(enforce.deny_answer);
        enforce.monitor |= self.monitor;
        enforce.gate_deadline_ms = self.gate_deadline_ms.unwrap_or(enforce.gate_deadline_ms);
        enforce.heartbeat_timeout_ms = self
            .heartbeat_timeout_ms
            .unwrap_or(enforce.heartbeat_timeout_ms);
        let reputation = &mut file.reputation;
        reputation.threshold = self.reputation_threshold.unwrap_or(reputation.threshold);
        reputation.half_life_secs = self
            .reputation_half_life
            .unwrap_or(reputation.half_life_secs);
        reputation.deny_ttl_secs = self.deny_ttl.unwrap_or(reputation.deny_ttl_secs);
        reputation.max_denied = self.deny_max.unwrap_or(reputation.max_denied);
        file.lists.allow.extend(self.allow.iter().copied());
        file.lists.deny.extend(self.deny_sources.iter().copied());
        if self.policy_listen.is_some() {
            file.postfix.listen.clone_from(&self.policy_listen);
        }
    }
}

pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let distinct: HashSet<_> = args.ifaces.iter().collect();
    if distinct.len() != args.ifaces.len() {
        bail!("--iface: an interface is given twice");
    }
    let mut policy_file = args.policy.load().map_err(anyhow::Error::msg)?;
    args.apply_to(&mut policy_file);
    let enforce = policy_file.enforce.clone();
    let lists = policy_file.lists.clone();
    if enforce.heartbeat_timeout_ms < 2 * HEARTBEAT_INTERVAL.as_millis() as u32 {
        bail!(
            "heartbeat timeout: at least {} ms (twice the heartbeat interval)",
            2 * HEARTBEAT_INTERVAL.as_millis()
        );
    }
    let config = config::kernel_config(&args.smtp_ports, &enforce)?;
    let reputation = Reputation::new(policy_file.reputation.settings()?);
    metrics::install(args.metrics_addr)?;
    info!("metrics on http://{}/metrics", args.metrics_addr);
    let engine = policy_file
        .build_engine(Some(Arc::new(metrics::DnsMetrics)))
        .context("setting up DNS")?;

    let mut ebpf = kernel::load(&config)?;
    let logger = aya_log::EbpfLogger::init(&mut ebpf).context("starting the kernel logger")?;
    let mut logger = kernel::readable_fd(logger)?;
    tokio::spawn(async move {
        loop {
            match logger.readable_mut().await {
                Ok(mut guard) => {
                    guard.get_inner_mut().flush();
                    guard.clear_ready();
                }
                Err(e) => {
                    warn!("kernel logger stopped: {e}");
                    break;
                }
            }
        }
    });

    // The operator's lists are in place before the first packet is seen.
    let mut kernel_lists = KernelLists::new(&mut ebpf)?;
    for net in &lists.allow {
        kernel_lists.allow(*net)?;
    }
    for net in &lists.deny {
        kernel_lists.deny(*net, None, origin::OPERATOR)?;
    }
    metrics::list_sizes(lists.allow.len(), lists.deny.len());

    let action = if enforce.monitor {
        Action::Monitor
    } else {
        enforce.action
    };
    for iface in &args.ifaces {
        // On an MX, `drop` must also keep the destroyed socket's RST from the client.
        if action == Action::Drop && enforce.deployment == Deployment::Mx {
            kernel::attach_egress(&mut ebpf, iface)?;
        }
        let mode = kernel::attach(&mut ebpf, iface, args.xdp_mode)?;
        metrics::xdp_attached(iface, mode);
        info!(
            "attached iface={iface} mode={} smtp_ports={:?}",
            mode.as_str(),
            args.smtp_ports
        );
    }

    let ring = RingBuf::try_from(ebpf.take_map(maps::EVENTS).context("EVENTS map missing")?)?;
    let counters = CounterReader::new(&mut ebpf)?;
    every(COUNTER_REFRESH, "reading kernel counters", move || {
        metrics::refresh_kernel_counters(&counters)
    });
    let mut heartbeat = Heartbeat::new(&mut ebpf)?;
    heartbeat.beat()?;
    every(HEARTBEAT_INTERVAL, "writing the heartbeat", move || {
        heartbeat.beat()
    });
    let flows = HashMap::try_from(ebpf.take_map(maps::FLOWS).context("FLOWS map missing")?)?;
    let enforcer = Enforcer::new(flows, enforce.deployment, action);
    if enforce.monitor {
        info!("monitor mode: verdicts are counted, nothing is enforced");
    }
    let stage = Arc::new(Stage {
        engine,
        enforcer,
        reputation,
        lists: Mutex::new(kernel_lists),
    });
    if let Some(listen) = &policy_file.postfix.listen {
        let listener = Listener::bind(listen, &policy_file.postfix.socket_group).await?;
        let remembering = Arc::clone(&stage);
        let service = PolicyService::new(
            stage.engine.clone(),
            policy_file.postfix.clone(),
            enforce.monitor,
            Some(Box::new(move |client, verdict| {
                remembering.remember(client, verdict)
            })),
        );
        tokio::spawn(async move {
            if let Err(e) = listener.serve(Arc::new(service)).await {
                error!("{e:#}");
            }
        });
    }
    let sweeping = Arc::clone(&stage);
    every(REPUTATION_SWEEP, "sweeping reputation", move || {
        sweeping.sweep_reputation();
        Ok(())
    });

    let (tx, rx) = mpsc::channel(POLICY_QUEUE);
    let mut capture = tokio::spawn(capture::run(ring, tx, Limits::default()));
    tokio::spawn(policy_stage(rx, stage));
    info!("ready: capturing on {} interface(s)", args.ifaces.len());

    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let outcome = tokio::select! {
        _ = sigterm.recv() => Ok(()),
        _ = sigint.recv() => Ok(()),
        result = &mut capture => match result {
            Ok(Err(e)) => Err(e.context("capture stopped")),
            Ok(Ok(())) => Ok(()),
            Err(e) => Err(anyhow::anyhow!("capture task failed: {e}")),
        },
    };
    capture.abort();
    // Dropping the program detaches it from every interface.
    drop(ebpf);
    info!("detached from {}", args.ifaces.join(", "));
    if let Err(e) = &outcome {
        error!("{e:#}");
    }
    outcome
}

/// Runs `task` every `period` (the first time at once) for the daemon's lifetime; a failure
/// is logged with `what` and the next tick tries again.
fn every(
    period: Duration,
    what: &'static str,
    mut task: impl FnMut() -> anyhow::Result<()> + Send + 'static,
) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        loop {
            tick.tick().await;
            if let Err(e) = task() {
                warn!("{what}: {e:#}");
            }
        }
    });
}
