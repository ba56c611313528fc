//! Throwaway block devices for the disk tests: a loop device over a sparse
//! file, an ext4 file system mounted on it, guards that unmount and detach
//! on drop (also when the test panics).
//!
//! Tools are called by absolute path: in the test VM busybox applets of the
//! same name come first in PATH and lack the options used here.

use std::os::fd::AsRawFd as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::netns::{require_root, run};

pub const LOSETUP: &str = "/usr/sbin/losetup";
pub const MKFS_EXT4: &str = "/usr/sbin/mkfs.ext4";
pub const DMSETUP: &str = "/usr/sbin/dmsetup";

/// `dmsetup args...` with udev off (nothing in the test VM answers its
/// cookies); stdout, panicking with stderr when it fails.
pub fn dmsetup(args: &[&str]) -> String {
    let out = std::process::Command::new(DMSETUP)
        .args(args)
        .env("DM_DISABLE_UDEV", "1")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {DMSETUP}: {e}"));
    assert!(
        out.status.success(),
        "dmsetup {} failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A loop device over a sparse file in a temporary directory.
pub struct LoopDev {
    /// `/dev/loopN`
    pub path: String,
    /// `loopN` (the kernel's name, as in metrics labels)
    pub name: String,
    _dir: tempfile::TempDir,
}

impl LoopDev {
    /// A `size_mib` MiB loop device; the backing file lives under `parent`
    /// (`/dev/shm` keeps the host's disk out of the test).
    pub fn new(parent: &Path, size_mib: u64) -> LoopDev {
        require_root();
        let dir = tempfile::Builder::new()
            .prefix("graydar-loop")
            .tempdir_in(parent)
            .unwrap_or_else(|e| panic!("temp dir under {}: {e}", parent.display()));
        let backing = dir.path().join("backing.img");
        let f = std::fs::File::create(&backing).expect("create the loop backing file");
        f.set_len(size_mib * 1024 * 1024).expect("size the loop backing file");
        drop(f);
        let out = run(
            LOSETUP,
            ["--find", "--show"]
                .iter()
                .map(|s| s.to_string())
                .chain([backing.display().to_string()]),
        );
        let path = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        assert!(path.starts_with("/dev/loop"), "losetup printed {path:?}");
        let name = path.trim_start_matches("/dev/").to_owned();
        LoopDev { path, name, _dir: dir }
    }

    /// `major:minor` of the device.
    pub fn dev_numbers(&self) -> (u32, u32) {
        dev_numbers(&self.path)
    }
}

impl Drop for LoopDev {
    fn drop(&mut self) {
        let _ = std::process::Command::new(LOSETUP).args(["-d", &self.path]).status();
    }
}

/// `major:minor` of a block device node.
pub fn dev_numbers(path: &str) -> (u32, u32) {
    use std::os::unix::fs::MetadataExt as _;
    let rdev = std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("stat {path}: {e}"))
        .rdev();
    (libc::major(rdev), libc::minor(rdev))
}

/// An ext4 file system made on `dev` and mounted on a fresh directory;
/// unmounted on drop.
pub struct Ext4Mount {
    pub dir: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Ext4Mount {
    pub fn new(dev: &str) -> Ext4Mount {
        require_root();
        run(MKFS_EXT4, ["-q", "-F", "-E", "nodiscard", dev]);
        let tmp = tempfile::Builder::new()
            .prefix("graydar-mnt")
            .tempdir()
            .expect("mount point");
        let dir = tmp.path().to_owned();
        nix::mount::mount(
            Some(dev),
            &dir,
            Some("ext4"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .unwrap_or_else(|e| panic!("mount -t ext4 {dev} {}: {e}", dir.display()));
        Ext4Mount { dir, _tmp: tmp }
    }
}

impl Drop for Ext4Mount {
    fn drop(&mut self) {
        if nix::mount::umount(&self.dir).is_err() {
            let _ = nix::mount::umount2(&self.dir, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

/// Opens (creating) `path`, writes 4 KiB and calls fdatasync (or fsync)
/// `n` times on it, returning how many calls succeeded.
pub fn sync_calls(path: &Path, n: usize, data_only: bool) -> usize {
    use std::io::Write as _;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let block = [0x42u8; 4096];
    let mut ok = 0;
    for _ in 0..n {
        f.write_all(&block).expect("write 4 KiB");
        // SAFETY: plain syscalls on an open descriptor.
        let r = unsafe {
            if data_only {
                libc::fdatasync(f.as_raw_fd())
            } else {
                libc::fsync(f.as_raw_fd())
            }
        };
        if r == 0 {
            ok += 1;
        }
    }
    ok
}

/// A paced writer: 4 KiB + fdatasync every `every` in `dir`, until dropped.
pub struct SyncLoad {
    stop: Arc<AtomicBool>,
    /// Calls made so far.
    pub calls: Arc<AtomicU64>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl SyncLoad {
    pub fn start(dir: &Path, every: Duration) -> SyncLoad {
        let stop = Arc::new(AtomicBool::new(false));
        let calls = Arc::new(AtomicU64::new(0));
        let (s, c) = (Arc::clone(&stop), Arc::clone(&calls));
        let path = dir.join("wal");
        let handle = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let t = Instant::now();
                sync_calls(&path, 1, true);
                c.fetch_add(1, Ordering::Relaxed);
                if let Some(rest) = every.checked_sub(t.elapsed()) {
                    std::thread::sleep(rest);
                }
            }
        });
        SyncLoad {
            stop,
            calls,
            handle: Some(handle),
        }
    }
}

impl Drop for SyncLoad {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
