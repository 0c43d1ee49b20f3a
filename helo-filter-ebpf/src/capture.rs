//! Per-flow capture: from the client's SYN until its first command line that is not
//! NOOP/RSET has ended (normally the HELO/EHLO line), or until the per-flow caps.
//!
//! Each captured segment becomes one ring-buffer event; the daemon reassembles them by
//! sequence number. The kernel scans in-order bytes only to know when to stop.

use aya_ebpf::{
    helpers::{bpf_ktime_get_boot_ns, generated::bpf_xdp_load_bytes},
    programs::XdpContext,
};
use aya_log_ebpf::debug;
use helo_filter_common::{
    CaptureEvent, Counter, FlowState, MAX_CAPTURE_BYTES, MAX_CAPTURE_SEGMENTS, flags, phase,
};

use crate::{
    maps::{EVENTS, FLOWS, count, is_smtp_port},
    parse::{TCP_ACK, TCP_SYN, TcpSegment},
};

// Verbs as the little-endian integer of their four upper-cased bytes.
const VERB_HELO: u64 = u32::from_le_bytes(*b"HELO") as u64;
const VERB_EHLO: u64 = u32::from_le_bytes(*b"EHLO") as u64;
const VERB_NOOP: u64 = u32::from_le_bytes(*b"NOOP") as u64;
const VERB_RSET: u64 = u32::from_le_bytes(*b"RSET") as u64;

#[inline(always)]
pub fn on_tcp_segment(ctx: &XdpContext, segment: &TcpSegment) {
    if !is_smtp_port(segment.key.dport) {
        return;
    }
    count(Counter::SmtpPackets);
    if segment.flags & (TCP_SYN | TCP_ACK) == TCP_SYN {
        let start = segment.seq.wrapping_add(1);
        let state = FlowState {
            stream_start_seq: start,
            next_seq: start,
            phase: phase::CAPTURING,
            ..FlowState::default()
        };
        // A failed insert only means this flow is not captured: the mail still flows.
        let _ = FLOWS.insert(segment.key, state, 0);
        return;
    }
    if segment.payload_len == 0 {
        return;
    }
    let Some(state) = FLOWS.get_ptr_mut(segment.key) else {
        return;
    };
    // SAFETY: a pointer into the map value, valid for this program run.
    let state = unsafe { &mut *state };
    if state.phase == phase::CAPTURING {
        capture_segment(ctx, segment, state);
    }
}

/// What the line scanner found in a segment's copied bytes.
enum ScanResult {
    /// No decisive line ended; the scanner state carries over to the next segment.
    NeedMore,
    /// A line that ends the capture ended just before byte `end`.
    Decisive { end: usize, helo: bool },
}

#[inline(always)]
fn capture_segment(ctx: &XdpContext, segment: &TcpSegment, state: &mut FlowState) {
    let offset_from_expected = segment.seq.wrapping_sub(state.next_seq) as i32;
    let segment_end = segment.seq.wrapping_add(segment.payload_len as u32);
    if offset_from_expected < 0 && segment_end.wrapping_sub(state.next_seq) as i32 <= 0 {
        // A retransmission of bytes already captured.
        return;
    }
    let remaining = MAX_CAPTURE_BYTES.saturating_sub(state.captured_bytes as usize);
    let copy_len = segment.payload_len.min(remaining);
    if copy_len == 0 {
        state.phase = phase::DONE;
        return;
    }
    let Some(mut entry) = EVENTS.reserve::<CaptureEvent>(0) else {
        // Fail open: the segment passes, the daemon never judges this flow.
        count(Counter::RingbufReserveFailed);
        return;
    };
    let event = entry.as_mut_ptr();
    // SAFETY: `event` points to reserved ring-buffer memory of the event's size; every
    // field is written before submit.
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
        entry.discard(0);
        return;
    }

    state.segments = state.segments.saturating_add(1);
    state.captured_bytes += bounded_len as u16;
    let mut event_flags = 0;
    if state.segments > 1 {
        event_flags |= flags::CONTINUATION;
    }
    if bounded_len < segment.payload_len {
        event_flags |= flags::TRUNCATED;
    }
    event.len = bounded_len as u16;
    if offset_from_expected == 0 {
        state.next_seq = segment_end;
        if let ScanResult::Decisive { end, helo } = scan_lines(event, state) {
            event_flags |= flags::FINAL;
            if helo {
                event_flags |= flags::HELO_LINE;
            }
            if end < segment.payload_len {
                event_flags |= flags::PIPELINED;
            }
        }
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
    if event_flags & flags::FINAL != 0 {
        state.phase = phase::DONE;
    }

    event.key = segment.key;
    // SAFETY: `ctx.ctx` is the program's xdp_md.
    event.ifindex = unsafe { (*ctx.ctx).ingress_ifindex };
    event.flags = event_flags;
    // SAFETY: plain helper call without arguments.
    event.timestamp_ns = unsafe { bpf_ktime_get_boot_ns() };
    event.seq = segment.seq;
    event.stream_start_seq = state.stream_start_seq;
    event.wire_len = segment.payload_len as u16;
    event._pad = 0;
    entry.submit(0);

    if event_flags & flags::CONTINUATION != 0 {
        count(Counter::ContinuationEvents);
    }
    if event_flags & flags::HELO_LINE != 0 {
        count(Counter::HeloEvents);
    }
}

/// Feeds the event's copied bytes through the flow's line scanner.
///
/// The loop-carried line state is read from and written to the map value on every byte
/// (volatile, so LLVM keeps it there): the verifier does not track map memory, so the
/// paths through one iteration converge at the next and it can prune them. Kept in
/// registers, the exact line length would make every path distinct and the program too
/// complex to verify. For the same reason the length is read back from the event: the
/// copy length the helper call made precise would tell every loop exit apart.
#[inline(always)]
fn scan_lines(event: &CaptureEvent, state: &mut FlowState) -> ScanResult {
    // SAFETY: a field of the reserved event, written by the caller.
    let len = unsafe { core::ptr::read_volatile(&event.len) } as usize;
    let data = &event.data;
    let head_slot: *mut u64 = &mut state.line_head;
    let len_slot: *mut u16 = &mut state.line_len;
    for i in 0..MAX_CAPTURE_BYTES {
        if i >= len {
            break;
        }
        // SAFETY: i < MAX_CAPTURE_BYTES, a power of two, so the mask is a no-op that the
        // verifier can see.
        let byte = unsafe { *data.get_unchecked(i & (MAX_CAPTURE_BYTES - 1)) };
        // SAFETY: both slots point into the flow's map value.
        let (mut head, line_len) = unsafe { (head_slot.read_volatile(), len_slot.read_volatile()) };
        if line_len < 5 {
            head |= (byte.to_ascii_uppercase() as u64) << ((line_len as u64 & 7) * 8);
        }
        let line_len = line_len.saturating_add(1);
        let mut next_line_len = line_len;
        if byte == b'\n' {
            let verb = head & 0xFFFF_FFFF;
            let after_verb = (head >> 32) as u8;
            let verb_ends = line_len >= 5 && matches!(after_verb, b' ' | b'\t' | b'\r' | b'\n');
            if verb_ends && (verb == VERB_HELO || verb == VERB_EHLO) {
                return ScanResult::Decisive {
                    end: i + 1,
                    helo: true,
                };
            }
            if !(verb_ends && (verb == VERB_NOOP || verb == VERB_RSET)) {
                return ScanResult::Decisive {
                    end: i + 1,
                    helo: false,
                };
            }
            head = 0;
            next_line_len = 0;
        }
        // SAFETY: as above.
        unsafe {
            head_slot.write_volatile(head);
            len_slot.write_volatile(next_line_len);
        }
    }
    ScanResult::NeedMore
}
