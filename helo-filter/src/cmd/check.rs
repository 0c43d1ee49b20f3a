//! `helo-filter check [OPTIONS] --ip IP [--] HELO`: judge one HELO for one client address;
//! `check --replay FILE`: judge every (address, HELO) of a maillog or a TSV (`replay`).
//!
//! Exit status: 0 accept, 1 reject, 2 usage or configuration error (clap's own usage errors
//! exit with 2 as well). `--json` prints exactly one JSON object on one line:
//! `{"helo":…,"ip":…,"verdict":…,"reasons":[…],"notes":[…],"score":N}`.

use std::{io::Write, net::IpAddr, path::PathBuf};

use super::replay;
use crate::{
    config::PolicyArgs,
    policy::{HeloInput, PolicyEngine, Verdict},
};

/// `check [OPTIONS] --ip IP [--] HELO`
#[derive(clap::Args, Clone, Debug)]
pub struct CheckArgs {
    /// The client's address.
    #[arg(long, value_name = "IP", required_unless_present = "replay")]
    pub ip: Option<IpAddr>,
    /// Skip every check that needs DNS (a usage error beside --dns-server).
    #[arg(long, conflicts_with = "dns_server")]
    pub offline: bool,
    /// Print one JSON object on one line (with --replay: one per pair, then the totals).
    #[arg(long)]
    pub json: bool,
    /// Judge every (client address, HELO) pair in FILE instead: Postfix maillog lines
    /// carrying `helo=<…>` and the client's `[address]`, or `ADDRESS<TAB>HELO` lines; prints
    /// what the policy would have done to each, then the totals per reason.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["ip", "helo"])]
    pub replay: Option<PathBuf>,
    /// Identity, DNS and policy options.
    #[command(flatten)]
    pub policy: PolicyArgs,
    /// The HELO/EHLO argument (may be empty; write it after `--` when it starts with `-`).
    #[arg(value_name = "HELO", required_unless_present = "replay")]
    pub helo: Option<String>,
}

/// Exit status of an accept.
pub const EXIT_ACCEPT: i32 = 0;
/// Exit status of a reject.
pub const EXIT_REJECT: i32 = 1;
/// Exit status of a usage or configuration error.
pub const EXIT_USAGE: i32 = 2;

/// Runs the command, printing to stdout (errors to stderr); returns the exit status.
///
/// The verdict is reached first and only then are stdout and stderr locked: the resolver's
/// tasks log to stderr from the runtime's worker threads while the lookups run, and a lock
/// held across the await would block them (and so the lookups, and `check`) for ever.
pub async fn run(args: CheckArgs) -> i32 {
    if let Some(file) = &args.replay {
        return replay::run(&args, file).await;
    }
    let judged = judge(&args).await;
    let mut out = std::io::stdout().lock();
    let mut err = std::io::stderr().lock();
    print(&args, judged, &mut out, &mut err)
}

/// Runs the command with the given outputs; returns the exit status.
pub async fn run_with(args: &CheckArgs, out: &mut dyn Write, err: &mut dyn Write) -> i32 {
    let judged = judge(args).await;
    print(args, judged, out, err)
}

/// The verdict, or a usage or configuration error. Touches neither stdout nor stderr.
async fn judge(args: &CheckArgs) -> Result<Verdict, String> {
    let (ip, helo) = single(args)?;
    let engine = build_engine(args)?;
    let input = HeloInput::new(helo.as_bytes(), ip);
    Ok(engine.evaluate(&input).await)
}

/// The one address and HELO to judge (clap requires both without `--replay`).
fn single(args: &CheckArgs) -> Result<(IpAddr, &str), String> {
    match (args.ip, &args.helo) {
        (Some(ip), Some(helo)) => Ok((ip, helo)),
        _ => Err("--ip IP and a HELO, or --replay FILE".to_owned()),
    }
}

/// Writes the verdict (or the error) and gives the exit status.
fn print(
    args: &CheckArgs,
    judged: Result<Verdict, String>,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> i32 {
    let verdict = match judged {
        Ok(v) => v,
        Err(msg) => {
            let _ = writeln!(err, "helo-filter check: {msg}");
            return EXIT_USAGE;
        }
    };
    let Ok((ip, helo)) = single(args) else {
        return EXIT_USAGE;
    };
    let written = if args.json {
        writeln!(out, "{}", json_line(helo, ip, &verdict))
    } else {
        write!(out, "{}", human(helo, ip, &verdict))
    };
    if let Err(e) = written.and_then(|()| out.flush()) {
        let _ = writeln!(err, "helo-filter check: cannot write the verdict: {e}");
        return EXIT_USAGE;
    }
    if verdict.is_reject() {
        EXIT_REJECT
    } else {
        EXIT_ACCEPT
    }
}

pub(super) fn build_engine(args: &CheckArgs) -> Result<PolicyEngine, String> {
    let mut loaded = args.policy.load().map_err(|e| e.to_string())?;
    if args.offline {
        loaded.config.dns.enabled = false;
    }
    let file = loaded.validate().map_err(|e| e.to_string())?;
    file.build_engine(None).map_err(|e| {
        format!("{e} (use --dns-server ADDR:PORT, [dns] servers in the config, or --offline)")
    })
}

#[derive(serde::Serialize)]
struct JsonVerdict<'a> {
    helo: &'a str,
    ip: String,
    verdict: &'static str,
    reasons: Vec<&'static str>,
    notes: Vec<&'static str>,
    score: u32,
}

/// The one-line JSON form of a verdict.
pub fn json_line(helo: &str, ip: IpAddr, v: &Verdict) -> String {
    let j = JsonVerdict {
        helo,
        ip: ip.to_string(),
        verdict: v.decision.as_str(),
        reasons: v.reason_codes().map(|r| r.as_str()).collect(),
        notes: v.notes.iter().map(|n| n.as_str()).collect(),
        score: v.score,
    };
    serde_json::to_string(&j).expect("a verdict always serializes")
}

/// The human-readable form: a headline, then one line per failed check, then the notes and,
/// when a temporary DNS failure marked the verdict, `dns_error=SERVER:KIND`.
pub fn human(helo: &str, ip: IpAddr, v: &Verdict) -> String {
    let mut s = match v.primary() {
        Some(p) => format!("reject {helo:?} from {ip}: {}\n", p.summary()),
        None => format!("accept {helo:?} from {ip}\n"),
    };
    for f in &v.reasons {
        s.push_str(&format!("  {}: {}\n", f.reason, f.explanation));
    }
    if v.score > 0 {
        s.push_str(&format!("  score: {}\n", v.score));
    }
    if !v.notes.is_empty() {
        let notes: Vec<&str> = v.notes.iter().map(|n| n.as_str()).collect();
        s.push_str(&format!("  notes: {}\n", notes.join(", ")));
    }
    if let Some(e) = &v.dns_error {
        s.push_str(&format!("  dns_error={e}\n"));
    }
    s
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use clap::Parser;
    use xtask::dns_fixture::Dnsmasq;

    use super::*;
    use crate::dns::test_server::{BadServer, Misbehaviour};

    #[derive(clap::Parser, Debug)]
    #[command(name = "helo-filter")]
    enum Cli {
        Check(CheckArgs),
    }

    fn parse(argv: &[&str]) -> Result<CheckArgs, clap::Error> {
        let mut full = vec!["helo-filter", "check"];
        full.extend_from_slice(argv);
        Cli::try_parse_from(full).map(|Cli::Check(a)| a)
    }

    async fn exec(argv: &[&str]) -> (i32, String, String) {
        let args = match parse(argv) {
            Ok(a) => a,
            Err(e) => return (e.exit_code(), String::new(), e.to_string()),
        };
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let code = run_with(&args, &mut out, &mut err).await;
        (
            code,
            String::from_utf8(out).unwrap(),
            String::from_utf8(err).unwrap(),
        )
    }

    #[tokio::test]
    async fn exact_json_shape() {
        let (code, out, _) = exec(&[
            "--offline",
            "--json",
            "--ip",
            "203.0.113.10",
            "[203.0.113.11]",
        ])
        .await;
        assert_eq!(code, 0);
        assert_eq!(
            out,
            "{\"helo\":\"[203.0.113.11]\",\"ip\":\"203.0.113.10\",\"verdict\":\"accept\",\
             \"reasons\":[\"literal_mismatch\"],\"notes\":[\"offline\"],\"score\":2}\n"
        );
        let (code, out, _) = exec(&["--offline", "--json", "--ip", "203.0.113.10", "--", ""]).await;
        assert_eq!(code, 1);
        assert!(
            out.contains("\"helo\":\"\",") && out.contains("\"reasons\":[\"syntax\"]"),
            "{out}"
        );
    }

    #[tokio::test]
    async fn human_output_explains_each_failed_check() {
        let (code, out, _) = exec(&[
            "--offline",
            "--ip",
            "203.0.113.10",
            "--",
            "-mail.example.net",
        ])
        .await;
        assert_eq!(code, 1);
        assert!(
            out.starts_with("reject \"-mail.example.net\" from 203.0.113.10:"),
            "{out}"
        );
        assert!(
            out.contains("  syntax: label \"-mail\" starts with a hyphen\n"),
            "{out}"
        );
        let (code, out, _) = exec(&[
            "--offline",
            "--ip",
            "203.0.113.10",
            "--policy",
            "strict",
            "[203.0.113.11]",
        ])
        .await;
        assert_eq!(code, 1);
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines[1].starts_with("  literal_not_allowed: "), "{out}");
        assert!(lines[2].starts_with("  literal_mismatch: "), "{out}");
        let (code, out, _) = exec(&["--offline", "--ip", "127.0.0.1", "localhost"]).await;
        assert_eq!(code, 0);
        assert!(out.contains("notes: trusted"), "{out}");
    }

    #[tokio::test]
    async fn options_apply() {
        let base = ["--offline", "--json", "--ip", "203.0.113.10"];
        let run = |extra: &'static [&'static str], helo: &'static str| async move {
            let mut argv = base.to_vec();
            argv.extend_from_slice(extra);
            argv.push(helo);
            exec(&argv).await
        };
        assert_eq!(run(&[], "mx.example.org").await.0, 0);
        assert_eq!(
            run(&["--our-name", "MX.example.org"], "mx.example.org")
                .await
                .0,
            1
        );
        assert_eq!(
            run(&["--our-domain", "example.org"], "a.example.org")
                .await
                .0,
            1
        );
        assert_eq!(
            run(&["--our-addr", "198.51.100.25"], "[198.51.100.25]")
                .await
                .0,
            1
        );
        let (code, out, _) = run(
            &["--deny-helo", "*.bots.example.com", "--deny", "/x+/"],
            "a.bots.example.com",
        )
        .await;
        assert_eq!(code, 1);
        assert!(out.contains("[\"denylisted\"]"), "{out}");
        assert_eq!(run(&["--policy", "lenient"], "server").await.0, 0);
        assert_eq!(
            run(&["--policy", "strict"], "c-203-0-113-10.dyn.example.net")
                .await
                .0,
            1
        );
    }

    #[tokio::test]
    async fn usage_errors_exit_2() {
        for argv in [
            &["--ip", "203.0.113.10"][..],
            &["mail.example.net"][..],
            &["--ip", "not-an-ip", "mail.example.net"][..],
            &["--ip", "203.0.113.10", "-mail.example.net"][..],
            &["--ip", "203.0.113.10", "--policy", "paranoid", "x.example"][..],
            &["--ip", "203.0.113.10", "--deny-helo", "/(/", "x.example"][..],
            &[
                "--ip",
                "203.0.113.10",
                "--our-name",
                "bad..name",
                "x.example",
            ][..],
            &[
                "--ip",
                "203.0.113.10",
                "--dns-server",
                "127.0.0.1",
                "x.example",
            ][..],
            &["--ip", "203.0.113.10", "a.example", "b.example"][..],
            &[
                "--ip",
                "203.0.113.10",
                "--deny-helo",
                "foo bar",
                "x.example",
            ][..],
            &[
                "--ip",
                "203.0.113.10",
                "--offline",
                "--dns-server",
                "127.0.0.1:53",
                "x.example",
            ][..],
        ] {
            let (code, _, err) = exec(argv).await;
            assert_eq!(code, 2, "{argv:?}: {err}");
        }
    }

    /// A config file with a 500 ms DNS deadline (and `fail_closed` when asked).
    fn dns_config(tag: &str, fail_closed: bool) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "helo-filter-check-dns-{}-{tag}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("dns.toml");
        std::fs::write(
            &f,
            format!("[dns]\ndeadline_ms = 500\nfail_closed = {fail_closed}\n"),
        )
        .unwrap();
        f
    }

    const DEADLINE: Duration = Duration::from_millis(500);
    const GRACE: Duration = Duration::from_millis(500);

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn check_ends_within_the_deadline_whatever_the_server_sends() {
        let config = dns_config("bad", false);
        for (how, kind) in [
            (Misbehaviour::WrongId, "timeout"),
            (Misbehaviour::Garbage, "timeout"),
            (Misbehaviour::GarbageWithId, "malformed"),
            (Misbehaviour::CutShort, "malformed"),
            (Misbehaviour::TcBit, "malformed"),
            (Misbehaviour::Silent, "timeout"),
            (Misbehaviour::Rcode(2), "servfail"),
            (Misbehaviour::Rcode(5), "refused"),
        ] {
            let server = BadServer::start(how);
            let addr = server.addr.to_string();
            let t = Instant::now();
            let (code, out, err) = exec(&[
                "--config",
                config.to_str().unwrap(),
                "--dns-server",
                &addr,
                "--ip",
                "203.0.113.10",
                "mail.example.net",
            ])
            .await;
            let elapsed = t.elapsed();
            eprintln!("{how:?}: {elapsed:?}");
            assert!(elapsed < DEADLINE + GRACE, "{how:?}: {elapsed:?}");
            assert_eq!(code, 0, "{how:?}: {out}{err}");
            assert!(out.contains("  notes: dns_tempfail\n"), "{how:?}: {out}");
            assert!(
                out.ends_with(&format!("  dns_error={addr}:{kind}\n")),
                "{how:?}: {out}"
            );
        }
        let _ = std::fs::remove_dir_all(config.parent().unwrap());
    }

    #[test]
    fn the_human_output_names_the_dns_error() {
        let v = Verdict {
            decision: crate::policy::Decision::Accept,
            reasons: Vec::new(),
            notes: vec![crate::policy::Note::DnsTempfail],
            score: 0,
            dns_error: Some(crate::dns::DnsFailure {
                server: "[2001:db8::53]:53".into(),
                kind: crate::dns::DnsErrorKind::Servfail,
            }),
        };
        let ip = "203.0.113.10".parse().unwrap();
        assert_eq!(
            human("mail.example.net", ip, &v),
            "accept \"mail.example.net\" from 203.0.113.10\n  notes: dns_tempfail\n  \
             dns_error=[2001:db8::53]:53:servfail\n"
        );
        // The JSON shape stays as the spec fixes it.
        assert!(!json_line("mail.example.net", ip, &v).contains("dns_error"));
    }

    /// `run` itself, with the real stdout and stderr, while the runtime's worker threads log at
    /// debug level to stderr (as `RUST_LOG=debug` makes them): it must end by the deadline,
    /// not wait for ever on the stderr lock.
    #[test]
    fn run_with_debug_logging_on_the_worker_threads_ends_by_the_deadline() {
        let config = dns_config("debug", false);
        for how in [
            Misbehaviour::WrongId,
            Misbehaviour::Garbage,
            Misbehaviour::Silent,
        ] {
            let server = BadServer::start(how);
            let args = parse(&[
                "--config",
                config.to_str().unwrap(),
                "--dns-server",
                &server.addr.to_string(),
                "--ip",
                "203.0.113.10",
                "mail.example.net",
            ])
            .unwrap();
            let (tx, rx) = std::sync::mpsc::channel();
            let t = Instant::now();
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .on_thread_start(|| {
                        let subscriber = tracing_subscriber::fmt()
                            .with_max_level(tracing::Level::DEBUG)
                            .with_writer(std::io::stderr)
                            .finish();
                        // For the thread's whole life.
                        std::mem::forget(tracing::subscriber::set_default(subscriber));
                    })
                    .build()
                    .unwrap();
                let code = runtime.block_on(run(args));
                let _ = tx.send(code);
                // A stuck worker would stall the shutdown: do not wait for it here.
                runtime.shutdown_background();
            });
            let code = rx.recv_timeout(DEADLINE + GRACE);
            let elapsed = t.elapsed();
            if code.is_err() {
                // The stuck `run` holds the stdout and stderr locks, so the test harness could
                // not even report a failed assertion: say it on a fresh handle and end here.
                if let Ok(mut tty) = std::fs::OpenOptions::new().append(true).open("/dev/stderr") {
                    let _ = writeln!(
                        tty,
                        "FAILED {how:?}: `check` did not end within {:?} (it holds the output \
                         locks across the lookups)",
                        DEADLINE + GRACE
                    );
                }
                let _ = std::fs::remove_dir_all(config.parent().unwrap());
                std::process::exit(101);
            }
            assert_eq!(code, Ok(0), "{how:?}: ({elapsed:?})");
            assert!(elapsed < DEADLINE + GRACE, "{how:?}: {elapsed:?}");
        }
        let _ = std::fs::remove_dir_all(config.parent().unwrap());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_underscore_name_is_looked_up_even_fail_closed() {
        let d = Dnsmasq::start(
            None,
            &["--host-record=my_host.example.net,203.0.113.77".into()],
        );
        let config = dns_config("underscore", true);
        let (code, out, err) = exec(&[
            "--config",
            config.to_str().unwrap(),
            "--dns-server",
            &d.addr.to_string(),
            "--json",
            "--ip",
            "203.0.113.77",
            "my_host.example.net",
        ])
        .await;
        assert_eq!(code, 0, "{out}{err}");
        assert!(out.contains("\"notes\":[]"), "{out}");
        assert!(!out.contains("dns_tempfail"), "{out}");
        assert_eq!(d.queries("A", "my_host.example.net"), 1);
        assert_eq!(d.queries("MX", "my_host.example.net"), 1);
        let (code, out, _) = exec(&[
            "--config",
            config.to_str().unwrap(),
            "--dns-server",
            &d.addr.to_string(),
            "--ip",
            "203.0.113.10",
            "no_such_host.example.net",
        ])
        .await;
        assert_eq!(code, 1, "{out}");
        assert!(out.contains("  no_dns: "), "{out}");
        assert!(
            !out.contains("dns_tempfail") && !out.contains("dns_error"),
            "{out}"
        );
        let _ = std::fs::remove_dir_all(config.parent().unwrap());
    }

    #[tokio::test]
    async fn configuration_errors_exit_2_with_the_location() {
        let dir = std::env::temp_dir().join(format!("helo-filter-check-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let bad = dir.join("bad.toml");
        std::fs::write(&bad, "[policy]\nbundle = \"standard\"\nour_nmaes = []\n").unwrap();
        let bad_s = bad.to_str().unwrap();
        let (code, out, err) = exec(&[
            "--offline",
            "--config",
            bad_s,
            "--ip",
            "203.0.113.10",
            "x.example.net",
        ])
        .await;
        assert_eq!(code, 2);
        assert!(out.is_empty());
        assert!(
            err.contains(&format!("{bad_s}:3:1: key `policy.our_nmaes`")),
            "{err}"
        );
        let (code, _, err) = exec(&[
            "--config",
            "/nonexistent.toml",
            "--ip",
            "203.0.113.10",
            "x.example",
        ])
        .await;
        assert_eq!(code, 2, "{err}");

        let good = dir.join("good.toml");
        std::fs::write(
            &good,
            "[policy]\nbundle = \"strict\"\nour_names = [\"mx.example.org\"]\n[dns]\nenabled = false\n",
        )
        .unwrap();
        let good_s = good.to_str().unwrap();
        let (code, out, _) = exec(&[
            "--json",
            "--config",
            good_s,
            "--ip",
            "203.0.113.10",
            "[203.0.113.10]",
        ])
        .await;
        assert_eq!(code, 1, "{out}");
        assert!(
            out.contains("literal_not_allowed") && out.contains("\"offline\""),
            "{out}"
        );
        let (code, _, _) = exec(&[
            "--json",
            "--config",
            good_s,
            "--policy",
            "standard",
            "--ip",
            "203.0.113.10",
            "[203.0.113.10]",
        ])
        .await;
        assert_eq!(code, 0, "--policy overrides the file");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
