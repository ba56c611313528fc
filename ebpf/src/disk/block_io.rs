//! Block request latency per device and operation class, from
//! `block_rq_issue` (the request goes to the driver) to `block_rq_complete`.
//!
//! Raw tracepoints: their arguments are the TP_PROTO, stable since 5.11
//! (`block_rq_issue(struct request *rq)`,
//! `block_rq_complete(struct request *rq, blk_status_t error, unsigned int nr_bytes)`),
//! whereas the classic records differ between kernels. The request pointer
//! keys an LRU hash from issue to completion (a request that never completes
//! is evicted, not leaked). The device is `rq->q->disk` (`major`,
//! `first_minor`), as the block tracepoints themselves report it; the
//! operation class comes from `rq->cmd_flags` with `REQ_OP_*` values and the
//! `REQ_PREFLUSH` / `REQ_FUA` bits read from the running kernel's BTF enums.
//!
//! Errors are counted from block_rq_complete's `error` argument (the same
//! status block_rq_error reports, which fires right after it in
//! blk_update_request), so one program covers both and kernels older than
//! the block_rq_error tracepoint too.
//!
//! Note: bio-based drivers (brd, dm, md) do not go through blk-mq requests,
//! so these tracepoints fire for the devices below them (a loop device, a
//! disk), not for the dm device itself; the fsync histogram covers those.

use aya_ebpf::{
    helpers::bpf_ktime_get_ns,
    macros::{map, raw_tracepoint},
    maps::{LruHashMap, PerCpuArray, PerCpuHashMap},
    programs::RawTracePointContext,
};
use graydar_common::disk::{BlockOffsets, HIST_MAP_ENTRIES, Hist, HistKey, INFLIGHT_ENTRIES, block_op, mkdev, stat};

/// Filled in by user space before load (`EbpfLoader::override_global`).
#[unsafe(no_mangle)]
static BLOCK_OFFSETS: BlockOffsets = BlockOffsets {
    rq_cmd_flags: 0,
    rq_q: u32::MAX,
    q_disk: 0,
    rq_disk: u32::MAX,
    disk_major: 0,
    disk_first_minor: 0,
    op_mask: 0xff,
    op_read: 0,
    op_write: 1,
    op_flush: 2,
    op_discard: 3,
    flag_preflush: 0,
    flag_fua: 0,
    _pad: 0,
};

/// Issue time by request pointer.
#[map]
static BLOCK_ISSUED: LruHashMap<u64, u64> = LruHashMap::with_max_entries(INFLIGHT_ENTRIES, 0);

#[map]
static BLOCK_HIST: PerCpuHashMap<HistKey, Hist> = PerCpuHashMap::with_max_entries(HIST_MAP_ENTRIES, 0);

/// Completions with a non-zero blk_status_t, by (device, op class).
#[map]
static BLOCK_ERRORS: PerCpuHashMap<HistKey, u64> = PerCpuHashMap::with_max_entries(HIST_MAP_ENTRIES, 0);

#[map]
static BLOCK_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(stat::COUNT, 0);

/// Zeroed template for new histogram entries (too big for the stack).
#[map]
static BLOCK_ZERO: PerCpuArray<Hist> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
fn bump(index: u32) {
    crate::util::bump(&BLOCK_STATS, index)
}

#[inline(always)]
fn read<T>(addr: u64) -> Option<T> {
    crate::util::read(addr, &BLOCK_STATS, stat::READ_ERRORS)
}

#[raw_tracepoint(tracepoint = "block_rq_issue")]
pub fn block_rq_issue(ctx: RawTracePointContext) -> i32 {
    let rq: u64 = ctx.arg(0);
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    if BLOCK_ISSUED.insert(&rq, &now, 0).is_err() {
        bump(stat::LOST);
    }
    0
}

#[inline(always)]
fn key_of(rq: u64, off: &BlockOffsets) -> HistKey {
    let flags = read::<u32>(rq + off.rq_cmd_flags as u64).unwrap_or(0);
    let code = flags & off.op_mask;
    let op = if code == off.op_flush || flags & off.flag_preflush != 0 {
        block_op::FLUSH
    } else if code == off.op_write {
        if flags & off.flag_fua != 0 {
            block_op::FUA
        } else {
            block_op::WRITE
        }
    } else if code == off.op_read {
        block_op::READ
    } else if code == off.op_discard {
        block_op::DISCARD
    } else {
        block_op::OTHER
    };
    let disk = if off.rq_q != u32::MAX {
        match read::<u64>(rq + off.rq_q as u64) {
            Some(q) if q != 0 => read::<u64>(q + off.q_disk as u64).unwrap_or(0),
            _ => 0,
        }
    } else if off.rq_disk != u32::MAX {
        read::<u64>(rq + off.rq_disk as u64).unwrap_or(0)
    } else {
        0
    };
    let dev = if disk == 0 {
        0
    } else {
        let major = read::<i32>(disk + off.disk_major as u64).unwrap_or(0) as u32;
        let minor = read::<i32>(disk + off.disk_first_minor as u64).unwrap_or(0) as u32;
        mkdev(major, minor)
    };
    HistKey { dev, op }
}

#[raw_tracepoint(tracepoint = "block_rq_complete")]
pub fn block_rq_complete(ctx: RawTracePointContext) -> i32 {
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let rq: u64 = ctx.arg(0);
    let error: u64 = ctx.arg(1);
    // blk_status_t is a u8.
    let error = error & 0xff;
    // SAFETY: BLOCK_OFFSETS is a read-only global patched at load time.
    let off = unsafe { core::ptr::read_volatile(&BLOCK_OFFSETS) };
    let start = match BLOCK_ISSUED.get_ptr(rq) {
        // SAFETY: valid map value pointer, copied before the delete.
        Some(p) => {
            let s = unsafe { *p };
            let _ = BLOCK_ISSUED.remove(rq);
            Some(s)
        }
        None => None,
    };
    if start.is_none() && error == 0 {
        bump(stat::NO_START);
        return 0;
    }
    let key = key_of(rq, &off);
    if error != 0 {
        match BLOCK_ERRORS.get_ptr_mut(key) {
            // SAFETY: per-CPU value, no concurrent writer on this CPU.
            Some(p) => unsafe { *p += 1 },
            None => {
                if BLOCK_ERRORS.insert(&key, &1, 0).is_err() {
                    bump(stat::LOST);
                }
            }
        }
    }
    if let Some(start) = start {
        record(&key, now.saturating_sub(start));
    } else {
        bump(stat::NO_START);
    }
    0
}

#[inline(always)]
fn record(key: &HistKey, ns: u64) {
    crate::util::hist_record(&BLOCK_HIST, &BLOCK_ZERO, key, ns, &BLOCK_STATS, stat::LOST)
}
