//! Kernel drops from the eBPF `kfree_skb` raw tracepoint (ebpf/src/drops.rs):
//! per (network namespace, ifindex, drop reason) counters summed over CPUs.

use std::collections::HashMap;

use aya::Ebpf;
use aya::maps::{MapData, PerCpuArray, PerCpuHashMap};
use aya::programs::{BtfTracePoint, RawTracePoint};
use graydar_common::drops::{DropKey, DropOffsets, stat};

use crate::btf::DropReasons;
use crate::probes::object::{EbpfError, attach_err, load_err, program, read_err, take_map};
use crate::probes::{ProbeError, SharedEbpf, lock_ebpf};

/// How the kfree_skb probe attaches: `auto` tries the BTF-typed tracepoint
/// (cheaper: direct loads) and falls back to the raw tracepoint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttachMode {
    #[default]
    Auto,
    TpBtf,
    RawTp,
}

pub const PROBE: &str = "kfree_skb";

pub struct KernelDropsProbe {
    // Keeps the program attached while any probe holds the object.
    ebpf: SharedEbpf,
    drops: PerCpuHashMap<MapData, DropKey, u64>,
    stats: PerCpuArray<MapData, u64>,
    reasons: DropReasons,
    own_netns: Option<u32>,
    netns_attribution: bool,
    program: &'static str,
}

/// tp_btf: the verifier types `skb`, so the program loads fields directly.
fn attach_btf(ebpf: &mut Ebpf, btf: Option<&aya::Btf>) -> Result<(), EbpfError> {
    const PROG: &str = "kfree_skb_btf";
    let btf = btf.ok_or(EbpfError::NoAyaBtf)?;
    let prog: &mut BtfTracePoint = program(ebpf, PROG)?;
    prog.load("kfree_skb", btf).map_err(load_err(PROG))?;
    prog.attach().map_err(attach_err(PROG, "tp_btf kfree_skb"))?;
    Ok(())
}

fn attach_raw(ebpf: &mut Ebpf) -> Result<(), EbpfError> {
    const PROG: &str = "kfree_skb";
    let prog: &mut RawTracePoint = program(ebpf, PROG)?;
    prog.load().map_err(load_err(PROG))?;
    prog.attach("kfree_skb")
        .map_err(attach_err(PROG, "raw tracepoint kfree_skb"))?;
    Ok(())
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
    /// Cumulative time the kernel spent in the program and its invocations;
    /// both stay 0 unless kernel.bpf_stats_enabled=1 (the kernel only
    /// measures when asked, since measuring costs two clock reads per run).
    pub run_time_ns: u64,
    pub run_count: u64,
}

impl KernelDropsProbe {
    /// Attaches the program of the shared object (loaded with `offsets`
    /// set as its globals; `btf`: aya's kernel BTF, for tp_btf) and takes
    /// its maps.
    pub fn start(
        object: SharedEbpf,
        btf: Option<&aya::Btf>,
        offsets: &DropOffsets,
        reasons: DropReasons,
        own_netns: Option<u32>,
        mode: AttachMode,
    ) -> Result<Self, ProbeError> {
        let netns_attribution = offsets.dev_nd_net != u32::MAX && own_netns.is_some();
        if !netns_attribution {
            tracing::warn!("kernel drops: network-namespace attribution unavailable; attributing by ifindex only");
        }
        tracing::debug!(?offsets, reasons = reasons.len(), "kfree_skb probe setup from BTF");
        let mut guard = lock_ebpf(&object);
        let ebpf = &mut *guard;
        let program = match mode {
            AttachMode::TpBtf => {
                attach_btf(ebpf, btf)?;
                "kfree_skb_btf"
            }
            AttachMode::RawTp => {
                attach_raw(ebpf)?;
                "kfree_skb"
            }
            AttachMode::Auto => match attach_btf(ebpf, btf) {
                Ok(()) => "kfree_skb_btf",
                Err(e) => {
                    tracing::info!(reason = %e, "tp_btf kfree_skb refused; using the raw tracepoint");
                    attach_raw(ebpf)?;
                    "kfree_skb"
                }
            },
        };
        let drops: PerCpuHashMap<_, _, _> = take_map(ebpf, "DROPS")?;
        let stats: PerCpuArray<_, _> = take_map(ebpf, "DROP_STATS")?;
        drop(guard);
        Ok(KernelDropsProbe {
            ebpf: object,
            drops,
            stats,
            reasons,
            own_netns,
            netns_attribution,
            program,
        })
    }

    /// Which program is attached: `kfree_skb_btf` (tp_btf, direct loads) or
    /// `kfree_skb` (raw tracepoint, bpf_probe_read_kernel).
    pub fn program(&self) -> &'static str {
        self.program
    }

    fn stat(&self, index: u32) -> u64 {
        self.stats
            .get(&index, 0)
            .map(|v| v.iter().copied().fold(0u64, u64::saturating_add))
            .unwrap_or(0)
    }

    pub fn read(&self) -> Result<KernelDropsSnapshot, ProbeError> {
        let lost = self.stat(stat::LOST);
        let mut snap = KernelDropsSnapshot {
            // Not counted on the hot path: every event is a recorded drop, a
            // filtered non-drop, or a lost drop.
            events: self.stat(stat::NOT_DROPS).saturating_add(lost),
            lost: lost.saturating_add(self.stat(stat::READ_ERRORS)),
            ..Default::default()
        };
        if let Some(Ok(info)) = lock_ebpf(&self.ebpf).program(self.program).map(|p| p.info()) {
            snap.run_time_ns = u64::try_from(info.run_time().as_nanos()).unwrap_or(u64::MAX);
            snap.run_count = info.run_count();
        }
        for item in self.drops.iter() {
            let (key, values) = item.map_err(read_err("DROPS"))?;
            let n = values.iter().copied().fold(0u64, u64::saturating_add);
            snap.events = snap.events.saturating_add(n);
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
