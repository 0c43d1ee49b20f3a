//! Per-packet cost of the capture program against an XDP program that only passes, measured
//! side by side in one run through BPF_PROG_TEST_RUN (the kernel's own timing). Figures go to
//! `--out FILE` as JSON.
//!
//! Fixed frames run with `repeat` (the kernel averages over the repeats). Two paths cannot:
//! the HELO capture is measured on its real path, a fresh flow for every run (its SYN first,
//! not timed) with the ring buffer drained after each run, so no run hits the ring-full
//! fallback; and the condemned flow's RST rewrites the frame in place, which a repeat would
//! run again on the rewritten frame. Those use `repeat = 1`, and their baseline is run the
//! same way on the same frames.

use std::{
    net::{IpAddr, Ipv6Addr},
    time::Duration,
};

use helo_filter_common::{KernelConfig, phase};
use helo_filter_tests::{
    packet::{ACK, CLIENT_V6, Frame, PSH, SYN, arp, flow_key_v4},
    xdp::{BaselineProgram, CaptureProgram, XDP_DROP, XDP_PASS, XDP_TX},
};
use ipnet::{IpNet, Ipv6Net};
use xtask::bench::{
    BenchArgs,
    figure::{Figure, Goal},
};

/// Fresh flows captured between two drains of the ring buffer.
const CAPTURE_BATCH: u16 = 100;

const TC_ACT_OK: u32 = 0;
const BASELINE: &str = "empty XDP program";

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn ns(d: Duration) -> f64 {
    d.as_secs_f64() * 1e9
}

struct Bench {
    capture: CaptureProgram,
    baseline: BaselineProgram,
    repeat: u32,
    rounds: usize,
    single_runs: u16,
}

impl Bench {
    /// Median over the rounds of the per-packet time of `frame` with `repeat`, and the
    /// baseline's; checks the action.
    fn fixed(&mut self, frame: &[u8], action: u32) -> (f64, f64) {
        let mut ours = Vec::new();
        let mut base = Vec::new();
        for _ in 0..self.rounds {
            // A verdict only holds while the daemon is alive.
            self.capture.heartbeat(0);
            let run = self.capture.run(frame, self.repeat);
            assert_eq!(run.return_value, action, "unexpected action");
            ours.push(ns(run.duration));
            base.push(ns(self.baseline.run(frame, self.repeat).duration));
        }
        (median(ours), median(base))
    }

    /// A flow that has sent its SYN and HELO (captured, drained).
    fn open_flow(&mut self, port: u16) {
        self.capture
            .run(&Frame::tcp4(port, 25, 1000, SYN, b"").bytes(), 1);
        let helo = Frame::tcp4(port, 25, 1001, PSH | ACK, b"EHLO a.example\r\n").bytes();
        self.capture.run(&helo, 1);
        self.capture.drain();
    }

    /// A flow condemned by the daemon (`verdict`: a `phase::CONDEMNED*`), and the client's
    /// next segment on it.
    fn condemned(&mut self, port: u16, verdict: u8) -> Vec<u8> {
        self.open_flow(port);
        self.capture.set_phase(&flow_key_v4(port, 25), verdict);
        Frame::tcp4(port, 25, 1017, PSH | ACK, b"MAIL FROM:<a@example.net>\r\n").bytes()
    }
}

fn figure(id: &str, name: &str, (ours, base): (f64, f64), runs: &str) -> Figure {
    Figure::new("kernel", id, name, ours, "ns")
        .against(BASELINE, base)
        .reading(&format!("{runs}."), "")
}

/// A figure whose goal is what the program adds to the empty one (which costs only the
/// test-run loop, about 10 ns, so a ratio would make any work look large).
fn adding_at_most(
    id: &str,
    name: &str,
    times: (f64, f64),
    runs: &str,
    goal: f64,
    why: &str,
) -> Figure {
    let f = figure(id, name, times, runs).goal(Goal::AboveAtMost(goal));
    let reading = f.reading.clone();
    f.reading(&reading, why)
}

fn main() -> anyhow::Result<()> {
    let args = BenchArgs::from_env()?;
    let mut bench = Bench {
        capture: CaptureProgram::load(&KernelConfig::default()),
        baseline: BaselineProgram::load(),
        repeat: if args.quick { 10_000 } else { 1_000_000 },
        rounds: if args.quick { 1 } else { 5 },
        single_runs: if args.quick { 200 } else { 20_000 },
    };
    let fixed_runs = format!(
        "Median of {} rounds of repeat {}",
        bench.rounds, bench.repeat
    );
    let single_runs = format!("Median of {} runs of repeat 1", bench.single_runs);
    let mut out = Vec::new();

    let parsing_first = "before it knows a frame is not its business, the program counts it \
        (per-CPU) and parses Ethernet, VLAN, IP and the TCP ports, then reads its \
        configuration's SMTP ports.";
    out.push(adding_at_most(
        "arp",
        "non-TCP frame (ARP)",
        bench.fixed(&arp(), XDP_PASS),
        &fixed_runs,
        5.0,
        parsing_first,
    ));
    let other_port = Frame::tcp4(50_001, 443, 1, PSH | ACK, &[0u8; 64]).bytes();
    out.push(adding_at_most(
        "tcp_other_port",
        "TCP frame to another port (443)",
        bench.fixed(&other_port, XDP_PASS),
        &fixed_runs,
        10.0,
        parsing_first,
    ));
    let accepted = 50_000;
    bench.open_flow(accepted);
    bench.capture.judge(&flow_key_v4(accepted, 25));
    let data = Frame::tcp4(
        accepted,
        25,
        1017,
        PSH | ACK,
        b"MAIL FROM:<a@example.net>\r\n",
    );
    out.push(adding_at_most(
        "smtp_accepted_flow",
        "SMTP data segment of an accepted flow",
        bench.fixed(&data.bytes(), XDP_PASS),
        &fixed_runs,
        30.0,
        "on top of the parsing, the segment is read into the per-CPU scratch slot and its \
         flow looked up in the flow table (an LRU hash of 40-byte keys), which finds it judged.",
    ));
    let unknown = Frame::tcp4(50_002, 25, 1, PSH | ACK, b"EHLO a.example\r\n").bytes();
    out.push(figure(
        "smtp_unknown_flow",
        "SMTP segment of an unknown flow (no SYN seen)",
        bench.fixed(&unknown, XDP_PASS),
        &fixed_runs,
    ));

    // A fresh flow per run, in batches between drains of the ring buffer: the first
    // capture after a drain finds the reader caught up and wakes it (the ring buffer's
    // adaptive wake-up, which a daemon waiting in epoll needs); the others find records
    // still unread and do not. The two are reported apart.
    let (mut quiet, mut woken, mut base) = (Vec::new(), Vec::new(), Vec::new());
    for batch in 0..bench.single_runs / CAPTURE_BATCH {
        for i in 0..CAPTURE_BATCH {
            let port = 10_000 + batch * CAPTURE_BATCH + i;
            bench
                .capture
                .run(&Frame::tcp4(port, 25, 1000, SYN, b"").bytes(), 1);
            let helo = Frame::tcp4(port, 25, 1001, PSH | ACK, b"EHLO mail.example.net\r\n").bytes();
            let took = ns(bench.capture.run(&helo, 1).duration);
            if i == 0 { &mut woken } else { &mut quiet }.push(took);
            base.push(ns(bench.baseline.run(&helo, 1).duration));
        }
        assert_eq!(
            bench.capture.drain().len(),
            usize::from(CAPTURE_BATCH),
            "every fresh flow's HELO is captured"
        );
    }
    let base = median(base);
    let batches = format!(
        "{single_runs}, in batches of {CAPTURE_BATCH} fresh flows between drains of the ring \
         buffer"
    );
    out.push(
        Figure::new(
            "kernel",
            "helo_capture",
            "HELO capture, a fresh flow per run, without the ring buffer's wake-up",
            median(quiet),
            "ns",
        )
        .against(BASELINE, base)
        .goal(Goal::AtMost(250.0))
        .reading(
            &format!("{batches}: every capture but each batch's first."),
            "a capture looks its flow up, copies the segment with bpf_xdp_load_bytes into a \
             per-CPU scratch event, scans the line for its end (8 bytes a step past the verb), \
             updates the flow's state and copies the event's header and data into the ring \
             buffer (bpf_ringbuf_output); a run of repeat 1 also pays the test-run set-up the \
             baseline pays (the baseline column), which repeat amortises elsewhere. Scanning \
             the packet in place before one copy of the line alone would spare a copy; the \
             helper calls themselves are most of what remains.",
        ),
    );
    out.push(
        Figure::new(
            "kernel",
            "helo_capture_wakeup",
            "HELO capture that wakes the reader (the first after a drain)",
            median(woken),
            "ns",
        )
        .against(BASELINE, base)
        .reading(
            &format!(
                "{batches}: each batch's first capture, whose submit wakes the reader (an \
                 irq_work and the reader's wake-up): what a capture costs on an idle \
                 appliance, where the daemon has always caught up."
            ),
            "",
        ),
    );

    // Lists of a busy appliance: 10,000 deny entries (repeat offenders, /128 each) and 100
    // allow entries (/64 each), none of them the test client's, which is denied alone.
    for i in 0..10_000u128 {
        let offender = u128::from(Ipv6Addr::new(0x2001, 0xdb8, 0xbad, 0, 0, 0, 0, 0)) + i;
        bench.capture.deny(IpNet::from(IpAddr::V6(offender.into())));
    }
    for i in 0..100u16 {
        let partner = Ipv6Addr::new(0x2001, 0xdb8, 0x900d, i, 0, 0, 0, 0);
        bench
            .capture
            .allow(IpNet::V6(Ipv6Net::new(partner, 64).expect("a /64")));
    }
    bench.capture.deny(IpNet::from(IpAddr::V6(CLIENT_V6)));
    let denied_syn = Frame::tcp6(40_000, 25, 1, SYN, b"").bytes();
    out.push(adding_at_most(
        "denied_syn",
        "SYN of a denied source (dropped), 10,000 deny and 100 allow entries loaded",
        bench.fixed(&denied_syn, XDP_DROP),
        &fixed_runs,
        80.0,
        "the SYN costs an allow and a deny lookup in LPM tries, the dearest map lookups.",
    ));

    let next = bench.condemned(50_010, phase::CONDEMNED);
    out.push(figure(
        "condemned_drop",
        "packet of a condemned flow, action drop",
        bench.fixed(&next, XDP_DROP),
        &fixed_runs,
    ));

    let next = bench.condemned(50_011, phase::CONDEMNED_RST);
    let mut ours = Vec::new();
    let mut base = Vec::new();
    for _ in 0..bench.single_runs {
        bench.capture.heartbeat(0);
        let run = bench.capture.run(&next, 1);
        assert_eq!(
            run.return_value, XDP_TX,
            "the condemned flow is answered with a RST"
        );
        ours.push(ns(run.duration));
        base.push(ns(bench.baseline.run(&next, 1).duration));
    }
    out.push(figure(
        "condemned_rst",
        "packet of a condemned flow, action rst (RST built, XDP_TX)",
        (median(ours), median(base)),
        &single_runs,
    ));

    // The TC egress program (actions drop and reply on an MX) sees every packet the MTA
    // sends: an accepted flow's reply to its client, beside the empty TC program.
    let mta_reply = Frame::tcp4(accepted, 25, 5000, PSH | ACK, b"250 2.1.0 Ok\r\n")
        .reversed()
        .bytes();
    let (mut ours, mut base) = (Vec::new(), Vec::new());
    for _ in 0..bench.rounds {
        let run = bench
            .capture
            .run_egress_repeated(&mta_reply, 0, bench.repeat);
        assert_eq!(run.return_value, TC_ACT_OK, "the MTA's reply leaves");
        ours.push(ns(run.duration));
        base.push(ns(bench.baseline.run_tc(&mta_reply, bench.repeat).duration));
    }
    out.push(
        Figure::new(
            "kernel",
            "egress_mta_packet",
            "MTA packet to an accepted client, TC egress program",
            median(ours),
            "ns",
        )
        .against("empty TC program", median(base))
        .reading(
            &format!(
                "{fixed_runs}: the packet's headers parsed, its flow looked up (it is neither \
                 condemned nor a RST to keep back) and let go."
            ),
            "",
        ),
    );

    for f in &out {
        println!(
            "{:<60} {:>9.1} ns {:>9.1} ns {:>7.2}×",
            f.name,
            f.value,
            f.baseline.as_ref().map_or(f64::NAN, |b| b.value),
            f.ratio.unwrap_or(f64::NAN)
        );
    }
    args.write(&out)
}
