//! Signals: one per family of gray failures, each end to end from its probes
//! (agent/src/probes/) through its detectors (agent/src/detect/) to finding
//! updates. Every signal implements [`Signal`]; one [`Runner`] owns the loop,
//! the [`FindingStore`] updates, readiness and shutdown for all of them.
//!
//! | signal   | probes                                   | finding kinds |
//! |----------|------------------------------------------|---------------|
//! | drops    | nic, qdisc, softnet, kernel_drops (eBPF) | nic_drops, qdisc_drops, kernel_drops |
//! | disk     | fsync, block_io (eBPF), diskstats, canary | fsync_latency, disk_slow, disk_hung |
//! | incast   | tcp_fanin (eBPF), netstat, nic           | incast |
//! | routes   | route_churn (rtnetlink)                  | route_flap |
//! | paths    | path_mesh, traceroute                    | one_way_loss, asymmetric_connectivity, asymmetric_route, latency_asymmetry |

use std::collections::HashSet;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use graydar_common::api::FindingKind;

use crate::config::Config;
use crate::detect::Transition;
use crate::ebpf::{Programs, Unavailable};
use crate::findings::{FindingStore, Report};
use crate::metrics::Metrics;
use crate::probes::drops::kernel::KernelDropsProbe;

pub mod disk;
pub mod drops;
pub mod incast;
pub mod paths;
pub mod routes;
mod runner;

pub use runner::Runner;

/// What every signal starts from.
pub struct Context {
    pub cfg: Config,
    pub metrics: Arc<Metrics>,
    pub findings: Arc<Mutex<FindingStore>>,
    /// rtnetlink, when the connection could be made (qdisc statistics).
    pub netlink: Option<rtnetlink::Handle>,
    /// The eBPF object, loaded once (agent/src/ebpf.rs); each signal takes
    /// the programs and maps of its probes from it.
    pub ebpf: Result<Programs, Unavailable>,
    /// The kfree_skb probe, attached early (its state goes into the
    /// controller registration); taken by the drops signal.
    pub kernel_drops: Option<KernelDropsProbe>,
    /// The controller channel (agent/src/channel/), with a `[controller]`:
    /// the paths signal reports through it.
    pub channel: Option<crate::channel::Channel>,
}

/// One change a signal asks of the finding store.
#[derive(Debug)]
pub enum Update {
    /// A detector's decision about one subject ([`FindingStore::apply`]).
    Apply(Option<Transition>, Report),
    /// Still firing: fresh summary, severity and evidence
    /// ([`FindingStore::firing`]), for detectors that restate a firing
    /// finding at each evaluation.
    Restate(Report),
    /// The subject is gone or its detector was reset: resolve it.
    Resolve(FindingKind, String),
    /// Subjects that vanished (interface deleted, qdisc removed) cannot keep
    /// firing: resolves firing findings of `kinds` not in `present`.
    ResolveVanished {
        kinds: Vec<FindingKind>,
        present: HashSet<(FindingKind, String)>,
    },
}

/// A signal: started from the configuration and the shared [`Context`],
/// sampled every [`Signal::interval`] by the [`Runner`], optionally driven by
/// events too; what it returns goes to the finding store.
pub trait Signal: Send + Sized + 'static {
    /// Name in logs.
    const NAME: &'static str;

    /// Whether the agent reports ready (/readyz) once this signal sampled once.
    const GATES_READINESS: bool = false;

    /// Builds the signal; `None` when it is disabled by configuration or
    /// cannot run at all (logged, `graydar_probe_up` set).
    fn start(ctx: &mut Context) -> Option<Self>;

    /// Sampling period.
    fn interval(&self) -> Duration;

    /// Runs once before the first sample: starts the signal's own tasks or
    /// threads (they must end when `stop` changes or in [`Signal::stop`]).
    fn begin(&mut self, _stop: tokio::sync::watch::Receiver<bool>) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// One sampling step.
    fn sample(&mut self) -> impl Future<Output = Vec<Update>> + Send;

    /// The signal's next event, for signals driven by events (routes); never
    /// resolves by default. Must be cancel-safe: the runner polls it against
    /// the sampling tick.
    fn next_event(&mut self) -> impl Future<Output = Vec<Update>> + Send {
        std::future::pending()
    }

    /// The probes this signal wants, each with whether it runs now; the
    /// runner sets `graydar_probe_up` from it after the start and after every
    /// step. A probe disabled by configuration is not listed (no series:
    /// disabled, not down).
    fn probes(&self) -> Vec<(&'static str, bool)> {
        Vec::new()
    }

    /// Metrics of the signal's own state, set after each store update.
    fn export(&self, _metrics: &Metrics) {}

    /// Stops the signal's own tasks and threads.
    fn stop(self) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// The eBPF object with every probe's globals; why not, when it cannot be
/// loaded (each probe then reports itself down).
pub fn load_ebpf(cfg: &Config) -> Result<Programs, Unavailable> {
    if !crate::sys::can_load_bpf() {
        tracing::warn!(
            "not root and no CAP_BPF+CAP_PERFMON: eBPF probes disabled; the sysfs, softnet and qdisc collectors keep running"
        );
        return Err(Unavailable::NotAllowed);
    }
    crate::sys::ensure_pseudo_filesystems();
    crate::ebpf::load(&cfg.sysfs_root, &incast::fanin_config(cfg)).map_err(Unavailable::Failed)
}

/// Counts (`graydar_collector_errors_total`) and logs a failed collection.
pub(crate) fn collector_error(metrics: &Metrics, collector: &str, err: &dyn std::fmt::Display) {
    metrics.collector_errors.with_label_values(&[collector]).inc();
    tracing::warn!(collector, error = %err, "collection failed");
}
