//! The control socket: how the operator CLI talks to the running daemon. A Unix socket
//! (mode 0600, root's), one JSON request per line and one JSON response per line:
//!
//! ```text
//! {"version":1,"command":"deny_add","net":"198.51.100.7/32","ttl_secs":3600,"comment":"spam run"}
//! {"version":1,"ok":true,"result":{...}}
//! {"version":1,"ok":false,"error":"...","kind":"..."}
//! ```
//!
//! A malformed, oversized or wrong-version request gets an error response and the
//! connection stays usable. The requests, results and error kinds are typed in
//! [`super::api`]; their JSON is in `docs/operations.md`.
//!
//! At most [`MAX_CONNECTIONS`] connections are served at once; one more is answered `busy`
//! and closed. A request must be whole within [`REQUEST_DEADLINE`] of its first byte, and a
//! connection without one for [`IDLE_TIMEOUT`] is closed: nothing holds a slot for long.

use std::{future::Future, path::Path, sync::Arc, time::Duration};

use log::warn;
use serde_json::Value;
use tokio::{
    io::{AsyncWriteExt as _, BufReader},
    net::{UnixListener, unix::OwnedWriteHalf},
    sync::Semaphore,
};

use crate::{
    io::{
        line_reader::{Line, REQUEST_DEADLINE, input_within, read_line},
        unix_socket::{self, SocketFile},
    },
    operator::api::{Command, ControlError, ErrorKind, Response},
};

/// The protocol version this daemon speaks.
pub const PROTOCOL_VERSION: u32 = 1;
/// The longest request line, in bytes.
pub const MAX_REQUEST: usize = 64 * 1024;
/// Connections served at once (the CLI opens one per command).
pub const MAX_CONNECTIONS: usize = 64;
/// A connection that sends no request for this long is closed (the CLI sends its request at
/// once).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
pub use crate::config::DEFAULT_CONTROL_SOCKET as DEFAULT_SOCKET;

/// Carries out commands (the daemon's operator side).
pub trait Handler: Send + Sync + 'static {
    /// The command's result (one of the [`super::api`] result structs, as JSON), or why it
    /// failed.
    fn handle(&self, command: Command) -> impl Future<Output = Result<Value, ControlError>> + Send;
}

/// Parses one request line: the version first, so that a client of another version gets a
/// plain answer rather than a parse error.
pub fn parse_request(line: &[u8]) -> Result<Command, ControlError> {
    let bad = |message: String| ControlError::new(ErrorKind::BadRequest, message);
    let value: Value = serde_json::from_slice(line)
        .map_err(|e| bad(format!("malformed request (not JSON): {e}")))?;
    let Value::Object(mut fields) = value else {
        return Err(bad("malformed request: not a JSON object".to_owned()));
    };
    match fields.remove("version").and_then(|v| v.as_u64()) {
        Some(v) if v == u64::from(PROTOCOL_VERSION) => {}
        Some(v) => {
            return Err(ControlError::new(
                ErrorKind::UnsupportedVersion,
                format!("unsupported protocol version {v} (this daemon speaks {PROTOCOL_VERSION})"),
            ));
        }
        None => return Err(bad("malformed request: no version".to_owned())),
    }
    serde_json::from_value(Value::Object(fields))
        .map_err(|e| bad(format!("malformed request: {e}")))
}

/// The bound control socket; its file is removed when it is dropped.
pub struct ControlSocket {
    listener: UnixListener,
    /// Removed with the socket.
    _file: SocketFile,
}

/// Fails if a daemon already answers on `path`: two daemons would fight over the pinned
/// program and maps.
pub fn ensure_no_daemon(path: &Path) -> anyhow::Result<()> {
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        anyhow::bail!(
            "another helo-filter daemon is running (its control socket {} answers)",
            path.display()
        );
    }
    Ok(())
}

impl ControlSocket {
    /// Binds `path` (mode 0600; its directory is created with mode 0700), replacing a stale
    /// socket left by a crash.
    pub fn bind(path: &Path) -> anyhow::Result<ControlSocket> {
        let (listener, file) = unix_socket::bind(path, 0o600, Some(0o700), "control socket")?;
        Ok(ControlSocket {
            listener,
            _file: file,
        })
    }

    /// Serves connections until the task is dropped.
    pub async fn serve<H: Handler>(self, handler: Arc<H>) {
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        loop {
            let stream = match self.listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    warn!("control socket: accept: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let handler = Arc::clone(&handler);
            let slot = Arc::clone(&slots).try_acquire_owned();
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let Ok(_slot) = slot else {
                    // Told rather than left waiting: the operator sees why at once.
                    let _ = answer(
                        &mut write,
                        Response::error(ControlError::new(
                            ErrorKind::Busy,
                            format!(
                                "the daemon already serves {MAX_CONNECTIONS} control \
                                 connections; try again"
                            ),
                        )),
                    )
                    .await;
                    return;
                };
                let mut reader = BufReader::new(read);
                let mut line = Vec::new();
                loop {
                    let read = match input_within(&mut reader, IDLE_TIMEOUT).await {
                        Ok(true) => {
                            tokio::time::timeout(
                                REQUEST_DEADLINE,
                                read_line(&mut reader, &mut line, MAX_REQUEST),
                            )
                            .await
                        }
                        Ok(false) => return,
                        Err(e) => Ok(Err(e)),
                    };
                    let response = match read {
                        Ok(Ok(Line::Eof) | Err(_)) | Err(_) => return,
                        Ok(Ok(Line::Oversized)) => Response::error(ControlError::new(
                            ErrorKind::BadRequest,
                            format!("request longer than {MAX_REQUEST} bytes"),
                        )),
                        Ok(Ok(Line::Complete)) => match parse_request(&line) {
                            Ok(command) => match handler.handle(command).await {
                                Ok(result) => Response::ok(result),
                                Err(e) => Response::error(e),
                            },
                            Err(e) => Response::error(e),
                        },
                    };
                    if answer(&mut write, response).await.is_err() {
                        return;
                    }
                }
            });
        }
    }
}

/// Writes `response` as one JSON line.
async fn answer(write: &mut OwnedWriteHalf, response: Response) -> std::io::Result<()> {
    let mut text = serde_json::to_string(&response).unwrap_or_default();
    text.push('\n');
    write.write_all(text.as_bytes()).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::api::Request;

    #[test]
    fn requests_are_versioned_json_objects() {
        assert_eq!(
            parse_request(
                br#"{"version":1,"command":"deny_add","net":"198.51.100.0/24","ttl_secs":60}"#
            ),
            Ok(Command::DenyAdd {
                net: "198.51.100.0/24".parse().expect("net"),
                ttl_secs: Some(60),
                comment: None,
                fleet: false,
            })
        );
        assert_eq!(
            parse_request(br#"{"version":1,"command":"status"}"#),
            Ok(Command::Status)
        );
        let bad = ErrorKind::BadRequest;
        for (line, needle, kind) in [
            (&b"garbage"[..], "not JSON", bad),
            (b"[1]", "not a JSON object", bad),
            (br#"{"command":"status"}"#, "no version", bad),
            (
                br#"{"version":2,"command":"status"}"#,
                "unsupported protocol version 2",
                ErrorKind::UnsupportedVersion,
            ),
            (
                br#"{"version":1,"command":"explode"}"#,
                "unknown variant",
                bad,
            ),
            (
                br#"{"version":1,"command":"allow_add","net":"300.1.1.1/8"}"#,
                "malformed",
                bad,
            ),
        ] {
            let e = parse_request(line).expect_err(needle);
            assert!(e.message.contains(needle), "{e}");
            assert_eq!(e.kind, kind, "{e}");
        }
    }

    #[test]
    fn a_request_serialises_flat() {
        let command = Command::ReputationShow {
            ip: "203.0.113.9".parse().expect("ip"),
        };
        let text = serde_json::to_string(&Request {
            version: PROTOCOL_VERSION,
            command: &command,
        })
        .expect("json");
        assert_eq!(
            text,
            r#"{"version":1,"command":"reputation_show","ip":"203.0.113.9"}"#
        );
        assert_eq!(parse_request(text.as_bytes()), Ok(command));
    }
}
