//! Which configuration file a subcommand reads: `/etc/helo-filter/helo-filter.toml` unless
//! `-c FILE` names another or `--no-config` asks for none. As with Postfix's main.cf, the
//! file every subcommand reads by itself is the one the daemon runs with, so `check`, the
//! operator commands and the daemon agree without being told where it is.

use std::path::{Path, PathBuf};

use super::{ConfigError, Loaded};

/// The configuration file read when none is named.
pub const DEFAULT_CONFIG_FILE: &str = "/etc/helo-filter/helo-filter.toml";

/// `-c/--config` and `--no-config`, taken by every subcommand.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct ConfigArgs {
    /// Configuration file; a file named here must exist [default:
    /// /etc/helo-filter/helo-filter.toml, read if present].
    #[arg(short = 'c', long, value_name = "FILE", global = true)]
    pub config: Option<PathBuf>,
    /// Read no configuration file: the built-in defaults and the flags only.
    #[arg(long, conflicts_with = "config", global = true)]
    pub no_config: bool,
}

impl ConfigArgs {
    /// The file to read, if any: the one named, else the default if it exists. A default
    /// file that is absent is no error (a host configured by flags alone has none).
    pub fn file(&self) -> Option<PathBuf> {
        self.file_with_default(Path::new(DEFAULT_CONFIG_FILE))
    }

    fn file_with_default(&self, default: &Path) -> Option<PathBuf> {
        if self.no_config {
            return None;
        }
        match &self.config {
            Some(named) => Some(named.clone()),
            None => default.exists().then(|| default.to_path_buf()),
        }
    }

    /// Reads and parses the file (or takes the defaults); not validated yet.
    pub fn load(&self) -> Result<Loaded, ConfigError> {
        match self.file() {
            Some(path) => Loaded::read(&path),
            None => Ok(Loaded::defaults()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(config: Option<&str>, no_config: bool) -> ConfigArgs {
        ConfigArgs {
            config: config.map(PathBuf::from),
            no_config,
        }
    }

    #[test]
    fn the_default_file_is_read_only_when_it_exists() {
        let present = std::env::temp_dir().join(format!("hf-source-{}", std::process::id()));
        std::fs::write(&present, "").unwrap();
        let absent = present.with_extension("absent");
        assert_eq!(
            args(None, false).file_with_default(&present),
            Some(present.clone())
        );
        assert_eq!(args(None, false).file_with_default(&absent), None);
        assert_eq!(args(None, true).file_with_default(&present), None);
        std::fs::remove_file(&present).unwrap();
    }

    #[test]
    fn a_named_file_is_read_even_when_absent_so_that_its_absence_is_an_error() {
        let named = args(Some("/nonexistent/hf.toml"), false);
        assert_eq!(
            named.file_with_default(Path::new("/")),
            Some(PathBuf::from("/nonexistent/hf.toml"))
        );
        let error = named.load().unwrap_err().to_string();
        assert!(error.contains("/nonexistent/hf.toml"), "{error}");
    }
}
