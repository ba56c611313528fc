//! Kernel packet drops: raw tracepoint on `kfree_skb`.
//!
//! A raw tracepoint (not a classic one) because its arguments are the
//! tracepoint's TP_PROTO, stable across kernels (skb = 0, location = 1,
//! reason = 2 on 5.17+), whereas the classic tracepoint record layout differs
//! between kernel versions and would have to be parsed from tracefs.
//! Struct offsets (skb->dev, dev->ifindex, ...) come from user space, which
//! reads them from the running kernel's BTF: Rust eBPF has no CO-RE.
//!
//! Hot path (measured by `cargo xtask bench`): two kernel reads, a per-CPU
//! cache check for the namespace, one per-CPU hash update; no per-event
//! traffic to user space and no event counter (user space derives it).

use aya_ebpf::{
    macros::{btf_tracepoint, map, raw_tracepoint},
    maps::{PerCpuArray, PerCpuHashMap},
    programs::{BtfTracePointContext, RawTracePointContext},
};
use graydar_common::drops::{DROP_MAP_ENTRIES, DropKey, DropOffsets, NetnsCache, stat};

/// Filled in by user space before load (`EbpfLoader::override_global`).
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

#[map]
static NETNS_CACHE: PerCpuArray<NetnsCache> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
fn bump(index: u32) {
    crate::util::bump(&DROP_STATS, index)
}

#[inline(always)]
fn read<T>(addr: u64) -> Option<T> {
    crate::util::read(addr, &DROP_STATS, stat::READ_ERRORS)
}

#[inline(always)]
fn netns_of(dev: u64, ifindex: u32, off: &DropOffsets) -> u32 {
    if off.dev_nd_net == u32::MAX {
        return 0;
    }
    let cache = NETNS_CACHE.get_ptr_mut(0);
    if let Some(c) = cache {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        let c = unsafe { &*c };
        if c.dev == dev && c.ifindex == ifindex {
            return c.netns;
        }
    }
    let netns = match read::<u64>(dev + off.dev_nd_net as u64) {
        Some(net) if net != 0 => read::<u32>(net + off.net_ns_inum as u64).unwrap_or(0),
        _ => 0,
    };
    if let Some(c) = cache {
        // SAFETY: as above.
        unsafe { *c = NetnsCache { dev, ifindex, netns } };
    }
    netns
}

/// Preferred: a BTF-typed tracepoint, where the verifier knows `skb` is a
/// `struct sk_buff *` and lets the program load `skb->dev->ifindex` directly
/// (exception-table protected loads) instead of calling
/// bpf_probe_read_kernel twice. User space falls back to the raw tracepoint
/// below when the kernel refuses it.
#[btf_tracepoint(function = "kfree_skb")]
pub fn kfree_skb_btf(ctx: BtfTracePointContext) -> i32 {
    // SAFETY: DROP_OFFSETS is a read-only, frozen global patched at load
    // time, so the verifier sees the offsets as constants.
    let off = unsafe { core::ptr::read_volatile(&DROP_OFFSETS) };
    let reason: u64 = ctx.arg(2);
    let reason = reason as u32;
    if reason == off.reason_consumed || reason == off.reason_not_dropped_yet {
        bump(stat::NOT_DROPS);
        return 0;
    }
    let skb: *const u8 = ctx.arg(0);
    let mut key = DropKey {
        netns: 0,
        ifindex: 0,
        reason,
        _pad: 0,
    };
    // SAFETY: BTF-typed pointer loads; the verifier checks each against the
    // kernel's struct layout and faults read as 0.
    let dev: *const u8 = unsafe { *(skb.add(off.skb_dev as usize) as *const *const u8) };
    if !dev.is_null() {
        // SAFETY: as above.
        key.ifindex = unsafe { *(dev.add(off.dev_ifindex as usize) as *const i32) } as u32;
        key.netns = netns_of(dev as u64, key.ifindex, &off);
    }
    count(&key);
    0
}

#[raw_tracepoint(tracepoint = "kfree_skb")]
pub fn kfree_skb(ctx: RawTracePointContext) -> i32 {
    // SAFETY: DROP_OFFSETS is a read-only global patched at load time; the
    // volatile read keeps the compiler from constant-folding the defaults.
    let off = unsafe { core::ptr::read_volatile(&DROP_OFFSETS) };
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
    let dev = read::<u64>(skb + off.skb_dev as u64).unwrap_or(0);
    if dev != 0 {
        key.ifindex = read::<i32>(dev + off.dev_ifindex as u64).map(|i| i as u32).unwrap_or(0);
        key.netns = netns_of(dev, key.ifindex, &off);
    }
    count(&key);
    0
}

#[inline(always)]
fn count(key: &DropKey) {
    match DROPS.get_ptr_mut(key) {
        // SAFETY: per-CPU value, no concurrent writer on this CPU.
        Some(p) => unsafe { *p += 1 },
        None => {
            if DROPS.insert(key, &1, 0).is_err() {
                bump(stat::LOST);
            }
        }
    }
}
