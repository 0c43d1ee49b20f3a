//! Segments reported whole (from their TCP header on) for action `reply`: the client's that
//! the kernel drops instead of delivering (held by the gate, or of a flow condemned with
//! `reply`), which the daemon answers, echoing their timestamps and acknowledging them; and
//! the RST of the MTA's destroyed socket, which tells the daemon where the MTA stopped.

use aya_ebpf::{
    helpers::generated::{bpf_skb_load_bytes, bpf_xdp_load_bytes},
    programs::{TcContext, XdpContext},
};
use helo_filter_common::{CaptureEvent, Counter, FlowKey, MAX_CAPTURE_BYTES, flags};

use crate::{
    maps::{EVENTS, boot_ns, count},
    parse::TcpSegment,
};

/// Reports a client segment the kernel drops (`flags::CLIENT_SEGMENT`). Lost if the ring
/// buffer is full (counted): the client retransmits, and is answered then.
#[inline(never)]
pub fn client_segment(ctx: &XdpContext, segment: &TcpSegment, stream_start_seq: u32) {
    let header_len = segment.payload_offset.saturating_sub(segment.tcp_offset);
    // SAFETY: `ctx.ctx` is the program's xdp_md.
    let ifindex = unsafe { (*ctx.ctx).ingress_ifindex };
    report(
        segment.key,
        flags::CLIENT_SEGMENT,
        segment,
        stream_start_seq,
        ifindex,
        header_len + segment.payload_len,
        |dst, len| {
            // SAFETY: `dst` has MAX_CAPTURE_BYTES bytes, `len` at most that; the helper
            // checks the source range against the frame and fails instead of reading past.
            unsafe { bpf_xdp_load_bytes(ctx.ctx, segment.tcp_offset as u32, dst, len) == 0 }
        },
    );
}

/// Reports the RST of the MTA's destroyed socket that TC egress keeps from a client
/// condemned with `reply` (`flags::MTA_RESET`): its sequence numbers tell the daemon
/// whether the MTA had answered the HELO, and if not, where the daemon's answer goes.
#[inline(never)]
pub fn mta_reset(
    ctx: &TcContext,
    segment: &TcpSegment,
    client_flow: FlowKey,
    stream_start_seq: u32,
) {
    // SAFETY: the program's own __sk_buff, readable for this run.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    report(
        client_flow,
        flags::MTA_RESET,
        segment,
        stream_start_seq,
        ifindex,
        segment.payload_offset.saturating_sub(segment.tcp_offset),
        |dst, len| {
            // SAFETY: as in `client_segment`, for the socket buffer.
            unsafe {
                bpf_skb_load_bytes(ctx.skb.skb as *const _, segment.tcp_offset as u32, dst, len)
                    == 0
            }
        },
    );
}

/// Writes one event of `copy_len` bytes (cut to an event's capacity) loaded by `load`.
#[inline(always)]
fn report(
    key: FlowKey,
    event_flags: u32,
    segment: &TcpSegment,
    stream_start_seq: u32,
    ifindex: u32,
    copy_len: usize,
    load: impl FnOnce(*mut core::ffi::c_void, u32) -> bool,
) {
    let copy_len = copy_len.min(MAX_CAPTURE_BYTES);
    if copy_len == 0 {
        return;
    }
    let Some(mut entry) = EVENTS.reserve::<CaptureEvent>(0) else {
        count(Counter::RingbufReserveFailed);
        return;
    };
    // SAFETY: `entry` is reserved ring-buffer memory of the event's size; every field is
    // written before submit.
    let event = unsafe { &mut *entry.as_mut_ptr() };
    // The verifier must see the length checked against [1, MAX_CAPTURE_BYTES] on the very
    // register passed to the helper: hidden from LLVM, which would otherwise fold the
    // checks above into a `min` the verifier cannot bound from below.
    let bounded_len = core::hint::black_box(copy_len);
    if bounded_len == 0 || bounded_len > MAX_CAPTURE_BYTES {
        entry.discard(0);
        return;
    }
    if !load(event.data.as_mut_ptr().cast(), bounded_len as u32) {
        entry.discard(0);
        return;
    }
    event.key = key;
    event.ifindex = ifindex;
    event.flags = event_flags;
    event.timestamp_ns = boot_ns();
    event.seq = segment.seq;
    event.stream_start_seq = stream_start_seq;
    event.len = bounded_len as u16;
    event.wire_len = segment.payload_len as u16;
    event.ack = segment.ack;
    entry.submit(0);
}
