//! Load for the lab benchmarks: whole SMTP sessions from a namespace (good ones through
//! smtp-source; bogus ones through a small client of our own, because smtp-source gives up
//! at the first refused recipient or reset connection, which is what a bogus session meets),
//! a SYN flood with hping3, and the host's CPU time from `/proc/stat`.

use std::{
    io::Write as _,
    net::{IpAddr, SocketAddr, TcpStream},
    process::{Child, Stdio},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{
    lab::{Lab, SMTP_PORT},
    netns::in_netns,
    sessions::{connect_from_within, conversation, mx_for, reply_code},
};

/// How the sessions of one load ended.
#[derive(Clone, Copy, Debug, Default)]
pub struct Outcomes {
    /// The message was accepted (250 after the data).
    pub delivered: usize,
    /// A command got a 4xx/5xx reply.
    pub refused: usize,
    /// The connection was reset, closed or timed out mid-session.
    pub cut: usize,
    /// No connection: the SYN went unanswered for the load's `connect_timeout` (a source
    /// denied at the SYN) or was refused.
    pub unanswered: usize,
    pub elapsed: Duration,
}

impl Outcomes {
    pub fn total(&self) -> usize {
        self.delivered + self.refused + self.cut + self.unanswered
    }

    /// Sessions per second, however they ended.
    pub fn rate(&self) -> f64 {
        self.total() as f64 / self.elapsed.as_secs_f64()
    }
}

/// One SMTP load: `count` sessions greeting with `helos` in turn, from `sources` in turn
/// (port chosen by the kernel) to the MX address of their family, `concurrency` at once, from
/// the lab's client namespace.
pub struct Load {
    pub sources: Vec<IpAddr>,
    pub helos: Vec<&'static str>,
    pub count: usize,
    pub concurrency: usize,
    /// Waited after each reply before the next command: a client this far away (one round
    /// trip) sends its next command this late. The lab's own round trip is about 50 µs.
    pub think: Duration,
    /// How long a client waits for its connection (the SYN-ACK) before it gives the session
    /// up: a bot whose SYNs a denial drops gives up too, and tries again later.
    pub connect_timeout: Duration,
}

impl Load {
    /// Plays the load and waits for its end.
    pub fn run(&self, lab: &Lab) -> Outcomes {
        let next = Arc::new(AtomicUsize::new(0));
        let tallies = Arc::new([
            AtomicUsize::new(0),
            AtomicUsize::new(0),
            AtomicUsize::new(0),
            AtomicUsize::new(0),
        ]);
        let (sources, helos, count, think, connect_timeout) = (
            self.sources.clone(),
            self.helos.clone(),
            self.count,
            self.think,
            self.connect_timeout,
        );
        let workers = self.concurrency;
        let started = Instant::now();
        let counted = Arc::clone(&tallies);
        in_netns(&lab.client_ns, move || {
            let threads: Vec<_> = (0..workers)
                .map(|_| {
                    let (next, tallies) = (Arc::clone(&next), Arc::clone(&counted));
                    let (sources, helos) = (sources.clone(), helos.clone());
                    // Threads inherit the namespace of the thread that starts them.
                    thread::spawn(move || {
                        loop {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            if i >= count {
                                break;
                            }
                            let source = sources[i % sources.len()];
                            let server = SocketAddr::new(mx_for(source), SMTP_PORT);
                            let helo = helos[i % helos.len()];
                            let client = SocketAddr::new(source, 0);
                            let end = match connect_from_within(client, server, connect_timeout) {
                                Ok(stream) => session(stream, helo, think),
                                Err(_) => End::Unanswered,
                            };
                            tallies[end as usize].fetch_add(1, Ordering::Relaxed);
                        }
                    })
                })
                .collect();
            for t in threads {
                let _ = t.join();
            }
        });
        Outcomes {
            delivered: tallies[End::Delivered as usize].load(Ordering::Relaxed),
            refused: tallies[End::Refused as usize].load(Ordering::Relaxed),
            cut: tallies[End::Cut as usize].load(Ordering::Relaxed),
            unanswered: tallies[End::Unanswered as usize].load(Ordering::Relaxed),
            elapsed: started.elapsed(),
        }
    }
}

#[derive(Clone, Copy)]
enum End {
    Delivered = 0,
    Refused = 1,
    Cut = 2,
    Unanswered = 3,
}

/// One session on a connected stream as smtp-source plays it: EHLO, MAIL, RCPT, DATA, QUIT.
fn session(stream: TcpStream, helo: &str, think: Duration) -> End {
    let Ok((mut reader, mut writer)) = conversation(stream, Duration::from_secs(10)) else {
        return End::Cut;
    };
    let steps: [(&str, u16); 6] = [
        ("", 220),
        (&format!("EHLO {helo}\r\n"), 250),
        ("MAIL FROM:<bench@example.net>\r\n", 250),
        ("RCPT TO:<postmaster@example.org>\r\n", 250),
        ("DATA\r\n", 354),
        ("Subject: bench\r\n\r\nA benchmark message.\r\n.\r\n", 250),
    ];
    for (command, expected) in steps {
        if !command.is_empty() {
            thread::sleep(think);
            if writer.write_all(command.as_bytes()).is_err() {
                return End::Cut;
            }
        }
        match reply_code(&mut reader) {
            Some(code) if code == expected => {}
            Some(_) => {
                let _ = writer.write_all(b"QUIT\r\n");
                return End::Refused;
            }
            None => return End::Cut,
        }
    }
    let _ = writer.write_all(b"QUIT\r\n");
    let _ = reply_code(&mut reader);
    End::Delivered
}

/// `count` good sessions with smtp-source (`concurrency` at once) greeting with `helo`, from
/// the client namespace's first address; how long they took. An error if smtp-source failed.
pub fn smtp_source(
    lab: &Lab,
    server: IpAddr,
    helo: &str,
    count: usize,
    concurrency: usize,
) -> anyhow::Result<Duration> {
    let target = match server {
        IpAddr::V4(a) => format!("{a}:{SMTP_PORT}"),
        IpAddr::V6(a) => format!("[{a}]:{SMTP_PORT}"),
    };
    let started = Instant::now();
    let out = lab
        .command_in(&lab.client_ns, "smtp-source")
        .args(["-s", &concurrency.to_string(), "-m", &count.to_string()])
        .args([
            "-M",
            helo,
            "-f",
            "bench@example.net",
            "-t",
            "postmaster@example.org",
        ])
        .arg(&target)
        .stdin(Stdio::null())
        .output()
        .context("running smtp-source (Debian package postfix)")?;
    if !out.status.success() {
        bail!(
            "smtp-source failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(started.elapsed())
}

/// A SYN flood to the MX's SMTP port from a spoofed `source`, at `interval_us` between
/// packets (`None`: as fast as hping3 goes); stopped on drop.
pub struct SynFlood(Child);

impl SynFlood {
    pub fn start(
        lab: &Lab,
        source: IpAddr,
        server: IpAddr,
        interval_us: Option<u32>,
    ) -> anyhow::Result<SynFlood> {
        let mut command = lab.command_in(&lab.client_ns, "hping3");
        command
            .args(["-q", "-S", "-p", &SMTP_PORT.to_string()])
            .args(["-a", &source.to_string()]);
        match interval_us {
            Some(us) => command.args(["-i", &format!("u{us}")]),
            None => command.arg("--flood"),
        };
        let child = command
            .arg(server.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting hping3")?;
        // Let it reach its rate before anything is measured.
        thread::sleep(Duration::from_millis(300));
        Ok(SynFlood(child))
    }
}

impl Drop for SynFlood {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The whole host's busy CPU time so far (user + system + softirq, all CPUs), from
/// `/proc/stat`: the XDP program runs in softirq, so its cost counts.
pub fn host_cpu() -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string("/proc/stat").context("/proc/stat")?;
    let fields: Vec<u64> = stat
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("cpu "))
        .context("/proc/stat: no cpu line")?
        .split_whitespace()
        .map(|f| f.parse().context("/proc/stat: a field is not a number"))
        .collect::<anyhow::Result<_>>()?;
    // user nice system idle iowait irq softirq …
    let (user, system, softirq) = (fields[0], fields[2], fields[6]);
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Ok(Duration::from_secs_f64(
        (user + system + softirq) as f64 / ticks as f64,
    ))
}
