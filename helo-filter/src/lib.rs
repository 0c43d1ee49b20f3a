//! helo-filter: the daemon's library, grouped by role (see docs/architecture.md).
pub mod addr;
pub mod clock;
pub mod cmd;
pub mod config;
pub mod dns;
#[cfg(feature = "fault-injection")]
pub mod fault;
pub mod fleet;
#[doc(hidden)]
pub mod fuzzing;
pub mod io;
pub mod kernel;
pub mod logging;
pub mod metrics;
pub mod operator;
pub mod pipeline;
pub mod policy;
pub mod postfix;
pub mod tasks;
