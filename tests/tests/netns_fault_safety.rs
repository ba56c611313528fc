//! Fault safety of the engine on this host's kernel (root tier), proven with
//! blackhole routes (which this kernel has; netem and dm are the VM's):
//! prefixes are canonical, every revert is verified before it is journaled,
//! leases run on the engine's monotonic clock, the controller's addresses
//! are never blackholed, and start-up recovery goes past what it cannot
//! revert and keeps retrying it.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use graydar_agent::faults::engine::{FaultEngine, FaultError};
use graydar_agent::faults::journal::{FILE_NAME, FaultRecord, Mechanism, Record};
use graydar_agent::faults::lease::ManualClock;
use graydar_agent::faults::mechanism::Restored;
use graydar_common::faults::FaultSpec;
use graydar_tests::faults::with_netlink;
use graydar_tests::netns::{self, NetNs, veth_pair};

const LEASE: Duration = Duration::from_secs(60);

fn blackhole(prefix: &str) -> FaultSpec {
    FaultSpec::Blackhole {
        prefix: prefix.into(),
        table: None,
    }
}

fn namespace(tag: &str, net: u8) -> NetNs {
    let a = NetNs::new(&format!("{tag}a"));
    let b = NetNs::new(&format!("{tag}b"));
    veth_pair(
        &a,
        "va",
        &format!("10.205.{net}.1/24"),
        &b,
        "vb",
        &format!("10.205.{net}.2/24"),
    );
    a
}

/// Every blackhole route of the namespace, IPv4 and IPv6, every table.
fn blackholes(ns: &NetNs) -> String {
    let v4 = ns.exec_stdout("ip", ["route", "show", "table", "all", "type", "blackhole"]);
    let v6 = ns.exec_stdout("ip", ["-6", "route", "show", "table", "all", "type", "blackhole"]);
    format!("{v4}{v6}")
}

fn journal_text(dir: &Path) -> String {
    std::fs::read_to_string(dir.join(FILE_NAME)).unwrap_or_default()
}

/// A journal as an agent that crashed left it: these intents, nothing after.
fn write_journal(dir: &Path, faults: &[FaultRecord]) {
    let lines: Vec<String> = faults
        .iter()
        .map(|f| serde_json::to_string(&Record::Intent { fault: f.clone() }).expect("json"))
        .collect();
    std::fs::write(dir.join(FILE_NAME), lines.join("\n") + "\n").expect("write the journal");
}

fn blackhole_record(id: &str, prefix: &str) -> FaultRecord {
    FaultRecord {
        id: id.into(),
        kind: Mechanism::Blackhole,
        target: prefix.into(),
        spec: serde_json::to_value(blackhole(prefix)).expect("json"),
        prior: serde_json::json!({"prefix": prefix, "table": 254}),
        lease_expires_unix: 1,
    }
}

#[test]
fn a_prefix_with_host_bits_is_refused_and_one_an_older_agent_journaled_is_removed() {
    netns::require_root();
    let a = namespace("fsh", 1);
    // An older agent accepted 2001:db8:5::1/64; the kernel installed the
    // masked prefix. Its journal still says ::1/64.
    a.ip(["-6", "route", "add", "blackhole", "2001:db8:5::/64", "proto", "71"]);
    let state = tempfile::tempdir().expect("state");
    write_journal(state.path(), &[blackhole_record("old-v6", "2001:db8:5::1/64")]);
    let dir = state.path().to_owned();
    let (recovered, refused) = with_netlink(&a, async move |h| {
        let (mut e, recovered) = FaultEngine::start(&dir, h).await.expect("engine");
        let refused = e.apply("v6", &blackhole("2001:db8:6::1/64"), LEASE).await;
        let recovered: Vec<_> = recovered.into_iter().map(|r| (r.id, r.result.ok())).collect();
        (recovered, refused)
    });
    assert_eq!(recovered, [("old-v6".to_owned(), Some(Restored::Restored))]);
    assert_eq!(blackholes(&a), "", "the older agent's route is gone");
    let err = refused.expect_err("host bits");
    assert!(
        matches!(err, FaultError::Spec(_)) && err.to_string().contains("2001:db8:6::/64"),
        "{err}"
    );
    assert!(
        !journal_text(state.path()).contains("\"v6\""),
        "nothing journaled for a refused spec"
    );
}

#[test]
fn a_revert_that_leaves_our_route_behind_is_not_journaled_and_is_retried() {
    netns::require_root();
    let a = namespace("fsv", 2);
    let state = tempfile::tempdir().expect("state");
    let dir = state.path().to_owned();
    let a2 = &a;
    let (first, reverting, second, active) = with_netlink(&a, async move |h| {
        let (mut e, _) = FaultEngine::start(&dir, h).await.expect("engine");
        e.apply("bh", &blackhole("10.205.20.0/24"), LEASE).await.expect("apply");
        // A second graydar-protocol blackhole for the prefix (another metric):
        // deleting "ours" once leaves a route of ours in the kernel.
        a2.ip([
            "route",
            "add",
            "blackhole",
            "10.205.20.0/24",
            "proto",
            "71",
            "metric",
            "100",
        ]);
        let first = e.revert("bh").await;
        let reverting = e.is_reverting("bh");
        let second = e.revert("bh").await;
        (first, reverting, second, e.active_ids())
    });
    let err = first.expect_err("a route of ours is still there");
    assert!(err.to_string().contains("still has graydar's route"), "{err}");
    assert!(reverting, "kept, and retried");
    second.expect("the retry removes the rest");
    assert!(active.is_empty(), "{active:?}");
    assert_eq!(blackholes(&a), "");
    let journal = journal_text(state.path());
    let reverted: Vec<&str> = journal.lines().filter(|l| l.contains("\"reverted\"")).collect();
    assert_eq!(
        reverted.len(),
        1,
        "journaled once, after the verified revert: {reverted:?}"
    );
}

#[test]
fn leases_end_by_the_engines_monotonic_clock() {
    netns::require_root();
    let a = namespace("fsl", 3);
    let state = tempfile::tempdir().expect("state");
    let dir = state.path().to_owned();
    let a2 = &a;
    with_netlink(&a, async move |h| {
        let clock = ManualClock::new();
        let (mut e, _) = FaultEngine::start_with_clock(&dir, h, Arc::new(clock.clone()))
            .await
            .expect("engine");
        e.apply("short", &blackhole("10.205.30.0/24"), Duration::from_secs(30))
            .await
            .expect("apply");
        e.apply("renewed", &blackhole("10.205.31.0/24"), Duration::from_secs(30))
            .await
            .expect("apply");
        // The wall clock plays no part: only this clock moves the leases.
        clock.advance(Duration::from_secs(20));
        e.renew("renewed", Duration::from_secs(30)).expect("renew");
        clock.advance(Duration::from_secs(9));
        assert!(e.expire().await.is_empty(), "29 s into a 30 s lease");
        assert!(blackholes(a2).contains("10.205.30.0/24"));
        clock.advance(Duration::from_secs(1));
        assert_eq!(e.expire().await, ["short"]);
        assert!(!blackholes(a2).contains("10.205.30.0/24"));
        clock.advance(Duration::from_secs(19));
        assert!(e.expire().await.is_empty(), "renewed at 20 s for 30 s: ends at 50 s");
        clock.advance(Duration::from_secs(1));
        assert_eq!(e.expire().await, ["renewed"]);
    });
    assert_eq!(blackholes(&a), "");
}

#[test]
fn a_blackhole_over_the_controllers_address_is_refused() {
    netns::require_root();
    let a = namespace("fsc", 4);
    let state = tempfile::tempdir().expect("state");
    let dir = state.path().to_owned();
    let results = with_netlink(&a, async move |h| {
        let (mut e, _) = FaultEngine::start(&dir, h).await.expect("engine");
        e.set_protected(vec![
            "10.205.40.7:8477".parse().expect("addr"),
            "[fd00:5::1]:8477".parse().expect("addr"),
        ]);
        let mut out = Vec::new();
        for prefix in ["10.205.0.0/16", "10.205.40.7/32", "fd00::/16"] {
            out.push((prefix, e.apply(prefix, &blackhole(prefix), LEASE).await));
        }
        let beside = e.apply("beside", &blackhole("10.205.41.0/24"), LEASE).await;
        let reverted = e.revert("beside").await;
        (out, beside, reverted)
    });
    let (refused, beside, reverted) = results;
    for (prefix, r) in refused {
        let err = r.expect_err(prefix);
        assert!(
            matches!(err, FaultError::CoversController { .. }) && err.to_string().contains("controller"),
            "{prefix}: {err}"
        );
    }
    beside.expect("a prefix beside the controller");
    reverted.expect("revert");
    assert_eq!(blackholes(&a), "");
    assert!(
        !journal_text(state.path()).contains("10.205.0.0/16"),
        "nothing journaled for a refused fault"
    );
}

#[test]
fn recovery_goes_past_an_entry_it_cannot_revert_and_keeps_retrying_it() {
    netns::require_root();
    let a = namespace("fsr", 5);
    a.ip(["route", "add", "blackhole", "10.205.50.0/24", "proto", "71"]);
    let state = tempfile::tempdir().expect("state");
    let mut unknown = blackhole_record("u1", "eth9");
    unknown.kind = Mechanism::Unknown("qdisc_v9".into());
    write_journal(state.path(), &[unknown, blackhole_record("bh-left", "10.205.50.0/24")]);
    let dir = state.path().to_owned();
    let a2 = &a;
    let recovered_again = with_netlink(&a, async move |h| {
        let clock = ManualClock::new();
        let (mut e, recovered) = FaultEngine::start_with_clock(&dir, h.clone(), Arc::new(clock.clone()))
            .await
            .expect("the engine starts despite an entry it cannot revert");
        let by_id: Vec<(String, bool)> = recovered.iter().map(|r| (r.id.clone(), r.result.is_ok())).collect();
        assert_eq!(by_id, [("u1".to_owned(), false), ("bh-left".to_owned(), true)]);
        let err = recovered[0].result.as_ref().expect_err("unknown kind");
        assert!(err.to_string().contains("qdisc_v9"), "{err}");
        assert_eq!(blackholes(a2), "", "the entry after it was reverted");
        assert_eq!(e.active_ids(), ["u1"], "kept and reported");
        assert!(e.is_reverting("u1"));
        assert!(matches!(e.renew("u1", LEASE), Err(FaultError::Reverting { .. })));
        // The engine runs for the others.
        e.apply("new", &blackhole("10.205.51.0/24"), LEASE)
            .await
            .expect("apply");
        e.revert("new").await.expect("revert");
        // Retried on the timer (and failing again, for this kind).
        clock.advance(Duration::from_secs(1));
        assert!(e.expire().await.is_empty());
        assert!(e.is_reverting("u1"));
        drop(e);
        let (_e, again) = FaultEngine::start(&dir, h).await.expect("restart");
        again.into_iter().map(|r| r.id).collect::<Vec<_>>()
    });
    assert_eq!(recovered_again, ["u1"], "still pending in the journal after a restart");
}
