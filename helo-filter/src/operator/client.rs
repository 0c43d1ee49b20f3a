//! The CLI's side of the control socket: one request, one response.

use std::{
    io::{BufRead as _, BufReader, ErrorKind, Write as _},
    os::unix::net::UnixStream,
    path::Path,
    time::Duration,
};

use serde_json::Value;

use super::control::{Command, PROTOCOL_VERSION, Request, Response};

/// How long the daemon may take to answer (a reload rebuilds the DNS client).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a request got no result: a one-line message for the operator.
#[derive(Debug)]
pub struct ClientError(pub String);

/// Sends `command` to the daemon at `socket`; the result, or the daemon's error.
pub fn call(socket: &Path, command: &Command) -> Result<Value, ClientError> {
    let stream = UnixStream::connect(socket).map_err(|e| {
        let path = socket.display();
        ClientError(match e.kind() {
            ErrorKind::NotFound => format!(
                "no control socket at {path}: is the daemon running (helo-filter run), with this \
                 --control-socket?"
            ),
            ErrorKind::PermissionDenied => format!(
                "permission denied on {path}: the control socket is root's (run this as root)"
            ),
            ErrorKind::ConnectionRefused => {
                format!("nothing listens on {path}: the daemon is not running (a stale socket)")
            }
            _ => format!("cannot connect to {path}: {e}"),
        })
    })?;
    let io = |e: std::io::Error| ClientError(format!("control socket: {e}"));
    stream.set_read_timeout(Some(ANSWER_TIMEOUT)).map_err(io)?;
    let mut line = serde_json::to_string(&Request {
        version: PROTOCOL_VERSION,
        command,
    })
    .map_err(|e| ClientError(e.to_string()))?;
    line.push('\n');
    (&stream).write_all(line.as_bytes()).map_err(io)?;
    let mut answer = String::new();
    BufReader::new(&stream).read_line(&mut answer).map_err(io)?;
    if answer.is_empty() {
        return Err(ClientError(
            "the daemon closed the control connection without answering".to_owned(),
        ));
    }
    let response: Response = serde_json::from_str(&answer)
        .map_err(|e| ClientError(format!("unreadable answer from the daemon: {e}")))?;
    match (response.ok, response.result, response.error) {
        (true, Some(result), _) => Ok(result),
        (true, None, _) => Ok(Value::Null),
        (false, _, error) => {
            Err(ClientError(error.unwrap_or_else(|| {
                "the daemon refused the request".to_owned()
            })))
        }
    }
}
