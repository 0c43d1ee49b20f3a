//! Helpers of the end-to-end tests: labs, client addresses, sessions and the checks
//! several tests share.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::{IpAddr, SocketAddr, TcpStream, UdpSocket},
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
pub fn unique_name(test: &str) -> String {
    format!("hf{}{test}", std::process::id() % 100_000)
}

/// A lab (client ─ MX running the filter, smtp-sink and the fixture DNS), its name unique to
/// this test process and test.
pub fn lab(test: &str) -> Lab {
    require_root();
    Lab::create_serving(&unique_name(test)).expect("creating the lab")
}

/// A lab whose MX runs a real Postfix (HELO required, no HELO restrictions of its own)
/// instead of smtp-sink.
pub fn postfix_lab(test: &str) -> Lab {
    postfix_lab_with(test, "")
}

/// [`postfix_lab`] with `main_cf_extra` added to the MX Postfix's `main.cf`.
pub fn postfix_lab_with(test: &str, main_cf_extra: &str) -> Lab {
    require_root();
    let mut lab = Lab::create(&unique_name(test)).expect("creating the lab");
    lab.start_dns().expect("starting dnsmasq");
    lab.start_postfix(&format!("smtpd_helo_required = yes\n{main_cf_extra}"))
        .expect("starting Postfix");
    lab
}

/// A lab whose veth pair carries the 802.1Q VLAN `id`, the tags written into the frames
/// that reach the filter ([`Lab::use_vlan`]); smtp-sink and the fixture DNS started.
pub fn vlan_lab(test: &str, id: u16) -> Lab {
    require_root();
    let mut lab = Lab::create(&unique_name(test)).expect("creating the lab");
    lab.use_vlan(id).expect("tagging the lab's link");
    lab.start_smtp_sink().expect("starting smtp-sink");
    lab.start_dns().expect("starting dnsmasq");
    lab
}

/// A gateway lab (client ─ gateway running the filter ─ MX with smtp-sink), its name unique
/// to this test process and test, the fixture DNS where the filter runs.
pub fn gateway_lab(test: &str) -> Lab {
    require_root();
    let mut lab = Lab::create_with_gateway(&unique_name(test)).expect("creating the gateway lab");
    lab.start_smtp_sink().expect("starting smtp-sink");
    lab.start_dns().expect("starting dnsmasq");
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

/// Plays each bogus session with swaks and checks what the client saw: it connected,
/// sent its HELO/EHLO, then the server side went away (a reset, or a close: swaks reports
/// both as "Remote host closed connection unexpectedly") while swaks waited for the reply to
/// that HELO or to its MAIL FROM, which never got a 250. A dropped SYN, a refused connect,
/// an error reply or a timeout fails the test as that, with swaks's transcript.
pub fn assert_reset_before_mail_from(lab: &Lab, bogus: &[(SocketAddr, Greeting, &str)]) {
    for &(client, greeting, name) in bogus {
        let run = sessions::swaks_run(lab, client, greeting, name)
            .unwrap_or_else(|e| panic!("{name}: {e:#}"));
        let (outcome, transcript) = (&run.outcome, &run.transcript);
        let verb = match greeting {
            Greeting::Helo => "HELO",
            Greeting::Ehlo => "EHLO",
        };
        let helo = format!("{verb} {name}");
        let sessions::SwaksOutcome::Cut { after, error } = outcome else {
            panic!("{name} from {client}: {outcome}, not a reset after the {verb}:\n{transcript}");
        };
        assert!(
            transcript
                .lines()
                .any(|l| l.trim_start().strip_prefix("->").map(str::trim) == Some(helo.as_str())),
            "{name} from {client}: its {verb} was never sent:\n{transcript}"
        );
        assert!(
            *after == helo || after.starts_with("MAIL FROM"),
            "{name} from {client}: cut after {after:?}, not after its {verb} or MAIL FROM:\n{transcript}"
        );
        assert!(
            error.contains("Remote host closed connection unexpectedly"),
            "{name} from {client}: {error:?} is not a reset or close by the server:\n{transcript}"
        );
        assert!(
            !mail_from_answered(transcript),
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

/// On an MX: each client's verdict line says its MTA socket was destroyed before the
/// `action` (`rst` or `drop`), and `helo_filter_sock_destroy_total` counts exactly those
/// destroys, none failed or not found.
pub fn assert_sockets_destroyed(daemon: &Daemon, clients: &[SocketAddr], action: &str) {
    let wanted = format!(" destroyed=true action={action}");
    for client in clients {
        let line = verdict_line(daemon, *client);
        assert!(line.ends_with(&wanted), "{client}: {line}");
    }
    let destroyed = "helo_filter_sock_destroy_total{outcome=\"destroyed\"}";
    let page = wait_for_metric(daemon, destroyed, |v| v >= clients.len() as f64);
    assert_eq!(
        metric_value(&page, destroyed),
        Some(clients.len() as f64),
        "{page}"
    );
    for outcome in ["not_found", "failed"] {
        let series = format!("helo_filter_sock_destroy_total{{outcome=\"{outcome}\"}}");
        assert_eq!(metric_value(&page, &series), Some(0.0), "{page}");
    }
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

/// Whether `client` can open a TCP connection to the MX's port 25 within a second (from any
/// port of its address).
pub fn connects(lab: &Lab, client: SocketAddr) -> bool {
    let any_port = SocketAddr::new(client.ip(), 0);
    connect_outcome(lab, any_port, Duration::from_secs(1))
        .0
        .is_ok()
}

/// Connects from `client` (port 0: any port of its address) to its MX with `timeout`: the
/// outcome (the error's kind) and how long it took.
pub fn connect_outcome(
    lab: &Lab,
    client: SocketAddr,
    timeout: Duration,
) -> (Result<(), std::io::ErrorKind>, Duration) {
    let server = server_of(client);
    netns::in_netns(&lab.client_ns, move || {
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(client),
            socket2::Type::STREAM,
            None,
        )
        .expect("socket");
        socket.set_reuse_address(true).expect("SO_REUSEADDR");
        socket.bind(&client.into()).expect("bind");
        let started = std::time::Instant::now();
        let outcome = socket.connect_timeout(&server.into(), timeout);
        (outcome.map_err(|e| e.kind()), started.elapsed())
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

/// Asserts that the scraped `page` has `series` at `expected`.
pub fn assert_metric(page: &str, series: &str, expected: f64) {
    assert_eq!(
        metric_value(page, series),
        Some(expected),
        "{series}:\n{page}"
    );
}

/// Writes `text` as `helo-filter.toml` in the lab's daemon directory (created if needed):
/// its path, for `--config`.
pub fn config_file(lab: &Lab, text: &str) -> String {
    std::fs::create_dir_all(lab.daemon_dir()).expect("the daemon's directory");
    let path = lab.daemon_dir().join("helo-filter.toml");
    std::fs::write(&path, text).expect("writing the configuration");
    path.to_string_lossy().into_owned()
}

/// The reply of action `reply` (the default) to a bogus session's next command.
pub fn reject_reply(reason: &str) -> String {
    format!("550 5.7.1 Access denied - bogus HELO ({reason})")
}

/// swaks from `client` greeting with `EHLO helo`: asserts that its MAIL FROM is refused with
/// `reply` (swaks exits 23, "MAIL refused") and returns the run.
pub fn refused_at_mail_from(
    lab: &Lab,
    client: SocketAddr,
    helo: &str,
    reply: &str,
) -> sessions::SwaksRun {
    let run = sessions::swaks_run(lab, client, Greeting::Ehlo, helo)
        .unwrap_or_else(|e| panic!("{client} {helo}: {e:#}"));
    assert_eq!(
        run.outcome,
        sessions::SwaksOutcome::Refused {
            reply: reply.to_owned()
        },
        "{client} {helo} (exit {:?}):\n{}",
        run.exit,
        run.transcript
    );
    assert_eq!(
        run.exit,
        Some(23),
        "{client} {helo}: not refused at MAIL FROM:\n{}",
        run.transcript
    );
    run
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
    timed_mail_from(lab, client).since_mail_from
}

/// How long a raw good session's MAIL FROM waited for its 250 ([`mail_from_wait`]).
pub struct MailFromTimes {
    /// From the HELO sent: what the gate's deadline, which runs from the HELO, bounds from
    /// below, however slow the MTA's reply to the HELO on a loaded machine.
    pub since_helo: Duration,
    /// From the MAIL FROM sent.
    pub since_mail_from: Duration,
}

/// [`mail_from_wait`], timed from the HELO too.
pub fn timed_mail_from(lab: &Lab, client: SocketAddr) -> MailFromTimes {
    use std::io::{BufRead as _, BufReader, Write as _};

    let server = server_of(client);
    let times = netns::in_netns(&lab.client_ns, move || -> anyhow::Result<MailFromTimes> {
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
        let helo_sent = std::time::Instant::now();
        writer.write_all(b"HELO mail.example.net\r\n")?;
        let helo = reply("HELO")?;
        anyhow::ensure!(helo.starts_with("250"), "HELO reply: {helo:?}");
        let sent = std::time::Instant::now();
        writer.write_all(b"MAIL FROM:<alice@example.net>\r\n")?;
        let mail = reply("MAIL FROM")?;
        let times = MailFromTimes {
            since_helo: helo_sent.elapsed(),
            since_mail_from: sent.elapsed(),
        };
        anyhow::ensure!(mail.starts_with("250"), "MAIL FROM reply: {mail:?}");
        writer.write_all(b"QUIT\r\n")?;
        Ok(times)
    });
    times.unwrap_or_else(|e| panic!("raw session from {client}: {e:#}"))
}

/// Daemon arguments that put reputation out of the way, for tests that are not about it:
/// every IPv6 lab client shares one /64, and a few rejects in one test would otherwise deny
/// a source the next check needs.
pub const NO_REPUTATION: [&str; 2] = ["--reputation-threshold", "1000"];

/// [`NO_REPUTATION`] with action `rst` (the default is `reply`), for the tests of resets.
pub const RST_NO_REPUTATION: [&str; 4] = ["--action", "rst", "--reputation-threshold", "1000"];

/// A raw client's connection from `client` to its MX, the greeting read (3 s read timeout).
/// The socket works from any thread once connected.
pub fn raw_connect(lab: &Lab, client: SocketAddr) -> (TcpStream, BufReader<TcpStream>) {
    let server = server_of(client);
    netns::in_netns(&lab.client_ns, move || -> anyhow::Result<_> {
        let stream = sessions::connect_from(client, server)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(3)))?;
        let mut reader = BufReader::new(stream.try_clone()?);
        let mut greeting = String::new();
        reader.read_line(&mut greeting)?;
        anyhow::ensure!(greeting.starts_with("220"), "greeting: {greeting:?}");
        Ok((stream, reader))
    })
    .unwrap_or_else(|e| panic!("raw client {client}: {e:#}"))
}

/// [`raw_connect`], then `EHLO helo` sent and the MTA's whole 250 reply read.
pub fn raw_ehlo(lab: &Lab, client: SocketAddr, helo: &str) -> (TcpStream, BufReader<TcpStream>) {
    let (stream, reader, _) = timed_raw_ehlo(lab, client, helo);
    (stream, reader)
}

/// [`raw_ehlo`], with when the EHLO was written.
pub fn timed_raw_ehlo(
    lab: &Lab,
    client: SocketAddr,
    helo: &str,
) -> (TcpStream, BufReader<TcpStream>, std::time::Instant) {
    let (mut stream, mut reader) = raw_connect(lab, client);
    let sent = std::time::Instant::now();
    stream
        .write_all(format!("EHLO {helo}\r\n").as_bytes())
        .expect("EHLO");
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).expect("the EHLO reply");
        assert!(line.starts_with("250"), "{client}: EHLO reply {line:?}");
        if line.starts_with("250 ") {
            break;
        }
    }
    (stream, reader, sent)
}

/// Segments the socket has sent so far, retransmissions and bare ACKs included
/// (`tcpi_segs_out`).
pub fn segments_sent(stream: &TcpStream) -> u32 {
    use std::os::fd::AsRawFd as _;

    // SAFETY: tcp_info is plain data, zeroed, and the kernel writes at most `len` bytes.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: a valid socket, and a buffer of the size given.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&raw mut info).cast(),
            &mut len,
        )
    };
    assert_eq!(rc, 0, "TCP_INFO: {}", std::io::Error::last_os_error());
    info.tcpi_segs_out
}

/// The MX's TCP sockets (any state) connected to `client`, as `ss` lists them in the MX's
/// namespace (empty: none). Fails the test if `ss` fails.
pub fn mta_sockets(lab: &Lab, client: SocketAddr) -> String {
    let peer = match client {
        SocketAddr::V4(_) => client.to_string(),
        SocketAddr::V6(v6) => format!("[{}]:{}", v6.ip(), v6.port()),
    };
    let out = lab
        .command_in(&lab.mx_ns, "ss")
        .args(["-Htan", "dst", &peer])
        .output()
        .expect("running ss");
    assert!(
        out.status.success(),
        "ss: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// An nftables counter at the MX interface's ingress hook (after XDP) of the TCP packets
/// from `client`, IPv4 or IPv6, in a table of its own (returned; the lab's namespace goes
/// with it): what XDP let through of that flow. Read it with [`passed`].
pub fn count_passed(lab: &Lab, client: SocketAddr) -> String {
    let table = format!("hf_passed_{}", client.port());
    let family = match client {
        SocketAddr::V4(_) => "ip",
        SocketAddr::V6(_) => "ip6",
    };
    let chain = format!(
        "{{ type filter hook ingress device \"{}\" priority 0; }}",
        lab.mx_iface
    );
    let rule = format!(
        "{family} saddr {} tcp sport {} counter",
        client.ip(),
        client.port()
    );
    for args in [
        format!("add table netdev {table}"),
        format!("add chain netdev {table} in {chain}"),
        format!("add rule netdev {table} in {rule}"),
    ] {
        let out = lab
            .command_in(&lab.mx_ns, "nft")
            .arg(&args)
            .output()
            .expect("running nft");
        assert!(
            out.status.success(),
            "nft {args}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    table
}

/// The packets [`count_passed`]'s counter in `table` saw.
pub fn passed(lab: &Lab, table: &str) -> u64 {
    let out = lab
        .command_in(&lab.mx_ns, "nft")
        .args(["list", "table", "netdev", table])
        .output()
        .expect("running nft");
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_once("counter packets ")
        .and_then(|(_, rest)| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no counter in nft's table {table}: {text}"))
}

/// The daemon's verdict line for `client` (waits up to 15 s for it).
pub fn verdict_line(daemon: &Daemon, client: SocketAddr) -> String {
    let prefix = format!(" client={client} ");
    let find = || {
        daemon
            .lines()
            .into_iter()
            .find(|l| l.contains(&prefix) && l.contains(" verdict="))
    };
    let _ = process::wait_until(Duration::from_secs(15), || find().is_some());
    find().unwrap_or_else(|| {
        panic!(
            "no verdict logged for {client}:\n{}",
            daemon.lines().join("\n")
        )
    })
}

/// Whether a swaks transcript shows a 250 to its MAIL FROM.
pub fn mail_from_answered(transcript: &str) -> bool {
    transcript
        .split_once("-> MAIL FROM")
        .is_some_and(|(_, after)| after.lines().any(|l| l.trim_start().starts_with("<-  250")))
}

/// `helo-filter policy` alone, offline, on the Unix socket `socket`, with the configuration
/// `config` and its metrics on a free local port (returned): the standalone policy service
/// the tests start outside any lab.
pub fn policy_service_command(
    config: &std::path::Path,
    socket: &std::path::Path,
) -> (std::process::Command, SocketAddr) {
    let metrics = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let mut command = std::process::Command::new(xtask::paths::daemon_binary());
    command
        .args(["policy", "--offline", "--listen"])
        .arg(format!("unix:{}", socket.display()))
        .arg("--config")
        .arg(config)
        .args(["--metrics-addr", &metrics.to_string()])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null());
    (command, metrics)
}

/// Runs an operator subcommand against the lab's daemon, checks that it succeeded and
/// returns its stdout.
pub fn cli_ok(lab: &Lab, args: &[&str]) -> String {
    let out = xtask::daemon::cli(lab, args).expect("the CLI runs");
    assert!(
        out.status.success(),
        "helo-filter {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A UDP socket bound to the lab's DNS server address where the filter runs, in place of the
/// fixture DNS server (stopped): it never answers, so every lookup runs to the DNS deadline.
pub fn silence_dns(lab: &mut Lab) -> UdpSocket {
    lab.stop_dns();
    // The stopped server's port can take a moment to be free again.
    let mut bound = Err(std::io::Error::other("never tried"));
    let _ = process::wait_until(Duration::from_secs(5), || {
        bound = netns::in_netns(&lab.filter_ns, || UdpSocket::bind(lab::DNS_SERVER));
        bound.is_ok()
    });
    bound.unwrap_or_else(|e| panic!("binding the silent DNS server {}: {e}", lab::DNS_SERVER))
}
