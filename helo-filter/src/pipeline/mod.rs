//! The data path in user space: captured segments are reassembled into sessions, judged by
//! the policy stage, enforced, and remembered by reputation.
pub mod answer;
pub mod capture;
pub mod enforce;
pub mod held;
pub mod history;
pub mod known_good;
pub mod probe;
pub mod reassembly;
pub mod reinject;
pub mod reputation;
pub mod segment;
pub mod session;
pub mod smtp;
pub mod sock_destroy;
pub mod stage;
