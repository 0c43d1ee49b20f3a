//! `helo-filter check [OPTIONS] --ip IP [--] HELO`: judge one HELO for one client address.
//!
//! Exit status: 0 accept, 1 reject, 2 usage or configuration error (clap's own usage errors
//! exit with 2 as well). `--json` prints exactly one JSON object on one line:
//! `{"helo":…,"ip":…,"verdict":…,"reasons":[…],"notes":[…],"score":N}`.

use std::{io::Write, net::IpAddr};

use crate::{
    config::PolicyArgs,
    policy::{HeloInput, PolicyEngine, Verdict},
};

/// `check [OPTIONS] --ip IP [--] HELO`
#[derive(clap::Args, Clone, Debug)]
pub struct CheckArgs {
    /// The client's address.
    #[arg(long, value_name = "IP")]
    pub ip: IpAddr,
    /// Skip every check that needs DNS (a usage error beside --dns-server).
    #[arg(long, conflicts_with = "dns_server")]
    pub offline: bool,
    /// Print one JSON object on one line.
    #[arg(long)]
    pub json: bool,
    /// Identity, DNS and policy options.
    #[command(flatten)]
    pub policy: PolicyArgs,
    /// The HELO/EHLO argument (may be empty; write it after `--` when it starts with `-`).
    #[arg(value_name = "HELO")]
    pub helo: String,
}

/// Exit status of an accept.
pub const EXIT_ACCEPT: i32 = 0;
/// Exit status of a reject.
pub const EXIT_REJECT: i32 = 1;
/// Exit status of a usage or configuration error.
pub const EXIT_USAGE: i32 = 2;

/// Runs the command, printing to stdout (errors to stderr); returns the exit status.
pub async fn run(args: CheckArgs) -> i32 {
    let mut out = std::io::stdout().lock();
    let mut err = std::io::stderr().lock();
    run_with(&args, &mut out, &mut err).await
}

/// Runs the command with the given outputs; returns the exit status.
pub async fn run_with(args: &CheckArgs, out: &mut dyn Write, err: &mut dyn Write) -> i32 {
    let engine = match build_engine(args) {
        Ok(e) => e,
        Err(msg) => {
            let _ = writeln!(err, "helo-filter check: {msg}");
            return EXIT_USAGE;
        }
    };
    let input = HeloInput::new(args.helo.as_bytes(), args.ip);
    let verdict = engine.evaluate(&input).await;
    let written = if args.json {
        writeln!(out, "{}", json_line(&args.helo, args.ip, &verdict))
    } else {
        write!(out, "{}", human(&args.helo, args.ip, &verdict))
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

fn build_engine(args: &CheckArgs) -> Result<PolicyEngine, String> {
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

/// The human-readable form: a headline, then one line per failed check, then the notes.
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
    s
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

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
            &["--deny", "*.bots.example.com", "--deny", "/x+/"],
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
            &["--ip", "203.0.113.10", "--deny", "/(/", "x.example"][..],
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
            &["--ip", "203.0.113.10", "--deny", "foo bar", "x.example"][..],
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
