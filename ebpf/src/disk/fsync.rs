//! fsync / fdatasync latency per block device, as histograms in per-CPU maps.
//!
//! Attach points: the `syscalls:sys_enter_fsync`, `sys_enter_fdatasync` and
//! matching `sys_exit_*` tracepoints (classic tracepoints, one per syscall).
//! Not the raw `sys_enter`/`sys_exit` tracepoints: those run for *every*
//! system call on the host, and a filter on the syscall number would still
//! cost every read() and write() a program run. The offset of `fd` in the
//! enter record comes from tracefs (`events/syscalls/sys_enter_fsync/format`),
//! read by the agent at start.
//!
//! Attribution: at enter, the program walks
//! `current->files->fdt->fd[fd]->f_inode->i_sb->s_dev` with
//! bpf_probe_read_kernel (offsets from the running kernel's BTF; Rust eBPF
//! has no CO-RE) and keys the observation by that block device. s_dev is the
//! device the file system lives on (a partition, a dm device, a loop device),
//! so fsyncs are attributed exactly to the device whose slowness they show.
//! When s_dev is anonymous (major 0: btrfs, overlayfs, tmpfs, NFS) and the
//! super block has a backing `s_bdev`, its `bd_dev` is used instead;
//! otherwise the anonymous dev_t is kept and the agent labels it `_nodev`.
//! The fd-table walk is safe against races: every load goes through
//! bpf_probe_read_kernel (a freed table reads as garbage or fails, never
//! faults) and `fd < max_fds` is checked first; a failed read attributes the
//! fsync to device 0 (`_unknown`) and is counted.
//!
//! Hot path: enter does 6 kernel reads (the fd table down to the inode; the
//! inode's device comes from a per-CPU cache of recent inodes, so the super
//! block is read only for a new inode) and one lookup of the thread's entry,
//! which it overwrites in place (a hash insert only for a thread's first
//! call); exit does one lookup, marks the entry idle and updates one per-CPU
//! histogram. No map insert or delete per call, no per-event traffic to user
//! space. The agent deletes the idle entries of threads that are gone.

use aya_ebpf::{
    EbpfContext as _,
    helpers::{bpf_get_current_pid_tgid, bpf_get_current_task, bpf_get_current_task_btf, bpf_ktime_get_ns},
    macros::{map, tracepoint},
    maps::{HashMap, PerCpuArray, PerCpuHashMap},
    programs::TracePointContext,
};
use graydar_common::disk::{
    FsyncInflight, FsyncOffsets, HIST_MAP_ENTRIES, Hist, HistKey, INFLIGHT_ENTRIES, INODE_CACHE_SLOTS, InodeDev,
    dev_major, fsync_op, inode_cache_slot, stat,
};

/// Filled in by user space before load (`EbpfLoader::override_global`).
#[unsafe(no_mangle)]
static FSYNC_OFFSETS: FsyncOffsets = FsyncOffsets {
    tp_fd: 16,
    task_files: 0,
    files_fdt: 0,
    fdt_max_fds: 0,
    fdt_fd: 0,
    file_inode: 0,
    inode_sb: 0,
    sb_dev: 0,
    sb_bdev: u32::MAX,
    bdev_dev: 0,
};

/// One entry per thread that has called fsync/fdatasync, by thread id:
/// `start_ns` 0 when idle. Reused in place by the thread's next call (no
/// insert or delete per call; a plain preallocated hash, not an LRU, whose
/// insert takes a lock on its lists). The agent deletes the entries of
/// threads that are gone and of calls whose exit never came; a full table
/// counts the call as lost.
#[map]
static FSYNC_INFLIGHT: HashMap<u32, FsyncInflight> = HashMap::with_max_entries(INFLIGHT_ENTRIES, 0);

/// Per-CPU cache: the device of recently synced inodes, so the super block
/// is read only for an inode not seen lately on this CPU.
#[map]
static FSYNC_INODE_DEV: PerCpuArray<InodeDev> = PerCpuArray::with_max_entries(INODE_CACHE_SLOTS, 0);

#[map]
static FSYNC_HIST: PerCpuHashMap<HistKey, Hist> = PerCpuHashMap::with_max_entries(HIST_MAP_ENTRIES, 0);

#[map]
static FSYNC_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(stat::COUNT, 0);

/// One zeroed histogram, the template for new map entries (a `Hist` is too
/// big for the 512-byte eBPF stack).
#[map]
static FSYNC_ZERO: PerCpuArray<Hist> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
fn bump(index: u32) {
    crate::util::bump(&FSYNC_STATS, index)
}

#[inline(always)]
fn read<T>(addr: u64) -> Option<T> {
    crate::util::read(addr, &FSYNC_STATS, stat::READ_ERRORS)
}

/// Block device of the file behind `fd` of the current task, 0 when unknown.
#[inline(always)]
fn dev_of_fd(fd: u64, off: &FsyncOffsets) -> u32 {
    // SAFETY: bpf_get_current_task has no preconditions; the pointer is only
    // dereferenced through bpf_probe_read_kernel.
    let task = unsafe { bpf_get_current_task() };
    let Some(files) = read::<u64>(task + off.task_files as u64) else {
        return 0;
    };
    let Some(fdt) = read::<u64>(files + off.files_fdt as u64) else {
        return 0;
    };
    let Some(max_fds) = read::<u32>(fdt + off.fdt_max_fds as u64) else {
        return 0;
    };
    if fd >= max_fds as u64 {
        return 0;
    }
    let Some(array) = read::<u64>(fdt + off.fdt_fd as u64) else {
        return 0;
    };
    let Some(file) = read::<u64>(array + fd * 8) else {
        return 0;
    };
    if file == 0 {
        return 0;
    }
    let Some(inode) = read::<u64>(file + off.file_inode as u64) else {
        return 0;
    };
    dev_of_inode_cached(inode, off)
}

/// The same walk with BTF-typed loads: `bpf_get_current_task_btf` gives a
/// `struct task_struct *` the verifier knows, so `task->files->fdt` and the
/// table's `max_fds` and `fd` are direct, exception-table protected loads
/// (the offsets are constants to the verifier: a frozen read-only global),
/// not helper calls; `fd[fd]` and `file->f_inode` are still
/// bpf_probe_read_kernel (the array's element type is not a struct, so the
/// verifier types what it loads as a plain number). Two helper reads
/// instead of six.
#[inline(always)]
fn dev_of_fd_btf(fd: u64, off: &FsyncOffsets) -> u32 {
    // SAFETY: the helper has no preconditions; the loads below are of a
    // BTF-typed pointer, checked by the verifier against the kernel's
    // struct layouts; a fault reads as 0.
    unsafe {
        let task = bpf_get_current_task_btf() as *const u8;
        let files = *(task.add(off.task_files as usize) as *const *const u8);
        if files.is_null() {
            return 0;
        }
        let fdt = *(files.add(off.files_fdt as usize) as *const *const u8);
        if fdt.is_null() {
            return 0;
        }
        let max_fds = *(fdt.add(off.fdt_max_fds as usize) as *const u32);
        if fd >= max_fds as u64 {
            return 0;
        }
        let array = *(fdt.add(off.fdt_fd as usize) as *const u64);
        let Some(file) = read::<u64>(array + fd * 8) else {
            return 0;
        };
        if file == 0 {
            return 0;
        }
        let Some(inode) = read::<u64>(file + off.file_inode as u64) else {
            return 0;
        };
        dev_of_inode_cached(inode, off)
    }
}

/// The device of an inode, through this CPU's cache of recent inodes.
#[inline(always)]
fn dev_of_inode_cached(inode: u64, off: &FsyncOffsets) -> u32 {
    if inode == 0 {
        return 0;
    }
    let cache = FSYNC_INODE_DEV.get_ptr_mut(inode_cache_slot(inode));
    if let Some(c) = cache {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        let c = unsafe { &*c };
        if c.inode == inode {
            return c.dev;
        }
    }
    let dev = dev_of_inode(inode, off);
    if let Some(c) = cache {
        // SAFETY: as above.
        unsafe { *c = InodeDev { inode, dev, _pad: 0 } };
    }
    dev
}

/// The block device of an inode's file system: `i_sb->s_dev`, or the
/// backing device's for an anonymous s_dev.
#[inline(always)]
fn dev_of_inode(inode: u64, off: &FsyncOffsets) -> u32 {
    let Some(sb) = read::<u64>(inode + off.inode_sb as u64) else {
        return 0;
    };
    let dev = read::<u32>(sb + off.sb_dev as u64).unwrap_or(0);
    if dev_major(dev) == 0 && off.sb_bdev != u32::MAX {
        if let Some(bdev) = read::<u64>(sb + off.sb_bdev as u64)
            && bdev != 0
            && let Some(bd_dev) = read::<u32>(bdev + off.bdev_dev as u64)
        {
            return bd_dev;
        }
    }
    dev
}

#[inline(always)]
fn enter(ctx: &TracePointContext, op: u32) {
    // SAFETY: FSYNC_OFFSETS is a read-only global patched at load time; the
    // volatile read keeps the compiler from constant-folding the defaults.
    let off = unsafe { core::ptr::read_volatile(&FSYNC_OFFSETS) };
    // SAFETY: reading the tracepoint record at the offset tracefs gave.
    let fd: u64 = match unsafe { ctx.read_at::<u64>(off.tp_fd as usize) } {
        Ok(fd) => fd & 0xffff_ffff,
        Err(_) => {
            bump(stat::READ_ERRORS);
            return;
        }
    };
    record_enter(dev_of_fd(fd, &off), op);
}

/// The offset of `fd` in the sys_enter_fsync/fdatasync record on 64-bit
/// kernels (the 8-byte common header, `int __syscall_nr`, padding). The
/// typed programs load it straight from the context, which the verifier
/// allows only at a constant offset; elsewhere they read it like the others.
const TP_FD_OFFSET: u32 = 16;

#[inline(always)]
fn enter_btf(ctx: &TracePointContext, op: u32) {
    // SAFETY: as in `enter`.
    let off = unsafe { core::ptr::read_volatile(&FSYNC_OFFSETS) };
    let fd: u64 = if off.tp_fd == TP_FD_OFFSET {
        // SAFETY: a tracepoint program may load its record directly; 16 is
        // inside every sys_enter record (the verifier checks it).
        unsafe { *((ctx.as_ptr() as *const u8).add(TP_FD_OFFSET as usize) as *const u64) }
    } else {
        // SAFETY: reading the tracepoint record at the offset tracefs gave.
        match unsafe { ctx.read_at::<u64>(off.tp_fd as usize) } {
            Ok(fd) => fd,
            Err(_) => {
                bump(stat::READ_ERRORS);
                return;
            }
        }
    } & 0xffff_ffff;
    record_enter(dev_of_fd_btf(fd, &off), op);
}

/// Starts the current thread's call: its entry, overwritten in place.
#[inline(always)]
fn record_enter(dev: u32, op: u32) {
    let tid = bpf_get_current_pid_tgid() as u32;
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    let start_ns = unsafe { bpf_ktime_get_ns() };
    let call = FsyncInflight { start_ns, dev, op };
    match FSYNC_INFLIGHT.get_ptr_mut(&tid) {
        // SAFETY: a map value pointer, valid for this run; only this thread
        // (which is here, in its own system call) writes its entry.
        Some(p) => unsafe { *p = call },
        None => {
            if FSYNC_INFLIGHT.insert(&tid, &call, 0).is_err() {
                bump(stat::LOST);
            }
        }
    }
}

#[tracepoint(category = "syscalls", name = "sys_enter_fsync")]
pub fn fsync_enter(ctx: TracePointContext) -> u32 {
    enter(&ctx, fsync_op::FSYNC);
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_fdatasync")]
pub fn fdatasync_enter(ctx: TracePointContext) -> u32 {
    enter(&ctx, fsync_op::FDATASYNC);
    0
}

/// The typed variants of the two enter programs (see `dev_of_fd_btf`),
/// attached by the agent where the kernel accepts them (5.11+:
/// bpf_get_current_task_btf), the ones above otherwise.
#[tracepoint]
pub fn fsync_enter_btf(ctx: TracePointContext) -> u32 {
    enter_btf(&ctx, fsync_op::FSYNC);
    0
}

#[tracepoint]
pub fn fdatasync_enter_btf(ctx: TracePointContext) -> u32 {
    enter_btf(&ctx, fsync_op::FDATASYNC);
    0
}

/// Attached to both sys_exit_fsync and sys_exit_fdatasync: the in-flight
/// entry says which call it was.
#[tracepoint]
pub fn fsync_exit(_ctx: TracePointContext) -> u32 {
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let tid = bpf_get_current_pid_tgid() as u32;
    let Some(p) = FSYNC_INFLIGHT.get_ptr_mut(&tid) else {
        bump(stat::NO_START);
        return 0;
    };
    // SAFETY: valid map value pointer; only this thread writes its entry.
    let inflight = unsafe { *p };
    if inflight.start_ns == 0 {
        bump(stat::NO_START);
        return 0;
    }
    // SAFETY: as above. Idle until the thread's next call.
    unsafe { (*p).start_ns = 0 };
    let key = HistKey {
        dev: inflight.dev,
        op: inflight.op,
    };
    record(&key, now.saturating_sub(inflight.start_ns));
    0
}

#[inline(always)]
fn record(key: &HistKey, ns: u64) {
    crate::util::hist_record(&FSYNC_HIST, &FSYNC_ZERO, key, ns, &FSYNC_STATS, stat::LOST)
}
