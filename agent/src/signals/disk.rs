//! The disk signal end to end.
//!
//! - eBPF (programs of the shared object, agent/src/ebpf.rs;
//!   ebpf/src/{fsync,block_io}.rs): fsync/fdatasync
//!   latency per block device and block request latency per device and op,
//!   as per-CPU histograms; errors of block requests.
//! - `/proc/diskstats`: IOPS, throughput, await, in-flight, utilization.
//! - Canaries: one OS thread per configured directory (none by default),
//!   4 KiB write + fdatasync every `canary_interval`; a watchdog thread
//!   checks them every 100 ms and raises `disk_hung` (agent/src/detect/disk/hung.rs)
//!   the moment a call has been in flight for `canary_stall_limit`,
//!   independently of the sampling loop and of tokio (a hung disk must not
//!   delay the alarm about it): the one finding written to the store outside
//!   the runner.
//!
//! Every `interval` [`DiskSignal::sample`] mirrors the histograms into
//! Prometheus, feeds `fsync_latency` (per device, both ops merged) and
//! `disk_slow` (per whole device, diskstats await at comparable load), and
//! returns the finding updates.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use graydar_common::api::{Evidence, FindingKind, Severity};
use graydar_common::disk::{block_op, fsync_op};

use super::{Context, Signal, Update};
use crate::config::DiskConfig;
use crate::detect::Transition;
use crate::detect::disk::fsync_latency::{FsyncDetector, LatencyHist};
use crate::detect::disk::hung::HungTracker;
use crate::detect::disk::slow::{self, DeviceSample, SlowDetector};
use crate::ebpf::{Programs, Unavailable};
use crate::findings::{FindingStore, Report};
use crate::metrics::{CounterMirror, DISK_LATENCY_BUCKETS, ExternalHistogram, Metrics};
use crate::probes::disk::block_io::{self, BlockReader, DeviceNames};
use crate::probes::disk::canary;
use crate::probes::disk::canary::Canary;
use crate::probes::disk::diskstats::{self, DiskCounters};
use crate::probes::disk::fsync::{self, FsyncReader};
use crate::probes::{SharedEbpf, lock_ebpf};

/// The fsync and block programs of the shared object.
pub struct DiskEbpf {
    object: SharedEbpf,
    pub fsync: Option<FsyncReader>,
    pub block: Option<BlockReader>,
}

impl DiskEbpf {
    /// Cumulative (run time ns, runs) of `programs`, as counted by the
    /// kernel; both 0 unless kernel.bpf_stats_enabled=1.
    pub fn run_stats(&self, programs: &[&str]) -> (u64, u64) {
        let (mut ns, mut runs) = (0u64, 0u64);
        let ebpf = lock_ebpf(&self.object);
        for p in programs {
            if let Some(Ok(info)) = ebpf.program(p).map(|p| p.info()) {
                ns = ns.saturating_add(u64::try_from(info.run_time().as_nanos()).unwrap_or(u64::MAX));
                runs = runs.saturating_add(info.run_count());
            }
        }
        (ns, runs)
    }
}

/// Programs of each disk probe, for the kernel's run-time statistics.
const FSYNC_PROGRAMS: &[&str] = &[
    "fsync_enter_btf",
    "fdatasync_enter_btf",
    "fsync_enter",
    "fdatasync_enter",
    "fsync_exit",
];
const BLOCK_PROGRAMS: &[&str] = &["block_rq_issue", "block_rq_complete"];

/// Attaches the fsync and block programs of the shared object (loaded with
/// the disk probes' globals); each half that fails is logged and disabled.
pub fn start_ebpf(programs: &mut Programs, metrics: &Metrics, walk: fsync::FsyncWalk) -> DiskEbpf {
    let fsync_off = programs.take_fsync();
    let block_off = programs.take_block();
    let object = programs.object();
    let mut guard = lock_ebpf(&object);
    let ebpf = &mut *guard;
    let fsync_reader = fsync_off
        .and_then(|o| {
            tracing::debug!(offsets = ?o, "fsync probe setup");
            let typed = fsync::attach(ebpf, walk)?;
            tracing::debug!(typed, "fsync probe attached");
            FsyncReader::take(ebpf)
        })
        .inspect_err(|e| tracing::warn!(error = %e, "fsync latency probe disabled"))
        .ok();
    let block_reader = block_off
        .and_then(|o| {
            tracing::debug!(offsets = ?o, "block probe setup");
            block_io::attach(ebpf)?;
            BlockReader::take(ebpf)
        })
        .inspect_err(|e| tracing::warn!(error = %e, "block I/O latency probe disabled"))
        .ok();
    for (probe, up) in [
        (fsync::PROBE, fsync_reader.is_some()),
        (block_io::PROBE, block_reader.is_some()),
    ] {
        if up {
            metrics
                .ebpf_programs_attached
                .add(if probe == fsync::PROBE { 3 } else { 2 });
            tracing::info!(probe, "eBPF probe attached");
        }
    }
    drop(guard);
    DiskEbpf {
        object,
        fsync: fsync_reader,
        block: block_reader,
    }
}

/// A running canary and where it reports.
struct CanaryEntry {
    canary: Canary,
    directory: String,
    device: String,
}

/// Device (kernel name) holding `dir`'s file system, from its st_dev.
fn device_of_dir(dir: &Path, names: &mut DeviceNames) -> String {
    use std::os::unix::fs::MetadataExt as _;
    match std::fs::metadata(dir) {
        Ok(m) => {
            let dev = m.dev();
            // userspace dev_t → kernel-internal encoding
            let (major, minor) = (libc::major(dev), libc::minor(dev));
            names.name(graydar_common::disk::mkdev(major, minor))
        }
        Err(_) => "_unknown".into(),
    }
}

fn subject(device: &str) -> String {
    format!("/dev/{device}")
}

fn hist_metric(h: &LatencyHist) -> ExternalHistogram {
    let bounds: Vec<u64> = DISK_LATENCY_BUCKETS.iter().map(|b| (b * 1e9).round() as u64).collect();
    ExternalHistogram {
        cumulative: h.cumulative(&bounds),
        count: h.count(),
        sum: h.sum_ns as f64 / 1e9,
    }
}

fn secs(d: Option<Duration>) -> Evidence {
    Evidence::Number(d.map(|d| d.as_secs_f64()).unwrap_or(0.0))
}

pub struct DiskSignal {
    cfg: DiskConfig,
    procfs_root: PathBuf,
    sysfs_root: PathBuf,
    metrics: Arc<Metrics>,
    findings: Arc<Mutex<FindingStore>>,
    ebpf: Option<DiskEbpf>,
    names: DeviceNames,
    mirror: CounterMirror,
    fsync_det: FsyncDetector<String>,
    slow_det: SlowDetector,
    last_diskstats: Option<(Duration, HashMap<String, DiskCounters>)>,
    last_block_errors: HashMap<String, u64>,
    block_window: HashMap<String, std::collections::VecDeque<(Duration, LatencyHist)>>,
    last_block: HashMap<String, LatencyHist>,
    canaries: Arc<Vec<CanaryEntry>>,
    /// Tells the canary watchdog thread to end.
    watchdog_stop: Arc<AtomicBool>,
    started: Instant,
}

impl DiskSignal {
    pub fn new(
        cfg: DiskConfig,
        procfs_root: PathBuf,
        sysfs_root: PathBuf,
        metrics: Arc<Metrics>,
        findings: Arc<Mutex<FindingStore>>,
        ebpf: Option<DiskEbpf>,
    ) -> Self {
        let mut names = DeviceNames::new(&sysfs_root);
        let mut canaries = Vec::new();
        for dir in &cfg.canary_directories {
            let directory = dir.display().to_string();
            let device = device_of_dir(dir, &mut names);
            let hist = metrics
                .disk
                .canary_duration
                .with_label_values(&[directory.as_str(), device.as_str()]);
            let errors = metrics.disk.canary_errors.with_label_values(&[directory.as_str()]);
            let d2 = directory.clone();
            match Canary::start(dir, cfg.canary_interval, move |o: &canary::Outcome| match o {
                Ok(d) => hist.observe(d.as_secs_f64()),
                Err(e) => {
                    errors.inc();
                    tracing::warn!(directory = %d2, error = %e, "canary write + fdatasync failed");
                }
            }) {
                Ok(c) => {
                    tracing::info!(%directory, %device, "fdatasync canary started");
                    metrics
                        .disk
                        .canary_inflight
                        .with_label_values(&[directory.as_str()])
                        .set(0.0);
                    canaries.push(CanaryEntry {
                        canary: c,
                        directory,
                        device,
                    });
                }
                Err(e) => {
                    metrics.collector_errors.with_label_values(&["canary"]).inc();
                    tracing::error!(%directory, error = %e, "cannot start the fdatasync canary");
                }
            }
        }
        DiskSignal {
            fsync_det: FsyncDetector::new(cfg.fsync.clone()),
            slow_det: SlowDetector::new(cfg.slow.clone()),
            cfg,
            procfs_root,
            sysfs_root,
            metrics,
            findings,
            ebpf,
            names,
            mirror: CounterMirror::default(),
            last_diskstats: None,
            last_block_errors: HashMap::new(),
            block_window: HashMap::new(),
            last_block: HashMap::new(),
            canaries: Arc::new(canaries),
            watchdog_stop: Arc::new(AtomicBool::new(false)),
            started: Instant::now(),
        }
    }

    fn excluded(&self, dev: &str) -> bool {
        self.cfg.exclude_devices.iter().any(|d| d == dev)
    }

    fn collector_error(&self, collector: &str, err: &dyn std::fmt::Display) {
        super::collector_error(&self.metrics, collector, err);
    }

    /// Starts the canary watchdog thread (no-op without canaries).
    fn start_watchdog(&self, stop: Arc<AtomicBool>) {
        if self.canaries.is_empty() {
            return;
        }
        let canaries = Arc::clone(&self.canaries);
        let metrics = Arc::clone(&self.metrics);
        let findings = Arc::clone(&self.findings);
        let limit = self.cfg.canary_stall_limit;
        let spawned = std::thread::Builder::new()
            .name("canary-watchdog".into())
            .spawn(move || watchdog(&canaries, &metrics, &findings, limit, &stop));
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the canary watchdog");
        }
    }

    /// Mirrors the kernel's run-time statistics of the disk programs.
    fn sample_run_stats(&mut self) {
        let Some(e) = &self.ebpf else { return };
        let m = Arc::clone(&self.metrics);
        for (probe, progs, on) in [
            (fsync::PROBE, FSYNC_PROGRAMS, e.fsync.is_some()),
            (block_io::PROBE, BLOCK_PROGRAMS, e.block.is_some()),
        ] {
            if !on {
                continue;
            }
            let (ns, runs) = e.run_stats(progs);
            let d = self.mirror.delta(&["ebpf_runs", probe], 0, runs);
            m.ebpf_runs.with_label_values(&[probe]).inc_by(d);
            let d = self.mirror.delta(&["ebpf_run_ns", probe], 0, ns);
            m.ebpf_run_seconds.with_label_values(&[probe]).inc_by(d as f64 / 1e9);
        }
    }

    /// One sampling round.
    pub fn sample(&mut self) -> Vec<Update> {
        self.sample_run_stats();
        let now = self.started.elapsed();
        let mut reports: Vec<Update> = Vec::new();
        let block_errors = self.sample_block(now);
        self.sample_fsync(now, &mut reports);
        self.sample_diskstats(now, &block_errors, &mut reports);
        reports
    }

    /// Block histograms and errors into metrics; returns error counts per
    /// device (cumulative) for disk_slow.
    fn sample_block(&mut self, now: Duration) -> HashMap<String, u64> {
        let mut errors_by_dev: HashMap<String, u64> = HashMap::new();
        let Some(reader) = self.ebpf.as_ref().and_then(|e| e.block.as_ref()) else {
            return errors_by_dev;
        };
        let snap = match reader.read() {
            Ok(s) => s,
            Err(e) => {
                self.collector_error("ebpf_block_io", &e);
                return errors_by_dev;
            }
        };
        let m = Arc::clone(&self.metrics);
        let mut by_dev: HashMap<String, LatencyHist> = HashMap::new();
        for (key, h) in &snap.hists {
            let dev = self.names.name(key.dev);
            let op = block_op::NAMES.get(key.op as usize).copied().unwrap_or("other");
            m.disk.block_io_duration.set(&[dev.as_str(), op], hist_metric(h));
            by_dev.entry(dev).or_default().merge(h);
        }
        for (key, n) in &snap.errors {
            let dev = self.names.name(key.dev);
            let op = block_op::NAMES.get(key.op as usize).copied().unwrap_or("other");
            let d = self.mirror.delta(&["block_errors", &dev, op], 0, *n);
            m.disk.block_io_errors.with_label_values(&[dev.as_str(), op]).inc_by(d);
            *errors_by_dev.entry(dev).or_default() += *n;
        }
        let d = self
            .mirror
            .delta(&["ebpf_lost", block_io::PROBE], 0, snap.lost + snap.read_errors);
        m.ebpf_events_lost.with_label_values(&[block_io::PROBE]).inc_by(d);
        // Per-device block latency over the fsync window, for evidence.
        for (dev, cum) in by_dev {
            let delta = self
                .last_block
                .get(&dev)
                .and_then(|old| cum.delta_since(old))
                .unwrap_or_default();
            let ring = self.block_window.entry(dev.clone()).or_default();
            ring.push_back((now, delta));
            while ring
                .front()
                .is_some_and(|(t, _)| now.saturating_sub(*t) >= self.cfg.fsync.window)
            {
                ring.pop_front();
            }
            self.last_block.insert(dev, cum);
        }
        errors_by_dev
    }

    fn block_window_hist(&self, dev: &str) -> LatencyHist {
        let mut h = LatencyHist::default();
        if let Some(r) = self.block_window.get(dev) {
            for (_, d) in r {
                h.merge(d);
            }
        }
        h
    }

    fn sample_fsync(&mut self, now: Duration, out: &mut Vec<Update>) {
        let procfs_root = self.procfs_root.clone();
        let Some(reader) = self.ebpf.as_mut().and_then(|e| e.fsync.as_mut()) else {
            return;
        };
        let snap = match reader.read(&procfs_root) {
            Ok(s) => s,
            Err(e) => {
                self.collector_error("ebpf_fsync", &e);
                return;
            }
        };
        let m = Arc::clone(&self.metrics);
        let events: u64 = snap.hists.values().map(LatencyHist::count).sum();
        let d = self.mirror.delta(&["ebpf_events", fsync::PROBE], 0, events);
        m.ebpf_events.with_label_values(&[fsync::PROBE]).inc_by(d);
        let d = self
            .mirror
            .delta(&["ebpf_lost", fsync::PROBE], 0, snap.lost + snap.read_errors);
        m.ebpf_events_lost.with_label_values(&[fsync::PROBE]).inc_by(d);
        let mut per_dev: BTreeMap<String, LatencyHist> = BTreeMap::new();
        for (key, h) in &snap.hists {
            let dev = self.names.name(key.dev);
            let op = fsync_op::NAMES.get(key.op as usize).copied().unwrap_or("fsync");
            m.disk.fsync_duration.set(&[dev.as_str(), op], hist_metric(h));
            per_dev.entry(dev).or_default().merge(h);
        }
        let mut inflight: BTreeMap<String, Duration> = BTreeMap::new();
        for (dev, age) in &snap.oldest_inflight {
            let name = self.names.name(*dev);
            let e = inflight.entry(name).or_default();
            *e = (*e).max(*age);
        }
        let mut seen = HashSet::new();
        for dev in per_dev.keys().chain(inflight.keys()).cloned().collect::<Vec<_>>() {
            if self.excluded(&dev) || dev.starts_with('_') || !seen.insert(dev.clone()) {
                continue;
            }
            let cum = per_dev.get(&dev).cloned().unwrap_or_default();
            let age = inflight.get(&dev).copied();
            let o = self.fsync_det.observe(&dev, now, &cum, age);
            m.disk
                .fsync_p99
                .with_label_values(&[dev.as_str()])
                .set(o.window_p99.map(|d| d.as_secs_f64()).unwrap_or(0.0));
            m.disk
                .fsync_inflight_oldest
                .with_label_values(&[dev.as_str()])
                .set(age.map(|d| d.as_secs_f64()).unwrap_or(0.0));
            let block = self.block_window_hist(&dev);
            let ev = BTreeMap::from([
                ("device".to_owned(), Evidence::from(dev.as_str())),
                (
                    "window_seconds".to_owned(),
                    Evidence::Number(self.cfg.fsync.window.as_secs_f64()),
                ),
                ("fsync_count".to_owned(), Evidence::from(o.window_count)),
                ("fsync_p50_seconds".to_owned(), secs(o.window_p50)),
                ("fsync_p99_seconds".to_owned(), secs(o.window_p99)),
                ("recent_p99_seconds".to_owned(), secs(o.recent)),
                ("oldest_inflight_seconds".to_owned(), secs(age)),
                ("block_p50_seconds".to_owned(), secs(block.quantile(0.5))),
                ("block_p99_seconds".to_owned(), secs(block.quantile(0.99))),
                (
                    "block_iops".to_owned(),
                    Evidence::Number(block.count() as f64 / self.cfg.fsync.window.as_secs_f64()),
                ),
                (
                    "block_errors".to_owned(),
                    Evidence::from(self.last_block_errors.get(&dev).copied().unwrap_or(0)),
                ),
                (
                    "warning_seconds".to_owned(),
                    Evidence::Number(self.cfg.fsync.warning.as_secs_f64()),
                ),
                (
                    "critical_seconds".to_owned(),
                    Evidence::Number(self.cfg.fsync.critical.as_secs_f64()),
                ),
            ]);
            let summary = format!(
                "{}: fsync p99 {:.0} ms over {}s ({} calls; last interval {:.0} ms)",
                subject(&dev),
                o.window_p99.map(|d| d.as_secs_f64() * 1e3).unwrap_or(0.0),
                self.cfg.fsync.window.as_secs(),
                o.window_count,
                o.recent.map(|d| d.as_secs_f64() * 1e3).unwrap_or(0.0),
            );
            out.push(report(
                FindingKind::FsyncLatency,
                &dev,
                o.transition,
                o.firing,
                summary,
                ev,
            ));
        }
        self.fsync_det.retain(|k| seen.contains(k));
    }

    fn sample_diskstats(&mut self, now: Duration, block_errors: &HashMap<String, u64>, out: &mut Vec<Update>) {
        let disks = match diskstats::read(&self.procfs_root) {
            Ok(d) => d,
            Err(e) => {
                self.collector_error("diskstats", &e);
                return;
            }
        };
        let current: HashMap<String, DiskCounters> = disks.into_iter().map(|d| (d.name.clone(), d)).collect();
        let Some((then, prev)) = self.last_diskstats.replace((now, current.clone())) else {
            return;
        };
        let elapsed = now.saturating_sub(then);
        let m = Arc::clone(&self.metrics);
        let mut samples = BTreeMap::new();
        let mut rates_by_dev = HashMap::new();
        for (name, new) in &current {
            let Some(old) = prev.get(name) else { continue };
            let Some(r) = diskstats::rates(old, new, elapsed) else {
                continue;
            };
            for (op, o) in &r.ops {
                let l = [name.as_str(), *op];
                m.disk.disk_ops.with_label_values(&l).set(o.iops);
                m.disk.disk_throughput.with_label_values(&l).set(o.bytes_per_second);
                m.disk.disk_await.with_label_values(&l).set(o.await_seconds);
            }
            m.disk
                .disk_inflight
                .with_label_values(&[name.as_str()])
                .set(i64::try_from(r.in_flight).unwrap_or(i64::MAX));
            m.disk
                .disk_utilization
                .with_label_values(&[name.as_str()])
                .set(r.utilization);
            if self.excluded(name) || diskstats::is_partition(&self.sysfs_root, name) {
                continue;
            }
            let errs_now = block_errors.get(name).copied().unwrap_or(0);
            let errs_before = self
                .last_block_errors
                .insert(name.clone(), errs_now)
                .unwrap_or(errs_now);
            samples.insert(
                name.clone(),
                DeviceSample {
                    kind: slow::device_kind(name, diskstats::is_rotational(&self.sysfs_root, name)),
                    iops: r.total.iops,
                    bytes_per_second: r.total.bytes_per_second,
                    latency: Duration::from_secs_f64(r.total.await_seconds.max(0.0)),
                    errors: errs_now.saturating_sub(errs_before),
                },
            );
            rates_by_dev.insert(name.clone(), r);
        }
        let obs = self.slow_det.evaluate(now, &samples);
        for (dev, o) in obs {
            let (Some(s), Some(r)) = (samples.get(&dev), rates_by_dev.get(&dev)) else {
                continue;
            };
            for (against, v) in [("baseline", o.ratio_baseline), ("peers", o.ratio_peers)] {
                m.disk
                    .disk_latency_ratio
                    .with_label_values(&[dev.as_str(), against])
                    .set(v.unwrap_or(0.0));
            }
            let block = self.block_window_hist(&dev);
            let ev = BTreeMap::from([
                ("device".to_owned(), Evidence::from(dev.as_str())),
                ("kind".to_owned(), Evidence::from(s.kind.as_str())),
                (
                    "interval_seconds".to_owned(),
                    Evidence::Number(self.cfg.interval.as_secs_f64()),
                ),
                ("iops".to_owned(), Evidence::Number(s.iops)),
                (
                    "throughput_bytes_per_second".to_owned(),
                    Evidence::Number(s.bytes_per_second),
                ),
                ("await_seconds".to_owned(), Evidence::Number(s.latency.as_secs_f64())),
                ("utilization".to_owned(), Evidence::Number(r.utilization)),
                ("load_bin".to_owned(), Evidence::Number(f64::from(o.load_bin))),
                ("baseline_await_seconds".to_owned(), secs(o.baseline)),
                ("peers_await_seconds".to_owned(), secs(o.peers)),
                ("peer_count".to_owned(), Evidence::Number(o.peer_count as f64)),
                (
                    "ratio_to_baseline".to_owned(),
                    Evidence::Number(o.ratio_baseline.unwrap_or(0.0)),
                ),
                (
                    "ratio_to_peers".to_owned(),
                    Evidence::Number(o.ratio_peers.unwrap_or(0.0)),
                ),
                ("block_p50_seconds".to_owned(), secs(block.quantile(0.5))),
                ("block_p99_seconds".to_owned(), secs(block.quantile(0.99))),
                ("errors".to_owned(), Evidence::from(s.errors)),
            ]);
            let against = match (o.ratio_baseline, o.ratio_peers) {
                (Some(b), Some(p)) if p > b => format!("{p:.1}x its peers"),
                (Some(b), _) => format!("{b:.1}x its own baseline"),
                (None, Some(p)) => format!("{p:.1}x its peers"),
                (None, None) => "no baseline yet".to_owned(),
            };
            let summary = format!(
                "{}: {:.1} ms per I/O at {:.0} IOPS / {:.1} MB/s is {against} at comparable load, with no errors",
                subject(&dev),
                s.latency.as_secs_f64() * 1e3,
                s.iops,
                s.bytes_per_second / 1e6
            );
            out.push(report(FindingKind::DiskSlow, &dev, o.transition, o.firing, summary, ev));
        }
    }
}

impl Signal for DiskSignal {
    const NAME: &'static str = "disk";

    /// eBPF fsync/block probes when allowed, diskstats always, canaries for
    /// the configured directories.
    fn start(ctx: &mut Context) -> Option<Self> {
        let (cfg, metrics) = (&ctx.cfg, &ctx.metrics);
        // `[disk] ebpf = false`: no probe_up series (disabled, not down).
        let ebpf = if !cfg.disk.ebpf {
            None
        } else {
            match &mut ctx.ebpf {
                Ok(programs) => Some(start_ebpf(programs, metrics, cfg.ebpf.fsync)),
                Err(e) => {
                    if !matches!(e, Unavailable::NotAllowed) {
                        tracing::warn!(error = %e, "disk eBPF probes disabled; diskstats and canaries keep running");
                    }
                    None
                }
            }
        };
        Some(DiskSignal::new(
            cfg.disk.clone(),
            cfg.procfs_root.clone(),
            cfg.sysfs_root.clone(),
            metrics.clone(),
            ctx.findings.clone(),
            ebpf,
        ))
    }

    fn interval(&self) -> Duration {
        self.cfg.interval
    }

    fn probes(&self) -> Vec<(&'static str, bool)> {
        let mut p = vec![
            ("diskstats", true),
            ("canary", self.canaries.len() == self.cfg.canary_directories.len()),
        ];
        // `[disk] ebpf = false`: no series (disabled, not down).
        if self.cfg.ebpf {
            let e = self.ebpf.as_ref();
            p.push((fsync::PROBE, e.is_some_and(|e| e.fsync.is_some())));
            p.push((block_io::PROBE, e.is_some_and(|e| e.block.is_some())));
        }
        p
    }

    /// Starts the canary watchdog thread.
    async fn begin(&mut self, _stop: tokio::sync::watch::Receiver<bool>) {
        self.start_watchdog(Arc::clone(&self.watchdog_stop));
    }

    async fn sample(&mut self) -> Vec<Update> {
        // Map reads and small procfs reads: fast, but keep them off the
        // async workers anyway.
        match tokio::runtime::Handle::current().runtime_flavor() {
            tokio::runtime::RuntimeFlavor::CurrentThread => DiskSignal::sample(self),
            _ => tokio::task::block_in_place(|| DiskSignal::sample(self)),
        }
    }

    async fn stop(self) {
        self.watchdog_stop.store(true, Ordering::Release);
        for c in self.canaries.iter() {
            c.canary.stop();
        }
    }
}

fn report(
    kind: FindingKind,
    dev: &str,
    transition: Option<Transition>,
    firing: Option<Severity>,
    summary: String,
    evidence: BTreeMap<String, Evidence>,
) -> Update {
    Update::Apply(
        transition,
        Report {
            kind,
            subject: subject(dev),
            severity: firing.unwrap_or(Severity::Warning),
            summary,
            evidence,
        },
    )
}

/// The canary watchdog: every 100 ms, each canary's call in flight is
/// checked against the stall limit. Runs on its own thread and only takes
/// the findings lock briefly, so neither a hung disk nor a busy runtime
/// delays `disk_hung`.
fn watchdog(
    canaries: &[CanaryEntry],
    metrics: &Metrics,
    findings: &Mutex<FindingStore>,
    stall_limit: Duration,
    stop: &AtomicBool,
) {
    let mut trackers = vec![HungTracker::default(); canaries.len()];
    while !stop.load(Ordering::Acquire) {
        for (c, t) in canaries.iter().zip(trackers.iter_mut()) {
            let s = c.canary.status();
            metrics
                .disk
                .canary_inflight
                .with_label_values(&[c.directory.as_str()])
                .set(s.in_flight.map(|d| d.as_secs_f64()).unwrap_or(0.0));
            let Some(tr) = t.update(&s, stall_limit) else {
                continue;
            };
            let wall = SystemTime::now();
            let mut store = findings.lock().unwrap_or_else(|p| p.into_inner());
            let subject = subject(&c.device);
            let stuck = s.in_flight.unwrap_or_default();
            // The summary and evidence of the moment it hung (a resolution
            // uses only the kind and subject).
            let report = Report {
                kind: FindingKind::DiskHung,
                subject,
                severity: Severity::Critical,
                summary: format!(
                    "{}: the canary's 4 KiB write + fdatasync in {} has not returned for {:.1} s \
                     (stall limit {:.1} s)",
                    subject_of(&c.device),
                    c.directory,
                    stuck.as_secs_f64(),
                    stall_limit.as_secs_f64()
                ),
                evidence: BTreeMap::from([
                    ("device".to_owned(), Evidence::from(c.device.as_str())),
                    ("directory".to_owned(), Evidence::from(c.directory.as_str())),
                    ("inflight_seconds".to_owned(), Evidence::Number(stuck.as_secs_f64())),
                    (
                        "stall_limit_seconds".to_owned(),
                        Evidence::Number(stall_limit.as_secs_f64()),
                    ),
                    ("canary_calls".to_owned(), Evidence::from(s.calls)),
                    ("canary_errors".to_owned(), Evidence::from(s.errors)),
                ]),
            };
            store.apply(Some(tr), report, wall);
            store.export(metrics);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn subject_of(device: &str) -> String {
    subject(device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_buckets_are_on_the_kernel_grid() {
        for b in DISK_LATENCY_BUCKETS {
            let ns = (b * 1e9).round() as u64;
            assert!(
                graydar_common::disk::HIST_BOUNDS_NS.contains(&ns),
                "{b} s is not a bound of the kernel histogram"
            );
        }
        let h = LatencyHist::of(&[
            Duration::from_micros(40),
            Duration::from_millis(60),
            Duration::from_secs(20),
        ]);
        let m = hist_metric(&h);
        assert_eq!(m.count, 3);
        assert_eq!(m.cumulative[0], 1, "le=50µs");
        assert_eq!(m.cumulative[10], 2, "le=100ms");
        assert_eq!(m.cumulative[16], 2, "le=10s: the 20 s one is only in +Inf (count)");
    }
}
