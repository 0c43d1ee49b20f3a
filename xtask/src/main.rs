//! `cargo xtask setup | run | lint | test | bench | deb | fuzz | soak`.
use std::{
    io::{BufRead as _, BufReader},
    net::{IpAddr, SocketAddr},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use xtask::{
    daemon::{self, Daemon, metric_value},
    lab::{self, Lab},
    paths,
    process::{cargo, nightly_cargo, run_cmd},
    sessions::{self, Greeting},
    setup,
};

mod deb;
mod fuzz;
mod soak;

#[derive(Parser)]
#[command(about = "helo-filter developer tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building and testing need (idempotent).
    Setup,
    /// Without arguments: the filter in a throwaway lab with scripted sessions. With
    /// arguments after `--`: `helo-filter run ARGS` on real interfaces.
    Run {
        /// A fleet of two MX hosts sharing one Redis instead: a source denied on one is
        /// dropped on the other (docs/fleet.md).
        #[arg(long, conflicts_with = "daemon_args")]
        fleet: bool,
        #[arg(last = true)]
        daemon_args: Vec<String>,
    },
    /// The lint gate, after setup: the nightly format check (import grouping) and the
    /// clippy passes (user space as tested and as released, eBPF), with warnings denied.
    Lint,
    /// Every test, privileged ones included (needs root).
    Test,
    /// Every benchmark, each beside a baseline measured in the same run: writes
    /// BENCHMARKS.md and target/bench/summary.json (needs root).
    Bench {
        /// A smoke test: tiny loads, every figure produced (report in target/bench/).
        #[arg(long)]
        quick: bool,
        /// Only these sections (report in target/bench/, BENCHMARKS.md left alone).
        #[arg(long, value_delimiter = ',', value_parser = xtask::bench::SECTION_NAMES)]
        only: Vec<String>,
    },
    /// The Debian package (cargo-deb), in target/debian/ (docs/packaging.md).
    Deb,
    /// Every parser's fuzz target under libFuzzer (nightly, cargo-fuzz), then the XDP
    /// program's frame fuzzer with a million frames (needs root; docs/testing.md).
    Fuzz {
        /// How long each parser is fuzzed.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
    },
    /// Mixed sessions at a steady rate for N minutes, sampled every 10 s (samples in
    /// target/soak/samples.json); fails on an unaccounted session, a panic, a bound passed
    /// (needs root).
    Soak {
        #[arg(long, default_value_t = 15)]
        minutes: u64,
    },
}

/// The lab `cargo xtask run` uses; a crashed run's leftovers are removed at next start.
const LAB_NAME: &str = "hflab";

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    ensure_cargo_bin_on_path();
    match cli.task {
        Task::Setup => setup::run(),
        Task::Run { fleet: true, .. } => run_fleet_lab(),
        Task::Run { daemon_args, .. } if daemon_args.is_empty() => run_lab(),
        Task::Run { daemon_args, .. } => run_real(&daemon_args),
        Task::Lint => lint(),
        Task::Test => test(),
        Task::Bench { quick, only } => bench(quick, &only),
        Task::Deb => deb::run(),
        Task::Fuzz { seconds } => fuzz::run(seconds),
        Task::Soak { minutes } => {
            setup::run()?;
            build_daemon()?;
            soak::run(minutes)
        }
    }
}

/// bpf-linker is installed into cargo's bin directory, which a root shell may not have
/// on its PATH.
fn ensure_cargo_bin_on_path() {
    let cargo_home = std::env::var("CARGO_HOME")
        .unwrap_or_else(|_| format!("{}/.cargo", std::env::var("HOME").unwrap_or_default()));
    let bin = format!("{cargo_home}/bin");
    let path = std::env::var("PATH").unwrap_or_default();
    if !path.split(':').any(|p| p == bin) {
        // SAFETY: set_var is sound while no other thread reads or writes the environment;
        // this runs first thing in `main`, before xtask starts any thread.
        unsafe { std::env::set_var("PATH", format!("{bin}:{path}")) };
    }
}

/// The debug daemon of the lab and the tests, with the `fault-injection` feature that the
/// tests set off through HELO_FILTER_FAULT (release builds lack it).
fn build_daemon() -> anyhow::Result<()> {
    println!("building helo-filter (the eBPF object too)");
    run_cmd(cargo().args([
        "build",
        "--package",
        "helo-filter",
        "--features",
        "fault-injection",
    ]))
}

/// `helo-filter run ARGS`, its configuration explicit: the caller's `--config`, or an
/// empty file (the built-in defaults), never one a later default under /etc would bring.
fn run_real(daemon_args: &[String]) -> anyhow::Result<()> {
    setup::run()?;
    build_daemon()?;
    let mut command = Command::new(paths::daemon_binary());
    command.arg("run");
    let given: Vec<&str> = daemon_args.iter().map(String::as_str).collect();
    if !daemon::config_given(&given) {
        let empty = paths::target_dir().join("xtask-run-empty.toml");
        std::fs::write(
            &empty,
            "# cargo xtask run: no --config given, every setting at its built-in default.\n",
        )
        .with_context(|| format!("writing {}", empty.display()))?;
        println!("no --config given: using the empty {}", empty.display());
        command.arg("--config").arg(empty);
    }
    run_cmd(command.args(daemon_args))
}

fn test() -> anyhow::Result<()> {
    setup::run()?;
    println!("checking formatting (nightly rustfmt: import grouping)");
    run_cmd(&mut format_check())?;
    build_daemon()?;
    // The package test builds it again, then a no-op: the release build's minutes are spent
    // here rather than beside the end-to-end tests, whose deadlines assume an idle machine.
    println!("building the Debian package (the package test installs it)");
    deb::build()?;
    println!("running every test (unit, packet table, end to end)");
    let mut child = cargo()
        .args(["test", "--workspace", "--exclude", "helo-filter-ebpf"])
        // The same features as `build_daemon`: cargo rebuilds the daemon binary for the
        // crate's own integration tests, and the fault tests need it to have them.
        .args(["--features", "helo-filter/fault-injection"])
        // Every test binary runs even after a failure, so the closing count is the whole suite.
        .arg("--no-fail-fast")
        // Two at a time on these 2-core machines: the end-to-end tests each run a lab
        // (daemon, MTA, DNS, clients), and their deadlines assume a machine not overloaded.
        .args(["--", "--test-threads=2"])
        .env("HELO_FILTER_BIN", paths::daemon_binary())
        .stdout(Stdio::piped())
        .spawn()
        .context("running cargo test")?;
    // Echo the output and add up libtest's `test result:` lines for one closing total:
    // `N passed, M failed, K skipped`, K counting ignored tests.
    let (mut passed, mut failed, mut ignored) = (0u64, 0u64, 0u64);
    let mut ignored_names = Vec::new();
    let stdout = child.stdout.take().context("cargo test stdout")?;
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        println!("{line}");
        if let Some(result) = line.strip_prefix("test result: ") {
            passed += count_before(result, " passed");
            failed += count_before(result, " failed");
            ignored += count_before(result, " ignored");
        } else if let Some(name) = ignored_test(&line) {
            ignored_names.push(name.to_owned());
        }
    }
    let status = child.wait()?;
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    println!("{}", closing_line(passed, failed, ignored, ci));
    if !status.success() {
        bail!("cargo test failed: {status}");
    }
    if ci && ignored > 0 {
        bail!(
            "{ignored} ignored test(s), a failure in CI (no test may skip itself): {}",
            ignored_names.join(", ")
        );
    }
    Ok(())
}

/// `N passed, M failed, K skipped`, K the ignored tests; in CI (`ci`) no test may skip
/// itself, so each ignored one is also counted failed.
fn closing_line(passed: u64, failed: u64, ignored: u64, ci: bool) -> String {
    let failed = if ci { failed + ignored } else { failed };
    format!("{passed} passed, {failed} failed, {ignored} skipped")
}

/// The name of an ignored test in libtest's `test NAME ... ignored` line (with or without
/// a reason after `ignored, `).
fn ignored_test(line: &str) -> Option<&str> {
    let rest = line.strip_prefix("test ")?;
    let (name, outcome) = rest.split_once(" ... ")?;
    (outcome == "ignored" || outcome.starts_with("ignored, ")).then_some(name)
}

/// `cargo +nightly fmt --all --check`: rustfmt.toml's import options are nightly-only.
fn format_check() -> Command {
    let mut command = nightly_cargo();
    command.args(["fmt", "--all", "--check"]);
    command
}

/// Runs every lint step, even after a failure, and fails naming the steps that did.
fn lint() -> anyhow::Result<()> {
    setup::run()?;
    // The workspace as the tests build it (with the `fault-injection` feature, which some
    // tests need), then the daemon as it is released (without it).
    let mut user_space = cargo();
    user_space
        .args(["clippy", "--workspace", "--all-targets"])
        .args(["--exclude", "helo-filter-ebpf"])
        .args(["--features", "helo-filter/fault-injection"])
        .args(["--", "-D", "warnings"])
        // helo-filter's build script then writes placeholder objects instead of compiling
        // the eBPF crate (its own pass is the last step).
        .env("AYA_BUILD_SKIP", "1");
    let mut release = cargo();
    release
        .args(["clippy", "--package", "helo-filter", "--all-targets"])
        .args(["--", "-D", "warnings"])
        .env("AYA_BUILD_SKIP", "1");
    let mut ebpf = nightly_cargo();
    ebpf.args(["clippy", "--package", "helo-filter-ebpf"])
        .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
        .args(["--", "-D", "warnings"]);
    let steps = [
        ("format (cargo +nightly fmt --all --check)", format_check()),
        (
            "clippy, user space as tested (AYA_BUILD_SKIP=1)",
            user_space,
        ),
        ("clippy, the daemon as released (AYA_BUILD_SKIP=1)", release),
        ("clippy, eBPF (nightly, bpfel-unknown-none)", ebpf),
    ];
    let total = steps.len();
    let mut failed = Vec::new();
    for (n, (what, mut command)) in steps.into_iter().enumerate() {
        println!("lint [{}/{total}] {what}", n + 1);
        let started = Instant::now();
        let result = run_cmd(&mut command);
        let took = started.elapsed().as_secs();
        match result {
            Ok(()) => println!("      passed ({took} s)"),
            Err(e) => {
                println!("      FAILED ({took} s): {e:#}");
                failed.push(what);
            }
        }
    }
    if !failed.is_empty() {
        bail!("lint failed: {}", failed.join("; "));
    }
    println!("lint: every step passed");
    Ok(())
}

/// The number just before `label` in a libtest summary (`ok. 12 passed; 0 failed; …`).
fn count_before(summary: &str, label: &str) -> u64 {
    summary
        .split_once(label)
        .and_then(|(head, _)| head.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0)
}

/// The daemon's release build: what the benchmarks run and the Debian package ships.
fn build_release_daemon() -> anyhow::Result<()> {
    println!("building helo-filter in release mode (the eBPF object too)");
    run_cmd(cargo().args(["build", "--release", "--package", "helo-filter"]))
}

fn bench(quick: bool, only: &[String]) -> anyhow::Result<()> {
    setup::run()?;
    build_release_daemon()?;
    let binary = paths::release_binary();
    // SAFETY: set_var is sound while no other thread reads or writes the environment; up
    // to here this task has only run child processes, never a thread (the benchmarks,
    // which start threads, begin below). The lab's daemons are started from this binary.
    unsafe { std::env::set_var("HELO_FILTER_BIN", binary) };
    xtask::bench::run(quick, only)
}

fn run_lab() -> anyhow::Result<()> {
    setup::run()?;
    build_daemon()?;
    ctrlc::set_handler(|| {
        println!("\ninterrupted: tearing the lab down");
        lab::remove(LAB_NAME);
        std::process::exit(130);
    })
    .context("installing the Ctrl-C handler")?;

    println!("creating lab {LAB_NAME} (namespaces {LAB_NAME}-mx and {LAB_NAME}-cl)");
    let mut lab = Lab::create(LAB_NAME)?;
    lab.start_smtp_sink()?;
    lab.start_dns()?;
    println!(
        "smtp-sink listening on {}:25 and [{}]:25",
        lab::MX_V4,
        lab::MX_V6
    );
    println!(
        "fixture DNS (dnsmasq) on {} in {}",
        lab::DNS_SERVER,
        lab.mx_ns
    );
    let daemon = Daemon::start(&lab, &[], true)?;
    println!(
        "metrics: ip netns exec {} curl -s http://{}/metrics",
        lab.mx_ns,
        daemon::METRICS_ADDR
    );
    let result = play_script(&lab, &daemon);
    match daemon.scrape() {
        Ok(page) => print_counters(&page),
        Err(e) => println!("could not read the metrics: {e:#}"),
    }
    // What an operator sees: the deny list (the repeat offender is on it) and the status.
    for args in [&["deny", "list"][..], &["status"]] {
        println!("helo-filter {}:", args.join(" "));
        match daemon::cli(&lab, args) {
            Ok(out) => print!("{}", String::from_utf8_lossy(&out.stdout)),
            Err(e) => println!("  {e:#}"),
        }
    }
    let status = daemon.stop()?;
    println!("daemon stopped ({status}); tearing the lab down");
    drop(lab);
    println!("lab {LAB_NAME} removed");
    result
}

/// The fleet lab `cargo xtask run --fleet` uses (members `hffleet0`, `hffleet1`).
const FLEET_LAB_NAME: &str = "hffleet";

/// Two MX hosts, each with its filter, sharing one Redis: bogus sessions from one source to
/// the first until its reputation denies it, then that source's SYN to the second, dropped.
fn run_fleet_lab() -> anyhow::Result<()> {
    setup::run()?;
    build_daemon()?;
    ctrlc::set_handler(|| {
        println!("\ninterrupted: tearing the fleet lab down");
        for i in 0..2 {
            lab::remove(&format!("{FLEET_LAB_NAME}{i}"));
        }
        std::process::exit(130);
    })
    .context("installing the Ctrl-C handler")?;
    println!("creating fleet lab {FLEET_LAB_NAME}: two MX labs and a redis-server joining them");
    let fleet = xtask::fleet_lab::FleetLab::create(FLEET_LAB_NAME, 2)?;
    println!("redis-server (with a password) at {}", fleet.redis().url());
    // Under action `reply` a reject adds 0.5 to its source's score: two deny it (scores
    // decay from the first moment, so a threshold of 1 would take a third).
    let reputation = "[reputation]\nthreshold = 0.9\n";
    let mut daemons = Vec::new();
    for (i, lab) in fleet.members.iter().enumerate() {
        let config = fleet.member_config(i, reputation)?;
        println!(
            "member mx{} filters {} ({})",
            i + 1,
            lab.mx_ns,
            config.display()
        );
        daemons.push(Daemon::start(
            lab,
            &["--config", &config.to_string_lossy()],
            true,
        )?);
    }
    let (mx1, mx2) = (&fleet.members[0], &fleet.members[1]);
    let source = SocketAddr::new(IpAddr::V4(lab::client_v4(1)), 0);
    for port in [40101, 40102] {
        let client = SocketAddr::new(source.ip(), port);
        println!("client {client} says HELO localhost to mx1");
        match sessions::swaks_run(mx1, client, Greeting::Helo, "localhost") {
            Ok(run) => println!("  → {}", run.outcome),
            Err(e) => println!("  → the client failed: {e:#}"),
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    let client = SocketAddr::new(source.ip(), 40103);
    println!("client {client} connects to mx2, which has never seen it");
    let outcome = xtask::netns::in_netns(&mx2.client_ns, move || {
        sessions::connect_from_within(
            client,
            SocketAddr::new(IpAddr::V4(lab::MX_V4), lab::SMTP_PORT),
            Duration::from_secs(1),
        )
        .map(drop)
    });
    match &outcome {
        Ok(()) => println!("  → connected: the fleet's denial did not reach mx2"),
        Err(_) => println!("  → no answer: mx2 drops its SYN, denied by mx1 through the fleet"),
    }
    for args in [&["deny", "list"][..], &["status"]] {
        println!("mx2: helo-filter {}:", args.join(" "));
        match daemon::cli(mx2, args) {
            Ok(out) => print!("{}", String::from_utf8_lossy(&out.stdout)),
            Err(e) => println!("  {e:#}"),
        }
    }
    drop(daemons);
    drop(fleet);
    println!("fleet lab {FLEET_LAB_NAME} removed");
    match outcome {
        Ok(()) => bail!("mx2 still answers the source mx1 denied"),
        Err(_) => Ok(()),
    }
}

fn play_script(lab: &Lab, daemon: &Daemon) -> anyhow::Result<()> {
    let v4 = |i, port| SocketAddr::new(IpAddr::V4(lab::client_v4(i)), port);
    let v6 = |i, port| SocketAddr::new(IpAddr::V6(lab::client_v6(i)), port);
    let scripted: [(SocketAddr, Greeting, &str, &str); 8] = [
        (v4(0, 40001), Greeting::Ehlo, "mail.example.net", "good"),
        (
            v6(0, 40002),
            Greeting::Ehlo,
            "v6.example.net",
            "good, over IPv6",
        ),
        (
            v4(1, 40003),
            Greeting::Helo,
            "127.0.0.1",
            "bogus: bare loopback IP",
        ),
        (
            v4(1, 40004),
            Greeting::Ehlo,
            "[192.168.1.1]",
            "bogus: private literal",
        ),
        (
            v4(2, 40005),
            Greeting::Helo,
            "localhost",
            "bogus: localhost",
        ),
        (
            v6(2, 40006),
            Greeting::Ehlo,
            "mon-serveur",
            "bogus: not a FQDN",
        ),
        (
            v4(3, 40007),
            Greeting::Helo,
            "fakedomain.xyz",
            "bogus: fake domain",
        ),
        (
            v4(4, 40008),
            Greeting::Helo,
            "server.domain.xyz",
            "resolvable, not the client's",
        ),
    ];
    // Clients that could not play their session (swaks failing as a program, or never
    // connecting): reported as such, never as the filter's doing.
    let mut client_failures = Vec::new();
    for (client, greeting, name, what) in scripted {
        println!("client {client} says {greeting:?} {name}  ({what})");
        match sessions::swaks_run(lab, client, greeting, name) {
            Ok(run) => {
                println!("  → {}", run.outcome);
                if !run.outcome.connected() {
                    client_failures.push(format!("{client}: {}", run.outcome));
                }
            }
            Err(e) => {
                println!("  → the client failed: {e:#}");
                client_failures.push(format!("{e:#}"));
            }
        }
    }
    println!(
        "client {} writes EHLO a few bytes per segment",
        v4(0, 40009)
    );
    let outcome = sessions::raw_session(
        lab,
        v4(0, 40009),
        &[b"EH", b"LO mail.", b"example", b".net\r", b"\n"],
        Duration::from_millis(50),
    );
    print_raw_outcome(outcome);
    println!("client {} sends MAIL FROM before any HELO", v4(1, 40010));
    let outcome = sessions::raw_session(
        lab,
        v4(1, 40010),
        &[b"MAIL FROM:<bot@example.net>\r\n"],
        Duration::ZERO,
    );
    print_raw_outcome(outcome);
    // Give the daemon a moment to log the last sessions.
    std::thread::sleep(Duration::from_millis(500));
    if !client_failures.is_empty() {
        bail!(
            "{} of the scripted clients could not play their session (run `cargo xtask setup`): {}",
            client_failures.len(),
            client_failures.join("; ")
        );
    }
    let reported = daemon
        .lines()
        .iter()
        .filter(|l| l.contains(" helo client=") || l.contains(" no_helo client="))
        .count();
    if reported < 10 {
        bail!("the daemon reported {reported} of the 10 sessions played");
    }
    Ok(())
}

fn print_raw_outcome(outcome: anyhow::Result<String>) {
    match outcome {
        Ok(reply) => println!("  → server replied: {reply}"),
        Err(e) => println!("  → session ended: {e:#}"),
    }
}

fn print_counters(page: &str) {
    println!("kernel counters:");
    for kind in ["seen", "smtp", "helo", "continuation"] {
        let series = format!("helo_filter_xdp_packets_total{{kind=\"{kind}\"}}");
        let value = metric_value(page, &series).unwrap_or(f64::NAN);
        println!("  {series} {value}");
    }
    for series in [
        "helo_filter_ringbuf_dropped_total",
        "helo_filter_helo_events_total",
        "helo_filter_actions_total{action=\"reply\"}",
        "helo_filter_replies_total{segment=\"reject\"}",
        "helo_filter_helo_to_action_seconds_count",
    ] {
        println!(
            "  {series} {}",
            metric_value(page, series).unwrap_or(f64::NAN)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::{closing_line, count_before, ignored_test};

    #[test]
    fn the_closing_count_reads_ignored_tests() {
        let summary = "ok. 12 passed; 1 failed; 3 ignored; 0 measured; 0 filtered out";
        assert_eq!(count_before(summary, " passed"), 12);
        assert_eq!(count_before(summary, " failed"), 1);
        assert_eq!(count_before(summary, " ignored"), 3);
        assert_eq!(
            ignored_test("test lab::tests::a ... ignored"),
            Some("lab::tests::a")
        );
        assert_eq!(ignored_test("test b ... ignored, needs a lab"), Some("b"));
        assert_eq!(ignored_test("test c ... ok"), None);
    }

    #[test]
    fn in_ci_an_ignored_test_is_a_failure() {
        assert_eq!(
            closing_line(12, 1, 3, false),
            "12 passed, 1 failed, 3 skipped"
        );
        assert_eq!(
            closing_line(12, 1, 3, true),
            "12 passed, 4 failed, 3 skipped"
        );
        assert_eq!(
            closing_line(12, 0, 0, true),
            "12 passed, 0 failed, 0 skipped"
        );
    }
}
