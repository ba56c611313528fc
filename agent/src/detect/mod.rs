//! Detectors: pure functions from signal windows to finding transitions.
pub mod disk;
pub mod drops;
pub mod incast;
pub mod paths;
pub mod routes;
pub mod transition;

pub use transition::Transition;
