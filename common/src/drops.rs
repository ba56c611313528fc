//! Kernel packet drops counted by the `kfree_skb` probe.

/// Key of the per-CPU drop counter map: one entry per
/// (network namespace, interface, drop reason).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DropKey {
    /// Inode number of the network namespace of `skb->dev` (0 when unknown).
    pub netns: u32,
    /// `skb->dev->ifindex`, 0 when the skb has no device.
    pub ifindex: u32,
    /// Numeric `enum skb_drop_reason`; names come from the running kernel's BTF.
    pub reason: u32,
    pub _pad: u32,
}

/// Kernel struct member offsets the probe needs. Rust eBPF has no CO-RE, so
/// user space reads them from the running kernel's BTF and hands them to the
/// program before load (see agent/src/btf.rs).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DropOffsets {
    /// offsetof(struct sk_buff, dev)
    pub skb_dev: u32,
    /// offsetof(struct net_device, ifindex)
    pub dev_ifindex: u32,
    /// offsetof(struct net_device, nd_net) (a `possible_net_t`, whose first member is `struct net *`);
    /// `u32::MAX` disables network-namespace attribution.
    pub dev_nd_net: u32,
    /// offsetof(struct net, ns) + offsetof(struct ns_common, inum)
    pub net_ns_inum: u32,
    /// Reason values that are not drops (SKB_CONSUMED, SKB_NOT_DROPPED_YET);
    /// `u32::MAX` when the kernel does not define them.
    pub reason_consumed: u32,
    pub reason_not_dropped_yet: u32,
}

/// Indexes into the probe's per-CPU `DROP_STATS` array. Events seen are not
/// counted on the hot path: user space derives them as drops recorded +
/// NOT_DROPS + LOST.
pub mod stat {
    /// Events filtered because their reason is not a drop.
    pub const NOT_DROPS: u32 = 0;
    /// Drops that could not be recorded because the map was full.
    pub const LOST: u32 = 1;
    /// Kernel reads (bpf_probe_read_kernel) that failed.
    pub const READ_ERRORS: u32 = 2;
    pub const COUNT: u32 = 3;
}

/// Per-CPU cache of the last device's network namespace, so a burst of drops
/// on one device costs two kernel reads (skb->dev, dev->ifindex) instead of
/// four. Keyed by the device pointer *and* its ifindex, so a freed device
/// whose memory is reused by a new one does not inherit its namespace.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct NetnsCache {
    pub dev: u64,
    pub ifindex: u32,
    pub netns: u32,
}

/// Capacity of the drop counter map.
pub const DROP_MAP_ENTRIES: u32 = 4096;

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain #[repr(C)] integers with explicit padding, valid for any bit pattern.
    unsafe impl aya::Pod for super::DropKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::DropOffsets {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::NetnsCache {}
}
