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
