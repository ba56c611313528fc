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
    /// Disk signal (agent/src/signals/disk.rs).
    pub disk: DiskMetrics,
    /// Controller reporter (agent/src/reporter.rs).
    pub reporter: ReporterMetrics,
    /// Path-probe mesh (agent/src/signals/paths.rs).
    pub paths: PathMetrics,
    // TCP incast (agent/src/signals/incast.rs). Labels: `port` is a listening port
    // (the busiest incast.max_ports), `other`, or `ephemeral` (client side).
    pub tcp_fanin_senders: prometheus::HistogramVec,
    pub tcp_fanin_peak_senders: IntGaugeVec,
    pub tcp_fanin_bursts: IntCounterVec,
    pub tcp_receiver_stalls: IntCounterVec,
    pub tcp_received_out_of_order: IntCounterVec,
    pub tcp_fanin_interfaces: IntGauge,
    pub tcp_retransmits: IntCounterVec,
    pub tcp_mib: IntCounterVec,
    pub incast_episodes: IntCounterVec,
    /// Route churn (agent/src/signals/routes.rs): `type` route|link|neigh, `family`
    /// ipv4|ipv6 (`link` for link events). Never per prefix: prefixes are
    /// unbounded and appear only in route_flap findings.
    pub route_changes: IntCounterVec,
    pub route_flapping_prefixes: IntGauge,
    /// Faults assigned by the controller (agent/src/faults/assign.rs): `kind`
    /// netem|dm|blackhole; `op` apply|revert|renew|describe|expire|revert_all,
    /// `result` ok|error.
    pub faults_active: IntGaugeVec,
    pub fault_operations: IntCounterVec,
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
        let tcp_fanin_senders = prometheus::HistogramVec::new(
            prometheus::HistogramOpts::new(
                "graydar_tcp_fanin_senders",
                "Distinct remote senders (addresses) delivering TCP data to one receiving endpoint within one \
                 fan-in window (incast.window), one observation per window with data; bucket upper bounds are \
                 the kernel histogram's bins, so _sum counts each window at its bin's upper bound.",
            )
            .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0]),
            &["port"],
        )
        .expect("static metric definition");
        r.register(Box::new(tcp_fanin_senders.clone()))
            .expect("metric registered once");
        let tcp_fanin_interfaces = IntGauge::new(
            "graydar_tcp_fanin_interfaces",
            "Interfaces the tcp_fanin tc ingress classifier is attached to.",
        )
        .expect("static metric definition");
        r.register(Box::new(tcp_fanin_interfaces.clone()))
            .expect("metric registered once");
        let route_flapping_prefixes = IntGauge::new(
            "graydar_route_flapping_prefixes",
            "Prefixes whose route_flap finding is firing now.",
        )
        .expect("static metric definition");
        r.register(Box::new(route_flapping_prefixes.clone()))
            .expect("metric registered once");
        let m = Metrics {
            faults_active: gauge(
                &r,
                "graydar_faults_active",
                "Faults applied on this host now (assigned by the controller), by kind.",
                &["kind"],
            ),
            fault_operations: counter(
                &r,
                "graydar_fault_operations_total",
                "Fault operations of the assignment loop by kind, op (apply, revert, renew, describe, expire, \
                 revert_all) and result (ok, error).",
                &["kind", "op", "result"],
            ),
            route_changes: counter(
                &r,
                "graydar_route_changes_total",
                "Routing changes seen on rtnetlink: type=route (RTM_NEWROUTE/DELROUTE counted by the route_flap \
                 detector, i.e. outside routes.ignore_tables/ignore_prefixes), link (operational state changes, \
                 family=link), neigh (neighbour resolution FAILED/INCOMPLETE).",
                &["type", "family"],
            ),
            route_flapping_prefixes,
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
            tcp_fanin_senders,
            tcp_fanin_peak_senders: gauge(
                &r,
                "graydar_tcp_fanin_peak_senders",
                "Highest number of distinct senders delivering data to one endpoint within 1 ms / the fan-in \
                 window during the last sampling interval.",
                &["port", "window"],
            ),
            tcp_fanin_bursts: counter(
                &r,
                "graydar_tcp_fanin_bursts_total",
                "Times the fan-in to one endpoint reached incast.senders within incast.window (with or without losses).",
                &["port"],
            ),
            tcp_receiver_stalls: counter(
                &r,
                "graydar_tcp_receiver_stalls_total",
                "Flows whose data stopped mid-write and resumed after a gap in [incast.stall_min, incast.stall_max] \
                 (a retransmission timeout seen from the receiver).",
                &["port"],
            ),
            tcp_received_out_of_order: counter(
                &r,
                "graydar_tcp_received_out_of_order_total",
                "Data segments received out of order, seen by the fan-in counter: hole (beyond the highest \
                 segment: loss upstream) or retransmission (below it).",
                &["port", "kind"],
            ),
            tcp_fanin_interfaces,
            tcp_retransmits: counter(
                &r,
                "graydar_tcp_retransmits_total",
                "TCP retransmissions of this host's sockets (tcp_retransmit_skb) by kind: timeout (RTO), fast, \
                 probe (tail loss probe), syn.",
                &["kind"],
            ),
            tcp_mib: counter(
                &r,
                "graydar_tcp_mib_total",
                "Selected kernel TCP/IP MIB counters (/proc/net/netstat, /proc/net/snmp) for cross-checks.",
                &["counter"],
            ),
            incast_episodes: counter(
                &r,
                "graydar_incast_episodes_total",
                "Incast episodes: fan-in bursts that coincided with stalls, retransmission timeouts or receive drops.",
                &["port"],
            ),
            disk: DiskMetrics::new(&r),
            reporter: ReporterMetrics::new(&r),
            paths: PathMetrics::new(&r),
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
        let mut text = String::from_utf8(buf).unwrap_or_default();
        load_counters(&mut text);
        text
    }
}

/// What the game-day loads of this process did (agent/src/load/), read at
/// scrape time from its counters.
fn load_counters(out: &mut String) {
    use std::fmt::Write as _;
    use std::sync::atomic::Ordering;
    let t = &crate::load::TOTALS;
    for (name, help, v) in [
        (
            "graydar_load_sent_operations_total",
            "Datagrams, TCP writes, bursts and syncs done by game-day loads.",
            t.sent_ops.load(Ordering::Relaxed),
        ),
        (
            "graydar_load_sent_bytes_total",
            "Bytes sent by game-day traffic and burst loads.",
            t.sent_bytes.load(Ordering::Relaxed),
        ),
        (
            "graydar_load_received_bytes_total",
            "Bytes received by this agent's load sink.",
            t.received_bytes.load(Ordering::Relaxed),
        ),
        (
            "graydar_load_errors_total",
            "Sends, connects, bursts and syncs of game-day loads that failed.",
            t.errors.load(Ordering::Relaxed),
        ),
    ] {
        let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}\n");
    }
}

/// The controller reporter's metrics.
pub struct ReporterMetrics {
    /// Transitions delivered to the controller (accepted or already known).
    pub transitions_sent: IntCounterVec,
    /// Transitions lost: dropped from the full buffer while the controller
    /// was unreachable (`reason="buffer_full"`) or refused by it (`rejected`).
    pub transitions_dropped: IntCounterVec,
    pub buffered: IntGauge,
    /// Requests to the controller by operation and result.
    pub requests: IntCounterVec,
    /// 1 while the last request to the controller succeeded.
    pub controller_up: IntGauge,
}

impl ReporterMetrics {
    fn new(r: &Registry) -> ReporterMetrics {
        let buffered = IntGauge::new(
            "graydar_reporter_buffered_transitions",
            "Finding transitions waiting for delivery to the controller.",
        )
        .expect("static metric definition");
        r.register(Box::new(buffered.clone())).expect("metric registered once");
        let controller_up = IntGauge::new(
            "graydar_reporter_controller_up",
            "1 while the last request to the controller succeeded, else 0.",
        )
        .expect("static metric definition");
        r.register(Box::new(controller_up.clone()))
            .expect("metric registered once");
        ReporterMetrics {
            transitions_sent: counter(
                r,
                "graydar_reporter_transitions_sent_total",
                "Finding transitions delivered to the controller.",
                &[],
            ),
            transitions_dropped: counter(
                r,
                "graydar_reporter_transitions_dropped_total",
                "Finding transitions never delivered: buffer_full (oldest dropped while the controller was \
                 unreachable) or rejected (refused by the controller).",
                &["reason"],
            ),
            buffered,
            requests: counter(
                r,
                "graydar_reporter_requests_total",
                "Requests to the controller by operation (register, heartbeat, transitions) and result (ok, error).",
                &["op", "result"],
            ),
            controller_up,
        }
    }
}

/// Metrics of the path-probe mesh. The `peer` label is the peer's name
/// (static `name=` or its hostname from the controller); the mesh probes at
/// most `paths.max_peers` peers (default 64), so each series has at most
/// that many values, and a removed peer's series are deleted. `direction` is
/// `outbound` (this host → peer, known from the peer's reports) or `inbound`.
pub struct PathMetrics {
    pub probes_sent: IntCounterVec,
    pub delivered: IntCounterVec,
    pub lost: IntCounterVec,
    pub loss_ratio: GaugeVec,
    pub rtt: prometheus::HistogramVec,
    pub hops: IntGaugeVec,
    pub owd_variation: GaugeVec,
    pub peers: IntGauge,
    pub bad_datagrams: IntCounterVec,
    pub traceroutes: IntCounterVec,
}

/// RTT buckets (seconds): 50 µs … 2.5 s.
pub const PATH_RTT_BUCKETS: [f64; 15] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

impl PathMetrics {
    fn new(r: &Registry) -> PathMetrics {
        let rtt = prometheus::HistogramVec::new(
            prometheus::HistogramOpts::new(
                "graydar_path_rtt_seconds",
                "Round-trip time of path probes to the peer (kernel receive timestamp minus send time).",
            )
            .buckets(PATH_RTT_BUCKETS.to_vec()),
            &["peer"],
        )
        .expect("static metric definition");
        r.register(Box::new(rtt.clone())).expect("metric registered once");
        let peers = IntGauge::new(
            "graydar_path_peers",
            "Peers the path mesh probes (at most paths.max_peers).",
        )
        .expect("static metric definition");
        r.register(Box::new(peers.clone())).expect("metric registered once");
        PathMetrics {
            probes_sent: counter(
                r,
                "graydar_path_probes_sent_total",
                "Path probes sent to the peer.",
                &["peer"],
            ),
            delivered: counter(
                r,
                "graydar_path_probes_delivered_total",
                "Path probes that arrived, by direction (outbound: the peer reported them; inbound: the peer's                  probes that arrived here).",
                &["peer", "direction"],
            ),
            lost: counter(
                r,
                "graydar_path_probes_lost_total",
                "Path probes lost, by direction (sequence gaps older than paths.grace; outbound from the peer's                  reports). Probes whose fate is unknown (peer silent) are not counted.",
                &["peer", "direction"],
            ),
            loss_ratio: gauge_f(
                r,
                "graydar_path_loss_ratio",
                "lost / (delivered + lost) of path probes over paths.loss_window, by direction.",
                &["peer", "direction"],
            ),
            rtt,
            hops: gauge(
                r,
                "graydar_path_hops",
                "Routers between this host and the peer, by direction (sent TTL minus received TTL).",
                &["peer", "direction"],
            ),
            owd_variation: gauge_f(
                r,
                "graydar_path_owd_variation_seconds",
                "Median one-way delay over paths.latency_window minus its baseline, by direction (a variation: \
                 clock offsets cancel; never an absolute one-way delay).",
                &["peer", "direction"],
            ),
            peers,
            bad_datagrams: counter(
                r,
                "graydar_path_bad_datagrams_total",
                "Datagrams on the path-mesh port that were dropped unanswered, by reason: unauthenticated (mac, \
                 unknown_key, no_key), replayed (replay, replay_old, replay_session) or malformed (short, magic, \
                 version, kind, id, hops, trailing, truncated).",
                &["reason"],
            ),
            traceroutes: counter(
                r,
                "graydar_path_traceroutes_total",
                "Paris traceroutes run toward suspect peers, by result (ok, error).",
                &["result"],
            ),
        }
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

// ---------------------------------------------------------------------------
// Disk signal (agent/src/signals/disk.rs): fsync and block-I/O latency histograms
// from eBPF, the fdatasync canary, /proc/diskstats rates.

/// Prometheus bucket bounds (seconds) of every disk latency histogram:
/// 50 µs … 10 s. Each one is a bound of the kernel histograms' grid
/// (graydar_common::disk::HIST_BOUNDS_NS), so the exported counts are exact.
pub const DISK_LATENCY_BUCKETS: [f64; 17] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// One series of an [`ExternalHistogramVec`]: cumulative counts per bound of
/// [`DISK_LATENCY_BUCKETS`], total count and sum (seconds).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ExternalHistogram {
    pub cumulative: Vec<u64>,
    pub count: u64,
    pub sum: f64,
}

/// A Prometheus histogram whose buckets are counted elsewhere (in kernel
/// maps) and set here as a whole, instead of observed one value at a time.
#[derive(Clone)]
pub struct ExternalHistogramVec {
    desc: prometheus::core::Desc,
    labels: Vec<String>,
    series: std::sync::Arc<std::sync::Mutex<std::collections::BTreeMap<Vec<String>, ExternalHistogram>>>,
}

impl ExternalHistogramVec {
    pub fn new(name: &str, help: &str, labels: &[&str]) -> ExternalHistogramVec {
        let labels: Vec<String> = labels.iter().map(|l| (*l).to_owned()).collect();
        let desc = prometheus::core::Desc::new(name.to_owned(), help.to_owned(), labels.clone(), HashMap::new())
            .expect("static metric definition");
        ExternalHistogramVec {
            desc,
            labels,
            series: Default::default(),
        }
    }

    /// Replaces the series of `values` (in label order).
    pub fn set(&self, values: &[&str], h: ExternalHistogram) {
        let key = values.iter().map(|v| (*v).to_owned()).collect();
        let mut s = self.series.lock().unwrap_or_else(|p| p.into_inner());
        s.insert(key, h);
    }

    /// The series of `values`, if set.
    pub fn get(&self, values: &[&str]) -> Option<ExternalHistogram> {
        let key: Vec<String> = values.iter().map(|v| (*v).to_owned()).collect();
        let s = self.series.lock().unwrap_or_else(|p| p.into_inner());
        s.get(&key).cloned()
    }
}

impl prometheus::core::Collector for ExternalHistogramVec {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        vec![&self.desc]
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        use prometheus::proto;
        let s = self.series.lock().unwrap_or_else(|p| p.into_inner());
        let mut fam = proto::MetricFamily::default();
        fam.set_name(self.desc.fq_name.clone());
        fam.set_help(self.desc.help.clone());
        fam.set_field_type(proto::MetricType::HISTOGRAM);
        let mut metrics = Vec::with_capacity(s.len());
        for (values, h) in s.iter() {
            let mut labels = Vec::with_capacity(values.len());
            for (n, v) in self.labels.iter().zip(values) {
                let mut lp = proto::LabelPair::default();
                lp.set_name(n.clone());
                lp.set_value(v.clone());
                labels.push(lp);
            }
            let mut hist = proto::Histogram::default();
            hist.set_sample_count(h.count);
            hist.set_sample_sum(h.sum);
            let buckets = DISK_LATENCY_BUCKETS
                .iter()
                .zip(h.cumulative.iter())
                .map(|(ub, c)| {
                    let mut b = proto::Bucket::default();
                    b.set_upper_bound(*ub);
                    b.set_cumulative_count(*c);
                    b
                })
                .collect();
            hist.set_bucket(buckets);
            let mut m = proto::Metric::default();
            m.set_label(labels);
            m.set_histogram(hist);
            metrics.push(m);
        }
        if metrics.is_empty() {
            return Vec::new();
        }
        fam.set_metric(metrics);
        vec![fam]
    }
}

/// Metrics of the disk signal. Labels: `device` (kernel name: sda, nvme0n1,
/// dm-0, loop3; `_nodev` for file systems without a block device), `op`,
/// `directory` (configured canary directories); never pids.
pub struct DiskMetrics {
    pub fsync_duration: ExternalHistogramVec,
    pub block_io_duration: ExternalHistogramVec,
    pub block_io_errors: IntCounterVec,
    pub fsync_p99: GaugeVec,
    pub fsync_inflight_oldest: GaugeVec,
    pub canary_duration: prometheus::HistogramVec,
    pub canary_errors: IntCounterVec,
    pub canary_inflight: GaugeVec,
    pub disk_ops: GaugeVec,
    pub disk_throughput: GaugeVec,
    pub disk_await: GaugeVec,
    pub disk_inflight: IntGaugeVec,
    pub disk_utilization: GaugeVec,
    pub disk_latency_ratio: GaugeVec,
}

fn gauge_f(r: &Registry, name: &str, help: &str, labels: &[&str]) -> GaugeVec {
    let g = GaugeVec::new(Opts::new(name, help), labels).expect("static metric definition");
    r.register(Box::new(g.clone())).expect("metric registered once");
    g
}

impl DiskMetrics {
    fn new(r: &Registry) -> DiskMetrics {
        let fsync_duration = ExternalHistogramVec::new(
            "graydar_fsync_duration_seconds",
            "Duration of fsync/fdatasync system calls (eBPF, syscall enter to exit), by the block device of the \
             file's file system.",
            &["device", "op"],
        );
        r.register(Box::new(fsync_duration.clone()))
            .expect("metric registered once");
        let block_io_duration = ExternalHistogramVec::new(
            "graydar_block_io_duration_seconds",
            "Block request latency from issue to the driver to completion (eBPF block_rq_issue -> \
             block_rq_complete), by device and operation (read, write, flush, fua, discard, other).",
            &["device", "op"],
        );
        r.register(Box::new(block_io_duration.clone()))
            .expect("metric registered once");
        let canary_duration = prometheus::HistogramVec::new(
            prometheus::HistogramOpts::new(
                "graydar_canary_duration_seconds",
                "Duration of the canary's 4 KiB write + fdatasync in a configured directory.",
            )
            .buckets(DISK_LATENCY_BUCKETS.to_vec()),
            &["directory", "device"],
        )
        .expect("static metric definition");
        r.register(Box::new(canary_duration.clone()))
            .expect("metric registered once");
        DiskMetrics {
            fsync_duration,
            block_io_duration,
            block_io_errors: counter(
                r,
                "graydar_block_io_errors_total",
                "Block requests completed with an error status (eBPF block_rq_complete), by device and operation.",
                &["device", "op"],
            ),
            fsync_p99: gauge_f(
                r,
                "graydar_fsync_p99_seconds",
                "p99 of fsync/fdatasync durations over the fsync_latency detector's window.",
                &["device"],
            ),
            fsync_inflight_oldest: gauge_f(
                r,
                "graydar_fsync_inflight_oldest_seconds",
                "Age of the oldest fsync/fdatasync still in progress on the device (0 when none).",
                &["device"],
            ),
            canary_duration,
            canary_errors: counter(
                r,
                "graydar_canary_errors_total",
                "Canary write + fdatasync calls that failed.",
                &["directory"],
            ),
            canary_inflight: gauge_f(
                r,
                "graydar_canary_inflight_seconds",
                "Age of the canary call in progress (0 when idle); disk_hung fires at the stall limit.",
                &["directory"],
            ),
            disk_ops: gauge_f(
                r,
                "graydar_disk_ops_per_second",
                "Completed I/Os per second over the last interval (/proc/diskstats).",
                &["device", "op"],
            ),
            disk_throughput: gauge_f(
                r,
                "graydar_disk_throughput_bytes_per_second",
                "Bytes per second over the last interval (/proc/diskstats).",
                &["device", "op"],
            ),
            disk_await: gauge_f(
                r,
                "graydar_disk_await_seconds",
                "Mean time per completed I/O over the last interval, queueing included (/proc/diskstats).",
                &["device", "op"],
            ),
            disk_inflight: gauge(
                r,
                "graydar_disk_inflight_requests",
                "I/Os in flight on the device (/proc/diskstats).",
                &["device"],
            ),
            disk_utilization: gauge_f(
                r,
                "graydar_disk_utilization_ratio",
                "Share of the last interval with I/O in flight (/proc/diskstats io_ticks).",
                &["device"],
            ),
            disk_latency_ratio: gauge_f(
                r,
                "graydar_disk_latency_ratio",
                "Current await divided by the expected await at the same load: of the device's own baseline \
                 (against=baseline) or of its peers (against=peers); the disk_slow detector's ratios.",
                &["device", "against"],
            ),
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
