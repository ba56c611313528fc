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
//! `validate.rs` checks a report field by field; `keys.rs` holds the mesh's
//! fleet keys (stored, handed out with every peer list, rotated on request).

mod keys;
mod mesh;
mod validate;

use std::sync::{Arc, Mutex};

use graydar_common::paths::{MeshKeyList, PathMatrix, PathReport, PathReportResponse};

use crate::agents::{AgentError, AgentService};
use crate::store::{Store, StoreError};
use crate::timefmt::now_ms;
pub use keys::{KEY_ACTIVATION, KEYS_KEPT, MeshKeys};
pub use mesh::{FORGET_AFTER_MS, LOSSY_RATIO, PairState, Paths};
pub use validate::{InvalidReport, MAX_ADDRESSES, MAX_NAME, validate};

#[derive(Debug, thiserror::Error)]
pub enum PathError {
    #[error(transparent)]
    Invalid(#[from] InvalidReport),
    #[error(transparent)]
    Agent(#[from] AgentError),
    #[error("mesh keys: {0}")]
    Store(#[from] StoreError),
    #[error("mesh keys: the system random number generator failed")]
    Random,
}

/// The mesh of the registered agents (live state in memory) and its keys
/// (in the store).
pub struct PathService {
    agents: Arc<AgentService>,
    mesh: Mutex<Paths>,
    keys: MeshKeys,
}

impl PathService {
    /// Loads the mesh keys, creating the first one on a new store.
    pub async fn open(agents: Arc<AgentService>, store: Arc<dyn Store>) -> Result<PathService, PathError> {
        Ok(PathService {
            agents,
            mesh: Mutex::new(Paths::default()),
            keys: MeshKeys::open(store, now_ms()).await?,
        })
    }

    fn mesh(&self) -> std::sync::MutexGuard<'_, Paths> {
        self.mesh.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stores a registered agent's report (a heartbeat too) and answers with
    /// its peers and the mesh keys.
    pub fn report(&self, host: &str, report: PathReport) -> Result<PathReportResponse, PathError> {
        validate(host, &report)?;
        self.agents.touch(host)?;
        let now = now_ms();
        let mut resp = self.mesh().ingest(host, report, now);
        resp.mesh_keys = Some(self.keys.key_set(now));
        Ok(resp)
    }

    /// The mesh keys by id (no secrets).
    pub fn keys(&self) -> MeshKeyList {
        self.keys.list(now_ms())
    }

    /// A new key, handed out at once and signed with after
    /// [`KEY_ACTIVATION`]; the oldest beyond [`KEYS_KEPT`] is dropped.
    pub async fn rotate_key(&self) -> Result<MeshKeyList, PathError> {
        self.keys.rotate(now_ms()).await
    }

    /// Rereads the mesh keys (another controller rotated them).
    pub async fn reload_keys(&self) -> Result<(), PathError> {
        self.keys.reload().await
    }

    /// The matrix now.
    pub fn matrix(&self) -> PathMatrix {
        self.mesh().matrix(now_ms())
    }
}
