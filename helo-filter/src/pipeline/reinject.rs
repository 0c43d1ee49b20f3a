//! Re-injection of held segments: when a verdict opens the gate of a flow whose next
//! command the gate dropped, the daemon hands that segment to the MTA's interface as if it
//! had just arrived, so that the MTA answers it at once instead of after the client's
//! retransmission timeout (≥ 200 ms on Linux). The client's retransmission, if one comes
//! anyway, is a duplicate TCP discards.
//!
//! The kernel reported the segment from its TCP header on; the daemon puts an IP header
//! (the flow's addresses) and an Ethernet header (to the interface's own address, or the
//! stack would take the frame for another host's) in front, computes the TCP checksum in
//! full (a frame received from a veth peer may carry only a partial one), and delivers the
//! frame through [`PassThrough`]. The capture program does not see it again in native
//! mode; in generic mode it does, and passes it (the flow is decided).

use std::{fs, net::SocketAddr};

use dashmap::DashMap;
use helo_filter_common::FlowKey;
use log::{debug, warn};

use super::{held::Held, reassembly::endpoints, segment};
use crate::{kernel::pass_through::PassThrough, metrics, metrics::HeldFate};

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;

/// Re-injects held segments on the interfaces they came in on.
pub struct Reinjector {
    pass: PassThrough,
    /// Interfaces' MAC addresses by index, read once each.
    macs: DashMap<u32, [u8; 6]>,
}

impl Reinjector {
    pub fn new(pass: PassThrough) -> Reinjector {
        Reinjector {
            pass,
            macs: DashMap::new(),
        }
    }

    /// Delivers the flow's held segment to the MTA; a failure is counted, and TCP
    /// retransmits the segment as it would have without re-injection.
    pub fn reinject(&self, key: &FlowKey, held: &Held) {
        let (client, server) = endpoints(key);
        let fate = match self.frame(client, server, held) {
            Ok(frame) => match self.pass.deliver(&frame, held.ifindex) {
                Ok(()) => {
                    debug!(
                        "{client}: re-injected its held segment ({} bytes)",
                        frame.len()
                    );
                    HeldFate::Reinjected
                }
                Err(e) => {
                    warn!("{client}: cannot re-inject its held segment: {e:#}");
                    HeldFate::Failed
                }
            },
            Err(e) => {
                warn!("{client}: cannot re-inject its held segment: {e:#}");
                HeldFate::Failed
            }
        };
        metrics::held_segment(fate);
    }

    fn frame(
        &self,
        client: SocketAddr,
        server: SocketAddr,
        held: &Held,
    ) -> anyhow::Result<Vec<u8>> {
        let mac = match self.macs.get(&held.ifindex) {
            Some(mac) => *mac,
            None => {
                let mac = interface_mac(held.ifindex)?;
                self.macs.insert(held.ifindex, mac);
                mac
            }
        };
        ethernet_frame(mac, client, server, &held.bytes)
    }
}

/// The frame carrying `tcp` (a reported segment, from its TCP header on) from `client` to
/// `server`, addressed to the interface's `mac`.
fn ethernet_frame(
    mac: [u8; 6],
    client: SocketAddr,
    server: SocketAddr,
    tcp: &[u8],
) -> anyhow::Result<Vec<u8>> {
    anyhow::ensure!(
        segment::Reported::parse(tcp).is_some(),
        "a reported segment of {} bytes holds no TCP header",
        tcp.len()
    );
    let ethertype = if client.is_ipv4() {
        ETH_P_IP
    } else {
        ETH_P_IPV6
    };
    let packet = segment::around_tcp(client.ip(), server.ip(), tcp.to_vec());
    let mut frame = Vec::with_capacity(14 + packet.len());
    frame.extend_from_slice(&mac);
    // The source address is not read on the way in.
    frame.extend_from_slice(&[0; 6]);
    frame.extend_from_slice(&ethertype.to_be_bytes());
    frame.extend_from_slice(&packet);
    Ok(frame)
}

/// The MAC address of interface `ifindex` in this network namespace (sysfs, which `ip
/// netns exec` mounts for the namespace).
fn interface_mac(ifindex: u32) -> anyhow::Result<[u8; 6]> {
    let mut name = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: `name` has the IF_NAMESIZE bytes the call may write, a NUL included.
    if unsafe { libc::if_indextoname(ifindex, name.as_mut_ptr()) }.is_null() {
        anyhow::bail!("interface {ifindex}: {}", std::io::Error::last_os_error());
    }
    // SAFETY: on success the call wrote a NUL-terminated name into `name`.
    let name = unsafe { std::ffi::CStr::from_ptr(name.as_ptr()) }.to_string_lossy();
    let path = format!("/sys/class/net/{name}/address");
    let text = fs::read_to_string(&path).map_err(|e| anyhow::anyhow!("{path}: {e}"))?;
    parse_mac(text.trim()).ok_or_else(|| anyhow::anyhow!("{path}: not a MAC address: {text:?}"))
}

fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        *byte = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client's MAIL FROM as the kernel reports it: TCP header (checksum left partial,
    /// as a veth peer sends it), then the payload.
    fn reported(payload: &[u8]) -> Vec<u8> {
        let mut tcp = vec![
            0x9C,
            0x40,
            0,
            25, // ports 40000 → 25
            0,
            0,
            1,
            0,
            0,
            0,
            2,
            0, // seq, ack
            5 << 4,
            0x18,
            0xFF,
            0xFF, // data offset, PSH|ACK, window
            0xAB,
            0xCD,
            0,
            0, // a partial checksum, urgent pointer
        ];
        tcp.extend_from_slice(payload);
        tcp
    }

    /// Whether a checksum verifies, as a receiver checks it: the sum over the covered
    /// bytes, checksum included, folds to zero.
    fn verifies(bytes: &[u8], pseudo: u32) -> bool {
        segment::fold(segment::sum(bytes, pseudo)) == 0
    }

    #[test]
    fn an_ipv4_frame_is_addressed_to_the_interface_and_checksummed_in_full() {
        let mac = [2, 0, 0, 0, 0, 0x25];
        let tcp = reported(b"MAIL FROM:<a@example.net>\r\n");
        let frame = ethernet_frame(
            mac,
            "203.0.113.10:40000".parse().unwrap(),
            "198.51.100.25:25".parse().unwrap(),
            &tcp,
        )
        .unwrap();
        assert_eq!(&frame[..6], &mac);
        assert_eq!(&frame[12..14], &[0x08, 0x00]);
        let ip = &frame[14..];
        assert_eq!(ip[0], 0x45);
        assert_eq!(usize::from(u16::from_be_bytes([ip[2], ip[3]])), ip.len());
        assert!(verifies(&ip[..20], 0), "IPv4 header checksum");
        assert_eq!(&ip[12..20], &[203, 0, 113, 10, 198, 51, 100, 25]);
        let tcp_out = &ip[20..];
        assert_eq!(&tcp_out[..16], &tcp[..16], "the client's header, as sent");
        assert_eq!(&tcp_out[20..], &tcp[20..]);
        let pseudo = segment::sum(&ip[12..20], 6 + tcp_out.len() as u32);
        assert!(verifies(tcp_out, pseudo), "TCP checksum");
    }

    #[test]
    fn an_ipv6_frame_has_its_ethertype_and_a_full_checksum() {
        let tcp = reported(b"RCPT TO:<b@example.org>\r\n");
        let frame = ethernet_frame(
            [2, 0, 0, 0, 0, 1],
            "[2001:db8:1::10]:40000".parse().unwrap(),
            "[2001:db8::25]:25".parse().unwrap(),
            &tcp,
        )
        .unwrap();
        assert_eq!(&frame[12..14], &[0x86, 0xDD]);
        let ip = &frame[14..];
        assert_eq!(usize::from(u16::from_be_bytes([ip[4], ip[5]])), tcp.len());
        let tcp_out = &ip[40..];
        let pseudo = segment::sum(&ip[8..40], 6 + tcp_out.len() as u32);
        assert!(verifies(tcp_out, pseudo), "TCP checksum");
    }

    #[test]
    fn a_report_without_a_tcp_header_is_refused() {
        let client = "203.0.113.10:40000".parse().unwrap();
        let server = "198.51.100.25:25".parse().unwrap();
        assert!(ethernet_frame([0; 6], client, server, &[0; 12]).is_err());
    }

    #[test]
    fn mac_addresses_parse_and_bad_ones_do_not() {
        assert_eq!(
            parse_mac("02:00:0a:ff:00:25"),
            Some([2, 0, 0x0A, 0xFF, 0, 0x25])
        );
        for bad in [
            "",
            "02:00:0a:ff:00",
            "02:00:0a:ff:00:25:01",
            "zz:00:00:00:00:00",
        ] {
            assert_eq!(parse_mac(bad), None, "{bad:?}");
        }
    }
}
