//! graydar-agent library. Layers, each importing only those below it:
//! `probes` (kernel, procfs, sysfs, netlink readers) <- `detect` (pure
//! detectors) <- `signals` (one per failure family, run by one runner) <-
//! main.rs; `config` is read by the signals only.
pub mod btf;
pub mod config;
pub mod detect;
pub mod ebpf;
pub mod faults;
pub mod findings;
pub mod http;
pub mod metrics;
pub mod probes;
pub mod reporter;
pub mod signals;
pub mod sys;
