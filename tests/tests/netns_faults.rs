//! Fault engine on this host's kernel (root tier). This kernel has no
//! sch_netem: a netem fault must fail with an error naming the missing
//! config option and leave the qdisc tree exactly as it was. Trees that
//! cannot be restored exactly are refused before anything changes.

use graydar_agent::faults::netem::{Loss, NetemSpec};
use graydar_agent::faults::tc::{self, PriorRoot, TcError};
use graydar_tests::faults::{qdisc_tree, start_agent_until_routes_are, with_netlink};
use graydar_tests::netns::{self, NetNs, veth_pair};

fn host_has_netem() -> bool {
    std::path::Path::new("/sys/module/sch_netem").exists()
        || std::process::Command::new("modprobe")
            .args(["-q", "sch_netem"])
            .status()
            .is_ok_and(|s| s.success())
}

fn spec() -> NetemSpec {
    NetemSpec {
        delay_ms: 100.0,
        loss: Some(Loss::Random {
            percent: 10.0,
            correlation: 0.0,
        }),
        ..Default::default()
    }
}

#[test]
fn netem_without_sch_netem_fails_naming_the_config_option_and_changes_nothing() {
    netns::require_root();
    assert!(
        !host_has_netem(),
        "this host kernel has sch_netem; this test proves the error path on kernels without it \
         (the VM tier covers kernels with it)"
    );
    let a = NetNs::new("fna");
    let b = NetNs::new("fnb");
    veth_pair(&a, "va", "10.203.9.1/24", &b, "vb", "10.203.9.2/24");
    let ifindex = a.ifindex("va");
    for prior_setup in [
        None,
        Some([
            "qdisc", "add", "dev", "va", "root", "handle", "8001:", "tbf", "rate", "10mbit", "burst", "32kb",
            "latency", "50ms",
        ]),
    ] {
        if let Some(args) = prior_setup {
            a.exec("tc", args);
        }
        let before = qdisc_tree(&a, "va");
        let err = with_netlink(&a, async move |h| {
            let prior = tc::snapshot(&h, ifindex).await.expect("snapshot");
            tc::apply_netem(&h, ifindex, &spec()).await.expect_err("no netem here");
            // Reverting what was never applied is a no-op.
            tc::revert_netem(&h, ifindex, &prior).await.expect("idempotent revert");
            tc::apply_netem(&h, ifindex, &spec()).await.expect_err("still no netem")
        });
        assert!(matches!(err, TcError::NoNetem), "{err:?}");
        let msg = err.to_string();
        assert!(
            msg.contains("CONFIG_NET_SCH_NETEM") && msg.contains("sch_netem"),
            "{msg}"
        );
        assert_eq!(
            qdisc_tree(&a, "va"),
            before,
            "a failed fault must leave the qdisc tree as it was"
        );
    }
}

#[test]
fn a_root_qdisc_with_classes_is_refused_before_anything_changes() {
    netns::require_root();
    let a = NetNs::new("fca");
    let b = NetNs::new("fcb");
    veth_pair(&a, "va", "10.203.10.1/24", &b, "vb", "10.203.10.2/24");
    a.exec(
        "tc",
        [
            "qdisc", "add", "dev", "va", "root", "handle", "1:", "htb", "default", "10",
        ],
    );
    a.exec(
        "tc",
        [
            "class", "add", "dev", "va", "parent", "1:", "classid", "1:10", "htb", "rate", "100mbit",
        ],
    );
    let before = qdisc_tree(&a, "va");
    let ifindex = a.ifindex("va");
    let err = with_netlink(&a, async move |h| {
        tc::snapshot(&h, ifindex).await.expect_err("must refuse")
    });
    let msg = err.to_string();
    assert!(msg.contains("htb") && msg.contains("class"), "{msg}");
    assert_eq!(qdisc_tree(&a, "va"), before);

    // No classes, but a filter on the root is configuration too.
    a.exec("tc", ["qdisc", "del", "dev", "va", "root"]);
    a.exec("tc", ["qdisc", "add", "dev", "va", "root", "handle", "2:", "htb"]);
    a.exec(
        "tc",
        [
            "filter", "add", "dev", "va", "parent", "2:", "protocol", "ip", "u32", "match", "ip", "dport", "80",
            "0xffff", "flowid", "2:1",
        ],
    );
    let before = qdisc_tree(&a, "va");
    let err = with_netlink(&a, async move |h| {
        tc::snapshot(&h, ifindex).await.expect_err("must refuse")
    });
    assert!(err.to_string().contains("filter"), "{err}");
    assert_eq!(qdisc_tree(&a, "va"), before);
}

#[test]
fn snapshot_tells_a_kernel_default_root_from_a_configured_one() {
    netns::require_root();
    let a = NetNs::new("fsa");
    let b = NetNs::new("fsb");
    veth_pair(&a, "va", "10.203.11.1/24", &b, "vb", "10.203.11.2/24");
    let ifindex = a.ifindex("va");
    let prior = with_netlink(&a, async move |h| tc::snapshot(&h, ifindex).await.expect("snapshot"));
    assert!(matches!(prior, PriorRoot::Default { .. }), "{prior:?}");
    a.exec(
        "tc",
        [
            "qdisc", "add", "dev", "va", "root", "handle", "8001:", "tbf", "rate", "10mbit", "burst", "32kb",
            "latency", "50ms",
        ],
    );
    let prior = with_netlink(&a, async move |h| tc::snapshot(&h, ifindex).await.expect("snapshot"));
    match prior {
        PriorRoot::Configured {
            kind,
            handle,
            message_hex,
        } => {
            assert_eq!((kind.as_str(), handle.as_str()), ("tbf", "8001:"));
            assert!(!message_hex.is_empty());
        }
        other => panic!("expected a configured tbf root, got {other:?}"),
    }
}

/// The restore half of revert, on this kernel: a configured root (tbf here)
/// replaced by another qdisc comes back with its handle and options.
#[test]
fn a_configured_root_qdisc_is_restored_from_its_snapshot() {
    netns::require_root();
    let a = NetNs::new("fra");
    let b = NetNs::new("frb");
    veth_pair(&a, "va", "10.203.12.1/24", &b, "vb", "10.203.12.2/24");
    let ifindex = a.ifindex("va");
    a.exec(
        "tc",
        [
            "qdisc", "add", "dev", "va", "root", "handle", "8001:", "tbf", "rate", "10mbit", "burst", "32kb",
            "latency", "50ms",
        ],
    );
    let before = qdisc_tree(&a, "va");
    let prior = with_netlink(&a, async move |h| tc::snapshot(&h, ifindex).await.expect("snapshot"));
    // Stand-in for the fault (no netem on this kernel): another root qdisc.
    a.exec(
        "tc",
        [
            "qdisc", "replace", "dev", "va", "root", "handle", "4744:", "pfifo", "limit", "10",
        ],
    );
    assert_ne!(qdisc_tree(&a, "va"), before);
    with_netlink(&a, async move |h| {
        tc::restore_prior(&h, ifindex, &prior).await.expect("restore")
    });
    assert_eq!(qdisc_tree(&a, "va"), before);
}

/// The engine on this kernel: a netem fault fails cleanly (journal: Failed,
/// nothing pending), unknown interfaces and invalid specs are refused before
/// the journal or the kernel is touched.
#[test]
fn the_engine_refuses_cleanly_and_leaves_nothing_pending() {
    use graydar_agent::faults::engine::{FaultEngine, FaultError, NetemFault};
    netns::require_root();
    assert!(!host_has_netem(), "this test expects a kernel without sch_netem");
    let a = NetNs::new("fea");
    let b = NetNs::new("feb");
    veth_pair(&a, "va", "10.203.14.1/24", &b, "vb", "10.203.14.2/24");
    let state = tempfile::tempdir().expect("state dir");
    let dir = state.path().to_owned();
    let before = qdisc_tree(&a, "va");
    let fault = |id: &str, iface: &str, spec: NetemSpec| NetemFault {
        id: id.into(),
        interface: iface.into(),
        spec,
        lease: std::time::Duration::from_secs(60),
    };
    let errors = with_netlink(&a, async move |h| {
        let (mut engine, recovered) = FaultEngine::start(&dir, h).await.expect("engine");
        assert!(recovered.is_empty());
        let no_netem = engine
            .apply_netem(fault("f1", "va", spec()))
            .await
            .expect_err("no netem");
        let unknown = engine
            .apply_netem(fault("f2", "nosuchif0", spec()))
            .await
            .expect_err("unknown interface");
        let bad = NetemSpec {
            delay_ms: -1.0,
            ..Default::default()
        };
        let invalid = engine
            .apply_netem(fault("f3", "va", bad))
            .await
            .expect_err("invalid spec");
        assert!(engine.active_ids().is_empty());
        (no_netem, unknown, invalid)
    });
    assert!(errors.0.to_string().contains("CONFIG_NET_SCH_NETEM"), "{}", errors.0);
    assert!(
        matches!(errors.1, FaultError::UnknownInterface(ref i) if i == "nosuchif0"),
        "{}",
        errors.1
    );
    assert!(errors.2.to_string().contains("delay_ms"), "{}", errors.2);
    assert_eq!(qdisc_tree(&a, "va"), before);
    let (_j, rec) = graydar_agent::faults::journal::Journal::open(state.path()).expect("journal");
    assert!(
        rec.pending.is_empty(),
        "a failed fault must not stay pending: {:?}",
        rec.pending
    );
}

// ---------------------------------------------------------------------------
// Scoped / ingress netem and blackhole routes on this kernel.

use graydar_common::faults::{Direction, FaultSpec, Scope};
use graydar_tests::faults::{links_named, qdisc_dump};

fn scoped(direction: Direction, cidrs: &[&str]) -> FaultSpec {
    FaultSpec::Netem {
        interface: "va".into(),
        direction,
        scope: Scope {
            dst_cidrs: cidrs.iter().map(|c| c.to_string()).collect(),
            ..Default::default()
        },
        netem: spec(),
    }
}

/// This kernel lacks sch_netem, sch_prio and cls_flower: scoped and
/// ingress faults fail naming the config options, before the journal or
/// the kernel is touched; nothing is left (no ifb, qdiscs as before).
#[test]
fn scoped_and_ingress_netem_fail_naming_the_missing_options_and_leave_nothing() {
    use graydar_agent::faults::engine::FaultEngine;
    netns::require_root();
    assert!(!host_has_netem(), "this test expects a kernel without sch_netem");
    let a = NetNs::new("fsc");
    let b = NetNs::new("fsd");
    veth_pair(&a, "va", "10.203.15.1/24", &b, "vb", "10.203.15.2/24");
    let before = qdisc_dump(&a, "va");
    let state = tempfile::tempdir().expect("state dir");
    let dir = state.path().to_owned();
    let errors = with_netlink(&a, async move |h| {
        let (mut engine, _) = FaultEngine::start(&dir, h).await.expect("engine");
        let mut out = Vec::new();
        for (id, s) in [
            ("scoped", scoped(Direction::Egress, &["10.203.15.0/24"])),
            ("ingress", scoped(Direction::Ingress, &[])),
            ("scoped-ingress", scoped(Direction::Ingress, &["10.203.15.0/24"])),
        ] {
            let ops = engine.describe(&s).await.expect("describe works without the modules");
            assert!(ops.last().is_some_and(|o| o.starts_with("would fail")), "{ops:?}");
            out.push(
                engine
                    .apply(id, &s, std::time::Duration::from_secs(60))
                    .await
                    .expect_err(id)
                    .to_string(),
            );
        }
        // Whole interface with the controller protected: the prio tree too.
        engine.set_protected(vec!["192.0.2.1:8477".parse().expect("addr")]);
        let whole = scoped(Direction::Egress, &[]);
        out.push(
            engine
                .apply("whole", &whole, std::time::Duration::from_secs(60))
                .await
                .expect_err("whole")
                .to_string(),
        );
        assert!(engine.active_ids().is_empty());
        out
    });
    for e in &errors {
        assert!(e.contains("CONFIG_NET_SCH_NETEM"), "{e}");
    }
    assert!(
        errors[0].contains("CONFIG_NET_SCH_PRIO") && errors[0].contains("CONFIG_NET_CLS_FLOWER"),
        "{}",
        errors[0]
    );
    assert!(errors[1].contains("CONFIG_NET_CLS_FLOWER"), "{}", errors[1]);
    assert!(!errors[1].contains("CONFIG_IFB"), "this kernel has ifb: {}", errors[1]);
    assert!(errors[3].contains("CONFIG_NET_SCH_PRIO"), "{}", errors[3]);
    assert!(links_named(&a, "gd-ifb").is_empty(), "no ifb left");
    assert_eq!(qdisc_dump(&a, "va"), before, "qdiscs unchanged");
    let (_j, rec) = graydar_agent::faults::journal::Journal::open(state.path()).expect("journal");
    assert!(rec.pending.is_empty(), "{:?}", rec.pending);
}

/// The kernel's own refusal, past the capability check: an ingress tree is
/// built step by step (ifb, then prio on it, which this kernel refuses); the
/// error names CONFIG_NET_SCH_PRIO and the rollback deletes the ifb.
#[test]
fn a_kernel_refusal_part_way_is_named_and_rolled_back() {
    use graydar_agent::faults::tree::{self, IngressPrior, TreePrior};
    netns::require_root();
    let a = NetNs::new("frb");
    let b = NetNs::new("frc");
    veth_pair(&a, "va", "10.203.16.1/24", &b, "vb", "10.203.16.2/24");
    let ifindex = a.ifindex("va");
    let before = qdisc_dump(&a, "va");
    let err = with_netlink(&a, async move |h| {
        let prior = TreePrior {
            root: None,
            ingress: Some(IngressPrior {
                ifb: tree::free_ifb_name(&h).await.expect("name"),
                clsact_existed: false,
                pref: tree::INGRESS_PREF,
            }),
        };
        let plan = tree::plan(
            "va",
            Direction::Ingress,
            &Scope {
                dst_cidrs: vec!["10.203.16.0/24".into()],
                ..Default::default()
            },
            &spec(),
            &[],
            prior.ingress.as_ref().map(|i| i.ifb.clone()),
        )
        .expect("plan");
        let err = tree::apply(&h, ifindex, &plan, &prior).await.expect_err("no prio here");
        tree::revert(&h, Some(ifindex), &prior).await.expect("rollback");
        err
    });
    assert!(err.to_string().contains("CONFIG_NET_SCH_PRIO"), "{err}");
    assert!(links_named(&a, "gd-ifb").is_empty(), "the ifb created first is gone");
    assert_eq!(qdisc_dump(&a, "va"), before);
}

fn blackhole(prefix: &str) -> FaultSpec {
    FaultSpec::Blackhole {
        prefix: prefix.into(),
        table: None,
    }
}

/// b answers on 10.203.17.2 and on 10.204.17.{2,130}, routed through va.
fn blackhole_pair(tag: &str) -> (NetNs, NetNs) {
    let a = NetNs::new(&format!("{tag}a"));
    let b = NetNs::new(&format!("{tag}b"));
    veth_pair(&a, "va", "10.203.17.1/24", &b, "vb", "10.203.17.2/24");
    b.ip(["addr", "add", "10.204.17.2/24", "dev", "vb"]);
    b.ip(["addr", "add", "10.204.17.130/24", "dev", "vb"]);
    a.ip(["route", "add", "10.204.17.0/24", "via", "10.203.17.2"]);
    (a, b)
}

fn reachable(ns: &NetNs, dst: &str) -> bool {
    netns::try_run("ip", ["netns", "exec", ns.name(), "ping", "-c", "1", "-W", "1", dst])
        .status
        .success()
}

#[test]
fn a_blackhole_route_blocks_its_prefix_only_and_reverts_exactly() {
    use graydar_agent::faults::engine::FaultEngine;
    netns::require_root();
    let (a, _b) = blackhole_pair("fbh");
    let routes_before = a.exec_stdout("ip", ["route", "show", "table", "all"]);
    assert!(reachable(&a, "10.204.17.130") && reachable(&a, "10.204.17.2"));
    let state = tempfile::tempdir().expect("state");
    let dir = state.path().to_owned();
    let a2 = &a;
    with_netlink(&a, async move |h| {
        let (mut e, _) = FaultEngine::start(&dir, h).await.expect("engine");
        let lease = std::time::Duration::from_secs(60);
        let ops = e.describe(&blackhole("10.204.17.128/25")).await.expect("describe");
        assert!(
            ops[1].starts_with("RTM_NEWROUTE") && ops[1].contains("blackhole 10.204.17.128/25"),
            "{ops:?}"
        );
        // The identical prefix exists (via b): refused, nothing changes.
        let err = e
            .apply("dup", &blackhole("10.204.17.0/24"), lease)
            .await
            .expect_err("exists");
        assert!(err.to_string().contains("already has a route"), "{err}");
        e.apply("bh-1", &blackhole("10.204.17.128/25"), lease)
            .await
            .expect("apply");
        e.apply("bh-6", &blackhole("2001:db8:17::/48"), lease)
            .await
            .expect("apply ipv6");
        let shown = a2.exec_stdout("ip", ["route", "show", "type", "blackhole"]);
        assert!(
            shown.contains("10.204.17.128/25") && shown.contains("proto 71"),
            "{shown}"
        );
        assert!(
            a2.exec_stdout("ip", ["-6", "route", "show", "type", "blackhole"])
                .contains("2001:db8:17::/48")
        );
        assert!(!reachable(a2, "10.204.17.130"), "the blackholed prefix is cut");
        assert!(reachable(a2, "10.204.17.2"), "the rest of the /24 is not");
        assert!(reachable(a2, "10.203.17.2"));
        e.revert("bh-1").await.expect("revert");
        e.revert("bh-6").await.expect("revert ipv6");
    });
    assert!(reachable(&a, "10.204.17.130"));
    assert_eq!(a.exec_stdout("ip", ["route", "show", "table", "all"]), routes_before);
}

/// A blackhole left by a killed agent (engine gone without revert, as on
/// SIGKILL; the agent binary cannot be handed a fault without a controller
/// here) is removed by the real agent binary at its next start.
#[test]
fn a_blackhole_left_by_a_killed_agent_is_removed_at_restart() {
    use graydar_agent::faults::engine::FaultEngine;
    netns::require_root();
    let (a, _b) = blackhole_pair("fbk");
    let routes_before = a.exec_stdout("ip", ["route", "show", "table", "all"]);
    let state = tempfile::tempdir().expect("state");
    let dir = state.path().to_owned();
    with_netlink(&a, async move |h| {
        let (mut e, _) = FaultEngine::start(&dir, h).await.expect("engine");
        e.apply(
            "bh-k",
            &blackhole("10.204.17.128/25"),
            std::time::Duration::from_secs(3600),
        )
        .await
        .expect("apply");
        std::mem::forget(e);
    });
    assert!(!reachable(&a, "10.204.17.130"));
    start_agent_until_routes_are(&a, state.path(), &routes_before);
    assert!(reachable(&a, "10.204.17.130"));
    assert_eq!(a.exec_stdout("ip", ["route", "show", "table", "all"]), routes_before);
}

fn route_flap(prefix: &str, down: u32, up: u32) -> FaultSpec {
    FaultSpec::RouteFlap {
        prefix: prefix.into(),
        table: None,
        down_seconds: down,
        up_seconds: up,
    }
}

fn has_blackhole(ns: &NetNs, prefix: &str) -> bool {
    ns.exec_stdout("ip", ["route", "show", "type", "blackhole"])
        .contains(prefix)
}

/// A route flap on the engine's own clock: withdrawn (blackhole) at the
/// apply, announced after `down`, withdrawn again after `up`; refused for
/// a prefix covering the controller; reverted to exactly the routes before,
/// whichever phase it is in.
#[test]
fn a_route_flap_withdraws_and_announces_on_schedule_and_reverts_exactly() {
    use graydar_agent::faults::engine::FaultEngine;
    use graydar_agent::faults::lease::ManualClock;
    use std::sync::Arc;
    use std::time::Duration;
    netns::require_root();
    let (a, _b) = blackhole_pair("frf");
    let routes_before = a.exec_stdout("ip", ["route", "show", "table", "all"]);
    let state = tempfile::tempdir().expect("state");
    let dir = state.path().to_owned();
    let a2 = &a;
    with_netlink(&a, async move |h| {
        let clock = ManualClock::new();
        let (mut e, _) = FaultEngine::start_with_clock(&dir, h, Arc::new(clock.clone()))
            .await
            .expect("engine");
        let lease = Duration::from_secs(600);
        let spec = route_flap("10.204.17.128/25", 2, 3);
        let ops = e.describe(&spec).await.expect("describe");
        assert!(
            ops.iter().any(|o| o.contains("then every 5 s")) && ops[1].contains("blackhole 10.204.17.128/25"),
            "{ops:?}"
        );
        // Never a prefix the controller is in.
        e.set_protected(vec!["10.204.17.130:8477".parse().expect("addr")]);
        let err = e.apply("ctl", &spec, lease).await.expect_err("covers the controller");
        assert!(err.to_string().contains("10.204.17.130"), "{err}");
        assert!(!has_blackhole(a2, "10.204.17.128/25"));
        e.set_protected(Vec::new());

        e.apply("flap", &spec, lease).await.expect("apply");
        let mut seen = vec![has_blackhole(a2, "10.204.17.128/25")];
        for step in [1_900, 200, 2_800, 200, 1_800, 200] {
            clock.advance(Duration::from_millis(step));
            assert!(e.expire().await.is_empty(), "nothing expires");
            seen.push(has_blackhole(a2, "10.204.17.128/25"));
        }
        // t = 0, 1.9, 2.1, 4.9, 5.1, 6.9, 7.1 s: in, in, out, out, in, in, out.
        assert_eq!(seen, [true, true, false, false, true, true, false]);
        assert!(reachable(a2, "10.204.17.130"), "announced: reachable again");
        clock.advance(Duration::from_secs(3));
        e.expire().await;
        assert!(has_blackhole(a2, "10.204.17.128/25"));
        assert!(!reachable(a2, "10.204.17.130"), "withdrawn: cut");
        e.revert("flap").await.expect("revert while withdrawn");
        assert!(!has_blackhole(a2, "10.204.17.128/25"));
        // Reverted while announced: nothing to remove, nothing left.
        e.apply("flap-2", &spec, lease).await.expect("apply again");
        clock.advance(Duration::from_millis(2_100));
        e.expire().await;
        assert!(!has_blackhole(a2, "10.204.17.128/25"));
        e.revert("flap-2").await.expect("revert while announced");
    });
    assert!(reachable(&a, "10.204.17.130"));
    assert_eq!(a.exec_stdout("ip", ["route", "show", "table", "all"]), routes_before);
}

/// A route flap left withdrawn by a killed agent is removed by the real
/// agent binary at its next start (journaled as `route_flap`).
#[test]
fn a_route_flap_left_by_a_killed_agent_is_removed_at_restart() {
    use graydar_agent::faults::engine::FaultEngine;
    netns::require_root();
    let (a, _b) = blackhole_pair("frk");
    let routes_before = a.exec_stdout("ip", ["route", "show", "table", "all"]);
    let state = tempfile::tempdir().expect("state");
    let dir = state.path().to_owned();
    with_netlink(&a, async move |h| {
        let (mut e, _) = FaultEngine::start(&dir, h).await.expect("engine");
        e.apply(
            "flap-k",
            &route_flap("10.204.17.128/25", 600, 600),
            std::time::Duration::from_secs(3600),
        )
        .await
        .expect("apply");
        std::mem::forget(e);
    });
    assert!(has_blackhole(&a, "10.204.17.128/25"));
    start_agent_until_routes_are(&a, state.path(), &routes_before);
    assert_eq!(a.exec_stdout("ip", ["route", "show", "table", "all"]), routes_before);
}
