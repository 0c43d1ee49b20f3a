//! One module per subcommand of the `helo-filter` binary.
pub mod assets;
pub mod check;
pub mod operator;
pub mod policy;
mod replay;
pub mod run;
mod table;
