//! Developer tasks (setup, run, test, bench) and the network-namespace lab they share
//! with the end-to-end tests.
//!
//! Layers, each module using only those below it: `paths`; `process`, `http`; `netns`, `corpus`;
//! `dns_fixture`; `lab`; `daemon`, `fleet_lab`, `sessions`, `setup`; `bench`.
pub mod bench;
pub mod corpus;
pub mod daemon;
pub mod dns_fixture;
pub mod fleet_lab;
pub mod http;
pub mod lab;
pub mod netns;
pub mod paths;
pub mod process;
pub mod sessions;
pub mod setup;
