//! `cargo xtask fuzz [--seconds N]`: every cargo-fuzz target of `fuzz/` (one per parser) under
//! libFuzzer for N seconds each, then the XDP program's frame fuzzer (`tests/tests/xdp_fuzz.rs`)
//! with a million frames. Neither `cargo xtask test` nor CI runs it: they replay the corpora
//! (`helo-filter/tests/fuzz_corpus_replay.rs`) instead (docs/testing.md).

use std::{
    fs,
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};
use xtask::{
    paths,
    process::{cargo, nightly_cargo, output, run_cmd},
    setup,
};

/// Frames the XDP fuzzer plays here (CI plays the test's own default, fewer).
const XDP_FUZZ_FRAMES: &str = "1000000";

/// What one target's run did.
#[derive(Debug, PartialEq)]
struct Outcome {
    /// Inputs libFuzzer ran.
    runs: u64,
    /// The input that broke an invariant (a crash, a time-out or running out of memory), as
    /// libFuzzer saved it.
    artifact: Option<String>,
}

pub fn run(seconds: u64) -> anyhow::Result<()> {
    setup::run()?;
    ensure_cargo_fuzz()?;
    println!("building the fuzz targets (nightly, libFuzzer, AddressSanitizer)");
    run_cmd(cargo_fuzz().arg("build"))?;
    let listed = output(cargo_fuzz().arg("list"))?;
    let targets: Vec<&str> = listed
        .lines()
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .collect();
    let mut artifacts = Vec::new();
    for (n, target) in targets.iter().enumerate() {
        println!("fuzz [{}/{}] {target}: {seconds} s", n + 1, targets.len());
        let (outcome, new_entries) = fuzz_target(target, seconds)?;
        print!(
            "      {} runs, {new_entries} new corpus entries",
            outcome.runs
        );
        match outcome.artifact {
            None => println!(", 0 crashes"),
            Some(artifact) => {
                println!(", 1 crash: {artifact}");
                artifacts.push(artifact);
            }
        }
    }
    println!("XDP frame fuzzer: {XDP_FUZZ_FRAMES} frames (tests/tests/xdp_fuzz.rs)");
    let xdp = run_cmd(
        cargo()
            .args(["test", "--workspace", "--exclude", "helo-filter-ebpf"])
            .args([
                "--features",
                "helo-filter/fault-injection",
                "--test",
                "xdp_fuzz",
            ])
            .env("HELO_FILTER_XDP_FUZZ_FRAMES", XDP_FUZZ_FRAMES),
    );
    if !artifacts.is_empty() {
        bail!(
            "{} target(s) crashed; replay one with `cargo +nightly fuzz run TARGET ARTIFACT`, \
             then add it as a unit test: {}",
            artifacts.len(),
            artifacts.join(", ")
        );
    }
    xdp
}

/// `cargo +nightly fuzz`, the fuzz targets built without the eBPF object (they need none).
fn cargo_fuzz() -> Command {
    let mut command = nightly_cargo();
    command.arg("fuzz").env("AYA_BUILD_SKIP", "1");
    command
}

/// cargo-fuzz comes from crates.io; it is not a setup capability, since CI does not fuzz.
fn ensure_cargo_fuzz() -> anyhow::Result<()> {
    let present = cargo_fuzz()
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !present {
        println!("installing cargo-fuzz (cargo install cargo-fuzz --locked)");
        run_cmd(cargo().args(["install", "cargo-fuzz", "--locked"]))?;
    }
    Ok(())
}

/// Runs one target for `seconds`, its output in `target/fuzz/TARGET.log`. libFuzzer reads the
/// repository's seeds (`fuzz/corpus/TARGET`) and writes the inputs that find new coverage to
/// `target/fuzz/corpus/TARGET`, kept between runs; the repository's corpus stays small (copy
/// an entry worth keeping there by hand). Returns the outcome and the new entries' count.
fn fuzz_target(target: &str, seconds: u64) -> anyhow::Result<(Outcome, usize)> {
    let work = paths::target_dir().join("fuzz");
    let scratch = work.join("corpus").join(target);
    fs::create_dir_all(&scratch).with_context(|| format!("creating {}", scratch.display()))?;
    let log_path = work.join(format!("{target}.log"));
    let log =
        fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
    let entries_before = count_files(&scratch)?;
    let status = cargo_fuzz()
        .args(["run", target])
        .arg(&scratch)
        .arg(paths::workspace_root().join("fuzz/corpus").join(target))
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        .arg("-print_final_stats=1")
        .stdout(log.try_clone()?)
        .stderr(log)
        .status()
        .with_context(|| format!("running cargo fuzz run {target}"))?;
    let text =
        fs::read_to_string(&log_path).with_context(|| format!("reading {}", log_path.display()))?;
    let new_entries = count_files(&scratch)?.saturating_sub(entries_before);
    match parse_log(&text) {
        Some(outcome) if status.success() == outcome.artifact.is_none() => {
            Ok((outcome, new_entries))
        }
        _ => bail!(
            "cargo fuzz run {target} failed ({status}) without a libFuzzer result; see {}",
            log_path.display()
        ),
    }
}

fn count_files(dir: &Path) -> anyhow::Result<usize> {
    Ok(fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .count())
}

/// The runs from libFuzzer's final statistics (`-print_final_stats=1`, printed on a crash
/// too) and the artifact it wrote, if any; `None` when libFuzzer did not get to run.
fn parse_log(log: &str) -> Option<Outcome> {
    let runs = log
        .lines()
        .find_map(|line| line.strip_prefix("stat::number_of_executed_units:"))?
        .trim()
        .parse()
        .ok()?;
    let artifact = log.lines().find_map(|line| {
        let (_, path) = line.split_once("Test unit written to ")?;
        Some(path.trim().to_owned())
    });
    Some(Outcome { runs, artifact })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clean_run_and_a_crash_are_read_from_the_log() {
        let clean = "INFO: Seed: 1\n#2\tINITED cov: 10 ft: 10 corp: 3/30b\n\
                     Done 48213 runs in 31 second(s)\nstat::number_of_executed_units: 48213\n\
                     stat::average_exec_per_sec:     1555\nstat::new_units_added:          12\n";
        assert_eq!(
            parse_log(clean),
            Some(Outcome {
                runs: 48213,
                artifact: None
            })
        );
        let crash = "thread '<unnamed>' panicked at helo-filter/src/fuzzing.rs:10:5\n\
                     ==7== ERROR: libFuzzer: deadly signal\n\
                     artifact_prefix='/w/fuzz/artifacts/config/'; Test unit written to \
                     /w/fuzz/artifacts/config/crash-0a1b\nstat::number_of_executed_units: 977\n";
        assert_eq!(
            parse_log(crash),
            Some(Outcome {
                runs: 977,
                artifact: Some("/w/fuzz/artifacts/config/crash-0a1b".into())
            })
        );
        assert_eq!(parse_log("error: could not compile `helo-filter`\n"), None);
    }
}
