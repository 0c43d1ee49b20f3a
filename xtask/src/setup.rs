//! `cargo xtask setup`: installs, idempotently and with progress messages, everything
//! building and testing needs on a fresh Debian 12 machine of the project's kind.

use std::process::{Command, Stdio};

use anyhow::{Context as _, bail};

use crate::process::{output, run_cmd};

/// Debian packages: LLVM 22 to build bpf-linker, the SMTP peers and tools of the lab.
const DEBIAN_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    "postfix",
    "swaks",
    "dnsmasq-base",
    "bpftool",
    "hping3",
    "nftables",
    "systemd",
    "iproute2",
    "procps",
];

/// Components of the nightly toolchain: rust-src to build the eBPF crate (`-Z build-std`),
/// clippy and rustfmt for `cargo xtask lint` (its eBPF clippy pass, the import-grouping
/// format check).
const NIGHTLY_COMPONENTS: &[&str] = &["rust-src", "clippy", "rustfmt"];

/// bpf-linker must use the same LLVM major as the nightly that compiles the eBPF crate.
const BPF_LINKER_VERSION: &str = "0.13.0";
const BPF_LINKER_LLVM_FEATURE: &str = "llvm-22";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

fn step(n: usize, total: usize, what: &str) {
    println!("setup [{n}/{total}] {what}");
}

/// Installs what is missing; does nothing (quickly) when all is there.
pub fn run() -> anyhow::Result<()> {
    // SAFETY: geteuid(2) takes no arguments, touches no memory of ours and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!("setup installs Debian packages and loads BPF programs: run it as root");
    }
    step(1, 3, "Debian packages");
    let missing: Vec<&str> = DEBIAN_PACKAGES
        .iter()
        .copied()
        .filter(|p| !debian_package_installed(p))
        .collect();
    if missing.is_empty() {
        println!("      all {} present", DEBIAN_PACKAGES.len());
    } else {
        println!("      installing: {}", missing.join(" "));
        install_debian_packages(&missing)?;
    }

    step(
        2,
        3,
        "nightly toolchain: rust-src (builds the eBPF crate), clippy and rustfmt (lint)",
    );
    let components = output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))
    .context("rustup has no nightly toolchain")?;
    // `rust-src`, or a target-qualified name such as `clippy-x86_64-unknown-linux-gnu`.
    let missing: Vec<&str> = NIGHTLY_COMPONENTS
        .iter()
        .copied()
        .filter(|c| {
            !components
                .lines()
                .any(|l| l == *c || l.strip_prefix(c).is_some_and(|t| t.starts_with('-')))
        })
        .collect();
    if missing.is_empty() {
        println!("      present");
    } else {
        println!(
            "      adding to the nightly toolchain: {}",
            missing.join(" ")
        );
        run_cmd(
            Command::new("rustup")
                .args(["component", "add"])
                .args(&missing)
                .args(["--toolchain", "nightly"]),
        )?;
    }

    step(3, 3, "bpf-linker (built against Debian's LLVM 22)");
    let installed = Command::new("bpf-linker")
        .arg("--version")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .output()
        .is_ok_and(|o| o.status.success());
    if installed {
        println!("      present");
    } else {
        println!(
            "      cargo install bpf-linker {BPF_LINKER_VERSION} (about 3 minutes on 2 cores)"
        );
        run_cmd(
            Command::new("cargo")
                .args([
                    "install",
                    "bpf-linker",
                    "--version",
                    BPF_LINKER_VERSION,
                    "--no-default-features",
                    "--features",
                    BPF_LINKER_LLVM_FEATURE,
                ])
                .env("LLVM_PREFIX", LLVM_PREFIX),
        )?;
    }
    Ok(())
}

fn debian_package_installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .stderr(Stdio::null())
        .output()
        .is_ok_and(|o| o.status.success() && o.stdout.starts_with(b"install ok installed"))
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
    run_cmd(Command::new("apt-get").args(["update", "-q"]))?;
    run_cmd(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(packages)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}
