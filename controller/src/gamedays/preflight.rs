//! A run's start: its groups resolved once (seeded sampling) and the
//! preflight checked against the agents, the firing findings and the
//! safety lever. Pure: the service hands in what it read; unit-tested.

use std::collections::{BTreeMap, BTreeSet};

use graydar_common::api::{AgentInfo, AgentState, Finding, FindingState};
use graydar_common::gameday::run::PreflightCheck;
use graydar_common::gameday::verify::Groups;
use graydar_common::gameday::{Action, GameDaySpec, OnEmpty, Pick, minimum_capabilities};

/// The groups of `spec` resolved among `agents`: a list of hostnames is
/// taken as written (each must be registered); a selector takes the
/// healthy agents whose labels include it. Then `pick` samples, with a
/// generator seeded from `seed` and the group's name, so the same seed
/// picks the same agents. An empty group is an error unless `on_empty: skip`.
pub fn resolve_groups(spec: &GameDaySpec, agents: &[AgentInfo], seed: u64) -> Result<Groups, String> {
    let mut out = BTreeMap::new();
    for (name, g) in &spec.targets {
        let mut candidates: Vec<String> = if g.agents.is_empty() {
            agents
                .iter()
                .filter(|a| a.state == AgentState::Healthy)
                .filter(|a| g.selector.iter().all(|(k, v)| a.labels.get(k) == Some(v)))
                .map(|a| a.hostname.clone())
                .collect()
        } else {
            for h in &g.agents {
                if !agents.iter().any(|a| &a.hostname == h) {
                    return Err(format!("targets.{name}: agent {h:?} is not registered"));
                }
            }
            g.agents.clone()
        };
        candidates.sort();
        candidates.dedup();
        let n = match g.pick {
            Pick::All => candidates.len(),
            Pick::Count(c) => usize::try_from(c).unwrap_or(usize::MAX).min(candidates.len()),
            Pick::Percent(p) => {
                // Rounded up: 10 % of 3 agents is one agent, not none.
                let n = (candidates.len() as f64 * p / 100.0).ceil();
                (n as usize).min(candidates.len())
            }
        };
        if n < candidates.len() {
            let mut rng = fastrand::Rng::with_seed(seed ^ fnv(name));
            rng.shuffle(&mut candidates);
            candidates.truncate(n);
            candidates.sort();
        }
        if candidates.is_empty() && g.on_empty == OnEmpty::Fail {
            return Err(format!(
                "targets.{name}: no agent matches (on_empty: fail; set on_empty: skip to skip its steps)"
            ));
        }
        out.insert(name.clone(), candidates);
    }
    Ok(out)
}

fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The agents a run may put under faults or load: every agent of every
/// group a fault or load step acts on (all steps counted as if at once,
/// which bounds any moment of the run).
pub fn impaired(spec: &GameDaySpec, groups: &Groups) -> BTreeSet<String> {
    spec.steps
        .iter()
        .filter_map(|s| s.action())
        .filter_map(|a| a.target())
        .filter_map(|t| groups.get(t))
        .flatten()
        .cloned()
        .collect()
}

/// Everything the preflight reads.
pub struct Inputs<'a> {
    pub agents: &'a [AgentInfo],
    /// Firing findings (any host).
    pub firing: &'a [Finding],
    /// `Some(why)` while the safety lever is engaged.
    pub lever: Option<String>,
    /// Whether the controller has a Prometheus to ask.
    pub prometheus: bool,
}

/// Every preflight check of `spec` with its result, in a fixed order.
pub fn check(spec: &GameDaySpec, groups: &Groups, inp: &Inputs<'_>) -> Vec<PreflightCheck> {
    let mut out = Vec::new();
    let mut push = |check: &str, problems: Vec<String>, ok_detail: String| {
        out.push(PreflightCheck {
            check: check.to_owned(),
            ok: problems.is_empty(),
            detail: if problems.is_empty() {
                ok_detail
            } else {
                problems.join("; ")
            },
        });
    };
    push(
        "safety_lever",
        inp.lever
            .iter()
            .map(|w| format!("the safety lever is engaged ({w})"))
            .collect(),
        "released".into(),
    );
    let hosts = impaired(spec, groups);
    let alive = inp.agents.iter().filter(|a| a.state == AgentState::Healthy).count();
    let mut radius = Vec::new();
    if let Some(max) = spec.safety.max_targets
        && hosts.len() > usize::try_from(max).unwrap_or(usize::MAX)
    {
        radius.push(format!(
            "{} agents under faults or load, above safety.max_targets = {max}",
            hosts.len()
        ));
    }
    if let Some(share) = spec.safety.max_share {
        let s = if alive == 0 {
            1.0
        } else {
            hosts.len() as f64 / alive as f64
        };
        if !hosts.is_empty() && s > share {
            radius.push(format!(
                "{} of {alive} alive agents under faults or load ({:.0}%), above safety.max_share = {:.0}%",
                hosts.len(),
                s * 100.0,
                share * 100.0
            ));
        }
    }
    push(
        "blast_radius",
        radius,
        format!("{} of {alive} alive agents under faults or load", hosts.len()),
    );
    let all: BTreeSet<&String> = groups.values().flatten().collect();
    if spec.preflight.require_healthy {
        let bad = all
            .iter()
            .filter_map(|h| match inp.agents.iter().find(|a| &a.hostname == *h) {
                Some(a) if a.state == AgentState::Healthy => None,
                Some(a) => Some(format!("{h} is {}", a.state.as_str())),
                None => Some(format!("{h} is not registered")),
            })
            .collect();
        push("healthy", bad, format!("{} target agents healthy", all.len()));
    }
    if spec.preflight.require_capabilities {
        let mut bad = Vec::new();
        for step in &spec.steps {
            let Some(Action::Fault(f)) = step.action() else {
                continue;
            };
            if step.optional {
                // Tried anyway: skipped if it fails there (no capability
                // names a driver's ring resize, for one).
                continue;
            }
            for h in groups.get(&f.target).into_iter().flatten() {
                let Some(a) = inp.agents.iter().find(|a| &a.hostname == h) else {
                    continue;
                };
                let missing: Vec<&str> = minimum_capabilities(&f.spec)
                    .into_iter()
                    .filter(|c| a.capabilities.get(c) != Some(true))
                    .collect();
                if !missing.is_empty() {
                    bad.push(format!(
                        "steps.{}: {h} lacks {} (the kernel option or module is missing there)",
                        step.id,
                        missing.join(", ")
                    ));
                }
            }
        }
        push("capabilities", bad, "every target agent has what its steps need".into());
    }
    let nf = &spec.preflight.no_firing;
    let firing: Vec<String> = inp
        .firing
        .iter()
        .filter(|f| f.state == FindingState::Firing && all.contains(&f.host))
        .filter(|f| f.severity >= nf.min_severity)
        .filter(|f| nf.kinds.is_empty() || nf.kinds.iter().any(|k| k == f.kind.as_str()))
        .map(|f| {
            format!(
                "{} {} on {} ({}) is firing",
                f.severity.as_str(),
                f.kind.as_str(),
                f.host,
                f.subject
            )
        })
        .collect();
    push("no_firing", firing, "no such finding firing on the target hosts".into());
    // With a Prometheus, each check is its own line (`promql[i]`, asked by the service).
    if !spec.preflight.promql.is_empty() && !inp.prometheus {
        push(
            "promql",
            vec!["preflight.promql needs a Prometheus: set [prometheus] url in the controller's configuration".into()],
            String::new(),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use graydar_common::api::{Capabilities, FindingKind, Severity};
    use graydar_common::timestamp::Timestamp;

    fn agent(h: &str, state: AgentState, labels: &[(&str, &str)]) -> AgentInfo {
        AgentInfo {
            hostname: h.into(),
            addresses: vec![],
            labels: labels.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect(),
            kernel_version: String::new(),
            agent_version: String::new(),
            capabilities: Capabilities::default(),
            registered_at: Timestamp::from_unix_ms(0),
            last_seen: Timestamp::from_unix_ms(0),
            state,
            firing_findings: 0,
            clock: None,
        }
    }

    fn spec(yaml: &str) -> GameDaySpec {
        GameDaySpec::parse(yaml).expect("spec")
    }

    const BASE: &str = "name: g\nhypothesis: h\nsafety: {max_duration: 5m}\n";

    fn fleet() -> Vec<AgentInfo> {
        (0..10)
            .map(|i| {
                let state = if i == 9 { AgentState::Lost } else { AgentState::Healthy };
                agent(&format!("h{i}"), state, &[("role", if i < 6 { "web" } else { "db" })])
            })
            .collect()
    }

    #[test]
    fn a_selector_takes_healthy_matching_agents_and_a_seed_picks_the_same_sample() {
        let s = spec(&format!(
            "{BASE}targets:\n  web: {{selector: {{role: web}}, pick: {{count: 2}}}}\n  db: {{selector: {{role: db}}}}\nsteps: [{{id: w, wait: {{duration: 1s}}}}]\n"
        ));
        let a = resolve_groups(&s, &fleet(), 7).expect("groups");
        assert_eq!(a["web"].len(), 2);
        assert!(
            a["web"]
                .iter()
                .all(|h| ["h0", "h1", "h2", "h3", "h4", "h5"].contains(&h.as_str()))
        );
        assert_eq!(a["db"], ["h6", "h7", "h8"], "h9 is lost");
        assert_eq!(
            resolve_groups(&s, &fleet(), 7).expect("again"),
            a,
            "same seed, same sample"
        );
        let differs = (0..20).any(|seed| resolve_groups(&s, &fleet(), seed).expect("g")["web"] != a["web"]);
        assert!(differs, "the seed changes the sample");
    }

    #[test]
    fn percent_rounds_up_and_empty_groups_fail_unless_skipped() {
        let s = spec(&format!(
            "{BASE}targets:\n  db: {{selector: {{role: db}}, pick: {{percent: 10}}}}\nsteps: [{{id: w, wait: {{duration: 1s}}}}]\n"
        ));
        assert_eq!(resolve_groups(&s, &fleet(), 1).expect("g")["db"].len(), 1);
        let s = spec(&format!(
            "{BASE}targets:\n  x: {{selector: {{role: cache}}}}\nsteps: [{{id: w, wait: {{duration: 1s}}}}]\n"
        ));
        let e = resolve_groups(&s, &fleet(), 1).expect_err("empty");
        assert!(e.contains("targets.x") && e.contains("on_empty"), "{e}");
        let s = spec(&format!(
            "{BASE}targets:\n  x: {{selector: {{role: cache}}, on_empty: skip}}\nsteps: [{{id: w, wait: {{duration: 1s}}}}]\n"
        ));
        assert_eq!(
            resolve_groups(&s, &fleet(), 1).expect("skip")["x"],
            Vec::<String>::new()
        );
        let s = spec(&format!(
            "{BASE}targets:\n  x: {{agents: [nope]}}\nsteps: [{{id: w, wait: {{duration: 1s}}}}]\n"
        ));
        assert!(
            resolve_groups(&s, &fleet(), 1)
                .expect_err("unknown")
                .contains("\"nope\"")
        );
    }

    #[test]
    fn preflight_refuses_the_lever_the_radius_unhealthy_agents_missing_capabilities_and_firing_findings() {
        let s = spec(
            "name: g\nhypothesis: h\ntargets:\n  a: {agents: [h8, h9]}\nsafety: {max_duration: 5m, max_targets: 1}\n\
             steps:\n  - {id: f, fault: {target: a, duration: 10s, spec: {kind: netem, interface: eth0, netem: {delay_ms: 10}}}}\n",
        );
        let agents = fleet();
        let groups = resolve_groups(&s, &agents, 1).expect("groups");
        let firing = [Finding {
            id: "x".into(),
            host: "h8".into(),
            kind: FindingKind::NicDrops,
            subject: "eth0".into(),
            severity: Severity::Critical,
            state: FindingState::Firing,
            since: Timestamp::from_unix_ms(0),
            last_seen: Timestamp::from_unix_ms(0),
            resolved_at: None,
            summary: String::new(),
            evidence: BTreeMap::new(),
            runbook: String::new(),
        }];
        let checks = check(
            &s,
            &groups,
            &Inputs {
                agents: &agents,
                firing: &firing,
                lever: Some("incident".into()),
                prometheus: false,
            },
        );
        let failed: Vec<(&str, &str)> = checks
            .iter()
            .filter(|c| !c.ok)
            .map(|c| (c.check.as_str(), c.detail.as_str()))
            .collect();
        let names: Vec<&str> = failed.iter().map(|(c, _)| *c).collect();
        assert_eq!(
            names,
            ["safety_lever", "blast_radius", "healthy", "capabilities", "no_firing"],
            "{failed:#?}"
        );
        assert!(failed[2].1.contains("h9 is lost"), "{failed:?}");
        assert!(failed[3].1.contains("sch_netem"), "{failed:?}");
        assert!(failed[4].1.contains("nic_drops on h8"), "{failed:?}");
    }
}
