//! Persistent state in `--state-dir`: the operator's lists (`lists.json`) and reputation
//! snapshots (`reputation.json`). Each file is versioned and written atomically (a
//! temporary file in the same directory, fsync, rename, fsync of the directory), so a crash
//! leaves the old file or the new one, never a torn one. A file that cannot be read or
//! parsed stops the daemon with a message naming it: it never starts with its lists
//! silently emptied. A missing file is a first start.
//!
//! A write that fails (a read-only or full file system) is counted in
//! `helo_filter_state_write_failures_total{file}` and logged at most once per
//! [`FAILURE_LOG_INTERVAL`] for each file, since the callers retry (the reputation snapshot
//! every interval, the expiry of list entries every second): a full disk must not fill the
//! log as well. The daemon keeps enforcing what it holds in memory meanwhile.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use ipnet::IpNet;
use log::{info, warn};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::metrics::StateFile;
/// `reputation.json`'s contents: the format is Reputation's.
pub use crate::pipeline::reputation::{ReputationSnapshot, SourceRecord};

/// The version of both files' format.
pub const STATE_VERSION: u32 = 1;
const LISTS_FILE: &str = "lists.json";
const REPUTATION_FILE: &str = "reputation.json";
/// The shortest time between two log lines about failing writes of one file.
pub const FAILURE_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// An operator's allow or deny entry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetEntry {
    pub net: IpNet,
    /// Unix time the entry ends at; none: it stays until deleted.
    pub expires_at: Option<u64>,
    pub comment: Option<String>,
    pub added_at: u64,
    /// A deny entry shared with the fleet (`deny add --fleet`): re-published after a
    /// reconnect while it lasts.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shared: bool,
}

/// An operator's HELO deny pattern (exact name, `*.suffix` or `/regex/`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeloEntry {
    pub pattern: String,
    pub expires_at: Option<u64>,
    pub comment: Option<String>,
    pub added_at: u64,
}

/// `lists.json`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lists {
    pub allow: Vec<NetEntry>,
    pub deny: Vec<NetEntry>,
    pub deny_helo: Vec<HeloEntry>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Versioned<T> {
    version: u32,
    #[serde(flatten)]
    body: T,
}

/// The state directory.
#[derive(Clone, Debug)]
pub struct StateDir {
    dir: PathBuf,
    /// Shared by the clones: the reputation snapshot and the lists are written from
    /// several tasks.
    failures: Arc<Mutex<[WriteFailures; 2]>>,
}

/// The failing writes of one file since it was last written.
#[derive(Debug, Default)]
struct WriteFailures {
    /// Failed writes since the last success.
    failed: u64,
    /// Failed writes not yet told in a log line.
    untold: u64,
    logged_at: Option<Instant>,
}

impl WriteFailures {
    /// Counts a failure; whether to log it now, and how many failures the line tells.
    fn failed(&mut self, now: Instant) -> Option<u64> {
        self.failed += 1;
        self.untold += 1;
        if self
            .logged_at
            .is_some_and(|at| now.duration_since(at) < FAILURE_LOG_INTERVAL)
        {
            return None;
        }
        self.logged_at = Some(now);
        Some(std::mem::take(&mut self.untold))
    }

    /// A write worked: the failures before it, if any (to say that it works again).
    fn written(&mut self) -> Option<u64> {
        let failed = std::mem::take(self).failed;
        (failed > 0).then_some(failed)
    }
}

impl StateDir {
    /// Creates the directory (mode 0700) if needed.
    pub fn open(dir: &Path) -> anyhow::Result<StateDir> {
        use std::os::unix::fs::DirBuilderExt as _;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating the state directory {}", dir.display()))?;
        Ok(StateDir {
            dir: dir.to_path_buf(),
            failures: Arc::default(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    pub fn load_lists(&self) -> anyhow::Result<Lists> {
        self.load(LISTS_FILE)
    }

    pub fn save_lists(&self, lists: &Lists) -> anyhow::Result<()> {
        self.save(StateFile::Lists, LISTS_FILE, lists)
    }

    pub fn load_reputation(&self) -> anyhow::Result<ReputationSnapshot> {
        self.load(REPUTATION_FILE)
    }

    pub fn save_reputation(&self, snapshot: &ReputationSnapshot) -> anyhow::Result<()> {
        self.save(StateFile::Reputation, REPUTATION_FILE, snapshot)
    }

    fn load<T: DeserializeOwned + Default>(&self, name: &str) -> anyhow::Result<T> {
        let path = self.dir.join(name);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(T::default()),
            Err(e) => bail!("state file {}: cannot read: {e}", path.display()),
        };
        let probe: serde_json::Value = serde_json::from_str(&text).with_context(|| {
            format!(
                "state file {} is corrupt (not JSON); restore it from a backup or remove it \
                 to start with it empty",
                path.display()
            )
        })?;
        match probe.get("version").and_then(serde_json::Value::as_u64) {
            Some(v) if v == u64::from(STATE_VERSION) => {}
            Some(v) => bail!(
                "state file {}: version {v}, this daemon reads version {STATE_VERSION}",
                path.display()
            ),
            None => bail!("state file {}: no version", path.display()),
        }
        let file: Versioned<T> = serde_json::from_value(probe).with_context(|| {
            format!(
                "state file {} is corrupt; restore it from a backup or remove it to start \
                 with it empty",
                path.display()
            )
        })?;
        Ok(file.body)
    }

    /// Writes `name` atomically; a failure is counted and logged (see the module's doc).
    fn save<T: Serialize>(&self, file: StateFile, name: &str, body: &T) -> anyhow::Result<()> {
        let path = self.dir.join(name);
        let temporary = self.dir.join(format!(".{name}.tmp"));
        let text = serde_json::to_vec_pretty(&Versioned {
            version: STATE_VERSION,
            body,
        })?;
        let write = || -> std::io::Result<()> {
            let mut file = std::fs::File::create(&temporary)?;
            file.write_all(&text)?;
            file.write_all(b"\n")?;
            file.sync_all()?;
            std::fs::rename(&temporary, &path)?;
            std::fs::File::open(&self.dir)?.sync_all()
        };
        let written = write();
        let mut failures = self.failures.lock();
        let failures = &mut failures[file as usize];
        match written {
            Ok(()) => {
                if let Some(failed) = failures.written() {
                    info!(
                        "state file {} written again, after {failed} failed writes",
                        path.display()
                    );
                }
                Ok(())
            }
            Err(e) => {
                // A half-written temporary file would hold on to the space a full file
                // system needs back; the file in force is untouched.
                let _ = std::fs::remove_file(&temporary);
                crate::metrics::state_write_failure(file);
                if let Some(failed) = failures.failed(Instant::now()) {
                    let meanwhile = match file {
                        StateFile::Lists => "list changes are refused until it can be written",
                        StateFile::Reputation => "the snapshot is tried again every interval",
                    };
                    warn!(
                        "writing the state file {}: {e} ({failed} failed writes since the last \
                         line, at most one line every {} s); enforcement goes on with what is \
                         in memory, {meanwhile}",
                        path.display(),
                        FAILURE_LOG_INTERVAL.as_secs()
                    );
                }
                Err(anyhow::Error::new(e)
                    .context(format!("writing the state file {}", path.display())))
            }
        }
    }
}

/// Whether an entry with this expiry is still in force at `now` (Unix seconds).
pub fn in_force(expires_at: Option<u64>, now: u64) -> bool {
    expires_at.is_none_or(|at| at > now)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh directory of its own for each test (they run at once).
    fn dir(test: &str) -> StateDir {
        let path = std::env::temp_dir().join(format!(
            "hf-state-test-{test}-{}-{}",
            std::process::id(),
            crate::clock::unix_now()
        ));
        let _ = std::fs::remove_dir_all(&path);
        StateDir::open(&path).expect("state dir")
    }

    #[test]
    fn lists_round_trip_and_a_missing_file_is_empty() {
        let state = dir("round-trip");
        assert_eq!(state.load_lists().expect("empty"), Lists::default());
        let lists = Lists {
            allow: vec![NetEntry {
                net: "192.0.2.0/24".parse().expect("net"),
                expires_at: None,
                comment: Some("partner".into()),
                added_at: 1,
                shared: false,
            }],
            deny: vec![NetEntry {
                net: "203.0.113.0/24".parse().expect("net"),
                expires_at: Some(7),
                comment: None,
                added_at: 3,
                shared: true,
            }],
            deny_helo: vec![HeloEntry {
                pattern: "*.dyn.example".into(),
                expires_at: Some(9),
                comment: None,
                added_at: 2,
            }],
        };
        state.save_lists(&lists).expect("save");
        assert_eq!(state.load_lists().expect("load"), lists);
        let text = std::fs::read_to_string(state.path().join(LISTS_FILE)).expect("file");
        assert!(text.contains("\"version\": 1"), "{text}");
        assert!(!state.path().join(".lists.json.tmp").exists());
    }

    #[test]
    fn failing_writes_are_logged_once_per_interval_with_the_count_since_the_last_line() {
        let mut failures = WriteFailures::default();
        let start = Instant::now();
        assert_eq!(failures.failed(start), Some(1), "the first failure is told");
        for second in 1..60 {
            assert_eq!(failures.failed(start + Duration::from_secs(second)), None);
        }
        assert_eq!(
            failures.failed(start + FAILURE_LOG_INTERVAL),
            Some(60),
            "a minute later: the 59 untold and this one"
        );
        assert_eq!(
            failures.written(),
            Some(61),
            "every failure since the last write"
        );
        assert_eq!(
            failures.written(),
            None,
            "a write after a write tells nothing"
        );
        assert_eq!(
            failures.failed(start + FAILURE_LOG_INTERVAL),
            Some(1),
            "a new failure after a write is told at once"
        );
    }

    #[test]
    fn a_failed_write_keeps_the_file_in_force_and_leaves_no_temporary_file() {
        let state = dir("failed-write");
        let lists = Lists::default();
        state.save_lists(&lists).expect("save");
        // A directory in place of the temporary file: creating it fails (even for root).
        let temporary = state.path().join(".lists.json.tmp");
        std::fs::create_dir(&temporary).expect("a directory in the way");
        let mut more = lists.clone();
        more.deny_helo.push(HeloEntry {
            pattern: "bot.example".into(),
            expires_at: None,
            comment: None,
            added_at: 1,
        });
        let e = format!(
            "{:#}",
            state.save_lists(&more).expect_err("the write fails")
        );
        assert!(e.contains("writing the state file"), "{e}");
        assert_eq!(
            state.load_lists().expect("load"),
            lists,
            "the old file is kept"
        );
        std::fs::remove_dir(&temporary).expect("out of the way");
        state.save_lists(&more).expect("written again");
        assert_eq!(state.load_lists().expect("load"), more);
    }

    #[test]
    fn corrupt_and_foreign_files_stop_with_their_name() {
        let state = dir("corrupt");
        let file = state.path().join(LISTS_FILE);
        for (text, needle) in [
            ("{\"version\": 1, \"allow\": [", "is corrupt (not JSON)"),
            (
                "{\"version\": 7, \"allow\": []}",
                "version 7, this daemon reads version 1",
            ),
            ("{\"allow\": []}", "no version"),
            (
                "{\"version\": 1, \"allow\": [{\"net\": \"nonsense\"}], \"deny\": [], \"deny_helo\": []}",
                "is corrupt",
            ),
        ] {
            std::fs::write(&file, text).expect("write");
            let e = format!("{:#}", state.load_lists().expect_err(text));
            assert!(e.contains(&file.display().to_string()), "{e}");
            assert!(e.contains(needle), "{text} -> {e}");
        }
    }
}
