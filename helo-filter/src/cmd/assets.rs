//! `helo-filter generate-assets --out DIR` (hidden): the man pages and shell completions the
//! Debian package ships, generated from the command line's own definition so that they say
//! what `--help` says. `cargo xtask deb` runs it on the release binary before packaging.

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use clap_complete::Shell;

#[derive(Debug, clap::Args)]
pub struct AssetsArgs {
    /// Directory to write into: `man/` (section 1: the program's page and one per
    /// subcommand) and `completions/` (bash, zsh, fish).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

/// Writes `man/NAME.1` and `man/NAME-SUBCOMMAND[-SUBCOMMAND].1` for every visible command,
/// and `completions/NAME.bash`, `completions/_NAME` and `completions/NAME.fish` (the names
/// clap_complete gives them), NAME being `command`'s.
pub fn run(command: clap::Command, args: &AssetsArgs) -> anyhow::Result<()> {
    let man = args.out.join("man");
    fs::create_dir_all(&man).with_context(|| format!("creating {}", man.display()))?;
    let source = format!(
        "{} {}",
        command.get_name(),
        command.get_version().unwrap_or_default()
    );
    // Built, the subcommands know their full names (`helo-filter-deny-add`); `help` is the
    // `--help` of each page's command, not a page of its own.
    let mut built = command.clone().disable_help_subcommand(true);
    built.build();
    write_man_pages(&built, &source, &man)
        .with_context(|| format!("writing the man pages into {}", man.display()))?;
    let completions = args.out.join("completions");
    fs::create_dir_all(&completions)
        .with_context(|| format!("creating {}", completions.display()))?;
    let name = command.get_name().to_owned();
    let mut visible = without_hidden_subcommands(&command);
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, &mut visible, &name, &completions).with_context(
            || {
                format!(
                    "writing the {shell} completion into {}",
                    completions.display()
                )
            },
        )?;
    }
    Ok(())
}

/// One page for `command` and one for each visible subcommand below it, every page's footer
/// naming the program and its version (clap_mangen's own walk gives a subcommand's page its
/// bare name and no version: "add").
fn write_man_pages(command: &clap::Command, source: &str, dir: &Path) -> std::io::Result<()> {
    for subcommand in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_man_pages(subcommand, source, dir)?;
    }
    clap_mangen::Man::new(command.clone())
        .source(source)
        .generate_to(dir)?;
    Ok(())
}

/// The root command again with its visible subcommands only: clap_complete's scripts offer
/// hidden subcommands too (`generate-assets`). Its name and version are this package's, as
/// the derived command's are.
fn without_hidden_subcommands(command: &clap::Command) -> clap::Command {
    clap::Command::new(env!("CARGO_PKG_NAME"))
        .version(env!("CARGO_PKG_VERSION"))
        .about(command.get_about().cloned().unwrap_or_default())
        .args(command.get_arguments().cloned())
        .subcommands(
            command
                .get_subcommands()
                .filter(|s| !s.is_hide_set())
                .cloned(),
        )
}
