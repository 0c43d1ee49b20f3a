//! `helo-filter run`: the daemon, in phases: validate the configuration, build what judges
//! (state, engine, reputation, lists), load and attach (or adopt) the kernel program, spawn
//! the tasks, tell systemd it is ready (`Type=notify`), and wait for a signal, a `detach` or
//! a task's end. SIGHUP reloads the configuration, like `helo-filter reload`.

use std::{sync::Arc, time::Duration};

use anyhow::{Context as _, bail};
use aya::{
    Ebpf,
    maps::{HashMap, RingBuf},
};
use helo_filter_common::{KernelConfig, REPLY_MARK, maps};
use log::{error, info, warn};
use tokio::{
    signal::unix::{Signal, SignalKind, signal},
    sync::mpsc,
};

use crate::{
    config::{Action, Deployment, HEARTBEAT_INTERVAL_MS, PolicyFile, RunArgs},
    fleet::{self, Fleet, wire::DenialKind},
    io::{
        notify::{self, Notifier},
        raw_socket::RawSockets,
    },
    kernel::{
        self, CounterReader, Heartbeat, lists::KernelLists, pass_through::PassThrough, pins::PinDir,
    },
    metrics,
    operator::{
        self, Operator,
        control::{self, ControlSocket},
        state::StateDir,
    },
    pipeline::{
        answer::{Answerer, FREE_UNANSWERED_AFTER},
        capture::{self, Limits},
        enforce::Enforcer,
        held::HeldSegments,
        known_good::{KnownGood, KnownGoodSettings},
        probe::{self, Probe},
        reinject::Reinjector,
        reputation::{Reputation, ReputationSettings},
        stage::{self, Judge, Stage, policy_stage},
    },
    policy::PolicyEngine,
    postfix::{Listener, PolicyService},
    tasks::{Ended, Tasks},
};

/// Sessions waiting for the policy stage; past this they are passed unjudged (counted).
const POLICY_QUEUE: usize = 4096;
const COUNTER_REFRESH: Duration = Duration::from_secs(1);
/// How often action `reply` forgets the flows it answered long ago, and held segments and
/// verdicts' marks their time.
const ANSWERED_SWEEP: Duration = Duration::from_secs(1);
/// How often action `reply` frees the MTA of clients that sent nothing more: a tenth of
/// the wait, so a flow is freed within 10% of it.
const FREEING_SWEEP: Duration = FREE_UNANSWERED_AFTER.checked_div(10).unwrap();
/// How often expired denials end and the deny-list cap is enforced.
const REPUTATION_SWEEP: Duration = Duration::from_secs(1);
/// The exit status after a task panicked (EX_SOFTWARE): an internal error, for systemd's
/// `Restart=on-failure`.
pub const EXIT_TASK_PANICKED: i32 = 70;

/// The policy queue's length; a test build can shrink it to one session
/// (`HELO_FILTER_FAULT=tiny_queue`) so that a few sessions fill it.
fn policy_queue() -> usize {
    #[cfg(feature = "fault-injection")]
    if crate::fault::armed("tiny_queue") {
        return 1;
    }
    POLICY_QUEUE
}

/// What the build phase makes: the loaded (not yet attached) program and everything that
/// judges and enforces.
struct Daemon {
    ebpf: Ebpf,
    pins: PinDir,
    stage: Arc<Stage>,
    operator: Arc<Operator>,
    counters: Arc<CounterReader>,
    heartbeat: Heartbeat,
    /// Action `reply` only.
    answerer: Option<Arc<Answerer>>,
    /// When the kernel reports held segments (action `reply`, or re-injection on).
    held: Option<Arc<HeldSegments>>,
}

/// Runs the daemon; returns its exit status.
pub async fn run(args: RunArgs) -> anyhow::Result<i32> {
    // First of all, so that a SIGHUP during the start (a `systemctl reload` racing it)
    // waits for the loop below instead of killing the daemon.
    let signals = Signals::new()?;
    let notifier = Arc::new(Notifier::from_env());
    let file = args.configuration()?;
    file.warnings().iter().for_each(|w| warn!("{w}"));
    if file.kernel.interfaces.is_empty() {
        bail!("no interface to attach to: --iface IFACE, or [kernel] interfaces in the config");
    }
    let mut daemon = build(&file, args)?;
    // Each eBPF object's loading parsed the kernel's BTF (tens of MB) and freed it; glibc
    // keeps freed heap for reuse unless asked, and the daemon never needs that much again.
    // SAFETY: malloc_trim(3) only hands free heap pages back to the kernel.
    unsafe { libc::malloc_trim(0) };
    attach(&file, &mut daemon)?;
    let (tasks, ended) = Tasks::new();
    let running = spawn(&file, daemon, &tasks, &notifier).await?;
    info!(
        "ready: capturing on {} interface(s)",
        file.kernel.interfaces.len()
    );
    // Only now: a failed attach or spawn has ended the daemon (non-zero) before this, which
    // fails `systemctl start`.
    notifier.ready();
    notifier.status(&format!(
        "capturing on {}",
        file.kernel.interfaces.join(", ")
    ));
    wait(&file, running, ended, signals, &notifier).await
}

/// The signals the daemon handles, registered before it starts.
struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
}

impl Signals {
    fn new() -> anyhow::Result<Signals> {
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }
}

/// Opens the state and the pins (unreadable state stops the daemon before it touches the
/// kernel), starts the metrics endpoint and the DNS client, loads the program, and builds
/// the stage and the operator, whose lists are in the kernel before the first packet.
fn build(file: &PolicyFile, args: RunArgs) -> anyhow::Result<Daemon> {
    let enforce = &file.enforce;
    control::ensure_no_daemon(&file.control.socket)?;
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

    let mut ebpf = kernel::load(
        &file.kernel_config(),
        file.kernel.ringbuf_bytes,
        Some(&pins),
    )?;
    let flows = HashMap::try_from(ebpf.take_map(maps::FLOWS).context("FLOWS map missing")?)?;
    let held = held_segments(file)?;
    let answerer = match (file.enforce.enforced_action(), &held) {
        (Action::Reply, Some(held)) => {
            let sockets = RawSockets::open(REPLY_MARK)
                .context("opening the raw sockets of action reply (CAP_NET_RAW needed)")?;
            Some(Arc::new(Answerer::new(
                enforce.deployment,
                sockets,
                file.replies(),
                Arc::clone(held),
            )))
        }
        _ => None,
    };
    let known_good = match file.enforce.enforced_action() {
        Action::Monitor => None,
        _ if enforce.known_good_after == 0 => None,
        _ => Some(KnownGood::new(
            KnownGoodSettings {
                after: enforce.known_good_after,
                ttl: Duration::from_secs(enforce.known_good_ttl_secs),
            },
            HashMap::try_from(
                ebpf.take_map(maps::KNOWN_GOOD)
                    .context("KNOWN_GOOD map missing")?,
            )?,
        )),
    };
    let stage = Arc::new(Stage::new(
        PolicyEngine::new(file.settings(), dns.clone()),
        Enforcer::new(
            flows,
            enforce.deployment,
            file.enforce.enforced_action(),
            answerer.clone(),
            known_good,
            held.clone(),
        ),
        Reputation::new(reputation_settings(file)),
        KernelLists::new(&mut ebpf)?,
    ));
    let counters = Arc::new(CounterReader::new(&mut ebpf)?);
    let config = args.policy.config.file();
    let operator = Arc::new(Operator::start(operator::Parts {
        stage: Arc::clone(&stage),
        state,
        pins: pins.clone(),
        file: file.clone(),
        dns,
        reload: Box::new(move || Ok(args.configuration()?)),
        config,
        counters: Arc::clone(&counters),
    })?);
    let mut heartbeat = Heartbeat::new(&mut ebpf)?;
    heartbeat.beat()?;
    Ok(Daemon {
        ebpf,
        pins,
        stage,
        operator,
        counters,
        heartbeat,
        answerer,
        held,
    })
}

/// The store of held segments, where the kernel reports them (the same condition as
/// `KernelConfig::REPORT_HELD`), with the re-injector when re-injection is on.
fn held_segments(file: &PolicyFile) -> anyhow::Result<Option<Arc<HeldSegments>>> {
    let enforce = &file.enforce;
    if file.kernel_config().options & KernelConfig::REPORT_HELD == 0 {
        return Ok(None);
    }
    let reinjector = if enforce.reinjects() {
        let pass = PassThrough::load().context(
            "loading the program that re-injects held segments \
             ([enforce] reinject_held = false, or --no-reinject, does without)",
        )?;
        Some(Reinjector::new(pass))
    } else {
        None
    };
    Ok(Some(Arc::new(HeldSegments::new(reinjector))))
}

/// Joins the fleet (`[fleet]`, docs/fleet.md): its link to Redis runs as a task, reputation
/// denials are shared when so configured, and the start waits up to 5 s for the fleet's
/// denials, so that a source another member denied meanwhile is dropped before READY=1.
async fn join_fleet(
    file: &PolicyFile,
    stage: &Arc<Stage>,
    operator: &Arc<Operator>,
    tasks: &Tasks,
) -> anyhow::Result<()> {
    let local = Arc::clone(operator) as Arc<dyn fleet::Local>;
    let fleet = Fleet::start(&file.fleet, Arc::clone(stage), local, tasks)?;
    operator.set_fleet(fleet.clone());
    if fleet.shares_reputation() {
        let sharing = fleet.clone();
        stage.on_denied(Box::new(move |source, ttl| {
            let expires_at = crate::clock::unix_now() + ttl.as_secs();
            sharing.share(source, DenialKind::Reputation, expires_at, None);
        }));
    }
    if !fleet.synced(fleet::START_WAIT).await {
        warn!(
            "fleet: Redis did not answer within {} s: starting without the fleet's denials \
             (read when it answers)",
            fleet::START_WAIT.as_secs()
        );
    }
    Ok(())
}

/// Reputation as configured; under action `reply` a reject counts `reply_weight` of its
/// weight.
fn reputation_settings(file: &PolicyFile) -> ReputationSettings {
    let settings = ReputationSettings::from(&file.reputation);
    match file.enforce.enforced_action() {
        Action::Reply => settings.replying(file.reputation.reply_weight),
        _ => settings,
    }
}

/// Attaches the program to every interface (adopting a pinned link where there is one) and
/// releases the pins of interfaces no longer configured.
fn attach(file: &PolicyFile, daemon: &mut Daemon) -> anyhow::Result<()> {
    // On an MX, `drop` and `reply` must also keep the destroyed socket's RST from the client.
    let egress = matches!(file.enforce.enforced_action(), Action::Drop | Action::Reply)
        && file.enforce.deployment == Deployment::Mx;
    let ifaces = &file.kernel.interfaces;
    let mut attachments = Vec::new();
    for iface in ifaces {
        if egress {
            kernel::attach_egress(&mut daemon.ebpf, iface, Some(&daemon.pins))?;
        }
        let attachment = kernel::attach(
            &mut daemon.ebpf,
            iface,
            file.kernel.xdp_mode,
            Some(&daemon.pins),
        )?;
        metrics::xdp_attached(iface, attachment.mode);
        info!(
            "attached iface={iface} mode={} adopted={} smtp_ports={:?}",
            attachment.mode.as_str(),
            attachment.adopted,
            file.kernel.smtp_ports
        );
        attachments.push((iface.clone(), attachment));
    }
    kernel::release_unwanted(&daemon.pins, ifaces, egress);
    daemon.operator.attached(attachments);
    Ok(())
}

/// What the daemon keeps while its tasks run.
struct Running {
    ebpf: Ebpf,
    pins: PinDir,
    operator: Arc<Operator>,
}

/// Spawns every task: the kernel logger, the periodic jobs, the policy service, the
/// control socket, the capture and the policy stage.
async fn spawn(
    file: &PolicyFile,
    mut daemon: Daemon,
    tasks: &Tasks,
    notifier: &Arc<Notifier>,
) -> anyhow::Result<Running> {
    let mut logger = kernel::readable_fd(
        aya_log::EbpfLogger::init(&mut daemon.ebpf).context("starting the kernel logger")?,
    )?;
    tasks.spawn("kernel logger", async move {
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
    let reading = Arc::clone(&daemon.counters);
    tasks.every(COUNTER_REFRESH, "reading kernel counters", move || {
        metrics::refresh_kernel_counters(&reading)
    });
    let engine = Arc::clone(daemon.stage.engine());
    tasks.every(COUNTER_REFRESH, "reading load gauges", move || {
        let dns_in_flight = stage::current(&engine)
            .dns()
            .map_or(0, |dns| dns.in_flight());
        let alive = tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks();
        metrics::runtime_load(dns_in_flight, alive);
        Ok(())
    });
    let mut heartbeat = daemon.heartbeat;
    tasks.every(
        Duration::from_millis(HEARTBEAT_INTERVAL_MS.into()),
        "writing the heartbeat",
        move || heartbeat.beat(),
    );
    if file.enforce.monitor {
        info!("monitor mode: verdicts are counted, nothing is enforced");
    }
    let (sweeping, expiring) = (Arc::clone(&daemon.stage), Arc::clone(&daemon.operator));
    tasks.every(
        REPUTATION_SWEEP,
        "sweeping lists and reputation",
        move || {
            sweeping.sweep_reputation();
            expiring.expire();
            if sweeping.take_reputation_changed() {
                // A failed write is counted and logged by the state directory (at most once
                // a minute, not once a second); the periodic snapshot below tries again.
                let _ = expiring.snapshot_reputation();
            }
            Ok(())
        },
    );
    let snapshotting = Arc::clone(&daemon.operator);
    let interval = Duration::from_secs(file.state.snapshot_interval_secs.get());
    tasks.every(interval, "writing the reputation snapshot", move || {
        // As above: the state directory reports a failure, the next interval tries again.
        let _ = snapshotting.snapshot_reputation();
        Ok(())
    });
    if file.fleet.redis.is_some() {
        join_fleet(file, &daemon.stage, &daemon.operator, tasks).await?;
    }
    if let Some(listen) = &file.postfix.listen {
        let listener = Listener::bind(listen, &file.postfix.socket_group).await?;
        let remembering = Arc::clone(&daemon.stage);
        let service = PolicyService::new(
            Arc::clone(daemon.stage.engine()),
            file.replies(),
            file.enforce.monitor,
            Some(Box::new(move |client, verdict| {
                remembering.remember(client, verdict)
            })),
        );
        tasks.spawn_vital("policy service", listener.serve(Arc::new(service)));
    }
    let control = ControlSocket::bind(&file.control.socket)?;
    info!("control socket {}", file.control.socket.display());
    tasks.spawn(
        "control socket",
        control.serve(Arc::clone(&daemon.operator)),
    );

    let ring = RingBuf::try_from(
        daemon
            .ebpf
            .take_map(maps::EVENTS)
            .context("EVENTS map missing")?,
    )?;
    let (tx, rx) = mpsc::channel(policy_queue());
    // One probe at a time; without a watchdog the sender is dropped and capture stops
    // listening for probes.
    let (probes, probed) = mpsc::channel::<Probe>(1);
    if let Some(held) = &daemon.held {
        let forgetting = Arc::clone(held);
        tasks.every(ANSWERED_SWEEP, "forgetting held segments", move || {
            forgetting.expire(std::time::Instant::now());
            Ok(())
        });
    }
    if let Some(answerer) = &daemon.answerer {
        let forgetting = Arc::clone(answerer);
        tasks.every(ANSWERED_SWEEP, "forgetting answered flows", move || {
            forgetting.expire(std::time::Instant::now());
            Ok(())
        });
        let freeing = Arc::clone(answerer);
        tasks.every(
            FREEING_SWEEP,
            "freeing the MTA of silent clients",
            move || {
                freeing.free_unanswered(std::time::Instant::now());
                Ok(())
            },
        );
    }
    let judge = Arc::new(Judge::new(daemon.stage, tasks.clone()));
    tasks.spawn_vital(
        "capture",
        capture::run(
            ring,
            Arc::clone(&judge),
            tx,
            probed,
            Limits::default(),
            daemon.answerer,
            daemon.held,
        ),
    );
    tasks.spawn("policy stage", policy_stage(rx, judge));
    if let Some(watchdog) = notify::watchdog_interval() {
        let period = watchdog / 3;
        info!(
            "watchdog: a probe through capture, the policy stage and the enforcer every {} ms",
            period.as_millis()
        );
        tasks.spawn(
            "watchdog",
            probe::feed(probes, period, Arc::clone(notifier)),
        );
    }
    Ok(Running {
        ebpf: daemon.ebpf,
        pins: daemon.pins,
        operator: daemon.operator,
    })
}

/// Waits for SIGTERM/SIGINT, a `detach`, or a task's end (SIGHUP reloads the configuration
/// and waits on); tells systemd it is stopping, writes the last reputation snapshot and
/// returns the exit status. The links stay pinned: the program keeps filtering (the deny
/// list enforced, the gate off once the heartbeat is stale) until a restarted daemon adopts
/// it, or a detach.
async fn wait(
    file: &PolicyFile,
    daemon: Running,
    mut ended: mpsc::UnboundedReceiver<Ended>,
    mut signals: Signals,
    notifier: &Notifier,
) -> anyhow::Result<i32> {
    let detached = Arc::clone(&daemon.operator.detached);
    let mut was_detached = false;
    let outcome = loop {
        tokio::select! {
            _ = signals.term.recv() => break Ok(0),
            _ = signals.int.recv() => break Ok(0),
            _ = signals.hup.recv() => reload(&daemon.operator, notifier).await,
            _ = detached.notified() => {
                was_detached = true;
                break Ok(0);
            }
            Some(end) = ended.recv() => break match end {
                Ended::Panicked { task, message } => {
                    metrics::task_panicked();
                    error!("task {task:?} panicked: {message}; exiting with status {EXIT_TASK_PANICKED}");
                    Ok(EXIT_TASK_PANICKED)
                }
                Ended::Stopped { task, error: Some(e) } => Err(e.context(format!("{task} stopped"))),
                Ended::Stopped { task, error: None } => Err(anyhow::anyhow!("{task} stopped")),
            },
        }
    };
    notifier.stopping();
    if let Err(e) = daemon.operator.snapshot_reputation() {
        warn!("writing the reputation snapshot: {e:#}");
    }
    drop(daemon.ebpf);
    let ifaces = file.kernel.interfaces.join(", ");
    if was_detached {
        info!("detached from {ifaces}: nothing left pinned");
    } else {
        info!(
            "exiting; the kernel program stays attached to {ifaces} (pinned under {}); \
             `helo-filter detach` removes it",
            daemon.pins.root().display()
        );
    }
    if let Err(e) = &outcome {
        error!("{e:#}");
    }
    outcome
}

/// SIGHUP: what `helo-filter reload` does (the operator logs the sections it applied); a
/// refused file is logged and the running configuration kept.
async fn reload(operator: &Operator, notifier: &Notifier) {
    info!("SIGHUP: reloading the configuration");
    notifier.reloading();
    if let Err(e) = operator.reload().await {
        warn!("SIGHUP: {}", e.message);
    }
    notifier.ready();
}
