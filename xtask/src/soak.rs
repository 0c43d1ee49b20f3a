//! `cargo xtask soak --minutes N`: the daemon (reputation on, every setting at its default)
//! under a steady mix of sessions over IPv4 and IPv6 for N minutes, sampled every 10 s.
//!
//! Fails when a played session is not accounted for by the daemon (judged, passed unjudged
//! from a full queue, SYN-dropped, or abandoned before a decisive line), when a task
//! panicked, when a table or queue went past its bound, and, for runs of 15 minutes or more,
//! when the daemon's RSS grew by 10 % or more from minute 5 to the end.

use std::{
    fs,
    io::{BufReader, Write as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde::Serialize;
use socket2::SockRef;
use xtask::{
    daemon::{Daemon, family_sum, map_entries, metric_value, rss_kib},
    lab::{self, Lab, SMTP_PORT},
    netns::{in_netns, ip_in},
    paths,
    sessions::{connect_from_within, conversation, mx_for, reply_code},
};

/// The soak's lab, named after this process so that two soaks (a developer's and CI's on
/// one machine) do not tear down each other's; a crashed run's lab is removed by the next
/// lab created (its creator is gone).
fn lab_name() -> String {
    format!("hfsoak{}", std::process::id() % 100_000)
}
const SAMPLE_EVERY: Duration = Duration::from_secs(10);
/// Sessions started per second.
const RATE: f64 = 20.0;
/// Sessions running at once, at most: past it the player waits (and says so), rather than
/// piling up threads.
const MAX_RUNNING: usize = 512;
/// A SYN the filter drops is never answered; the kernel retransmits it after its initial
/// RTO of 1 s, so a client giving up sooner sends exactly one SYN per session, and the
/// daemon's `syn_dropped_total` counts sessions.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(700);
/// A flow that never gets its decisive line is abandoned after the reassembly's time-out
/// (60 s), found by a sweep every 5 s: after the last session, the accounting is given this
/// long to settle.
const SETTLE: Duration = Duration::from_secs(80);
/// The daemon's bounds (helo-filter: reassembly `Limits::default`, run.rs `POLICY_QUEUE`,
/// `DnsSettings::default().max_in_flight`).
const REASSEMBLY_BOUND: f64 = 16_384.0;
const POLICY_QUEUE_BOUND: f64 = 4_096.0;
const DNS_IN_FLIGHT_BOUND: f64 = 256.0;
/// Runs this long or longer check that RSS stops growing once the caches are full.
const RSS_CHECK_FROM_MINUTES: u64 = 15;
const RSS_BASELINE_AT: Duration = Duration::from_secs(300);
const RSS_GROWTH_LIMIT: f64 = 0.10;
/// Sources of the bogus sessions, per family, beside the lab's own five: each greets about
/// a dozen times before reputation denies it, so new sources keep being judged and denied.
const BOGUS_SOURCES: usize = 200;
const SESSIONS_PER_BOGUS_SOURCE: usize = 12;
/// The MX's route to the bogus IPv6 sources (2001:db8:100:: to 2001:db8:1ff::).
const BOGUS_V6_ROUTE: &str = "2001:db8:100::/40";

/// The session kinds, played in this order, round after round.
#[derive(Clone, Copy, Debug)]
enum Kind {
    /// A whole mail transaction, over IPv4 (`v6`: IPv6).
    Good { v6: bool },
    /// EHLO with MAIL, RCPT and DATA in the same segment (a bot's habit: reason
    /// `pipelining`).
    Pipelining,
    /// EHLO written a few bytes per segment.
    Dribbling,
    /// One of the five seed bogus names.
    Bogus(&'static str),
    /// MAIL FROM as the first command.
    NoHelo,
    /// Half an EHLO line, then the client resets the connection and is gone.
    VanishMidLine,
    /// EHLO answered, then the client closes without a word more.
    VanishAfterHelo,
}

const ROUND: [Kind; 12] = [
    Kind::Good { v6: false },
    Kind::Bogus("HELO 127.0.0.1"),
    Kind::Good { v6: true },
    Kind::Bogus("EHLO [192.168.1.1]"),
    Kind::Pipelining,
    Kind::Bogus("HELO localhost"),
    Kind::Dribbling,
    Kind::Bogus("EHLO mon-serveur"),
    Kind::VanishMidLine,
    Kind::Bogus("HELO fakedomain.xyz"),
    Kind::VanishAfterHelo,
    Kind::NoHelo,
];

impl Kind {
    fn bogus(self) -> bool {
        matches!(self, Kind::Bogus(_) | Kind::NoHelo | Kind::Pipelining)
    }
}

/// How a session ended, seen from the client.
#[derive(Clone, Copy, Debug)]
enum End {
    /// The SYN went unanswered or was refused: no connection.
    NoConnection,
    /// The client played its part to the end (a message accepted, or a planned vanish).
    Played,
    /// A command got a 4xx/5xx reply.
    Refused,
    /// The connection was reset, closed or timed out mid-session.
    Cut,
}

const ENDS: [&str; 4] = ["no_connection", "played", "refused", "cut"];

/// One sample of the daemon and its kernel side.
#[derive(Clone, Debug, Serialize)]
struct Sample {
    seconds: u64,
    played: usize,
    accounted: f64,
    rss_kib: u64,
    open_fds: usize,
    runtime_tasks: f64,
    reassembly_flows: f64,
    policy_queue: f64,
    dns_in_flight: f64,
    kernel_flows: usize,
    deny_entries: f64,
    ringbuf_dropped: f64,
    fail_open: f64,
    judged: f64,
    syn_dropped: f64,
    abandoned: f64,
}

/// What the daemon says became of the sessions it saw: `(judged, passed unjudged,
/// SYN-dropped, abandoned)`.
fn accounting(page: &str) -> anyhow::Result<(f64, f64, f64, f64)> {
    let one = |series: &str| {
        metric_value(page, series).with_context(|| format!("{series} is not on the page"))
    };
    Ok((
        family_sum(page, "helo_filter_verdicts_total"),
        one("helo_filter_fail_open_total{cause=\"queue_full\"}")?,
        one("helo_filter_syn_dropped_total")?,
        family_sum(page, "helo_filter_flows_abandoned_total"),
    ))
}

pub fn run(minutes: u64) -> anyhow::Result<()> {
    if minutes == 0 {
        bail!("--minutes must be at least 1");
    }
    ctrlc::set_handler(|| {
        println!("\ninterrupted: tearing the soak lab down");
        lab::remove(&lab_name());
        std::process::exit(130);
    })
    .context("installing the Ctrl-C handler")?;
    let lab = Lab::create_serving(&lab_name())?;
    let bogus = add_bogus_sources(&lab)?;
    let mut daemon = Daemon::start(&lab, &[], false)?;
    let flows_pin = lab.bpffs_dir()?.join("maps").join("FLOWS");
    let duration = Duration::from_secs(minutes * 60);
    println!(
        "soak: {minutes} min at {RATE} sessions/s over IPv4 and IPv6 ({} kinds in turn; \
         {} bogus sources per family), reputation on (defaults); a sample every {} s",
        ROUND.len(),
        BOGUS_SOURCES,
        SAMPLE_EVERY.as_secs()
    );
    let player = Player::start(&lab, bogus, duration);
    let started = Instant::now();
    let mut samples = Vec::new();
    print_header();
    let mut next = started + SAMPLE_EVERY;
    let mut finished_at = None;
    let mut settled = false;
    while !settled {
        thread::sleep(next.saturating_duration_since(Instant::now()));
        next += SAMPLE_EVERY;
        if !daemon.running() {
            break;
        }
        let sample = take_sample(&daemon, &flows_pin, started, player.played())?;
        print_row(&sample);
        if player.finished() {
            let at = *finished_at.get_or_insert_with(Instant::now);
            // Settled once every played session is accounted for, or when the longest
            // wait for an abandoned flow has passed.
            settled = sample.accounted >= sample.played as f64 || at.elapsed() >= SETTLE;
        }
        samples.push(sample);
    }
    if !daemon.running() {
        // The player is left to the process's end: its sessions no longer matter.
        bail!("soak failed: {}", daemon_failures(&mut daemon).join("; "));
    }
    let report = player.join();
    let dir = paths::target_dir().join("soak");
    fs::create_dir_all(&dir)?;
    let json = dir.join("samples.json");
    fs::write(&json, serde_json::to_string_pretty(&samples)?)?;
    println!("samples written to {}", json.display());
    report.print();
    print_verdicts(&daemon)?;
    let mut failures = daemon_failures(&mut daemon);
    failures.extend(sample_failures(&samples, report.played(), minutes)?);
    let status = daemon.stop()?;
    drop(lab);
    if !failures.is_empty() {
        bail!("soak failed:\n  {}", failures.join("\n  "));
    }
    println!(
        "soak passed: {} sessions, each accounted for; the daemon stopped ({status})",
        report.played()
    );
    Ok(())
}

/// The daemon's verdicts by verdict and reason, and its deny list's origins.
fn print_verdicts(daemon: &Daemon) -> anyhow::Result<()> {
    let page = daemon.scrape()?;
    println!("the daemon's verdicts and deny entries:");
    for line in page.lines().filter(|l| {
        (l.starts_with("helo_filter_verdicts_total{") || l.starts_with("helo_filter_deny_entries{"))
            && !l.ends_with(" 0")
    }) {
        println!("  {line}");
    }
    Ok(())
}

/// What went wrong with the daemon itself: one sentence each.
fn daemon_failures(daemon: &mut Daemon) -> Vec<String> {
    let mut failures = Vec::new();
    if !daemon.running() {
        failures.push("the daemon exited during the soak".to_owned());
    }
    let panics: Vec<String> = daemon
        .lines()
        .into_iter()
        .filter(|l| l.contains("panicked"))
        .collect();
    if !panics.is_empty() {
        failures.push(format!(
            "{} panic(s) logged: {}",
            panics.len(),
            panics.join(" | ")
        ));
    }
    failures
}

/// What the samples of a run of `minutes` with `played` sessions show went wrong: one
/// sentence per failed check.
fn sample_failures(samples: &[Sample], played: usize, minutes: u64) -> anyhow::Result<Vec<String>> {
    let mut failures = Vec::new();
    let last = samples.last().context("no sample taken")?;
    let played = played as f64;
    if last.accounted != played {
        failures.push(format!(
            "{played} sessions played, {} accounted for (judged {} + passed unjudged {} + \
             SYN-dropped {} + abandoned {}): a difference of {}",
            last.accounted,
            last.judged,
            last.accounted - last.judged - last.syn_dropped - last.abandoned,
            last.syn_dropped,
            last.abandoned,
            played - last.accounted
        ));
    }
    let max = |field: fn(&Sample) -> f64| samples.iter().map(field).fold(0.0, f64::max);
    for (what, peak, bound) in [
        (
            "reassembly flows",
            max(|s| s.reassembly_flows),
            REASSEMBLY_BOUND,
        ),
        ("policy queue", max(|s| s.policy_queue), POLICY_QUEUE_BOUND),
        (
            "DNS queries in flight",
            max(|s| s.dns_in_flight),
            DNS_IN_FLIGHT_BOUND,
        ),
    ] {
        if peak > bound {
            failures.push(format!("{what}: {peak} at peak, past its bound of {bound}"));
        }
    }
    if minutes >= RSS_CHECK_FROM_MINUTES {
        let baseline = samples
            .iter()
            .find(|s| s.seconds >= RSS_BASELINE_AT.as_secs())
            .context("no sample at minute 5")?;
        let growth = (last.rss_kib as f64 - baseline.rss_kib as f64) / baseline.rss_kib as f64;
        println!(
            "RSS: {} KiB at {} s, {} KiB at the end: {:+.1} %",
            baseline.rss_kib,
            baseline.seconds,
            last.rss_kib,
            growth * 100.0
        );
        if growth >= RSS_GROWTH_LIMIT {
            failures.push(format!(
                "RSS grew {:.1} % from minute 5 to the end (limit {:.0} %)",
                growth * 100.0,
                RSS_GROWTH_LIMIT * 100.0
            ));
        }
    }
    Ok(failures)
}

fn take_sample(
    daemon: &Daemon,
    flows_pin: &std::path::Path,
    started: Instant,
    played: usize,
) -> anyhow::Result<Sample> {
    let page = daemon.scrape()?;
    let value = |series: &str| metric_value(&page, series).unwrap_or(f64::NAN);
    let (judged, unjudged, syn_dropped, abandoned) = accounting(&page)?;
    let pid = daemon.pid();
    Ok(Sample {
        seconds: started.elapsed().as_secs(),
        played,
        accounted: judged + unjudged + syn_dropped + abandoned,
        rss_kib: rss_kib(pid)?,
        open_fds: fs::read_dir(format!("/proc/{pid}/fd"))?.count(),
        runtime_tasks: value("helo_filter_runtime_tasks"),
        reassembly_flows: value("helo_filter_reassembly_flows"),
        policy_queue: value("helo_filter_policy_queue_sessions"),
        dns_in_flight: value("helo_filter_dns_in_flight"),
        kernel_flows: map_entries(flows_pin)?,
        deny_entries: family_sum(&page, "helo_filter_deny_entries"),
        ringbuf_dropped: value("helo_filter_ringbuf_dropped_total"),
        fail_open: family_sum(&page, "helo_filter_fail_open_total"),
        judged,
        syn_dropped,
        abandoned,
    })
}

const COLUMNS: [(&str, usize); 14] = [
    ("t s", 5),
    ("played", 7),
    ("acctd", 7),
    ("RSS KiB", 8),
    ("fds", 4),
    ("tasks", 6),
    ("reasm", 6),
    ("queue", 6),
    ("dns", 4),
    ("FLOWS", 6),
    ("deny", 5),
    ("rb drop", 7),
    ("fail-open", 9),
    ("abandon", 7),
];

fn print_header() {
    let cells: Vec<String> = COLUMNS.iter().map(|(h, w)| format!("{h:>w$}")).collect();
    println!("| {} |", cells.join(" | "));
    let rules: Vec<String> = COLUMNS.iter().map(|(_, w)| "-".repeat(*w)).collect();
    println!("|-{}-|", rules.join("-|-"));
}

fn print_row(s: &Sample) {
    let values = [
        s.seconds.to_string(),
        s.played.to_string(),
        s.accounted.to_string(),
        s.rss_kib.to_string(),
        s.open_fds.to_string(),
        s.runtime_tasks.to_string(),
        s.reassembly_flows.to_string(),
        s.policy_queue.to_string(),
        s.dns_in_flight.to_string(),
        s.kernel_flows.to_string(),
        s.deny_entries.to_string(),
        s.ringbuf_dropped.to_string(),
        s.fail_open.to_string(),
        s.abandoned.to_string(),
    ];
    let cells: Vec<String> = COLUMNS
        .iter()
        .zip(values)
        .map(|((_, w), v)| format!("{v:>w$}"))
        .collect();
    println!("| {} |", cells.join(" | "));
}

/// Adds the bogus sessions' sources to the client namespace: 203.0.113.30 … on the lab's
/// subnet, and 2001:db8:100::1, 2001:db8:101::1 … each in a /64 of its own (reputation
/// denies a whole /64: sharing the good client's would deny it too), which the MX reaches
/// through one on-link route.
fn add_bogus_sources(lab: &Lab) -> anyhow::Result<Vec<IpAddr>> {
    ip_in(
        &lab.mx_ns,
        &["-6", "route", "add", BOGUS_V6_ROUTE, "dev", &lab.mx_iface],
    )?;
    let mut sources = Vec::new();
    for i in 0..BOGUS_SOURCES {
        // From .30: the fixture DNS gives .20 a name of its own.
        let v4 = Ipv4Addr::new(203, 0, 113, 30 + i as u8);
        let v6 = Ipv6Addr::new(0x2001, 0xdb8, 0x100 + i as u16, 0, 0, 0, 0, 1);
        ip_in(
            &lab.client_ns,
            &["addr", "add", &format!("{v4}/24"), "dev", &lab.client_iface],
        )?;
        ip_in(
            &lab.client_ns,
            &[
                "-6",
                "addr",
                "add",
                &format!("{v6}/64"),
                "dev",
                &lab.client_iface,
                "nodad",
            ],
        )?;
        sources.extend([IpAddr::V4(v4), IpAddr::V6(v6)]);
    }
    Ok(sources)
}

/// Per kind (in `ROUND`'s order), how many sessions ended each way (in `ENDS`' order).
type Tallies = Vec<[AtomicUsize; 4]>;

/// Plays sessions at `RATE` from the client namespace until the duration has passed.
struct Player {
    played: Arc<AtomicUsize>,
    done: Arc<AtomicBool>,
    tallies: Arc<Tallies>,
    thread: thread::JoinHandle<()>,
}

impl Player {
    fn start(lab: &Lab, bogus: Vec<IpAddr>, duration: Duration) -> Player {
        let played = Arc::new(AtomicUsize::new(0));
        let done = Arc::new(AtomicBool::new(false));
        let tallies: Arc<Tallies> = Arc::new(
            ROUND
                .iter()
                .map(|_| std::array::from_fn(|_| AtomicUsize::new(0)))
                .collect(),
        );
        let (counting, finishing, tally) =
            (Arc::clone(&played), Arc::clone(&done), Arc::clone(&tallies));
        let ns = lab.client_ns.clone();
        let thread = thread::spawn(move || {
            // Session threads inherit the namespace of this one.
            in_netns(&ns, move || play(&bogus, duration, &counting, &tally));
            finishing.store(true, Ordering::SeqCst);
        });
        Player {
            played,
            done,
            tallies,
            thread,
        }
    }

    fn played(&self) -> usize {
        self.played.load(Ordering::SeqCst)
    }

    /// Whether every session has been played to its end.
    fn finished(&self) -> bool {
        self.done.load(Ordering::SeqCst)
    }

    fn join(self) -> Report {
        let _ = self.thread.join();
        Report {
            tallies: self
                .tallies
                .iter()
                .map(|row| row.each_ref().map(|c| c.load(Ordering::SeqCst)))
                .collect(),
        }
    }
}

fn play(bogus: &[IpAddr], duration: Duration, played: &Arc<AtomicUsize>, tallies: &Arc<Tallies>) {
    let good_v4 = IpAddr::V4(lab::client_v4(0));
    let good_v6 = IpAddr::V6(lab::client_v6(0));
    let running = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut sessions = Vec::new();
    let mut bogus_played = 0;
    let mut i = 0usize;
    while started.elapsed() < duration {
        let due = started + Duration::from_secs_f64(i as f64 / RATE);
        thread::sleep(due.saturating_duration_since(Instant::now()));
        if running.load(Ordering::SeqCst) >= MAX_RUNNING {
            println!("soak: {MAX_RUNNING} sessions still running: the player waits");
            while running.load(Ordering::SeqCst) >= MAX_RUNNING {
                thread::sleep(Duration::from_millis(10));
            }
        }
        let slot = i % ROUND.len();
        let kind = ROUND[slot];
        // The other good kinds alternate families, round by round, from the lab's first
        // client (its names resolve to it); bogus ones walk the bogus sources, a dozen
        // sessions each.
        let source = match kind {
            _ if kind.bogus() => {
                bogus_played += 1;
                bogus[(bogus_played / SESSIONS_PER_BOGUS_SOURCE) % bogus.len()]
            }
            Kind::Good { v6 } if v6 => good_v6,
            Kind::Good { .. } => good_v4,
            _ if (i / ROUND.len()) % 2 == 1 => good_v6,
            _ => good_v4,
        };
        let (running, tallies) = (Arc::clone(&running), Arc::clone(tallies));
        running.fetch_add(1, Ordering::SeqCst);
        played.fetch_add(1, Ordering::SeqCst);
        sessions.push(thread::spawn(move || {
            let end = session(kind, source);
            tallies[slot][end as usize].fetch_add(1, Ordering::SeqCst);
            running.fetch_sub(1, Ordering::SeqCst);
        }));
        sessions.retain(|s: &thread::JoinHandle<()>| !s.is_finished());
        i += 1;
    }
    for session in sessions {
        let _ = session.join();
    }
}

/// One session of `kind` from `source` (port chosen by the kernel) to the MX of its family.
fn session(kind: Kind, source: IpAddr) -> End {
    let server = SocketAddr::new(mx_for(source), SMTP_PORT);
    let Ok(stream) = connect_from_within(SocketAddr::new(source, 0), server, CONNECT_TIMEOUT)
    else {
        return End::NoConnection;
    };
    let Ok((mut reader, mut writer)) = conversation(stream, Duration::from_secs(10)) else {
        return End::Cut;
    };
    if reply_code(&mut reader) != Some(220) {
        return End::Cut;
    }
    let mail = "MAIL FROM:<soak@example.net>\r\n";
    let rcpt = "RCPT TO:<postmaster@example.org>\r\n";
    let data = "DATA\r\n";
    let message = "Subject: soak\r\n\r\nA soak message.\r\n.\r\n";
    // The fixture DNS's names of the lab's first client, per family.
    let (ehlo, name) = match source {
        IpAddr::V4(_) => ("EHLO mail.example.net\r\n", "mail.example.net"),
        IpAddr::V6(_) => ("EHLO v6.example.net\r\n", "v6.example.net"),
    };
    // Each step: what to write (as segments, 50 ms apart), and the replies it expects.
    let steps: Vec<(Vec<&str>, Vec<u16>)> = match kind {
        Kind::Good { .. } => vec![
            (vec![ehlo], vec![250]),
            (vec![mail], vec![250]),
            (vec![rcpt], vec![250]),
            (vec![data], vec![354]),
            (vec![message], vec![250]),
        ],
        Kind::Pipelining => {
            let pipelined = [ehlo, mail, rcpt, data].concat();
            return converse(
                &mut reader,
                &mut writer,
                &[
                    (vec![&pipelined], vec![250, 250, 250, 354]),
                    (vec![message], vec![250]),
                ],
            );
        }
        Kind::Dribbling => {
            let (head, tail) = name.split_at(4);
            let segments = vec!["EH", "LO ", head, tail, "\r", "\n"];
            vec![(segments, vec![250]), (vec![mail], vec![250])]
        }
        Kind::Bogus(greeting) => {
            let line = format!("{greeting}\r\n");
            return converse(
                &mut reader,
                &mut writer,
                &[(vec![&line], vec![250]), (vec![mail], vec![250])],
            );
        }
        Kind::NoHelo => vec![(vec![mail], vec![250])],
        Kind::VanishMidLine => {
            if writer.write_all(b"EHLO mail.exa").is_err() {
                return End::Cut;
            }
            // A reset on close (linger 0): the client is gone at once, no FIN handshake.
            let _ = SockRef::from(&writer).set_linger(Some(Duration::ZERO));
            return End::Played;
        }
        Kind::VanishAfterHelo => {
            if writer.write_all(ehlo.as_bytes()).is_err() {
                return End::Cut;
            }
            // Gone without QUIT once answered: the connection closes as it is dropped.
            return match reply_code(&mut reader) {
                Some(250) => End::Played,
                Some(_) => End::Refused,
                None => End::Cut,
            };
        }
    };
    converse(&mut reader, &mut writer, &steps)
}

/// Plays `steps` (each: segments written 50 ms apart, then the replies expected) and says
/// QUIT; a reply other than expected ends the session (`Refused`).
fn converse(
    reader: &mut BufReader<TcpStream>,
    writer: &mut TcpStream,
    steps: &[(Vec<&str>, Vec<u16>)],
) -> End {
    for (segments, expected) in steps {
        for (n, segment) in segments.iter().enumerate() {
            if n > 0 {
                thread::sleep(Duration::from_millis(50));
            }
            if writer.write_all(segment.as_bytes()).is_err() {
                return End::Cut;
            }
        }
        for code in expected {
            match reply_code(reader) {
                Some(got) if got == *code => {}
                Some(_) => {
                    let _ = writer.write_all(b"QUIT\r\n");
                    return End::Refused;
                }
                None => return End::Cut,
            }
        }
    }
    let _ = writer.write_all(b"QUIT\r\n");
    let _ = reply_code(reader);
    End::Played
}

/// How the sessions of each kind ended, seen from the clients.
struct Report {
    tallies: Vec<[usize; 4]>,
}

impl Report {
    fn played(&self) -> usize {
        self.tallies.iter().flatten().sum()
    }

    fn print(&self) {
        println!("sessions played, by kind and end as the client saw it:");
        println!(
            "  {:<28} {}",
            "kind",
            ENDS.map(|e| format!("{e:>13}")).join("")
        );
        for (slot, row) in self.tallies.iter().enumerate() {
            let kind = format!("{:?}", ROUND[slot]);
            println!("  {kind:<28} {}", row.map(|n| format!("{n:>13}")).join(""));
        }
        println!("  total {}", self.played());
    }
}

#[cfg(test)]
mod tests {
    use super::{Sample, accounting, sample_failures};

    fn sample(seconds: u64, rss_kib: u64, accounted: f64) -> Sample {
        Sample {
            seconds,
            played: 100,
            accounted,
            rss_kib,
            open_fds: 30,
            runtime_tasks: 14.0,
            reassembly_flows: 10.0,
            policy_queue: 0.0,
            dns_in_flight: 0.0,
            kernel_flows: 100,
            deny_entries: 5.0,
            ringbuf_dropped: 0.0,
            fail_open: 0.0,
            judged: accounted,
            syn_dropped: 0.0,
            abandoned: 0.0,
        }
    }

    #[test]
    fn the_accounting_adds_every_verdict_and_abandon_cause() {
        let page = "# HELP helo_filter_verdicts_total Verdicts\n\
                    helo_filter_verdicts_total{verdict=\"accept\",reason=\"none\"} 7\n\
                    helo_filter_verdicts_total{verdict=\"reject\",reason=\"bare_ip\"} 3\n\
                    helo_filter_fail_open_total{cause=\"queue_full\"} 2\n\
                    helo_filter_fail_open_total{cause=\"dns_tempfail\"} 9\n\
                    helo_filter_syn_dropped_total 4\n\
                    helo_filter_flows_abandoned_total{cause=\"timeout\"} 5\n\
                    helo_filter_flows_abandoned_total{cause=\"table_full\"} 1\n";
        // dns_tempfail sessions are judged too: counted once, among the verdicts.
        assert_eq!(accounting(page).expect("a page"), (10.0, 2.0, 4.0, 6.0));
        let without_syn_dropped = page.replace("helo_filter_syn_dropped_total 4\n", "");
        assert!(accounting(&without_syn_dropped).is_err());
    }

    #[test]
    fn a_session_unaccounted_for_fails_the_soak() {
        let samples = [sample(10, 1000, 50.0), sample(20, 1000, 99.0)];
        let failures = sample_failures(&samples, 100, 2).expect("samples");
        assert_eq!(failures.len(), 1, "{failures:?}");
        assert!(failures[0].contains("a difference of 1"), "{failures:?}");
        let samples = [sample(10, 1000, 50.0), sample(20, 1000, 100.0)];
        assert_eq!(
            sample_failures(&samples, 100, 2).expect("samples"),
            Vec::<String>::new()
        );
    }

    #[test]
    fn a_bound_passed_fails_the_soak() {
        let mut peak = sample(10, 1000, 100.0);
        peak.reassembly_flows = 16_385.0;
        peak.policy_queue = 4_097.0;
        let samples = [peak, sample(20, 1000, 100.0)];
        let failures = sample_failures(&samples, 100, 2).expect("samples");
        assert_eq!(failures.len(), 2, "{failures:?}");
        assert!(
            failures[0].starts_with("reassembly flows: 16385"),
            "{failures:?}"
        );
        assert!(
            failures[1].starts_with("policy queue: 4097"),
            "{failures:?}"
        );
    }

    #[test]
    fn rss_growth_from_minute_5_is_checked_on_long_runs_only() {
        let samples: Vec<Sample> = (1..=90)
            .map(|n| sample(n * 10, if n * 10 < 300 { 500 } else { 1000 + n }, 100.0))
            .collect();
        // 1030 KiB at minute 5, 1090 at the end: +5.8 %.
        assert!(
            sample_failures(&samples, 100, 15)
                .expect("samples")
                .is_empty()
        );
        let mut grown = samples.clone();
        grown.last_mut().expect("a sample").rss_kib = 1134;
        let failures = sample_failures(&grown, 100, 15).expect("samples");
        assert_eq!(failures.len(), 1, "{failures:?}");
        assert!(failures[0].starts_with("RSS grew 10.1 %"), "{failures:?}");
        // A 2-minute run has no minute 5: not checked.
        assert!(sample_failures(&grown, 100, 2).expect("samples").is_empty());
    }
}
