//! The whole corpus through the `helo-filter check --json` binary: its verdict, its exit
//! status, one JSON object on one line, for rejects a primary reason the row allows, and for
//! every row the soft reasons and the score the row expects. DNS rows resolve through the
//! fixture dnsmasq.

use std::{
    fs::File,
    net::{SocketAddr, UdpSocket},
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use xtask::{
    corpus::{IDENTITY_ARGS, corpus},
    dns_fixture::Dnsmasq,
    paths::daemon_binary,
};

/// The soft reasons of `helo-policy.md` (its "Soft checks" table).
const SOFT: [&str; 4] = [
    "literal_mismatch",
    "dynamic",
    "dns_mismatch",
    "rdns_mismatch",
];

/// An empty configuration file, passed explicitly so that no file on this machine changes
/// what `check` sees.
fn empty_config() -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("hf-check-empty-{}.toml", std::process::id()));
    std::fs::write(&path, "").expect("writing an empty configuration");
    path
}

#[test]
fn every_corpus_row_through_the_check_binary() {
    let binary = daemon_binary();
    assert!(
        binary.exists(),
        "{} missing: cargo xtask test builds it",
        binary.display()
    );
    let dns = Dnsmasq::start(Some(60), &[]);
    let rows = corpus();
    assert!(rows.len() >= 50, "the corpus has {} rows", rows.len());
    let mut failures = Vec::new();
    let config = empty_config();
    for row in &rows {
        let mut command = Command::new(&binary);
        command
            .args(["check", "--json", "--ip", &row.client.to_string()])
            .arg("--config")
            .arg(&config)
            .args(IDENTITY_ARGS);
        if row.dns {
            command.args(["--dns-server", &dns.addr.to_string()]);
        } else {
            command.arg("--offline");
        }
        let out = command
            .arg("--")
            .arg(&row.helo)
            .output()
            .expect("running check");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let what = format!("line {} {:?} from {}", row.line, row.helo, row.client);
        assert_eq!(
            stdout.lines().count(),
            1,
            "{what}: one line expected: {stdout}"
        );
        let json: serde_json::Value = serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {stdout}"));
        let verdict = json["verdict"].as_str().unwrap_or_default();
        let reasons: Vec<&str> = json["reasons"]
            .as_array()
            .map(|a| a.iter().filter_map(|r| r.as_str()).collect())
            .unwrap_or_default();
        let expected_exit = if row.reject { 1 } else { 0 };
        let want = if row.reject { "reject" } else { "accept" };
        if verdict != want || out.status.code() != Some(expected_exit) {
            failures.push(format!(
                "{what}: got {verdict} {reasons:?} ({}), want {want}",
                out.status
            ));
        } else if row.reject
            && !reasons
                .first()
                .is_some_and(|r| row.reasons.iter().any(|a| a == r))
        {
            failures.push(format!(
                "{what}: primary {reasons:?} not among {:?}",
                row.reasons
            ));
        }
        let soft: Vec<&str> = reasons
            .iter()
            .copied()
            .filter(|r| SOFT.contains(r))
            .collect();
        let score = json["score"].as_u64();
        if soft != row.soft || score != Some(u64::from(row.score)) {
            failures.push(format!(
                "{what}: soft {soft:?} score {}, want soft {:?} score {} (all: {reasons:?})",
                json["score"], row.soft, row.score
            ));
        }
        assert_eq!(json["helo"], row.helo.as_str(), "{what}");
        assert!(
            json["score"].is_number() && json["notes"].is_array(),
            "{what}: {stdout}"
        );
    }
    assert!(
        failures.is_empty(),
        "{} rows failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn usage_errors_exit_2() {
    let status = Command::new(daemon_binary())
        .args(["check", "--json", "mail.example.net"])
        .output()
        .expect("running check");
    assert_eq!(
        status.status.code(),
        Some(2),
        "a missing --ip is a usage error"
    );
    let status = Command::new(daemon_binary())
        .args(["check", "--ip", "203.0.113.10", "--offline", "--config"])
        .arg(empty_config())
        .args(["--", "-mail.example.net"])
        .output()
        .expect("running check");
    assert_eq!(
        status.status.code(),
        Some(1),
        "a HELO after -- may start with '-'"
    );
}

/// How a test DNS server answers every query.
#[derive(Clone, Copy, Debug)]
enum Answering {
    /// A well-formed empty answer under another message id.
    WrongId,
    /// Junk bytes.
    Garbage,
    /// The right id and a header announcing one answer, cut off after the question.
    Truncated,
    /// Nothing.
    Silent,
}

/// A UDP server on 127.0.0.1 answering badly, until dropped.
struct BadDns {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl BadDns {
    fn start(how: Answering) -> BadDns {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind the test DNS server");
        socket
            .set_read_timeout(Some(Duration::from_millis(20)))
            .expect("read timeout");
        let addr = socket.local_addr().expect("local address");
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !stopped.load(Ordering::Relaxed) {
                let Ok((len, peer)) = socket.recv_from(&mut buf) else {
                    continue;
                };
                let query = &buf[..len];
                if len < 12 {
                    continue;
                }
                // QR, RD, RA; the query's counts but no additional records.
                let mut reply = query[..12].to_vec();
                reply[2..4].copy_from_slice(&[0x81, 0x80]);
                reply[10..12].copy_from_slice(&[0, 0]);
                let reply = match how {
                    Answering::Silent => continue,
                    Answering::WrongId => {
                        reply[0] ^= 0x5a;
                        reply[1] ^= 0xa5;
                        reply
                    }
                    Answering::Garbage => vec![0xde, 0xad, 0xbe, 0xef, 0x13, 0x37, 0xca, 0xfe],
                    Answering::Truncated => {
                        reply[6..8].copy_from_slice(&[0, 1]);
                        reply
                    }
                };
                let _ = socket.send_to(&reply, peer);
            }
        });
        BadDns { addr, stop }
    }
}

impl Drop for BadDns {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// `check` ends within its DNS deadline + 0.5 s whatever the server sends, at the default log
/// level and with `RUST_LOG=debug` (the resolver then logs to stderr from the runtime's worker
/// threads while the lookups run; `check` once held the stderr lock across them and hung).
#[test]
fn check_ends_by_its_dns_deadline_whatever_the_server_sends() {
    let binary = daemon_binary();
    assert!(
        binary.exists(),
        "{} missing: cargo xtask test builds it",
        binary.display()
    );
    let dir = std::env::temp_dir().join(format!("helo-filter-check-bin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temporary directory");
    let config = dir.join("check.toml");
    std::fs::write(&config, "[dns]\ndeadline_ms = 500\n").expect("writing the config");
    let limit = Duration::from_millis(500 + 500);
    let mut failures = Vec::new();
    for how in [
        Answering::WrongId,
        Answering::Garbage,
        Answering::Truncated,
        Answering::Silent,
    ] {
        let server = BadDns::start(how);
        for level in ["info", "debug"] {
            let what = format!("{how:?} with RUST_LOG={level}");
            let (out_path, err_path) = (dir.join("out"), dir.join("err"));
            let started = Instant::now();
            let mut child = Command::new(&binary)
                .args(["check", "--config"])
                .arg(&config)
                .args(["--dns-server", &server.addr.to_string()])
                .args(["--ip", "203.0.113.10", "mail.example.net"])
                .env("RUST_LOG", level)
                .stdout(Stdio::from(File::create(&out_path).expect("stdout file")))
                .stderr(Stdio::from(File::create(&err_path).expect("stderr file")))
                .spawn()
                .expect("running check");
            let status = loop {
                if let Some(status) = child.try_wait().expect("waiting for check") {
                    break Some(status);
                }
                if started.elapsed() > limit + Duration::from_secs(5) {
                    let _ = child.kill();
                    let _ = child.wait();
                    break None;
                }
                std::thread::sleep(Duration::from_millis(10));
            };
            let elapsed = started.elapsed();
            let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
            eprintln!("{what}: {elapsed:?}, {status:?}");
            match status {
                None => failures.push(format!("{what}: still running after {elapsed:?}")),
                Some(_) if elapsed > limit => {
                    failures.push(format!("{what}: took {elapsed:?} (limit {limit:?})"))
                }
                Some(s) if s.code() != Some(0) || !stdout.contains("dns_tempfail") => {
                    failures.push(format!("{what}: {s}, {stdout}"))
                }
                Some(_) => {}
            }
            let want = format!("dns_error={}:timeout", server.addr);
            if matches!(how, Answering::WrongId) && status.is_some() && !stdout.contains(&want) {
                failures.push(format!("{what}: no {want} in {stdout}"));
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
