//! The packet-drop signal end to end: every `interval` it samples the sysfs
//! device counters, the qdisc statistics (netlink), softnet_stat and the eBPF
//! kernel-drop counters; mirrors them into metrics; and feeds one drop-ratio
//! detector per finding kind (`nic_drops`, `qdisc_drops`, `kernel_drops`).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use graydar_common::api::{Evidence, FindingKind, Severity};

use super::{Context, Signal, Update};
use crate::config::Config;
use crate::detect::drops::{CounterSample, DropDetector, Observation};
use crate::ebpf::{Programs, Unavailable};
use crate::findings::Report;
use crate::metrics::{CounterMirror, Metrics};
use crate::probes::drops::kernel::{self, KernelDropsProbe, KernelDropsSnapshot};
use crate::probes::drops::nic::{self, NicStats};
use crate::probes::drops::qdisc::{self, QdiscStats};
use crate::probes::drops::softnet;
use crate::sys;

/// `TC_H_ROOT` from linux/pkt_sched.h: parent of a root qdisc.
const TC_H_ROOT: u32 = 0xFFFF_FFFF;

/// One detector evaluation of one subject, before it reaches the store.
struct Evaluated {
    kind: FindingKind,
    subject: String,
    obs: Observation,
    evidence: BTreeMap<String, Evidence>,
    /// How the packets were dropped, for the summary ("by the device", ...).
    what: String,
}

/// Kernel drops by reason name, cumulative, at one sample time.
type ReasonSample = (Duration, HashMap<String, u64>);

pub struct DropSignal {
    cfg: Config,
    metrics: Arc<Metrics>,
    kernel: Option<KernelDropsProbe>,
    netlink: Option<rtnetlink::Handle>,
    mirror: CounterMirror,
    nic_det: DropDetector<String>,
    qdisc_det: DropDetector<String>,
    kernel_det: DropDetector<String>,
    /// Per-interface history of kernel drops by reason, for the evidence's
    /// dominant reasons over the short window.
    reason_history: HashMap<String, VecDeque<ReasonSample>>,
    started: Instant,
}

impl DropSignal {
    pub fn new(
        cfg: Config,
        metrics: Arc<Metrics>,
        kernel: Option<KernelDropsProbe>,
        netlink: Option<rtnetlink::Handle>,
    ) -> Self {
        let d = cfg.drops.detector.clone();
        DropSignal {
            nic_det: DropDetector::new(d.clone()),
            qdisc_det: DropDetector::new(d.clone()),
            kernel_det: DropDetector::new(d),
            cfg,
            metrics,
            kernel,
            netlink,
            mirror: CounterMirror::default(),
            reason_history: HashMap::new(),
            started: Instant::now(),
        }
    }

    fn excluded(&self, name: &str) -> bool {
        self.cfg.drops.exclude_interfaces.iter().any(|x| x == name)
    }

    fn collector_error(&self, collector: &str, err: &dyn std::fmt::Display) {
        super::collector_error(&self.metrics, collector, err);
    }

    /// One sampling round.
    pub async fn sample(&mut self) -> Vec<Update> {
        let now = self.started.elapsed();
        let nics = match nic::read_all(&self.cfg.sysfs_root) {
            Ok(n) => n,
            Err(e) => {
                self.collector_error("sysfs_net", &e);
                Vec::new()
            }
        };
        let names: HashMap<u32, String> = nics.iter().map(|n| (n.ifindex, n.name.clone())).collect();

        match softnet::read(&self.cfg.procfs_root) {
            Ok(cpus) => {
                for c in cpus {
                    let cpu = c.cpu.to_string();
                    let d = self.mirror.delta(&["softnet_dropped", &cpu], 0, c.dropped);
                    self.metrics.softnet_dropped.with_label_values(&[&cpu]).inc_by(d);
                    let d = self.mirror.delta(&["softnet_squeeze", &cpu], 0, c.time_squeeze);
                    self.metrics.softnet_time_squeeze.with_label_values(&[&cpu]).inc_by(d);
                }
            }
            Err(e) => self.collector_error("softnet_stat", &e),
        }

        let mut out: Vec<Evaluated> = Vec::new();
        self.sample_nics(now, &nics, &mut out);
        self.sample_qdiscs(now, &names, &mut out).await;
        self.sample_kernel(now, &nics, &mut out);

        let present: HashSet<(FindingKind, String)> = out.iter().map(|e| (e.kind, e.subject.clone())).collect();
        let mut updates: Vec<Update> = out
            .into_iter()
            .map(
                |Evaluated {
                     kind,
                     subject,
                     obs,
                     evidence,
                     what,
                 }| {
                    let summary = format!(
                        "{subject}: {:.2}% of packets dropped {what} over {}s ({:.0} drops/s)",
                        obs.short_ratio * 100.0,
                        self.cfg.drops.detector.short_window.as_secs(),
                        obs.drop_rate
                    );
                    Update::Apply(
                        obs.transition,
                        Report {
                            kind,
                            subject,
                            severity: obs.firing.unwrap_or(Severity::Warning),
                            summary,
                            evidence,
                        },
                    )
                },
            )
            .collect();
        // A subject that vanished (interface deleted, qdisc removed) cannot
        // keep firing: resolve it.
        updates.push(Update::ResolveVanished {
            kinds: vec![FindingKind::NicDrops, FindingKind::QdiscDrops, FindingKind::KernelDrops],
            present,
        });
        updates
    }

    fn ratio_gauges(&self, kind: FindingKind, iface: &str, dir: &str, obs: &Observation) {
        let m = &self.metrics.drop_ratio;
        m.with_label_values(&[kind.as_str(), iface, dir, "short"])
            .set(obs.short_ratio);
        m.with_label_values(&[kind.as_str(), iface, dir, "long"])
            .set(obs.long_ratio);
    }

    fn base_evidence(&self, obs: &Observation) -> BTreeMap<String, Evidence> {
        let d = &self.cfg.drops.detector;
        BTreeMap::from([
            ("short_ratio".to_owned(), Evidence::Number(obs.short_ratio)),
            ("long_ratio".to_owned(), Evidence::Number(obs.long_ratio)),
            ("drops_per_second".to_owned(), Evidence::Number(obs.drop_rate)),
            ("packets_per_second".to_owned(), Evidence::Number(obs.packet_rate)),
            (
                "short_window_seconds".to_owned(),
                Evidence::Number(d.short_window.as_secs_f64()),
            ),
            (
                "long_window_seconds".to_owned(),
                Evidence::Number(d.long_window.as_secs_f64()),
            ),
            ("warning_ratio".to_owned(), Evidence::Number(d.warning_ratio)),
            ("critical_ratio".to_owned(), Evidence::Number(d.critical_ratio)),
            // The test behind the decision: the subject's learned baseline, the
            // excess over it that is noise, the confidence required and how
            // much of it the evidence reached (1.0: reached, 2.0: the cap).
            ("baseline_ratio".to_owned(), Evidence::Number(obs.baseline_ratio)),
            ("tolerated_ratio".to_owned(), Evidence::Number(d.tolerated_ratio)),
            ("confidence".to_owned(), Evidence::Number(d.confidence)),
            ("evidence".to_owned(), Evidence::Number(obs.evidence)),
        ])
    }

    fn sample_nics(&mut self, now: Duration, nics: &[NicStats], out: &mut Vec<Evaluated>) {
        let mut keys = HashSet::new();
        for n in nics {
            let g = u64::from(n.ifindex);
            let name = n.name.as_str();
            let m = &self.metrics;
            for (dir, packets) in [("rx", n.rx_packets), ("tx", n.tx_packets)] {
                let d = self.mirror.delta(&["nic_packets", name, dir], g, packets);
                m.nic_packets.with_label_values(&[name, dir]).inc_by(d);
            }
            for (dir, counter, v) in [
                ("rx", "dropped", n.rx_dropped),
                ("tx", "dropped", n.tx_dropped),
                ("rx", "missed", n.rx_missed_errors),
                ("rx", "fifo", n.rx_fifo_errors),
                ("tx", "fifo", n.tx_fifo_errors),
                ("rx", "over", n.rx_over_errors),
                ("rx", "nohandler", n.rx_nohandler),
            ] {
                let d = self.mirror.delta(&["nic_drops", name, dir, counter], g, v);
                m.nic_drops.with_label_values(&[name, dir, counter]).inc_by(d);
            }
            if self.excluded(name) {
                continue;
            }
            for (dir, packets, drops) in [("rx", n.rx_packets, n.rx_drops()), ("tx", n.tx_packets, n.tx_drops())] {
                let subject = format!("{name}/{dir}");
                keys.insert(subject.clone());
                let obs = self.nic_det.observe(
                    &subject,
                    now,
                    CounterSample {
                        packets,
                        drops,
                        generation: g,
                    },
                );
                self.ratio_gauges(FindingKind::NicDrops, name, dir, &obs);
                let mut ev = self.base_evidence(&obs);
                ev.insert("interface".into(), name.into());
                ev.insert("direction".into(), dir.into());
                if dir == "rx" {
                    ev.insert("rx_dropped".into(), n.rx_dropped.into());
                    ev.insert("rx_missed_errors".into(), n.rx_missed_errors.into());
                    ev.insert("rx_fifo_errors".into(), n.rx_fifo_errors.into());
                    ev.insert("rx_over_errors".into(), n.rx_over_errors.into());
                    ev.insert("rx_nohandler".into(), n.rx_nohandler.into());
                } else {
                    ev.insert("tx_dropped".into(), n.tx_dropped.into());
                    ev.insert("tx_fifo_errors".into(), n.tx_fifo_errors.into());
                }
                out.push(Evaluated {
                    kind: FindingKind::NicDrops,
                    subject,
                    obs,
                    evidence: ev,
                    what: "by the device".into(),
                });
            }
        }
        self.nic_det.retain(|k| keys.contains(k));
    }

    async fn sample_qdiscs(&mut self, now: Duration, names: &HashMap<u32, String>, out: &mut Vec<Evaluated>) {
        let Some(handle) = self.netlink.clone() else { return };
        let qdiscs: Vec<QdiscStats> = match qdisc::dump(&handle).await {
            Ok(q) => q,
            Err(e) => {
                self.collector_error("qdisc", &e);
                return;
            }
        };
        let mut keys = HashSet::new();
        for q in &qdiscs {
            let iface = names
                .get(&q.ifindex)
                .cloned()
                .unwrap_or_else(|| format!("if{}", q.ifindex));
            let h = q.handle_str();
            let labels = [iface.as_str(), q.kind.as_str(), h.as_str()];
            let g = (u64::from(q.ifindex) << 32) | u64::from(q.handle);
            let m = &self.metrics;
            let d = self.mirror.delta(&["qdisc_packets", &iface, &q.kind, &h], g, q.packets);
            m.qdisc_packets.with_label_values(&labels).inc_by(d);
            let d = self.mirror.delta(&["qdisc_drops", &iface, &q.kind, &h], g, q.drops);
            m.qdisc_drops.with_label_values(&labels).inc_by(d);
            let d = self
                .mirror
                .delta(&["qdisc_overlimits", &iface, &q.kind, &h], g, q.overlimits);
            m.qdisc_overlimits.with_label_values(&labels).inc_by(d);
            let d = self
                .mirror
                .delta(&["qdisc_requeues", &iface, &q.kind, &h], g, q.requeues);
            m.qdisc_requeues.with_label_values(&labels).inc_by(d);
            m.qdisc_backlog_bytes
                .with_label_values(&labels)
                .set(i64::try_from(q.backlog_bytes).unwrap_or(i64::MAX));
            m.qdisc_backlog_packets
                .with_label_values(&labels)
                .set(i64::try_from(q.backlog_packets).unwrap_or(i64::MAX));
            // The root qdisc's counters include what its children dropped.
            if q.parent != TC_H_ROOT || self.excluded(&iface) {
                continue;
            }
            keys.insert(iface.clone());
            let obs = self.qdisc_det.observe(
                &iface,
                now,
                CounterSample {
                    packets: q.packets,
                    drops: q.drops,
                    generation: g,
                },
            );
            self.ratio_gauges(FindingKind::QdiscDrops, &iface, "tx", &obs);
            let mut ev = self.base_evidence(&obs);
            ev.insert("interface".into(), iface.clone().into());
            ev.insert("qdisc".into(), q.kind.clone().into());
            ev.insert("handle".into(), h.clone().into());
            ev.insert("qdisc_drops".into(), q.drops.into());
            ev.insert("qdisc_overlimits".into(), q.overlimits.into());
            ev.insert("qdisc_backlog_packets".into(), q.backlog_packets.into());
            out.push(Evaluated {
                kind: FindingKind::QdiscDrops,
                subject: iface,
                obs,
                evidence: ev,
                what: format!("by qdisc {} {h}", q.kind),
            });
        }
        self.qdisc_det.retain(|k| keys.contains(k));
    }

    fn sample_kernel(&mut self, now: Duration, nics: &[NicStats], out: &mut Vec<Evaluated>) {
        let Some(probe) = &self.kernel else { return };
        let snap: KernelDropsSnapshot = match probe.read() {
            Ok(s) => s,
            Err(e) => {
                self.collector_error("ebpf_kfree_skb", &e);
                return;
            }
        };
        let m = self.metrics.clone();
        let d = self.mirror.delta(&["ebpf_events", kernel::PROBE], 0, snap.events);
        m.ebpf_events.with_label_values(&[kernel::PROBE]).inc_by(d);
        let d = self.mirror.delta(&["ebpf_lost", kernel::PROBE], 0, snap.lost);
        m.ebpf_events_lost.with_label_values(&[kernel::PROBE]).inc_by(d);
        let d = self.mirror.delta(&["ebpf_runs", kernel::PROBE], 0, snap.run_count);
        m.ebpf_runs.with_label_values(&[kernel::PROBE]).inc_by(d);
        let d = self.mirror.delta(&["ebpf_run_ns", kernel::PROBE], 0, snap.run_time_ns);
        m.ebpf_run_seconds
            .with_label_values(&[kernel::PROBE])
            .inc_by(d as f64 / 1e9);
        for (pseudo, map) in [("_other_netns", &snap.other_netns), ("_none", &snap.no_device)] {
            for (reason, n) in map {
                let d = self.mirror.delta(&["kernel_drops", pseudo, reason], 0, *n);
                m.kernel_drops.with_label_values(&[pseudo, reason]).inc_by(d);
            }
        }
        let mut by_if: HashMap<u32, HashMap<String, u64>> = HashMap::new();
        for ((ifindex, reason), n) in &snap.own {
            by_if.entry(*ifindex).or_default().insert(reason.clone(), *n);
        }
        let mut keys = HashSet::new();
        let short = self.cfg.drops.detector.short_window;
        for n in nics {
            let reasons = by_if.remove(&n.ifindex).unwrap_or_default();
            let g = u64::from(n.ifindex);
            for (reason, v) in &reasons {
                let d = self.mirror.delta(&["kernel_drops", &n.name, reason], g, *v);
                m.kernel_drops
                    .with_label_values(&[n.name.as_str(), reason.as_str()])
                    .inc_by(d);
            }
            if self.excluded(&n.name) {
                continue;
            }
            let total: u64 = reasons.values().sum();
            let hist = self.reason_history.entry(n.name.clone()).or_default();
            hist.push_back((now, reasons.clone()));
            while hist.len() > 1 && hist.front().is_some_and(|(t, _)| now.saturating_sub(*t) > short) {
                hist.pop_front();
            }
            let top = top_reasons(hist.front().map(|(_, r)| r), &reasons);
            keys.insert(n.name.clone());
            // Denominator: the interface's rx + tx packets. Most kernel drops
            // (netfilter, no socket, ...) happen after the device counted the
            // packet, so the ratio drops/(packets + drops) slightly
            // understates the share (5 % reads as 4.8 %); subtracting instead
            // would go negative for drops the device never counted (qdisc).
            let obs = self.kernel_det.observe(
                &n.name,
                now,
                CounterSample {
                    packets: n.rx_packets.saturating_add(n.tx_packets),
                    drops: total,
                    generation: g,
                },
            );
            self.ratio_gauges(FindingKind::KernelDrops, &n.name, "any", &obs);
            let mut ev = self.base_evidence(&obs);
            ev.insert("interface".into(), n.name.clone().into());
            ev.insert("top_reasons".into(), top.clone().into());
            let what = if top.is_empty() {
                "by the kernel".to_owned()
            } else {
                format!("by the kernel ({top})")
            };
            out.push(Evaluated {
                kind: FindingKind::KernelDrops,
                subject: n.name.clone(),
                obs,
                evidence: ev,
                what,
            });
        }
        self.reason_history.retain(|k, _| keys.contains(k));
        self.kernel_det.retain(|k| keys.contains(k));
    }
}

impl Signal for DropSignal {
    const NAME: &'static str = "drops";
    const GATES_READINESS: bool = true;

    fn start(ctx: &mut Context) -> Option<Self> {
        Some(DropSignal::new(
            ctx.cfg.clone(),
            ctx.metrics.clone(),
            ctx.kernel_drops.take(),
            ctx.netlink.clone(),
        ))
    }

    fn interval(&self) -> Duration {
        self.cfg.drops.interval
    }

    async fn sample(&mut self) -> Vec<Update> {
        DropSignal::sample(self).await
    }

    fn probes(&self) -> Vec<(&'static str, bool)> {
        vec![
            ("sysfs_net", true),
            ("softnet_stat", true),
            ("qdisc", self.netlink.is_some()),
            (kernel::PROBE, self.kernel.is_some()),
        ]
    }
}

/// The kfree_skb probe, attached before the signals start (the controller
/// registration says whether it runs); `None` when it cannot (logged; the
/// drops signal reports it down).
pub fn start_kernel_probe(
    cfg: &Config,
    metrics: &Metrics,
    ebpf: &mut Result<Programs, Unavailable>,
) -> Option<KernelDropsProbe> {
    let started = match ebpf {
        Ok(programs) => programs.take_drops().and_then(|(offsets, reasons)| {
            KernelDropsProbe::start(
                programs.object(),
                programs.btf(),
                &offsets,
                reasons,
                sys::own_netns_inode(),
                cfg.ebpf.kfree_skb,
            )
        }),
        Err(Unavailable::NotAllowed) => return None,
        Err(e) => {
            tracing::warn!(error = %e, "kernel drop probe disabled");
            return None;
        }
    };
    match started {
        Ok(p) => {
            tracing::info!(program = p.program(), "eBPF probe kfree_skb attached");
            metrics.ebpf_programs_attached.add(1);
            Some(p)
        }
        Err(e) => {
            tracing::warn!(error = %e, "kernel drop probe disabled");
            None
        }
    }
}

/// "REASON=n,..." for the three reasons that grew most between `old` and `new`.
fn top_reasons(old: Option<&HashMap<String, u64>>, new: &HashMap<String, u64>) -> String {
    let mut d: Vec<(&String, u64)> = new
        .iter()
        .map(|(r, v)| (r, v.saturating_sub(old.and_then(|o| o.get(r)).copied().unwrap_or(0))))
        .filter(|(_, v)| *v > 0)
        .collect();
    d.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
    d.iter()
        .take(3)
        .map(|(r, v)| format!("{r}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_reasons_ranks_growth_in_the_window() {
        let old = HashMap::from([("NO_SOCKET".to_owned(), 100), ("NETFILTER_DROP".to_owned(), 5)]);
        let new = HashMap::from([
            ("NO_SOCKET".to_owned(), 101),
            ("NETFILTER_DROP".to_owned(), 505),
            ("QDISC_DROP".to_owned(), 7),
        ]);
        assert_eq!(
            top_reasons(Some(&old), &new),
            "NETFILTER_DROP=500,QDISC_DROP=7,NO_SOCKET=1"
        );
        assert_eq!(top_reasons(None, &HashMap::new()), "");
    }
}
