//! The operator's subcommands: each sends one request over the control socket, reads the
//! result as its type in `operator::api`, and prints it readably or (`--json`) as the
//! daemon's JSON result on one line. The schemas are in `docs/operations.md`. `config check`
//! and, with no daemon running, `detach` work offline.
//!
//! Exit status: 0 done, 1 refused or failed (a one-line message on stderr; with `--json`
//! also `{"ok":false,"kind":K,"error":TEXT}` on stdout), 2 usage.

use std::{
    fmt::Display,
    net::IpAddr,
    path::{Path, PathBuf},
};

use clap::{Args, Subcommand};
use ipnet::IpNet;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::{
    config::Loaded,
    kernel::pins::PinDir,
    operator::{
        api::{
            AllowList, Command, ControlError, DenyList, Detached, Entry, ErrorKind, Flows,
            HeloEntry, Reloaded, Removed, ReputationList, ReputationReset, SourceScore, Status,
        },
        client,
        control::DEFAULT_SOCKET,
    },
};

/// Options every operator subcommand takes.
#[derive(Args, Clone, Debug)]
pub struct Common {
    /// The daemon's control socket.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_SOCKET, global = true)]
    pub control_socket: PathBuf,
    /// Print the daemon's JSON result on one line (schemas: docs/operations.md).
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Args, Clone, Debug)]
pub struct EntryArgs {
    /// An IPv4 or IPv6 address or CIDR.
    #[arg(value_name = "CIDR", value_parser = parse_net)]
    pub net: IpNet,
    /// Seconds until the entry ends by itself.
    #[arg(long, value_name = "SECS")]
    pub ttl: Option<u64>,
    /// Why it is there.
    #[arg(long, value_name = "TEXT")]
    pub comment: Option<String>,
}

#[derive(Subcommand, Clone, Debug)]
pub enum AllowCommand {
    /// Leave a source alone (no capture, no gate, trusted by the policy).
    Add(EntryArgs),
    /// Remove an operator entry.
    Del {
        #[arg(value_name = "CIDR", value_parser = parse_net)]
        net: IpNet,
    },
    /// The allow list (the configuration file's and the operator's).
    List,
}

#[derive(Subcommand, Clone, Debug)]
pub enum DenyCommand {
    /// Drop a source's SYNs to the SMTP ports, or (`--helo`) reject a HELO name pattern.
    Add {
        /// An IPv4 or IPv6 address or CIDR.
        #[arg(value_name = "CIDR", value_parser = parse_net, required_unless_present = "helo", conflicts_with = "helo")]
        net: Option<IpNet>,
        /// A HELO name pattern: NAME, *.SUFFIX or /REGEX/.
        #[arg(long, value_name = "PATTERN")]
        helo: Option<String>,
        /// Seconds until the entry ends by itself.
        #[arg(long, value_name = "SECS")]
        ttl: Option<u64>,
        /// Why it is there.
        #[arg(long, value_name = "TEXT")]
        comment: Option<String>,
    },
    /// Remove an operator entry (a CIDR, or `--helo PATTERN`).
    Del {
        #[arg(value_name = "CIDR", value_parser = parse_net, required_unless_present = "helo", conflicts_with = "helo")]
        net: Option<IpNet>,
        #[arg(long, value_name = "PATTERN")]
        helo: Option<String>,
    },
    /// The deny list: sources (configuration, operator, reputation) and HELO patterns.
    List,
}

#[derive(Subcommand, Clone, Debug)]
pub enum ReputationCommand {
    /// Sources by score, highest first.
    List {
        #[arg(long, value_name = "N")]
        top: Option<usize>,
    },
    /// One source's score and denial.
    Show { ip: IpAddr },
    /// Forget a source's score and lift its reputation denial.
    Reset { ip: IpAddr },
}

#[derive(Subcommand, Clone, Debug)]
pub enum ConfigCommand {
    /// Validate a configuration file offline (each error names file, line and key).
    Check { file: PathBuf },
}

#[derive(Subcommand, Clone, Debug)]
pub enum OperatorCommand {
    /// The allow list.
    Allow {
        #[command(flatten)]
        common: Common,
        #[command(subcommand)]
        command: AllowCommand,
    },
    /// The deny list.
    Deny {
        #[command(flatten)]
        common: Common,
        #[command(subcommand)]
        command: DenyCommand,
    },
    /// Per-source reputation.
    Reputation {
        #[command(flatten)]
        common: Common,
        #[command(subcommand)]
        command: ReputationCommand,
    },
    /// Interfaces and XDP modes, uptime, counters, bundle, deployment, monitor.
    Status {
        #[command(flatten)]
        common: Common,
    },
    /// The latest verdicts, newest first.
    Flows {
        #[command(flatten)]
        common: Common,
        #[arg(long, value_name = "N", default_value_t = 20)]
        limit: usize,
    },
    /// Re-read the configuration file; a bad file is refused and the running one kept.
    Reload {
        #[command(flatten)]
        common: Common,
    },
    /// Validate a configuration file.
    Config {
        #[command(flatten)]
        common: Common,
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Remove the kernel program, its links and pins: the only way protection ends.
    Detach {
        #[command(flatten)]
        common: Common,
        /// Where the pins are, for a detach with no daemon running.
        #[arg(long, value_name = "DIR", default_value = "/sys/fs/bpf/helo-filter")]
        bpffs_dir: PathBuf,
    },
}

fn parse_net(s: &str) -> Result<IpNet, String> {
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{s:?} is neither an address nor a CIDR"))
}

/// Runs one operator subcommand; returns the exit status.
pub fn run(command: OperatorCommand) -> i32 {
    let (common, request) = match command {
        OperatorCommand::Config {
            common,
            command: ConfigCommand::Check { file },
        } => return config_check(&common, &file),
        OperatorCommand::Detach { common, bpffs_dir } => return detach(&common, &bpffs_dir),
        OperatorCommand::Allow { common, command } => (common, allow_request(command)),
        OperatorCommand::Deny { common, command } => (common, deny_request(command)),
        OperatorCommand::Reputation { common, command } => (
            common,
            match command {
                ReputationCommand::List { top } => Command::ReputationList { top },
                ReputationCommand::Show { ip } => Command::ReputationShow { ip },
                ReputationCommand::Reset { ip } => Command::ReputationReset { ip },
            },
        ),
        OperatorCommand::Status { common } => (common, Command::Status),
        OperatorCommand::Flows { common, limit } => (common, Command::Flows { limit: Some(limit) }),
        OperatorCommand::Reload { common } => (common, Command::Reload),
    };
    match client::call(&common.control_socket, &request)
        .and_then(|result| print(&common, &request, &result))
    {
        Ok(()) => 0,
        Err(e) => failed(&common, &e),
    }
}

/// Says why a request failed (on stderr; with `--json`, also as a JSON line on stdout);
/// the exit status.
fn failed(common: &Common, error: &ControlError) -> i32 {
    if common.json {
        println!("{}", error.to_json());
    }
    eprintln!("helo-filter: {error}");
    1
}

fn allow_request(command: AllowCommand) -> Command {
    match command {
        AllowCommand::Add(e) => Command::AllowAdd {
            net: e.net,
            ttl_secs: e.ttl,
            comment: e.comment,
        },
        AllowCommand::Del { net } => Command::AllowDel { net },
        AllowCommand::List => Command::AllowList,
    }
}

fn deny_request(command: DenyCommand) -> Command {
    match command {
        DenyCommand::Add {
            net,
            helo,
            ttl,
            comment,
        } => match (net, helo) {
            (_, Some(pattern)) => Command::DenyHeloAdd {
                pattern,
                ttl_secs: ttl,
                comment,
            },
            (Some(net), None) => Command::DenyAdd {
                net,
                ttl_secs: ttl,
                comment,
            },
            (None, None) => unreachable!("clap requires a CIDR or --helo"),
        },
        DenyCommand::Del { net, helo } => match (net, helo) {
            (_, Some(pattern)) => Command::DenyHeloDel { pattern },
            (Some(net), None) => Command::DenyDel { net },
            (None, None) => unreachable!("clap requires a CIDR or --helo"),
        },
        DenyCommand::List => Command::DenyList,
    }
}

fn config_check(common: &Common, file: &std::path::Path) -> i32 {
    let outcome = Loaded::read(file)
        .and_then(Loaded::validate)
        .map_err(|e| e.to_string());
    if common.json {
        let value = match &outcome {
            Ok(_) => json!({ "file": file.display().to_string(), "valid": true }),
            Err(e) => json!({ "file": file.display().to_string(), "valid": false, "error": e }),
        };
        println!("{value}");
    }
    match outcome {
        Ok(policy) => {
            for warning in policy.reputation.warnings() {
                eprintln!("warning: {warning}");
            }
            if !common.json {
                println!("{}: valid", file.display());
            }
            0
        }
        Err(e) => {
            eprintln!("helo-filter: {e}");
            1
        }
    }
}

/// Detaches through the daemon; with none running, removes the pins itself.
fn detach(common: &Common, bpffs_dir: &Path) -> i32 {
    let result = match client::call(&common.control_socket, &Command::Detach) {
        Ok(result) => result,
        Err(e) if e.kind == ErrorKind::Unavailable && !common.control_socket.exists() => {
            match PinDir::existing(bpffs_dir).map(|pins| pins.remove_all()) {
                Some(Err(e)) => return failed(common, &ControlError::io(&e)),
                Some(Ok(())) => {
                    let detached = Detached {
                        detached: true,
                        bpffs_dir: bpffs_dir.display().to_string(),
                        daemon: Some(false),
                    };
                    serde_json::to_value(detached).unwrap_or_default()
                }
                None => {
                    let message =
                        format!("{e}; and nothing is pinned under {}", bpffs_dir.display());
                    return failed(common, &ControlError::new(e.kind, message));
                }
            }
        }
        Err(e) => return failed(common, &e),
    };
    match print(common, &Command::Detach, &result) {
        Ok(()) => 0,
        Err(e) => failed(common, &e),
    }
}

/// An optional value for a person: `-` for none.
fn or_dash<T: Display>(value: &Option<T>) -> String {
    value.as_ref().map_or_else(|| "-".to_owned(), T::to_string)
}

/// Section names for a person: `-` for none.
fn names(list: &[String]) -> String {
    if list.is_empty() {
        "-".to_owned()
    } else {
        list.join(", ")
    }
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

fn entry_rows(entries: &[Entry]) {
    for e in entries {
        list_row(&e.net, e.source.as_str(), &e.expires_in_secs, &e.comment);
    }
}

/// One line of `allow list` or `deny list`: what, where it comes from, its expiry, its comment.
fn list_row(what: &dyn Display, source: &str, expiry: &Option<u64>, comment: &Option<String>) {
    println!(
        "{what}  {source}  {}  {}",
        or_dash(expiry),
        or_dash(comment)
    );
}

fn entry_fields(e: &Entry) {
    println!("net {}", e.net);
    println!("source {}", e.source.as_str());
    println!("expires_at {}", or_dash(&e.expires_at));
    println!("expires_in_secs {}", or_dash(&e.expires_in_secs));
    println!("comment {}", or_dash(&e.comment));
    println!("added_at {}", or_dash(&e.added_at));
}

fn status_lines(status: Status) {
    for iface in &status.interfaces {
        println!(
            "interface {} mode={} adopted={}",
            iface.name, iface.mode, iface.adopted
        );
    }
    println!("uptime_secs {}", status.uptime_secs);
    println!("deployment {}", status.deployment);
    println!("action {}", status.action);
    println!("monitor {}", status.monitor);
    println!("bundle {}", status.bundle);
    let config = &status.configuration;
    let now = crate::clock::unix_now();
    println!(
        "config {} (in force since {}, {} s ago)",
        config
            .file
            .as_deref()
            .unwrap_or("none (defaults and flags)"),
        config.loaded_at,
        now.saturating_sub(config.loaded_at)
    );
    println!("config.applied {}", names(&config.applied));
    if !config.pending_restart.is_empty() {
        println!(
            "config.pending_restart {} (changed in the file; enforced at the next restart)",
            names(&config.pending_restart)
        );
    }
    if let Some(refused) = &config.refused {
        println!(
            "config.refused {} s ago, the configuration above stays in force: {}",
            now.saturating_sub(refused.at),
            refused.error
        );
    }
    let lists = &status.lists;
    println!("lists.allow {}", lists.allow);
    println!("lists.deny {}", lists.deny);
    println!("lists.deny_helo {}", lists.deny_helo);
    println!("reputation.sources {}", status.reputation.sources);
    println!("reputation.denied {}", status.reputation.denied);
    for (name, value) in &status.counters {
        println!("counters.{name} {value}");
    }
    println!("state_dir {}", status.state_dir);
    println!("bpffs_dir {}", status.bpffs_dir);
}

/// Prints a command's result: one JSON line, or lines for a person.
fn print(common: &Common, request: &Command, result: &Value) -> Result<(), ControlError> {
    match request {
        Command::AllowAdd { .. } | Command::DenyAdd { .. } => {
            show(common, result, |e: Entry| entry_fields(&e))
        }
        Command::DenyHeloAdd { .. } => show(common, result, |e: HeloEntry| {
            println!("pattern {}", e.pattern);
            println!("source {}", e.source.as_str());
            println!("expires_at {}", or_dash(&e.expires_at));
            println!("comment {}", or_dash(&e.comment));
            println!("added_at {}", or_dash(&e.added_at));
        }),
        Command::AllowDel { .. } | Command::DenyDel { .. } | Command::DenyHeloDel { .. } => {
            show(common, result, |r: Removed| {
                println!("removed {}", r.removed)
            })
        }
        Command::AllowList => show(common, result, |l: AllowList| entry_rows(&l.entries)),
        Command::DenyList => show(common, result, |l: DenyList| {
            entry_rows(&l.entries);
            for h in &l.helo {
                list_row(&h.pattern, h.source.as_str(), &h.expires_at, &h.comment);
            }
        }),
        Command::ReputationList { .. } => show(common, result, |l: ReputationList| {
            for s in &l.sources {
                println!(
                    "{}  {:.2}  {}",
                    s.source,
                    s.score,
                    or_dash(&s.denied_for_secs)
                );
            }
        }),
        Command::ReputationShow { .. } => show(common, result, |s: SourceScore| {
            println!("source {}", s.source);
            println!("score {:.2}", s.score);
            println!("denied_for_secs {}", or_dash(&s.denied_for_secs));
        }),
        Command::ReputationReset { .. } => show(common, result, |r: ReputationReset| {
            println!("source {}", r.source);
            println!("was_known {}", r.was_known);
        }),
        Command::Status => show(common, result, status_lines),
        Command::Flows { .. } => show(common, result, |f: Flows| {
            for f in &f.flows {
                let reasons = if f.reasons.is_empty() {
                    "-".to_owned()
                } else {
                    f.reasons.join(",")
                };
                println!(
                    "{}  {}  {}  {}  {}  {}  {}",
                    f.at, f.client, f.verb, f.line, f.verdict, reasons, f.action
                );
            }
        }),
        Command::Reload => show(common, result, |r: Reloaded| {
            println!(
                "reloaded {}",
                r.reloaded.as_deref().unwrap_or("(defaults and flags)")
            );
            println!("applied {}", names(&r.applied));
            if !r.pending_restart.is_empty() {
                println!(
                    "pending_restart {} (changed in the file; enforced at the next restart)",
                    names(&r.pending_restart)
                );
            }
        }),
        Command::Detach => show(common, result, |d: Detached| {
            println!("detached {}", d.detached);
            println!("bpffs_dir {}", d.bpffs_dir);
            if let Some(daemon) = d.daemon {
                println!("daemon {daemon}");
            }
        }),
    }
}
