//! Binding the daemon's Unix sockets (the control socket, the Postfix policy socket): a
//! stale socket left by a crash is replaced while anything else at the path is refused, the
//! socket is created with its final mode (no moment in which others could connect), and its
//! file is removed when the listener's owner is dropped.

use std::{
    os::unix::fs::{DirBuilderExt as _, FileTypeExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};
use tokio::net::UnixListener;

/// A Unix socket's file, removed on drop.
pub struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Binds `path` with permissions `mode`, creating its directory with `dir_mode` if it is
/// missing; `what` names the socket in errors.
pub fn bind(
    path: &Path,
    mode: u32,
    dir_mode: u32,
    what: &str,
) -> anyhow::Result<(UnixListener, SocketFile)> {
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(dir_mode)
            .create(dir)
            .with_context(|| format!("{what}: creating {}", dir.display()))?;
    }
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            bail!("{what}: {} exists and is not a socket", path.display());
        }
        std::fs::remove_file(path)
            .with_context(|| format!("{what}: removing the stale {}", path.display()))?;
    }
    // SAFETY: umask has no preconditions; the old mask is restored at once.
    let old = unsafe { libc::umask(!mode & 0o777) };
    let bound = UnixListener::bind(path);
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    let listener = bound.with_context(|| format!("{what}: cannot listen on {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok((listener, SocketFile(path.to_path_buf())))
}
