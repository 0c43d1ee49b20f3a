//! Header parsing: Ethernet (up to two VLAN tags), IPv4 (options; fragments rejected),
//! IPv6 (hop-by-hop, routing and destination-options headers skipped; fragments
//! rejected) and TCP. Every read is bounds-checked against the frame; anything that does
//! not parse is simply not ours and passes.

use core::mem::size_of;

use aya_ebpf::programs::{TcContext, XdpContext};
use helo_filter_common::{FAMILY_IPV4, FAMILY_IPV6, FlowKey};

const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88A8;
pub const IPPROTO_TCP: u8 = 6;
const IPV6_HOP_BY_HOP: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_DEST_OPTS: u8 = 60;
/// Extension headers we walk before giving up on a packet.
const MAX_IPV6_EXT_HEADERS: usize = 4;
/// Offsets beyond this are not a plausible SMTP segment; the bound also lets the
/// verifier reason about variable offsets.
const MAX_HEADER_OFFSET: usize = 4096;

#[repr(C)]
struct EthHdr {
    _dst: [u8; 6],
    _src: [u8; 6],
    proto: [u8; 2],
}

#[repr(C)]
struct VlanHdr {
    _tci: [u8; 2],
    proto: [u8; 2],
}

#[repr(C)]
struct Ipv4Hdr {
    version_ihl: u8,
    _tos: u8,
    total_len: [u8; 2],
    _id: [u8; 2],
    frag: [u8; 2],
    _ttl: u8,
    proto: u8,
    _csum: [u8; 2],
    saddr: [u8; 4],
    daddr: [u8; 4],
}

#[repr(C)]
struct Ipv6Hdr {
    _vtc_flow: [u8; 4],
    payload_len: [u8; 2],
    next_header: u8,
    _hop_limit: u8,
    saddr: [u8; 16],
    daddr: [u8; 16],
}

#[repr(C)]
struct Ipv6ExtHdr {
    next_header: u8,
    len_8_octets: u8,
}

#[repr(C)]
struct TcpHdr {
    _sport: [u8; 2],
    _dport: [u8; 2],
    seq: [u8; 4],
    ack: [u8; 4],
    data_offset: u8,
    flags: u8,
    _window: [u8; 2],
    _csum: [u8; 2],
    _urg: [u8; 2],
}

/// A TCP segment: its flow, flags, sequence numbers and where its headers and payload are.
/// Lives in a per-CPU scratch map (`maps::SEGMENTS`), not on the BPF stack.
#[derive(Default)]
pub struct TcpSegment {
    pub key: FlowKey,
    pub flags: u8,
    pub seq: u32,
    pub ack: u32,
    /// Where the IP header starts (after Ethernet and VLAN tags).
    pub l3_offset: usize,
    /// Where the TCP header starts.
    pub tcp_offset: usize,
    pub payload_offset: usize,
    /// Payload bytes present in the frame (the IP length, clamped to the frame).
    pub payload_len: usize,
}

/// A packet's linear bytes, in XDP or at TC (where the data also starts at Ethernet).
pub trait Packet {
    fn start(&self) -> usize;
    fn end(&self) -> usize;
}

impl Packet for XdpContext {
    #[inline(always)]
    fn start(&self) -> usize {
        self.data()
    }
    #[inline(always)]
    fn end(&self) -> usize {
        self.data_end()
    }
}

impl Packet for TcContext {
    #[inline(always)]
    fn start(&self) -> usize {
        self.data()
    }
    #[inline(always)]
    fn end(&self) -> usize {
        self.data_end()
    }
}

/// Reads a whole fixed-size header through one checked pointer.
#[inline(always)]
fn read<T, P: Packet>(ctx: &P, offset: usize) -> Option<T> {
    if offset > MAX_HEADER_OFFSET {
        return None;
    }
    let start = ctx.start();
    if start + offset + size_of::<T>() > ctx.end() {
        return None;
    }
    // SAFETY: the range [start + offset, start + offset + size_of::<T>()) lies inside
    // the frame, checked just above; headers are read unaligned.
    Some(unsafe { core::ptr::read_unaligned((start + offset) as *const T) })
}

/// Where the network header starts and which protocol it is, after up to two VLAN tags.
#[inline(always)]
fn parse_l2<P: Packet>(ctx: &P) -> Option<(usize, u16)> {
    let eth: EthHdr = read(ctx, 0)?;
    let mut proto = u16::from_be_bytes(eth.proto);
    let mut offset = size_of::<EthHdr>();
    for _ in 0..2 {
        if proto != ETH_P_8021Q && proto != ETH_P_8021AD {
            break;
        }
        let vlan: VlanHdr = read(ctx, offset)?;
        proto = u16::from_be_bytes(vlan.proto);
        offset += size_of::<VlanHdr>();
    }
    Some((offset, proto))
}

/// Where a TCP segment's headers are, and its ports: all it takes to tell whether a frame
/// is ours, read without touching a map.
pub struct Located {
    l3: usize,
    l4: usize,
    /// The TCP header and payload length the IP header declares.
    l4_len: usize,
    family: u8,
    pub sport: u16,
    pub dport: u16,
    /// The TCP flags.
    pub flags: u8,
}

/// Finds the TCP header; `None` for anything else (including IP fragments).
#[inline(always)]
pub fn locate_tcp<P: Packet>(ctx: &P) -> Option<Located> {
    let (l3, proto) = parse_l2(ctx)?;
    let (l4, l4_len, family) = match proto {
        ETH_P_IPV4 => {
            let ip: Ipv4Hdr = read(ctx, l3)?;
            let header_len = ((ip.version_ihl & 0x0F) as usize) * 4;
            let frag = u16::from_be_bytes(ip.frag);
            // More-fragments set, or a non-zero offset: a fragment, passed untouched.
            if ip.version_ihl >> 4 != 4 || header_len < 20 || frag & 0x3FFF != 0 {
                return None;
            }
            if ip.proto != IPPROTO_TCP {
                return None;
            }
            let total = u16::from_be_bytes(ip.total_len) as usize;
            (l3 + header_len, total.checked_sub(header_len)?, FAMILY_IPV4)
        }
        ETH_P_IPV6 => {
            let ip: Ipv6Hdr = read(ctx, l3)?;
            let mut next = ip.next_header;
            let mut offset = l3 + size_of::<Ipv6Hdr>();
            for _ in 0..MAX_IPV6_EXT_HEADERS {
                match next {
                    IPV6_HOP_BY_HOP | IPV6_ROUTING | IPV6_DEST_OPTS => {
                        let ext: Ipv6ExtHdr = read(ctx, offset)?;
                        next = ext.next_header;
                        offset += (ext.len_8_octets as usize + 1) * 8;
                    }
                    _ => break,
                }
            }
            // A fragment header (or anything else) ends here: fragments pass untouched.
            if next != IPPROTO_TCP {
                return None;
            }
            let payload = u16::from_be_bytes(ip.payload_len) as usize;
            let ext_len = offset - (l3 + size_of::<Ipv6Hdr>());
            (offset, payload.checked_sub(ext_len)?, FAMILY_IPV6)
        }
        _ => return None,
    };
    // Ports, sequence and acknowledgement numbers, data offset, flags.
    let head: [u8; 14] = read(ctx, l4)?;
    Some(Located {
        l3,
        l4,
        l4_len,
        family,
        sport: u16::from_be_bytes([head[0], head[1]]),
        dport: u16::from_be_bytes([head[2], head[3]]),
        flags: head[13],
    })
}

/// Reads the located segment into `out`: its flow, flags, sequence numbers and offsets;
/// false if its TCP header is malformed or cut short.
#[inline(always)]
pub fn parse_tcp<P: Packet>(ctx: &P, at: &Located, out: &mut TcpSegment) -> bool {
    parse_into(ctx, at, out).is_some()
}

#[inline(always)]
fn parse_into<P: Packet>(ctx: &P, at: &Located, out: &mut TcpSegment) -> Option<()> {
    let key = &mut out.key;
    *key = FlowKey::default();
    key.family = at.family;
    if at.family == FAMILY_IPV4 {
        let ip: Ipv4Hdr = read(ctx, at.l3)?;
        key.saddr[..4].copy_from_slice(&ip.saddr);
        key.daddr[..4].copy_from_slice(&ip.daddr);
    } else {
        let ip: Ipv6Hdr = read(ctx, at.l3)?;
        key.saddr = ip.saddr;
        key.daddr = ip.daddr;
    }
    let l4 = at.l4;
    let tcp: TcpHdr = read(ctx, l4)?;
    let tcp_len = ((tcp.data_offset >> 4) as usize) * 4;
    if tcp_len < size_of::<TcpHdr>() {
        return None;
    }
    key.sport = at.sport;
    key.dport = at.dport;
    let payload_offset = l4 + tcp_len;
    let in_frame = (ctx.end() - ctx.start()).saturating_sub(payload_offset);
    let declared = at.l4_len.checked_sub(tcp_len)?;
    out.flags = tcp.flags;
    out.seq = u32::from_be_bytes(tcp.seq);
    out.ack = u32::from_be_bytes(tcp.ack);
    out.l3_offset = at.l3;
    out.tcp_offset = l4;
    out.payload_offset = payload_offset;
    out.payload_len = declared.min(in_frame);
    Some(())
}
