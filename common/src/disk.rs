//! Disk latency: fsync/fdatasync (syscall tracepoints) and block requests
//! (`block_rq_issue` → `block_rq_complete`), kept as histograms in per-CPU
//! kernel maps by ebpf/src/disk/fsync.rs and ebpf/src/disk/block_io.rs.
//!
//! Buckets: the programs bucket each latency against [`HIST_BOUNDS_NS`], a
//! fixed 1-1.25-1.5-2-2.5-3-4-5-6-7.5 grid per decade from 10 µs to 10 s
//! (about 25 % resolution), found by a 6-step binary search. The grid
//! contains every bucket bound the agent exports to Prometheus (50 µs … 10 s),
//! so the exported `_bucket` counts are exact, and the detectors' thresholds
//! (50 ms, 100 ms) are grid points, so "p99 ≥ 50 ms" is decided exactly.

/// Number of histogram slots (a power of two for the binary search). Slot
/// `i` counts latencies `v` with `HIST_BOUNDS_NS[i-1] < v <= HIST_BOUNDS_NS[i]`;
/// slot [`HIST_OVERFLOW`] counts those above 10 s. Slots after it stay 0.
pub const HIST_SLOTS: usize = 64;
/// Bounds actually used (the rest of [`HIST_BOUNDS_NS`] is padding).
pub const HIST_USED_BOUNDS: usize = 61;
/// Slot of latencies above the last bound (10 s).
pub const HIST_OVERFLOW: usize = HIST_USED_BOUNDS;

const fn grid() -> [u64; HIST_SLOTS] {
    // Steps per decade, in tenths of the decade's base.
    const STEPS: [u64; 10] = [10, 12, 15, 20, 25, 30, 40, 50, 60, 75];
    let mut out = [u64::MAX; HIST_SLOTS];
    let mut base = 1_000u64; // 10 µs = 1000 * 10 ns
    let mut d = 0;
    let mut i = 0;
    while d < 6 {
        let mut s = 0;
        while s < 10 {
            // 12 stands for 1.25: handled below.
            out[i] = if STEPS[s] == 12 {
                base * 125 / 10
            } else {
                base * STEPS[s]
            };
            i += 1;
            s += 1;
        }
        base *= 10;
        d += 1;
    }
    out[i] = base * 10; // 10 s
    out
}

/// Upper bounds of the histogram slots in nanoseconds (sorted; padded with
/// `u64::MAX`).
pub const HIST_BOUNDS_NS: [u64; HIST_SLOTS] = grid();

/// Slot of a latency of `ns` nanoseconds: the number of bounds below it.
/// Branch-light and loop-free after unrolling, so the verifier accepts it.
#[inline(always)]
pub fn hist_slot(ns: u64) -> usize {
    let mut i = 0usize;
    let mut step = HIST_SLOTS / 2;
    while step > 0 {
        // `& (HIST_SLOTS - 1)` keeps the index provably in bounds.
        if HIST_BOUNDS_NS[(i + step - 1) & (HIST_SLOTS - 1)] < ns {
            i += step;
        }
        step /= 2;
    }
    i & (HIST_SLOTS - 1)
}

/// One latency histogram (per CPU in the kernel; summed by user space).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Hist {
    pub slots: [u64; HIST_SLOTS],
    /// Sum of all latencies, nanoseconds.
    pub sum_ns: u64,
}

impl Default for Hist {
    fn default() -> Self {
        Hist {
            slots: [0; HIST_SLOTS],
            sum_ns: 0,
        }
    }
}

/// Key of the histogram and error maps: a device and an operation.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HistKey {
    /// Kernel-internal dev_t: `major << 20 | minor` (`MKDEV` in the kernel).
    pub dev: u32,
    /// [`fsync_op`] or [`block_op`] value.
    pub op: u32,
}

/// Major number of a kernel-internal dev_t.
pub const fn dev_major(dev: u32) -> u32 {
    dev >> 20
}
/// Minor number of a kernel-internal dev_t.
pub const fn dev_minor(dev: u32) -> u32 {
    dev & 0xf_ffff
}
/// Kernel-internal dev_t of `major:minor`.
pub const fn mkdev(major: u32, minor: u32) -> u32 {
    (major << 20) | (minor & 0xf_ffff)
}

/// Operations of the fsync histogram.
pub mod fsync_op {
    pub const FSYNC: u32 = 0;
    pub const FDATASYNC: u32 = 1;
    pub const NAMES: [&str; 2] = ["fsync", "fdatasync"];
}

/// Operation classes of the block histogram. Flush and FUA requests are what
/// an fsync waits for, so they are counted apart from plain writes.
pub mod block_op {
    pub const READ: u32 = 0;
    pub const WRITE: u32 = 1;
    /// `REQ_OP_FLUSH`, or any request carrying `REQ_PREFLUSH`.
    pub const FLUSH: u32 = 2;
    /// A write with `REQ_FUA` (forced unit access) and no preflush.
    pub const FUA: u32 = 3;
    pub const DISCARD: u32 = 4;
    pub const OTHER: u32 = 5;
    pub const NAMES: [&str; 6] = ["read", "write", "flush", "fua", "discard", "other"];
}

/// An fsync/fdatasync between its enter and exit tracepoints, by thread id.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct FsyncInflight {
    /// bpf_ktime_get_ns() at enter.
    pub start_ns: u64,
    pub dev: u32,
    pub op: u32,
}

/// What the fsync programs need from the running kernel, read from its BTF
/// and tracefs by the agent (Rust eBPF has no CO-RE).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FsyncOffsets {
    /// Offset of `fd` in the sys_enter_fsync/fdatasync record (tracefs format).
    pub tp_fd: u32,
    /// task_struct.files
    pub task_files: u32,
    /// files_struct.fdt
    pub files_fdt: u32,
    /// fdtable.max_fds
    pub fdt_max_fds: u32,
    /// fdtable.fd
    pub fdt_fd: u32,
    /// file.f_inode
    pub file_inode: u32,
    /// inode.i_sb
    pub inode_sb: u32,
    /// super_block.s_dev
    pub sb_dev: u32,
    /// super_block.s_bdev; `u32::MAX` when unknown. Followed only when
    /// s_dev is anonymous (major 0: btrfs, ...).
    pub sb_bdev: u32,
    /// block_device.bd_dev
    pub bdev_dev: u32,
}

/// What the block programs need from the running kernel (BTF).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockOffsets {
    /// request.cmd_flags
    pub rq_cmd_flags: u32,
    /// request.q (5.15+ path to the disk: rq->q->disk); `u32::MAX` to use rq_disk.
    pub rq_q: u32,
    /// request_queue.disk
    pub q_disk: u32,
    /// request.rq_disk (kernels before 5.16); `u32::MAX` when absent.
    pub rq_disk: u32,
    /// gendisk.major
    pub disk_major: u32,
    /// gendisk.first_minor
    pub disk_first_minor: u32,
    /// `(1 << REQ_OP_BITS) - 1`
    pub op_mask: u32,
    pub op_read: u32,
    pub op_write: u32,
    pub op_flush: u32,
    pub op_discard: u32,
    /// `1 << __REQ_PREFLUSH`
    pub flag_preflush: u32,
    /// `1 << __REQ_FUA`
    pub flag_fua: u32,
    pub _pad: u32,
}

/// Indexes of the per-CPU statistics arrays of both probes.
pub mod stat {
    /// Exit (or completion) without a matching enter (or issue): started
    /// before the probe attached, or evicted from the map.
    pub const NO_START: u32 = 0;
    /// Observations that could not be recorded (map full).
    pub const LOST: u32 = 1;
    /// Failed kernel reads (bpf_probe_read_kernel).
    pub const READ_ERRORS: u32 = 2;
    pub const COUNT: u32 = 3;
}

/// Capacity of the histogram maps ((device, op) pairs).
pub const HIST_MAP_ENTRIES: u32 = 256;
/// Capacity of the in-flight maps: the block probes' LRU of issued
/// requests, and the fsync probe's table of threads (an entry per thread
/// that has synced, idle between calls; the agent deletes those of threads
/// that are gone).
pub const INFLIGHT_ENTRIES: u32 = 8192;

/// Slots of the fsync probe's per-CPU inode → device cache (a power of two).
pub const INODE_CACHE_SLOTS: u32 = 16;

/// One slot of the fsync probe's per-CPU inode → device cache. An inode's
/// super block never changes while the inode lives; a freed inode whose
/// address is reused by another file system's inode before the slot is
/// replaced would be misattributed, which needs the synced file to be
/// evicted from the inode cache between two syncs on the same CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct InodeDev {
    /// Kernel address of the inode, 0 for an empty slot.
    pub inode: u64,
    pub dev: u32,
    pub _pad: u32,
}

/// The cache slot of an inode address (inodes are slab objects of several
/// hundred bytes: the low bits carry nothing).
#[inline(always)]
pub fn inode_cache_slot(inode: u64) -> u32 {
    (((inode >> 8) ^ (inode >> 16)) as u32) & (INODE_CACHE_SLOTS - 1)
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain #[repr(C)] integers without implicit padding, valid for any bit pattern.
    unsafe impl aya::Pod for super::Hist {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::HistKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FsyncInflight {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FsyncOffsets {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::BlockOffsets {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_contains_the_prometheus_bounds_and_is_sorted() {
        for w in HIST_BOUNDS_NS.windows(2) {
            assert!(w[0] < w[1] || w[1] == u64::MAX, "{w:?}");
        }
        assert_eq!(HIST_BOUNDS_NS[0], 10_000);
        assert_eq!(HIST_BOUNDS_NS[HIST_USED_BOUNDS - 1], 10_000_000_000);
        assert_eq!(HIST_BOUNDS_NS[HIST_USED_BOUNDS], u64::MAX);
        for b in [
            50_000u64,
            100_000,
            250_000,
            500_000,
            1_000_000,
            2_500_000,
            5_000_000,
            10_000_000,
            25_000_000,
            50_000_000,
            100_000_000,
            250_000_000,
            500_000_000,
            1_000_000_000,
            2_500_000_000,
            5_000_000_000,
            10_000_000_000,
        ] {
            assert!(HIST_BOUNDS_NS.contains(&b), "{b} missing");
        }
        assert!(HIST_BOUNDS_NS.contains(&12_500_000));
    }

    #[test]
    fn slot_is_the_first_bound_not_below_the_value() {
        assert_eq!(hist_slot(0), 0);
        assert_eq!(hist_slot(10_000), 0);
        assert_eq!(hist_slot(10_001), 1);
        for (i, b) in HIST_BOUNDS_NS[..HIST_USED_BOUNDS].iter().enumerate() {
            assert_eq!(hist_slot(*b), i, "bound {b}");
            assert_eq!(hist_slot(*b + 1), i + 1, "bound {b} + 1");
        }
        assert_eq!(hist_slot(u64::MAX - 1), HIST_OVERFLOW);
        assert_eq!(
            hist_slot(50_000_000),
            HIST_BOUNDS_NS.iter().position(|b| *b == 50_000_000).unwrap_or(99)
        );
    }

    #[test]
    fn dev_encoding_matches_the_kernel() {
        let d = mkdev(259, 3);
        assert_eq!((dev_major(d), dev_minor(d)), (259, 3));
        assert_eq!(mkdev(7, 0), 7 << 20);
    }
}
