//! The disk signal's readers: fsync/fdatasync latency (`fsync`, eBPF in
//! ebpf/src/disk/fsync.rs), block request latency (`block_io`, eBPF in
//! ebpf/src/disk/block_io.rs), both as kernel-grid histograms
//! (`latency_hist`); per-device counters from `/proc/diskstats`
//! (`diskstats`) and the fdatasync canary per directory (`canary`).
pub mod block_io;
pub mod canary;
pub mod diskstats;
pub mod fsync;
pub mod latency_hist;
