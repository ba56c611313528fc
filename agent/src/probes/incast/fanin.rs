//! TCP fan-in and retransmissions from eBPF (ebpf/src/incast.rs): a tc ingress
//! classifier attached to every Ethernet/loopback interface of the agent's
//! network namespace (new interfaces as they appear), and a raw tracepoint
//! on `tcp_retransmit_skb`.
//!
//! Reading the maps is the only I/O here; turning readings into endpoint
//! samples, metrics and findings is agent/src/signals/incast.rs and
//! agent/src/detect/incast.rs.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use aya::maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray, PerCpuHashMap};
use aya::programs::tc::{SchedClassifierLinkId, TcAttachType};
use aya::programs::{RawTracePoint, SchedClassifier};
use graydar_common::tcp::{
    AF_INET, AF_INET6, EndpointKey, EndpointState, FaninRuntime, HIST_BINS, RetransKey, RetransOffsets, SenderKey,
    SenderState, fanin_stat, retrans_kind, retrans_stat,
};

use crate::btf::{BtfError, KernelBtf};
use crate::probes::object::{EbpfError, attach_err, load_err, program, read_err, take_map};
use crate::probes::{ProbeError, SharedEbpf, lock_ebpf};

pub const PROBE_FANIN: &str = "tcp_fanin";
pub const PROBE_RETRANS: &str = "tcp_retransmit";

/// ARPHRD_ETHER and ARPHRD_LOOPBACK (include/uapi/linux/if_arp.h): the
/// device types whose packets start with a 14-byte Ethernet header.
const ARPHRD_ETHER: u32 = 1;
const ARPHRD_LOOPBACK: u32 = 772;

/// Offsets for the retransmit tracepoint from the running kernel's BTF.
pub fn retrans_offsets(btf: &KernelBtf) -> Result<RetransOffsets, ProbeError> {
    retrans_offsets_from(btf).map_err(|e| ProbeError::Ebpf(EbpfError::Btf(e)))
}

fn retrans_offsets_from(btf: &KernelBtf) -> Result<RetransOffsets, BtfError> {
    // struct sock starts with struct sock_common __sk_common; struct
    // inet_connection_sock starts with inet_sock, which starts with sock.
    let base = btf.member_offset("sock", "__sk_common")?;
    let sc = |m: &str| btf.member_offset("sock_common", m).map(|o| o + base);
    let mut off = RetransOffsets {
        skc_daddr: sc("skc_daddr")?,
        skc_v6_daddr: sc("skc_v6_daddr").unwrap_or(0),
        skc_family: sc("skc_family")?,
        skc_state: sc("skc_state")?,
        skc_net: u32::MAX,
        net_ns_inum: 0,
        icsk_ca_state: 0,
        ca_state_shift: 0,
        ca_state_mask: 0,
    };
    if let (Ok(net), Ok(inum)) = (sc("skc_net.net"), btf.member_offset("net", "ns.inum")) {
        off.skc_net = net;
        off.net_ns_inum = inum;
    }
    let (bits, width) = btf.member_bits("inet_connection_sock", "icsk_ca_state")?;
    let width = width.unwrap_or(8);
    if width == 0 || width > 8 || (bits % 8) + width > 8 {
        return Err(BtfError::Bitfield {
            member: "inet_connection_sock.icsk_ca_state".into(),
            bit: bits,
            width,
        });
    }
    off.icsk_ca_state = bits / 8;
    off.ca_state_shift = bits % 8;
    off.ca_state_mask = (1u32 << width) - 1;
    Ok(off)
}

/// `net.ipv4.ip_local_port_range` ("32768\t60999").
pub fn parse_port_range(text: &str) -> Option<(u16, u16)> {
    let mut it = text.split_whitespace().map(str::parse::<u16>);
    let lo = it.next()?.ok()?;
    let hi = it.next()?.ok()?;
    (lo <= hi).then_some((lo, hi))
}

/// An interface the classifier may attach to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Iface {
    pub ifindex: u32,
    pub name: String,
    pub kind: u32,
}

impl Iface {
    pub fn supported(&self) -> bool {
        self.kind == ARPHRD_ETHER || self.kind == ARPHRD_LOOPBACK
    }
}

/// Interfaces under `$SYSFS_ROOT/class/net` (name, ifindex, type).
pub fn list_interfaces(sysfs_root: &Path) -> Result<Vec<Iface>, ProbeError> {
    let dir = sysfs_root.join("class/net");
    let rd = std::fs::read_dir(&dir).map_err(|source| ProbeError::Io {
        path: dir.clone(),
        source,
    })?;
    let mut out = Vec::new();
    for entry in rd.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let read = |f: &str| -> Option<u32> {
            std::fs::read_to_string(entry.path().join(f))
                .ok()
                .and_then(|t| t.trim().parse().ok())
        };
        // A device that vanished between readdir and read is skipped.
        if let (Some(ifindex), Some(kind)) = (read("ifindex"), read("type")) {
            out.push(Iface { ifindex, name, kind });
        }
    }
    out.sort_by_key(|i| i.ifindex);
    Ok(out)
}

/// One endpoint's state as read (cumulative counters plus the peaks of the
/// last epoch).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EndpointReading {
    /// Highest distinct-sender counts within the short (1 ms) and the long
    /// (W) width since the previous read.
    pub peak_short: u32,
    pub peak_long: u32,
    pub bursts: u64,
    pub stalls: u64,
    pub stall_ns: u64,
    pub burst_stalls: u64,
    pub holes: u64,
    pub rexmits: u64,
    pub burst_losses: u64,
    pub hist: [u64; HIST_BINS],
}

/// A receiving endpoint: local address and port (0 for the ephemeral side).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Endpoint {
    pub addr: IpAddr,
    pub port: u16,
}

impl Endpoint {
    pub fn from_key(k: &EndpointKey) -> Option<Endpoint> {
        Some(Endpoint {
            addr: addr_of(k.family, &k.addr)?,
            port: k.port,
        })
    }
}

impl std::fmt::Display for Endpoint {
    /// `10.0.0.5:6379`, `[fd00::5]:6379`, `10.0.0.5:*` for the ephemeral side.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.addr, self.port) {
            (IpAddr::V4(a), 0) => write!(f, "{a}:*"),
            (IpAddr::V6(a), 0) => write!(f, "[{a}]:*"),
            (IpAddr::V4(a), p) => write!(f, "{a}:{p}"),
            (IpAddr::V6(a), p) => write!(f, "[{a}]:{p}"),
        }
    }
}

/// Family and key words of an address (inverse of [`addr_of`]).
pub fn key_addr(a: IpAddr) -> (u16, [u32; 4]) {
    match a {
        IpAddr::V4(v4) => (AF_INET, [u32::from_ne_bytes(v4.octets()), 0, 0, 0]),
        IpAddr::V6(v6) => {
            let o = v6.octets();
            let mut w = [0u32; 4];
            for (i, x) in w.iter_mut().enumerate() {
                *x = u32::from_ne_bytes([o[i * 4], o[i * 4 + 1], o[i * 4 + 2], o[i * 4 + 3]]);
            }
            (AF_INET6, w)
        }
    }
}

/// The address in a key: IPv4 in word 0, as loaded from the packet (network order).
pub fn addr_of(family: u16, addr: &[u32; 4]) -> Option<IpAddr> {
    match family {
        AF_INET => Some(IpAddr::V4(Ipv4Addr::from(addr[0].to_ne_bytes()))),
        AF_INET6 => {
            let mut b = [0u8; 16];
            for (i, w) in addr.iter().enumerate() {
                b[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
            }
            Some(IpAddr::V6(Ipv6Addr::from(b)))
        }
        _ => None,
    }
}

#[derive(Debug, Default, Clone)]
pub struct TcpSnapshot {
    pub endpoints: BTreeMap<Endpoint, EndpointReading>,
    /// Data segments seen by the classifier (cumulative).
    pub segments: u64,
    /// Segments not counted (endpoint table full, sender insert failed).
    pub lost: u64,
    /// Retransmissions of this namespace's sockets by kind name (cumulative).
    pub retrans: BTreeMap<&'static str, u64>,
    /// Same, by remote address and kind name.
    pub retrans_by_peer: BTreeMap<(IpAddr, &'static str), u64>,
    pub retrans_lost: u64,
    /// In-kernel run time/count of the classifier (kernel.bpf_stats_enabled=1).
    pub run_time_ns: u64,
    pub run_count: u64,
}

type RetransMaps = (PerCpuHashMap<MapData, RetransKey, u64>, PerCpuArray<MapData, u64>);

pub struct TcpProbe {
    /// Holds the programs attached (with every other probe of the object).
    ebpf: SharedEbpf,
    endpoints: BpfHashMap<MapData, EndpointKey, EndpointState>,
    senders: BpfHashMap<MapData, SenderKey, SenderState>,
    runtime: Array<MapData, FaninRuntime>,
    stats: PerCpuArray<MapData, u64>,
    retrans: Option<RetransMaps>,
    attached: BTreeMap<u32, (String, SchedClassifierLinkId)>,
    epoch: u32,
    ephemeral: (u16, u16),
    own_netns: Option<u32>,
}

impl TcpProbe {
    /// Loads (does not attach) the classifier of the shared object (loaded
    /// with the fan-in constants and the retransmit offsets set) and, when
    /// `retrans_offsets` is Ok, attaches the retransmit tracepoint. A kernel
    /// refusing the tracepoint leaves fan-in working (logged).
    pub fn start(
        object: SharedEbpf,
        retrans_offsets: Result<RetransOffsets, ProbeError>,
        own_netns: Option<u32>,
    ) -> Result<TcpProbe, ProbeError> {
        let offsets = match retrans_offsets {
            Ok(o) => Some(o),
            Err(e) => {
                tracing::warn!(error = %e, "tcp_retransmit_skb probe disabled");
                None
            }
        };
        let mut guard = lock_ebpf(&object);
        let ebpf = &mut *guard;
        {
            let prog: &mut SchedClassifier = program(ebpf, PROBE_FANIN)?;
            prog.load().map_err(load_err(PROBE_FANIN))?;
        }
        let mut retrans_on = false;
        if offsets.is_some() {
            let r = (|| -> Result<(), EbpfError> {
                let prog: &mut RawTracePoint = program(ebpf, PROBE_RETRANS)?;
                prog.load().map_err(load_err(PROBE_RETRANS))?;
                prog.attach("tcp_retransmit_skb")
                    .map_err(attach_err(PROBE_RETRANS, "raw tracepoint tcp_retransmit_skb"))?;
                Ok(())
            })();
            match r {
                Ok(()) => retrans_on = true,
                Err(e) => tracing::warn!(error = %e, "tcp_retransmit_skb probe disabled"),
            }
        }
        let endpoints = take_map(ebpf, "FANIN_ENDPOINTS")?;
        let senders = take_map(ebpf, "FANIN_SENDERS")?;
        let runtime = take_map(ebpf, "FANIN_RUNTIME")?;
        let stats = take_map(ebpf, "FANIN_STATS")?;
        let retrans = if retrans_on {
            let m = take_map(ebpf, "RETRANS")?;
            let s = take_map(ebpf, "RETRANS_STATS")?;
            Some((m, s))
        } else {
            None
        };
        drop(guard);
        let mut probe = TcpProbe {
            ebpf: object,
            endpoints,
            senders,
            runtime,
            stats,
            retrans,
            attached: BTreeMap::new(),
            epoch: 1,
            ephemeral: (32768, 60999),
            own_netns,
        };
        probe.write_runtime()?;
        Ok(probe)
    }

    pub fn retransmits_enabled(&self) -> bool {
        self.retrans.is_some()
    }

    /// Names of the interfaces the classifier is attached to.
    pub fn attached(&self) -> Vec<String> {
        self.attached.values().map(|(n, _)| n.clone()).collect()
    }

    fn write_runtime(&mut self) -> Result<(), ProbeError> {
        let rt = FaninRuntime {
            epoch: self.epoch,
            ephemeral_lo: self.ephemeral.0,
            ephemeral_hi: self.ephemeral.1,
        };
        self.runtime.set(0, rt, 0).map_err(|source| {
            ProbeError::Ebpf(EbpfError::MapWrite {
                map: "FANIN_RUNTIME",
                source,
            })
        })
    }

    /// Sets the ephemeral port range (from `ip_local_port_range`).
    pub fn set_ephemeral_range(&mut self, lo: u16, hi: u16) -> Result<(), ProbeError> {
        if self.ephemeral != (lo, hi) {
            self.ephemeral = (lo, hi);
            self.write_runtime()?;
        }
        Ok(())
    }

    /// Attaches to interfaces in `present` not yet attached and forgets the
    /// ones that vanished (the kernel detached them with the device).
    /// Returns the names newly attached and errors per interface.
    pub fn sync_interfaces(&mut self, present: &[Iface]) -> (Vec<String>, Vec<(String, ProbeError)>) {
        let mut added = Vec::new();
        let mut errors = Vec::new();
        let gone: Vec<u32> = self
            .attached
            .iter()
            .filter(|(ix, (name, _))| !present.iter().any(|i| i.ifindex == **ix && &i.name == name))
            .map(|(ix, _)| *ix)
            .collect();
        for ix in gone {
            if let Some((name, link)) = self.attached.remove(&ix)
                && let Some(Ok(prog)) = lock_ebpf(&self.ebpf)
                    .program_mut("tcp_fanin")
                    .map(<&mut SchedClassifier>::try_from)
            {
                // Usually already gone with the device; a renamed device is detached here.
                let _ = prog.detach(link);
                tracing::debug!(interface = %name, "tcp_fanin detached");
            }
        }
        for iface in present.iter().filter(|i| i.supported()) {
            if self.attached.contains_key(&iface.ifindex) {
                continue;
            }
            match self.attach(&iface.name) {
                Ok(link) => {
                    self.attached.insert(iface.ifindex, (iface.name.clone(), link));
                    added.push(iface.name.clone());
                }
                Err(e) => errors.push((iface.name.clone(), e)),
            }
        }
        (added, errors)
    }

    fn attach(&mut self, name: &str) -> Result<SchedClassifierLinkId, ProbeError> {
        let mut ebpf = lock_ebpf(&self.ebpf);
        let prog: &mut SchedClassifier = program(&mut ebpf, PROBE_FANIN)?;
        // tcx (6.6+) needs no qdisc; the netlink path of older kernels needs
        // a clsact qdisc, added on the first failure (left in place on exit:
        // an empty clsact changes nothing).
        match prog.attach(name, TcAttachType::Ingress) {
            Ok(l) => Ok(l),
            Err(first) => {
                let _ = aya::programs::tc::qdisc_add_clsact(name);
                prog.attach(name, TcAttachType::Ingress).map_err(|source| {
                    ProbeError::Ebpf(EbpfError::TcAttach {
                        interface: name.to_owned(),
                        first: Box::new(first),
                        source,
                    })
                })
            }
        }
    }

    fn sum(stats: &PerCpuArray<MapData, u64>, index: u32) -> u64 {
        stats
            .get(&index, 0)
            .map(|v| v.iter().copied().fold(0u64, u64::saturating_add))
            .unwrap_or(0)
    }

    /// Reads all maps; starts a new peak epoch.
    pub fn read(&mut self) -> Result<TcpSnapshot, ProbeError> {
        let old = self.epoch;
        self.epoch = self.epoch.wrapping_add(1).max(1);
        self.write_runtime()?;
        let slot = (old & 1) as usize;
        let mut snap = TcpSnapshot {
            segments: Self::sum(&self.stats, fanin_stat::SEGMENTS),
            lost: Self::sum(&self.stats, fanin_stat::ENDPOINTS_FULL)
                .saturating_add(Self::sum(&self.stats, fanin_stat::SENDERS_FAILED)),
            ..TcpSnapshot::default()
        };
        for item in self.endpoints.iter() {
            let (k, v) = item.map_err(read_err("FANIN_ENDPOINTS"))?;
            let Some(ep) = Endpoint::from_key(&k) else { continue };
            let (peak_short, peak_long) = if v.peak_tag[slot] == old {
                (v.peak[slot][0], v.peak[slot][1])
            } else {
                (0, 0)
            };
            snap.endpoints.insert(
                ep,
                EndpointReading {
                    peak_short,
                    peak_long,
                    bursts: v.bursts,
                    stalls: v.stalls,
                    stall_ns: v.stall_ns,
                    burst_stalls: v.burst_stalls,
                    holes: v.holes,
                    rexmits: v.rexmits,
                    burst_losses: v.burst_losses,
                    hist: v.hist,
                },
            );
        }
        if let Some((map, stats)) = &self.retrans {
            snap.retrans_lost = Self::sum(stats, retrans_stat::LOST);
            for item in map.iter() {
                let (k, values) = item.map_err(read_err("RETRANS"))?;
                if k.netns != 0 && self.own_netns.is_some_and(|own| own != k.netns) {
                    continue;
                }
                let n = values.iter().copied().fold(0u64, u64::saturating_add);
                let kind = retrans_kind::NAMES.get(k.kind as usize).copied().unwrap_or("probe");
                *snap.retrans.entry(kind).or_default() += n;
                if let Some(a) = addr_of(k.family, &k.raddr) {
                    *snap.retrans_by_peer.entry((a, kind)).or_default() += n;
                }
            }
        }
        if let Some(Ok(info)) = lock_ebpf(&self.ebpf).program("tcp_fanin").map(|p| p.info()) {
            snap.run_time_ns = u64::try_from(info.run_time().as_nanos()).unwrap_or(u64::MAX);
            snap.run_count = info.run_count();
        }
        Ok(snap)
    }

    /// When `peer` last delivered data to `ep` (bpf_ktime_get_ns, i.e.
    /// CLOCK_MONOTONIC), if the sender table still has it.
    pub fn sender_last_seen(&self, ep: &Endpoint, peer: IpAddr) -> Option<u64> {
        let (family, addr) = key_addr(ep.addr);
        let (pf, saddr) = key_addr(peer);
        if pf != family {
            return None;
        }
        let key = SenderKey {
            ep: EndpointKey {
                addr,
                port: ep.port,
                family,
            },
            saddr,
        };
        self.senders.get(&key, 0).ok().map(|s| s.last_ns).filter(|t| *t != 0)
    }

    /// Removes endpoints from the kernel table (idle ones, so the bounded
    /// table keeps room for new endpoints).
    pub fn forget(&mut self, endpoints: &[Endpoint]) {
        let keys: Vec<EndpointKey> = self.endpoints.keys().filter_map(Result::ok).collect();
        let mut by_ep: HashMap<Endpoint, EndpointKey> = HashMap::new();
        for k in keys {
            if let Some(ep) = Endpoint::from_key(&k) {
                by_ep.insert(ep, k);
            }
        }
        for ep in endpoints {
            if let Some(k) = by_ep.get(ep) {
                let _ = self.endpoints.remove(k);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_range_parses_like_the_kernel_prints_it() {
        assert_eq!(parse_port_range("32768\t60999\n"), Some((32768, 60999)));
        assert_eq!(parse_port_range("1024 65535"), Some((1024, 65535)));
        assert_eq!(parse_port_range("9 3"), None);
        assert_eq!(parse_port_range("x"), None);
    }

    #[test]
    fn endpoints_print_with_their_port_class() {
        let k = EndpointKey {
            addr: [u32::from_ne_bytes([10, 0, 0, 5]), 0, 0, 0],
            port: 6379,
            family: AF_INET,
        };
        let ep = Endpoint::from_key(&k).expect("v4");
        assert_eq!(ep.to_string(), "10.0.0.5:6379");
        assert_eq!(Endpoint { port: 0, ..ep }.to_string(), "10.0.0.5:*");
        let mut a = [0u32; 4];
        a[0] = u32::from_ne_bytes([0xfd, 0, 0, 0]);
        a[3] = u32::from_ne_bytes([0, 0, 0, 5]);
        let ep6 = Endpoint::from_key(&EndpointKey {
            addr: a,
            port: 80,
            family: AF_INET6,
        })
        .expect("v6");
        assert_eq!(ep6.to_string(), "[fd00::5]:80");
        assert_eq!(addr_of(AF_INET6, &key_addr(ep6.addr).1), Some(ep6.addr));
        assert_eq!(key_addr(ep.addr), (AF_INET, k.addr));
    }

    #[test]
    fn retransmit_offsets_come_from_the_running_kernels_btf() {
        let btf = KernelBtf::load(Path::new("/sys")).expect("this test needs /sys/kernel/btf/vmlinux");
        let off = retrans_offsets(&btf).expect("offsets");
        assert_ne!(off.skc_net, u32::MAX);
        assert!(off.ca_state_mask >= 7, "icsk_ca_state holds values up to TCP_CA_Loss=4");
        assert!(
            off.icsk_ca_state > off.skc_state,
            "inet_connection_sock fields follow sock_common"
        );
    }
}
