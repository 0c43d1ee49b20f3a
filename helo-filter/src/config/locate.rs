//! Where in a configuration file a key or an error is: line, column and dotted key.

use toml::de::{DeTable, DeValue};

use super::ConfigError;

/// The 1-based line and column where a dotted key (`enforce.gate_deadline_ms`) is set in
/// `text`, if it is (the validation's errors point there).
pub(super) fn key_position(text: &str, dotted: &str) -> Option<(usize, usize)> {
    let document = DeTable::parse(text).ok()?;
    let mut table = document.get_ref();
    let mut parts = dotted.split('.').peekable();
    while let Some(part) = parts.next() {
        let (key, value) = table.iter().find(|(k, _)| k.get_ref() == part)?;
        if parts.peek().is_none() {
            return Some(line_and_column(text, key.span().start));
        }
        let DeValue::Table(inner) = value.get_ref() else {
            return None;
        };
        table = inner;
    }
    None
}

/// The 1-based line and column of a byte offset.
fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

/// Turns a toml error into a located one: line and column from the span, the dotted key from the
/// nearest table header and the `key =` at or above the error.
pub(super) fn locate(text: &str, file: &str, e: &toml::de::Error) -> ConfigError {
    let message = e.message().trim().to_string();
    let Some(span) = e.span() else {
        return ConfigError::Invalid {
            file: file.to_string(),
            line: 0,
            column: 0,
            key: String::new(),
            message,
        };
    };
    let start = span.start.min(text.len());
    let (line, column) = line_and_column(text, start);
    let lines: Vec<&str> = text.lines().collect();
    let mut key = String::new();
    let mut table = String::new();
    for idx in (0..line.min(lines.len())).rev() {
        let l = strip_comment(lines[idx]).trim();
        if l.starts_with('[') {
            table = l.trim_matches(|c| c == '[' || c == ']').trim().to_string();
            break;
        }
        if key.is_empty() {
            if idx + 1 == line && !l.contains('=') {
                // The span is a key itself (an unknown field).
                let snippet = &text[start..span.end.min(text.len())];
                key = snippet.trim().trim_matches('"').to_string();
            } else if let Some((k, _)) = l.split_once('=') {
                key = k.trim().trim_matches('"').to_string();
            }
        }
    }
    let dotted = match (table.is_empty(), key.is_empty()) {
        (true, _) => key,
        (false, true) => table,
        (false, false) => format!("{table}.{key}"),
    };
    ConfigError::Invalid {
        file: file.to_string(),
        line,
        column,
        key: dotted,
        message,
    }
}

fn strip_comment(line: &str) -> &str {
    // Good enough for locating keys: a '#' outside quotes starts a comment.
    let mut in_str = false;
    for (i, c) in line.char_indices() {
        match c {
            '"' | '\'' => in_str = !in_str,
            '#' if !in_str => return &line[..i],
            _ => {}
        }
    }
    line
}
