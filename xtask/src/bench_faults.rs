//! `cargo xtask bench --only faults`: how fast the kill switch reaches the
//! fleet. A release controller on this host, 100 simulated agents (one
//! thread each, the real blocking client) long-polling their desired set.
//! Each round creates a fault on all of them, waits until every agent holds
//! it, then times `POST /api/v1/faults/revert-all` to the moment the last
//! agent receives its empty set with the new epoch. Baseline: one plain
//! authenticated GET round trip against the same controller, so the figure
//! is also given as a ratio.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use graydar_common::api::{Capabilities, RegisterRequest};
use graydar_common::client::{Client, ClientConfig};
use graydar_common::fault_api::{CreateFaultRequest, FaultTargets};
use graydar_common::faults::{FaultSpec, NetemSpec};

use crate::bench_controller::start_controller;
use crate::{cargo, ok, token};

const AGENTS: usize = 100;
const ROUNDS: usize = 7;
const BASELINE_GETS: usize = 300;
/// The controller's lease (its poll wait is a third of it).
const LEASE_S: u64 = 30;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// What one simulated agent saw: (agent, faults in its set, epoch, when).
type Event = (usize, usize, u64, Instant);

pub fn run(ws: &Path) -> Result<()> {
    ok(cargo()
        .current_dir(ws)
        .args(["build", "--release", "-p", "graydar-controller"]))?;
    let dir = ws.join("target/bench-faults");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let (agent_tok, op_tok) = (token()?, token()?);
    std::fs::write(dir.join("tokens"), format!("agent:{agent_tok}\noperator:{op_tok}\n"))?;
    std::fs::write(
        dir.join("controller.toml"),
        format!("[faults]\nlease = \"{LEASE_S}s\"\nmax_target_share = 1.0\n"),
    )?;
    let (_ctl, url) = start_controller(ws, &dir, Some(&dir.join("controller.toml")))?;
    let op = Client::new(ClientConfig::new(&url, Some(op_tok.clone())))?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while op.faults(None, Some(1)).is_err() {
        if Instant::now() > deadline {
            bail!("controller not answering at {url}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let reg = Client::new(ClientConfig::new(&url, Some(agent_tok.clone())))?;
    let hosts: Vec<String> = (0..AGENTS).map(|i| format!("sim-{i:03}")).collect();
    for h in &hosts {
        reg.register(&RegisterRequest {
            hostname: h.clone(),
            credential_sha256: Some(crate::bench_controller::sim_credential(h).1),
            addresses: vec![],
            labels: Default::default(),
            kernel_version: "6.18.0".into(),
            agent_version: "bench".into(),
            capabilities: Capabilities::default(),
            interfaces: None,
            dm_devices: None,
        })?;
    }

    // Baseline: a plain authenticated GET round trip.
    let mut base = Vec::with_capacity(BASELINE_GETS);
    for _ in 0..BASELINE_GETS {
        let t = Instant::now();
        op.faults(None, Some(1))?;
        base.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let base_ms = median(base);

    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel::<Event>();
    let mut threads = Vec::new();
    for (i, h) in hosts.iter().enumerate() {
        let (tx, stop, h) = (tx.clone(), stop.clone(), h.clone());
        let cfg = ClientConfig {
            timeout: Duration::from_secs(LEASE_S),
            ..ClientConfig::new(&url, Some(crate::bench_controller::sim_credential(&h).0))
        };
        threads.push(std::thread::spawn(move || -> Result<()> {
            let c = Client::new(cfg)?;
            let mut version = None;
            while !stop.load(Ordering::Relaxed) {
                let d = c.desired_faults(&h, Duration::from_secs(LEASE_S / 3), version)?;
                version = Some(d.version);
                let _ = tx.send((i, d.faults.len(), d.revert_all_epoch, Instant::now()));
            }
            Ok(())
        }));
    }
    drop(tx);
    let spec = FaultSpec::Netem {
        interface: "eth0".into(),
        direction: Default::default(),
        scope: Default::default(),
        netem: NetemSpec {
            delay_ms: 10.0,
            ..Default::default()
        },
    };
    println!(
        "bench faults: revert-all fan-out to {AGENTS} long-polling simulated agents (one thread each, same host), \
         {ROUNDS} rounds"
    );
    let (mut last_ms, mut p50_ms, mut post_ms) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        op.create_fault(&CreateFaultRequest {
            targets: FaultTargets {
                agents: hosts.clone(),
                selector: Default::default(),
            },
            spec: spec.clone(),
            duration_seconds: 600,
            dry_run: false,
            force: true,
            lease_seconds: None,
        })?;
        // Every agent holds the fault.
        let mut holding = [false; AGENTS];
        while holding.iter().any(|h| !h) {
            let (i, n, _, _) = rx
                .recv_timeout(Duration::from_secs(30))
                .context("agents did not get the fault")?;
            holding[i] = n == 1;
        }
        // Let every poll park again.
        std::thread::sleep(Duration::from_millis(300));
        while rx.try_recv().is_ok() {}
        let t0 = Instant::now();
        let r = op.revert_all_faults()?;
        let posted = t0.elapsed();
        let mut got: Vec<Option<Duration>> = vec![None; AGENTS];
        while got.iter().any(Option::is_none) {
            let (i, n, epoch, at) = rx
                .recv_timeout(Duration::from_secs(30))
                .context("agents did not get the revert-all")?;
            if n == 0 && epoch == r.revert_all_epoch && got[i].is_none() {
                got[i] = Some(at.duration_since(t0));
            }
        }
        let mut ms: Vec<f64> = got.iter().flatten().map(|d| d.as_secs_f64() * 1000.0).collect();
        ms.sort_by(f64::total_cmp);
        let last = ms.last().copied().unwrap_or(f64::NAN);
        println!(
            "  round {round}: POST {:.1} ms; agents got it: median {:.1} ms, last {last:.1} ms",
            posted.as_secs_f64() * 1000.0,
            median(ms.clone()),
        );
        last_ms.push(last);
        p50_ms.push(median(ms));
        post_ms.push(posted.as_secs_f64() * 1000.0);
    }
    stop.store(true, Ordering::Relaxed);
    // Wake every parked poll so the threads see the stop flag.
    op.revert_all_faults()?;
    for t in threads {
        match t.join() {
            Ok(r) => r?,
            Err(_) => bail!("a simulated agent thread panicked"),
        }
    }
    let last = median(last_ms);
    println!(
        "  median over rounds: revert-all reaches the last of {AGENTS} agents in {last:.1} ms (median agent {:.1} ms, \
         POST answered in {:.1} ms); baseline GET round trip {base_ms:.2} ms: ratio last-agent / one GET {:.1}, \
         / {AGENTS} sequential GETs {:.2}",
        median(p50_ms),
        median(post_ms),
        last / base_ms,
        last / (base_ms * AGENTS as f64)
    );
    Ok(())
}
