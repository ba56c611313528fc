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
//! A task on the agent's runtime, speaking through the controller
//! [`Channel`] (agent/src/channel/).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use graydar_common::api::{
    Capabilities, ClockExchange, FindingState, HeartbeatRequest, RegisterRequest, TransitionBatch,
};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::channel::{Backoff, Channel, ChannelError};
use crate::config::{Config, ControllerSection};
use crate::findings::FindingStore;
use crate::metrics::Metrics;

/// Most transitions per request (the controller accepts 1000).
pub const MAX_BATCH: usize = 500;
/// Longest wait between retries.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// How often the buffer gauges are refreshed while waiting.
const GAUGE_REFRESH: Duration = Duration::from_secs(1);

/// What this host tells the controller at registration.
pub fn register_request(cfg: &Config, section: &ControllerSection, ebpf: bool) -> RegisterRequest {
    let kernel = crate::faults::caps::probe(&crate::faults::caps::Roots {
        procfs: cfg.procfs_root.clone(),
        sysfs: cfg.sysfs_root.clone(),
        ..crate::faults::caps::Roots::default()
    });
    RegisterRequest {
        hostname: cfg.hostname.clone(),
        addresses: local_addresses(),
        labels: section.labels.clone(),
        kernel_version: kernel.release.clone(),
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        capabilities: Capabilities {
            ebpf,
            ..kernel.capabilities()
        },
        interfaces: crate::faults::inventory::interfaces(&cfg.sysfs_root),
        dm_devices: crate::faults::inventory::dm_devices(),
        credential_sha256: None,
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

/// The running reporter task.
pub struct Reporter {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

struct Worker {
    channel: Channel,
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
    /// The times of the last answered heartbeat, sent with the next one
    /// (the controller estimates this host's clock offset from them).
    exchange: Option<ClockExchange>,
    /// Exchanges sent since the last registration: until one is, the
    /// heartbeat after the first comes at the next round, so that the
    /// controller has an offset within seconds of a registration.
    exchanges_sent: u32,
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
    /// Enables the store's transition log and starts reporting on the
    /// current runtime.
    pub fn start(
        cfg: &Config,
        section: &ControllerSection,
        channel: Channel,
        metrics: Arc<Metrics>,
        findings: Arc<Mutex<FindingStore>>,
        ebpf: bool,
    ) -> Reporter {
        // Series that exist from the start, so 0 is visible.
        for reason in ["buffer_full", "rejected"] {
            metrics.reporter.transitions_dropped.with_label_values(&[reason]);
        }
        metrics.reporter.transitions_sent.with_label_values::<&str>(&[]);
        match findings.lock() {
            Ok(mut s) => s.enable_transition_log(section.buffer_size),
            Err(p) => p.into_inner().enable_transition_log(section.buffer_size),
        }
        let w = Worker {
            channel,
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
            exchange: None,
            exchanges_sent: 0,
        };
        let (stop, stop_rx) = oneshot::channel();
        tracing::info!(url = %section.url, interval = ?section.report_interval, buffer = section.buffer_size, "reporting to the controller");
        Reporter {
            stop,
            task: tokio::spawn(w.run(stop_rx)),
        }
    }

    /// Stops after one last delivery attempt.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        if self.task.await.is_err() {
            tracing::warn!("reporter task panicked");
        }
    }
}

impl Worker {
    fn store(&self) -> std::sync::MutexGuard<'_, FindingStore> {
        self.findings.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn request_done(&self, op: &str, r: &Result<(), &ChannelError>) {
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

    fn log_error(&self, op: &str, e: &ChannelError) {
        if self.backoff.failures() <= 1 || self.backoff.failures().is_multiple_of(10) {
            tracing::warn!(op, error = %e, failures = self.backoff.failures(), "controller request failed");
        } else {
            tracing::debug!(op, error = %e, "controller request failed");
        }
    }

    async fn register(&mut self) -> Outcome {
        match self.channel.register(&self.register).await {
            Ok(r) => {
                self.request_done("register", &Ok(()));
                tracing::info!(url = self.channel.base_url(), state = %r.agent.state, "registered with the controller");
                self.registered = true;
                self.heartbeat_every = Duration::from_secs(r.heartbeat_interval_seconds.clamp(1, 3600));
                // The first heartbeat right away: its times, sent with the
                // next one, give the controller this host's clock offset.
                self.last_heartbeat = None;
                self.exchanges_sent = 0;
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
    async fn push(&mut self) -> Outcome {
        loop {
            let pending = self.store().pending_transitions(self.batch_limit);
            let Some(last_seq) = pending.last().map(|(s, _)| *s) else {
                return Outcome::Done;
            };
            let n = pending.len();
            let batch = TransitionBatch {
                transitions: pending.into_iter().map(|(_, t)| t).collect(),
            };
            match self.channel.push_transitions(&self.hostname, &batch).await {
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
                        // Unknown agent, or a credential the controller no
                        // longer knows (register enrolls again).
                        Some(404 | 401) => return Outcome::Reregister,
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

    async fn heartbeat(&mut self) -> Outcome {
        let firing = self
            .store()
            .list(SystemTime::now())
            .iter()
            .filter(|f| f.state == FindingState::Firing)
            .count();
        // The previous exchange goes once: lost with a failed request (the
        // controller may have counted it), replaced by this one's.
        let clock = self.exchange.take();
        let req = HeartbeatRequest {
            firing: u32::try_from(firing).unwrap_or(u32::MAX),
            interfaces: crate::faults::inventory::interfaces(&self.sysfs_root),
            dm_devices: crate::faults::inventory::dm_devices(),
            clock,
        };
        match self.channel.heartbeat(&self.hostname, &req).await {
            Ok(hb) => {
                self.request_done("heartbeat", &Ok(()));
                self.last_heartbeat = Some(Instant::now());
                if clock.is_some() {
                    self.exchanges_sent = self.exchanges_sent.saturating_add(1);
                }
                self.exchange = hb.exchange();
                Outcome::Done
            }
            Err(e) => {
                self.request_done("heartbeat", &Err(&e));
                if matches!(e.status(), Some(404 | 401)) {
                    return Outcome::Reregister;
                }
                self.log_error("heartbeat", &e);
                Outcome::Retry
            }
        }
    }

    /// A heartbeat is due every `heartbeat_every`, and at once after a
    /// registration; the one that carries the first exchange since then
    /// goes at the next round.
    fn heartbeat_due(&self) -> bool {
        let first_exchange = self.exchange.is_some() && self.exchanges_sent == 0;
        first_exchange || self.last_heartbeat.is_none_or(|t| t.elapsed() >= self.heartbeat_every)
    }

    /// One round: register if needed, deliver transitions, heartbeat if due.
    async fn round(&mut self) -> Outcome {
        if !self.registered
            && let o @ (Outcome::Retry | Outcome::Reregister) = self.register().await
        {
            return o;
        }
        match self.push().await {
            Outcome::Done => {}
            other => return other,
        }
        if self.heartbeat_due() {
            return self.heartbeat().await;
        }
        Outcome::Done
    }

    /// Rounds until `stop` fires (or its sender is dropped). A round in
    /// flight finishes first, bounded by the request timeout.
    async fn run(mut self, mut stop: oneshot::Receiver<()>) {
        loop {
            self.sync_gauges();
            let wait = match self.round().await {
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
                tokio::select! {
                    _ = tokio::time::sleep(left.min(GAUGE_REFRESH)) => {
                        if left <= GAUGE_REFRESH {
                            break false;
                        }
                        self.sync_gauges();
                    }
                    _ = &mut stop => break true,
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
                    let _ = self.push().await;
                }
                return;
            }
        }
    }
}
