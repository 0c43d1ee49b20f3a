//! helo-filter: the daemon's library. One module per concern; `daemon` ties them.
pub mod capture;
pub mod daemon;
pub mod kernel;
pub mod metrics;
pub mod smtp;
