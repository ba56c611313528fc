//! TCP incast signals shared by the eBPF programs in ebpf/src/incast.rs and the
//! agent (agent/src/probes/incast/fanin.rs).
//!
//! Fan-in is counted per *receiving endpoint*: the local address and, when
//! the local port is a server port (outside the ephemeral range), that port;
//! data toward ephemeral ports (an aggregator that opened the connections
//! itself) is counted per local address with port 0. Senders are remote
//! *addresses*: several connections from one host are one sender.

/// Number of counting grids: a short (1 ms) and a long (W, 10 ms by default)
/// bucket width, each as two grids offset by half a width, so a burst no
/// longer than half a width always falls inside one bucket of one grid.
pub const GRIDS: usize = 4;
/// Grid indexes: short A/B, long A/B.
pub const GRID_SHORT_A: usize = 0;
pub const GRID_LONG_A: usize = 2;

/// Bins of the per-endpoint histogram of distinct senders per closed long
/// bucket: 1, 2, 3-4, 5-8, 9-16, 17-32, 33-64, 65 and more.
pub const HIST_BINS: usize = 8;

/// Upper bound of histogram bin `i` (the last bin is open).
pub const HIST_UPPER: [u32; HIST_BINS] = [1, 2, 4, 8, 16, 32, 64, u32::MAX];

/// Capacity of the endpoint table (local address, port class).
pub const FANIN_ENDPOINT_ENTRIES: u32 = 1024;
/// Capacity of the LRU table of (endpoint, sender address).
pub const FANIN_SENDER_ENTRIES: u32 = 16384;
/// Capacity of the retransmission table (per netns, remote address, kind).
pub const RETRANS_ENTRIES: u32 = 4096;

/// `EndpointKey::family` / `SenderKey` address families (AF_INET, AF_INET6).
pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

/// A receiving endpoint. IPv4 addresses use `addr[0]` (network byte order as
/// loaded from the packet), the rest zero.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct EndpointKey {
    pub addr: [u32; 4],
    /// Local port in host byte order; 0 for the ephemeral (client) side.
    pub port: u16,
    pub family: u16,
}

/// One remote sender of one endpoint.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SenderKey {
    pub ep: EndpointKey,
    pub saddr: [u32; 4],
}

/// `SenderState::flags`: the last data segment from this sender had PSH set,
/// i.e. it ended a write; a gap after a segment *without* PSH means the
/// sender had more to send and was waiting (for ACKs, a window, a timeout).
pub const SENDER_LAST_PSH: u16 = 1;
/// `SenderState::next_seq` is valid (set by an earlier segment of the same
/// connection, i.e. the same remote port).
pub const SENDER_SEQ_VALID: u16 = 2;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SenderState {
    /// bpf_ktime_get_ns of the last data segment, 0 before the first.
    pub last_ns: u64,
    /// Bucket of each grid in which this sender was last counted.
    pub bucket: [u32; GRIDS],
    /// Remote port of the last data segment (host byte order).
    pub sport: u16,
    pub flags: u16,
    /// Highest sequence number seen + 1 (end of the highest segment) of
    /// the connection from `sport`.
    pub next_seq: u32,
    /// The earliest bucket end among the grids after the last update:
    /// until then no grid can change, so the divisions are skipped.
    pub next_ns: u64,
}

/// Slots of the per-CPU flow cache of the tc program (a power of two).
pub const FLOW_CACHE_SLOTS: u32 = 64;

/// One slot of the tc program's per-CPU flow cache: the sender it holds and
/// that sender's per-connection fields ([`SenderState`]'s `last_ns`,
/// `sport`, `flags`, `next_seq`, `next_ns`), which live here instead of in
/// the shared sender table while the sender is cached on this CPU. A data
/// segment whose sender is cached and whose buckets have not ended touches
/// only this slot: no hash lookup. The table entry is brought up to date
/// whenever the slot goes to the table anyway (a bucket ends, at most every
/// half short window, or another sender takes the slot).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct FlowCacheSlot {
    pub key: SenderKey,
    pub sport: u16,
    /// [`SENDER_LAST_PSH`], [`SENDER_SEQ_VALID`], [`FLOW_CACHE_VALID`].
    pub flags: u16,
    pub next_seq: u32,
    pub last_ns: u64,
    pub next_ns: u64,
}

/// `FlowCacheSlot::flags`: the slot holds a sender.
pub const FLOW_CACHE_VALID: u16 = 0x8000;

/// The cache slot of a sender: a multiplicative hash of the words that
/// differ between flows (both addresses' first and last words, the local
/// port), so the two directions of a loopback connection, which share
/// addresses, still land in different slots.
#[inline(always)]
pub fn flow_cache_slot(key: &SenderKey) -> u32 {
    let h = key.saddr[0]
        ^ key.saddr[3].rotate_left(7)
        ^ key.ep.addr[0].rotate_left(13)
        ^ key.ep.addr[3].rotate_left(19)
        ^ (key.ep.port as u32)
        ^ ((key.ep.port as u32) << 16);
    (h.wrapping_mul(0x9E37_79B1) >> 26) & (FLOW_CACHE_SLOTS - 1)
}

/// Per-endpoint state. Written by the tc program with atomic adds where
/// several CPUs may race; the counts are exact enough for a detector (a
/// bucket rollover racing on two CPUs can lose one count).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct EndpointState {
    /// Current bucket and distinct senders counted in it, per grid.
    pub bucket: [u32; GRIDS],
    pub count: [u32; GRIDS],
    /// Double-buffered peaks: slot `epoch & 1` collects the highest distinct
    /// sender count (index 0: short width, 1: long width) seen while
    /// `FaninRuntime::epoch` had that value (`peak_tag`). User space bumps
    /// the epoch, then reads the previous slot, which the program no longer
    /// writes.
    pub peak: [[u32; 2]; 2],
    pub peak_tag: [u32; 2],
    /// Times the long-width count reached `FaninConfig::senders` (deduplicated
    /// across the two long grids: at most one per long width).
    pub bursts: u64,
    pub last_burst_ns: u64,
    pub prev_burst_ns: u64,
    /// Stalls: data from a sender after a gap in [stall_min, stall_max]
    /// whose previous segment had no PSH (it was mid-write).
    pub stalls: u64,
    /// Sum of those gaps, ns.
    pub stall_ns: u64,
    /// Stalls whose previous segment came within stall_min/2 of a burst.
    pub burst_stalls: u64,
    /// Segments that arrived beyond the highest one seen (a hole: the
    /// segments in between were lost upstream, or reordered).
    pub holes: u64,
    /// Segments that arrived below the highest one seen (retransmissions
    /// filling a hole, or spurious ones).
    pub rexmits: u64,
    /// Holes and retransmissions seen within stall_max after a burst.
    pub burst_losses: u64,
    /// Closed long buckets (grid A) by distinct senders, bins [`HIST_UPPER`].
    pub hist: [u64; HIST_BINS],
}

/// Load-time constants of the tc program (a global patched by user space).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FaninConfig {
    /// Short bucket width (1 ms).
    pub short_ns: u64,
    /// Long bucket width W (10 ms by default).
    pub long_ns: u64,
    /// Fan-in N that makes a burst.
    pub senders: u32,
    pub _pad: u32,
    pub stall_min_ns: u64,
    pub stall_max_ns: u64,
}

impl Default for FaninConfig {
    fn default() -> Self {
        FaninConfig {
            short_ns: 1_000_000,
            long_ns: 10_000_000,
            senders: 16,
            _pad: 0,
            stall_min_ns: 150_000_000,
            stall_max_ns: 3_000_000_000,
        }
    }
}

/// Run-time settings of the tc program (array map `FANIN_RUNTIME`, index 0).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaninRuntime {
    pub epoch: u32,
    /// Ephemeral port range (net.ipv4.ip_local_port_range): data toward a
    /// port inside it is counted for the local address with port 0.
    pub ephemeral_lo: u16,
    pub ephemeral_hi: u16,
}

/// Indexes into the per-CPU `FANIN_STATS` array.
pub mod fanin_stat {
    /// TCP segments with payload seen by the tc program.
    pub const SEGMENTS: u32 = 0;
    /// Segments not counted: endpoint table full.
    pub const ENDPOINTS_FULL: u32 = 1;
    /// Segments not counted: sender insert failed.
    pub const SENDERS_FAILED: u32 = 2;
    pub const COUNT: u32 = 3;
}

/// Kinds of retransmission (`RetransKey::kind`), from the socket's
/// congestion-avoidance state when `tcp_retransmit_skb` fires.
pub mod retrans_kind {
    /// RTO expired (icsk_ca_state == TCP_CA_Loss).
    pub const TIMEOUT: u32 = 0;
    /// Fast retransmit / SACK or RACK recovery (TCP_CA_Recovery).
    pub const FAST: u32 = 1;
    /// Everything else, in practice tail loss probes (TCP_CA_Open, Disorder, CWR).
    pub const PROBE: u32 = 2;
    /// Handshake (SYN) retransmission, timeout-driven.
    pub const SYN: u32 = 3;
    pub const COUNT: u32 = 4;
    pub const NAMES: [&str; 4] = ["timeout", "fast", "probe", "syn"];
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RetransKey {
    /// Network namespace inode of the socket (0 when unknown).
    pub netns: u32,
    pub kind: u32,
    /// Remote address (IPv4 in `raddr[0]`).
    pub raddr: [u32; 4],
    pub family: u16,
    pub _pad: u16,
}

/// Struct offsets for the `tcp_retransmit_skb` raw tracepoint, read from
/// the running kernel's BTF (Rust eBPF has no CO-RE).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RetransOffsets {
    /// offsetof(struct sock_common, skc_daddr) (sock_common is first in struct sock).
    pub skc_daddr: u32,
    pub skc_v6_daddr: u32,
    pub skc_family: u32,
    pub skc_state: u32,
    /// offsetof(sock_common, skc_net) (possible_net_t: first member struct net *);
    /// u32::MAX disables netns attribution.
    pub skc_net: u32,
    pub net_ns_inum: u32,
    /// Byte holding the bitfield inet_connection_sock.icsk_ca_state.
    pub icsk_ca_state: u32,
    /// Shift and mask of the bitfield inside that byte.
    pub ca_state_shift: u32,
    pub ca_state_mask: u32,
}

/// Indexes into the per-CPU `RETRANS_STATS` array.
pub mod retrans_stat {
    pub const LOST: u32 = 0;
    pub const COUNT: u32 = 1;
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY (all): plain #[repr(C)] integers with explicit padding, valid for any bit pattern.
    unsafe impl aya::Pod for super::EndpointKey {}
    unsafe impl aya::Pod for super::SenderKey {}
    unsafe impl aya::Pod for super::SenderState {}
    unsafe impl aya::Pod for super::EndpointState {}
    unsafe impl aya::Pod for super::FaninConfig {}
    unsafe impl aya::Pod for super::FaninRuntime {}
    unsafe impl aya::Pod for super::RetransKey {}
    unsafe impl aya::Pod for super::RetransOffsets {}
}

#[cfg(test)]
mod flow_cache_tests {
    use super::*;

    fn v4(a: [u8; 4]) -> [u32; 4] {
        [u32::from_ne_bytes(a), 0, 0, 0]
    }

    #[test]
    fn the_two_directions_of_a_loopback_connection_use_different_slots() {
        let lo = v4([127, 0, 0, 1]);
        let mut same = 0;
        for port in 1024..2048u16 {
            let to_server = SenderKey {
                ep: EndpointKey {
                    addr: lo,
                    port,
                    family: AF_INET,
                },
                saddr: lo,
            };
            let to_client = SenderKey {
                ep: EndpointKey {
                    addr: lo,
                    port: 0,
                    family: AF_INET,
                },
                saddr: lo,
            };
            assert!(flow_cache_slot(&to_server) < FLOW_CACHE_SLOTS);
            if flow_cache_slot(&to_server) == flow_cache_slot(&to_client) {
                same += 1;
            }
        }
        // A good hash puts 1 in 64 ports on the client's slot.
        assert!(same <= 32, "{same} of 1024 server ports share the client's slot");
    }

    #[test]
    fn senders_of_one_endpoint_spread_over_the_slots() {
        let ep = EndpointKey {
            addr: v4([10, 0, 0, 1]),
            port: 5001,
            family: AF_INET,
        };
        let mut used = std::collections::HashSet::new();
        for i in 2..26u8 {
            used.insert(flow_cache_slot(&SenderKey {
                ep,
                saddr: v4([10, 0, 0, i]),
            }));
        }
        // 24 senders into 64 slots: about 20 distinct slots expected at random.
        assert!(used.len() >= 16, "24 senders use only {} slots", used.len());
    }
}
