//! Persistent state in `--state-dir`: the operator's lists (`lists.json`) and reputation
//! snapshots (`reputation.json`). Each file is versioned and written atomically (a
//! temporary file in the same directory, fsync, rename, fsync of the directory), so a crash
//! leaves the old file or the new one, never a torn one. A file that cannot be read or
//! parsed stops the daemon with a message naming it: it never starts with its lists
//! silently emptied. A missing file is a first start.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};
use ipnet::IpNet;
use serde::{Deserialize, Serialize, de::DeserializeOwned};

/// `reputation.json`'s contents: the format is Reputation's.
pub use crate::pipeline::reputation::{ReputationSnapshot, SourceRecord};

/// The version of both files' format.
pub const STATE_VERSION: u32 = 1;
const LISTS_FILE: &str = "lists.json";
const REPUTATION_FILE: &str = "reputation.json";

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
        })
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    pub fn load_lists(&self) -> anyhow::Result<Lists> {
        self.load(LISTS_FILE)
    }

    pub fn save_lists(&self, lists: &Lists) -> anyhow::Result<()> {
        self.save(LISTS_FILE, lists)
    }

    pub fn load_reputation(&self) -> anyhow::Result<ReputationSnapshot> {
        self.load(REPUTATION_FILE)
    }

    pub fn save_reputation(&self, snapshot: &ReputationSnapshot) -> anyhow::Result<()> {
        self.save(REPUTATION_FILE, snapshot)
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

    fn save<T: Serialize>(&self, name: &str, body: &T) -> anyhow::Result<()> {
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
        write().with_context(|| format!("writing the state file {}", path.display()))
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
