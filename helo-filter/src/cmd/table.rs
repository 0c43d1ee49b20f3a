//! Output for people: aligned columns under a header, and times as "in 23h" or "3m ago"
//! (the exact Unix times stay in `--json`).

use std::fmt::Write as _;

/// Columns aligned under a header, two spaces apart; the last column is not padded.
pub struct Table {
    /// The header first, if there is one.
    rows: Vec<Vec<String>>,
    titled: bool,
}

impl Table {
    pub fn new(header: &[&str]) -> Table {
        Table {
            rows: vec![header.iter().map(|h| (*h).to_owned()).collect()],
            titled: true,
        }
    }

    /// Name/value lines with no header (`status`'s facts).
    pub fn untitled() -> Table {
        Table {
            rows: Vec::new(),
            titled: false,
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The table as text; a titled table with no rows says `(none)` under its header.
    pub fn render(&self) -> String {
        let columns = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..columns)
            .map(|c| {
                self.rows
                    .iter()
                    .filter_map(|r| r.get(c))
                    .map(|cell| cell.chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        for row in &self.rows {
            let mut line = String::new();
            for (c, cell) in row.iter().enumerate() {
                if c + 1 == row.len() {
                    line.push_str(cell);
                } else {
                    let _ = write!(line, "{cell:<width$}  ", width = widths[c]);
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        if self.titled && self.rows.len() == 1 {
            out.push_str("(none)\n");
        }
        out
    }

    pub fn print(&self) {
        print!("{}", self.render());
    }
}

/// A span of seconds in its largest unit, rounded to the nearest: `45s`, `3m`, `23h`, `6d`
/// (a day less one second is `1d`, not `23h`).
pub fn span(secs: u64) -> String {
    if secs < 60 {
        return format!("{secs}s");
    }
    let minutes = (secs + 30) / 60;
    if minutes < 60 {
        return format!("{minutes}m");
    }
    let hours = (secs + 1_800) / 3_600;
    if hours < 24 {
        return format!("{hours}h");
    }
    format!("{}d", (secs + 43_200) / 86_400)
}

/// When a Unix time was, from `now`: `3m ago`.
pub fn ago(at: u64, now: u64) -> String {
    format!("{} ago", span(now.saturating_sub(at)))
}

/// When something ends: `in 23h`, or `never`.
pub fn expiry(in_secs: Option<u64>) -> String {
    in_secs.map_or_else(|| "never".to_owned(), |secs| format!("in {}", span(secs)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_under_the_header() {
        let mut table = Table::new(&["NET", "SOURCE", "COMMENT"]);
        table.row(vec!["198.51.100.0/24".into(), "config".into(), "-".into()]);
        table.row(vec![
            "2001:db8::/32".into(),
            "operator".into(),
            "a bot".into(),
        ]);
        assert_eq!(
            table.render(),
            "NET              SOURCE    COMMENT\n\
             198.51.100.0/24  config    -\n\
             2001:db8::/32    operator  a bot\n"
        );
        assert_eq!(Table::new(&["NET"]).render(), "NET\n(none)\n");
        let mut facts = Table::untitled();
        facts.row(vec!["mode".into(), "enforcing".into()]);
        facts.row(vec!["deployment".into(), "mx".into()]);
        assert_eq!(facts.render(), "mode        enforcing\ndeployment  mx\n");
    }

    #[test]
    fn times_in_their_largest_unit() {
        assert_eq!(span(45), "45s");
        assert_eq!(span(180), "3m");
        assert_eq!(span(82_800), "23h");
        assert_eq!(span(6 * 86_400 + 5), "6d");
        assert_eq!(ago(1_000, 1_180), "3m ago");
        assert_eq!(ago(2_000, 1_000), "0s ago");
        assert_eq!(span(3_599), "1h");
        assert_eq!(span(86_399), "1d");
        assert_eq!(expiry(Some(82_800)), "in 23h");
        assert_eq!(expiry(Some(86_399)), "in 1d");
        assert_eq!(expiry(None), "never");
    }
}
