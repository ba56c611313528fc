//! The measuring half of `cargo xtask bench --only fault-latency`
//! (xtask/src/bench_fault_latency.rs builds this example and runs it inside
//! the test VM): apply and revert latency of netem and dm faults through the
//! agent's fault engine, each next to a baseline measured in the same run
//! (an RTM_GETQDISC dump round trip, a DM_VERSION ioctl). It prints figures
//! and asserts nothing about time; it is an example, not a test, so no test
//! run counts it as passed. Outside the VM (GRAYDAR_VM=1) it refuses to run.

use std::time::{Duration, Instant};

use graydar_agent::faults::dm::{self, DmFaultSpec};
use graydar_agent::faults::engine::{DmFault, FaultEngine};
use graydar_agent::faults::netem::NetemSpec;
use graydar_agent::faults::tc;
use graydar_common::faults::{Direction, FaultSpec, Scope};
use graydar_tests::faults::{LinearOnLoop, with_netlink};
use graydar_tests::netns::{NetNs, veth_pair};

fn median_max(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[v.len() - 1])
}

fn ms_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

/// a (va) ↔ b (vb) on 10.203.`net`.0/24; the ifindex of va.
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

fn main() {
    if std::env::var("GRAYDAR_VM").as_deref() != Ok("1") {
        eprintln!(
            "bench_fault_latency runs only inside the graydar test VM (GRAYDAR_VM=1): \
             use `cargo xtask bench --only fault-latency`"
        );
        std::process::exit(2);
    }
    const N: usize = 20;
    let (a, _b, ifindex) = pair("vbn", 55);
    let state = tempfile::tempdir().expect("state");
    let dir = state.path().to_owned();
    let mut lines = Vec::new();
    let netem = with_netlink(&a, async move |h| {
        let mut out = Vec::new();
        let mut base = Vec::new();
        for _ in 0..N {
            let t = Instant::now();
            tc::root_of(&h, ifindex).await.expect("dump");
            base.push(ms_since(t));
        }
        out.push((
            "baseline: RTM_GETQDISC dump round trip".to_owned(),
            median_max(base),
            (0.0, 0.0),
        ));
        let (mut e, _) = FaultEngine::start(&dir, h).await.expect("engine");
        for (name, spec, protected) in [
            (
                "netem whole interface (bare netem root)",
                netem_spec("va", Direction::Egress, &[], delay_ms(10.0)),
                false,
            ),
            (
                "netem whole interface, controller excluded (prio + netem + 1 flower)",
                netem_spec("va", Direction::Egress, &[], delay_ms(10.0)),
                true,
            ),
            (
                "netem scoped to 2 CIDRs (prio + netem + 2 flower)",
                netem_spec("va", Direction::Egress, &["10.1.0.0/16", "fd00::/64"], delay_ms(10.0)),
                false,
            ),
            (
                "netem ingress (ifb + netem + clsact + mirred redirect)",
                netem_spec("va", Direction::Ingress, &[], delay_ms(10.0)),
                false,
            ),
        ] {
            e.set_protected(if protected {
                vec!["192.0.2.1:8477".parse().expect("addr")]
            } else {
                vec![]
            });
            let (mut ap, mut rv) = (Vec::new(), Vec::new());
            for i in 0..N {
                let id = format!("b{i}");
                let t = Instant::now();
                e.apply(&id, &spec, Duration::from_secs(600)).await.expect("apply");
                ap.push(ms_since(t));
                let t = Instant::now();
                e.revert(&id).await.expect("revert");
                rv.push(ms_since(t));
            }
            out.push((name.to_owned(), median_max(ap), median_max(rv)));
        }
        out
    });
    lines.extend(netem);
    // dm: a dm-linear device over a loop file, ext4 mounted on it.
    let dev = LinearOnLoop::new("gd-bench", 64);
    let mnt = tempfile::tempdir().expect("mnt");
    for (cmd, args) in [
        ("mkfs.ext4", vec!["-q", "-F", &dev.dev()[..]]),
        ("mount", vec![&dev.dev()[..], mnt.path().to_str().expect("utf-8")]),
    ] {
        assert!(
            std::process::Command::new(cmd)
                .args(&args)
                .status()
                .expect(cmd)
                .success()
        );
    }
    let dmh = dm::open().expect("dm");
    let mut base = Vec::new();
    for _ in 0..N {
        let t = Instant::now();
        dmh.version().expect("DM_VERSION");
        base.push(ms_since(t));
    }
    lines.push(("baseline: DM_VERSION ioctl".to_owned(), median_max(base), (0.0, 0.0)));
    let dirty = |mnt: &std::path::Path| {
        // 4 MiB of dirty page cache, not synced: what a lockfs freeze would flush.
        std::fs::write(mnt.join("dirty"), vec![7u8; 4 << 20]).expect("write");
    };
    let ns = NetNs::new("vbd");
    let dir2 = tempfile::tempdir().expect("state");
    let d2 = dir2.path().to_owned();
    let mpath = mnt.path().to_owned();
    let dm_lines = with_netlink(&ns, async move |h| {
        let (mut e, _) = FaultEngine::start(&d2, h).await.expect("engine");
        let mut out = Vec::new();
        for (name, with_dirty) in [
            ("dm-delay 100 ms, idle", false),
            ("dm-delay 100 ms, 4 MiB dirty on ext4", true),
        ] {
            let (mut ap, mut rv) = (Vec::new(), Vec::new());
            for i in 0..N / 2 {
                let id = format!("d{i}");
                if with_dirty {
                    dirty(&mpath);
                }
                let t = Instant::now();
                e.apply_dm(DmFault {
                    id: id.clone(),
                    device: "gd-bench".into(),
                    spec: DmFaultSpec::Delay {
                        read_ms: 100,
                        write_ms: 100,
                        flush_ms: Some(100),
                    },
                    lease: Duration::from_secs(600),
                })
                .await
                .expect("apply dm");
                ap.push(ms_since(t));
                if with_dirty {
                    dirty(&mpath);
                }
                let t = Instant::now();
                e.revert(&id).await.expect("revert dm");
                rv.push(ms_since(t));
            }
            out.push((name.to_owned(), median_max(ap), median_max(rv)));
        }
        out
    });
    lines.extend(dm_lines);
    // The cause of the earlier 507 ms: a suspend that freezes the filesystem (lockfs).
    for (name, flag) in [
        ("dmsetup suspend+resume (lockfs), 4 MiB dirty", ""),
        ("dmsetup suspend --nolockfs+resume, 4 MiB dirty", "--nolockfs"),
    ] {
        let mut v = Vec::new();
        for _ in 0..N / 2 {
            dirty(mnt.path());
            let t = Instant::now();
            let s = std::process::Command::new("sh")
                .args([
                    "-c",
                    &format!(
                        "DM_DISABLE_UDEV=1 dmsetup suspend {flag} gd-bench && DM_DISABLE_UDEV=1 dmsetup resume gd-bench"
                    ),
                ])
                .status()
                .expect("dmsetup");
            v.push(ms_since(t));
            assert!(s.success());
        }
        lines.push((name.to_owned(), median_max(v), (0.0, 0.0)));
    }
    let _ = std::process::Command::new("umount").arg(mnt.path()).status();
    println!(
        "GRAYDAR_BENCH fault latency (QEMU TCG software emulation, Debian {}; median / max ms)",
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
    );
    for (name, (am, ax), (rm, rx)) in lines {
        if rm == 0.0 && rx == 0.0 {
            println!("  {name:<72} {am:>8.2} / {ax:>8.2}");
        } else {
            println!("  {name:<72} apply {am:>7.2} / {ax:>7.2}   revert {rm:>7.2} / {rx:>7.2}");
        }
    }
}
