//! The maps shared with user space (names in `helo_filter_common::maps`).

use aya_ebpf::{
    helpers::bpf_ktime_get_boot_ns,
    macros::map,
    maps::{Array, LpmTrie, LruHashMap, PerCpuArray, RingBuf, lpm_trie::Key},
};
use helo_filter_common::{
    CaptureEvent, Counter, DenyEntry, FlowKey, FlowState, KernelConfig, known_good_key, maps,
    trie_address,
};

use crate::parse::TcpSegment;

/// Capture events for the daemon, each as long as its header and the bytes it copied: 1 MiB
/// holds about 10,000 HELO segments (and 1,770 of the longest). The daemon drains
/// continuously. The loader sets the size in force (`[kernel] ringbuf_bytes`).
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(maps::EVENTS_DEFAULT_BYTES, 0);

/// Flows to the SMTP ports, from SYN until their capture ends. LRU so that a SYN flood
/// evicts old entries instead of failing inserts.
#[map]
pub static FLOWS: LruHashMap<FlowKey, FlowState> = LruHashMap::with_max_entries(65_536, 0);

#[map]
pub static CONFIG: Array<KernelConfig> = Array::with_max_entries(1, 0);

/// `bpf_ktime_get_boot_ns` time of the daemon's last heartbeat (0: never).
#[map]
pub static HEARTBEAT: Array<u64> = Array::with_max_entries(1, 0);

/// Sources whose SYNs to the SMTP ports are dropped: operator entries (CIDRs) and
/// repeat offenders (/32, /64), with an expiry.
#[map]
pub static DENY: LpmTrie<[u8; 16], DenyEntry> = LpmTrie::with_max_entries(maps::DENY_CAPACITY, 0);

/// Sources the filter leaves alone (CIDRs).
#[map]
pub static ALLOW: LpmTrie<[u8; 16], u8> = LpmTrie::with_max_entries(maps::ALLOW_CAPACITY, 0);

/// Per-CPU scratch for the segment being handled: slot `SLOT_XDP` for the XDP program,
/// `SLOT_TC` for the egress classifier (which a softirq running XDP may interrupt).
#[map]
pub static SEGMENTS: PerCpuArray<TcpSegment> = PerCpuArray::with_max_entries(2, 0);
pub const SLOT_XDP: u32 = 0;
pub const SLOT_TC: u32 = 1;

/// Per-CPU scratch for the capture event being built (the XDP program's only), put into
/// `EVENTS` as long as it needs to be.
#[map]
pub static EVENT_SCRATCH: PerCpuArray<CaptureEvent> = PerCpuArray::with_max_entries(1, 0);

/// Known-good sources (`helo_filter_common::known_good_key`) and until when (boot clock):
/// their flows are captured and judged, but not gated.
#[map]
pub static KNOWN_GOOD: LruHashMap<[u8; 16], u64> =
    LruHashMap::with_max_entries(maps::KNOWN_GOOD_CAPACITY, 0);

#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Counter::COUNT, 0);

#[inline(always)]
pub fn count(counter: Counter) {
    if let Some(value) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: `value` comes from a successful lookup of an index below the map's
        // `Counter::COUNT` entries, so it points at this CPU's own, aligned u64 copy, valid
        // for the whole program run. Two programs call this: `helo_capture` (XDP, run from
        // the receive softirq) and `helo_egress` (TC egress, run from the transmit path with
        // bottom halves disabled). The kernel runs each with migration disabled, so no other
        // CPU touches this copy; and as the transmit path keeps softirqs off, the XDP
        // program cannot interrupt the TC one on this CPU (nor the reverse), so the
        // read-modify-write below never overlaps another access to the same u64. No
        // reference is made: the increment goes through the raw pointer.
        unsafe { *value += 1 };
    }
}

/// The boot-time clock, as the daemon's heartbeat and the deny entries' expiries use it.
#[inline(always)]
pub fn boot_ns() -> u64 {
    // SAFETY: plain helper call without arguments.
    unsafe { bpf_ktime_get_boot_ns() }
}

/// The run-time config user space writes at load time (until then nothing is an SMTP
/// port: the program passes everything).
#[inline(always)]
pub fn config() -> Option<&'static KernelConfig> {
    CONFIG.get(0)
}

/// Whether `port` is one of the configured SMTP ports.
#[inline(always)]
pub fn is_smtp_port(config: &KernelConfig, port: u16) -> bool {
    for (i, configured) in config.ports.iter().enumerate() {
        if i as u32 >= config.port_count {
            break;
        }
        if *configured == port {
            return true;
        }
    }
    false
}

/// Whether the daemon's heartbeat is fresh at `now`.
#[inline(always)]
pub fn daemon_alive(config: &KernelConfig, now: u64) -> bool {
    let last = HEARTBEAT.get(0).copied().unwrap_or(0);
    last != 0 && now.saturating_sub(last) <= config.heartbeat_timeout_ms as u64 * 1_000_000
}

/// A flow's source as a full-length trie key.
#[inline(always)]
pub fn source_key(key: &FlowKey) -> Key<[u8; 16]> {
    Key::new(128, trie_address(key.family, &key.saddr))
}

/// Whether the source is in the allow list.
#[inline(always)]
pub fn allowed(source: &Key<[u8; 16]>) -> bool {
    ALLOW.get(source).is_some()
}

/// Whether the flow's source is known-good at `now`.
#[inline(always)]
pub fn known_good(key: &FlowKey, now: u64) -> bool {
    let source = known_good_key(key.family, &key.saddr);
    // SAFETY: map values are read as plain data.
    unsafe { KNOWN_GOOD.get(source) }.is_some_and(|&until| until > now)
}

/// Whether the source is denied at `now` (an expired entry no longer counts; user space
/// removes it).
#[inline(always)]
pub fn denied(source: &Key<[u8; 16]>, now: u64) -> bool {
    match DENY.get(source) {
        Some(entry) => entry.expires_ns == 0 || entry.expires_ns > now,
        None => false,
    }
}
