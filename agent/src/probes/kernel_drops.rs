//! Kernel drops from the eBPF `kfree_skb` raw tracepoint (ebpf/src/nic_drops.rs):
//! per (network namespace, ifindex, drop reason) counters summed over CPUs.

use std::collections::HashMap;
use std::path::Path;

use aya::Ebpf;
use aya::maps::{MapData, PerCpuArray, PerCpuHashMap};
use aya::programs::RawTracePoint;
use graydar_common::drops::{DropKey, stat};

use super::ProbeError;
use crate::btf::{DropReasons, KernelBtf};

pub const PROBE: &str = "kfree_skb";

pub struct KernelDropsProbe {
    // Keeps the program attached; dropped with the probe.
    _ebpf: Ebpf,
    drops: PerCpuHashMap<MapData, DropKey, u64>,
    stats: PerCpuArray<MapData, u64>,
    reasons: DropReasons,
    own_netns: Option<u32>,
    netns_attribution: bool,
}

/// Cumulative counters read from the kernel maps.
#[derive(Debug, Default, Clone)]
pub struct KernelDropsSnapshot {
    /// Drops on devices of this agent's network namespace, by (ifindex, reason name).
    pub own: HashMap<(u32, String), u64>,
    /// Drops on devices of other namespaces, by reason name.
    pub other_netns: HashMap<String, u64>,
    /// Drops of skbs without a device, by reason name.
    pub no_device: HashMap<String, u64>,
    pub events: u64,
    pub lost: u64,
}

impl KernelDropsProbe {
    /// Reads offsets and reason names from BTF, loads and attaches the program.
    pub fn start(sysfs_root: &Path, own_netns: Option<u32>) -> Result<Self, ProbeError> {
        let btf = KernelBtf::load(sysfs_root).map_err(|e| ProbeError::Ebpf(e.to_string()))?;
        let (offsets, reasons) = btf.drop_probe_setup().map_err(|e| ProbeError::Ebpf(e.to_string()))?;
        let netns_attribution = offsets.dev_nd_net != u32::MAX && own_netns.is_some();
        if !netns_attribution {
            tracing::warn!("kernel drops: network-namespace attribution unavailable; attributing by ifindex only");
        }
        tracing::debug!(?offsets, reasons = reasons.len(), "kfree_skb probe setup from BTF");
        let mut ebpf =
            crate::ebpf::load(&offsets).map_err(|e| ProbeError::Ebpf(format!("loading eBPF object: {e}")))?;
        let prog: &mut RawTracePoint = ebpf
            .program_mut("kfree_skb")
            .ok_or_else(|| ProbeError::Ebpf("program kfree_skb missing from the object".into()))?
            .try_into()
            .map_err(|e| ProbeError::Ebpf(format!("kfree_skb: {e}")))?;
        prog.load()
            .map_err(|e| ProbeError::Ebpf(format!("loading kfree_skb: {e}")))?;
        prog.attach("kfree_skb")
            .map_err(|e| ProbeError::Ebpf(format!("attaching raw tracepoint kfree_skb: {e}")))?;
        let drops = ebpf
            .take_map("DROPS")
            .ok_or_else(|| ProbeError::Ebpf("map DROPS missing".into()))?;
        let drops = PerCpuHashMap::try_from(drops).map_err(|e| ProbeError::Ebpf(format!("DROPS: {e}")))?;
        let stats = ebpf
            .take_map("DROP_STATS")
            .ok_or_else(|| ProbeError::Ebpf("map DROP_STATS missing".into()))?;
        let stats = PerCpuArray::try_from(stats).map_err(|e| ProbeError::Ebpf(format!("DROP_STATS: {e}")))?;
        Ok(KernelDropsProbe {
            _ebpf: ebpf,
            drops,
            stats,
            reasons,
            own_netns,
            netns_attribution,
        })
    }

    fn stat(&self, index: u32) -> u64 {
        self.stats
            .get(&index, 0)
            .map(|v| v.iter().copied().fold(0u64, u64::saturating_add))
            .unwrap_or(0)
    }

    pub fn read(&self) -> Result<KernelDropsSnapshot, ProbeError> {
        let mut snap = KernelDropsSnapshot {
            events: self.stat(stat::EVENTS),
            lost: self.stat(stat::LOST).saturating_add(self.stat(stat::READ_ERRORS)),
            ..Default::default()
        };
        for item in self.drops.iter() {
            let (key, values) = item.map_err(|e| ProbeError::Ebpf(format!("reading DROPS: {e}")))?;
            let n = values.iter().copied().fold(0u64, u64::saturating_add);
            let reason = self.reasons.name(key.reason);
            if key.ifindex == 0 {
                *snap.no_device.entry(reason).or_default() += n;
            } else if self.netns_attribution && Some(key.netns) != self.own_netns {
                *snap.other_netns.entry(reason).or_default() += n;
            } else {
                *snap.own.entry((key.ifindex, reason)).or_default() += n;
            }
        }
        Ok(snap)
    }
}
