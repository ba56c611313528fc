//! Root/netns tier for the path-probe mesh: two real agents in namespaces A
//! and B probing each other through routers R1 and R2 (tests/src/topology.rs),
//! real route changes and nftables rules in one direction only.
//!
//! Probes every 100 ms (config) so each test takes seconds, except the quiet
//! one, which watches the untouched topology for the full two minutes.
//! The `ipv6_*` tests run the same mesh over IPv6 only (tests/src/topology.rs
//! `PathTopology6`): hop counts from IPV6_RECVHOPLIMIT, an ip6 drop in R1.
//! All traffic stays inside the namespaces the tests create (10.206.0.0/16,
//! fd00:206::/32, controller network 10.207.0.0/16).

use std::time::{Duration, Instant};

use graydar_common::api::{Finding, FindingKind, FindingState};
use graydar_common::paths::PathMatrix;
use graydar_tests::agent::AgentProcess;
use graydar_tests::controller::{ControllerProcess, Tokens};
use graydar_tests::netns::{self, NetNs, veth_pair};
use graydar_tests::prom;
use graydar_tests::topology::{A_ADDR, A6_ADDR, B_ADDR, B6_ADDR, PathTopology, PathTopology6};
use graydar_tests::topology::{evidence_number as number, evidence_text as text, path_findings};

const FIRE_TIMEOUT: Duration = Duration::from_secs(60);
/// The issue's bound for asymmetric_connectivity.
const CONNECTIVITY_BOUND: Duration = Duration::from_secs(10);
const QUIET: Duration = Duration::from_secs(120);

/// `[paths]` for tests: 10 probes/s, short windows, 2-of-3 hysteresis.
/// Static peers share the test key file; with none, the keys come from the
/// controller (`extra`).
fn paths_config(hostname: &str, peers: &[String], extra: &str) -> String {
    let key_file = if peers.is_empty() {
        String::new()
    } else {
        format!("key_file = {:?}\n", graydar_tests::agent::mesh_key_file())
    };
    let peers: Vec<String> = peers.iter().map(|p| format!("{p:?}")).collect();
    format!(
        r#"hostname = "{hostname}"

[paths]
{key_file}interval = "100ms"
peers = [{}]
grace = "500ms"
loss_window = "10s"
connectivity_window = "2s"
latency_window = "5s"
min_probes = 30
fire_windows = 2
of_windows = 3
resolve_windows = 5
{extra}
"#,
        peers.join(", ")
    )
}

fn agents<'t>(t: &'t PathTopology) -> (AgentProcess<'t>, AgentProcess<'t>) {
    let (na, nb) = (t.a.name(), t.b.name());
    let a = AgentProcess::start(Some(&t.a), &paths_config(na, &[format!("{nb}={B_ADDR}")], ""));
    let b = AgentProcess::start(Some(&t.b), &paths_config(nb, &[format!("{na}={A_ADDR}")], ""));
    (a, b)
}

fn metric(agent: &AgentProcess, name: &str, labels: &[(&str, &str)]) -> f64 {
    prom::sum(&agent.metrics(), name, labels)
}

/// Waits until both directions deliver and both hop counts are known.
fn wait_mesh_up(a: &AgentProcess, b: &AgentProcess, peer_of_a: &str, peer_of_b: &str) {
    for (ag, peer) in [(a, peer_of_a), (b, peer_of_b)] {
        ag.wait_for(
            Duration::from_secs(20),
            "probes delivered both ways, hop counts known",
            |ag| {
                let m = ag.metrics();
                ["outbound", "inbound"].iter().all(|d| {
                    prom::sum(
                        &m,
                        "graydar_path_probes_delivered_total",
                        &[("peer", peer), ("direction", d)],
                    ) > 20.0
                        && !prom::find(&m, "graydar_path_hops", &[("peer", peer), ("direction", d)]).is_empty()
                })
            },
        );
    }
}

/// Waits until `ag` has a firing asymmetric_route toward `peer` carrying
/// both traceroutes, and returns it.
fn wait_asymmetric_route(ag: &AgentProcess, peer: &str, what: &str) -> Finding {
    let subject = format!("peer {peer}");
    let mut found = None;
    ag.wait_for(FIRE_TIMEOUT, what, |ag| {
        let f = ag.finding(FindingKind::AsymmetricRoute, &subject);
        let ok = f.as_ref().is_some_and(|f| {
            f.state == FindingState::Firing
                && !text(f, "traceroute_fwd").is_empty()
                && !text(f, "traceroute_rev").is_empty()
        });
        if ok {
            found = f;
        }
        ok
    });
    found.expect("finding")
}

#[test]
fn route_detour_one_way_is_an_asymmetric_route_with_both_hop_lists() {
    netns::require_root();
    let t = PathTopology::new("pr");
    let (a, b) = agents(&t);
    let (na, nb) = (t.a.name().to_owned(), t.b.name().to_owned());
    wait_mesh_up(&a, &b, &nb, &na);
    for (ag, peer) in [(&a, &nb), (&b, &na)] {
        for d in ["outbound", "inbound"] {
            assert_eq!(
                metric(ag, "graydar_path_hops", &[("peer", peer), ("direction", d)]),
                1.0,
                "one router each way before the change"
            );
        }
    }
    assert!(path_findings(&a).is_empty() && path_findings(&b).is_empty());

    t.route_b_to_a_via_r2();
    let f = wait_asymmetric_route(
        &b,
        &na,
        "asymmetric_route on B with both hop counts and both traceroutes",
    );
    eprintln!("finding: {} | evidence {:?}", f.summary, f.evidence);
    assert_eq!(number(&f, "hops_fwd"), Some(2.0), "B -> A: R2 and R1");
    assert_eq!(number(&f, "hops_rev"), Some(1.0), "A -> B: R1");
    // B's Paris traceroute to A: R2, R1, then A itself; A's to B: R1, then B.
    // (Routers answer from the address of their route back to the sender.)
    let fwd = text(&f, "traceroute_fwd");
    let rev = text(&f, "traceroute_rev");
    assert!(
        (fwd.starts_with("1 10.206.3.2 ") || fwd.starts_with("1 10.206.4.1 "))
            && fwd.contains(" 2 10.206.")
            && fwd.contains(&format!("3 {A_ADDR} ")),
        "{fwd}"
    );
    assert!(
        rev.starts_with("1 10.206.1.1 ") && rev.contains(&format!("2 {B_ADDR} ")),
        "{rev}"
    );
    assert!(f.summary.contains("2 hops"), "{}", f.summary);
    // The pair is reported once: by the source of the longer direction.
    assert!(
        a.finding(FindingKind::AsymmetricRoute, &format!("peer {nb}")).is_none(),
        "A does not report the same pair"
    );
}

#[test]
fn one_direction_blackholed_is_asymmetric_connectivity_naming_the_direction() {
    netns::require_root();
    let t = PathTopology::new("pc");
    let (a, b) = agents(&t);
    let (na, nb) = (t.a.name().to_owned(), t.b.name().to_owned());
    wait_mesh_up(&a, &b, &nb, &na);

    // Everything A -> B dies at R1; B -> A still flows.
    t.r1_forward_rule(&["ip", "saddr", A_ADDR, "ip", "daddr", B_ADDR, "counter", "drop"]);
    let start = Instant::now();
    let subject = format!("peer {nb}");
    a.wait_for(CONNECTIVITY_BOUND, "asymmetric_connectivity on A within 10 s", |ag| {
        ag.finding_in_state(FindingKind::AsymmetricConnectivity, &subject, FindingState::Firing)
    });
    let took = start.elapsed();
    let f = a
        .finding(FindingKind::AsymmetricConnectivity, &subject)
        .expect("finding");
    eprintln!(
        "asymmetric_connectivity after {took:?}: {} | {:?}",
        f.summary, f.evidence
    );
    assert_eq!(text(&f, "direction"), format!("{na} -> {nb}"));
    assert!(number(&f, "window_delivered_rev").is_some_and(|n| n > 0.0));
    assert_eq!(number(&f, "window_delivered_fwd"), Some(0.0));
    assert!(
        a.finding(FindingKind::OneWayLoss, &subject).is_none(),
        "a blackout is not reported as one_way_loss too"
    );
    assert!(
        path_findings(&b).is_empty(),
        "B sees A silent, which is not asymmetric: {:?}",
        path_findings(&b)
    );

    // Restored: it resolves, and the blackout's losses do not turn into one_way_loss.
    t.r1_flush();
    a.wait_for(Duration::from_secs(30), "asymmetric_connectivity resolved", |ag| {
        ag.finding_in_state(FindingKind::AsymmetricConnectivity, &subject, FindingState::Resolved)
    });
    std::thread::sleep(Duration::from_secs(5));
    assert!(
        a.finding(FindingKind::OneWayLoss, &subject).is_none(),
        "{:?}",
        path_findings(&a)
    );
}

#[test]
fn five_percent_one_way_drop_is_one_way_loss_and_the_reverse_stays_clean() {
    netns::require_root();
    let t = PathTopology::new("pl");
    let (a, b) = agents(&t);
    let (na, nb) = (t.a.name().to_owned(), t.b.name().to_owned());
    wait_mesh_up(&a, &b, &nb, &na);
    let base_lost_ab = metric(
        &b,
        "graydar_path_probes_lost_total",
        &[("peer", &na), ("direction", "inbound")],
    );

    // 5 % of B -> A mesh traffic dropped at R1.
    t.r1_forward_rule(&[
        "ip", "saddr", B_ADDR, "ip", "daddr", A_ADDR, "udp", "dport", "9478", "numgen", "random", "mod", "100", "<",
        "5", "counter", "drop",
    ]);
    let subject = format!("peer {na}");
    b.wait_for(FIRE_TIMEOUT, "one_way_loss on B (B -> A)", |ag| {
        ag.finding_in_state(FindingKind::OneWayLoss, &subject, FindingState::Firing)
    });
    let f = b.finding(FindingKind::OneWayLoss, &subject).expect("finding");
    eprintln!("one_way_loss: {} | {:?}", f.summary, f.evidence);
    assert_eq!(text(&f, "direction"), format!("{nb} -> {na}"));
    let fwd = number(&f, "loss_ratio_fwd").expect("loss_ratio_fwd");
    assert!((0.01..0.15).contains(&fwd), "about 5 %: {fwd}");
    assert!(
        number(&f, "probes_lost_rev").is_some_and(|n| n <= 1.0),
        "{:?}",
        f.evidence
    );
    // The reverse direction stays clean, seen from both ends.
    std::thread::sleep(Duration::from_secs(3));
    let lost_ab = metric(
        &b,
        "graydar_path_probes_lost_total",
        &[("peer", &na), ("direction", "inbound")],
    );
    let lost_ab_at_a = metric(
        &a,
        "graydar_path_probes_lost_total",
        &[("peer", &nb), ("direction", "outbound")],
    );
    let delivered_ab = metric(
        &b,
        "graydar_path_probes_delivered_total",
        &[("peer", &na), ("direction", "inbound")],
    );
    let lost_ba_at_a = metric(
        &a,
        "graydar_path_probes_lost_total",
        &[("peer", &nb), ("direction", "inbound")],
    );
    eprintln!(
        "A -> B: lost {lost_ab} (B's view) {lost_ab_at_a} (A's view) of {delivered_ab}; B -> A lost {lost_ba_at_a} (A's view)"
    );
    assert!(
        lost_ab - base_lost_ab <= 1.0 && lost_ab_at_a <= 1.0,
        "A -> B stays clean"
    );
    assert!(lost_ba_at_a > 0.0, "A counted the gaps in B's probes too");
    assert!(path_findings(&a).is_empty(), "A -> B is clean: {:?}", path_findings(&a));
}

#[test]
fn quiet_topology_for_two_minutes_raises_nothing_and_the_controller_shows_the_matrix() {
    netns::require_root();
    let t = PathTopology::new("pq");
    // Controller on its own management network (peers come from it: no static list).
    let c = NetNs::new("pqc");
    // (Names that no `ip link` keyword starts with: `ma` would read as `master`.)
    veth_pair(&c, "gc1", "10.207.1.1/24", &t.a, "gm0", "10.207.1.2/24");
    veth_pair(&c, "gc2", "10.207.2.1/24", &t.b, "gm0", "10.207.2.2/24");
    let data = tempfile::tempdir().expect("controller data dir");
    let tokens = Tokens::random();
    let ctl = ControllerProcess::start(Some(&c), data.path(), &tokens);
    let (na, nb) = (t.a.name().to_owned(), t.b.name().to_owned());
    let cfg = |host: &str, ctl_ip: &str, addr: &str| {
        paths_config(
            host,
            &[],
            &format!(
                "advertise = \"{addr}\"\n\n[controller]\nurl = \"http://{ctl_ip}:8477\"\ntoken = \"{}\"\nreport_interval = \"1s\"\n",
                tokens.agent
            ),
        )
    };
    let a = AgentProcess::start(Some(&t.a), &cfg(&na, "10.207.1.1", A_ADDR));
    let b = AgentProcess::start(Some(&t.b), &cfg(&nb, "10.207.2.1", B_ADDR));
    wait_mesh_up(&a, &b, &nb, &na);
    let start = Instant::now();
    while start.elapsed() < QUIET {
        for ag in [&a, &b] {
            let f = ag.findings().findings;
            assert!(
                f.is_empty(),
                "quiet topology, finding after {:?}: {f:?}",
                start.elapsed()
            );
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    // Not vacuous: two minutes of probes went both ways.
    for (ag, peer) in [(&a, &nb), (&b, &na)] {
        for d in ["outbound", "inbound"] {
            let n = metric(
                ag,
                "graydar_path_probes_delivered_total",
                &[("peer", peer), ("direction", d)],
            );
            assert!(n > 1000.0, "{peer} {d}: {n}");
            assert_eq!(
                metric(
                    ag,
                    "graydar_path_probes_lost_total",
                    &[("peer", peer), ("direction", d)]
                ),
                0.0
            );
        }
    }
    // The controller's matrix: both ordered pairs, clean, one hop.
    let m: PathMatrix = serde_json::from_value(ctl.cli_json(&tokens.viewer, &["paths"])).expect("graydar paths");
    eprintln!("{m:?}");
    for (src, dst) in [(&na, &nb), (&nb, &na)] {
        let p = m
            .pairs
            .iter()
            .find(|p| &p.src == src && &p.dst == dst)
            .unwrap_or_else(|| panic!("pair {src} -> {dst} in {m:?}"));
        assert_eq!(p.state, "ok", "{p:?}");
        assert_eq!(p.hops, Some(1), "{p:?}");
        assert_eq!(p.lost, 0);
        assert!(p.rtt_p50_seconds.is_some_and(|r| r > 0.0 && r < 0.1), "{p:?}");
    }
    let table = ctl.cli(&tokens.viewer, &["paths"]);
    let out = String::from_utf8_lossy(&table.stdout);
    eprintln!("{out}");
    assert!(
        out.starts_with("SRC") && out.contains(&na) && out.contains(&nb),
        "{out}"
    );
    let all: graydar_common::api::FindingList =
        serde_json::from_value(ctl.cli_json(&tokens.viewer, &["findings"])).expect("graydar findings");
    assert!(all.findings.is_empty(), "{:?}", all.findings);
}

fn agents6<'t>(t: &'t PathTopology6) -> (AgentProcess<'t>, AgentProcess<'t>) {
    let (na, nb) = (t.a.name(), t.b.name());
    let a = AgentProcess::start(Some(&t.a), &paths_config(na, &[format!("{nb}={B6_ADDR}")], ""));
    let b = AgentProcess::start(Some(&t.b), &paths_config(nb, &[format!("{na}=[{A6_ADDR}]:9478")], ""));
    (a, b)
}

/// Mean RTT (s) from the agent's RTT histogram for `peer`, and the sample count.
fn mean_rtt(agent: &AgentProcess, peer: &str) -> (f64, f64) {
    let m = agent.metrics();
    let sum = prom::sum(&m, "graydar_path_rtt_seconds_sum", &[("peer", peer)]);
    let count = prom::sum(&m, "graydar_path_rtt_seconds_count", &[("peer", peer)]);
    (if count > 0.0 { sum / count } else { f64::NAN }, count)
}

fn hops(agent: &AgentProcess, peer: &str, direction: &str) -> f64 {
    metric(agent, "graydar_path_hops", &[("peer", peer), ("direction", direction)])
}

/// IPv6 only: the mesh measures RTT and the hop count of each direction from
/// IPV6_RECVHOPLIMIT (1 router each way, then 2 routers B → A after a detour),
/// and the detour is an asymmetric_route with IPv6 traceroutes both ways.
#[test]
fn ipv6_mesh_measures_rtt_and_hop_counts_per_direction_and_sees_a_detour() {
    netns::require_root();
    let t = PathTopology6::new("p6");
    // Not vacuous: there is no IPv4 path between A and B.
    let v4 = t.a.exec_stdout("ip", ["-4", "addr", "show", "scope", "global"]);
    assert!(v4.trim().is_empty(), "A has IPv4 addresses: {v4}");
    let (a, b) = agents6(&t);
    let (na, nb) = (t.a.name().to_owned(), t.b.name().to_owned());
    wait_mesh_up(&a, &b, &nb, &na);
    for (ag, peer) in [(&a, &nb), (&b, &na)] {
        for d in ["outbound", "inbound"] {
            assert_eq!(hops(ag, peer, d), 1.0, "one router each way ({peer} {d})");
        }
        let (rtt, n) = mean_rtt(ag, peer);
        eprintln!("IPv6 RTT to {peer}: mean {:.3} ms over {n} replies", rtt * 1e3);
        assert!(n >= 20.0 && rtt > 0.0 && rtt < 0.1, "RTT {rtt} s over {n} replies");
    }
    assert!(path_findings(&a).is_empty() && path_findings(&b).is_empty());

    t.route_b_to_a_via_r2();
    let f = wait_asymmetric_route(
        &b,
        &na,
        "IPv6 asymmetric_route on B with both hop counts and both traceroutes",
    );
    eprintln!("IPv6 finding: {} | evidence {:?}", f.summary, f.evidence);
    assert_eq!(number(&f, "hops_fwd"), Some(2.0), "B -> A: R2 and R1");
    assert_eq!(number(&f, "hops_rev"), Some(1.0), "A -> B: R1");
    assert_eq!(text(&f, "address"), format!("[{A6_ADDR}]:9478"));
    // Each end measures each direction: B's outbound is A's inbound.
    assert_eq!(hops(&b, &na, "outbound"), 2.0);
    assert_eq!(hops(&b, &na, "inbound"), 1.0);
    a.wait_for(Duration::from_secs(10), "A sees 2 hops inbound", |ag| {
        hops(ag, &nb, "inbound") == 2.0
    });
    assert_eq!(hops(&a, &nb, "outbound"), 1.0);
    // IPv6 Paris traceroutes: B's to A through R2 and R1, A's to B through R1.
    let fwd = text(&f, "traceroute_fwd");
    let rev = text(&f, "traceroute_rev");
    assert!(
        fwd.starts_with("1 fd00:206:") && fwd.contains(" 2 fd00:206:") && fwd.contains(&format!("3 {A6_ADDR} ")),
        "{fwd}"
    );
    assert!(
        rev.starts_with("1 fd00:206:") && rev.contains(&format!("2 {B6_ADDR} ")),
        "{rev}"
    );
    assert!(
        a.finding(FindingKind::AsymmetricRoute, &format!("peer {nb}")).is_none(),
        "A does not report the same pair"
    );
}

/// IPv6 only: an ip6 rule in R1 dropping A → B raises asymmetric_connectivity
/// on A naming `A -> B` within 10 s; B reports nothing.
#[test]
fn ipv6_one_direction_blackholed_is_asymmetric_connectivity_naming_the_direction() {
    netns::require_root();
    let t = PathTopology6::new("p7");
    let (a, b) = agents6(&t);
    let (na, nb) = (t.a.name().to_owned(), t.b.name().to_owned());
    wait_mesh_up(&a, &b, &nb, &na);

    t.r1_forward_rule(&["ip6", "saddr", A6_ADDR, "ip6", "daddr", B6_ADDR, "counter", "drop"]);
    let start = Instant::now();
    let subject = format!("peer {nb}");
    a.wait_for(
        CONNECTIVITY_BOUND,
        "IPv6 asymmetric_connectivity on A within 10 s",
        |ag| ag.finding_in_state(FindingKind::AsymmetricConnectivity, &subject, FindingState::Firing),
    );
    let took = start.elapsed();
    let f = a
        .finding(FindingKind::AsymmetricConnectivity, &subject)
        .expect("finding");
    eprintln!(
        "IPv6 asymmetric_connectivity after {took:?}: {} | {:?}",
        f.summary, f.evidence
    );
    assert_eq!(text(&f, "direction"), format!("{na} -> {nb}"));
    assert!(number(&f, "window_delivered_rev").is_some_and(|n| n > 0.0));
    assert_eq!(number(&f, "window_delivered_fwd"), Some(0.0));
    assert_eq!(text(&f, "address"), format!("[{B6_ADDR}]:9478"));
    assert!(
        path_findings(&b).is_empty(),
        "B sees A silent, which is not asymmetric: {:?}",
        path_findings(&b)
    );
    t.r1_flush();
    a.wait_for(Duration::from_secs(30), "IPv6 asymmetric_connectivity resolved", |ag| {
        ag.finding_in_state(FindingKind::AsymmetricConnectivity, &subject, FindingState::Resolved)
    });
}

/// Datagrams with the mesh's exact layout, claiming A's name and sent from
/// A's address, but signed with another fleet's key: B drops and counts
/// them, answers none, and what B measures of A does not move. A datagram of
/// the old unauthenticated wire version is dropped the same way.
#[test]
fn forged_mesh_datagrams_change_nothing_and_get_no_answer() {
    use graydar_agent::probes::paths::auth::MeshKey;
    use graydar_agent::probes::paths::mesh::{self, Body, Datagram, Header, RxReport};
    netns::require_root();
    let t = PathTopology::new("pf");
    let (a, b) = agents(&t);
    let (na, nb) = (t.a.name().to_owned(), t.b.name().to_owned());
    wait_mesh_up(&a, &b, &nb, &na);
    let inbound = |ag: &AgentProcess| {
        metric(
            ag,
            "graydar_path_probes_delivered_total",
            &[("peer", na.as_str()), ("direction", "inbound")],
        )
    };
    let bad = |ag: &AgentProcess, reason: &str| metric(ag, "graydar_path_bad_datagrams_total", &[("reason", reason)]);
    let (in_before, mac_before, version_before) = (inbound(&b), bad(&b, "mac"), bad(&b, "version"));
    let other_fleet = MeshKey::new(graydar_tests::agent::MESH_KEY_ID, &[0x5a; 32]).expect("key");
    const FORGED: u64 = 200;
    let answers = t.a.run_in(|| {
        let sock = std::net::UdpSocket::bind(format!("{A_ADDR}:0")).expect("bind in A");
        sock.set_read_timeout(Some(Duration::from_millis(1500)))
            .expect("timeout");
        let to = format!("{B_ADDR}:9478");
        for seq in 0..FORGED {
            let d = Datagram {
                header: Header {
                    kind: mesh::KIND_PROBE,
                    flags: mesh::FLAG_TRACE_REQUEST,
                    ttl: 64,
                    key_id: 0,
                    epoch: 0x0bad_cafe,
                    seq: 1_000_000 + seq,
                    ctr: seq + 1,
                    tx_ns: 1,
                    report: RxReport::default(),
                    id: na.clone(),
                },
                body: Body::Probe,
            };
            sock.send_to(&mesh::encode(&d, &other_fleet), &to).expect("send forged");
        }
        // The old, unauthenticated wire version (version byte 1).
        let mut v1 = mesh::encode(
            &Datagram {
                header: Header {
                    kind: mesh::KIND_PROBE,
                    flags: 0,
                    ttl: 64,
                    key_id: 0,
                    epoch: 7,
                    seq: 1,
                    ctr: 1,
                    tx_ns: 1,
                    report: RxReport::default(),
                    id: na.clone(),
                },
                body: Body::Probe,
            },
            &other_fleet,
        );
        v1[4] = 1;
        sock.send_to(&v1, &to).expect("send v1");
        let mut buf = [0u8; 2048];
        let mut answers = 0;
        while sock.recv_from(&mut buf).is_ok() {
            answers += 1;
        }
        answers
    });
    assert_eq!(answers, 0, "nothing unauthenticated is answered");
    b.wait_for(Duration::from_secs(10), "the forgeries counted", |b| {
        bad(b, "mac") - mac_before >= FORGED as f64 && bad(b, "version") > version_before
    });
    // Legitimate probes only (10/s over ~2 s), not the 200 forged ones.
    let delivered = inbound(&b) - in_before;
    assert!(
        delivered < 100.0,
        "B counted {delivered} inbound probes from A while 200 forged ones arrived"
    );
    assert!(path_findings(&b).is_empty() && path_findings(&a).is_empty());
}
