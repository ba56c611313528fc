//! The disk signal's detectors: `fsync_latency` (fsync p99 per device),
//! `slow` (the `disk_slow` finding: latency far above the device's own
//! baseline or its peers' at comparable load) and `hung` (the `disk_hung`
//! finding: a canary fdatasync that does not return).
pub mod fsync_latency;
pub mod hung;
pub mod slow;
