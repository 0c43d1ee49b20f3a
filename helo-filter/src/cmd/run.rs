//! `helo-filter run`: load and attach the XDP program, read its captures, hand sessions
//! to the policy stage, export metrics, and detach cleanly on SIGINT/SIGTERM.

use std::{
    collections::{HashSet, VecDeque},
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::{Context as _, bail};
use aya::maps::{HashMap, RingBuf};
use helo_filter_common::maps;
use ipnet::IpNet;
use log::{error, info, warn};
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::mpsc,
};

use crate::{
    cmd::check::PolicyArgs,
    config,
    config::PolicyFile,
    kernel::lists::KernelLists,
    kernel::pins::PinDir,
    kernel::{self, CounterReader, Heartbeat, XdpModeChoice},
    metrics,
    operator::Operator,
    operator::control::{self, ControlSocket},
    operator::state::StateDir,
    pipeline::capture::{self, Limits},
    pipeline::enforce::{Action, Deployment, Enforcer},
    pipeline::reputation::Reputation,
    pipeline::stage::{Stage, policy_stage},
    policy::PolicyEngine,
    postfix::{ListenAddr, Listener, PolicyService},
};

/// Sessions waiting for the policy stage; past this they are passed unjudged (counted).
const POLICY_QUEUE: usize = 4096;
const COUNTER_REFRESH: Duration = Duration::from_secs(1);
/// How often the daemon tells the kernel it is alive.
const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(500);
/// How often expired denials end and the deny-list cap is enforced.
const REPUTATION_SWEEP: Duration = Duration::from_secs(1);

#[derive(Clone, Debug, clap::Args)]
pub struct RunArgs {
    // Every flag overrides the configuration file (whose defaults the flags show); the list
    // flags add to its lists.
    /// Interface to attach to (repeat for several) [default: the file's [kernel] interfaces].
    #[arg(long = "iface", value_name = "IFACE")]
    pub ifaces: Vec<String>,
    /// XDP attach mode: auto tries native and falls back to generic with a warning
    /// [default: auto].
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
        if !self.ifaces.is_empty() {
            file.kernel.interfaces.clone_from(&self.ifaces);
        }
        if !self.smtp_ports.is_empty() {
            file.kernel.smtp_ports.clone_from(&self.smtp_ports);
        }
        file.kernel.xdp_mode = self.xdp_mode.unwrap_or(file.kernel.xdp_mode);
        file.metrics.listen = self.metrics_addr.unwrap_or(file.metrics.listen);
        let paths = [
            (&self.control_socket, &mut file.control.socket),
            (&self.state_dir, &mut file.state.dir),
            (&self.bpffs_dir, &mut file.state.bpffs_dir),
        ];
        for (flag, setting) in paths {
            if let Some(path) = flag {
                setting.clone_from(path);
            }
        }
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

/// Reads the configuration file (or the defaults) and applies the flags over it.
fn configuration(args: &RunArgs) -> anyhow::Result<PolicyFile> {
    let mut file = args.policy.load().map_err(anyhow::Error::msg)?;
    args.apply_to(&mut file);
    Ok(file)
}

pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let file = configuration(&args)?;
    file.reputation.warnings().iter().for_each(|w| warn!("{w}"));
    let ifaces = file.kernel.interfaces.clone();
    if ifaces.is_empty() {
        bail!("no interface to attach to: --iface IFACE, or [kernel] interfaces in the config");
    }
    let distinct: HashSet<_> = ifaces.iter().collect();
    if distinct.len() != ifaces.len() {
        bail!("interfaces: one is given twice");
    }
    let enforce = file.enforce.clone();
    if enforce.heartbeat_timeout_ms < 2 * HEARTBEAT_INTERVAL.as_millis() as u32 {
        bail!(
            "heartbeat timeout: at least {} ms (twice the heartbeat interval)",
            2 * HEARTBEAT_INTERVAL.as_millis()
        );
    }
    let config = config::kernel_config(&file.kernel.smtp_ports, &enforce)?;
    let reputation = Reputation::new(file.reputation.settings()?);
    control::ensure_no_daemon(&file.control.socket)?;
    // Unreadable state stops the daemon before it touches the kernel.
    let state = StateDir::open(&file.state.dir)?;
    state.load_lists()?;
    state.load_reputation()?;
    let pins = PinDir::open(&file.state.bpffs_dir)?;
    if pins.is_populated() {
        info!(
            "adopting the kernel program pinned under {}",
            pins.root().display()
        );
    }
    metrics::install(file.metrics.listen)?;
    info!("metrics on http://{}/metrics", file.metrics.listen);
    let dns = file
        .dns_client(Some(Arc::new(metrics::DnsMetrics)))
        .context("setting up DNS")?;

    let mut ebpf = kernel::load(&config, Some(&pins))?;
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

    let action = if enforce.monitor {
        Action::Monitor
    } else {
        enforce.action
    };
    let flows = HashMap::try_from(ebpf.take_map(maps::FLOWS).context("FLOWS map missing")?)?;
    let stage = Arc::new(Stage {
        engine: Arc::new(RwLock::new(PolicyEngine::new(file.settings(), dns.clone()))),
        enforcer: Enforcer::new(flows, enforce.deployment, action),
        reputation,
        lists: Mutex::new(KernelLists::new(&mut ebpf)?),
        recent: Mutex::new(VecDeque::new()),
        reputation_changed: AtomicBool::new(false),
    });
    let counters = Arc::new(CounterReader::new(&mut ebpf)?);
    let reload_args = args.clone();
    // The operator's and the file's lists are in the kernel before the first packet is
    // seen (and, for adopted maps, reconciled with what the previous daemon left).
    let operator = Arc::new(Operator::start(
        Arc::clone(&stage),
        state,
        pins.clone(),
        file.clone(),
        dns,
        Box::new(move || configuration(&reload_args)),
        args.policy.config.clone(),
        Arc::clone(&counters),
    )?);
    let mut heartbeat = Heartbeat::new(&mut ebpf)?;
    heartbeat.beat()?;

    // On an MX, `drop` must also keep the destroyed socket's RST from the client.
    let egress = action == Action::Drop && enforce.deployment == Deployment::Mx;
    let mut attachments = Vec::new();
    for iface in &ifaces {
        if egress {
            kernel::attach_egress(&mut ebpf, iface, Some(&pins))?;
        }
        let attachment = kernel::attach(&mut ebpf, iface, file.kernel.xdp_mode, Some(&pins))?;
        metrics::xdp_attached(iface, attachment.mode);
        info!(
            "attached iface={iface} mode={} adopted={} smtp_ports={:?}",
            attachment.mode.as_str(),
            attachment.adopted,
            file.kernel.smtp_ports
        );
        attachments.push((iface.clone(), attachment));
    }
    kernel::release_unwanted(&pins, &ifaces, egress);
    operator.attached(attachments);

    let ring = RingBuf::try_from(ebpf.take_map(maps::EVENTS).context("EVENTS map missing")?)?;
    let reading = Arc::clone(&counters);
    every(COUNTER_REFRESH, "reading kernel counters", move || {
        metrics::refresh_kernel_counters(&reading)
    });
    every(HEARTBEAT_INTERVAL, "writing the heartbeat", move || {
        heartbeat.beat()
    });
    if enforce.monitor {
        info!("monitor mode: verdicts are counted, nothing is enforced");
    }
    let sweeping = Arc::clone(&stage);
    let expiring = Arc::clone(&operator);
    every(
        REPUTATION_SWEEP,
        "sweeping lists and reputation",
        move || {
            sweeping.sweep_reputation();
            expiring.expire();
            if sweeping.reputation_changed.swap(false, Ordering::Relaxed) {
                expiring.snapshot_reputation()?;
            }
            Ok(())
        },
    );
    let snapshotting = Arc::clone(&operator);
    let interval = Duration::from_secs(file.state.snapshot_interval_secs.get());
    every(interval, "writing the reputation snapshot", move || {
        snapshotting.snapshot_reputation()
    });
    if let Some(listen) = &file.postfix.listen {
        let listener = Listener::bind(listen, &file.postfix.socket_group).await?;
        let remembering = Arc::clone(&stage);
        let service = PolicyService::new(
            Arc::clone(&stage.engine),
            file.postfix.clone(),
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
    let control = ControlSocket::bind(&file.control.socket)?;
    info!("control socket {}", file.control.socket.display());
    let detached = Arc::clone(&operator.detached);
    tokio::spawn(control.serve(Arc::clone(&operator)));

    let (tx, rx) = mpsc::channel(POLICY_QUEUE);
    let mut capture = tokio::spawn(capture::run(ring, tx, Limits::default()));
    tokio::spawn(policy_stage(rx, stage));
    info!("ready: capturing on {} interface(s)", ifaces.len());

    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut was_detached = false;
    let outcome = tokio::select! {
        _ = sigterm.recv() => Ok(()),
        _ = sigint.recv() => Ok(()),
        _ = detached.notified() => {
            was_detached = true;
            Ok(())
        }
        result = &mut capture => match result {
            Ok(Err(e)) => Err(e.context("capture stopped")),
            Ok(Ok(())) => Ok(()),
            Err(e) => Err(anyhow::anyhow!("capture task failed: {e}")),
        },
    };
    capture.abort();
    if let Err(e) = operator.snapshot_reputation() {
        warn!("writing the reputation snapshot: {e:#}");
    }
    // The links are pinned: the program keeps filtering (the deny list enforced, the gate
    // off once the heartbeat is stale) until a restarted daemon adopts it, or a detach.
    drop(ebpf);
    if was_detached {
        info!("detached from {}: nothing left pinned", ifaces.join(", "));
    } else {
        info!(
            "exiting; the kernel program stays attached to {} (pinned under {}); \
             `helo-filter detach` removes it",
            ifaces.join(", "),
            pins.root().display()
        );
    }
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
