//! A real dnsmasq serving the project's DNS fixture (`helo-filter/tests-data/dns-fixture.txt`),
//! logging every query so tests can count what reached the wire. Killed on drop.
//!
//! Used by the policy engine's DNS tests (on a free loopback port) and by the lab (on port 53
//! inside the MX namespace, where the daemon resolves through it).

use std::{
    fs,
    io::Read,
    net::{SocketAddr, TcpStream, UdpSocket},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use crate::{
    netns::{self, in_netns},
    paths::workspace_root,
};

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A running dnsmasq.
pub struct Dnsmasq {
    child: Child,
    /// Where it listens (UDP and TCP).
    pub addr: SocketAddr,
    dir: PathBuf,
    log: PathBuf,
}

/// The fixture file: one record a line, `NAME TYPE VALUE`.
pub fn fixture_path() -> PathBuf {
    workspace_root().join("helo-filter/tests-data/dns-fixture.txt")
}

/// The dnsmasq options that serve the fixture's records.
pub fn fixture_args() -> Vec<String> {
    let path = fixture_path();
    let text = fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read the DNS fixture {}: {e}", path.display()));
    let mut args = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut parts = line.splitn(3, char::is_whitespace);
        let (Some(name), Some(kind), Some(value)) = (parts.next(), parts.next(), parts.next())
        else {
            panic!("malformed fixture line {line:?}");
        };
        let value = value.trim();
        args.push(match kind {
            "A" | "AAAA" => format!("--host-record={name},{value}"),
            "MX" => {
                let (pref, target) = value
                    .split_once(char::is_whitespace)
                    .unwrap_or_else(|| panic!("malformed MX value {value:?}"));
                format!("--mx-host={name},{},{}", target.trim(), pref.trim())
            }
            "TXT" => format!("--txt-record={name},{}", value.trim_matches('"')),
            "PTR" => format!("--ptr-record={name},{value}"),
            other => panic!("fixture record type {other} is not supported"),
        });
    }
    args
}

/// A free UDP port on 127.0.0.1 (also free for TCP at the time of asking, most likely).
pub fn free_port() -> u16 {
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind an ephemeral UDP port");
    s.local_addr().expect("local address").port()
}

/// A UDP socket that receives queries and never answers, with its address. Keep it alive for
/// as long as the silence is needed.
pub fn black_hole() -> (UdpSocket, SocketAddr) {
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind a black-hole UDP socket");
    let a = s.local_addr().expect("local address");
    (s, a)
}

impl Dnsmasq {
    /// Starts dnsmasq on a free 127.0.0.1 port with the fixture records, the given
    /// `--local-ttl` (dnsmasq's default is 0) and extra options. Panics with a clear message
    /// when dnsmasq is not installed.
    pub fn start(local_ttl: Option<u32>, extra: &[String]) -> Dnsmasq {
        let mut last_err = String::new();
        for _ in 0..5 {
            match Dnsmasq::spawn(None, free_port(), local_ttl, extra) {
                Ok(dnsmasq) => return dnsmasq,
                Err(e) => last_err = e,
            }
        }
        panic!("cannot start dnsmasq: {last_err}");
    }

    /// Starts dnsmasq with the fixture on 127.0.0.1:`port` inside the network namespace `ns`.
    pub fn start_in_netns(ns: &str, port: u16, local_ttl: Option<u32>) -> Result<Dnsmasq, String> {
        Dnsmasq::spawn(Some(ns), port, local_ttl, &[])
    }

    fn spawn(
        ns: Option<&str>,
        port: u16,
        local_ttl: Option<u32>,
        extra: &[String],
    ) -> Result<Dnsmasq, String> {
        let bin = ["/usr/sbin/dnsmasq", "/usr/bin/dnsmasq", "/sbin/dnsmasq"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .unwrap_or_else(|| {
                panic!(
                    "dnsmasq is not installed: the DNS tests need it (Debian: apt-get install -y \
                     dnsmasq-base; cargo xtask setup installs it)"
                )
            });
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("helo-filter-dnsmasq-{}-{n}", std::process::id()));
        fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let log = dir.join("queries.log");
        let mut cmd = match ns {
            Some(ns) => netns::command_in(ns, bin),
            None => Command::new(bin),
        };
        cmd.args([
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--user=root",
            "--pid-file",
            "--bind-interfaces",
            "--listen-address=127.0.0.1",
            "--local=/#/",
            "--log-queries",
        ])
        .arg(format!("--port={port}"))
        .arg(format!("--log-facility={}", log.display()))
        .args(fixture_args())
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
        if let Some(ttl) = local_ttl {
            cmd.arg(format!("--local-ttl={ttl}"));
        }
        let mut child = cmd.spawn().map_err(|e| format!("cannot run {bin}: {e}"))?;
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let listening =
            move || TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok();
        let deadline = Instant::now() + Duration::from_secs(5);
        let failure = loop {
            if let Ok(Some(status)) = child.try_wait() {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                break format!("dnsmasq exited with {status}: {err}");
            }
            let up = match ns {
                Some(ns) => in_netns(ns, listening),
                None => listening(),
            };
            if up {
                return Ok(Dnsmasq {
                    child,
                    addr,
                    dir,
                    log,
                });
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break "dnsmasq did not start listening within 5 s".into();
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let _ = fs::remove_dir_all(&dir);
        Err(failure)
    }

    /// How many queries of this type for this name reached dnsmasq (from its query log).
    pub fn queries(&self, qtype: &str, name: &str) -> usize {
        let name = name.trim_end_matches('.');
        let needle = format!("query[{qtype}] {name} from");
        // dnsmasq writes the log as it answers; give a late line a moment to land.
        std::thread::sleep(Duration::from_millis(50));
        fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(&needle))
            .count()
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}
