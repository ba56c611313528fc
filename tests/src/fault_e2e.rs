//! Helpers for the fault API end-to-end tests (controller_faults.rs on the
//! host, vm_fault_safety.rs in the VM): an agent wired to a controller, the
//! `graydar fault` CLI decoded. What faults leave behind is counted by
//! orphans.rs.

use std::time::{Duration, Instant};

use graydar_common::fault_api::FaultInfo;
use graydar_common::faults::FaultState;

use crate::controller::ControllerProcess;

/// Agent config reporting to `controller_url` and taking fault assignments.
pub fn agent_config(hostname: &str, controller_url: &str, token: &str) -> String {
    format!(
        r#"hostname = "{hostname}"

[controller]
url = "{controller_url}"
token = "{token}"
report_interval = "1s"
"#
    )
}

/// Polls `f` every 100 ms until it returns Some; panics after `timeout`.
pub fn wait_until<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for: {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `graydar fault <args> -o json` as a FaultInfo; panics unless it succeeds.
pub fn fault_cli(ctl: &ControllerProcess, token: &str, args: &[&str]) -> FaultInfo {
    let mut all = vec!["fault"];
    all.extend_from_slice(args);
    serde_json::from_value(ctl.cli_json(token, &all)).expect("graydar fault ... -o json is a FaultInfo")
}

/// `graydar fault <args>` expected to fail: its stderr.
pub fn fault_cli_err(ctl: &ControllerProcess, token: &str, args: &[&str]) -> String {
    let mut all = vec!["fault"];
    all.extend_from_slice(args);
    let out = ctl.cli(token, &all);
    assert!(
        !out.status.success(),
        "graydar {} succeeded: {}",
        all.join(" "),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Waits until `agent`'s state of fault `id` is `state`; the fault then.
pub fn wait_state(
    ctl: &ControllerProcess,
    token: &str,
    id: &str,
    agent: &str,
    state: FaultState,
    timeout: Duration,
) -> FaultInfo {
    let start = Instant::now();
    loop {
        let f = fault_cli(ctl, token, &["get", id]);
        if f.agents.iter().any(|a| a.agent == agent && a.state == state) {
            return f;
        }
        assert!(
            start.elapsed() < timeout,
            "fault {id} on {agent} not {} after {timeout:?}: {f:#?}",
            state.as_str()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
