//! `cargo xtask bench --controller-agents 1000,10000`: a load generator that
//! simulates N agents against a release controller on this host. Every
//! simulated agent sends a heartbeat and a batch with one finding transition
//! every 5 s (phases spread evenly). Latency is measured from each request's
//! *scheduled* time to its answer (no coordinated omission); CPU from
//! /proc/<pid>/stat: the controllers', PostgreSQL's (its postmaster and
//! children) and the generator's own, each apart.
//!
//! `--controller-stores sqlite,postgres,postgres-2`: the embedded SQLite,
//! one controller on a throwaway PostgreSQL cluster, two replicas on it (the
//! simulated agents split between them). `--controller-cpus 0
//! --generator-cpus 1` pins the controllers (and PostgreSQL) and the
//! generator to separate CPU sets (sched_setaffinity, as `taskset` does), so
//! the figures are the controller's and not the generator's; unpinned, they
//! share the cores and the latency is an upper bound.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use graydar_common::api::{
    Capabilities, Evidence, Finding, FindingKind, FindingState, FindingTransition, HeartbeatRequest, RegisterRequest,
    Severity, Timestamp, TransitionBatch, TransitionKind, finding_id,
};
use graydar_common::client::{Client, ClientConfig};

use crate::{cargo, ok, token};

#[path = "../../tests/src/pg.rs"]
mod pg;

const PERIOD: Duration = Duration::from_secs(5);
const THREADS: usize = 48;

fn cpu_ticks(pid: u32) -> Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = s.rsplit_once(')').map(|x| x.1).context("stat format")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // fields after ')' start at field 3 (state); utime=14, stime=15.
    let ut: u64 = f.get(11).context("utime")?.parse()?;
    let st: u64 = f.get(12).context("stime")?.parse()?;
    Ok(ut + st)
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// 2026-01-01T00:00:00Z plus `ms`.
fn rfc3339(ms: u64) -> Timestamp {
    const START_MS: i64 = 1_767_225_600_000;
    Timestamp::from_unix_ms(START_MS.saturating_add(i64::try_from(ms).unwrap_or(i64::MAX)))
}

fn transition(host: &str, round: u64) -> FindingTransition {
    let kind = FindingKind::NicDrops;
    let subject = "eth0/rx";
    let since_ms = (round / 2) * 2 * 5000;
    let firing = round.is_multiple_of(2);
    let at = if firing { since_ms } else { since_ms + 5000 };
    FindingTransition {
        transition: if firing {
            TransitionKind::Fired
        } else {
            TransitionKind::Resolved
        },
        at: rfc3339(at),
        finding: Finding {
            id: finding_id(host, kind, subject),
            host: host.to_owned(),
            kind,
            subject: subject.to_owned(),
            severity: Severity::Warning,
            state: if firing {
                FindingState::Firing
            } else {
                FindingState::Resolved
            },
            since: rfc3339(since_ms),
            last_seen: rfc3339(at),
            resolved_at: (!firing).then_some(rfc3339(at)),
            summary: "eth0/rx: 2.00% of packets dropped by the device over 10s".into(),
            evidence: BTreeMap::from([
                ("short_ratio".to_owned(), Evidence::Number(0.02)),
                ("drops_per_second".to_owned(), Evidence::Number(120.0)),
            ]),
            runbook: kind.runbook(),
        },
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Where the benchmarked controllers keep their state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreKind {
    Sqlite,
    /// `replicas` controllers on one throwaway PostgreSQL cluster.
    Postgres {
        replicas: usize,
    },
}

impl StoreKind {
    pub fn parse(s: &str) -> Result<StoreKind> {
        Ok(match s {
            "sqlite" => StoreKind::Sqlite,
            "postgres" => StoreKind::Postgres { replicas: 1 },
            other => match other.strip_prefix("postgres-").and_then(|n| n.parse().ok()) {
                Some(replicas) if (1..=8).contains(&replicas) => StoreKind::Postgres { replicas },
                _ => bail!("--controller-stores: {other:?} is not sqlite, postgres or postgres-N (N replicas, 1 to 8)"),
            },
        })
    }

    fn name(self) -> String {
        match self {
            StoreKind::Sqlite => "sqlite".into(),
            StoreKind::Postgres { replicas: 1 } => "postgres".into(),
            StoreKind::Postgres { replicas } => format!("postgres-{replicas}"),
        }
    }
}

/// CPU sets (`--controller-cpus`, `--generator-cpus`), e.g. "0" or "2-7,9".
pub fn parse_cpus(s: &str) -> Result<Vec<usize>> {
    let mut out = Vec::new();
    for part in s.split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) = (a.trim().parse()?, b.trim().parse()?);
                anyhow::ensure!(a <= b, "CPU range {part}");
                out.extend(a..=b);
            }
            None => out.push(part.trim().parse()?),
        }
    }
    anyhow::ensure!(!out.is_empty(), "an empty CPU set");
    Ok(out)
}

/// Pins process `pid` (0: the calling thread, and the threads it starts
/// later) to `cpus`, as `taskset` does.
fn pin(pid: i32, cpus: &[usize]) -> std::io::Result<()> {
    // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET writes inside it
    // for indices below CPU_SETSIZE (checked); sched_setaffinity reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &c in cpus {
            if c >= libc::CPU_SETSIZE as usize {
                return Err(std::io::Error::other(format!("CPU {c} beyond CPU_SETSIZE")));
            }
            libc::CPU_SET(c, &mut set);
        }
        if libc::sched_setaffinity(pid, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// A release controller started by a benchmark; SIGTERM and reaped on drop.
pub struct Controller(pub Child);

impl Drop for Controller {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child.
        unsafe {
            libc::kill(self.0.id() as i32, libc::SIGTERM);
        }
        let _ = self.0.wait();
    }
}

/// Starts the release controller on a free loopback port with its data
/// under `dir` and the tokens of `dir/tokens` (the caller writes them), and
/// `config` if given; returns it and its URL.
pub fn start_controller(ws: &Path, dir: &Path, config: Option<&Path>) -> Result<(Controller, String)> {
    let config: Vec<&std::ffi::OsStr> = match config {
        Some(c) => vec!["--config".as_ref(), c.as_os_str()],
        None => Vec::new(),
    };
    start_controller_with(ws, dir, "data", &config, None)
}

/// [`start_controller`] with `args`, its data in `dir/<data>`, pinned to
/// `cpus` from before its first instruction (every thread inherits it).
fn start_controller_with(
    ws: &Path,
    dir: &Path,
    data: &str,
    args: &[&std::ffi::OsStr],
    cpus: Option<&[usize]>,
) -> Result<(Controller, String)> {
    use std::os::unix::process::CommandExt as _;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let mut cmd = Command::new(ws.join("target/release/graydar-controller"));
    cmd.args(["--listen", &format!("127.0.0.1:{port}"), "--log-level", "warn"]);
    cmd.args(args);
    if let Some(cpus) = cpus {
        let cpus = cpus.to_vec();
        // SAFETY: between fork and exec only sched_setaffinity (async-signal-safe) runs.
        unsafe {
            cmd.pre_exec(move || pin(0, &cpus));
        }
    }
    let child = cmd
        .arg("--data-dir")
        .arg(dir.join(data))
        .arg("--tokens-file")
        .arg(dir.join("tokens"))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting graydar-controller")?;
    Ok((Controller(child), format!("http://127.0.0.1:{port}")))
}

struct Figures {
    n: usize,
    store: StoreKind,
    ingest: Vec<f64>,
    heartbeat: Vec<f64>,
    errors: u64,
    wall: f64,
    /// Every controller's CPU together (1.0 = one core).
    cpu: f64,
    /// PostgreSQL's (postmaster and backends), where it runs.
    db_cpu: Option<f64>,
    gen_cpu: f64,
    rss_mib: f64,
}

/// CPU sets of `--controller-cpus` / `--generator-cpus`.
#[derive(Clone, Debug, Default)]
pub struct Pinning {
    pub controller: Option<Vec<usize>>,
    pub generator: Option<Vec<usize>>,
}

fn ticks_of(pids: &[u32]) -> BTreeMap<u32, u64> {
    pids.iter().filter_map(|&p| cpu_ticks(p).ok().map(|t| (p, t))).collect()
}

/// CPU ticks spent between two samples by the processes of the second
/// (one that started in between counts from zero).
fn ticks_between(before: &BTreeMap<u32, u64>, after: &BTreeMap<u32, u64>) -> u64 {
    after
        .iter()
        .map(|(p, t)| t.saturating_sub(before.get(p).copied().unwrap_or(0)))
        .sum()
}

/// The credential of simulated agent `host` and what its enrollment sends
/// (its SHA-256): the controller holds each agent to its own, as it does
/// real agents (controller/src/agents/credentials.rs).
pub(crate) fn sim_credential(host: &str) -> (String, String) {
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let seed = ring::digest::digest(&ring::digest::SHA256, format!("bench agent {host}").as_bytes());
    let secret = format!("{}{}", graydar_common::api::CREDENTIAL_PREFIX, hex(seed.as_ref()));
    let sha = hex(ring::digest::digest(&ring::digest::SHA256, secret.as_bytes()).as_ref());
    (secret, sha)
}

fn one(ws: &Path, n: usize, seconds: u64, store: StoreKind, pinning: &Pinning) -> Result<Figures> {
    let dir = ws.join(format!("target/bench-controller/{}-{n}", store.name()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let (agent_tok, viewer_tok) = (token()?, token()?);
    std::fs::write(dir.join("tokens"), format!("agent:{agent_tok}\nviewer:{viewer_tok}\n"))?;
    let cpus = pinning.controller.as_deref();
    let (db, controllers) = match store {
        StoreKind::Sqlite => (None, vec![start_controller_with(ws, &dir, "data", &[], cpus)?]),
        StoreKind::Postgres { replicas } => {
            let db = pg::PgCluster::start();
            if let Some(cpus) = cpus {
                // The postmaster and what runs now; backends forked later inherit it.
                for p in db.server_pids() {
                    pin(i32::try_from(p).unwrap_or(0), cpus).context("pinning PostgreSQL")?;
                }
            }
            let url = db.default_url();
            let mut ctls = Vec::new();
            for r in 0..replicas {
                let args: [&std::ffi::OsStr; 2] = ["--database-url".as_ref(), url.as_ref()];
                ctls.push(start_controller_with(ws, &dir, &format!("data-{r}"), &args, cpus)?);
            }
            (Some(db), ctls)
        }
    };
    let urls: Vec<String> = controllers.iter().map(|(_, u)| u.clone()).collect();
    let pids: Vec<u32> = controllers.iter().map(|(c, _)| c.0.id()).collect();
    for url in &urls {
        let probe = Client::new(ClientConfig::new(url, Some(viewer_tok.clone())))?;
        let start = Instant::now();
        while probe.agents().is_err() {
            if start.elapsed() > Duration::from_secs(20) {
                bail!("controller not answering at {url}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    // Register N agents.
    let t0 = Instant::now();
    std::thread::scope(|s| -> Result<()> {
        let mut hs = Vec::new();
        for t in 0..THREADS {
            let (url, tok) = (urls[t % urls.len()].clone(), agent_tok.clone());
            hs.push(s.spawn(move || -> Result<()> {
                let c = Client::new(ClientConfig::new(url, Some(tok)))?;
                for i in (t..n).step_by(THREADS) {
                    let hostname = format!("sim-{i:05}");
                    let (_, sha) = sim_credential(&hostname);
                    c.register(&RegisterRequest {
                        hostname,
                        addresses: vec![format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255)],
                        labels: BTreeMap::new(),
                        kernel_version: "6.18.0".into(),
                        agent_version: "bench".into(),
                        capabilities: Capabilities::default(),
                        interfaces: None,
                        dm_devices: None,
                        credential_sha256: Some(sha),
                    })?;
                }
                Ok(())
            }));
        }
        for h in hs {
            h.join().map_err(|_| anyhow::anyhow!("register thread panicked"))??;
        }
        Ok(())
    })?;
    println!("  N={n}: registered in {:.1}s", t0.elapsed().as_secs_f64());

    let errors = Arc::new(AtomicU64::new(0));
    let cpu0 = ticks_of(&pids);
    let db0 = db.as_ref().map(|d| ticks_of(&d.server_pids()));
    let gen0 = cpu_ticks(std::process::id())?;
    let begin = Instant::now() + Duration::from_millis(200);
    let end = begin + Duration::from_secs(seconds);
    let results: Vec<(Vec<f64>, Vec<f64>)> = std::thread::scope(|s| {
        let mut hs = Vec::new();
        for t in 0..THREADS {
            let (url, tok, errors) = (urls[t % urls.len()].clone(), agent_tok.clone(), errors.clone());
            hs.push(s.spawn(move || {
                let mut ingest = Vec::new();
                let mut hb = Vec::new();
                let Ok(c) = Client::new(ClientConfig::new(url, Some(tok))) else {
                    errors.fetch_add(1, Ordering::Relaxed);
                    return (ingest, hb);
                };
                // This thread's agents with their phase in the 5 s period.
                let mine: Vec<usize> = (t..n).step_by(THREADS).collect();
                let mut round = 0u64;
                'outer: loop {
                    for &i in &mine {
                        let phase = PERIOD.mul_f64(i as f64 / n as f64);
                        let due = begin + PERIOD * u32::try_from(round).unwrap_or(u32::MAX) + phase;
                        if due >= end {
                            break 'outer;
                        }
                        let now = Instant::now();
                        if due > now {
                            std::thread::sleep(due - now);
                        }
                        let host = format!("sim-{i:05}");
                        let c = c.with_token(sim_credential(&host).0);
                        let req = HeartbeatRequest {
                            firing: 1,
                            ..Default::default()
                        };
                        match c.heartbeat(&host, &req) {
                            Ok(_) => hb.push(due.elapsed().as_secs_f64()),
                            Err(_) => {
                                errors.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        let sent = Instant::now();
                        let batch = TransitionBatch {
                            transitions: vec![transition(&host, round)],
                        };
                        match c.push_transitions(&host, &batch) {
                            // Ingest latency: from the batch's send time (the
                            // heartbeat before it is measured separately).
                            Ok(r) if r.accepted == 1 => ingest.push(sent.elapsed().as_secs_f64()),
                            _ => {
                                errors.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                    round += 1;
                }
                (ingest, hb)
            }));
        }
        hs.into_iter().filter_map(|h| h.join().ok()).collect()
    });
    let wall = begin.elapsed().as_secs_f64();
    let cpu1 = ticks_of(&pids);
    let db1 = db.as_ref().map(|d| ticks_of(&d.server_pids()));
    let gen1 = cpu_ticks(std::process::id())?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let mut ingest: Vec<f64> = results.iter().flat_map(|r| r.0.iter().copied()).collect();
    let mut heartbeat: Vec<f64> = results.iter().flat_map(|r| r.1.iter().copied()).collect();
    ingest.sort_by(f64::total_cmp);
    heartbeat.sort_by(f64::total_cmp);
    let rss_mib = pids.iter().map(|&p| rss_kib(p)).sum::<u64>() as f64 / 1024.0;
    drop(controllers);
    drop(db);
    Ok(Figures {
        n,
        store,
        ingest,
        heartbeat,
        errors: errors.load(Ordering::Relaxed),
        wall,
        cpu: ticks_between(&cpu0, &cpu1) as f64 / hz / wall,
        db_cpu: db0.zip(db1).map(|(a, b)| ticks_between(&a, &b) as f64 / hz / wall),
        gen_cpu: gen1.saturating_sub(gen0) as f64 / hz / wall,
        rss_mib,
    })
}

pub fn run(ws: &Path, agents: &[usize], seconds: u64, stores: &[StoreKind], pinning: &Pinning) -> Result<()> {
    ok(cargo()
        .current_dir(ws)
        .args(["build", "--release", "-p", "graydar-controller"]))?;
    if cfg!(debug_assertions) {
        // An unoptimized generator would measure itself: re-run from a
        // release build of xtask.
        ok(cargo().current_dir(ws).args(["build", "--release", "-p", "xtask"]))?;
        let list: Vec<String> = agents.iter().map(usize::to_string).collect();
        let stores: Vec<String> = stores.iter().map(|s| s.name()).collect();
        let mut cmd = Command::new(ws.join("target/release/xtask"));
        cmd.args([
            "bench",
            "--controller-agents",
            &list.join(","),
            "--controller-seconds",
            &seconds.to_string(),
            "--controller-stores",
            &stores.join(","),
        ]);
        let cpus = |v: &[usize]| v.iter().map(usize::to_string).collect::<Vec<_>>().join(",");
        if let Some(c) = &pinning.controller {
            cmd.args(["--controller-cpus", &cpus(c)]);
        }
        if let Some(c) = &pinning.generator {
            cmd.args(["--generator-cpus", &cpus(c)]);
        }
        return ok(&mut cmd);
    }
    if let Some(cpus) = &pinning.generator {
        // This thread, and every generator thread started from it.
        pin(0, cpus).context("pinning the generator")?;
    }
    println!(
        "controller load: each simulated agent sends a heartbeat + a 1-transition batch every {}s; {seconds}s per N; {THREADS} client threads on the same host; controllers{} on CPUs {:?}, generator on CPUs {:?}",
        PERIOD.as_secs(),
        if stores.iter().any(|s| *s != StoreKind::Sqlite) {
            " and PostgreSQL"
        } else {
            ""
        },
        pinning.controller.as_deref().unwrap_or(&[]),
        pinning.generator.as_deref().unwrap_or(&[]),
    );
    let mut rows = Vec::new();
    for &store in stores {
        for &n in agents {
            rows.push(one(ws, n, seconds, store, pinning)?);
        }
    }
    println!(
        "\n{:>10}  {:>7}  {:>9}  {:>10}  {:>10}  {:>10}  {:>12}  {:>12}  {:>8}  {:>8}  {:>8}  {:>8}  {:>6}",
        "store",
        "agents",
        "req/s",
        "ingest p50",
        "ingest p99",
        "ingest max",
        "heartbeat p50",
        "heartbeat p99",
        "CPU",
        "DB CPU",
        "gen CPU",
        "RSS MiB",
        "errors"
    );
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    for f in &rows {
        let ms = |v: f64| v * 1000.0;
        println!(
            "{:>10}  {:>7}  {:>9.0}  {:>8.2}ms  {:>8.2}ms  {:>8.2}ms  {:>11.2}ms  {:>11.2}ms  {:>7.0}%  {:>8}  {:>7.0}%  {:>8.1}  {:>6}",
            f.store.name(),
            f.n,
            (f.ingest.len() + f.heartbeat.len()) as f64 / f.wall,
            ms(percentile(&f.ingest, 0.5)),
            ms(percentile(&f.ingest, 0.99)),
            ms(f.ingest.last().copied().unwrap_or(f64::NAN)),
            ms(percentile(&f.heartbeat, 0.5)),
            ms(percentile(&f.heartbeat, 0.99)),
            f.cpu * 100.0,
            f.db_cpu.map_or("-".to_owned(), |c| format!("{:.0}%", c * 100.0)),
            f.gen_cpu * 100.0,
            f.rss_mib,
            f.errors
        );
    }
    for &n in agents {
        println!("  N={n}: offered {:.0} req/s", 2.0 * n as f64 / PERIOD.as_secs_f64());
    }
    println!(
        "(CPU: every controller process together, 100% = one core; DB CPU: PostgreSQL's processes; gen CPU: this load generator; heartbeat latency counts from its scheduled time; loadavg {})",
        load.trim()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_sets_read_as_taskset_writes_them() {
        assert_eq!(parse_cpus("1").expect("1"), vec![1]);
        assert_eq!(parse_cpus("0-2,7").expect("list"), vec![0, 1, 2, 7]);
        for bad in ["", "a", "3-1", "1-"] {
            assert!(parse_cpus(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn stores_are_named_as_on_the_command_line() {
        for name in ["sqlite", "postgres", "postgres-2", "postgres-8"] {
            assert_eq!(StoreKind::parse(name).expect(name).name(), name);
        }
        for bad in ["mysql", "postgres-0", "postgres-9", "postgres-x"] {
            assert!(StoreKind::parse(bad).is_err(), "{bad}");
        }
    }
}
