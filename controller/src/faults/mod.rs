//! Faults at the controller: operators create them through the API
//! (controller/src/api/faults.rs); the policy (`policy.rs`) resolves their
//! targets and enforces the blast radius; the lifecycle (`lifecycle.rs`)
//! keeps them in the store and in memory, hands each agent its desired set
//! over a long-poll that works from behind NAT (the agent always dials out),
//! takes the agents' state reports, expires faults and pulls the kill switch.
//! Agents apply, renew and revert on their own (agent/src/faults/) and
//! report each fault's state back.

pub mod lifecycle;
mod model;
pub mod policy;

use graydar_common::timestamp::Timestamp;

pub use crate::config::{FaultConfig, FaultConfigError, FaultsSection};
pub use crate::store::FaultStatus;
use crate::store::StoreError;
pub use lifecycle::{FaultCounts, FaultService, new_fault_id, spawn_expirer};
pub use policy::{Inventory, resolve_targets};

#[derive(Debug, thiserror::Error)]
pub enum FaultError {
    /// The request cannot be honoured as written (422).
    #[error("{0}")]
    Invalid(String),
    /// Refused by the blast-radius rule (409): with this fault's `targets`,
    /// `impaired` agents would be under running faults, a `share` of the
    /// `alive` agents above `limit`.
    #[error(
        "blast radius: {impaired} of {alive} alive agents would be under faults ({:.0}%; this fault targets {targets}), \
         above the limit of {:.0}% (faults.max_target_share); pass force=true (graydar fault apply --force) to apply anyway",
        share * 100.0,
        limit * 100.0
    )]
    BlastRadius {
        targets: usize,
        impaired: usize,
        alive: usize,
        share: f64,
        limit: f64,
    },
    /// `agent` already has the running fault `fault` on the same `target`,
    /// until `until` (409).
    #[error(
        "agent {agent:?} already has fault {fault} on {target} (until {until}); revert it first (DELETE /api/v1/faults/{fault})"
    )]
    Conflict {
        agent: String,
        fault: String,
        target: String,
        until: Timestamp,
    },
    /// The safety lever is engaged (409): no new fault until it is released.
    #[error(
        "the safety lever is engaged (since {since}: {reason}); every fault was reverted and new ones are refused \
         until it is released (PUT /api/v1/safety-lever {{\"engaged\": false}}, graydar safety-lever release)"
    )]
    SafetyLever { since: Timestamp, reason: String },
    #[error("no fault {id:?}")]
    NotFound { id: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}
