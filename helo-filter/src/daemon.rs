//! `helo-filter run`: load and attach the XDP program, read its captures, hand sessions
//! to the policy stage, export metrics, and detach cleanly on SIGINT/SIGTERM.

use std::{collections::HashSet, net::SocketAddr, time::Duration};

use anyhow::{Context as _, bail};
use aya::maps::RingBuf;
use helo_filter_common::{KernelConfig, MAX_SMTP_PORTS, maps};
use log::{error, info, warn};
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::mpsc,
};

use crate::{
    capture::{self, Finding, Limits, Session},
    kernel::{self, CounterReader, XdpModeChoice},
    metrics,
};

/// Sessions waiting for the policy stage; past this they are passed unjudged (counted).
const POLICY_QUEUE: usize = 4096;
const COUNTER_REFRESH: Duration = Duration::from_secs(1);

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
        let mut config = KernelConfig {
            ports: [0; MAX_SMTP_PORTS],
            port_count: self.smtp_ports.len() as u32,
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
    metrics::install(args.metrics_addr)?;
    info!("metrics on http://{}/metrics", args.metrics_addr);

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

    let (tx, rx) = mpsc::channel(POLICY_QUEUE);
    let mut capture = tokio::spawn(capture::run(ring, tx, Limits::default()));
    tokio::spawn(policy_stage(rx));
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

/// Placeholder policy stage: reports each session (the policy engine judges them in a
/// later stage of the pipeline).
async fn policy_stage(mut sessions: mpsc::Receiver<Session>) {
    while let Some(session) = sessions.recv().await {
        report(&session);
    }
}

fn report(session: &Session) {
    match &session.finding {
        Finding::Helo(helo) => {
            metrics::helo_event();
            info!(
                "helo client={} server={} verb={} pipelined={} line=\"{}\"",
                session.client,
                session.server,
                helo.verb.as_str(),
                helo.pipelined,
                helo.escaped_line
            );
        }
        Finding::NoHelo(cause) => {
            let line = match cause {
                capture::NoHeloCause::OtherCommandFirst { escaped_line } => escaped_line.as_str(),
                capture::NoHeloCause::CapExceeded => "",
            };
            info!(
                "no_helo client={} server={} cause={} line=\"{line}\"",
                session.client,
                session.server,
                cause.as_str()
            );
        }
    }
}
