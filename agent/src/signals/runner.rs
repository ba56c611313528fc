//! The one loop every signal runs in.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use graydar_common::api::FindingState;

use super::{Context, Signal, Update};
use crate::findings::FindingStore;
use crate::metrics::Metrics;

/// Starts signals and runs each in its own task until the stop signal.
pub struct Runner {
    ctx: Context,
    ready: Arc<AtomicBool>,
    stop: tokio::sync::watch::Receiver<bool>,
    tasks: Vec<(&'static str, tokio::task::JoinHandle<()>)>,
}

impl Runner {
    /// `ready` is set once every signal that gates readiness sampled once.
    pub fn new(ctx: Context, ready: Arc<AtomicBool>, stop: tokio::sync::watch::Receiver<bool>) -> Runner {
        Runner {
            ctx,
            ready,
            stop,
            tasks: Vec::new(),
        }
    }

    pub fn context(&self) -> &Context {
        &self.ctx
    }

    /// Starts `S` (see [`Signal::start`]) and spawns its loop.
    pub fn start<S: Signal>(&mut self) -> &mut Self {
        let Some(signal) = S::start(&mut self.ctx) else {
            tracing::debug!(signal = S::NAME, "signal not started");
            return self;
        };
        probe_up(&self.ctx.metrics, &signal);
        let task = tokio::spawn(run(
            signal,
            Arc::clone(&self.ctx.findings),
            Arc::clone(&self.ctx.metrics),
            Arc::clone(&self.ready),
            self.stop.clone(),
        ));
        self.tasks.push((S::NAME, task));
        self
    }

    /// Every signal has started: drops what only start-up needed, the parsed
    /// kernel BTF (aya's, for loading tp_btf programs: 9 MiB of heap held for
    /// the agent's life on a 6.18 kernel, measured with /proc/PID/smaps).
    /// Programs already loaded stay loaded and attached.
    pub fn started(&mut self) -> &mut Self {
        if let Ok(programs) = &mut self.ctx.ebpf {
            programs.release_btf();
        }
        self
    }

    /// Waits for every signal to stop (after the stop signal).
    pub async fn join(self) {
        for (name, task) in self.tasks {
            if let Err(e) = task.await {
                tracing::warn!(signal = name, error = %e, "signal task");
            }
        }
    }
}

async fn run<S: Signal>(
    mut signal: S,
    findings: Arc<Mutex<FindingStore>>,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    signal.begin(stop.clone()).await;
    let mut tick = tokio::time::interval(signal.interval());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let updates = signal.sample().await;
                apply(&findings, &metrics, updates);
                signal.export(&metrics);
                probe_up(&metrics, &signal);
                if S::GATES_READINESS {
                    ready.store(true, Ordering::Release);
                }
            }
            updates = signal.next_event() => {
                if !updates.is_empty() {
                    apply(&findings, &metrics, updates);
                    signal.export(&metrics);
                }
                probe_up(&metrics, &signal);
            }
            _ = stop.changed() => break,
        }
    }
    signal.stop().await;
}

/// `graydar_probe_up` of the signal's probes.
fn probe_up<S: Signal>(metrics: &Metrics, signal: &S) {
    for (probe, up) in signal.probes() {
        metrics.probe_up.with_label_values(&[probe]).set(i64::from(up));
    }
}

/// Applies one step's updates to the store and re-exports the finding metrics.
pub(crate) fn apply(findings: &Mutex<FindingStore>, metrics: &Metrics, updates: Vec<Update>) {
    let wall = SystemTime::now();
    let mut store = findings.lock().unwrap_or_else(|p| p.into_inner());
    apply_to(&mut store, updates, wall);
    store.export(metrics);
}

pub(crate) fn apply_to(store: &mut FindingStore, updates: Vec<Update>, wall: SystemTime) {
    for u in updates {
        match u {
            Update::Apply(transition, report) => store.apply(transition, report, wall),
            Update::Restate(report) => store.firing(report, wall),
            Update::Resolve(kind, subject) => store.resolve(kind, &subject, wall),
            Update::ResolveVanished { kinds, present } => {
                for f in store.list(wall) {
                    if f.state == FindingState::Firing
                        && kinds.contains(&f.kind)
                        && !present.contains(&(f.kind, f.subject.clone()))
                    {
                        store.resolve(f.kind, &f.subject, wall);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashSet};
    use std::time::Duration;

    use graydar_common::api::{FindingKind, Severity};

    use super::*;
    use crate::detect::Transition;
    use crate::findings::Report;

    fn report(kind: FindingKind, subject: &str) -> Report {
        Report {
            kind,
            subject: subject.into(),
            severity: Severity::Warning,
            summary: "s".into(),
            evidence: BTreeMap::new(),
        }
    }

    #[test]
    fn vanished_subjects_of_the_signal_kinds_resolve() {
        let mut store = FindingStore::new("n", Duration::from_secs(60));
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let fire = |k, s| Update::Apply(Some(Transition::Fired(Severity::Warning)), report(k, s));
        apply_to(
            &mut store,
            vec![
                fire(FindingKind::NicDrops, "eth0/rx"),
                fire(FindingKind::NicDrops, "eth1/rx"),
                fire(FindingKind::Incast, "10.0.0.1:80"),
            ],
            t,
        );
        apply_to(
            &mut store,
            vec![Update::ResolveVanished {
                kinds: vec![FindingKind::NicDrops],
                present: HashSet::from([(FindingKind::NicDrops, "eth0/rx".to_owned())]),
            }],
            t,
        );
        assert!(store.is_firing(FindingKind::NicDrops, "eth0/rx"));
        assert!(!store.is_firing(FindingKind::NicDrops, "eth1/rx"), "vanished");
        assert!(
            store.is_firing(FindingKind::Incast, "10.0.0.1:80"),
            "another signal's kind"
        );
        apply_to(
            &mut store,
            vec![Update::Resolve(FindingKind::Incast, "10.0.0.1:80".into())],
            t,
        );
        assert!(!store.is_firing(FindingKind::Incast, "10.0.0.1:80"));
    }

    /// A signal that fires one finding on its first sample, resolves it on
    /// its first event and records that it was stopped.
    struct Fake {
        samples: usize,
        events: usize,
        stopped: Arc<AtomicBool>,
    }

    impl Signal for Fake {
        const NAME: &'static str = "fake";
        const GATES_READINESS: bool = true;

        fn start(_ctx: &mut Context) -> Option<Self> {
            None
        }

        fn interval(&self) -> Duration {
            Duration::from_millis(10)
        }

        async fn sample(&mut self) -> Vec<Update> {
            self.samples += 1;
            if self.samples == 1 {
                vec![Update::Apply(
                    Some(Transition::Fired(Severity::Critical)),
                    report(FindingKind::Incast, "ep"),
                )]
            } else {
                Vec::new()
            }
        }

        async fn next_event(&mut self) -> Vec<Update> {
            if self.samples == 0 || self.events > 0 {
                return std::future::pending().await;
            }
            self.events += 1;
            vec![Update::Resolve(FindingKind::Incast, "ep".into())]
        }

        fn export(&self, metrics: &Metrics) {
            metrics
                .route_flapping_prefixes
                .set(i64::try_from(self.samples).unwrap_or(0));
        }

        async fn stop(self) {
            self.stopped.store(true, Ordering::Release);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn the_runner_samples_applies_events_gates_readiness_and_stops() {
        let findings = Arc::new(Mutex::new(FindingStore::new("n", Duration::from_secs(60))));
        let metrics = Arc::new(Metrics::new());
        let ready = Arc::new(AtomicBool::new(false));
        let stopped = Arc::new(AtomicBool::new(false));
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(run(
            Fake {
                samples: 0,
                events: 0,
                stopped: stopped.clone(),
            },
            findings.clone(),
            metrics.clone(),
            ready.clone(),
            stop_rx,
        ));
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let listed = |f: &Mutex<FindingStore>| f.lock().expect("lock").list(SystemTime::now());
        while listed(&findings)
            .first()
            .is_none_or(|f| f.state != FindingState::Resolved)
        {
            assert!(std::time::Instant::now() < deadline, "{:?}", listed(&findings));
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(ready.load(Ordering::Acquire), "ready after the first sample");
        assert!(
            metrics.route_flapping_prefixes.get() >= 1,
            "the signal's own export ran"
        );
        assert_eq!(
            metrics.findings_active.with_label_values(&["incast", "critical"]).get(),
            0,
            "the store was exported after the event"
        );
        assert!(!stopped.load(Ordering::Acquire));
        stop_tx.send(true).expect("send");
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("the runner stops")
            .expect("task");
        assert!(stopped.load(Ordering::Acquire), "Signal::stop ran");
    }
}
