//! helo-filter: the daemon's library.
pub mod kernel;
