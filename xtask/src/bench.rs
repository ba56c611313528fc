//! `cargo xtask bench`: what the agent costs, as ratios against a baseline
//! measured in the same run (never as timing asserts in tests).
//!
//! 1. Cost per kfree_skb event: a UDP sender in a throwaway network namespace
//!    sends datagrams to a closed port on loopback; each one is dropped by the
//!    kernel (NO_SOCKET) inside the sender's own syscall, so the time per
//!    send includes the drop path. Rounds alternate without / with the agent
//!    attached; the added time per event is (with - without) / events, where
//!    the events per datagram come from the probe's own event counter.
//! 2. The agent idle: CPU % of one core and RSS over `idle_seconds` on this host.

use std::io::{Read as _, Write as _};
use std::net::{TcpStream, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

const DATAGRAMS: u64 = 200_000;
const ROUNDS: usize = 9;
const PORT: u16 = 19477;

pub(crate) struct Ns(pub(crate) String);

/// Moves the calling thread into the network namespace `name`.
pub(crate) fn enter_netns(name: &str) -> Result<()> {
    let path = format!("/run/netns/{name}");
    let fd = std::fs::File::open(&path).with_context(|| format!("open {path}"))?;
    use std::os::fd::AsRawFd as _;
    // SAFETY: setns on this thread only, with a valid namespace fd.
    if unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        bail!("setns {path}: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

impl Ns {
    pub(crate) fn new() -> Result<Ns> {
        let name = format!("gdbench{}", std::process::id());
        crate::ok(Command::new("ip").args(["netns", "add", &name]))?;
        let ns = Ns(name);
        crate::ok(Command::new("ip").args(["-n", &ns.0, "link", "set", "lo", "up"]))?;
        Ok(ns)
    }

    /// Runs `f` on a thread that entered this namespace.
    fn run_in<R: Send + 'static>(&self, f: impl FnOnce() -> Result<R> + Send + 'static) -> Result<R> {
        let name = self.0.clone();
        std::thread::spawn(move || {
            enter_netns(&name)?;
            f()
        })
        .join()
        .map_err(|_| anyhow::anyhow!("bench thread panicked"))?
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn send_burst(n: u64) -> Result<Duration> {
    pin_to_cpu0();
    let sock = UdpSocket::bind("127.0.0.1:0")?;
    let payload = [0u8; 64];
    let start = Instant::now();
    for _ in 0..n {
        // Port 9 (discard): nobody listens in the fresh namespace.
        let _ = sock.send_to(&payload, "127.0.0.1:9");
    }
    Ok(start.elapsed())
}

/// The sender thread runs on CPU 0 only, so every measurement sees the same
/// core (and the drop path, which runs in its softirq, too).
pub(crate) fn pin_to_cpu0() {
    // SAFETY: cpu_set_t is plain data; sched_setaffinity(0, ..) affects this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

fn http_get(path: &str) -> Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", PORT))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    Ok(body)
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A child process stopped with SIGTERM (and reaped) when dropped.
pub(crate) struct Agent(pub(crate) Child);

impl Drop for Agent {
    fn drop(&mut self) {
        // SAFETY: plain kill(2) of our own child.
        unsafe {
            libc::kill(self.0.id() as i32, libc::SIGTERM);
        }
        let _ = self.0.wait();
    }
}

fn start_agent(bin: &Path, ns: Option<&Ns>) -> Result<Agent> {
    let listen = format!("127.0.0.1:{PORT}");
    let mut cmd = match ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", &ns.0]).arg(bin);
            c
        }
        None => Command::new(bin),
    };
    let child = cmd
        .args(["--listen", &listen, "--log-level", "warn"])
        .stdout(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    Ok(Agent(child))
}

fn wait_ready(ns: Option<&Ns>) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let ok = match ns {
            Some(ns) => ns.run_in(|| {
                Ok(http_get("/readyz")
                    .map(|b| b.starts_with("HTTP/1.1 200") || b.starts_with("HTTP/1.0 200"))
                    .unwrap_or(false))
            })?,
            None => http_get("/readyz").map(|b| b.contains(" 200 ")).unwrap_or(false),
        };
        if ok {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    bail!("agent not ready after 30 s")
}

/// Builds the release agent (the parts that run it on this host or in the
/// VM) and returns its path; cargo does nothing when it is up to date.
fn release_agent(ws: &Path) -> Result<std::path::PathBuf> {
    crate::ok(
        crate::cargo()
            .current_dir(ws)
            .args(["build", "--release", "-p", "graydar-agent"]),
    )?;
    Ok(ws.join("target/release/graydar-agent"))
}

/// (hook, nanoseconds per run) of the empty programs on a probe's hooks.
type Floors = Vec<(&'static str, f64)>;

/// Runs `workload` with the empty program on `hook` attached; returns what
/// the tool printed after it (its run statistics).
fn with_floor(bin: &Path, ns: Option<&Ns>, hook: &[&str], workload: impl FnOnce() -> Result<()>) -> Result<String> {
    use std::io::BufRead as _;
    let floor = bin.with_file_name("graydar-ebpf-floor");
    let mut cmd = match ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", &ns.0]).arg(&floor);
            c
        }
        None => Command::new(&floor),
    };
    let mut child = cmd
        .args(hook)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", floor.display()))?;
    let mut out = std::io::BufReader::new(child.stdout.take().context("floor stdout")?);
    let mut line = String::new();
    out.read_line(&mut line)?;
    if !line.starts_with("attached ") {
        drop(child.stdin.take());
        let status = child.wait()?;
        bail!("{} {hook:?} did not attach ({status}): {line}", floor.display());
    }
    let result = workload();
    drop(child.stdin.take());
    let mut rest = String::new();
    out.read_to_string(&mut rest)?;
    let status = child.wait()?;
    result?;
    if !status.success() {
        bail!("{} {hook:?}: {status}: {rest}", floor.display());
    }
    Ok(rest)
}

/// The floor of a hook: runs `workload` with an empty program attached to
/// `hook` (agent/src/bin/graydar-ebpf-floor.rs, built beside the agent `bin`),
/// in `ns` when given. The caller has kernel.bpf_stats_enabled=1. Returns
/// (runs, nanoseconds per run inside the empty program).
fn floor_cost(bin: &Path, ns: Option<&Ns>, hook: &[&str], workload: impl FnOnce() -> Result<()>) -> Result<(f64, f64)> {
    let rest = with_floor(bin, ns, hook, workload)?;
    let field = |key: &str| -> Result<f64> {
        rest.split_whitespace()
            .find_map(|w| w.strip_prefix(key))
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("no {key} in {rest:?}"))
    };
    let (runs, ns_total) = (field("runs=")?, field("run_time_ns=")?);
    if runs < 1.0 {
        bail!("the empty program on {hook:?} never ran");
    }
    Ok((runs, ns_total / runs))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

pub(crate) fn proc_cpu_ticks(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the ")" of the command name: utime is field 14, stime 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).context("malformed stat")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = f.get(11).context("utime")?.parse()?;
    let stime: u64 = f.get(12).context("stime")?.parse()?;
    Ok(utime + stime)
}

pub(crate) fn status_kib(pid: u32, field: &str) -> Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = s
        .lines()
        .find(|l| l.starts_with(field))
        .with_context(|| format!("{field} missing"))?;
    Ok(line.split_whitespace().nth(1).context("value")?.parse()?)
}

/// Seconds per phase of `cost` (3 phases per load, 4 loads).
const COST_PHASE_SECONDS: u64 = 20;

/// The parts of `--only`; all but [`OPT_IN`] run by default.
const PARTS: &[&str] = &[
    "drops",
    "idle",
    "idle-cpus",
    "fsync",
    "incast",
    "faults",
    "fault-latency",
    "safety",
    "detection",
    "cost",
];
/// Parts that run only when named: the 200 safety trials take about 25
/// minutes, the detection table hours (minutes with `--quick`), the cost
/// comparison with node_exporter about 10 minutes.
const OPT_IN: &[&str] = &["safety", "detection", "cost"];

/// What `detection` runs (xtask/src/bench_detection.rs).
#[derive(Clone, Copy, Debug)]
pub struct Detection {
    pub runs: usize,
    pub soak_seconds: u64,
}

pub fn run(ws: &Path, idle_seconds: u64, only: &[String], detection: Detection) -> Result<()> {
    if !crate::is_root() {
        bail!("the benchmarks load eBPF and create network namespaces: run as root");
    }
    if let Some(bad) = only.iter().find(|o| !PARTS.contains(&o.as_str())) {
        bail!("unknown benchmark part {bad:?}: the parts are {}", PARTS.join(", "));
    }
    let want = |part: &str| {
        if only.is_empty() {
            !OPT_IN.contains(&part)
        } else {
            only.iter().any(|o| o == part)
        }
    };
    // Idle RSS against the CPU count, in the VM (xtask/src/bench_idle_cpus.rs).
    if want("idle-cpus") {
        crate::bench_idle_cpus::run(ws, &release_agent(ws)?, idle_seconds)?;
    }
    // Fault apply/revert latency in the VM (xtask/src/bench_fault_latency.rs).
    if want("fault-latency") {
        crate::bench_fault_latency::run(ws)?;
    }
    // Revert-all fan-out to 100 simulated agents (xtask/src/bench_faults.rs).
    if want("faults") {
        crate::bench_faults::run(ws)?;
    }
    // 200 randomized kill/partition trials in the VM (xtask/src/bench_safety.rs).
    if want("safety") {
        crate::bench_safety::run(ws)?;
    }
    // graydar beside node_exporter under the same loads (xtask/src/bench_cost.rs).
    if want("cost") {
        crate::bench_cost::run(&release_agent(ws)?, COST_PHASE_SECONDS)?;
    }
    // The detection table: the library game days N times, the quiet soak.
    if want("detection") {
        crate::bench_detection::run(ws, detection.runs, detection.soak_seconds)?;
    }
    if !want("drops") && !want("idle") {
        if want("fsync") {
            fsync_cost(&release_agent(ws)?)?;
        }
        if want("incast") {
            tcp_segment_cost(&release_agent(ws)?)?;
        }
        return Ok(());
    }
    let bin = release_agent(ws)?;
    let ns = Ns::new()?;

    println!(
        "bench 1a: wall clock per dropped datagram, {ROUNDS} rounds of without / with the agent / without \
         (each phase the fastest of 3 bursts of {DATAGRAMS}; sender pinned to CPU 0)"
    );
    // The fastest of a few bursts: interference on a shared VM only ever adds time.
    let phase = |ns: &Ns| -> Result<f64> {
        let mut best = f64::INFINITY;
        for _ in 0..3 {
            let d = ns.run_in(|| send_burst(DATAGRAMS))?;
            best = best.min(d.as_nanos() as f64 / DATAGRAMS as f64);
        }
        Ok(best)
    };
    ns.run_in(|| send_burst(20_000).map(|_| ()))?; // warm-up
    let (mut base, mut with, mut per_event) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let before = phase(&ns)?;
        let agent = start_agent(&bin, Some(&ns))?;
        wait_ready(Some(&ns))?;
        std::thread::sleep(Duration::from_secs(1)); // let start-up work settle
        let m0 = ns.run_in(|| http_get("/metrics"))?;
        let w = phase(&ns)?;
        std::thread::sleep(Duration::from_millis(1500)); // one sampling interval
        let m1 = ns.run_in(|| http_get("/metrics"))?;
        drop(agent);
        std::thread::sleep(Duration::from_secs(1)); // let teardown settle
        let after = phase(&ns)?;
        let events = metric(&m1, "graydar_ebpf_events_total") - metric(&m0, "graydar_ebpf_events_total");
        let epd = events / (3 * DATAGRAMS) as f64;
        if epd < 0.99 {
            bail!(
                "the probe saw {events} events for {} dropped datagrams: not attached?",
                3 * DATAGRAMS
            );
        }
        let b = (before + after) / 2.0;
        println!(
            "  round {}: without {before:.0}/{after:.0} ns, with {w:.0} ns per datagram; {epd:.2} events/datagram",
            round + 1
        );
        base.push(b);
        with.push(w);
        per_event.push((w - b) / epd);
    }
    let (bm, wm, pe) = (median(base), median(with), median(per_event));
    println!(
        "  median: without {bm:.0} ns, with {wm:.0} ns per datagram; ratio with/without {:.3}",
        wm / bm
    );
    println!("  added wall-clock cost per kfree_skb event: median {pe:.1} ns");

    // The same wall clock with only an empty program on the hook: what any
    // eBPF program on kfree_skb costs a drop, graydar's work or not.
    println!(
        "bench 1a floor: the same, {FLOOR_ROUNDS} rounds of without / with an empty tp_btf program on kfree_skb \
         (graydar-ebpf-floor, no agent) / without"
    );
    let mut floor_added = Vec::new();
    for round in 0..FLOOR_ROUNDS {
        let before = phase(&ns)?;
        let mut w = 0.0;
        with_floor(&bin, None, &["kfree_skb_btf"], || {
            w = phase(&ns)?;
            Ok(())
        })?;
        let after = phase(&ns)?;
        let b = (before + after) / 2.0;
        println!(
            "  round {}: without {before:.0}/{after:.0} ns, with the empty program {w:.0} ns per datagram",
            round + 1
        );
        floor_added.push(w - b);
    }
    let fa = median(floor_added);
    println!(
        "  added wall-clock cost per drop with an empty program on the hook: median {fa:.1} ns; graydar's agent \
         above that: {:.1} ns",
        pe - fa
    );

    println!("bench 1b: in-kernel run time of the kfree_skb program (kernel.bpf_stats_enabled=1)");
    let sysctl = "/proc/sys/kernel/bpf_stats_enabled";
    let previous = std::fs::read_to_string(sysctl).with_context(|| format!("reading {sysctl}"))?;
    std::fs::write(sysctl, "1").with_context(|| format!("enabling {sysctl}"))?;
    let result = (|| -> Result<(f64, f64, Floors)> {
        let agent = start_agent(&bin, Some(&ns))?;
        wait_ready(Some(&ns))?;
        let m0 = ns.run_in(|| http_get("/metrics"))?;
        let _ = phase(&ns)?;
        std::thread::sleep(Duration::from_millis(1500));
        let m1 = ns.run_in(|| http_get("/metrics"))?;
        drop(agent);
        let secs = metric(&m1, "graydar_ebpf_program_run_seconds_total")
            - metric(&m0, "graydar_ebpf_program_run_seconds_total");
        let runs = metric(&m1, "graydar_ebpf_program_runs_total") - metric(&m0, "graydar_ebpf_program_runs_total");
        // The floor: an empty program on each of the probe's two hooks.
        let mut floors = Vec::new();
        for hook in ["kfree_skb_btf", "kfree_skb_raw"] {
            let (_, per_run) = floor_cost(&bin, None, &[hook], || phase(&ns).map(drop))?;
            floors.push((hook, per_run));
        }
        Ok((secs, runs, floors))
    })();
    std::fs::write(sysctl, previous.trim()).with_context(|| format!("restoring {sysctl}"))?;
    let (secs, runs, floors) = result?;
    if runs < 1.0 {
        bail!("the kernel counted no runs of the program");
    }
    let in_kernel = secs * 1e9 / runs;
    println!("  {runs:.0} runs, {in_kernel:.1} ns per event inside the program (goal <= 40 ns)");
    for (hook, per_run) in &floors {
        println!(
            "  floor: an empty program on {hook}: {per_run:.1} ns per event (bpf_stats' two clock reads included); \
             the probe above the {hook} floor: {:.1} ns",
            in_kernel - per_run
        );
    }
    println!(
        "  for scale: the drop path itself costs {bm:.0} ns per datagram here; the program adds {:.2} %",
        in_kernel / bm * 100.0
    );
    drop(ns);

    println!("bench 2: agent idle on this host for {idle_seconds} s");
    let agent = start_agent(&bin, None)?;
    wait_ready(None)?;
    let pid = agent.0.id();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let t0 = proc_cpu_ticks(pid)?;
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs(idle_seconds));
    let t1 = proc_cpu_ticks(pid)?;
    let wall = start.elapsed().as_secs_f64();
    let cpu = (t1 - t0) as f64 / hz / wall * 100.0;
    let rss = status_kib(pid, "VmRSS:")? as f64 / 1024.0;
    let hwm = status_kib(pid, "VmHWM:")? as f64 / 1024.0;
    drop(agent);
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "  CPU {cpu:.2} % of one core (goal <= 0.5 %), RSS {rss:.1} MiB, peak RSS {hwm:.1} MiB (goal <= 32 MiB) \
         on {cpus} CPUs"
    );
    if want("fsync") {
        fsync_cost(&bin)?;
    }
    if want("incast") {
        tcp_segment_cost(&bin)?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// 3. Cost per fsync of the disk probes.
//
// The fsync programs run on every fsync/fdatasync of the host (enter: an
// fd-table walk of ~9 kernel reads and an LRU-hash insert; exit: a lookup,
// a delete and a per-CPU histogram update); the block programs on every block
// request. Measured in the same run, rounds of without / with the agent /
// without, sender pinned to CPU 0, each phase the fastest of 3 bursts:
//   3a. fdatasync of a tmpfs file: the syscall does almost nothing (~0.3 µs),
//       so the difference is the probes' own cost per call;
//   3b. 4 KiB pwrite + fdatasync on ext4 over a loop device (backed by
//       /dev/shm): a real journal + flush path with block requests (and the
//       block probes) in it, so the ratio is what a cheap, fast device sees.

const FSYNC_ROUNDS: usize = 5;

fn fdatasync_burst(file: &std::fs::File, n: u64, write: bool) -> Result<Duration> {
    use std::os::fd::AsRawFd as _;
    use std::os::unix::fs::FileExt as _;
    pin_to_cpu0();
    let block = [0x5au8; 4096];
    let fd = file.as_raw_fd();
    let start = Instant::now();
    for i in 0..n {
        if write {
            file.write_all_at(&block, (i % 16) * 4096)?;
        }
        // SAFETY: fdatasync on an open descriptor.
        if unsafe { libc::fdatasync(fd) } != 0 {
            bail!("fdatasync: {}", std::io::Error::last_os_error());
        }
    }
    Ok(start.elapsed())
}

/// ext4 on a loop device over a file in /dev/shm, mounted on a temp dir;
/// unmounted and detached on drop.
struct LoopExt4 {
    dev: String,
    mnt: std::path::PathBuf,
    backing: std::path::PathBuf,
}

impl LoopExt4 {
    fn new() -> Result<LoopExt4> {
        let id = std::process::id();
        let backing = std::path::PathBuf::from(format!("/dev/shm/graydar-bench-{id}.img"));
        let f = std::fs::File::create(&backing)?;
        f.set_len(128 << 20)?;
        drop(f);
        let out = Command::new("losetup")
            .args(["--find", "--show"])
            .arg(&backing)
            .output()
            .context("running losetup")?;
        if !out.status.success() {
            let _ = std::fs::remove_file(&backing);
            bail!("losetup: {}", String::from_utf8_lossy(&out.stderr));
        }
        let dev = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let mnt = std::path::PathBuf::from(format!("/tmp/graydar-bench-mnt-{id}"));
        let l = LoopExt4 { dev, mnt, backing };
        crate::ok(Command::new("mkfs.ext4").args(["-q", "-F", &l.dev]))?;
        std::fs::create_dir_all(&l.mnt)?;
        crate::ok(Command::new("mount").arg(&l.dev).arg(&l.mnt))?;
        Ok(l)
    }
}

impl Drop for LoopExt4 {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mnt).status();
        let _ = std::fs::remove_dir(&self.mnt);
        let _ = Command::new("losetup").args(["-d", &self.dev]).status();
        let _ = std::fs::remove_file(&self.backing);
    }
}

/// Per-round medians: (without, with, added ns per call, ratio with/without).
fn fsync_rounds(bin: &Path, what: &str, file: &std::fs::File, n: u64, write: bool) -> Result<(f64, f64, f64, f64)> {
    let phase = || -> Result<f64> {
        let mut best = f64::INFINITY;
        for _ in 0..3 {
            let d = fdatasync_burst(file, n, write)?;
            best = best.min(d.as_nanos() as f64 / n as f64);
        }
        Ok(best)
    };
    fdatasync_burst(file, n / 10 + 1, write)?; // warm-up
    let (mut base, mut with, mut added, mut ratio) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let probe = "graydar_ebpf_events_total{probe=\"fsync\"}";
    for round in 0..FSYNC_ROUNDS {
        let before = phase()?;
        let agent = start_agent(bin, None)?;
        wait_ready(None)?;
        std::thread::sleep(Duration::from_secs(1));
        let m0 = http_get("/metrics")?;
        let w = phase()?;
        std::thread::sleep(Duration::from_millis(1200));
        let m1 = http_get("/metrics")?;
        drop(agent);
        std::thread::sleep(Duration::from_secs(1));
        let after = phase()?;
        let seen = metric(&m1, probe) - metric(&m0, probe);
        if seen < 0.99 * (3 * n) as f64 {
            bail!("the fsync probe saw {seen} calls of {}: not attached?", 3 * n);
        }
        let b = (before + after) / 2.0;
        println!(
            "  {what} round {}: without {before:.0}/{after:.0} ns, with {w:.0} ns per call: +{:.0} ns, ratio {:.3}",
            round + 1,
            w - b,
            w / b
        );
        base.push(b);
        with.push(w);
        added.push(w - b);
        ratio.push(w / b);
    }
    // Paired per round: a slow phase of the shared machine moves both sides.
    Ok((median(base), median(with), median(added), median(ratio)))
}

/// In-kernel time per call of the fsync and block programs
/// (kernel.bpf_stats_enabled=1 for one burst; restored after).
fn fsync_in_kernel(bin: &Path, file: &std::fs::File, n: u64) -> Result<()> {
    let sysctl = "/proc/sys/kernel/bpf_stats_enabled";
    let previous = std::fs::read_to_string(sysctl).with_context(|| format!("reading {sysctl}"))?;
    std::fs::write(sysctl, "1").with_context(|| format!("enabling {sysctl}"))?;
    let result = (|| -> Result<Vec<(String, f64, f64)>> {
        let agent = start_agent(bin, None)?;
        wait_ready(None)?;
        std::thread::sleep(Duration::from_secs(1));
        let m0 = http_get("/metrics")?;
        fdatasync_burst(file, n, true)?;
        std::thread::sleep(Duration::from_millis(1200));
        let m1 = http_get("/metrics")?;
        drop(agent);
        let mut out = Vec::new();
        // The floor: an empty program on one of the fsync probe's syscall
        // tracepoints (it runs two programs per call: enter and exit).
        let (floor_runs, floor_per_run) =
            floor_cost(bin, None, &["tracepoint", "syscalls:sys_enter_fdatasync"], || {
                fdatasync_burst(file, n, true).map(drop)
            })?;
        out.push(("floor".to_owned(), floor_per_run * floor_runs * 1e-9, floor_runs));
        // The block probes' floor: an empty raw tracepoint program on block_rq_issue.
        let (runs, per_run) = floor_cost(bin, None, &["raw_tracepoint", "block_rq_issue"], || {
            fdatasync_burst(file, n, true).map(drop)
        })?;
        out.push(("floor_block".to_owned(), per_run * runs * 1e-9, runs));
        for probe in ["fsync", "block_io"] {
            let s = format!("graydar_ebpf_program_run_seconds_total{{probe=\"{probe}\"}}");
            let r = format!("graydar_ebpf_program_runs_total{{probe=\"{probe}\"}}");
            out.push((
                probe.to_owned(),
                metric(&m1, &s) - metric(&m0, &s),
                metric(&m1, &r) - metric(&m0, &r),
            ));
        }
        Ok(out)
    })();
    std::fs::write(sysctl, previous.trim()).with_context(|| format!("restoring {sysctl}"))?;
    let result = result?;
    let per_run = |name: &str| {
        result
            .iter()
            .find(|(p, _, _)| p == name)
            .map(|(_, secs, runs)| secs * 1e9 / runs.max(1.0))
            .unwrap_or(0.0)
    };
    let floor_per_run = per_run("floor");
    let block_floor = per_run("floor_block");
    for (probe, secs, runs) in &result {
        let (secs, runs) = (*secs, *runs);
        if probe == "floor_block" {
            println!(
                "  3c floor: an empty raw tracepoint program on block_rq_issue, {runs:.0} runs, {block_floor:.0} ns per \
                 run (bpf_stats' clock reads included)"
            );
            continue;
        }
        if probe == "floor" {
            println!(
                "  3c floor: an empty program on syscalls:sys_enter_fdatasync, {runs:.0} runs, {floor_per_run:.0} ns per \
                 run (bpf_stats' clock reads included); the fsync probe's two programs per call have a floor of {:.0} ns \
                 (goal <= 200 ns per call inside the programs)",
                2.0 * floor_per_run
            );
            continue;
        }
        let inside = if runs > 0.0 { secs * 1e9 / runs } else { 0.0 };
        let floor = if probe == "block_io" {
            block_floor
        } else {
            floor_per_run
        };
        println!(
            "  3c {probe}: {runs:.0} program runs for {n} write+fdatasync calls, {inside:.0} ns per run, {:.0} ns per \
             call inside the programs; above the floor {:.0} ns per run, {:.0} ns per call",
            secs * 1e9 / n as f64,
            inside - floor,
            (inside - floor) * runs / n as f64
        );
    }
    Ok(())
}

fn fsync_cost(bin: &Path) -> Result<()> {
    println!(
        "bench 3: cost per fdatasync with the disk probes attached vs not, {FSYNC_ROUNDS} rounds of without / with the \
         agent / without (each phase the fastest of 3 bursts; caller pinned to CPU 0)"
    );
    let shm = std::path::PathBuf::from(format!("/dev/shm/graydar-bench-fsync-{}", std::process::id()));
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&shm)?;
    let r = fsync_rounds(bin, "3a tmpfs fdatasync", &f, 200_000, false);
    let _ = std::fs::remove_file(&shm);
    let (b, w, added, ratio) = r?;
    println!(
        "  3a median: without {b:.0} ns, with {w:.0} ns per fdatasync; per round: +{added:.0} ns per call (the fsync \
         probe's own cost: two syscall tracepoints and their programs), ratio {ratio:.3}"
    );
    let fs = LoopExt4::new()?;
    let path = fs.mnt.join("wal");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)?;
    // Preallocate so fdatasync carries data, not size changes.
    {
        use std::os::unix::fs::FileExt as _;
        for i in 0..16u64 {
            f.write_all_at(&[0u8; 4096], i * 4096)?;
        }
        f.sync_all()?;
    }
    let (b2, w2, added2, ratio2) = fsync_rounds(bin, "3b ext4-on-loop write+fdatasync", &f, 4_000, true)?;
    println!(
        "  3b median: without {b2:.0} ns, with {w2:.0} ns per 4 KiB write + fdatasync; per round: +{added2:.0} ns \
         (fsync and block probes), ratio {ratio2:.3}"
    );
    fsync_in_kernel(bin, &f, 4_000)?;
    drop(f);
    drop(fs);
    Ok(())
}

// ---------------------------------------------------------------------------
// 4. Cost per TCP segment of the incast probes.
//
// The tcp_fanin tc ingress classifier runs on every packet received on every
// interface (pure ACKs leave after the header parse; data segments cost two
// hash lookups and a few stores). A loopback TCP ping-pong in a throwaway
// namespace (a stream would coalesce writes into 64 KB segments): a client
// and an echo thread, both pinned to CPU 0, TCP_NODELAY, exchange 64-byte
// messages, so every transaction is two data segments (the ACKs ride on
// the data). Rounds of without / with the agent / without, each phase the
// fastest of 3 bursts; the added time per segment is
// (with - without) * transactions / segments, where segments come from the
// probe's own counter. Then the time inside the program per run with
// kernel.bpf_stats_enabled=1.

const TCP_WRITES: u64 = 50_000;
/// Rounds of bench 1a's floor (an empty program on kfree_skb, wall clock).
const FLOOR_ROUNDS: usize = 5;
const TCP_MSG: usize = 64;
const TCP_ROUNDS: usize = 7;

/// An echo server on 127.0.0.1:<port> in `ns` (its threads pinned to CPU 0).
fn tcp_sink(ns: &Ns) -> Result<u16> {
    let listener = ns.run_in(|| Ok(std::net::TcpListener::bind("127.0.0.1:0")?))?;
    let port = listener.local_addr()?.port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { return };
            std::thread::spawn(move || {
                pin_to_cpu0();
                let _ = s.set_nodelay(true);
                let mut buf = [0u8; TCP_MSG];
                while s.read_exact(&mut buf).is_ok() {
                    if s.write_all(&buf).is_err() {
                        return;
                    }
                }
            });
        }
    });
    Ok(port)
}

fn tcp_burst(ns: &Ns, port: u16, n: u64) -> Result<Duration> {
    ns.run_in(move || {
        pin_to_cpu0();
        let mut s = TcpStream::connect(("127.0.0.1", port))?;
        s.set_nodelay(true)?;
        let mut msg = [0x5au8; TCP_MSG];
        let start = Instant::now();
        for _ in 0..n {
            s.write_all(&msg)?;
            s.read_exact(&mut msg)?;
        }
        Ok(start.elapsed())
    })
}

fn metric_of(text: &str, name: &str, label: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn tcp_segment_cost(bin: &Path) -> Result<()> {
    println!(
        "bench 4: cost per TCP segment with the incast probes attached vs not (loopback TCP ping-pong of \
         {TCP_MSG}-byte messages, {TCP_ROUNDS} rounds of without / with the agent / without, each phase the fastest \
         of 3 bursts of {TCP_WRITES} transactions; both ends pinned to CPU 0)"
    );
    let ns = Ns::new()?;
    let port = tcp_sink(&ns)?;
    let phase = |ns: &Ns| -> Result<f64> {
        let mut best = f64::INFINITY;
        for _ in 0..3 {
            let d = tcp_burst(ns, port, TCP_WRITES)?;
            best = best.min(d.as_nanos() as f64 / TCP_WRITES as f64);
        }
        Ok(best)
    };
    tcp_burst(&ns, port, TCP_WRITES / 10)?; // warm-up
    let label = "probe=\"tcp_fanin\"";
    let (mut base, mut with, mut per_seg) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..TCP_ROUNDS {
        let before = phase(&ns)?;
        let agent = start_agent(bin, Some(&ns))?;
        wait_ready(Some(&ns))?;
        std::thread::sleep(Duration::from_secs(1));
        let m0 = ns.run_in(|| http_get("/metrics"))?;
        let w = phase(&ns)?;
        std::thread::sleep(Duration::from_millis(1500));
        let m1 = ns.run_in(|| http_get("/metrics"))?;
        drop(agent);
        std::thread::sleep(Duration::from_secs(1));
        let after = phase(&ns)?;
        let segs =
            metric_of(&m1, "graydar_ebpf_events_total", label) - metric_of(&m0, "graydar_ebpf_events_total", label);
        let writes = (3 * TCP_WRITES) as f64;
        if segs < 0.5 * writes {
            bail!("the tcp_fanin probe saw {segs} data segments for {writes} transactions: not attached?");
        }
        let spw = segs / writes;
        let b = (before + after) / 2.0;
        println!(
            "  round {}: without {before:.0}/{after:.0} ns, with {w:.0} ns per transaction; {spw:.2} data segments each",
            round + 1
        );
        base.push(b);
        with.push(w);
        per_seg.push((w - b) / spw);
    }
    let (bm, wm, ps) = (median(base), median(with), median(per_seg));
    println!(
        "  median: without {bm:.0} ns, with {wm:.0} ns per transaction; ratio with/without {:.3}; added {ps:.1} ns per \
         data segment",
        wm / bm
    );

    let sysctl = "/proc/sys/kernel/bpf_stats_enabled";
    let previous = std::fs::read_to_string(sysctl).with_context(|| format!("reading {sysctl}"))?;
    std::fs::write(sysctl, "1").with_context(|| format!("enabling {sysctl}"))?;
    let result = (|| -> Result<(f64, f64, f64, f64)> {
        let agent = start_agent(bin, Some(&ns))?;
        wait_ready(Some(&ns))?;
        std::thread::sleep(Duration::from_secs(1));
        let m0 = ns.run_in(|| http_get("/metrics"))?;
        let _ = phase(&ns)?;
        std::thread::sleep(Duration::from_millis(1500));
        let m1 = ns.run_in(|| http_get("/metrics"))?;
        drop(agent);
        let d = |n: &str| metric_of(&m1, n, label) - metric_of(&m0, n, label);
        // The agent detached its classifier; the empty one takes its place.
        let (_, floor) = floor_cost(bin, Some(&ns), &["tc", "lo"], || phase(&ns).map(drop))?;
        Ok((
            d("graydar_ebpf_program_run_seconds_total"),
            d("graydar_ebpf_program_runs_total"),
            d("graydar_ebpf_events_total"),
            floor,
        ))
    })();
    std::fs::write(sysctl, previous.trim()).with_context(|| format!("restoring {sysctl}"))?;
    let (secs, runs, segs, floor) = result?;
    if runs < 1.0 {
        bail!("the kernel counted no runs of tcp_fanin");
    }
    let per_run = secs * 1e9 / runs;
    println!(
        "  in-kernel: {runs:.0} runs ({segs:.0} data segments, the rest pure ACKs), {per_run:.1} ns per run inside the \
         program (bpf_stats' own clock reads included; goal <= 40 ns)"
    );
    println!(
        "  floor: an empty tc ingress program on the same interface: {floor:.1} ns per run; tcp_fanin above the \
         floor: {:.1} ns per packet",
        per_run - floor
    );
    Ok(())
}
