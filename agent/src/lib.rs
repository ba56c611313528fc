//! graydar-agent library: probes, detectors, metrics and the HTTP server.
pub mod btf;
pub mod config;
pub mod detect;
pub mod drops;
pub mod faults;
pub mod ebpf;
pub mod findings;
pub mod http;
pub mod metrics;
pub mod probes;
pub mod sys;
