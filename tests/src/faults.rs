//! Driving the agent's fault engine (graydar_agent::faults) inside a test
//! network namespace: a netlink connection opened on a thread that entered
//! the namespace acts on that namespace.

use crate::netns::NetNs;

/// Runs `f` with an rtnetlink handle bound to `ns`.
pub fn with_netlink<R: Send>(ns: &NetNs, f: impl AsyncFnOnce(rtnetlink::Handle) -> R + Send) -> R {
    ns.run_in(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        rt.block_on(async move {
            let (conn, handle, _) = rtnetlink::new_connection().expect("netlink socket");
            tokio::spawn(conn);
            f(handle).await
        })
    })
}

/// `tc -d qdisc show dev <ifname>` inside `ns`, the text compared before and after.
pub fn qdisc_tree(ns: &NetNs, ifname: &str) -> String {
    ns.exec_stdout("tc", ["-d", "qdisc", "show", "dev", ifname])
}

/// The qdiscs of `ifname` in `ns` from a netlink dump (RTM_GETQDISC), one
/// line per qdisc: parent, handle, kind and the options' bytes (statistics
/// left out). Equal before a fault and after its revert means the tree is
/// exactly back.
pub fn qdisc_dump(ns: &NetNs, ifname: &str) -> Vec<String> {
    use futures_util::TryStreamExt as _;
    use rtnetlink::packet_core::Nla as _;
    use rtnetlink::packet_route::tc::TcAttribute;
    let ifindex = ns.ifindex(ifname);
    with_netlink(ns, async move |h| {
        let all: Vec<_> = h.qdisc().get().execute().try_collect().await.expect("dump qdiscs");
        all.into_iter()
            .filter(|m| m.header.index as u32 == ifindex)
            .map(|m| {
                let mut line = format!("parent {:?} handle {:?}", m.header.parent, m.header.handle);
                for a in &m.attributes {
                    match a {
                        TcAttribute::Kind(k) => line.push_str(&format!(" kind {k}")),
                        TcAttribute::Options(_) => {
                            let mut b = vec![0u8; a.value_len()];
                            a.emit_value(&mut b);
                            line.push_str(&format!(" options {b:02x?}"));
                        }
                        _ => {}
                    }
                }
                line
            })
            .collect()
    })
}

/// Names of the links in `ns` starting with `prefix` (e.g. graydar's `gd-ifb`).
pub fn links_named(ns: &NetNs, prefix: &str) -> Vec<String> {
    ns.exec_stdout("ip", ["-o", "link", "show"])
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_owned())
        .filter(|n| n.starts_with(prefix))
        .collect()
}

/// `tc filter show dev <ifname> ingress` inside `ns` (empty without clsact).
pub fn ingress_filters(ns: &NetNs, ifname: &str) -> String {
    ns.exec_stdout(
        "sh",
        [
            "-c",
            &format!("tc filter show dev {ifname} ingress 2>/dev/null || true"),
        ],
    )
}

/// A loop device over a sparse file with a dm-linear device on top, removed
/// on drop (the VM tier's dm tests and the fault-latency benchmark).
pub struct LinearOnLoop {
    name: String,
    loopdev: String,
    dm_minor: u32,
    _dir: tempfile::TempDir,
}

impl LinearOnLoop {
    /// `name` of `mib` MiB (root: modprobe, losetup, device-mapper).
    pub fn new(name: &str, mib: u64) -> LinearOnLoop {
        use graydar_agent::faults::dm;
        for m in ["loop", "dm-mod"] {
            let s = std::process::Command::new("modprobe")
                .arg(m)
                .status()
                .expect("modprobe");
            assert!(s.success(), "modprobe {m}");
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let img = dir.path().join("disk.img");
        let f = std::fs::File::create(&img).expect("create image");
        f.set_len(mib << 20).expect("size image");
        let out = std::process::Command::new("losetup")
            .args(["-f", "--show"])
            .arg(&img)
            .output()
            .expect("losetup");
        assert!(
            out.status.success(),
            "losetup: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let loopdev = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let rdev = {
            use std::os::unix::fs::MetadataExt as _;
            std::fs::metadata(&loopdev).expect("stat loop").rdev()
        };
        let (major, minor) = (nix::sys::stat::major(rdev) as u32, nix::sys::stat::minor(rdev) as u32);
        let dmh = dm::open().expect("device-mapper");
        let (_, dm_minor) = dm::provision_linear(&dmh, name, major, minor, (mib << 20) / 512).expect("provision");
        LinearOnLoop {
            name: name.into(),
            loopdev,
            dm_minor,
            _dir: dir,
        }
    }

    /// `/dev/dm-N`.
    pub fn dev(&self) -> String {
        format!("/dev/dm-{}", self.dm_minor)
    }
}

impl Drop for LinearOnLoop {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(self.dev()).status();
        if let Ok(dmh) = graydar_agent::faults::dm::open() {
            let _ = graydar_agent::faults::dm::remove(&dmh, &self.name);
        }
        let _ = std::process::Command::new("losetup")
            .args(["-d", &self.loopdev])
            .status();
    }
}

/// Starts the real agent binary in `ns` on `state` (its journal) and waits
/// (60 s at most) until the routes are `routes_before` again; stops it.
pub fn start_agent_until_routes_are(ns: &NetNs, state: &std::path::Path, routes_before: &str) {
    let bin = crate::agent::agent_bin();
    let mut child = std::process::Command::new("ip")
        .args(["netns", "exec", ns.name()])
        .arg(&bin)
        .arg("--state-dir")
        .arg(state)
        .args(["--listen", "127.0.0.1:19479"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start agent");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while ns.exec_stdout("ip", ["route", "show", "table", "all"]) != routes_before {
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            panic!("the agent did not remove the route left by the killed engine");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
}
