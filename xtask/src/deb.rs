//! `cargo xtask deb`: the Debian package, built with cargo-deb (docs/packaging.md). The
//! release binary writes its own man pages and shell completions (`helo-filter
//! generate-assets`) where helo-filter/Cargo.toml's `[package.metadata.deb]` assets expect
//! them; cargo-deb then packs those, the binary, the systemd units, the conffile and the docs,
//! without building again.

use std::{
    io::ErrorKind,
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};
use xtask::{
    paths,
    process::{cargo, output, run_cmd},
    setup,
};

/// `cargo xtask deb`: setup (cargo-deb among the rest), then the package.
pub fn run() -> anyhow::Result<()> {
    setup::run()?;
    let package = build()?;
    println!("package: {}", package.display());
    Ok(())
}

/// Builds the package; returns its path (target/debian/helo-filter_VERSION-1_ARCH.deb).
pub fn build() -> anyhow::Result<PathBuf> {
    crate::build_release_daemon()?;
    let assets = paths::target_dir().join("release/deb-assets");
    // Made afresh: the page of a subcommand that no longer exists must not be packed.
    match std::fs::remove_dir_all(&assets) {
        Err(e) if e.kind() != ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("removing {}", assets.display()));
        }
        _ => {}
    }
    println!(
        "writing the man pages and completions into {}",
        assets.display()
    );
    run_cmd(
        Command::new(paths::release_binary())
            .arg("generate-assets")
            .arg("--out")
            .arg(&assets),
    )?;
    gzip_man_pages(&assets.join("man"))?;
    println!("packing helo-filter (cargo deb)");
    // cargo-deb prints the package's path on stdout; its progress and warnings go to stderr.
    let printed = output(
        cargo()
            .args(["deb", "--no-build", "--package", "helo-filter"])
            .stderr(Stdio::inherit()),
    )?;
    let Some(package) = printed
        .lines()
        .map(str::trim)
        .rfind(|l| l.ends_with(".deb"))
    else {
        bail!("cargo deb named no package: {printed}");
    };
    Ok(PathBuf::from(package))
}

/// `gzip -9n` each page, as Debian policy asks (best compression, no name or time stamp, so
/// that the same tree gives the same package). cargo-deb compresses only the man pages it
/// does not count as build products, and it counts everything under `target/release/` as one.
fn gzip_man_pages(dir: &std::path::Path) -> anyhow::Result<()> {
    let pages: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    if pages.is_empty() {
        bail!("no man page was written into {}", dir.display());
    }
    run_cmd(
        Command::new("gzip")
            .args(["-9", "-n", "--force"])
            .args(&pages),
    )
}
