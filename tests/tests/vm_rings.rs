//! VM tier for the `nic_rings` mechanism's kernel piece
//! (agent/src/faults/rings.rs: ethtool netlink RINGS_GET / RINGS_SET) on a
//! real driver: virtio_net on Debian's 6.1 kernel under QEMU, booted by
//! `cargo xtask vm` (#[ignore]d on the host, where the only NIC is the
//! machine's own and must never be resized).
//!
//! The guest has three virtio-net NICs wired only to each other (one QEMU
//! hub with no other port, xtask/src/vm.rs `GUEST_NICS`), so nothing here can
//! reach a network outside the guest. Two offer VIRTIO_F_RING_RESET (QEMU
//! 7.2's default), so virtio_net can resize their rings; the third has
//! `queue_reset=off`, so it cannot: the refusal path. virtio_net is not loaded
//! at boot: the test loads it.

use std::path::Path;
use std::process::Command;

use graydar_agent::faults::rings::{self, Rings, RingsError};

fn require_vm() {
    assert_eq!(
        std::env::var("GRAYDAR_VM").as_deref(),
        Ok("1"),
        "this test runs only inside the graydar test VM (GRAYDAR_VM=1): use `cargo xtask vm`"
    );
}

fn sh(cmd: &str, args: &[&str]) {
    let status = Command::new(cmd)
        .args(args)
        .status()
        .unwrap_or_else(|e| panic!("running {cmd} {args:?}: {e}"));
    assert!(status.success(), "{cmd} {args:?} failed: {status}");
}

/// MACs of the guest's NICs that can resize their rings (xtask/src/vm.rs `GUEST_NICS`).
const RESIZABLE_MACS: [&str; 2] = ["52:54:00:47:44:01", "52:54:00:47:44:02"];
/// MAC of the guest's NIC with `queue_reset=off`.
const FIXED_MAC: &str = "52:54:00:47:44:03";

/// virtio_net, loaded for one test and unloaded on drop, so that the VM
/// targets run after this one in the same boot find the guest as booted (no
/// extra interfaces). `nics`: (name, MAC) of the interfaces it drives (by the
/// `/sys/class/net/IF/device/driver` symlink), sorted by MAC.
struct VirtioNet {
    nics: Vec<(String, String)>,
}

impl VirtioNet {
    fn load() -> VirtioNet {
        sh("modprobe", &["virtio_net"]);
        let mut nics: Vec<(String, String)> = std::fs::read_dir("/sys/class/net")
            .expect("reading /sys/class/net")
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| rings::driver_of(n) == "virtio_net")
            .map(|n| {
                let mac = std::fs::read_to_string(format!("/sys/class/net/{n}/address"))
                    .unwrap_or_else(|e| panic!("reading {n}'s MAC: {e}"));
                (n, mac.trim().to_owned())
            })
            .collect();
        nics.sort_by(|a, b| a.1.cmp(&b.1));
        let net = VirtioNet { nics };
        let macs: Vec<&str> = net.nics.iter().map(|(_, m)| m.as_str()).collect();
        assert_eq!(
            macs,
            [RESIZABLE_MACS[0], RESIZABLE_MACS[1], FIXED_MAC],
            "the guest's virtio_net NICs (xtask/src/vm.rs GUEST_NICS): {:?}",
            net.nics
        );
        net
    }
}

impl Drop for VirtioNet {
    fn drop(&mut self) {
        let _ = Command::new("modprobe").args(["-r", "virtio_net"]).status();
    }
}

/// Restores a snapshot on drop, so a failed assertion leaves the NIC as found.
struct Restore<'a> {
    iface: &'a str,
    snapshot: Rings,
}

impl Drop for Restore<'_> {
    fn drop(&mut self) {
        if let Err(e) = rings::set(self.iface, Some(self.snapshot.rx), Some(self.snapshot.tx)) {
            eprintln!("restoring {} to {:?}: {e}", self.iface, self.snapshot);
        }
    }
}

#[test]
#[ignore = "VM tier: runs inside QEMU via `cargo xtask test` (or `cargo xtask vm`)"]
fn virtio_net_rings_shrink_and_restore_exactly() {
    require_vm();
    let net = VirtioNet::load();
    let nics = &net.nics;
    for (nic, _) in nics.iter().filter(|(_, mac)| RESIZABLE_MACS.contains(&mac.as_str())) {
        // Up, as a NIC under a real fault would be: the resize must stop and
        // restart the running queues (virtio_net disables NAPI around it).
        sh("ip", &["link", "set", nic, "up"]);
        assert!(Path::new(&format!("/sys/class/net/{nic}/device/driver")).exists());
        let before = rings::get(nic).unwrap_or_else(|e| panic!("RINGS_GET {nic}: {e}"));
        println!("{nic}: before {before:?}");
        assert!(
            before.rx > 1 && before.tx > 1 && before.rx <= before.rx_max && before.tx <= before.tx_max,
            "{nic}: implausible ring sizes {before:?}"
        );
        let _restore = Restore {
            iface: nic,
            snapshot: before,
        };
        let (rx, tx) = (before.rx / 2, before.tx / 2);
        rings::set(nic, Some(rx), Some(tx)).unwrap_or_else(|e| {
            panic!(
                "{nic}: RINGS_SET rx {rx} tx {tx} refused: {e} (QEMU >= 7.2 offers VIRTIO_F_RING_RESET, \
                 with which virtio_net resizes)"
            )
        });
        let after = rings::get(nic).unwrap_or_else(|e| panic!("RINGS_GET {nic} after the set: {e}"));
        println!("{nic}: after setting rx {rx} tx {tx}: {after:?}");
        assert_eq!((after.rx, after.tx), (rx, tx), "{nic}: the new sizes did not take");
        assert_eq!(
            (after.rx_max, after.tx_max),
            (before.rx_max, before.tx_max),
            "{nic}: the maxima moved"
        );
        // Only the given size is sent: tx alone leaves rx as it is.
        rings::set(nic, None, Some(before.tx)).unwrap_or_else(|e| panic!("{nic}: tx alone: {e}"));
        let tx_only = rings::get(nic).unwrap_or_else(|e| panic!("RINGS_GET {nic}: {e}"));
        assert_eq!((tx_only.rx, tx_only.tx), (rx, before.tx), "{nic}: setting tx alone");
        // Restore the snapshot exactly and read it back.
        rings::set(nic, Some(before.rx), Some(before.tx)).unwrap_or_else(|e| panic!("{nic}: restore: {e}"));
        let restored = rings::get(nic).unwrap_or_else(|e| panic!("RINGS_GET {nic} after restore: {e}"));
        println!("{nic}: restored {restored:?}");
        assert_eq!(restored, before, "{nic}: not restored to the snapshot");
    }
}

#[test]
#[ignore = "VM tier: runs inside QEMU via `cargo xtask test` (or `cargo xtask vm`)"]
fn a_nic_that_cannot_resize_says_so_naming_interface_and_driver() {
    require_vm();
    let net = VirtioNet::load();
    let nics = &net.nics;
    let (nic, _) = nics
        .iter()
        .find(|(_, mac)| mac == FIXED_MAC)
        .expect("the queue_reset=off NIC");
    sh("ip", &["link", "set", nic, "up"]);
    let before = rings::get(nic).unwrap_or_else(|e| panic!("RINGS_GET {nic}: {e}"));
    let _restore = Restore {
        iface: nic,
        snapshot: before,
    };
    let (rx, tx) = (before.rx / 2, before.tx / 2);
    let err = rings::set(nic, Some(rx), Some(tx)).expect_err("a NIC without VIRTIO_F_RING_RESET cannot resize");
    println!("{nic} (queue_reset=off): before {before:?}; RINGS_SET rx {rx} tx {tx}: {err}");
    let text = err.to_string();
    assert!(
        matches!(err, RingsError::CannotResize { .. })
            && text.contains(&format!("the driver virtio_net of {nic} cannot change its ring sizes")),
        "{nic}: expected the clear CannotResize naming the interface and driver, got {err:?}"
    );
    assert_eq!(
        rings::get(nic).expect("RINGS_GET"),
        before,
        "{nic}: a refused set changed the rings"
    );
}

#[test]
#[ignore = "VM tier: runs inside QEMU via `cargo xtask test` (or `cargo xtask vm`)"]
fn refusals_name_the_interface_the_driver_and_the_maxima() {
    require_vm();
    let net = VirtioNet::load();
    let nics = &net.nics;
    let (nic, _) = &nics[0];
    let before = rings::get(nic).unwrap_or_else(|e| panic!("RINGS_GET {nic}: {e}"));
    // Above the maximum: the kernel's EINVAL, reported with what was asked and the maxima.
    let too_big = before.rx_max + 1;
    let err = rings::set(nic, Some(too_big), None).expect_err("a size above the maximum must be refused");
    println!("{nic}: rx {too_big} refused: {err}");
    match &err {
        RingsError::Rejected { iface, rx, max, .. } => {
            assert_eq!(iface, nic);
            assert_eq!(*rx, Some(too_big));
            assert_eq!(max.map(|m| m.rx_max), Some(before.rx_max), "{err}");
        }
        other => panic!("{nic}: expected Rejected, got {other:?}"),
    }
    let text = err.to_string();
    assert!(
        text.contains(nic.as_str()) && text.contains(&too_big.to_string()) && text.contains(&before.rx_max.to_string()),
        "{text}"
    );
    assert_eq!(
        rings::get(nic).expect("RINGS_GET"),
        before,
        "a refused set changed the rings"
    );
    // Setting what is already there is a no-op the kernel accepts.
    rings::set(nic, Some(before.rx), Some(before.tx)).expect("setting the current sizes");
    // lo has no ring parameters (and no driver symlink).
    let err = rings::get("lo").expect_err("lo has no rings");
    println!("lo: {err}");
    assert!(matches!(err, RingsError::NoRingInfo { .. }), "{err:?}");
    assert!(err.to_string().contains("the driver unknown of lo"), "{err}");
    // A missing interface.
    let err = rings::get("graydar-none0").expect_err("no such interface");
    assert!(matches!(err, RingsError::NoSuchInterface { .. }), "{err:?}");
    assert!(err.to_string().contains("graydar-none0"), "{err}");
}

/// The `nic_rings` fault through the agent's fault engine, on the real
/// driver: applied (journaled, the sizes set), reverted to the snapshot
/// exactly; applied again and left by an engine that is gone (a kill),
/// restored by the next start's recovery; sizes above the maxima refused
/// before anything changes; the NIC that cannot resize fails the fault with
/// its reason and is left as it was.
#[test]
#[ignore = "VM tier: runs inside QEMU via `cargo xtask test` (or `cargo xtask vm`)"]
fn the_nic_rings_fault_applies_reverts_and_is_recovered_after_a_kill() {
    use graydar_agent::faults::engine::FaultEngine;
    use graydar_common::faults::FaultSpec;
    use std::time::Duration;
    require_vm();
    let net = VirtioNet::load();
    let nic = net.nics[0].0.clone();
    let fixed = net.nics[2].0.clone();
    sh("ip", &["link", "set", &nic, "up"]);
    let before = rings::get(&nic).expect("RINGS_GET");
    let _restore = Restore {
        iface: &nic,
        snapshot: before,
    };
    let state = tempfile::tempdir().expect("state dir");
    let spec = |iface: &str, rx: u32, tx: u32| FaultSpec::NicRings {
        interface: iface.to_owned(),
        rx: Some(rx),
        tx: Some(tx),
    };
    let lease = Duration::from_secs(600);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async {
        let (conn, handle, _) = rtnetlink::new_connection().expect("netlink");
        tokio::spawn(conn);
        let (mut e, _) = FaultEngine::start(state.path(), handle.clone()).await.expect("engine");
        let ops = e.describe(&spec(&nic, 64, 32)).await.expect("describe");
        println!("dry run: {ops:#?}");
        assert!(
            ops.iter()
                .any(|o| o.contains("rx 256 -> 64") || o.contains(&format!("rx {} -> 64", before.rx)))
        );
        e.apply("nr-1", &spec(&nic, 64, 32), lease).await.expect("apply");
        let during = rings::get(&nic).expect("RINGS_GET");
        println!("{nic} under the fault: {during:?}");
        assert_eq!((during.rx, during.tx), (64, 32));
        e.revert("nr-1").await.expect("revert");
        assert_eq!(rings::get(&nic).expect("RINGS_GET"), before, "reverted exactly");

        let above = e.apply("nr-2", &spec(&nic, before.rx_max + 1, 32), lease).await;
        let msg = above.expect_err("above the maximum").to_string();
        assert!(msg.contains("maximum") && msg.contains(&nic), "{msg}");
        assert_eq!(rings::get(&nic).expect("RINGS_GET"), before, "nothing changed");
        assert!(e.active_ids().is_empty());

        let refused = e.apply("nr-3", &spec(&fixed, 64, 64), lease).await;
        let msg = refused.expect_err("the NIC without ring reset").to_string();
        println!("{fixed}: {msg}");
        assert!(
            msg.contains(&fixed) && msg.contains("virtio_net") && msg.contains("cannot change"),
            "{msg}"
        );
        assert!(e.active_ids().is_empty(), "a failed apply leaves nothing active");

        e.apply("nr-4", &spec(&nic, 128, 128), lease).await.expect("apply");
        std::mem::forget(e); // a kill: no revert
        assert_eq!(rings::get(&nic).expect("RINGS_GET").rx, 128);
        let (_e, recovered) = FaultEngine::start(state.path(), handle).await.expect("engine again");
        println!("recovered: {recovered:?}");
        assert!(
            recovered.iter().any(|r| r.id == "nr-4" && r.result.is_ok()),
            "{recovered:?}"
        );
    });
    assert_eq!(
        rings::get(&nic).expect("RINGS_GET"),
        before,
        "restored by the next start"
    );
}
