//! Helpers for graydar's end-to-end tests: network namespaces, the agent as a
//! real process, Prometheus text parsing.
pub mod agent;
pub mod blockdev;
pub mod browser;
pub mod controller;
pub mod deploy;
pub mod fault_e2e;
pub mod faults;
pub mod gameday_fleet;
pub mod netns;
pub mod orphans;
pub mod pg;
pub mod prom;
pub mod prometheus_server;
pub mod topology;
