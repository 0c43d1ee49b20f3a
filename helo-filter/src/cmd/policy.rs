//! `helo-filter policy`: the policy service on its own, for an MX without the XDP program.
//! SIGHUP re-reads its configuration (the file, the flags over it) and puts the new engine
//! in force; a file that does not validate is logged and the running engine kept.

use std::{net::SocketAddr, sync::Arc};

use anyhow::{Context as _, bail};
use log::{info, warn};
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    config::{ListenAddr, PolicyArgs, PolicyFile},
    io::notify::Notifier,
    metrics,
    pipeline::stage::SharedEngine,
    postfix::{Listener, PolicyService},
};

#[derive(Debug, clap::Args)]
pub struct PolicyCommandArgs {
    /// Where to listen: unix:PATH or inet:IP:PORT (over the file's `[postfix] listen`).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<ListenAddr>,
    /// Skip every check that needs DNS (a usage error beside --dns-server).
    #[arg(long, conflicts_with = "dns_server")]
    pub offline: bool,
    /// Reject nothing: answer a bogus HELO `WARN bogus HELO (<reason>)`, which Postfix
    /// logs, instead of rejecting it.
    #[arg(long)]
    pub monitor: bool,
    /// Where the Prometheus endpoint listens (path /metrics).
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:9726")]
    pub metrics_addr: SocketAddr,
    #[command(flatten)]
    pub policy: PolicyArgs,
}

pub async fn run(args: PolicyCommandArgs) -> anyhow::Result<()> {
    // Before anything else: a SIGHUP during the start must not kill the service.
    let mut sighup = signal(SignalKind::hangup())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let file = configuration(&args)?;
    file.warnings().iter().for_each(|w| warn!("{w}"));
    let Some(listen) = args.listen.clone().or(file.postfix.listen.clone()) else {
        bail!("where to listen: --listen unix:PATH|inet:IP:PORT, or [postfix] listen");
    };
    metrics::install_for_policy_service(args.metrics_addr)?;
    info!("metrics on http://{}/metrics", args.metrics_addr);
    let engine = file
        .build_engine(Some(Arc::new(metrics::DnsMetrics)))
        .context("setting up DNS")?;
    let listener = Listener::bind(&listen, &file.postfix.socket_group).await?;
    let monitor = args.monitor || file.enforce.monitor;
    let engine = Arc::new(parking_lot::RwLock::new(engine));
    let service =
        PolicyService::new(Arc::clone(&engine), file.replies(), monitor, None).counting_verdicts();
    let serving = listener.serve(Arc::new(service));
    tokio::pin!(serving);
    let notifier = Notifier::from_env();
    notifier.ready();
    let outcome = loop {
        tokio::select! {
            result = &mut serving => break result,
            _ = sigterm.recv() => break Ok(()),
            _ = sigint.recv() => break Ok(()),
            _ = sighup.recv() => reload(&args, &engine),
        }
    };
    notifier.stopping();
    outcome
}

/// The configuration file with the flags over it, validated.
fn configuration(args: &PolicyCommandArgs) -> anyhow::Result<PolicyFile> {
    let mut loaded = args.policy.load()?;
    if args.offline {
        loaded.config.dns.enabled = false;
    }
    Ok(loaded.validate()?)
}

/// SIGHUP: reads the configuration again and puts its engine ([policy], [dns], the lists)
/// in force for the requests answered from now on. The listening socket, `[postfix]` and
/// `--monitor` keep their values from the start.
fn reload(args: &PolicyCommandArgs, engine: &SharedEngine) {
    info!("SIGHUP: reloading the configuration");
    let refused = |e: &dyn std::fmt::Display| {
        warn!("SIGHUP: reload refused, the running configuration is kept: {e:#}");
    };
    let file = match configuration(args) {
        Ok(file) => file,
        Err(e) => return refused(&e),
    };
    match file.build_engine(Some(Arc::new(metrics::DnsMetrics))) {
        Ok(new) => {
            *engine.write() = new;
            info!("configuration reloaded; applied: the policy engine ([policy], [dns], lists)");
        }
        Err(e) => refused(&e),
    }
}
