//! `cargo xtask bench --controller-agents 1000,10000`: a load generator that
//! simulates N agents against a release controller on this host. Every
//! simulated agent sends a heartbeat and a batch with one finding transition
//! every 5 s (phases spread evenly). Latency is measured from each request's
//! *scheduled* time to its answer (no coordinated omission); controller CPU
//! from /proc/<pid>/stat. The generator shares the machine's cores with the
//! controller, so the figures are an upper bound on the controller's latency.

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
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let mut cmd = Command::new(ws.join("target/release/graydar-controller"));
    cmd.args(["--listen", &format!("127.0.0.1:{port}"), "--log-level", "warn"]);
    if let Some(c) = config {
        cmd.arg("--config").arg(c);
    }
    let child = cmd
        .arg("--data-dir")
        .arg(dir.join("data"))
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
    ingest: Vec<f64>,
    heartbeat: Vec<f64>,
    errors: u64,
    wall: f64,
    cpu: f64,
    gen_cpu: f64,
    rss_mib: f64,
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

fn one(ws: &Path, n: usize, seconds: u64) -> Result<Figures> {
    let dir = ws.join(format!("target/bench-controller/{n}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let (agent_tok, viewer_tok) = (token()?, token()?);
    std::fs::write(dir.join("tokens"), format!("agent:{agent_tok}\nviewer:{viewer_tok}\n"))?;
    let (ctl, url) = start_controller(ws, &dir, None)?;
    let pid = ctl.0.id();
    let probe = Client::new(ClientConfig::new(&url, Some(viewer_tok.clone())))?;
    let start = Instant::now();
    while probe.agents().is_err() {
        if start.elapsed() > Duration::from_secs(20) {
            bail!("controller not answering at {url}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }

    // Register N agents.
    let t0 = Instant::now();
    std::thread::scope(|s| -> Result<()> {
        let mut hs = Vec::new();
        for t in 0..THREADS {
            let (url, tok) = (url.clone(), agent_tok.clone());
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
    let cpu0 = cpu_ticks(pid)?;
    let gen0 = cpu_ticks(std::process::id())?;
    let begin = Instant::now() + Duration::from_millis(200);
    let end = begin + Duration::from_secs(seconds);
    let results: Vec<(Vec<f64>, Vec<f64>)> = std::thread::scope(|s| {
        let mut hs = Vec::new();
        for t in 0..THREADS {
            let (url, tok, errors) = (url.clone(), agent_tok.clone(), errors.clone());
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
    let cpu1 = cpu_ticks(pid)?;
    let gen1 = cpu_ticks(std::process::id())?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let mut ingest: Vec<f64> = results.iter().flat_map(|r| r.0.iter().copied()).collect();
    let mut heartbeat: Vec<f64> = results.iter().flat_map(|r| r.1.iter().copied()).collect();
    ingest.sort_by(f64::total_cmp);
    heartbeat.sort_by(f64::total_cmp);
    Ok(Figures {
        n,
        ingest,
        heartbeat,
        errors: errors.load(Ordering::Relaxed),
        wall,
        cpu: (cpu1 - cpu0) as f64 / hz / wall,
        gen_cpu: gen1.saturating_sub(gen0) as f64 / hz / wall,
        rss_mib: rss_kib(pid) as f64 / 1024.0,
    })
}

pub fn run(ws: &Path, agents: &[usize], seconds: u64) -> Result<()> {
    ok(cargo()
        .current_dir(ws)
        .args(["build", "--release", "-p", "graydar-controller"]))?;
    if cfg!(debug_assertions) {
        // An unoptimized generator would measure itself: re-run from a
        // release build of xtask.
        ok(cargo().current_dir(ws).args(["build", "--release", "-p", "xtask"]))?;
        let list: Vec<String> = agents.iter().map(usize::to_string).collect();
        return ok(Command::new(ws.join("target/release/xtask")).args([
            "bench",
            "--controller-agents",
            &list.join(","),
            "--controller-seconds",
            &seconds.to_string(),
        ]));
    }
    println!(
        "controller load: each simulated agent sends a heartbeat + a 1-transition batch every {}s; {seconds}s per N; {THREADS} client threads on the same host",
        PERIOD.as_secs()
    );
    let mut rows = Vec::new();
    for &n in agents {
        rows.push(one(ws, n, seconds)?);
    }
    println!(
        "\n{:>7}  {:>9}  {:>10}  {:>10}  {:>10}  {:>12}  {:>12}  {:>8}  {:>8}  {:>6}",
        "agents",
        "req/s",
        "ingest p50",
        "ingest p99",
        "ingest max",
        "heartbeat p50",
        "heartbeat p99",
        "CPU",
        "RSS MiB",
        "errors"
    );
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    for f in &rows {
        let ms = |v: f64| v * 1000.0;
        println!(
            "{:>7}  {:>9.0}  {:>8.2}ms  {:>8.2}ms  {:>8.2}ms  {:>11.2}ms  {:>11.2}ms  {:>7.0}%  {:>8.1}  {:>6}",
            f.n,
            (f.ingest.len() + f.heartbeat.len()) as f64 / f.wall,
            ms(percentile(&f.ingest, 0.5)),
            ms(percentile(&f.ingest, 0.99)),
            ms(f.ingest.last().copied().unwrap_or(f64::NAN)),
            ms(percentile(&f.heartbeat, 0.5)),
            ms(percentile(&f.heartbeat, 0.99)),
            f.cpu * 100.0,
            f.rss_mib,
            f.errors
        );
    }
    for f in &rows {
        println!(
            "  N={}: offered {:.0} req/s; load generator CPU {:.0}%",
            f.n,
            2.0 * f.n as f64 / PERIOD.as_secs_f64(),
            f.gen_cpu * 100.0
        );
    }
    println!(
        "(CPU: controller process, 100% = one core; heartbeat latency counts from its scheduled time; loadavg {})",
        load.trim()
    );
    Ok(())
}
