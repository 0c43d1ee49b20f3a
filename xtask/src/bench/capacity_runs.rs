//! How much the appliance takes on this machine: the knee (the HELO rate the daemon judges
//! before sessions fail open, raised step by step until the ring buffer drops events or the
//! policy queue overflows) and the scale (thousands of SMTP sessions held open after their
//! HELO at once: verdict latency, the kernel's flow table, the daemon's memory).

use std::{
    io::Write as _,
    net::{IpAddr, SocketAddr, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::Context as _;

use super::{
    figure::{Figure, Goal},
    lab_runs::{BOGUS, GOOD, HELO_TO_VERDICT, Sizes, filter_args, histogram_quantile, lab_named},
};
use crate::{
    daemon::{Daemon, family_sum, map_entries, metric_value, rss_kib},
    lab::{self, Lab, SMTP_PORT},
    netns::in_netns,
    process::wait_until,
    sessions::{connect_from_within, conversation, mx_for, reply_code},
};

/// Open files the scale run asks for, in this process (its clients) and in smtp-sink, which
/// inherits the limit: a socket per session on each side, and room.
const FILES: u64 = 65_536;
/// Client threads of the knee's load: enough to keep the paced rate with sessions in flight.
const KNEE_THREADS: usize = 64;
/// Client threads of the scale run.
const SCALE_THREADS: usize = 8;

/// Section 3 (lab), its capacity figures.
pub fn capacity(sizes: &Sizes) -> anyhow::Result<Vec<Figure>> {
    // Before smtp-sink starts, so that it inherits it.
    let files = raise_open_files(FILES)?;
    let mut lab = lab_named("c")?;
    // smtp-sink serves 256 connections at once unless told otherwise (`-m`).
    let sessions = sizes.scale_sessions + 1000;
    lab.start_smtp_sink_with(&["-m", &sessions.to_string()])?;
    let daemon = Daemon::start(&lab, &filter_args("rst"), false)?;
    let mut figures = vec![knee(&lab, &daemon, sizes)?];
    figures.extend(scale(&lab, &daemon, sizes, files)?);
    daemon.stop()?;
    Ok(figures)
}

/// One step of the knee: the rate asked for, and what the daemon made of it.
struct Step {
    asked: usize,
    achieved: f64,
    judged: f64,
    ring_drops: f64,
    queue_full: f64,
}

impl Step {
    fn clean(&self) -> bool {
        self.ring_drops == 0.0 && self.queue_full == 0.0
    }
}

fn knee(lab: &Lab, daemon: &Daemon, sizes: &Sizes) -> anyhow::Result<Figure> {
    let mut steps = Vec::new();
    for &rate in sizes.knee_rates {
        let count = (rate as f64 * sizes.knee_step.as_secs_f64()).round() as usize;
        let before = daemon.scrape()?;
        let helo = |i: usize| {
            if i.is_multiple_of(2) {
                GOOD
            } else {
                BOGUS[i / 2 % BOGUS.len()]
            }
        };
        let elapsed = paced(lab, count, rate, KNEE_THREADS, helo, false).elapsed;
        let after = settle(daemon, &before, count)?;
        let delta = |page_sum: fn(&str) -> f64| page_sum(&after) - page_sum(&before);
        steps.push(Step {
            asked: rate,
            achieved: count as f64 / elapsed.as_secs_f64(),
            judged: delta(|p| family_sum(p, "helo_filter_verdicts_total")),
            ring_drops: delta(|p| {
                metric_value(p, "helo_filter_ringbuf_dropped_total").unwrap_or(0.0)
            }),
            queue_full: delta(|p| {
                metric_value(p, "helo_filter_fail_open_total{cause=\"queue_full\"}").unwrap_or(0.0)
            }),
        });
        if !steps.last().is_some_and(Step::clean) {
            break;
        }
    }
    let knee = steps
        .iter()
        .take_while(|s| s.clean())
        .map(|s| s.achieved)
        .fold(0.0, f64::max);
    let described: Vec<String> = steps
        .iter()
        .map(|s| {
            format!(
                "{}/s asked, {:.0}/s played, {:.0} judged, {:.0} ring-buffer drops, {:.0} queue_full",
                s.asked, s.achieved, s.judged, s.ring_drops, s.queue_full
            )
        })
        .collect();
    let last_clean = steps.last().is_some_and(Step::clean);
    Ok(Figure::new(
        "lab",
        "knee_helos_per_s",
        "HELOs/s judged before sessions fail open",
        knee,
        "HELOs/s",
    )
    .reading(
        &format!(
            "Half good, half bogus sessions (connect, EHLO, its reply, QUIT) paced at rising \
             rates, {} s a step, each step's counters read once its sessions were judged: {}. \
             {}",
            sizes.knee_step.as_secs_f64(),
            described.join("; "),
            if last_clean {
                "No step dropped or overflowed: the figure is the load generator's ceiling on \
                 the same two cores (it plays below the rates asked), not the daemon's."
            } else {
                "The figure is the fastest step before the first drop or overflow."
            }
        ),
        "",
    ))
}

/// Waits until the sessions of a step are judged (or 10 s), then for the kernel counters'
/// next copy; the page after.
fn settle(daemon: &Daemon, before: &str, sessions: usize) -> anyhow::Result<String> {
    let judged = |page: &str| family_sum(page, "helo_filter_verdicts_total");
    let base = judged(before);
    let _ = wait_until(Duration::from_secs(10), || {
        daemon
            .scrape()
            .is_ok_and(|page| judged(&page) - base >= sessions as f64)
    });
    // Kernel counters are copied once a second.
    thread::sleep(Duration::from_millis(1200));
    daemon.scrape()
}

fn scale(lab: &Lab, daemon: &Daemon, sizes: &Sizes, files: u64) -> anyhow::Result<Vec<Figure>> {
    let flows_pin = lab.bpffs_dir()?.join("maps").join("FLOWS");
    let flows_before = map_entries(&flows_pin)?;
    let rss_before = rss_kib(daemon.pid())?;
    let before = daemon.scrape()?;
    let (n, rate) = (sizes.scale_sessions, sizes.scale_rate);
    let opened = paced(lab, n, rate, SCALE_THREADS, |_| GOOD, true);
    let held = opened.held.len();
    let after = settle(daemon, &before, held)?;
    let flows = map_entries(&flows_pin)?;
    let rss = rss_kib(daemon.pid())?;
    drop(opened.held);
    let how = format!(
        "{n} good sessions opened at {rate}/s at most (in {:.1} s) from the lab's {} IPv4 \
         client addresses, each held open after its EHLO reply: {held} held at once, {} failed \
         to open; smtp-sink (`-m`, its cap on connections, above that) and the clients allowed \
         {files} open files each.",
        opened.elapsed.as_secs_f64(),
        lab::CLIENTS,
        opened.failed,
    );
    let mut figures = vec![
        Figure::new(
            "lab",
            "scale_sessions_open",
            "SMTP sessions held open at once after their HELO",
            held as f64,
            "sessions",
        )
        .goal(Goal::AtLeast(n as f64))
        .reading(&how, "some sessions failed to open."),
    ];
    for (q, id) in [
        (0.5, "scale_helo_to_verdict_p50"),
        (0.99, "scale_helo_to_verdict_p99"),
    ] {
        let seconds = histogram_quantile(&before, &after, HELO_TO_VERDICT, q)
            .context("no HELO→verdict observations in the scale run")?;
        figures.push(
            Figure::new(
                "lab",
                id,
                &format!(
                    "HELO→verdict latency p{}, sessions piling up open",
                    q * 100.0
                ),
                seconds * 1000.0,
                "ms",
            )
            .reading(&how, ""),
        );
    }
    figures.push(
        Figure::new(
            "lab",
            "scale_flows",
            "entries in the kernel's flow table with the sessions open",
            flows as f64,
            "entries",
        )
        .against("before they opened", flows_before as f64)
        .reading(
            &format!(
                "{how} FLOWS is an LRU hash of 65,536 entries: a decided flow keeps its entry \
                 until the LRU reuses it, so the earlier runs' flows count too."
            ),
            "",
        ),
    );
    figures.push(
        Figure::new(
            "lab",
            "scale_daemon_rss",
            "daemon resident memory with the sessions open",
            rss as f64 / 1024.0,
            "MiB",
        )
        .against("before they opened", rss_before as f64 / 1024.0)
        .reading(
            &format!(
                "{how} Once judged, an open session costs the daemon nothing of its own: what \
                 grows is its bounded tables (decided flows, recent verdicts)."
            ),
            "",
        ),
    );
    Ok(figures)
}

/// Sessions played at a paced rate.
struct Paced {
    elapsed: Duration,
    /// The connections kept open (`keep`).
    held: Vec<TcpStream>,
    /// Sessions that did not get their EHLO answered.
    failed: usize,
}

/// Plays `count` sessions, the `i`-th started `i / rate` seconds in, by `threads` client
/// threads in the client namespace, from the lab's IPv4 client addresses in turn: each reads
/// the greeting, sends `EHLO helo(i)` and reads its reply; then QUIT and close, or, with
/// `keep`, it stays open.
fn paced(
    lab: &Lab,
    count: usize,
    rate: usize,
    threads: usize,
    helo: fn(usize) -> &'static str,
    keep: bool,
) -> Paced {
    let next = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let held = Arc::new(Mutex::new(Vec::new()));
    let started = Instant::now();
    let (counted, kept) = (Arc::clone(&failed), Arc::clone(&held));
    in_netns(&lab.client_ns, move || {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                let (next, failed, held) =
                    (Arc::clone(&next), Arc::clone(&counted), Arc::clone(&kept));
                // Threads inherit the namespace of the thread that starts them.
                thread::spawn(move || {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= count {
                            break;
                        }
                        let due = started + Duration::from_secs_f64(i as f64 / rate as f64);
                        thread::sleep(due.saturating_duration_since(Instant::now()));
                        let source = IpAddr::V4(lab::client_v4(i % lab::CLIENTS));
                        match greet(source, helo(i), keep) {
                            Some(stream) if keep => held.lock().expect("held").push(stream),
                            Some(_) => {}
                            None => {
                                failed.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                })
            })
            .collect();
        for worker in workers {
            let _ = worker.join();
        }
    });
    let held = std::mem::take(&mut *held.lock().expect("held"));
    Paced {
        elapsed: started.elapsed(),
        held,
        failed: failed.load(Ordering::Relaxed),
    }
}

/// Connects from `source`, reads the greeting, sends EHLO and reads its reply; the
/// connection if that reply was a 250 (after QUIT unless `keep`).
fn greet(source: IpAddr, helo: &str, keep: bool) -> Option<TcpStream> {
    let server = SocketAddr::new(mx_for(source), SMTP_PORT);
    let stream =
        connect_from_within(SocketAddr::new(source, 0), server, Duration::from_secs(5)).ok()?;
    let (mut reader, mut writer) = conversation(stream, Duration::from_secs(10)).ok()?;
    if reply_code(&mut reader)? != 220 {
        return None;
    }
    writer
        .write_all(format!("EHLO {helo}\r\n").as_bytes())
        .ok()?;
    let answered = reply_code(&mut reader) == Some(250);
    if !keep {
        let _ = writer.write_all(b"QUIT\r\n");
    }
    answered.then_some(writer)
}

/// Raises this process's limit of open files to `wanted`, or as far as its hard limit goes
/// where it cannot be raised (root without CAP_SYS_RESOURCE); the limit now in force.
fn raise_open_files(wanted: u64) -> anyhow::Result<u64> {
    let set = |files: u64, hard: u64| {
        let limit = libc::rlimit {
            rlim_cur: files,
            rlim_max: hard,
        };
        // SAFETY: setrlimit(2) reads the struct passed, valid for the call.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 }
    };
    if set(wanted, wanted.max(hard_open_files()?)) {
        return Ok(wanted);
    }
    let hard = hard_open_files()?;
    if set(hard, hard) {
        return Ok(hard);
    }
    Err(std::io::Error::last_os_error())
        .with_context(|| format!("raising the open-files limit to {hard}"))
}

fn hard_open_files() -> anyhow::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit(2) writes the struct passed, valid for the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error()).context("reading the open-files limit");
    }
    Ok(limit.rlim_max)
}
