//! What the control socket reaches: the allow and deny lists (the configuration file's, and
//! the operator's own kept in the state directory), reputation, status, the latest verdicts,
//! reload and detach.
//!
//! Every change is applied to the kernel maps, then written to disk, then taken into memory,
//! and only then acknowledged; if writing fails the kernel is put back as it was.

pub mod client;
pub mod control;
pub mod state;

use std::{
    collections::HashSet,
    net::IpAddr,
    path::PathBuf,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use helo_filter_common::{Counter, origin};
use ipnet::IpNet;
use log::{info, warn};
use serde_json::{Value, json};
use tokio::sync::Notify;

use crate::{
    clock::{boot_time_ns, unix_now},
    config::PolicyFile,
    dns::DnsClient,
    kernel::pins::PinDir,
    kernel::{Attachment, CounterReader},
    operator::control::{Command, Handler},
    operator::state::{
        HeloEntry, Lists, NetEntry, ReputationSnapshot, SourceRecord, StateDir, in_force,
    },
    pipeline::reputation::source_of,
    pipeline::stage::Stage,
    policy::{DenyPattern, PolicyEngine},
};

/// Re-reads the configuration file and applies the command line over it.
pub type Reloader = Box<dyn Fn() -> anyhow::Result<PolicyFile> + Send + Sync>;

/// The longest comment kept with an entry.
const MAX_COMMENT: usize = 200;

/// What the lists are made of, under one lock so that they change together.
struct Inner {
    file: PolicyFile,
    lists: Lists,
    dns: Option<DnsClient>,
}

pub struct Operator {
    stage: Arc<Stage>,
    state: StateDir,
    pins: PinDir,
    inner: Mutex<Inner>,
    reload: Reloader,
    /// The configuration file, if any.
    config: Option<PathBuf>,
    attachments: Mutex<Vec<(String, Attachment)>>,
    counters: Arc<CounterReader>,
    started: Instant,
    /// Notified when the operator detaches: the daemon then exits.
    pub detached: Arc<Notify>,
}

/// The kernel lists the configuration and the operator's entries call for at `now`.
#[derive(Default, PartialEq)]
struct Desired {
    allow: HashSet<IpNet>,
    /// With the time left for entries that expire.
    deny: Vec<(IpNet, Option<Duration>)>,
}

/// With `expired`, entries whose time is up count too (with no time left): what the kernel
/// may still hold, so that a change removes them.
fn desired(file: &PolicyFile, lists: &Lists, now: u64, expired: bool) -> Desired {
    let left = |at: Option<u64>| at.map(|at| Duration::from_secs(at.saturating_sub(now)));
    let operator = |entries: &[NetEntry]| -> Vec<(IpNet, Option<Duration>)> {
        entries
            .iter()
            .filter(|e| expired || in_force(e.expires_at, now))
            .map(|e| (e.net, left(e.expires_at)))
            .collect()
    };
    Desired {
        allow: file
            .lists
            .allow
            .iter()
            .copied()
            .chain(operator(&lists.allow).into_iter().map(|(net, _)| net))
            .collect(),
        deny: file
            .lists
            .deny
            .iter()
            .map(|net| (*net, None))
            .chain(operator(&lists.deny))
            .collect(),
    }
}

/// The engine for the file's settings plus the operator's entries in force: allow-listed
/// sources are trusted, HELO patterns denied.
fn engine(
    file: &PolicyFile,
    lists: &Lists,
    dns: Option<DnsClient>,
) -> anyhow::Result<PolicyEngine> {
    let now = unix_now();
    let mut merged = file.clone();
    merged.lists.allow.extend(
        lists
            .allow
            .iter()
            .filter(|e| in_force(e.expires_at, now))
            .map(|e| e.net),
    );
    for entry in lists
        .deny_helo
        .iter()
        .filter(|e| in_force(e.expires_at, now))
    {
        merged
            .policy
            .deny
            .push(DenyPattern::parse(&entry.pattern).map_err(|e| anyhow::anyhow!("{e}"))?);
    }
    Ok(PolicyEngine::new(merged.settings(), dns))
}

fn ttl_to_expiry(ttl_secs: Option<u64>, now: u64) -> Result<Option<u64>, String> {
    match ttl_secs {
        Some(0) => Err("--ttl: at least 1 second".to_owned()),
        Some(secs) => Ok(Some(now.saturating_add(secs))),
        None => Ok(None),
    }
}

fn check_comment(comment: &Option<String>) -> Result<(), String> {
    match comment {
        Some(c) if c.len() > MAX_COMMENT => Err(format!("--comment: at most {MAX_COMMENT} bytes")),
        Some(c) if c.chars().any(char::is_control) => {
            Err("--comment: no control characters".to_owned())
        }
        _ => Ok(()),
    }
}

fn net_entry_json(entry: &NetEntry, now: u64) -> Value {
    json!({
        "net": entry.net.to_string(),
        "source": "operator",
        "expires_at": entry.expires_at,
        "expires_in_secs": entry.expires_at.map(|at| at.saturating_sub(now)),
        "comment": entry.comment,
        "added_at": entry.added_at,
    })
}

fn config_entry_json(net: &IpNet) -> Value {
    json!({
        "net": net.to_string(),
        "source": "config",
        "expires_at": null,
        "expires_in_secs": null,
        "comment": null,
        "added_at": null,
    })
}

impl Operator {
    /// Takes over the kernel lists as a previous daemon left them (pinned maps): the
    /// configuration's and the operator's entries are written (overwriting, no gap), the ones
    /// no longer called for are removed, and reputation denials found there are taken back
    /// into reputation with their remaining time.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        stage: Arc<Stage>,
        state: StateDir,
        pins: PinDir,
        file: PolicyFile,
        dns: Option<DnsClient>,
        reload: Reloader,
        config: Option<PathBuf>,
        counters: Arc<CounterReader>,
    ) -> anyhow::Result<Operator> {
        let lists = state.load_lists()?;
        let snapshot = state.load_reputation()?;
        let now = Instant::now();
        let unix = unix_now();
        let age = Duration::from_secs(unix.saturating_sub(snapshot.taken_at));
        for record in &snapshot.sources {
            let denied_for = record
                .denied_until
                .filter(|until| *until > unix)
                .map(|until| Duration::from_secs(until - unix));
            stage
                .reputation
                .restore(record.source, record.score, age, denied_for, now);
        }
        let operator = Operator {
            stage,
            state,
            pins,
            inner: Mutex::new(Inner { file, lists, dns }),
            reload,
            config,
            attachments: Mutex::new(Vec::new()),
            counters,
            started: now,
            detached: Arc::new(Notify::new()),
        };
        operator.reconcile_kernel()?;
        operator.rebuild_engine()?;
        Ok(operator)
    }

    /// Records how each interface runs the program (for `status`).
    pub fn attached(&self, attachments: Vec<(String, Attachment)>) {
        *self.attachments.lock().unwrap_or_else(|e| e.into_inner()) = attachments;
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn reconcile_kernel(&self) -> anyhow::Result<()> {
        let inner = self.inner();
        let want = desired(&inner.file, &inner.lists, unix_now(), false);
        let mut kernel = self.stage.lists.lock().unwrap_or_else(|e| e.into_inner());
        let boot = boot_time_ns();
        let known: HashSet<IpNet> = self
            .stage
            .reputation
            .list(Instant::now())
            .iter()
            .filter(|s| s.denied_for.is_some())
            .map(|s| s.source)
            .collect();
        for net in &want.allow {
            kernel.allow(*net)?;
        }
        for (net, ttl) in &want.deny {
            kernel.deny(*net, *ttl, origin::OPERATOR)?;
        }
        for net in kernel.allowed() {
            if !want.allow.contains(&net) {
                kernel.disallow(net)?;
            }
        }
        let wanted_deny: HashSet<IpNet> = want.deny.iter().map(|(net, _)| *net).collect();
        for (net, entry) in kernel.denied() {
            let expired = entry.expires_ns != 0 && entry.expires_ns <= boot;
            if entry.origin == origin::REPUTATION && expired {
                // Ran out while the daemon was down: the kernel ignores it; free its slot.
                kernel.undeny(net)?;
            } else if entry.origin == origin::REPUTATION {
                if !known.contains(&net) {
                    // Denied after the last snapshot: keep it, and let reputation know.
                    let left = Duration::from_nanos(entry.expires_ns.saturating_sub(boot));
                    let threshold = self.stage.reputation.settings().threshold;
                    let now = Instant::now();
                    let reputation = &self.stage.reputation;
                    reputation.restore(net, threshold, Duration::ZERO, Some(left), now);
                }
            } else if !wanted_deny.contains(&net) {
                kernel.undeny(net)?;
            }
        }
        // Snapshot denials the kernel no longer has (expired while the daemon was down, or
        // a fresh kernel): put them back.
        for source in self.stage.reputation.list(Instant::now()) {
            if let Some(left) = source.denied_for
                && !self.stage.enforcer.monitor()
            {
                kernel.deny(source.source, Some(left), origin::REPUTATION)?;
            }
        }
        crate::metrics::list_sizes(want.allow.len(), want.deny.len());
        Ok(())
    }

    fn rebuild_engine(&self) -> anyhow::Result<()> {
        let inner = self.inner();
        let fresh = engine(&inner.file, &inner.lists, inner.dns.clone())?;
        *self.stage.engine.write().unwrap_or_else(|e| e.into_inner()) = fresh;
        Ok(())
    }

    /// Makes `lists` (and `file`) the ones in force: kernel, disk, memory, engine.
    fn commit(
        &self,
        inner: &mut Inner,
        file: Option<PolicyFile>,
        lists: Lists,
        dns: Option<Option<DnsClient>>,
    ) -> Result<(), String> {
        let now = unix_now();
        let next_file = file.as_ref().unwrap_or(&inner.file);
        let fresh = engine(next_file, &lists, dns.clone().unwrap_or(inner.dns.clone()))
            .map_err(|e| format!("{e:#}"))?;
        let before = desired(&inner.file, &inner.lists, now, true);
        let after = desired(next_file, &lists, now, false);
        self.apply(&before, &after).map_err(|e| format!("{e:#}"))?;
        if lists != inner.lists
            && let Err(e) = self.state.save_lists(&lists)
        {
            if let Err(undo) = self.apply(&after, &before) {
                warn!("putting the kernel lists back: {undo:#}");
            }
            return Err(format!("{e:#}"));
        }
        inner.lists = lists;
        if let Some(file) = file {
            inner.file = file;
        }
        if let Some(dns) = dns {
            inner.dns = dns;
        }
        *self.stage.engine.write().unwrap_or_else(|e| e.into_inner()) = fresh;
        crate::metrics::list_sizes(after.allow.len(), after.deny.len());
        Ok(())
    }

    /// Changes the kernel lists from `before` to `after`.
    fn apply(&self, before: &Desired, after: &Desired) -> anyhow::Result<()> {
        if before == after {
            return Ok(());
        }
        let mut kernel = self.stage.lists.lock().unwrap_or_else(|e| e.into_inner());
        for net in after.allow.difference(&before.allow) {
            kernel.allow(*net)?;
        }
        for net in before.allow.difference(&after.allow) {
            kernel.disallow(*net)?;
        }
        let kept: HashSet<IpNet> = after.deny.iter().map(|(net, _)| *net).collect();
        for (net, ttl) in &after.deny {
            if !before.deny.contains(&(*net, *ttl)) {
                kernel.deny(*net, *ttl, origin::OPERATOR)?;
            }
        }
        for (net, _) in &before.deny {
            if !kept.contains(net) {
                kernel.undeny(*net)?;
            }
        }
        Ok(())
    }

    /// Ends operator entries whose time is up (called every second).
    pub fn expire(&self) {
        let mut inner = self.inner();
        let now = unix_now();
        let mut lists = inner.lists.clone();
        lists.allow.retain(|e| in_force(e.expires_at, now));
        lists.deny.retain(|e| in_force(e.expires_at, now));
        lists.deny_helo.retain(|e| in_force(e.expires_at, now));
        if lists != inner.lists {
            info!("operator list entries expired");
            if let Err(e) = self.commit(&mut inner, None, lists, None) {
                warn!("expiring list entries: {e}");
            }
        }
    }

    /// Writes the reputation snapshot.
    pub fn snapshot_reputation(&self) -> anyhow::Result<()> {
        let unix = unix_now();
        let sources = self
            .stage
            .reputation
            .list(Instant::now())
            .into_iter()
            .map(|s| SourceRecord {
                source: s.source,
                score: s.score,
                denied_until: s.denied_for.map(|d| unix + d.as_secs().max(1)),
            })
            .collect();
        self.state.save_reputation(&ReputationSnapshot {
            taken_at: unix,
            sources,
        })
    }

    fn add_net(
        &self,
        deny: bool,
        net: IpNet,
        ttl: Option<u64>,
        comment: Option<String>,
    ) -> Result<Value, String> {
        check_comment(&comment)?;
        let now = unix_now();
        let net = net.trunc();
        let entry = NetEntry {
            net,
            expires_at: ttl_to_expiry(ttl, now)?,
            comment,
            added_at: now,
        };
        let mut inner = self.inner();
        let mut lists = inner.lists.clone();
        let list = if deny {
            &mut lists.deny
        } else {
            &mut lists.allow
        };
        list.retain(|e| e.net != net);
        list.push(entry.clone());
        self.commit(&mut inner, None, lists, None)?;
        info!(
            "operator: {} {net}{}",
            if deny { "denied" } else { "allowed" },
            ttl.map_or(String::new(), |t| format!(" for {t} s"))
        );
        Ok(net_entry_json(&entry, now))
    }

    fn del_net(&self, deny: bool, net: IpNet) -> Result<Value, String> {
        let net = net.trunc();
        let name = if deny { "deny" } else { "allow" };
        let mut inner = self.inner();
        let in_file = if deny {
            inner.file.lists.deny.contains(&net)
        } else {
            inner.file.lists.allow.contains(&net)
        };
        let mut lists = inner.lists.clone();
        let list = if deny {
            &mut lists.deny
        } else {
            &mut lists.allow
        };
        let before = list.len();
        list.retain(|e| e.net != net);
        if list.len() == before {
            return Err(if in_file {
                format!(
                    "{net} is in the configuration file ([lists] {name}): edit the file and reload"
                )
            } else {
                format!("{net} is not in the {name} list")
            });
        }
        self.commit(&mut inner, None, lists, None)?;
        info!("operator: removed {net} from the {name} list");
        Ok(json!({ "removed": net.to_string() }))
    }

    fn add_helo(
        &self,
        pattern: String,
        ttl: Option<u64>,
        comment: Option<String>,
    ) -> Result<Value, String> {
        check_comment(&comment)?;
        DenyPattern::parse(&pattern).map_err(|e| format!("--helo {pattern:?}: {e}"))?;
        let now = unix_now();
        let entry = HeloEntry {
            pattern: pattern.clone(),
            expires_at: ttl_to_expiry(ttl, now)?,
            comment,
            added_at: now,
        };
        let mut inner = self.inner();
        let mut lists = inner.lists.clone();
        lists.deny_helo.retain(|e| e.pattern != pattern);
        lists.deny_helo.push(entry.clone());
        self.commit(&mut inner, None, lists, None)?;
        info!("operator: HELO pattern {pattern:?} denied");
        Ok(json!({
            "pattern": entry.pattern,
            "source": "operator",
            "expires_at": entry.expires_at,
            "comment": entry.comment,
            "added_at": entry.added_at,
        }))
    }

    fn del_helo(&self, pattern: String) -> Result<Value, String> {
        let mut inner = self.inner();
        let mut lists = inner.lists.clone();
        let before = lists.deny_helo.len();
        lists.deny_helo.retain(|e| e.pattern != pattern);
        if lists.deny_helo.len() == before {
            return Err(format!("HELO pattern {pattern:?} is not in the deny list"));
        }
        self.commit(&mut inner, None, lists, None)?;
        Ok(json!({ "removed": pattern }))
    }

    fn allow_list(&self) -> Value {
        let inner = self.inner();
        let now = unix_now();
        let entries: Vec<Value> = inner
            .file
            .lists
            .allow
            .iter()
            .map(config_entry_json)
            .chain(inner.lists.allow.iter().map(|e| net_entry_json(e, now)))
            .collect();
        json!({ "entries": entries })
    }

    fn deny_list(&self) -> Value {
        let inner = self.inner();
        let now = unix_now();
        let mut entries: Vec<Value> = inner
            .file
            .lists
            .deny
            .iter()
            .map(config_entry_json)
            .chain(inner.lists.deny.iter().map(|e| net_entry_json(e, now)))
            .collect();
        for source in self.stage.reputation.list(Instant::now()) {
            if let Some(left) = source.denied_for {
                entries.push(json!({
                    "net": source.source.to_string(),
                    "source": "reputation",
                    "expires_at": now + left.as_secs(),
                    "expires_in_secs": left.as_secs(),
                    "comment": format!("score {:.2}", source.score),
                    "added_at": null,
                }));
            }
        }
        let helo: Vec<Value> = inner
            .file
            .policy
            .deny
            .iter()
            .map(|p| json!({ "pattern": p.to_string(), "source": "config", "expires_at": null, "comment": null, "added_at": null }))
            .chain(inner.lists.deny_helo.iter().map(|e| {
                json!({
                    "pattern": e.pattern,
                    "source": "operator",
                    "expires_at": e.expires_at,
                    "comment": e.comment,
                    "added_at": e.added_at,
                })
            }))
            .collect();
        json!({ "entries": entries, "helo": helo })
    }

    fn source_json(&self, ip: IpAddr) -> Value {
        let source = source_of(ip);
        let now = Instant::now();
        let state = self
            .stage
            .reputation
            .list(now)
            .into_iter()
            .find(|s| s.source == source);
        json!({
            "source": source.to_string(),
            "score": state.map_or(0.0, |s| s.score),
            "denied_for_secs": state.and_then(|s| s.denied_for).map(|d| d.as_secs()),
        })
    }

    fn reputation_reset(&self, ip: IpAddr) -> Result<Value, String> {
        let source = source_of(ip);
        let was_denied = self
            .stage
            .reputation
            .list(Instant::now())
            .iter()
            .any(|s| s.source == source && s.denied_for.is_some());
        let known = self.stage.reputation.reset(source);
        if was_denied && !self.stage.enforcer.monitor() {
            let mut kernel = self.stage.lists.lock().unwrap_or_else(|e| e.into_inner());
            kernel.undeny(source).map_err(|e| format!("{e:#}"))?;
        }
        self.snapshot_reputation().map_err(|e| format!("{e:#}"))?;
        info!("operator: reputation of {source} reset");
        Ok(json!({ "source": source.to_string(), "was_known": known }))
    }

    fn status(&self) -> Value {
        let inner = self.inner();
        let counters: serde_json::Map<String, Value> = Counter::ALL
            .iter()
            .map(|c| {
                let value = self.counters.read(*c).unwrap_or(0);
                (format!("{c:?}"), json!(value))
            })
            .collect();
        let interfaces: Vec<Value> = self
            .attachments
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(name, a)| json!({ "name": name, "mode": a.mode.as_str(), "adopted": a.adopted }))
            .collect();
        let enforce = &inner.file.enforce;
        json!({
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_secs": self.started.elapsed().as_secs(),
            "interfaces": interfaces,
            "deployment": enforce.deployment.as_str(),
            "action": enforce.action.as_str(),
            "monitor": self.stage.enforcer.monitor(),
            "bundle": inner.file.policy.bundle.as_str(),
            "counters": counters,
            "lists": {
                "allow": inner.file.lists.allow.len() + inner.lists.allow.len(),
                "deny": inner.file.lists.deny.len() + inner.lists.deny.len(),
                "deny_helo": inner.file.policy.deny.len() + inner.lists.deny_helo.len(),
            },
            "reputation": {
                "sources": self.stage.reputation.sources(),
                "denied": self.stage.reputation.denied(),
            },
            "config": self.config.as_ref().map(|p| p.display().to_string()),
            "state_dir": self.state.path().display().to_string(),
            "bpffs_dir": self.pins.root().display().to_string(),
        })
    }

    fn flows(&self, limit: Option<usize>) -> Value {
        let recent = self.stage.recent.lock().unwrap_or_else(|e| e.into_inner());
        let flows: Vec<Value> = recent
            .iter()
            .rev()
            .take(limit.unwrap_or(20))
            .map(|f| serde_json::to_value(f).unwrap_or(Value::Null))
            .collect();
        json!({ "flows": flows })
    }

    async fn reload(&self) -> Result<Value, String> {
        let file = (self.reload)()
            .map_err(|e| format!("reload refused, the running configuration is kept: {e:#}"))?;
        let dns = file
            .dns_client(Some(Arc::new(crate::metrics::DnsMetrics)))
            .map_err(|e| format!("reload refused, the running configuration is kept: {e}"))?;
        let mut inner = self.inner();
        let lists = inner.lists.clone();
        self.commit(&mut inner, Some(file), lists, Some(dns))
            .map_err(|e| format!("reload refused, the running configuration is kept: {e}"))?;
        info!("configuration reloaded");
        Ok(json!({ "reloaded": self.config.as_ref().map(|p| p.display().to_string()) }))
    }

    fn detach(&self) -> Result<Value, String> {
        self.pins.remove_all().map_err(|e| format!("{e:#}"))?;
        info!(
            "operator: detached; every pin under {} removed",
            self.pins.root().display()
        );
        self.detached.notify_one();
        Ok(json!({ "detached": true, "bpffs_dir": self.pins.root().display().to_string() }))
    }
}

impl Handler for Operator {
    async fn handle(&self, command: Command) -> Result<Value, String> {
        match command {
            Command::AllowAdd {
                net,
                ttl_secs,
                comment,
            } => self.add_net(false, net, ttl_secs, comment),
            Command::AllowDel { net } => self.del_net(false, net),
            Command::AllowList => Ok(self.allow_list()),
            Command::DenyAdd {
                net,
                ttl_secs,
                comment,
            } => self.add_net(true, net, ttl_secs, comment),
            Command::DenyHeloAdd {
                pattern,
                ttl_secs,
                comment,
            } => self.add_helo(pattern, ttl_secs, comment),
            Command::DenyDel { net } => self.del_net(true, net),
            Command::DenyHeloDel { pattern } => self.del_helo(pattern),
            Command::DenyList => Ok(self.deny_list()),
            Command::ReputationList { top } => {
                let sources: Vec<Value> = self
                    .stage
                    .reputation
                    .list(Instant::now())
                    .into_iter()
                    .take(top.unwrap_or(usize::MAX))
                    .map(|s| {
                        json!({
                            "source": s.source.to_string(),
                            "score": s.score,
                            "denied_for_secs": s.denied_for.map(|d| d.as_secs()),
                        })
                    })
                    .collect();
                Ok(json!({ "sources": sources }))
            }
            Command::ReputationShow { ip } => Ok(self.source_json(ip)),
            Command::ReputationReset { ip } => self.reputation_reset(ip),
            Command::Status => Ok(self.status()),
            Command::Flows { limit } => Ok(self.flows(limit)),
            Command::Reload => self.reload().await,
            Command::Detach => self.detach(),
        }
    }
}
