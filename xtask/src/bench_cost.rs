//! `cargo xtask bench --only cost`: what graydar costs a busy host, side by
//! side with Prometheus node_exporter (Debian's `prometheus-node-exporter`,
//! the agent users already run), under the same loads in the same run.
//!
//! For each load (idle; a UDP drop storm; a loopback TCP ping-pong, every
//! packet a data segment through tcp_fanin; write + fdatasync on tmpfs,
//! every call through the fsync probes) the phases run in this order: no
//! monitor, the graydar agent (and its variants for the knobs that cap its
//! cost: the classifier opted out of an interface, 64 mesh peers),
//! node_exporter, no monitor again; each monitor is scraped every
//! [`SCRAPE_EVERY`] by this process. Per phase: the load's rate, its ratio
//! against the mean of the two phases without a monitor and the time added
//! per event, the monitor's CPU share (utime + stime over the phase; the
//! kernel time spent in its eBPF programs is charged to the load, which is
//! why the load's ratio is there), its RSS and peak RSS, the scrape's
//! duration and series count. The load runs pinned to CPU 0; the monitors
//! are not pinned.

use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use crate::bench::{Agent, Ns, enter_netns, pin_to_cpu0, proc_cpu_ticks, status_kib};

/// How often both monitors are scraped during a phase.
const SCRAPE_EVERY: Duration = Duration::from_secs(5);
const AGENT_LISTEN: &str = "127.0.0.1:19577";
const NODE_EXPORTER_LISTEN: &str = "127.0.0.1:19578";
const NODE_EXPORTER: &str = "/usr/bin/prometheus-node-exporter";
/// The mesh port of the 64-peer variant (its peers are 127.0.0.2-65, all
/// answered by the agent itself: both ends of 64 probe streams).
const MESH_PORT: u16 = 19579;
const MESH_PEERS: u8 = 64;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Monitor {
    None,
    /// The agent with its default configuration.
    Agent,
    /// `[incast] exclude_interfaces = ["lo"]`: the classifier opted out of
    /// the interface the load runs on.
    AgentNoClassifierOnLo,
    /// `[paths]` with 64 static peers.
    AgentMeshPeers,
    /// `[disk] ebpf = false`: no fsync or block probes.
    AgentNoDiskEbpf,
    NodeExporter,
}

impl Monitor {
    fn name(self) -> &'static str {
        match self {
            Monitor::None => "none",
            Monitor::Agent => "graydar-agent",
            Monitor::AgentNoClassifierOnLo => "agent, lo opted out",
            Monitor::AgentMeshPeers => "agent, 64 peers",
            Monitor::AgentNoDiskEbpf => "agent, disk ebpf off",
            Monitor::NodeExporter => "node_exporter",
        }
    }

    fn is_agent(self) -> bool {
        matches!(
            self,
            Monitor::Agent | Monitor::AgentNoClassifierOnLo | Monitor::AgentMeshPeers | Monitor::AgentNoDiskEbpf
        )
    }

    /// The agent's configuration file for a variant.
    fn agent_config(self) -> Result<Option<std::path::PathBuf>> {
        let toml = match self {
            Monitor::AgentNoClassifierOnLo => "[incast]\nexclude_interfaces = [\"lo\"]\n".to_owned(),
            Monitor::AgentNoDiskEbpf => "[disk]\nebpf = false\n".to_owned(),
            Monitor::AgentMeshPeers => {
                let dir = std::env::temp_dir();
                let key = dir.join("graydar-bench-cost-mesh.key");
                // A fixed test secret (bytes 0..32): the bench's own mesh only.
                std::fs::write(&key, "1 AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n")?;
                let peers: Vec<String> = (0..MESH_PEERS)
                    .map(|i| format!("\"p{i}=127.0.0.{}:{MESH_PORT}\"", i + 2))
                    .collect();
                format!(
                    "[paths]\nport = {MESH_PORT}\nkey_file = \"{}\"\nmax_peers = {MESH_PEERS}\npeers = [{}]\n",
                    key.display(),
                    peers.join(", ")
                )
            }
            _ => return Ok(None),
        };
        let path = std::env::temp_dir().join("graydar-bench-cost-agent.toml");
        std::fs::write(&path, toml)?;
        Ok(Some(path))
    }
}

#[derive(Clone, Copy)]
enum Load {
    Idle,
    Drops,
    Tcp,
    /// TCP bulk from a namespace through a veth pair to this namespace,
    /// where the agent runs (its classifier on the veth end).
    Bulk,
    Fsync,
}

impl Load {
    fn name(self) -> &'static str {
        match self {
            Load::Idle => "idle",
            Load::Drops => "UDP drop storm",
            Load::Tcp => "TCP ping-pong",
            Load::Bulk => "TCP bulk over veth",
            Load::Fsync => "fdatasync (tmpfs)",
        }
    }

    fn unit(self) -> &'static str {
        match self {
            Load::Idle => "",
            Load::Drops => "drops/s",
            Load::Tcp => "transactions/s",
            Load::Bulk => "MiB/s",
            Load::Fsync => "calls/s",
        }
    }

    /// Units of the rate per event the load thread counts (bulk counts
    /// 64 KiB writes and reports MiB).
    fn scale(self) -> f64 {
        match self {
            Load::Bulk => 1.0 / 16.0,
            _ => 1.0,
        }
    }
}

/// The bulk load's topology: a namespace with one end of a veth pair,
/// 10.251.0.2/30, and the other end here, 10.251.0.1/30, with a sink
/// listening on it. Removed on drop (with the namespace).
struct Veth {
    ns: Ns,
    port: u16,
}

const VETH_HERE: &str = "10.251.0.1";

impl Veth {
    fn new() -> Result<Veth> {
        let id = std::process::id() % 100_000;
        let (here, there) = (format!("gdc{id}a"), format!("gdc{id}b"));
        let ns = Ns::new()?;
        for args in [
            vec!["link", "add", &here, "type", "veth", "peer", "name", &there],
            vec!["link", "set", &there, "netns", &ns.0],
            vec!["addr", "add", "10.251.0.1/30", "dev", &here],
            vec!["link", "set", &here, "up"],
            vec!["-n", &ns.0, "addr", "add", "10.251.0.2/30", "dev", &there],
            vec!["-n", &ns.0, "link", "set", &there, "up"],
        ] {
            crate::ok(Command::new("ip").args(&args))?;
        }
        // The sink: reads and discards, one connection per phase.
        let l = TcpListener::bind((VETH_HERE, 0))?;
        let port = l.local_addr()?.port();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { return };
                std::thread::spawn(move || {
                    pin_to_cpu0();
                    let mut buf = vec![0u8; 256 * 1024];
                    while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
                });
            }
        });
        Ok(Veth { ns, port })
    }
}

fn start(monitor: Monitor, agent_bin: &Path) -> Result<Option<Agent>> {
    let child = match monitor {
        Monitor::None => return Ok(None),
        m if m.is_agent() => {
            let mut cmd = Command::new(agent_bin);
            cmd.args(["--listen", AGENT_LISTEN, "--log-level", "error"]);
            if let Some(config) = m.agent_config()? {
                cmd.arg("--config").arg(config);
            }
            cmd.stdout(Stdio::null())
                .spawn()
                .with_context(|| format!("starting {}", agent_bin.display()))?
        }
        _ => Command::new(NODE_EXPORTER)
            .arg(format!("--web.listen-address={NODE_EXPORTER_LISTEN}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| {
                format!("starting {NODE_EXPORTER} (Debian's prometheus-node-exporter: run `cargo xtask setup`)")
            })?,
    };
    let running = Agent(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if scrape(monitor).is_ok() {
            return Ok(Some(running));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    bail!("{} did not serve /metrics within 30 s", monitor.name())
}

/// One scrape: (duration, series count).
fn scrape(monitor: Monitor) -> Result<(Duration, usize)> {
    let addr = match monitor {
        Monitor::None => bail!("nothing to scrape"),
        Monitor::NodeExporter => NODE_EXPORTER_LISTEN,
        _ => AGENT_LISTEN,
    };
    let start = Instant::now();
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    let took = start.elapsed();
    if !body.starts_with("HTTP/1.1 200") && !body.starts_with("HTTP/1.0 200") {
        bail!(
            "{} /metrics: {}",
            monitor.name(),
            body.lines().next().unwrap_or_default()
        );
    }
    let series = body
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .count();
    Ok((took, series))
}

/// Runs `load` on a thread pinned to CPU 0 until `stop`; returns its count.
fn spawn_load(load: Load, stop: Arc<AtomicBool>, veth: &Veth) -> Result<std::thread::JoinHandle<Result<u64>>> {
    let (veth_ns, veth_port) = (veth.ns.0.clone(), veth.port);
    // The TCP echo end: its own pinned thread, for the phase only.
    let echo = match load {
        Load::Tcp => {
            let l = TcpListener::bind("127.0.0.1:0")?;
            let port = l.local_addr()?.port();
            std::thread::spawn(move || {
                pin_to_cpu0();
                if let Ok((mut s, _)) = l.accept() {
                    let _ = s.set_nodelay(true);
                    let mut buf = [0u8; 64];
                    while s.read_exact(&mut buf).is_ok() {
                        if s.write_all(&buf).is_err() {
                            return;
                        }
                    }
                }
            });
            Some(port)
        }
        _ => None,
    };
    Ok(std::thread::spawn(move || -> Result<u64> {
        pin_to_cpu0();
        let mut n = 0u64;
        match load {
            Load::Idle => {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
            Load::Drops => {
                let sock = UdpSocket::bind("127.0.0.1:0")?;
                let payload = [0u8; 64];
                while !stop.load(Ordering::Relaxed) {
                    for _ in 0..1000 {
                        // Port 9 (discard) has no listener: every datagram is a kfree_skb drop.
                        let _ = sock.send_to(&payload, "127.0.0.1:9");
                    }
                    n += 1000;
                }
            }
            Load::Tcp => {
                let port = echo.context("echo port")?;
                let mut s = TcpStream::connect(("127.0.0.1", port))?;
                s.set_nodelay(true)?;
                let mut msg = [0x5au8; 64];
                while !stop.load(Ordering::Relaxed) {
                    for _ in 0..100 {
                        s.write_all(&msg)?;
                        s.read_exact(&mut msg)?;
                    }
                    n += 100;
                }
            }
            Load::Bulk => {
                enter_netns(&veth_ns)?;
                pin_to_cpu0();
                let mut s = TcpStream::connect((VETH_HERE, veth_port))?;
                let chunk = vec![0x5au8; 64 * 1024];
                while !stop.load(Ordering::Relaxed) {
                    s.write_all(&chunk)?;
                    n += 1;
                }
            }
            Load::Fsync => {
                use std::os::unix::fs::FileExt as _;
                let path = format!("/dev/shm/graydar-bench-cost-{}", std::process::id());
                let f = std::fs::OpenOptions::new()
                    .create(true)
                    .truncate(true)
                    .read(true)
                    .write(true)
                    .open(&path)?;
                let block = [0u8; 4096];
                while !stop.load(Ordering::Relaxed) {
                    for i in 0..100u64 {
                        f.write_all_at(&block, (i % 16) * 4096)?;
                        f.sync_data()?;
                    }
                    n += 100;
                }
                drop(f);
                let _ = std::fs::remove_file(&path);
            }
        }
        Ok(n)
    }))
}

struct Phase {
    rate: f64,
    cpu_pct: f64,
    rss_mib: f64,
    peak_mib: f64,
    scrape_ms: f64,
    series: usize,
}

fn phase(load: Load, monitor: Monitor, agent_bin: &Path, seconds: u64, veth: &Veth) -> Result<Phase> {
    let running = start(monitor, agent_bin)?;
    // Settle: the agent's start-up (BTF parse, attach) is not its steady cost.
    std::thread::sleep(Duration::from_secs(2));
    let pid = running.as_ref().map(|r| r.0.id());
    let stop = Arc::new(AtomicBool::new(false));
    let t0 = match pid {
        Some(p) => proc_cpu_ticks(p)?,
        None => 0,
    };
    let started = Instant::now();
    let worker = spawn_load(load, Arc::clone(&stop), veth)?;
    let mut scrapes = Vec::new();
    let mut series = 0;
    let mut next = started + SCRAPE_EVERY;
    while started.elapsed() < Duration::from_secs(seconds) {
        if monitor != Monitor::None && Instant::now() >= next {
            let (took, n) = scrape(monitor)?;
            scrapes.push(took.as_secs_f64() * 1e3);
            series = n;
            next += SCRAPE_EVERY;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::Relaxed);
    let count = worker.join().map_err(|_| anyhow::anyhow!("load thread panicked"))??;
    let elapsed = started.elapsed().as_secs_f64();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let (cpu_pct, rss_mib, peak_mib) = match pid {
        Some(p) => {
            let ticks = proc_cpu_ticks(p)?.saturating_sub(t0) as f64;
            (
                ticks / hz / elapsed * 100.0,
                status_kib(p, "VmRSS:")? as f64 / 1024.0,
                status_kib(p, "VmHWM:")? as f64 / 1024.0,
            )
        }
        None => (0.0, 0.0, 0.0),
    };
    drop(running);
    scrapes.sort_by(f64::total_cmp);
    Ok(Phase {
        rate: count as f64 * load.scale() / elapsed,
        cpu_pct,
        rss_mib,
        peak_mib,
        scrape_ms: scrapes.get(scrapes.len() / 2).copied().unwrap_or(0.0),
        series,
    })
}

/// The monitors each load runs beside, between two phases without one.
fn monitors(load: Load) -> &'static [Monitor] {
    match load {
        Load::Idle => &[Monitor::Agent, Monitor::AgentMeshPeers, Monitor::NodeExporter],
        Load::Tcp | Load::Drops => &[Monitor::Agent, Monitor::AgentNoClassifierOnLo, Monitor::NodeExporter],
        Load::Bulk => &[Monitor::Agent, Monitor::NodeExporter],
        Load::Fsync => &[Monitor::Agent, Monitor::AgentNoDiskEbpf, Monitor::NodeExporter],
    }
}

fn print_row(load: Load, monitor: Monitor, p: &Phase, base: f64) {
    let (rate, ratio, added) = if matches!(load, Load::Idle) {
        ("-".to_owned(), "-".to_owned(), "-".to_owned())
    } else {
        (
            format!("{:.0} {}", p.rate, load.unit()),
            format!("{:.3}", p.rate / base),
            format!("{:+.0}", 1e9 / p.rate - 1e9 / base),
        )
    };
    if monitor == Monitor::None {
        println!(
            "  {:<18} {:<20} {:>22} {:>7} {:>9}",
            load.name(),
            monitor.name(),
            rate,
            ratio,
            added
        );
    } else {
        println!(
            "  {:<18} {:<20} {:>22} {:>7} {:>9} {:>7.2} {:>8.1} {:>9.1} {:>10.1} {:>7}",
            load.name(),
            monitor.name(),
            rate,
            ratio,
            added,
            p.cpu_pct,
            p.rss_mib,
            p.peak_mib,
            p.scrape_ms,
            p.series
        );
    }
}

pub fn run(agent_bin: &Path, seconds: u64) -> Result<()> {
    if !Path::new(NODE_EXPORTER).is_file() {
        bail!("{NODE_EXPORTER} is missing: `cargo xtask setup` installs Debian's prometheus-node-exporter");
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "bench cost: graydar-agent beside node_exporter under the same loads, {seconds} s per phase, each monitor \
         scraped every {} s, load pinned to CPU 0, {cpus} CPUs; ratio and ns/event against the mean of the phases \
         without a monitor before and after",
        SCRAPE_EVERY.as_secs()
    );
    println!(
        "  {:<18} {:<20} {:>22} {:>7} {:>9} {:>7} {:>8} {:>9} {:>10} {:>7}",
        "load", "monitor", "load rate", "ratio", "ns/event", "CPU %", "RSS MiB", "peak MiB", "scrape ms", "series"
    );
    let veth = Veth::new()?;
    for load in [Load::Idle, Load::Drops, Load::Tcp, Load::Bulk, Load::Fsync] {
        let before = phase(load, Monitor::None, agent_bin, seconds, &veth)?;
        let mut rows = Vec::new();
        for &monitor in monitors(load) {
            rows.push((monitor, phase(load, monitor, agent_bin, seconds, &veth)?));
        }
        let after = phase(load, Monitor::None, agent_bin, seconds, &veth)?;
        let base = (before.rate + after.rate) / 2.0;
        print_row(load, Monitor::None, &before, base);
        for (monitor, p) in &rows {
            print_row(load, *monitor, p, base);
        }
        print_row(load, Monitor::None, &after, base);
    }
    Ok(())
}
