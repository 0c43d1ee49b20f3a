//! The Prometheus series of `docs/metrics.md` that exist so far, in one place: names, help
//! texts, label sets and their zero values at start, and the exporter.
//!
//! Labels only ever take values from the fixed sets below, never anything a client sends.

use std::{net::SocketAddr, time::Duration};

use anyhow::Context as _;
use helo_filter_common::Counter;
use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};

use crate::{
    clock::boot_time_ns,
    config::Action,
    dns::{DnsAnswer, DnsObserver, RecordKind},
    kernel::{AttachedMode, CounterReader},
    policy::{Decision, Note, Reason, Verdict},
};

pub const XDP_PACKETS: &str = "helo_filter_xdp_packets_total";
pub const RINGBUF_DROPPED: &str = "helo_filter_ringbuf_dropped_total";
pub const HELO_EVENTS: &str = "helo_filter_helo_events_total";
pub const FAIL_OPEN: &str = "helo_filter_fail_open_total";
pub const XDP_ATTACHED: &str = "helo_filter_xdp_attached";
pub const VERDICTS: &str = "helo_filter_verdicts_total";
pub const CHECK_FAILURES: &str = "helo_filter_check_failures_total";
pub const VALIDATION_DURATION: &str = "helo_filter_validation_duration_seconds";
pub const DNS_LOOKUP_DURATION: &str = "helo_filter_dns_lookup_duration_seconds";
pub const DNS_CACHE: &str = "helo_filter_dns_cache_total";
pub const ACTIONS: &str = "helo_filter_actions_total";
pub const SOCK_DESTROY: &str = "helo_filter_sock_destroy_total";
pub const HELO_TO_ACTION: &str = "helo_filter_helo_to_action_seconds";
pub const HELO_TO_VERDICT: &str = "helo_filter_helo_to_verdict_seconds";
pub const GATE_HELD: &str = "helo_filter_gate_held_total";
pub const SYN_DROPPED: &str = "helo_filter_syn_dropped_total";
pub const CONDEMNED_DROPPED: &str = "helo_filter_condemned_dropped_total";
pub const REPUTATION_SOURCES: &str = "helo_filter_reputation_sources";
pub const DENY_ENTRIES: &str = "helo_filter_deny_entries";
pub const ALLOW_ENTRIES: &str = "helo_filter_allow_entries";
pub const DENY_EVICTIONS: &str = "helo_filter_deny_evictions_total";
pub const POLICY_REQUESTS: &str = "helo_filter_policy_requests_total";
pub const TASK_PANICS: &str = "helo_filter_task_panics_total";
pub const REPLIES: &str = "helo_filter_replies_total";
pub const KNOWN_GOOD: &str = "helo_filter_known_good_total";
pub const HELD_SEGMENTS: &str = "helo_filter_held_segments_total";
pub const BUILD_INFO: &str = "helo_filter_build_info";
pub const FLEET_CONNECTED: &str = "helo_filter_fleet_connected";
pub const FLEET_DENIALS: &str = "helo_filter_fleet_denials_total";
pub const FLEET_ERRORS: &str = "helo_filter_fleet_errors_total";
pub const FLEET_PROPAGATION: &str = "helo_filter_fleet_propagation_seconds";
pub const STATE_WRITE_FAILURES: &str = "helo_filter_state_write_failures_total";
pub const FLOWS_ABANDONED: &str = "helo_filter_flows_abandoned_total";
pub const REASSEMBLY_FLOWS: &str = "helo_filter_reassembly_flows";
pub const POLICY_QUEUE_SESSIONS: &str = "helo_filter_policy_queue_sessions";
pub const DNS_IN_FLIGHT: &str = "helo_filter_dns_in_flight";
pub const RUNTIME_TASKS: &str = "helo_filter_runtime_tasks";
/// `helo_filter_fleet_errors_total{kind}`'s values.
const FLEET_ERROR_KINDS: [&str; 9] = [
    "connect",
    "subscribe",
    "command",
    "decode",
    "encode",
    "refused",
    "kernel",
    "queue_full",
    "stopped",
];

/// Buckets of the verdict latency (seconds): 10 µs to 1 s, since a verdict is meant to take
/// microseconds.
const VERDICT_BUCKETS: [f64; 13] = [
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25,
    1.0,
];

/// Buckets for the other latency histograms (seconds): 100 µs to 10 s.
const LATENCY_BUCKETS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 0.5, 2.0, 10.0,
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailOpenCause {
    QueueFull,
    DnsTempfail,
    GateDeadline,
    DaemonAbsent,
}

impl FailOpenCause {
    pub const ALL: [FailOpenCause; 4] = [
        FailOpenCause::QueueFull,
        FailOpenCause::DnsTempfail,
        FailOpenCause::GateDeadline,
        FailOpenCause::DaemonAbsent,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FailOpenCause::QueueFull => "queue_full",
            FailOpenCause::DnsTempfail => "dns_tempfail",
            FailOpenCause::GateDeadline => "gate_deadline",
            FailOpenCause::DaemonAbsent => "daemon_absent",
        }
    }
}

/// What a Postfix policy request got: the label set of `helo_filter_policy_requests_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Dunno,
    Reject,
    Defer,
    /// Monitor mode: `WARN`, logged by Postfix, nothing refused.
    Warn,
    /// Malformed or incomplete: answered `DUNNO` (fail-open).
    Error,
}

impl Outcome {
    pub const ALL: [Outcome; 5] = [
        Outcome::Dunno,
        Outcome::Reject,
        Outcome::Defer,
        Outcome::Warn,
        Outcome::Error,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Outcome::Dunno => "dunno",
            Outcome::Reject => "reject",
            Outcome::Defer => "defer",
            Outcome::Warn => "warn",
            Outcome::Error => "error",
        }
    }
}

/// What happened to a source's known-good standing: the label of
/// `helo_filter_known_good_total{event}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KnownGoodEvent {
    /// It became known-good (its flows are no longer gated).
    Added,
    /// A reject ended it.
    Ended,
    /// A reject of an ungated session was acted on with `rst` instead of `reply`.
    Fallback,
}

impl KnownGoodEvent {
    pub const ALL: [KnownGoodEvent; 3] = [
        KnownGoodEvent::Added,
        KnownGoodEvent::Ended,
        KnownGoodEvent::Fallback,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            KnownGoodEvent::Added => "added",
            KnownGoodEvent::Ended => "ended",
            KnownGoodEvent::Fallback => "fallback",
        }
    }
}

/// What became of a segment the gate held, past its keeping: the label of
/// `helo_filter_held_segments_total{fate}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeldFate {
    /// Its flow accepted, it was handed to the MTA.
    Reinjected,
    /// The kernel refused the re-injection: TCP retransmits it.
    Failed,
    /// The table of held segments was full: TCP retransmits it.
    NotKept,
}

impl HeldFate {
    pub const ALL: [HeldFate; 3] = [HeldFate::Reinjected, HeldFate::Failed, HeldFate::NotKept];

    pub const fn as_str(self) -> &'static str {
        match self {
            HeldFate::Reinjected => "reinjected",
            HeldFate::Failed => "failed",
            HeldFate::NotKept => "not_kept",
        }
    }
}

/// A segment the daemon sent for action `reply`: the label of
/// `helo_filter_replies_total{segment}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplyOutcome {
    /// The reject (and a 503 per further pipelined command), with a FIN.
    Reject,
    /// The same again, to a retransmission of the segment it answered.
    Repeat,
    /// A RST to a segment after the one answered (or of a flow no longer known).
    Reset,
    /// A gateway's RST to the MTA, from the client's address.
    MtaFreed,
    /// The raw socket refused the segment.
    Failed,
}

impl ReplyOutcome {
    pub const ALL: [ReplyOutcome; 5] = [
        ReplyOutcome::Reject,
        ReplyOutcome::Repeat,
        ReplyOutcome::Reset,
        ReplyOutcome::MtaFreed,
        ReplyOutcome::Failed,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            ReplyOutcome::Reject => "reject",
            ReplyOutcome::Repeat => "repeat",
            ReplyOutcome::Reset => "reset",
            ReplyOutcome::MtaFreed => "mta_freed",
            ReplyOutcome::Failed => "failed",
        }
    }
}

/// How destroying a session's socket went: the label of
/// `helo_filter_sock_destroy_total{outcome}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DestroyOutcome {
    /// The socket was destroyed (the MTA sees the connection aborted, the peer a RST).
    Destroyed,
    /// No such socket: the session had already ended.
    NotFound,
    /// The kernel refused (no CAP_NET_ADMIN, no CONFIG_INET_DIAG_DESTROY) or netlink failed.
    Failed,
}

impl DestroyOutcome {
    pub const ALL: [DestroyOutcome; 3] = [
        DestroyOutcome::Destroyed,
        DestroyOutcome::NotFound,
        DestroyOutcome::Failed,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            DestroyOutcome::Destroyed => "destroyed",
            DestroyOutcome::NotFound => "not_found",
            DestroyOutcome::Failed => "failed",
        }
    }
}

/// Why the reassembly gave up a flow before its decisive line: the label of
/// `helo_filter_flows_abandoned_total{cause}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AbandonCause {
    /// Still undecided after the flow time-out (the client vanished, or events were lost).
    Timeout,
    /// The oldest undecided flow, evicted to make room in a full table.
    TableFull,
}

impl AbandonCause {
    pub const ALL: [AbandonCause; 2] = [AbandonCause::Timeout, AbandonCause::TableFull];

    pub const fn as_str(self) -> &'static str {
        match self {
            AbandonCause::Timeout => "timeout",
            AbandonCause::TableFull => "table_full",
        }
    }
}

/// A file of the state directory: the label of `helo_filter_state_write_failures_total{file}`
/// (and an index: the values count from 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StateFile {
    Lists,
    Reputation,
}

impl StateFile {
    pub const ALL: [StateFile; 2] = [StateFile::Lists, StateFile::Reputation];

    pub const fn as_str(self) -> &'static str {
        match self {
            StateFile::Lists => "lists",
            StateFile::Reputation => "reputation",
        }
    }
}

/// The series and label of each kernel counter.
fn kernel_series(counter: Counter) -> (&'static str, Option<(&'static str, &'static str)>) {
    match counter {
        Counter::PacketsSeen => (XDP_PACKETS, Some(("kind", "seen"))),
        Counter::SmtpPackets => (XDP_PACKETS, Some(("kind", "smtp"))),
        Counter::HeloEvents => (XDP_PACKETS, Some(("kind", "helo"))),
        Counter::ContinuationEvents => (XDP_PACKETS, Some(("kind", "continuation"))),
        Counter::RingbufReserveFailed => (RINGBUF_DROPPED, None),
        Counter::GateHeld => (GATE_HELD, None),
        Counter::GateDeadline => (
            FAIL_OPEN,
            Some(("cause", FailOpenCause::GateDeadline.as_str())),
        ),
        Counter::DaemonAbsent => (
            FAIL_OPEN,
            Some(("cause", FailOpenCause::DaemonAbsent.as_str())),
        ),
        Counter::SynDropped => (SYN_DROPPED, None),
        Counter::CondemnedDropped => (CONDEMNED_DROPPED, None),
    }
}

/// Starts the daemon's exporter on `addr` and registers every series at zero.
pub fn install(addr: SocketAddr) -> anyhow::Result<()> {
    install_for_policy_service(addr)?;
    for counter in Counter::ALL {
        set_kernel_counter(counter, 0);
    }
    counter!(HELO_EVENTS).absolute(0);
    for cause in FailOpenCause::ALL {
        counter!(FAIL_OPEN, "cause" => cause.as_str()).absolute(0);
    }
    for action in Action::ALL {
        counter!(ACTIONS, "action" => action.as_str()).absolute(0);
    }
    for outcome in DestroyOutcome::ALL {
        counter!(SOCK_DESTROY, "outcome" => outcome.as_str()).absolute(0);
    }
    for outcome in ReplyOutcome::ALL {
        counter!(REPLIES, "segment" => outcome.as_str()).absolute(0);
    }
    for event in KnownGoodEvent::ALL {
        counter!(KNOWN_GOOD, "event" => event.as_str()).absolute(0);
    }
    for fate in HeldFate::ALL {
        counter!(HELD_SEGMENTS, "fate" => fate.as_str()).absolute(0);
    }
    list_sizes(0, 0);
    reputation(0, 0);
    counter!(DENY_EVICTIONS).absolute(0);
    counter!(TASK_PANICS).absolute(0);
    let _ = histogram!(HELO_TO_ACTION);
    let _ = histogram!(HELO_TO_VERDICT);
    fleet_connected(false);
    for direction in ["sent", "received"] {
        counter!(FLEET_DENIALS, "direction" => direction).absolute(0);
    }
    for kind in FLEET_ERROR_KINDS {
        counter!(FLEET_ERRORS, "kind" => kind).absolute(0);
    }
    let _ = histogram!(FLEET_PROPAGATION);
    for cause in AbandonCause::ALL {
        flows_abandoned(cause, 0);
    }
    capture_load(0, 0);
    runtime_load(0, 0);
    for file in StateFile::ALL {
        counter!(STATE_WRITE_FAILURES, "file" => file.as_str()).absolute(0);
    }
    Ok(())
}

/// Starts the exporter of `helo-filter policy` (no kernel, no enforcement), which the
/// daemon's [`install`] builds on: every series' help text, `helo_filter_build_info`, and
/// the policy service's series at zero.
pub fn install_for_policy_service(addr: SocketAddr) -> anyhow::Result<()> {
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets(&LATENCY_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(HELO_TO_VERDICT.to_owned()), &VERDICT_BUCKETS)?
        .install()
        .with_context(|| format!("starting the metrics endpoint on {addr}"))?;
    describe_series();
    // The commit is build.rs's `git rev-parse`, or `unknown` for a build outside git.
    let (version, commit) = (env!("CARGO_PKG_VERSION"), env!("HELO_FILTER_COMMIT"));
    gauge!(BUILD_INFO, "version" => version, "commit" => commit).set(1.0);
    for result in ["hit", "miss"] {
        counter!(DNS_CACHE, "result" => result).absolute(0);
    }
    for outcome in Outcome::ALL {
        counter!(POLICY_REQUESTS, "action" => outcome.as_str()).absolute(0);
    }
    // Verdicts: the data path's in the daemon, the policy service's when it runs alone.
    counter!(VERDICTS, "verdict" => Decision::Accept.as_str(), "reason" => "none").absolute(0);
    for reason in Reason::ALL {
        counter!(VERDICTS, "verdict" => Decision::Reject.as_str(), "reason" => reason.as_str())
            .absolute(0);
        counter!(CHECK_FAILURES, "reason" => reason.as_str()).absolute(0);
    }
    counter!(FAIL_OPEN, "cause" => FailOpenCause::DnsTempfail.as_str()).absolute(0);
    // Registered, not recorded: the histograms are on the page before their first
    // observation (the dashboard's queries find them).
    let _ = histogram!(VALIDATION_DURATION);
    for kind in RecordKind::ALL {
        let _ = histogram!(DNS_LOOKUP_DURATION, "type" => kind.as_str());
    }
    Ok(())
}

/// The `# HELP` line of every series, daemon's and policy service's alike: the exporter
/// writes one only for the series its page holds.
fn describe_series() {
    describe_counter!(
        XDP_PACKETS,
        "Packets the XDP program saw, by kind: every packet (seen), TCP packets to an SMTP \
         port (smtp), events that complete a HELO/EHLO line (helo), events that continue a \
         flow's capture (continuation); kernel per-CPU counters, summed, copied every second"
    );
    describe_counter!(
        RINGBUF_DROPPED,
        "Ring-buffer reservations that failed in the kernel (the segment passed, not captured)"
    );
    describe_counter!(HELO_EVENTS, "HELO/EHLO lines delivered to the policy stage");
    describe_counter!(
        FAIL_OPEN,
        "Sessions let through unjudged, by cause (queue_full, dns_tempfail, gate_deadline; \
         daemon_absent: segments the gate let through while the daemon's heartbeat was stale)"
    );
    describe_gauge!(
        XDP_ATTACHED,
        "1 per interface the XDP program is attached to, with its mode (native, generic)"
    );
    describe_counter!(
        VERDICTS,
        "Verdicts, by verdict (accept, reject) and primary reason (none on an accept)"
    );
    describe_counter!(
        CHECK_FAILURES,
        "Failed policy checks, by reason (a verdict with three failed checks adds three)"
    );
    describe_histogram!(
        VALIDATION_DURATION,
        "Policy evaluation time in seconds, DNS included"
    );
    describe_histogram!(
        DNS_LOOKUP_DURATION,
        "DNS wire lookup time in seconds, by record type (cache hits not included)"
    );
    describe_counter!(DNS_CACHE, "DNS cache look-ups, by result (hit, miss)");
    describe_counter!(
        ACTIONS,
        "Actions taken on rejects (reply, rst, drop; monitor: would have acted)"
    );
    describe_counter!(
        SOCK_DESTROY,
        "Attempts to destroy the MTA's socket of a rejected session, by outcome (destroyed; \
         not_found: the session had already ended; failed: refused by the kernel)"
    );
    describe_histogram!(
        HELO_TO_ACTION,
        "Seconds from the kernel timestamp of the deciding segment to the action applied"
    );
    describe_histogram!(
        HELO_TO_VERDICT,
        "Seconds from the kernel timestamp of the deciding segment to the verdict written \
         into the kernel's flow table (every verdict, accepts included)"
    );
    describe_counter!(
        GATE_HELD,
        "Client segments the gate dropped while their verdict was pending"
    );
    describe_counter!(
        HELD_SEGMENTS,
        "Held segments, by fate (reinjected: handed to the MTA when their flow was \
         accepted; failed: the kernel refused that, and TCP retransmits them; not_kept: \
         the table of held segments was full)"
    );
    describe_counter!(
        SYN_DROPPED,
        "SYNs from denied sources dropped in XDP (or answered with a RST under \
         --deny-answer rst)"
    );
    describe_counter!(
        CONDEMNED_DROPPED,
        "Packets of condemned flows dropped (client packets in XDP, the MTA's at egress)"
    );
    describe_gauge!(
        REPUTATION_SOURCES,
        "Sources with a non-zero reputation score"
    );
    describe_gauge!(
        DENY_ENTRIES,
        "Entries in the kernel deny map, by origin (operator, reputation)"
    );
    describe_gauge!(ALLOW_ENTRIES, "Entries in the allow list");
    describe_counter!(
        DENY_EVICTIONS,
        "Reputation denials let go early because the deny list was at its cap, lowest \
         scores first"
    );
    describe_counter!(
        POLICY_REQUESTS,
        "Postfix policy-service replies, by action (dunno, reject, defer; warn: a reject in \
         monitor mode; error: a malformed or incomplete request, answered DUNNO)"
    );
    describe_counter!(
        TASK_PANICS,
        "Tasks of the daemon that panicked (the daemon then exits with status 70)"
    );
    describe_counter!(
        REPLIES,
        "Segments sent under action reply, by segment (reject, repeat, reset, mta_freed; \
         failed: the raw socket refused one)"
    );
    describe_counter!(
        KNOWN_GOOD,
        "Known-good events: a source became known-good (added), a reject ended that \
         (ended), a reject of an ungated session was answered with rst instead of reply \
         (fallback)"
    );
    describe_gauge!(
        BUILD_INFO,
        "Always 1: the version and commit of the running helo-filter"
    );
    describe_gauge!(
        FLEET_CONNECTED,
        "1 while connected to the fleet's Redis (0 also where no [fleet] is configured)"
    );
    describe_counter!(
        FLEET_DENIALS,
        "Fleet denials by direction: this member's shared (sent), other members' taken and \
         enforced here (received)"
    );
    describe_counter!(
        FLEET_ERRORS,
        "Fleet errors by kind: connect, subscribe, command, decode, encode, refused (a \
         fleet denial local rules refuse), kernel, queue_full, stopped"
    );
    describe_histogram!(
        FLEET_PROPAGATION,
        "From a denial made on one member to its enforcement here (members' clocks by NTP)"
    );
    describe_counter!(
        STATE_WRITE_FAILURES,
        "Failed writes of a state file, by file (lists, reputation): a read-only or full \
         state directory"
    );
    describe_counter!(
        FLOWS_ABANDONED,
        "Flows the reassembly gave up before their decisive line, by cause (timeout; \
         table_full: evicted, the oldest, to make room)"
    );
    describe_gauge!(
        REASSEMBLY_FLOWS,
        "Flows being reassembled (undecided), sampled every 5 s"
    );
    describe_gauge!(
        POLICY_QUEUE_SESSIONS,
        "Sessions waiting in the policy queue, sampled every 5 s"
    );
    describe_gauge!(DNS_IN_FLIGHT, "DNS queries in flight, sampled every second");
    describe_gauge!(
        RUNTIME_TASKS,
        "Tasks alive in the daemon's async runtime, sampled every second"
    );
}

/// Flows the reassembly gave up before their decisive line (`count` at once).
pub fn flows_abandoned(cause: AbandonCause, count: usize) {
    counter!(FLOWS_ABANDONED, "cause" => cause.as_str()).increment(count as u64);
}

/// How much the capture task holds: flows being reassembled, sessions queued for the
/// policy stage.
pub fn capture_load(reassembly_flows: usize, queued_sessions: usize) {
    gauge!(REASSEMBLY_FLOWS).set(reassembly_flows as f64);
    gauge!(POLICY_QUEUE_SESSIONS).set(queued_sessions as f64);
}

/// DNS queries in flight and tasks alive in the async runtime.
pub fn runtime_load(dns_in_flight: usize, tasks: usize) {
    gauge!(DNS_IN_FLIGHT).set(dns_in_flight as f64);
    gauge!(RUNTIME_TASKS).set(tasks as f64);
}

/// Whether the fleet's Redis is connected.
pub fn fleet_connected(connected: bool) {
    gauge!(FLEET_CONNECTED).set(if connected { 1.0 } else { 0.0 });
}

/// A fleet denial sent or received.
pub fn fleet_denial(direction: &'static str) {
    counter!(FLEET_DENIALS, "direction" => direction).increment(1);
}

/// A fleet error (`kind`: one of [`FLEET_ERROR_KINDS`]).
pub fn fleet_error(kind: &'static str) {
    counter!(FLEET_ERRORS, "kind" => kind).increment(1);
}

/// How long a fleet denial took from its member to this one.
pub fn fleet_propagation(lag: Duration) {
    histogram!(FLEET_PROPAGATION).record(lag.as_secs_f64());
}

/// One policy-service reply.
pub fn policy_request(outcome: Outcome) {
    counter!(POLICY_REQUESTS, "action" => outcome.as_str()).increment(1);
}

fn set_kernel_counter(counter: Counter, value: u64) {
    match kernel_series(counter) {
        (series, Some((label, value_label))) => {
            counter!(series, label => value_label).absolute(value)
        }
        (series, None) => counter!(series).absolute(value),
    }
}

/// Copies the kernel's per-CPU counters (summed) into the exported series.
pub fn refresh_kernel_counters(reader: &CounterReader) -> anyhow::Result<()> {
    for counter in Counter::ALL {
        set_kernel_counter(counter, reader.read(counter)?);
    }
    Ok(())
}

/// `iface` comes from the operator's configuration, a bounded set.
pub fn xdp_attached(iface: &str, mode: AttachedMode) {
    gauge!(XDP_ATTACHED, "iface" => iface.to_owned(), "mode" => mode.as_str()).set(1.0);
}

pub fn helo_event() {
    counter!(HELO_EVENTS).increment(1);
}

pub fn fail_open(cause: FailOpenCause) {
    counter!(FAIL_OPEN, "cause" => cause.as_str()).increment(1);
}

/// One verdict: its primary reason, every failed check, how long it took, and a fail-open
/// when a DNS failure left it unsure.
pub fn verdict(verdict: &Verdict, elapsed: Duration) {
    counter!(VERDICTS, "verdict" => verdict.decision.as_str(), "reason" => verdict.primary_label())
        .increment(1);
    for reason in verdict.reason_codes() {
        counter!(CHECK_FAILURES, "reason" => reason.as_str()).increment(1);
    }
    histogram!(VALIDATION_DURATION).record(elapsed.as_secs_f64());
    if verdict.has_note(Note::DnsTempfail) {
        fail_open(FailOpenCause::DnsTempfail);
    }
}

/// Feeds the DNS client's cache and wire lookups into the DNS series.
pub struct DnsMetrics;

impl DnsObserver for DnsMetrics {
    fn cache_lookup(&self, hit: bool) {
        counter!(DNS_CACHE, "result" => if hit { "hit" } else { "miss" }).increment(1);
    }

    fn wire_lookup(&self, kind: RecordKind, elapsed: Duration, _answer: &DnsAnswer) {
        histogram!(DNS_LOOKUP_DURATION, "type" => kind.as_str()).record(elapsed.as_secs_f64());
    }
}

/// An action taken on a rejected session whose deciding segment the kernel saw at
/// `helo_timestamp_ns` (boot clock).
pub fn action(action: Action, helo_timestamp_ns: u64) {
    counter!(ACTIONS, "action" => action.as_str()).increment(1);
    let elapsed = boot_time_ns().saturating_sub(helo_timestamp_ns);
    histogram!(HELO_TO_ACTION).record(elapsed as f64 / 1e9);
}

/// A verdict written into the kernel's flow table (the gate opened, or the flow condemned),
/// for a session whose deciding segment the kernel saw at `helo_timestamp_ns`.
pub fn verdict_written(helo_timestamp_ns: u64) {
    let elapsed = boot_time_ns().saturating_sub(helo_timestamp_ns);
    histogram!(HELO_TO_VERDICT).record(elapsed as f64 / 1e9);
}

/// One attempt to destroy the MTA's socket of a rejected session (deployment `mx`).
pub fn sock_destroy(outcome: DestroyOutcome) {
    counter!(SOCK_DESTROY, "outcome" => outcome.as_str()).increment(1);
}

/// A change of a source's known-good standing.
pub fn known_good(event: KnownGoodEvent) {
    counter!(KNOWN_GOOD, "event" => event.as_str()).increment(1);
}

/// One held segment's fate.
pub fn held_segment(fate: HeldFate) {
    counter!(HELD_SEGMENTS, "fate" => fate.as_str()).increment(1);
}

/// One segment sent (or not) for action `reply`.
pub fn reply(outcome: ReplyOutcome) {
    counter!(REPLIES, "segment" => outcome.as_str()).increment(1);
}

/// Sizes of the allow list and of the operator's deny entries (set at start).
pub fn list_sizes(allow: usize, deny_operator: usize) {
    gauge!(ALLOW_ENTRIES).set(allow as f64);
    gauge!(DENY_ENTRIES, "origin" => "operator").set(deny_operator as f64);
}

/// Sources with a score, and sources denied by reputation.
pub fn reputation(sources: usize, denied: usize) {
    gauge!(REPUTATION_SOURCES).set(sources as f64);
    gauge!(DENY_ENTRIES, "origin" => "reputation").set(denied as f64);
}

/// A write of a state file failed.
pub fn state_write_failure(file: StateFile) {
    counter!(STATE_WRITE_FAILURES, "file" => file.as_str()).increment(1);
}

/// A task of the daemon panicked (the daemon then exits).
pub fn task_panicked() {
    counter!(TASK_PANICS).increment(1);
}

/// Reputation denials let go early because the deny list was over its cap.
pub fn deny_evictions(count: usize) {
    counter!(DENY_EVICTIONS).increment(count as u64);
}
