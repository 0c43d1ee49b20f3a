//! The policy stage: every captured session is judged (many at once), acted on, reported,
//! and counted against its source's reputation; repeat offenders are denied in the kernel.

use std::{
    net::IpAddr,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Waker},
    time::Instant,
};

use helo_filter_common::origin;
use ipnet::IpNet;
use log::{info, warn};
use parking_lot::{Mutex, MutexGuard, RwLock};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use crate::{
    config::Action,
    kernel::lists::KernelLists,
    logging::{self, Judged},
    metrics,
    pipeline::{
        enforce::{Enforcement, Enforcer},
        history::{FlowRecord, History},
        probe::Probe,
        reputation::Reputation,
        session::{Opening, Session},
    },
    policy::{HeloInput, PolicyEngine, Verdict},
    tasks::Tasks,
};

/// Validations running at once (each may wait on DNS); further sessions wait in the queue.
const VALIDATIONS_IN_FLIGHT: usize = 512;

/// The policy engine in force; replaced whole when the operator changes what it depends on
/// (a reload, a HELO deny pattern).
pub type SharedEngine = Arc<RwLock<PolicyEngine>>;

/// The engine in force now (a cheap clone).
pub fn current(engine: &SharedEngine) -> PolicyEngine {
    engine.read().clone()
}

/// Everything that judges a session and acts on its verdict.
pub struct Stage {
    engine: SharedEngine,
    enforcer: Enforcer,
    reputation: Reputation,
    lists: Mutex<KernelLists>,
    /// The latest verdicts, for `flows` and `explain`.
    history: History,
    /// Reputation denied or released a source since the last snapshot was written.
    reputation_changed: AtomicBool,
    /// Told of each reputation denial put into the kernel (the fleet shares it).
    on_denied: OnceLock<DeniedHook>,
}

/// Called with a source reputation denied and how long for.
pub type DeniedHook = Box<dyn Fn(IpNet, std::time::Duration) + Send + Sync>;

/// What the policy stage's queue carries: sessions, and now and then the watchdog's probe
/// (see [`super::probe`]), which takes the sessions' path.
#[derive(Debug)]
pub enum Queued {
    Session(Session),
    Probe(Probe),
}

/// Starts the judging of sessions, many at once (a slow DNS answer for one HELO never holds
/// up the verdicts of others), at most [`VALIDATIONS_IN_FLIGHT`].
///
/// A validation starts in its caller and goes on in a task of its own only if it has to
/// wait (a DNS answer not in the cache): the ring-buffer reader judges a session whose
/// answers are cached itself, from the wake-up that brought its HELO, where a hand-over to
/// the policy stage's task, then to a validation task, cost a wake-up of a worker each.
pub struct Judge {
    stage: Arc<Stage>,
    in_flight: Arc<Semaphore>,
    tasks: Tasks,
}

impl Judge {
    pub fn new(stage: Arc<Stage>, tasks: Tasks) -> Judge {
        Judge {
            stage,
            in_flight: Arc::new(Semaphore::new(VALIDATIONS_IN_FLIGHT)),
            tasks,
        }
    }

    /// Judges `session` now if a validation slot is free; gives it back if not (it then
    /// waits in the policy queue).
    pub fn now(&self, session: Session) -> Option<Session> {
        // The stage's faults are drilled on the stage's own task.
        #[cfg(feature = "fault-injection")]
        if crate::fault::armed("stage_stall") || crate::fault::armed("stage_panic") {
            return Some(session);
        }
        match Arc::clone(&self.in_flight).try_acquire_owned() {
            Ok(permit) => {
                self.start(session, permit);
                None
            }
            Err(_) => Some(session),
        }
    }

    /// Runs the validation until it completes or must wait; then it goes on in a task.
    fn start(&self, session: Session, permit: OwnedSemaphorePermit) {
        let stage = Arc::clone(&self.stage);
        let mut judging = Box::pin(async move {
            stage.judge(&session).await;
            drop(permit);
        });
        // A waker that does nothing: a validation that has to wait is polled again by
        // its task, which registers the task's own waker.
        let mut context = Context::from_waker(Waker::noop());
        if judging.as_mut().poll(&mut context).is_pending() {
            self.tasks.spawn("policy stage", judging);
        }
    }
}

/// Judges the sessions the ring-buffer reader could not judge at once (no validation slot
/// was free), as slots free up, and answers the watchdog's probes.
pub async fn policy_stage(mut queue: mpsc::Receiver<Queued>, judge: Arc<Judge>) {
    while let Some(queued) = queue.recv().await {
        match queued {
            Queued::Session(session) => {
                // A stage that stops taking from its queue: the watchdog's probe never
                // comes back.
                #[cfg(feature = "fault-injection")]
                if crate::fault::armed("stage_stall") {
                    std::future::pending::<()>().await;
                }
                let Ok(permit) = Arc::clone(&judge.in_flight).acquire_owned().await else {
                    break;
                };
                judge.start(session, permit);
            }
            Queued::Probe(probe) => judge.stage.probe(probe),
        }
    }
}

impl Stage {
    pub fn new(
        engine: PolicyEngine,
        enforcer: Enforcer,
        reputation: Reputation,
        lists: KernelLists,
    ) -> Stage {
        Stage {
            engine: Arc::new(RwLock::new(engine)),
            enforcer,
            reputation,
            lists: Mutex::new(lists),
            history: History::default(),
            reputation_changed: AtomicBool::new(false),
            on_denied: OnceLock::new(),
        }
    }

    /// Sets what is told of each reputation denial (once).
    pub fn on_denied(&self, hook: DeniedHook) {
        let _ = self.on_denied.set(hook);
    }

    /// The engine in force, shared with whoever else judges (the Postfix policy service).
    pub fn engine(&self) -> &SharedEngine {
        &self.engine
    }

    /// Puts `engine` in force for the sessions judged from now on.
    pub fn set_engine(&self, engine: PolicyEngine) {
        *self.engine.write() = engine;
    }

    /// Nothing is enforced: reputation denials are counted, not put into the kernel.
    pub fn monitor(&self) -> bool {
        self.enforcer.monitor()
    }

    pub fn reputation(&self) -> &Reputation {
        &self.reputation
    }

    /// The kernel's allow and deny maps, locked.
    pub fn kernel_lists(&self) -> MutexGuard<'_, KernelLists> {
        self.lists.lock()
    }

    /// The latest verdicts (`flows`, `explain`).
    pub fn history(&self) -> &History {
        &self.history
    }

    /// Whether reputation denied or released a source since the last call (a snapshot is
    /// then due).
    pub fn take_reputation_changed(&self) -> bool {
        self.reputation_changed.swap(false, Ordering::Relaxed)
    }

    /// Forgets a source's reputation and lifts its reputation denial from the kernel;
    /// returns whether it had a score or a denial.
    pub fn forget(&self, source: IpNet) -> anyhow::Result<bool> {
        let was_denied = self
            .reputation
            .list(Instant::now())
            .iter()
            .any(|s| s.source == source && s.denied_for.is_some());
        let known = self.reputation.reset(source);
        if was_denied && !self.monitor() {
            self.kernel_lists().undeny(source)?;
        }
        Ok(known)
    }

    /// The watchdog's probe: takes what a verdict takes (the engine, the kernel lists, the
    /// enforcer's flow table) and answers if all of it is there.
    fn probe(&self, probe: Probe) {
        drop(self.engine.read());
        drop(self.lists.lock());
        if self.enforcer.probe() {
            probe.answer();
        }
    }

    async fn judge(&self, session: &Session) {
        #[cfg(feature = "fault-injection")]
        if crate::fault::armed("stage_panic") {
            panic!("fault injected: stage_panic");
        }
        let client = session.client.ip();
        let input = match &session.opening {
            Opening::Helo(helo) => {
                metrics::helo_event();
                HeloInput {
                    helo: Some(helo.argument.clone()),
                    client,
                    pipelined: helo.pipelined,
                    no_helo: false,
                    reverse_name: None,
                }
            }
            Opening::NoHelo(_) => HeloInput::without_helo(client),
        };
        let started = Instant::now();
        let verdict = current(&self.engine).evaluate(&input).await;
        metrics::verdict(&verdict, started.elapsed());
        let enforcement = self.enforcer.apply(session, &verdict);
        let action = enforcement.map(|done| done.action);
        if let Some(action) = action {
            metrics::action(action, session.timestamp_ns);
        }
        report(session, &verdict, enforcement);
        self.keep_recent(session, &verdict, action);
        self.remember(client, &verdict);
    }

    fn keep_recent(&self, session: &Session, verdict: &Verdict, action: Option<Action>) {
        let (verb, line) = match &session.opening {
            Opening::Helo(helo) => (helo.verb.as_str(), helo.escaped_line.clone()),
            Opening::NoHelo(cause) => ("none", cause.escaped_line().to_owned()),
        };
        let record = FlowRecord {
            at: crate::clock::unix_now(),
            client: session.client,
            server: session.server.to_string(),
            verb,
            line,
            verdict: verdict.decision.as_str(),
            reasons: verdict.reason_codes().map(|r| r.as_str()).collect(),
            score: verdict.score,
            action: action.map_or("none", Action::as_str),
        };
        self.history.record(record);
    }

    /// Counts a verdict against its source's reputation, denying a repeat offender.
    pub fn remember(&self, client: IpAddr, verdict: &Verdict) {
        if let Some(source) = self.reputation.record(client, verdict, Instant::now()) {
            self.deny(source);
        }
    }

    /// Ends expired denials, enforces the cap, refreshes the gauges (once a second).
    pub fn sweep_reputation(&self) {
        let released = self.reputation.sweep(Instant::now());
        // In monitor mode nothing went into the kernel.
        if !self.enforcer.monitor() {
            let mut lists = self.lists.lock();
            for source in released.expired.iter().chain(&released.evicted) {
                if let Err(e) = lists.undeny(*source) {
                    warn!("{e:#}");
                }
            }
        }
        for source in &released.evicted {
            info!("deny list full: let {source} go (lowest score)");
        }
        if !released.expired.is_empty() || !released.evicted.is_empty() {
            self.reputation_changed.store(true, Ordering::Relaxed);
        }
        metrics::deny_evictions(released.evicted.len());
        metrics::reputation(self.reputation.sources(), self.reputation.denied());
    }

    /// Denies a repeat offender in the kernel (not in monitor mode: counted only).
    fn deny(&self, source: IpNet) {
        let ttl = self.reputation.settings().deny_ttl;
        if self.enforcer.monitor() {
            info!("monitor mode: would deny {source} for {} s", ttl.as_secs());
            return;
        }
        let mut lists = self.lists.lock();
        self.reputation_changed.store(true, Ordering::Relaxed);
        match lists.deny(source, Some(ttl), origin::REPUTATION) {
            Ok(()) => {
                info!(
                    "denied {source} for {} s: reputation score over the threshold",
                    ttl.as_secs()
                );
                if let Some(hook) = self.on_denied.get() {
                    hook(source, ttl);
                }
            }
            Err(e) => warn!("{e:#}"),
        }
    }
}

/// One log line per session: who, what they said (escaped), the verdict and the action
/// (after `destroyed=true|false` where the MTA's socket was to be destroyed).
fn report(session: &Session, verdict: &Verdict, enforcement: Option<Enforcement>) {
    let action = enforcement.map_or("none", |done| done.action.as_str());
    if logging::json() {
        let (verb, pipelined, cause, line) = match &session.opening {
            Opening::Helo(helo) => (
                Some(helo.verb.as_str()),
                Some(helo.pipelined),
                None,
                helo.escaped_line.as_str(),
            ),
            Opening::NoHelo(cause) => (None, None, Some(cause.as_str()), cause.escaped_line()),
        };
        let judged = Judged {
            kind: if verb.is_some() { "helo" } else { "no_helo" },
            client: &session.client,
            server: Some(&session.server),
            verb,
            pipelined,
            cause,
            line,
            instance: None,
        };
        let destroyed = enforcement.and_then(|done| done.destroyed);
        logging::verdict_json(&judged, verdict, action, destroyed);
        return;
    }
    let what = match &session.opening {
        Opening::Helo(helo) => format!(
            "helo client={} server={} verb={} pipelined={} line=\"{}\"",
            session.client,
            session.server,
            helo.verb.as_str(),
            helo.pipelined,
            helo.escaped_line
        ),
        Opening::NoHelo(cause) => format!(
            "no_helo client={} server={} cause={} line=\"{}\"",
            session.client,
            session.server,
            cause.as_str(),
            cause.escaped_line()
        ),
    };
    let reasons: Vec<&str> = verdict.reason_codes().map(|r| r.as_str()).collect();
    let notes: Vec<&str> = verdict.notes.iter().map(|n| n.as_str()).collect();
    let destroyed = enforcement
        .and_then(|done| done.destroyed)
        .map_or_else(String::new, |d| format!(" destroyed={d}"));
    info!(
        "{what} verdict={} reasons={} score={} notes={}{}{destroyed} action={}",
        verdict.decision.as_str(),
        reasons.join(","),
        verdict.score,
        notes.join(","),
        verdict.dns_error_field(),
        action
    );
}
