//! `cargo xtask bench [--quick] [--only SECTION,…]`: every benchmark of the project, each figure beside a
//! baseline measured in the same run, written to `target/bench/summary.json` and (full runs)
//! `BENCHMARKS.md`. The kernel and policy figures come from the tests crate's `xdp-bench` and
//! `policy-bench` programs (they need the daemon's library); the lab figures are run here.

pub mod capacity_runs;
pub mod figure;
pub mod fleet_runs;
pub mod lab_runs;
pub mod load;

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};
use figure::{Figure, table};
use lab_runs::Sizes;

use crate::{
    paths::{bench_dir, workspace_root},
    process::{cargo, output, run_cmd},
};

/// Every figure a run must produce, in report order.
pub const EXPECTED: [&str; 43] = [
    "kernel.arp",
    "kernel.tcp_other_port",
    "kernel.smtp_accepted_flow",
    "kernel.smtp_unknown_flow",
    "kernel.helo_capture",
    "kernel.helo_capture_wakeup",
    "kernel.denied_syn",
    "kernel.condemned_drop",
    "kernel.condemned_rst",
    "kernel.egress_mta_packet",
    "policy.offline_rate",
    "policy.offline_p50",
    "policy.offline_p99",
    "policy.warm_dns_rate",
    "policy.warm_dns_p50",
    "policy.warm_dns_p99",
    "lab.sessions_per_s",
    "lab.sessions_per_s_rtt",
    "lab.sessions_per_s_known_good",
    "lab.helo_to_action_p50",
    "lab.helo_to_action_p99",
    "lab.helo_to_verdict_idle_p50",
    "lab.helo_to_verdict_p50",
    "lab.helo_to_verdict_p99",
    "lab.burst_ringbuf_drops",
    "lab.burst_fail_open",
    "lab.knee_helos_per_s",
    "lab.scale_sessions_open",
    "lab.scale_helo_to_verdict_p50",
    "lab.scale_helo_to_verdict_p99",
    "lab.scale_flows",
    "lab.scale_daemon_rss",
    "peer.cpu_per_1000_bogus",
    "peer.good_sessions_per_s",
    "peer.cpu_per_1000_bogus_recurring",
    "peer.good_sessions_per_s_recurring",
    "peer.cpu_per_1000_bogus_reply",
    "flood.good_sessions_per_s_fixed",
    "flood.host_cpu_fixed",
    "flood.good_sessions_per_s_max",
    "flood.host_cpu_max",
    "fleet.propagation_p50",
    "fleet.propagation_p99",
];

/// What each section measures and how (the text above its table).
const SECTIONS: [(&str, &str, &str); 6] = [
    (
        "kernel",
        "Per-packet cost in the kernel",
        "BPF_PROG_TEST_RUN of the capture program and of an XDP program that only returns \
         XDP_PASS, loaded in the same process and run on the same frames, median of rounds. Fixed \
         frames run with `repeat`; the HELO capture runs once per fresh flow (its SYN first, not \
         timed) with the ring buffer drained after each run, and the condemned flow's RST (which \
         rewrites the frame) runs once per frame: those use `repeat = 1`, and so does their \
         baseline.",
    ),
    (
        "policy",
        "Policy engine",
        "Validations on one core (a current-thread runtime) over the public corpus \
         (`shared/corpus/helo-public.tsv`): its offline rows with DNS off, and every row with the \
         DNS checks on against the fixture dnsmasq (`--local-ttl`), the cache warmed by one pass \
         first.",
    ),
    (
        "lab",
        "End to end in the lab",
        "Network namespaces joined by a veth pair, smtp-sink as the MTA, the daemon (release \
         build) attached to the MX side and enforcing (`rst`); reputation denial off so that every \
         session is judged. Good sessions with smtp-source, and with xtask's own SMTP client \
         waiting one peer round trip (5 ms) before each command; bogus ones with that client too \
         (no wait), because smtp-source stops at the first refused or reset session. The knee \
         and the scale rows run in a lab of their own, set up the same way, with xtask's client \
         pacing sessions that stop after the EHLO reply.",
    ),
    (
        "peer",
        "Against Postfix",
        "The same Postfix 3.7 (Debian), fed the same bogus flood (the five bogus HELOs in turn, from \
         seven client addresses over IPv4 and IPv6) while good sessions run (xtask's client, 5 ms \
         away): (a) \
         Postfix alone with `smtpd_helo_required = yes` and `smtpd_helo_restrictions = \
         reject_invalid_helo_hostname, reject_non_fqdn_helo_hostname, \
         reject_unknown_helo_hostname`; (b) Postfix without HELO restrictions behind helo-filter \
         enforcing `rst`, reputation off so that every bogus session is judged; (c) the same with \
         `reply`; (d) `rst` with reputation at its defaults, so that the recurring addresses are \
         denied at the SYN, their bots waiting 100 ms for each connection. Host CPU is user + \
         system + softirq from `/proc/stat` over the flood, less what the good sessions cost \
         when played alone just before it.",
    ),
    (
        "flood",
        "Repeat offenders: SYN flood from a denied source",
        "hping3 floods the MX's port 25 with SYNs spoofing a denied source while good sessions run \
         from another address (xtask's client, 5 ms away): the source denied in the XDP deny map (daemon \
         `--deny-source`), versus the same denial in an nftables set on the MX interface's netdev \
         ingress hook, the earliest nftables can drop.",
    ),
    (
        "fleet",
        "A fleet: one denial, every member",
        "Two members (lab MX namespaces) joined by a link to a real redis-server with a password: an \
         operator's `deny add --fleet` on one member until the other drops the source's SYNs, \
         beside the same denial on the member that made it.",
    ),
];

/// The sections `--only` takes, in report order.
pub const SECTION_NAMES: [&str; 6] = ["kernel", "policy", "lab", "peer", "flood", "fleet"];

/// Runs the benchmarks of the sections in `only` (empty: all) and writes the reports;
/// `quick` for a smoke test.
pub fn run(quick: bool, only: &[String]) -> anyhow::Result<()> {
    let out_dir = bench_dir();
    std::fs::create_dir_all(&out_dir)?;
    let wanted = |section: &str| only.is_empty() || only.iter().any(|s| s == section);
    let mut figures = Vec::new();
    for (bench, section) in [("xdp-bench", "kernel"), ("policy-bench", "policy")] {
        if !wanted(section) {
            continue;
        }
        println!("bench: {bench}");
        let file = out_dir.join(format!("{bench}.json"));
        let mut command = cargo();
        command
            .args(["run", "--release", "--package", "helo-filter-tests"])
            .args(["--bin", bench, "--", "--out"])
            .arg(&file);
        if quick {
            command.arg("--quick");
        }
        run_cmd(&mut command)?;
        let text = std::fs::read_to_string(&file).with_context(|| file.display().to_string())?;
        let produced: Vec<Figure> = serde_json::from_str(&text)
            .with_context(|| format!("{}: not a list of figures", file.display()))?;
        figures.extend(produced);
    }
    let sizes = if quick { Sizes::QUICK } else { Sizes::FULL };
    if wanted("lab") {
        println!("bench: end to end in the lab");
        figures.extend(lab_runs::end_to_end(&sizes)?);
        println!("bench: the knee and the scale");
        figures.extend(capacity_runs::capacity(&sizes)?);
    }
    if wanted("peer") {
        println!("bench: against Postfix");
        figures.extend(lab_runs::against_postfix(&sizes)?);
    }
    if wanted("flood") {
        println!("bench: SYN flood, XDP deny map versus nftables");
        figures.extend(lab_runs::syn_flood(&sizes)?);
    }
    if wanted("fleet") {
        println!("bench: fleet propagation through Redis");
        figures.extend(fleet_runs::propagation(sizes.fleet_denials)?);
    }

    let expected: Vec<&str> = EXPECTED
        .into_iter()
        .filter(|id| {
            id.split_once('.')
                .is_some_and(|(section, _)| wanted(section))
        })
        .collect();
    let ordered = check_complete(&figures, &expected)?;
    let json = serde_json::to_string_pretty(&ordered)?;
    std::fs::write(out_dir.join("summary.json"), json + "\n")?;
    let report = render(&ordered, quick)?;
    let report_path: PathBuf = if quick {
        out_dir.join("BENCHMARKS.quick.md")
    } else if !only.is_empty() {
        out_dir.join("BENCHMARKS.only.md")
    } else {
        workspace_root().join("BENCHMARKS.md")
    };
    std::fs::write(&report_path, report)?;
    for f in &ordered {
        println!("  {:<34} {:>12} {}", f.id, figure::number(f.value), f.unit);
    }
    println!(
        "bench: {} figures in {} and {}",
        ordered.len(),
        out_dir.join("summary.json").display(),
        report_path.display()
    );
    Ok(())
}

/// Every expected figure, once, finite, in report order.
fn check_complete(figures: &[Figure], expected: &[&str]) -> anyhow::Result<Vec<Figure>> {
    let mut ordered = Vec::new();
    let mut missing = Vec::new();
    for &id in expected {
        match figures.iter().filter(|f| f.id == id).collect::<Vec<_>>()[..] {
            [one] if one.is_valid() => ordered.push(one.clone()),
            [one] => missing.push(format!("{id} is not a number ({})", one.value)),
            [] => missing.push(format!("{id} was not produced")),
            _ => missing.push(format!("{id} was produced twice")),
        }
    }
    if let Some(extra) = figures.iter().find(|f| !expected.contains(&f.id.as_str())) {
        missing.push(format!("{} is not an expected figure", extra.id));
    }
    if !missing.is_empty() {
        bail!("benchmark figures: {}", missing.join("; "));
    }
    Ok(ordered)
}

fn render(figures: &[Figure], quick: bool) -> anyhow::Result<String> {
    let mut out = String::from("# Benchmarks\n\n");
    if quick {
        out.push_str(
            "**Smoke run (`--quick`)**: tiny loads, figures produced but not meaningful.\n\n",
        );
    }
    let uname = output(Command::new("uname").arg("-r"))?;
    let commit = output(Command::new("git").args(["rev-parse", "--short", "HEAD"]))
        .unwrap_or_else(|_| "unknown".into());
    let date = output(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]))?;
    writeln!(
        out,
        "Measured {} on {}, {} CPUs, {} of memory, Linux {}, at commit {}.\n",
        date.trim(),
        cpu_model(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        memory(),
        uname.trim(),
        commit.trim()
    )?;
    out.push_str(
        "Reproduce with `cargo xtask bench` (as root; it sets up what it needs, builds in \
         release mode, creates and removes its own network namespaces, and rewrites this file and \
         `target/bench/summary.json`). `cargo xtask bench --quick` is the smoke test CI runs: it \
         checks that every figure is produced, never how fast.\n\n\
         Shared machines drift, so each figure stands beside a baseline measured in the same run \
         and their ratio. Figures with no natural baseline (latencies, counts, the engine's \
         absolute rate) are given with their goal only. The goals are the ones this project \
         holds itself to; a missed goal says why in its reading.\n",
    );
    for (section, title, method) in SECTIONS {
        let rows: Vec<&Figure> = figures.iter().filter(|f| f.section == section).collect();
        write!(out, "\n## {title}\n\n{method}\n\n{}", table(&rows))?;
    }
    Ok(out)
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| {
                l.strip_prefix("model name")?
                    .split_once(':')
                    .map(|(_, m)| m.trim().to_owned())
            })
        })
        .unwrap_or_else(|| "an unknown CPU".into())
}

fn memory() -> String {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            let kib: f64 = m.lines().next()?.split_whitespace().nth(1)?.parse().ok()?;
            Some(format!("{:.0} GiB", kib / 1024.0 / 1024.0))
        })
        .unwrap_or_else(|| "unknown".into())
}

/// Where a bench program writes its figures: `--out FILE`; `--quick` for a smoke run.
pub struct BenchArgs {
    pub out: PathBuf,
    pub quick: bool,
}

impl BenchArgs {
    /// Reads `--out FILE [--quick]` from the command line.
    pub fn from_env() -> anyhow::Result<BenchArgs> {
        let mut out = None;
        let mut quick = false;
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--out" => out = args.next().map(PathBuf::from),
                "--quick" => quick = true,
                other => bail!("unknown argument {other:?} (expected --out FILE [--quick])"),
            }
        }
        Ok(BenchArgs {
            out: out.context("--out FILE is required")?,
            quick,
        })
    }

    /// Writes the figures as JSON.
    pub fn write(&self, figures: &[Figure]) -> anyhow::Result<()> {
        write_json(&self.out, figures)
    }
}

fn write_json(path: &Path, figures: &[Figure]) -> anyhow::Result<()> {
    std::fs::write(path, serde_json::to_string_pretty(figures)?)
        .with_context(|| path.display().to_string())
}
