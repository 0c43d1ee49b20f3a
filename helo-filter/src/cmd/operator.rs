//! The operator's subcommands: each sends one request over the control socket and prints
//! the result, readably or (`--json`) as the daemon's JSON result on one line. The schemas
//! are in `docs/operations.md`. `config check` and, with no daemon running, `detach` work
//! offline.
//!
//! Exit status: 0 done, 1 refused or failed (a one-line message on stderr), 2 usage.

use std::{net::IpAddr, path::PathBuf};

use clap::{Args, Subcommand};
use ipnet::IpNet;
use serde_json::{Value, json};

use crate::{
    config::PolicyFile,
    kernel::pins::PinDir,
    operator::{
        client,
        control::{Command, DEFAULT_SOCKET},
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
    match client::call(&common.control_socket, &request) {
        Ok(result) => {
            print(&common, &request, &result);
            0
        }
        Err(client::ClientError(message)) => {
            eprintln!("helo-filter: {message}");
            1
        }
    }
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
    let outcome = PolicyFile::load(file).map_err(|e| e.to_string());
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
fn detach(common: &Common, bpffs_dir: &std::path::Path) -> i32 {
    let result = match client::call(&common.control_socket, &Command::Detach) {
        Ok(result) => result,
        Err(client::ClientError(message)) if !common.control_socket.exists() => {
            match PinDir::existing(bpffs_dir).map(|pins| pins.remove_all()) {
                Some(Err(e)) => {
                    eprintln!("helo-filter: {e:#}");
                    return 1;
                }
                Some(Ok(())) => {
                    json!({ "detached": true, "bpffs_dir": bpffs_dir.display().to_string(), "daemon": false })
                }
                None => {
                    eprintln!(
                        "helo-filter: {message}; and nothing is pinned under {}",
                        bpffs_dir.display()
                    );
                    return 1;
                }
            }
        }
        Err(client::ClientError(message)) => {
            eprintln!("helo-filter: {message}");
            return 1;
        }
    };
    print(common, &Command::Detach, &result);
    0
}

fn text(value: &Value) -> String {
    match value {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Prints a result: one JSON line, or rows for a person.
fn print(common: &Common, request: &Command, result: &Value) {
    if common.json {
        println!("{result}");
        return;
    }
    let rows = |items: &Value, columns: &[&str]| {
        for item in items.as_array().into_iter().flatten() {
            let cells: Vec<String> = columns.iter().map(|c| text(&item[*c])).collect();
            println!("{}", cells.join("  "));
        }
    };
    match request {
        Command::AllowList => rows(
            &result["entries"],
            &["net", "source", "expires_in_secs", "comment"],
        ),
        Command::DenyList => {
            rows(
                &result["entries"],
                &["net", "source", "expires_in_secs", "comment"],
            );
            rows(
                &result["helo"],
                &["pattern", "source", "expires_at", "comment"],
            );
        }
        Command::ReputationList { .. } => {
            rows(&result["sources"], &["source", "score", "denied_for_secs"])
        }
        Command::Flows { .. } => rows(
            &result["flows"],
            &[
                "at", "client", "verb", "line", "verdict", "reasons", "action",
            ],
        ),
        Command::Status => {
            for iface in result["interfaces"].as_array().into_iter().flatten() {
                println!(
                    "interface {} mode={} adopted={}",
                    text(&iface["name"]),
                    text(&iface["mode"]),
                    text(&iface["adopted"])
                );
            }
            for key in ["uptime_secs", "deployment", "action", "monitor", "bundle"] {
                println!("{key} {}", text(&result[key]));
            }
            for (section, value) in [
                ("lists", &result["lists"]),
                ("reputation", &result["reputation"]),
                ("counters", &result["counters"]),
            ] {
                for (k, v) in value.as_object().into_iter().flatten() {
                    println!("{section}.{k} {}", text(v));
                }
            }
        }
        _ => {
            for (k, v) in result.as_object().into_iter().flatten() {
                println!("{k} {}", text(v));
            }
        }
    }
}
