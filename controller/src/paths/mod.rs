//! The cross-host path matrix: agents push their per-peer, per-direction
//! view of the probe mesh; the controller keeps the latest in memory (it is
//! live state, rebuilt within one report interval after a restart), answers
//! each agent with its peer list, and serves the matrix per ordered pair.
//!
//! Pair findings are raised by the agents themselves (each one sees both
//! directions of its own pairs through the peer's reports: see
//! agent/src/detect/paths/) and arrive through the usual transitions; the
//! matrix shows them per pair.
//!
//! Peer lists (Pingmesh-style): every mesh member probes every other one
//! while the fleet is at most the agent's `max_peers`; beyond, each agent
//! gets a subset of `max_peers` chosen by a hash of (agent, member), which is
//! stable between reports (no churn) and different per agent (every member
//! is probed by about `max_peers` others).
//!
//! `mesh.rs` keeps the members and computes peer lists and the matrix;
//! `validate.rs` checks a report field by field.

mod mesh;
mod validate;

use std::sync::{Arc, Mutex};

use graydar_common::paths::{PathMatrix, PathReport, PathReportResponse};

use crate::agents::{AgentError, AgentService};
use crate::timefmt::now_ms;
pub use mesh::{FORGET_AFTER_MS, LOSSY_RATIO, PairState, Paths};
pub use validate::{InvalidReport, MAX_ADDRESSES, MAX_NAME, validate};

#[derive(Debug, thiserror::Error)]
pub enum PathError {
    #[error(transparent)]
    Invalid(#[from] InvalidReport),
    #[error(transparent)]
    Agent(#[from] AgentError),
}

/// The mesh of the registered agents (live state in memory).
pub struct PathService {
    agents: Arc<AgentService>,
    mesh: Mutex<Paths>,
}

impl PathService {
    pub fn new(agents: Arc<AgentService>) -> PathService {
        PathService {
            agents,
            mesh: Mutex::new(Paths::default()),
        }
    }

    fn mesh(&self) -> std::sync::MutexGuard<'_, Paths> {
        self.mesh.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stores a registered agent's report (a heartbeat too) and answers with
    /// its peers.
    pub fn report(&self, host: &str, report: PathReport) -> Result<PathReportResponse, PathError> {
        validate(host, &report)?;
        self.agents.touch(host)?;
        Ok(self.mesh().ingest(host, report, now_ms()))
    }

    /// The matrix now.
    pub fn matrix(&self) -> PathMatrix {
        self.mesh().matrix(now_ms())
    }
}
