//! The TCP incast signal end to end: every `incast.interval` it keeps the tc
//! classifier attached to the namespace's interfaces, reads the fan-in and
//! retransmission maps (agent/src/probes/incast/fanin.rs), the kernel's TCP MIB
//! (agent/src/probes/incast/netstat.rs) and the devices' receive drops; mirrors
//! them into metrics; and feeds the `incast` detector per receiving endpoint
//! (agent/src/detect/incast.rs).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use graydar_common::api::{Evidence, FindingKind, Severity};
use graydar_common::tcp::{FaninConfig, HIST_BINS, HIST_UPPER};

use super::{Context, Signal, Update};
use crate::config::Config;
use crate::detect::incast::{EndpointSample, Episode, HostLoss, IncastDetector, Observation};
use crate::ebpf::{Programs, Unavailable};
use crate::findings::Report;
use crate::metrics::{CounterMirror, Metrics};
use crate::probes::incast::fanin::{self, Endpoint, EndpointReading, TcpProbe, TcpSnapshot};
use crate::probes::incast::netstat;
use crate::sys;

/// MIB counters mirrored into `graydar_tcp_mib_total` (cross-checks for the
/// eBPF retransmission kinds, receive-side drops, ECN marks).
const MIB: &[&str] = &[
    "TcpExt.TCPTimeouts",
    "TcpExt.TCPLossProbes",
    "TcpExt.TCPLossProbeRecovery",
    "TcpExt.TCPFastRetrans",
    "TcpExt.TCPSlowStartRetrans",
    "TcpExt.TCPSpuriousRTOs",
    "TcpExt.TCPSynRetrans",
    "TcpExt.TCPRcvQDrop",
    "TcpExt.TCPBacklogDrop",
    "TcpExt.TCPOFODrop",
    "TcpExt.TCPOFOQueue",
    "TcpExt.TCPZeroWindowDrop",
    "TcpExt.TCPToZeroWindowAdv",
    "TcpExt.ListenDrops",
    "Tcp.RetransSegs",
    "IpExt.InCEPkts",
    "IpExt.InECT0Pkts",
    "IpExt.InECT1Pkts",
];

/// Endpoints without any new data for this long are removed from the
/// kernel table (bounded at 1024), unless their finding is firing.
const IDLE_EVICT: Duration = Duration::from_secs(600);

/// CLOCK_MONOTONIC in ns, the clock of bpf_ktime_get_ns.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into a valid timespec.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    if rc != 0 {
        return 0;
    }
    u64::try_from(ts.tv_sec)
        .unwrap_or(0)
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::try_from(ts.tv_nsec).unwrap_or(0))
}

/// The bounded `port` label: `ephemeral` for the client side, the first
/// `max` listening ports seen by their number, `other` after that.
#[derive(Default)]
pub struct PortLabels {
    max: usize,
    named: BTreeSet<u16>,
}

impl PortLabels {
    pub fn new(max: usize) -> Self {
        PortLabels {
            max,
            named: BTreeSet::new(),
        }
    }

    pub fn label(&mut self, port: u16) -> String {
        if port == 0 {
            return "ephemeral".to_owned();
        }
        if self.named.contains(&port) || self.named.len() < self.max {
            self.named.insert(port);
            return port.to_string();
        }
        "other".to_owned()
    }
}

/// Difference of cumulative endpoint counters; a counter that went back
/// (the endpoint was evicted and re-created) counts from zero.
fn delta(prev: Option<&EndpointReading>, cur: &EndpointReading) -> EndpointReading {
    let d = |p: u64, c: u64| if c >= p { c - p } else { c };
    let Some(p) = prev else { return cur.clone() };
    let mut hist = [0u64; HIST_BINS];
    for (i, h) in hist.iter_mut().enumerate() {
        *h = d(p.hist[i], cur.hist[i]);
    }
    EndpointReading {
        peak_short: cur.peak_short,
        peak_long: cur.peak_long,
        bursts: d(p.bursts, cur.bursts),
        stalls: d(p.stalls, cur.stalls),
        stall_ns: d(p.stall_ns, cur.stall_ns),
        burst_stalls: d(p.burst_stalls, cur.burst_stalls),
        holes: d(p.holes, cur.holes),
        rexmits: d(p.rexmits, cur.rexmits),
        burst_losses: d(p.burst_losses, cur.burst_losses),
        hist,
    }
}

pub struct IncastSignal {
    cfg: Config,
    metrics: Arc<Metrics>,
    probe: Option<TcpProbe>,
    det: IncastDetector<Endpoint>,
    mirror: CounterMirror,
    ports: PortLabels,
    prev: HashMap<Endpoint, EndpointReading>,
    prev_peers: BTreeMap<(IpAddr, &'static str), u64>,
    last_active: HashMap<Endpoint, Duration>,
    prev_receive_drops: Option<u64>,
    started: Instant,
}

/// The fan-in constants handed to the classifier.
pub fn fanin_config(cfg: &Config) -> FaninConfig {
    let ns = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
    FaninConfig {
        short_ns: 1_000_000,
        long_ns: ns(cfg.incast.window),
        senders: cfg.incast.senders,
        _pad: 0,
        stall_min_ns: ns(cfg.incast.stall_min),
        stall_max_ns: ns(cfg.incast.stall_max),
    }
}

impl IncastSignal {
    pub fn new(cfg: Config, metrics: Arc<Metrics>, probe: Option<TcpProbe>) -> Self {
        IncastSignal {
            det: IncastDetector::new(cfg.incast.clone()),
            ports: PortLabels::new(cfg.incast.max_ports),
            cfg,
            metrics,
            probe,
            mirror: CounterMirror::default(),
            prev: HashMap::new(),
            prev_peers: BTreeMap::new(),
            last_active: HashMap::new(),
            prev_receive_drops: None,
            started: Instant::now(),
        }
    }

    fn collector_error(&self, collector: &str, err: &dyn std::fmt::Display) {
        super::collector_error(&self.metrics, collector, err);
    }

    /// Keeps the classifier attached to this namespace's interfaces.
    fn sync_interfaces(&mut self) {
        let Some(probe) = self.probe.as_mut() else { return };
        let range = std::fs::read_to_string(self.cfg.procfs_root.join("sys/net/ipv4/ip_local_port_range"))
            .ok()
            .and_then(|t| fanin::parse_port_range(&t));
        if let Some((lo, hi)) = range
            && let Err(e) = probe.set_ephemeral_range(lo, hi)
        {
            tracing::warn!(error = %e, "tcp_fanin: setting the ephemeral port range");
        }
        let ifaces = match fanin::list_interfaces(&self.cfg.sysfs_root) {
            Ok(i) => i,
            Err(e) => {
                self.metrics.collector_errors.with_label_values(&["tcp_fanin"]).inc();
                tracing::warn!(error = %e, "tcp_fanin: listing interfaces");
                return;
            }
        };
        let ifaces: Vec<_> = ifaces
            .into_iter()
            .filter(|i| !self.cfg.incast.exclude_interfaces.contains(&i.name))
            .collect();
        let (added, errors) = probe.sync_interfaces(&ifaces);
        for name in added {
            tracing::info!(interface = %name, "tcp_fanin attached (tc ingress)");
        }
        for (name, e) in errors {
            self.metrics.collector_errors.with_label_values(&["tcp_fanin"]).inc();
            tracing::warn!(interface = %name, error = %e, "tcp_fanin: cannot attach");
        }
        self.metrics
            .tcp_fanin_interfaces
            .set(i64::try_from(probe.attached().len()).unwrap_or(i64::MAX));
    }

    /// Drops on this namespace's receiving path since the previous sample:
    /// device receive drops plus TCP receive-side drops (MIB).
    fn receive_drops(&mut self, mib: Option<&netstat::Counters>) -> u64 {
        let mut total = mib.map(netstat::receive_drops).unwrap_or(0);
        match crate::probes::drops::nic::read_all(&self.cfg.sysfs_root) {
            Ok(nics) => {
                for n in nics {
                    total = total.saturating_add(n.rx_drops());
                }
            }
            Err(e) => self.collector_error("sysfs_net", &e),
        }
        let d = self.prev_receive_drops.map(|p| total.saturating_sub(p)).unwrap_or(0);
        self.prev_receive_drops = Some(total);
        d
    }

    /// One sampling round.
    pub fn sample(&mut self) -> Vec<Update> {
        let now = self.started.elapsed();
        self.sync_interfaces();
        let mib = match netstat::read(&self.cfg.procfs_root) {
            Ok(c) => {
                for k in MIB {
                    if let Some(v) = c.get(*k) {
                        let d = self.mirror.delta(&["mib", k], 0, *v);
                        self.metrics.tcp_mib.with_label_values(&[*k]).inc_by(d);
                    }
                }
                Some(c)
            }
            Err(e) => {
                self.collector_error("netstat", &e);
                None
            }
        };
        if self.probe.is_none() {
            return Vec::new(); // the MIB counters above are all there is without eBPF
        }
        let receive_drops = self.receive_drops(mib.as_ref());
        let snap: TcpSnapshot = match self.probe.as_mut().map(TcpProbe::read) {
            Some(Ok(s)) => s,
            Some(Err(e)) => {
                self.collector_error("ebpf_tcp_fanin", &e);
                return Vec::new();
            }
            None => return Vec::new(),
        };
        self.export_probe_metrics(&snap);

        // Timeouts toward each peer during this sample.
        let mut timeouts: Vec<(IpAddr, u64)> = Vec::new();
        for ((peer, kind), v) in &snap.retrans_by_peer {
            let p = self.prev_peers.get(&(*peer, *kind)).copied().unwrap_or(0);
            let d = v.saturating_sub(p);
            if *kind == "timeout" && d > 0 {
                timeouts.push((*peer, d));
            }
        }
        self.prev_peers = snap.retrans_by_peer.clone();

        let mono = monotonic_ns();
        let correlate = u64::try_from(self.cfg.incast.correlate.as_nanos()).unwrap_or(u64::MAX);
        let mut keys: BTreeSet<Endpoint> = snap.endpoints.keys().copied().collect();
        keys.extend(self.det.keys());
        let mut out: Vec<(Endpoint, String, Observation)> = Vec::new();
        let mut peaks: BTreeMap<String, (u32, u32)> = BTreeMap::new();
        for ep in keys {
            let label = self.ports.label(ep.port);
            let sample = match snap.endpoints.get(&ep) {
                Some(cur) => {
                    let d = delta(self.prev.get(&ep), cur);
                    self.prev.insert(ep, cur.clone());
                    d
                }
                None => {
                    self.prev.remove(&ep);
                    EndpointReading::default()
                }
            };
            let active = sample.hist.iter().any(|h| *h > 0) || sample.peak_long > 0 || sample.stalls > 0;
            if active || !self.last_active.contains_key(&ep) {
                self.last_active.insert(ep, now);
            }
            let m = &self.metrics;
            for (i, n) in sample.hist.iter().enumerate() {
                let v = f64::from(HIST_UPPER[i].min(128));
                let h = m.tcp_fanin_senders.with_label_values(&[label.as_str()]);
                for _ in 0..(*n).min(100_000) {
                    h.observe(v);
                }
            }
            m.tcp_fanin_bursts
                .with_label_values(&[label.as_str()])
                .inc_by(sample.bursts);
            m.tcp_receiver_stalls
                .with_label_values(&[label.as_str()])
                .inc_by(sample.stalls);
            m.tcp_received_out_of_order
                .with_label_values(&[label.as_str(), "hole"])
                .inc_by(sample.holes);
            m.tcp_received_out_of_order
                .with_label_values(&[label.as_str(), "retransmission"])
                .inc_by(sample.rexmits);
            let pk = peaks.entry(label.clone()).or_default();
            pk.0 = pk.0.max(sample.peak_short);
            pk.1 = pk.1.max(sample.peak_long);

            // RTOs on flows of this endpoint: timeouts toward peers that
            // delivered data to it recently.
            let ep_timeouts: u64 = match &self.probe {
                Some(p) if !timeouts.is_empty() => timeouts
                    .iter()
                    .filter(|(peer, _)| {
                        p.sender_last_seen(&ep, *peer)
                            .is_some_and(|t| mono.saturating_sub(t) <= correlate)
                    })
                    .map(|(_, n)| *n)
                    .sum(),
                _ => 0,
            };
            let es = EndpointSample {
                peak_senders: sample.peak_long,
                peak_senders_short: sample.peak_short,
                bursts: sample.bursts,
                burst_stalls: sample.burst_stalls,
                burst_losses: sample.burst_losses,
                stalls: sample.stalls,
                mean_stall: if sample.stalls > 0 {
                    sample.stall_ns as f64 / sample.stalls as f64 / 1e9
                } else {
                    0.0
                },
            };
            let obs = self.det.observe(
                &ep,
                now,
                es,
                HostLoss {
                    timeouts: ep_timeouts,
                    receive_drops,
                },
            );
            if es.bursts > 0 || es.stalls > 0 || es.burst_losses > 0 || ep_timeouts > 0 || obs.episode.is_some() {
                tracing::debug!(
                    endpoint = %ep,
                    bursts = es.bursts,
                    peak_senders = es.peak_senders,
                    peak_senders_short = es.peak_senders_short,
                    burst_stalls = es.burst_stalls,
                    burst_losses = es.burst_losses,
                    stalls = es.stalls,
                    timeouts = ep_timeouts,
                    receive_drops,
                    episode = obs.episode.is_some(),
                    "incast sample"
                );
            }
            if obs.episode.is_some() {
                m.incast_episodes.with_label_values(&[label.as_str()]).inc();
            }
            out.push((ep, label, obs));
        }
        for (label, (short, long)) in peaks {
            let g = &self.metrics.tcp_fanin_peak_senders;
            g.with_label_values(&[label.as_str(), "1ms"]).set(i64::from(short));
            g.with_label_values(&[label.as_str(), "window"]).set(i64::from(long));
        }

        let mut updates = Vec::with_capacity(out.len());
        for (ep, _label, obs) in &out {
            let subject = ep.to_string();
            let report = Report {
                kind: FindingKind::Incast,
                summary: self.summary(&subject, obs),
                evidence: self.evidence(ep, obs),
                subject,
                severity: obs.firing.unwrap_or(Severity::Warning),
            };
            updates.push(
                if obs.transition.is_none() && obs.episode.is_some() && obs.firing.is_some() {
                    // A new episode refreshes the summary too.
                    Update::Restate(report)
                } else {
                    Update::Apply(obs.transition, report)
                },
            );
        }

        // Evict idle endpoints from the bounded kernel table.
        let idle: Vec<Endpoint> = self
            .last_active
            .iter()
            .filter(|(ep, t)| now.saturating_sub(**t) > IDLE_EVICT && self.det.firing(ep).is_none())
            .map(|(ep, _)| *ep)
            .collect();
        if !idle.is_empty() {
            if let Some(p) = self.probe.as_mut() {
                p.forget(&idle);
            }
            for ep in &idle {
                self.last_active.remove(ep);
                self.prev.remove(ep);
            }
            let present: BTreeSet<Endpoint> = self.last_active.keys().copied().collect();
            self.det.retain(|k| present.contains(k));
        }
        updates
    }

    fn export_probe_metrics(&mut self, snap: &TcpSnapshot) {
        let m = self.metrics.clone();
        let p = fanin::PROBE_FANIN;
        let d = self.mirror.delta(&["ebpf_events", p], 0, snap.segments);
        m.ebpf_events.with_label_values(&[p]).inc_by(d);
        let d = self.mirror.delta(&["ebpf_lost", p], 0, snap.lost);
        m.ebpf_events_lost.with_label_values(&[p]).inc_by(d);
        let d = self.mirror.delta(&["ebpf_runs", p], 0, snap.run_count);
        m.ebpf_runs.with_label_values(&[p]).inc_by(d);
        let d = self.mirror.delta(&["ebpf_run_ns", p], 0, snap.run_time_ns);
        m.ebpf_run_seconds.with_label_values(&[p]).inc_by(d as f64 / 1e9);
        let r = fanin::PROBE_RETRANS;
        let total: u64 = snap.retrans.values().sum();
        let d = self.mirror.delta(&["ebpf_events", r], 0, total);
        m.ebpf_events.with_label_values(&[r]).inc_by(d);
        let d = self.mirror.delta(&["ebpf_lost", r], 0, snap.retrans_lost);
        m.ebpf_events_lost.with_label_values(&[r]).inc_by(d);
        for kind in graydar_common::tcp::retrans_kind::NAMES {
            let v = snap.retrans.get(kind).copied().unwrap_or(0);
            let d = self.mirror.delta(&["retrans", kind], 0, v);
            m.tcp_retransmits.with_label_values(&[kind]).inc_by(d);
        }
    }

    fn last(obs: &Observation) -> Episode {
        obs.episode.or(obs.last).unwrap_or_default()
    }

    fn summary(&self, subject: &str, obs: &Observation) -> String {
        let e = Self::last(obs);
        format!(
            "{subject}: {} senders within {} ms with {} segments lost upstream, {} stalled flows (mean stall {:.0} ms), \
             {} RTOs, {} receive drops; {:.1} incast episodes/min",
            e.senders,
            self.cfg.incast.window.as_millis(),
            e.lost_segments,
            e.stalled_flows,
            e.mean_stall * 1e3,
            e.timeouts,
            e.receive_drops,
            obs.episodes_per_minute
        )
    }

    fn evidence(&self, ep: &Endpoint, obs: &Observation) -> BTreeMap<String, Evidence> {
        let e = Self::last(obs);
        let c = &self.cfg.incast;
        BTreeMap::from([
            ("endpoint".to_owned(), Evidence::Text(ep.to_string())),
            ("senders".to_owned(), Evidence::from(u64::from(e.senders))),
            ("senders_1ms".to_owned(), Evidence::from(u64::from(e.senders_short))),
            ("window_seconds".to_owned(), Evidence::Number(c.window.as_secs_f64())),
            ("threshold_senders".to_owned(), Evidence::from(u64::from(c.senders))),
            ("stalled_flows".to_owned(), Evidence::from(e.stalled_flows)),
            ("stalls".to_owned(), Evidence::from(e.stalls)),
            ("lost_segments".to_owned(), Evidence::from(e.lost_segments)),
            ("mean_stall_seconds".to_owned(), Evidence::Number(e.mean_stall)),
            ("timeouts".to_owned(), Evidence::from(e.timeouts)),
            ("receive_drops".to_owned(), Evidence::from(e.receive_drops)),
            (
                "episodes_per_minute".to_owned(),
                Evidence::Number(obs.episodes_per_minute),
            ),
        ])
    }
}

impl Signal for IncastSignal {
    const NAME: &'static str = "incast";

    /// Always runs (the TCP MIB counters); the eBPF probes only when
    /// `[incast] enabled` and allowed. Dropping the signal detaches them.
    fn start(ctx: &mut Context) -> Option<Self> {
        let probe = start_probe(&ctx.cfg, &ctx.metrics, &mut ctx.ebpf);
        Some(IncastSignal::new(ctx.cfg.clone(), ctx.metrics.clone(), probe))
    }

    fn interval(&self) -> Duration {
        self.cfg.incast.interval
    }

    async fn sample(&mut self) -> Vec<Update> {
        IncastSignal::sample(self)
    }

    fn probes(&self) -> Vec<(&'static str, bool)> {
        // Disabled by configuration: no graydar_probe_up series at all (0 means
        // "wanted but not working", which GraydarProbeDown alerts on).
        if !self.cfg.incast.enabled {
            return Vec::new();
        }
        vec![
            (fanin::PROBE_FANIN, self.probe.is_some()),
            (
                fanin::PROBE_RETRANS,
                self.probe.as_ref().is_some_and(TcpProbe::retransmits_enabled),
            ),
        ]
    }
}

/// The TCP incast probes (tc ingress fan-in counter, tcp_retransmit_skb);
/// `None` when disabled or when the kernel refuses them (logged).
fn start_probe(cfg: &Config, metrics: &Metrics, ebpf: &mut Result<Programs, Unavailable>) -> Option<TcpProbe> {
    if !cfg.incast.enabled {
        return None;
    }
    let programs = match ebpf {
        Ok(p) => p,
        Err(e) => {
            if !matches!(e, Unavailable::NotAllowed) {
                tracing::warn!(error = %e, "TCP incast probes disabled");
            }
            return None;
        }
    };
    match TcpProbe::start(programs.object(), programs.take_retrans(), sys::own_netns_inode()) {
        Ok(p) => {
            tracing::info!(
                retransmits = p.retransmits_enabled(),
                "eBPF probes tcp_fanin (tc ingress) and tcp_retransmit_skb loaded"
            );
            metrics
                .ebpf_programs_attached
                .add(1 + i64::from(p.retransmits_enabled()));
            Some(p)
        }
        Err(e) => {
            tracing::warn!(error = %e, "TCP incast probes disabled");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_labels_are_bounded() {
        let mut p = PortLabels::new(2);
        assert_eq!(p.label(0), "ephemeral");
        assert_eq!(p.label(6379), "6379");
        assert_eq!(p.label(80), "80");
        assert_eq!(p.label(443), "other");
        assert_eq!(p.label(6379), "6379", "labels are sticky");
    }

    #[test]
    fn endpoint_deltas_survive_re_creation() {
        let a = EndpointReading {
            bursts: 5,
            stalls: 7,
            hist: [1, 2, 3, 4, 5, 6, 7, 8],
            ..EndpointReading::default()
        };
        let b = EndpointReading {
            bursts: 6,
            stalls: 2,
            peak_long: 40,
            hist: [2, 2, 3, 4, 5, 6, 7, 9],
            ..EndpointReading::default()
        };
        let d = delta(Some(&a), &b);
        assert_eq!(d.bursts, 1);
        assert_eq!(d.stalls, 2, "went back: re-created endpoint counts from zero");
        assert_eq!(d.peak_long, 40);
        assert_eq!(d.hist, [1, 0, 0, 0, 0, 0, 0, 1]);
        assert_eq!(delta(None, &b), b);
    }
}
