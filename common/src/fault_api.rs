//! Wire types of the fault API: what an operator sends to the
//! controller (`POST /api/v1/faults`), what the controller answers, and the
//! assignment channel between controller and agents (long-poll of the desired
//! set, status reports). The fault itself is [`crate::faults::FaultSpec`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::faults::{FaultSpec, FaultState};
use crate::timestamp::Timestamp;

/// Which agents a fault hits: a list of agent hostnames, or every registered
/// agent whose labels include all of `selector`. Exactly one of the two.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultTargets {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub agents: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub selector: BTreeMap<String, String>,
}

/// `POST /api/v1/faults`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateFaultRequest {
    pub targets: FaultTargets,
    pub spec: FaultSpec,
    /// How long the fault stays applied (seconds, > 0, at most the
    /// controller's `faults.max_duration`). Not needed for a dry run.
    #[serde(default)]
    pub duration_seconds: i64,
    /// Only ask the agents for the exact operations they would perform.
    #[serde(default)]
    pub dry_run: bool,
    /// Apply even when the targets exceed the blast-radius limit.
    #[serde(default)]
    pub force: bool,
    /// A shorter lease for this fault than the controller's `faults.lease`
    /// (3 s up to it): its agents revert it on their own this long after
    /// they last heard from the controller. A game day's `safety.lease`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_seconds: Option<u64>,
}

/// One agent's view of one fault.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AgentFaultStatus {
    pub agent: String,
    pub state: FaultState,
    /// Why it failed (or why it was reverted), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Dry run: the exact netlink / device-mapper operations the agent would perform.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub operations: Vec<String>,
    /// When the controller last heard about it, RFC 3339 UTC (controller's clock).
    pub updated_at: Timestamp,
    /// When the agent made this change (applied, reverted, failed,
    /// described), on its own clock, RFC 3339 UTC; absent before the agent
    /// reported, and from agents that do not say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_at: Option<Timestamp>,
}

/// One fault as the controller knows it.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FaultInfo {
    pub id: String,
    pub spec: FaultSpec,
    /// The selector the operator gave, if any (targets are resolved at creation).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub selector: BTreeMap<String, String>,
    pub dry_run: bool,
    pub forced: bool,
    pub duration_seconds: i64,
    /// Its own lease when shorter than the controller's `faults.lease`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_seconds: Option<u64>,
    /// RFC 3339 UTC.
    pub created_at: Timestamp,
    /// When the controller stops wanting it, RFC 3339 UTC.
    pub expires_at: Timestamp,
    /// `running` (still wanted), `ended` (expired, deleted or revert-all) or
    /// `dry_run`.
    pub status: String,
    /// Set once it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<Timestamp>,
    /// `expired`, `deleted` or `revert_all`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_reason: Option<String>,
    /// Per targeted agent, sorted by hostname.
    pub agents: Vec<AgentFaultStatus>,
}

/// `GET /api/v1/faults`: newest first.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FaultList {
    pub faults: Vec<FaultInfo>,
}

/// Answer to `POST /api/v1/faults/revert-all`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RevertAllResponse {
    /// Faults that were running and are now ended.
    pub faults_ended: u64,
    /// Agents woken to revert everything they have active.
    pub agents_notified: u64,
    /// The new kill-switch epoch agents see in their desired set.
    pub revert_all_epoch: u64,
}

/// The safety lever (`GET /api/v1/safety-lever`, and the answer to `PUT`).
/// Engaging it reverts every fault (the revert-all) and, until it is
/// released, refuses every new fault (dry runs excepted: they apply
/// nothing) with 409 `safety_lever`. It survives a controller restart.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SafetyLever {
    pub engaged: bool,
    /// When it was engaged, RFC 3339 UTC (while engaged).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<Timestamp>,
    /// Why, as the operator said (while engaged).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The answer to an engaging `PUT`: what its revert-all did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revert_all: Option<RevertAllResponse>,
}

/// Longest `reason` of [`SetSafetyLever`], in characters.
pub const MAX_LEVER_REASON: usize = 500;

/// Body of `PUT /api/v1/safety-lever`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetSafetyLever {
    /// `true` engages (and reverts every fault), `false` releases.
    pub engaged: bool,
    /// Why (at most 500 characters); kept and shown while engaged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(max_length = 500))]
    pub reason: Option<String>,
}

/// One fault an agent should have, with the lease to (re)arm.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DesiredFault {
    pub id: String,
    pub spec: FaultSpec,
    /// Lease from now: the agent reverts on its own when it is not renewed
    /// (min of the controller's lease TTL and the fault's remaining time).
    pub lease_seconds: u64,
    /// Only describe (dry run); never apply.
    #[serde(default)]
    pub dry_run: bool,
}

/// `GET /api/v1/agents/{hostname}/faults?wait=S&version=V` (long-poll).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DesiredFaults {
    /// Changes whenever this agent's desired set changes; pass it back as
    /// `version` to wait for the next change.
    pub version: u64,
    /// Bumped by every revert-all: when it grows, the agent reverts every
    /// fault it has active, known to the controller or not.
    pub revert_all_epoch: u64,
    /// The controller's lease TTL (seconds); poll at least 3 times per lease.
    pub lease_seconds: u64,
    pub faults: Vec<DesiredFault>,
}

/// One fault's state on the reporting agent.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultStatusUpdate {
    pub id: String,
    pub state: FaultState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub operations: Vec<String>,
    /// When the agent made this state change, on its clock (for an apply or
    /// a revert: when the kernel confirmed it), RFC 3339 UTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<Timestamp>,
}

/// `POST /api/v1/agents/{hostname}/faults/status`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultStatusReport {
    pub statuses: Vec<FaultStatusUpdate>,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FaultStatusResponse {
    /// Updates stored.
    pub accepted: u64,
    /// Updates for faults this controller does not know (or does not assign
    /// to this agent): ignored.
    pub ignored: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_create_request_parses_with_defaults_and_refuses_unknown_fields() {
        let r: CreateFaultRequest = serde_json::from_str(
            r#"{"targets":{"selector":{"rack":"r1"}},
                "spec":{"kind":"netem","interface":"eth0","netem":{"delay_ms":100}},
                "duration_seconds":60}"#,
        )
        .expect("parses");
        assert!(!r.dry_run && !r.force);
        assert_eq!(r.targets.selector.get("rack").map(String::as_str), Some("r1"));
        let e = serde_json::from_str::<CreateFaultRequest>(
            r#"{"targets":{"agent":["a"]},"spec":{"kind":"blackhole","prefix":"10.0.0.0/8"}}"#,
        )
        .expect_err("unknown field agent");
        assert!(e.to_string().contains("agent"), "{e}");
    }
}
