//! Detectors: pure functions from signal windows to finding transitions.
pub mod disk_hung;
pub mod disk_slow;
pub mod drops;
pub mod fsync_latency;
pub mod incast;
pub mod paths;
pub mod route_flap;
pub mod transition;

pub use transition::Transition;
