//! What every probe needs: per-CPU statistics counters, kernel reads whose
//! failures are counted rather than ignored, and latency histograms.

use aya_ebpf::{
    helpers::bpf_probe_read_kernel,
    maps::{PerCpuArray, PerCpuHashMap},
};
use graydar_common::disk::{Hist, HistKey, hist_slot};

/// Adds 1 to slot `index` of a per-CPU statistics array.
#[inline(always)]
pub fn bump(stats: &PerCpuArray<u64>, index: u32) {
    if let Some(p) = stats.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *p += 1 };
    }
}

/// Reads a `T` at kernel address `addr`; a failed read bumps `stats[failed]`.
#[inline(always)]
pub fn read<T>(addr: u64, stats: &PerCpuArray<u64>, failed: u32) -> Option<T> {
    // SAFETY: bpf_probe_read_kernel validates the address; failures are counted.
    match unsafe { bpf_probe_read_kernel(addr as *const T) } {
        Ok(v) => Some(v),
        Err(_) => {
            bump(stats, failed);
            None
        }
    }
}

/// Adds one observation of `ns` to `key`'s per-CPU histogram in `hist`,
/// creating the entry from the zeroed template `zero[0]` (a `Hist` is too
/// big for the eBPF stack); a full map bumps `stats[lost]`.
#[inline(always)]
pub fn hist_record(
    hist: &PerCpuHashMap<HistKey, Hist>,
    zero: &PerCpuArray<Hist>,
    key: &HistKey,
    ns: u64,
    stats: &PerCpuArray<u64>,
    lost: u32,
) {
    let slot = hist_slot(ns);
    let h = match hist.get_ptr_mut(key) {
        Some(h) => h,
        None => {
            let Some(z) = zero.get_ptr(0) else {
                bump(stats, lost);
                return;
            };
            // SAFETY: `z` points to a map value, valid for the call.
            if hist.insert(key, unsafe { &*z }, 0).is_err() {
                bump(stats, lost);
                return;
            }
            match hist.get_ptr_mut(key) {
                Some(h) => h,
                None => {
                    bump(stats, lost);
                    return;
                }
            }
        }
    };
    // SAFETY: per-CPU value, no concurrent writer on this CPU; `slot` is
    // masked to the array's length by hist_slot.
    unsafe {
        (*h).slots[slot] += 1;
        (*h).sum_ns += ns;
    }
}
