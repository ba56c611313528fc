//! Fault policy: which agents a fault targets (hostnames or a label
//! selector, checked against the registered agents and the interfaces and
//! dm devices they reported), the blast-radius rule (the agents under
//! running faults, this one included, as a share of the alive agents), and
//! the overlap rule (one running fault per target and agent). Pure: no
//! store, no clock.

use std::collections::{BTreeSet, HashMap};

use graydar_common::api::{AgentInfo, AgentState};
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
    /// Its registered addresses (where a load aimed at it goes).
    pub addresses: Vec<std::net::IpAddr>,
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
            FaultSpec::Netem { interface, .. } | FaultSpec::NicRings { interface, .. } => {
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
            FaultSpec::Blackhole { .. }
            | FaultSpec::RouteFlap { .. }
            | FaultSpec::RouteDetour { .. }
            | FaultSpec::Traffic(_)
            | FaultSpec::Fsync(_)
            | FaultSpec::Burst(_)
            | FaultSpec::LoadSink(_) => {}
        }
    }
    check_load_destinations(&req.spec, agents, &targets)?;
    Ok(targets)
}

/// The addresses a load sends to.
pub fn load_destinations(spec: &FaultSpec) -> &[String] {
    match spec {
        FaultSpec::Traffic(t) => &t.to,
        FaultSpec::Burst(b) => std::slice::from_ref(&b.to),
        _ => &[],
    }
}

/// A load is only ever aimed at registered graydar agents (their sinks),
/// never at an arbitrary address, and never at one of its own senders.
fn check_load_destinations(spec: &FaultSpec, agents: &[AgentInfo], targets: &[String]) -> Result<(), FaultError> {
    for addr in load_destinations(spec) {
        let ip: Option<std::net::IpAddr> = addr.parse().ok();
        let owner = agents
            .iter()
            .find(|a| a.addresses.iter().any(|x| x.parse().ok() == ip && ip.is_some()));
        match owner {
            None => {
                return Err(FaultError::Invalid(format!(
                    "spec.to: {addr} is not the address of a registered agent: load is only sent to graydar agents' sinks"
                )));
            }
            Some(a) if targets.contains(&a.hostname) => {
                return Err(FaultError::Invalid(format!(
                    "spec.to: {addr} is agent {:?}'s, which is also a sender: a load does not send to itself",
                    a.hostname
                )));
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// The agents a fault impairs, as the blast radius counts them: its
/// `targets`; none for a load (traffic, fsync, burst, a sink). A load
/// breaks nothing by itself: it is bounded per load by validation (rates,
/// sizes, destinations that are graydar agents only) and, in a game day,
/// by the game day's `safety`, which counts every agent a step acts on.
/// Counting its senders would refuse the library's `incast` (24 senders
/// of 25 agents); counting its receivers, a two-agent `nic-queue-drops`
/// (its peer receives while its host is under netem).
pub(crate) fn impaired_agents(spec: &FaultSpec, targets: impl IntoIterator<Item = String>) -> Vec<String> {
    if spec.kind().is_load() {
        return Vec::new();
    }
    targets.into_iter().collect()
}

/// The blast-radius rule: the distinct agents a running fault (not a dry
/// run, not ended, not expired) impairs ([`impaired_agents`]: its targets,
/// none for a load) together with `targets` may be at most
/// `limit` of the alive agents (not `lost`: heard from within the
/// controller's `lost_after`). Agents that are gone do not make the fleet
/// look bigger; a lost agent that is targeted still counts as targeted.
pub(crate) fn check_blast_radius<'a>(
    live: impl IntoIterator<Item = &'a Fault>,
    targets: &[String],
    agents: &[AgentInfo],
    now: i64,
    limit: f64,
) -> Result<(), FaultError> {
    let alive = agents.iter().filter(|a| a.state != AgentState::Lost).count();
    let mut impaired: BTreeSet<String> = targets.iter().cloned().collect();
    for f in live {
        if !f.dry_run && f.wanted(now) {
            impaired.extend(impaired_agents(&f.spec, f.agents.keys().cloned()));
        }
    }
    let share = impaired.len() as f64 / alive.max(1) as f64;
    if share > limit + 1e-9 {
        return Err(FaultError::BlastRadius {
            targets: targets.len(),
            impaired: impaired.len(),
            alive,
            share,
            limit,
        });
    }
    Ok(())
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
            clock: None,
        }
    }

    fn in_state(name: &str, state: AgentState) -> AgentInfo {
        AgentInfo {
            state,
            ..agent(name, "r1")
        }
    }

    /// A running fault (until `expires_ms`) on `hosts`.
    fn running(id: &str, hosts: &[&str], dry_run: bool, expires_ms: i64) -> Fault {
        Fault {
            id: id.into(),
            spec: req(
                FaultTargets {
                    agents: vec!["x".into()],
                    selector: BTreeMap::new(),
                },
                "eth0",
            )
            .spec,
            selector: BTreeMap::new(),
            dry_run,
            forced: false,
            duration_seconds: 60,
            lease_ms: None,
            created_ms: 0,
            expires_ms,
            ended_ms: None,
            end_reason: None,
            agents: hosts
                .iter()
                .map(|h| {
                    (
                        (*h).to_owned(),
                        crate::store::FaultAgentRecord {
                            state: graydar_common::faults::FaultState::Active,
                            reason: None,
                            operations: vec![],
                            updated_ms: 0,
                            agent_at_ms: None,
                        },
                    )
                })
                .collect(),
        }
    }

    fn names_of(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn the_blast_radius_counts_alive_agents_only() {
        // 6 registered, 2 of them lost: 4 alive. A stale agent is alive.
        let fleet = [
            in_state("a1", AgentState::Healthy),
            in_state("a2", AgentState::Healthy),
            in_state("a3", AgentState::Stale),
            in_state("a4", AgentState::Healthy),
            in_state("gone1", AgentState::Lost),
            in_state("gone2", AgentState::Lost),
        ];
        check_blast_radius([], &names_of(&["a1", "a2"]), &fleet, 0, 0.5).expect("2 of 4 alive = 50%");
        let e = check_blast_radius([], &names_of(&["a1", "a2", "a3"]), &fleet, 0, 0.5)
            .expect_err("3 of 4 alive = 75%, though only 50% of the 6 registered");
        assert!(
            matches!(
                e,
                FaultError::BlastRadius {
                    targets: 3,
                    impaired: 3,
                    alive: 4,
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(
            e.to_string()
                .starts_with("blast radius: 3 of 4 alive agents would be under faults (75%; this fault targets 3), above the limit of 50%"),
            "{e}"
        );
        // A fleet that is all lost: any fault is above any limit below 100%.
        let lost = [in_state("gone1", AgentState::Lost)];
        check_blast_radius([], &names_of(&["gone1"]), &lost, 0, 0.5).expect_err("1 of 0 alive");
    }

    #[test]
    fn the_blast_radius_counts_every_running_fault_together() {
        let fleet: Vec<AgentInfo> = ["a1", "a2", "a3", "a4"]
            .iter()
            .map(|n| in_state(n, AgentState::Healthy))
            .collect();
        let now = 1_000;
        let a1 = running("f1", &["a1"], false, 10_000);
        let a2 = running("f2", &["a2"], false, 10_000);
        // Alone a3 is 25%; with a1 and a2 under running faults it is 75%.
        check_blast_radius([&a1], &names_of(&["a3"]), &fleet, now, 0.5).expect("a1 + a3 = 50%");
        let e = check_blast_radius([&a1, &a2], &names_of(&["a3"]), &fleet, now, 0.5).expect_err("75%");
        assert!(
            matches!(
                e,
                FaultError::BlastRadius {
                    targets: 1,
                    impaired: 3,
                    alive: 4,
                    ..
                }
            ),
            "{e:?}"
        );
        // An agent under several faults counts once.
        check_blast_radius([&a1, &a2], &names_of(&["a1", "a2"]), &fleet, now, 0.5).expect("a1, a2 = 50%");
        // Dry runs, ended and expired faults impair nothing.
        let dry = running("f3", &["a2"], true, 10_000);
        let expired = running("f4", &["a2"], false, now);
        let mut ended = running("f5", &["a2"], false, 10_000);
        ended.ended_ms = Some(500);
        check_blast_radius([&a1, &dry, &expired, &ended], &names_of(&["a3"]), &fleet, now, 0.5)
            .expect("only a1 runs: a1 + a3 = 50%");
    }

    #[test]
    fn loads_impair_no_agent_in_the_blast_radius() {
        let fleet: Vec<AgentInfo> = (0..21).map(|i| agent(&format!("s{i}"), "r1")).collect();
        let senders: Vec<String> = (0..20).map(|i| format!("s{i}")).collect();
        let burst: FaultSpec = serde_json::from_value(serde_json::json!(
            {"kind": "burst", "to": "10.0.0.100", "bytes": 262_144, "every_ms": 5000}
        ))
        .expect("burst");
        let fsync: FaultSpec = serde_json::from_value(serde_json::json!(
            {"kind": "fsync", "dir": "/var/lib/x", "per_second": 10}
        ))
        .expect("fsync");
        for load in [&burst, &fsync] {
            assert!(impaired_agents(load, senders.clone()).is_empty(), "{load:?}");
        }
        // 20 senders of 21 agents: nothing counted.
        check_blast_radius([], &impaired_agents(&burst, senders.clone()), &fleet, 0, 0.5).expect("a load");
        // A running load adds nothing to the next fault's count.
        let mut live = running(
            "f1",
            &senders.iter().map(String::as_str).collect::<Vec<_>>(),
            false,
            10_000,
        );
        live.spec = burst.clone();
        check_blast_radius([&live], &senders[..10], &fleet, 0, 0.5).expect("10 of 21");
        check_blast_radius([&live], &senders[..11], &fleet, 0, 0.5).expect_err("11 of 21");
        // Any other fault impairs its targets.
        let netem = req(
            FaultTargets {
                agents: vec![],
                selector: BTreeMap::new(),
            },
            "eth0",
        )
        .spec;
        assert_eq!(impaired_agents(&netem, senders.clone()), senders);
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
        assert_eq!(
            resolve_targets(&req(three, "eth0"), &fleet, &inv, &cfg)
                .expect("resolved")
                .len(),
            3,
            "the blast radius is check_blast_radius's"
        );
        inv.insert(
            "a1".to_owned(),
            Inventory {
                interfaces: Some(vec!["eth0".into(), "lo".into()]),
                dm_devices: None,
                addresses: Vec::new(),
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
