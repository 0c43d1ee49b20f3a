//! `helo-filter run`: load and attach the XDP program, read its captures, hand sessions
//! to the policy stage, export metrics, and detach cleanly on SIGINT/SIGTERM.

use std::{
    collections::HashSet,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use aya::maps::{HashMap, RingBuf};
use helo_filter_common::{KernelConfig, MAX_SMTP_PORTS, maps};
use log::{error, info, warn};
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::{Semaphore, mpsc},
};

use crate::{
    capture::{self, Finding, Limits, NoHeloCause, Session},
    check_cmd::PolicyArgs,
    enforce::{Action, Enforcer},
    kernel::{self, CounterReader, Heartbeat, XdpModeChoice},
    metrics,
    policy::{HeloInput, PolicyEngine, Verdict},
};

/// Sessions waiting for the policy stage; past this they are passed unjudged (counted).
const POLICY_QUEUE: usize = 4096;
/// Validations running at once (each may wait on DNS); further sessions wait in the queue.
const VALIDATIONS_IN_FLIGHT: usize = 512;
const COUNTER_REFRESH: Duration = Duration::from_secs(1);
/// How often the daemon tells the kernel it is alive.
const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(500);

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
    /// Enforce nothing: count the actions that would have been taken.
    #[arg(long)]
    pub monitor: bool,
    /// How long the kernel holds a flow's further segments waiting for its verdict before
    /// letting them through (fail-open).
    #[arg(long, value_name = "MS", default_value_t = KernelConfig::DEFAULT_GATE_DEADLINE_MS)]
    pub gate_deadline_ms: u32,
    /// A daemon heartbeat older than this turns the gate off (the daemon is gone).
    #[arg(long, value_name = "MS", default_value_t = KernelConfig::DEFAULT_HEARTBEAT_TIMEOUT_MS)]
    pub heartbeat_timeout_ms: u32,
    #[command(flatten)]
    pub policy: PolicyArgs,
}

impl RunArgs {
    fn kernel_config(&self) -> anyhow::Result<KernelConfig> {
        let distinct: HashSet<_> = self.smtp_ports.iter().collect();
        if distinct.len() != self.smtp_ports.len() {
            bail!("--smtp-port: a port is given twice");
        }
        if self.smtp_ports.len() > MAX_SMTP_PORTS {
            bail!("--smtp-port: at most {MAX_SMTP_PORTS} ports");
        }
        if self.smtp_ports.contains(&0) {
            bail!("--smtp-port: 0 is not a port");
        }
        if self.heartbeat_timeout_ms < 2 * HEARTBEAT_INTERVAL.as_millis() as u32 {
            bail!(
                "--heartbeat-timeout-ms: at least {} ms (twice the heartbeat interval)",
                2 * HEARTBEAT_INTERVAL.as_millis()
            );
        }
        let mut config = KernelConfig {
            ports: [0; MAX_SMTP_PORTS],
            port_count: self.smtp_ports.len() as u32,
            gate_deadline_ms: self.gate_deadline_ms,
            heartbeat_timeout_ms: self.heartbeat_timeout_ms,
        };
        config.ports[..self.smtp_ports.len()].copy_from_slice(&self.smtp_ports);
        Ok(config)
    }
}

pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let config = args.kernel_config()?;
    let distinct: HashSet<_> = args.ifaces.iter().collect();
    if distinct.len() != args.ifaces.len() {
        bail!("--iface: an interface is given twice");
    }
    let policy_file = args.policy.load().map_err(anyhow::Error::msg)?;
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

    for iface in &args.ifaces {
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
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(COUNTER_REFRESH);
        loop {
            tick.tick().await;
            if let Err(e) = metrics::refresh_kernel_counters(&counters) {
                warn!("reading kernel counters: {e:#}");
            }
        }
    });

    let mut heartbeat = Heartbeat::new(&mut ebpf)?;
    heartbeat.beat()?;
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(HEARTBEAT_INTERVAL);
        loop {
            tick.tick().await;
            if let Err(e) = heartbeat.beat() {
                warn!("writing the heartbeat: {e:#}");
            }
        }
    });
    let flows = HashMap::try_from(ebpf.take_map(maps::FLOWS).context("FLOWS map missing")?)?;
    let enforcer = Arc::new(Enforcer::new(flows, args.monitor));
    if args.monitor {
        info!("monitor mode: verdicts are counted, nothing is enforced");
    }

    let (tx, rx) = mpsc::channel(POLICY_QUEUE);
    let mut capture = tokio::spawn(capture::run(ring, tx, Limits::default()));
    tokio::spawn(policy_stage(rx, engine, enforcer));
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

/// Judges every session, many at once (a slow DNS answer for one HELO never holds up the
/// verdicts of others), and acts on each verdict.
async fn policy_stage(
    mut sessions: mpsc::Receiver<Session>,
    engine: PolicyEngine,
    enforcer: Arc<Enforcer>,
) {
    let in_flight = Arc::new(Semaphore::new(VALIDATIONS_IN_FLIGHT));
    while let Some(session) = sessions.recv().await {
        let Ok(permit) = Arc::clone(&in_flight).acquire_owned().await else {
            break;
        };
        let engine = engine.clone();
        let enforcer = Arc::clone(&enforcer);
        tokio::spawn(async move {
            judge(&engine, &enforcer, &session).await;
            drop(permit);
        });
    }
}

async fn judge(engine: &PolicyEngine, enforcer: &Enforcer, session: &Session) {
    let client = session.client.ip();
    let input = match &session.finding {
        Finding::Helo(helo) => {
            metrics::helo_event();
            HeloInput {
                helo: Some(helo.argument.clone()),
                client,
                pipelined: helo.pipelined,
                no_helo: false,
            }
        }
        Finding::NoHelo(_) => HeloInput::without_helo(client),
    };
    let started = Instant::now();
    let verdict = engine.evaluate(&input).await;
    metrics::verdict(&verdict, started.elapsed());
    let action = enforcer.apply(session, &verdict);
    if let Some(action) = action {
        metrics::action(action, session.timestamp_ns);
    }
    report(session, &verdict, action);
}

/// One log line per session: who, what they said (escaped), the verdict and the action.
fn report(session: &Session, verdict: &Verdict, action: Option<Action>) {
    let what = match &session.finding {
        Finding::Helo(helo) => format!(
            "helo client={} server={} verb={} pipelined={} line=\"{}\"",
            session.client,
            session.server,
            helo.verb.as_str(),
            helo.pipelined,
            helo.escaped_line
        ),
        Finding::NoHelo(cause) => {
            let line = match cause {
                NoHeloCause::OtherCommandFirst { escaped_line } => escaped_line.as_str(),
                NoHeloCause::CapExceeded => "",
            };
            format!(
                "no_helo client={} server={} cause={} line=\"{line}\"",
                session.client,
                session.server,
                cause.as_str()
            )
        }
    };
    let reasons: Vec<&str> = verdict.reason_codes().map(|r| r.as_str()).collect();
    let notes: Vec<&str> = verdict.notes.iter().map(|n| n.as_str()).collect();
    info!(
        "{what} verdict={} reasons={} score={} notes={} action={}",
        verdict.decision.as_str(),
        reasons.join(","),
        verdict.score,
        notes.join(","),
        action.map_or("none", Action::as_str)
    );
}
