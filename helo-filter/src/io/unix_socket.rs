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

    /// A directory of its own for one test, removed at the end.
    fn test_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("hf-socket-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a test directory");
        dir
    }

    /// Regression test for 5f9528f: a stale socket (a crashed daemon's) is replaced and
    /// serves; the file is removed when its owner is dropped.
    #[tokio::test]
    async fn a_stale_socket_is_replaced_and_the_file_removed_on_drop() {
        let dir = test_dir("stale");
        let path = dir.join("control.sock");
        drop(std::os::unix::net::UnixListener::bind(&path).expect("a stale socket"));
        assert!(path.exists(), "std leaves the socket file behind");
        assert!(
            std::os::unix::net::UnixStream::connect(&path).is_err(),
            "nobody listens on a stale socket"
        );

        let (listener, file) = bind(&path, 0o600, None, "control socket").expect("replaced");
        let client = tokio::net::UnixStream::connect(&path);
        let (accepted, connected) = tokio::join!(listener.accept(), client);
        accepted.expect("the new listener accepts");
        connected.expect("a client connects");

        drop(file);
        assert!(!path.exists(), "the socket file outlived its owner");
        drop(listener);
        std::fs::remove_dir_all(&dir).expect("cleaning up");
    }

    /// Regression test for 5f9528f: anything at the path that is not a socket is refused and
    /// left as it was.
    #[tokio::test]
    async fn a_file_that_is_not_a_socket_is_refused_and_kept() {
        let dir = test_dir("not-socket");
        let path = dir.join("policy.sock");
        std::fs::write(&path, "precious").expect("a regular file");
        let error = bind(&path, 0o660, None, "policy service")
            .err()
            .expect("a regular file is refused")
            .to_string();
        assert!(error.contains("is not a socket"), "{error}");
        assert_eq!(std::fs::read_to_string(&path).expect("kept"), "precious");
        std::fs::remove_dir_all(&dir).expect("cleaning up");
    }

    /// Regression test for 5f9528f: the socket is created with its final mode, never
    /// chmod-ed after the bind. A watcher thread stats the path as fast as it can while the
    /// socket is bound and dropped again and again; any mode other than the final one it
    /// sees is a moment in which others could have connected. It looks at least 200 times. (The mode a bind gives without
    /// the umask, under the usual 022, is 0755: wider than both modes.)
    #[tokio::test]
    async fn the_socket_never_has_another_mode_than_its_final_one() {
        use std::sync::{
            Arc,
            atomic::{AtomicBool, AtomicU64, Ordering},
        };
        for mode in [0o600, 0o660] {
            let dir = test_dir(&format!("mode-{mode:o}"));
            let path = dir.join("s.sock");
            let stop = Arc::new(AtomicBool::new(false));
            let looks = Arc::new(AtomicU64::new(0));
            let watcher = {
                let (path, stop, looks) = (path.clone(), stop.clone(), looks.clone());
                std::thread::spawn(move || {
                    let mut seen = std::collections::BTreeSet::new();
                    while !stop.load(Ordering::Relaxed) {
                        if let Ok(meta) = std::fs::symlink_metadata(&path) {
                            seen.insert(meta.permissions().mode() & 0o777);
                            looks.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    seen
                })
            };
            // At least 200 binds, and on until the watcher has looked 200 times (it may
            // start late on a loaded machine); 20 s at most.
            let started = std::time::Instant::now();
            let mut binds = 0u32;
            while binds < 200 || looks.load(Ordering::Relaxed) < 200 {
                assert!(
                    started.elapsed() < std::time::Duration::from_secs(20),
                    "the watcher looked {} times in {binds} binds",
                    looks.load(Ordering::Relaxed)
                );
                let (listener, file) = bind(&path, mode, None, "test socket").expect("bound");
                assert_eq!(
                    std::fs::symlink_metadata(&path)
                        .expect("bound")
                        .permissions()
                        .mode()
                        & 0o777,
                    mode
                );
                drop((listener, file));
                binds += 1;
            }
            stop.store(true, Ordering::Relaxed);
            let seen = watcher.join().expect("the watcher");
            let looks = looks.load(Ordering::Relaxed);
            assert_eq!(
                seen,
                [mode].into(),
                "modes seen over {looks} looks in {binds} binds (want only {mode:o})"
            );
            std::fs::remove_dir_all(&dir).expect("cleaning up");
        }
    }
}
