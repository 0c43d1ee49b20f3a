//! The real compiled XDP program fuzzed through BPF_PROG_TEST_RUN: random and mutated
//! frames (truncated at every length, bad IPv4 header lengths and TCP data offsets, IPv6
//! extension-header chains, 0–3 VLAN tags, fragments, every TCP flag combination, SMTP
//! ports and others, sources in the allow and deny lists) against four configurations, the
//! same 4-tuples tried while `FLOWS` holds them in every phase.
//!
//! Each frame is checked against a reference dissection of its bytes that follows the
//! program's documented parsing (`helo-filter-ebpf/src/parse.rs`): a frame that is not a TCP
//! segment to a configured SMTP port which the program parses must come back `XDP_PASS`,
//! byte for byte, with no event; an SMTP segment must get the action its flow's phase and
//! its source's standing call for, and every frame sent back (`XDP_TX`) must be a RST that
//! answers it (RFC 9293 §3.10.7.1) with valid checksums. The program may return nothing but
//! `XDP_PASS`, `XDP_DROP` and `XDP_TX`, and afterwards still passes ordinary traffic.
//!
//! `HELO_FILTER_XDP_FUZZ_FRAMES` (default 100,000) sets the number of frames and
//! `HELO_FILTER_XDP_FUZZ_SEED` replays a run; the seed and the counts per category are
//! printed.

use std::{
    collections::BTreeMap,
    io::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use helo_filter_common::{
    CaptureEvent, Counter, FAMILY_IPV4, FAMILY_IPV6, FlowKey, KernelConfig, MAX_CAPTURE_BYTES,
    MAX_SMTP_PORTS, flags, known_good_key, phase,
    tcp_flags::{ACK, FIN, PSH, RST, SYN},
};
use helo_filter_tests::{
    packet::{
        ETH_P_8021AD, ETH_P_8021Q, ExpectedRst, Frame, IPPROTO_TCP, IPPROTO_UDP, IPV6_DEST_OPTS,
        IPV6_FRAGMENT, IPV6_HOP_BY_HOP, IPV6_ROUTING, Network, arp, check_rst,
    },
    xdp::{CaptureProgram, XDP_DROP, XDP_PASS, XDP_TX},
};
use ipnet::IpNet;

const DEFAULT_FRAMES: u64 = 100_000;
/// Below this, the share each category must get (and each of the 256 flag bytes on an SMTP
/// segment) is too few frames to be sure of.
const MIN_FRAMES: u64 = 50_000;
/// The share of the frames each counted category must get (the generator gives each at
/// least five times this), so that the generator cannot silently stop producing one.
const MIN_SHARE: f64 = 0.002;

/// A seeded xorshift64* generator: the same seed replays the same frames.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        // splitmix64 of the seed: any seed, 0 included, gives a non-zero, well-mixed state.
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Rng((z ^ (z >> 31)) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `[0, n)` (`n` > 0; the bias is negligible for the small `n` used here).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// In `[low, high]`.
    fn between(&mut self, low: usize, high: usize) -> usize {
        low + self.below(high - low + 1)
    }

    fn percent(&mut self, chance: usize) -> bool {
        self.below(100) < chance
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

/// Counts per category, printed at the end; some must get a share of the frames.
#[derive(Default)]
struct Tally(BTreeMap<String, u64>);

impl Tally {
    fn add(&mut self, category: impl Into<String>) {
        *self.0.entry(category.into()).or_default() += 1;
    }

    fn get(&self, category: &str) -> u64 {
        self.0.get(category).copied().unwrap_or(0)
    }
}

// The test's sources and their standing in the lists (loaded into every program).
const PLAIN_V4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
const KNOWN_GOOD_V4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 11);
const DENIED_V4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 12);
const ALLOWED_V4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 13);
/// Allowed (/32) inside a denied /15: the allow list wins.
const ALLOWED_AND_DENIED_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const PLAIN_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0x10);
const KNOWN_GOOD_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 0x10);
const DENIED_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 3, 0, 0, 0, 0, 0x10);
const ALLOWED_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 4, 1, 0, 0, 0, 0x10);
const ALLOWED_AND_DENIED_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 5, 0, 0, 0, 0, 1);

const SOURCES: [(&str, IpAddr); 10] = [
    ("plain", IpAddr::V4(PLAIN_V4)),
    ("known-good", IpAddr::V4(KNOWN_GOOD_V4)),
    ("denied", IpAddr::V4(DENIED_V4)),
    ("allowed", IpAddr::V4(ALLOWED_V4)),
    ("allowed and denied", IpAddr::V4(ALLOWED_AND_DENIED_V4)),
    ("plain", IpAddr::V6(PLAIN_V6)),
    ("known-good", IpAddr::V6(KNOWN_GOOD_V6)),
    ("denied", IpAddr::V6(DENIED_V6)),
    ("allowed", IpAddr::V6(ALLOWED_V6)),
    ("allowed and denied", IpAddr::V6(ALLOWED_AND_DENIED_V6)),
];

/// The allow, deny and known-good lists every program holds, and a source's standing in
/// them as the kernel sees it.
struct Lists {
    allow: Vec<IpNet>,
    deny: Vec<IpNet>,
    /// `known_good_key`s (an IPv6 source's /64).
    known_good: Vec<[u8; 16]>,
}

#[derive(Clone, Copy)]
struct Standing {
    allowed: bool,
    denied: bool,
    known_good: bool,
}

impl Lists {
    fn new() -> Lists {
        let net = |text: &str| text.parse::<IpNet>().expect("a CIDR");
        Lists {
            allow: [
                "203.0.113.13/32",
                "198.18.0.1/32",
                "2001:db8:4::/48",
                "2001:db8:5::1/128",
            ]
            .map(net)
            .to_vec(),
            deny: [
                "203.0.113.12/32",
                "198.18.0.0/15",
                "2001:db8:3::/64",
                "2001:db8:5::/64",
            ]
            .map(net)
            .to_vec(),
            known_good: [
                source_key(IpAddr::V4(KNOWN_GOOD_V4)),
                source_key(IpAddr::V6(KNOWN_GOOD_V6)),
            ]
            .map(|key| known_good_key(key.family, &key.saddr))
            .to_vec(),
        }
    }

    fn load_into(&self, program: &mut CaptureProgram) {
        for net in &self.allow {
            program.allow(*net);
        }
        for net in &self.deny {
            program.deny(*net);
        }
        for source in [IpAddr::V4(KNOWN_GOOD_V4), IpAddr::V6(KNOWN_GOOD_V6)] {
            program.known_good(&source_key(source), 3_600_000);
        }
    }

    fn standing(&self, key: &FlowKey) -> Standing {
        // The tries hold IPv4 addresses IPv4-mapped: an IPv6 source written that way is
        // the IPv4 address to them.
        let source = match address(key.family, &key.saddr) {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
            v4 => v4,
        };
        Standing {
            allowed: self.allow.iter().any(|net| net.contains(&source)),
            denied: self.deny.iter().any(|net| net.contains(&source)),
            known_good: self
                .known_good
                .contains(&known_good_key(key.family, &key.saddr)),
        }
    }
}

/// A flow key with only the source filled in (what the known-good map is keyed by).
fn source_key(source: IpAddr) -> FlowKey {
    let mut key = FlowKey::default();
    match source {
        IpAddr::V4(v4) => {
            key.family = FAMILY_IPV4;
            key.saddr[..4].copy_from_slice(&v4.octets());
        }
        IpAddr::V6(v6) => {
            key.family = FAMILY_IPV6;
            key.saddr = v6.octets();
        }
    }
    key
}

fn address(family: u8, bytes: &[u8; 16]) -> IpAddr {
    if family == FAMILY_IPV4 {
        IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(*bytes))
    }
}

/// One program under test: its configuration and whether the daemon is alive for it.
struct Target {
    name: &'static str,
    config: KernelConfig,
    /// The daemon's heartbeat is kept fresh (else the daemon is gone: nothing is held).
    daemon_alive: bool,
    program: CaptureProgram,
    runs: u64,
    /// Frames the dissection found to be SMTP segments (the program counts them in
    /// `SmtpPackets`).
    smtp_segments: u64,
}

impl Target {
    fn load(
        name: &'static str,
        ports: &[u16],
        gate: bool,
        options: u32,
        daemon_alive: bool,
        lists: &Lists,
    ) -> Target {
        let mut config = KernelConfig {
            options,
            ..KernelConfig::default()
        };
        config.ports = [0; MAX_SMTP_PORTS];
        config.ports[..ports.len()].copy_from_slice(ports);
        config.port_count = ports.len() as u32;
        if !gate {
            config.gate_deadline_ms = KernelConfig::NO_GATE;
        }
        let mut program = CaptureProgram::load(&config);
        lists.load_into(&mut program);
        if daemon_alive {
            program.heartbeat(0);
        }
        Target {
            name,
            config,
            daemon_alive,
            program,
            runs: 0,
            smtp_segments: 0,
        }
    }

    fn ports(&self) -> &[u16] {
        &self.config.ports[..self.config.port_count as usize]
    }

    /// Whether the gate may hold a segment: on, and the daemon alive.
    fn holds(&self) -> bool {
        self.config.gate_on() && self.daemon_alive
    }
}

/// A TCP segment to a configured SMTP port, as the program parses it.
struct SmtpSegment {
    key: FlowKey,
    /// Where the IP header starts.
    l3: usize,
    /// Where the TCP header starts.
    l4: usize,
    /// Where the payload starts.
    payload_offset: usize,
    /// Whether the frame holds the whole TCP header, options included (the program only
    /// needs its first 20 bytes).
    header_whole: bool,
    flags: u8,
    seq: u32,
    ack: u32,
    /// Payload bytes: what the IP header declares, cut to what the frame holds.
    payload_len: u32,
}

/// Reads a frame as the program's parser is documented to (Ethernet, up to two VLAN tags,
/// IPv4 with options but no fragment, IPv6 through at most four hop-by-hop, routing and
/// destination-options headers, TCP with a data offset of at least five words, lengths
/// consistent with the IP header's): the SMTP segment, or why the frame is not one.
fn dissect(frame: &[u8], ports: &[u16]) -> Result<SmtpSegment, &'static str> {
    let has = |from: usize, len: usize| from + len <= frame.len();
    let word = |at: usize| u16::from_be_bytes([frame[at], frame[at + 1]]);
    let long =
        |at: usize| u32::from_be_bytes([frame[at], frame[at + 1], frame[at + 2], frame[at + 3]]);
    const TRUNCATED: &str = "not ours: cut inside a header";
    const MALFORMED: &str = "not ours: malformed header";
    let is_vlan = |ethertype: u16| ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD;
    let mut ethertype = word(12);
    let mut l3 = 14;
    for _ in 0..2 {
        if !is_vlan(ethertype) {
            break;
        }
        if !has(l3, 4) {
            return Err(TRUNCATED);
        }
        ethertype = word(l3 + 2);
        l3 += 4;
    }
    let mut key = FlowKey::default();
    let (l4, l4_len) = match ethertype {
        0x0800 => {
            if !has(l3, 20) {
                return Err(TRUNCATED);
            }
            let header_len = usize::from(frame[l3] & 0x0F) * 4;
            if frame[l3] >> 4 != 4 || header_len < 20 {
                return Err(MALFORMED);
            }
            if word(l3 + 6) & 0x3FFF != 0 {
                return Err("not ours: ipv4 fragment");
            }
            if frame[l3 + 9] != IPPROTO_TCP {
                return Err("not ours: not tcp");
            }
            let Some(l4_len) = usize::from(word(l3 + 2)).checked_sub(header_len) else {
                return Err(MALFORMED);
            };
            key.family = FAMILY_IPV4;
            key.saddr[..4].copy_from_slice(&frame[l3 + 12..l3 + 16]);
            key.daddr[..4].copy_from_slice(&frame[l3 + 16..l3 + 20]);
            (l3 + header_len, l4_len)
        }
        0x86DD => {
            if !has(l3, 40) {
                return Err(TRUNCATED);
            }
            let mut next = frame[l3 + 6];
            let mut offset = l3 + 40;
            for _ in 0..4 {
                if ![IPV6_HOP_BY_HOP, IPV6_ROUTING, IPV6_DEST_OPTS].contains(&next) {
                    break;
                }
                if !has(offset, 2) {
                    return Err(TRUNCATED);
                }
                next = frame[offset];
                offset += (usize::from(frame[offset + 1]) + 1) * 8;
            }
            match next {
                IPPROTO_TCP => {}
                IPV6_FRAGMENT => return Err("not ours: ipv6 fragment"),
                IPV6_HOP_BY_HOP | IPV6_ROUTING | IPV6_DEST_OPTS => {
                    return Err("not ours: beyond four extension headers");
                }
                _ => return Err("not ours: not tcp"),
            }
            let Some(l4_len) = usize::from(word(l3 + 4)).checked_sub(offset - (l3 + 40)) else {
                return Err(MALFORMED);
            };
            key.family = FAMILY_IPV6;
            key.saddr.copy_from_slice(&frame[l3 + 8..l3 + 24]);
            key.daddr.copy_from_slice(&frame[l3 + 24..l3 + 40]);
            (offset, l4_len)
        }
        ethertype if is_vlan(ethertype) => return Err("not ours: beyond two vlan tags"),
        _ => return Err("not ours: not ip"),
    };
    // The ports are read before the rest of the TCP header.
    if !has(l4, 14) {
        return Err(TRUNCATED);
    }
    (key.sport, key.dport) = (word(l4), word(l4 + 2));
    if !ports.contains(&key.dport) {
        return Err("not ours: not to an smtp port");
    }
    if !has(l4, 20) {
        return Err(TRUNCATED);
    }
    let tcp_len = usize::from(frame[l4 + 12] >> 4) * 4;
    if tcp_len < 20 {
        return Err(MALFORMED);
    }
    let Some(declared) = l4_len.checked_sub(tcp_len) else {
        return Err(MALFORMED);
    };
    let in_frame = frame.len().saturating_sub(l4 + tcp_len);
    Ok(SmtpSegment {
        key,
        l3,
        l4,
        payload_offset: l4 + tcp_len,
        header_whole: l4 + tcp_len <= frame.len(),
        flags: frame[l4 + 13],
        seq: long(l4 + 4),
        ack: long(l4 + 8),
        payload_len: declared.min(in_frame) as u32,
    })
}

/// The RST that answers `segment` (RFC 9293 §3.10.7.1, a closed connection): a segment
/// with an ACK gets `seq = SEG.ACK`; any other `seq = 0`, `ack = SEG.SEQ + SEG.LEN` (SYN and
/// FIN count one each) and the ACK flag.
fn expected_rst(segment: &SmtpSegment) -> ExpectedRst {
    let key = &segment.key;
    let (seq, ack, rst_flags) = if segment.flags & ACK != 0 {
        (segment.ack, 0, RST)
    } else {
        let len = segment.payload_len
            + u32::from(segment.flags & SYN != 0)
            + u32::from(segment.flags & FIN != 0);
        (0, segment.seq.wrapping_add(len), RST | ACK)
    };
    ExpectedRst {
        l3: segment.l3,
        client: address(key.family, &key.saddr),
        server: address(key.family, &key.daddr),
        client_port: key.sport,
        server_port: key.dport,
        seq,
        ack,
        flags: rst_flags,
    }
}

/// Phases the test writes into `FLOWS` before a frame of the flow: every phase the daemon
/// writes, and values no version of it writes.
const STEERED_PHASES: [u8; 10] = [
    phase::CAPTURING,
    phase::GATED,
    phase::DONE,
    phase::CONDEMNED,
    phase::CONDEMNED_RST,
    phase::CONDEMNED_REPLY,
    phase::CAPTURING_UNGATED,
    0,
    8,
    255,
];

fn phase_name(phase: Option<u8>) -> &'static str {
    match phase {
        None => "untracked",
        Some(phase::CAPTURING) => "capturing",
        Some(phase::GATED) => "gated",
        Some(phase::DONE) => "done",
        Some(phase::CONDEMNED) => "condemned",
        Some(phase::CONDEMNED_RST) => "condemned_rst",
        Some(phase::CONDEMNED_REPLY) => "condemned_reply",
        Some(phase::CAPTURING_UNGATED) => "capturing_ungated",
        Some(_) => "unknown value",
    }
}

fn action_name(action: u32) -> String {
    match action {
        XDP_DROP => "XDP_DROP".into(),
        XDP_PASS => "XDP_PASS".into(),
        XDP_TX => "XDP_TX".into(),
        other => format!("action {other}"),
    }
}

/// What an SMTP segment must get, given its flow's phase before it and its source.
struct Expected {
    actions: &'static [u32],
    /// The flow's phase after the frame, when it is determined.
    phase_after: Option<Option<u8>>,
    /// Whether the frame may produce events (capture events or reports).
    may_report: bool,
    /// Whether it must be reported whole (`flags::CLIENT_SEGMENT`), for action `reply`.
    must_report: bool,
}

fn expect(
    segment: &SmtpSegment,
    target: &Target,
    standing: Standing,
    before: Option<u8>,
) -> Expected {
    let unchanged = Some(before);
    let exactly = |action: &'static [u32], phase_after| Expected {
        actions: action,
        phase_after,
        may_report: false,
        must_report: false,
    };
    // A RST is never answered with a RST: it is discarded (RFC 9293 §3.10.7.1).
    let answer_rst: &'static [u32] = if segment.flags & RST != 0 {
        &[XDP_DROP]
    } else {
        &[XDP_TX]
    };
    if segment.flags & (SYN | ACK) == SYN {
        if standing.allowed {
            return exactly(&[XDP_PASS], unchanged);
        }
        if standing.denied {
            let answer = if target.config.deny_with_rst() {
                answer_rst
            } else {
                &[XDP_DROP]
            };
            return exactly(answer, unchanged);
        }
        let tracked = if standing.known_good {
            phase::CAPTURING_UNGATED
        } else {
            phase::CAPTURING
        };
        return exactly(&[XDP_PASS], Some(Some(tracked)));
    }
    match before {
        None => exactly(&[XDP_PASS], unchanged),
        Some(phase::CONDEMNED) => exactly(&[XDP_DROP], unchanged),
        Some(phase::CONDEMNED_RST) => exactly(answer_rst, unchanged),
        Some(phase::CONDEMNED_REPLY) => {
            // A FIN whose TCP options the frame cuts cannot be copied whole: not reported
            // (the stack would drop the frame anyway).
            let reported =
                segment.payload_len > 0 || (segment.flags & FIN != 0 && segment.header_whole);
            Expected {
                actions: &[XDP_DROP],
                phase_after: unchanged,
                may_report: reported,
                must_report: reported,
            }
        }
        _ if segment.payload_len == 0 => exactly(&[XDP_PASS], unchanged),
        Some(phase::CAPTURING | phase::GATED) if target.holds() => Expected {
            actions: &[XDP_PASS, XDP_DROP],
            phase_after: None,
            may_report: true,
            must_report: false,
        },
        Some(phase::CAPTURING | phase::GATED | phase::CAPTURING_UNGATED) => Expected {
            actions: &[XDP_PASS],
            phase_after: None,
            may_report: true,
            must_report: false,
        },
        Some(_) => exactly(&[XDP_PASS], unchanged),
    }
}

/// A 4-tuple the generator comes back to, so that `FLOWS` holds it in every phase.
struct PooledFlow {
    source: IpAddr,
    sport: u16,
    dport: u16,
    isn: u32,
    /// Client bytes sent in order since the SYN.
    sent: u32,
}

const SMTP_PORTS_USED: [u16; 3] = [25, 587, 2525];
const OTHER_PORTS: [u16; 9] = [0, 24, 26, 80, 110, 143, 443, 465, 65_535];

const PAYLOADS: [&[u8]; 11] = [
    b"EHLO mail.example.net\r\n",
    b"HELO x\r\n",
    b"ehlo [192.0.2.1]\r\n",
    b"NOOP\r\n",
    b"RSET\r\n",
    b"MAIL FROM:<a@example.net>\r\n",
    b"EHLO a.example\r\nMAIL FROM:<>\r\n",
    b"EH",
    b"LO x.example\r\n",
    b"QUIT\r\n",
    b"\r\n",
];

/// Makes the frames: mostly segments of pooled flows, wrapped and mutated.
struct Generator {
    pool: Vec<PooledFlow>,
    /// The next flag byte of the sweep through all 256 combinations.
    flag_sweep: u8,
}

impl Generator {
    fn new(rng: &mut Rng) -> Generator {
        let pool = (0..64)
            .map(|i| PooledFlow {
                source: SOURCES[i % SOURCES.len()].1,
                sport: 30_000 + i as u16,
                dport: if i % 8 == 7 {
                    rng.pick(&OTHER_PORTS)
                } else {
                    SMTP_PORTS_USED[i % 3]
                },
                isn: rng.next() as u32,
                sent: 0,
            })
            .collect();
        Generator {
            pool,
            flag_sweep: 0,
        }
    }

    /// One frame; the categories it belongs to are counted in `tally`.
    fn frame(&mut self, rng: &mut Rng, tally: &mut Tally) -> Vec<u8> {
        let tcp_flags = match rng.below(100) {
            0..18 => SYN,
            18..22 => SYN | ACK,
            22..52 => PSH | ACK,
            52..62 => ACK,
            62..66 => FIN | ACK,
            66..70 => RST | ACK,
            70..72 => RST,
            _ => {
                tally.add("tcp flags: swept through all 256");
                self.flag_sweep = self.flag_sweep.wrapping_add(1);
                self.flag_sweep
            }
        };
        let payload: Vec<u8> = match rng.below(100) {
            0..25 => Vec::new(),
            25..75 => rng.pick(&PAYLOADS).to_vec(),
            75..90 => {
                let len = rng.between(1, 64);
                rng.bytes(len)
            }
            90..95 => vec![b'A'; 600],
            _ => rng.bytes(1400),
        };
        let (source, sport, dport, seq) = if rng.percent(75) {
            tally.add("flow: pooled");
            let flow = rng.below(self.pool.len());
            let flow = &mut self.pool[flow];
            if tcp_flags & (SYN | ACK) == SYN {
                flow.isn = rng.next() as u32;
                flow.sent = 0;
            }
            let in_order = flow.isn.wrapping_add(1).wrapping_add(flow.sent);
            let seq = match rng.below(100) {
                _ if tcp_flags & SYN != 0 => flow.isn,
                0..70 => {
                    flow.sent = flow.sent.wrapping_add(payload.len() as u32);
                    in_order
                }
                70..85 => in_order.wrapping_sub(rng.between(1, 40) as u32),
                _ => rng.next() as u32,
            };
            (flow.source, flow.sport, flow.dport, seq)
        } else {
            tally.add("flow: fresh");
            let dport = if rng.percent(60) {
                rng.pick(&SMTP_PORTS_USED)
            } else if rng.percent(80) {
                rng.pick(&OTHER_PORTS)
            } else {
                rng.next() as u16
            };
            let source = rng.pick(&SOURCES).1;
            (source, rng.next() as u16, dport, rng.next() as u32)
        };
        let source_name = SOURCES
            .iter()
            .find(|(_, address)| *address == source)
            .map_or("?", |(name, _)| name);
        tally.add(format!("source: {source_name}"));
        tally.add(if SMTP_PORTS_USED.contains(&dport) {
            "destination port: 25, 587 or 2525"
        } else {
            "destination port: another"
        });
        let mut frame = match source {
            IpAddr::V4(_) => Frame::tcp4(sport, dport, seq, tcp_flags, &payload),
            IpAddr::V6(_) => Frame::tcp6(sport, dport, seq, tcp_flags, &payload),
        }
        .source(source)
        .ack(if rng.percent(20) {
            1
        } else {
            rng.next() as u32
        });
        self.vary_network(&mut frame, rng, tally);
        if rng.percent(5) {
            tally.add("tcp: data offset overridden");
            frame = frame.data_offset(rng.between(0, 15) as u8);
        }
        match rng.below(100) {
            0..6 => {
                tally.add("transport: udp");
                frame = frame.protocol(IPPROTO_UDP);
            }
            6..9 => {
                tally.add("transport: another protocol");
                frame = frame.protocol(rng.pick(&[1, 47, 50, 58, 132, 255]));
            }
            _ => {}
        }
        let vlan_tags = rng.pick(&[0, 0, 0, 0, 0, 1, 1, 2, 2, 3]);
        tally.add(format!("vlan tags: {vlan_tags}"));
        for _ in 0..vlan_tags {
            let tpid = rng.pick(&[ETH_P_8021Q, ETH_P_8021AD]);
            frame = frame.vlan(tpid, rng.between(1, 4094) as u16);
        }
        if rng.percent(4) {
            tally.add("network: not ip");
            let len = rng.between(0, 80);
            frame.network = Network::Other {
                ethertype: rng.pick(&[0x0806, 0x88CC, 0x8847, 0x86DD, 0x0800, 0x8100]),
                bytes: rng.bytes(len),
            };
        }
        let mut bytes = frame.bytes();
        self.mutate(&mut bytes, rng, tally);
        bytes
    }

    fn vary_network(&self, frame: &mut Frame, rng: &mut Rng, tally: &mut Tally) {
        match &mut frame.network {
            Network::V4 {
                options,
                fragment,
                ihl,
                total_len,
                ..
            } => {
                tally.add("network: ipv4");
                if rng.percent(15) {
                    tally.add("ipv4: options");
                    let len = rng.between(1, 10) * 4;
                    *options = rng.bytes(len);
                }
                *fragment = match rng.below(100) {
                    0..8 => {
                        tally.add("ipv4: fragment, more fragments");
                        0x2000 | rng.below(4) as u16
                    }
                    8..14 => {
                        tally.add("ipv4: fragment, offset");
                        rng.between(1, 0x1FFF) as u16 | rng.pick(&[0, 0x2000, 0x4000])
                    }
                    14..20 => 0,
                    _ => 0x4000,
                };
                if rng.percent(6) {
                    tally.add("ipv4: header length overridden");
                    *ihl = Some(rng.between(0, 15) as u8);
                }
                if rng.percent(6) {
                    tally.add("ipv4: total length overridden");
                    *total_len = Some(rng.next() as u16 % 1600);
                }
            }
            Network::V6 { extensions, .. } => {
                tally.add("network: ipv6");
                const SKIPPED: [(u8, &str); 3] = [
                    (IPV6_HOP_BY_HOP, "ipv6: hop-by-hop header"),
                    (IPV6_ROUTING, "ipv6: routing header"),
                    (IPV6_DEST_OPTS, "ipv6: destination options header"),
                ];
                const ANY: [(u8, &str); 7] = [
                    SKIPPED[0],
                    SKIPPED[1],
                    SKIPPED[2],
                    (IPV6_FRAGMENT, "ipv6: fragment header"),
                    (135, "ipv6: unknown extension header"),
                    (253, "ipv6: unknown extension header"),
                    (59, "ipv6: no next header"),
                ];
                // Half the chains hold only the headers the parser walks (up to six of
                // them: beyond its four), half any header.
                let (chain, kinds) = match rng.below(100) {
                    0..20 => (rng.between(1, 6), &SKIPPED[..]),
                    20..40 => (rng.between(1, 4), &ANY[..]),
                    _ => (0, &[][..]),
                };
                if chain > 4 {
                    tally.add("ipv6: more than four extension headers");
                }
                for _ in 0..chain {
                    let (kind, name) = rng.pick(kinds);
                    tally.add(name);
                    extensions.push((kind, rng.between(0, 3) as u8));
                }
            }
            Network::Other { .. } => {}
        }
    }

    /// Byte-level damage: padding, truncation at any length, random bytes in the headers.
    fn mutate(&self, bytes: &mut Vec<u8>, rng: &mut Rng, tally: &mut Tally) {
        if rng.percent(4) {
            tally.add("mutation: padded");
            bytes.resize(bytes.len() + rng.between(1, 46), 0);
        }
        if rng.percent(12) && bytes.len() > 14 {
            tally.add("mutation: truncated");
            // BPF_PROG_TEST_RUN refuses frames shorter than an Ethernet header, as NICs do.
            let len = rng.between(14, bytes.len() - 1);
            bytes.truncate(len);
        }
        if rng.percent(8) {
            tally.add("mutation: header bytes changed");
            for _ in 0..rng.between(1, 4) {
                let at = rng.below(bytes.len().min(100));
                bytes[at] ^= rng.between(1, 255) as u8;
            }
        }
    }
}

fn env_number(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(text) => text
            .trim()
            .replace(['_', ','], "")
            .parse()
            .unwrap_or_else(|e| panic!("{name}={text:?} is not a number: {e}")),
        Err(_) => default,
    }
}

/// Writes to the test's standard output past libtest's capture: the seed and the counts are
/// the run's report, wanted in CI's log and `cargo xtask fuzz`'s without `--nocapture`.
fn report(text: &str) {
    std::io::stdout()
        .lock()
        .write_all(text.as_bytes())
        .expect("writing the report to standard output");
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

#[test]
fn hostile_frames_get_the_right_action_and_valid_answers() {
    let frames = env_number("HELO_FILTER_XDP_FUZZ_FRAMES", DEFAULT_FRAMES);
    assert!(
        frames >= MIN_FRAMES,
        "HELO_FILTER_XDP_FUZZ_FRAMES={frames}: at least {MIN_FRAMES} frames, so that every \
         category gets its share"
    );
    let clock_seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is past 1970")
        .as_nanos() as u64;
    let seed = env_number("HELO_FILTER_XDP_FUZZ_SEED", clock_seed);
    report(&format!(
        "xdp fuzz: {frames} frames, seed {seed} (replay: HELO_FILTER_XDP_FUZZ_SEED={seed})\n"
    ));

    let lists = Lists::new();
    let mut targets = [
        Target::load("gate, deny drops", &[25, 587], true, 0, true, &lists),
        Target::load(
            "gate, deny answers rst, held segments reported",
            &[25],
            true,
            KernelConfig::DENY_WITH_RST | KernelConfig::REPORT_HELD,
            true,
            &lists,
        ),
        Target::load(
            "gate, daemon gone, deny answers rst",
            &[25, 587],
            true,
            KernelConfig::DENY_WITH_RST,
            false,
            &lists,
        ),
        Target::load(
            "monitor (no gate), deny answers rst",
            &[587, 25, 2525],
            false,
            KernelConfig::DENY_WITH_RST,
            true,
            &lists,
        ),
    ];
    let mut rng = Rng::new(seed);
    let mut generator = Generator::new(&mut rng);
    let mut tally = Tally::default();
    let mut flags_tried = [false; 256];
    let started = Instant::now();
    for index in 0..frames {
        if index % 512 == 0 {
            for target in targets.iter_mut().filter(|t| t.daemon_alive) {
                target.program.heartbeat(0);
            }
        }
        let frame = generator.frame(&mut rng, &mut tally);
        let target = rng.below(targets.len());
        let target = &mut targets[target];
        let dissected = dissect(&frame, target.ports());
        let mut before = None;
        if let Ok(segment) = &dissected {
            before = target.program.phase(&segment.key);
            if rng.percent(25) {
                let to = rng.pick(&STEERED_PHASES);
                match before {
                    Some(_) if to == phase::DONE => target.program.judge(&segment.key),
                    Some(_) => target.program.set_phase(&segment.key, to),
                    None => target.program.track(&segment.key, to),
                }
                tally.add(format!("phase steered to: {}", phase_name(Some(to))));
                before = Some(to);
            }
        }
        let (action, out) = target.program.run_out(&frame);
        target.runs += 1;
        target.smtp_segments += u64::from(dissected.is_ok());
        let events = target.program.drain();
        let counted = target.program.counter(Counter::SmtpPackets);
        let verdict = match &dissected {
            // Where the action does not tell (an untracked flow's segment passes either way),
            // the counter does: the program and the dissection must agree on every frame.
            _ if counted != target.smtp_segments => Err(format!(
                "the program counts {counted} SMTP segments, the dissection {} (this frame: {})",
                target.smtp_segments,
                match &dissected {
                    Ok(_) => "an SMTP segment",
                    Err(reason) => reason,
                }
            )),
            Err(reason) => {
                tally.add(*reason);
                check_untouched(action, &frame, &out, events.len())
            }
            Ok(segment) => {
                tally.add("smtp segment");
                tally.add(format!(
                    "smtp segment, phase before: {}",
                    phase_name(before)
                ));
                flags_tried[usize::from(segment.flags)] = true;
                let standing = lists.standing(&segment.key);
                let expected = expect(segment, target, standing, before);
                let after = target.program.phase(&segment.key);
                check_smtp(segment, &expected, action, &frame, &out, &events, after)
            }
        };
        if let Err(problem) = verdict {
            let phase_before = match dissected {
                Ok(_) => format!("\n  flow phase before: {}", phase_name(before)),
                Err(_) => String::new(),
            };
            panic!(
                "frame {index} (seed {seed}: HELO_FILTER_XDP_FUZZ_SEED={seed} replays it), \
                 program \"{}\": {problem}{phase_before}\n  frame: {}\n  out: {}",
                target.name,
                hex(&frame),
                hex(&out),
            );
        }
        tally.add(format!("action: {}", action_name(action)));
        if action == XDP_TX {
            tally.add("XDP_TX frames checked (RSTs)");
        }
    }
    let elapsed = started.elapsed();

    // Pass-through unbroken: ordinary traffic, and a fresh SMTP session still captured.
    for target in &mut targets {
        target.program.heartbeat(0);
        let ordinary = Frame::tcp4(41_000, 80, 7, PSH | ACK, b"GET / HTTP/1.1\r\n").bytes();
        for (what, frame) in [("a web segment", ordinary), ("ARP", arp())] {
            let (action, out) = target.program.run_out(&frame);
            assert_eq!(
                (action, out.as_slice()),
                (XDP_PASS, frame.as_slice()),
                "{}: {what} after the fuzzing",
                target.name
            );
        }
        let syn = Frame::tcp4(41_001, 25, 100, SYN, b"").bytes();
        let ehlo = Frame::tcp4(41_001, 25, 101, PSH | ACK, b"EHLO a.example\r\n").bytes();
        assert_eq!(target.program.run(&syn, 1).return_value, XDP_PASS);
        assert_eq!(target.program.run(&ehlo, 1).return_value, XDP_PASS);
        let events = target.program.drain();
        assert!(
            events.len() == 1 && events[0].flags & flags::HELO_LINE != 0,
            "{}: a fresh session's EHLO captured after the fuzzing",
            target.name
        );
        target.runs += 4;
        assert_eq!(
            target.program.counter(Counter::PacketsSeen),
            target.runs,
            "{}: packets seen",
            target.name
        );
    }

    let mut summary = format!(
        "xdp fuzz: {frames} frames in {:.1} s ({:.1} µs each), seed {seed}\n",
        elapsed.as_secs_f64(),
        elapsed.as_secs_f64() * 1e6 / frames as f64
    );
    for (category, count) in &tally.0 {
        let share = *count as f64 * 100.0 / frames as f64;
        summary += &format!("  {count:>9}  {share:5.1}%  {category}\n");
    }
    let flags_covered = flags_tried.iter().filter(|&&tried| tried).count();
    summary += &format!("  TCP flag combinations tried on SMTP segments: {flags_covered} of 256\n");
    report(&summary);
    assert_eq!(flags_covered, 256, "every TCP flag combination tried");
    let required = required_categories();
    let short: Vec<String> = required
        .iter()
        .filter(|category| (tally.get(category) as f64) < MIN_SHARE * frames as f64)
        .map(|category| format!("{category} ({})", tally.get(category)))
        .collect();
    assert!(
        short.is_empty(),
        "categories below {:.1}% of the frames: {}",
        MIN_SHARE * 100.0,
        short.join(", ")
    );
}

/// The categories that must each get `MIN_SHARE` of the frames.
fn required_categories() -> Vec<String> {
    let mut required: Vec<String> = [
        "flow: pooled",
        "flow: fresh",
        "destination port: 25, 587 or 2525",
        "destination port: another",
        "tcp flags: swept through all 256",
        "tcp: data offset overridden",
        "transport: udp",
        "transport: another protocol",
        "network: ipv4",
        "network: ipv6",
        "network: not ip",
        "ipv4: options",
        "ipv4: fragment, more fragments",
        "ipv4: fragment, offset",
        "ipv4: header length overridden",
        "ipv4: total length overridden",
        "ipv6: hop-by-hop header",
        "ipv6: routing header",
        "ipv6: fragment header",
        "ipv6: destination options header",
        "ipv6: unknown extension header",
        "ipv6: no next header",
        "ipv6: more than four extension headers",
        "mutation: padded",
        "mutation: truncated",
        "mutation: header bytes changed",
        "not ours: cut inside a header",
        "not ours: malformed header",
        "not ours: ipv4 fragment",
        "not ours: ipv6 fragment",
        "not ours: not tcp",
        "not ours: beyond four extension headers",
        "not ours: beyond two vlan tags",
        "not ours: not ip",
        "not ours: not to an smtp port",
        "smtp segment",
        "action: XDP_PASS",
        "action: XDP_DROP",
        "action: XDP_TX",
    ]
    .map(String::from)
    .to_vec();
    for tags in 0..=3 {
        required.push(format!("vlan tags: {tags}"));
    }
    for (name, _) in SOURCES {
        required.push(format!("source: {name}"));
    }
    for phase in STEERED_PHASES.map(Some).into_iter().chain([None]) {
        required.push(format!("smtp segment, phase before: {}", phase_name(phase)));
    }
    required
}

/// A frame the program must not touch: passed, byte for byte, with no event.
fn check_untouched(action: u32, frame: &[u8], out: &[u8], events: usize) -> Result<(), String> {
    if action != XDP_PASS {
        return Err(format!(
            "not an SMTP segment, yet {} (expected XDP_PASS)",
            action_name(action)
        ));
    }
    if out != frame {
        return Err("not an SMTP segment, passed but changed".into());
    }
    if events != 0 {
        return Err(format!("not an SMTP segment, yet {events} events"));
    }
    Ok(())
}

/// An SMTP segment: the expected action, the frame untouched unless answered with a valid
/// RST, the flow's phase after it, events only where the flow's phase allows them.
fn check_smtp(
    segment: &SmtpSegment,
    expected: &Expected,
    action: u32,
    frame: &[u8],
    out: &[u8],
    events: &[CaptureEvent],
    after: Option<u8>,
) -> Result<(), String> {
    let key = &segment.key;
    let describe = || {
        format!(
            "SMTP segment {} port {} → {} port {}, flags {:#04x}, seq {}, ack {}, {} payload bytes",
            address(key.family, &key.saddr),
            key.sport,
            address(key.family, &key.daddr),
            key.dport,
            segment.flags,
            segment.seq,
            segment.ack,
            segment.payload_len
        )
    };
    if !expected.actions.contains(&action) {
        let allowed: Vec<String> = expected.actions.iter().map(|&a| action_name(a)).collect();
        return Err(format!(
            "{}: {} (expected {})",
            describe(),
            action_name(action),
            allowed.join(" or ")
        ));
    }
    if action == XDP_TX {
        check_rst(frame, out, &expected_rst(segment))
            .map_err(|e| format!("{}: the RST sent back: {e}", describe()))?;
    } else if out != frame {
        return Err(format!(
            "{}: {} but changed",
            describe(),
            action_name(action)
        ));
    }
    if let Some(phase_after) = expected.phase_after
        && after != phase_after
    {
        return Err(format!(
            "{}: flow phase after it {}, expected {}",
            describe(),
            phase_name(after),
            phase_name(phase_after)
        ));
    }
    if !expected.may_report && !events.is_empty() {
        return Err(format!(
            "{}: {} unexpected events",
            describe(),
            events.len()
        ));
    }
    if expected.must_report && (events.len() != 1 || events[0].flags != flags::CLIENT_SEGMENT) {
        return Err(format!(
            "{}: {} events, expected one report of the whole segment",
            describe(),
            events.len()
        ));
    }
    if events.len() > 2 {
        return Err(format!("{}: {} events", describe(), events.len()));
    }
    for event in events {
        check_event(segment, frame, event).map_err(|e| format!("{}: {e}", describe()))?;
    }
    Ok(())
}

/// An event the segment produced: its flow and numbers, and bytes of the segment: from
/// its TCP header on for a report (`flags::CLIENT_SEGMENT`), a prefix of its payload (the
/// flow's capture may be capped) for a capture event.
fn check_event(segment: &SmtpSegment, frame: &[u8], event: &CaptureEvent) -> Result<(), String> {
    if event.key != segment.key {
        return Err(format!("an event for another flow: {:?}", event.key));
    }
    let numbers = (event.seq, event.ack, u32::from(event.wire_len));
    let expected = (segment.seq, segment.ack, segment.payload_len);
    if numbers != expected {
        return Err(format!(
            "event (seq, ack, wire length) {numbers:?}, expected {expected:?}"
        ));
    }
    let payload_end = segment.payload_offset + segment.payload_len as usize;
    let copied = event.payload();
    let whole = if event.flags & flags::CLIENT_SEGMENT != 0 {
        let end = payload_end.min(segment.l4 + MAX_CAPTURE_BYTES);
        &frame[segment.l4..end] == copied
    } else {
        !copied.is_empty() && frame[segment.payload_offset..payload_end].starts_with(copied)
    };
    if !whole {
        return Err(format!(
            "event flags {:#x} copied {}, not the segment's bytes",
            event.flags,
            hex(copied)
        ));
    }
    Ok(())
}
