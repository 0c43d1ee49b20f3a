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

/// Binds `path` with permissions `mode`; `what` names the socket in errors. A missing
/// directory is created with mode `create_dir` when given (the daemon's own runtime
/// directory); without it a missing directory is an error, since it is most likely a typo
/// that would leave the socket's clients (Postfix) talking to nothing.
pub fn bind(
    path: &Path,
    mode: u32,
    create_dir: Option<u32>,
    what: &str,
) -> anyhow::Result<(UnixListener, SocketFile)> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        match create_dir {
            Some(dir_mode) => std::fs::DirBuilder::new()
                .recursive(true)
                .mode(dir_mode)
                .create(dir)
                .with_context(|| format!("{what}: creating {}", dir.display()))?,
            None if !dir.is_dir() => bail!(
                "{what}: the directory {} does not exist (create it, or fix the path)",
                dir.display()
            ),
            None => {}
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_missing_directory_is_an_error_unless_it_is_ours_to_create() {
        let base = std::env::temp_dir().join(format!("hf-socket-test-{}", std::process::id()));
        let missing = base.join("missing").join("policy.sock");
        let error = bind(&missing, 0o660, None, "policy service")
            .err()
            .expect("a missing directory is refused")
            .to_string();
        assert!(
            error.contains("does not exist") && error.contains("missing"),
            "{error}"
        );
        assert!(!base.exists(), "the directory was created anyway");

        let ours = base.join("run").join("control.sock");
        let (_listener, _file) =
            bind(&ours, 0o600, Some(0o700), "control socket").expect("created and bound");
        assert!(ours.exists());
        std::fs::remove_dir_all(&base).expect("cleaning up");
    }
}
