//! helo-filter: the daemon's library. One module per concern; `daemon` ties them.
pub mod capture;
pub mod check_cmd;
pub mod config;
pub mod daemon;
pub mod dns;
pub mod enforce;
pub mod kernel;
pub mod lists;
pub mod metrics;
pub mod policy;
pub mod policy_config;
pub mod postfix;
pub mod reputation;
pub mod smtp;
pub mod stage;
