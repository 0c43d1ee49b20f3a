//! The daemon under systemd's `Type=notify` contract, checked through `NOTIFY_SOCKET`
//! directly (PID 1 here is not systemd): READY=1 only once every interface is attached,
//! none when an attach fails, WATCHDOG=1 while idle when a watchdog is asked for, and
//! STOPPING=1 at the end; SIGHUP reloads `run` and `policy` instead of ending them.

use std::{
    io::{BufRead as _, BufReader},
    os::unix::net::{UnixDatagram, UnixStream},
    path::{Path, PathBuf},
    process::{Child, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use helo_filter_tests::{e2e::*, policy_client::*, require_root};
use xtask::{
    daemon::Daemon,
    lab::Lab,
    process,
    sessions::{self, Greeting},
};

/// A Unix datagram socket standing in for systemd's notification socket: every datagram
/// is kept with the time it arrived.
struct NotifySocket {
    path: PathBuf,
    received: Arc<Mutex<Vec<(SystemTime, String)>>>,
}

impl NotifySocket {
    fn bind(dir: &Path) -> NotifySocket {
        std::fs::create_dir_all(dir).expect("notify dir");
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let socket = UnixDatagram::bind(&path).expect("binding the notify socket");
        let received = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&received);
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = socket.recv(&mut buf) {
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                sink.lock()
                    .expect("received")
                    .push((SystemTime::now(), text));
            }
        });
        NotifySocket { path, received }
    }

    fn path(&self) -> String {
        self.path.to_string_lossy().into_owned()
    }

    /// The datagrams that are (or contain) the assignment `state`, with their arrival times.
    fn got(&self, state: &str) -> Vec<SystemTime> {
        self.received
            .lock()
            .expect("received")
            .iter()
            .filter(|(_, text)| text.lines().any(|l| l == state))
            .map(|(at, _)| *at)
            .collect()
    }

    fn all(&self) -> Vec<String> {
        self.received
            .lock()
            .expect("received")
            .iter()
            .map(|(_, t)| t.clone())
            .collect()
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The time a log line was written: its leading RFC 3339 UTC timestamp
/// (`2026-12-01T22:00:50.123456Z`), as microseconds since the epoch.
fn logged_at(line: &str) -> u128 {
    let stamp = line.split_whitespace().next().unwrap_or_default();
    let parse = || -> Option<u128> {
        let (date, time) = stamp.strip_suffix('Z')?.split_once('T')?;
        let mut ymd = date.split('-').map(|p| p.parse::<i64>().ok());
        let (y, m, d) = (ymd.next()??, ymd.next()??, ymd.next()??);
        let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
        let mut parts = hms.split(':').map(|p| p.parse::<u128>().ok());
        let (h, min, s) = (parts.next()??, parts.next()??, parts.next()??);
        let micros: u128 = format!("{frac:0<6}")[..6].parse().ok()?;
        // Days since 1970-01-01 of a proleptic Gregorian date (March-based years).
        let y = if m <= 2 { y - 1 } else { y };
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let mp = (m + 9) % 12;
        let doy = (153 * mp + 2) / 5 + d - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        let days = u128::try_from(era * 146_097 + doe - 719_468).ok()?;
        Some((((days * 24 + h) * 60 + min) * 60 + s) * 1_000_000 + micros)
    };
    parse().unwrap_or_else(|| panic!("no timestamp on the log line {line:?}"))
}

fn micros(at: SystemTime) -> u128 {
    at.duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_micros()
}

/// READY=1 arrives once, after every `attached iface=` line and the `ready:` line; with
/// `WATCHDOG_USEC` set, WATCHDOG=1 keeps arriving while no mail comes; STOPPING=1 at the
/// end.
#[test]
fn ready_comes_after_every_attach_and_the_idle_watchdog_is_fed() {
    let lab = lab("rd");
    let notify = NotifySocket::bind(&lab.daemon_dir().join("notify"));
    let socket = notify.path();
    let daemon = Daemon::start_with_env(
        &lab,
        &[],
        &[("NOTIFY_SOCKET", &socket), ("WATCHDOG_USEC", "1500000")],
        false,
    )
    .expect("starting the daemon");
    process::wait_until(Duration::from_secs(5), || !notify.got("READY=1").is_empty())
        .unwrap_or_else(|_| panic!("no READY=1; got {:?}", notify.all()));
    let ready = notify.got("READY=1");
    assert_eq!(ready.len(), 1, "{:?}", notify.all());
    let lines = daemon.lines();
    let attached: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("attached iface="))
        .collect();
    assert!(
        !attached.is_empty(),
        "no attach logged:\n{}",
        lines.join("\n")
    );
    let ready_line = lines
        .iter()
        .find(|l| l.contains("ready: capturing"))
        .expect("the ready line");
    for line in attached.iter().copied().chain([ready_line]) {
        assert!(
            logged_at(line) <= micros(ready[0]),
            "READY=1 came before {line:?}"
        );
    }
    assert!(
        lines.iter().any(|l| l.contains("watchdog: a probe")),
        "{}",
        lines.join("\n")
    );

    // Idle: no session at all, and the watchdog is fed every 0.5 s all the same.
    let before = notify.got("WATCHDOG=1").len();
    thread::sleep(Duration::from_secs(3));
    let fed = notify.got("WATCHDOG=1").len() - before;
    assert!(
        fed >= 4,
        "WATCHDOG=1 {fed} times in 3 s; got {:?}",
        notify.all()
    );
    assert!(
        lines.iter().all(|l| !l.contains("probe did not come back")),
        "{}",
        lines.join("\n")
    );

    let status = daemon.stop().expect("stopping");
    assert!(status.success(), "{status:?}");
    process::wait_until(Duration::from_secs(2), || {
        !notify.got("STOPPING=1").is_empty()
    })
    .unwrap_or_else(|_| panic!("no STOPPING=1; got {:?}", notify.all()));
}

/// A stage that stops taking sessions from its queue (the `fault-injection` build's
/// `HELO_FILTER_FAULT=stage_stall`, set off by the first session) no longer feeds the
/// watchdog: the probe waits in the queue, the daemon says so, and WATCHDOG=1 stops (systemd
/// would kill and restart it).
#[test]
fn a_stalled_stage_stops_feeding_the_watchdog() {
    let lab = lab("rs");
    let notify = NotifySocket::bind(&lab.daemon_dir().join("notify"));
    let socket = notify.path();
    let mut daemon = Daemon::start_with_env(
        &lab,
        &[],
        &[
            ("NOTIFY_SOCKET", &socket),
            ("WATCHDOG_USEC", "1500000"),
            ("HELO_FILTER_FAULT", "stage_stall"),
        ],
        false,
    )
    .expect("starting the daemon");
    process::wait_until(Duration::from_secs(5), || {
        notify.got("WATCHDOG=1").len() >= 2
    })
    .unwrap_or_else(|_| panic!("the idle daemon fed no watchdog: {:?}", notify.all()));

    let _ = sessions::raw_session(
        &lab,
        v4(0, 47101),
        &[b"EHLO mail.example.net\r\n"],
        Duration::ZERO,
    );
    daemon
        .wait_for(Duration::from_secs(10), |l| {
            l.contains("watchdog: the probe did not come back")
        })
        .unwrap_or_else(|e| panic!("{e}; log:\n{}", daemon.lines().join("\n")));
    let after = notify.got("WATCHDOG=1").len();
    thread::sleep(Duration::from_secs(2));
    assert_eq!(
        notify.got("WATCHDOG=1").len(),
        after,
        "the stalled daemon still fed the watchdog"
    );
}

/// An interface that cannot be attached ends the daemon non-zero, and READY=1 is never
/// sent: `systemctl start` fails.
#[test]
fn a_failed_attach_is_never_ready() {
    let lab = lab("rf");
    let notify = NotifySocket::bind(&lab.daemon_dir().join("notify"));
    let socket = notify.path();
    let error = Daemon::start_with_env(
        &lab,
        &["--iface", "hf-missing0"],
        &[("NOTIFY_SOCKET", &socket)],
        false,
    )
    .err()
    .expect("the daemon started without its interface");
    let error = format!("{error:#}");
    assert!(
        error.contains("hf-missing0") && !error.contains("exit: None"),
        "{error}"
    );
    assert!(
        !error.contains("exit: Some(ExitStatus(unix_wait_status(0)))"),
        "{error}"
    );
    thread::sleep(Duration::from_millis(200));
    assert!(notify.got("READY=1").is_empty(), "{:?}", notify.all());
}

fn completes(lab: &Lab, client: std::net::SocketAddr, helo: &str) -> bool {
    sessions::swaks_transcript(lab, client, Greeting::Ehlo, helo)
        .expect("swaks")
        .0
}

/// SIGHUP makes `run` reload its file (as `helo-filter reload` does): a new deny pattern
/// rejects, a bad file is refused and logged with the old one kept, and the daemon runs on.
#[test]
fn sighup_reloads_the_daemon() {
    let lab = lab("hu");
    let notify = NotifySocket::bind(&lab.daemon_dir().join("notify"));
    let socket = notify.path();
    let config = config_file(&lab, "[policy]\nbundle = \"standard\"\n");
    // Reputation out of the way: the rejects below must come from the deny pattern alone.
    let mut daemon = Daemon::start_with_env(
        &lab,
        &["--config", &config, NO_REPUTATION[0], NO_REPUTATION[1]],
        &[("NOTIFY_SOCKET", &socket)],
        false,
    )
    .expect("starting the daemon");
    assert!(completes(&lab, v4(0, 47001), "mail.example.net"));

    config_file(
        &lab,
        "[policy]\nbundle = \"standard\"\ndeny_helo = [\"mail.example.net\"]\n",
    );
    daemon.signal(libc::SIGHUP);
    let line = daemon
        .wait_for(Duration::from_secs(10), |l| {
            l.contains("configuration reloaded")
        })
        .unwrap_or_else(|e| panic!("{e}; log:\n{}", daemon.lines().join("\n")));
    assert!(line.contains("applied: policy"), "{line}");
    assert!(
        !completes(&lab, v4(0, 47002), "mail.example.net"),
        "the reloaded deny pattern did not reject"
    );
    // RELOADING=1 then READY=1 again.
    process::wait_until(Duration::from_secs(2), || notify.got("READY=1").len() == 2)
        .unwrap_or_else(|_| panic!("{:?}", notify.all()));
    assert_eq!(notify.got("RELOADING=1").len(), 1, "{:?}", notify.all());

    // A file that does not validate: refused, logged, the previous one in force.
    config_file(&lab, "[policy]\nbundle = \"paranoid\"\n");
    daemon.signal(libc::SIGHUP);
    let refusal = daemon
        .wait_for(Duration::from_secs(10), |l| {
            l.contains("SIGHUP: reload refused")
        })
        .unwrap_or_else(|e| panic!("{e}; log:\n{}", daemon.lines().join("\n")));
    assert!(refusal.contains(&config), "{refusal}");
    assert!(
        !completes(&lab, v4(0, 47003), "mail.example.net"),
        "the refused file took effect"
    );
    let status = daemon.stop().expect("stopping");
    assert!(status.success(), "the daemon did not run on: {status:?}");
}

/// `helo-filter policy` with its log lines collected.
struct PolicyService {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl PolicyService {
    fn signal(&self, signal: i32) {
        // SAFETY: kill(2) takes two integers; the pid is our child's, not yet reaped (only
        // `self.child` reaps it), so the kernel keeps it for the child.
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }

    fn wait_for(&self, what: &str) -> String {
        let mut found = None;
        let waited = process::wait_until(Duration::from_secs(10), || {
            found = self
                .lines
                .lock()
                .expect("lines")
                .iter()
                .find(|l| l.contains(what))
                .cloned();
            found.is_some()
        });
        found.unwrap_or_else(|| {
            panic!(
                "no log line {what:?} ({waited:?}):\n{}",
                self.lines.lock().expect("lines").join("\n")
            )
        })
    }
}

impl Drop for PolicyService {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// SIGHUP makes `policy` re-read its file: a new deny pattern rejects, a bad file is
/// refused and logged with the old engine kept; READY=1 once it listens.
#[test]
fn sighup_reloads_the_policy_service() {
    require_root();
    let dir = std::env::temp_dir().join(format!("hf-sighup-policy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let notify = NotifySocket::bind(&dir);
    let config = dir.join("helo-filter.toml");
    std::fs::write(&config, "[policy]\nbundle = \"standard\"\n").expect("config");
    let socket = dir.join("policy.sock");
    let (mut command, _metrics) = policy_service_command(&config, &socket);
    let mut child = command
        .env("RUST_LOG", "info")
        .env("NOTIFY_SOCKET", notify.path())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting helo-filter policy");
    let stderr = child.stderr.take().expect("stderr");
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&lines);
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            sink.lock().expect("lines").push(line);
        }
    });
    let service = PolicyService { child, lines };
    process::wait_until(Duration::from_secs(10), || {
        !notify.got("READY=1").is_empty()
    })
    .unwrap_or_else(|_| panic!("no READY=1; got {:?}", notify.all()));
    let ask = |helo: &str, instance: &str| {
        let stream = UnixStream::connect(&socket).expect("connecting");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        PolicyClient::new(stream).ask(rcpt_request("203.0.113.10", helo, instance).as_bytes())
    };
    assert!(ask("bad.example.net", "s1").contains("DUNNO"));

    std::fs::write(
        &config,
        "[policy]\nbundle = \"standard\"\ndeny_helo = [\"bad.example.net\"]\n",
    )
    .expect("config");
    service.signal(libc::SIGHUP);
    service.wait_for("configuration reloaded");
    let answer = ask("bad.example.net", "s2");
    assert!(answer.starts_with("550 "), "{answer}");

    std::fs::write(&config, "[policy]\nbundle = \"paranoid\"\n").expect("config");
    service.signal(libc::SIGHUP);
    let refusal = service.wait_for("SIGHUP: reload refused");
    assert!(refusal.contains(&*config.to_string_lossy()), "{refusal}");
    let answer = ask("bad.example.net", "s3");
    assert!(
        answer.starts_with("550 "),
        "the old engine was not kept: {answer}"
    );

    let mut service = service;
    assert!(
        service.child.try_wait().expect("try_wait").is_none(),
        "the service ended"
    );
    service.signal(libc::SIGTERM);
    process::wait_until(Duration::from_secs(10), || {
        service.child.try_wait().ok().flatten().is_some()
    })
    .expect("the service stops on SIGTERM");
    process::wait_until(Duration::from_secs(2), || {
        !notify.got("STOPPING=1").is_empty()
    })
    .unwrap_or_else(|_| panic!("no STOPPING=1; got {:?}", notify.all()));
    drop(service);
    drop(notify);
    let _ = std::fs::remove_dir_all(&dir);
}
