//! Developer tasks (setup, run, test, bench) and the network-namespace lab they share
//! with the end-to-end tests.
pub mod bench;
pub mod corpus;
pub mod daemon;
pub mod dns_fixture;
pub mod lab;
pub mod sessions;
pub mod setup;
