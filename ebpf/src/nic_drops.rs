//! Kernel packet drops: raw tracepoint on `kfree_skb`.
//!
//! A raw tracepoint (not a classic one) because its arguments are the
//! tracepoint's TP_PROTO, stable across kernels (skb = 0, location = 1,
//! reason = 2 on 5.17+), whereas the classic tracepoint record layout differs
//! between kernel versions and would have to be parsed from tracefs.
//! Struct offsets (skb->dev, dev->ifindex, ...) come from user space, which
//! reads them from the running kernel's BTF: Rust eBPF has no CO-RE.
//!
//! Hot path cost: three or four probe reads and one per-CPU hash update; no
//! per-event traffic to user space.

use aya_ebpf::{
    helpers::bpf_probe_read_kernel,
    macros::{map, raw_tracepoint},
    maps::{PerCpuArray, PerCpuHashMap},
    programs::RawTracePointContext,
};
use graydar_common::drops::{DROP_MAP_ENTRIES, DropKey, DropOffsets, stat};

/// Filled in by user space before load (`EbpfLoader::set_global`).
#[unsafe(no_mangle)]
static DROP_OFFSETS: DropOffsets = DropOffsets {
    skb_dev: 0,
    dev_ifindex: 0,
    dev_nd_net: u32::MAX,
    net_ns_inum: 0,
    reason_consumed: u32::MAX,
    reason_not_dropped_yet: u32::MAX,
};

#[map]
static DROPS: PerCpuHashMap<DropKey, u64> = PerCpuHashMap::with_max_entries(DROP_MAP_ENTRIES, 0);

#[map]
static DROP_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(stat::COUNT, 0);

#[inline(always)]
fn bump(index: u32) {
    if let Some(p) = DROP_STATS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *p += 1 };
    }
}

#[raw_tracepoint(tracepoint = "kfree_skb")]
pub fn kfree_skb(ctx: RawTracePointContext) -> i32 {
    // SAFETY: DROP_OFFSETS is a read-only global patched at load time; the
    // volatile read keeps the compiler from constant-folding the defaults.
    let off = unsafe { core::ptr::read_volatile(&DROP_OFFSETS) };
    bump(stat::EVENTS);
    let reason: u64 = ctx.arg(2);
    let reason = reason as u32;
    if reason == off.reason_consumed || reason == off.reason_not_dropped_yet {
        bump(stat::NOT_DROPS);
        return 0;
    }
    let skb: u64 = ctx.arg(0);
    let mut key = DropKey {
        netns: 0,
        ifindex: 0,
        reason,
        _pad: 0,
    };
    // SAFETY: bpf_probe_read_kernel validates the address; failures are counted.
    let dev = match unsafe { bpf_probe_read_kernel((skb + off.skb_dev as u64) as *const u64) } {
        Ok(d) => d,
        Err(_) => {
            bump(stat::READ_ERRORS);
            0
        }
    };
    if dev != 0 {
        // SAFETY: as above.
        match unsafe { bpf_probe_read_kernel((dev + off.dev_ifindex as u64) as *const i32) } {
            Ok(i) => key.ifindex = i as u32,
            Err(_) => bump(stat::READ_ERRORS),
        }
        if off.dev_nd_net != u32::MAX {
            // SAFETY: as above.
            match unsafe { bpf_probe_read_kernel((dev + off.dev_nd_net as u64) as *const u64) } {
                Ok(net) if net != 0 => {
                    // SAFETY: as above.
                    match unsafe { bpf_probe_read_kernel((net + off.net_ns_inum as u64) as *const u32) } {
                        Ok(inum) => key.netns = inum,
                        Err(_) => bump(stat::READ_ERRORS),
                    }
                }
                Ok(_) => {}
                Err(_) => bump(stat::READ_ERRORS),
            }
        }
    }
    match DROPS.get_ptr_mut(&key) {
        // SAFETY: per-CPU value, no concurrent writer on this CPU.
        Some(p) => unsafe { *p += 1 },
        None => {
            if DROPS.insert(&key, &1, 0).is_err() {
                bump(stat::LOST);
            }
        }
    }
    0
}
