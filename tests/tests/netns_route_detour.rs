//! Root/netns tier for the `route_detour` fault and the library's
//! `asymmetric-route` game day, on the path tests' routed topology
//! (tests/src/topology.rs): A and B reach each other through R1; B also
//! reaches R2, which reaches R1.
//!
//! - The engine in B's namespace sends B's traffic to A's address through
//!   R2 (then R1) from B's own address, so only B → A changes: the kernel's
//!   route lookup says so, A stays reachable, a second route fault on the
//!   prefix and a gateway B cannot reach are refused with nothing left, a
//!   prefix covering the controller is refused, the revert restores B's
//!   routes exactly, and a detour left by a killed engine is removed by the
//!   agent binary at its next start.
//! - The library game day, run by the real controller and CLI on real
//!   agents probing each other every 100 ms: `asymmetric_route` on B
//!   naming A, within the deadline, cleared after the revert, nothing else.

use std::sync::Arc;
use std::time::Duration;

use graydar_agent::faults::engine::FaultEngine;
use graydar_agent::faults::lease::ManualClock;
use graydar_common::api::FindingKind;
use graydar_common::faults::FaultSpec;
use graydar_tests::agent::AgentProcess;
use graydar_tests::controller::{ControllerProcess, Tokens};
use graydar_tests::fault_e2e::wait_until;
use graydar_tests::faults::{start_agent_until_routes_are, with_netlink};
use graydar_tests::gameday_fleet::{FAST_PROBES, assert_library_passed, detection_runs, run_library, wait_none_firing};
use graydar_tests::netns::{self, NetNs, veth_pair};
use graydar_tests::topology::{A_ADDR, B_ADDR, PathTopology, R2_B};

fn detour(prefix: &str, via: &str, src: Option<&str>) -> FaultSpec {
    FaultSpec::RouteDetour {
        prefix: prefix.into(),
        via: via.into(),
        src: src.map(str::to_owned),
        table: None,
    }
}

/// `ip route get <dst>` in `ns`.
fn route_get(ns: &NetNs, dst: &str) -> String {
    ns.exec_stdout("ip", ["route", "get", dst])
}

fn routes(ns: &NetNs) -> String {
    ns.exec_stdout("ip", ["route", "show", "table", "all"])
}

fn reachable(ns: &NetNs, dst: &str) -> bool {
    netns::try_run("ip", ["netns", "exec", ns.name(), "ping", "-c", "1", "-W", "1", dst])
        .status
        .success()
}

#[test]
fn a_route_detour_sends_one_direction_through_the_second_router_and_reverts_exactly() {
    netns::require_root();
    let t = PathTopology::new("rd");
    let before = routes(&t.b);
    assert!(
        route_get(&t.b, A_ADDR).contains("via 10.206.2.1"),
        "{}",
        route_get(&t.b, A_ADDR)
    );
    let state = tempfile::tempdir().expect("state");
    let dir = state.path().to_owned();
    let prefix = format!("{A_ADDR}/32");
    let b = &t.b;
    let before_in = before.clone();
    with_netlink(&t.b, async move |h| {
        let before = before_in;
        let clock = ManualClock::new();
        let (mut e, _) = FaultEngine::start_with_clock(&dir, h, Arc::new(clock.clone()))
            .await
            .expect("engine");
        let lease = Duration::from_secs(600);
        let spec = detour(&prefix, R2_B, Some(B_ADDR));
        let ops = e.describe(&spec).await.expect("describe");
        assert!(
            ops[1].contains(&format!("type unicast {prefix} via {R2_B} prefsrc {B_ADDR}")),
            "{ops:?}"
        );
        // Never a prefix the controller is in.
        e.set_protected(vec![format!("{A_ADDR}:8477").parse().expect("addr")]);
        let err = e.apply("ctl", &spec, lease).await.expect_err("covers the controller");
        assert!(err.to_string().contains(A_ADDR), "{err}");
        e.set_protected(Vec::new());
        // A gateway B has no link to: the kernel refuses, nothing is left.
        let err = e
            .apply("far", &detour(&prefix, "10.99.0.1", None), lease)
            .await
            .expect_err("unreachable gateway");
        assert!(
            err.to_string().contains("gateway 10.99.0.1 is not on a network"),
            "the error names the gateway: {err}"
        );
        assert_eq!(routes(b), before, "nothing left after a refused detour");

        e.apply("detour", &spec, lease).await.expect("apply");
        let got = route_get(b, A_ADDR);
        assert!(
            got.contains(&format!("via {R2_B}")) && got.contains(&format!("src {B_ADDR}")),
            "B -> A through R2, from B's own address: {got}"
        );
        let ours = b.exec_stdout("ip", ["route", "show", "proto", "71"]);
        assert!(
            ours.starts_with(&format!("{A_ADDR} via {R2_B}")),
            "graydar's route: {ours}"
        );
        assert!(reachable(b, A_ADDR), "A is still reachable, the long way");
        // The prefix is owned: a blackhole of it is refused.
        let err = e
            .apply(
                "bh",
                &FaultSpec::Blackhole {
                    prefix: prefix.clone(),
                    table: None,
                },
                lease,
            )
            .await
            .expect_err("the prefix has a route");
        assert!(err.to_string().contains("already has a route"), "{err}");
        e.revert("detour").await.expect("revert");
        assert_eq!(routes(b), before, "reverted exactly");

        // Left by a killed agent: applied, then the engine is gone.
        e.apply("kept", &spec, lease).await.expect("apply again");
        std::mem::forget(e);
    });
    assert!(route_get(&t.b, A_ADDR).contains(&format!("via {R2_B}")));
    start_agent_until_routes_are(&t.b, state.path(), &before);
    assert_eq!(routes(&t.b), before);
    assert!(route_get(&t.b, A_ADDR).contains("via 10.206.2.1"));
}

/// The library's `asymmetric-route` (runbooks/gamedays/asymmetric-route.yaml)
/// on real agents with the controller on its own management network: the
/// detour on B toward A's address through R2, B keeping its own source
/// address: `asymmetric_route` on B naming A (B → A crosses two routers,
/// A → B one), cleared after the revert, nothing unexpected, no route
/// left. Scaled to the fast probes (10 a second): a 20 s baseline, a 30 s
/// fault, 30 s to detect, 60 s to clear.
#[test]
fn the_library_asymmetric_route_game_day_passes_on_real_agents() {
    netns::require_root();
    let t = PathTopology::new("ra");
    let c = NetNs::new("rac");
    veth_pair(&c, "gc1", "10.207.1.1/24", &t.a, "gm0", "10.207.1.2/24");
    veth_pair(&c, "gc2", "10.207.2.1/24", &t.b, "gm0", "10.207.2.2/24");
    let before = routes(&t.b);
    let data = tempfile::tempdir().expect("controller data dir");
    let tokens = Tokens::random();
    let ctl = ControllerProcess::start(Some(&c), data.path(), &tokens);
    let cfg = |host: &str, ctl_ip: &str, addr: &str| {
        format!(
            r#"hostname = "{host}"

[controller]
url = "http://{ctl_ip}:8477"
token = "{token}"
report_interval = "1s"

[paths]
advertise = "{addr}"
{FAST_PROBES}
[disk]
ebpf = false

[incast]
enabled = false

# The detour's add and remove are two changes of the prefix; repeated runs
# (the detection bench) must not add up to a flap within the window.
[routes]
window = "20s"
"#,
            token = tokens.agent
        )
    };
    let (na, nb) = (t.a.name().to_owned(), t.b.name().to_owned());
    let _a = AgentProcess::start(Some(&t.a), &cfg(&na, "10.207.1.1", A_ADDR));
    let b = AgentProcess::start(Some(&t.b), &cfg(&nb, "10.207.2.1", B_ADDR));
    wait_until(Duration::from_secs(60), "B probes A over the mesh", || {
        (graydar_tests::prom::sum(
            &b.metrics(),
            "graydar_path_probes_delivered_total",
            &[("peer", na.as_str()), ("direction", "outbound")],
        ) > 40.0)
            .then_some(())
    });
    let (runs, judge) = detection_runs();
    for run_no in 1..=runs {
        wait_none_firing(&ctl, &tokens, Duration::from_secs(120));
        if run_no > 1 {
            std::thread::sleep(Duration::from_secs(21));
        }
        let mut spec = graydar_tests::gameday_fleet::library_spec("asymmetric-route");
        spec["targets"]["host"]["agents"] = serde_yaml::Value::Sequence(vec![nb.as_str().into()]);
        spec["targets"]["peer"]["agents"] = serde_yaml::Value::Sequence(vec![na.as_str().into()]);
        spec["steps"][0]["wait"]["duration"] = "20s".into();
        let step = &mut spec["steps"][1];
        step["fault"]["spec"]["prefix"] = format!("{A_ADDR}/32").into();
        step["fault"]["spec"]["via"] = R2_B.into();
        step["fault"]["spec"]["src"] = B_ADDR.into();
        step["fault"]["duration"] = "30s".into();
        step["expect"]["detect"][0]["within"] = "30s".into();
        step["expect"]["clear_within"] = "60s".into();
        let (run, out) = run_library(&ctl, &tokens, data.path(), "asymmetric-route", &spec, run_no);
        if judge {
            let d = assert_library_passed(&run, &out);
            assert_eq!(d.kind, Some(FindingKind::AsymmetricRoute), "{d:?}");
            assert_eq!(d.subject.as_deref(), Some(format!("peer {na}").as_str()), "{d:?}");
        }
        assert_eq!(routes(&t.b), before, "the detour is gone from B");
    }
}
