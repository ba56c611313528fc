//! Findings: agents send the transitions of their findings (fired, severity
//! changed, resolved) in batches; each is checked against the agent that
//! sends it and stored idempotently; readers list findings and read one with
//! its history.

use std::sync::Arc;

use graydar_common::api::{
    BatchResponse, Finding, FindingDetail, FindingState, FindingTransition, TransitionKind, finding_id,
};

use crate::agents::{AgentError, AgentService};
pub use crate::store::FindingFilter;
use crate::store::{FindingStore, StoreError, TimedTransition};

#[derive(Debug, thiserror::Error)]
pub enum FindingError {
    #[error(transparent)]
    Agent(#[from] AgentError),
    #[error("finding {id} belongs to host {host:?}, not to agent {agent:?}")]
    WrongHost { id: String, host: String, agent: String },
    #[error("finding id {id:?} does not match host, kind and subject (expected {expected})")]
    WrongId { id: String, expected: String },
    #[error("transition {transition} of finding {id} carries state {state:?}")]
    WrongState {
        transition: TransitionKind,
        id: String,
        state: FindingState,
    },
    #[error("no finding {id:?}")]
    NotFound { id: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Checks a transition against the agent that sends it; its time in
/// milliseconds since the epoch.
pub fn validate(hostname: &str, t: &FindingTransition) -> Result<i64, FindingError> {
    let f = &t.finding;
    if f.host != hostname {
        return Err(FindingError::WrongHost {
            id: f.id.clone(),
            host: f.host.clone(),
            agent: hostname.to_owned(),
        });
    }
    let expected = finding_id(&f.host, f.kind, &f.subject);
    if f.id != expected {
        return Err(FindingError::WrongId {
            id: f.id.clone(),
            expected,
        });
    }
    let state_ok = match t.transition {
        TransitionKind::Fired | TransitionKind::SeverityChanged => f.state == FindingState::Firing,
        TransitionKind::Resolved => f.state == FindingState::Resolved,
    };
    if !state_ok {
        return Err(FindingError::WrongState {
            transition: t.transition,
            id: f.id.clone(),
            state: f.state,
        });
    }
    Ok(t.at.unix_ms())
}

pub struct FindingService {
    store: Arc<dyn FindingStore>,
    agents: Arc<AgentService>,
}

impl FindingService {
    pub fn new(store: Arc<dyn FindingStore>, agents: Arc<AgentService>) -> FindingService {
        FindingService { store, agents }
    }

    /// Stores a batch of transitions of a registered agent, in the order
    /// they happened (the whole batch is refused when one is invalid).
    /// Transitions already stored count as duplicates and change nothing.
    /// Counts as a heartbeat.
    pub async fn ingest(&self, hostname: &str, batch: Vec<FindingTransition>) -> Result<BatchResponse, FindingError> {
        if !self.agents.is_registered(hostname) {
            return Err(AgentError::NotRegistered {
                hostname: hostname.to_owned(),
            }
            .into());
        }
        let mut items = Vec::with_capacity(batch.len());
        for t in batch {
            items.push(TimedTransition {
                at_ms: validate(hostname, &t)?,
                transition: t,
            });
        }
        self.agents.touch(hostname)?;
        if items.is_empty() {
            return Ok(BatchResponse {
                accepted: 0,
                duplicates: 0,
            });
        }
        Ok(self.store.ingest(hostname.to_owned(), items).await?)
    }

    /// Findings matching `f`: firing first, then newest first.
    pub async fn list(&self, f: &FindingFilter) -> Result<Vec<Finding>, FindingError> {
        Ok(self.store.findings(f).await?)
    }

    /// One finding with its history of transitions (oldest first).
    pub async fn get(&self, id: &str) -> Result<FindingDetail, FindingError> {
        self.store
            .finding(id)
            .await?
            .ok_or_else(|| FindingError::NotFound { id: id.to_owned() })
    }

    /// Transitions stored in total (for tests and the benchmark).
    pub async fn transition_count(&self) -> Result<i64, FindingError> {
        Ok(self.store.transition_count().await?)
    }
}
