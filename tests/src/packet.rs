//! A small frame builder for table-driven packet tests: Ethernet with VLAN tags, IPv4
//! (options, fragment field) or IPv6 (extension headers), and TCP or another protocol.
//!
//! Checksums are left zero: the XDP program does not look at them. [`check_rst`] checks the
//! RSTs the program builds (with XDP_TX) field by field, checksums included.

use std::{
    fmt::Debug,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88A8;
pub const IPV6_HOP_BY_HOP: u8 = 0;
pub const IPV6_ROUTING: u8 = 43;
pub const IPV6_FRAGMENT: u8 = 44;
pub const IPV6_DEST_OPTS: u8 = 60;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const PSH: u8 = 0x08;
pub const ACK: u8 = 0x10;

/// The client and server of every test flow (the lab's addresses).
pub const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
pub const SERVER_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 25);
pub const CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0x10);
pub const SERVER_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x25, 0, 0, 0, 0, 0x25);

/// The kernel's key of a test flow from the IPv4 client to the server.
pub fn flow_key_v4(sport: u16, dport: u16) -> helo_filter_common::FlowKey {
    let mut key = helo_filter_common::FlowKey {
        family: helo_filter_common::FAMILY_IPV4,
        sport,
        dport,
        ..Default::default()
    };
    key.saddr[..4].copy_from_slice(&CLIENT_V4.octets());
    key.daddr[..4].copy_from_slice(&SERVER_V4.octets());
    key
}

/// The kernel's key of a test flow from the IPv6 client to the server.
pub fn flow_key_v6(sport: u16, dport: u16) -> helo_filter_common::FlowKey {
    helo_filter_common::FlowKey {
        family: helo_filter_common::FAMILY_IPV6,
        sport,
        dport,
        saddr: CLIENT_V6.octets(),
        daddr: SERVER_V6.octets(),
        ..Default::default()
    }
}

/// The Internet checksum's one's-complement sum of `bytes` (big-endian words), folded.
pub fn ones_complement_sum(bytes: &[u8], mut sum: u32) -> u16 {
    for pair in bytes.chunks(2) {
        let word = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    while sum > 0xFFFF {
        sum = (sum & 0xFFFF) + (sum >> 16);
    }
    sum as u16
}

#[derive(Clone, Debug)]
pub enum Network {
    V4 {
        src: Ipv4Addr,
        dst: Ipv4Addr,
        options: Vec<u8>,
        /// Flags and fragment offset, as on the wire (0x2000 = more fragments).
        fragment: u16,
        /// Overrides the header length field (in 32-bit words).
        ihl: Option<u8>,
        /// Overrides the total length field.
        total_len: Option<u16>,
    },
    V6 {
        src: Ipv6Addr,
        dst: Ipv6Addr,
        /// Extension headers in order: (type, length in 8-octet units beyond the first).
        extensions: Vec<(u8, u8)>,
    },
    /// Not IP at all: an ethertype and raw bytes.
    Other { ethertype: u16, bytes: Vec<u8> },
}

#[derive(Clone, Debug)]
pub struct Segment {
    pub sport: u16,
    pub dport: u16,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    /// Overrides the data offset field (in 32-bit words).
    pub data_offset: Option<u8>,
    pub payload: Vec<u8>,
}

#[derive(Clone, Debug)]
pub struct Frame {
    /// VLAN tags, outermost first: (TPID, VLAN id).
    pub vlans: Vec<(u16, u16)>,
    pub network: Network,
    /// The transport protocol number and, for TCP, the segment.
    pub protocol: u8,
    pub segment: Segment,
}

impl Frame {
    /// A TCP segment from the IPv4 test client to the server.
    pub fn tcp4(sport: u16, dport: u16, seq: u32, flags: u8, payload: &[u8]) -> Frame {
        Frame {
            vlans: Vec::new(),
            network: Network::V4 {
                src: CLIENT_V4,
                dst: SERVER_V4,
                options: Vec::new(),
                fragment: 0x4000, // DF
                ihl: None,
                total_len: None,
            },
            protocol: IPPROTO_TCP,
            segment: Segment {
                sport,
                dport,
                seq,
                ack: 1,
                flags,
                data_offset: None,
                payload: payload.to_vec(),
            },
        }
    }

    /// The same over IPv6.
    pub fn tcp6(sport: u16, dport: u16, seq: u32, flags: u8, payload: &[u8]) -> Frame {
        let mut frame = Frame::tcp4(sport, dport, seq, flags, payload);
        frame.network = Network::V6 {
            src: CLIENT_V6,
            dst: SERVER_V6,
            extensions: Vec::new(),
        };
        frame
    }

    /// The frame from `client` instead of the test client (of the frame's IP version).
    pub fn source(mut self, client: IpAddr) -> Frame {
        match (&mut self.network, client) {
            (Network::V4 { src, .. }, IpAddr::V4(client)) => *src = client,
            (Network::V6 { src, .. }, IpAddr::V6(client)) => *src = client,
            (network, _) => panic!("source {client} for a frame of {network:?}"),
        }
        self
    }

    /// The acknowledgement number (1 unless set).
    pub fn ack(mut self, ack: u32) -> Frame {
        self.segment.ack = ack;
        self
    }

    pub fn vlan(mut self, tpid: u16, id: u16) -> Frame {
        self.vlans.push((tpid, id));
        self
    }

    pub fn ipv4_options(mut self, bytes: &[u8]) -> Frame {
        if let Network::V4 { options, .. } = &mut self.network {
            *options = bytes.to_vec();
        }
        self
    }

    pub fn ipv4_fragment(mut self, field: u16) -> Frame {
        if let Network::V4 { fragment, .. } = &mut self.network {
            *fragment = field;
        }
        self
    }

    pub fn ipv4_ihl(mut self, words: u8) -> Frame {
        if let Network::V4 { ihl, .. } = &mut self.network {
            *ihl = Some(words);
        }
        self
    }

    pub fn ipv4_total_len(mut self, len: u16) -> Frame {
        if let Network::V4 { total_len, .. } = &mut self.network {
            *total_len = Some(len);
        }
        self
    }

    pub fn ipv6_extension(mut self, kind: u8, len_8_octets: u8) -> Frame {
        if let Network::V6 { extensions, .. } = &mut self.network {
            extensions.push((kind, len_8_octets));
        }
        self
    }

    /// The frame sent the other way: addresses and ports swapped (the MTA's packets to the
    /// client, as the TC egress program sees them).
    pub fn reversed(mut self) -> Frame {
        match &mut self.network {
            Network::V4 { src, dst, .. } => std::mem::swap(src, dst),
            Network::V6 { src, dst, .. } => std::mem::swap(src, dst),
            Network::Other { .. } => {}
        }
        let segment = &mut self.segment;
        std::mem::swap(&mut segment.sport, &mut segment.dport);
        self
    }

    pub fn protocol(mut self, protocol: u8) -> Frame {
        self.protocol = protocol;
        self
    }

    pub fn data_offset(mut self, words: u8) -> Frame {
        self.segment.data_offset = Some(words);
        self
    }

    pub fn bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(128);
        out.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x25]); // destination MAC
        out.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x10]); // source MAC
        for (tpid, id) in &self.vlans {
            out.extend_from_slice(&tpid.to_be_bytes());
            out.extend_from_slice(&id.to_be_bytes());
        }
        let l4 = self.transport_bytes();
        match &self.network {
            Network::V4 {
                src,
                dst,
                options,
                fragment,
                ihl,
                total_len,
            } => {
                out.extend_from_slice(&0x0800u16.to_be_bytes());
                let header_len = 20 + options.len();
                let words = ihl.unwrap_or((header_len / 4) as u8);
                let total = total_len.unwrap_or((header_len + l4.len()) as u16);
                out.push(0x40 | (words & 0x0F));
                out.push(0);
                out.extend_from_slice(&total.to_be_bytes());
                out.extend_from_slice(&[0x12, 0x34]);
                out.extend_from_slice(&fragment.to_be_bytes());
                out.push(64);
                out.push(self.protocol);
                out.extend_from_slice(&[0, 0]);
                out.extend_from_slice(&src.octets());
                out.extend_from_slice(&dst.octets());
                out.extend_from_slice(options);
            }
            Network::V6 {
                src,
                dst,
                extensions,
            } => {
                out.extend_from_slice(&0x86DDu16.to_be_bytes());
                let ext_len: usize = extensions.iter().map(|(_, l)| (*l as usize + 1) * 8).sum();
                out.extend_from_slice(&[0x60, 0, 0, 0]);
                out.extend_from_slice(&((ext_len + l4.len()) as u16).to_be_bytes());
                out.push(extensions.first().map_or(self.protocol, |(kind, _)| *kind));
                out.push(64);
                out.extend_from_slice(&src.octets());
                out.extend_from_slice(&dst.octets());
                for (i, (_, len)) in extensions.iter().enumerate() {
                    let next = extensions
                        .get(i + 1)
                        .map_or(self.protocol, |(kind, _)| *kind);
                    let mut header = vec![0u8; (*len as usize + 1) * 8];
                    header[0] = next;
                    header[1] = *len;
                    out.extend_from_slice(&header);
                }
            }
            Network::Other { ethertype, bytes } => {
                out.extend_from_slice(&ethertype.to_be_bytes());
                out.extend_from_slice(bytes);
                return out;
            }
        }
        out.extend_from_slice(&l4);
        out
    }

    fn transport_bytes(&self) -> Vec<u8> {
        let s = &self.segment;
        let mut out = Vec::with_capacity(20 + s.payload.len());
        out.extend_from_slice(&s.sport.to_be_bytes());
        out.extend_from_slice(&s.dport.to_be_bytes());
        if self.protocol == IPPROTO_TCP {
            out.extend_from_slice(&s.seq.to_be_bytes());
            out.extend_from_slice(&s.ack.to_be_bytes());
            out.push(s.data_offset.unwrap_or(5) << 4);
            out.push(s.flags);
            out.extend_from_slice(&[0xFF, 0xFF, 0, 0, 0, 0]); // window, checksum, urgent
        } else {
            out.extend_from_slice(&((8 + s.payload.len()) as u16).to_be_bytes());
            out.extend_from_slice(&[0, 0]);
        }
        out.extend_from_slice(&s.payload);
        out
    }
}

/// An ARP request: a frame that is not IP.
pub fn arp() -> Vec<u8> {
    Frame {
        vlans: Vec::new(),
        network: Network::Other {
            ethertype: 0x0806,
            bytes: vec![0, 1, 8, 0, 6, 4, 0, 1, 2, 0, 0, 0, 0, 0x10, 203, 0, 113, 10],
        },
        protocol: 0,
        segment: Frame::tcp4(0, 0, 0, 0, b"").segment,
    }
    .bytes()
}

/// What a RST the XDP program built must say: the server's answer to a client segment.
pub struct ExpectedRst {
    /// Where the IP header starts (after Ethernet and VLAN tags).
    pub l3: usize,
    pub client: IpAddr,
    pub server: IpAddr,
    pub client_port: u16,
    pub server_port: u16,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
}

/// Checks a RST frame `out` built in answer to the client's frame `input`, field by field:
/// MACs swapped, VLAN tags kept, addresses and ports reversed, sequence numbers, flags,
/// lengths and both checksums (the IPv4 header's, and TCP's over its pseudo-header). The
/// error names the first field that is wrong.
pub fn check_rst(input: &[u8], out: &[u8], want: &ExpectedRst) -> Result<(), String> {
    fn same<T: PartialEq + Debug>(what: &str, got: T, expected: T) -> Result<(), String> {
        if got == expected {
            Ok(())
        } else {
            Err(format!("{what}: {got:?}, expected {expected:?}"))
        }
    }
    let ip_len = if want.client.is_ipv6() { 40 } else { 20 };
    same("frame length", out.len(), want.l3 + ip_len + 20)?;
    same("destination MAC", &out[..6], &input[6..12])?;
    same("source MAC", &out[6..12], &input[..6])?;
    same(
        "VLAN tags and ethertype",
        &out[12..want.l3],
        &input[12..want.l3],
    )?;
    let (ip, tcp) = out[want.l3..].split_at(ip_len);
    let pseudo_sum = match (want.server, want.client) {
        (IpAddr::V6(server), IpAddr::V6(client)) => {
            same("IP version", ip[0] >> 4, 6)?;
            same("payload length", u16::from_be_bytes([ip[4], ip[5]]), 20)?;
            same("next header", ip[6], IPPROTO_TCP)?;
            same("source", &ip[8..24], &server.octets()[..])?;
            same("destination", &ip[24..40], &client.octets()[..])?;
            ones_complement_sum(&ip[8..40], u32::from(IPPROTO_TCP) + 20)
        }
        (IpAddr::V4(server), IpAddr::V4(client)) => {
            same("IPv4 version and header length (no options)", ip[0], 0x45)?;
            same("total length", u16::from_be_bytes([ip[2], ip[3]]), 40)?;
            same("protocol", ip[9], IPPROTO_TCP)?;
            same("source", &ip[12..16], &server.octets()[..])?;
            same("destination", &ip[16..20], &client.octets()[..])?;
            same("IPv4 header checksum", ones_complement_sum(ip, 0), 0xFFFF)?;
            ones_complement_sum(&ip[12..20], u32::from(IPPROTO_TCP) + 20)
        }
        (server, client) => return Err(format!("expected a RST from {server} to {client}")),
    };
    let word = |at: usize| u16::from_be_bytes([tcp[at], tcp[at + 1]]);
    let long = |at: usize| u32::from_be_bytes([tcp[at], tcp[at + 1], tcp[at + 2], tcp[at + 3]]);
    same("source port", word(0), want.server_port)?;
    same("destination port", word(2), want.client_port)?;
    same("seq", long(4), want.seq)?;
    same("ack", long(8), want.ack)?;
    same("data offset", tcp[12] >> 4, 5)?;
    same("flags", tcp[13], want.flags)?;
    same(
        "TCP checksum",
        ones_complement_sum(tcp, u32::from(pseudo_sum)),
        0xFFFF,
    )
}
