//! Helpers of the end-to-end tests: labs, client addresses, sessions and the checks
//! several tests share.

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use xtask::{
    daemon::{Daemon, metric_value},
    lab::{self, Lab},
    netns, process,
    sessions::{self, Greeting},
};

use crate::require_root;

/// A lab name unique to this test process and test.
pub fn lab(test: &str) -> Lab {
    require_root();
    let name = format!("hf{}{test}", std::process::id() % 100_000);
    let mut lab = Lab::create(&name).expect("creating the lab");
    lab.start_smtp_sink().expect("starting smtp-sink");
    lab.start_dns().expect("starting dnsmasq");
    lab
}

/// A lab whose MX runs a real Postfix (HELO required, no HELO restrictions of its own)
/// instead of smtp-sink.
pub fn postfix_lab(test: &str) -> Lab {
    require_root();
    let name = format!("hf{}{test}", std::process::id() % 100_000);
    let mut lab = Lab::create(&name).expect("creating the lab");
    lab.start_dns().expect("starting dnsmasq");
    lab.start_postfix("smtpd_helo_required = yes")
        .expect("starting Postfix");
    lab
}

pub fn v4(i: usize, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(lab::client_v4(i)), port)
}

pub fn v6(i: usize, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V6(lab::client_v6(i)), port)
}

pub fn server_of(client: SocketAddr) -> SocketAddr {
    SocketAddr::new(sessions::mx_for(client.ip()), lab::SMTP_PORT)
}

/// Plays each bogus session with swaks and checks it connected and was cut before its
/// MAIL FROM got a 250. A client that could not run or connect fails the test as that,
/// with swaks's error (never as a reset).
pub fn assert_reset_before_mail_from(lab: &Lab, bogus: &[(SocketAddr, Greeting, &str)]) {
    for &(client, greeting, name) in bogus {
        let run = sessions::swaks_run(lab, client, greeting, name)
            .unwrap_or_else(|e| panic!("{name}: {e:#}"));
        let (outcome, transcript) = (&run.outcome, &run.transcript);
        assert!(
            outcome.connected(),
            "{name}: {outcome} (not a reset: the client never connected):\n{transcript}"
        );
        assert!(
            !outcome.completed(),
            "{name}: the session completed:\n{transcript}"
        );
        let after_mail = transcript
            .split_once("-> MAIL FROM")
            .map_or("", |(_, rest)| rest);
        assert!(
            !after_mail
                .lines()
                .any(|l| l.trim_start().starts_with("<-  250")),
            "{name}: MAIL FROM was answered:\n{transcript}"
        );
    }
}

/// Waits (briefly) for `n` sessions logged with `action=rst`, and no more.
pub fn assert_resets_logged(daemon: &Daemon, n: usize) {
    let resets = || {
        daemon
            .lines()
            .iter()
            .filter(|l| l.ends_with("action=rst"))
            .count()
    };
    let _ = process::wait_until(Duration::from_secs(10), || resets() >= n);
    assert_eq!(resets(), n, "{}", daemon.lines().join("\n"));
}

/// The upper bound of the histogram bucket holding quantile `q` (what the closing notes
/// report; Prometheus would interpolate within it).
pub fn bucket_quantile(page: &str, histogram: &str, q: f64) -> String {
    let total = metric_value(page, &format!("{histogram}_count")).unwrap_or(0.0);
    let prefix = format!("{histogram}_bucket{{le=\"");
    page.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(&prefix)?;
            let (le, count) = rest.split_once("\"} ")?;
            Some((le.to_owned(), count.trim().parse::<f64>().ok()?))
        })
        .find(|(_, count)| *count >= q * total)
        .map_or_else(|| "?".to_owned(), |(le, _)| le)
}

pub fn timed_good_session(lab: &Lab, client: SocketAddr) -> Duration {
    let started = std::time::Instant::now();
    sessions::swaks(lab, client, Greeting::Ehlo, "mail.example.net").expect("good session");
    started.elapsed()
}

pub fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values[values.len() / 2]
}

/// Whether `client` can open a TCP connection to the MX's port 25 within a second.
pub fn connects(lab: &Lab, client: SocketAddr) -> bool {
    let server = server_of(client);
    netns::in_netns(&lab.client_ns, move || {
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(client),
            socket2::Type::STREAM,
            None,
        )
        .expect("socket");
        socket.set_reuse_address(true).expect("SO_REUSEADDR");
        socket
            .bind(&SocketAddr::new(client.ip(), 0).into())
            .expect("bind");
        socket
            .connect_timeout(&server.into(), Duration::from_secs(1))
            .is_ok()
    })
}

/// A raw client says `HELO localhost`, reads the reply, waits for the verdict, sends
/// MAIL FROM and reads again: how the connection then fails (`UnexpectedEof` for a FIN),
/// or the reply if there was one (as an error).
pub fn next_command_after_bogus_helo(
    lab: &Lab,
    client: SocketAddr,
) -> Result<std::io::ErrorKind, String> {
    use std::io::{BufRead as _, BufReader, ErrorKind, Write as _};

    let server = server_of(client);
    netns::in_netns(&lab.client_ns, move || -> Result<ErrorKind, String> {
        let stream = sessions::connect_from(client, server).map_err(|e| e.to_string())?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        stream
            .set_read_timeout(Some(Duration::from_secs(3)))
            .map_err(|e| e.to_string())?;
        let mut reader = BufReader::new(stream.try_clone().map_err(|e| e.to_string())?);
        let mut line = String::new();
        reader.read_line(&mut line).map_err(|e| e.to_string())?;
        let mut writer = stream;
        writer
            .write_all(b"HELO localhost\r\n")
            .map_err(|e| e.to_string())?;
        // From here on, how the connection fails is the outcome. A verdict can even beat the
        // MTA's reply to the HELO itself (the condemned flow's reply is then never seen).
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) => return Ok(ErrorKind::UnexpectedEof),
            Ok(_) => {}
            Err(e) => return Ok(e.kind()),
        }
        // Time for the verdict, then the next command (a RST may already have come back for
        // the client's ACK).
        std::thread::sleep(Duration::from_millis(500));
        if let Err(e) = writer.write_all(b"MAIL FROM:<bot@example.net>\r\n") {
            return Ok(e.kind());
        }
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) => Ok(ErrorKind::UnexpectedEof),
            Ok(_) => Err(format!("MAIL FROM was answered: {line}")),
            Err(e) => Ok(e.kind()),
        }
    })
}

/// Scrapes until `series` satisfies `holds` (kernel counters are copied once a second) and
/// returns that page; fails with the last page after 10 s.
pub fn wait_for_metric(daemon: &Daemon, series: &str, holds: impl Fn(f64) -> bool) -> String {
    let mut page = String::new();
    let reached = process::wait_until(Duration::from_secs(10), || {
        page = daemon.scrape().unwrap_or_default();
        metric_value(&page, series).is_some_and(&holds)
    });
    assert!(reached.is_ok(), "{series} never got there:\n{page}");
    page
}

/// A raw good session from `client` (`HELO mail.example.net`, then MAIL FROM): how long
/// the MAIL FROM waited for its reply, which must be a 250 (the gate holds MAIL FROM, never
/// the greeting or the HELO). Every read has a 20 s timeout.
pub fn mail_from_wait(lab: &Lab, client: SocketAddr) -> Duration {
    use std::io::{BufRead as _, BufReader, Write as _};

    let server = server_of(client);
    let waited = netns::in_netns(&lab.client_ns, move || -> anyhow::Result<Duration> {
        let stream = sessions::connect_from(client, server)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(20)))?;
        let mut reader = BufReader::new(stream.try_clone()?);
        let mut writer = stream;
        let mut reply = |what: &str| -> anyhow::Result<String> {
            let mut line = String::new();
            reader
                .read_line(&mut line)
                .map_err(|e| anyhow::anyhow!("reading the reply to {what}: {e}"))?;
            Ok(line.trim_end().to_owned())
        };
        let greeting = reply("the connect")?;
        anyhow::ensure!(greeting.starts_with("220"), "greeting: {greeting:?}");
        writer.write_all(b"HELO mail.example.net\r\n")?;
        let helo = reply("HELO")?;
        anyhow::ensure!(helo.starts_with("250"), "HELO reply: {helo:?}");
        let sent = std::time::Instant::now();
        writer.write_all(b"MAIL FROM:<alice@example.net>\r\n")?;
        let mail = reply("MAIL FROM")?;
        let waited = sent.elapsed();
        anyhow::ensure!(mail.starts_with("250"), "MAIL FROM reply: {mail:?}");
        writer.write_all(b"QUIT\r\n")?;
        Ok(waited)
    });
    waited.unwrap_or_else(|e| panic!("raw session from {client}: {e:#}"))
}

/// Daemon arguments that put reputation out of the way, for tests that are not about it:
/// every IPv6 lab client shares one /64, and a few rejects in one test would otherwise deny
/// a source the next check needs.
pub const NO_REPUTATION: [&str; 2] = ["--reputation-threshold", "1000"];
