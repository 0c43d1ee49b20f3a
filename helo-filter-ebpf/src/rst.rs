//! Answering a client packet with a TCP RST from the server, sent back out of the same
//! interface with XDP_TX (deployment `gateway`, and denied SYNs when so configured).
//!
//! The reply is written over the packet: MAC addresses swapped (VLAN tags kept), a fresh
//! 20-byte IPv4 header or 40-byte IPv6 header (options and extension headers dropped), a
//! 20-byte TCP header, no payload; the frame is then cut to that length. Checksums are
//! computed in full, never patched: on veth and other offloading devices the incoming
//! checksum field may not hold a full sum. Everything is written straight into the packet:
//! the capture path leaves little BPF stack to spare.

use aya_ebpf::{
    bindings::xdp_action, helpers::generated::bpf_xdp_adjust_tail, programs::XdpContext,
};
use helo_filter_common::{FAMILY_IPV4, tcp_flags};

use crate::parse::{IPPROTO_TCP, TcpSegment};

/// What `capture::on_tcp_segment` returns when the packet is to be answered with a RST:
/// not an XDP action, so the caller knows to build it (in one place, to spare stack).
pub const ANSWER_WITH_RST: u32 = u32::MAX;

const IPV4_HEADER: usize = 20;
const IPV6_HEADER: usize = 40;
const TCP_HEADER: usize = 20;

/// The RST's sequence numbers and flags (RFC 9293 §3.10.7.1): a segment carrying an ACK is
/// answered with `seq = SEG.ACK`; any other with `seq = 0, ack = SEG.SEQ + SEG.LEN` and ACK.
#[inline(always)]
fn rst_numbers(segment: &TcpSegment) -> (u32, u32, u8) {
    if segment.flags & tcp_flags::ACK != 0 {
        return (segment.ack, 0, tcp_flags::RST);
    }
    let mut len = segment.payload_len as u32;
    if segment.flags & tcp_flags::SYN != 0 {
        len += 1;
    }
    if segment.flags & tcp_flags::FIN != 0 {
        len += 1;
    }
    (
        0,
        segment.seq.wrapping_add(len),
        tcp_flags::RST | tcp_flags::ACK,
    )
}

/// Folds a 32-bit one's-complement sum into the 16-bit checksum.
#[inline(always)]
fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xFFFF) + (sum >> 16);
    sum = (sum & 0xFFFF) + (sum >> 16);
    !(sum as u16)
}

/// Adds the big-endian 16-bit words of `len` bytes at `at` (even `len`).
///
/// # Safety
/// `[at, at + len)` must be readable.
#[inline(always)]
unsafe fn add_words(at: usize, len: usize, mut sum: u32) -> u32 {
    let mut i = 0;
    while i < len {
        // SAFETY: within the range the caller vouches for.
        let word = unsafe { ((at + i) as *const [u8; 2]).read_unaligned() };
        sum += u32::from(u16::from_be_bytes(word));
        i += 2;
    }
    sum
}

/// # Safety
/// `at` must be writable for `N` bytes.
#[inline(always)]
unsafe fn put<const N: usize>(at: usize, bytes: [u8; N]) {
    // SAFETY: the caller vouches for the range.
    unsafe { (at as *mut [u8; N]).write_unaligned(bytes) };
}

/// Rewrites the packet into the RST and returns XDP_TX; returns XDP_DROP if it cannot, and
/// for a packet that is itself a RST (a denied source's SYN|RST, a condemned client's RST),
/// which is never answered (RFC 9293 §3.10.7.1). A function of its own (a BPF subprogram
/// with its own stack frame): inlined, its locals would join the capture path's in one
/// frame over the 512-byte limit.
#[inline(never)]
pub fn reply_with_rst(ctx: &XdpContext, segment: &TcpSegment) -> u32 {
    if segment.flags & tcp_flags::RST != 0 {
        return xdp_action::XDP_DROP;
    }
    let (seq, ack, flags) = rst_numbers(segment);
    let key = &segment.key;
    let l3 = segment.l3_offset;
    let v4 = key.family == FAMILY_IPV4;
    let ip_len = if v4 { IPV4_HEADER } else { IPV6_HEADER };
    let start = ctx.data();
    let end = ctx.data_end();
    // The offset bound is for the verifier; the frame must hold the reply's headers.
    if l3 > 64 || start + 12 > end || start + l3 + ip_len + TCP_HEADER > end {
        return xdp_action::XDP_DROP;
    }
    let old_len = end - start;
    // SAFETY: [start, start + 12) is inside the frame (checked above).
    unsafe {
        let macs = (start as *const [u8; 12]).read_unaligned();
        put(
            start,
            [macs[6], macs[7], macs[8], macs[9], macs[10], macs[11]],
        );
        put(
            start + 6,
            [macs[0], macs[1], macs[2], macs[3], macs[4], macs[5]],
        );
    }
    let ip = start + l3;
    let pseudo = if v4 {
        if ip + IPV4_HEADER + TCP_HEADER > end {
            return xdp_action::XDP_DROP;
        }
        // SAFETY: [ip, ip + 40) is inside the frame (checked just above).
        unsafe {
            put(ip, [0x45u8, 0]);
            put(ip + 2, ((IPV4_HEADER + TCP_HEADER) as u16).to_be_bytes());
            put(ip + 4, [0u8, 0, 0x40, 0, 64, IPPROTO_TCP, 0, 0]); // id 0, DF, TTL 64
            put(
                ip + 12,
                [key.daddr[0], key.daddr[1], key.daddr[2], key.daddr[3]],
            );
            put(
                ip + 16,
                [key.saddr[0], key.saddr[1], key.saddr[2], key.saddr[3]],
            );
            put(ip + 10, fold(add_words(ip, IPV4_HEADER, 0)).to_be_bytes());
            write_tcp(ip + IPV4_HEADER, segment, seq, ack, flags);
            // Pseudo-header: both addresses, protocol and TCP length.
            add_words(ip + 12, 8, u32::from(IPPROTO_TCP) + TCP_HEADER as u32)
        }
    } else {
        if ip + IPV6_HEADER + TCP_HEADER > end {
            return xdp_action::XDP_DROP;
        }
        // SAFETY: [ip, ip + 60) is inside the frame (checked just above).
        unsafe {
            put(ip, [0x60u8, 0, 0, 0]);
            put(ip + 4, (TCP_HEADER as u16).to_be_bytes());
            put(ip + 6, [IPPROTO_TCP, 64]);
            put(ip + 8, key.daddr);
            put(ip + 24, key.saddr);
            write_tcp(ip + IPV6_HEADER, segment, seq, ack, flags);
            add_words(ip + 8, 32, u32::from(IPPROTO_TCP) + TCP_HEADER as u32)
        }
    };
    let tcp = ip + ip_len;
    if tcp + TCP_HEADER > end {
        return xdp_action::XDP_DROP;
    }
    // SAFETY: [tcp, tcp + 20) is inside the frame (checked just above).
    unsafe {
        put(
            tcp + 16,
            fold(add_words(tcp, TCP_HEADER, pseudo)).to_be_bytes(),
        );
    }
    let delta = (l3 + ip_len + TCP_HEADER) as i32 - old_len as i32;
    // SAFETY: `ctx.ctx` is the program's xdp_md; shrinking the tail never exposes memory.
    if delta != 0 && unsafe { bpf_xdp_adjust_tail(ctx.ctx, delta) } != 0 {
        return xdp_action::XDP_DROP;
    }
    xdp_action::XDP_TX
}

/// The RST's TCP header, checksum zero (filled in once the pseudo-header sum is known).
///
/// # Safety
/// `[tcp, tcp + 20)` must be writable.
#[inline(always)]
unsafe fn write_tcp(tcp: usize, segment: &TcpSegment, seq: u32, ack: u32, flags: u8) {
    // SAFETY: the caller vouches for the range.
    unsafe {
        put(tcp, segment.key.dport.to_be_bytes());
        put(tcp + 2, segment.key.sport.to_be_bytes());
        put(tcp + 4, seq.to_be_bytes());
        put(tcp + 8, ack.to_be_bytes());
        put(tcp + 12, [5u8 << 4, flags, 0, 0, 0, 0, 0, 0]); // window, checksum, urgent: 0
    }
}
