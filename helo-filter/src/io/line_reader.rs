//! Bounded line reading for the daemon's text protocols (the Postfix policy service, the
//! control socket): a peer cannot make a line grow without limit, and an overlong line is
//! read to its end so that the conversation stays in step.

use tokio::io::{AsyncBufRead, AsyncBufReadExt as _};

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
