//! Per-packet cost of the capture program against an XDP program that only passes,
//! measured side by side in one run through BPF_PROG_TEST_RUN (the kernel's own timing).
//!
//! Fixed frames run with `repeat` (the kernel averages over the repeats). The HELO
//! capture is measured on its real path: a fresh flow for every run (its SYN first, not
//! timed) and the ring buffer drained after each run, so no run hits the ring-full
//! fallback; those runs use `repeat = 1`, and the baseline is run the same way on the
//! same frames.

use std::time::Duration;

use helo_filter_common::KernelConfig;
use helo_filter_tests::{
    packet::{ACK, Frame, PSH, SYN, arp},
    xdp::{BaselineProgram, CaptureProgram},
};

const REPEAT: u32 = 1_000_000;
const ROUNDS: usize = 5;
const FRESH_FLOWS: u16 = 20_000;

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn ns(d: Duration) -> f64 {
    d.as_secs_f64() * 1e9
}

fn main() {
    let mut capture = CaptureProgram::load(&KernelConfig::default());
    let mut baseline = BaselineProgram::load();
    println!("XDP per-packet cost (BPF_PROG_TEST_RUN), median of {ROUNDS} rounds");
    println!(
        "{:<62} {:>12} {:>12} {:>8}",
        "frame", "capture ns", "baseline ns", "ratio"
    );

    // A flow whose HELO was already captured: its later segments take the lookup path.
    let accepted_port = 50_000;
    capture.run(&Frame::tcp4(accepted_port, 25, 1000, SYN, b"").bytes(), 1);
    capture.run(
        &Frame::tcp4(accepted_port, 25, 1001, PSH | ACK, b"EHLO a.example\r\n").bytes(),
        1,
    );
    capture.drain();

    let fixed: [(&str, Vec<u8>); 4] = [
        ("non-IP frame (ARP)", arp()),
        (
            "TCP to another port (443)",
            Frame::tcp4(50_001, 443, 1, PSH | ACK, &[0u8; 64]).bytes(),
        ),
        (
            "SMTP data segment of an accepted flow",
            Frame::tcp4(
                accepted_port,
                25,
                1017,
                PSH | ACK,
                b"MAIL FROM:<a@example.net>\r\n",
            )
            .bytes(),
        ),
        (
            "SMTP segment of an unknown flow (no SYN seen)",
            Frame::tcp4(50_002, 25, 1, PSH | ACK, b"EHLO a.example\r\n").bytes(),
        ),
    ];
    for (name, frame) in &fixed {
        let mut ours = Vec::new();
        let mut base = Vec::new();
        for _ in 0..ROUNDS {
            ours.push(ns(capture.run(frame, REPEAT).duration));
            base.push(ns(baseline.run(frame, REPEAT).duration));
        }
        report(
            &format!("{name}, repeat {REPEAT}"),
            median(ours),
            median(base),
        );
    }
    capture.drain();

    let mut ours = Vec::new();
    let mut base = Vec::new();
    for i in 0..FRESH_FLOWS {
        let port = 10_000 + i;
        capture.run(&Frame::tcp4(port, 25, 1000, SYN, b"").bytes(), 1);
        let helo = Frame::tcp4(port, 25, 1001, PSH | ACK, b"EHLO mail.example.net\r\n").bytes();
        ours.push(ns(capture.run(&helo, 1).duration));
        base.push(ns(baseline.run(&helo, 1).duration));
        assert_eq!(
            capture.drain().len(),
            1,
            "every fresh flow's HELO is captured"
        );
    }
    report(
        &format!("HELO capture, fresh flow per run ({FRESH_FLOWS} runs, repeat 1)"),
        median(ours),
        median(base),
    );
}

fn report(name: &str, ours: f64, base: f64) {
    println!("{name:<62} {ours:>12.1} {base:>12.1} {:>8.2}", ours / base);
}
