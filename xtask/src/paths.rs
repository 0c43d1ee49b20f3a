//! Where things are: the workspace root, the daemon binaries and the build outputs xtask
//! reads or writes. Depends on nothing else in xtask.

use std::path::{Path, PathBuf};

/// The workspace root (the parent of xtask's own directory).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// Cargo's target directory of the workspace: `$CARGO_TARGET_DIR` (relative to the
/// workspace root) when set, as the cargo that xtask runs builds there, or `target`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR").filter(|d| !d.is_empty()) {
        Some(dir) => workspace_root().join(dir),
        None => workspace_root().join("target"),
    }
}

/// The daemon binary the lab runs: `$HELO_FILTER_BIN`, or the workspace's debug build.
pub fn daemon_binary() -> PathBuf {
    std::env::var_os("HELO_FILTER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("debug/helo-filter"))
}

/// The daemon's release build (what the benchmarks run).
pub fn release_binary() -> PathBuf {
    target_dir().join("release/helo-filter")
}

/// Where the benchmarks write their figures and the quick report.
pub fn bench_dir() -> PathBuf {
    target_dir().join("bench")
}
