//! The fdatasync canary: for one directory, a dedicated thread writes 4 KiB
//! into a preallocated file and fdatasyncs it every interval.
//!
//! Why this shape (and not the chapter's create+unlink loop):
//! - The file is created once, filled with data and fsynced at start, so
//!   every later 4 KiB `pwrite` overwrites already-allocated, written blocks:
//!   `fdatasync` then has no metadata to commit (size and block map are
//!   unchanged; timestamps are skipped by fdatasync) and measures the data
//!   path and the device's cache flush — what a database's WAL sync waits
//!   for — not the journal's handling of a create/unlink.
//! - The call runs on its own OS thread (never a tokio worker), so a disk
//!   that hangs blocks only that thread. The thread publishes when its
//!   current call started; a watchdog (agent/src/signals/disk.rs) reads that and
//!   raises `disk_hung` the moment a call exceeds the stall limit, while the
//!   rest of the agent, /metrics included, keeps running.
//! - A hung thread is never joined: at shutdown it is abandoned.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Name of the canary file inside each configured directory.
pub const FILE_NAME: &str = ".graydar-canary";
/// Bytes written per sample.
pub const WRITE_SIZE: usize = 4096;
/// Slots of [`WRITE_SIZE`] the file holds; samples rotate through them.
const SLOTS: u64 = 16;

/// Shared between the canary thread and its watchdog. Times are nanoseconds
/// since `epoch` (monotonic), 0 meaning "none".
#[derive(Debug)]
pub struct CanaryState {
    epoch: Instant,
    /// When the call in progress started (write + fdatasync), 0 when idle.
    call_started: AtomicU64,
    /// When the last call finished (successfully or not).
    last_finished: AtomicU64,
    /// Duration of the last successful call.
    last_duration: AtomicU64,
    calls: AtomicU64,
    errors: AtomicU64,
    stop: AtomicBool,
}

impl CanaryState {
    fn new() -> Self {
        CanaryState {
            epoch: Instant::now(),
            call_started: AtomicU64::new(0),
            last_finished: AtomicU64::new(0),
            last_duration: AtomicU64::new(0),
            calls: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        }
    }

    fn now_ns(&self) -> u64 {
        // +1 so that "now" is never the 0 that means "none".
        u64::try_from(self.epoch.elapsed().as_nanos())
            .unwrap_or(u64::MAX)
            .saturating_add(1)
    }

    /// What the watchdog needs, read without blocking.
    pub fn status(&self) -> CanaryStatus {
        let now = self.now_ns();
        let started = self.call_started.load(Ordering::Acquire);
        let finished = self.last_finished.load(Ordering::Acquire);
        CanaryStatus {
            in_flight: (started != 0).then(|| Duration::from_nanos(now.saturating_sub(started))),
            since_last_finished: (finished != 0).then(|| Duration::from_nanos(now.saturating_sub(finished))),
            last_duration: Duration::from_nanos(self.last_duration.load(Ordering::Relaxed)),
            calls: self.calls.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
        }
    }
}

/// A snapshot of one canary for the watchdog and the metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CanaryStatus {
    /// Age of the call in progress, if any.
    pub in_flight: Option<Duration>,
    pub since_last_finished: Option<Duration>,
    pub last_duration: Duration,
    pub calls: u64,
    pub errors: u64,
}

/// Outcome of one write + fdatasync, reported to the callback.
pub type Outcome = Result<Duration, io::Error>;

pub struct Canary {
    pub dir: PathBuf,
    state: Arc<CanaryState>,
}

impl Canary {
    /// Starts the canary thread for `dir`. Only a cheap check runs here (the
    /// directory exists); the file is prepared on the canary thread itself,
    /// so a disk that hangs already at start cannot block the caller.
    /// `report` runs on the canary thread after every call.
    pub fn start(
        dir: &Path,
        interval: Duration,
        report: impl Fn(&Outcome) + Send + 'static,
    ) -> Result<Canary, io::Error> {
        if !dir.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{} is not a directory", dir.display()),
            ));
        }
        let state = Arc::new(CanaryState::new());
        let st = Arc::clone(&state);
        let name = format!("canary:{}", dir.display());
        let d = dir.to_owned();
        std::thread::Builder::new()
            .name(name.chars().take(15).collect())
            .spawn(move || run(&d, st, interval, report))?;
        Ok(Canary {
            dir: dir.to_owned(),
            state,
        })
    }

    pub fn status(&self) -> CanaryStatus {
        self.state.status()
    }

    /// Asks the thread to stop after its current call; never waits for it
    /// (it may be stuck in the kernel).
    pub fn stop(&self) {
        self.state.stop.store(true, Ordering::Release);
    }
}

impl Drop for Canary {
    fn drop(&mut self) {
        self.stop();
    }
}

fn prepare(dir: &Path) -> Result<File, io::Error> {
    let path = dir.join(FILE_NAME);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
        .open(&path)
        .map_err(|e| io::Error::new(e.kind(), format!("opening {}: {e}", path.display())))?;
    // Write every block once (no holes, no unwritten extents), then make it
    // durable with its metadata: later fdatasyncs only carry data.
    let block = vec![0u8; WRITE_SIZE];
    for slot in 0..SLOTS {
        file.write_all_at(&block, slot * WRITE_SIZE as u64)
            .map_err(|e| io::Error::new(e.kind(), format!("filling {}: {e}", path.display())))?;
    }
    file.sync_all()
        .map_err(|e| io::Error::new(e.kind(), format!("fsync {}: {e}", path.display())))?;
    Ok(file)
}

/// Runs `f` as one timed call: publishes its start for the watchdog.
fn timed<T>(st: &CanaryState, f: impl FnOnce() -> io::Result<T>) -> (io::Result<T>, u64) {
    let started = st.now_ns();
    st.call_started.store(started, Ordering::Release);
    let r = f();
    let finished = st.now_ns();
    st.call_started.store(0, Ordering::Release);
    st.last_finished.store(finished, Ordering::Release);
    (r, finished.saturating_sub(started))
}

fn run(dir: &Path, st: Arc<CanaryState>, interval: Duration, report: impl Fn(&Outcome)) {
    let mut block = vec![0u8; WRITE_SIZE];
    let mut n: u64 = 0;
    let mut file: Option<File> = None;
    while !st.stop.load(Ordering::Acquire) {
        let tick = Instant::now();
        let outcome = match &file {
            None => {
                // Preparing counts as a call too: a hung disk at start is
                // seen by the watchdog like any other stall.
                let (r, _) = timed(&st, || prepare(dir));
                match r {
                    Ok(f) => {
                        file = Some(f);
                        None
                    }
                    Err(e) => Some(Err(e)),
                }
            }
            Some(f) => {
                // Distinct content each time (a sequence number and a
                // timestamp), so no layer can skip the write as unchanged.
                block[..8].copy_from_slice(&n.to_le_bytes());
                block[8..16].copy_from_slice(&st.now_ns().to_le_bytes());
                let offset = (n % SLOTS) * WRITE_SIZE as u64;
                let (r, d) = timed(&st, || f.write_all_at(&block, offset).and_then(|()| f.sync_data()));
                st.calls.fetch_add(1, Ordering::Relaxed);
                n = n.wrapping_add(1);
                Some(r.map(|()| {
                    st.last_duration.store(d, Ordering::Relaxed);
                    Duration::from_nanos(d)
                }))
            }
        };
        if let Some(o) = outcome {
            if o.is_err() {
                st.errors.fetch_add(1, Ordering::Relaxed);
                // Reopen on the next round (the file may have been removed).
                file = None;
            }
            report(&o);
        }
        if let Some(rest) = interval.checked_sub(tick.elapsed()) {
            std::thread::sleep(rest);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn canary_writes_and_reports_durations() {
        let dir = tempfile::tempdir().expect("tempdir");
        let seen: Arc<Mutex<Vec<Duration>>> = Arc::default();
        let s2 = Arc::clone(&seen);
        let c = Canary::start(dir.path(), Duration::from_millis(20), move |o| {
            if let Ok(d) = o {
                s2.lock().expect("lock").push(*d);
            }
        })
        .expect("start");
        let deadline = Instant::now() + Duration::from_secs(10);
        while c.status().calls < 3 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        c.stop();
        let st = c.status();
        assert!(st.calls >= 3, "{st:?}");
        assert_eq!(st.errors, 0);
        assert!(seen.lock().expect("lock").len() >= 3);
        let meta = std::fs::metadata(dir.path().join(FILE_NAME)).expect("canary file");
        assert_eq!(meta.len(), SLOTS * WRITE_SIZE as u64, "preallocated, never grows");
    }

    #[test]
    fn a_missing_directory_fails_at_start() {
        let err = Canary::start(Path::new("/nonexistent/graydar"), Duration::from_secs(1), |_| {});
        assert!(err.is_err());
    }

    #[test]
    fn an_unwritable_directory_reports_errors_and_keeps_trying() {
        let dir = tempfile::tempdir().expect("tempdir");
        // A directory named like the canary file makes open() fail.
        std::fs::create_dir(dir.path().join(FILE_NAME)).expect("mkdir");
        let c = Canary::start(dir.path(), Duration::from_millis(10), |_| {}).expect("start");
        let deadline = Instant::now() + Duration::from_secs(10);
        while c.status().errors < 2 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(c.status().errors >= 2, "{:?}", c.status());
        assert_eq!(c.status().calls, 0);
    }
}
