//! `cargo xtask setup`: checks, by trying each one, every capability the lab, the tests and
//! the benchmarks rely on, installs what is missing, tries again, and stops with one line
//! naming what it could not provide. Idempotent, and quick when everything is there (one
//! short command per capability).
//!
//! A package being installed is not what is probed: swaks is installed on a fresh Debian 12
//! machine without the Perl module it needs for IPv6 (`libio-socket-inet6-perl`, only a
//! *Recommends*), so the probe is swaks itself, asked for an IPv6 session.
//!
//! Tools built from crates.io (bpf-linker, and cargo-deb for `cargo xtask deb`) are probed
//! by running them and installed with `cargo install`.
//!
//! promtool comes with Debian's `prometheus` (about 100 MB), whose package may also start a
//! Prometheus service on :9090: the tests leave it alone and run a Prometheus of their own
//! in a lab namespace.

use std::{
    net::TcpListener,
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

use crate::process::run_cmd;

/// How a missing capability is provided.
enum Provider {
    /// Debian packages.
    Debian(&'static [&'static str]),
    /// A component of the nightly toolchain.
    Nightly(&'static str),
    /// A tool built from crates.io.
    CargoInstall(&'static CargoInstall),
}

/// `cargo install --quiet ARGS`, with ENV set, after the Debian packages its build needs.
struct CargoInstall {
    args: &'static [&'static str],
    env: &'static [(&'static str, &'static str)],
    /// Installed only to build it.
    build_packages: &'static [&'static str],
    /// How long the build takes on these 2-core machines, for the progress line.
    takes: &'static str,
}

/// bpf-linker must use the same LLVM major as the nightly that compiles the eBPF crate: built
/// against Debian's LLVM 22, which its build script finds only through LLVM_PREFIX.
const BPF_LINKER: CargoInstall = CargoInstall {
    args: &[
        "bpf-linker",
        "--version",
        "0.13.0",
        "--no-default-features",
        "--features",
        "llvm-22",
    ],
    env: &[("LLVM_PREFIX", "/usr/lib/llvm-22")],
    build_packages: &[
        "llvm-22-dev",
        "libpolly-22-dev",
        "libzstd-dev",
        "zlib1g-dev",
    ],
    takes: "about 3 minutes",
};

/// cargo-deb packs the Debian package (`cargo xtask deb`). Pinned, with the dependency
/// versions it was released with (--locked): 3.8 builds with this stable (it needs 1.85).
const CARGO_DEB: CargoInstall = CargoInstall {
    args: &["cargo-deb", "--version", "3.8.0", "--locked"],
    env: &[],
    build_packages: &[],
    takes: "about 2 minutes",
};

struct Capability {
    what: &'static str,
    provider: Provider,
    /// Tries the capability; the error says what failed.
    probe: fn() -> Result<(), String>,
}

/// Every capability, in the order probed and installed: swaks over IPv6 first, as its
/// missing module is what a fresh machine lacks.
const CAPABILITIES: &[Capability] = &[
    Capability {
        what: "swaks over IPv6 (swaks, libio-socket-inet6-perl)",
        provider: Provider::Debian(&["libio-socket-inet6-perl", "swaks"]),
        probe: swaks_ipv6,
    },
    Capability {
        what: "Postfix (postconf -d mail_version)",
        provider: Provider::Debian(&["postfix"]),
        probe: postfix,
    },
    Capability {
        what: "smtp-sink and smtp-source (postfix)",
        provider: Provider::Debian(&["postfix"]),
        probe: smtp_sink_and_source,
    },
    Capability {
        what: "the snakeoil certificate (ssl-cert), for a lab Postfix that offers STARTTLS",
        provider: Provider::Debian(&["ssl-cert"]),
        probe: snakeoil_certificate,
    },
    Capability {
        what: "dnsmasq (dnsmasq-base)",
        provider: Provider::Debian(&["dnsmasq-base"]),
        probe: || version("dnsmasq", &["--version"], "Dnsmasq version"),
    },
    Capability {
        what: "hping3",
        provider: Provider::Debian(&["hping3"]),
        probe: || version("hping3", &["--version"], "hping3 version"),
    },
    Capability {
        what: "nft (nftables)",
        provider: Provider::Debian(&["nftables"]),
        probe: || version("nft", &["--version"], "nftables"),
    },
    Capability {
        what: "bpftool",
        provider: Provider::Debian(&["bpftool"]),
        probe: || version("bpftool", &["version"], "bpftool"),
    },
    Capability {
        what: "ip and ss (iproute2)",
        provider: Provider::Debian(&["iproute2"]),
        probe: || {
            version("ip", &["-V"], "iproute2")?;
            version("ss", &["-V"], "iproute2")
        },
    },
    Capability {
        what: "sysctl (procps)",
        provider: Provider::Debian(&["procps"]),
        probe: || version("sysctl", &["--version"], "procps"),
    },
    Capability {
        what: "systemd-analyze (systemd)",
        provider: Provider::Debian(&["systemd"]),
        probe: || version("systemd-analyze", &["--version"], "systemd"),
    },
    // A later issue runs redis-server instances of its own (about 1 MB with redis-tools,
    // which holds the binary; the `redis-server` package adds the command's name).
    Capability {
        what: "redis-server",
        provider: Provider::Debian(&["redis-server"]),
        probe: || version("redis-server", &["--version"], "Redis server"),
    },
    // The alert rules' checks (`promtool check rules`, `promtool test rules`) and the test
    // in which a real Prometheus scrapes the daemon and evaluates them.
    Capability {
        what: "promtool (prometheus)",
        provider: Provider::Debian(&["prometheus"]),
        probe: || {
            version("promtool", &["--version"], "promtool, version")?;
            version("prometheus", &["--version"], "prometheus, version")
        },
    },
    Capability {
        what: "nightly rust-src (builds the eBPF crate with -Z build-std)",
        provider: Provider::Nightly("rust-src"),
        probe: nightly_rust_src,
    },
    Capability {
        what: "nightly clippy (cargo xtask lint)",
        provider: Provider::Nightly("clippy"),
        probe: || version("cargo", &["+nightly", "clippy", "--version"], "clippy"),
    },
    Capability {
        what: "nightly rustfmt (cargo xtask lint)",
        provider: Provider::Nightly("rustfmt"),
        probe: || version("cargo", &["+nightly", "fmt", "--version"], "rustfmt"),
    },
    Capability {
        what: "bpf-linker (LLVM 22)",
        provider: Provider::CargoInstall(&BPF_LINKER),
        probe: || version("bpf-linker", &["--version"], "bpf-linker"),
    },
    Capability {
        what: "cargo-deb (cargo xtask deb)",
        provider: Provider::CargoInstall(&CARGO_DEB),
        probe: || version("cargo", &["deb", "--version"], "cargo-deb"),
    },
    Capability {
        what: "dpkg-shlibdeps (dpkg-dev), from which cargo-deb derives the package's Depends",
        provider: Provider::Debian(&["dpkg-dev"]),
        probe: || version("dpkg-shlibdeps", &["--version"], "dpkg-shlibdeps"),
    },
];

/// Probes everything, installs what is missing, probes that again.
pub fn run() -> anyhow::Result<()> {
    // SAFETY: geteuid(2) takes no arguments, touches no memory of ours and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!("setup installs Debian packages and loads BPF programs: run it as root");
    }
    let total = CAPABILITIES.len();
    let mut missing = Vec::new();
    for (n, capability) in CAPABILITIES.iter().enumerate() {
        match (capability.probe)() {
            Ok(()) => println!("setup [{}/{total}] {}: ok", n + 1, capability.what),
            Err(e) => {
                println!(
                    "setup [{}/{total}] {}: MISSING ({e})",
                    n + 1,
                    capability.what
                );
                missing.push(capability);
            }
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    install(&missing)?;
    let failed: Vec<String> = missing
        .iter()
        .filter_map(|c| match (c.probe)() {
            Ok(()) => {
                println!("setup: {}: ok now", c.what);
                None
            }
            Err(e) => Some(format!("{}: {e}", c.what)),
        })
        .collect();
    if !failed.is_empty() {
        bail!(
            "setup could not provide (still failing after the install) {}",
            failed.join("; ")
        );
    }
    Ok(())
}

/// Installs what provides the missing capabilities: Debian packages (once), nightly
/// components, tools from crates.io.
fn install(missing: &[&Capability]) -> anyhow::Result<()> {
    let mut packages: Vec<&str> = Vec::new();
    let mut components: Vec<&str> = Vec::new();
    let mut cargo_installs: Vec<&CargoInstall> = Vec::new();
    for capability in missing {
        match capability.provider {
            Provider::Debian(names) => packages.extend(names),
            Provider::Nightly(component) => components.push(component),
            Provider::CargoInstall(tool) => {
                packages.extend(tool.build_packages);
                cargo_installs.push(tool);
            }
        }
    }
    let mut seen = std::collections::HashSet::new();
    packages.retain(|p| seen.insert(*p));
    if !packages.is_empty() {
        println!("setup: apt-get install {}", packages.join(" "));
        install_debian_packages(&packages)?;
    }
    if !components.is_empty() {
        println!(
            "setup: rustup component add {} (nightly)",
            components.join(" ")
        );
        quiet(
            Command::new("rustup")
                .args(["component", "add"])
                .args(&components)
                .args(["--toolchain", "nightly"]),
        )?;
    }
    for tool in cargo_installs {
        println!(
            "setup: cargo install {} ({} on 2 cores)",
            tool.args.join(" "),
            tool.takes
        );
        run_cmd(
            Command::new("cargo")
                .args(["install", "--quiet"])
                .args(tool.args)
                .envs(tool.env.iter().copied()),
        )?;
    }
    Ok(())
}

/// swaks asked for an IPv6 session to a closed port on ::1: it checks its IPv6
/// prerequisite (IO::Socket::INET6) before connecting and, without it, prints `*** IPv6 not
/// available …` and exits 10; with it, it prints `=== Trying ::1:PORT...` and fails to
/// connect at once (exit 2). The same code path as the lab's sessions, no server needed.
fn swaks_ipv6() -> Result<(), String> {
    // A port that was just free: refused, so swaks fails fast.
    let port = TcpListener::bind("[::1]:0")
        .and_then(|l| l.local_addr())
        .map_or(9, |a| a.port());
    let out = Command::new("swaks")
        .args(["--server", "::1", "--port", &port.to_string()])
        // With a recipient given swaks never prompts (it loops on an empty stdin when it
        // must ask for one).
        .args([
            "--to",
            "probe@example.net",
            "--quit-after",
            "connect",
            "--timeout",
            "2",
        ])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("swaks: {e}"))?;
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    if text.contains("=== Trying ::1") {
        return Ok(());
    }
    let error = text
        .lines()
        .find_map(|l| l.strip_prefix("***"))
        .map_or_else(|| format!("exit {}", out.status), |e| e.trim().to_owned());
    Err(format!("swaks -6: {error}"))
}

fn postfix() -> Result<(), String> {
    version("postconf", &["-d", "mail_version"], "mail_version =")?;
    // The lab's Postfix starts from the package's pristine master.cf.
    let master = "/usr/share/postfix/master.cf.dist";
    if !std::path::Path::new(master).exists() {
        return Err(format!("{master} is missing"));
    }
    Ok(())
}

/// The certificate and key the lab's STARTTLS Postfix uses (ssl-cert's postinst makes them),
/// present and readable.
fn snakeoil_certificate() -> Result<(), String> {
    for file in [
        "/etc/ssl/certs/ssl-cert-snakeoil.pem",
        "/etc/ssl/private/ssl-cert-snakeoil.key",
    ] {
        std::fs::read(file).map_err(|e| format!("{file}: {e}"))?;
    }
    Ok(())
}

/// Both print their usage (and exit 1) when run without arguments; Postfix's fatal exit
/// takes a second, so the two run side by side.
fn smtp_sink_and_source() -> Result<(), String> {
    let mut running = Vec::new();
    for tool in ["smtp-sink", "smtp-source"] {
        let child = Command::new(tool)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("{tool}: {e}"))?;
        running.push((tool, child));
    }
    for (tool, child) in running {
        let out = child
            .wait_with_output()
            .map_err(|e| format!("{tool}: {e}"))?;
        if !String::from_utf8_lossy(&out.stderr).contains(&format!("usage: {tool}")) {
            return Err(format!("{tool} did not print its usage"));
        }
    }
    Ok(())
}

/// The nightly's sysroot has the standard library's source that `-Z build-std=core` builds.
fn nightly_rust_src() -> Result<(), String> {
    let out = Command::new("rustc")
        .args(["+nightly", "--print", "sysroot"])
        .output()
        .map_err(|e| format!("rustc +nightly: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "rustc +nightly: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let sysroot = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    let core = sysroot.join("lib/rustlib/src/rust/library/core/Cargo.toml");
    if !core.exists() {
        return Err(format!("{} is missing", core.display()));
    }
    Ok(())
}

/// Runs `program args` and checks it succeeds and its output contains `expect`.
fn version(program: &str, args: &[&str], expect: &str) -> Result<(), String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    if !out.status.success() {
        let first = text.lines().next().unwrap_or("").trim();
        return Err(format!(
            "{program} {}: {} {first}",
            args.join(" "),
            out.status
        ));
    }
    if !text.contains(expect) {
        return Err(format!(
            "{program} {} did not say {expect:?}",
            args.join(" ")
        ));
    }
    Ok(())
}

/// Runs a command with its output captured, shown (the last lines) only if it fails.
fn quiet(command: &mut Command) -> anyhow::Result<()> {
    let out = command
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {command:?}"))?;
    if !out.status.success() {
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(15)..].join("\n");
        bail!("{command:?} failed: {}\n{tail}", out.status);
    }
    Ok(())
}

fn install_debian_packages(packages: &[&str]) -> anyhow::Result<()> {
    // Postfix is only a tool here (smtp-sink, smtp-source, a lab MTA): keep its package
    // from configuring and starting a system MTA.
    let preseed = "postfix postfix/main_mailer_type select No configuration\n";
    let mut debconf = Command::new("debconf-set-selections")
        .stdin(Stdio::piped())
        .spawn()
        .context("debconf-set-selections")?;
    use std::io::Write as _;
    debconf
        .stdin
        .take()
        .context("debconf stdin")?
        .write_all(preseed.as_bytes())?;
    debconf.wait()?;
    quiet(Command::new("apt-get").args(["update", "-q"]))?;
    quiet(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(packages)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}
