//! Reports this host to the graydar controller: registers at start,
//! heartbeats, and pushes the [`FindingStore`]'s transitions in order.
//!
//! While the controller is unreachable the transitions stay in the store's
//! bounded log (the oldest are dropped when it is full, counted in
//! `graydar_reporter_transitions_dropped_total{reason="buffer_full"}`) and
//! are delivered in order once it is back; retries back off exponentially
//! with jitter. Delivery is at-least-once: the controller deduplicates by
//! (finding id, transition, time).
//!
//! The client is blocking (ureq), so the reporter runs on its own thread.

use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use graydar_common::api::{Capabilities, FindingState, HeartbeatRequest, RegisterRequest, TransitionBatch};
use graydar_common::client::{Client, ClientError};

use crate::config::{Config, ConfigError, ControllerSection};
use crate::findings::FindingStore;
use crate::metrics::Metrics;

/// Most transitions per request (the controller accepts 1000).
pub const MAX_BATCH: usize = 500;
/// Longest wait between retries.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Per-request timeout of the reporter's (and the path mesh's) requests.
pub fn request_timeout(section: &ControllerSection) -> Duration {
    REQUEST_TIMEOUT
        .min(section.report_interval * 4)
        .max(Duration::from_secs(2))
}
/// How often the buffer gauges are refreshed while waiting.
const GAUGE_REFRESH: Duration = Duration::from_secs(1);

/// Exponential backoff with "equal jitter": the n-th consecutive failure
/// waits between half and all of `min(max, base * 2^n)`.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Backoff {
        Backoff {
            base,
            max: max.max(base),
            failures: 0,
        }
    }

    /// The next delay; `unit` is a random number in [0, 1).
    pub fn next_with(&mut self, unit: f64) -> Duration {
        let exp = self.base.saturating_mul(1u32 << self.failures.min(20));
        let cap = exp.min(self.max);
        self.failures = self.failures.saturating_add(1);
        cap / 2 + cap.mul_f64(unit.clamp(0.0, 1.0) / 2.0)
    }

    pub fn next_delay(&mut self) -> Duration {
        self.next_with(fastrand::f64())
    }

    pub fn reset(&mut self) {
        self.failures = 0;
    }

    pub fn failures(&self) -> u32 {
        self.failures
    }
}

/// Fault capabilities from the kernel probe of agent/src/faults/caps.rs.
fn fault_caps(cfg: &Config) -> Capabilities {
    use crate::faults::caps::{Piece, Roots, probe};
    let k = probe(&Roots {
        procfs: cfg.procfs_root.clone(),
        sysfs: cfg.sysfs_root.clone(),
        ..Roots::default()
    });
    Capabilities {
        sch_netem: k.usable(Piece::Netem),
        device_mapper: k.usable(Piece::DeviceMapper),
        sch_prio: k.usable(Piece::Prio),
        cls_flower: k.usable(Piece::Flower),
        act_mirred: k.usable(Piece::Mirred),
        ifb: k.usable(Piece::Ifb),
        dm_delay: k.usable(Piece::DmDelay),
        dm_flakey: k.usable(Piece::DmFlakey),
        ..Capabilities::default()
    }
}

/// What this host tells the controller at registration.
pub fn register_request(cfg: &Config, section: &ControllerSection, ebpf: bool) -> RegisterRequest {
    let kernel_version = std::fs::read_to_string(cfg.procfs_root.join("sys/kernel/osrelease"))
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    let sys_module = |m: &str| cfg.sysfs_root.join("module").join(m).exists();
    let modules = std::fs::read_to_string(cfg.procfs_root.join("modules")).unwrap_or_default();
    let module_file = |name: &str| {
        ["", ".xz", ".zst", ".gz"].iter().any(|ext| {
            std::path::Path::new("/lib/modules")
                .join(&kernel_version)
                .join(format!("kernel/net/sched/{name}.ko{ext}"))
                .exists()
        })
    };
    let misc = std::fs::read_to_string(cfg.procfs_root.join("misc")).unwrap_or_default();
    RegisterRequest {
        hostname: cfg.hostname.clone(),
        addresses: local_addresses(),
        labels: section.labels.clone(),
        kernel_version: kernel_version.clone(),
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        capabilities: Capabilities {
            ebpf,
            sch_netem: sys_module("sch_netem")
                || modules.lines().any(|l| l.starts_with("sch_netem "))
                || module_file("sch_netem"),
            device_mapper: sys_module("dm_mod") || misc.lines().any(|l| l.trim_end().ends_with("device-mapper")),
            // The rest from the fault engine's probe (agent/src/faults/caps.rs).
            ..fault_caps(cfg)
        },
        interfaces: crate::faults::inventory::interfaces(&cfg.sysfs_root),
        dm_devices: crate::faults::inventory::dm_devices(),
    }
}

/// Non-loopback IPv4/IPv6 addresses of this network namespace.
pub fn local_addresses() -> Vec<String> {
    let mut out: Vec<String> = match nix::ifaddrs::getifaddrs() {
        Ok(addrs) => addrs
            .filter_map(|a| {
                let addr = a.address?;
                if let Some(v4) = addr.as_sockaddr_in() {
                    let ip = v4.ip();
                    (!ip.is_loopback()).then(|| ip.to_string())
                } else if let Some(v6) = addr.as_sockaddr_in6() {
                    let ip = v6.ip();
                    (!ip.is_loopback() && (ip.segments()[0] & 0xffc0) != 0xfe80).then(|| ip.to_string())
                } else {
                    None
                }
            })
            .collect(),
        Err(e) => {
            tracing::debug!(error = %e, "getifaddrs");
            Vec::new()
        }
    };
    out.sort();
    out.dedup();
    out
}

/// The running reporter thread.
pub struct Reporter {
    stop: Sender<()>,
    handle: Option<JoinHandle<()>>,
}

struct Worker {
    client: Client,
    hostname: String,
    register: RegisterRequest,
    interval: Duration,
    heartbeat_every: Duration,
    metrics: Arc<Metrics>,
    findings: Arc<Mutex<FindingStore>>,
    registered: bool,
    last_heartbeat: Option<Instant>,
    dropped_seen: u64,
    batch_limit: usize,
    backoff: Backoff,
    /// For the fault inventory sent with each heartbeat.
    sysfs_root: std::path::PathBuf,
}

enum Outcome {
    /// Everything pending was delivered (or nothing was pending).
    Done,
    /// Try again after a backoff.
    Retry,
    /// The agent must register (again) first.
    Reregister,
}

impl Reporter {
    /// Enables the store's transition log and starts reporting.
    pub fn start(
        cfg: &Config,
        section: &ControllerSection,
        metrics: Arc<Metrics>,
        findings: Arc<Mutex<FindingStore>>,
        ebpf: bool,
    ) -> Result<Reporter, ConfigError> {
        let client = section.client(request_timeout(section))?;
        // Series that exist from the start, so 0 is visible.
        for reason in ["buffer_full", "rejected"] {
            metrics.reporter.transitions_dropped.with_label_values(&[reason]);
        }
        metrics.reporter.transitions_sent.with_label_values::<&str>(&[]);
        match findings.lock() {
            Ok(mut s) => s.enable_transition_log(section.buffer_size),
            Err(p) => p.into_inner().enable_transition_log(section.buffer_size),
        }
        let mut w = Worker {
            client,
            hostname: cfg.hostname.clone(),
            register: register_request(cfg, section, ebpf),
            interval: section.report_interval,
            heartbeat_every: Duration::from_secs(10),
            metrics,
            findings,
            registered: false,
            last_heartbeat: None,
            dropped_seen: 0,
            batch_limit: MAX_BATCH,
            backoff: Backoff::new(Duration::from_millis(500).min(section.report_interval), MAX_BACKOFF),
            sysfs_root: cfg.sysfs_root.clone(),
        };
        let (stop, stop_rx) = std::sync::mpsc::channel();
        tracing::info!(url = %section.url, interval = ?section.report_interval, buffer = section.buffer_size, "reporting to the controller");
        let handle = std::thread::Builder::new()
            .name("reporter".into())
            .spawn(move || w.run(stop_rx))
            .map_err(|e| ConfigError::Controller(format!("starting the reporter thread: {e}")))?;
        Ok(Reporter {
            stop,
            handle: Some(handle),
        })
    }

    /// Stops after one last delivery attempt.
    pub fn stop(mut self) {
        let _ = self.stop.send(());
        if let Some(h) = self.handle.take()
            && h.join().is_err()
        {
            tracing::warn!("reporter thread panicked");
        }
    }
}

impl Worker {
    fn store(&self) -> std::sync::MutexGuard<'_, FindingStore> {
        self.findings.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn request_done(&self, op: &str, r: &Result<(), &ClientError>) {
        let (result, up) = match r {
            Ok(()) => ("ok", 1),
            Err(_) => ("error", 0),
        };
        self.metrics.reporter.requests.with_label_values(&[op, result]).inc();
        self.metrics.reporter.controller_up.set(up);
    }

    fn sync_gauges(&mut self) {
        let (dropped, buffered) = {
            let s = self.store();
            (s.transitions_dropped(), s.transitions_buffered())
        };
        let m = &self.metrics.reporter;
        if dropped > self.dropped_seen {
            let n = dropped - self.dropped_seen;
            tracing::warn!(dropped = n, "transition buffer full: oldest transitions dropped");
            m.transitions_dropped.with_label_values(&["buffer_full"]).inc_by(n);
            self.dropped_seen = dropped;
        }
        m.buffered.set(i64::try_from(buffered).unwrap_or(i64::MAX));
    }

    fn log_error(&self, op: &str, e: &ClientError) {
        if self.backoff.failures() <= 1 || self.backoff.failures().is_multiple_of(10) {
            tracing::warn!(op, error = %e, failures = self.backoff.failures(), "controller request failed");
        } else {
            tracing::debug!(op, error = %e, "controller request failed");
        }
    }

    fn register(&mut self) -> Outcome {
        match self.client.register(&self.register) {
            Ok(r) => {
                self.request_done("register", &Ok(()));
                tracing::info!(url = self.client.base_url(), state = %r.agent.state, "registered with the controller");
                self.registered = true;
                self.heartbeat_every = Duration::from_secs(r.heartbeat_interval_seconds.clamp(1, 3600));
                self.last_heartbeat = Some(Instant::now());
                Outcome::Done
            }
            Err(e) => {
                self.request_done("register", &Err(&e));
                self.log_error("register", &e);
                Outcome::Retry
            }
        }
    }

    /// Delivers pending transitions in order, batch by batch.
    fn push(&mut self) -> Outcome {
        loop {
            let pending = self.store().pending_transitions(self.batch_limit);
            let Some(last_seq) = pending.last().map(|(s, _)| *s) else {
                return Outcome::Done;
            };
            let n = pending.len();
            let batch = TransitionBatch {
                transitions: pending.into_iter().map(|(_, t)| t).collect(),
            };
            match self.client.push_transitions(&self.hostname, &batch) {
                Ok(r) => {
                    self.request_done("transitions", &Ok(()));
                    self.store().ack_transitions(last_seq);
                    self.metrics
                        .reporter
                        .transitions_sent
                        .with_label_values::<&str>(&[])
                        .inc_by(u64::try_from(n).unwrap_or(0));
                    tracing::debug!(
                        accepted = r.accepted,
                        duplicates = r.duplicates,
                        "transitions delivered"
                    );
                    self.batch_limit = MAX_BATCH;
                }
                Err(e) => {
                    self.request_done("transitions", &Err(&e));
                    match e.status() {
                        Some(404) => return Outcome::Reregister,
                        // Refused content: isolate the offending transition
                        // by sending one at a time, then drop it.
                        Some(413 | 422) if n > 1 => self.batch_limit = 1,
                        Some(413 | 422) => {
                            tracing::error!(error = %e, "controller refused a transition: dropped");
                            self.store().ack_transitions(last_seq);
                            self.metrics
                                .reporter
                                .transitions_dropped
                                .with_label_values(&["rejected"])
                                .inc();
                        }
                        _ => {
                            self.log_error("transitions", &e);
                            return Outcome::Retry;
                        }
                    }
                }
            }
        }
    }

    fn heartbeat(&mut self) -> Outcome {
        let firing = self
            .store()
            .list(SystemTime::now())
            .iter()
            .filter(|f| f.state == FindingState::Firing)
            .count();
        let req = HeartbeatRequest {
            firing: u64::try_from(firing).unwrap_or(u64::MAX),
            interfaces: crate::faults::inventory::interfaces(&self.sysfs_root),
            dm_devices: crate::faults::inventory::dm_devices(),
        };
        match self.client.heartbeat(&self.hostname, &req) {
            Ok(_) => {
                self.request_done("heartbeat", &Ok(()));
                self.last_heartbeat = Some(Instant::now());
                Outcome::Done
            }
            Err(e) => {
                self.request_done("heartbeat", &Err(&e));
                if e.status() == Some(404) {
                    return Outcome::Reregister;
                }
                self.log_error("heartbeat", &e);
                Outcome::Retry
            }
        }
    }

    /// One round: register if needed, deliver transitions, heartbeat if due.
    fn round(&mut self) -> Outcome {
        if !self.registered
            && let o @ (Outcome::Retry | Outcome::Reregister) = self.register()
        {
            return o;
        }
        match self.push() {
            Outcome::Done => {}
            other => return other,
        }
        if self.last_heartbeat.is_none_or(|t| t.elapsed() >= self.heartbeat_every) {
            return self.heartbeat();
        }
        Outcome::Done
    }

    fn run(&mut self, stop: Receiver<()>) {
        loop {
            self.sync_gauges();
            let wait = match self.round() {
                Outcome::Done => {
                    self.backoff.reset();
                    self.interval
                }
                Outcome::Reregister => {
                    tracing::info!("controller does not know this agent: registering again");
                    self.registered = false;
                    Duration::ZERO
                }
                Outcome::Retry => self.backoff.next_delay(),
            };
            self.sync_gauges();
            // Sleep until the next round, refreshing the buffer gauges every
            // second so a long backoff does not hide drops.
            let until = Instant::now() + wait;
            let stopped = loop {
                let left = until.saturating_duration_since(Instant::now());
                match stop.recv_timeout(left.min(GAUGE_REFRESH)) {
                    Err(RecvTimeoutError::Timeout) if left <= GAUGE_REFRESH => break false,
                    Err(RecvTimeoutError::Timeout) => self.sync_gauges(),
                    Ok(()) | Err(RecvTimeoutError::Disconnected) => break true,
                }
            };
            if stopped {
                // One last attempt so a clean shutdown loses nothing.
                // Only while the controller answers: an unreachable one
                // must not delay the shutdown by a request timeout.
                if self.registered
                    && self.metrics.reporter.controller_up.get() == 1
                    && self.store().transitions_buffered() > 0
                {
                    let _ = self.push();
                }
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(500), Duration::from_secs(60));
        assert_eq!(b.next_with(0.0), Duration::from_millis(250));
        assert_eq!(b.next_with(0.999_999).as_millis(), 999);
        assert_eq!(b.next_with(0.5), Duration::from_millis(1500));
        for _ in 0..20 {
            b.next_with(0.5);
        }
        assert_eq!(b.next_with(0.0), Duration::from_secs(30));
        assert!(b.next_with(1.0) <= Duration::from_secs(60));
        b.reset();
        assert_eq!(b.next_with(0.0), Duration::from_millis(250));
        // Random jitter stays within [cap/2, cap].
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        for n in 0..8u32 {
            let cap = (Duration::from_secs(1) * (1 << n)).min(Duration::from_secs(60));
            let d = b.next_delay();
            assert!(d >= cap / 2 && d <= cap, "{n}: {d:?}");
        }
    }
}
