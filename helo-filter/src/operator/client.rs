//! The CLI's side of the control socket: one request, one response.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::net::UnixStream,
    path::Path,
    time::Duration,
};

use serde::de::DeserializeOwned;
use serde_json::Value;

use super::{
    api::{Command, ControlError, ErrorKind, Request, Response},
    control::PROTOCOL_VERSION,
};

/// How long the daemon may take to answer (a reload rebuilds the DNS client).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// Sends `command` to the daemon at `socket`; the result as the daemon sent it, or why
/// there is none (the daemon's refusal, or the CLI's own: no daemon, permission denied).
pub fn call(socket: &Path, command: &Command) -> Result<Value, ControlError> {
    let stream = UnixStream::connect(socket).map_err(|e| {
        let path = socket.display();
        match e.kind() {
            std::io::ErrorKind::NotFound => ControlError::new(
                ErrorKind::Unavailable,
                format!(
                    "no control socket at {path}: is the daemon running (helo-filter run), with \
                     this --control-socket?"
                ),
            ),
            std::io::ErrorKind::PermissionDenied => ControlError::new(
                ErrorKind::PermissionDenied,
                format!(
                    "permission denied on {path}: the control socket is root's (run this as root)"
                ),
            ),
            std::io::ErrorKind::ConnectionRefused => ControlError::new(
                ErrorKind::Unavailable,
                format!("nothing listens on {path}: the daemon is not running (a stale socket)"),
            ),
            _ => ControlError::new(
                ErrorKind::Unavailable,
                format!("cannot connect to {path}: {e}"),
            ),
        }
    })?;
    let io = |e: std::io::Error| ControlError::new(ErrorKind::Io, format!("control socket: {e}"));
    stream.set_read_timeout(Some(ANSWER_TIMEOUT)).map_err(io)?;
    let mut line = serde_json::to_string(&Request {
        version: PROTOCOL_VERSION,
        command,
    })
    .map_err(|e| ControlError::new(ErrorKind::BadRequest, e.to_string()))?;
    line.push('\n');
    // A daemon at its connection cap answers `busy` and closes at once, maybe before the
    // request is written: that answer is still read, and told rather than the broken pipe.
    let written = (&stream).write_all(line.as_bytes());
    let mut answer = String::new();
    let read = BufReader::new(&stream).read_line(&mut answer);
    if answer.is_empty() {
        written.map_err(io)?;
        read.map_err(io)?;
        return Err(ControlError::new(
            ErrorKind::BadResponse,
            "the daemon closed the control connection without answering",
        ));
    }
    let response: Response = serde_json::from_str(&answer).map_err(|e| {
        ControlError::new(
            ErrorKind::BadResponse,
            format!("unreadable answer from the daemon: {e}"),
        )
    })?;
    if response.ok {
        return Ok(response.result.unwrap_or(Value::Null));
    }
    Err(ControlError::new(
        response.kind.unwrap_or(ErrorKind::Other),
        response
            .error
            .unwrap_or_else(|| "the daemon refused the request".to_owned()),
    ))
}

/// The result read as `T` (the command's result type in [`super::api`]).
pub fn typed<T: DeserializeOwned>(result: &Value) -> Result<T, ControlError> {
    T::deserialize(result).map_err(|e| {
        ControlError::new(
            ErrorKind::BadResponse,
            format!("unexpected result from the daemon: {e}"),
        )
    })
}
