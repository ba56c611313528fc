//! graydar-agent library: probes, detectors, metrics and the HTTP server.
pub mod btf;
pub mod channel;
pub mod config;
pub mod detect;
pub mod disk;
pub mod drops;
pub mod ebpf;
pub mod faults;
pub mod findings;
pub mod http;
pub mod incast;
pub mod metrics;
pub mod paths;
pub mod probes;
pub mod reporter;
pub mod routes;
pub mod sys;
