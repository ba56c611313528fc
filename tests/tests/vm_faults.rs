//! VM tier: the netem fault engine on a kernel that has sch_netem (Debian
//! 6.1 under QEMU, booted by `cargo xtask vm`). #[ignore]d on the host.

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use graydar_agent::faults::netem::{Loss, NetemSpec};
use graydar_agent::faults::tc::{self, PriorRoot};
use graydar_tests::faults::{qdisc_tree, with_netlink};
use graydar_tests::netns::{NetNs, veth_pair};

fn require_vm() {
    assert_eq!(
        std::env::var("GRAYDAR_VM").as_deref(),
        Ok("1"),
        "this test runs only inside the graydar test VM (GRAYDAR_VM=1): use `cargo xtask vm`"
    );
}

/// Average RTT in ms from `ping -c N -i 0.05` inside `ns`.
fn ping_avg_ms(ns: &NetNs, dst: &str, count: u32) -> f64 {
    let out = ns.exec_stdout(
        "ping",
        ["-q", "-n", "-c", &count.to_string(), "-i", "0.05", "-W", "2", dst],
    );
    // rtt min/avg/max/mdev = 0.045/0.060/0.094/0.012 ms
    let line = out
        .lines()
        .find(|l| l.contains("min/avg/max"))
        .unwrap_or_else(|| panic!("no rtt line in:\n{out}"));
    let nums = line.split('=').nth(1).unwrap_or_else(|| panic!("bad rtt line {line}"));
    nums.trim()
        .split('/')
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("bad rtt line {line}"))
}

fn pair(tag: &str, net: u8) -> (NetNs, NetNs, u32) {
    let a = NetNs::new(&format!("{tag}a"));
    let b = NetNs::new(&format!("{tag}b"));
    veth_pair(
        &a,
        "va",
        &format!("10.203.{net}.1/24"),
        &b,
        "vb",
        &format!("10.203.{net}.2/24"),
    );
    let ifindex = a.ifindex("va");
    (a, b, ifindex)
}

#[test]
#[ignore = "VM tier: runs inside QEMU via `cargo xtask test` (or `cargo xtask vm`)"]
fn netem_delay_adds_100ms_and_revert_restores_the_tree() {
    require_vm();
    let (a, _b, ifindex) = pair("vd", 40);
    let dst = "10.203.40.2";
    let before_tree = qdisc_tree(&a, "va");
    let base = ping_avg_ms(&a, dst, 20);
    let spec = NetemSpec {
        delay_ms: 100.0,
        ..Default::default()
    };
    let (prior, apply_ms) = with_netlink(&a, async move |h| {
        let prior = tc::snapshot(&h, ifindex).await.expect("snapshot");
        let t = Instant::now();
        tc::apply_netem(&h, ifindex, &spec).await.expect("apply netem");
        (prior, t.elapsed().as_secs_f64() * 1000.0)
    });
    assert!(matches!(prior, PriorRoot::Default { .. }), "{prior:?}");
    let tree = qdisc_tree(&a, "va");
    assert!(tree.contains("netem") && tree.contains("delay 100"), "{tree}");
    let delayed = ping_avg_ms(&a, dst, 20);
    let added = delayed - base;
    eprintln!("rtt {base:.2} ms -> {delayed:.2} ms (+{added:.2}); apply took {apply_ms:.1} ms");
    assert!(
        (90.0..=110.0).contains(&added),
        "100 ms delay added {added:.2} ms to the RTT"
    );
    let revert_ms = with_netlink(&a, async move |h| {
        let t = Instant::now();
        tc::revert_netem(&h, ifindex, &prior).await.expect("revert");
        t.elapsed().as_secs_f64() * 1000.0
    });
    assert_eq!(
        qdisc_tree(&a, "va"),
        before_tree,
        "after revert the qdisc tree equals the one before"
    );
    let after = ping_avg_ms(&a, dst, 20);
    eprintln!("after revert: rtt {after:.2} ms; revert took {revert_ms:.1} ms");
    assert!(
        after < base + 10.0,
        "RTT did not come back: {after:.2} ms vs {base:.2} ms"
    );
}

#[test]
#[ignore = "VM tier: runs inside QEMU via `cargo xtask test` (or `cargo xtask vm`)"]
fn netem_loss_10_percent_measures_10_percent_over_2000_packets() {
    require_vm();
    let (a, b, ifindex) = pair("vl", 41);
    let spec = NetemSpec {
        loss: Some(Loss::Random {
            percent: 10.0,
            correlation: 0.0,
        }),
        ..Default::default()
    };
    let prior = with_netlink(&a, async move |h| {
        let prior = tc::snapshot(&h, ifindex).await.expect("snapshot");
        tc::apply_netem(&h, ifindex, &spec).await.expect("apply netem");
        prior
    });
    let rx = b.run_in(|| UdpSocket::bind("10.203.41.2:9100").expect("bind receiver"));
    rx.set_read_timeout(Some(Duration::from_millis(100))).expect("timeout");
    let tx = a.run_in(|| UdpSocket::bind("10.203.41.1:0").expect("bind sender"));
    // Resolve the neighbour first, so no datagram waits in (or overflows)
    // the ARP queue: only netem may drop.
    a.exec("ping", ["-c", "3", "-i", "0.2", "-W", "2", "10.203.41.2"]);
    const N: u32 = 2000;
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let receiver = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut n = 0u32;
            let mut buf = [0u8; 64];
            let mut idle_since = Instant::now();
            loop {
                match rx.recv(&mut buf) {
                    Ok(_) => {
                        n += 1;
                        idle_since = Instant::now();
                    }
                    Err(_)
                        if done.load(std::sync::atomic::Ordering::Acquire)
                            && idle_since.elapsed() > Duration::from_secs(1) =>
                    {
                        return n;
                    }
                    Err(_) => {}
                }
            }
        })
    };
    let mut send_errors = 0;
    for _ in 0..N {
        if tx.send_to(b"graydar", "10.203.41.2:9100").is_err() {
            send_errors += 1;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    done.store(true, std::sync::atomic::Ordering::Release);
    let got = receiver.join().expect("receiver");
    let stats = a.exec_stdout("tc", ["-s", "qdisc", "show", "dev", "va"]);
    let loss = f64::from(N - got) / f64::from(N) * 100.0;
    eprintln!("sent {N} ({send_errors} send errors), received {got}: {loss:.1} % lost\n{stats}");
    with_netlink(&a, async move |h| {
        tc::revert_netem(&h, ifindex, &prior).await.expect("revert")
    });
    assert!(
        (7.0..=13.0).contains(&loss),
        "10 % netem loss measured {loss:.1} %; qdisc:\n{stats}"
    );
}
#[test]
#[ignore = "VM tier: runs inside QEMU via `cargo xtask test` (or `cargo xtask vm`)"]
fn a_configured_root_qdisc_is_restored_exactly() {
    require_vm();
    let (a, _b, ifindex) = pair("vr", 42);
    a.exec(
        "tc",
        [
            "qdisc", "add", "dev", "va", "root", "handle", "8001:", "tbf", "rate", "10mbit", "burst", "32kb",
            "latency", "50ms",
        ],
    );
    let before = qdisc_tree(&a, "va");
    let spec = NetemSpec {
        delay_ms: 10.0,
        ..Default::default()
    };
    let prior = with_netlink(&a, async move |h| {
        let prior = tc::snapshot(&h, ifindex).await.expect("snapshot");
        tc::apply_netem(&h, ifindex, &spec).await.expect("apply");
        prior
    });
    assert!(
        matches!(&prior, PriorRoot::Configured { kind, .. } if kind == "tbf"),
        "{prior:?}"
    );
    assert!(qdisc_tree(&a, "va").contains("netem"));
    with_netlink(&a, async move |h| {
        tc::revert_netem(&h, ifindex, &prior).await.expect("revert")
    });
    assert_eq!(
        qdisc_tree(&a, "va"),
        before,
        "the tbf root must come back with its handle and options"
    );
}

fn delay_fault(id: &str, lease_s: u64) -> graydar_agent::faults::engine::NetemFault {
    graydar_agent::faults::engine::NetemFault {
        id: id.into(),
        interface: "va".into(),
        spec: NetemSpec {
            delay_ms: 50.0,
            ..Default::default()
        },
        lease: Duration::from_secs(lease_s),
    }
}

/// A "crash" right after apply (the engine vanishes without reverting, as on
/// SIGKILL): the next start reverts from the journal.
#[test]
#[ignore = "VM tier: runs inside QEMU via `cargo xtask test` (or `cargo xtask vm`)"]
fn a_fault_left_by_a_crash_is_reverted_at_the_next_start() {
    use graydar_agent::faults::engine::FaultEngine;
    require_vm();
    let (a, _b, _ifindex) = pair("vc", 43);
    let before = qdisc_tree(&a, "va");
    let state = tempfile::tempdir().expect("state dir");
    let dir = state.path().to_owned();
    with_netlink(&a, async move |h| {
        let (mut engine, _) = FaultEngine::start(&dir, h).await.expect("engine");
        engine.apply_netem(delay_fault("crash-1", 3600)).await.expect("apply");
        std::mem::forget(engine); // no revert, no clean shutdown
    });
    assert!(qdisc_tree(&a, "va").contains("netem"), "the fault is applied");
    let dir = state.path().to_owned();
    let recovered = with_netlink(&a, async move |h| FaultEngine::start(&dir, h).await.expect("restart").1);
    assert_eq!(recovered.len(), 1, "{recovered:?}");
    assert!(recovered[0].result.is_ok(), "{recovered:?}");
    assert_eq!(
        qdisc_tree(&a, "va"),
        before,
        "nothing of the fault is left after restart"
    );
}

/// The same through the real agent binary: it reverts what its journal lists
/// before it serves anything.
#[test]
#[ignore = "VM tier: runs inside QEMU via `cargo xtask test` (or `cargo xtask vm`)"]
fn the_agent_reverts_faults_left_by_a_killed_run_at_start() {
    use graydar_agent::faults::engine::FaultEngine;
    require_vm();
    let (a, _b, _ifindex) = pair("vk", 44);
    let before = qdisc_tree(&a, "va");
    let state = tempfile::tempdir().expect("state dir");
    let dir = state.path().to_owned();
    with_netlink(&a, async move |h| {
        let (mut engine, _) = FaultEngine::start(&dir, h).await.expect("engine");
        engine.apply_netem(delay_fault("killed-1", 3600)).await.expect("apply");
        std::mem::forget(engine);
    });
    assert!(qdisc_tree(&a, "va").contains("netem"));
    let agent = std::env::var_os("GRAYDAR_AGENT_BIN").expect("GRAYDAR_AGENT_BIN");
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", a.name()])
        .arg(&agent)
        .arg("--state-dir")
        .arg(state.path())
        .args(["--listen", "127.0.0.1:0", "--print-config"])
        .output()
        .expect("run agent");
    assert!(out.status.success());
    // --print-config exits before recovery; now start it for real, briefly.
    let mut child = std::process::Command::new("ip")
        .args(["netns", "exec", a.name()])
        .arg(&agent)
        .arg("--state-dir")
        .arg(state.path())
        .args(["--listen", "127.0.0.1:19477"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start agent");
    let deadline = Instant::now() + Duration::from_secs(120);
    while qdisc_tree(&a, "va") != before {
        assert!(
            Instant::now() < deadline,
            "the agent did not revert the journaled fault within 120 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let out = child.wait_with_output().expect("agent exit");
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("reverted a fault left by a previous run"), "{log}");
}

/// Leases end on the agent's own clock.
#[test]
#[ignore = "VM tier: runs inside QEMU via `cargo xtask test` (or `cargo xtask vm`)"]
fn an_expired_lease_reverts_the_fault() {
    use graydar_agent::faults::engine::{FaultEngine, unix_now};
    require_vm();
    let (a, _b, _ifindex) = pair("ve", 45);
    let before = qdisc_tree(&a, "va");
    let state = tempfile::tempdir().expect("state dir");
    let dir = state.path().to_owned();
    let expired = with_netlink(&a, async move |h| {
        let (mut engine, _) = FaultEngine::start(&dir, h).await.expect("engine");
        engine.apply_netem(delay_fault("lease-1", 1)).await.expect("apply");
        assert!(engine.expire(unix_now()).await.is_empty(), "not expired yet");
        tokio::time::sleep(Duration::from_millis(2100)).await;
        engine.expire(unix_now()).await
    });
    assert_eq!(expired, ["lease-1"]);
    assert_eq!(qdisc_tree(&a, "va"), before);
}
