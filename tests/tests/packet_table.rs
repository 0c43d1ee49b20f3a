//! Table-driven packet tests of the real compiled XDP program through
//! BPF_PROG_TEST_RUN: each step is a crafted frame, the return code it must get, and the
//! capture event it must produce (or none).
//!
//! Each row is its own flow (its own client port), so rows do not interfere; a flow's
//! data starts at sequence number ISN + 1 = 1001.

use std::net::IpAddr;

use helo_filter_common::{
    Counter, FAMILY_IPV4, FAMILY_IPV6, KernelConfig, REPLY_MARK, flags, phase,
};
use helo_filter_tests::{
    packet::{
        ACK, CLIENT_V4, CLIENT_V6, ETH_P_8021AD, ETH_P_8021Q, ExpectedRst, FIN, Frame, IPPROTO_UDP,
        IPV6_DEST_OPTS, IPV6_FRAGMENT, IPV6_HOP_BY_HOP, IPV6_ROUTING, PSH, SERVER_V4, SERVER_V6,
        SYN, arp, check_rst, flow_key_v4, flow_key_v6,
    },
    xdp::{CaptureProgram, XDP_DROP, XDP_PASS, XDP_TX},
};

// Without a daemon heartbeat (the table below writes none) the program passes everything;
// the gate tests write one.

const ISN: u32 = 1000;
const DATA: u32 = ISN + 1;
const DATA_FLAGS: u8 = PSH | ACK;

const HELO_DONE: u32 = flags::FINAL | flags::HELO_LINE;
const CONT: u32 = flags::CONTINUATION;

/// One frame and what it must produce.
struct Step {
    frame: Vec<u8>,
    returns: u32,
    /// (payload copied, flags, sequence number) of the one event expected, if any.
    event: Option<(Vec<u8>, u32, u32)>,
}

fn pass(frame: Frame) -> Step {
    Step {
        frame: frame.bytes(),
        returns: XDP_PASS,
        event: None,
    }
}

fn raw(bytes: Vec<u8>) -> Step {
    Step {
        frame: bytes,
        returns: XDP_PASS,
        event: None,
    }
}

fn captured(frame: Frame, payload: &[u8], event_flags: u32) -> Step {
    let seq = frame.segment.seq;
    Step {
        frame: frame.bytes(),
        returns: XDP_PASS,
        event: Some((payload.to_vec(), event_flags, seq)),
    }
}

/// A row's flow: SYN, then data segments at stream offsets.
struct Flow {
    port: u16,
    v6: bool,
}

impl Flow {
    fn v4(port: u16) -> Flow {
        Flow { port, v6: false }
    }
    fn v6(port: u16) -> Flow {
        Flow { port, v6: true }
    }
    fn frame(&self, seq: u32, tcp_flags: u8, payload: &[u8]) -> Frame {
        if self.v6 {
            Frame::tcp6(self.port, 25, seq, tcp_flags, payload)
        } else {
            Frame::tcp4(self.port, 25, seq, tcp_flags, payload)
        }
    }
    fn syn(&self) -> Frame {
        self.frame(ISN, SYN, b"")
    }
    /// Client data at `offset` bytes into the stream.
    fn data(&self, offset: u32, payload: &[u8]) -> Frame {
        self.frame(DATA + offset, DATA_FLAGS, payload)
    }
}

/// Wraps a frame: adds VLAN tags, IP options, extension headers…
type Wrap = fn(Frame) -> Frame;

/// SYN then one data segment, through `wrap` (VLAN tags, IP options, …).
fn syn_then(flow: &Flow, payload: &[u8], wrap: impl Fn(Frame) -> Frame) -> [Frame; 2] {
    [wrap(flow.syn()), wrap(flow.data(0, payload))]
}

fn rows() -> Vec<(&'static str, Vec<Step>)> {
    const EHLO: &[u8] = b"EHLO mail.example.net\r\n";
    let mut rows: Vec<(&'static str, Vec<Step>)> = Vec::new();
    let mut port = 40_000u16;
    let mut next = |v6: bool| {
        port += 1;
        if v6 { Flow::v6(port) } else { Flow::v4(port) }
    };

    // One-segment HELOs over every encapsulation.
    let encapsulations: [(&str, bool, Wrap); 9] = [
        ("ipv4 EHLO", false, |f| f),
        ("ipv6 EHLO", true, |f| f),
        ("vlan ipv4 EHLO", false, |f| f.vlan(ETH_P_8021Q, 10)),
        ("vlan ipv6 EHLO", true, |f| f.vlan(ETH_P_8021Q, 10)),
        ("double vlan (QinQ) ipv4 EHLO", false, |f| {
            f.vlan(ETH_P_8021AD, 100).vlan(ETH_P_8021Q, 10)
        }),
        ("double vlan (QinQ) ipv6 EHLO", true, |f| {
            f.vlan(ETH_P_8021AD, 100).vlan(ETH_P_8021Q, 10)
        }),
        // Two 802.1Q tags (the pre-802.1ad way of stacking them).
        ("double 802.1Q vlan ipv6 EHLO", true, |f| {
            f.vlan(ETH_P_8021Q, 100).vlan(ETH_P_8021Q, 10)
        }),
        ("ipv4 with options EHLO", false, |f| {
            f.ipv4_options(&[1, 1, 1, 1, 0x94, 4, 0, 0])
        }),
        (
            "ipv6 hop-by-hop + routing + destination options EHLO",
            true,
            |f| {
                f.ipv6_extension(IPV6_HOP_BY_HOP, 0)
                    .ipv6_extension(IPV6_ROUTING, 1)
                    .ipv6_extension(IPV6_DEST_OPTS, 2)
            },
        ),
    ];
    for (name, v6, wrap) in encapsulations {
        let flow = next(v6);
        let [syn, data] = syn_then(&flow, EHLO, wrap);
        rows.push((name, vec![pass(syn), captured(data, EHLO, HELO_DONE)]));
    }

    let flow = next(false);
    rows.push(("ipv6 single hop-by-hop header EHLO", {
        let flow = Flow::v6(flow.port);
        let [syn, data] = syn_then(&flow, EHLO, |f| f.ipv6_extension(IPV6_HOP_BY_HOP, 0));
        vec![pass(syn), captured(data, EHLO, HELO_DONE)]
    }));

    // The parser walks at most two tags: behind a third, the IP header is not looked for, and
    // the frames pass untouched (the SYN too, so the flow is never tracked).
    let flow = next(false);
    let three_tags = |f: Frame| {
        f.vlan(ETH_P_8021AD, 100)
            .vlan(ETH_P_8021Q, 10)
            .vlan(ETH_P_8021Q, 1)
    };
    let [syn, data] = syn_then(&flow, EHLO, three_tags);
    rows.push(("three vlan tags: not parsed", vec![pass(syn), pass(data)]));

    let flow = next(false);
    rows.push((
        "lower-case ehlo",
        vec![
            pass(flow.syn()),
            captured(
                flow.data(0, b"ehlo x.example\r\n"),
                b"ehlo x.example\r\n",
                HELO_DONE,
            ),
        ],
    ));

    let flow = next(false);
    rows.push((
        "HELO with a bare LF",
        vec![
            pass(flow.syn()),
            captured(
                flow.data(0, b"HELO x.example\n"),
                b"HELO x.example\n",
                HELO_DONE,
            ),
        ],
    ));

    let flow = next(false);
    rows.push((
        "HELOX is another command",
        vec![
            pass(flow.syn()),
            captured(flow.data(0, b"HELOX a\r\n"), b"HELOX a\r\n", flags::FINAL),
        ],
    ));

    let flow = next(false);
    rows.push((
        "MAIL FROM before HELO",
        vec![
            pass(flow.syn()),
            captured(
                flow.data(0, b"MAIL FROM:<a@example.net>\r\n"),
                b"MAIL FROM:<a@example.net>\r\n",
                flags::FINAL,
            ),
            pass(flow.data(27, b"HELO late.example\r\n")),
        ],
    ));

    let flow = next(false);
    rows.push((
        "NOOP and RSET before HELO are skipped",
        vec![
            pass(flow.syn()),
            captured(flow.data(0, b"NOOP\r\n"), b"NOOP\r\n", 0),
            captured(flow.data(6, b"rset\r\n"), b"rset\r\n", CONT),
            captured(
                flow.data(12, b"HELO a.example\r\n"),
                b"HELO a.example\r\n",
                CONT | HELO_DONE,
            ),
        ],
    ));

    let flow = next(false);
    rows.push((
        "HELO split in two",
        vec![
            pass(flow.syn()),
            captured(flow.data(0, b"HELO mail.exa"), b"HELO mail.exa", 0),
            captured(
                flow.data(13, b"mple.net\r\n"),
                b"mple.net\r\n",
                CONT | HELO_DONE,
            ),
        ],
    ));

    let flow = next(false);
    rows.push((
        "verb split: EH then LO",
        vec![
            pass(flow.syn()),
            captured(flow.data(0, b"EH"), b"EH", 0),
            captured(
                flow.data(2, b"LO mail.example.net\r\n"),
                b"LO mail.example.net\r\n",
                CONT | HELO_DONE,
            ),
        ],
    ));

    let flow = next(true);
    let line = b"HELO a.b\r\n";
    let mut steps = vec![pass(flow.syn())];
    for (i, byte) in line.iter().enumerate() {
        let last = i == line.len() - 1;
        let mut expected = if i == 0 { 0 } else { CONT };
        if last {
            expected |= HELO_DONE;
        }
        steps.push(captured(flow.data(i as u32, &[*byte]), &[*byte], expected));
    }
    rows.push(("ipv6 HELO one byte per segment", steps));

    let flow = next(false);
    rows.push((
        "HELO followed by a pipelined command",
        vec![
            pass(flow.syn()),
            captured(
                flow.data(0, b"EHLO a.example\r\nMAIL FROM:<>\r\n"),
                b"EHLO a.example\r\nMAIL FROM:<>\r\n",
                HELO_DONE | flags::PIPELINED,
            ),
        ],
    ));

    // Past a line's first five bytes the scanner steps 8 bytes at a time: the LF at every
    // place of a word, with and without a command pipelined after it (which must be seen),
    // a long NOOP line skipped on the way, and a long line split mid-word.
    for name_len in 1..=17 {
        let line = format!("EHLO {}\r\n", "a".repeat(name_len)).into_bytes();
        let flow = next(name_len % 2 == 0);
        let name = format!("EHLO line of {} bytes", line.len());
        rows.push((
            Box::leak(name.into_boxed_str()),
            vec![
                pass(flow.syn()),
                captured(flow.data(0, &line), &line, HELO_DONE),
            ],
        ));
        let mut pipelined = line.clone();
        pipelined.extend_from_slice(b"MAIL FROM:<>\r\n");
        let flow = next(name_len % 2 == 1);
        let name = format!(
            "EHLO line of {} bytes, then a pipelined command",
            line.len()
        );
        rows.push((
            Box::leak(name.into_boxed_str()),
            vec![
                pass(flow.syn()),
                captured(
                    flow.data(0, &pipelined),
                    &pipelined,
                    HELO_DONE | flags::PIPELINED,
                ),
            ],
        ));
    }
    let flow = next(false);
    let noop_then_ehlo = b"NOOP spanning a few words of the scan\r\nEHLO mail.example.net\r\n";
    rows.push((
        "a long NOOP line, then EHLO, in one segment",
        vec![
            pass(flow.syn()),
            captured(flow.data(0, noop_then_ehlo), noop_then_ehlo, HELO_DONE),
        ],
    ));
    let flow = next(true);
    rows.push((
        "a long EHLO line split mid-word",
        vec![
            pass(flow.syn()),
            captured(
                flow.data(0, b"EHLO a-name-that-spans-several-words"),
                b"EHLO a-name-that-spans-several-words",
                0,
            ),
            captured(
                flow.data(36, b".example.net\r\nQUIT\r\n"),
                b".example.net\r\nQUIT\r\n",
                CONT | HELO_DONE | flags::PIPELINED,
            ),
        ],
    ));

    let flow = next(false);
    rows.push((
        "retransmitted first segment, then segments after the HELO",
        vec![
            pass(flow.syn()),
            captured(flow.data(0, b"EHLO a"), b"EHLO a", 0),
            pass(flow.data(0, b"EHLO a")),
            captured(
                flow.data(6, b".example\r\n"),
                b".example\r\n",
                CONT | HELO_DONE,
            ),
            pass(flow.data(16, b"MAIL FROM:<>\r\n")),
        ],
    ));

    let flow = next(false);
    let mut steps = vec![pass(flow.syn())];
    for i in 0..32u32 {
        let expected = match i {
            0 => 0,
            31 => CONT | flags::FINAL | flags::CAPPED,
            _ => CONT,
        };
        steps.push(captured(flow.data(i, b"x"), b"x", expected));
    }
    steps.push(pass(flow.data(32, b"x")));
    rows.push(("dribbling past the 32-segment cap", steps));

    let flow = next(false);
    let long = vec![b'A'; 600];
    rows.push((
        "600-byte segment: 512 copied, truncated and capped",
        vec![
            pass(flow.syn()),
            captured(
                flow.data(0, &long),
                &long[..512],
                flags::TRUNCATED | flags::FINAL | flags::CAPPED,
            ),
        ],
    ));

    let flow = next(false);
    rows.push(("no SYN seen: not captured", vec![pass(flow.data(0, EHLO))]));

    let flow = next(false);
    rows.push((
        "empty payload (pure ACK) and FIN",
        vec![
            pass(flow.syn()),
            pass(flow.frame(DATA, ACK, b"")),
            pass(flow.frame(DATA, FIN | ACK, b"")),
            captured(flow.data(0, EHLO), EHLO, HELO_DONE),
        ],
    ));

    let flow = next(false);
    rows.push((
        "another port (587 not configured)",
        vec![
            pass(Frame::tcp4(flow.port, 587, ISN, SYN, b"")),
            pass(Frame::tcp4(flow.port, 587, DATA, DATA_FLAGS, EHLO)),
        ],
    ));

    let flow = next(false);
    rows.push((
        "server to client (source port 25)",
        vec![
            pass(Frame::tcp4(25, flow.port, ISN, SYN | ACK, b"")),
            pass(Frame::tcp4(
                25,
                flow.port,
                DATA,
                DATA_FLAGS,
                b"EHLO x.example\r\n",
            )),
        ],
    ));

    let flow = next(false);
    rows.push((
        "UDP to port 25",
        vec![
            pass(flow.syn().protocol(IPPROTO_UDP)),
            pass(flow.data(0, EHLO).protocol(IPPROTO_UDP)),
        ],
    ));

    rows.push(("ARP", vec![raw(arp())]));

    let flow = next(false);
    rows.push((
        "ipv4 fragments (more-fragments, then an offset)",
        vec![
            pass(flow.syn()),
            pass(flow.data(0, EHLO).ipv4_fragment(0x2000)),
            pass(flow.data(0, EHLO).ipv4_fragment(0x0005)),
        ],
    ));

    let flow = next(true);
    rows.push((
        "ipv6 fragment header",
        vec![
            pass(flow.syn()),
            pass(flow.data(0, EHLO).ipv6_extension(IPV6_FRAGMENT, 0)),
        ],
    ));

    let flow = next(false);
    rows.push((
        "ipv4 header length below 5 words",
        vec![
            pass(flow.syn().ipv4_ihl(4)),
            pass(flow.data(0, EHLO).ipv4_ihl(4)),
        ],
    ));

    let flow = next(false);
    rows.push((
        "tcp data offset below 5 words",
        vec![pass(flow.syn()), pass(flow.data(0, EHLO).data_offset(4))],
    ));

    let flow = next(false);
    rows.push((
        "ipv4 total length beyond the frame: only what is there",
        vec![
            pass(flow.syn()),
            captured(
                flow.data(0, b"EHLO a.exam").ipv4_total_len(200),
                b"EHLO a.exam",
                0,
            ),
        ],
    ));

    let flow = next(false);
    rows.push((
        "ipv4 total length shorter than its headers",
        vec![
            pass(flow.syn()),
            pass(flow.data(0, EHLO).ipv4_total_len(30)),
        ],
    ));

    let flow = next(false);
    rows.push((
        "a new SYN on a finished 4-tuple starts a new capture",
        vec![
            pass(flow.syn()),
            captured(flow.data(0, EHLO), EHLO, HELO_DONE),
            pass(flow.frame(5000, SYN, b"")),
            captured(
                flow.frame(5001, DATA_FLAGS, b"HELO b.example\r\n"),
                b"HELO b.example\r\n",
                HELO_DONE,
            ),
        ],
    ));

    // Truncation at every header: a HELO frame cut just inside each header must pass
    // without an event (the flow's SYN was seen, so only the cut stops the capture).
    let truncations: [(&'static str, bool, Wrap, usize); 9] = [
        // BPF_PROG_TEST_RUN refuses frames shorter than an Ethernet header, as NICs do.
        ("ethernet header only", false, |f| f, 14),
        (
            "cut inside the vlan tag",
            false,
            |f| f.vlan(ETH_P_8021Q, 1),
            16,
        ),
        (
            "cut inside the second vlan tag",
            false,
            |f| f.vlan(ETH_P_8021AD, 1).vlan(ETH_P_8021Q, 2),
            20,
        ),
        ("cut inside the ipv4 header", false, |f| f, 14 + 19),
        (
            "cut inside the ipv4 options",
            false,
            |f| f.ipv4_options(&[1, 1, 1, 1]),
            14 + 23,
        ),
        ("cut inside the ipv6 header", true, |f| f, 14 + 39),
        (
            "cut inside an ipv6 extension header",
            true,
            |f| f.ipv6_extension(IPV6_DEST_OPTS, 1),
            14 + 40 + 1,
        ),
        (
            "cut inside the tcp header (ipv4)",
            false,
            |f| f,
            14 + 20 + 19,
        ),
        (
            "cut inside the tcp header (ipv6)",
            true,
            |f| f,
            14 + 40 + 19,
        ),
    ];
    for (name, v6, wrap, cut) in truncations {
        let flow = next(v6);
        let [syn, data] = syn_then(&flow, EHLO, wrap);
        let mut bytes = data.bytes();
        bytes.truncate(cut);
        rows.push((name, vec![pass(syn), raw(bytes)]));
    }
    rows
}

#[test]
fn packet_table() {
    let mut program = CaptureProgram::load(&KernelConfig::default());
    let rows = rows();
    assert!(rows.len() >= 30, "the table has {} rows", rows.len());
    let (mut helo_events, mut continuations, mut runs) = (0, 0, 0);
    for (name, steps) in rows {
        for (i, step) in steps.iter().enumerate() {
            let result = program.run(&step.frame, 1);
            runs += 1;
            assert_eq!(
                result.return_value, step.returns,
                "{name}, step {i}: return code"
            );
            let events = program.drain();
            match &step.event {
                None => assert!(events.is_empty(), "{name}, step {i}: unexpected event"),
                Some((payload, event_flags, seq)) => {
                    assert_eq!(events.len(), 1, "{name}, step {i}: one event expected");
                    let event = &events[0];
                    assert_eq!(
                        event.payload(),
                        payload.as_slice(),
                        "{name}, step {i}: payload"
                    );
                    assert_eq!(event.flags, *event_flags, "{name}, step {i}: flags");
                    assert_eq!(event.seq, *seq, "{name}, step {i}: seq");
                    assert_eq!(event.key.dport, 25, "{name}, step {i}: dport");
                    assert!(
                        [FAMILY_IPV4, FAMILY_IPV6].contains(&event.key.family),
                        "{name}, step {i}: family"
                    );
                    helo_events += u64::from(event.flags & flags::HELO_LINE != 0);
                    continuations += u64::from(event.flags & flags::CONTINUATION != 0);
                }
            }
        }
    }
    assert_eq!(program.counter(Counter::PacketsSeen), runs);
    assert_eq!(program.counter(Counter::HeloEvents), helo_events);
    assert_eq!(program.counter(Counter::ContinuationEvents), continuations);
    assert_eq!(program.counter(Counter::RingbufReserveFailed), 0);
}

#[test]
fn configured_ports_replace_the_default() {
    let mut config = KernelConfig::default();
    config.ports[..2].copy_from_slice(&[587, 2525]);
    config.port_count = 2;
    let mut program = CaptureProgram::load(&config);
    for (dport, captured) in [(25u16, false), (587, true), (2525, true)] {
        program.run(&Frame::tcp4(41_000, dport, ISN, SYN, b"").bytes(), 1);
        program.run(
            &Frame::tcp4(41_000, dport, DATA, DATA_FLAGS, b"EHLO a.example\r\n").bytes(),
            1,
        );
        assert_eq!(program.drain().len(), usize::from(captured), "port {dport}");
    }
}

#[test]
fn event_carries_flow_and_addresses() {
    let mut program = CaptureProgram::load(&KernelConfig::default());
    program.run(&Frame::tcp6(42_000, 25, ISN, SYN, b"").bytes(), 1);
    program.run(
        &Frame::tcp6(42_000, 25, DATA, DATA_FLAGS, b"HELO a.example\r\n").bytes(),
        1,
    );
    let events = program.drain();
    let event = &events[0];
    assert_eq!(event.key.family, FAMILY_IPV6);
    assert_eq!(
        event.key.saddr,
        helo_filter_tests::packet::CLIENT_V6.octets()
    );
    assert_eq!(
        event.key.daddr,
        helo_filter_tests::packet::SERVER_V6.octets()
    );
    assert_eq!(event.key.sport, 42_000);
    assert_eq!(event.stream_start_seq, DATA);
    assert_eq!(event.wire_len, 16);
    assert_eq!(event.ack, 1, "the acknowledgement number it carried");
    assert!(event.timestamp_ns > 0);
}

/// Runs one frame and returns the action and the number of events it produced.
fn step(program: &mut CaptureProgram, frame: Frame) -> (u32, usize) {
    step_bytes(program, &frame.bytes())
}

/// The gate drops a judged flow's payload until the verdict (pure ACKs and FINs pass);
/// under action `reply` (`REPORT_HELD`) each held segment is reported whole, for the daemon
/// to answer, and under the others it is not.
#[test]
fn the_gate_holds_payload_until_the_verdict() {
    for (i, (options, reported)) in [(KernelConfig::REPORT_HELD, 1), (0, 0)]
        .into_iter()
        .enumerate()
    {
        let mut program = CaptureProgram::load(&KernelConfig {
            options,
            ..KernelConfig::default()
        });
        program.heartbeat(0);
        let port = 43_000 + 10 * i as u16;
        let flow = Flow::v4(port);
        assert_eq!(step(&mut program, flow.syn()), (XDP_PASS, 0));
        assert_eq!(
            step(&mut program, flow.data(0, b"EHLO a.example\r\n")),
            (XDP_PASS, 1)
        );
        let mail = flow.data(16, b"MAIL FROM:<a@example.net>\r\n");
        assert_eq!(
            program.run(&mail.bytes(), 1).return_value,
            XDP_DROP,
            "held before the verdict"
        );
        let events = program.drain();
        assert_eq!(events.len(), reported, "options {options}: reported or not");
        if reported == 1 {
            assert_eq!(events[0].flags, flags::CLIENT_SEGMENT);
            assert_eq!(events[0].payload(), &mail.bytes()[14 + 20..]);
        }
        assert_eq!(
            step(&mut program, flow.frame(DATA + 16, ACK, b"")),
            (XDP_PASS, 0),
            "pure ACK"
        );
        assert_eq!(
            step(&mut program, flow.frame(DATA + 16, FIN | ACK, b"")),
            (XDP_PASS, 0)
        );
        assert_eq!(program.counter(Counter::GateHeld), 1);
        program.judge(&flow_key_v4(port, 25));
        assert_eq!(
            step(&mut program, mail),
            (XDP_PASS, 0),
            "the retransmission is delivered"
        );

        // A HELO with commands pipelined behind it is itself held, and flagged.
        let flow = Flow::v4(port + 1);
        step(&mut program, flow.syn());
        let pipelined = flow.data(0, b"EHLO a.example\r\nMAIL FROM:<>\r\n");
        assert_eq!(program.run(&pipelined.bytes(), 1).return_value, XDP_DROP);
        let events = program.drain();
        assert_eq!(events.len(), 1 + reported, "options {options}");
        assert_eq!(events[0].flags & flags::PIPELINED, flags::PIPELINED);
        assert_eq!(program.counter(Counter::GateHeld), 2);
    }
}

/// A known-good source (`KNOWN_GOOD`, the daemon's cache): its HELO is captured and flagged
/// `UNGATED`, and the command after it passes at once, held by no gate; once its standing
/// is over, its next flow is gated again. IPv4 and IPv6 (a /64).
#[test]
fn a_known_good_source_is_captured_but_not_gated() {
    let mut program = CaptureProgram::load(&KernelConfig::default());
    program.heartbeat(0);
    for (i, v6) in [false, true].into_iter().enumerate() {
        let port = 44_000 + 10 * i as u16;
        let flow = if v6 { Flow::v6(port) } else { Flow::v4(port) };
        let key = if v6 {
            flow_key_v6(port, 25)
        } else {
            flow_key_v4(port, 25)
        };
        program.known_good(&key, 60_000);
        assert_eq!(step(&mut program, flow.syn()), (XDP_PASS, 0));
        assert_eq!(
            program
                .run(&flow.data(0, b"EHLO a.example\r\n").bytes(), 1)
                .return_value,
            XDP_PASS
        );
        let events = program.drain();
        assert_eq!(events.len(), 1, "v6 {v6}: the HELO is captured");
        assert_eq!(events[0].flags, HELO_DONE | flags::UNGATED, "v6 {v6}");
        assert_eq!(
            step(
                &mut program,
                flow.data(16, b"MAIL FROM:<a@example.net>\r\n")
            ),
            (XDP_PASS, 0),
            "v6 {v6}: the next command is not held"
        );
        assert_eq!(program.phase(&key), Some(phase::DONE), "v6 {v6}");

        // The standing over: the next flow is gated.
        program.known_good(&key, -1);
        let flow = if v6 {
            Flow::v6(port + 1)
        } else {
            Flow::v4(port + 1)
        };
        step(&mut program, flow.syn());
        assert_eq!(
            step(&mut program, flow.data(0, b"EHLO a.example\r\n")),
            (XDP_PASS, 1)
        );
        assert_eq!(
            program
                .run(&flow.data(16, b"MAIL FROM:<a@example.net>\r\n").bytes(), 1)
                .return_value,
            XDP_DROP,
            "v6 {v6}: an expired standing gates again"
        );
        program.drain();
    }
    assert_eq!(program.counter(Counter::GateHeld), 2);
}

/// Monitor mode (`KernelConfig::NO_GATE`): the same frames as under the gate, a segment after
/// the decisive line, a HELO with a command pipelined behind it and another command first,
/// pass, and are still captured; under the gate all three are dropped (and reported).
#[test]
fn without_the_gate_nothing_is_held() {
    let monitor = KernelConfig {
        gate_deadline_ms: KernelConfig::NO_GATE,
        ..KernelConfig::default()
    };
    let replying = KernelConfig {
        options: KernelConfig::REPORT_HELD,
        ..KernelConfig::default()
    };
    for (gate, config, held) in [
        ("gate on", replying, XDP_DROP),
        ("gate off", monitor, XDP_PASS),
    ] {
        let mut program = CaptureProgram::load(&config);
        program.heartbeat(0);
        let flow = Flow::v4(47_000);
        assert_eq!(step(&mut program, flow.syn()), (XDP_PASS, 0), "{gate}");
        let helo = flow.data(0, b"EHLO a.example\r\n");
        assert_eq!(
            program.run(&helo.bytes(), 1).return_value,
            XDP_PASS,
            "{gate}"
        );
        let events = program.drain();
        assert_eq!(events.len(), 1, "{gate}: the HELO is captured");
        assert_eq!(events[0].flags, HELO_DONE, "{gate}");
        let mail = flow.data(16, b"MAIL FROM:<a@example.net>\r\n");
        // A held segment is reported (for action `reply`); a passed one is not.
        let reported = usize::from(held == XDP_DROP);
        assert_eq!(
            step(&mut program, mail),
            (held, reported),
            "{gate}: the segment after the HELO line"
        );

        let flow = Flow::v4(47_001);
        step(&mut program, flow.syn());
        let pipelined = flow.data(0, b"EHLO a.example\r\nMAIL FROM:<>\r\n");
        assert_eq!(
            program.run(&pipelined.bytes(), 1).return_value,
            held,
            "{gate}: a pipelined HELO segment"
        );
        let held_flag = if held == XDP_DROP { flags::HELD } else { 0 };
        let events = program.drain();
        assert_eq!(
            events.len(),
            1 + reported,
            "{gate}: the pipelined HELO is captured (and reported if held)"
        );
        assert_eq!(
            events[0].flags,
            HELO_DONE | flags::PIPELINED | held_flag,
            "{gate}: and flagged"
        );

        // Another command first (reason `no_helo`): held like a pipelined HELO, so that
        // under `reply` the daemon's answer is the reply to it.
        let flow = Flow::v4(47_002);
        step(&mut program, flow.syn());
        let mail_first = flow.data(0, b"MAIL FROM:<>\r\n");
        assert_eq!(
            program.run(&mail_first.bytes(), 1).return_value,
            held,
            "{gate}: another command first"
        );
        let events = program.drain();
        assert_eq!(events.len(), 1 + reported, "{gate}: captured");
        assert_eq!(events[0].flags, flags::FINAL | held_flag, "{gate}");
        if reported == 1 {
            assert_eq!(events[1].flags, flags::CLIENT_SEGMENT, "{gate}");
        }
        let dropped = if held == XDP_DROP { 3 } else { 0 };
        assert_eq!(program.counter(Counter::GateHeld), dropped, "{gate}");
        assert_eq!(program.counter(Counter::HeloEvents), 2, "{gate}");
    }
}

/// The deadline is a second wide, so that a loaded machine still holds the first retry;
/// then the gate is polled until it opens, and it must not open before the deadline.
#[test]
fn the_gate_opens_after_its_deadline() {
    use std::time::{Duration, Instant};

    const DEADLINE: Duration = Duration::from_millis(1000);
    let config = KernelConfig {
        gate_deadline_ms: DEADLINE.as_millis() as u32,
        ..KernelConfig::default()
    };
    let mut program = CaptureProgram::load(&config);
    program.heartbeat(0);
    let flow = Flow::v4(44_000);
    step(&mut program, flow.syn());
    let gated = Instant::now();
    step(&mut program, flow.data(0, b"HELO a.example\r\n"));
    let mail = flow.data(16, b"MAIL FROM:<>\r\n");
    assert_eq!(
        step(&mut program, mail.clone()).0,
        XDP_DROP,
        "held at first"
    );
    // Retries, as the client's TCP would send them, until one passes (the heartbeat kept
    // fresh, so that only the deadline can open the gate).
    let mut held = 1;
    loop {
        program.heartbeat(0);
        let action = step(&mut program, mail.clone()).0;
        if action == XDP_PASS {
            // Only a retry sent once the deadline had passed may get through (the clock read
            // after the retry bounds the kernel's from above).
            let after = gated.elapsed();
            assert!(
                after >= DEADLINE,
                "the gate opened {after:?} after the HELO, before its {DEADLINE:?} deadline"
            );
            break;
        }
        assert_eq!(action, XDP_DROP);
        held += 1;
        assert!(
            gated.elapsed() < DEADLINE + Duration::from_secs(5),
            "the gate still held {:?} after the HELO",
            gated.elapsed()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(step(&mut program, mail).0, XDP_PASS, "and open for good");
    assert_eq!(program.counter(Counter::GateDeadline), 1);
    assert_eq!(program.counter(Counter::GateHeld), held);
}

#[test]
fn a_stale_heartbeat_turns_the_gate_off() {
    let mut program = CaptureProgram::load(&KernelConfig::default());
    program.heartbeat(KernelConfig::DEFAULT_HEARTBEAT_TIMEOUT_MS as u64 + 1_000);
    let flow = Flow::v4(45_000);
    step(&mut program, flow.syn());
    step(&mut program, flow.data(0, b"HELO a.example\r\n"));
    assert_eq!(
        step(&mut program, flow.data(16, b"MAIL FROM:<>\r\n")).0,
        XDP_PASS
    );
    let flow = Flow::v4(45_001);
    step(&mut program, flow.syn());
    let pipelined = flow.data(0, b"EHLO a.example\r\nMAIL FROM:<>\r\n");
    assert_eq!(
        step(&mut program, pipelined),
        (XDP_PASS, 1),
        "not held either"
    );
    assert_eq!(program.counter(Counter::DaemonAbsent), 1);
    assert_eq!(program.counter(Counter::GateHeld), 0);
}

const RST: u8 = 0x04;

/// Deployment `gateway`, action `rst`: once a flow is condemned, each further client packet
/// comes back as a RST from the server (XDP_TX), for every encapsulation; but a RST is never
/// answered (RFC 9293 §3.10.7.1): the client's is dropped.
#[test]
fn condemned_flows_are_answered_with_a_checksummed_rst() {
    let mut program = CaptureProgram::load(&KernelConfig::default());
    program.heartbeat(0);
    let cases: [(&str, bool, Wrap, usize); 4] = [
        ("ipv4", false, |f| f, 14),
        ("ipv6", true, |f| f, 14),
        (
            "vlan and ipv4 options",
            false,
            |f| f.vlan(ETH_P_8021Q, 7).ipv4_options(&[1, 1, 1, 1]),
            18,
        ),
        (
            "qinq and an ipv6 extension header",
            true,
            |f| {
                f.vlan(ETH_P_8021AD, 8)
                    .vlan(ETH_P_8021Q, 9)
                    .ipv6_extension(IPV6_DEST_OPTS, 1)
            },
            22,
        ),
    ];
    for (i, (name, v6, wrap, l3)) in cases.into_iter().enumerate() {
        let port = 46_000 + i as u16;
        let flow = if v6 { Flow::v6(port) } else { Flow::v4(port) };
        let [syn, ehlo] = syn_then(&flow, b"EHLO a.example\r\n", wrap);
        step(&mut program, syn);
        step(&mut program, ehlo);
        let key = if v6 {
            flow_key_v6(port, 25)
        } else {
            flow_key_v4(port, 25)
        };
        program.set_phase(&key, phase::CONDEMNED_RST);
        let input = wrap(flow.data(16, b"MAIL FROM:<bot@example.net>\r\n")).bytes();
        let (action, out) = program.run_out(&input);
        assert_eq!(action, XDP_TX, "{name}");
        // The client's segment carries ACK 1 (the frame builder's): the RST's seq is that.
        let (client, server) = if v6 {
            (IpAddr::from(CLIENT_V6), IpAddr::from(SERVER_V6))
        } else {
            (CLIENT_V4.into(), SERVER_V4.into())
        };
        let want = ExpectedRst {
            l3,
            client,
            server,
            client_port: port,
            server_port: 25,
            seq: 1,
            ack: 0,
            flags: RST,
        };
        check_rst(&input, &out, &want).unwrap_or_else(|e| panic!("{name}: {e}"));
        let reset = wrap(flow.frame(DATA + 16, RST | ACK, b"")).bytes();
        assert_eq!(
            program.run_out(&reset),
            (XDP_DROP, reset.clone()),
            "{name}: the client's RST"
        );
    }
}

/// A denied source's SYN answered with a RST when so configured: RST|ACK acknowledging the
/// SYN, sequence number 0. A SYN|RST is dropped, not answered (a RST never is).
#[test]
fn denied_syns_can_be_answered_with_a_rst() {
    let config = KernelConfig {
        options: KernelConfig::DENY_WITH_RST,
        ..KernelConfig::default()
    };
    let mut program = CaptureProgram::load(&config);
    program.deny("203.0.113.10/32".parse().expect("a CIDR"));
    let input = Frame::tcp4(47_000, 25, ISN, SYN, b"").bytes();
    let (action, out) = program.run_out(&input);
    assert_eq!(action, XDP_TX);
    let want = ExpectedRst {
        l3: 14,
        client: CLIENT_V4.into(),
        server: SERVER_V4.into(),
        client_port: 47_000,
        server_port: 25,
        seq: 0,
        ack: ISN + 1,
        flags: RST | ACK,
    };
    check_rst(&input, &out, &want).unwrap_or_else(|e| panic!("denied SYN: {e}"));
    assert_eq!(program.counter(Counter::SynDropped), 1);
    let syn_rst = Frame::tcp4(47_001, 25, ISN, SYN | RST, b"").bytes();
    assert_eq!(program.run_out(&syn_rst), (XDP_DROP, syn_rst.clone()));
    assert_eq!(program.counter(Counter::SynDropped), 2);
}

/// `TC_ACT_OK` and `TC_ACT_SHOT` from the kernel's UAPI.
const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;

/// A segment from the MTA (port 25) to the client port `port`, as the TC egress program sees
/// it.
fn from_mta(port: u16, v6: bool, tcp_flags: u8, payload: &[u8]) -> Frame {
    let to_mta = if v6 {
        Frame::tcp6(port, 25, 7000, tcp_flags, payload)
    } else {
        Frame::tcp4(port, 25, 7000, tcp_flags, payload)
    };
    to_mta.reversed()
}

fn cut(frame: Frame, len: usize) -> Vec<u8> {
    let mut bytes = frame.bytes();
    bytes.truncate(len);
    bytes
}

/// The TC egress classifier (`helo_egress`, action `drop` on an MX: `DROP_MTA_PACKETS`)
/// through BPF_PROG_TEST_RUN: the MTA's segments to a client whose flow the daemon condemned (phase
/// `CONDEMNED` written into `FLOWS`, as `enforce.rs` does), the RST of its destroyed socket
/// above all, are shot and counted in `CondemnedDropped`; any other frame leaves, uncounted.
#[test]
fn the_egress_classifier_shoots_only_condemned_flows() {
    /// The client's flow: its server port and the phase it is put in (None: never seen).
    type ClientFlow = Option<(u16, u8)>;
    /// Builds the row's egress frame for the client port.
    type EgressFrame = fn(u16) -> Vec<u8>;
    const REPLY: &[u8] = b"250 mx.example.org\r\n";
    // (row, IPv6, the client's flow, the frame leaving towards the client, the action it must
    // get).
    let rows: [(&str, bool, ClientFlow, EgressFrame, u32); 21] = [
        (
            "condemned ipv4: the MTA's reply",
            false,
            Some((25, phase::CONDEMNED)),
            |p| from_mta(p, false, PSH | ACK, REPLY).bytes(),
            TC_ACT_SHOT,
        ),
        (
            "condemned ipv4: the RST of its destroyed socket",
            false,
            Some((25, phase::CONDEMNED)),
            |p| from_mta(p, false, RST | ACK, b"").bytes(),
            TC_ACT_SHOT,
        ),
        (
            "condemned ipv6: the MTA's reply",
            true,
            Some((25, phase::CONDEMNED)),
            |p| from_mta(p, true, PSH | ACK, REPLY).bytes(),
            TC_ACT_SHOT,
        ),
        (
            "condemned ipv6: the RST of its destroyed socket",
            true,
            Some((25, phase::CONDEMNED)),
            |p| from_mta(p, true, RST | ACK, b"").bytes(),
            TC_ACT_SHOT,
        ),
        (
            "condemned ipv4: a bare ACK",
            false,
            Some((25, phase::CONDEMNED)),
            |p| from_mta(p, false, ACK, b"").bytes(),
            TC_ACT_SHOT,
        ),
        (
            "condemned, vlan ipv4",
            false,
            Some((25, phase::CONDEMNED)),
            |p| {
                from_mta(p, false, PSH | ACK, REPLY)
                    .vlan(ETH_P_8021Q, 100)
                    .bytes()
            },
            TC_ACT_SHOT,
        ),
        (
            "condemned, double vlan (QinQ) ipv6",
            true,
            Some((25, phase::CONDEMNED)),
            |p| {
                from_mta(p, true, PSH | ACK, REPLY)
                    .vlan(ETH_P_8021AD, 200)
                    .vlan(ETH_P_8021Q, 100)
                    .bytes()
            },
            TC_ACT_SHOT,
        ),
        (
            "condemned, ipv4 with options",
            false,
            Some((25, phase::CONDEMNED)),
            |p| {
                from_mta(p, false, PSH | ACK, REPLY)
                    .ipv4_options(&[1, 1, 1, 1])
                    .bytes()
            },
            TC_ACT_SHOT,
        ),
        (
            "gated (awaiting its verdict)",
            false,
            Some((25, phase::GATED)),
            |p| from_mta(p, false, PSH | ACK, REPLY).bytes(),
            TC_ACT_OK,
        ),
        (
            "accepted (done)",
            true,
            Some((25, phase::DONE)),
            |p| from_mta(p, true, PSH | ACK, REPLY).bytes(),
            TC_ACT_OK,
        ),
        (
            "condemned to RSTs (gateway, answered in XDP)",
            false,
            Some((25, phase::CONDEMNED_RST)),
            |p| from_mta(p, false, RST | ACK, b"").bytes(),
            TC_ACT_OK,
        ),
        (
            "a flow never seen",
            false,
            None,
            |p| from_mta(p, false, PSH | ACK, REPLY).bytes(),
            TC_ACT_OK,
        ),
        (
            // Left in FLOWS for port 587, which is not (or no longer) an SMTP port here.
            "condemned flow to port 587: its segment from 587",
            false,
            Some((587, phase::CONDEMNED)),
            |p| {
                Frame::tcp4(p, 587, 7000, PSH | ACK, REPLY)
                    .reversed()
                    .bytes()
            },
            TC_ACT_OK,
        ),
        (
            "condemned: a segment in the client's direction",
            false,
            Some((25, phase::CONDEMNED)),
            |p| Frame::tcp4(p, 25, 9000, PSH | ACK, b"QUIT\r\n").bytes(),
            TC_ACT_OK,
        ),
        (
            "condemned: UDP from port 25",
            false,
            Some((25, phase::CONDEMNED)),
            |p| from_mta(p, false, 0, REPLY).protocol(IPPROTO_UDP).bytes(),
            TC_ACT_OK,
        ),
        ("ARP", false, None, |_| arp(), TC_ACT_OK),
        (
            "condemned ipv4: a fragment",
            false,
            Some((25, phase::CONDEMNED)),
            |p| {
                from_mta(p, false, PSH | ACK, REPLY)
                    .ipv4_fragment(0x2000)
                    .bytes()
            },
            TC_ACT_OK,
        ),
        (
            "condemned ipv4: cut inside the tcp header",
            false,
            Some((25, phase::CONDEMNED)),
            |p| cut(from_mta(p, false, RST | ACK, b""), 14 + 20 + 19),
            TC_ACT_OK,
        ),
        (
            "condemned ipv6: cut inside the tcp header",
            true,
            Some((25, phase::CONDEMNED)),
            |p| cut(from_mta(p, true, RST | ACK, b""), 14 + 40 + 19),
            TC_ACT_OK,
        ),
        // BPF_PROG_TEST_RUN refuses a TC program an IPv4 or IPv6 frame cut inside its fixed
        // IP header (EINVAL), which the stack never sends either; the options are fair game.
        (
            "condemned ipv4: cut inside the ipv4 options",
            false,
            Some((25, phase::CONDEMNED)),
            |p| {
                cut(
                    from_mta(p, false, RST | ACK, b"").ipv4_options(&[1, 1, 1, 1]),
                    14 + 20 + 2,
                )
            },
            TC_ACT_OK,
        ),
        (
            "condemned: cut inside the vlan tag",
            false,
            Some((25, phase::CONDEMNED)),
            |p| {
                cut(
                    from_mta(p, false, RST | ACK, b"").vlan(ETH_P_8021Q, 100),
                    16,
                )
            },
            TC_ACT_OK,
        ),
    ];
    let mut program = CaptureProgram::load(&KernelConfig {
        options: KernelConfig::DROP_MTA_PACKETS,
        ..KernelConfig::default()
    });
    program.heartbeat(0);
    let mut shot = 0;
    for (i, (name, v6, flow, frame, returns)) in rows.into_iter().enumerate() {
        let port = 48_000 + i as u16;
        if let Some((dport, to)) = flow {
            let key = if v6 {
                flow_key_v6(port, dport)
            } else {
                flow_key_v4(port, dport)
            };
            if dport == 25 {
                // The flow as the kernel tracks it: its SYN and EHLO seen (gated), then the
                // daemon's verdict written into FLOWS.
                let flow = if v6 { Flow::v6(port) } else { Flow::v4(port) };
                let [syn, ehlo] = syn_then(&flow, b"EHLO a.example\r\n", |f| f);
                assert_eq!(step(&mut program, syn), (XDP_PASS, 0), "{name}: SYN");
                assert_eq!(step(&mut program, ehlo), (XDP_PASS, 1), "{name}: EHLO");
                program.set_phase(&key, to);
            } else {
                program.track(&key, to);
            }
        }
        let before = program.counter(Counter::CondemnedDropped);
        assert_eq!(program.run_egress(&frame(port)), returns, "{name}: action");
        let counted = u64::from(returns == TC_ACT_SHOT);
        assert_eq!(
            program.counter(Counter::CondemnedDropped),
            before + counted,
            "{name}: condemned_dropped"
        );
        shot += counted;
    }
    assert_eq!(shot, 8, "rows shot");
    assert_eq!(program.counter(Counter::CondemnedDropped), shot);
}

/// Runs fresh flows' SYN and EHLO without ever draining the ring buffer until a reservation
/// fails. Returns the flows whose EHLO was reported and the flow whose EHLO could not be.
/// Every frame must pass (a captured HELO that is not pipelined is not held).
fn fill_the_ring_buffer(program: &mut CaptureProgram) -> (Vec<Flow>, Flow) {
    // A record holds the event's 72-byte header and the 23 bytes of the EHLO (8 more of the
    // ring's own, rounded up to 8): 1 MiB holds about 10,000.
    let mut reported = Vec::new();
    for port in 40_000..60_000u16 {
        let flow = Flow::v4(port);
        assert_eq!(
            program.run(&flow.syn().bytes(), 1).return_value,
            XDP_PASS,
            "flow {port}: SYN"
        );
        let failed = program.counter(Counter::RingbufReserveFailed);
        let action = program
            .run(&flow.data(0, FULL_EHLO).bytes(), 1)
            .return_value;
        assert_eq!(action, XDP_PASS, "flow {port}: its EHLO segment");
        if program.counter(Counter::RingbufReserveFailed) > failed {
            return (reported, flow);
        }
        reported.push(flow);
    }
    panic!(
        "{} EHLO events written and the ring buffer still not full",
        reported.len()
    );
}

/// The line scanner reads whole words, the last one partly past the copied bytes, into
/// whatever the capture before left in the per-CPU scratch event: an LF there must not end a
/// line. Each short capture follows one of 512 LFs on another flow.
#[test]
fn stale_scratch_bytes_never_end_a_line() {
    let mut program = CaptureProgram::load(&KernelConfig::default());
    let lfs = [b'\n'; 512];
    for port in (50_000..53_600u16).step_by(2) {
        let flow = Flow::v4(port);
        program.run(&flow.syn().bytes(), 1);
        program.run(&flow.data(0, &lfs).bytes(), 1);
        let name_len = usize::from(port / 2 % 40) + 1;
        let unfinished = format!("EHLO {}", "a".repeat(name_len)).into_bytes();
        let flow = Flow::v4(port + 1);
        program.run(&flow.syn().bytes(), 1);
        program.run(&flow.data(0, &unfinished).bytes(), 1);
        let events = program.drain();
        assert_eq!(
            events.len(),
            2,
            "flows {port} and {}: an event each",
            port + 1
        );
        assert_eq!(events[1].payload(), unfinished.as_slice());
        assert_eq!(
            events[1].flags,
            0,
            "flow {}: `{}` has no line end yet",
            port + 1,
            String::from_utf8_lossy(&unfinished)
        );
    }
}

const FULL_EHLO: &[u8] = b"EHLO mail.example.net\r\n";

/// The segments a client sends after its EHLO, at their stream offsets.
fn after_ehlo(flow: &Flow) -> Vec<Frame> {
    let mut offset = FULL_EHLO.len() as u32;
    let mut segments = Vec::new();
    let body = [b'x'; 600];
    let lines: [&[u8]; 6] = [
        b"MAIL FROM:<alice@example.net>\r\n",
        b"RCPT TO:<bob@example.org>\r\n",
        b"DATA\r\n",
        &body,
        &body,
        b"\r\n.\r\nQUIT\r\n",
    ];
    for line in lines {
        segments.push(flow.data(offset, line));
        offset += line.len() as u32;
    }
    segments
}

/// Fail-open on a full ring buffer: the segment whose event cannot be written passes, counted
/// in `RingbufReserveFailed` (`helo_filter_ringbuf_dropped_total`), and its flow, never
/// reported, is not gated: its next payload segment passes, while the ring is still full and
/// once the daemon has drained it, where a reported flow's is held (the gate is on: the
/// heartbeat is fresh).
#[test]
fn a_full_ring_buffer_fails_open() {
    let mut program = CaptureProgram::load(&KernelConfig::default());
    program.heartbeat(0);
    let (reported, lost) = fill_the_ring_buffer(&mut program);
    assert_eq!(program.counter(Counter::RingbufReserveFailed), 1);
    program.heartbeat(0);
    let lost_key = flow_key_v4(lost.port, 25);
    assert_ne!(
        program.phase(&lost_key),
        Some(phase::GATED),
        "the flow whose EHLO was not reported is gated"
    );
    let segments = after_ehlo(&lost);
    let (mail, rcpt) = (&segments[0], &segments[1]);
    // The contrast: a reported flow's MAIL FROM waits for its verdict.
    let last = reported
        .last()
        .expect("flows reported before the ring filled");
    let reported_mail = after_ehlo(last).remove(0);
    assert_eq!(
        program.run(&reported_mail.bytes(), 1).return_value,
        XDP_DROP,
        "a reported flow's next segment is held"
    );
    assert_eq!(program.counter(Counter::GateHeld), 1);
    assert_eq!(
        program.run(&mail.bytes(), 1).return_value,
        XDP_PASS,
        "the unreported flow's next segment, the ring still full"
    );
    // The daemon catches up: the reported flows' EHLOs, nothing of the lost flow.
    let events = program.drain();
    assert_eq!(events.len(), reported.len(), "events drained");
    assert!(
        events
            .iter()
            .all(|e| e.key.sport != lost.port && e.flags == HELO_DONE && e.seq == DATA),
        "only the reported flows' EHLO lines"
    );
    assert_eq!(
        program.run(&rcpt.bytes(), 1).return_value,
        XDP_PASS,
        "the unreported flow's next segment, the ring drained"
    );
    assert_eq!(program.counter(Counter::GateHeld), 1, "nothing else held");
}

/// A flow whose EHLO event was lost to a full ring buffer is never judged (the daemon never
/// saw its EHLO), so none of its segments may wait for a verdict: its whole session passes
/// (the daemon draining the ring meanwhile).
#[test]
fn a_flow_whose_ehlo_event_was_lost_is_never_held() {
    let mut program = CaptureProgram::load(&KernelConfig::default());
    program.heartbeat(0);
    let (_, lost) = fill_the_ring_buffer(&mut program);
    for (i, segment) in after_ehlo(&lost).into_iter().enumerate() {
        program.heartbeat(0);
        let action = program.run(&segment.bytes(), 1).return_value;
        // The daemon drains as it goes.
        program.drain();
        assert_eq!(action, XDP_PASS, "segment {i} after the lost EHLO is held");
    }
    assert_eq!(program.counter(Counter::GateHeld), 0);
}

/// Action `reply`: once the daemon condemned a flow with it (`CONDEMNED_REPLY` written into
/// `FLOWS`), each client segment that carries data or a FIN is dropped and reported whole,
/// from its TCP header on (`CLIENT_SEGMENT`), for the daemon to answer — a retransmission
/// again, since its answer may have been lost; a bare ACK is dropped unreported. At egress
/// only the RST of the MTA's destroyed socket is shot, and reported (`MTA_RESET`). IPv4 and IPv6, with VLAN tags, IPv4
/// options and an IPv6 extension header moving the TCP header.
#[test]
fn flows_condemned_with_reply_report_each_segment_for_the_answer() {
    const MAIL: &[u8] = b"MAIL FROM:<a@example.net>\r\n";
    let cases: [(&str, bool, Wrap, usize); 4] = [
        ("ipv4", false, |f| f, 14 + 20),
        ("ipv6", true, |f| f, 14 + 40),
        (
            "vlan and ipv4 options",
            false,
            |f| f.vlan(ETH_P_8021Q, 7).ipv4_options(&[1, 1, 1, 1]),
            18 + 24,
        ),
        (
            "qinq and an ipv6 extension header",
            true,
            |f| {
                f.vlan(ETH_P_8021AD, 8)
                    .vlan(ETH_P_8021Q, 9)
                    .ipv6_extension(IPV6_DEST_OPTS, 1)
            },
            22 + 40 + 16,
        ),
    ];
    let mut program = CaptureProgram::load(&KernelConfig::default());
    program.heartbeat(0);
    for (i, (name, v6, wrap, tcp_at)) in cases.into_iter().enumerate() {
        let port = 49_000 + i as u16;
        let flow = if v6 { Flow::v6(port) } else { Flow::v4(port) };
        let [syn, ehlo] = syn_then(&flow, b"EHLO localhost\r\n", wrap);
        assert_eq!(step(&mut program, syn), (XDP_PASS, 0), "{name}: SYN");
        assert_eq!(step(&mut program, ehlo), (XDP_PASS, 1), "{name}: EHLO");
        let key = if v6 {
            flow_key_v6(port, 25)
        } else {
            flow_key_v4(port, 25)
        };
        program.set_phase(&key, phase::CONDEMNED_REPLY);
        let dropped = program.counter(Counter::CondemnedDropped);

        let mail = wrap(flow.data(16, MAIL)).bytes();
        for attempt in ["sent", "retransmitted"] {
            assert_eq!(
                program.run(&mail, 1).return_value,
                XDP_DROP,
                "{name}: MAIL FROM {attempt}"
            );
            let events = program.drain();
            assert_eq!(events.len(), 1, "{name}: MAIL FROM {attempt}: one report");
            let event = &events[0];
            assert_eq!(event.flags, flags::CLIENT_SEGMENT, "{name}");
            assert_eq!(event.key, key, "{name}");
            assert_eq!(event.seq, DATA + 16, "{name}");
            assert_eq!(event.stream_start_seq, DATA, "{name}");
            assert_eq!(usize::from(event.wire_len), MAIL.len(), "{name}");
            assert_eq!(
                event.payload(),
                &mail[tcp_at..],
                "{name}: the report is the segment from its TCP header on"
            );
        }
        let ack = wrap(flow.frame(DATA + 16, ACK, b"")).bytes();
        assert_eq!(
            step_bytes(&mut program, &ack),
            (XDP_DROP, 0),
            "{name}: bare ACK"
        );
        let fin = wrap(flow.frame(DATA + 16, FIN | ACK, b"")).bytes();
        assert_eq!(step_bytes(&mut program, &fin), (XDP_DROP, 1), "{name}: FIN");
        assert_eq!(
            program.counter(Counter::CondemnedDropped),
            dropped + 4,
            "{name}: every client segment dropped and counted"
        );

        // At egress: the MTA's reply to the HELO leaves (the client then sends the command
        // the daemon answers), and so do the daemon's marked segments, its RSTs included;
        // the RST of the MTA's destroyed socket is shot.
        let mta_reply = wrap(from_mta(port, v6, PSH | ACK, b"250 mx.example.org\r\n")).bytes();
        let answer = wrap(from_mta(port, v6, PSH | ACK | FIN, b"550 5.7.1 no\r\n")).bytes();
        let rst = wrap(from_mta(port, v6, RST | ACK, b"")).bytes();
        for (what, frame, mark, returns) in [
            ("the MTA's reply", &mta_reply, 0, TC_ACT_OK),
            ("the daemon's answer", &answer, REPLY_MARK, TC_ACT_OK),
            ("the daemon's RST", &rst, REPLY_MARK, TC_ACT_OK),
            ("the destroyed socket's RST", &rst, 0, TC_ACT_SHOT),
            ("a RST marked otherwise", &rst, REPLY_MARK + 1, TC_ACT_SHOT),
        ] {
            assert_eq!(
                program.run_egress_marked(frame, mark),
                returns,
                "{name}: {what}"
            );
        }
        assert_eq!(
            program.counter(Counter::CondemnedDropped),
            dropped + 6,
            "{name}: the two RSTs shot counted"
        );
        // Each RST shot is reported with the MTA's positions and its TCP header, keyed by
        // the client's flow: whether the MTA had answered the HELO.
        let resets = program.drain();
        assert_eq!(resets.len(), 2, "{name}: the RSTs shot are reported");
        for reset in &resets {
            assert_eq!(reset.flags, flags::MTA_RESET, "{name}");
            assert_eq!(reset.key, key, "{name}");
            assert_eq!((reset.seq, reset.ack), (7000, 1), "{name}");
            assert_eq!(reset.stream_start_seq, DATA, "{name}");
            assert_eq!(reset.wire_len, 0, "{name}");
            assert_eq!(reset.payload(), &rst[tcp_at..], "{name}: its TCP header");
        }
    }
}

/// Runs raw frame bytes and returns the action and the number of events they produced.
fn step_bytes(program: &mut CaptureProgram, frame: &[u8]) -> (u32, usize) {
    let action = program.run(frame, 1).return_value;
    (action, program.drain().len())
}
