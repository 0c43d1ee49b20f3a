//! Compiles `helo-filter-ebpf` for the BPF target (nightly + bpf-linker, through
//! aya-build) and leaves the objects in OUT_DIR for `include_bytes_aligned!`.
//!
//! With `AYA_BUILD_SKIP=1` (clippy, docs) the build writes empty placeholders instead:
//! the crate then compiles, and loading the program fails with a clear error.
//!
//! It also names the commit built (`HELO_FILTER_COMMIT`, exported as
//! `helo_filter_build_info{commit}`).
use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, anyhow};

const OBJECTS: [&str; 2] = ["helo-filter", "baseline-pass"];

fn main() -> anyhow::Result<()> {
    emit_commit();
    println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
    let skip = env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v == "true");
    if skip {
        let out_dir = PathBuf::from(env::var("OUT_DIR")?);
        for object in OBJECTS {
            fs::write(out_dir.join(object), [])?;
        }
        return Ok(());
    }
    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = metadata
        .packages
        .into_iter()
        .find(|p| p.name == "helo-filter-ebpf")
        .ok_or_else(|| anyhow!("helo-filter-ebpf package not found"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("no parent for {}", ebpf.manifest_path))?
        .as_str()
        .to_owned();
    let package = aya_build::Package {
        name: ebpf.name.as_str(),
        root_dir: &root_dir,
        ..Default::default()
    };
    aya_build::build_ebpf([package], aya_build::Toolchain::default())
}

/// Sets `HELO_FILTER_COMMIT` to the workspace's commit (`git rev-parse --short=12 HEAD`), or
/// to `unknown` where git or the repository is absent (a source tarball, a package build):
/// those builds must still succeed.
fn emit_commit() {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let commit = git(crate_dir, &["rev-parse", "--short=12", "HEAD"]);
    println!(
        "cargo:rustc-env=HELO_FILTER_COMMIT={}",
        commit.as_deref().unwrap_or("unknown")
    );
    // A checkout changes HEAD, a commit a branch (loose under refs/heads, or packed): each
    // must rebuild with the new name. Only paths that exist are named: cargo reruns a build
    // script every time when a path it was given is missing.
    let (Some(git_dir), Some(common_dir)) = (
        git(crate_dir, &["rev-parse", "--absolute-git-dir"]),
        git(
            crate_dir,
            &["rev-parse", "--path-format=absolute", "--git-common-dir"],
        ),
    ) else {
        return;
    };
    let watched = [
        Path::new(&git_dir).join("HEAD"),
        Path::new(&common_dir).join("refs/heads"),
        Path::new(&common_dir).join("packed-refs"),
    ];
    for path in watched.iter().filter(|p| p.exists()) {
        println!("cargo:rerun-if-changed={}", path.display());
    }
}

/// What `git args` prints in `dir`, trimmed; None if git is missing or fails.
fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .output()
        .ok()
        .filter(|out| out.status.success())?;
    let text = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    (!text.is_empty()).then_some(text)
}
