//! What every probe needs: per-CPU statistics counters and kernel reads
//! whose failures are counted rather than ignored.

use aya_ebpf::{helpers::bpf_probe_read_kernel, maps::PerCpuArray};

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
