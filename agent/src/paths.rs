//! The path-probe mesh end to end: one UDP socket per address family on
//! `paths.port` is both prober and responder (wire format in
//! agent/src/probes/path_mesh.rs). Every `paths.interval` a probe goes to each
//! peer; every probe is answered; every datagram carries the sender's report
//! of what it received from the destination. Once a second each peer's
//! outcomes become a [`Tick`] for the pair detectors
//! (agent/src/detect/paths.rs), whose verdicts go to the finding store; a
//! suspect pair is traced both ways with the Paris traceroute
//! (agent/src/probes/traceroute.rs), the peer's hop list coming back over the
//! mesh. With a `[controller]`, the agent pushes its per-peer view and gets
//! its peer list (`POST /api/v1/agents/{hostname}/paths`).
//!
//! Receive timestamps are the kernel's (SO_TIMESTAMPNS), TTL / hop limit of
//! each datagram from IP_RECVTTL / IPV6_RECVHOPLIMIT.

use std::collections::{BTreeMap, HashMap};
use std::io::IoSliceMut;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsRawFd as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use graydar_common::api::{Evidence, FindingKind};
use graydar_common::paths::{DirectionStats, PathReport, PeerObservation, PeerTarget};
use nix::sys::socket::{
    AddressFamily, ControlMessageOwned, MsgFlags, SockFlag, SockType, SockaddrIn, SockaddrIn6, SockaddrStorage, bind,
    recvmsg, setsockopt, socket, sockopt,
};
use tokio::io::Interest;
use tokio::net::UdpSocket;

use crate::config::Config;
use crate::detect::paths::{OutTracker, PairDetector, PairStats, PathsConfig, Tick, Verdict, parse_peer};
use crate::findings::{FindingStore, Report};
use crate::metrics::Metrics;
use crate::probes::path_mesh::{
    self, Body, Datagram, Echo, FLAG_TRACE_REQUEST, HOPS_UNKNOWN, Header, Hop, KIND_TRACE, RxReport, RxTracker,
    TraceProbe, hop_count,
};
use crate::probes::traceroute;

/// TTL / hop limit every mesh datagram is sent with (carried in the header).
pub const SEND_TTL: u8 = 64;
/// Evaluation period of the detectors.
const EVAL_EVERY: Duration = Duration::from_secs(1);
/// A suspect pair is traced again at most this often.
const TRACE_EVERY: Duration = Duration::from_secs(30);
const TRACE_PER_HOP: Duration = Duration::from_millis(300);
/// Our cached hop list is re-sent on request at most this often.
const HOPS_RESEND_EVERY: Duration = Duration::from_secs(5);

pub const PATH_KINDS: [FindingKind; 4] = [
    FindingKind::OneWayLoss,
    FindingKind::AsymmetricConnectivity,
    FindingKind::AsymmetricRoute,
    FindingKind::LatencyAsymmetry,
];

fn realtime_ns() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn diff_seconds(a_ns: u64, b_ns: u64) -> f64 {
    (i128::from(a_ns) - i128::from(b_ns)) as f64 / 1e9
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Source {
    Static,
    Controller,
}

struct Peer {
    name: String,
    addr: SocketAddr,
    source: Source,
    /// How the peer calls itself (the id in its datagrams).
    peer_id: Option<String>,
    seq: u64,
    out: OutTracker,
    rx: RxTracker,
    det: PairDetector,
    rtts: Vec<f64>,
    fwd_owd: Vec<f64>,
    rev_owd: Vec<f64>,
    fwd_hops: Option<u8>,
    rev_hops: Option<u8>,
    stats: PairStats,
    unknown_total: u64,
    firing: Vec<FindingKind>,
    /// Ask the peer for its hop list (flag in our datagrams).
    want_trace: bool,
    /// The peer asked for ours.
    trace_requested: bool,
    trace_running: bool,
    last_trace: Option<Instant>,
    last_hops_sent: Option<Instant>,
    /// Our traceroute toward the peer, and the peer's toward us.
    hops_fwd: Option<Vec<Hop>>,
    hops_rev: Option<Vec<Hop>>,
}

impl Peer {
    fn new(name: String, addr: SocketAddr, source: Source, cfg: &PathsConfig) -> Peer {
        Peer {
            name,
            addr,
            source,
            peer_id: None,
            seq: 0,
            out: OutTracker::default(),
            rx: RxTracker::default(),
            det: PairDetector::new(cfg.clone()),
            rtts: Vec::new(),
            fwd_owd: Vec::new(),
            rev_owd: Vec::new(),
            fwd_hops: None,
            rev_hops: None,
            stats: PairStats::default(),
            unknown_total: 0,
            firing: Vec::new(),
            want_trace: false,
            trace_requested: false,
            trace_running: false,
            last_trace: None,
            last_hops_sent: None,
            hops_fwd: None,
            hops_rev: None,
        }
    }

    fn subject(&self) -> String {
        format!("peer {}", self.name)
    }
}

/// Senders we answer but do not probe (they list us, we do not list them).
struct Passive {
    rx: RxTracker,
    last: Duration,
}

/// Shared state of the mesh.
struct Mesh {
    me: String,
    epoch: u32,
    cfg: PathsConfig,
    started: Instant,
    peers: BTreeMap<String, Peer>,
    passive: HashMap<SocketAddr, Passive>,
    controller_peers: Vec<(String, SocketAddr)>,
    /// Traceroute runs in flight → the lowest TTL the peer echoed (None: not yet).
    trace_runs: HashMap<u32, Option<u8>>,
}

/// What to do after a datagram.
#[derive(Default)]
struct Actions {
    reply: Option<Vec<u8>>,
}

impl Mesh {
    fn now(&self) -> Duration {
        self.started.elapsed()
    }

    fn header(&self, seq: u64, flags: u8, report: path_mesh::RxReport) -> Header {
        Header {
            kind: 0,
            flags,
            ttl: SEND_TTL,
            epoch: self.epoch,
            seq,
            tx_ns: realtime_ns(),
            report,
            id: self.me.clone(),
        }
    }

    fn peer_for(&mut self, from: SocketAddr, id: &str) -> Option<String> {
        if let Some(p) = self.peers.values().find(|p| p.addr == from) {
            return Some(p.name.clone());
        }
        self.peers
            .values()
            .find(|p| p.addr.ip() == from.ip() || p.peer_id.as_deref() == Some(id))
            .map(|p| p.name.clone())
    }

    fn on_datagram(&mut self, d: Datagram, from: SocketAddr, rx_ns: u64, rx_ttl: Option<u8>) -> Actions {
        let now = self.now();
        let mut act = Actions::default();
        match d.body {
            // Someone's traceroute reached us: tell it (whoever it is; it is not a probe).
            Body::Trace(t) => {
                act.reply = Some(path_mesh::encode(&Datagram {
                    header: self.header(0, 0, RxReport::default()),
                    body: Body::TraceEcho(t),
                }));
                return act;
            }
            // Our traceroute reached the peer.
            Body::TraceEcho(t) => {
                if let Some(seen) = self.trace_runs.get_mut(&t.run) {
                    *seen = Some(seen.map_or(t.ttl, |s| s.min(t.ttl)));
                }
                return act;
            }
            _ => {}
        }
        let hdr = &d.header;
        let rev_hops = hop_count(hdr.ttl, rx_ttl);
        let epoch = self.epoch;
        let Some(name) = self.peer_for(from, &hdr.id) else {
            // Not ours to probe: answer probes so the sender measures us.
            if let Body::Probe = d.body {
                let max = self.cfg.max_peers * 4;
                if !self.passive.contains_key(&from)
                    && self.passive.len() >= max
                    && let Some(oldest) = self.passive.iter().min_by_key(|(_, p)| p.last).map(|(a, _)| *a)
                {
                    self.passive.remove(&oldest);
                }
                let p = self.passive.entry(from).or_insert_with(|| Passive {
                    rx: RxTracker::default(),
                    last: now,
                });
                p.last = now;
                p.rx.on_probe(hdr.epoch, hdr.seq, rev_hops, now);
                let report = p.rx.report();
                act.reply = Some(self.reply(&d, report, rx_ns, rx_ttl));
            }
            return act;
        };
        let Some(peer) = self.peers.get_mut(&name) else {
            return act;
        };
        peer.peer_id = Some(hdr.id.clone());
        if rev_hops.is_some() {
            peer.rev_hops = rev_hops;
        }
        if hdr.report.epoch == epoch && hdr.report.hops != HOPS_UNKNOWN {
            peer.fwd_hops = Some(hdr.report.hops);
        }
        peer.out.on_report(epoch, hdr.epoch, hdr.report, now);
        if hdr.flags & FLAG_TRACE_REQUEST != 0 {
            peer.trace_requested = true;
        }
        // Raw one-way delay peer -> me (its clock offset included).
        let rev_owd = diff_seconds(rx_ns, hdr.tx_ns);
        match &d.body {
            Body::Probe => {
                peer.rev_owd.push(rev_owd);
                peer.rx.on_probe(hdr.epoch, hdr.seq, rev_hops, now);
                let report = peer.rx.report();
                act.reply = Some(self.reply(&d, report, rx_ns, rx_ttl));
            }
            Body::Reply(e) => {
                if peer.out.on_reply(e.seq, e.tx_ns) {
                    let rtt = diff_seconds(rx_ns, e.tx_ns);
                    if rtt >= 0.0 {
                        peer.rtts.push(rtt);
                    }
                    peer.fwd_owd.push(diff_seconds(e.rx_ns, e.tx_ns));
                    peer.rev_owd.push(rev_owd);
                }
            }
            Body::Hops(h) => peer.hops_rev = Some(h.clone()),
            Body::Trace(_) | Body::TraceEcho(_) => {}
        }
        act
    }

    fn reply(&self, probe: &Datagram, report: path_mesh::RxReport, rx_ns: u64, rx_ttl: Option<u8>) -> Vec<u8> {
        let flags = self
            .peers
            .values()
            .find(|p| p.peer_id.as_deref() == Some(probe.header.id.as_str()))
            .map_or(0, |p| if p.want_trace { FLAG_TRACE_REQUEST } else { 0 });
        path_mesh::encode(&Datagram {
            header: self.header(0, flags, report),
            body: Body::Reply(Echo {
                seq: probe.header.seq,
                tx_ns: probe.header.tx_ns,
                ttl: probe.header.ttl,
                rx_ns,
                rx_ttl: rx_ttl.unwrap_or(0),
            }),
        })
    }

    /// The next probe to every peer.
    fn probes(&mut self) -> Vec<(SocketAddr, Vec<u8>)> {
        let now = self.now();
        let names: Vec<String> = self.peers.keys().cloned().collect();
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            let Some(p) = self.peers.get(&name) else { continue };
            let seq = p.seq + 1;
            let flags = if p.want_trace { FLAG_TRACE_REQUEST } else { 0 };
            let header = self.header(seq, flags, p.rx.report());
            let tx_ns = header.tx_ns;
            let bytes = path_mesh::encode(&Datagram {
                header,
                body: Body::Probe,
            });
            if let Some(p) = self.peers.get_mut(&name) {
                p.seq = seq;
                p.out.on_sent(seq, tx_ns, now);
                out.push((p.addr, bytes));
            }
        }
        out
    }

    /// A traceroute probe of `run` with TTL `ttl` (the header's ttl says so too).
    fn trace_datagram(&self, ttl: u8, run: u32) -> Vec<u8> {
        path_mesh::encode(&Datagram {
            header: Header {
                kind: KIND_TRACE,
                flags: 0,
                ttl,
                epoch: self.epoch,
                seq: 0,
                tx_ns: realtime_ns(),
                report: RxReport::default(),
                id: self.me.clone(),
            },
            body: Body::Trace(TraceProbe { ttl, run }),
        })
    }

    fn hops_datagram(&self, peer: &Peer) -> Option<Vec<u8>> {
        let hops = peer.hops_fwd.clone()?;
        Some(path_mesh::encode(&Datagram {
            header: self.header(0, 0, peer.rx.report()),
            body: Body::Hops(hops),
        }))
    }

    /// Replaces the peer set with static + controller peers (at most max_peers);
    /// returns the peers removed (their findings resolve).
    fn sync_peers(&mut self) -> Vec<Peer> {
        let mut want: Vec<(String, SocketAddr, Source)> = Vec::new();
        for s in &self.cfg.peers {
            if let Ok((n, a)) = parse_peer(s, self.cfg.port) {
                want.push((n, a, Source::Static));
            }
        }
        for (n, a) in &self.controller_peers {
            if *n != self.me && !want.iter().any(|(wn, wa, _)| wn == n || wa == a) {
                want.push((n.clone(), *a, Source::Controller));
            }
        }
        want.truncate(self.cfg.max_peers);
        let mut removed = Vec::new();
        let keep: Vec<&String> = want.iter().map(|(n, _, _)| n).collect();
        let gone: Vec<String> = self.peers.keys().filter(|k| !keep.contains(k)).cloned().collect();
        for g in gone {
            if let Some(p) = self.peers.remove(&g) {
                removed.push(p);
            }
        }
        for (n, a, src) in want {
            match self.peers.get_mut(&n) {
                Some(p) => {
                    p.source = src;
                    if p.addr != a {
                        tracing::info!(peer = %n, old = %p.addr, new = %a, "path peer moved");
                        p.addr = a;
                    }
                }
                None => {
                    tracing::info!(peer = %n, addr = %a, source = ?src, "path peer added");
                    let p = Peer::new(n.clone(), a, src, &self.cfg);
                    self.peers.insert(n, p);
                }
            }
        }
        removed
    }
}

// ---------------------------------------------------------------------------
// Sockets

fn open_socket(v6: bool, port: u16) -> std::io::Result<std::net::UdpSocket> {
    let fam = if v6 { AddressFamily::Inet6 } else { AddressFamily::Inet };
    let fd = socket(
        fam,
        SockType::Datagram,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    if v6 {
        setsockopt(&fd, sockopt::Ipv6V6Only, &true)?;
        setsockopt(&fd, sockopt::Ipv6RecvHopLimit, &true)?;
        setsockopt(&fd, sockopt::Ipv6Ttl, &i32::from(SEND_TTL))?;
        bind(
            fd.as_raw_fd(),
            &SockaddrIn6::from(SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, port, 0, 0)),
        )?;
    } else {
        setsockopt(&fd, sockopt::Ipv4RecvTtl, &true)?;
        setsockopt(&fd, sockopt::Ipv4Ttl, &i32::from(SEND_TTL))?;
        bind(
            fd.as_raw_fd(),
            &SockaddrIn::from(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port)),
        )?;
    }
    setsockopt(&fd, sockopt::ReceiveTimestampns, &true)?;
    Ok(std::net::UdpSocket::from(fd))
}

struct Received {
    len: usize,
    from: SocketAddr,
    ttl: Option<u8>,
    rx_ns: Option<u64>,
    truncated: bool,
}

fn recv_one(fd: std::os::fd::RawFd, buf: &mut [u8]) -> std::io::Result<Received> {
    let mut iov = [IoSliceMut::new(buf)];
    let mut cmsg = nix::cmsg_space!(libc::c_int, libc::timespec);
    let msg = recvmsg::<SockaddrStorage>(fd, &mut iov, Some(&mut cmsg), MsgFlags::MSG_DONTWAIT)?;
    let mut ttl = None;
    let mut rx_ns = None;
    if let Ok(cmsgs) = msg.cmsgs() {
        for c in cmsgs {
            match c {
                ControlMessageOwned::Ipv4Ttl(t) | ControlMessageOwned::Ipv6HopLimit(t) => ttl = u8::try_from(t).ok(),
                ControlMessageOwned::ScmTimestampns(ts) => {
                    rx_ns = u64::try_from(ts.tv_sec())
                        .ok()
                        .and_then(|s| s.checked_mul(1_000_000_000))
                        .and_then(|s| s.checked_add(u64::try_from(ts.tv_nsec()).ok()?));
                }
                _ => {}
            }
        }
    }
    let from = msg.address.and_then(|a: SockaddrStorage| {
        if let Some(v4) = a.as_sockaddr_in() {
            Some(SocketAddr::V4(SocketAddrV4::from(*v4)))
        } else {
            a.as_sockaddr_in6().map(|v6| SocketAddr::V6(SocketAddrV6::from(*v6)))
        }
    });
    let truncated = msg.flags.contains(MsgFlags::MSG_TRUNC);
    let len = msg.bytes;
    let from = from.ok_or_else(|| std::io::Error::other("datagram without a source address"))?;
    Ok(Received {
        len,
        from,
        ttl,
        rx_ns,
        truncated,
    })
}

/// IPv4-mapped IPv6 sources are plain IPv4 peers.
fn canonical(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => a,
        },
        v4 => v4,
    }
}

// ---------------------------------------------------------------------------
// The signal

pub struct PathsSignal {
    mesh: Arc<Mutex<Mesh>>,
    v4: Option<Arc<UdpSocket>>,
    v6: Option<Arc<UdpSocket>>,
    metrics: Arc<Metrics>,
    findings: Arc<Mutex<FindingStore>>,
    cfg: Config,
    /// One traceroute at a time (they share the mesh sockets' error queues).
    trace_lock: Mutex<()>,
    /// The controller channel the path report goes through (with a `[controller]`).
    channel: Option<crate::channel::Channel>,
}

/// Sends on a mesh socket, once more when the first attempt fails with an
/// ICMP error pending from an earlier datagram (IP_RECVERR is on while a
/// traceroute runs, and the kernel reports the error on the next call).
async fn send_mesh(sock: &UdpSocket, bytes: &[u8], to: SocketAddr) -> std::io::Result<usize> {
    match sock.send_to(bytes, to).await {
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::ECONNREFUSED | libc::EHOSTUNREACH | libc::ENETUNREACH)
            ) =>
        {
            sock.send_to(bytes, to).await
        }
        r => r,
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl PathsSignal {
    /// Binds the sockets; None when disabled or when no family can bind (logged).
    pub fn start(cfg: &Config, metrics: Arc<Metrics>, findings: Arc<Mutex<FindingStore>>) -> Option<PathsSignal> {
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
            up.set(0);
            return None;
        }
        up.set(1);
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
        };
        mesh.sync_peers();
        tracing::info!(
            port = cfg.paths.port,
            interval = ?cfg.paths.interval,
            peers = mesh.peers.len(),
            ipv4 = v4.is_some(),
            ipv6 = v6.is_some(),
            "path mesh: prober and responder running"
        );
        Some(PathsSignal {
            mesh: Arc::new(Mutex::new(mesh)),
            v4,
            v6,
            metrics,
            findings,
            cfg: cfg.clone(),
            trace_lock: Mutex::new(()),
            channel: None,
        })
    }

    /// Reports to the controller through `channel` (with a `[controller]`).
    pub fn with_channel(mut self, channel: Option<crate::channel::Channel>) -> PathsSignal {
        self.channel = channel;
        self
    }

    fn socket_for(&self, a: &SocketAddr) -> Option<Arc<UdpSocket>> {
        match a {
            SocketAddr::V4(_) => self.v4.clone(),
            SocketAddr::V6(_) => self.v6.clone(),
        }
    }

    pub async fn run(self, mut stop: tokio::sync::watch::Receiver<bool>) {
        let this = Arc::new(self);
        let mut tasks = Vec::new();
        for s in [this.v4.clone(), this.v6.clone()].into_iter().flatten() {
            let t = this.clone();
            let mut st = stop.clone();
            tasks.push(tokio::spawn(async move {
                tokio::select! {
                    _ = t.receive(s) => {}
                    _ = st.changed() => {}
                }
            }));
        }
        let controller = match (&this.cfg.controller, &this.channel) {
            (Some(section), Some(channel)) => Some(tokio::spawn(this.clone().controller_sync(
                channel.clone(),
                section.report_interval,
                stop.clone(),
            ))),
            _ => None,
        };
        let mut probe_tick = tokio::time::interval(this.cfg.paths.interval);
        probe_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut eval_tick = tokio::time::interval(EVAL_EVERY);
        eval_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = probe_tick.tick() => this.send_probes().await,
                _ = eval_tick.tick() => this.evaluate().await,
                _ = stop.changed() => break,
            }
        }
        if let Some(h) = controller {
            let _ = h.await;
        }
        for t in tasks {
            let _ = t.await;
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
            let d = match path_mesh::decode(data) {
                Ok(d) => d,
                Err(e) => {
                    bad(e.reason());
                    continue;
                }
            };
            let from = canonical(r.from);
            let rx_ns = r.rx_ns.unwrap_or_else(realtime_ns);
            let act = lock(&self.mesh).on_datagram(d, from, rx_ns, r.ttl);
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

    async fn evaluate(self: &Arc<Self>) {
        let now_wall = SystemTime::now();
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
                let suspect = ev.route_suspect || ev.verdicts.iter().any(|v| matches!(v, Verdict::Firing { .. }));
                p.want_trace = suspect;
                p.stats = ev.stats.clone();
                for v in ev.verdicts {
                    match &v {
                        Verdict::Firing { kind, .. } if !p.firing.contains(kind) => p.firing.push(*kind),
                        Verdict::Resolve(kind) => p.firing.retain(|k| k != kind),
                        _ => {}
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
            let mut store = lock(&self.findings);
            for (name, v) in verdicts {
                let Some(p) = mesh.peers.get(&name) else { continue };
                match v {
                    Verdict::Firing {
                        kind,
                        severity,
                        summary,
                        mut evidence,
                        ..
                    } => {
                        if let Some(h) = &p.hops_fwd {
                            evidence.insert("traceroute_fwd".into(), Evidence::from(traceroute::hops_text(h)));
                        }
                        if let Some(h) = &p.hops_rev {
                            evidence.insert("traceroute_rev".into(), Evidence::from(traceroute::hops_text(h)));
                        }
                        evidence.insert("address".into(), Evidence::from(p.addr.to_string()));
                        store.firing(
                            Report {
                                kind,
                                subject: p.subject(),
                                severity,
                                summary,
                                evidence,
                            },
                            now_wall,
                        );
                    }
                    Verdict::Resolve(kind) => store.resolve(kind, &p.subject(), now_wall),
                }
            }
            for mut p in removed {
                for kind in p.det.resolve_all() {
                    store.resolve(kind, &p.subject(), now_wall);
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
    }

    /// Paris traceroute toward the peer on the mesh flow itself (from the
    /// mesh socket to the peer's mesh port: agent/src/probes/traceroute.rs).
    async fn traceroute(self: Arc<Self>, name: String, addr: SocketAddr) {
        let max = self.cfg.paths.traceroute_max_hops;
        let Some(sock) = self.socket_for(&addr) else {
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
            let payload = |ttl: u8| lock(&this.mesh).trace_datagram(ttl, run);
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

    /// What this agent tells the controller.
    fn report(&self) -> PathReport {
        let mesh = lock(&self.mesh);
        let dir = |delivered: u64, lost: u64, hops: Option<u8>, owd: Option<f64>| DirectionStats {
            delivered,
            lost,
            loss_ratio: (delivered + lost > 0).then(|| lost as f64 / (delivered + lost) as f64),
            hops,
            owd_variation_seconds: owd,
        };
        let addresses = match &mesh.cfg.advertise {
            Some(a) => vec![a.clone()],
            None => crate::reporter::local_addresses(),
        };
        PathReport {
            port: mesh.cfg.port,
            addresses,
            max_peers: u32::try_from(mesh.cfg.max_peers).unwrap_or(u32::MAX),
            interval_seconds: mesh.cfg.interval.as_secs_f64(),
            peers: mesh
                .peers
                .values()
                .map(|p| PeerObservation {
                    peer: p.peer_id.clone().unwrap_or_else(|| p.name.clone()),
                    address: p.addr.to_string(),
                    outbound: dir(
                        p.stats.out_delivered,
                        p.stats.out_lost,
                        p.stats.fwd_hops,
                        p.stats.fwd_owd_variation,
                    ),
                    inbound: dir(
                        p.stats.in_delivered,
                        p.stats.in_lost,
                        p.stats.rev_hops,
                        p.stats.rev_owd_variation,
                    ),
                    unknown: p.stats.out_unknown,
                    rtt_p50_seconds: p.stats.rtt_p50,
                    rtt_p99_seconds: p.stats.rtt_p99,
                    firing: p.firing.iter().map(|k| k.as_str().to_owned()).collect(),
                })
                .collect(),
        }
    }

    /// Pushes the report to the controller and takes its peer list, every
    /// report interval, until `stop`.
    async fn controller_sync(
        self: Arc<Self>,
        channel: crate::channel::Channel,
        report_interval: Duration,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let every = report_interval.max(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stop.changed() => return,
            }
            let report = self.report();
            match channel.push_paths(&self.cfg.hostname, &report).await {
                Ok(resp) => {
                    let peers = resp
                        .peers
                        .into_iter()
                        .filter_map(|t: PeerTarget| {
                            let ip: IpAddr = t.address.parse().ok()?;
                            Some((t.hostname, SocketAddr::new(ip, t.port)))
                        })
                        .collect();
                    lock(&self.mesh).controller_peers = peers;
                }
                // Refused (4xx but "register first"): a bug or a bad `advertise`; say so.
                Err(e @ crate::channel::ChannelError::Api { status, .. }) if status != 404 && status < 500 => {
                    tracing::warn!(error = %e, "path mesh: the controller refused the path report")
                }
                Err(e) => tracing::debug!(error = %e, "path mesh: report to the controller"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mesh(me: &str, peers: &[&str]) -> Mesh {
        let cfg = PathsConfig {
            peers: peers.iter().map(|s| (*s).to_owned()).collect(),
            ..PathsConfig::default()
        };
        let mut m = Mesh {
            me: me.into(),
            epoch: 11,
            cfg,
            started: Instant::now(),
            peers: BTreeMap::new(),
            passive: HashMap::new(),
            controller_peers: Vec::new(),
            trace_runs: HashMap::new(),
        };
        m.sync_peers();
        m
    }

    /// Two meshes exchange datagrams in memory: forward and reverse views agree.
    #[test]
    fn probe_reply_round_trip_teaches_both_directions() {
        let a_addr: SocketAddr = "10.0.0.1:9478".parse().expect("addr");
        let b_addr: SocketAddr = "10.0.0.2:9478".parse().expect("addr");
        let mut a = mesh("a", &["b=10.0.0.2"]);
        let mut b = mesh("b", &["a=10.0.0.1"]);
        b.epoch = 22;
        for _ in 0..3 {
            let probes = a.probes();
            let (to, bytes) = probes.first().expect("one probe");
            assert_eq!(*to, b_addr);
            let d = path_mesh::decode(bytes).expect("decodes");
            // a -> b crosses 2 routers.
            let act = b.on_datagram(d, a_addr, realtime_ns(), Some(62));
            let reply = path_mesh::decode(&act.reply.expect("reply")).expect("reply decodes");
            // b -> a crosses 3.
            a.on_datagram(reply, b_addr, realtime_ns(), Some(61));
        }
        let pa = a.peers.get("b").expect("peer b");
        assert_eq!(pa.fwd_hops, Some(2), "b told a how many hops a's probes took");
        assert_eq!(pa.rev_hops, Some(3));
        assert_eq!(pa.rtts.len(), 3);
        assert_eq!(pa.peer_id.as_deref(), Some("b"));
        let pb = b.peers.get("a").expect("peer a");
        assert_eq!(pb.rx.report().max_seq, 3);
        // Unknown sender: answered, not probed.
        let mut c = mesh("c", &[]);
        let probe = path_mesh::decode(&a.probes()[0].1).expect("decodes");
        assert!(c.on_datagram(probe, a_addr, realtime_ns(), Some(64)).reply.is_some());
        assert!(c.peers.is_empty());
        assert_eq!(c.passive.len(), 1);
    }

    /// A trace datagram is echoed by whoever it reaches (peer or not) and
    /// touches no probe state; the echo completes the sender's run.
    #[test]
    fn trace_datagrams_are_echoed_and_echoes_recorded() {
        let a_addr: SocketAddr = "10.0.0.1:9478".parse().expect("addr");
        let b_addr: SocketAddr = "10.0.0.2:9478".parse().expect("addr");
        let mut a = mesh("a", &["b=10.0.0.2"]);
        let mut b = mesh("b", &["a=10.0.0.1"]);
        a.trace_runs.insert(99, None);
        let trace = path_mesh::decode(&a.trace_datagram(3, 99)).expect("decodes");
        assert_eq!(trace.header.ttl, 3);
        // Arrives with TTL 1 left (2 routers): no hop count, no sequence learnt from it.
        let act = b.on_datagram(trace, a_addr, realtime_ns(), Some(1));
        let echo = path_mesh::decode(&act.reply.expect("echo")).expect("echo decodes");
        assert_eq!(echo.body, Body::TraceEcho(TraceProbe { ttl: 3, run: 99 }));
        let pb = b.peers.get("a").expect("peer a");
        assert_eq!((pb.rev_hops, pb.rx.report().max_seq), (None, 0));
        assert!(
            a.on_datagram(echo.clone(), b_addr, realtime_ns(), Some(62))
                .reply
                .is_none()
        );
        assert_eq!(a.trace_runs.get(&99), Some(&Some(3)));
        // An echo of a run not in flight is ignored.
        let mut c = mesh("c", &[]);
        c.on_datagram(echo, b_addr, realtime_ns(), Some(62));
        assert!(c.trace_runs.is_empty() && c.passive.is_empty());
    }

    #[test]
    fn peers_are_bounded_and_merged() {
        let mut m = mesh("a", &["b=10.0.0.2", "c=10.0.0.3"]);
        m.cfg.max_peers = 3;
        m.controller_peers = vec![
            ("a".into(), "10.0.0.1:9478".parse().expect("addr")),
            ("b".into(), "10.0.0.2:9478".parse().expect("addr")),
            ("d".into(), "10.0.0.4:9478".parse().expect("addr")),
            ("e".into(), "10.0.0.5:9478".parse().expect("addr")),
        ];
        assert!(m.sync_peers().is_empty());
        let names: Vec<&String> = m.peers.keys().collect();
        assert_eq!(names, ["b", "c", "d"], "self skipped, duplicates merged, bounded");
        m.controller_peers.clear();
        let removed = m.sync_peers();
        assert_eq!(removed.len(), 1);
        assert_eq!(removed[0].name, "d");
    }
}
