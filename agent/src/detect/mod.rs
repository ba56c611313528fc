//! Detectors: pure functions from signal windows to finding transitions.
pub mod drops;
