//! Bounded line reading for the daemon's text protocols (the Postfix policy service, the
//! control socket): a peer cannot make a line grow without limit, and an overlong line is
//! read to its end so that the conversation stays in step. A peer cannot hold a connection
//! with a request left half-sent either: [`input_within`] waits for a request's first byte,
//! and the caller gives the rest [`REQUEST_DEADLINE`].

use std::time::Duration;

use tokio::io::{AsyncBufRead, AsyncBufReadExt as _};

/// How long a request may take from its first byte to its end: a peer that stops in the
/// middle of one, or sends it a byte a second, is dropped. Postfix and the CLI send a
/// request in one write.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(10);

/// Waits at most `idle` for the peer's next byte, or its close (which the read that follows
/// reports): false if nothing came.
pub async fn input_within<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    idle: Duration,
) -> std::io::Result<bool> {
    match tokio::time::timeout(idle, reader.fill_buf()).await {
        Ok(filled) => filled.map(|_| true),
        Err(_) => Ok(false),
    }
}

/// What one read produced.
pub enum Line {
    /// `line` holds it.
    Complete,
    /// Longer than the limit: consumed and dropped.
    Oversized,
    /// The peer closed the connection (a partial last line is dropped).
    Eof,
}

/// Reads one line into `line` (without its LF, nor a CR before it), at most `max` bytes.
pub async fn read_line<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    line: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<Line> {
    line.clear();
    let mut oversized = false;
    loop {
        let buffer = reader.fill_buf().await?;
        if buffer.is_empty() {
            return Ok(Line::Eof);
        }
        let (chunk, used, ended) = match buffer.iter().position(|&b| b == b'\n') {
            Some(i) => (&buffer[..i], i + 1, true),
            None => (buffer, buffer.len(), false),
        };
        if !oversized && line.len() + chunk.len() <= max + 1 {
            // One byte of slack for the CR before the LF.
            line.extend_from_slice(chunk);
        } else {
            oversized = true;
        }
        reader.consume(used);
        if ended {
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            if oversized || line.len() > max {
                return Ok(Line::Oversized);
            }
            return Ok(Line::Complete);
        }
    }
}
