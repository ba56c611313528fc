//! Every metric the agent exports, defined in one place.
//!
//! Names follow `graydar_<subsystem>_<name>_<unit>`, `_total` only on
//! counters, base units. Labels are low-cardinality: interface names, qdisc
//! kinds, kernel drop-reason names, CPU numbers; never pids or addresses.
//! Kernel counters are mirrored with `inc_by(delta)`, where the delta logic
//! (resets of re-created interfaces) lives in [`CounterMirror`].

use std::collections::HashMap;

use prometheus::{Encoder, GaugeVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};

pub struct Metrics {
    pub registry: Registry,
    pub kernel_drops: IntCounterVec,
    pub nic_packets: IntCounterVec,
    pub nic_drops: IntCounterVec,
    pub qdisc_packets: IntCounterVec,
    pub qdisc_drops: IntCounterVec,
    pub qdisc_overlimits: IntCounterVec,
    pub qdisc_requeues: IntCounterVec,
    pub qdisc_backlog_bytes: IntGaugeVec,
    pub qdisc_backlog_packets: IntGaugeVec,
    pub softnet_dropped: IntCounterVec,
    pub softnet_time_squeeze: IntCounterVec,
    pub drop_ratio: GaugeVec,
    pub findings_active: IntGaugeVec,
    pub finding_firing: IntGaugeVec,
    pub ebpf_programs_attached: IntGauge,
    pub ebpf_events: IntCounterVec,
    pub ebpf_events_lost: IntCounterVec,
    pub ebpf_run_seconds: prometheus::CounterVec,
    pub ebpf_runs: IntCounterVec,
    pub probe_up: IntGaugeVec,
    pub collector_errors: IntCounterVec,
    pub build_info: IntGaugeVec,
}

fn counter(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("static metric definition");
    r.register(Box::new(c.clone())).expect("metric registered once");
    c
}

fn gauge(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("static metric definition");
    r.register(Box::new(g.clone())).expect("metric registered once");
    g
}

impl Metrics {
    pub fn new() -> Metrics {
        let r = Registry::new();
        let drop_ratio = GaugeVec::new(
            Opts::new(
                "graydar_drop_ratio",
                "Dropped / (packets + dropped) over the detector's short or long window.",
            ),
            &["kind", "interface", "direction", "window"],
        )
        .expect("static metric definition");
        r.register(Box::new(drop_ratio.clone()))
            .expect("metric registered once");
        let ebpf_programs_attached = IntGauge::new(
            "graydar_ebpf_programs_attached",
            "eBPF programs currently attached by this agent.",
        )
        .expect("static metric definition");
        r.register(Box::new(ebpf_programs_attached.clone()))
            .expect("metric registered once");
        let ebpf_run_seconds = prometheus::CounterVec::new(
            Opts::new(
                "graydar_ebpf_program_run_seconds_total",
                "Time the kernel spent running the probe's eBPF program; 0 unless kernel.bpf_stats_enabled=1.",
            ),
            &["probe"],
        )
        .expect("static metric definition");
        r.register(Box::new(ebpf_run_seconds.clone()))
            .expect("metric registered once");
        let m = Metrics {
            kernel_drops: counter(
                &r,
                "graydar_kernel_drops_total",
                "Packets dropped by the kernel (kfree_skb with a drop reason), by interface and the kernel's reason name.",
                &["interface", "reason"],
            ),
            nic_packets: counter(
                &r,
                "graydar_nic_packets_total",
                "Packets received/transmitted by the interface (sysfs statistics).",
                &["interface", "direction"],
            ),
            nic_drops: counter(
                &r,
                "graydar_nic_drops_total",
                "Device drop counters from sysfs: dropped, missed, fifo, over, nohandler.",
                &["interface", "direction", "counter"],
            ),
            qdisc_packets: counter(
                &r,
                "graydar_qdisc_packets_total",
                "Packets sent by the qdisc.",
                &["interface", "qdisc", "handle"],
            ),
            qdisc_drops: counter(
                &r,
                "graydar_qdisc_drops_total",
                "Packets dropped by the qdisc.",
                &["interface", "qdisc", "handle"],
            ),
            qdisc_overlimits: counter(
                &r,
                "graydar_qdisc_overlimits_total",
                "Times the qdisc was over its limit (throttled or dropped).",
                &["interface", "qdisc", "handle"],
            ),
            qdisc_requeues: counter(
                &r,
                "graydar_qdisc_requeues_total",
                "Packets requeued by the qdisc.",
                &["interface", "qdisc", "handle"],
            ),
            qdisc_backlog_bytes: gauge(
                &r,
                "graydar_qdisc_backlog_bytes",
                "Bytes queued in the qdisc.",
                &["interface", "qdisc", "handle"],
            ),
            qdisc_backlog_packets: gauge(
                &r,
                "graydar_qdisc_backlog_packets",
                "Packets queued in the qdisc.",
                &["interface", "qdisc", "handle"],
            ),
            softnet_dropped: counter(
                &r,
                "graydar_softnet_dropped_total",
                "Packets dropped because the CPU's input backlog was full (/proc/net/softnet_stat).",
                &["cpu"],
            ),
            softnet_time_squeeze: counter(
                &r,
                "graydar_softnet_time_squeeze_total",
                "NET_RX softirq runs that ended with work left (budget or time exhausted).",
                &["cpu"],
            ),
            drop_ratio,
            finding_firing: gauge(
                &r,
                "graydar_finding_firing",
                "1 for each finding firing now (one series per finding; gone when it resolves). \
                 For alerting with the subject; cardinality is bounded by the findings.",
                &["kind", "subject", "severity"],
            ),
            findings_active: gauge(
                &r,
                "graydar_findings_active",
                "Findings currently firing on this host.",
                &["kind", "severity"],
            ),
            ebpf_programs_attached,
            ebpf_events: counter(
                &r,
                "graydar_ebpf_events_total",
                "Events seen by an eBPF probe (including those filtered out).",
                &["probe"],
            ),
            ebpf_events_lost: counter(
                &r,
                "graydar_ebpf_events_lost_total",
                "Events an eBPF probe could not record (map full, failed kernel reads).",
                &["probe"],
            ),
            ebpf_run_seconds,
            ebpf_runs: counter(
                &r,
                "graydar_ebpf_program_runs_total",
                "Invocations of the probe's eBPF program counted by the kernel; 0 unless kernel.bpf_stats_enabled=1.",
                &["probe"],
            ),
            probe_up: gauge(
                &r,
                "graydar_probe_up",
                "1 when the probe is running, 0 when disabled (see the agent log for why).",
                &["probe"],
            ),
            collector_errors: counter(
                &r,
                "graydar_collector_errors_total",
                "Failed collection attempts, by collector.",
                &["collector"],
            ),
            build_info: gauge(
                &r,
                "graydar_build_info",
                "Always 1; labels carry the agent version.",
                &["version"],
            ),
            registry: r,
        };
        m.build_info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        m
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let enc = TextEncoder::new();
        if let Err(e) = enc.encode(&self.registry.gather(), &mut buf) {
            tracing::warn!(error = %e, "encoding metrics");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Turns absolute kernel counters into increments. A counter that goes
/// backwards, or whose generation (e.g. ifindex) changed, was reset: its new
/// value is the increment since the reset, so no negative or huge spike.
#[derive(Default)]
pub struct CounterMirror {
    last: HashMap<Vec<String>, (u64, u64)>,
}

impl CounterMirror {
    /// Returns how much to add to the Prometheus counter for `key`.
    pub fn delta(&mut self, key: &[&str], generation: u64, value: u64) -> u64 {
        let k: Vec<String> = key.iter().map(|s| (*s).to_owned()).collect();
        match self.last.insert(k, (generation, value)) {
            None => value,
            Some((g, prev)) if g == generation && value >= prev => value - prev,
            Some(_) => value,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirror_handles_resets_without_spikes() {
        let mut m = CounterMirror::default();
        assert_eq!(m.delta(&["eth0", "rx"], 2, 100), 100);
        assert_eq!(m.delta(&["eth0", "rx"], 2, 150), 50);
        // interface re-created: new ifindex, counters from 0
        assert_eq!(m.delta(&["eth0", "rx"], 7, 3), 3);
        // counter went backwards without generation change (driver reset)
        assert_eq!(m.delta(&["eth0", "rx"], 7, 1), 1);
        assert_eq!(m.delta(&["eth1", "rx"], 3, 5), 5);
    }

    #[test]
    fn metric_names_follow_the_convention() {
        let m = Metrics::new();
        m.kernel_drops.with_label_values(&["eth0", "NO_SOCKET"]).inc();
        m.drop_ratio
            .with_label_values(&["nic_drops", "eth0", "rx", "short"])
            .set(0.5);
        let text = m.render();
        assert!(text.contains("graydar_kernel_drops_total{interface=\"eth0\",reason=\"NO_SOCKET\"} 1"));
        assert!(text.contains("graydar_build_info{version="));
        for fam in m.registry.gather() {
            let name = fam.name();
            assert!(name.starts_with("graydar_"), "{name}");
            let is_counter = fam.get_field_type() == prometheus::proto::MetricType::COUNTER;
            assert_eq!(name.ends_with("_total"), is_counter, "{name}: _total only on counters");
        }
    }
}
