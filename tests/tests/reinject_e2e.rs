//! End to end, the re-injection of held segments: a client that sends MAIL FROM the instant
//! it reads the EHLO reply, before the verdict, has that command held by the gate; at the
//! accept the daemon hands it to the MTA, which answers it within 5 ms of the verdict,
//! where without re-injection it waits for the client's retransmission. A later
//! retransmission of it is a duplicate that TCP discards: the session goes on in step.
//!
//! The verdicts are made slow on purpose, so that every MAIL FROM is held: the lab's DNS
//! server is replaced by a UDP socket that never answers and the DNS deadline is 300 ms,
//! so each verdict accepts (`dns_tempfail`) 300 ms after its HELO.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::{IpAddr, SocketAddr, TcpStream},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    time::{Duration, Instant},
};

use helo_filter::pipeline::segment::around_tcp;
use helo_filter_tests::e2e::*;
use xtask::{
    daemon::{Daemon, metric_value},
    lab::Lab,
    netns,
};

const VERDICT_DELAY: Duration = Duration::from_millis(300);
/// The bound: from the verdict to the MTA's answer to the held command.
const DELIVERED_WITHIN: Duration = Duration::from_millis(5);
const REINJECTED: &str = "helo_filter_held_segments_total{fate=\"reinjected\"}";
const VERDICT_SECONDS: &str = "helo_filter_helo_to_verdict_seconds_sum";

/// A fast client's session up to its MAIL FROM's reply.
struct FastSession {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
    /// When the EHLO was written.
    helo_sent: Instant,
    /// When the MAIL FROM's reply was read.
    answered: Instant,
    reply: String,
}

impl FastSession {
    /// Connects from `client`, sends EHLO, reads its reply, sends MAIL FROM at once and
    /// reads that reply.
    fn play(lab: &Lab, client: SocketAddr) -> FastSession {
        let (stream, mut reader, helo_sent) = timed_raw_ehlo(lab, client, "mail.example.net");
        (&stream)
            .write_all(b"MAIL FROM:<alice@example.net>\r\n")
            .expect("MAIL FROM");
        let mut reply = String::new();
        reader.read_line(&mut reply).expect("the MAIL FROM reply");
        FastSession {
            stream,
            reader,
            helo_sent,
            answered: Instant::now(),
            reply: reply.trim_end().to_owned(),
        }
    }

    /// Sends `command` and reads one reply line.
    fn command(&mut self, command: &str) -> String {
        (&self.stream)
            .write_all(format!("{command}\r\n").as_bytes())
            .unwrap_or_else(|e| panic!("{command}: {e}"));
        let mut reply = String::new();
        self.reader
            .read_line(&mut reply)
            .unwrap_or_else(|e| panic!("the reply to {command}: {e}"));
        reply.trim_end().to_owned()
    }
}

/// The daemon with slow verdicts (against [`silence_dns`]); `extra` arguments on top.
fn start(lab: &Lab, extra: &[&str]) -> Daemon {
    let config = config_file(
        lab,
        &format!("[dns]\ndeadline_ms = {}\n", VERDICT_DELAY.as_millis()),
    );
    let mut args = vec!["--config", &config, NO_REPUTATION[0], NO_REPUTATION[1]];
    args.extend_from_slice(extra);
    Daemon::start(lab, &args, false).expect("starting the daemon")
}

/// A fast session from `client`, with the verdict's time read from the daemon's
/// HELO→verdict histogram (its sum grows by this session's latency alone): how long after
/// the verdict the MAIL FROM was answered, and the session.
fn timed_from_verdict(lab: &Lab, daemon: &Daemon, client: SocketAddr) -> (Duration, FastSession) {
    let sum = |page: &str| metric_value(page, VERDICT_SECONDS).unwrap_or(0.0);
    let before = sum(&daemon.scrape().expect("scrape"));
    let session = FastSession::play(lab, client);
    let page = wait_for_metric(daemon, VERDICT_SECONDS, |v| v > before);
    let to_verdict = Duration::from_secs_f64(sum(&page) - before);
    // The HELO reached the kernel after it was written: the verdict came no earlier than
    // this, so the figure can only overstate the wait.
    let verdict = session.helo_sent + to_verdict;
    (session.answered.saturating_duration_since(verdict), session)
}

/// With re-injection (the default), each held MAIL FROM is answered within 5 ms of its
/// verdict, over IPv4 and IPv6, and counted; with `--no-reinject` it waits for the
/// client's next retransmission after the verdict (they come 200 ms and more apart), here
/// taken as at least 50 ms later.
#[test]
fn a_held_command_reaches_the_mta_at_the_verdict() {
    let mut lab = lab("ri");
    let _silent = silence_dns(&mut lab);
    let daemon = start(&lab, &[]);
    for (n, client) in [v4(0, 53_001), v6(0, 53_002)].into_iter().enumerate() {
        let (after_verdict, session) = timed_from_verdict(&lab, &daemon, client);
        assert!(
            session.reply.starts_with("250"),
            "{client}: {}",
            session.reply
        );
        let page = wait_for_metric(&daemon, REINJECTED, |v| v >= (n + 1) as f64);
        assert_eq!(
            metric_value(&page, REINJECTED),
            Some((n + 1) as f64),
            "one segment re-injected per session"
        );
        eprintln!("{client}: MAIL FROM answered {after_verdict:?} after the verdict");
        assert!(
            after_verdict <= DELIVERED_WITHIN,
            "{client}: the held MAIL FROM was answered {after_verdict:?} after the verdict"
        );
    }
    daemon.stop().expect("stopping the daemon");

    let daemon = start(&lab, &["--no-reinject"]);
    let client = v4(1, 53_003);
    let (after_verdict, session) = timed_from_verdict(&lab, &daemon, client);
    assert!(
        session.reply.starts_with("250"),
        "{client}: {}",
        session.reply
    );
    eprintln!("--no-reinject: MAIL FROM answered {after_verdict:?} after the verdict");
    assert!(
        after_verdict >= Duration::from_millis(50),
        "{client}: without re-injection the MAIL FROM was answered {after_verdict:?} after \
         the verdict: no retransmission comes that soon, so the gate cannot have held it"
    );
    let page = daemon.scrape().expect("scrape");
    assert_eq!(metric_value(&page, REINJECTED), Some(0.0), "{page}");
    daemon.stop().expect("stopping the daemon");
}

/// The client's MAIL FROM, captured as it left, is sent again after the re-injected copy
/// was answered (a retransmission that crossed the MTA's ACK): the MTA's TCP counts it as
/// old data and drops it (TcpExt counters in its namespace), and the session goes on in
/// step: RCPT TO gets 250, DATA 354, the message 250, QUIT 221. Had the duplicate reached
/// the MTA, its extra reply would have shifted every one after it.
#[test]
fn a_later_retransmission_of_a_re_injected_command_is_harmless() {
    let mut lab = lab("rd");
    let _silent = silence_dns(&mut lab);
    let daemon = start(&lab, &[]);
    let client = v4(0, 53_011);
    let capture = netns::in_netns(&lab.client_ns.clone(), {
        let iface = lab.client_iface.clone();
        move || PacketSocket::bind(&iface)
    });
    let mut session = FastSession::play(&lab, client);
    assert!(session.reply.starts_with("250"), "{}", session.reply);
    wait_for_metric(&daemon, REINJECTED, |v| v >= 1.0);
    let sent = capture
        .find_frame(|frame| tcp_payload(frame, client).is_some_and(|p| p.starts_with(b"MAIL")))
        .expect("the client's MAIL FROM, captured as it left");

    let discarded_before = old_data_dropped(&lab);
    capture.send(&with_full_checksum(&sent, client, server_of(client)));
    let reached = xtask::process::wait_until(Duration::from_secs(5), || {
        old_data_dropped(&lab) > discarded_before
    });
    assert!(
        reached.is_ok(),
        "the duplicate never reached the MTA's TCP as old data"
    );
    for (command, expected) in [
        ("RCPT TO:<bob@example.org>", "250"),
        ("DATA", "354"),
        ("Subject: t\r\n\r\nhello\r\n.", "250"),
        ("QUIT", "221"),
    ] {
        let reply = session.command(command);
        assert!(
            reply.starts_with(expected),
            "{command:?} got {reply:?}, not {expected}: the duplicate MAIL FROM was answered"
        );
    }
    daemon.stop().expect("stopping the daemon");
}

/// Segments the MTA's TCP dropped as already received: caught by PAWS (an old timestamp)
/// or as old data, the two ways a duplicate can go.
fn old_data_dropped(lab: &Lab) -> u64 {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &lab.mx_ns, "cat", "/proc/net/netstat"])
        .output()
        .expect("reading the MX namespace's TCP counters");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    let mut total = 0;
    while let (Some(names), Some(values)) = (lines.next(), lines.next()) {
        if !names.starts_with("TcpExt:") {
            continue;
        }
        for (name, value) in names.split_whitespace().zip(values.split_whitespace()) {
            if matches!(name, "PAWSEstab" | "DelayedACKLost") {
                total += value.parse::<u64>().unwrap_or(0);
            }
        }
    }
    total
}

/// The TCP payload of an Ethernet frame from `client`'s address and port, if it is one.
fn tcp_payload(frame: &[u8], client: SocketAddr) -> Option<&[u8]> {
    let (tcp, source) = ip_payload(frame)?;
    let sport = u16::from_be_bytes([*tcp.first()?, *tcp.get(1)?]);
    if source != client.ip() || sport != client.port() {
        return None;
    }
    tcp.get(usize::from(tcp.get(12)? >> 4) * 4..)
}

/// An Ethernet frame's TCP segment (header on) and source address.
fn ip_payload(frame: &[u8]) -> Option<(&[u8], IpAddr)> {
    let ip = frame.get(14..)?;
    match u16::from_be_bytes([frame[12], frame[13]]) {
        0x0800 if ip.get(9) == Some(&6) => {
            let header = usize::from(ip[0] & 0x0F) * 4;
            let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
            let source: [u8; 4] = ip.get(12..16)?.try_into().ok()?;
            Some((ip.get(header..total)?, IpAddr::from(source)))
        }
        0x86DD if ip.get(6) == Some(&6) => {
            let total = 40 + usize::from(u16::from_be_bytes([ip[4], ip[5]]));
            let source: [u8; 16] = ip.get(8..24)?.try_into().ok()?;
            Some((ip.get(40..total)?, IpAddr::from(source)))
        }
        _ => None,
    }
}

/// The frame again with its TCP checksum in full: as captured on the sending veth it holds
/// only the partial sum the NIC (here the peer) would have completed.
fn with_full_checksum(frame: &[u8], client: SocketAddr, server: SocketAddr) -> Vec<u8> {
    let (tcp, _) = ip_payload(frame).expect("a TCP frame");
    let mut out = frame[..14].to_vec();
    out.extend_from_slice(&around_tcp(client.ip(), server.ip(), tcp.to_vec()));
    out
}

/// An AF_PACKET socket on one interface: sees the frames it sends and receives, and sends
/// frames out of it.
struct PacketSocket {
    fd: OwnedFd,
}

impl PacketSocket {
    fn bind(iface: &str) -> PacketSocket {
        let protocol = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: plain socket(2); the descriptor is checked and owned below.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(protocol)) };
        assert!(
            fd >= 0,
            "AF_PACKET socket: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: a fresh descriptor, owned from here on.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let name = std::ffi::CString::new(iface).expect("an interface name");
        // SAFETY: a NUL-terminated name.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        assert!(ifindex != 0, "{iface}: {}", std::io::Error::last_os_error());
        // SAFETY: an all-zero sockaddr_ll is valid; the fields that matter are set next.
        let mut address: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        address.sll_family = libc::AF_PACKET as u16;
        address.sll_protocol = protocol;
        address.sll_ifindex = ifindex as i32;
        // SAFETY: `address` is a sockaddr_ll of the length given.
        let bound = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&raw const address).cast(),
                size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        assert!(
            bound == 0,
            "binding to {iface}: {}",
            std::io::Error::last_os_error()
        );
        let timeout = libc::timeval {
            tv_sec: 0,
            tv_usec: 200_000,
        };
        // SAFETY: SO_RCVTIMEO takes a timeval of the length given.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&raw const timeout).cast(),
                size_of::<libc::timeval>() as u32,
            )
        };
        PacketSocket { fd }
    }

    /// The first queued frame that `wanted` accepts (the queue read until it is empty).
    fn find_frame(&self, wanted: impl Fn(&[u8]) -> bool) -> Option<Vec<u8>> {
        let mut buffer = [0u8; 2048];
        loop {
            // SAFETY: `buffer` has the length given.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    buffer.as_mut_ptr().cast(),
                    buffer.len(),
                    0,
                )
            };
            if n <= 0 {
                return None;
            }
            let frame = &buffer[..n as usize];
            if wanted(frame) {
                return Some(frame.to_vec());
            }
        }
    }

    fn send(&self, frame: &[u8]) {
        // SAFETY: `frame` has the length given.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        assert_eq!(
            n,
            frame.len() as isize,
            "sending the duplicate: {}",
            std::io::Error::last_os_error()
        );
    }
}
