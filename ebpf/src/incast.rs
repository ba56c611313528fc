//! TCP incast signals: fan-in per receiving endpoint and retransmissions by kind.
//!
//! # Why a tc ingress program for fan-in
//!
//! Incast is "many senders deliver data to one endpoint at the same moment",
//! so the signal must fire per *received data segment* at the receiver:
//! - `tcp:tcp_probe` fires in `tcp_rcv_established` for every incoming segment,
//!   but only while a socket is being probed and carries sender-side state
//!   (cwnd, srtt): it is meant for ACK processing, not "who delivered data".
//! - `tcp_rcv_established` / `tcp_v4_rcv` are plain functions: reachable with
//!   kprobes (absent on these kernels) or fentry (refused with EPERM here).
//! - `tcp:tcp_rcv_space_adjust` fires once per receive-buffer tuning round,
//!   `sock:sock_rcvqueue_full` only when a buffer overflows: both too sparse.
//! - A tc ingress (clsact / tcx) classifier sees every received packet on an
//!   interface, costs one parse of the headers, works on every kernel since
//!   4.x, needs no struct offsets, and sees segments *before* the socket,
//!   so a segment the receiver later drops is still a sender that arrived.
//!   It must be attached per interface; the agent attaches it to every
//!   Ethernet and loopback interface of its namespace, to new ones as they
//!   appear, and detaches on shutdown.
//!
//! The program is a pure observer: it returns `TC_ACT_UNSPEC` (`TCX_NEXT`),
//! so later tcx programs and classic filters still run.
//!
//! # What it counts (per packet, small and bounded)
//!
//! Data segments only (payload > 0). Per (endpoint, sender address) an LRU
//! entry remembers in which bucket of each grid the sender was last counted;
//! the endpoint's distinct-sender count of a grid's bucket grows only when a
//! sender shows up in it for the first time; the sender entry also keeps the
//! earliest end of its current buckets, so the per-packet cost in the common
//! case is one hash lookup (the sender's), a clock read and a few compares
//! and stores: the endpoint's entry is looked up only when something is
//! counted on it, and the four bucket divisions run only when a bucket ends.
//! See
//! common/src/tcp.rs for grids, peaks, bursts and stalls.
//!
//! # Retransmissions
//!
//! `tcp:tcp_retransmit_skb` as a raw tracepoint (arguments are the
//! TP_PROTO: `sk` first on every kernel), classified by the socket's
//! `icsk_ca_state` (TCP_CA_Loss: the RTO fired; TCP_CA_Recovery: fast
//! retransmit; otherwise a tail loss probe), with offsets from BTF.

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use crate::util::bump;
use aya_ebpf::{
    helpers::bpf_ktime_get_ns,
    macros::{classifier, map, raw_tracepoint},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, PerCpuHashMap},
    programs::{RawTracePointContext, TcContext},
};
use graydar_common::tcp::{
    AF_INET, AF_INET6, EndpointKey, EndpointState, FANIN_ENDPOINT_ENTRIES, FANIN_SENDER_ENTRIES, FLOW_CACHE_SLOTS,
    FLOW_CACHE_VALID, FaninConfig, FaninRuntime, FlowCacheSlot, GRIDS, HIST_BINS, RETRANS_ENTRIES, RetransKey,
    RetransOffsets, SENDER_LAST_PSH, SENDER_SEQ_VALID, SenderKey, SenderState, fanin_stat, flow_cache_slot,
    retrans_kind, retrans_stat,
};

/// `TC_ACT_UNSPEC` == `TCX_NEXT`: continue with the next program/filter.
const TC_ACT_UNSPEC: i32 = -1;

/// Patched by user space before load.
#[unsafe(no_mangle)]
static TCP_FANIN_CONFIG: FaninConfig = FaninConfig {
    short_ns: 1_000_000,
    long_ns: 10_000_000,
    senders: 16,
    _pad: 0,
    stall_min_ns: 150_000_000,
    stall_max_ns: 3_000_000_000,
};

/// Patched by user space before load.
#[unsafe(no_mangle)]
static TCP_RETRANS_OFFSETS: RetransOffsets = RetransOffsets {
    skc_daddr: 0,
    skc_v6_daddr: 0,
    skc_family: 0,
    skc_state: 0,
    skc_net: u32::MAX,
    net_ns_inum: 0,
    icsk_ca_state: 0,
    ca_state_shift: 0,
    ca_state_mask: 0,
};

#[map]
static FANIN_RUNTIME: Array<FaninRuntime> = Array::with_max_entries(1, 0);

#[map]
static FANIN_ENDPOINTS: HashMap<EndpointKey, EndpointState> = HashMap::with_max_entries(FANIN_ENDPOINT_ENTRIES, 0);

#[map]
static FANIN_SENDERS: LruHashMap<SenderKey, SenderState> = LruHashMap::with_max_entries(FANIN_SENDER_ENTRIES, 0);

/// Per-CPU cache of recent senders (common/src/tcp.rs `FlowCacheSlot`).
#[map]
static FANIN_FLOW_CACHE: PerCpuArray<FlowCacheSlot> = PerCpuArray::with_max_entries(FLOW_CACHE_SLOTS, 0);

#[map]
static FANIN_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(fanin_stat::COUNT, 0);

#[map]
static RETRANS: PerCpuHashMap<RetransKey, u64> = PerCpuHashMap::with_max_entries(RETRANS_ENTRIES, 0);

#[map]
static RETRANS_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(retrans_stat::COUNT, 0);

#[inline(always)]
fn add64(p: *mut u64, v: u64) {
    // SAFETY: `p` points into a map value that lives as long as the program
    // runs; the atomic add (BPF_XADD, result unused) is safe on any kernel.
    // core has no AtomicU64::fetch_add for the BPF target, hence the intrinsic.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(p, v) };
}

#[inline(always)]
fn add32(p: *mut u32, v: u32) {
    // SAFETY: as in add64.
    unsafe { atomic_xadd::<u32, u32, { AtomicOrdering::Relaxed }>(p, v) };
}

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const IPPROTO_TCP: u8 = 6;
const TCP_FLAG_PSH: u8 = 0x08;

#[inline(always)]
fn ptr_at<T>(ctx: &TcContext, off: usize) -> Option<*const T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + off + core::mem::size_of::<T>() > end {
        return None;
    }
    Some((start + off) as *const T)
}

/// Headers of a data segment.
struct Segment {
    ep: EndpointKey,
    saddr: [u32; 4],
    sport: u16,
    psh: bool,
    seq: u32,
    len: u32,
}

/// Parses a data segment's headers. Each address family's branch builds its
/// addresses whole: zero-filled arrays patched afterwards made LLVM call a
/// byte-by-byte memset on every packet (seen in `bpftool prog dump xlated`).
#[inline(always)]
fn parse(ctx: &TcContext, rt: &FaninRuntime) -> Option<Segment> {
    // SAFETY (all raw reads below): ptr_at checked that the bytes are inside
    // the linear packet data.
    let proto = u16::from_be(unsafe { *ptr_at::<u16>(ctx, 12)? });
    let (daddr, saddr, family, l4, ip_payload): ([u32; 4], [u32; 4], u16, usize, usize);
    if proto == ETH_P_IP {
        let vihl = unsafe { *ptr_at::<u8>(ctx, ETH_HLEN)? };
        let ihl = ((vihl & 0x0f) as usize) * 4;
        if ihl < 20 {
            return None;
        }
        let hdr = ptr_at::<[u32; 5]>(ctx, ETH_HLEN)?;
        let w = unsafe { *hdr };
        // tot_len in the first word's high half (network order), frag in the second word.
        let b = unsafe { &*(hdr as *const [u8; 20]) };
        if b[9] != IPPROTO_TCP {
            return None;
        }
        // MF flag or a fragment offset: not a whole segment.
        if (u16::from_be_bytes([b[6], b[7]]) & 0x3fff) != 0 {
            return None;
        }
        let tot = u16::from_be_bytes([b[2], b[3]]) as usize;
        // tot_len 0: a BIG TCP super-packet; size it from the skb.
        let tot = if tot == 0 {
            (ctx.len() as usize).saturating_sub(ETH_HLEN)
        } else {
            tot
        };
        saddr = [w[3], 0, 0, 0];
        daddr = [w[4], 0, 0, 0];
        family = AF_INET;
        l4 = ETH_HLEN + ihl;
        ip_payload = tot.saturating_sub(ihl);
    } else if proto == ETH_P_IPV6 {
        let b = unsafe { &*ptr_at::<[u8; 8]>(ctx, ETH_HLEN)? };
        if b[6] != IPPROTO_TCP {
            return None;
        }
        let plen = u16::from_be_bytes([b[4], b[5]]) as usize;
        let plen = if plen == 0 {
            (ctx.len() as usize).saturating_sub(ETH_HLEN + 40)
        } else {
            plen
        };
        saddr = unsafe { *ptr_at::<[u32; 4]>(ctx, ETH_HLEN + 8)? };
        daddr = unsafe { *ptr_at::<[u32; 4]>(ctx, ETH_HLEN + 24)? };
        family = AF_INET6;
        l4 = ETH_HLEN + 40;
        ip_payload = plen;
    } else {
        return None;
    }
    let th = unsafe { &*ptr_at::<[u8; 14]>(ctx, l4)? };
    let doff = ((th[12] >> 4) as usize) * 4;
    if ip_payload <= doff {
        return None; // no payload: pure ACK, SYN, FIN, RST
    }
    let sport = u16::from_be_bytes([th[0], th[1]]);
    let dport = u16::from_be_bytes([th[2], th[3]]);
    let port = if dport >= rt.ephemeral_lo && dport <= rt.ephemeral_hi {
        0
    } else {
        dport
    };
    Some(Segment {
        ep: EndpointKey {
            addr: daddr,
            port,
            family,
        },
        saddr,
        sport,
        psh: th[13] & TCP_FLAG_PSH != 0,
        seq: u32::from_be_bytes([th[4], th[5], th[6], th[7]]),
        len: (ip_payload - doff) as u32,
    })
}

#[classifier]
pub fn tcp_fanin(ctx: TcContext) -> i32 {
    fanin(&ctx);
    TC_ACT_UNSPEC
}

#[inline(always)]
fn hist_bin(c: u32) -> usize {
    match c {
        0..=1 => 0,
        2 => 1,
        3..=4 => 2,
        5..=8 => 3,
        9..=16 => 4,
        17..=32 => 5,
        33..=64 => 6,
        _ => HIST_BINS - 1,
    }
}

/// The endpoint's state, created on its first segment; `None` when the
/// endpoint table is full (counted).
#[inline(always)]
fn endpoint(key: &EndpointKey) -> Option<&'static mut EndpointState> {
    let p = match FANIN_ENDPOINTS.get_ptr_mut(key) {
        Some(p) => p,
        None => {
            let fresh = EndpointState {
                bucket: [u32::MAX; GRIDS],
                ..EndpointState::default()
            };
            if FANIN_ENDPOINTS.insert(key, &fresh, 0).is_err() {
                bump(&FANIN_STATS, fanin_stat::ENDPOINTS_FULL);
                return None;
            }
            FANIN_ENDPOINTS.get_ptr_mut(key)?
        }
    };
    // SAFETY: a map value pointer stays valid for this program run; fields
    // another CPU may update concurrently are changed with atomic adds, the
    // rest are plain stores whose races only blur an approximate count.
    Some(unsafe { &mut *p })
}

/// The per-connection checks of one data segment against the sender's
/// last one (wherever that state lives: the per-CPU cache or the table):
/// a stall (the previous segment was mid-write and the flow then went quiet
/// for an RTO-like time) and a hole or a retransmission (losses upstream,
/// seen from the receiver). Updates the state for this segment.
#[inline(always)]
fn track(
    seg: &Segment,
    cfg: &FaninConfig,
    now: u64,
    last_ns: &mut u64,
    sport: &mut u16,
    flags: &mut u16,
    next_seq: &mut u32,
) {
    if *last_ns != 0 && *flags & SENDER_LAST_PSH == 0 && *sport == seg.sport {
        let gap = now.wrapping_sub(*last_ns);
        if gap >= cfg.stall_min_ns
            && gap <= cfg.stall_max_ns
            && let Some(ep) = endpoint(&seg.ep)
        {
            add64(&mut ep.stalls, 1);
            add64(&mut ep.stall_ns, gap);
            let near = cfg.stall_min_ns / 2;
            let (b1, b2) = (ep.last_burst_ns, ep.prev_burst_ns);
            if (b1 != 0 && last_ns.abs_diff(b1) <= near) || (b2 != 0 && last_ns.abs_diff(b2) <= near) {
                add64(&mut ep.burst_stalls, 1);
            }
        }
    }
    // A segment beyond the highest one seen leaves a hole; one below it is a
    // retransmission.
    let end = seg.seq.wrapping_add(seg.len);
    let mut next = end;
    if *flags & SENDER_SEQ_VALID != 0 && *sport == seg.sport {
        let d = seg.seq.wrapping_sub(*next_seq) as i32;
        if d != 0
            && let Some(ep) = endpoint(&seg.ep)
        {
            if d > 0 {
                add64(&mut ep.holes, 1);
            } else {
                add64(&mut ep.rexmits, 1);
            }
            let (b1, b2) = (ep.last_burst_ns, ep.prev_burst_ns);
            if (b1 != 0 && now.wrapping_sub(b1) <= cfg.stall_max_ns)
                || (b2 != 0 && now.wrapping_sub(b2) <= cfg.stall_max_ns)
            {
                add64(&mut ep.burst_losses, 1);
            }
        }
        if (end.wrapping_sub(*next_seq) as i32) < 0 {
            next = *next_seq;
        }
    }
    *last_ns = now;
    *sport = seg.sport;
    *next_seq = next;
    *flags = SENDER_SEQ_VALID | if seg.psh { SENDER_LAST_PSH } else { 0 };
}

/// Per data segment. The common case, a segment of a sender cached on this
/// CPU whose buckets have not ended, touches only the per-CPU cache slot:
/// no hash lookup, a clock read and a few compares and stores. Otherwise the
/// sender's table entry is looked up (and the slot's previous sender written
/// back to its own), the endpoint's entry when something is counted on it
/// (a stall, a hole or retransmission, a bucket change), and the slot then
/// holds this sender.
#[inline(always)]
fn fanin(ctx: &TcContext) {
    let Some(rt) = FANIN_RUNTIME.get(0) else { return };
    let Some(seg) = parse(ctx, rt) else { return };
    bump(&FANIN_STATS, fanin_stat::SEGMENTS);
    // SAFETY: read-only global patched at load; volatile so the defaults are
    // not constant-folded.
    let cfg = unsafe { core::ptr::read_volatile(&TCP_FANIN_CONFIG) };
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };

    let skey = SenderKey {
        ep: seg.ep,
        saddr: seg.saddr,
    };
    let Some(slot) = FANIN_FLOW_CACHE.get_ptr_mut(flow_cache_slot(&skey)) else {
        return;
    };
    // SAFETY: a per-CPU map value: valid for this run, no other writer (tc
    // programs do not nest on one CPU).
    let c = unsafe { &mut *slot };
    let cached = c.flags & FLOW_CACHE_VALID != 0 && c.key == skey;
    let cached_flags = c.flags & !FLOW_CACHE_VALID;
    if cached && now < c.next_ns {
        let mut flags = cached_flags;
        track(
            &seg,
            &cfg,
            now,
            &mut c.last_ns,
            &mut c.sport,
            &mut flags,
            &mut c.next_seq,
        );
        c.flags = flags | FLOW_CACHE_VALID;
        return;
    }
    // The slot's previous sender goes back to its table entry (if the LRU
    // has not dropped it meanwhile).
    if c.flags & FLOW_CACHE_VALID != 0
        && !cached
        && let Some(old) = FANIN_SENDERS.get_ptr_mut(&c.key)
    {
        // SAFETY: as in `endpoint`.
        let old = unsafe { &mut *old };
        old.last_ns = c.last_ns;
        old.sport = c.sport;
        old.flags = c.flags & !FLOW_CACHE_VALID;
        old.next_seq = c.next_seq;
    }
    let s = match FANIN_SENDERS.get_ptr_mut(&skey) {
        Some(p) => p,
        None => {
            let fresh = SenderState {
                bucket: [u32::MAX; GRIDS],
                ..SenderState::default()
            };
            if FANIN_SENDERS.insert(&skey, &fresh, 0).is_err() {
                bump(&FANIN_STATS, fanin_stat::SENDERS_FAILED);
                return;
            }
            match FANIN_SENDERS.get_ptr_mut(&skey) {
                Some(p) => p,
                None => return,
            }
        }
    };
    // SAFETY: as in `endpoint`.
    let s = unsafe { &mut *s };
    if cached {
        // This CPU's copy of the connection fields is the newer one.
        s.last_ns = c.last_ns;
        s.sport = c.sport;
        s.flags = cached_flags;
        s.next_seq = c.next_seq;
    }
    track(
        &seg,
        &cfg,
        now,
        &mut s.last_ns,
        &mut s.sport,
        &mut s.flags,
        &mut s.next_seq,
    );
    if now >= s.next_ns {
        buckets(&seg, rt, &cfg, now, s);
    }
    *c = FlowCacheSlot {
        key: skey,
        sport: s.sport,
        flags: s.flags | FLOW_CACHE_VALID,
        next_seq: s.next_seq,
        last_ns: s.last_ns,
        next_ns: s.next_ns,
    };
}

/// Counts the sender in every grid's bucket it enters (the four divisions
/// run only when one of its buckets has ended) and sets `s.next_ns`.
#[inline(always)]
fn buckets(seg: &Segment, rt: &FaninRuntime, cfg: &FaninConfig, now: u64, s: &mut SenderState) {
    let Some(ep) = endpoint(&seg.ep) else { return };
    let slot = (rt.epoch & 1) as usize;
    let mut next_ns = u64::MAX;
    let mut g = 0;
    while g < GRIDS {
        let long = g >= 2;
        let width = if long { cfg.long_ns } else { cfg.short_ns };
        if width == 0 {
            return;
        }
        let offset = if g & 1 == 1 { width / 2 } else { 0 };
        let q = (now + offset) / width;
        let end = (q + 1) * width - offset;
        if end < next_ns {
            next_ns = end;
        }
        let b = q as u32;
        if s.bucket[g] != b {
            s.bucket[g] = b;
            let c = if ep.bucket[g] != b {
                // The first sender of a new bucket closes the previous one.
                if g == 2 && ep.bucket[g] != u32::MAX && ep.count[g] > 0 {
                    add64(&mut ep.hist[hist_bin(ep.count[g]) & (HIST_BINS - 1)], 1);
                }
                ep.bucket[g] = b;
                ep.count[g] = 1;
                1
            } else {
                add32(&mut ep.count[g], 1);
                ep.count[g]
            };
            if ep.peak_tag[slot] != rt.epoch {
                ep.peak_tag[slot] = rt.epoch;
                ep.peak[slot] = [0, 0];
            }
            let k = if long { 1 } else { 0 };
            if c > ep.peak[slot][k] {
                ep.peak[slot][k] = c;
            }
            if long && c >= cfg.senders && now.wrapping_sub(ep.last_burst_ns) > cfg.long_ns {
                ep.prev_burst_ns = ep.last_burst_ns;
                ep.last_burst_ns = now;
                add64(&mut ep.bursts, 1);
            }
        }
        g += 1;
    }
    s.next_ns = next_ns;
}

#[inline(always)]
fn read<T>(addr: u64) -> Option<T> {
    crate::util::read(addr, &RETRANS_STATS, retrans_stat::LOST)
}

const TCP_SYN_SENT: u8 = 2;
const TCP_SYN_RECV: u8 = 3;
/// enum tcp_ca_state values (include/net/tcp.h, unchanged since 2.6).
const TCP_CA_RECOVERY: u8 = 3;
const TCP_CA_LOSS: u8 = 4;

#[raw_tracepoint(tracepoint = "tcp_retransmit_skb")]
pub fn tcp_retransmit(ctx: RawTracePointContext) -> i32 {
    // SAFETY: read-only global patched at load time.
    let off = unsafe { core::ptr::read_volatile(&TCP_RETRANS_OFFSETS) };
    let sk: u64 = ctx.arg(0);
    if sk == 0 {
        return 0;
    }
    let family = read::<u16>(sk + off.skc_family as u64).unwrap_or(0);
    let mut key = RetransKey {
        family,
        ..RetransKey::default()
    };
    if family == AF_INET {
        key.raddr[0] = read::<u32>(sk + off.skc_daddr as u64).unwrap_or(0);
    } else if family == AF_INET6 {
        key.raddr = read::<[u32; 4]>(sk + off.skc_v6_daddr as u64).unwrap_or([0; 4]);
    }
    if off.skc_net != u32::MAX
        && let Some(net) = read::<u64>(sk + off.skc_net as u64)
        && net != 0
    {
        key.netns = read::<u32>(net + off.net_ns_inum as u64).unwrap_or(0);
    }
    let state = read::<u8>(sk + off.skc_state as u64).unwrap_or(0);
    let ca =
        (read::<u8>(sk + off.icsk_ca_state as u64).unwrap_or(0) >> (off.ca_state_shift & 7)) & off.ca_state_mask as u8;
    key.kind = if state == TCP_SYN_SENT || state == TCP_SYN_RECV {
        retrans_kind::SYN
    } else if ca == TCP_CA_LOSS {
        retrans_kind::TIMEOUT
    } else if ca == TCP_CA_RECOVERY {
        retrans_kind::FAST
    } else {
        retrans_kind::PROBE
    };
    match RETRANS.get_ptr_mut(&key) {
        // SAFETY: per-CPU value.
        Some(p) => unsafe { *p += 1 },
        None => {
            if RETRANS.insert(&key, &1, 0).is_err() {
                bump(&RETRANS_STATS, retrans_stat::LOST);
            }
        }
    }
    0
}
