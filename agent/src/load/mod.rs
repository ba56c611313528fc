//! Load generators, run by the fault engine (agent/src/faults/engine.rs)
//! like any fault: started after the journal says so, stopped at the
//! lease's end, at revert and at SIGTERM (the engine's revert stops the
//! task before it journals `Reverted`). A kill -9 ends them with the
//! process; the only thing a load leaves behind, the fsync load's file, is
//! in the journal and removed at the next start.
//!
//! One file per kind: traffic.rs (UDP or TCP toward other agents' sinks),
//! burst.rs (a synchronized TCP fan-in), fsync.rs (write + fdatasync),
//! sink.rs (what traffic and bursts are aimed at). Every rate goes through
//! [`graydar_common::load::Pacer`].

mod burst;
mod fsync;
mod sink;
mod traffic;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use graydar_common::faults::FaultSpec;
use tokio::sync::watch;

/// How long a stop waits for the generator to finish before aborting it.
const STOP_WAIT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("load sink: cannot listen on {proto} port {port}: {source}")]
    Bind {
        proto: &'static str,
        port: u16,
        #[source]
        source: std::io::Error,
    },
    #[error("fsync load: {path}: {source}")]
    File {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} is not a load")]
    NotALoad(&'static str),
}

/// What a running load has done so far (the agent's metrics read these).
#[derive(Debug, Default)]
pub struct Stats {
    /// Datagrams, writes, syncs or bursts done.
    pub ops: AtomicU64,
    pub bytes: AtomicU64,
    /// Sends, connects or syncs that failed (counted, never fatal).
    pub errors: AtomicU64,
}

/// Each count goes to the load's own [`Stats`] and to the process's
/// [`TOTALS`] in one place.
impl Stats {
    fn op(&self, bytes: u64) {
        self.ops.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// A datagram, write or burst of `bytes` sent.
    fn sent(&self, bytes: u64) {
        self.synced(bytes);
        TOTALS.sent_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// A write + sync of `bytes` done (an operation, no bytes on the wire).
    fn synced(&self, bytes: u64) {
        self.op(bytes);
        TOTALS.sent_ops.fetch_add(1, Ordering::Relaxed);
    }

    /// `bytes` received by the sink.
    fn received(&self, bytes: u64) {
        self.op(bytes);
        TOTALS.received_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    fn error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        TOTALS.errors.fetch_add(1, Ordering::Relaxed);
    }
}

/// Totals of every load this process ran (exported as counters).
#[derive(Debug, Default)]
pub struct Totals {
    pub sent_ops: AtomicU64,
    pub sent_bytes: AtomicU64,
    pub received_bytes: AtomicU64,
    pub errors: AtomicU64,
}

pub static TOTALS: Totals = Totals {
    sent_ops: AtomicU64::new(0),
    sent_bytes: AtomicU64::new(0),
    received_bytes: AtomicU64::new(0),
    errors: AtomicU64::new(0),
};

/// One running load.
pub struct Running {
    kind: &'static str,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    pub stats: Arc<Stats>,
    started: Instant,
}

/// What a load did, once stopped.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Summary {
    pub ops: u64,
    pub bytes: u64,
    pub errors: u64,
    pub seconds: f64,
}

impl Summary {
    pub fn ops_per_second(&self) -> f64 {
        if self.seconds > 0.0 {
            self.ops as f64 / self.seconds
        } else {
            0.0
        }
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ops, {} bytes, {} errors in {:.1} s ({:.0}/s, {:.2} Mbit/s)",
            self.ops,
            self.bytes,
            self.errors,
            self.seconds,
            self.ops_per_second(),
            if self.seconds > 0.0 {
                self.bytes as f64 * 8.0 / self.seconds / 1e6
            } else {
                0.0
            }
        )
    }
}

impl Running {
    pub fn summary(&self) -> Summary {
        Summary {
            ops: self.stats.ops.load(Ordering::Relaxed),
            bytes: self.stats.bytes.load(Ordering::Relaxed),
            errors: self.stats.errors.load(Ordering::Relaxed),
            seconds: self.started.elapsed().as_secs_f64(),
        }
    }

    pub fn kind(&self) -> &'static str {
        self.kind
    }

    /// Stops the load and waits for it (at most [`STOP_WAIT`], then it is
    /// aborted); what it did.
    pub async fn stop(mut self) -> Summary {
        let _ = self.stop.send(true);
        if tokio::time::timeout(STOP_WAIT, &mut self.task).await.is_err() {
            tracing::warn!(kind = self.kind, "load did not stop within {STOP_WAIT:?}; aborted");
            self.task.abort();
        }
        self.summary()
    }
}

/// The file an fsync load writes: in `dir`, named after the fault.
pub fn fsync_path(dir: &str, id: &str) -> PathBuf {
    let safe: String = id
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' })
        .collect();
    Path::new(dir).join(format!(".graydar-load-{safe}.dat"))
}

/// Starts the load `spec` as fault `id`. Errors that can be seen at once
/// (a sink port in use, an fsync directory that does not exist) fail here.
pub async fn start(id: &str, spec: &FaultSpec) -> Result<Running, LoadError> {
    let (stop, stopped) = watch::channel(false);
    let stats = Arc::new(Stats::default());
    let (kind, task) = match spec {
        FaultSpec::Traffic(t) => ("traffic", tokio::spawn(traffic::run(t.clone(), stats.clone(), stopped))),
        FaultSpec::Burst(b) => ("burst", tokio::spawn(burst::run(b.clone(), stats.clone(), stopped))),
        FaultSpec::Fsync(f) => {
            let w = fsync::Writer::create(&fsync_path(&f.dir, id), f.block_bytes)?;
            (
                "fsync",
                tokio::spawn(fsync::run(w, f.per_second, stats.clone(), stopped)),
            )
        }
        FaultSpec::LoadSink(s) => {
            let sink = sink::Sink::bind(s.port).await?;
            ("load_sink", tokio::spawn(sink.run(stats.clone(), stopped)))
        }
        FaultSpec::Netem { .. } => return Err(LoadError::NotALoad("netem")),
        FaultSpec::Dm { .. } => return Err(LoadError::NotALoad("dm")),
        FaultSpec::Blackhole { .. } => return Err(LoadError::NotALoad("blackhole")),
        FaultSpec::RouteFlap { .. } => return Err(LoadError::NotALoad("route_flap")),
        FaultSpec::RouteDetour { .. } => return Err(LoadError::NotALoad("route_detour")),
        FaultSpec::NicRings { .. } => return Err(LoadError::NotALoad("nic_rings")),
    };
    Ok(Running {
        kind,
        stop,
        task,
        stats,
        started: Instant::now(),
    })
}

/// Whether `stopped` says stop (or its sender is gone).
fn should_stop(stopped: &watch::Receiver<bool>) -> bool {
    *stopped.borrow() || stopped.has_changed().is_err()
}

/// Sleeps `d` or until told to stop; `true` when told to stop.
async fn sleep_or_stop(d: Duration, stopped: &mut watch::Receiver<bool>) -> bool {
    if should_stop(stopped) {
        return true;
    }
    tokio::select! {
        () = tokio::time::sleep(d) => should_stop(stopped),
        _ = stopped.changed() => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use graydar_common::load::{BurstSpec, FsyncSpec, LoadProtocol, SinkSpec, TrafficSpec};

    fn loopback_traffic(port: u16, protocol: LoadProtocol, pps: u64) -> FaultSpec {
        FaultSpec::Traffic(TrafficSpec {
            to: vec!["127.0.0.1".into()],
            port,
            protocol,
            packets_per_second: Some(pps),
            bits_per_second: None,
            size: 1000,
            connections: 2,
        })
    }

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port")
    }

    /// Traffic through a sink on loopback, at its rate, for both
    /// protocols; the sink counts what arrived, and both stop when told.
    #[tokio::test]
    async fn traffic_reaches_a_sink_at_its_rate_and_stops() {
        for protocol in [LoadProtocol::Udp, LoadProtocol::Tcp] {
            let port = free_port();
            let sink = start("s", &FaultSpec::LoadSink(SinkSpec { port })).await.expect("sink");
            let load = start("t", &loopback_traffic(port, protocol, 500))
                .await
                .expect("traffic");
            tokio::time::sleep(Duration::from_secs(2)).await;
            let sent = load.stop().await;
            tokio::time::sleep(Duration::from_millis(200)).await;
            let got = sink.summary();
            let after = sink.stop().await;
            // 500/s for ~2 s (plus the pacer's burst of 10 ms worth).
            assert!(
                (800..=1100).contains(&sent.ops),
                "{protocol:?}: sent {sent} at 500/s for 2 s"
            );
            assert_eq!(sent.bytes, sent.ops * 1000, "{protocol:?}");
            assert!(
                got.bytes >= sent.bytes * 9 / 10,
                "{protocol:?}: the sink got {} of {} bytes",
                got.bytes,
                sent.bytes
            );
            assert_eq!(after.bytes, got.bytes, "{protocol:?}: nothing arrives after the stop");
        }
    }

    /// The port is free again once the sink stopped (its sockets closed).
    #[tokio::test]
    async fn a_stopped_sink_frees_its_port_and_a_busy_port_is_an_error() {
        let port = free_port();
        let a = start("a", &FaultSpec::LoadSink(SinkSpec { port })).await.expect("sink");
        let busy = start("b", &FaultSpec::LoadSink(SinkSpec { port }))
            .await
            .err()
            .expect("port in use");
        assert!(busy.to_string().contains(&format!("port {port}")), "{busy}");
        a.stop().await;
        start("c", &FaultSpec::LoadSink(SinkSpec { port }))
            .await
            .expect("port free after the stop")
            .stop()
            .await;
    }

    #[tokio::test]
    async fn fsync_load_syncs_at_its_rate_and_its_file_is_the_journaled_one() {
        let dir = std::env::temp_dir().join(format!("graydar-load-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let d = dir.to_string_lossy().into_owned();
        let spec = FaultSpec::Fsync(FsyncSpec {
            dir: d.clone(),
            block_bytes: 4096,
            per_second: 20,
        });
        let run = start("f-1", &spec).await.expect("fsync");
        assert!(fsync_path(&d, "f-1").exists());
        tokio::time::sleep(Duration::from_secs(1)).await;
        let s = run.stop().await;
        assert!((15..=25).contains(&s.ops), "{s}");
        assert_eq!(s.errors, 0, "{s}");
        // The engine removes the file at the revert; the load leaves it.
        std::fs::remove_dir_all(&dir).expect("cleanup");
        let missing = start("f-2", &spec).await.err().expect("no such directory");
        assert!(missing.to_string().contains(&d), "{missing}");
    }

    #[tokio::test]
    async fn bursts_start_on_the_shared_schedule() {
        let port = free_port();
        let sink = start("s", &FaultSpec::LoadSink(SinkSpec { port })).await.expect("sink");
        let now = graydar_common::timestamp::Timestamp::now().unix_ms();
        let spec = FaultSpec::Burst(BurstSpec {
            to: "127.0.0.1".into(),
            port,
            bytes: 100_000,
            every_ms: 1000,
            start_unix_ms: now + 300,
        });
        let run = start("b", &spec).await.expect("burst");
        tokio::time::sleep(Duration::from_millis(2600)).await;
        let s = run.stop().await;
        // Bursts at +0.3, +1.3, +2.3 s.
        assert_eq!(s.ops, 3, "{s}");
        assert_eq!(s.bytes, 300_000, "{s}");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(sink.stop().await.bytes, 300_000);
    }
}
