//! End to end, the known-good cache (`--known-good-after`): a source whose sessions passed
//! is no longer gated, so a client that sends its next command the instant it reads the
//! EHLO reply is not held until TCP retransmits it; its HELO is still judged, and a reject
//! of it still acted on.

use std::{
    io::{BufRead as _, ErrorKind, Write as _},
    net::SocketAddr,
    time::{Duration, Instant},
};

use helo_filter_tests::e2e::*;
use xtask::{
    daemon::Daemon,
    sessions::{self, Greeting},
};

/// A raw client's EHLO, its reply read whole, then MAIL FROM sent at once: how long the
/// MAIL FROM's reply took, and what it was (`None`: the connection ended).
fn zero_rtt_mail_from(
    lab: &xtask::lab::Lab,
    client: SocketAddr,
    helo: &str,
) -> (Duration, Option<String>) {
    let (mut stream, mut reader) = raw_ehlo(lab, client, helo);
    let sent = Instant::now();
    stream
        .write_all(b"MAIL FROM:<a@example.net>\r\n")
        .expect("MAIL FROM");
    let mut reply = String::new();
    let read = reader.read_line(&mut reply);
    let took = sent.elapsed();
    match read {
        Ok(n) if n > 0 => (took, Some(reply.trim_end().to_owned())),
        _ => (took, None),
    }
}

/// After two accepted sessions from a source, its third, whose MAIL FROM follows the EHLO
/// reply at once, is answered within 150 ms (a held MAIL FROM waits at least TCP's 200 ms
/// retransmission timeout) and logged as judged; then a bogus HELO from the same source is
/// still cut, with a RST (`reply` falls back: the MAIL FROM may have reached the MTA), and
/// that reject ends the source's standing.
#[test]
fn a_known_good_source_is_not_gated_yet_still_judged() {
    let lab = lab("kg");
    let daemon = Daemon::start(
        &lab,
        &[
            "--known-good-after",
            "2",
            NO_REPUTATION[0],
            NO_REPUTATION[1],
        ],
        false,
    )
    .expect("starting the daemon");
    for port in [52_001, 52_002] {
        let (completed, transcript) =
            sessions::swaks_transcript(&lab, v4(1, port), Greeting::Ehlo, "mail.example.net")
                .expect("swaks");
        assert!(completed, "good session {port}:\n{transcript}");
    }
    wait_for_metric(
        &daemon,
        "helo_filter_known_good_total{event=\"added\"}",
        |v| v >= 1.0,
    );

    let fast = v4(1, 52_003);
    let (took, reply) = zero_rtt_mail_from(&lab, fast, "mail.example.net");
    assert!(
        reply.as_deref().is_some_and(|r| r.starts_with("250")),
        "{fast}: {reply:?}"
    );
    assert!(
        took < Duration::from_millis(150),
        "{fast}: MAIL FROM answered after {took:?}: held by the gate"
    );
    let line = verdict_line(&daemon, fast);
    assert!(line.contains(" verdict=accept "), "{line}");

    let bogus = v4(1, 52_004);
    let (stream, mut reader) = raw_connect(&lab, bogus);
    (&stream).write_all(b"EHLO localhost\r\n").expect("EHLO");
    let line = verdict_line(&daemon, bogus);
    assert!(
        line.contains(" verdict=reject ") && line.ends_with("action=rst"),
        "{line}"
    );
    // The end of the connection (the MTA's socket destroyed), after the EHLO's reply if the
    // MTA sent it before the verdict: the EHLO reached the MTA, which answers it at once,
    // and a verdict from the DNS cache can come first. A read that times out (3 s) means
    // the connection is still open.
    let mut rest = String::new();
    let ended = loop {
        match reader.read_line(&mut rest) {
            Ok(0) => break true,
            Ok(_) => {}
            Err(e) => break !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
        }
    };
    assert!(
        ended,
        "{bogus}: the connection is still open after {rest:?}"
    );
    assert!(
        rest.is_empty() || rest.starts_with("250"),
        "{bogus}: {rest:?}"
    );

    let page = wait_for_metric(
        &daemon,
        "helo_filter_known_good_total{event=\"ended\"}",
        |v| v >= 1.0,
    );
    assert_metric(
        &page,
        "helo_filter_known_good_total{event=\"fallback\"}",
        1.0,
    );
    assert_metric(&page, "helo_filter_known_good_total{event=\"ended\"}", 1.0);
    daemon.stop().expect("stopping the daemon");
}
