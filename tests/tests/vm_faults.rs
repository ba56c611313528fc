//! VM tier: the netem fault engine on a kernel that has sch_netem (Debian
//! 6.1 under QEMU, booted by `cargo xtask vm`). #[ignore]d on the host.

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use graydar_agent::faults::netem::{Loss, NetemSpec};
use graydar_agent::faults::tc::{self, PriorRoot};
use graydar_tests::faults::{LinearOnLoop, qdisc_tree, with_netlink};
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
    // The agent's log goes to a file, not a pipe: a pipe nobody reads while
    // the agent starts fills up and blocks the agent mid-startup.
    let log_dir = tempfile::tempdir().expect("log dir");
    let log_path = log_dir.path().join("agent.log");
    let log_file = std::fs::File::create(&log_path).expect("agent log file");
    let mut child = std::process::Command::new("ip")
        .args(["netns", "exec", a.name()])
        .arg(&agent)
        .arg("--state-dir")
        .arg(state.path())
        .args(["--listen", "127.0.0.1:19477"])
        .stderr(log_file)
        .spawn()
        .expect("start agent");
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut failure = None;
    while qdisc_tree(&a, "va") != before {
        if let Ok(Some(status)) = child.try_wait() {
            failure = Some(format!(
                "the agent exited ({status}) before reverting the journaled fault"
            ));
            break;
        }
        if Instant::now() >= deadline {
            failure = Some("the agent did not revert the journaled fault within 120 s".to_owned());
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    child.wait().expect("agent exit");
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    if let Some(failure) = failure {
        panic!("{failure}; tc tree now:\n{}\nagent log:\n{log}", qdisc_tree(&a, "va"));
    }
    assert!(log.contains("reverted a fault left by a previous run"), "{log}");
}

/// Leases end on the agent's own monotonic clock (a clock the test moves).
#[test]
#[ignore = "VM tier: runs inside QEMU via `cargo xtask test` (or `cargo xtask vm`)"]
fn an_expired_lease_reverts_the_fault() {
    use graydar_agent::faults::engine::FaultEngine;
    use graydar_agent::faults::lease::ManualClock;
    require_vm();
    let (a, _b, _ifindex) = pair("ve", 45);
    let before = qdisc_tree(&a, "va");
    let state = tempfile::tempdir().expect("state dir");
    let dir = state.path().to_owned();
    let expired = with_netlink(&a, async move |h| {
        let clock = ManualClock::new();
        let (mut engine, _) = FaultEngine::start_with_clock(&dir, h, std::sync::Arc::new(clock.clone()))
            .await
            .expect("engine");
        engine.apply_netem(delay_fault("lease-1", 2)).await.expect("apply");
        clock.advance(Duration::from_millis(1999));
        assert!(engine.expire().await.is_empty(), "not expired yet");
        clock.advance(Duration::from_millis(1));
        engine.expire().await
    });
    assert_eq!(expired, ["lease-1"]);
    assert_eq!(qdisc_tree(&a, "va"), before);
}

/// Seconds of one 4 KiB write + fsync in `dir`.
fn fsync_secs(dir: &std::path::Path) -> f64 {
    use std::io::Write as _;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(false)
        .open(dir.join("probe"))
        .expect("open");
    let t = Instant::now();
    f.write_all(&[7u8; 4096]).expect("write");
    f.sync_all().expect("fsync");
    t.elapsed().as_secs_f64()
}

#[test]
#[ignore = "VM tier: runs inside QEMU via `cargo xtask test` (or `cargo xtask vm`)"]
fn dm_delay_slows_fsync_by_its_delay_and_revert_restores_table_and_latency() {
    use graydar_agent::faults::dm::{self, DmFaultSpec, DmTable as _};
    require_vm();
    let dev = LinearOnLoop::new("gd-delay", 64);
    let mnt = tempfile::tempdir().expect("mountpoint");
    for (cmd, args) in [
        ("mkfs.ext4", vec!["-q", "-F", &dev.dev()[..]]),
        ("mount", vec![&dev.dev()[..], mnt.path().to_str().expect("utf-8")]),
    ] {
        let s = std::process::Command::new(cmd).args(&args).status().expect(cmd);
        assert!(s.success(), "{cmd} {args:?}");
    }
    let base = (0..5).map(|_| fsync_secs(mnt.path())).fold(f64::INFINITY, f64::min);
    let dmh = dm::open().expect("dm");
    let prior = dm::snapshot(&dmh, "gd-delay").expect("snapshot");
    let spec = DmFaultSpec::Delay {
        read_ms: 0,
        write_ms: 100,
        flush_ms: Some(100),
    };
    spec.validate().expect("valid");
    let t = Instant::now();
    dm::swap_table(&dmh, "gd-delay", &spec.table(&prior)).expect("apply delay");
    let apply_ms = t.elapsed().as_secs_f64() * 1000.0;
    let slow = (0..3).map(|_| fsync_secs(mnt.path())).fold(f64::INFINITY, f64::min);
    let t = Instant::now();
    dm::swap_table(&dmh, "gd-delay", &prior).expect("revert");
    let revert_ms = t.elapsed().as_secs_f64() * 1000.0;
    let after = (0..5).map(|_| fsync_secs(mnt.path())).fold(f64::INFINITY, f64::min);
    eprintln!(
        "fsync: {:.1} ms -> {:.1} ms with 100 ms delay -> {:.1} ms after revert; apply {apply_ms:.1} ms, revert {revert_ms:.1} ms",
        base * 1e3,
        slow * 1e3,
        after * 1e3
    );
    assert!(
        slow >= 0.100,
        "fsync took {:.1} ms under a 100 ms write+flush delay",
        slow * 1e3
    );
    assert_eq!(
        dm::table(&dmh, "gd-delay").expect("table"),
        prior,
        "revert restores the original table"
    );
    assert!(after < 0.05, "fsync still {:.1} ms after revert", after * 1e3);
}

#[test]
#[ignore = "VM tier: runs inside QEMU via `cargo xtask test` (or `cargo xtask vm`)"]
fn dm_flakey_error_writes_gives_eio_and_revert_heals() {
    use graydar_agent::faults::dm::{self, DmFaultSpec, DmTable as _, FlakeyMode};
    use std::io::{Seek as _, Write as _};
    require_vm();
    let dev = LinearOnLoop::new("gd-flakey", 16);
    let dmh = dm::open().expect("dm");
    let prior = dm::snapshot(&dmh, "gd-flakey").expect("snapshot");
    let spec = DmFaultSpec::Flakey {
        up_s: 0,
        down_s: 3600,
        mode: FlakeyMode::ErrorWrites,
    };
    dm::swap_table(&dmh, "gd-flakey", &spec.table(&prior)).expect("apply flakey");
    let write_block = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new().write(true).open(dev.dev())?;
        f.seek(std::io::SeekFrom::Start(4096))?;
        f.write_all(&[1u8; 4096])?;
        f.sync_all()
    };
    let err = write_block().expect_err("writes must fail while flakey is down");
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    dm::swap_table(&dmh, "gd-flakey", &prior).expect("revert");
    assert_eq!(dm::table(&dmh, "gd-flakey").expect("table"), prior);
    write_block().expect("writes work again after revert");
}

/// A dm fault whose device was removed under it ends as reverted, with
/// the reason, instead of failing its revert forever.
#[test]
#[ignore = "VM tier: runs inside QEMU via `cargo xtask test` (or `cargo xtask vm`)"]
fn a_dm_fault_whose_device_was_removed_ends_as_reverted_with_the_reason() {
    use graydar_agent::faults::dm::{self, DmFaultSpec};
    use graydar_agent::faults::engine::{DmFault, FaultEngine};
    use graydar_agent::faults::journal::FILE_NAME;
    require_vm();
    let dev = LinearOnLoop::new("gd-gone", 16);
    let state = tempfile::tempdir().expect("state dir");
    let ns = NetNs::new("vdg");
    let dir = state.path().to_owned();
    let active = with_netlink(&ns, async move |h| {
        let (mut engine, _) = FaultEngine::start(&dir, h).await.expect("engine");
        engine
            .apply_dm(DmFault {
                id: "gone-1".into(),
                device: "gd-gone".into(),
                spec: DmFaultSpec::Delay {
                    read_ms: 20,
                    write_ms: 20,
                    flush_ms: None,
                },
                lease: Duration::from_secs(3600),
            })
            .await
            .expect("apply dm");
        dm::remove(&dm::open().expect("dm"), "gd-gone").expect("remove the device under the fault");
        engine
            .revert("gone-1")
            .await
            .expect("a removed device is nothing left to revert");
        engine.active_ids()
    });
    assert!(active.is_empty(), "{active:?}");
    let journal = std::fs::read_to_string(state.path().join(FILE_NAME)).expect("journal");
    let last = journal.lines().last().unwrap_or_default();
    assert!(
        last.contains("\"reverted\"") && last.contains("gd-gone was removed"),
        "the journal ends with the revert and its reason: {journal}"
    );
    drop(dev);
}

#[test]
#[ignore = "VM tier: runs inside QEMU via `cargo xtask test` (or `cargo xtask vm`)"]
fn a_dm_fault_left_by_a_crash_is_reverted_at_the_next_start() {
    use graydar_agent::faults::dm::{self, DmFaultSpec};
    use graydar_agent::faults::engine::{DmFault, FaultEngine};
    require_vm();
    let _dev = LinearOnLoop::new("gd-crash", 16);
    let dmh = dm::open().expect("dm");
    let prior = dm::snapshot(&dmh, "gd-crash").expect("snapshot");
    let state = tempfile::tempdir().expect("state dir");
    let ns = NetNs::new("vdm"); // any namespace: the engine needs a netlink socket
    let dir = state.path().to_owned();
    with_netlink(&ns, async move |h| {
        let (mut engine, _) = FaultEngine::start(&dir, h).await.expect("engine");
        let spec = DmFaultSpec::Delay {
            read_ms: 20,
            write_ms: 20,
            flush_ms: None,
        };
        engine
            .apply_dm(DmFault {
                id: "dm-1".into(),
                device: "gd-crash".into(),
                spec,
                lease: Duration::from_secs(3600),
            })
            .await
            .expect("apply dm");
        std::mem::forget(engine);
    });
    assert_ne!(
        dm::table(&dmh, "gd-crash").expect("table"),
        prior,
        "the delay table is loaded"
    );
    let dir = state.path().to_owned();
    let recovered = with_netlink(&ns, async move |h| {
        FaultEngine::start(&dir, h).await.expect("restart").1
    });
    assert_eq!(recovered.len(), 1, "{recovered:?}");
    assert!(recovered[0].result.is_ok(), "{recovered:?}");
    assert_eq!(
        dm::table(&dmh, "gd-crash").expect("table"),
        prior,
        "the original table is back"
    );
}

/// A kill between the two ioctls of a dm apply (DM_TABLE_LOAD, then the
/// resume that swaps tables) leaves the live table as it was and the
/// fault's table waiting in the inactive slot, where the next resume by
/// anyone (an operator, LVM) would swap it in with no journal to undo it.
/// The next start clears it: afterwards the device equals its baseline,
/// both table slots included.
#[test]
#[ignore = "VM tier: runs inside QEMU via `cargo xtask test` (or `cargo xtask vm`)"]
fn a_dm_table_left_in_the_inactive_slot_by_a_kill_mid_apply_is_cleared_at_the_next_start() {
    use graydar_agent::faults::dm::{self, DmFaultSpec};
    use graydar_agent::faults::engine::{DmFault, FaultEngine};
    use graydar_tests::blockdev::dmsetup;
    use graydar_tests::orphans::Baseline;
    require_vm();
    let _dev = LinearOnLoop::new("gd-midswap", 16);
    let dmh = dm::open().expect("dm");
    let prior = dm::snapshot(&dmh, "gd-midswap").expect("snapshot");
    let ns = NetNs::new("vdi"); // any namespace: the engine needs a netlink socket
    let baseline = Baseline::take(&[&ns]);
    let state = tempfile::tempdir().expect("state dir");
    let dir = state.path().to_owned();
    with_netlink(&ns, async move |h| {
        let (mut engine, _) = FaultEngine::start(&dir, h).await.expect("engine");
        engine
            .apply_dm(DmFault {
                id: "dm-mid".into(),
                device: "gd-midswap".into(),
                spec: DmFaultSpec::Delay {
                    read_ms: 20,
                    write_ms: 20,
                    flush_ms: None,
                },
                lease: Duration::from_secs(3600),
            })
            .await
            .expect("apply dm");
        std::mem::forget(engine);
    });
    // Rewind the kernel to the moment of the kill: the linear table live,
    // the delay table loaded into the inactive slot, not swapped in.
    let delay = dm::table(&dmh, "gd-midswap").expect("table");
    assert_ne!(delay, prior);
    dm::swap_table(&dmh, "gd-midswap", &prior).expect("back to linear");
    let lines: Vec<String> = delay.iter().map(|(s, l, t, p)| format!("{s} {l} {t} {p}")).collect();
    dmsetup(&["load", "gd-midswap", "--table", &lines.join("\n")]);
    assert!(
        baseline
            .orphans()
            .iter()
            .any(|o| o.contains("gd-midswap: inactive table")),
        "{:?}",
        baseline.orphans()
    );
    let dir = state.path().to_owned();
    let recovered = with_netlink(&ns, async move |h| {
        FaultEngine::start(&dir, h).await.expect("restart").1
    });
    assert_eq!(recovered.len(), 1, "{recovered:?}");
    assert!(recovered[0].result.is_ok(), "{recovered:?}");
    assert_eq!(baseline.orphans(), Vec::<String>::new());
}

// ---------------------------------------------------------------------------
// Scoped, ingress and controller-excluding netem (agent/src/faults/tree.rs),
// through the engine's one entry point (`FaultEngine::apply(id, &FaultSpec, lease)`).

use graydar_common::faults::{Direction, FaultSpec, Scope};
use graydar_tests::faults::{ingress_filters, links_named, qdisc_dump};

fn netem_spec(iface: &str, direction: Direction, cidrs: &[&str], netem: NetemSpec) -> FaultSpec {
    FaultSpec::Netem {
        interface: iface.into(),
        direction,
        scope: Scope {
            dst_cidrs: cidrs.iter().map(|c| c.to_string()).collect(),
            ..Default::default()
        },
        netem,
    }
}

fn delay_ms(ms: f64) -> NetemSpec {
    NetemSpec {
        delay_ms: ms,
        ..Default::default()
    }
}

/// Packets lost of `count` pings (`ping -c N -i 0.05`).
fn ping_loss(ns: &NetNs, dst: &str, count: u32) -> u32 {
    let out = ns.exec_stdout(
        "sh",
        ["-c", &format!("ping -q -n -c {count} -i 0.05 -W 1 {dst} || true")],
    );
    let line = out
        .lines()
        .find(|l| l.contains("received"))
        .unwrap_or_else(|| panic!("no summary in:\n{out}"));
    let received: u32 = line
        .split(", ")
        .nth(1)
        .and_then(|p| p.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("bad summary {line}"));
    count - received
}

/// a (va) ↔ b (vb) with b holding a second prefix routed through va.
fn two_destinations(tag: &str, net: u8) -> (NetNs, NetNs) {
    let (a, b, _) = pair(tag, net);
    b.ip(["addr", "add", &format!("10.204.{net}.2/24"), "dev", "vb"]);
    a.ip([
        "route",
        "add",
        &format!("10.204.{net}.0/24"),
        "via",
        &format!("10.203.{net}.2"),
    ]);
    (a, b)
}

/// Runs `f` with a fresh engine (state in `dir`) in `ns`; the engine is
/// dropped without reverting (a crash) unless `f` reverts.
fn with_engine<R: Send>(
    ns: &NetNs,
    dir: &std::path::Path,
    f: impl AsyncFnOnce(&mut graydar_agent::faults::engine::FaultEngine) -> R + Send,
) -> R {
    let dir = dir.to_owned();
    with_netlink(ns, async move |h| {
        let (mut engine, _) = graydar_agent::faults::engine::FaultEngine::start(&dir, h)
            .await
            .expect("engine");
        let r = f(&mut engine).await;
        std::mem::forget(engine);
        r
    })
}

#[test]
#[ignore = "VM tier: runs inside QEMU via `cargo xtask test` (or `cargo xtask vm`)"]
fn a_fault_scoped_to_one_cidr_leaves_the_other_destination_untouched() {
    require_vm();
    let (a, _b) = two_destinations("vs", 50);
    let (scoped, other) = ("10.204.50.2", "10.203.50.2");
    let before = qdisc_dump(&a, "va");
    let before_tc = qdisc_tree(&a, "va");
    let (base_s, base_o) = (ping_avg_ms(&a, scoped, 20), ping_avg_ms(&a, other, 20));
    let state = tempfile::tempdir().expect("state");
    let spec = netem_spec("va", Direction::Egress, &["10.204.50.0/24"], delay_ms(100.0));
    let ops = with_engine(&a, state.path(), async |e| {
        let ops = e.describe(&spec).await.expect("describe");
        e.apply("scoped-1", &spec, Duration::from_secs(600))
            .await
            .expect("apply");
        ops
    });
    eprintln!("describe:\n  {}", ops.join("\n  "));
    let tree = qdisc_tree(&a, "va");
    assert!(tree.contains("prio") && tree.contains("netem"), "{tree}");
    let (s, o) = (ping_avg_ms(&a, scoped, 20), ping_avg_ms(&a, other, 20));
    let lost_other = ping_loss(&a, other, 100);
    eprintln!("scoped {base_s:.2} -> {s:.2} ms; other {base_o:.2} -> {o:.2} ms, {lost_other}/100 lost");
    assert!(
        (90.0..=110.0).contains(&(s - base_s)),
        "scoped RTT +{:.2} ms",
        s - base_s
    );
    assert!(
        o - base_o < 10.0,
        "the other destination's RTT rose by {:.2} ms",
        o - base_o
    );
    assert_eq!(lost_other, 0, "no loss to the other destination");
    with_engine(&a, state.path(), async |_| ()); // restart: the journal reverts it
    assert_eq!(qdisc_dump(&a, "va"), before, "netlink dump equal after revert");
    assert_eq!(qdisc_tree(&a, "va"), before_tc);
}

#[test]
#[ignore = "VM tier: runs inside QEMU via `cargo xtask test` (or `cargo xtask vm`)"]
fn ingress_delay_goes_through_an_ifb_and_revert_removes_it() {
    require_vm();
    let (a, _b, _) = pair("vi", 51);
    let dst = "10.203.51.2";
    let before = qdisc_dump(&a, "va");
    let base = ping_avg_ms(&a, dst, 20);
    let state = tempfile::tempdir().expect("state");
    let spec = netem_spec("va", Direction::Ingress, &[], delay_ms(100.0));
    with_netlink(&a, async |h| {
        let (mut e, _) = graydar_agent::faults::engine::FaultEngine::start(state.path(), h)
            .await
            .expect("engine");
        e.apply("in-1", &spec, Duration::from_secs(600))
            .await
            .expect("apply ingress");
        let ifbs = links_named(&a, "gd-ifb");
        assert_eq!(ifbs, ["gd-ifb0"]);
        assert!(
            ingress_filters(&a, "va").contains("mirred"),
            "{}",
            ingress_filters(&a, "va")
        );
        let delayed = ping_avg_ms(&a, dst, 20);
        eprintln!("ingress delay: rtt {base:.2} -> {delayed:.2} ms");
        assert!((90.0..=110.0).contains(&(delayed - base)), "+{:.2} ms", delayed - base);
        e.revert("in-1").await.expect("revert");
    });
    assert!(links_named(&a, "gd-ifb").is_empty(), "no ifb left");
    assert_eq!(qdisc_dump(&a, "va"), before, "no clsact, root as before");
    let after = ping_avg_ms(&a, dst, 20);
    assert!(after < base + 10.0, "rtt {after:.2} after revert");
}

#[test]
#[ignore = "VM tier: runs inside QEMU via `cargo xtask test` (or `cargo xtask vm`)"]
fn ipv6_scoped_delay_hits_only_its_prefix() {
    require_vm();
    let (a, b, _) = pair("v6", 52);
    // NetNs disables IPv6 namespace-wide; turn it on for the two veth ends.
    for (ns, dev) in [(&a, "va"), (&b, "vb")] {
        let path = format!("/proc/sys/net/ipv6/conf/{dev}/disable_ipv6");
        ns.run_in(|| std::fs::write(&path, "0")).expect("enable ipv6");
    }
    a.ip(["-6", "addr", "add", "fd00:203:52::1/64", "dev", "va", "nodad"]);
    b.ip(["-6", "addr", "add", "fd00:203:52::2/64", "dev", "vb", "nodad"]);
    b.ip(["-6", "addr", "add", "fd00:204:52::2/64", "dev", "vb", "nodad"]);
    a.ip(["-6", "route", "add", "fd00:204:52::/64", "via", "fd00:203:52::2"]);
    let (scoped, other) = ("fd00:204:52::2", "fd00:203:52::2");
    let before = qdisc_dump(&a, "va");
    let (base_s, base_o) = (ping_avg_ms(&a, scoped, 20), ping_avg_ms(&a, other, 20));
    let state = tempfile::tempdir().expect("state");
    let spec = netem_spec("va", Direction::Egress, &["fd00:204:52::/64"], delay_ms(100.0));
    with_netlink(&a, async |h| {
        let (mut e, _) = graydar_agent::faults::engine::FaultEngine::start(state.path(), h)
            .await
            .expect("engine");
        e.apply("v6-1", &spec, Duration::from_secs(600)).await.expect("apply");
        let (s, o) = (ping_avg_ms(&a, scoped, 20), ping_avg_ms(&a, other, 20));
        eprintln!("ipv6: scoped {base_s:.2} -> {s:.2} ms, other {base_o:.2} -> {o:.2} ms");
        assert!((90.0..=110.0).contains(&(s - base_s)), "scoped +{:.2} ms", s - base_s);
        assert!(o - base_o < 10.0, "other +{:.2} ms", o - base_o);
        e.revert("v6-1").await.expect("revert");
    });
    assert_eq!(qdisc_dump(&a, "va"), before);
}

/// 100 % loss on the whole interface; the protected endpoint (the
/// controller) still answers over TCP and UDP, everything else is lost.
#[test]
#[ignore = "VM tier: runs inside QEMU via `cargo xtask test` (or `cargo xtask vm`)"]
fn the_controller_is_excluded_from_a_whole_interface_loss_fault() {
    use std::io::{Read as _, Write as _};
    require_vm();
    let (a, b) = two_destinations("vx", 53);
    let controller: std::net::SocketAddr = "10.204.53.2:18477".parse().expect("addr");
    let before = qdisc_dump(&a, "va");
    let listener = b.run_in(|| std::net::TcpListener::bind(controller).expect("bind tcp"));
    let udp = b.run_in(|| UdpSocket::bind(controller).expect("bind udp"));
    let server = std::thread::spawn(move || {
        for _ in 0..2 {
            let (mut s, _) = listener.accept().expect("accept");
            let mut buf = [0u8; 5];
            s.read_exact(&mut buf).expect("read");
            s.write_all(&buf).expect("echo");
        }
    });
    let udp_echo = std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        udp.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
        if let Ok((n, from)) = udp.recv_from(&mut buf) {
            let _ = udp.send_to(&buf[..n], from);
        }
    });
    // Neighbours resolved before the fault.
    a.exec("ping", ["-c", "1", "-W", "2", "10.204.53.2"]);
    let state = tempfile::tempdir().expect("state");
    let spec = netem_spec(
        "va",
        Direction::Egress,
        &[],
        NetemSpec {
            loss: Some(Loss::Random {
                percent: 100.0,
                correlation: 0.0,
            }),
            ..Default::default()
        },
    );
    with_netlink(&a, async |h| {
        let (mut e, _) = graydar_agent::faults::engine::FaultEngine::start(state.path(), h)
            .await
            .expect("engine");
        e.set_protected(vec![controller]);
        eprintln!(
            "describe:\n  {}",
            e.describe(&spec).await.expect("describe").join("\n  ")
        );
        e.apply("cut-1", &spec, Duration::from_secs(600)).await.expect("apply");
        e.revert_all().await;
        e.apply("cut-2", &spec, Duration::from_secs(600))
            .await
            .expect("apply again");
    });
    let lost_other = ping_loss(&a, "10.203.53.2", 20);
    let lost_ctl = ping_loss(&a, "10.204.53.2", 20);
    let tcp = a.run_in(move || -> std::io::Result<Vec<u8>> {
        let mut s = std::net::TcpStream::connect_timeout(&controller, Duration::from_secs(5))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(b"hello")?;
        let mut buf = vec![0u8; 5];
        s.read_exact(&mut buf)?;
        Ok(buf)
    });
    let udp_reply = a.run_in(move || -> std::io::Result<Vec<u8>> {
        let s = UdpSocket::bind("0.0.0.0:0")?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.send_to(b"ping", controller)?;
        let mut buf = [0u8; 16];
        let n = s.recv(&mut buf)?;
        Ok(buf[..n].to_vec())
    });
    let blocked_tcp = a.run_in(|| {
        std::net::TcpStream::connect_timeout(&"10.203.53.2:18477".parse().expect("a"), Duration::from_secs(2))
    });
    eprintln!("other: {lost_other}/20 lost; controller: {lost_ctl}/20 lost; tcp {tcp:?}; udp {udp_reply:?}");
    with_engine(&a, state.path(), async |_| ()); // restart reverts
    assert_eq!(lost_other, 20, "all other traffic is lost");
    assert_eq!(lost_ctl, 0, "the controller's address is never impaired");
    assert_eq!(tcp.expect("tcp to the controller"), b"hello");
    assert_eq!(udp_reply.expect("udp to the controller"), b"ping");
    assert!(blocked_tcp.is_err(), "tcp elsewhere must not get through");
    assert_eq!(qdisc_dump(&a, "va"), before);
    // Second connection so the server thread ends.
    let _ = a.run_in(move || std::net::TcpStream::connect(controller).and_then(|mut s| s.write_all(b"bye!!")));
    let _ = server.join();
    let _ = udp_echo.join();
}

/// A scoped ingress fault left by a killed agent (the engine vanishes
/// without reverting, as on SIGKILL): the real agent binary, started on the
/// same state directory, removes the redirect, the clsact, the ifb and the
/// tree before it serves anything.
#[test]
#[ignore = "VM tier: runs inside QEMU via `cargo xtask test` (or `cargo xtask vm`)"]
fn a_scoped_ingress_fault_left_by_a_killed_agent_is_gone_after_restart() {
    require_vm();
    let (a, _b, _) = pair("vk2", 54);
    let before = qdisc_dump(&a, "va");
    let state = tempfile::tempdir().expect("state");
    let spec = netem_spec("va", Direction::Ingress, &["10.203.54.0/24"], delay_ms(50.0));
    with_engine(&a, state.path(), async |e| {
        e.set_protected(vec!["192.0.2.1:8477".parse().expect("addr")]);
        e.apply("kill-in-1", &spec, Duration::from_secs(3600))
            .await
            .expect("apply");
    });
    assert_eq!(links_named(&a, "gd-ifb"), ["gd-ifb0"]);
    assert_ne!(qdisc_dump(&a, "va"), before, "clsact added");
    let agent = std::env::var_os("GRAYDAR_AGENT_BIN").expect("GRAYDAR_AGENT_BIN");
    // Without the incast probe: its own tc ingress classifier (a clsact of the
    // agent's, on every interface) would change the dump this test compares
    // against the one taken before the fault.
    let config = state.path().join("agent.toml");
    std::fs::write(&config, "[incast]\nenabled = false\n").expect("agent config");
    let mut child = std::process::Command::new("ip")
        .args(["netns", "exec", a.name()])
        .arg(&agent)
        .arg("--config")
        .arg(&config)
        .arg("--state-dir")
        .arg(state.path())
        .args(["--listen", "127.0.0.1:19478"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start agent");
    let deadline = Instant::now() + Duration::from_secs(120);
    while !links_named(&a, "gd-ifb").is_empty() || qdisc_dump(&a, "va") != before {
        assert!(Instant::now() < deadline, "the agent did not clean up within 120 s");
        std::thread::sleep(Duration::from_millis(200));
    }
    // SIGKILL this one too: nothing of the fault may come back.
    let _ = child.kill();
    let _ = child.wait();
    assert!(links_named(&a, "gd-ifb").is_empty());
    assert_eq!(qdisc_dump(&a, "va"), before);
    assert!(!ingress_filters(&a, "va").contains("mirred"));
}
