//! The `helo-filter` command line.
use std::process::ExitCode;

use clap::{CommandFactory as _, Parser, Subcommand};
use helo_filter::logging::{self, LogFormat};

#[derive(Parser)]
#[command(version, about = "XDP-assisted SMTP HELO filter")]
struct Cli {
    /// How log lines are written to stderr: `human` text or one JSON object per line.
    /// RUST_LOG sets the level (default info).
    #[arg(long, value_enum, default_value_t = LogFormat::Human, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Attach to the interfaces and filter SMTP sessions until SIGINT/SIGTERM (the kernel
    /// side stays, pinned, until `detach`).
    Run(Box<helo_filter::config::RunArgs>),
    /// Judge one HELO for one client address (exit 0 accept, 1 reject, 2 error).
    Check(helo_filter::cmd::check::CheckArgs),
    /// Answer Postfix's policy delegation requests (check_policy_service) until
    /// SIGINT/SIGTERM.
    Policy(helo_filter::cmd::policy::PolicyCommandArgs),
    #[command(flatten)]
    Operator(helo_filter::cmd::operator::OperatorCommand),
    /// Write the man pages and shell completions (what the Debian package ships).
    #[command(hide = true)]
    GenerateAssets(helo_filter::cmd::assets::AssetsArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(cli.log_format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("helo-filter: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run(args) => helo_filter::cmd::run::run(*args).await,
            Command::Check(args) => Ok(helo_filter::cmd::check::run(args).await),
            Command::Policy(args) => helo_filter::cmd::policy::run(args).await.map(|()| 0),
            Command::GenerateAssets(args) => {
                helo_filter::cmd::assets::run(Cli::command(), &args).map(|()| 0)
            }
            // Blocking socket I/O: off the runtime's threads.
            Command::Operator(command) => {
                tokio::task::spawn_blocking(move || helo_filter::cmd::operator::run(command))
                    .await
                    .map_err(anyhow::Error::from)
            }
        }
    });
    match result {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(2)),
        Err(e) => {
            eprintln!("helo-filter: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::Cli;

    /// Every subcommand, argument and possible value says what it is in `--help` (and so in
    /// the man pages, which are generated from the same definitions).
    #[test]
    fn every_argument_has_help() {
        fn undocumented(command: &clap::Command, path: &str, missing: &mut Vec<String>) {
            let path = format!("{path} {}", command.get_name());
            if !command.is_hide_set() && command.get_about().is_none() {
                missing.push(format!("{path}: the subcommand"));
            }
            for arg in command.get_arguments() {
                let id = arg.get_id().as_str();
                if arg.is_hide_set() || matches!(id, "help" | "version") {
                    continue;
                }
                if arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("{path}: {id}"));
                }
                // A flag's true/false are no values one writes.
                let values = match arg.get_action().takes_values() {
                    true => arg.get_possible_values(),
                    false => Vec::new(),
                };
                for value in values {
                    if !value.is_hide_set() && value.get_help().is_none() {
                        missing.push(format!("{path}: {id}={}", value.get_name()));
                    }
                }
            }
            for sub in command.get_subcommands() {
                undocumented(sub, &path, missing);
            }
        }
        let mut missing = Vec::new();
        undocumented(&Cli::command(), "", &mut missing);
        assert!(missing.is_empty(), "without help: {missing:#?}");
    }
}
