//! SMTP command lines as the client wrote them: verb recognition, the HELO/EHLO argument,
//! and escaping for logs (a HELO is attacker-controlled).

use std::fmt::Write as _;

/// The verbs the data path cares about; anything else is `Other`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verb {
    Helo,
    Ehlo,
    /// NOOP and RSET are harmless before HELO and skipped.
    Skippable,
    Other,
}

impl Verb {
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Helo => "HELO",
            Verb::Ehlo => "EHLO",
            Verb::Skippable => "NOOP/RSET",
            Verb::Other => "other",
        }
    }
}

/// One command line without its line terminator, split into verb and argument.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandLine<'a> {
    pub verb: Verb,
    /// Everything after the verb and the whitespace that follows it, with trailing
    /// whitespace removed. Empty when the command has no argument.
    pub argument: &'a [u8],
}

/// Splits a line (CR/LF already removed) into verb and argument. A verb must be
/// followed by whitespace or the end of the line: `HELOX` is not HELO.
pub fn parse_command(line: &[u8]) -> CommandLine<'_> {
    let verb_len = line
        .iter()
        .position(|b| *b == b' ' || *b == b'\t')
        .unwrap_or(line.len());
    let (verb_bytes, rest) = line.split_at(verb_len);
    let verb = match verb_bytes.to_ascii_uppercase().as_slice() {
        b"HELO" => Verb::Helo,
        b"EHLO" => Verb::Ehlo,
        b"NOOP" | b"RSET" => Verb::Skippable,
        _ => Verb::Other,
    };
    CommandLine {
        verb,
        argument: rest.trim_ascii(),
    }
}

/// Removes the line terminator (LF, and the CR before it if any).
pub fn strip_line_end(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Renders bytes safely for a log line: printable ASCII as is, `\` and `"` escaped, the
/// usual control characters as `\r`, `\n`, `\t`, everything else as `\xNN`.
pub fn escape_for_log(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        match b {
            b'\\' => out.push_str("\\\\"),
            b'"' => out.push_str("\\\""),
            b'\r' => out.push_str("\\r"),
            b'\n' => out.push_str("\\n"),
            b'\t' => out.push_str("\\t"),
            0x20..=0x7E => out.push(b as char),
            _ => {
                let _ = write!(out, "\\x{b:02x}");
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verbs_are_recognised_case_insensitively_and_whole() {
        let cases: &[(&[u8], Verb, &[u8])] = &[
            (b"EHLO mail.example.net", Verb::Ehlo, b"mail.example.net"),
            (b"ehlo mail.example.net", Verb::Ehlo, b"mail.example.net"),
            (b"HeLo  x.example  ", Verb::Helo, b"x.example"),
            (b"HELO", Verb::Helo, b""),
            (b"HELO\t[1.2.3.4]", Verb::Helo, b"[1.2.3.4]"),
            (b"HELOX foo", Verb::Other, b"foo"),
            (b"NOOP", Verb::Skippable, b""),
            (b"rset", Verb::Skippable, b""),
            (b"MAIL FROM:<a@b>", Verb::Other, b"FROM:<a@b>"),
            (b"", Verb::Other, b""),
        ];
        for (line, verb, argument) in cases {
            let parsed = parse_command(line);
            assert_eq!(parsed.verb, *verb, "{}", escape_for_log(line));
            assert_eq!(parsed.argument, *argument, "{}", escape_for_log(line));
        }
    }

    #[test]
    fn line_ends_are_stripped() {
        assert_eq!(strip_line_end(b"HELO a\r\n"), b"HELO a");
        assert_eq!(strip_line_end(b"HELO a\n"), b"HELO a");
        assert_eq!(strip_line_end(b"HELO a"), b"HELO a");
    }

    #[test]
    fn control_characters_never_reach_the_log_raw() {
        assert_eq!(
            escape_for_log(b"EHLO a\x1b[31m\"b\\\x00\xff\r\n"),
            "EHLO a\\x1b[31m\\\"b\\\\\\x00\\xff\\r\\n"
        );
    }
}
