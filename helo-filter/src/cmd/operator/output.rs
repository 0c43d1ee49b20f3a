//! What the operator subcommands print: the daemon's JSON result on one line (`--json`), or
//! for a person — tables with a header, times relative to now, reasons comma-separated.

use std::fmt::Display;

use serde::de::DeserializeOwned;
use serde_json::Value;

use super::Common;
use crate::{
    clock::unix_now,
    cmd::table::{Table, ago, expiry, span},
    operator::{
        api::{
            AllowList, Command, ControlError, DenyList, Detached, Entry, Explanation, Flow, Flows,
            HeloEntry, Reloaded, Removed, ReputationList, ReputationReset, SourceScore, Standing,
            Status,
        },
        client,
    },
};

/// An optional value for a person: `-` for none.
fn or_dash<T: Display>(value: &Option<T>) -> String {
    value.as_ref().map_or_else(|| "-".to_owned(), T::to_string)
}

/// Names for a person, comma-separated: `-` for none.
fn listed<S: AsRef<str>>(names: &[S]) -> String {
    if names.is_empty() {
        "-".to_owned()
    } else {
        names
            .iter()
            .map(AsRef::as_ref)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// A counter's wire name for a person: `SynDropped` → `syn dropped`.
fn words(name: &str) -> String {
    let mut out = String::new();
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push(' ');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

/// Reads `result` as the command's result type and prints it: the daemon's JSON on one
/// line, or (`human`) for a person.
fn show<T: DeserializeOwned>(
    common: &Common,
    result: &Value,
    human: impl FnOnce(T),
) -> Result<(), ControlError> {
    let typed: T = client::typed(result)?;
    if common.json {
        println!("{result}");
    } else {
        human(typed);
    }
    Ok(())
}

/// Allow or deny entries under one header (`first`: the first column's title).
fn entry_table(first: &str, entries: &[Entry]) -> Table {
    let mut table = Table::new(&[first, "ORIGIN", "EXPIRES", "ADDED", "COMMENT"]);
    let now = unix_now();
    for e in entries {
        // A fleet entry names the member that made it; a shared one, this member.
        let origin = match &e.member {
            Some(member) => format!("{} ({member})", e.source.as_str()),
            None => e.source.as_str().to_owned(),
        };
        table.row(vec![
            e.net.to_string(),
            origin,
            expiry(e.expires_in_secs),
            e.added_at.map_or_else(|| "-".to_owned(), |at| ago(at, now)),
            or_dash(&e.comment),
        ]);
    }
    table
}

fn helo_table(patterns: &[HeloEntry]) -> Table {
    let mut table = Table::new(&["HELO PATTERN", "ORIGIN", "EXPIRES", "ADDED", "COMMENT"]);
    let now = unix_now();
    for h in patterns {
        table.row(vec![
            h.pattern.clone(),
            h.source.as_str().to_owned(),
            expiry(h.expires_at.map(|at| at.saturating_sub(now))),
            h.added_at.map_or_else(|| "-".to_owned(), |at| ago(at, now)),
            or_dash(&h.comment),
        ]);
    }
    table
}

fn flow_table(flows: &[Flow], with_client: bool) -> Table {
    let mut header = vec!["WHEN"];
    if with_client {
        header.push("CLIENT");
    }
    header.extend(["SERVER", "LINE", "VERDICT", "REASONS", "ACTION"]);
    let mut table = Table::new(&header);
    let now = unix_now();
    for f in flows {
        let mut row = vec![ago(f.at, now)];
        if with_client {
            row.push(f.client.clone());
        }
        row.extend([
            f.server.clone(),
            if f.line.is_empty() {
                "-".to_owned()
            } else {
                f.line.clone()
            },
            f.verdict.clone(),
            listed(&f.reasons),
            f.action.clone(),
        ]);
        table.row(row);
    }
    table
}

fn score_table(sources: &[SourceScore]) -> Table {
    let mut table = Table::new(&["SOURCE", "SCORE", "DENIED"]);
    for s in sources {
        table.row(vec![
            s.source.to_string(),
            format!("{:.2}", s.score),
            s.denied_for_secs
                .map_or_else(|| "no".to_owned(), |secs| format!("for {}", span(secs))),
        ]);
    }
    table
}

/// `allow add`, `deny add`: one sentence.
fn added(e: &Entry) {
    let comment = e
        .comment
        .as_ref()
        .map(|c| format!(" ({c})"))
        .unwrap_or_default();
    println!(
        "{} added ({} entry), expires {}{comment}",
        e.net,
        e.source.as_str(),
        expiry(e.expires_in_secs)
    );
}

fn status(status: Status) {
    let now = unix_now();
    println!(
        "helo-filter {}, up {}",
        status.version,
        span(status.uptime_secs)
    );
    let enforcing = if status.monitor {
        "monitor (nothing enforced; what would be done is counted)".to_owned()
    } else {
        "enforcing".to_owned()
    };
    let mut facts = Table::untitled();
    let mut fact = |name: &str, value: String| facts.row(vec![name.to_owned(), value]);
    fact("mode", enforcing);
    fact("deployment", status.deployment.clone());
    fact("action", status.action.clone());
    fact("bundle", status.bundle.clone());
    let config = &status.configuration;
    fact(
        "config",
        format!(
            "{}, in force since {}",
            config
                .file
                .as_deref()
                .unwrap_or("none (defaults and flags)"),
            ago(config.loaded_at, now)
        ),
    );
    if !config.applied.is_empty() {
        fact("last reload applied", listed(&config.applied));
    }
    if !config.pending_restart.is_empty() {
        fact(
            "pending restart",
            format!(
                "{} (changed in the file; enforced at the next restart)",
                listed(&config.pending_restart)
            ),
        );
    }
    if let Some(refused) = &config.refused {
        fact(
            "reload refused",
            format!(
                "{}; the configuration above stays in force: {}",
                ago(refused.at, now),
                refused.error
            ),
        );
    }
    let lists = &status.lists;
    fact(
        "lists",
        format!(
            "{} allow, {} deny, {} HELO patterns",
            lists.allow, lists.deny, lists.deny_helo
        ),
    );
    fact(
        "reputation",
        format!(
            "{} sources scored, {} denied",
            status.reputation.sources, status.reputation.denied
        ),
    );
    if let Some(fleet) = &status.fleet {
        fact(
            "fleet",
            format!(
                "member {}, {}, {} members seen, {} denials held, {} sent, {} received{}",
                fleet.name,
                if fleet.connected {
                    "connected"
                } else {
                    "Redis unreachable"
                },
                fleet.members_seen,
                fleet.denials_held,
                fleet.denials_sent,
                fleet.denials_received,
                fleet
                    .last_lag_ms
                    .map_or(String::new(), |ms| format!(", last lag {ms} ms"))
            ),
        );
    }
    fact("state", status.state_dir.clone());
    fact("pins", status.bpffs_dir.clone());
    facts.print();
    println!();
    let mut interfaces = Table::new(&["INTERFACE", "XDP MODE", "ADOPTED"]);
    for i in &status.interfaces {
        interfaces.row(vec![
            i.name.clone(),
            i.mode.clone(),
            if i.adopted { "yes" } else { "no" }.to_owned(),
        ]);
    }
    interfaces.print();
    println!();
    let mut counters = Table::new(&["KERNEL COUNTER", "VALUE"]);
    for (name, value) in &status.counters {
        counters.row(vec![words(name), value.to_string()]);
    }
    counters.print();
}

fn explanation(x: Explanation) {
    let standing = match x.standing {
        Standing::Allowed => "allowed: left alone (no capture, no gate, trusted by the policy)",
        Standing::Denied => "denied: its SYNs to the SMTP ports are dropped",
        Standing::Judged => "judged: its HELO is checked like any client's",
    };
    println!("{}: {standing}", x.address);
    if x.monitor {
        println!("(monitor mode: reputation denials are counted, not enforced)");
    }
    println!();
    entry_table("ALLOW ENTRY", &x.allow).print();
    println!();
    entry_table("DENY ENTRY", &x.deny).print();
    println!();
    let r = &x.reputation;
    println!(
        "reputation of {}: score {:.2}, {}",
        r.source,
        r.score,
        r.denied_for_secs.map_or_else(
            || "not denied".to_owned(),
            |secs| format!("denied for another {}", span(secs))
        )
    );
    println!();
    println!("latest sessions (newest first):");
    flow_table(&x.sessions, false).print();
}

/// Prints a command's result: one JSON line, or lines for a person.
pub(super) fn print(
    common: &Common,
    request: &Command,
    result: &Value,
) -> Result<(), ControlError> {
    match request {
        Command::AllowAdd { .. } | Command::DenyAdd { .. } => {
            show(common, result, |e: Entry| added(&e))
        }
        Command::DenyHeloAdd { .. } => show(common, result, |e: HeloEntry| {
            println!(
                "HELO pattern {} added, expires {}",
                e.pattern,
                expiry(e.expires_at.map(|at| at.saturating_sub(unix_now())))
            );
        }),
        Command::AllowDel { .. } | Command::DenyDel { .. } | Command::DenyHeloDel { .. } => {
            show(common, result, |r: Removed| {
                println!("{} removed", r.removed)
            })
        }
        Command::AllowList => show(common, result, |l: AllowList| {
            entry_table("NET", &l.entries).print();
        }),
        Command::DenyList => show(common, result, |l: DenyList| {
            entry_table("NET", &l.entries).print();
            println!();
            helo_table(&l.helo).print();
        }),
        Command::ReputationList { .. } => show(common, result, |l: ReputationList| {
            score_table(&l.sources).print();
        }),
        Command::ReputationShow { .. } => show(common, result, |s: SourceScore| {
            score_table(&[s]).print();
        }),
        Command::ReputationReset { .. } => show(common, result, |r: ReputationReset| {
            if r.was_known {
                println!("{}: score forgotten and reputation denial lifted", r.source);
            } else {
                println!("{}: had no score and no denial", r.source);
            }
        }),
        Command::Status => show(common, result, status),
        Command::Flows { .. } => show(common, result, |f: Flows| {
            flow_table(&f.flows, true).print();
        }),
        Command::Explain { .. } => show(common, result, explanation),
        Command::Reload => show(common, result, |r: Reloaded| {
            println!(
                "reloaded {}: applied {}",
                r.reloaded.as_deref().unwrap_or("(defaults and flags)"),
                listed(&r.applied)
            );
            if !r.pending_restart.is_empty() {
                println!(
                    "pending restart: {} (changed in the file; enforced at the next restart)",
                    listed(&r.pending_restart)
                );
            }
        }),
        Command::Detach => show(common, result, |d: Detached| {
            let by = if d.daemon == Some(false) {
                " (no daemon was running: the pins were removed directly)"
            } else {
                ""
            };
            println!("detached: {} removed{by}", d.bpffs_dir);
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_for_a_person() {
        assert_eq!(words("SynDropped"), "syn dropped");
        assert_eq!(words("PacketsSeen"), "packets seen");
        assert_eq!(listed::<&str>(&[]), "-");
        assert_eq!(listed(&["localhost", "no_dns"]), "localhost, no_dns");
    }
}
