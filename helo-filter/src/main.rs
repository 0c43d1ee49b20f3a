//! The `helo-filter` command line.
use std::process::ExitCode;

use clap::{Parser, Subcommand};

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

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

/// Logs go through tracing (the `log` records of the daemon's modules included); HELO text
/// in them is escaped where it is logged.
fn init_logging(format: LogFormat) {
    use std::io::IsTerminal as _;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let installed = match format {
        LogFormat::Human => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    if let Err(e) = installed {
        eprintln!("helo-filter: cannot set up logging: {e}");
    }
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
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
