//! `no_helo` and `pipelining`: findings of the data path, carried into the verdict.

use super::Subject;

/// Fails when the session had no HELO/EHLO (or another command came first).
pub fn no_helo(s: &Subject<'_>) -> Option<String> {
    (s.no_helo || s.parsed.is_none())
        .then(|| "the client sent no HELO/EHLO before its other commands".to_string())
}

/// Fails when the client pipelined commands behind its HELO/EHLO.
pub fn pipelining(s: &Subject<'_>) -> Option<String> {
    s.pipelined.then(|| {
        "the client sent more commands with its HELO/EHLO before the server replied".to_string()
    })
}
