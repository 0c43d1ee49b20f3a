//! Per-flow capture: from the client's SYN until its first command line that is not
//! NOOP/RSET has ended (normally the HELO/EHLO line), or until the per-flow caps; then the
//! gate, until the daemon's verdict.
//!
//! Each captured segment becomes one ring-buffer event; the daemon reassembles them by
//! sequence number. The kernel scans in-order bytes only to know when to stop.
//!
//! The gate drops the client's further payload-bearing segments (pure ACKs, FIN and RST
//! pass) so that nothing following a bogus HELO reaches the MTA before the verdict; TCP
//! retransmits them once the daemon has written an accept. It fails open: after the gate
//! deadline, and whenever the daemon's heartbeat is stale. In monitor mode
//! (`KernelConfig::NO_GATE`) there is no gate: flows are captured, and nothing is held.

use aya_ebpf::{
    bindings::xdp_action, helpers::generated::bpf_xdp_load_bytes, programs::XdpContext,
};
use aya_log_ebpf::debug;
use helo_filter_common::{
    CAPTURE_EVENT_HEADER, CaptureEvent, Counter, FlowState, KernelConfig, MAX_CAPTURE_BYTES,
    MAX_CAPTURE_SEGMENTS, bytes_before_lf, flags, phase, tcp_flags,
};

use crate::{
    maps::{
        EVENT_SCRATCH, EVENTS, FLOWS, allowed, boot_ns, count, daemon_alive, denied, known_good,
        source_key,
    },
    parse::TcpSegment,
    report,
    rst::ANSWER_WITH_RST,
};

// Verbs as the little-endian integer of their four upper-cased bytes.
const VERB_HELO: u64 = u32::from_le_bytes(*b"HELO") as u64;
const VERB_EHLO: u64 = u32::from_le_bytes(*b"EHLO") as u64;
const VERB_NOOP: u64 = u32::from_le_bytes(*b"NOOP") as u64;
const VERB_RSET: u64 = u32::from_le_bytes(*b"RSET") as u64;

/// Handles a TCP segment to an SMTP port; returns the XDP action for it, or
/// `ANSWER_WITH_RST`.
///
/// The allow and deny lists are looked up at the SYN only, and the flow remembers the
/// outcome (an allowed source's flow is not even tracked): a list change reaches new
/// connections, and every later segment of a flow costs one hash lookup at most.
#[inline(never)]
pub fn on_tcp_segment(ctx: &XdpContext, segment: &TcpSegment, config: &KernelConfig) -> u32 {
    count(Counter::SmtpPackets);
    if segment.flags & (tcp_flags::SYN | tcp_flags::ACK) == tcp_flags::SYN {
        let source = source_key(&segment.key);
        if allowed(&source) {
            return xdp_action::XDP_PASS;
        }
        let now = boot_ns();
        // Repeat offenders and operator entries: not even a connection. Enforced whether
        // or not the daemon is alive.
        if denied(&source, now) {
            count(Counter::SynDropped);
            if config.deny_with_rst() {
                return ANSWER_WITH_RST;
            }
            return xdp_action::XDP_DROP;
        }
        let start = segment.seq.wrapping_add(1);
        let state = FlowState {
            stream_start_seq: start,
            next_seq: start,
            phase: if known_good(&segment.key, now) {
                phase::CAPTURING_UNGATED
            } else {
                phase::CAPTURING
            },
            ..FlowState::default()
        };
        // A failed insert only means this flow is not captured: the mail still flows.
        let _ = FLOWS.insert(segment.key, state, 0);
        return xdp_action::XDP_PASS;
    }
    let Some(state) = FLOWS.get_ptr_mut(segment.key) else {
        return xdp_action::XDP_PASS;
    };
    // SAFETY: a pointer into the map value, valid for this program run.
    let state = unsafe { &mut *state };
    if state.phase == phase::CONDEMNED {
        count(Counter::CondemnedDropped);
        return xdp_action::XDP_DROP;
    }
    if state.phase == phase::CONDEMNED_RST {
        count(Counter::CondemnedDropped);
        return ANSWER_WITH_RST;
    }
    if state.phase == phase::CONDEMNED_REPLY {
        count(Counter::CondemnedDropped);
        if segment.payload_len > 0 || segment.flags & tcp_flags::FIN != 0 {
            report::client_segment(ctx, segment, state.stream_start_seq);
        }
        return xdp_action::XDP_DROP;
    }
    if segment.payload_len == 0 {
        return xdp_action::XDP_PASS;
    }
    match state.phase {
        phase::CAPTURING | phase::CAPTURING_UNGATED => {
            let action = capture_segment(ctx, segment, state, config, boot_ns());
            if action == xdp_action::XDP_DROP && config.report_held() {
                // The decisive segment held: if the verdict is `reply`, answered at once.
                report::client_segment(ctx, segment, state.stream_start_seq);
            }
            action
        }
        phase::GATED => {
            let action = gate(state, config, boot_ns());
            if action == xdp_action::XDP_DROP && config.report_held() {
                // Held: if the verdict is `reply`, the daemon answers it at once.
                report::client_segment(ctx, segment, state.stream_start_seq);
            }
            action
        }
        _ => xdp_action::XDP_PASS,
    }
}

/// A payload segment of a flow awaiting its verdict: held while the daemon is alive and
/// the deadline has not passed.
#[inline(always)]
fn gate(state: &mut FlowState, config: &KernelConfig, now: u64) -> u32 {
    if !config.gate_on() {
        // Gated by an enforcing predecessor (the flow table is pinned); this daemon holds
        // nothing.
        state.phase = phase::DONE;
        return xdp_action::XDP_PASS;
    }
    if !daemon_alive(config, now) {
        count(Counter::DaemonAbsent);
        return xdp_action::XDP_PASS;
    }
    if now.saturating_sub(state.gated_since_ns) > config.gate_deadline_ms as u64 * 1_000_000 {
        state.phase = phase::DONE;
        count(Counter::GateDeadline);
        return xdp_action::XDP_PASS;
    }
    count(Counter::GateHeld);
    xdp_action::XDP_DROP
}

// What the line scanner found in a segment: plain integers (not an enum carrying the
// end offset) so that the scan loop's exits look alike to the verifier.
/// No decisive line ended; the scanner state carries over to the next segment.
const SCAN_NEED_MORE: u32 = 0;
/// A HELO/EHLO line ended the capture (at `FlowState::scan_end`).
const SCAN_HELO: u32 = 1;
/// Another command line ended the capture (at `FlowState::scan_end`).
const SCAN_OTHER: u32 = 2;

/// Captures one payload segment; returns the XDP action for it (XDP_DROP only for a
/// pipelined HELO segment, which the gate holds with the rest). A function of its own (a
/// BPF subprogram with its own stack frame), so that its locals and the RST builder's
/// never share one frame over the 512-byte limit.
#[inline(never)]
fn capture_segment(
    ctx: &XdpContext,
    segment: &TcpSegment,
    state: &mut FlowState,
    config: &KernelConfig,
    now: u64,
) -> u32 {
    let offset_from_expected = segment.seq.wrapping_sub(state.next_seq) as i32;
    let segment_end = segment.seq.wrapping_add(segment.payload_len as u32);
    if offset_from_expected < 0 && segment_end.wrapping_sub(state.next_seq) as i32 <= 0 {
        // A retransmission of bytes already captured.
        return xdp_action::XDP_PASS;
    }
    let remaining = MAX_CAPTURE_BYTES.saturating_sub(state.captured_bytes as usize);
    let copy_len = segment.payload_len.min(remaining);
    if copy_len == 0 {
        state.phase = phase::DONE;
        return xdp_action::XDP_PASS;
    }
    let Some(event) = EVENT_SCRATCH.get_ptr_mut(0) else {
        state.phase = phase::DONE;
        return xdp_action::XDP_PASS;
    };
    // SAFETY: this CPU's scratch event, used by nothing else while the program runs; every
    // field put into the ring buffer is written below.
    let event = unsafe { &mut *event };
    // Proves to the verifier that the length is within [1, MAX_CAPTURE_BYTES].
    let bounded_len = ((copy_len - 1) & (MAX_CAPTURE_BYTES - 1)) + 1;
    // SAFETY: the destination has MAX_CAPTURE_BYTES bytes; the helper checks the
    // source range against the frame and fails instead of reading past it.
    let loaded = unsafe {
        bpf_xdp_load_bytes(
            ctx.ctx,
            segment.payload_offset as u32,
            event.data.as_mut_ptr() as *mut _,
            bounded_len as u32,
        )
    };
    if loaded != 0 {
        state.phase = phase::DONE;
        return xdp_action::XDP_PASS;
    }

    state.segments = state.segments.saturating_add(1);
    state.captured_bytes += bounded_len as u16;
    event.len = bounded_len as u16;
    let mut event_flags = 0;
    if offset_from_expected == 0 {
        state.next_seq = segment_end;
        let found = scan_lines(event, state);
        if found != SCAN_NEED_MORE {
            event_flags |= flags::FINAL;
            if found == SCAN_HELO {
                event_flags |= flags::HELO_LINE;
            }
            // SAFETY: a field of the flow's map value, written by the scanner.
            let end = unsafe { core::ptr::read_volatile(&state.scan_end) } as usize;
            if end < segment.payload_len {
                event_flags |= flags::PIPELINED;
            }
        }
    }
    if state.segments > 1 {
        event_flags |= flags::CONTINUATION;
    }
    if bounded_len < segment.payload_len {
        event_flags |= flags::TRUNCATED;
    }
    if event_flags & flags::FINAL == 0
        && (state.captured_bytes as usize >= MAX_CAPTURE_BYTES
            || state.segments >= MAX_CAPTURE_SEGMENTS)
    {
        event_flags |= flags::FINAL | flags::CAPPED;
        debug!(
            ctx,
            "capture cap reached after {} segments, {} bytes", state.segments, state.captured_bytes
        );
    }
    let ungated = state.phase == phase::CAPTURING_UNGATED;
    if ungated {
        event_flags |= flags::UNGATED;
    }
    let mut action = xdp_action::XDP_PASS;
    if event_flags & flags::FINAL != 0 {
        if config.gate_on() && !ungated {
            state.phase = phase::GATED;
            state.gated_since_ns = now;
            // Commands sent with the HELO before our reply (RFC 2920 forbids it) are held
            // with it, and so is a first command that is not a HELO (reason `no_helo`):
            // the verdict decides whether TCP may deliver them, and under `reply` the
            // daemon answers them itself.
            let other_first = event_flags & (flags::HELO_LINE | flags::CAPPED) == 0;
            if (event_flags & flags::PIPELINED != 0 || other_first) && daemon_alive(config, now) {
                count(Counter::GateHeld);
                event_flags |= flags::HELD;
                action = xdp_action::XDP_DROP;
            }
        } else {
            // Monitor mode, or a known-good source: the capture ends here, and the flow
            // goes on untouched.
            state.phase = phase::DONE;
        }
    }

    event.key = segment.key;
    // SAFETY: `ctx.ctx` is the program's xdp_md.
    event.ifindex = unsafe { (*ctx.ctx).ingress_ifindex };
    event.flags = event_flags;
    event.timestamp_ns = now;
    event.seq = segment.seq;
    event.stream_start_seq = state.stream_start_seq;
    event.wire_len = segment.payload_len as u16;
    event.ack = segment.ack;
    // The record: the header and the bytes copied. Hidden from LLVM, so that the verifier
    // sees the bounds checked on the very register passed to the helper.
    let record_len = core::hint::black_box(CAPTURE_EVENT_HEADER + bounded_len);
    if record_len > size_of::<CaptureEvent>() {
        state.phase = phase::DONE;
        return xdp_action::XDP_PASS;
    }
    // SAFETY: `record_len` bytes from the start of the scratch event, which has more.
    let record = unsafe {
        core::slice::from_raw_parts((event as *const CaptureEvent).cast::<u8>(), record_len)
    };
    if EVENTS.output::<[u8]>(record, 0).is_err() {
        // Fail open: the segment passes, and the flow's capture ends here. The daemon never
        // sees these bytes, so it could not judge the flow rightly (a later capture would
        // start past its HELO); nothing of the flow may wait for a verdict.
        count(Counter::RingbufReserveFailed);
        state.phase = phase::DONE;
        return xdp_action::XDP_PASS;
    }

    if event_flags & flags::CONTINUATION != 0 {
        count(Counter::ContinuationEvents);
    }
    if event_flags & flags::HELO_LINE != 0 {
        count(Counter::HeloEvents);
    }
    action
}

/// Feeds the event's copied bytes through the flow's line scanner.
///
/// Only a line's first five bytes matter (its verb and the byte after it) besides its end:
/// past them the scanner looks for the next LF a word (8 bytes) at a time, so that a HELO
/// line costs a few word steps rather than a step per byte.
///
/// The loop-carried state (the line's head and length, and the scan position, kept in
/// `scan_end` until the scan ends there) is read from and written to the map value on every
/// step (volatile, so LLVM keeps it there): the verifier does not track map memory, so the
/// paths through one step converge at the next and it can prune them. Kept in registers,
/// the exact position would make every path distinct and the program too complex to
/// verify. For the same reason the length is read back from the event: the copy length the
/// helper call made precise would tell every loop exit apart.
#[inline(always)]
fn scan_lines(event: &CaptureEvent, state: &mut FlowState) -> u32 {
    // SAFETY: a field of the scratch event, written by the caller.
    let len = unsafe { core::ptr::read_volatile(&event.len) } as usize;
    let data = &event.data;
    let head_slot: *mut u64 = &mut state.line_head;
    let len_slot: *mut u16 = &mut state.line_len;
    let at_slot: *mut u16 = &mut state.scan_end;
    // SAFETY: a field of the flow's map value.
    unsafe { at_slot.write_volatile(0) };
    // Each step moves on by at least one byte.
    for _ in 0..MAX_CAPTURE_BYTES {
        // SAFETY: the slots point into the flow's map value.
        let (mut at, mut head, mut line_len) = unsafe {
            (
                at_slot.read_volatile() as usize,
                head_slot.read_volatile(),
                len_slot.read_volatile(),
            )
        };
        if at >= len {
            break;
        }
        // Past the head, on to the next LF by aligned words.
        let word_start = at & !7;
        if line_len >= 5 && word_start <= MAX_CAPTURE_BYTES - 8 {
            // SAFETY: `word_start + 8 <= MAX_CAPTURE_BYTES`, and `data` starts 8-aligned in
            // the event (offset 72), which the per-CPU map places 8-aligned.
            let word = unsafe { (data.as_ptr().add(word_start) as *const u64).read() };
            // Little-endian: the byte at `at` becomes the lowest; zeros come in above,
            // which are no LF.
            let before_lf = bytes_before_lf(word >> ((at & 7) * 8)) as usize;
            // The word's bytes from `at` that were copied: those past `len` are what an
            // earlier capture left in the scratch event, and an LF there is none.
            let word_end = (word_start + 8).min(len);
            let copied = word_end - at;
            if before_lf >= copied {
                // SAFETY: as above.
                unsafe {
                    len_slot.write_volatile(line_len.wrapping_add(copied as u16));
                    at_slot.write_volatile(word_end as u16);
                }
                continue;
            }
            at += before_lf;
            line_len = line_len.wrapping_add(before_lf as u16);
        }
        // SAFETY: the mask keeps the index below MAX_CAPTURE_BYTES, a power of two, where
        // the verifier can see it.
        let byte = unsafe { *data.get_unchecked(at & (MAX_CAPTURE_BYTES - 1)) };
        if line_len < 5 {
            head |= (byte.to_ascii_uppercase() as u64) << ((line_len as u64 & 7) * 8);
        }
        // Wrapping is fine: a flow never captures more than 512 bytes.
        line_len = line_len.wrapping_add(1);
        if byte == b'\n' {
            let verb = head & 0xFFFF_FFFF;
            let after_verb = (head >> 32) as u8;
            let verb_ends = line_len >= 5 && matches!(after_verb, b' ' | b'\t' | b'\r' | b'\n');
            let helo = verb_ends && (verb == VERB_HELO || verb == VERB_EHLO);
            let skippable = verb_ends && (verb == VERB_NOOP || verb == VERB_RSET);
            if !skippable {
                // SAFETY: as above.
                unsafe { at_slot.write_volatile(at as u16 + 1) };
                return if helo { SCAN_HELO } else { SCAN_OTHER };
            }
            head = 0;
            line_len = 0;
        }
        // SAFETY: as above.
        unsafe {
            head_slot.write_volatile(head);
            len_slot.write_volatile(line_len);
            at_slot.write_volatile(at as u16 + 1);
        }
    }
    SCAN_NEED_MORE
}
