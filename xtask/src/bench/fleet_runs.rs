//! The fleet's propagation latency: a denial made on one member (`deny add --fleet`) until
//! the other drops the source's SYN, beside the same denial's latency on the member that
//! made it (the CLI, the control socket and the kernel write, without Redis).

use std::{
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use super::figure::{Figure, Goal};
use crate::{
    daemon::{Daemon, cli},
    fleet_lab::FleetLab,
    lab::{CLIENTS, Lab, SMTP_PORT, client_v4, client_v6},
    netns,
    sessions::{connect_from_within, mx_for},
};

/// A connect that gets no answer in this time was dropped (the lab's round trip is tens of
/// microseconds).
const DROPPED_AFTER: Duration = Duration::from_millis(10);
/// A denial that has not arrived by then failed the run.
const GIVE_UP: Duration = Duration::from_secs(5);

/// Whether `source` can still connect to `lab`'s MX, and when the attempt started.
fn answered(lab: &Lab, source: IpAddr) -> (bool, Instant) {
    let client = SocketAddr::new(source, 0);
    let server = SocketAddr::new(mx_for(source), SMTP_PORT);
    let started = Instant::now();
    let connected = netns::in_netns(&lab.client_ns, move || {
        connect_from_within(client, server, DROPPED_AFTER).is_ok()
    });
    (connected, started)
}

/// Waits until `lab` drops `source`'s SYNs; when the first dropped attempt started.
fn first_dropped(lab: &Lab, source: IpAddr, since: Instant) -> anyhow::Result<Instant> {
    loop {
        let (connected, at) = answered(lab, source);
        if !connected {
            return Ok(at);
        }
        if since.elapsed() > GIVE_UP {
            bail!("{source} still connects {GIVE_UP:?} after its denial");
        }
    }
}

fn operator(lab: &Lab, args: &[&str]) -> anyhow::Result<()> {
    let out = cli(lab, args)?;
    if !out.status.success() {
        bail!(
            "helo-filter {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// The latency (ms) of each of `samples` denials made on member 0, seen on member `seen_on`.
fn latencies(fleet: &FleetLab, seen_on: usize, samples: usize) -> anyhow::Result<Vec<f64>> {
    let (maker, seer) = (&fleet.members[0], &fleet.members[seen_on]);
    let mut latencies = Vec::with_capacity(samples);
    for k in 0..samples {
        let source = match k % 2 {
            0 => IpAddr::V4(client_v4(k / 2 % CLIENTS)),
            _ => IpAddr::V6(client_v6(k / 2 % CLIENTS)),
        };
        let net = source.to_string();
        let made = Instant::now();
        operator(maker, &["deny", "add", &net, "--fleet", "--ttl", "10m"])?;
        let dropped = first_dropped(seer, source, made)?;
        latencies.push(dropped.duration_since(made).as_secs_f64() * 1e3);
        operator(maker, &["deny", "del", &net, "--fleet"])?;
        let lifted = Instant::now();
        while !answered(seer, source).0 {
            if lifted.elapsed() > GIVE_UP {
                bail!("{source} still dropped {GIVE_UP:?} after deny del --fleet");
            }
        }
    }
    Ok(latencies)
}

fn quantile(mut values: Vec<f64>, q: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    let rank = ((values.len() as f64 - 1.0) * q).round() as usize;
    values.get(rank).copied().unwrap_or(f64::NAN)
}

/// `samples` denials each way: seen on the other member, and on the maker itself.
pub fn propagation(samples: usize) -> anyhow::Result<Vec<Figure>> {
    let fleet = FleetLab::create("bfleet", 2).context("the fleet lab")?;
    let mut daemons = Vec::new();
    for i in 0..2 {
        let config = fleet.member_config(i, "")?;
        let config = config.to_string_lossy();
        daemons.push(Daemon::start(
            &fleet.members[i],
            &["--config", &config],
            false,
        )?);
    }
    let remote = latencies(&fleet, 1, samples)?;
    let local = latencies(&fleet, 0, samples)?;
    drop(daemons);
    let figure = |id: &str, q: f64, what: &str| {
        Figure::new(
            "fleet",
            id,
            &format!("{what} of a fleet denial: deny add --fleet on one member → SYN dropped on the other"),
            quantile(remote.clone(), q),
            "ms",
        )
        .against("the same denial on the member that made it", quantile(local.clone(), q))
    };
    Ok(vec![
        figure("propagation_p50", 0.5, "p50").reading(
            &format!(
                "{samples} denials through a real redis-server on the lab's fleet link; a SYN \
                 counts as dropped when it gets no answer in {} ms.",
                DROPPED_AFTER.as_millis()
            ),
            "",
        ),
        figure("propagation_p99", 0.99, "p99")
            .goal(Goal::AtMost(250.0))
            .reading(
                "The baseline is the CLI, the control socket and the kernel write; the rest \
                 is one SET and PUBLISH, the other member's subscriber and its kernel write.",
                "Redis or a member is slow: see helo_filter_fleet_propagation_seconds.",
            ),
    ])
}
