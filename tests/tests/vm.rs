//! VM tier: tests that need kernel features the host lacks (sch_netem,
//! device-mapper, kprobes). They run inside QEMU on Debian's stock kernel,
//! booted by `cargo xtask test` / `cargo xtask vm` (xtask/src/vm.rs), which
//! sets GRAYDAR_VM=1 and GRAYDAR_AGENT_BIN. On the host they are ignored.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use graydar_tests::prom;

/// Panics unless running inside the test VM: these tests change the kernel's
/// qdiscs and modules, which must never happen on a developer's host.
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

/// `tc qdisc add dev lo root ...`, deleted again on drop.
struct RootQdisc {
    dev: &'static str,
}

impl RootQdisc {
    fn add(dev: &'static str, spec: &[&str]) -> RootQdisc {
        let mut args = vec!["qdisc", "add", "dev", dev, "root"];
        args.extend_from_slice(spec);
        sh("tc", &args);
        RootQdisc { dev }
    }
}

impl Drop for RootQdisc {
    fn drop(&mut self) {
        let _ = Command::new("tc")
            .args(["qdisc", "del", "dev", self.dev, "root"])
            .status();
    }
}

/// The agent as a child process, killed on drop.
struct Agent {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Agent {
    fn start(config_body: &str) -> Agent {
        let bin = PathBuf::from(
            std::env::var_os("GRAYDAR_AGENT_BIN")
                .expect("GRAYDAR_AGENT_BIN (path of graydar-agent) is set by the VM runner"),
        );
        assert!(bin.is_file(), "GRAYDAR_AGENT_BIN {} is not a file", bin.display());
        let addr = free_local_port();
        let dir = tempfile::tempdir().expect("creating a temp dir for the agent config");
        let config = dir.path().join("agent.toml");
        let text = format!("listen = \"{addr}\"\nhostname = \"graydar-vm\"\n{config_body}");
        std::fs::write(&config, text).expect("writing the agent config");
        let child = Command::new(&bin)
            .arg("--config")
            .arg(&config)
            .env("GRAYDAR_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
        Agent { child, addr, _dir: dir }
    }

    /// Waits for /readyz to answer 200 (probes started); panics if the agent exits.
    fn wait_ready(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("polling the agent") {
                panic!("the agent exited before becoming ready: {status}");
            }
            if http_get(self.addr, "/readyz").is_ok() {
                return;
            }
            assert!(Instant::now() < deadline, "the agent was not ready within {timeout:?}");
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// GET with retries: with netem on lo, TCP to the agent loses packets too.
    fn get(&self, path: &str) -> String {
        let mut last = String::new();
        for _ in 0..5 {
            match http_get(self.addr, path) {
                Ok(body) => return body,
                Err(e) => last = e,
            }
        }
        panic!("GET {path} from the agent failed 5 times; last error: {last}")
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_local_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("binding an ephemeral port");
    l.local_addr().expect("local address of the ephemeral listener")
}

/// Plain HTTP/1.0 GET; Ok(body) only for status 200.
fn http_get(addr: SocketAddr, path: &str) -> Result<String, String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(15)).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").map_err(|e| format!("write: {e}"))?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(|e| format!("read: {e}"))?;
    let text = String::from_utf8(raw).map_err(|e| format!("response is not UTF-8: {e}"))?;
    let (head, body) = text.split_once("\r\n\r\n").ok_or("no end of headers")?;
    let status = head.lines().next().unwrap_or_default();
    if status.split_whitespace().nth(1) != Some("200") {
        return Err(format!("status line {status:?}"));
    }
    Ok(body.to_owned())
}

/// A UDP sink on 127.0.0.1 drained by a thread (so drops are the qdisc's, not
/// a full receive buffer's), and a paced sender.
struct UdpStream {
    stop: Arc<AtomicBool>,
    received: Arc<AtomicU64>,
    sink: Option<std::thread::JoinHandle<()>>,
    target: SocketAddr,
}

impl UdpStream {
    fn open() -> UdpStream {
        let sock = UdpSocket::bind("127.0.0.1:0").expect("binding the UDP sink");
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .expect("UDP sink read timeout");
        let target = sock.local_addr().expect("UDP sink address");
        let stop = Arc::new(AtomicBool::new(false));
        let received = Arc::new(AtomicU64::new(0));
        let sink = {
            let (stop, received) = (Arc::clone(&stop), Arc::clone(&received));
            std::thread::spawn(move || {
                let mut buf = [0u8; 2048];
                while !stop.load(Ordering::Relaxed) {
                    if sock.recv(&mut buf).is_ok() {
                        received.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        };
        UdpStream {
            stop,
            received,
            sink: Some(sink),
            target,
        }
    }

    /// Sends `rate` packets per second for `duration` on a background thread.
    fn send(&self, rate: u32, duration: Duration) -> std::thread::JoinHandle<u64> {
        let target = self.target;
        std::thread::spawn(move || {
            let sock = UdpSocket::bind("127.0.0.1:0").expect("binding the UDP sender");
            let gap = Duration::from_secs(1) / rate;
            let start = Instant::now();
            let mut sent = 0u64;
            let payload = [0x5au8; 200];
            while start.elapsed() < duration {
                // ENOBUFS and the like are fine: the point is to cause drops.
                if sock.send_to(&payload, target).is_ok() {
                    sent += 1;
                }
                let next = gap * u32::try_from(sent + 1).unwrap_or(u32::MAX);
                if let Some(wait) = next.checked_sub(start.elapsed()) {
                    std::thread::sleep(wait);
                }
            }
            sent
        })
    }
}

impl Drop for UdpStream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.sink.take() {
            let _ = t.join();
        }
    }
}

/// The finding if it fired: firing now, or resolved already (resolved
/// findings stay listed; under emulation one HTTP request over the lossy lo
/// can take longer than a whole fire-and-resolve episode).
fn fired_finding(findings_json: &str, kind: &str, subject: &str) -> Option<serde_json::Value> {
    let v: serde_json::Value = serde_json::from_str(findings_json)
        .unwrap_or_else(|e| panic!("/api/v1/findings is not JSON ({e}): {findings_json}"));
    let list = v["findings"]
        .as_array()
        .unwrap_or_else(|| panic!("/api/v1/findings has no findings array: {findings_json}"));
    list.iter()
        .find(|f| f["kind"] == kind && f["subject"] == subject)
        .cloned()
}

#[test]
#[ignore = "VM tier: runs inside QEMU via `cargo xtask test` (or `cargo xtask vm`)"]
fn netem_loss_on_loopback_shows_as_qdisc_and_kernel_drops() {
    require_vm();
    let mut agent = Agent::start(
        "[drops]\ninterval = \"1s\"\nshort_window = \"3s\"\nfire_windows = 2\nof_windows = 3\n\
         resolve_windows = 3\nmin_drop_rate = 1.0\n",
    );
    // Loading eBPF and parsing BTF is slow under emulation. Wait before adding
    // the loss: with netem on lo, TCP to the agent loses packets too.
    agent.wait_ready(Duration::from_secs(180));
    let t0 = Instant::now();
    sh("modprobe", &["sch_netem"]);
    let _qdisc = RootQdisc::add("lo", &["netem", "loss", "30%"]);

    let udp = UdpStream::open();
    let stream_for = Duration::from_secs(8);
    let sender = udp.send(200, stream_for);
    eprintln!("[{:5.1}s] netem added, UDP stream started", t0.elapsed().as_secs_f64());
    let mut fired = None;
    // Poll while the loss lasts and for a while after: under emulation the
    // agent's evaluations can lag, and the finding only resolves after
    // resolve_windows quiet evaluations.
    while fired.is_none() && t0.elapsed() < stream_for + Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(500));
        let findings = agent.get("/api/v1/findings");
        fired = fired_finding(&findings, "qdisc_drops", "lo");
        eprintln!(
            "[{:5.1}s] polled findings: qdisc_drops/lo fired: {}",
            t0.elapsed().as_secs_f64(),
            fired.is_some()
        );
    }
    let sent = sender.join().expect("UDP sender thread");
    let received = udp.received.load(Ordering::Relaxed);
    eprintln!("udp: sent {sent}, received {received}");
    assert!(sent > 0, "the UDP sender sent nothing");
    assert!(
        received < sent,
        "netem loss 30% dropped nothing: sent {sent}, received {received}"
    );

    let metrics = agent.get("/metrics");
    let attached = prom::sum(&metrics, "graydar_ebpf_programs_attached", &[]);
    assert!(
        attached >= 1.0,
        "graydar_ebpf_programs_attached is {attached}\n{metrics}"
    );
    let netem_drops = prom::sum(
        &metrics,
        "graydar_qdisc_drops_total",
        &[("interface", "lo"), ("qdisc", "netem")],
    );
    assert!(
        netem_drops > 0.0,
        "no graydar_qdisc_drops_total{{interface=\"lo\",qdisc=\"netem\"}} > 0\n{metrics}"
    );
    let kernel_lo: Vec<prom::Sample> = prom::find(&metrics, "graydar_kernel_drops_total", &[("interface", "lo")])
        .into_iter()
        .filter(|s| s.value > 0.0)
        .collect();
    assert!(
        !kernel_lo.is_empty(),
        "no graydar_kernel_drops_total{{interface=\"lo\"}} > 0\n{metrics}"
    );
    eprintln!("netem drops {netem_drops}; kernel drops on lo: {kernel_lo:?}");

    let finding = fired.unwrap_or_else(|| {
        panic!(
            "no qdisc_drops finding for lo within {:?}; findings now: {}",
            t0.elapsed(),
            agent.get("/api/v1/findings")
        )
    });
    eprintln!("finding: {finding}");
}

#[test]
#[ignore = "VM tier: runs inside QEMU via `cargo xtask test` (or `cargo xtask vm`)"]
fn kernel_has_what_the_vm_tier_is_for() {
    require_vm();
    for module in ["sch_netem", "dm-mod", "dm-delay", "dm-flakey"] {
        sh("modprobe", &[module]);
        let sys = Path::new("/sys/module").join(module.replace('-', "_"));
        assert!(
            sys.is_dir(),
            "modprobe {module} succeeded but {} is missing",
            sys.display()
        );
    }
    let misc = std::fs::read_to_string("/proc/misc").expect("reading /proc/misc");
    assert!(
        misc.lines()
            .any(|l| l.split_whitespace().nth(1) == Some("device-mapper")),
        "/proc/misc lists no device-mapper:\n{misc}"
    );
    assert!(
        Path::new("/sys/kernel/tracing/kprobe_events").exists(),
        "the guest kernel has no kprobe_events in tracefs"
    );
    assert!(
        Path::new("/sys/kernel/btf/vmlinux").exists(),
        "the guest kernel has no BTF"
    );
}
