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

struct Ns(String);

impl Ns {
    fn new() -> Result<Ns> {
        let name = format!("gdbench{}", std::process::id());
        crate::ok(Command::new("ip").args(["netns", "add", &name]))?;
        let ns = Ns(name);
        crate::ok(Command::new("ip").args(["-n", &ns.0, "link", "set", "lo", "up"]))?;
        Ok(ns)
    }

    /// Runs `f` on a thread that entered this namespace.
    fn run_in<R: Send + 'static>(&self, f: impl FnOnce() -> Result<R> + Send + 'static) -> Result<R> {
        let path = format!("/run/netns/{}", self.0);
        std::thread::spawn(move || {
            let fd = std::fs::File::open(&path).with_context(|| format!("open {path}"))?;
            use std::os::fd::AsRawFd as _;
            // SAFETY: setns on this thread only, with a valid namespace fd.
            if unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                bail!("setns {path}: {}", std::io::Error::last_os_error());
            }
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
fn pin_to_cpu0() {
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

struct Agent(Child);

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

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn proc_cpu_ticks(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the ")" of the command name: utime is field 14, stime 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).context("malformed stat")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = f.get(11).context("utime")?.parse()?;
    let stime: u64 = f.get(12).context("stime")?.parse()?;
    Ok(utime + stime)
}

fn status_kib(pid: u32, field: &str) -> Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = s
        .lines()
        .find(|l| l.starts_with(field))
        .with_context(|| format!("{field} missing"))?;
    Ok(line.split_whitespace().nth(1).context("value")?.parse()?)
}

pub fn run(ws: &Path, idle_seconds: u64) -> Result<()> {
    if !crate::is_root() {
        bail!("the benchmarks load eBPF and create network namespaces: run as root");
    }
    crate::ok(
        Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
            .current_dir(ws)
            .args(["build", "--release", "-p", "graydar-agent"]),
    )?;
    let bin = ws.join("target/release/graydar-agent");
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

    println!("bench 1b: in-kernel run time of the kfree_skb program (kernel.bpf_stats_enabled=1)");
    let sysctl = "/proc/sys/kernel/bpf_stats_enabled";
    let previous = std::fs::read_to_string(sysctl).with_context(|| format!("reading {sysctl}"))?;
    std::fs::write(sysctl, "1").with_context(|| format!("enabling {sysctl}"))?;
    let result = (|| -> Result<(f64, f64)> {
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
        Ok((secs, runs))
    })();
    std::fs::write(sysctl, previous.trim()).with_context(|| format!("restoring {sysctl}"))?;
    let (secs, runs) = result?;
    if runs < 1.0 {
        bail!("the kernel counted no runs of the program");
    }
    let in_kernel = secs * 1e9 / runs;
    println!("  {runs:.0} runs, {in_kernel:.1} ns per event inside the program (goal <= 40 ns)");
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
    println!("  CPU {cpu:.2} % of one core (goal <= 0.5 %), RSS {rss:.1} MiB, peak RSS {hwm:.1} MiB (goal <= 32 MiB)");
    Ok(())
}
