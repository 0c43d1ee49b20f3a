//! Compiles `helo-filter-ebpf` for the BPF target (nightly + bpf-linker, through
//! aya-build) and leaves the objects in OUT_DIR for `include_bytes_aligned!`.
//!
//! With `AYA_BUILD_SKIP=1` (clippy, docs) the build writes empty placeholders instead:
//! the crate then compiles, and loading the program fails with a clear error.
use std::{env, fs, path::PathBuf};

use anyhow::{Context as _, anyhow};

const OBJECTS: [&str; 2] = ["helo-filter", "baseline-pass"];

fn main() -> anyhow::Result<()> {
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
