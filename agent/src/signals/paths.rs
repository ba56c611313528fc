//! The path-probe mesh end to end: one UDP socket per address family on
//! `paths.port` is both prober and responder (wire format in
//! agent/src/probes/paths/mesh.rs). Every `paths.interval` a probe goes to each
//! peer; every probe is answered; every datagram carries the sender's report
//! of what it received from the destination. Once a second each peer's
//! outcomes become a [`Tick`] for the pair detectors
//! (agent/src/detect/paths/), whose verdicts go to the finding store; a
//! suspect pair is traced both ways with the Paris traceroute
//! (agent/src/probes/paths/traceroute.rs), the peer's hop list coming back over the
//! mesh. With a `[controller]`, the agent pushes its per-peer view and gets
//! its peer list (`POST /api/v1/agents/{hostname}/paths`).
//!
//! Receive timestamps are the kernel's (SO_TIMESTAMPNS), TTL / hop limit of
//! each datagram from IP_RECVTTL / IPV6_RECVHOPLIMIT.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::os::fd::AsRawFd as _;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use graydar_common::api::Evidence;
use tokio::io::Interest;
use tokio::net::UdpSocket;

use super::{Context, Signal, Update};
use crate::config::Config;
use crate::detect::paths::{Tick, Verdict};
use crate::findings::Report;
use crate::metrics::Metrics;
use crate::probes::paths::auth::ReplayGuard;
use crate::probes::paths::socket::{canonical, open_socket, recv_one, send_mesh};
use crate::probes::paths::traceroute;

mod mesh;
mod sync;

pub use crate::probes::paths::socket::SEND_TTL;
use mesh::{Mesh, realtime_ns};
/// Evaluation period of the detectors.
const EVAL_EVERY: Duration = Duration::from_secs(1);
/// A suspect pair is traced again at most this often.
const TRACE_EVERY: Duration = Duration::from_secs(30);
const TRACE_PER_HOP: Duration = Duration::from_millis(300);
/// Our cached hop list is re-sent on request at most this often.
const HOPS_RESEND_EVERY: Duration = Duration::from_secs(5);

/// The path signal: the mesh's sockets and state, shared with its tasks.
pub struct PathsSignal {
    shared: Arc<Shared>,
    /// The receive loops and the prober.
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// The controller channel the path report goes through (with a `[controller]`).
    channel: Option<crate::channel::Channel>,
    /// The path sync task (agent/src/signals/paths/sync.rs).
    controller: Option<tokio::task::JoinHandle<()>>,
}

struct Shared {
    mesh: Arc<Mutex<Mesh>>,
    v4: Option<Arc<UdpSocket>>,
    v6: Option<Arc<UdpSocket>>,
    metrics: Arc<Metrics>,
    cfg: Config,
    /// One traceroute at a time (they share the mesh sockets' error queues).
    trace_lock: Mutex<()>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    /// Binds the sockets; None when disabled or when no family can bind (logged).
    fn start(cfg: &Config, metrics: Arc<Metrics>) -> Option<Shared> {
        // Disabled by configuration: no probe_up series (disabled, not down).
        if !cfg.paths.enabled {
            return None;
        }
        let up = metrics.probe_up.with_label_values(&["path_mesh"]);
        let bind = |v6: bool| match open_socket(v6, cfg.paths.port).and_then(UdpSocket::from_std) {
            Ok(s) => Some(Arc::new(s)),
            Err(e) => {
                tracing::warn!(port = cfg.paths.port, ipv6 = v6, error = %e, "path mesh: cannot bind");
                None
            }
        };
        let v4 = bind(false);
        let v6 = bind(true);
        if v4.is_none() && v6.is_none() {
            // The signal does not run, so the runner cannot report it.
            up.set(0);
            return None;
        }
        let epoch = fastrand::u32(1..);
        let mut mesh = Mesh {
            me: cfg.hostname.clone(),
            epoch,
            cfg: cfg.paths.clone(),
            started: Instant::now(),
            peers: BTreeMap::new(),
            passive: HashMap::new(),
            controller_peers: Vec::new(),
            trace_runs: HashMap::new(),
            keys: cfg.mesh_keys.clone(),
            ctr: AtomicU64::new(0),
            replay: ReplayGuard::default(),
        };
        mesh.sync_peers();
        tracing::info!(
            port = cfg.paths.port,
            interval = ?cfg.paths.interval,
            peers = mesh.peers.len(),
            ipv4 = v4.is_some(),
            ipv6 = v6.is_some(),
            keys = ?mesh.keys.as_ref().map(|k| k.ids()),
            "path mesh: prober and responder running"
        );
        if mesh.keys.is_none() {
            if cfg.controller.is_some() {
                tracing::info!("path mesh: waiting for the fleet keys from the controller; silent until then");
            } else {
                tracing::warn!(
                    "path mesh: no [paths] key_file and no [controller] to hand out keys: the mesh neither sends \
                     nor answers anything"
                );
            }
        }
        Some(Shared {
            mesh: Arc::new(Mutex::new(mesh)),
            v4,
            v6,
            metrics,
            cfg: cfg.clone(),
            trace_lock: Mutex::new(()),
        })
    }

    fn socket_for(&self, a: &SocketAddr) -> Option<Arc<UdpSocket>> {
        match a {
            SocketAddr::V4(_) => self.v4.clone(),
            SocketAddr::V6(_) => self.v6.clone(),
        }
    }

    async fn receive(self: &Arc<Self>, sock: Arc<UdpSocket>) {
        let mut buf = vec![0u8; 2048];
        loop {
            let fd = sock.as_raw_fd();
            let r = sock.async_io(Interest::READABLE, || recv_one(fd, &mut buf)).await;
            let r = match r {
                Ok(r) => r,
                Err(e) => {
                    // ICMP errors of earlier sends surface here (ECONNREFUSED): not ours to fail on.
                    tracing::debug!(error = %e, "path mesh: recvmsg");
                    if !matches!(
                        e.raw_os_error(),
                        Some(libc::ECONNREFUSED | libc::EHOSTUNREACH | libc::ENETUNREACH)
                    ) {
                        self.metrics.collector_errors.with_label_values(&["path_mesh"]).inc();
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    continue;
                }
            };
            let bad = |reason: &str| {
                self.metrics.paths.bad_datagrams.with_label_values(&[reason]).inc();
            };
            if r.truncated {
                bad("truncated");
                continue;
            }
            let Some(data) = buf.get(..r.len) else { continue };
            let from = canonical(r.from);
            let rx_ns = r.rx_ns.unwrap_or_else(realtime_ns);
            let act = {
                let mut mesh = lock(&self.mesh);
                match mesh.open(data) {
                    // Dropped without a word back: nothing unauthenticated is answered.
                    Err(reason) => {
                        drop(mesh);
                        bad(reason);
                        continue;
                    }
                    Ok(d) => mesh.on_datagram(d, from, rx_ns, r.ttl),
                }
            };
            if let Some(reply) = act.reply
                && let Err(e) = send_mesh(&sock, &reply, r.from).await
            {
                tracing::debug!(to = %r.from, error = %e, "path mesh: reply");
            }
        }
    }

    async fn send_probes(&self) {
        let probes = lock(&self.mesh).probes();
        for (addr, bytes) in probes {
            let Some(sock) = self.socket_for(&addr) else { continue };
            let name = lock(&self.mesh)
                .peers
                .values()
                .find(|p| p.addr == addr)
                .map(|p| p.name.clone())
                .unwrap_or_default();
            self.metrics.paths.probes_sent.with_label_values(&[&name]).inc();
            if let Err(e) = send_mesh(&sock, &bytes, addr).await {
                tracing::debug!(to = %addr, error = %e, "path mesh: probe");
            }
        }
    }

    async fn evaluate(self: &Arc<Self>) -> Vec<Update> {
        let mut updates = Vec::new();
        let mut verdicts: Vec<(String, Verdict)> = Vec::new();
        let mut traces: Vec<(String, SocketAddr)> = Vec::new();
        let mut hop_sends: Vec<(SocketAddr, Vec<u8>)> = Vec::new();
        let removed;
        {
            let mut mesh = lock(&self.mesh);
            removed = mesh.sync_peers();
            let now = mesh.now();
            let me = mesh.me.clone();
            let epoch = mesh.epoch;
            let grace = mesh.cfg.grace;
            let unknown_after = mesh.cfg.unknown_after();
            let traceroute_on = mesh.cfg.traceroute;
            let m = &self.metrics.paths;
            let names: Vec<String> = mesh.peers.keys().cloned().collect();
            for name in names {
                let Some(p) = mesh.peers.get_mut(&name) else { continue };
                let out = p.out.take(epoch, now, grace, unknown_after);
                let inb = p.rx.take(now, grace);
                p.unknown_total += out.unknown;
                for r in &p.rtts {
                    m.rtt.with_label_values(&[&name]).observe(*r);
                }
                m.delivered
                    .with_label_values(&[&name, "outbound"])
                    .inc_by(out.delivered);
                m.lost.with_label_values(&[&name, "outbound"]).inc_by(out.lost);
                m.delivered.with_label_values(&[&name, "inbound"]).inc_by(inb.delivered);
                m.lost.with_label_values(&[&name, "inbound"]).inc_by(inb.lost);
                let tick = Tick {
                    at: now,
                    out,
                    inb,
                    rtts: std::mem::take(&mut p.rtts),
                    fwd_owd: std::mem::take(&mut p.fwd_owd),
                    rev_owd: std::mem::take(&mut p.rev_owd),
                    fwd_hops: p.fwd_hops,
                    rev_hops: p.rev_hops,
                    blackout: false,
                };
                let peer_id = p.peer_id.clone();
                let ev = p.det.evaluate(tick, &me, &name, peer_id.as_deref());
                for (dir, ratio, hops, owd) in [
                    (
                        "outbound",
                        ev.stats.out_loss(),
                        ev.stats.fwd_hops,
                        ev.stats.fwd_owd_variation,
                    ),
                    (
                        "inbound",
                        ev.stats.in_loss(),
                        ev.stats.rev_hops,
                        ev.stats.rev_owd_variation,
                    ),
                ] {
                    if let Some(r) = ratio {
                        m.loss_ratio.with_label_values(&[&name, dir]).set(r);
                    }
                    if let Some(h) = hops {
                        m.hops.with_label_values(&[&name, dir]).set(i64::from(h));
                    }
                    if let Some(o) = owd {
                        m.owd_variation.with_label_values(&[&name, dir]).set(o);
                    }
                }
                let suspect = ev.route_suspect || ev.verdicts.iter().any(Verdict::is_firing);
                p.want_trace = suspect;
                p.stats = ev.stats.clone();
                for v in ev.verdicts {
                    if !v.is_firing() {
                        p.firing.retain(|k| *k != v.kind);
                    } else if !p.firing.contains(&v.kind) {
                        p.firing.push(v.kind);
                    }
                    verdicts.push((name.clone(), v));
                }
                let due = p.last_trace.is_none_or(|t| t.elapsed() >= TRACE_EVERY);
                if traceroute_on && (suspect || p.trace_requested) && !p.trace_running && due {
                    p.trace_running = true;
                    p.trace_requested = false;
                    traces.push((name.clone(), p.addr));
                } else if p.trace_requested
                    && p.hops_fwd.is_some()
                    && p.last_hops_sent.is_none_or(|t| t.elapsed() >= HOPS_RESEND_EVERY)
                {
                    p.trace_requested = false;
                    p.last_hops_sent = Some(Instant::now());
                    let addr = p.addr;
                    if let Some(p) = mesh.peers.get(&name)
                        && let Some(b) = mesh.hops_datagram(p)
                    {
                        hop_sends.push((addr, b));
                    }
                }
            }
            m.peers.set(i64::try_from(mesh.peers.len()).unwrap_or(i64::MAX));
            // Evidence: both hop lists.
            for (name, v) in verdicts {
                let Some(p) = mesh.peers.get(&name) else { continue };
                let Verdict {
                    kind,
                    transition,
                    severity,
                    summary,
                    mut evidence,
                } = v;
                if let Some(h) = &p.hops_fwd {
                    evidence.insert("traceroute_fwd".into(), Evidence::from(traceroute::hops_text(h)));
                }
                if let Some(h) = &p.hops_rev {
                    evidence.insert("traceroute_rev".into(), Evidence::from(traceroute::hops_text(h)));
                }
                evidence.insert("address".into(), Evidence::from(p.addr.to_string()));
                let report = Report {
                    kind,
                    subject: p.subject(),
                    severity,
                    summary,
                    evidence,
                };
                updates.push(match transition {
                    // Every evaluation of a firing pair restates it.
                    None => Update::Restate(report),
                    t => Update::Apply(t, report),
                });
            }
            for mut p in removed {
                for kind in p.det.resolve_all() {
                    updates.push(Update::Resolve(kind, p.subject()));
                }
                for dir in ["outbound", "inbound"] {
                    let _ = m.loss_ratio.remove_label_values(&[&p.name, dir]);
                    let _ = m.hops.remove_label_values(&[&p.name, dir]);
                    let _ = m.owd_variation.remove_label_values(&[&p.name, dir]);
                    let _ = m.delivered.remove_label_values(&[&p.name, dir]);
                    let _ = m.lost.remove_label_values(&[&p.name, dir]);
                }
                let _ = m.probes_sent.remove_label_values(&[&p.name]);
                let _ = m.rtt.remove_label_values(&[&p.name]);
                tracing::info!(peer = %p.name, "path peer removed");
            }
        }
        for (addr, b) in hop_sends {
            if let Some(s) = self.socket_for(&addr) {
                let _ = send_mesh(&s, &b, addr).await;
            }
        }
        for (name, addr) in traces {
            let this = self.clone();
            tokio::spawn(async move { this.traceroute(name, addr).await });
        }
        updates
    }

    /// Paris traceroute toward the peer on the mesh flow itself (from the
    /// mesh socket to the peer's mesh port: agent/src/probes/paths/traceroute.rs).
    async fn traceroute(self: Arc<Self>, name: String, addr: SocketAddr) {
        let max = self.cfg.paths.traceroute_max_hops;
        let keyless = lock(&self.mesh).keys.is_none();
        let sock = if keyless { None } else { self.socket_for(&addr) };
        let Some(sock) = sock else {
            if let Some(p) = lock(&self.mesh).peers.get_mut(&name) {
                p.trace_running = false;
            }
            return;
        };
        let run = fastrand::u32(1..);
        lock(&self.mesh).trace_runs.insert(run, None);
        let this = self.clone();
        let r = tokio::task::spawn_blocking(move || {
            let _one_at_a_time = lock(&this.trace_lock);
            // Without a key there is nothing to send; the run ends with no answers.
            let payload = |ttl: u8| lock(&this.mesh).trace_datagram(ttl, run).unwrap_or_default();
            let echoed = || lock(&this.mesh).trace_runs.get(&run).copied().flatten();
            traceroute::trace(
                &*sock,
                &traceroute::TraceRun {
                    dst: addr,
                    max_hops: max,
                    per_hop: TRACE_PER_HOP,
                    run,
                    payload: &payload,
                    echoed: &echoed,
                },
            )
        })
        .await;
        lock(&self.mesh).trace_runs.remove(&run);
        let hops = match r {
            Ok(Ok(h)) => {
                self.metrics.paths.traceroutes.with_label_values(&["ok"]).inc();
                tracing::info!(peer = %name, hops = %traceroute::hops_text(&h), "path mesh: traceroute");
                Some(h)
            }
            Ok(Err(e)) => {
                self.metrics.paths.traceroutes.with_label_values(&["error"]).inc();
                tracing::warn!(peer = %name, error = %e, "path mesh: traceroute");
                None
            }
            Err(e) => {
                tracing::warn!(peer = %name, error = %e, "path mesh: traceroute task");
                None
            }
        };
        let send = {
            let mut mesh = lock(&self.mesh);
            let Some(p) = mesh.peers.get_mut(&name) else { return };
            p.trace_running = false;
            p.last_trace = Some(Instant::now());
            if hops.is_some() {
                p.hops_fwd = hops;
                p.last_hops_sent = Some(Instant::now());
            }
            let addr = p.addr;
            mesh.peers
                .get(&name)
                .and_then(|p| mesh.hops_datagram(p))
                .map(|b| (addr, b))
        };
        if let Some((addr, b)) = send
            && let Some(s) = self.socket_for(&addr)
        {
            // Three copies: the list must survive a lossy direction.
            for _ in 0..3 {
                let _ = send_mesh(&s, &b, addr).await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

impl Signal for PathsSignal {
    const NAME: &'static str = "paths";

    /// Binds the sockets; `None` when disabled or when no family can bind (logged).
    fn start(ctx: &mut Context) -> Option<Self> {
        Some(PathsSignal {
            shared: Arc::new(Shared::start(&ctx.cfg, ctx.metrics.clone())?),
            tasks: Vec::new(),
            channel: ctx.channel.clone(),
            controller: None,
        })
    }

    fn interval(&self) -> Duration {
        EVAL_EVERY
    }

    /// Starts the receive loops, the prober (every `paths.interval`) and,
    /// with a `[controller]`, the path sync.
    async fn begin(&mut self, stop: tokio::sync::watch::Receiver<bool>) {
        let this = &self.shared;
        for s in [this.v4.clone(), this.v6.clone()].into_iter().flatten() {
            let t = this.clone();
            let mut st = stop.clone();
            self.tasks.push(tokio::spawn(async move {
                tokio::select! {
                    _ = t.receive(s) => {}
                    _ = st.changed() => {}
                }
            }));
        }
        self.controller = this.start_controller_sync(self.channel.clone(), stop.clone());
        let t = this.clone();
        let mut st = stop;
        self.tasks.push(tokio::spawn(async move {
            let mut probe_tick = tokio::time::interval(t.cfg.paths.interval);
            probe_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = probe_tick.tick() => t.send_probes().await,
                    _ = st.changed() => break,
                }
            }
        }));
    }

    async fn sample(&mut self) -> Vec<Update> {
        self.shared.evaluate().await
    }

    fn probes(&self) -> Vec<(&'static str, bool)> {
        vec![("path_mesh", true)]
    }

    async fn stop(self) {
        if let Some(h) = self.controller {
            let _ = h.await;
        }
        for t in self.tasks {
            let _ = t.await;
        }
    }
}
