//! Path detectors of the probe mesh: `one_way_loss`, `asymmetric_connectivity`,
//! `asymmetric_route`, `latency_asymmetry`, per peer pair. Pure: no I/O, no
//! clock; agent/src/signals/paths.rs feeds one [`Tick`] per evaluation (1 s).
//!
//! Each agent sees both directions of its own pairs (the peer's report in
//! every datagram, agent/src/probes/paths/mesh.rs), so the pair detectors run
//! here, not at the controller:
//! - outbound (me → peer): which of my probes the peer received, from its
//!   reports ([`OutTracker`]): delivered, lost, or unknown when the peer says
//!   nothing (down, or the reverse direction is dead);
//! - inbound (peer → me): sequence gaps in the peer's probes (RxTracker);
//! - RTT from replies; hop counts per direction (sent TTL − received TTL);
//!   one-way delay *variation* per direction (raw one-way delays include the
//!   clock offset, which cancels when compared with their own baseline).
//!
//! A finding belongs to one agent of the pair (its `host`), so the pair is
//! reported once: loss and connectivity findings to the source of the bad
//! direction (which measured it through the peer's reports), a route finding
//! to the source of the longer direction, a latency finding to the source of
//! the slower direction (the smaller hostname when the direction is unknown).
//! Hysteresis: k of n evaluations to fire, m quiet ones to resolve.

mod config;
mod outbound;
mod pair;
mod window;

pub use config::{PathsConfig, PathsConfigError, PeerError, parse_peer};
pub use outbound::{OutOutcome, OutTracker};
pub use pair::{Evaluation, PairDetector, Verdict};
pub use window::{PairStats, Tick, quantile};

#[cfg(test)]
mod tests;
