//! The agent as a process: bad input fails at start naming what is wrong,
//! missing privileges or kernel features disable only what needs them, and
//! SIGTERM stops it cleanly. Real processes, no mocks.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use graydar_tests::agent::{agent_bin, http_get};
use graydar_tests::netns::require_root;
use graydar_tests::prom;

fn free_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a probe socket");
    l.local_addr().expect("local addr")
}

fn bin() -> PathBuf {
    let b = agent_bin();
    assert!(b.is_file(), "{} missing: cargo build -p graydar-agent", b.display());
    b
}

/// Runs the agent to completion (it must exit by itself) with a timeout.
fn run_to_exit(args: &[&str]) -> Output {
    let child = Command::new(bin())
        .args(args)
        .env_remove("GRAYDAR_CONFIG")
        .env_remove("GRAYDAR_LISTEN")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn graydar-agent");
    let deadline = Instant::now() + Duration::from_secs(20);
    let pid = child.id();
    let waiter = std::thread::spawn(move || child.wait_with_output());
    while !waiter.is_finished() {
        if Instant::now() > deadline {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            panic!("graydar-agent {args:?} did not exit within 20 s; it should have failed at start");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    waiter.join().expect("waiter thread").expect("wait for graydar-agent")
}

fn write_config(dir: &Path, text: &str) -> PathBuf {
    let p = dir.join("agent.toml");
    std::fs::write(&p, text).expect("write config");
    p
}

struct Running {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Running {
    fn start(wrapper: &[&str], extra: &[&str]) -> Running {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("agent.log");
        let f = std::fs::File::create(&log).expect("log file");
        let addr = free_addr();
        let bin = bin();
        let mut cmd = match wrapper.split_first() {
            Some((w, rest)) => {
                let mut c = Command::new(w);
                c.args(rest).arg(&bin);
                c
            }
            None => Command::new(&bin),
        };
        cmd.arg("--listen")
            .arg(addr.to_string())
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .args(extra)
            .env_remove("GRAYDAR_CONFIG")
            .stdin(Stdio::null())
            .stdout(f.try_clone().expect("clone log handle"))
            .stderr(f);
        let child = cmd.spawn().expect("spawn graydar-agent");
        let r = Running {
            child,
            addr,
            log,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok((200, _)) = http_get(r.addr, "/readyz") {
                return r;
            }
            assert!(Instant::now() < deadline, "agent not ready in 30 s; log:\n{}", r.log());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn metrics(&self) -> String {
        let (status, body) = http_get(self.addr, "/metrics").expect("GET /metrics");
        assert_eq!(status, 200);
        body
    }

    fn terminate(&mut self) -> std::process::ExitStatus {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .expect("send SIGTERM");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "agent ignored SIGTERM for 10 s; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn unknown_config_field_fails_at_start_naming_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = write_config(dir.path(), "listen = \"127.0.0.1:0\"\n[drops]\nwarning_ratoi = 0.02\n");
    let out = run_to_exit(&["--config", cfg.to_str().expect("utf-8 path")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "exit code; stderr: {stderr}");
    assert!(
        stderr.contains("warning_ratoi"),
        "the error must name the field: {stderr}"
    );

    let cfg = write_config(dir.path(), "lisen = \"127.0.0.1:0\"\n");
    let out = run_to_exit(&["--config", cfg.to_str().expect("utf-8 path")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "exit code; stderr: {stderr}");
    assert!(stderr.contains("lisen"), "the error must name the field: {stderr}");
}

#[test]
fn bad_listen_address_fails_at_start_naming_it() {
    let out = run_to_exit(&["--listen", "localhost:notaport"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    assert!(
        stderr.contains("listen") && stderr.contains("localhost:notaport"),
        "{stderr}"
    );

    // A well-formed address that cannot be bound fails too, naming it.
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let out = run_to_exit(&["--listen", &addr]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "binding a taken port must fail");
    assert!(stderr.contains(&addr), "{stderr}");
}

#[test]
fn unprivileged_agent_says_so_and_keeps_its_sysfs_and_netlink_collectors() {
    require_root(); // to drop to nobody with setpriv
    let mut a = Running::start(
        &[
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
        ],
        &[],
    );
    let m = a.metrics();
    assert_eq!(prom::sum(&m, "graydar_probe_up", &[("probe", "kfree_skb")]), 0.0, "{m}");
    assert_eq!(prom::sum(&m, "graydar_ebpf_programs_attached", &[]), 0.0);
    assert_eq!(prom::sum(&m, "graydar_probe_up", &[("probe", "sysfs_net")]), 1.0);
    assert!(
        !prom::find(&m, "graydar_nic_packets_total", &[("interface", "lo")]).is_empty(),
        "sysfs collector must keep running without privileges:\n{m}"
    );
    assert!(
        !prom::find(&m, "graydar_qdisc_packets_total", &[]).is_empty(),
        "netlink qdisc dump works unprivileged:\n{m}"
    );
    let log = a.log();
    assert!(
        log.contains("CAP_BPF") && log.contains("eBPF probes disabled"),
        "log must say why:\n{log}"
    );
    assert!(a.terminate().success());
}

#[test]
fn kernel_without_btf_disables_the_kernel_drop_probe_with_a_log_line_and_a_metric() {
    require_root();
    // A sysfs root without kernel/btf/vmlinux: the captured multi-queue NIC sample.
    let sysfs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../agent/tests/fixtures/sysfs-multiqueue");
    assert!(sysfs.join("class/net").is_dir(), "fixture {} missing", sysfs.display());
    let mut a = Running::start(&[], &["--sysfs-root", sysfs.to_str().expect("utf-8 path")]);
    let m = a.metrics();
    assert_eq!(prom::sum(&m, "graydar_probe_up", &[("probe", "kfree_skb")]), 0.0, "{m}");
    assert!(
        prom::sum(
            &m,
            "graydar_nic_drops_total",
            &[("interface", "eth0"), ("counter", "missed")]
        ) > 0.0,
        "the sysfs collector reads the fixture's eth0 missed counter:\n{m}"
    );
    let log = a.log();
    assert!(
        log.contains("kernel drop probe disabled") && log.contains("BTF"),
        "{log}"
    );
    assert!(a.terminate().success());
}

#[test]
fn sigterm_stops_the_agent_cleanly() {
    require_root();
    let mut a = Running::start(&[], &[]);
    let m = a.metrics();
    assert!(prom::sum(&m, "graydar_ebpf_programs_attached", &[]) >= 1.0, "{m}");
    assert_eq!(prom::sum(&m, "graydar_probe_up", &[("probe", "kfree_skb")]), 1.0, "{m}");
    let status = a.terminate();
    assert!(status.success(), "exit status {status}; log:\n{}", a.log());
    assert!(a.log().contains("stopped"), "{}", a.log());
}
