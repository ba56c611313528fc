//! Fault policy: which agents a fault targets (hostnames or a label
//! selector, checked against the registered agents and the interfaces and
//! dm devices they reported), the blast-radius rule, and the overlap rule
//! (one running fault per target and agent). Pure: no store, no clock.

use std::collections::{BTreeSet, HashMap};

use graydar_common::api::AgentInfo;
use graydar_common::fault_api::CreateFaultRequest;
use graydar_common::faults::FaultSpec;
use graydar_common::timestamp::Timestamp;

use super::model::Fault;
use super::{FaultConfig, FaultError};

/// What an agent last said about its interfaces and dm devices.
#[derive(Clone, Debug, Default)]
pub struct Inventory {
    pub interfaces: Option<Vec<String>>,
    pub dm_devices: Option<Vec<String>>,
}

impl Inventory {
    /// Takes what an agent reported at registration or heartbeat (`None`
    /// fields keep what was known).
    pub fn update(&mut self, interfaces: Option<Vec<String>>, dm_devices: Option<Vec<String>>) {
        if interfaces.is_some() {
            self.interfaces = interfaces;
        }
        if dm_devices.is_some() {
            self.dm_devices = dm_devices;
        }
    }
}

/// "a, b, c" (at most `max` names, then "and N more").
fn names(list: &[String], max: usize) -> String {
    if list.is_empty() {
        return "none".to_owned();
    }
    let mut s = list.iter().take(max).cloned().collect::<Vec<_>>().join(", ");
    if list.len() > max {
        s.push_str(&format!(" and {} more", list.len() - max));
    }
    s
}

/// Resolves and checks the targets of `req` against the registered `agents`
/// and their inventories; the sorted hostnames. Pure (unit-tested).
pub fn resolve_targets(
    req: &CreateFaultRequest,
    agents: &[AgentInfo],
    inventory: &HashMap<String, Inventory>,
    cfg: &FaultConfig,
) -> Result<Vec<String>, FaultError> {
    let invalid = |m: String| Err(FaultError::Invalid(m));
    let t = &req.targets;
    if !t.agents.is_empty() && !t.selector.is_empty() {
        return invalid("targets: give either agents (a list of hostnames) or selector (labels), not both".into());
    }
    if t.agents.is_empty() && t.selector.is_empty() {
        return invalid("targets: empty: give agents (a list of hostnames) or selector (labels)".into());
    }
    if let Err(e) = req.spec.validate() {
        return invalid(format!("spec: {e}"));
    }
    if !req.dry_run {
        let max = i64::try_from(cfg.max_duration.as_secs()).unwrap_or(i64::MAX);
        if req.duration_seconds <= 0 {
            return invalid(format!("duration_seconds must be > 0, got {}", req.duration_seconds));
        }
        if req.duration_seconds > max {
            return invalid(format!(
                "duration_seconds {} is above the maximum of {max} (faults.max_duration)",
                req.duration_seconds
            ));
        }
    }
    let registered: Vec<String> = agents.iter().map(|a| a.hostname.clone()).collect();
    let targets: Vec<String> = if !t.agents.is_empty() {
        let wanted: BTreeSet<&String> = t.agents.iter().collect();
        let unknown: Vec<String> = wanted
            .iter()
            .filter(|w| !registered.contains(w))
            .map(|w| format!("{w:?}"))
            .collect();
        if !unknown.is_empty() {
            return invalid(format!(
                "targets.agents: unknown agent{} {} (registered: {})",
                if unknown.len() > 1 { "s" } else { "" },
                unknown.join(", "),
                names(&registered, 20)
            ));
        }
        wanted.into_iter().cloned().collect()
    } else {
        let matched: Vec<String> = agents
            .iter()
            .filter(|a| t.selector.iter().all(|(k, v)| a.labels.get(k) == Some(v)))
            .map(|a| a.hostname.clone())
            .collect();
        if matched.is_empty() {
            let sel: Vec<String> = t.selector.iter().map(|(k, v)| format!("{k}={v}")).collect();
            return invalid(format!(
                "targets.selector {} matches no registered agent ({} registered)",
                sel.join(","),
                registered.len()
            ));
        }
        matched
    };
    // Names that must exist on each target, when the agent reported them.
    for host in &targets {
        let inv = inventory.get(host);
        match &req.spec {
            FaultSpec::Netem { interface, .. } => {
                if let Some(list) = inv.and_then(|i| i.interfaces.as_ref())
                    && !list.contains(interface)
                {
                    return invalid(format!(
                        "spec.interface: interface {interface:?} does not exist on agent {host:?} (it has {})",
                        names(list, 30)
                    ));
                }
            }
            FaultSpec::Dm { device, .. } => {
                if let Some(list) = inv.and_then(|i| i.dm_devices.as_ref())
                    && !list.contains(device)
                {
                    return invalid(format!(
                        "spec.device: dm device {device:?} does not exist on agent {host:?} (it has {})",
                        names(list, 30)
                    ));
                }
            }
            FaultSpec::Blackhole { .. } => {}
        }
    }
    if !req.dry_run && !req.force {
        let total = registered.len().max(1);
        let share = targets.len() as f64 / total as f64;
        if share > cfg.max_target_share + 1e-9 {
            return Err(FaultError::BlastRadius {
                targets: targets.len(),
                registered: registered.len(),
                share,
                limit: cfg.max_target_share,
            });
        }
    }
    Ok(targets)
}

/// Refuses a fault when one of `targets` already has a running fault (not a
/// dry run) on the same target of `spec`.
pub(crate) fn check_overlap<'a>(
    live: impl IntoIterator<Item = &'a Fault>,
    spec: &FaultSpec,
    targets: &[String],
    now: i64,
) -> Result<(), FaultError> {
    let key = spec.key();
    let clash = live.into_iter().filter(|f| !f.dry_run && f.wanted(now)).find_map(|f| {
        (f.spec.key() == key)
            .then(|| targets.iter().find(|t| f.agents.contains_key(*t)).map(|h| (f, h)))
            .flatten()
    });
    match clash {
        Some((f, host)) => Err(FaultError::Conflict {
            agent: host.clone(),
            fault: f.id.clone(),
            target: f.spec.target().to_owned(),
            until: Timestamp::from_unix_ms(f.expires_ms),
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use graydar_common::api::{AgentState, Capabilities};
    use graydar_common::fault_api::FaultTargets;

    fn agent(name: &str, rack: &str) -> AgentInfo {
        AgentInfo {
            hostname: name.into(),
            addresses: vec![],
            labels: BTreeMap::from([("rack".to_owned(), rack.to_owned())]),
            kernel_version: String::new(),
            agent_version: String::new(),
            capabilities: Capabilities::default(),
            registered_at: Timestamp::UNIX_EPOCH,
            last_seen: Timestamp::UNIX_EPOCH,
            state: AgentState::Healthy,
            firing_findings: 0,
        }
    }

    fn req(targets: FaultTargets, iface: &str) -> CreateFaultRequest {
        serde_json::from_value(serde_json::json!({
            "targets": targets,
            "spec": {"kind": "netem", "interface": iface, "netem": {"delay_ms": 100}},
            "duration_seconds": 60
        }))
        .expect("request")
    }

    #[test]
    fn selector_resolution_inventory_and_blast_radius() {
        let fleet = [
            agent("a1", "r1"),
            agent("a2", "r1"),
            agent("a3", "r2"),
            agent("a4", "r3"),
        ];
        let cfg = FaultConfig::default();
        let mut inv = HashMap::new();
        let sel = |r: &str| FaultTargets {
            agents: vec![],
            selector: BTreeMap::from([("rack".to_owned(), r.to_owned())]),
        };
        let t = resolve_targets(&req(sel("r1"), "eth0"), &fleet, &inv, &cfg).expect("2 of 4 = 50%");
        assert_eq!(t, ["a1", "a2"]);
        let e = resolve_targets(&req(sel("r9"), "eth0"), &fleet, &inv, &cfg).expect_err("no match");
        assert!(e.to_string().contains("rack=r9 matches no registered agent"), "{e}");
        let three = FaultTargets {
            agents: vec!["a1".into(), "a2".into(), "a3".into()],
            selector: BTreeMap::new(),
        };
        let e = resolve_targets(&req(three.clone(), "eth0"), &fleet, &inv, &cfg).expect_err("75%");
        assert!(matches!(e, FaultError::BlastRadius { .. }));
        assert!(e.to_string().contains("3 of 4") && e.to_string().contains("75%"), "{e}");
        let mut forced = req(three, "eth0");
        forced.force = true;
        assert_eq!(resolve_targets(&forced, &fleet, &inv, &cfg).expect("forced").len(), 3);
        inv.insert(
            "a1".to_owned(),
            Inventory {
                interfaces: Some(vec!["eth0".into(), "lo".into()]),
                dm_devices: None,
            },
        );
        let e = resolve_targets(&req(sel("r1"), "eth9"), &fleet, &inv, &cfg).expect_err("eth9");
        assert_eq!(
            e.to_string(),
            "spec.interface: interface \"eth9\" does not exist on agent \"a1\" (it has eth0, lo)"
        );
        let unknown = FaultTargets {
            agents: vec!["nope".into()],
            selector: BTreeMap::new(),
        };
        let e = resolve_targets(&req(unknown, "eth0"), &fleet, &inv, &cfg).expect_err("unknown");
        assert!(e.to_string().contains("unknown agent \"nope\""), "{e}");
    }
}
