//! Replays every fuzz corpus (`fuzz/corpus/TARGET/`) through the entry points the fuzz targets
//! call (`helo_filter::fuzzing`), so that what libFuzzer found, or was seeded with, stays
//! checked by plain `cargo test`, where libFuzzer does not run.

use std::{
    collections::BTreeSet,
    panic::{AssertUnwindSafe, catch_unwind},
    path::{Path, PathBuf},
};

use helo_filter::fuzzing::TARGETS;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

fn file_names(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| {
            entry
                .expect("a directory entry")
                .file_name()
                .into_string()
                .expect("a UTF-8 file name")
        })
        .collect()
}

/// Each cargo-fuzz target is one of `TARGETS`, and each of `TARGETS` has a target: nothing is
/// fuzzed without being replayed, nor replayed without being fuzzed.
#[test]
fn every_fuzz_target_has_an_entry_point() {
    let fuzz_targets: BTreeSet<String> = file_names(&fuzz_dir().join("fuzz_targets"))
        .into_iter()
        .map(|name| name.trim_end_matches(".rs").to_owned())
        .collect();
    let entry_points: BTreeSet<String> =
        TARGETS.iter().map(|(name, _)| (*name).to_owned()).collect();
    assert_eq!(fuzz_targets, entry_points);
}

#[test]
fn every_corpus_file_replays_without_a_broken_invariant() {
    let mut failures = Vec::new();
    for (target, entry_point) in TARGETS {
        let dir = fuzz_dir().join("corpus").join(target);
        let files = file_names(&dir);
        assert!(!files.is_empty(), "{}: an empty corpus", dir.display());
        for name in files {
            let path = dir.join(&name);
            let data = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            if catch_unwind(AssertUnwindSafe(|| entry_point(&data))).is_err() {
                failures.push(path.display().to_string());
            }
        }
    }
    assert!(
        failures.is_empty(),
        "broken invariants (panic messages above): {failures:#?}"
    );
}
