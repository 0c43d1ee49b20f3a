//! `check --replay FILE`: what the policy would have done to last week's traffic, before
//! it is enabled. Reads (client address, HELO) pairs — Postfix maillog lines carrying
//! `helo=<…>` (its NOQUEUE reject and warn lines, or those of a `WARN` restriction that logs
//! every HELO: docs/operations.md), or `ADDRESS<TAB>HELO` lines — judges them all (many at
//! once: DNS answers are awaited together) and prints each verdict, then the totals per
//! reason. Lines that carry no pair are counted as skipped, not judged.
//!
//! Exit status: 0 replayed (whatever the verdicts), 2 the file or the configuration could not
//! be read.

use std::{collections::BTreeMap, io::Write as _, net::IpAddr, path::Path, sync::Arc};

use tokio::{sync::Semaphore, task::JoinSet};

use super::{
    check::{CheckArgs, EXIT_USAGE, build_engine, json_line},
    table::Table,
};
use crate::{
    pipeline::smtp::escape_for_log,
    policy::{HeloInput, PolicyEngine, Verdict},
};

/// Pairs judged at once (each may wait on DNS).
const IN_FLIGHT: usize = 64;

/// One (client address, HELO) pair read from a line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pair {
    pub client: IpAddr,
    pub helo: String,
}

/// The pair a line carries, if any: a maillog line's `helo=<…>` and the client's
/// `name[address]` after " from ", or a TSV line's two columns.
pub fn pair(line: &str) -> Option<Pair> {
    match line.rfind("helo=<") {
        Some(start) => maillog_pair(line, start),
        None => tsv_pair(line),
    }
}

fn maillog_pair(line: &str, helo_start: usize) -> Option<Pair> {
    let rest = &line[helo_start + "helo=<".len()..];
    // Postfix ends the line with `helo=<NAME>`: the NAME is up to the last `>`.
    let helo = &rest[..rest.rfind('>')?];
    let after_from = &line[line.find(" from ")? + " from ".len()..];
    let open = after_from.find('[')?;
    let close = after_from[open..].find(']')? + open;
    let address = &after_from[open + 1..close];
    let client = address
        .strip_prefix("IPv6:")
        .unwrap_or(address)
        .parse()
        .ok()?;
    Some(Pair {
        client,
        helo: helo.to_owned(),
    })
}

fn tsv_pair(line: &str) -> Option<Pair> {
    let (address, helo) = line.split_once('\t')?;
    Some(Pair {
        client: address.trim().parse().ok()?,
        helo: helo.trim_end_matches(['\r', '\n']).to_owned(),
    })
}

/// What the replay found: verdicts by primary reason.
#[derive(Debug, Default, serde::Serialize)]
struct Totals {
    judged: usize,
    accepted: usize,
    rejected: usize,
    skipped: usize,
    /// Rejects by their primary reason.
    reasons: BTreeMap<&'static str, usize>,
}

impl Totals {
    fn count(&mut self, verdict: &Verdict) {
        self.judged += 1;
        match verdict.primary() {
            Some(reason) => {
                self.rejected += 1;
                *self.reasons.entry(reason.as_str()).or_default() += 1;
            }
            None => self.accepted += 1,
        }
    }

    fn print_human(&self) {
        println!();
        println!(
            "{} judged: {} accepted, {} rejected ({} lines skipped: no address and HELO)",
            self.judged, self.accepted, self.rejected, self.skipped
        );
        if self.reasons.is_empty() {
            return;
        }
        let mut by_count: Vec<_> = self.reasons.iter().collect();
        by_count.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        let mut table = Table::new(&["REASON", "REJECTED"]);
        for (reason, count) in by_count {
            table.row(vec![(*reason).to_owned(), count.to_string()]);
        }
        table.print();
    }
}

/// Replays `file` through the policy of `args` (its configuration and flags).
pub async fn run(args: &CheckArgs, file: &Path) -> i32 {
    let text = match std::fs::read(file) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) => {
            eprintln!("helo-filter check: {}: {e}", file.display());
            return EXIT_USAGE;
        }
    };
    let engine = match build_engine(args) {
        Ok(engine) => engine,
        Err(e) => {
            eprintln!("helo-filter check: {e}");
            return EXIT_USAGE;
        }
    };
    let mut totals = Totals::default();
    let pairs: Vec<Pair> = text
        .lines()
        .filter_map(|line| {
            let found = pair(line);
            totals.skipped += usize::from(found.is_none());
            found
        })
        .collect();
    let verdicts = judge_all(&engine, &pairs).await;
    let mut table = Table::new(&["VERDICT", "CLIENT", "HELO", "REASON"]);
    let mut out = std::io::stdout().lock();
    for (pair, verdict) in pairs.iter().zip(&verdicts) {
        totals.count(verdict);
        if args.json {
            if writeln!(out, "{}", json_line(&pair.helo, pair.client, verdict)).is_err() {
                return EXIT_USAGE;
            }
        } else {
            table.row(vec![
                verdict.decision.as_str().to_owned(),
                pair.client.to_string(),
                escape_for_log(pair.helo.as_bytes()),
                verdict.primary_label().to_owned(),
            ]);
        }
    }
    drop(out);
    if args.json {
        println!(
            "{}",
            serde_json::json!({ "totals": serde_json::to_value(&totals).unwrap_or_default() })
        );
    } else {
        table.print();
        totals.print_human();
    }
    0
}

/// Every pair's verdict, in the pairs' order, at most [`IN_FLIGHT`] judged at once.
async fn judge_all(engine: &PolicyEngine, pairs: &[Pair]) -> Vec<Verdict> {
    let permits = Arc::new(Semaphore::new(IN_FLIGHT));
    let mut judging = JoinSet::new();
    for (index, pair) in pairs.iter().enumerate() {
        let engine = engine.clone();
        let input = HeloInput::new(pair.helo.as_bytes(), pair.client);
        let permits = Arc::clone(&permits);
        judging.spawn(async move {
            let _permit = permits.acquire_owned().await;
            (index, engine.evaluate(&input).await)
        });
    }
    let mut verdicts: Vec<Option<Verdict>> = vec![None; pairs.len()];
    while let Some(joined) = judging.join_next().await {
        if let Ok((index, verdict)) = joined {
            verdicts[index] = Some(verdict);
        }
    }
    verdicts.into_iter().flatten().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_from_maillog_and_tsv_lines() {
        let reject = "Dec  1 10:00:01 mx postfix/smtpd[4242]: NOQUEUE: reject: RCPT from \
                      unknown[203.0.113.9]: 504 5.5.2 <localhost>: Helo command rejected: need \
                      fully-qualified hostname; from=<bot@example.net> to=<user@example.org> \
                      proto=ESMTP helo=<localhost>";
        assert_eq!(
            pair(reject),
            Some(Pair {
                client: "203.0.113.9".parse().unwrap(),
                helo: "localhost".into()
            })
        );
        let warn = "2026-12-01T10:00:02.123456+00:00 mx postfix/smtpd[4243]: NOQUEUE: warn: \
                    RCPT from mail.example.com[2001:db8::25]: helo logged; from=<a@example.com> \
                    to=<b@example.org> proto=ESMTP helo=<[2001:db8::25]>";
        assert_eq!(
            pair(warn),
            Some(Pair {
                client: "2001:db8::25".parse().unwrap(),
                helo: "[2001:db8::25]".into()
            })
        );
        assert_eq!(
            pair("198.51.100.7\tmail.example.com"),
            Some(Pair {
                client: "198.51.100.7".parse().unwrap(),
                helo: "mail.example.com".into()
            })
        );
        assert_eq!(
            pair("198.51.100.7\t").map(|p| p.helo),
            Some(String::new()),
            "an empty HELO is a pair (and a syntax reject)"
        );
        for no_pair in [
            "Dec  1 10:00:00 mx postfix/smtpd[4242]: connect from unknown[203.0.113.9]",
            "Dec  1 10:00:00 mx postfix/smtpd[1]: NOQUEUE: reject: helo=<x>",
            "not-an-address\tmail.example.com",
            "",
        ] {
            assert_eq!(pair(no_pair), None, "{no_pair}");
        }
    }
}
