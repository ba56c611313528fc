//! The fault endpoints of the controller API on [`Client`] (CLI, agent,
//! tests, benchmark).

use std::time::Duration;

use crate::client::{Client, ClientConfig, ClientError, encode_segment};
use crate::fault_api::{
    CreateFaultRequest, DesiredFaults, FaultInfo, FaultList, FaultStatusReport, FaultStatusResponse, RevertAllResponse,
    SafetyLever, SetSafetyLever,
};

/// Default bound on how long `POST /api/v1/faults` waits for dry-run answers.
pub const DRY_RUN_WAIT: Duration = Duration::from_secs(10);

impl Client {
    /// `POST /api/v1/faults`: the HTTP status (201 created, 200 dry run
    /// answered by every target, 202 dry run still pending) and the fault.
    pub fn create_fault(&self, req: &CreateFaultRequest) -> Result<(u16, FaultInfo), ClientError> {
        self.post_with_status("/api/v1/faults", req)
    }

    /// `GET /api/v1/faults`: newest first, optionally only one `status`
    /// (`running`, `dry_run`, `ended`), at most `limit` (server default 500).
    pub fn faults(&self, status: Option<&str>, limit: Option<u32>) -> Result<FaultList, ClientError> {
        let mut query = Vec::new();
        if let Some(s) = status {
            query.push(format!("status={}", encode_segment(s)));
        }
        if let Some(l) = limit {
            query.push(format!("limit={l}"));
        }
        if query.is_empty() {
            self.get("/api/v1/faults")
        } else {
            self.get(&format!("/api/v1/faults?{}", query.join("&")))
        }
    }

    pub fn fault(&self, id: &str) -> Result<FaultInfo, ClientError> {
        self.get(&format!("/api/v1/faults/{}", encode_segment(id)))
    }

    /// `DELETE /api/v1/faults/{id}`: revert now.
    pub fn revert_fault(&self, id: &str) -> Result<FaultInfo, ClientError> {
        self.delete(&format!("/api/v1/faults/{}", encode_segment(id)))
    }

    /// `POST /api/v1/faults/revert-all`: the kill switch.
    pub fn revert_all_faults(&self) -> Result<RevertAllResponse, ClientError> {
        self.post("/api/v1/faults/revert-all", &serde_json::json!({}))
    }

    /// `GET /api/v1/safety-lever`.
    pub fn safety_lever(&self) -> Result<SafetyLever, ClientError> {
        self.get("/api/v1/safety-lever")
    }

    /// `PUT /api/v1/safety-lever`: engage (reverting every fault) or release.
    pub fn set_safety_lever(&self, req: &SetSafetyLever) -> Result<SafetyLever, ClientError> {
        self.put("/api/v1/safety-lever", req)
    }

    /// Long-poll of this agent's desired faults: answers at once when the
    /// controller's `version` differs from `version`, else at the next change
    /// or after `wait`. The client's timeout must exceed `wait`.
    pub fn desired_faults(
        &self,
        hostname: &str,
        wait: Duration,
        version: Option<u64>,
    ) -> Result<DesiredFaults, ClientError> {
        let mut path = format!(
            "/api/v1/agents/{}/faults?wait={}",
            encode_segment(hostname),
            wait.as_secs()
        );
        if let Some(v) = version {
            path.push_str(&format!("&version={v}"));
        }
        self.get(&path)
    }

    pub fn report_fault_status(
        &self,
        hostname: &str,
        report: &FaultStatusReport,
    ) -> Result<FaultStatusResponse, ClientError> {
        self.post(
            &format!("/api/v1/agents/{}/faults/status", encode_segment(hostname)),
            report,
        )
    }
}

/// A client whose timeout covers a long-poll of `wait` plus `slack`.
pub fn long_poll_client(cfg: &ClientConfig, wait: Duration, slack: Duration) -> Result<Client, ClientError> {
    Client::new(ClientConfig {
        timeout: wait + slack,
        ..cfg.clone()
    })
}
