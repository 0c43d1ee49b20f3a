//! The fleet: MX appliances that share their denials through one Redis, so that a source
//! denied on one is dropped at the SYN on all (docs/fleet.md). This member's shared denials
//! are written to Redis and announced (`link`); the others' are taken when local rules allow
//! (`accept`), held (`held`) and written into the kernel deny map with origin `FLEET`.
//! Nothing in the session path waits on Redis: denials to share go through a bounded queue,
//! and while Redis is unreachable the member keeps enforcing what it holds.

mod accept;
mod held;
mod link;
pub mod wire;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

pub use accept::LocalRules;
use anyhow::Context as _;
use helo_filter_common::origin;
use ipnet::IpNet;
use log::{info, warn};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};

use self::{
    held::{Held, Taken},
    wire::{Denial, DenialKind, Names},
};
use crate::{
    clock::unix_now,
    config::{FleetSection, Scope},
    metrics,
    pipeline::stage::Stage,
    tasks::Tasks,
};

/// Denials waiting to be sent; more are dropped (and re-published at the next reconnect).
const OUTGOING_QUEUE: usize = 1_024;
/// How long a start waits for Redis before going on without it (`READY=1` then follows).
pub const START_WAIT: Duration = Duration::from_secs(5);

/// What this member knows of itself that the fleet must respect (the operator's lists, the
/// configuration, reputation): implemented by the operator.
pub trait Local: Send + Sync {
    /// The rules a fleet denial must pass here.
    fn rules(&self) -> LocalRules;
    /// Whether a local entry (the file's, the operator's, reputation's) denies exactly
    /// `net`: the kernel entry is then the local one, and stays.
    fn denies(&self, net: IpNet) -> bool;
    /// This member's own shared denials in force, as `fleet` shares them (re-published after
    /// a reconnect: Redis may have restarted empty).
    fn own_shared(&self, fleet: &Fleet) -> Vec<Denial>;
}

/// How another member's denial reached this one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Arrival {
    /// Announced on the channel as it was made.
    Announced,
    /// Read from its key at a (re)connection.
    Read,
}

/// A change for the fleet.
#[derive(Debug)]
enum Outgoing {
    Share(Denial),
    Lift(IpNet),
}

/// `status`'s view of the fleet.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FleetStatus {
    pub name: String,
    pub connected: bool,
    /// Members whose liveness key was in Redis at the last look (this one included).
    pub members_seen: usize,
    /// Other members' denials held here.
    pub denials_held: usize,
    pub denials_sent: u64,
    pub denials_received: u64,
    /// The last received denial's age when it arrived, in milliseconds.
    pub last_lag_ms: Option<u64>,
}

struct Shared {
    name: String,
    names: Names,
    reputation_scope: Scope,
    operator_scope: Scope,
    held: Mutex<Held>,
    stage: Arc<Stage>,
    local: Arc<dyn Local>,
    outgoing: mpsc::Sender<Outgoing>,
    connected: AtomicBool,
    sent: AtomicU64,
    received: AtomicU64,
    /// The last lag + 1 (0: none yet).
    last_lag_ms: AtomicU64,
    members_seen: AtomicUsize,
    synced: watch::Sender<bool>,
}

/// The fleet membership, shared by the operator and the policy stage.
#[derive(Clone)]
pub struct Fleet(Arc<Shared>);

/// The member's name: the configured one, else the host name.
fn member_name(section: &FleetSection) -> anyhow::Result<String> {
    if let Some(name) = &section.name {
        return Ok(name.clone());
    }
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .context("reading the host name for [fleet] name")?;
    Ok(name.trim().to_owned())
}

/// The Redis client for `section` (its password read from `password_file`).
fn client(section: &FleetSection) -> anyhow::Result<redis::Client> {
    let Some(url) = &section.redis else {
        anyhow::bail!("[fleet] redis is not set");
    };
    let mut info: redis::ConnectionInfo = url
        .0
        .parse()
        .with_context(|| format!("[fleet] redis {:?}", url.0))?;
    info.redis.db = i64::from(section.database);
    info.redis.username.clone_from(&section.user);
    if let Some(file) = &section.password_file {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("reading [fleet] password_file {}", file.display()))?;
        let password = text.lines().next().unwrap_or_default().to_owned();
        info.redis.password = Some(password);
    }
    redis::Client::open(info).context("setting up the Redis client")
}

impl Fleet {
    /// Joins the fleet: the link to Redis runs as a task from now on (see [`Fleet::synced`]).
    /// The fleet's denials an earlier daemon left in the kernel are held again, so that they
    /// stay enforced with Redis away and go when Redis no longer has them.
    pub fn start(
        section: &FleetSection,
        stage: Arc<Stage>,
        local: Arc<dyn Local>,
        tasks: &Tasks,
    ) -> anyhow::Result<Fleet> {
        let client = client(section)?;
        let name = member_name(section)?;
        let mut held = Held::new(section.max_denied);
        let now = unix_now();
        let boot = crate::clock::boot_time_ns();
        for (net, entry) in stage.kernel_lists().denied() {
            if entry.origin != origin::FLEET || entry.expires_ns <= boot {
                continue;
            }
            let left = Duration::from_nanos(entry.expires_ns - boot);
            let kind = match net.prefix_len() {
                32 | 64 => DenialKind::Reputation,
                _ => DenialKind::Operator,
            };
            held.take(Denial {
                net,
                kind,
                expires_at: now + left.as_secs(),
                member: "(held across a restart)".to_owned(),
                made_at_ms: unix_now_ms(),
                comment: None,
            });
        }
        let (outgoing, queue) = mpsc::channel(OUTGOING_QUEUE);
        let (synced, _) = watch::channel(false);
        let fleet = Fleet(Arc::new(Shared {
            name,
            names: Names::new(&section.prefix),
            reputation_scope: section.reputation,
            operator_scope: section.operator,
            held: Mutex::new(held),
            stage,
            local,
            outgoing,
            connected: AtomicBool::new(false),
            sent: AtomicU64::new(0),
            received: AtomicU64::new(0),
            last_lag_ms: AtomicU64::new(0),
            members_seen: AtomicUsize::new(0),
            synced,
        }));
        metrics::fleet_connected(false);
        info!(
            "fleet: member {:?} of {:?}",
            fleet.0.name,
            section
                .redis
                .as_ref()
                .map(|u| u.0.as_str())
                .unwrap_or_default()
        );
        tasks.spawn("fleet link", link::run(fleet.clone(), client, queue));
        let sweeping = fleet.clone();
        tasks.spawn("fleet expiry", async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                sweeping.expire();
            }
        });
        Ok(fleet)
    }

    /// Waits until the fleet's denials have been read once, at most `wait`; whether they
    /// have.
    pub async fn synced(&self, wait: Duration) -> bool {
        let mut synced = self.0.synced.subscribe();
        tokio::time::timeout(wait, synced.wait_for(|s| *s))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    pub fn name(&self) -> &str {
        &self.0.name
    }

    /// Whether this member's reputation denials are shared.
    pub fn shares_reputation(&self) -> bool {
        self.0.reputation_scope == Scope::Shared
    }

    /// Whether every operator deny entry is shared (else only `deny add --fleet`'s).
    pub fn shares_operator_entries(&self) -> bool {
        self.0.operator_scope == Scope::Shared
    }

    /// A denial of this member's to share: `net` until Unix time `expires_at`.
    pub fn share(&self, net: IpNet, kind: DenialKind, expires_at: u64, comment: Option<String>) {
        self.send(Outgoing::Share(self.own(net, kind, expires_at, comment)));
    }

    /// This member's denial as the fleet sees it.
    pub fn own(
        &self,
        net: IpNet,
        kind: DenialKind,
        expires_at: u64,
        comment: Option<String>,
    ) -> Denial {
        Denial {
            net,
            kind,
            expires_at,
            member: self.0.name.clone(),
            made_at_ms: unix_now_ms(),
            comment,
        }
    }

    /// Lifts the fleet's denial of `net`, on every member.
    pub fn lift(&self, net: IpNet) {
        self.send(Outgoing::Lift(net));
        self.lifted(net);
    }

    fn send(&self, change: Outgoing) {
        // Never waits: a full queue (Redis slow or gone) drops the change, which the next
        // reconnect's re-publication repairs.
        if self.0.outgoing.try_send(change).is_err() {
            metrics::fleet_error("queue_full");
        }
    }

    /// Other members' denials held here.
    pub fn held(&self) -> Vec<Denial> {
        self.0.held.lock().all()
    }

    /// The denial held for exactly `net`, if any.
    pub fn held_for(&self, net: IpNet) -> Option<Denial> {
        self.0.held.lock().get(net).cloned()
    }

    pub fn status(&self) -> FleetStatus {
        let s = &self.0;
        FleetStatus {
            name: s.name.clone(),
            connected: s.connected.load(Ordering::Relaxed),
            members_seen: s.members_seen.load(Ordering::Relaxed),
            denials_held: s.held.lock().len(),
            denials_sent: s.sent.load(Ordering::Relaxed),
            denials_received: s.received.load(Ordering::Relaxed),
            last_lag_ms: s.last_lag_ms.load(Ordering::Relaxed).checked_sub(1),
        }
    }

    /// A local entry for `net` went: the fleet's denial of it, if held, is enforced again.
    pub fn reapply(&self, net: IpNet) {
        if let Some(denial) = self.held_for(net) {
            self.enforce(&denial);
        }
    }

    /// Another member's denial, announced or read from Redis.
    fn receive(&self, denial: Denial, arrival: Arrival) {
        if denial.member == self.0.name {
            return;
        }
        let now = unix_now();
        if let Err(refusal) = accept::judge(&denial, now, &self.0.local.rules()) {
            info!(
                "fleet: {} from {} not enforced here: {refusal}",
                denial.net, denial.member
            );
            metrics::fleet_error("refused");
            return;
        }
        let lag = unix_now_ms().saturating_sub(denial.made_at_ms);
        let taken = self.0.held.lock().take(denial.clone());
        let Taken::Held { evicted } = taken else {
            return;
        };
        if let Some(evicted) = evicted {
            self.unenforce(evicted);
        }
        self.enforce(&denial);
        self.0.received.fetch_add(1, Ordering::Relaxed);
        metrics::fleet_denial("received");
        let how = match arrival {
            // Only an announcement's age is a propagation time: a denial read at a
            // reconnect may be hours old.
            Arrival::Announced => {
                self.0.last_lag_ms.store(lag + 1, Ordering::Relaxed);
                metrics::fleet_propagation(Duration::from_millis(lag));
                format!("{lag} ms after it was made")
            }
            Arrival::Read => "read from Redis".to_owned(),
        };
        info!(
            "fleet: denied {} until {} ({} by {}), {how}",
            denial.net,
            denial.expires_at,
            denial.kind.as_str(),
            denial.member
        );
    }

    /// Another member lifted its denial of `net` (or an operator here did, `--fleet`).
    fn lifted(&self, net: IpNet) {
        if self.0.held.lock().remove(net).is_some() {
            self.unenforce(net);
            info!("fleet: {net} lifted");
        }
    }

    /// The fleet's denials as Redis holds them now: taken, and those held here that Redis
    /// no longer has are let go (lifted while this member was away).
    fn resync(&self, current: Vec<Denial>) {
        let present: std::collections::HashSet<IpNet> = current.iter().map(|d| d.net).collect();
        let gone: Vec<IpNet> = self
            .held()
            .iter()
            .map(|d| d.net)
            .filter(|net| !present.contains(net))
            .collect();
        for net in gone {
            self.lifted(net);
        }
        for denial in current {
            self.receive(denial, Arrival::Read);
        }
    }

    fn expire(&self) {
        let ended = self.0.held.lock().expire(unix_now());
        for net in ended {
            self.unenforce(net);
        }
    }

    /// Writes a held denial into the kernel, unless a local entry denies the prefix already
    /// (its origin is kept) or nothing is enforced (monitor mode).
    fn enforce(&self, denial: &Denial) {
        let stage = &self.0.stage;
        if stage.monitor() || self.local_denies(denial.net) {
            return;
        }
        let left = Duration::from_secs(denial.expires_at.saturating_sub(unix_now()));
        if let Err(e) = stage
            .kernel_lists()
            .deny(denial.net, Some(left), origin::FLEET)
        {
            warn!("fleet: {e:#}");
            metrics::fleet_error("kernel");
        }
    }

    fn unenforce(&self, net: IpNet) {
        let stage = &self.0.stage;
        if stage.monitor() || self.local_denies(net) {
            return;
        }
        if let Err(e) = stage.kernel_lists().undeny(net) {
            warn!("fleet: {e:#}");
            metrics::fleet_error("kernel");
        }
    }

    fn local_denies(&self, net: IpNet) -> bool {
        self.0.local.denies(net)
    }
}

fn unix_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
