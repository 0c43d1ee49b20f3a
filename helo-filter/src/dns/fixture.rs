//! Test support: a real dnsmasq serving `tests-data/dns-fixture.txt` on a free loopback port,
//! logging every query so tests can count what reached the wire. Killed on drop.

use std::fs;
use std::io::Read;
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::policy::test_data_path;

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A running dnsmasq.
pub struct Dnsmasq {
    child: Child,
    /// Where it listens (UDP and TCP).
    pub addr: SocketAddr,
    dir: PathBuf,
    log: PathBuf,
}

/// The dnsmasq options that serve the fixture's records.
pub fn fixture_args() -> Vec<String> {
    let path = test_data_path("dns-fixture.txt");
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
    /// Starts dnsmasq with the fixture records, the given `--local-ttl` (dnsmasq's default is 0)
    /// and extra options. Panics with a clear message when dnsmasq is not installed.
    pub fn start(local_ttl: Option<u32>, extra: &[String]) -> Dnsmasq {
        let bin = ["/usr/sbin/dnsmasq", "/usr/bin/dnsmasq", "/sbin/dnsmasq"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .unwrap_or_else(|| {
                panic!(
                    "dnsmasq is not installed: the DNS tests need it (Debian: apt-get install -y \
                     dnsmasq-base)"
                )
            });
        let mut last_err = String::new();
        for _ in 0..5 {
            let n = SEQ.fetch_add(1, Ordering::Relaxed);
            let dir = std::env::temp_dir()
                .join(format!("helo-filter-dnsmasq-{}-{n}", std::process::id()));
            fs::create_dir_all(&dir).expect("create the dnsmasq work directory");
            let log = dir.join("queries.log");
            let port = free_port();
            let mut cmd = Command::new(bin);
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
            let mut child = cmd
                .spawn()
                .unwrap_or_else(|e| panic!("cannot run {bin}: {e}"));
            let addr: SocketAddr = ([127, 0, 0, 1], port).into();
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                if let Ok(Some(status)) = child.try_wait() {
                    let mut err = String::new();
                    if let Some(mut e) = child.stderr.take() {
                        let _ = e.read_to_string(&mut err);
                    }
                    last_err = format!("dnsmasq exited with {status}: {err}");
                    break;
                }
                if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
                    return Dnsmasq {
                        child,
                        addr,
                        dir,
                        log,
                    };
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    last_err = "dnsmasq did not start listening within 5 s".into();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = fs::remove_dir_all(&dir);
        }
        panic!("cannot start dnsmasq: {last_err}");
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
