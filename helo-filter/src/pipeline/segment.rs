//! TCP segments the daemon reads and writes: reading the client segment the kernel reported
//! (its TCP header and payload), building the IP packets action `reply` sends in answer,
//! and wrapping a reported segment in its IP header again for re-injection, checksums in
//! full.

use std::net::{IpAddr, SocketAddr};

const TCP_HEADER: usize = 20;
const IPV4_HEADER: usize = 20;
const IPV6_HEADER: usize = 40;
const IPPROTO_TCP: u8 = 6;
const OPTION_END: u8 = 0;
const OPTION_NOP: u8 = 1;
const OPTION_TIMESTAMPS: u8 = 8;
/// The window our answers advertise: never zero, or the client could not send its QUIT.
const WINDOW: u16 = 65_535;

/// RFC 7323 timestamps of a segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timestamps {
    pub value: u32,
    pub echo_reply: u32,
}

/// A client segment as the kernel reported it: from its TCP header on.
#[derive(Debug, PartialEq, Eq)]
pub struct Reported<'a> {
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub timestamps: Option<Timestamps>,
    /// The payload bytes the report holds (it may have been cut short).
    pub payload: &'a [u8],
}

impl<'a> Reported<'a> {
    /// Reads `bytes` (a TCP header, its options, then payload); `None` if they do not
    /// hold a whole TCP header.
    pub fn parse(bytes: &'a [u8]) -> Option<Reported<'a>> {
        let word = |at: usize| {
            u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
        };
        if bytes.len() < TCP_HEADER {
            return None;
        }
        let header_len = usize::from(bytes[12] >> 4) * 4;
        if header_len < TCP_HEADER || header_len > bytes.len() {
            return None;
        }
        Some(Reported {
            seq: word(4),
            ack: word(8),
            flags: bytes[13],
            timestamps: timestamps(&bytes[TCP_HEADER..header_len]),
            payload: &bytes[header_len..],
        })
    }
}

/// The timestamps option among `options`, if well formed.
fn timestamps(mut options: &[u8]) -> Option<Timestamps> {
    while let Some(&kind) = options.first() {
        match kind {
            OPTION_END => return None,
            OPTION_NOP => options = &options[1..],
            _ => {
                let len = usize::from(*options.get(1)?);
                if len < 2 || len > options.len() {
                    return None;
                }
                if kind == OPTION_TIMESTAMPS && len == 10 {
                    let at = |i: usize| {
                        u32::from_be_bytes([
                            options[i],
                            options[i + 1],
                            options[i + 2],
                            options[i + 3],
                        ])
                    };
                    return Some(Timestamps {
                        value: at(2),
                        echo_reply: at(6),
                    });
                }
                options = &options[len..];
            }
        }
    }
    None
}

/// What a segment we send says, beside its addresses.
#[derive(Clone, Copy, Debug)]
pub struct Header {
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    /// Sent as NOP, NOP, timestamps when the client uses them.
    pub timestamps: Option<Timestamps>,
}

/// The IP packet (IPv4 or IPv6 after `from`'s family) carrying one TCP segment from `from`
/// to `to`. `from` and `to` must be of one family.
pub fn ip_packet(from: SocketAddr, to: SocketAddr, header: Header, payload: &[u8]) -> Vec<u8> {
    let options_len = if header.timestamps.is_some() { 12 } else { 0 };
    let tcp_len = TCP_HEADER + options_len + payload.len();
    let mut tcp = Vec::with_capacity(tcp_len);
    tcp.extend_from_slice(&from.port().to_be_bytes());
    tcp.extend_from_slice(&to.port().to_be_bytes());
    tcp.extend_from_slice(&header.seq.to_be_bytes());
    tcp.extend_from_slice(&header.ack.to_be_bytes());
    tcp.push((((TCP_HEADER + options_len) / 4) as u8) << 4);
    tcp.push(header.flags);
    tcp.extend_from_slice(&WINDOW.to_be_bytes());
    tcp.extend_from_slice(&[0, 0, 0, 0]); // checksum (below), urgent pointer
    if let Some(ts) = header.timestamps {
        tcp.extend_from_slice(&[OPTION_NOP, OPTION_NOP, OPTION_TIMESTAMPS, 10]);
        tcp.extend_from_slice(&ts.value.to_be_bytes());
        tcp.extend_from_slice(&ts.echo_reply.to_be_bytes());
    }
    tcp.extend_from_slice(payload);
    around_tcp(from.ip(), to.ip(), tcp)
}

/// The IP packet (IPv4 or IPv6 after `from`'s family) from `from` to `to` carrying `tcp`, a
/// TCP segment whose checksum field is overwritten with its checksum in full. `from` and
/// `to` must be of one family.
pub fn around_tcp(from: IpAddr, to: IpAddr, mut tcp: Vec<u8>) -> Vec<u8> {
    let tcp_len = tcp.len();
    let (mut packet, pseudo) = match (from, to) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            let mut ip = Vec::with_capacity(IPV4_HEADER + tcp_len);
            ip.extend_from_slice(&[0x45, 0]);
            ip.extend_from_slice(&((IPV4_HEADER + tcp_len) as u16).to_be_bytes());
            ip.extend_from_slice(&[0, 0, 0x40, 0, 64, IPPROTO_TCP, 0, 0]); // id 0, DF, TTL 64
            ip.extend_from_slice(&src.octets());
            ip.extend_from_slice(&dst.octets());
            let checksum = fold(sum(&ip, 0));
            ip[10..12].copy_from_slice(&checksum.to_be_bytes());
            let pseudo = sum(&ip[12..20], u32::from(IPPROTO_TCP) + tcp_len as u32);
            (ip, pseudo)
        }
        (src, dst) => {
            let octets = |ip: IpAddr| match ip {
                IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
                IpAddr::V6(v6) => v6.octets(),
            };
            let mut ip = Vec::with_capacity(IPV6_HEADER + tcp_len);
            ip.extend_from_slice(&[0x60, 0, 0, 0]);
            ip.extend_from_slice(&(tcp_len as u16).to_be_bytes());
            ip.extend_from_slice(&[IPPROTO_TCP, 64]);
            ip.extend_from_slice(&octets(src));
            ip.extend_from_slice(&octets(dst));
            let pseudo = sum(&ip[8..40], u32::from(IPPROTO_TCP) + tcp_len as u32);
            (ip, pseudo)
        }
    };
    tcp[16..18].fill(0);
    let checksum = fold(sum(&tcp, pseudo));
    tcp[16..18].copy_from_slice(&checksum.to_be_bytes());
    packet.extend_from_slice(&tcp);
    packet
}

/// The one's-complement sum of `bytes` as 16-bit words (a last odd byte padded), added to
/// `initial`.
pub(super) fn sum(bytes: &[u8], initial: u32) -> u32 {
    let mut total = u64::from(initial);
    for pair in bytes.chunks(2) {
        let word = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
        total += u64::from(word);
    }
    while total > 0xFFFF_FFFF {
        total = (total & 0xFFFF_FFFF) + (total >> 32);
    }
    total as u32
}

/// Folds a sum to 16 bits and complements it: the checksum field's value.
pub(super) fn fold(mut total: u32) -> u16 {
    while total > 0xFFFF {
        total = (total & 0xFFFF) + (total >> 16);
    }
    !(total as u16)
}

#[cfg(test)]
mod tests {
    use helo_filter_common::tcp_flags::{ACK, FIN, PSH, RST};

    use super::*;

    /// Verifies a checksum the way a receiver does: the sum over the covered bytes,
    /// checksum included, folds to zero.
    fn verifies(bytes: &[u8], pseudo: u32) -> bool {
        fold(sum(bytes, pseudo)) == 0
    }

    const SERVER: &str = "198.51.100.25:25";
    const CLIENT: &str = "203.0.113.10:40000";

    #[test]
    fn an_ipv4_reply_carries_its_numbers_timestamps_and_valid_checksums() {
        let header = Header {
            seq: 0x0102_0304,
            ack: 0xFFFF_FFF0,
            flags: ACK | PSH | FIN,
            timestamps: Some(Timestamps {
                value: 7,
                echo_reply: 9,
            }),
        };
        let payload = b"550 5.7.1 Access denied - bogus HELO (localhost)\r\n";
        let packet = ip_packet(
            SERVER.parse().unwrap(),
            CLIENT.parse().unwrap(),
            header,
            payload,
        );
        assert_eq!(packet.len(), 20 + 32 + payload.len());
        assert_eq!(&packet[..4], &[0x45, 0, 0, (20 + 32 + payload.len()) as u8]);
        assert!(verifies(&packet[..20], 0), "IPv4 header checksum");
        assert_eq!(&packet[12..20], &[198, 51, 100, 25, 203, 0, 113, 10]);
        let tcp = &packet[20..];
        assert_eq!(&tcp[..4], &[0, 25, 0x9C, 0x40]);
        assert_eq!(&tcp[4..12], &[1, 2, 3, 4, 0xFF, 0xFF, 0xFF, 0xF0]);
        assert_eq!(tcp[12], 8 << 4, "data offset: 20 bytes + 12 of options");
        assert_eq!(tcp[13], ACK | PSH | FIN);
        assert_eq!(&tcp[14..16], &[0xFF, 0xFF], "window");
        assert_eq!(&tcp[20..32], &[1, 1, 8, 10, 0, 0, 0, 7, 0, 0, 0, 9]);
        assert_eq!(&tcp[32..], payload);
        let pseudo = sum(&packet[12..20], 6 + tcp.len() as u32);
        assert!(verifies(tcp, pseudo), "TCP checksum");
        // The segment reads back as it was built.
        let read = Reported::parse(tcp).expect("parses");
        assert_eq!(
            (read.seq, read.ack, read.flags),
            (header.seq, header.ack, header.flags)
        );
        assert_eq!(read.timestamps, header.timestamps);
        assert_eq!(read.payload, payload);
    }

    #[test]
    fn an_ipv6_rst_without_timestamps_has_a_bare_header_and_a_valid_checksum() {
        let header = Header {
            seq: 42,
            ack: 43,
            flags: RST | ACK,
            timestamps: None,
        };
        let from: SocketAddr = "[2001:db8::25]:25".parse().unwrap();
        let to: SocketAddr = "[2001:db8:1::10]:40001".parse().unwrap();
        let packet = ip_packet(from, to, header, b"");
        assert_eq!(packet.len(), 40 + 20);
        assert_eq!(&packet[..8], &[0x60, 0, 0, 0, 0, 20, 6, 64]);
        let tcp = &packet[40..];
        assert_eq!(tcp[12], 5 << 4);
        assert_eq!(tcp[13], RST | ACK);
        let pseudo = sum(&packet[8..40], 6 + 20);
        assert!(verifies(tcp, pseudo), "TCP checksum");
    }

    #[test]
    fn an_odd_length_payload_is_checksummed_with_its_pad_byte() {
        let header = Header {
            seq: 1,
            ack: 2,
            flags: ACK,
            timestamps: None,
        };
        let packet = ip_packet(
            SERVER.parse().unwrap(),
            CLIENT.parse().unwrap(),
            header,
            b"abc",
        );
        let tcp = &packet[20..];
        assert!(verifies(tcp, sum(&packet[12..20], 6 + tcp.len() as u32)));
    }

    #[test]
    fn reported_segments_that_cannot_be_read_are_refused() {
        assert_eq!(Reported::parse(&[0; 19]), None, "shorter than a header");
        let mut header = [0u8; 20];
        header[12] = 4 << 4;
        assert_eq!(Reported::parse(&header), None, "data offset below 5 words");
        header[12] = 6 << 4;
        assert_eq!(Reported::parse(&header), None, "options past the bytes");
    }

    #[test]
    fn timestamps_are_found_among_other_options_and_malformed_ones_ignored() {
        // MSS, NOP, NOP, timestamps.
        let options = [2, 4, 5, 0xB4, 1, 1, 8, 10, 0, 0, 1, 0, 0, 0, 2, 0];
        assert_eq!(
            timestamps(&options),
            Some(Timestamps {
                value: 256,
                echo_reply: 512
            })
        );
        assert_eq!(timestamps(&[8, 9, 0, 0, 0, 0, 0, 0, 0]), None, "bad length");
        assert_eq!(timestamps(&[2, 0]), None, "zero length");
        assert_eq!(timestamps(&[2, 40, 0]), None, "past the end");
        assert_eq!(
            timestamps(&[0, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2]),
            None,
            "after end"
        );
    }
}
