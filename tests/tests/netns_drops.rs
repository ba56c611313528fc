//! Root/netns tier for packet drops: throwaway network namespaces joined by
//! veth, real nftables / tbf causing drops, the real agent process reading
//! them with eBPF, netlink and sysfs.
//!
//! Every test panics with "root/netns tier needs root" when not run as root.
//! The `harness_*` tests check the tools and the namespace guard without the
//! agent. All traffic stays between namespaces the test created (10.203.0.0/16
//! addresses and each namespace's own loopback) and every traffic loop is
//! bounded in packets per second and in time.

use std::net::{SocketAddr, UdpSocket};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use graydar_common::api::{Evidence, Finding, FindingKind, FindingState};
use graydar_tests::agent::AgentProcess;
use graydar_tests::netns::{self, NetNs, veth_pair};
use graydar_tests::prom;

/// Hard upper bound on how long any traffic loop runs.
const MAX_TRAFFIC: Duration = Duration::from_secs(120);
const FIRE_TIMEOUT: Duration = Duration::from_secs(30);
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(40);
/// Three sampling intervals of [`fast_config`]: once traffic stops, the
/// agent's counters have caught up with the kernel's after this.
const SETTLE: Duration = Duration::from_secs(3);
/// How far the agent's settled counters may be from the kernel's own (nft
/// rule counter, `tc -s`). Observed: equal. The slack only absorbs a sample
/// that lands mid-update.
const TOLERANCE: f64 = 0.05;

// ---------------------------------------------------------------------------
// Traffic: sockets are created inside a namespace (they keep it for life) and
// then driven from plain threads.

/// A bounded UDP sender: `pps` datagrams of `size` bytes per second to `dst`
/// until stopped or [`MAX_TRAFFIC`] has passed.
struct Sender {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<u64>>,
}

impl Sender {
    fn start(ns: &NetNs, dst: SocketAddr, pps: u64, size: usize) -> Sender {
        let sock = ns.run_in(|| UdpSocket::bind("0.0.0.0:0").expect("bind a UDP sender socket"));
        sock.set_nonblocking(true).expect("non-blocking sender socket");
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = Arc::clone(&stop);
        let handle = std::thread::spawn(move || {
            let payload = vec![0x5a_u8; size];
            let start = Instant::now();
            let mut attempted: u64 = 0;
            let mut sent: u64 = 0;
            while !stop2.load(Ordering::Relaxed) && start.elapsed() < MAX_TRAFFIC {
                // Pace on elapsed time; never burst more than 50 ms worth.
                let due = (start.elapsed().as_secs_f64() * pps as f64) as u64;
                let burst = due.saturating_sub(attempted).min(pps / 20 + 1);
                for _ in 0..burst {
                    attempted += 1;
                    // Errors (a full tbf queue, ENOBUFS, ICMP errors) are expected.
                    if sock.send_to(&payload, dst).is_ok() {
                        sent += 1;
                    }
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            sent
        });
        Sender {
            stop,
            handle: Some(handle),
        }
    }

    /// Stops and returns how many datagrams the kernel accepted.
    fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.take().map_or(0, |h| h.join().expect("sender thread"))
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// A UDP listener that reads and counts everything (bounded in time).
struct Receiver {
    stop: Arc<AtomicBool>,
    received: Arc<AtomicU64>,
    handle: Option<JoinHandle<()>>,
}

impl Receiver {
    fn start(ns: &NetNs, addr: SocketAddr) -> Receiver {
        let sock = ns.run_in(|| UdpSocket::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}")));
        set_rcvbuf(&sock, 4 << 20);
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .expect("receiver read timeout");
        let stop = Arc::new(AtomicBool::new(false));
        let received = Arc::new(AtomicU64::new(0));
        let (stop2, received2) = (Arc::clone(&stop), Arc::clone(&received));
        let handle = std::thread::spawn(move || {
            let start = Instant::now();
            let mut buf = [0u8; 2048];
            while !stop2.load(Ordering::Relaxed) && start.elapsed() < MAX_TRAFFIC + Duration::from_secs(30) {
                if sock.recv_from(&mut buf).is_ok() {
                    received2.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        Receiver {
            stop,
            received,
            handle: Some(handle),
        }
    }

    fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// A larger receive buffer, so a receiver thread starved of CPU on a busy
/// machine does not add SOCKET_RCVBUFF drops the test did not ask for.
fn set_rcvbuf(sock: &UdpSocket, bytes: libc::c_int) {
    use std::os::fd::AsRawFd;
    // SAFETY: valid socket fd owned by `sock`; the option value is a c_int
    // living across the call and its exact size is passed.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            std::ptr::addr_of!(bytes).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_RCVBUFFORCE: {}", std::io::Error::last_os_error());
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap_or_else(|e| panic!("socket address {s}: {e}"))
}

// ---------------------------------------------------------------------------
// Kernel-side counters the agent's numbers are compared with.

const NFT_TABLE: &str = "graydar_test";

/// `inet graydar_test` with an input chain in `ns`.
fn nft_table(ns: &NetNs) {
    ns.exec("nft", ["add", "table", "inet", NFT_TABLE]);
    ns.exec(
        "nft",
        [
            "add",
            "chain",
            "inet",
            NFT_TABLE,
            "input",
            "{ type filter hook input priority 0 ; policy accept ; }",
        ],
    );
}

/// Sum of the packet counters of the rules in `inet graydar_test`.
fn nft_counter_packets(ns: &NetNs) -> u64 {
    let text = ns.exec_stdout("nft", ["-j", "list", "table", "inet", NFT_TABLE]);
    let v: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("`nft -j list table` is not JSON: {e}: {text}"));
    let mut total = 0;
    for item in v["nftables"].as_array().map(Vec::as_slice).unwrap_or_default() {
        for expr in item["rule"]["expr"].as_array().map(Vec::as_slice).unwrap_or_default() {
            total += expr["counter"]["packets"].as_u64().unwrap_or(0);
        }
    }
    total
}

/// Drops reported by `tc -s qdisc show dev <ifname>` for qdiscs of `kind`.
fn tc_drops(ns: &NetNs, ifname: &str, kind: &str) -> u64 {
    let text = ns.exec_stdout("tc", ["-s", "-j", "qdisc", "show", "dev", ifname]);
    let v: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("`tc -s -j qdisc show` is not JSON: {e}: {text}"));
    v.as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter(|q| q["kind"] == kind)
        .map(|q| q["drops"].as_u64().unwrap_or(0))
        .sum()
}

// ---------------------------------------------------------------------------
// Agent helpers.

/// Fast detection windows so tests fire and resolve in seconds.
fn fast_config(ns: &NetNs) -> String {
    format!(
        r#"hostname = "{}"

[drops]
interval = "1s"
short_window = "3s"
long_window = "10s"
warning_ratio = 0.01
min_drop_rate = 5.0
fire_windows = 2
of_windows = 3
resolve_windows = 3
"#,
        ns.name()
    )
}

const KERNEL_DROPS: &str = "graydar_kernel_drops_total";

fn kernel_drops(agent: &AgentProcess, interface: &str, reason: &str) -> f64 {
    prom::sum(
        &agent.metrics(),
        KERNEL_DROPS,
        &[("interface", interface), ("reason", reason)],
    )
}

fn top_reasons(f: &Finding) -> String {
    match f.evidence.get("top_reasons") {
        Some(Evidence::Text(s)) => s.clone(),
        Some(Evidence::Number(n)) => n.to_string(),
        None => String::new(),
    }
}

fn firing_with_reason(agent: &AgentProcess, kind: FindingKind, subject: &str, reason: &str) -> bool {
    agent
        .finding(kind, subject)
        .is_some_and(|f| f.state == FindingState::Firing && top_reasons(&f).contains(reason))
}

fn within(actual: f64, expected: f64, tolerance: f64) -> bool {
    (actual - expected).abs() <= tolerance * expected.max(1.0)
}

// ---------------------------------------------------------------------------
// Harness checks (no agent).

#[test]
fn harness_netns_guard_creates_and_deletes() {
    netns::require_root();
    let ns = NetNs::new("hg");
    let name = ns.name().to_owned();
    assert!(name.len() <= 15, "{name} is longer than 15 chars");
    assert!(netns::list().contains(&name), "{name} not in `ip netns list`");
    let lo = ns.exec_stdout("ip", ["-o", "link", "show", "lo"]);
    assert!(lo.contains("UP"), "lo is not up in {name}: {lo}");
    let v6 = ns.exec_stdout("cat", ["/proc/sys/net/ipv6/conf/all/disable_ipv6"]);
    assert_eq!(v6.trim(), "1", "IPv6 should be disabled inside {name}");
    // A process left inside is killed by the guard.
    let mut sleeper = Command::new("ip")
        .args(["netns", "exec", &name, "sleep", "60"])
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn sleep in the namespace");
    let deadline = Instant::now() + Duration::from_secs(5);
    while ns.pids().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!ns.pids().is_empty(), "sleep did not show in `ip netns pids {name}`");
    let other = NetNs::new("hg");
    assert_ne!(other.name(), name);
    drop(ns);
    assert!(
        !netns::list().contains(&name),
        "{name} still in `ip netns list` after drop"
    );
    assert!(!std::path::Path::new("/run/netns").join(&name).exists());
    let status = sleeper.wait().expect("wait for sleep");
    assert!(
        !status.success(),
        "sleep inside the namespace should have been killed, got {status}"
    );
}

#[test]
fn harness_veth_ping_and_nft_counter() {
    netns::require_root();
    let a = NetNs::new("hva");
    let b = NetNs::new("hvb");
    veth_pair(&a, "va", "10.203.10.1/24", &b, "vb", "10.203.10.2/24");
    a.exec("ping", ["-c", "2", "-i", "0.2", "-W", "2", "10.203.10.2"]);

    nft_table(&b);
    b.exec(
        "nft",
        [
            "add", "rule", "inet", NFT_TABLE, "input", "udp", "dport", "9000", "counter", "drop",
        ],
    );
    assert_eq!(nft_counter_packets(&b), 0);
    let sock = a.run_in(|| UdpSocket::bind("0.0.0.0:0").expect("bind sender"));
    for _ in 0..100 {
        sock.send_to(b"x", addr("10.203.10.2:9000")).expect("send to B");
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while nft_counter_packets(&b) < 100 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(nft_counter_packets(&b), 100, "nft counter in {}", b.name());

    // run_in really is inside: B's address is local there, not in A.
    let in_b = b.run_in(|| UdpSocket::bind("10.203.10.2:0").is_ok());
    let in_a = a.run_in(|| UdpSocket::bind("10.203.10.2:0").is_ok());
    assert!(
        in_b && !in_a,
        "run_in should bind in B (got {in_b}) and not in A (got {in_a})"
    );
}

#[test]
fn harness_tbf_drops_show_in_tc() {
    netns::require_root();
    let a = NetNs::new("hta");
    let b = NetNs::new("htb");
    veth_pair(&a, "va", "10.203.11.1/24", &b, "vb", "10.203.11.2/24");
    a.exec(
        "tc",
        [
            "qdisc", "add", "dev", "va", "root", "tbf", "rate", "1mbit", "burst", "2kb", "limit", "3000",
        ],
    );
    let rx = Receiver::start(&b, addr("10.203.11.2:9000"));
    let tx = Sender::start(&a, addr("10.203.11.2:9000"), 2000, 1000);
    std::thread::sleep(Duration::from_secs(1));
    let sent = tx.stop();
    std::thread::sleep(Duration::from_millis(200));
    let drops = tc_drops(&a, "va", "tbf");
    assert!(drops > 0, "no tbf drops after {sent} datagrams");
    assert!(
        rx.received() < sent,
        "tbf at 1 Mbit/s should not pass all {sent} datagrams (received {})",
        rx.received()
    );
}

// ---------------------------------------------------------------------------
// Agent tests.

#[test]
fn nftables_random_drop_shows_as_kernel_drops_netfilter() {
    netns::require_root();
    let a = NetNs::new("nfa");
    let b = NetNs::new("nfb");
    veth_pair(&a, "va", "10.203.1.1/24", &b, "vb", "10.203.1.2/24");
    nft_table(&b);
    // About 10 % of what reaches port 9000; port 9001 is clean.
    b.exec(
        "nft",
        [
            "add", "rule", "inet", NFT_TABLE, "input", "udp", "dport", "9000", "numgen", "random", "mod", "100", "<",
            "10", "counter", "drop",
        ],
    );
    let _rx_lossy = Receiver::start(&b, addr("10.203.1.2:9000"));
    let rx_clean = Receiver::start(&b, addr("10.203.1.2:9001"));
    let agent = AgentProcess::start(Some(&b), &fast_config(&b));

    let lossy = Sender::start(&a, addr("10.203.1.2:9000"), 2000, 64);
    let clean = Sender::start(&a, addr("10.203.1.2:9001"), 200, 64);
    agent.wait_for(
        FIRE_TIMEOUT,
        "kernel_drops finding firing on vb with NETFILTER_DROP in top_reasons",
        |ag| firing_with_reason(ag, FindingKind::KernelDrops, "vb", "NETFILTER_DROP"),
    );
    assert!(kernel_drops(&agent, "vb", "NETFILTER_DROP") > 0.0);

    let sent = lossy.stop();
    // Both counters are static now; let the agent take a few more samples.
    std::thread::sleep(SETTLE);
    let mut last = (0.0, 0);
    agent.wait_for(
        Duration::from_secs(10),
        "graydar NETFILTER_DROP on vb within 5 % of nft's counter",
        |ag| {
            last = (kernel_drops(ag, "vb", "NETFILTER_DROP"), nft_counter_packets(&b));
            within(last.0, last.1 as f64, TOLERANCE)
        },
    );
    let (metric, nft) = last;
    eprintln!("sent {sent} to the lossy port; nft dropped {nft}; graydar counted {metric}");
    assert!(
        (0.05..=0.15).contains(&(nft as f64 / sent.max(1) as f64)),
        "the nft rule should drop about 10 % of {sent}, dropped {nft}"
    );

    agent.wait_for(
        RESOLVE_TIMEOUT,
        "kernel_drops finding on vb resolved while clean traffic flows",
        |ag| ag.finding_in_state(FindingKind::KernelDrops, "vb", FindingState::Resolved),
    );
    let clean_sent = clean.stop();
    assert!(
        clean_sent > 0 && rx_clean.received() > 0,
        "clean traffic should have flowed"
    );
}

#[test]
fn tbf_tiny_limit_on_sender_shows_as_qdisc_drops() {
    netns::require_root();
    let a = NetNs::new("tba");
    let b = NetNs::new("tbb");
    veth_pair(&a, "va", "10.203.2.1/24", &b, "vb", "10.203.2.2/24");
    a.exec(
        "tc",
        [
            "qdisc", "add", "dev", "va", "root", "tbf", "rate", "1mbit", "burst", "2kb", "limit", "3000",
        ],
    );
    let _rx = Receiver::start(&b, addr("10.203.2.2:9000"));
    let agent = AgentProcess::start(Some(&a), &fast_config(&a));

    // ~16 Mbit/s into a 1 Mbit/s bucket.
    let tx = Sender::start(&a, addr("10.203.2.2:9000"), 2000, 1000);
    agent.wait_for(FIRE_TIMEOUT, "qdisc_drops finding firing on va", |ag| {
        ag.finding_in_state(FindingKind::QdiscDrops, "va", FindingState::Firing)
    });
    let sent = tx.stop();
    // Both counters are static now; let the agent take a few more samples.
    std::thread::sleep(SETTLE);

    let metric_name = "graydar_qdisc_drops_total";
    let mut last = (0.0, 0);
    agent.wait_for(
        Duration::from_secs(10),
        "graydar_qdisc_drops_total{va,tbf} within 5 % of tc's drops",
        |ag| {
            let m = prom::sum(&ag.metrics(), metric_name, &[("interface", "va"), ("qdisc", "tbf")]);
            last = (m, tc_drops(&a, "va", "tbf"));
            last.0 > 0.0 && within(last.0, last.1 as f64, TOLERANCE)
        },
    );
    eprintln!("sent {sent}; tc dropped {}; graydar counted {}", last.1, last.0);

    // No traffic at all now: an idle interface must count as quiet.
    agent.wait_for(
        RESOLVE_TIMEOUT,
        "qdisc_drops finding on va resolved after traffic stopped (idle: no packets must count as quiet)",
        |ag| ag.finding_in_state(FindingKind::QdiscDrops, "va", FindingState::Resolved),
    );
}

#[test]
fn udp_to_closed_port_shows_as_kernel_drops_no_socket() {
    closed_port_drops_counted_exactly("auto", "kfree_skb_btf");
}

/// The raw-tracepoint program (bpf_probe_read_kernel instead of BTF-typed
/// loads) is the fallback on kernels that refuse tp_btf: it must count the
/// same drops.
#[test]
fn udp_to_closed_port_counted_by_the_raw_tracepoint_fallback() {
    closed_port_drops_counted_exactly("raw_tp", "program=\"kfree_skb\"");
}

fn closed_port_drops_counted_exactly(mode: &str, program_in_log: &str) {
    netns::require_root();
    let a = NetNs::new("nsa");
    let b = NetNs::new("nsb");
    veth_pair(&a, "va", "10.203.3.1/24", &b, "vb", "10.203.3.2/24");
    let config = format!("{}\n[ebpf]\nkfree_skb = \"{mode}\"\n", fast_config(&b));
    let agent = AgentProcess::start(Some(&b), &config);
    assert!(
        agent.log().contains(program_in_log),
        "expected {program_in_log} attached:\n{}",
        agent.log()
    );
    let before = kernel_drops(&agent, "vb", "NO_SOCKET");

    // Nobody listens on 9999 in B.
    let tx = Sender::start(&a, addr("10.203.3.2:9999"), 1000, 64);
    agent.wait_for(
        FIRE_TIMEOUT,
        "NO_SOCKET drops on vb and a kernel_drops finding naming NO_SOCKET",
        |ag| {
            kernel_drops(ag, "vb", "NO_SOCKET") > 0.0
                && firing_with_reason(ag, FindingKind::KernelDrops, "vb", "NO_SOCKET")
        },
    );
    let sent = tx.stop();
    std::thread::sleep(SETTLE);
    // Every datagram reaches B over the veth and is dropped there for lack
    // of a socket: the probe must count each exactly once.
    let counted = kernel_drops(&agent, "vb", "NO_SOCKET") - before;
    assert!(
        within(counted, sent as f64, TOLERANCE),
        "graydar counted {counted} NO_SOCKET drops on vb for {sent} datagrams sent to a closed port ({mode})"
    );
}

#[test]
fn agent_in_one_namespace_does_not_count_another_namespaces_drops() {
    netns::require_root();
    let a = NetNs::new("ioa");
    let b = NetNs::new("iob");
    let c = NetNs::new("ioc");
    let d = NetNs::new("iod");
    veth_pair(&a, "va", "10.203.4.1/24", &b, "vb", "10.203.4.2/24");
    // C has an interface with the same name as B's (and, namespaces numbering
    // their devices alike, very likely the same ifindex), plus its own lo
    // (ifindex 1 like B's): attributing by ifindex or name alone would show
    // C's drops under B's interfaces.
    veth_pair(&d, "vd", "10.203.5.1/24", &c, "vb", "10.203.5.2/24");
    eprintln!(
        "ifindex of vb: in B {}, in C {}; lo: in B {}, in C {}",
        b.ifindex("vb"),
        c.ifindex("vb"),
        b.ifindex("lo"),
        c.ifindex("lo")
    );
    let agent = AgentProcess::start(Some(&b), &fast_config(&b));
    let before = agent.metrics();
    let lo_before = prom::sum(&before, KERNEL_DROPS, &[("interface", "lo")]);
    let vb_before = prom::sum(&before, KERNEL_DROPS, &[("interface", "vb"), ("reason", "NO_SOCKET")]);
    let other_before = prom::sum(&before, KERNEL_DROPS, &[("interface", "_other_netns")]);

    // Positive control: a few drops in B itself. Ten times as many in C.
    let tx_b = Sender::start(&a, addr("10.203.4.2:9999"), 100, 64);
    let tx_c_lo = Sender::start(&c, addr("127.0.0.1:9999"), 1000, 64);
    let tx_c_vb = Sender::start(&d, addr("10.203.5.2:9999"), 1000, 64);
    agent.wait_for(
        FIRE_TIMEOUT,
        "B's own NO_SOCKET drops on vb counted (positive control)",
        |ag| kernel_drops(ag, "vb", "NO_SOCKET") - vb_before > 50.0,
    );
    std::thread::sleep(Duration::from_secs(4));
    let sent_b = tx_b.stop();
    let sent_c = tx_c_lo.stop() + tx_c_vb.stop();
    // Let the agent take in the last interval.
    std::thread::sleep(Duration::from_millis(2500));

    let after = agent.metrics();
    let lo_delta = prom::sum(&after, KERNEL_DROPS, &[("interface", "lo")]) - lo_before;
    let vb_delta = prom::sum(&after, KERNEL_DROPS, &[("interface", "vb"), ("reason", "NO_SOCKET")]) - vb_before;
    let other_delta = prom::sum(&after, KERNEL_DROPS, &[("interface", "_other_netns")]) - other_before;
    eprintln!(
        "sent {sent_b} to B's closed port, {sent_c} to C's; B counted lo +{lo_delta}, vb NO_SOCKET +{vb_delta}, \
         _other_netns +{other_delta} (includes other tests' namespaces)"
    );
    assert!(
        sent_c > 5 * sent_b,
        "C should have sent many more ({sent_c}) than B ({sent_b})"
    );
    assert_eq!(lo_delta, 0.0, "C's drops on its lo must not show under B's lo");
    assert!(
        vb_delta <= sent_b as f64,
        "B's vb counted {vb_delta} NO_SOCKET drops but only {sent_b} were sent to B: C's drops leaked in"
    );
    let findings = agent.findings().findings;
    assert!(
        !findings
            .iter()
            .any(|f| f.kind == FindingKind::KernelDrops && f.subject == "lo"),
        "no kernel_drops finding on B's lo expected: {findings:?}"
    );
}

#[test]
fn quiet_namespace_raises_no_finding() {
    netns::require_root();
    let a = NetNs::new("qa");
    let b = NetNs::new("qb");
    veth_pair(&a, "va", "10.203.6.1/24", &b, "vb", "10.203.6.2/24");
    let rx = Receiver::start(&b, addr("10.203.6.2:9000"));
    let agent = AgentProcess::start(Some(&b), &fast_config(&b));
    let tx = Sender::start(&a, addr("10.203.6.2:9000"), 500, 200);

    let start = Instant::now();
    let mut ratio_samples = 0;
    while start.elapsed() < Duration::from_secs(8) {
        std::thread::sleep(Duration::from_secs(1));
        let metrics = agent.metrics();
        for s in prom::find(
            &metrics,
            "graydar_drop_ratio",
            &[("kind", "kernel_drops"), ("interface", "vb")],
        ) {
            ratio_samples += 1;
            assert!(
                s.value.is_nan() || s.value < 0.01,
                "kernel drop ratio on a clean veth reached {} ({:?}) after {:?}",
                s.value,
                s.labels,
                start.elapsed()
            );
        }
        let firing: Vec<_> = agent
            .findings()
            .findings
            .into_iter()
            .filter(|f| f.state == FindingState::Firing)
            .collect();
        assert!(
            firing.is_empty(),
            "no finding expected in a quiet namespace, got {firing:?}"
        );
    }
    let sent = tx.stop();
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        ratio_samples > 0,
        "graydar_drop_ratio{{kind=\"kernel_drops\",interface=\"vb\"}} never appeared"
    );
    assert!(
        rx.received() as f64 >= 0.99 * sent as f64,
        "clean traffic lost packets: sent {sent}, received {}",
        rx.received()
    );
}
