//! The operator's subcommands: each sends one request over the control socket (found in the
//! configuration file's `[control] socket` unless `--control-socket` names it), reads the
//! result as its type in `operator::api`, and prints it for a person (`output`) or
//! (`--json`) as the daemon's JSON result on one line. The schemas are in
//! `docs/operations.md`. `config check` and, with no daemon running, `detach` work offline.
//!
//! Exit status: 0 done, 1 refused or failed (a one-line message on stderr; with `--json`
//! also `{"ok":false,"kind":K,"error":TEXT}` on stdout), 2 usage.

mod output;

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
};

use clap::{Args, Subcommand};
use ipnet::IpNet;
use serde_json::json;

use crate::{
    config::{
        ConfigArgs, Loaded, PolicyFile,
        duration::{self, Unit},
    },
    kernel::pins::PinDir,
    operator::{
        api::{Command, ControlError, Detached, ErrorKind},
        client,
    },
};

/// Options every operator subcommand takes.
#[derive(Args, Clone, Debug)]
pub struct Common {
    /// The daemon's control socket [default: the configuration file's `[control] socket`,
    /// /run/helo-filter/control.sock].
    #[arg(long, value_name = "PATH", global = true)]
    pub control_socket: Option<PathBuf>,
    /// Print the daemon's JSON result on one line (schemas: docs/operations.md).
    #[arg(long, global = true)]
    pub json: bool,
    #[command(flatten)]
    pub config: ConfigArgs,
}

impl Common {
    /// The configuration file, parsed: where the daemon keeps its socket and its pins.
    fn file(&self) -> Result<PolicyFile, ControlError> {
        self.config
            .load()
            .map(|loaded| loaded.config)
            .map_err(|e| ControlError::new(ErrorKind::InvalidConfig, e.to_string()))
    }

    /// The control socket: the flag's, else the configuration file's.
    fn socket(&self) -> Result<PathBuf, ControlError> {
        match &self.control_socket {
            Some(socket) => Ok(socket.clone()),
            None => Ok(self.file()?.control.socket),
        }
    }
}

/// `--ttl`: seconds, or 90s, 15m, 12h, 1d, 1w.
fn ttl(text: &str) -> Result<u64, String> {
    match duration::parse(text, Unit::Secs)? {
        0 => Err("a TTL of 0 would end at once; leave --ttl out for an entry that stays".into()),
        secs => Ok(secs),
    }
}

#[derive(Args, Clone, Debug)]
pub struct EntryArgs {
    /// An IPv4 or IPv6 address or CIDR.
    #[arg(value_name = "CIDR", value_parser = parse_net)]
    pub net: IpNet,
    /// How long until the entry ends by itself: seconds, or 90s, 15m, 12h, 1d, 1w
    /// [default: never].
    #[arg(long, value_name = "DURATION", value_parser = ttl)]
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
        /// The entry's CIDR, as listed.
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
        /// How long until the entry ends by itself: seconds, or 90s, 15m, 12h, 1d, 1w
        /// [default: never].
        #[arg(long, value_name = "DURATION", value_parser = ttl)]
        ttl: Option<u64>,
        /// Why it is there.
        #[arg(long, value_name = "TEXT")]
        comment: Option<String>,
        /// Share the denial with the fleet: every member drops the source's SYNs (its TTL
        /// at most [reputation] deny_ttl_secs, which it defaults to).
        #[arg(long, conflicts_with = "helo")]
        fleet: bool,
    },
    /// Remove an operator entry (a CIDR, or `--helo PATTERN`).
    Del {
        /// The entry's CIDR, as listed.
        #[arg(value_name = "CIDR", value_parser = parse_net, required_unless_present = "helo", conflicts_with = "helo")]
        net: Option<IpNet>,
        /// The HELO name pattern, as listed.
        #[arg(long, value_name = "PATTERN")]
        helo: Option<String>,
        /// Lift the fleet's denial of the CIDR on every member (their own local entries
        /// stay).
        #[arg(long, conflicts_with = "helo")]
        fleet: bool,
    },
    /// The deny list: sources (configuration, operator, reputation) and HELO patterns.
    List,
}

#[derive(Subcommand, Clone, Debug)]
pub enum ReputationCommand {
    /// Sources by score, highest first.
    List {
        /// Show only the N highest scores.
        #[arg(long, value_name = "N")]
        top: Option<usize>,
    },
    /// One source's score and denial.
    Show {
        /// An address; its source is its IPv4 /32 or IPv6 /64.
        ip: IpAddr,
    },
    /// Forget a source's score and lift its reputation denial.
    Reset {
        /// An address; its source is its IPv4 /32 or IPv6 /64.
        ip: IpAddr,
    },
}

#[derive(Subcommand, Clone, Debug)]
pub enum ConfigCommand {
    /// Validate a configuration file offline (each error names file, line and key).
    Check {
        /// The file [default: the one -c/--config names, else
        /// /etc/helo-filter/helo-filter.toml].
        file: Option<PathBuf>,
    },
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
        /// Show at most N verdicts (the daemon keeps the last 256).
        #[arg(long, value_name = "N", default_value_t = 20)]
        limit: usize,
    },
    /// Why an address is treated as it is: the allow and deny entries that cover it, its
    /// reputation, and its latest sessions with their verdicts.
    Explain {
        #[command(flatten)]
        common: Common,
        /// The client address.
        ip: IpAddr,
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
        /// Where the pins are, for a detach with no daemon running [default: the
        /// configuration file's `[state] bpffs_dir`, /sys/fs/bpf/helo-filter].
        #[arg(long, value_name = "DIR")]
        bpffs_dir: Option<PathBuf>,
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
        } => return config_check(&common, file),
        OperatorCommand::Detach { common, bpffs_dir } => return detach(&common, bpffs_dir),
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
        OperatorCommand::Explain { common, ip } => (common, Command::Explain { ip }),
        OperatorCommand::Reload { common } => (common, Command::Reload),
    };
    match common
        .socket()
        .and_then(|socket| client::call(&socket, &request))
        .and_then(|result| output::print(&common, &request, &result))
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
            fleet,
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
                fleet,
            },
            (None, None) => unreachable!("clap requires a CIDR or --helo"),
        },
        DenyCommand::Del { net, helo, fleet } => match (net, helo) {
            (_, Some(pattern)) => Command::DenyHeloDel { pattern },
            (Some(net), None) => Command::DenyDel { net, fleet },
            (None, None) => unreachable!("clap requires a CIDR or --helo"),
        },
        DenyCommand::List => Command::DenyList,
    }
}

fn config_check(common: &Common, file: Option<PathBuf>) -> i32 {
    let Some(file) = file.or_else(|| common.config.file()) else {
        return failed(
            common,
            &ControlError::new(
                ErrorKind::InvalidArgument,
                "no configuration file to check: name one, or create \
                 /etc/helo-filter/helo-filter.toml",
            ),
        );
    };
    let outcome = Loaded::read(&file)
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
            for warning in policy.warnings() {
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
fn detach(common: &Common, bpffs_dir: Option<PathBuf>) -> i32 {
    let located = common.socket().and_then(|socket| {
        let bpffs_dir = match bpffs_dir {
            Some(dir) => dir,
            None => common.file()?.state.bpffs_dir,
        };
        Ok((socket, bpffs_dir))
    });
    let (socket, bpffs_dir) = match located {
        Ok(located) => located,
        Err(e) => return failed(common, &e),
    };
    let bpffs_dir: &Path = &bpffs_dir;
    let result = match client::call(&socket, &Command::Detach) {
        Ok(result) => result,
        Err(e) if e.kind == ErrorKind::Unavailable && !socket.exists() => {
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
    match output::print(common, &Command::Detach, &result) {
        Ok(()) => 0,
        Err(e) => failed(common, &e),
    }
}
