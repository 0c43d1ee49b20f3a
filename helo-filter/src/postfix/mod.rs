//! The Postfix policy-delegation service: Postfix's smtpd asks (`check_policy_service`) and
//! the same policy engine answers, so Postfix itself refuses bogus HELOs at RCPT time.
//! Served by `helo-filter policy` alone, or inside `helo-filter run --policy-listen`.

pub mod protocol;
pub mod service;

use std::{path::Path, sync::Arc, time::Duration};

use anyhow::Context as _;
use log::{info, warn};
pub use service::{PolicyService, RejectHook};
use tokio::{
    io::{AsyncRead, AsyncWrite, AsyncWriteExt as _, BufReader},
    net::{TcpListener, UnixListener},
    sync::Semaphore,
};

use crate::{
    config::ListenAddr,
    io::{
        line_reader::{REQUEST_DEADLINE, input_within},
        unix_socket::{self, SocketFile},
    },
};

/// Connections served at once; more wait in the listen backlog.
const MAX_CONNECTIONS: usize = 1024;
/// A connection idle this long between requests is closed (a little over Postfix's own
/// 300 s `smtpd_policy_service_max_idle`, so that Postfix normally closes first). Within a
/// request, [`REQUEST_DEADLINE`] holds.
const IDLE_TIMEOUT: Duration = Duration::from_secs(330);

/// A bound listener (binding first lets a daemon fail at start, not later).
pub enum Listener {
    Inet(TcpListener),
    /// The socket file is removed when the listener is dropped.
    Unix(UnixListener, SocketFile),
}

impl Listener {
    /// Binds `addr`; a stale Unix socket file is replaced, and the new one is given mode 0660
    /// and the group `socket_group`.
    pub async fn bind(addr: &ListenAddr, socket_group: &str) -> anyhow::Result<Listener> {
        let listener = match addr {
            ListenAddr::Inet(socket) => Listener::Inet(
                TcpListener::bind(socket)
                    .await
                    .with_context(|| format!("policy service: cannot listen on {addr}"))?,
            ),
            ListenAddr::Unix(path) => {
                let (listener, file) = bind_unix(path, socket_group)?;
                Listener::Unix(listener, file)
            }
        };
        info!("policy service listening on {addr}");
        Ok(listener)
    }

    /// Serves requests until the task is dropped.
    pub async fn serve(self, service: Arc<PolicyService>) -> anyhow::Result<()> {
        match &self {
            Listener::Inet(listener) => {
                accept_forever(
                    move || async move { listener.accept().await.map(|(s, _)| s) },
                    service,
                )
                .await
            }
            Listener::Unix(listener, _) => {
                accept_forever(
                    move || async move { listener.accept().await.map(|(s, _)| s) },
                    service,
                )
                .await
            }
        }
    }
}

/// Accepts connections, each served by a task of its own, at most [`MAX_CONNECTIONS`] at once.
async fn accept_forever<S, A>(
    mut accept: impl FnMut() -> A,
    service: Arc<PolicyService>,
) -> anyhow::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    A: Future<Output = std::io::Result<S>>,
{
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = Arc::clone(&slots).acquire_owned().await?;
        let stream = match accept().await {
            Ok(stream) => stream,
            Err(e) => {
                // Out of descriptors, a connection reset before it was accepted: go on.
                warn!("policy service: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let service = Arc::clone(&service);
        tokio::spawn(async move {
            converse(stream, &service).await;
            drop(permit);
        });
    }
}

/// The policy socket: mode 0660, given to `group` (Postfix's smtpd connects as its group).
fn bind_unix(path: &Path, group: &str) -> anyhow::Result<(UnixListener, SocketFile)> {
    let bound = unix_socket::bind(path, 0o660, None, "policy service")?;
    match group_id(group) {
        Some(gid) => std::os::unix::fs::chown(path, None, Some(gid)).with_context(|| {
            format!("policy service: giving {} to group {group}", path.display())
        })?,
        None => warn!(
            "policy service: no group {group:?}; {} is left to its owner only",
            path.display()
        ),
    }
    Ok(bound)
}

fn group_id(name: &str) -> Option<u32> {
    let name = std::ffi::CString::new(name).ok()?;
    // SAFETY: getgrnam reads the group database and returns a pointer into static storage
    // (or null); the gid is copied out at once and nothing else here calls it concurrently.
    let group = unsafe { libc::getgrnam(name.as_ptr()) };
    // SAFETY: checked for null just before the read.
    (!group.is_null()).then(|| unsafe { (*group).gr_gid })
}

/// Serves one persistent connection: request after request until the peer closes, an I/O
/// error, the idle timeout, or a request not whole within [`REQUEST_DEADLINE`] (dropped
/// silently: a log line per slow client would let abuse fill the log).
async fn converse<S: AsyncRead + AsyncWrite + Unpin>(stream: S, service: &PolicyService) {
    let (read, mut write) = tokio::io::split(stream);
    let mut reader = BufReader::new(read);
    loop {
        let read = match input_within(&mut reader, IDLE_TIMEOUT).await {
            Ok(true) => {
                tokio::time::timeout(REQUEST_DEADLINE, protocol::read_request(&mut reader)).await
            }
            Ok(false) => return,
            Err(e) => Ok(Err(e)),
        };
        let received = match read {
            Ok(Ok(protocol::Received::Closed)) | Err(_) => return,
            Ok(Ok(received)) => received,
            Ok(Err(e)) => {
                warn!("policy connection: {e}");
                return;
            }
        };
        let action = service.answer(received).await;
        if let Err(e) = write.write_all(protocol::reply(&action).as_bytes()).await {
            warn!("policy connection: cannot reply: {e}");
            return;
        }
    }
}
