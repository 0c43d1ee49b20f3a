//! Protection across restarts: the kernel maps and the XDP and TC links are pinned under the
//! bpffs directory (`--bpffs-dir`), so that the program keeps filtering with the same maps
//! when the daemon exits or dies, and a restarted daemon adopts them: its freshly loaded
//! program replaces the old one inside the same links (atomically, no gap), over the same
//! maps (no entry lost). Removing the pins (`helo-filter detach`) is the only teardown.
//!
//! Layout: `maps/NAME` for each persistent map, `links/xdp-MODE-IFACE` (the attach mode is
//! in the name: bpffs holds nothing but BPF objects) and `links/egress-IFACE`.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use helo_filter_common::maps;

use crate::kernel::AttachedMode;

/// The maps that outlive the daemon. The per-CPU scratch and the logger's buffer belong to
/// one program instance.
pub const PERSISTENT_MAPS: [&str; 8] = [
    maps::EVENTS,
    maps::FLOWS,
    maps::CONFIG,
    maps::HEARTBEAT,
    maps::DENY,
    maps::ALLOW,
    maps::COUNTERS,
    maps::KNOWN_GOOD,
];

/// `statfs` magic number of a BPF file system.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
/// Where BPF file systems live by convention.
const DEFAULT_BPFFS: &str = "/sys/fs/bpf";

fn c_path(path: &Path) -> anyhow::Result<std::ffi::CString> {
    Ok(std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?)
}

fn is_bpffs(path: &Path) -> anyhow::Result<bool> {
    let c = c_path(path)?;
    // SAFETY: `statfs` is a C struct of integers, for which all-zero bytes are a valid value.
    let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: the path is a NUL-terminated CString alive for the call; statfs writes only
    // into the struct it is given, a valid, exclusive `&mut`.
    if unsafe { libc::statfs(c.as_ptr(), &mut fs) } != 0 {
        bail!("{}: {}", path.display(), std::io::Error::last_os_error());
    }
    Ok(fs.f_type as i64 == BPF_FS_MAGIC)
}

/// Mounts a BPF file system on `dir`.
pub fn mount_bpffs(dir: &Path) -> anyhow::Result<()> {
    let target = c_path(dir)?;
    let kind = c"bpf";
    // SAFETY: NUL-terminated strings; no mount data.
    let rc = unsafe {
        libc::mount(
            kind.as_ptr(),
            target.as_ptr(),
            kind.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        bail!(
            "mounting a BPF file system on {}: {}",
            dir.display(),
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// The bpffs directory the daemon pins into.
#[derive(Clone, Debug)]
pub struct PinDir {
    root: PathBuf,
}

impl PinDir {
    /// Creates the directory (and its `maps` and `links` folders) if needed; it must be on a
    /// BPF file system, which is mounted on `/sys/fs/bpf` when that is where it goes and
    /// nothing is mounted there yet (what systemd does at boot).
    pub fn open(root: &Path) -> anyhow::Result<PinDir> {
        let existing = root
            .ancestors()
            .find(|a| a.exists())
            .unwrap_or(Path::new("/"));
        if !is_bpffs(existing)? {
            if existing != Path::new(DEFAULT_BPFFS) {
                bail!(
                    "{} is not on a BPF file system (mount one: mount -t bpf bpf DIR)",
                    root.display()
                );
            }
            mount_bpffs(existing)?;
            log::info!("mounted a BPF file system on {DEFAULT_BPFFS}");
        }
        for dir in [root.join("maps"), root.join("links")] {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        Ok(PinDir {
            root: root.to_path_buf(),
        })
    }

    /// The directory as it is, without creating or mounting anything (an offline detach).
    pub fn existing(root: &Path) -> Option<PinDir> {
        root.is_dir().then(|| PinDir {
            root: root.to_path_buf(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.root.join("maps").join(name)
    }

    pub fn xdp_link(&self, iface: &str, mode: AttachedMode) -> PathBuf {
        self.root
            .join("links")
            .join(format!("xdp-{}-{iface}", mode.as_str()))
    }

    pub fn egress_link(&self, iface: &str) -> PathBuf {
        self.root.join("links").join(format!("egress-{iface}"))
    }

    /// The XDP links pinned: interface and mode.
    pub fn xdp_links(&self) -> Vec<(String, AttachedMode)> {
        self.links("xdp-")
            .iter()
            .filter_map(|rest| {
                let (mode, iface) = rest.split_once('-')?;
                let mode = match mode {
                    "native" => AttachedMode::Native,
                    "generic" => AttachedMode::Generic,
                    _ => return None,
                };
                Some((iface.to_owned(), mode))
            })
            .collect()
    }

    /// The interfaces with a pinned egress link.
    pub fn egress_links(&self) -> Vec<String> {
        self.links("egress-")
    }

    fn links(&self, prefix: &str) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(self.root.join("links")) else {
            return Vec::new();
        };
        entries
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter_map(|name| name.strip_prefix(prefix).map(str::to_owned))
            .collect()
    }

    /// Checks that the maps pinned here have the layout `object` defines, the `EVENTS` ring
    /// buffer `ringbuf_bytes` long: aya reuses a pinned map whatever its layout, and a
    /// program of another version would misread it.
    pub fn check_layouts(&self, object: &[u8], ringbuf_bytes: u32) -> anyhow::Result<()> {
        let object = aya_obj::Object::parse(object).context("parsing the eBPF object")?;
        for name in PERSISTENT_MAPS {
            let path = self.map(name);
            let Some(definition) = object.maps.get(name).filter(|_| path.exists()) else {
                continue;
            };
            let pinned = aya::maps::MapInfo::from_pin(&path)
                .with_context(|| format!("reading the pinned map {}", path.display()))?;
            if name == maps::EVENTS {
                // Its size is the configuration's, not the object's.
                if pinned.max_entries() != ringbuf_bytes {
                    bail!(
                        "the ring buffer pinned at {} holds {} bytes and [kernel] ringbuf_bytes \
                         is {ringbuf_bytes}: changing its size needs `helo-filter detach` first",
                        path.display(),
                        pinned.max_entries()
                    );
                }
                continue;
            }
            let layout = |k: u32, v: u32, n: u32| format!("key {k} B, value {v} B, {n} entries");
            let want = layout(
                definition.key_size(),
                definition.value_size(),
                definition.max_entries(),
            );
            let got = layout(pinned.key_size(), pinned.value_size(), pinned.max_entries());
            if want != got {
                bail!(
                    "the map pinned at {} was made by another version ({got}; this one needs \
                     {want}): run `helo-filter detach` first",
                    path.display()
                );
            }
        }
        Ok(())
    }

    /// Whether anything is pinned (a program left by an earlier daemon).
    pub fn is_populated(&self) -> bool {
        !self.xdp_links().is_empty() || PERSISTENT_MAPS.iter().any(|name| self.map(name).exists())
    }

    /// Removes every pin: the links go (and the program with them) once no process holds
    /// them, the maps once no program uses them.
    pub fn remove_all(&self) -> anyhow::Result<()> {
        for sub in ["links", "maps"] {
            let dir = self.root.join(sub);
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries {
                let path = entry?.path();
                std::fs::remove_file(&path)
                    .with_context(|| format!("unpinning {}", path.display()))?;
            }
            let _ = std::fs::remove_dir(&dir);
        }
        let _ = std::fs::remove_dir(&self.root);
        Ok(())
    }
}
