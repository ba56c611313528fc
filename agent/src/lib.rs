//! graydar-agent library: probes, detectors, metrics and the HTTP server.
pub mod btf;
pub mod ebpf;
