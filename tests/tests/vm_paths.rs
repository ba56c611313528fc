//! VM tier for the path-probe mesh: what needs sch_netem, which the host
//! kernel lacks (Debian 6.1 under QEMU, booted by `cargo xtask vm`;
//! #[ignore]d on the host).
//!
//! Two namespaces A and B joined by one veth pair, two real agents probing
//! each other every 100 ms. netem on B's end of the veth (`vb`, B's egress)
//! delays or drops B → A only; A → B is untouched. `tc` here is the test's
//! fixture, not the product (the product's netem is agent/src/faults/).
//! All traffic stays inside the namespaces (10.208.0.0/16).

use std::time::{Duration, Instant};

use graydar_common::api::{Finding, FindingKind, FindingState};
use graydar_tests::agent::AgentProcess;
use graydar_tests::netns::{NetNs, veth_pair};
use graydar_tests::prom;
use graydar_tests::topology::{evidence_number as number, evidence_text as text, path_findings};

fn require_vm() {
    assert_eq!(
        std::env::var("GRAYDAR_VM").as_deref(),
        Ok("1"),
        "this test runs only inside the graydar test VM (GRAYDAR_VM=1): use `cargo xtask vm`"
    );
}

/// `[paths]` for the VM: 10 probes/s, 5 s latency window, 2-of-3 hysteresis;
/// the probes that are not under test off.
/// The RTT baseline needs 30 evaluations (30 s) before latency_asymmetry can fire.
fn paths_config(hostname: &str, peer: &str) -> String {
    let key_file = graydar_tests::agent::mesh_key_file();
    format!(
        r#"hostname = "{hostname}"

[paths]
key_file = {key_file:?}
interval = "100ms"
peers = ["{peer}"]
grace = "500ms"
loss_window = "10s"
connectivity_window = "2s"
latency_window = "5s"
baseline_window = "10m"
min_probes = 30
fire_windows = 2
of_windows = 3
resolve_windows = 5
traceroute = false

# Not under test: skipped so the agent is ready well within the harness's
# 30 s under software emulation (eBPF loading dominates its start there).
[incast]
enabled = false

[disk]
ebpf = false

[routes]
enabled = false
"#
    )
}

struct Pair {
    a: NetNs,
    b: NetNs,
}

impl Pair {
    fn new(tag: &str, net: u8) -> Pair {
        let a = NetNs::new(&format!("{tag}a"));
        let b = NetNs::new(&format!("{tag}b"));
        veth_pair(
            &a,
            "va",
            &format!("10.208.{net}.1/24"),
            &b,
            "vb",
            &format!("10.208.{net}.2/24"),
        );
        Pair { a, b }
    }

    /// `tc qdisc add dev vb root netem <args>` in B (B → A only).
    fn netem_b(&self, args: &[&str]) {
        let mut all = vec!["qdisc", "add", "dev", "vb", "root", "netem"];
        all.extend_from_slice(args);
        self.b.exec("tc", all);
    }

    fn clear_b(&self) {
        self.b.exec("tc", ["qdisc", "del", "dev", "vb", "root"]);
    }
}

fn agents<'t>(p: &'t Pair, net: u8) -> (AgentProcess<'t>, AgentProcess<'t>) {
    let (na, nb) = (p.a.name(), p.b.name());
    let a = AgentProcess::start(Some(&p.a), &paths_config(na, &format!("{nb}=10.208.{net}.2")));
    let b = AgentProcess::start(Some(&p.b), &paths_config(nb, &format!("{na}=10.208.{net}.1")));
    (a, b)
}

fn metric(agent: &AgentProcess, name: &str, labels: &[(&str, &str)]) -> f64 {
    prom::sum(&agent.metrics(), name, labels)
}

/// Mean RTT (s) from the RTT histogram up to now, and the reply count.
fn rtt_so_far(agent: &AgentProcess, peer: &str) -> (f64, f64) {
    let m = agent.metrics();
    let sum = prom::sum(&m, "graydar_path_rtt_seconds_sum", &[("peer", peer)]);
    let count = prom::sum(&m, "graydar_path_rtt_seconds_count", &[("peer", peer)]);
    (sum, count)
}

fn wait_mesh_up(a: &AgentProcess, b: &AgentProcess, peer_of_a: &str, peer_of_b: &str) {
    for (ag, peer) in [(a, peer_of_a), (b, peer_of_b)] {
        ag.wait_for(Duration::from_secs(30), "probes delivered both ways", |ag| {
            let m = ag.metrics();
            ["outbound", "inbound"].iter().all(|d| {
                prom::sum(
                    &m,
                    "graydar_path_probes_delivered_total",
                    &[("peer", peer), ("direction", d)],
                ) > 20.0
            })
        });
    }
}

/// Baseline, then netem delay 20 ms on B's egress: latency_asymmetry fires on
/// B (the source of the slower direction) naming B → A from the one-way delay
/// variation; A does not blame A → B; removing the qdisc resolves it.
#[test]
#[ignore = "VM tier: runs inside QEMU via `cargo xtask test` (or `cargo xtask vm`)"]
fn netem_delay_one_way_is_latency_asymmetry_naming_the_slow_direction() {
    require_vm();
    let p = Pair::new("vpd", 1);
    let (a, b) = agents(&p, 1);
    let (na, nb) = (p.a.name().to_owned(), p.b.name().to_owned());
    wait_mesh_up(&a, &b, &nb, &na);
    // Baseline: 30 evaluations are needed; give it 40 s of clean probes.
    std::thread::sleep(Duration::from_secs(40));
    let (s0, c0) = rtt_so_far(&b, &na);
    let base_ms = s0 / c0 * 1e3;
    eprintln!("baseline: mean RTT B -> A -> B {base_ms:.3} ms over {c0} replies");
    assert!(path_findings(&a).is_empty() && path_findings(&b).is_empty());

    p.netem_b(&["delay", "20ms"]);
    let start = Instant::now();
    let subject = format!("peer {na}");
    b.wait_for(Duration::from_secs(60), "latency_asymmetry on B", |ag| {
        ag.finding_in_state(FindingKind::LatencyAsymmetry, &subject, FindingState::Firing)
    });
    let fired = start.elapsed();
    let f = b.finding(FindingKind::LatencyAsymmetry, &subject).expect("finding");
    eprintln!("latency_asymmetry after {fired:?}: {} | {:?}", f.summary, f.evidence);
    assert_eq!(text(&f, "direction"), format!("{nb} -> {na}"), "{:?}", f.evidence);
    let rtt = number(&f, "rtt_p50_seconds").expect("rtt_p50_seconds");
    let base = number(&f, "rtt_baseline_seconds").expect("rtt_baseline_seconds");
    // p50 of the window (which may still hold a few pre-delay samples) vs the baseline median.
    assert!(rtt - base > 0.012 && rtt - base < 0.040, "+20 ms: {rtt} vs {base}");
    let fwd = number(&f, "owd_change_fwd_seconds").expect("owd_change_fwd_seconds");
    let rev = number(&f, "owd_change_rev_seconds").expect("owd_change_rev_seconds");
    assert!(fwd > 0.015, "B -> A one-way delay grew by about 20 ms: {fwd}");
    assert!(rev.abs() < 0.005, "A -> B one-way delay unchanged: {rev}");
    // A sees the RTT grow too, but the variation tells it the slow direction
    // is the peer's: it blames nothing.
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        a.finding(FindingKind::LatencyAsymmetry, &format!("peer {nb}"))
            .is_none(),
        "A -> B is not blamed: {:?}",
        path_findings(&a)
    );
    let others: Vec<Finding> = path_findings(&b)
        .into_iter()
        .filter(|f| f.kind != FindingKind::LatencyAsymmetry)
        .collect();
    assert!(others.is_empty(), "a delay is not loss or a route change: {others:?}");

    p.clear_b();
    let start = Instant::now();
    b.wait_for(Duration::from_secs(60), "latency_asymmetry resolved", |ag| {
        ag.finding_in_state(FindingKind::LatencyAsymmetry, &subject, FindingState::Resolved)
    });
    eprintln!("resolved {:?} after the qdisc was removed", start.elapsed());
    assert!(
        a.finding(FindingKind::LatencyAsymmetry, &format!("peer {nb}"))
            .is_none()
    );
}

/// netem loss 5 % on B's egress: one_way_loss on B naming B → A; A → B stays clean.
#[test]
#[ignore = "VM tier: runs inside QEMU via `cargo xtask test` (or `cargo xtask vm`)"]
fn netem_loss_one_way_is_one_way_loss_and_the_reverse_stays_clean() {
    require_vm();
    let p = Pair::new("vpl", 2);
    let (a, b) = agents(&p, 2);
    let (na, nb) = (p.a.name().to_owned(), p.b.name().to_owned());
    wait_mesh_up(&a, &b, &nb, &na);
    let base_lost_ab = metric(
        &a,
        "graydar_path_probes_lost_total",
        &[("peer", &nb), ("direction", "outbound")],
    );

    p.netem_b(&["loss", "5%"]);
    let start = Instant::now();
    let subject = format!("peer {na}");
    b.wait_for(Duration::from_secs(90), "one_way_loss on B (B -> A)", |ag| {
        ag.finding_in_state(FindingKind::OneWayLoss, &subject, FindingState::Firing)
    });
    let fired = start.elapsed();
    let f = b.finding(FindingKind::OneWayLoss, &subject).expect("finding");
    eprintln!("one_way_loss after {fired:?}: {} | {:?}", f.summary, f.evidence);
    assert_eq!(text(&f, "direction"), format!("{nb} -> {na}"));
    let ratio = number(&f, "loss_ratio_fwd").expect("loss_ratio_fwd");
    assert!((0.01..0.15).contains(&ratio), "about 5 %: {ratio}");
    let lost_ab = metric(
        &a,
        "graydar_path_probes_lost_total",
        &[("peer", &nb), ("direction", "outbound")],
    );
    assert!(lost_ab - base_lost_ab <= 1.0, "A -> B stays clean: {lost_ab}");
    assert!(path_findings(&a).is_empty(), "A -> B is clean: {:?}", path_findings(&a));
    p.clear_b();
}
