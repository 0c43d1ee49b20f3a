//! One module per subcommand of the `helo-filter` binary.
pub mod check;
pub mod operator;
pub mod policy;
pub mod run;
