//! Fault engine on this host's kernel (root tier). This kernel has no
//! sch_netem: a netem fault must fail with an error naming the missing
//! config option and leave the qdisc tree exactly as it was. Trees that
//! cannot be restored exactly are refused before anything changes.

use graydar_agent::faults::netem::{Loss, NetemSpec};
use graydar_agent::faults::tc::{self, PriorRoot, TcError};
use graydar_tests::faults::{qdisc_tree, with_netlink};
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
