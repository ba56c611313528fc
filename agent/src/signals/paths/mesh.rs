//! The mesh state machine: peers, what each datagram teaches and answers,
//! the probes due. No sockets here (agent/src/probes/paths/socket.rs).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use graydar_common::api::FindingKind;

use crate::detect::paths::{OutTracker, PairDetector, PairStats, PathsConfig, parse_peer};
use crate::probes::paths::auth::{MeshKeys, ReplayGuard};
use crate::probes::paths::mesh::{
    self as path_mesh, Body, Datagram, Echo, FLAG_TRACE_REQUEST, HOPS_UNKNOWN, Header, Hop, KIND_TRACE, RxReport,
    RxTracker, TraceProbe, hop_count,
};
use crate::probes::paths::socket::SEND_TTL;

pub(super) fn realtime_ns() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

pub(super) fn diff_seconds(a_ns: u64, b_ns: u64) -> f64 {
    (i128::from(a_ns) - i128::from(b_ns)) as f64 / 1e9
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Source {
    Static,
    Controller,
}

pub(super) struct Peer {
    pub(super) name: String,
    pub(super) addr: SocketAddr,
    pub(super) source: Source,
    /// How the peer calls itself (the id in its datagrams).
    pub(super) peer_id: Option<String>,
    pub(super) seq: u64,
    pub(super) out: OutTracker,
    pub(super) rx: RxTracker,
    pub(super) det: PairDetector,
    pub(super) rtts: Vec<f64>,
    pub(super) fwd_owd: Vec<f64>,
    pub(super) rev_owd: Vec<f64>,
    pub(super) fwd_hops: Option<u8>,
    pub(super) rev_hops: Option<u8>,
    pub(super) stats: PairStats,
    pub(super) unknown_total: u64,
    pub(super) firing: Vec<FindingKind>,
    /// Ask the peer for its hop list (flag in our datagrams).
    pub(super) want_trace: bool,
    /// The peer asked for ours.
    pub(super) trace_requested: bool,
    pub(super) trace_running: bool,
    pub(super) last_trace: Option<Instant>,
    pub(super) last_hops_sent: Option<Instant>,
    /// Our traceroute toward the peer, and the peer's toward us.
    pub(super) hops_fwd: Option<Vec<Hop>>,
    pub(super) hops_rev: Option<Vec<Hop>>,
}

impl Peer {
    pub(super) fn new(name: String, addr: SocketAddr, source: Source, cfg: &PathsConfig) -> Peer {
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

    pub(super) fn subject(&self) -> String {
        format!("peer {}", self.name)
    }
}

/// Senders we answer but do not probe (they list us, we do not list them).
pub(super) struct Passive {
    pub(super) rx: RxTracker,
    pub(super) last: Duration,
}

/// Shared state of the mesh.
pub(super) struct Mesh {
    pub(super) me: String,
    pub(super) epoch: u32,
    pub(super) cfg: PathsConfig,
    pub(super) started: Instant,
    pub(super) peers: BTreeMap<String, Peer>,
    pub(super) passive: HashMap<SocketAddr, Passive>,
    pub(super) controller_peers: Vec<(String, SocketAddr)>,
    /// Traceroute runs in flight → the lowest TTL the peer echoed (None: not yet).
    pub(super) trace_runs: HashMap<u32, Option<u8>>,
    /// The fleet keys (key file, or the controller's); None: the mesh
    /// neither sends nor answers anything.
    pub(super) keys: Option<MeshKeys>,
    /// Datagrams sent in this session (each carries the next value).
    pub(super) ctr: AtomicU64,
    /// Per sender: the replay window.
    pub(super) replay: ReplayGuard,
}

/// What to do after a datagram.
#[derive(Default)]
pub(super) struct Actions {
    pub(super) reply: Option<Vec<u8>>,
}

impl Mesh {
    pub(super) fn now(&self) -> Duration {
        self.started.elapsed()
    }

    pub(super) fn header(&self, seq: u64, flags: u8, report: path_mesh::RxReport) -> Header {
        Header {
            kind: 0,
            flags,
            ttl: SEND_TTL,
            key_id: 0,
            epoch: self.epoch,
            seq,
            ctr: self.next_ctr(),
            tx_ns: realtime_ns(),
            report,
            id: self.me.clone(),
        }
    }

    fn next_ctr(&self) -> u64 {
        self.ctr.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Encodes and signs with the sending key; None while there is no key.
    pub(super) fn seal(&self, d: &Datagram) -> Option<Vec<u8>> {
        self.keys.as_ref().map(|k| path_mesh::encode(d, k.sending()))
    }

    /// A received datagram, if it is authentic and not a replay; else the
    /// reason it is dropped (the `reason` of the bad-datagram counter). An
    /// authentic datagram is the only kind ever answered.
    pub(super) fn open(&mut self, bytes: &[u8]) -> Result<Datagram, &'static str> {
        let d = path_mesh::decode(bytes, self.keys.as_ref()).map_err(|e| e.reason())?;
        let now = self.now();
        let h = &d.header;
        self.replay
            .accept(
                &h.id,
                h.epoch,
                h.ctr,
                h.tx_ns,
                now,
                self.cfg.max_peers.saturating_mul(4),
            )
            .map_err(|r| r.reason())?;
        Ok(d)
    }

    pub(super) fn peer_for(&mut self, from: SocketAddr, id: &str) -> Option<String> {
        if let Some(p) = self.peers.values().find(|p| p.addr == from) {
            return Some(p.name.clone());
        }
        self.peers
            .values()
            .find(|p| p.addr.ip() == from.ip() || p.peer_id.as_deref() == Some(id))
            .map(|p| p.name.clone())
    }

    pub(super) fn on_datagram(&mut self, d: Datagram, from: SocketAddr, rx_ns: u64, rx_ttl: Option<u8>) -> Actions {
        let now = self.now();
        let mut act = Actions::default();
        match d.body {
            // Someone's traceroute reached us: tell it (whoever it is; it is not a probe).
            Body::Trace(t) => {
                act.reply = self.seal(&Datagram {
                    header: self.header(0, 0, RxReport::default()),
                    body: Body::TraceEcho(t),
                });
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
                act.reply = self.reply(&d, report, rx_ns, rx_ttl);
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
                act.reply = self.reply(&d, report, rx_ns, rx_ttl);
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

    pub(super) fn reply(
        &self,
        probe: &Datagram,
        report: path_mesh::RxReport,
        rx_ns: u64,
        rx_ttl: Option<u8>,
    ) -> Option<Vec<u8>> {
        let flags = self
            .peers
            .values()
            .find(|p| p.peer_id.as_deref() == Some(probe.header.id.as_str()))
            .map_or(0, |p| if p.want_trace { FLAG_TRACE_REQUEST } else { 0 });
        self.seal(&Datagram {
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
    pub(super) fn probes(&mut self) -> Vec<(SocketAddr, Vec<u8>)> {
        if self.keys.is_none() {
            return Vec::new();
        }
        let now = self.now();
        let names: Vec<String> = self.peers.keys().cloned().collect();
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            let Some(p) = self.peers.get(&name) else { continue };
            let seq = p.seq + 1;
            let flags = if p.want_trace { FLAG_TRACE_REQUEST } else { 0 };
            let header = self.header(seq, flags, p.rx.report());
            let tx_ns = header.tx_ns;
            let Some(bytes) = self.seal(&Datagram {
                header,
                body: Body::Probe,
            }) else {
                continue;
            };
            if let Some(p) = self.peers.get_mut(&name) {
                p.seq = seq;
                p.out.on_sent(seq, tx_ns, now);
                out.push((p.addr, bytes));
            }
        }
        out
    }

    /// A traceroute probe of `run` with TTL `ttl` (the header's ttl says so too).
    pub(super) fn trace_datagram(&self, ttl: u8, run: u32) -> Option<Vec<u8>> {
        self.seal(&Datagram {
            header: Header {
                kind: KIND_TRACE,
                flags: 0,
                ttl,
                key_id: 0,
                epoch: self.epoch,
                seq: 0,
                ctr: self.next_ctr(),
                tx_ns: realtime_ns(),
                report: RxReport::default(),
                id: self.me.clone(),
            },
            body: Body::Trace(TraceProbe { ttl, run }),
        })
    }

    pub(super) fn hops_datagram(&self, peer: &Peer) -> Option<Vec<u8>> {
        let hops = peer.hops_fwd.clone()?;
        self.seal(&Datagram {
            header: self.header(0, 0, peer.rx.report()),
            body: Body::Hops(hops),
        })
    }

    /// Replaces the peer set with static + controller peers (at most max_peers);
    /// returns the peers removed (their findings resolve).
    pub(super) fn sync_peers(&mut self) -> Vec<Peer> {
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
            keys: Some(fleet_keys(1)),
            ctr: AtomicU64::new(0),
            replay: ReplayGuard::default(),
        };
        m.sync_peers();
        m
    }

    fn fleet_keys(fill: u8) -> MeshKeys {
        let k = crate::probes::paths::auth::MeshKey::new(1, &[fill; 32]).expect("key");
        MeshKeys::new(1, vec![k]).expect("keys")
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
            let d = b.open(bytes).expect("authentic");
            // a -> b crosses 2 routers.
            let act = b.on_datagram(d, a_addr, realtime_ns(), Some(62));
            let reply = a.open(&act.reply.expect("reply")).expect("reply authentic");
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
        let probe = c.open(&a.probes()[0].1).expect("authentic");
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
        let trace = b.open(&a.trace_datagram(3, 99).expect("keyed")).expect("authentic");
        assert_eq!(trace.header.ttl, 3);
        // Arrives with TTL 1 left (2 routers): no hop count, no sequence learnt from it.
        let act = b.on_datagram(trace, a_addr, realtime_ns(), Some(1));
        let echo = a.open(&act.reply.expect("echo")).expect("echo authentic");
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

    /// A datagram with a valid layout but another key, or a replay, is
    /// dropped with its reason, teaches nothing and gets no answer; a mesh
    /// without keys sends nothing.
    #[test]
    fn forged_and_replayed_datagrams_are_refused_and_a_keyless_mesh_is_silent() {
        let mut a = mesh("a", &["b=10.0.0.2"]);
        let mut b = mesh("b", &["a=10.0.0.1"]);
        let mut forger = mesh("a", &["b=10.0.0.2"]);
        forger.keys = Some(fleet_keys(2));
        let forged = forger.probes().remove(0).1;
        assert_eq!(b.open(&forged).map(|_| ()), Err("mac"));
        let probe = a.probes().remove(0).1;
        assert!(b.open(&probe).is_ok());
        assert_eq!(b.open(&probe).map(|_| ()), Err("replay"), "the same bytes again");
        assert_eq!(
            b.peers.get("a").expect("peer").rx.report().max_seq,
            0,
            "open() alone teaches nothing"
        );
        let mut silent = mesh("s", &["b=10.0.0.2"]);
        silent.keys = None;
        assert!(silent.probes().is_empty());
        assert!(silent.trace_datagram(1, 1).is_none());
        assert_eq!(silent.open(&probe).map(|_| ()), Err("no_key"));
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
