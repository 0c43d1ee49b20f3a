//! End to end in network namespaces, enforcement: bogus sessions reset (or silenced)
//! against smtp-sink and a real Postfix, on an MX and behind a gateway, over IPv4 and IPv6;
//! denied sources' SYNs dropped or answered with a RST; the verdict gate with fast clients,
//! pipelining bots and a frozen or killed daemon; fail-closed DNS.

use std::{net::SocketAddr, time::Duration};

use helo_filter_tests::e2e::*;
use xtask::{
    daemon::{Daemon, metric_value},
    lab::Lab,
    process,
    sessions::{self, Greeting},
};

/// Enforcing (deployment mx, action rst): each bogus session is reset before its MAIL FROM
/// is answered; a good one completes.
#[test]
fn bogus_sessions_are_reset_before_mail_from_is_answered() {
    let lab = lab("d");
    let daemon = Daemon::start(&lab, &RST_NO_REPUTATION, false).expect("starting the daemon");
    let bogus = [
        (v4(1, 44001), Greeting::Helo, "127.0.0.1"),
        (v6(1, 44002), Greeting::Ehlo, "[192.168.1.1]"),
        (v4(2, 44003), Greeting::Ehlo, "localhost"),
        (v6(3, 44004), Greeting::Helo, "mon-serveur"),
        (v4(4, 44005), Greeting::Ehlo, "fakedomain.xyz"),
    ];
    assert_reset_before_mail_from(&lab, &bogus);
    for (client, greeting, name) in [
        (v4(0, 44006), Greeting::Ehlo, "mail.example.net"),
        (v6(0, 44007), Greeting::Helo, "v6.example.net"),
    ] {
        sessions::swaks(&lab, client, greeting, name).expect("a good session completes");
    }
    // The action is counted before its log line is written: wait for the lines first.
    assert_resets_logged(&daemon, 5);
    let clients: Vec<_> = bogus.iter().map(|&(client, _, _)| client).collect();
    assert_sockets_destroyed(&daemon, &clients, "rst");
    let page = daemon.scrape().expect("scraping");
    let actions = metric_value(&page, "helo_filter_actions_total{action=\"rst\"}");
    assert_eq!(actions, Some(5.0), "{page}");
    let timed = metric_value(&page, "helo_filter_helo_to_action_seconds_count");
    assert_eq!(timed, Some(5.0), "{page}");
    eprintln!(
        "HELO→action: p50 ≤ {} s, p99 ≤ {} s (histogram bucket bounds, 5 resets)",
        bucket_quantile(&page, "helo_filter_helo_to_action_seconds", 0.5),
        bucket_quantile(&page, "helo_filter_helo_to_action_seconds", 0.99)
    );
}

/// The five bogus HELOs against a real Postfix: each session is reset before MAIL FROM is
/// answered, Postfix logs the lost connection and queues nothing; a good session's message
/// is delivered.
#[test]
fn postfix_sees_bogus_sessions_aborted_and_queues_nothing() {
    let lab = postfix_lab("e");
    let daemon = Daemon::start(&lab, &RST_NO_REPUTATION, false).expect("starting the daemon");
    let bogus = [
        (v4(1, 45001), Greeting::Helo, "127.0.0.1"),
        (v4(2, 45002), Greeting::Ehlo, "[192.168.1.1]"),
        (v6(1, 45003), Greeting::Ehlo, "localhost"),
        (v4(3, 45004), Greeting::Helo, "mon-serveur"),
        (v6(4, 45005), Greeting::Ehlo, "fakedomain.xyz"),
    ];
    assert_reset_before_mail_from(&lab, &bogus);
    sessions::swaks(&lab, v4(0, 45006), Greeting::Ehlo, "mail.example.net")
        .expect("the good session completes");

    let postfix = lab.postfix().expect("Postfix runs");
    let delivered = process::wait_until(Duration::from_secs(15), || {
        postfix.log().contains("status=sent")
    });
    let log = postfix.log();
    assert!(
        delivered.is_ok(),
        "the good message was not delivered:\n{log}"
    );
    for (client, greeting, name) in bogus {
        // Nothing after the HELO reached Postfix: the last command it saw was the HELO.
        let ip = format!("[{}]", client.ip());
        let lost = match greeting {
            Greeting::Helo => "lost connection after HELO from ",
            Greeting::Ehlo => "lost connection after EHLO from ",
        };
        assert!(
            log.lines().any(|l| l.contains(lost) && l.contains(&ip)),
            "{name}: Postfix did not log \"{lost}…{ip}\":\n{log}"
        );
        assert!(
            !log.lines()
                .any(|l| l.contains(": client=") && l.contains(&ip)),
            "{name}: Postfix queued mail from {ip}:\n{log}"
        );
    }
    assert_resets_logged(&daemon, 5);
    let clients: Vec<_> = bogus.iter().map(|&(client, _, _)| client).collect();
    assert_sockets_destroyed(&daemon, &clients, "rst");
}

/// The gate in real sessions: swaks sends MAIL FROM the instant the EHLO reply arrives and
/// still completes (the added delay is printed, not asserted); a pipelining bot is cut
/// before its commands reach Postfix.
#[test]
fn the_gate_lets_fast_good_clients_through_and_cuts_pipelining_bots() {
    let lab = postfix_lab("f");
    let mut daemon = Daemon::start(&lab, &RST_NO_REPUTATION, false).expect("starting the daemon");
    let with_filter: Vec<Duration> = (0..10)
        .map(|i| timed_good_session(&lab, v4(0, 46000 + i)))
        .collect();

    let client = v4(1, 46100);
    let bot: [&[u8]; 1] = [b"EHLO mail.example.net\r\nMAIL FROM:<bot@example.net>\r\nRCPT TO:<postmaster@example.org>\r\n"];
    // Its first reply read (after the pipelined EHLO went out) meets the reset: not a
    // reply, a close or a read timeout.
    let outcome = sessions::raw_session(&lab, client, &bot, Duration::ZERO);
    let error = outcome.expect_err("the pipelining bot got a reply");
    let io_kind = error
        .chain()
        .find_map(|e| e.downcast_ref::<std::io::Error>())
        .map(std::io::Error::kind);
    assert!(
        error.to_string() == "reading the reply"
            && io_kind == Some(std::io::ErrorKind::ConnectionReset),
        "the pipelining bot was not reset after its EHLO: {error:#}"
    );
    let postfix = lab.postfix().expect("Postfix runs");
    let ip = format!("[{}]", client.ip());
    let cut = process::wait_until(Duration::from_secs(10), || {
        postfix
            .log()
            .lines()
            .any(|l| l.contains("lost connection") && l.contains(&ip))
    });
    let log = postfix.log();
    assert!(cut.is_ok(), "no lost connection for {ip}:\n{log}");
    let bot_lines: Vec<&str> = log.lines().filter(|l| l.contains(&ip)).collect();
    assert!(
        bot_lines
            .iter()
            .all(|l| !l.contains("EHLO") && !l.contains("MAIL") && !l.contains("RCPT")),
        "the bot's commands reached Postfix: {bot_lines:#?}"
    );
    let wanted = format!("client={client} ");
    let line = daemon
        .wait_for(Duration::from_secs(10), |l| l.contains(&wanted))
        .expect("the bot's session is reported");
    assert!(
        line.contains("pipelined=true") && line.contains("reasons=pipelining"),
        "{line}"
    );
    assert_sockets_destroyed(&daemon, &[client], "rst");

    let status = daemon.stop().expect("stopping the daemon");
    assert!(status.success());
    let without: Vec<Duration> = (0..10)
        .map(|i| timed_good_session(&lab, v4(0, 46200 + i)))
        .collect();
    eprintln!(
        "good session (swaks, EHLO to QUIT) median: {:?} with the filter enforcing, {:?} without",
        median(with_filter),
        median(without)
    );
}

/// A frozen daemon: the gate opens by itself after its deadline (counted), and once the
/// heartbeat is stale it holds nothing at all (counted). A killed daemon leaves its program
/// attached: the gate still holds while the heartbeat is fresh and nothing once it is stale.
/// Raw clients time the MAIL FROM reply (what the gate holds) from the HELO, where the
/// gate's deadline starts, so that a slow reply to the HELO on a loaded machine cannot hide a
/// hold: a held MAIL FROM is answered at least the 2 s deadline after the HELO; a free one
/// within 1 s of being sent; every "stale" session starts 3 s after the 8 s heartbeat timeout.
#[test]
fn a_frozen_daemon_fails_open() {
    use std::time::Instant;

    const DEADLINE: Duration = Duration::from_millis(2000);
    const HEARTBEAT_TIMEOUT: Duration = Duration::from_millis(8000);
    const FREE: Duration = Duration::from_millis(1000);
    let stale = HEARTBEAT_TIMEOUT + Duration::from_secs(3);

    let lab = lab("g");
    // Enforcing (not in monitor mode, which is to hold nothing), every client good.
    let (deadline_ms, heartbeat_ms) = (
        DEADLINE.as_millis().to_string(),
        HEARTBEAT_TIMEOUT.as_millis().to_string(),
    );
    let args = [
        "--gate-deadline-ms",
        &deadline_ms,
        "--heartbeat-timeout-ms",
        &heartbeat_ms,
        NO_REPUTATION[0],
        NO_REPUTATION[1],
    ];
    let daemon = Daemon::start(&lab, &args, false).expect("starting the daemon");
    let gate_deadline = "helo_filter_fail_open_total{cause=\"gate_deadline\"}";
    let absent = "helo_filter_fail_open_total{cause=\"daemon_absent\"}";

    // The heartbeat is fresh (the daemon just beat): the gate holds MAIL FROM until its
    // deadline, as no verdict comes.
    daemon.signal(libc::SIGSTOP);
    let stopped = Instant::now();
    let held = timed_mail_from(&lab, v4(0, 47001)).since_helo;
    let held_within = stopped.elapsed();
    assert!(
        held >= DEADLINE,
        "MAIL FROM was not held by the gate deadline: answered {held:?} after the HELO"
    );
    assert!(
        held_within < HEARTBEAT_TIMEOUT,
        "the held session outlived the heartbeat ({held_within:?}): the test is too slow to tell"
    );
    // Past the heartbeat timeout the gate is off.
    std::thread::sleep(stale.saturating_sub(stopped.elapsed()));
    let free = mail_from_wait(&lab, v4(0, 47002));
    assert!(
        free < FREE,
        "MAIL FROM waited {free:?} with the heartbeat stale (the gate must be off)"
    );
    daemon.signal(libc::SIGCONT);
    let page = wait_for_metric(&daemon, absent, |v| v >= 1.0);
    assert_eq!(metric_value(&page, gate_deadline), Some(1.0), "{page}");
    eprintln!(
        "frozen daemon: MAIL FROM held {held:?} by the gate deadline, {free:?} once the heartbeat was stale"
    );

    // A killed daemon: the heartbeat is fresh for a while (the thawed daemon beats again), so
    // the gate, still attached, holds until its deadline; once stale, nothing is held.
    // It answered the scrape above, so it runs; a second is two heartbeats.
    std::thread::sleep(Duration::from_secs(1));
    daemon.signal(libc::SIGKILL);
    let killed = Instant::now();
    let held_after_kill = timed_mail_from(&lab, v4(0, 47003)).since_helo;
    assert!(
        held_after_kill >= DEADLINE && killed.elapsed() < HEARTBEAT_TIMEOUT,
        "after kill -9, MAIL FROM answered {held_after_kill:?} after the HELO ({:?} after the kill): the \
         program must stay attached and the gate hold while the heartbeat is fresh",
        killed.elapsed()
    );
    std::thread::sleep(stale.saturating_sub(killed.elapsed()));
    let after_kill = mail_from_wait(&lab, v4(0, 47004));
    assert!(
        after_kill < FREE,
        "after kill -9 and a stale heartbeat, MAIL FROM waited {after_kill:?}"
    );
    eprintln!(
        "killed daemon: MAIL FROM held {held_after_kill:?} while the heartbeat was fresh, {after_kill:?} once stale"
    );
}

/// Action `drop` on an MX: after a bogus HELO the client's next command gets no answer and
/// no RST, while the MTA's socket is gone at once (silence alone is also what a held gate
/// or a dead MTA gives), and the MTA's packets to the client (the RST of the destroy above
/// all) were dropped at TC egress.
#[test]
fn drop_mode_leaves_the_client_in_silence_and_frees_the_mta() {
    let lab = lab("k");
    // Through the configuration file's `[enforce]` section, this time.
    let config = std::env::temp_dir().join(format!("hf-drop-{}.toml", std::process::id()));
    std::fs::write(&config, "[enforce]\naction = \"drop\"\n").expect("config");
    let args = [
        "--config",
        config.to_str().expect("utf-8 path"),
        NO_REPUTATION[0],
        NO_REPUTATION[1],
    ];
    let daemon = Daemon::start(&lab, &args, false).expect("starting the daemon");
    let _ = std::fs::remove_file(&config);
    assert_dropped_in_silence(&lab, &daemon, v4(1, 51001));
}

/// The same over IPv6 (action `drop` from the command line this time): the TC egress
/// program parses the MTA's IPv6 packets, the XDP program the client's.
#[test]
fn drop_mode_over_ipv6_leaves_the_client_in_silence_and_frees_the_mta() {
    let lab = lab("kv");
    let args = ["--action", "drop", NO_REPUTATION[0], NO_REPUTATION[1]];
    let daemon = Daemon::start(&lab, &args, false).expect("starting the daemon");
    assert_dropped_in_silence(&lab, &daemon, v6(1, 51101));
}

/// One bogus session from `client` against a daemon enforcing action `drop` on an MX (its
/// first): the MTA's socket is there before the HELO and gone once the verdict is logged
/// (`destroyed=true action=drop`), the condemned-flow counter shows a packet TC egress
/// dropped, and the client hears nothing (at most the reply to its HELO, which may beat the
/// verdict): no reply to MAIL FROM, no RST, no close.
fn assert_dropped_in_silence(lab: &Lab, daemon: &Daemon, client: SocketAddr) {
    use std::io::{BufRead as _, ErrorKind, Write as _};

    let table = count_passed(lab, client);
    let (mut stream, mut reader) = raw_connect(lab, client);
    // The check sees the MTA's socket while there is one.
    let before = mta_sockets(lab, client);
    assert!(
        before.starts_with("ESTAB"),
        "no MTA socket for {client} before the HELO: {before:?}"
    );
    stream.write_all(b"HELO localhost\r\n").expect("HELO");
    assert_sockets_destroyed(daemon, &[client], "drop");
    // The verdict line is written after the destroy.
    let after = mta_sockets(lab, client);
    assert!(
        after.is_empty(),
        "the MTA's socket is still there after the verdict: {after}"
    );

    // The condemned-flow counter adds the client's packets XDP dropped to the MTA's that TC
    // egress dropped. Before the client writes again, the XDP share is what the client sent
    // less what reached the MX's ingress hook (after XDP): a count above that is a packet TC
    // dropped, the RST of the destroy above all.
    let series = "helo_filter_condemned_dropped_total";
    let mut seen = (0.0, 0);
    let tc_dropped = process::wait_until(Duration::from_secs(10), || {
        let page = daemon.scrape().unwrap_or_default();
        let dropped = metric_value(&page, series).unwrap_or(0.0);
        // Read after the page: what the client sent since is counted against TC.
        let passed = passed(lab, &table);
        let xdp_dropped = u64::from(segments_sent(&stream)).saturating_sub(passed);
        seen = (dropped, xdp_dropped);
        dropped > xdp_dropped as f64
    });
    assert!(
        tc_dropped.is_ok(),
        "{client}: {series} = {}, no more than the {} client packets XDP dropped: TC egress \
         dropped nothing",
        seen.0,
        seen.1
    );
    eprintln!(
        "drop mode ({client}): {} condemned-flow packets dropped, {} of them the client's",
        seen.0, seen.1
    );
    // The reply to the HELO may have beaten the verdict; nothing else comes, not even a RST.
    let mut line = String::new();
    match reader.read_line(&mut line) {
        Ok(n) if n > 0 && line.starts_with("250") => {}
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
        other => panic!("after the HELO the client got {other:?} {line:?} instead of silence"),
    }
    assert_silence_after_mail_from(&mut stream, &mut reader, client);

    let page = daemon.scrape().expect("scraping");
    for (action, count) in [("drop", 1.0), ("rst", 0.0)] {
        let series = format!("helo_filter_actions_total{{action=\"{action}\"}}");
        assert_eq!(metric_value(&page, &series), Some(count), "{page}");
    }
    drop((stream, reader));
}

/// Deployment `gateway` (three namespaces: client, gateway running the filter, MX): a bogus
/// client's next packet is answered with a RST built in XDP; a good session goes through.
/// Generic XDP: on veth, natively transmitted frames are dropped unless the peer runs XDP.
#[test]
fn gateway_mode_answers_bogus_clients_with_a_rst() {
    let lab = gateway_lab("l");
    let args = [
        "--deployment",
        "gateway",
        "--xdp-mode",
        "generic",
        RST_NO_REPUTATION[0],
        RST_NO_REPUTATION[1],
        RST_NO_REPUTATION[2],
        RST_NO_REPUTATION[3],
    ];
    let daemon = Daemon::start(&lab, &args, false).expect("starting the daemon");
    let bogus = [
        (v4(1, 52001), Greeting::Helo, "localhost"),
        (v6(2, 52002), Greeting::Ehlo, "[192.168.1.1]"),
    ];
    assert_reset_before_mail_from(&lab, &bogus);
    // What exactly the client gets: a RST (the MTA behind the gateway never closed).
    let kind = next_command_after_bogus_helo(&lab, v4(3, 52004)).expect("the session");
    assert_eq!(kind, std::io::ErrorKind::ConnectionReset);
    sessions::swaks(&lab, v4(0, 52003), Greeting::Ehlo, "mail.example.net")
        .expect("a good session goes through the gateway");
    assert_resets_logged(&daemon, 3);
    // A packet of a condemned flow was answered.
    wait_for_metric(&daemon, "helo_filter_condemned_dropped_total", |v| v >= 1.0);
}

/// Deployment `gateway` with action `drop`, over IPv4 and IPv6: once a bogus client's
/// verdict is logged (`action=drop`, nothing destroyed: the MTA is elsewhere), its MAIL FROM
/// gets silence (no reply, no RST from the gateway, no close) where action `rst` answers
/// with a RST; the dropped packets are counted; a good session goes through.
#[test]
fn gateway_mode_with_action_drop_leaves_bogus_clients_in_silence() {
    let lab = gateway_lab("ld");
    let args = [
        "--deployment",
        "gateway",
        "--action",
        "drop",
        "--xdp-mode",
        "generic",
        NO_REPUTATION[0],
        NO_REPUTATION[1],
    ];
    let daemon = Daemon::start(&lab, &args, false).expect("starting the daemon");
    let bogus = [v4(1, 53001), v6(2, 53002)];
    for client in bogus {
        let line = silence_after_bogus_helo(&lab, &daemon, client);
        assert!(
            line.contains(" verdict=reject reasons=localhost ")
                && line.ends_with(" action=drop")
                && !line.contains(" destroyed="),
            "{client}: {line}"
        );
    }
    sessions::swaks(&lab, v4(0, 53003), Greeting::Ehlo, "mail.example.net")
        .expect("a good session goes through the gateway");
    // At least each client's MAIL FROM (and its retransmissions) was dropped.
    let page = wait_for_metric(&daemon, "helo_filter_condemned_dropped_total", |v| {
        v >= bogus.len() as f64
    });
    for (series, count) in [
        ("helo_filter_actions_total{action=\"drop\"}", 2.0),
        ("helo_filter_actions_total{action=\"rst\"}", 0.0),
        ("helo_filter_sock_destroy_total{outcome=\"destroyed\"}", 0.0),
    ] {
        assert_eq!(metric_value(&page, series), Some(count), "{series}\n{page}");
    }
}

/// Sends MAIL FROM and asserts that nothing comes back before the read timeout: no reply, no
/// RST, no close.
fn assert_silence_after_mail_from(
    stream: &mut std::net::TcpStream,
    reader: &mut impl std::io::BufRead,
    client: SocketAddr,
) {
    use std::io::{ErrorKind, Write as _};

    stream
        .write_all(b"MAIL FROM:<bot@example.net>\r\n")
        .expect("MAIL FROM is written (nothing came back to refuse it)");
    let mut line = String::new();
    let next = reader.read_line(&mut line);
    assert!(
        matches!(&next, Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)),
        "{client}: after MAIL FROM the client got {next:?} {line:?} instead of silence"
    );
}

/// A raw client from `client` says `HELO localhost` and gets the MTA's 250 (the gate holds
/// only what the client sends); once the daemon's verdict on it is logged, it sends MAIL
/// FROM and hears nothing for 1.5 s (the MTA and a RST from XDP answer within milliseconds):
/// no reply, no RST, no close. Returns the verdict line.
fn silence_after_bogus_helo(lab: &Lab, daemon: &Daemon, client: SocketAddr) -> String {
    use std::io::{BufRead as _, Write as _};

    let (mut stream, mut reader) = raw_connect(lab, client);
    stream.write_all(b"HELO localhost\r\n").expect("HELO");
    let mut line = String::new();
    let helo = reader.read_line(&mut line);
    assert!(
        matches!(helo, Ok(n) if n > 0) && line.starts_with("250"),
        "{client}: the reply to the HELO was {helo:?} {line:?}"
    );
    let verdict = verdict_line(daemon, client);
    stream
        .set_read_timeout(Some(Duration::from_millis(1500)))
        .expect("read timeout");
    assert_silence_after_mail_from(&mut stream, &mut reader, client);
    verdict
}

/// `--deny-answer rst`: a denied source's SYN (`--deny-source` for IPv4, `[lists] deny` for
/// IPv6) is answered with a RST from XDP, so its connect is refused at once, and counted
/// (`syn_dropped_total`, one SYN each: a refused client does not retry); other sources
/// connect. With the default answer (`drop`), the same SYNs go unanswered and the connect
/// times out. Generic XDP: on veth, natively transmitted frames are dropped unless the peer
/// runs XDP.
#[test]
fn deny_answer_rst_refuses_denied_sources_where_drop_lets_them_time_out() {
    use std::io::ErrorKind;

    const REFUSED_WITHIN: Duration = Duration::from_secs(1);
    const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
    let denied = [v4(3, 0), v6(3, 0)];
    let deny_v4 = format!("{}/32", denied[0].ip());
    let lists = format!("[lists]\ndeny = [\"{}/128\"]\n", denied[1].ip());
    // The configuration file goes into the lab's daemon directory, removed with the lab.
    let start = |lab: &Lab, answer: Option<&str>| {
        std::fs::create_dir_all(lab.daemon_dir()).expect("the daemon's directory");
        let config = lab.daemon_dir().join("deny-answer.toml");
        std::fs::write(&config, &lists).expect("config");
        let config = config.to_str().expect("utf-8 path").to_owned();
        let mut args = vec![
            "--config",
            &config,
            "--deny-source",
            &deny_v4,
            "--xdp-mode",
            "generic",
            NO_REPUTATION[0],
            NO_REPUTATION[1],
        ];
        if let Some(answer) = answer {
            args.extend(["--deny-answer", answer]);
        }
        Daemon::start(lab, &args, false).expect("starting the daemon")
    };
    let syn_dropped = "helo_filter_syn_dropped_total";

    // `rst`: refused, at once.
    {
        let lab = lab("dn");
        let daemon = start(&lab, Some("rst"));
        for client in denied {
            let (outcome, took) = connect_outcome(&lab, client, CONNECT_TIMEOUT);
            assert!(
                outcome == Err(ErrorKind::ConnectionRefused) && took < REFUSED_WITHIN,
                "{}: a denied source's connect ended {outcome:?} after {took:?}, not refused \
                 by a RST",
                client.ip()
            );
        }
        for client in [v4(0, 0), v6(0, 0)] {
            let (outcome, _) = connect_outcome(&lab, client, CONNECT_TIMEOUT);
            assert_eq!(outcome, Ok(()), "{}: not denied", client.ip());
        }
        let page = wait_for_metric(&daemon, syn_dropped, |v| v >= 2.0);
        assert_eq!(metric_value(&page, syn_dropped), Some(2.0), "{page}");
        for action in ["rst", "drop"] {
            let series = format!("helo_filter_actions_total{{action=\"{action}\"}}");
            assert_eq!(metric_value(&page, &series), Some(0.0), "{page}");
        }
    }
    // The default answer, `drop`: silence, the connect times out.
    let lab = lab("dd");
    let daemon = start(&lab, None);
    for client in denied {
        let (outcome, took) = connect_outcome(&lab, client, Duration::from_secs(1));
        assert_eq!(
            outcome,
            Err(ErrorKind::TimedOut),
            "{}: with the default answer a denied source's connect ended after {took:?}, not \
             in a timeout",
            client.ip()
        );
    }
    wait_for_metric(&daemon, syn_dropped, |v| v >= 2.0);
}

/// With `[dns] fail_closed`, a DNS failure is an enforced reject.
#[test]
fn dns_fail_closed_turns_a_dns_failure_into_a_reset() {
    let mut lab = lab("j");
    let config = std::env::temp_dir().join(format!("hf-failclosed-{}.toml", std::process::id()));
    std::fs::write(&config, "[dns]\nfail_closed = true\ndeadline_ms = 300\n").expect("config");
    let args = [
        "--config",
        config.to_str().expect("utf-8 path"),
        RST_NO_REPUTATION[0],
        RST_NO_REPUTATION[1],
        RST_NO_REPUTATION[2],
        RST_NO_REPUTATION[3],
    ];
    let mut daemon = Daemon::start(&lab, &args, false).expect("starting the daemon");
    let _ = std::fs::remove_file(&config);
    // The fixture DNS server goes away: every lookup fails.
    lab.stop_dns();
    let (completed, transcript) =
        sessions::swaks_transcript(&lab, v4(0, 50001), Greeting::Ehlo, "mail.example.net")
            .expect("swaks");
    assert!(!completed, "{transcript}\n{}", daemon.lines().join("\n"));
    let line = daemon
        .wait_for(Duration::from_secs(10), |l| {
            l.contains("client=203.0.113.10:50001")
        })
        .expect("the session is reported");
    assert!(
        line.contains("reasons=dns_tempfail") && line.ends_with(" destroyed=true action=rst"),
        "{line}"
    );
}
