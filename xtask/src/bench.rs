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
const ROUNDS: usize = 5;
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
    let sock = UdpSocket::bind("127.0.0.1:0")?;
    let payload = [0u8; 64];
    let start = Instant::now();
    for _ in 0..n {
        // Port 9 (discard): nobody listens in the fresh namespace.
        let _ = sock.send_to(&payload, "127.0.0.1:9");
    }
    Ok(start.elapsed())
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

    println!("bench 1: cost per kfree_skb event ({ROUNDS} rounds x {DATAGRAMS} dropped datagrams, alternating)");
    ns.run_in(|| send_burst(20_000).map(|_| ()))?; // warm-up
    let (mut base, mut with, mut per_event) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let b = ns.run_in(|| send_burst(DATAGRAMS))?;
        let agent = start_agent(&bin, Some(&ns))?;
        wait_ready(Some(&ns))?;
        let before = ns.run_in(|| http_get("/metrics"))?;
        let w = ns.run_in(|| send_burst(DATAGRAMS))?;
        std::thread::sleep(Duration::from_millis(1500)); // one sampling interval
        let after = ns.run_in(|| http_get("/metrics"))?;
        drop(agent);
        let events = metric(&after, "graydar_ebpf_events_total") - metric(&before, "graydar_ebpf_events_total");
        let bn = b.as_nanos() as f64 / DATAGRAMS as f64;
        let wn = w.as_nanos() as f64 / DATAGRAMS as f64;
        let epd = (events / DATAGRAMS as f64).max(1.0);
        println!(
            "  round {}: without {bn:.0} ns/datagram, with {wn:.0} ns/datagram, {epd:.2} kfree_skb events/datagram",
            round + 1
        );
        base.push(bn);
        with.push(wn);
        per_event.push((wn - bn) / epd);
    }
    let (bm, wm, pe) = (median(base), median(with), median(per_event));
    println!(
        "  median: without {bm:.0} ns, with {wm:.0} ns per datagram; ratio {:.3}",
        wm / bm
    );
    println!("  added cost per kfree_skb event: {pe:.1} ns (goal <= 40 ns)");
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
