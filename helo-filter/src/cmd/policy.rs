//! `helo-filter policy`: the policy service on its own, for an MX without the XDP program.

use std::{net::SocketAddr, sync::Arc};

use anyhow::{Context as _, bail};
use log::info;
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    config::{ListenAddr, PolicyArgs},
    metrics,
    postfix::{Listener, PolicyService},
};

#[derive(Debug, clap::Args)]
pub struct PolicyCommandArgs {
    /// Where to listen: unix:PATH or inet:IP:PORT (over the file's `[postfix] listen`).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<ListenAddr>,
    /// Skip every check that needs DNS.
    #[arg(long)]
    pub offline: bool,
    /// Reject nothing: log what would have been rejected and answer DUNNO.
    #[arg(long)]
    pub monitor: bool,
    /// Where the Prometheus endpoint listens (path /metrics).
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:9726")]
    pub metrics_addr: SocketAddr,
    #[command(flatten)]
    pub policy: PolicyArgs,
}

pub async fn run(args: PolicyCommandArgs) -> anyhow::Result<()> {
    let mut loaded = args.policy.load()?;
    if args.offline {
        loaded.config.dns.enabled = false;
    }
    let file = loaded.validate()?;
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
    let service = PolicyService::new(engine, file.postfix, monitor, None);
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    tokio::select! {
        result = listener.serve(Arc::new(service)) => result,
        _ = sigterm.recv() => Ok(()),
        _ = sigint.recv() => Ok(()),
    }
}
