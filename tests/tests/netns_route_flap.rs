//! Root/netns tier for route churn: the real agent in a fresh
//! network namespace, subscribed to its rtnetlink route, link and neighbour
//! events, while a shell script withdraws and re-adds a route in a loop
//! (`route_flap` fires for that prefix, then resolves once the script
//! stops), and while a route is changed once (no finding).
//!
//! Topology: the agent's namespace `rf` has a veth `rfa0` (10.76.0.1/24)
//! whose peer `rfb0` (10.76.0.2/24) in a second namespace is the next hop of
//! 10.77.0.0/16. Windows are shortened through `[routes]` so that the tests
//! run in seconds; the default windows are unit-tested against the
//! reference chapter's 5 s / 30 s BGP flap (agent/src/detect/routes.rs).

use std::time::Duration;

use graydar_common::api::{Evidence, FindingKind, FindingState, Severity};
use graydar_tests::agent::AgentProcess;
use graydar_tests::netns::{self, NetNs, veth_pair};
use graydar_tests::prom;

const PREFIX: &str = "10.77.0.0/16";
const GATEWAY: &str = "10.76.0.2";
const TIMEOUT: Duration = Duration::from_secs(20);

/// Fires on more than 4 changes within 10 s, resolves after 4 s quiet.
fn config(ns: &NetNs) -> String {
    format!(
        r#"hostname = "{}"

[incast]
enabled = false

[routes]
window = "10s"
threshold = 4
critical_threshold = 12
resolve_after = "4s"
"#,
        ns.name()
    )
}

fn topology() -> (NetNs, NetNs) {
    netns::require_root();
    let a = NetNs::new("rf");
    let b = NetNs::new("rfb");
    veth_pair(&a, "rfa0", "10.76.0.1/24", &b, "rfb0", "10.76.0.2/24");
    (a, b)
}

fn route_changes(agent: &AgentProcess) -> f64 {
    prom::sum(
        &agent.metrics(),
        "graydar_route_changes_total",
        &[("type", "route"), ("family", "ipv4")],
    )
}

/// The agent is subscribed once the probe reports up.
fn wait_subscribed(agent: &AgentProcess) {
    agent.wait_for(TIMEOUT, "graydar_probe_up{probe=\"route_churn\"} == 1", |ag| {
        prom::sum(&ag.metrics(), "graydar_probe_up", &[("probe", "route_churn")]) == 1.0
    });
}

#[test]
fn a_route_withdrawn_and_re_added_in_a_loop_is_a_route_flap() {
    let (a, _b) = topology();
    a.ip(["route", "add", PREFIX, "via", GATEWAY]);
    let agent = AgentProcess::start(Some(&a), &config(&a));
    wait_subscribed(&agent);

    // The flap: withdraw, re-announce, four times (8 changes in ~3 s).
    let script = format!(
        "for i in 1 2 3 4; do ip route del {PREFIX}; sleep 0.3; ip route add {PREFIX} via {GATEWAY}; sleep 0.3; done"
    );
    let out = a.exec("sh", ["-c", script.as_str()]);
    assert!(
        out.status.success(),
        "flap script: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    agent.wait_for(TIMEOUT, "route_flap firing on 10.77.0.0/16", |ag| {
        ag.finding_in_state(FindingKind::RouteFlap, PREFIX, FindingState::Firing)
    });
    let f = agent.finding(FindingKind::RouteFlap, PREFIX).expect("listed");
    assert_eq!(
        f.severity,
        Severity::Warning,
        "8 changes, critical only beyond 12: {f:?}"
    );
    assert_eq!(f.runbook, "route-flap");
    let Some(Evidence::Number(n)) = f.evidence.get("changes_in_window") else {
        panic!("no changes_in_window in {:?}", f.evidence)
    };
    assert!(*n > 4.0, "{f:?}");
    assert_eq!(
        f.evidence.get("next_hops"),
        Some(&Evidence::Text(format!("via {GATEWAY} dev rfa0"))),
        "{f:?}"
    );
    let Some(Evidence::Text(newest)) = f.evidence.get("change_01") else {
        panic!("no change_01 in {:?}", f.evidence)
    };
    assert!(newest.contains(&format!("add via {GATEWAY} dev rfa0")), "{newest}");
    assert!(route_changes(&agent) >= 8.0, "{}", agent.metrics());
    let metrics = agent.metrics();
    assert_eq!(prom::sum(&metrics, "graydar_route_flapping_prefixes", &[]), 1.0);
    assert_eq!(
        prom::sum(
            &metrics,
            "graydar_finding_firing",
            &[("kind", "route_flap"), ("subject", PREFIX)]
        ),
        1.0
    );

    // The script stopped: quiet for resolve_after, the finding resolves.
    agent.wait_for(TIMEOUT, "route_flap resolved on 10.77.0.0/16", |ag| {
        ag.finding_in_state(FindingKind::RouteFlap, PREFIX, FindingState::Resolved)
    });
    assert_eq!(prom::sum(&agent.metrics(), "graydar_route_flapping_prefixes", &[]), 0.0);
}

#[test]
fn a_single_route_change_is_no_route_flap() {
    let (a, _b) = topology();
    let agent = AgentProcess::start(Some(&a), &config(&a));
    wait_subscribed(&agent);
    let before = route_changes(&agent);

    // A planned change: add a route, then replace its next hop (one change
    // each); and a delete + add of another prefix.
    a.ip(["route", "add", PREFIX, "via", GATEWAY]);
    a.ip(["route", "replace", PREFIX, "dev", "rfa0"]);
    a.ip(["route", "add", "10.78.0.0/16", "via", GATEWAY]);
    a.ip(["route", "del", "10.78.0.0/16"]);
    agent.wait_for(TIMEOUT, "the agent counted the 4 route changes", |ag| {
        route_changes(ag) >= before + 4.0
    });
    // A whole window (10 s) passes: nothing fires.
    std::thread::sleep(Duration::from_secs(11));
    let flaps: Vec<_> = agent
        .findings()
        .findings
        .into_iter()
        .filter(|f| f.kind == FindingKind::RouteFlap)
        .collect();
    assert!(flaps.is_empty(), "a planned change raised {flaps:?}");
    assert_eq!(prom::sum(&agent.metrics(), "graydar_route_flapping_prefixes", &[]), 0.0);
}
