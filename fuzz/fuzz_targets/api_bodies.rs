//! The controller API's JSON request bodies (the types its `Body<T>`
//! extractor deserializes, controller/src/api/), one per first input byte:
//! 0 `RegisterRequest`, 1 `HeartbeatRequest`, 2 `TransitionBatch`,
//! 3 `PathReport`, 4 `CreateFaultRequest`, 5 `FaultStatusReport`; then the
//! controller's checks that follow: `findings::validate` per transition,
//! `paths::validate`, `faults::resolve_targets` (against agents registered
//! under the names the request targets).
//!
//! Asserts: nothing panics; an accepted body serialized and parsed again is
//! the same value (floats within serde_json's precision); a validated
//! transition is the sending host's and a validated path report keeps the
//! documented bounds; resolved fault targets are non-empty, sorted, distinct,
//! registered, of a valid spec and (unless a dry run) a duration in
//! 1..=faults.max_duration.
#![no_main]

use std::collections::HashMap;

use graydar_common::api::{AgentInfo, HeartbeatRequest, RegisterRequest, TransitionBatch};
use graydar_common::fault_api::{CreateFaultRequest, FaultStatusReport};
use graydar_common::paths::PathReport;
use graydar_controller::faults::{FaultConfig, resolve_targets};
use graydar_controller::{findings, paths};
use libfuzzer_sys::fuzz_target;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            if x == y {
                return true;
            }
            let (Some(x), Some(y)) = (x.as_f64(), y.as_f64()) else {
                return false;
            };
            (x - y).abs() <= 1e-12 * x.abs().max(y.abs())
        }
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same(x, y)),
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

/// Parses a body as the extractor does (`api::decode_body`: one JSON value,
/// an object); an accepted one must survive a round trip.
fn body<T: Serialize + DeserializeOwned>(data: &[u8]) -> Option<T> {
    let v: T = graydar_controller::api::decode_body(std::str::from_utf8(data).ok()?).ok()?;
    let text = serde_json::to_string(&v).expect("an accepted body serializes");
    let again: T = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text} does not parse back: {e}"));
    let (a, b) = (
        serde_json::to_value(&v).expect("value"),
        serde_json::to_value(&again).expect("value"),
    );
    assert!(same(&a, &b), "round trip changed the body: {a} -> {b}");
    Some(v)
}

fn agent(hostname: &str) -> AgentInfo {
    serde_json::from_value(json!({
        "hostname": hostname, "addresses": [], "labels": {"rack": "r1"},
        "kernel_version": "6.1", "agent_version": "0.1.0", "capabilities": {},
        "registered_at": "2026-01-01T00:00:00Z", "last_seen": "2026-01-01T00:00:00Z",
        "state": "healthy", "firing_findings": 0
    }))
    .expect("a valid AgentInfo")
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    match which % 6 {
        0 => {
            let _ = body::<RegisterRequest>(rest);
        }
        1 => {
            let _ = body::<HeartbeatRequest>(rest);
        }
        2 => {
            let Some(batch) = body::<TransitionBatch>(rest) else {
                return;
            };
            for t in &batch.transitions {
                let host = t.finding.host.clone();
                if findings::validate(&host, t).is_ok() {
                    assert!(
                        findings::validate(&format!("{host}-other"), t).is_err(),
                        "another host's finding accepted"
                    );
                }
            }
        }
        3 => {
            let Some(report) = body::<PathReport>(rest) else { return };
            if paths::validate("fuzz-host", &report).is_ok() {
                assert_ne!(report.port, 0);
                assert!(report.addresses.len() <= paths::MAX_ADDRESSES);
            }
        }
        4 => {
            let Some(req) = body::<CreateFaultRequest>(rest) else {
                return;
            };
            // Register the first few names the request targets (and one it does not).
            let mut agents: Vec<AgentInfo> = req.targets.agents.iter().take(8).map(|h| agent(h)).collect();
            agents.push(agent("bystander"));
            let cfg = FaultConfig::default();
            let Ok(targets) = resolve_targets(&req, &agents, &HashMap::new(), &cfg) else {
                return;
            };
            assert!(!targets.is_empty());
            assert!(
                targets.windows(2).all(|w| w[0] < w[1]),
                "targets not sorted and distinct: {targets:?}"
            );
            assert!(targets.iter().all(|t| agents.iter().any(|a| &a.hostname == t)));
            req.spec.validate().expect("resolved targets of an invalid spec");
            if !req.dry_run {
                assert!(req.duration_seconds > 0 && req.duration_seconds as u64 <= cfg.max_duration.as_secs());
            }
        }
        _ => {
            let _ = body::<FaultStatusReport>(rest);
        }
    }
});
