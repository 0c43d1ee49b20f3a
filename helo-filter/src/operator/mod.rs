//! What the control socket reaches: the allow and deny lists (the configuration file's, and
//! the operator's own kept in the state directory), reputation, status, the latest verdicts,
//! reload and detach.
//!
//! - `api`: the typed requests, results and errors, shared with the CLI;
//! - `control`: the socket and its JSON lines; `client`: the CLI's end of it;
//! - `dispatch`: which method answers which request;
//! - `lists`: the lists, and keeping the kernel's maps in step with them;
//! - `state`: the files in the state directory;
//! - here: start, status, reputation, reload, detach.
//!
//! Every change is applied to the kernel maps, then written to disk, then taken into memory,
//! and only then acknowledged; if writing fails the kernel is put back as it was.

pub mod api;
pub mod client;
pub mod control;
mod dispatch;
mod explain;
mod fleet;
mod lists;
pub mod state;

use std::{net::IpAddr, path::PathBuf, sync::Arc, time::Instant};

use helo_filter_common::Counter;
use log::info;
use parking_lot::{Mutex, MutexGuard};
use tokio::sync::Notify;

use crate::{
    clock::unix_now,
    config::PolicyFile,
    dns::DnsClient,
    kernel::{Attachment, CounterReader, pins::PinDir},
    operator::{
        api::{
            ConfigState, ControlError, Detached, ErrorKind, Flow, Flows, Interface, ListSizes,
            RefusedReload, Reloaded, ReputationList, ReputationReset, ReputationSizes, SourceScore,
            Status,
        },
        state::{Lists, StateDir},
    },
    pipeline::{
        history::FlowRecord,
        reputation::{SourceState, source_of},
        stage::Stage,
    },
};

/// Re-reads the configuration file and applies the command line over it.
pub type Reloader = Box<dyn Fn() -> anyhow::Result<PolicyFile> + Send + Sync>;

/// What the operator is made of (see [`Operator::start`]).
pub struct Parts {
    pub stage: Arc<Stage>,
    pub state: StateDir,
    pub pins: PinDir,
    /// The configuration the daemon starts with (the file with the flags over it).
    pub file: PolicyFile,
    /// The DNS client `file` calls for.
    pub dns: Option<DnsClient>,
    /// Reads the configuration again, for `reload`.
    pub reload: Reloader,
    /// The configuration file, if any.
    pub config: Option<PathBuf>,
    pub counters: Arc<CounterReader>,
}

/// What the lists are made of, under one lock so that they change together.
struct Inner {
    /// The configuration in force: the one read at the start, or by the last reload that
    /// was applied (of which only the reloadable sections are enforced).
    file: PolicyFile,
    lists: Lists,
    dns: Option<DnsClient>,
}

/// What the reloads did, for `status`.
struct History {
    /// Unix time the configuration in force was read.
    loaded_at: u64,
    /// The sections the last applied reload changed.
    applied: Vec<&'static str>,
    /// The last reload, if refused.
    refused: Option<RefusedReload>,
}

/// The sections a reload applies; the others keep the values read at the start.
const RELOADABLE: [&str; 3] = ["policy", "dns", "lists"];

/// The sections whose values differ between `a` and `b`, in the file's order.
fn changed_sections(a: &PolicyFile, b: &PolicyFile) -> Vec<&'static str> {
    // Spelled out so that a new section cannot be forgotten here.
    let PolicyFile {
        policy,
        dns,
        enforce,
        reputation,
        lists,
        postfix,
        replies,
        kernel,
        control,
        metrics,
        state,
        fleet,
    } = a;
    [
        ("policy", *policy != b.policy),
        ("dns", *dns != b.dns),
        ("enforce", *enforce != b.enforce),
        ("reputation", *reputation != b.reputation),
        ("lists", *lists != b.lists),
        ("postfix", *postfix != b.postfix),
        ("replies", *replies != b.replies),
        ("kernel", *kernel != b.kernel),
        ("control", *control != b.control),
        ("metrics", *metrics != b.metrics),
        ("state", *state != b.state),
        ("fleet", *fleet != b.fleet),
    ]
    .into_iter()
    .filter(|(_, changed)| *changed)
    .map(|(name, _)| name)
    .collect()
}

/// The sections of `file` that differ from the enforced ones and wait for a restart.
fn pending_restart(enforced: &PolicyFile, file: &PolicyFile) -> Vec<String> {
    changed_sections(enforced, file)
        .into_iter()
        .filter(|s| !RELOADABLE.contains(s))
        .map(str::to_owned)
        .collect()
}

pub struct Operator {
    stage: Arc<Stage>,
    state: StateDir,
    pins: PinDir,
    inner: Mutex<Inner>,
    reload: Reloader,
    /// The configuration file, if any.
    config: Option<PathBuf>,
    /// The configuration read at the start: what is enforced of the sections a reload
    /// does not apply.
    enforced: PolicyFile,
    history: Mutex<History>,
    attachments: Mutex<Vec<(String, Attachment)>>,
    counters: Arc<CounterReader>,
    started: Instant,
    /// Notified when the operator detaches: the daemon then exits.
    pub detached: Arc<Notify>,
    /// The fleet, when this member is in one (set once it has joined).
    fleet: std::sync::OnceLock<crate::fleet::Fleet>,
}

impl Operator {
    /// Takes over the kernel lists as a previous daemon left them (pinned maps): the
    /// configuration's and the operator's entries are written (overwriting, no gap), the ones
    /// no longer called for are removed, and reputation denials found there are taken back
    /// into reputation with their remaining time.
    pub fn start(parts: Parts) -> anyhow::Result<Operator> {
        let Parts {
            stage,
            state,
            pins,
            file,
            dns,
            reload,
            config,
            counters,
        } = parts;
        let lists = state.load_lists()?;
        let snapshot = state.load_reputation()?;
        let now = Instant::now();
        let unix = unix_now();
        stage.reputation().restore_snapshot(&snapshot, now, unix);
        let operator = Operator {
            stage,
            state,
            pins,
            enforced: file.clone(),
            inner: Mutex::new(Inner { file, lists, dns }),
            reload,
            config,
            history: Mutex::new(History {
                loaded_at: unix,
                applied: Vec::new(),
                refused: None,
            }),
            attachments: Mutex::new(Vec::new()),
            counters,
            started: now,
            detached: Arc::new(Notify::new()),
            fleet: std::sync::OnceLock::new(),
        };
        operator.reconcile_kernel()?;
        operator.rebuild_engine()?;
        Ok(operator)
    }

    /// Records how each interface runs the program (for `status`).
    pub fn attached(&self, attachments: Vec<(String, Attachment)>) {
        *self.attachments.lock() = attachments;
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock()
    }

    fn history(&self) -> MutexGuard<'_, History> {
        self.history.lock()
    }

    fn config_name(&self) -> Option<String> {
        self.config.as_ref().map(|p| p.display().to_string())
    }

    /// Writes the reputation snapshot. A failure is counted and logged by the state
    /// directory (at most once a minute).
    pub fn snapshot_reputation(&self) -> anyhow::Result<()> {
        let snapshot = self.stage.reputation().snapshot(Instant::now(), unix_now());
        self.state.save_reputation(&snapshot)
    }

    fn source_score(state: &SourceState) -> SourceScore {
        SourceScore {
            source: state.source,
            score: state.score,
            denied_for_secs: state.denied_for.map(|d| d.as_secs()),
        }
    }

    fn reputation_list(&self, top: Option<usize>) -> ReputationList {
        let sources = self
            .stage
            .reputation()
            .list(Instant::now())
            .iter()
            .take(top.unwrap_or(usize::MAX))
            .map(Self::source_score)
            .collect();
        ReputationList { sources }
    }

    fn reputation_show(&self, ip: IpAddr) -> SourceScore {
        Self::source_score(&self.stage.reputation().state(source_of(ip), Instant::now()))
    }

    fn reputation_reset(&self, ip: IpAddr) -> Result<ReputationReset, ControlError> {
        let source = source_of(ip);
        // Written without the source first: a reset that cannot be written is refused with
        // reputation and the kernel as they were.
        let mut snapshot = self.stage.reputation().snapshot(Instant::now(), unix_now());
        snapshot.sources.retain(|s| s.source != source);
        self.state
            .save_reputation(&snapshot)
            .map_err(|e| ControlError::io(&e))?;
        let known = self
            .stage
            .forget(source)
            .map_err(|e| ControlError::kernel(&e))?;
        info!("operator: reputation of {source} reset");
        Ok(ReputationReset {
            source,
            was_known: known,
        })
    }

    fn status(&self) -> Status {
        let inner = self.inner();
        let history = self.history();
        let counters = Counter::ALL
            .iter()
            .map(|c| (format!("{c:?}"), self.counters.read(*c).unwrap_or(0)))
            .collect();
        let interfaces = self
            .attachments
            .lock()
            .iter()
            .map(|(name, a)| Interface {
                name: name.clone(),
                mode: a.mode.as_str().to_owned(),
                adopted: a.adopted,
            })
            .collect();
        // `[enforce]` is read at the start only: what is enforced is the start's.
        let enforce = &self.enforced.enforce;
        Status {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            uptime_secs: self.started.elapsed().as_secs(),
            interfaces,
            deployment: enforce.deployment.as_str().to_owned(),
            action: enforce.action.as_str().to_owned(),
            monitor: self.stage.monitor(),
            bundle: inner.file.policy.bundle.as_str().to_owned(),
            counters,
            lists: ListSizes {
                allow: inner.file.lists.allow.len() + inner.lists.allow.len(),
                deny: inner.file.lists.deny.len() + inner.lists.deny.len(),
                deny_helo: inner.file.policy.helo_patterns().count() + inner.lists.deny_helo.len(),
            },
            reputation: ReputationSizes {
                sources: self.stage.reputation().sources(),
                denied: self.stage.reputation().denied(),
            },
            config: self.config_name(),
            state_dir: self.state.path().display().to_string(),
            bpffs_dir: self.pins.root().display().to_string(),
            configuration: ConfigState {
                file: self.config_name(),
                loaded_at: history.loaded_at,
                applied: history.applied.iter().map(|s| (*s).to_owned()).collect(),
                pending_restart: pending_restart(&self.enforced, &inner.file),
                refused: history.refused.clone(),
            },
            fleet: self.fleet().map(crate::fleet::Fleet::status),
        }
    }

    fn flows(&self, limit: Option<usize>) -> Flows {
        let flows = self
            .stage
            .history()
            .recent(limit.unwrap_or(20))
            .iter()
            .map(flow)
            .collect();
        Flows { flows }
    }

    /// Reads the configuration again and applies its reloadable sections; a file that does
    /// not load is refused and the running configuration kept (and `status` says so).
    pub async fn reload(&self) -> Result<Reloaded, ControlError> {
        let refused = |e: ControlError| {
            self.history().refused = Some(RefusedReload {
                at: unix_now(),
                error: e.message.clone(),
            });
            e.context("reload refused, the running configuration is kept")
        };
        let file = (self.reload)().map_err(|e| {
            refused(ControlError::new(
                ErrorKind::InvalidConfig,
                format!("{e:#}"),
            ))
        })?;
        let dns = file
            .dns_client(Some(Arc::new(crate::metrics::DnsMetrics)))
            .map_err(|e| refused(ControlError::new(ErrorKind::InvalidConfig, e.to_string())))?;
        let mut inner = self.inner();
        let changed = changed_sections(&inner.file, &file);
        let pending = pending_restart(&self.enforced, &file);
        let lists = inner.lists.clone();
        self.commit(&mut inner, Some(file), lists, Some(dns))
            .map_err(refused)?;
        let applied: Vec<&'static str> = changed
            .into_iter()
            .filter(|s| RELOADABLE.contains(s))
            .collect();
        {
            let mut history = self.history();
            history.loaded_at = unix_now();
            history.applied.clone_from(&applied);
            history.refused = None;
        }
        drop(inner);
        if pending.is_empty() {
            info!("configuration reloaded; applied: {}", sections(&applied));
        } else {
            info!(
                "configuration reloaded; applied: {}; changed, in force at the next restart: {}",
                sections(&applied),
                pending.join(", ")
            );
        }
        Ok(Reloaded {
            reloaded: self.config_name(),
            applied: applied.iter().map(|s| (*s).to_owned()).collect(),
            pending_restart: pending,
        })
    }

    fn detach(&self) -> Result<Detached, ControlError> {
        self.pins.remove_all().map_err(|e| ControlError::io(&e))?;
        info!(
            "operator: detached; every pin under {} removed",
            self.pins.root().display()
        );
        self.detached.notify_one();
        Ok(Detached {
            detached: true,
            bpffs_dir: self.pins.root().display().to_string(),
            daemon: None,
        })
    }
}

fn sections(names: &[&str]) -> String {
    if names.is_empty() {
        "nothing changed".to_owned()
    } else {
        names.join(", ")
    }
}

fn flow(record: &FlowRecord) -> Flow {
    Flow {
        at: record.at,
        client: record.client.to_string(),
        server: record.server.clone(),
        verb: record.verb.to_owned(),
        line: record.line.clone(),
        verdict: record.verdict.to_owned(),
        reasons: record.reasons.iter().map(|r| (*r).to_owned()).collect(),
        score: record.score,
        action: record.action.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reloads_tell_applied_sections_from_those_waiting_for_a_restart() {
        let start = PolicyFile::default();
        let mut next = start.clone();
        assert!(changed_sections(&start, &next).is_empty());
        next.policy
            .deny_helo
            .push(crate::policy::DenyPattern::parse("*.example.net").expect("pattern"));
        next.enforce.action = crate::config::Action::Drop;
        next.reputation.deny_ttl_secs += 1;
        assert_eq!(
            changed_sections(&start, &next),
            ["policy", "enforce", "reputation"]
        );
        assert_eq!(pending_restart(&start, &next), ["enforce", "reputation"]);
        // Put back as it was: nothing waits any more.
        next.enforce = start.enforce.clone();
        next.reputation = start.reputation.clone();
        assert!(pending_restart(&start, &next).is_empty());
    }

    #[test]
    fn each_section_is_either_reloadable_or_waits_for_a_restart() {
        let start = PolicyFile::default();
        type Edit = fn(&mut PolicyFile);
        let edits: [(&str, Edit); 11] = [
            ("policy", |f| f.policy.our_addrs.push([192, 0, 2, 1].into())),
            ("dns", |f| f.dns.fail_closed = true),
            ("enforce", |f| f.enforce.monitor = true),
            ("reputation", |f| f.reputation.half_life_secs += 1),
            ("lists", |f| {
                f.lists.deny.push("192.0.2.0/24".parse().expect("net"))
            }),
            ("postfix", |f| f.postfix.socket_group = "mail".to_owned()),
            ("replies", |f| {
                f.replies.code = Some(crate::config::ReplyCode(554))
            }),
            ("kernel", |f| f.kernel.smtp_ports = vec![2525]),
            ("control", |f| f.control.socket = "/run/other.sock".into()),
            ("metrics", |f| {
                f.metrics.listen = ([127, 0, 0, 1], 9726).into()
            }),
            ("state", |f| f.state.dir = "/var/lib/other".into()),
        ];
        for (section, edit) in edits {
            let mut next = start.clone();
            edit(&mut next);
            assert_eq!(changed_sections(&start, &next), [section]);
            let waits = !["policy", "dns", "lists"].contains(&section);
            assert_eq!(
                pending_restart(&start, &next) == [section],
                waits,
                "{section}"
            );
        }
    }
}
