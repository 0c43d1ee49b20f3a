//! Wire types shared by the XDP program and the daemon.
//!
//! Everything here is `#[repr(C)]` with explicit padding and no `bool`, so that the
//! user-space side can read the bytes the kernel wrote as plain old data.
#![no_std]

/// RFC 5321 §4.5.3.1.4: a command line is at most 512 octets including CRLF. A flow's
/// capture never copies more than this in total.
pub const MAX_CAPTURE_BYTES: usize = 512;
/// A client dribbling one byte per segment cannot make us emit more than this many events.
pub const MAX_CAPTURE_SEGMENTS: u8 = 32;
/// The kernel config holds at most this many SMTP ports.
pub const MAX_SMTP_PORTS: usize = 8;

/// Map names, so both sides agree on them.
pub mod maps {
    pub const EVENTS: &str = "EVENTS";
    pub const FLOWS: &str = "FLOWS";
    pub const CONFIG: &str = "CONFIG";
    pub const HEARTBEAT: &str = "HEARTBEAT";
    pub const DENY: &str = "DENY";
    pub const ALLOW: &str = "ALLOW";
    pub const COUNTERS: &str = "COUNTERS";
    pub const KNOWN_GOOD: &str = "KNOWN_GOOD";
    /// Bytes of the `EVENTS` ring buffer unless `[kernel] ringbuf_bytes` says otherwise
    /// (the loader sets the size; a ring buffer's is a power of two of at least a page).
    pub const EVENTS_DEFAULT_BYTES: u32 = 1 << 20;
    /// Entries the `DENY` trie holds: operator, configuration and reputation denials together
    /// (the configuration check refuses more).
    pub const DENY_CAPACITY: u32 = 65_536;
    /// Entries the `ALLOW` trie holds.
    pub const ALLOW_CAPACITY: u32 = 16_384;
    /// Sources the `KNOWN_GOOD` LRU hash holds (the least recently seen make room).
    pub const KNOWN_GOOD_CAPACITY: u32 = 65_536;
}

/// Program names (the Rust function names of the `#[xdp]` entry points).
pub mod programs {
    pub const CAPTURE: &str = "helo_capture";
    /// TC egress: silences the MTA's packets of condemned flows (action `drop` on an MX).
    pub const EGRESS: &str = "helo_egress";
    pub const BASELINE_PASS: &str = "baseline_pass";
    pub const BASELINE_TC_OK: &str = "baseline_tc_ok";
}

pub const FAMILY_IPV4: u8 = 4;
pub const FAMILY_IPV6: u8 = 6;

/// A TCP flow as seen from the client: `saddr:sport` → `daddr:dport`.
/// IPv4 addresses sit in the first four bytes; ports are in host byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FlowKey {
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    pub family: u8,
    pub _pad: [u8; 3],
}

/// Capture event flags.
pub mod flags {
    /// Not the first segment captured for this flow.
    pub const CONTINUATION: u32 = 1 << 0;
    /// The segment had more payload than was copied (per-flow byte cap).
    pub const TRUNCATED: u32 = 1 << 1;
    /// The segment carries bytes after the line that ended the capture.
    pub const PIPELINED: u32 = 1 << 2;
    /// The kernel stops capturing this flow after this event: it saw the end of the
    /// first command line that is not NOOP/RSET (usually the HELO/EHLO line).
    pub const FINAL: u32 = 1 << 3;
    /// The kernel stops capturing because the flow reached its byte or segment cap
    /// before such a line ended.
    pub const CAPPED: u32 = 1 << 4;
    /// The line that ended the capture is a HELO/EHLO command.
    pub const HELO_LINE: u32 = 1 << 5;
    /// Not a capture: a client segment the kernel dropped rather than delivered (held by
    /// the gate, or of a flow condemned with action `reply`), for the daemon to answer if
    /// the flow's verdict is `reply`. `data` holds the segment from its TCP header on
    /// (options, then payload), so the answer can echo its timestamps and acknowledge it.
    pub const CLIENT_SEGMENT: u32 = 1 << 6;
    /// The kernel held this segment (it did not reach the MTA): the decisive line came
    /// with more commands (`PIPELINED`), or was not a HELO/EHLO (reason `no_helo`).
    pub const HELD: u32 = 1 << 7;
    /// Not a capture: the RST of the MTA's destroyed socket, kept from a client condemned
    /// with `reply` by TC egress. `seq` and `ack` are the MTA's send and receive positions
    /// (whether it answered the HELO); `data` holds its TCP header (its timestamps).
    pub const MTA_RESET: u32 = 1 << 8;
    /// The flow's source is known-good: nothing after its decisive line was held, so its
    /// next commands may have reached the MTA before the verdict.
    pub const UNGATED: u32 = 1 << 9;
}

/// TCP header flag bits, as the kernel reads segments and both sides build them.
pub mod tcp_flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
}

/// The `SO_MARK` of the segments the daemon sends as replies: the TC egress program lets
/// them through to a condemned client whose other server packets it drops.
pub const REPLY_MARK: u32 = u32::from_be_bytes(*b"HELO");

/// One client payload segment of a flow that is still being captured.
///
/// The kernel builds it in a per-CPU scratch slot (it is larger than the BPF stack) and
/// puts into the ring buffer only its header and the `len` bytes of `data` copied
/// ([`CAPTURE_EVENT_HEADER`] + `len`): a HELO segment's record is a few dozen bytes, not
/// the whole struct. The reports of `reply` are written whole.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct CaptureEvent {
    pub key: FlowKey,
    pub ifindex: u32,
    pub flags: u32,
    /// `bpf_ktime_get_boot_ns` when the segment was seen.
    pub timestamp_ns: u64,
    /// Sequence number of the segment's first payload byte.
    pub seq: u32,
    /// Sequence number of the flow's first payload byte (ISN + 1, from the SYN): the
    /// segment's stream offset is `seq - stream_start_seq`, and it tells two uses of
    /// one 4-tuple apart.
    pub stream_start_seq: u32,
    /// Number of valid bytes in `data`.
    pub len: u16,
    /// Payload length of the segment on the wire (may exceed `len`).
    pub wire_len: u16,
    /// The segment's acknowledgement number: how much of the server's stream the client
    /// had read when it sent it.
    pub ack: u32,
    pub data: [u8; MAX_CAPTURE_BYTES],
}

/// The bytes of a [`CaptureEvent`] before its `data`: a ring-buffer record holds at least
/// these.
pub const CAPTURE_EVENT_HEADER: usize = core::mem::offset_of!(CaptureEvent, data);

impl CaptureEvent {
    pub fn payload(&self) -> &[u8] {
        let len = (self.len as usize).min(MAX_CAPTURE_BYTES);
        &self.data[..len]
    }
}

/// Run-time configuration the kernel reads from the `CONFIG` array (index 0).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelConfig {
    /// SMTP ports in host byte order; only the first `port_count` are used.
    pub ports: [u16; MAX_SMTP_PORTS],
    pub port_count: u32,
    /// How long the gate holds a flow's segments waiting for its verdict before it opens
    /// by itself (fail-open). [`KernelConfig::NO_GATE`] (0, which the configuration never
    /// allows as a deadline) turns the gate off: monitor mode, where nothing is held.
    pub gate_deadline_ms: u32,
    /// A daemon heartbeat older than this means the daemon is gone: the gate stays open.
    pub heartbeat_timeout_ms: u32,
    /// [`KernelConfig::DENY_WITH_RST`] and [`KernelConfig::REPORT_HELD`]. (Once a 0/1
    /// `deny_with_rst`: its value is the first bit, so the map's layout stays as it was.)
    pub options: u32,
}

impl KernelConfig {
    pub const DEFAULT_GATE_DEADLINE_MS: u32 = 5_000;
    pub const DEFAULT_HEARTBEAT_TIMEOUT_MS: u32 = 3_000;
    /// `gate_deadline_ms` of a kernel that holds nothing (monitor mode): flows are still
    /// captured, but no segment waits for a verdict. A gate that may hold for 0 ms holds
    /// nothing, so the field keeps its meaning and the map's layout stays as it was.
    pub const NO_GATE: u32 = 0;
    /// `options`: a denied source's SYN is answered with a RST instead of dropped.
    pub const DENY_WITH_RST: u32 = 1 << 0;
    /// `options`: each segment the gate holds is reported (`flags::CLIENT_SEGMENT`), for
    /// action `reply` to answer, and for the daemon to re-inject when the flow is accepted.
    pub const REPORT_HELD: u32 = 1 << 1;
    /// `options`: TC egress drops every MTA packet to a condemned client (action `drop`);
    /// without it, only the RSTs of destroyed sockets concern it (action `reply`), and
    /// any other MTA packet leaves without a flow lookup.
    pub const DROP_MTA_PACKETS: u32 = 1 << 2;

    #[inline(always)]
    pub fn deny_with_rst(&self) -> bool {
        self.options & Self::DENY_WITH_RST != 0
    }

    #[inline(always)]
    pub fn report_held(&self) -> bool {
        self.options & Self::REPORT_HELD != 0
    }

    #[inline(always)]
    pub fn drop_mta_packets(&self) -> bool {
        self.options & Self::DROP_MTA_PACKETS != 0
    }

    /// Whether the kernel holds a flow's further segments until its verdict.
    #[inline(always)]
    pub fn gate_on(&self) -> bool {
        self.gate_deadline_ms != Self::NO_GATE
    }
}

impl Default for KernelConfig {
    fn default() -> Self {
        let mut ports = [0; MAX_SMTP_PORTS];
        ports[0] = 25;
        KernelConfig {
            ports,
            port_count: 1,
            gate_deadline_ms: Self::DEFAULT_GATE_DEADLINE_MS,
            heartbeat_timeout_ms: Self::DEFAULT_HEARTBEAT_TIMEOUT_MS,
            options: 0,
        }
    }
}

/// Indices into the per-CPU `COUNTERS` array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Every packet the program ran on.
    PacketsSeen = 0,
    /// TCP packets to a configured SMTP port.
    SmtpPackets = 1,
    /// Capture events whose segment completes a HELO/EHLO line.
    HeloEvents = 2,
    /// Capture events flagged `CONTINUATION` (a flow's second and later segments).
    ContinuationEvents = 3,
    /// Ring-buffer reservations that failed (event lost, packet passed).
    RingbufReserveFailed = 4,
    /// Client segments held (dropped) by the gate while their flow awaited its verdict.
    GateHeld = 5,
    /// Gates that opened by themselves because the verdict missed the deadline.
    GateDeadline = 6,
    /// Segments the gate let through because the daemon's heartbeat was stale.
    DaemonAbsent = 7,
    /// SYNs to an SMTP port from a denied source, dropped (or answered with a RST).
    SynDropped = 8,
    /// Packets of condemned flows dropped or answered with a RST (client packets in XDP, MTA
    /// packets at egress).
    CondemnedDropped = 9,
}

impl Counter {
    pub const COUNT: u32 = 10;
    pub const ALL: [Counter; Self::COUNT as usize] = [
        Counter::PacketsSeen,
        Counter::SmtpPackets,
        Counter::HeloEvents,
        Counter::ContinuationEvents,
        Counter::RingbufReserveFailed,
        Counter::GateHeld,
        Counter::GateDeadline,
        Counter::DaemonAbsent,
        Counter::SynDropped,
        Counter::CondemnedDropped,
    ];
}

/// The `ALLOW` and `DENY` tries hold both families under one key type: an IPv6 address, or
/// an IPv4 address mapped into `::ffff:0:0/96` (its prefix length plus 96).
pub const IPV4_MAPPED_PREFIX: u32 = 96;

/// A source address as trie key data.
#[inline(always)]
pub fn trie_address(family: u8, addr: &[u8; 16]) -> [u8; 16] {
    if family == FAMILY_IPV4 {
        [
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF, addr[0], addr[1], addr[2], addr[3],
        ]
    } else {
        *addr
    }
}

/// A source's key in `KNOWN_GOOD`: its address as in the tries (IPv4-mapped), an IPv6
/// source cut to its /64 (the unit of reputation).
pub fn known_good_key(family: u8, addr: &[u8; 16]) -> [u8; 16] {
    let mut key = trie_address(family, addr);
    if family == FAMILY_IPV6 {
        key[8..].fill(0);
    }
    key
}

/// A `DENY` entry: until when (boot clock, 0 = no expiry) and who put it there.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DenyEntry {
    pub expires_ns: u64,
    pub origin: u32,
    pub _pad: u32,
}

/// How many bytes of `word` (little-endian: its first byte the lowest) come before its
/// first LF; 8 when it has none. The kernel's line scanner steps through a line by words
/// with it; it lives here so that it is unit-tested.
///
/// One branch rather than one per byte, so that the verifier meets one unknown result
/// instead of eight paths.
#[inline(always)]
pub fn bytes_before_lf(word: u64) -> u64 {
    const LF_IN_EVERY_BYTE: u64 = 0x0A0A_0A0A_0A0A_0A0A;
    const ONE_IN_EVERY_BYTE: u64 = 0x0101_0101_0101_0101;
    const HIGH_BIT_OF_EVERY_BYTE: u64 = 0x8080_8080_8080_8080;
    // LFs become zero bytes.
    let x = word ^ LF_IN_EVERY_BYTE;
    // The high bit of each byte that is zero in `x`: exact for the lowest such byte (a
    // borrow can only mark bytes above a zero one, and only the lowest is used).
    let zeros = x.wrapping_sub(ONE_IN_EVERY_BYTE) & !x & HIGH_BIT_OF_EVERY_BYTE;
    if zeros == 0 {
        return 8;
    }
    // 1 << 8n for the first LF at byte n; times this constant, whose byte k is 7 - k, the
    // top byte of the product is n.
    let first = (zeros & zeros.wrapping_neg()) >> 7;
    first.wrapping_mul(0x0001_0203_0405_0607) >> 56
}

/// `DenyEntry::origin` values.
pub mod origin {
    pub const OPERATOR: u32 = 1;
    pub const REPUTATION: u32 = 2;
    /// Another member of the fleet denied the source (docs/fleet.md).
    pub const FLEET: u32 = 3;
}

/// Per-flow capture state kept by the kernel in an LRU hash keyed by `FlowKey`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct FlowState {
    /// `bpf_ktime_get_boot_ns` when the gate closed (phase `GATED`).
    pub gated_since_ns: u64,
    /// Upper-cased first five bytes of the current (unfinished) line, packed little-endian
    /// into one integer so the line scanner keeps it in a register: enough to recognise
    /// the verb and the byte after it.
    pub line_head: u64,
    /// Sequence number of the first payload byte (ISN + 1).
    pub stream_start_seq: u32,
    /// Next in-order sequence number the line scanner expects.
    pub next_seq: u32,
    /// Payload bytes copied so far (≤ MAX_CAPTURE_BYTES).
    pub captured_bytes: u16,
    /// Bytes of the current (unfinished) line seen by the scanner.
    pub line_len: u16,
    pub segments: u8,
    pub phase: u8,
    /// The line scanner's position in the segment it scans, and once it has found the
    /// deciding line, where that line ended (kept in map memory to keep the verifier's work
    /// small).
    pub scan_end: u16,
}

/// `FlowState::phase` values.
pub mod phase {
    /// From the SYN until the first decisive command line.
    pub const CAPTURING: u8 = 1;
    /// The decisive line was captured: the client's further payload is held until the
    /// daemon writes the verdict (or the deadline passes, or the daemon is gone).
    pub const GATED: u8 = 2;
    /// Judged (or given up): the kernel lets the flow be.
    pub const DONE: u8 = 3;
    /// Rejected with action `drop`: the client's packets are dropped, and the MTA's packets
    /// to it too (TC egress), so the client gets silence.
    pub const CONDEMNED: u8 = 4;
    /// Rejected with action `rst` on a gateway: each further client packet is answered
    /// with a RST (XDP_TX).
    pub const CONDEMNED_RST: u8 = 5;
    /// Rejected with action `reply`: the client's packets are dropped, and each one that
    /// carries data or a FIN is reported (`flags::CLIENT_SEGMENT`) for the daemon to
    /// answer; at TC egress the RST of the MTA's destroyed socket is dropped (the MTA's
    /// other packets, its reply to the HELO above all, and the daemon's answers leave).
    pub const CONDEMNED_REPLY: u8 = 6;
    /// Being captured like `CAPTURING`, for a known-good source (`KNOWN_GOOD`): its HELO
    /// is judged, but nothing of the flow is held for the verdict.
    pub const CAPTURING_UNGATED: u8 = 7;
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // aya copies a Pod value to and from the kernel as raw bytes. Each type below is
    // `#[repr(C)]`, `Copy` and `'static`, and holds only integers and integer arrays (no
    // `bool`, no enum, no pointer), so every bit pattern the kernel writes is a valid
    // value; its size, asserted at the end of this file, is the sum of its fields' sizes
    // (explicit `_pad` fields), so it has no padding bytes that could be read uninitialised.

    // SAFETY: as above; 40 bytes = 16 + 16 + 2 + 2 + 1 + 3.
    unsafe impl aya::Pod for FlowKey {}
    // SAFETY: as above; 32 bytes = 2 × 8 (ports) + 4 × 4.
    unsafe impl aya::Pod for KernelConfig {}
    // SAFETY: as above; 32 bytes = 8 + 8 + 4 + 4 + 2 + 2 + 1 + 1 + 2.
    unsafe impl aya::Pod for FlowState {}
    // SAFETY: as above; 16 bytes = 8 + 4 + 4.
    unsafe impl aya::Pod for DenyEntry {}
}

const _: () = assert!(core::mem::size_of::<FlowKey>() == 40);
const _: () =
    assert!(core::mem::size_of::<CaptureEvent>() == 40 + 8 + 8 + 8 + 8 + MAX_CAPTURE_BYTES);
const _: () = assert!(core::mem::size_of::<KernelConfig>() == 32);
const _: () = assert!(core::mem::size_of::<FlowState>() == 32);
const _: () = assert!(core::mem::size_of::<DenyEntry>() == 16);

#[cfg(test)]
mod tests {
    use super::bytes_before_lf;

    fn word(bytes: &[u8; 8]) -> u64 {
        u64::from_le_bytes(*bytes)
    }

    #[test]
    fn the_first_lf_of_a_word_is_found_at_every_position() {
        for at in 0..8 {
            let mut bytes = *b"EHLO abc";
            bytes[at] = b'\n';
            assert_eq!(bytes_before_lf(word(&bytes)), at as u64, "{bytes:?}");
            // Only the first counts, whatever follows it.
            bytes[7] = b'\n';
            assert_eq!(bytes_before_lf(word(&bytes)), at as u64, "{bytes:?}");
        }
        assert_eq!(bytes_before_lf(word(b"mail.exa")), 8);
        assert_eq!(bytes_before_lf(0), 8, "zero bytes are no LF");
    }

    #[test]
    fn bytes_next_to_an_lf_are_no_lf() {
        // 0x0B and 0x09 differ from LF by one; 0x8A by the high bit; a borrow from a zero
        // byte must not mark the byte above it first.
        for other in [0x0B, 0x09, 0x8A, 0x0A ^ 0x80, 0x00, 0xFF, 0x01] {
            let mut bytes = [other; 8];
            assert_eq!(bytes_before_lf(word(&bytes)), 8, "{other:#x}");
            bytes[5] = b'\n';
            assert_eq!(bytes_before_lf(word(&bytes)), 5, "{other:#x}");
        }
        for lf_at in 0..8 {
            for byte in 0..=255u8 {
                let mut bytes = [byte; 8];
                bytes[lf_at] = b'\n';
                let expected = bytes.iter().position(|&b| b == b'\n').unwrap() as u64;
                assert_eq!(bytes_before_lf(word(&bytes)), expected, "{bytes:?}");
            }
        }
    }
}
