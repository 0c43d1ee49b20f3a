//! The `helo-filter` command line.
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(version, about = "XDP-assisted SMTP HELO filter")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Attach to the interfaces and filter SMTP sessions until SIGINT/SIGTERM (the kernel
    /// side stays, pinned, until `detach`).
    Run(Box<helo_filter::daemon::RunArgs>),
    /// Judge one HELO for one client address (exit 0 accept, 1 reject, 2 error).
    Check(helo_filter::check_cmd::CheckArgs),
    /// Answer Postfix's policy delegation requests (check_policy_service) until
    /// SIGINT/SIGTERM.
    Policy(helo_filter::postfix::command::PolicyCommandArgs),
    #[command(flatten)]
    Operator(helo_filter::cli::OperatorCommand),
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("helo-filter: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run(args) => helo_filter::daemon::run(*args).await.map(|()| 0),
            Command::Check(args) => Ok(helo_filter::check_cmd::run(args).await),
            Command::Policy(args) => helo_filter::postfix::command::run(args).await.map(|()| 0),
            // Blocking socket I/O: off the runtime's threads.
            Command::Operator(command) => {
                tokio::task::spawn_blocking(move || helo_filter::cli::run(command))
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
