//! A fault as the controller keeps it (the stored record) and the rules
//! that read it: when it is wanted, when it may leave memory, how its
//! agents' states are told once it has ended. What a fault acts on (for the
//! overlap check) is `FaultSpec::key` in graydar-common.

use graydar_common::fault_api::{AgentFaultStatus, FaultInfo};
use graydar_common::faults::FaultState;
use graydar_common::timestamp::Timestamp;

pub(crate) use crate::store::FaultAgentRecord as AgentStatus;
pub(crate) use crate::store::FaultRecord as Fault;
use crate::store::{EndReason, FaultStatus};

impl Fault {
    pub(crate) fn wanted(&self, now: i64) -> bool {
        self.ended_ms.is_none() && now < self.expires_ms
    }

    /// Its lease in seconds: its own when it has one, else `controller_s`
    /// (never longer than the controller's).
    pub(crate) fn lease_seconds(&self, controller_s: u64) -> u64 {
        self.lease_ms
            .and_then(|ms| u64::try_from(ms / 1000).ok())
            .map_or(controller_s, |own| own.clamp(1, controller_s))
    }

    /// When the fault stopped being wanted (ended or expired, whichever first).
    fn end_ms(&self) -> i64 {
        self.ended_ms.unwrap_or(self.expires_ms).min(self.expires_ms)
    }

    /// Whether the fault can leave memory at `now`: ended (and the end
    /// persisted: `ended_ms` is written before this is asked) and a whole
    /// lease past its end, so every agent has reverted it by its own timer.
    pub(crate) fn settled_at(&self, now: i64, lease_ms: i64) -> bool {
        self.ended_ms.is_some() && now >= self.end_ms().saturating_add(lease_ms)
    }

    /// The agent state as it can be told now. Once the fault has ended and
    /// a whole lease has passed, an agent that never confirmed has reverted
    /// anyway (the lease runs on the agent's own clock; a restart reverts
    /// from the journal), so `active` and `pending` are settled as
    /// `reverted` with a reason saying it was not confirmed.
    fn settled(&self, s: &AgentStatus, now: i64, lease_ms: i64) -> (FaultState, Option<String>) {
        if self.dry_run || now < self.end_ms().saturating_add(lease_ms) {
            return (s.state, s.reason.clone());
        }
        match s.state {
            FaultState::Active => (
                FaultState::Reverted,
                Some("lease expired: reverted by the agent's own lease timer (not confirmed by the agent)".into()),
            ),
            FaultState::Pending => (
                FaultState::Reverted,
                Some("ended before the agent picked it up: never applied".into()),
            ),
            st => (st, s.reason.clone()),
        }
    }

    /// The status the fault list shows (and filters by).
    pub(crate) fn status(&self) -> FaultStatus {
        if self.ended_ms.is_some() {
            if self.end_reason == Some(EndReason::Failed) {
                FaultStatus::Failed
            } else {
                FaultStatus::Ended
            }
        } else if self.dry_run {
            FaultStatus::DryRun
        } else {
            FaultStatus::Running
        }
    }

    pub(crate) fn info(&self) -> FaultInfo {
        self.info_at(i64::MIN, 0)
    }

    pub(crate) fn info_at(&self, now: i64, lease_ms: i64) -> FaultInfo {
        FaultInfo {
            id: self.id.clone(),
            spec: self.spec.clone(),
            selector: self.selector.clone(),
            dry_run: self.dry_run,
            forced: self.forced,
            duration_seconds: self.duration_seconds,
            lease_seconds: self.lease_ms.map(|ms| u64::try_from(ms / 1000).unwrap_or(0)),
            created_at: Timestamp::from_unix_ms(self.created_ms),
            expires_at: Timestamp::from_unix_ms(self.expires_ms),
            status: self.status().as_str().to_owned(),
            ended_at: self.ended_ms.map(Timestamp::from_unix_ms),
            end_reason: self.end_reason.map(|r| r.as_str().to_owned()),
            agents: self
                .agents
                .iter()
                .map(|(a, s)| {
                    let (state, reason) = self.settled(s, now, lease_ms);
                    AgentFaultStatus {
                        agent: a.clone(),
                        state,
                        reason,
                        operations: s.operations.clone(),
                        updated_at: Timestamp::from_unix_ms(s.updated_ms),
                        agent_at: s.agent_at_ms.map(Timestamp::from_unix_ms),
                    }
                })
                .collect(),
        }
    }
}
