//! Write + fdatasync at a rate, to one preallocated file: what a database's
//! commit does to its device, so a dm-delay on it shows in fsync_latency.
//! The syncs run on a blocking thread (fdatasync blocks for as long as the
//! device takes); the stop flag is checked between syncs.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use graydar_common::load::Pacer;
use tokio::sync::watch;

use super::{LoadError, Stats};

/// Blocks the file cycles over (the file is this many blocks long).
const BLOCKS: u64 = 16;

pub struct Writer {
    file: File,
    path: PathBuf,
    block: Vec<u8>,
}

impl Writer {
    /// Creates (or truncates) `path` and writes it full once.
    pub fn create(path: &Path, block_bytes: u32) -> Result<Writer, LoadError> {
        let err = |source| LoadError::File {
            path: path.display().to_string(),
            source,
        };
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(path)
            .map_err(err)?;
        let block = vec![0x42u8; block_bytes as usize];
        for i in 0..BLOCKS {
            file.write_all_at(&block, i * u64::from(block_bytes)).map_err(err)?;
        }
        file.sync_all().map_err(err)?;
        Ok(Writer {
            file,
            path: path.to_owned(),
            block,
        })
    }
}

pub async fn run(w: Writer, per_second: u32, stats: Arc<Stats>, mut stopped: watch::Receiver<bool>) {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let thread = tokio::task::spawn_blocking(move || sync_loop(&w, per_second, &stats, &flag));
    let _ = stopped.wait_for(|s| *s).await;
    stop.store(true, Ordering::Relaxed);
    let _ = thread.await;
}

fn sync_loop(w: &Writer, per_second: u32, stats: &Stats, stop: &AtomicBool) {
    let start = Instant::now();
    let mut p = Pacer::new(f64::from(per_second), 1.0, start.elapsed());
    let len = w.block.len() as u64;
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        if p.take(start.elapsed(), 1) == 0 {
            std::thread::sleep(
                p.wait(start.elapsed())
                    .clamp(Duration::from_micros(100), Duration::from_millis(50)),
            );
            continue;
        }
        let ok = w.file.write_all_at(&w.block, (i % BLOCKS) * len).is_ok() && w.file.sync_data().is_ok();
        i += 1;
        if ok {
            stats.synced(len);
        } else {
            stats.error();
            tracing::debug!(path = %w.path.display(), "fsync load: a write or sync failed");
        }
    }
}
