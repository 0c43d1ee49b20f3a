//! End to end, action `reply`: a client that greets with a bogus HELO reads the seed's answer,
//! `550 5.7.1 Access denied - bogus HELO (<reason>)`, in reply to its next command, from an
//! MTA that has no HELO checks at all (smtp-sink answers 250 to everything, so a 550 can only
//! come from the filter), and its connection ends at once.

use std::{
    io::{BufRead as _, Write as _},
    net::SocketAddr,
    time::{Duration, Instant},
};

use helo_filter_tests::{e2e::*, require_root};
use xtask::{
    daemon::Daemon,
    lab::Lab,
    sessions::{self, Greeting, SwaksOutcome},
};

/// The seed's bogus HELOs and the reason each is rejected for.
const SEED: [(&str, &str); 5] = [
    ("127.0.0.1", "bare_ip"),
    ("[192.168.1.1]", "bad_literal_ip"),
    ("localhost", "localhost"),
    ("mon-serveur", "not_fqdn"),
    ("fakedomain.xyz", "no_dns"),
];

fn reject(reason: &str) -> String {
    format!("550 5.7.1 Access denied - bogus HELO ({reason})")
}

fn start(lab: &Lab) -> Daemon {
    Daemon::start(
        lab,
        &["--action", "reply", NO_REPUTATION[0], NO_REPUTATION[1]],
        false,
    )
    .expect("starting the daemon")
}

/// swaks against smtp-sink, IPv4 and IPv6, each seed HELO: the MTA's 250 to the EHLO, then
/// the filter's 550 in reply to MAIL FROM (swaks exits 23, "MAIL refused"), with no time-out.
/// Good sessions are delivered beside them.
#[test]
fn bogus_senders_read_the_550_from_an_mta_without_helo_checks() {
    let lab = lab("ry");
    let daemon = start(&lab);
    let mut port = 45_100;
    for family in [v4 as fn(usize, u16) -> SocketAddr, v6] {
        for (helo, reason) in SEED {
            port += 1;
            let client = family(0, port);
            let started = Instant::now();
            let run = refused_at_mail_from(&lab, client, helo, &reject(reason));
            let transcript = &run.transcript;
            // The MTA answers the EHLO itself (its 250 leaves), the filter the command after.
            let after_ehlo = transcript
                .split_once(&format!("-> EHLO {helo}"))
                .map(|(_, rest)| rest.trim_start())
                .unwrap_or_default();
            assert!(
                after_ehlo.starts_with("<-  250"),
                "{client} {helo}: the MTA did not answer the EHLO:\n{transcript}"
            );
            // The held MAIL FROM is answered at the verdict: no wait for a retransmission.
            let took = started.elapsed();
            assert!(
                took < Duration::from_secs(3),
                "{client} {helo}: the session took {took:?}:\n{transcript}"
            );
            port += 1;
            let good = family(1, port);
            let (completed, transcript) =
                sessions::swaks_transcript(&lab, good, Greeting::Ehlo, "mail.example.net")
                    .expect("swaks");
            assert!(completed, "a good session from {good}:\n{transcript}");
        }
    }
    let page = wait_for_metric(
        &daemon,
        "helo_filter_replies_total{segment=\"reject\"}",
        |v| v >= 10.0,
    );
    assert_metric(&page, "helo_filter_actions_total{action=\"reply\"}", 10.0);
    assert_metric(&page, "helo_filter_replies_total{segment=\"failed\"}", 0.0);
    assert_metric(
        &page,
        "helo_filter_sock_destroy_total{outcome=\"destroyed\"}",
        10.0,
    );
    daemon.stop().expect("stopping the daemon");
}

/// Over an 802.1Q VLAN (id 100, the tags written into the frames): the XDP program parses
/// the client's tagged segments, TC egress the MTA's, and the answer, sent through the MX's
/// VLAN interface, reaches the client tagged: swaks reads the 550 to its MAIL FROM, over
/// IPv4 and IPv6.
#[test]
fn the_answer_reaches_a_client_over_a_vlan() {
    let lab = vlan_lab("rv", 100);
    let daemon = start(&lab);
    for client in [v4(1, 45_401), v6(1, 45_402)] {
        refused_at_mail_from(&lab, client, "localhost", &reject("localhost"));
    }
    daemon.stop().expect("stopping the daemon");
}

/// What a raw client from `client` reads after its `EHLO helo` (answered by the MTA) and
/// then `batch` in one segment: the reply lines until the connection ends, when the first
/// came, and how it ended.
struct AfterEhlo {
    replies: Vec<String>,
    first_at: Option<Instant>,
    ended: std::io::Result<()>,
}

fn after_ehlo(lab: &Lab, client: SocketAddr, helo: &str, batch: &[u8]) -> AfterEhlo {
    let (mut stream, mut reader) = raw_ehlo(lab, client, helo);
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    stream.write_all(batch).expect("the batch");
    let mut replies = Vec::new();
    let mut first_at = None;
    let ended = loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) => break Ok(()),
            Ok(_) => {
                first_at.get_or_insert_with(Instant::now);
                replies.push(line.trim_end().to_owned());
            }
            Err(e) => break Err(e),
        }
    };
    AfterEhlo {
        replies,
        first_at,
        ended,
    }
}

const MAIL: &[u8] = b"MAIL FROM:<a@example.net>\r\n";

/// A raw client pipelines MAIL FROM, RCPT TO and DATA in one segment after a bogus EHLO: it
/// reads one reply per command, in order (`550`, `503`, `503`), and the end of the
/// connection with them (within 1 s of the first), over IPv4 and IPv6.
#[test]
fn a_pipelined_batch_gets_one_reply_per_command_and_the_connection_ends() {
    let lab = lab("rp");
    let daemon = start(&lab);
    for client in [v4(2, 45_201), v6(2, 45_202)] {
        let read = after_ehlo(
            &lab,
            client,
            "localhost",
            b"MAIL FROM:<a@example.net>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n",
        );
        let first_at = read
            .first_at
            .unwrap_or_else(|| panic!("{client}: no reply ({:?})", read.ended));
        assert!(
            read.ended.is_ok(),
            "{client}: the connection did not end: {:?}",
            read.ended
        );
        assert!(
            first_at.elapsed() < Duration::from_secs(1),
            "{client}: the connection ended {:?} after the reply",
            first_at.elapsed()
        );
        let later = "503 5.5.1 Bad sequence of commands - bogus HELO";
        assert_eq!(
            read.replies,
            [reject("localhost").as_str(), later, later],
            "{client}"
        );
    }
    let line = verdict_line(&daemon, v4(2, 45_201));
    assert!(line.ends_with("action=reply"), "{line}");
    daemon.stop().expect("stopping the daemon");
}

/// The reply table (`[replies]`): a reason's own entry (a 4xx, as Postfix's
/// `reject_unknown_helo_hostname` would answer) and the default's new text, each the reply
/// to the bogus client's MAIL FROM; a client that sends MAIL FROM without a HELO reads the
/// reject as the reply to it.
#[test]
fn each_reason_gets_its_reply_from_the_table() {
    let lab = lab("rt");
    let config = std::env::temp_dir().join(format!("hf-replies-{}.toml", std::process::id()));
    std::fs::write(
        &config,
        "[replies]\ntext = \"Go away\"\n\
         [replies.reasons.not_fqdn]\ncode = 450\nenhanced = \"4.7.1\"\n\
         text = \"Helo command rejected: need fully-qualified hostname\"\n",
    )
    .expect("config");
    let args = [
        "--config",
        config.to_str().expect("utf-8 path"),
        "--action",
        "reply",
        NO_REPUTATION[0],
        NO_REPUTATION[1],
    ];
    let daemon = Daemon::start(&lab, &args, false).expect("starting the daemon");
    let _ = std::fs::remove_file(&config);
    for (client, helo, reply) in [
        (
            v4(2, 45_211),
            "mon-serveur",
            "450 4.7.1 Helo command rejected: need fully-qualified hostname (not_fqdn)",
        ),
        (v6(2, 45_212), "localhost", "550 5.7.1 Go away (localhost)"),
    ] {
        let read = after_ehlo(&lab, client, helo, MAIL);
        assert_eq!(read.replies, [reply], "{client} {helo}");
        assert!(read.ended.is_ok(), "{client}: {:?}", read.ended);
    }
    // No HELO at all: the kernel holds the MAIL FROM (smtp-sink, which would take it, never
    // answers it), and the filter's reply is the answer to it.
    let client = v4(2, 45_213);
    let (mut stream, reader) = raw_connect(&lab, client);
    stream.write_all(MAIL).expect("MAIL FROM");
    let replies: Vec<String> = reader
        .lines()
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| panic!("{client}: the connection did not end: {e}"));
    assert_eq!(replies, ["550 5.7.1 Go away (no_helo)"], "{client}");
    daemon.stop().expect("stopping the daemon");
}

/// The verdict beats the MTA's answer to the HELO (smtp-sink waits 3 s before answering an
/// EHLO): the MTA's socket is destroyed a second after the verdict, and the client reads
/// the 550 as the reply to its EHLO, long before the MTA would have answered, and the session goes on as with an MTA that refuses the EHLO: its QUIT gets
/// `221` and the end of the connection. IPv4 and IPv6; a good session is still delivered.
#[test]
fn a_verdict_before_the_mtas_answer_answers_the_helo_itself() {
    require_root();
    let mut lab = Lab::create(&unique_name("re")).expect("creating the lab");
    lab.start_smtp_sink_with(&["-W", "ehlo:3", "-W", "helo:3"])
        .expect("starting a slow smtp-sink");
    lab.start_dns().expect("starting dnsmasq");
    let daemon = start(&lab);
    for client in [v4(3, 45_301), v6(3, 45_302)] {
        let (mut stream, mut reader) = raw_connect(&lab, client);
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("read timeout");
        let sent = Instant::now();
        stream.write_all(b"EHLO localhost\r\n").expect("EHLO");
        let mut reply = String::new();
        reader.read_line(&mut reply).expect("the EHLO reply");
        let took = sent.elapsed();
        assert_eq!(reply.trim_end(), reject("localhost"), "{client}");
        assert!(
            took < Duration::from_secs(2),
            "{client}: answered after {took:?}, not before the MTA's 3 s"
        );
        stream.write_all(b"QUIT\r\n").expect("QUIT");
        let mut bye = String::new();
        reader.read_line(&mut bye).expect("the QUIT reply");
        assert_eq!(bye.trim_end(), "221 2.0.0 Bye", "{client}");
        let mut rest = String::new();
        assert_eq!(
            reader.read_line(&mut rest).map_err(|e| e.kind()),
            Ok(0),
            "{client}: the connection did not end ({rest:?})"
        );
    }
    let (completed, transcript) =
        sessions::swaks_transcript(&lab, v4(1, 45_303), Greeting::Ehlo, "mail.example.net")
            .expect("swaks");
    assert!(completed, "a good session:\n{transcript}");
    let page = wait_for_metric(
        &daemon,
        "helo_filter_replies_total{segment=\"reject\"}",
        |v| v >= 4.0,
    );
    assert_metric(&page, "helo_filter_replies_total{segment=\"reject\"}", 4.0);
    assert_metric(
        &page,
        "helo_filter_sock_destroy_total{outcome=\"destroyed\"}",
        2.0,
    );
    daemon.stop().expect("stopping the daemon");
}

/// Behind a gateway, a real Postfix with five process slots that would wait 300 s for a
/// silent client: 50 bogus sessions, 10 at a time, each read the 550 in reply to MAIL FROM,
/// and Postfix is freed of each by the RST the filter sends it from the client's address (it
/// logs each session's end, all within 2 s of the flood's end), so that a good session after
/// them is delivered at once. (Without that RST, five of the first ten clients get no greeting
/// within swaks' 10 s: Postfix's slots stay held for `smtpd_timeout`.)
#[test]
fn behind_a_gateway_the_mta_is_freed_of_each_bogus_session() {
    require_root();
    let mut lab = Lab::create_with_gateway(&unique_name("rg")).expect("creating the gateway lab");
    lab.start_dns().expect("starting dnsmasq");
    lab.start_postfix("smtpd_helo_required = yes\ndefault_process_limit = 5\nsmtpd_timeout = 300s")
        .expect("starting Postfix");
    let daemon = Daemon::start(
        &lab,
        &[
            "--deployment",
            "gateway",
            "--xdp-mode",
            "generic",
            "--action",
            "reply",
            NO_REPUTATION[0],
            NO_REPUTATION[1],
        ],
        false,
    )
    .expect("starting the daemon");
    let started = Instant::now();
    for wave in 0..5u16 {
        std::thread::scope(|scope| {
            for i in 0..10u16 {
                let lab = &lab;
                scope.spawn(move || {
                    let client = v4(usize::from(i % 4), 46_000 + wave * 10 + i);
                    let run = sessions::swaks_run(lab, client, Greeting::Ehlo, "localhost")
                        .unwrap_or_else(|e| panic!("{client}: {e:#}"));
                    assert_eq!(
                        run.outcome,
                        SwaksOutcome::Refused {
                            reply: reject("localhost")
                        },
                        "{client}:\n{}",
                        run.transcript
                    );
                });
            }
        });
    }
    let bogus_took = started.elapsed();
    let good = Instant::now();
    let (completed, transcript) =
        sessions::swaks_transcript(&lab, v4(4, 46_999), Greeting::Ehlo, "mail.example.net")
            .expect("swaks");
    let good_took = good.elapsed();
    assert!(completed, "the good session after the flood:\n{transcript}");
    assert!(
        good_took < Duration::from_secs(5),
        "the good session took {good_took:?}: Postfix's slots were still held"
    );
    let postfix = lab.postfix().expect("Postfix");
    let ended = |log: &str| {
        log.lines()
            .filter(|l| l.contains("lost connection after EHLO from"))
            .count()
    };
    // Each session's end is logged within 2 s of its verdict: the last verdict came before
    // the flood's end, so all of them by 2 s after it.
    let _ = xtask::process::wait_until(Duration::from_secs(2).saturating_sub(good_took), || {
        ended(&postfix.log()) >= 50
    });
    let freed = ended(&postfix.log());
    eprintln!("Postfix logged the end of {freed} of the 50 bogus sessions");
    assert_eq!(
        freed,
        50,
        "Postfix logged the end of {freed} of the 50 bogus sessions within 2 s:\n{}\nmetrics:\n{}\ndaemon:\n{}",
        postfix.log(),
        daemon.scrape().unwrap_or_default(),
        daemon.lines().join("\n")
    );
    let page = wait_for_metric(
        &daemon,
        "helo_filter_replies_total{segment=\"mta_freed\"}",
        |v| v >= 50.0,
    );
    assert_metric(&page, "helo_filter_replies_total{segment=\"reject\"}", 50.0);
    eprintln!("50 bogus sessions in {bogus_took:?}, then a good one in {good_took:?}");
    daemon.stop().expect("stopping the daemon");
}
