//! Block request latency per device and operation, and block errors, from
//! the eBPF programs in ebpf/src/disk/block_io.rs (raw tracepoints
//! block_rq_issue → block_rq_complete).
//!
//! Set-up reads the `struct request` / `gendisk` member offsets and the
//! `REQ_OP_*` values and `REQ_PREFLUSH` / `REQ_FUA` bits from the running
//! kernel's BTF (`enum req_op` — `req_opf` before 6.0 — and
//! `enum req_flag_bits`), never from compiled-in headers.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use aya::Ebpf;
use aya::maps::{MapData, PerCpuArray, PerCpuHashMap};
use aya::programs::RawTracePoint;
use graydar_common::disk::{BlockOffsets, Hist, HistKey, dev_major, dev_minor, stat};

use super::latency_hist::LatencyHist;
use crate::btf::{BtfError, KernelBtf};
use crate::probes::ProbeError;
use crate::probes::object::{EbpfError, attach_err, load_err, program, read_err, take_map};

pub const PROBE: &str = "block_io";

fn enum_value(values: &BTreeMap<u32, String>, name: &str) -> Option<u32> {
    values.iter().find(|(_, n)| n.as_str() == name).map(|(v, _)| *v)
}

/// Everything the block programs need from this kernel.
pub fn offsets(btf: &KernelBtf) -> Result<BlockOffsets, ProbeError> {
    offsets_from(btf).map_err(|e| ProbeError::Ebpf(EbpfError::Btf(e)))
}

fn offsets_from(btf: &KernelBtf) -> Result<BlockOffsets, BtfError> {
    let ops = btf.enum_values("req_op").or_else(|_| btf.enum_values("req_opf"))?;
    let flags = btf.enum_values("req_flag_bits")?;
    let op = |n: &str| enum_value(&ops, n).ok_or_else(|| BtfError::Missing(n.to_owned()));
    let bit = |n: &str| enum_value(&flags, n).ok_or_else(|| BtfError::Missing(n.to_owned()));
    // The flag bits start right after the op bits: __REQ_FAILFAST_DEV = REQ_OP_BITS.
    let op_bits = bit("__REQ_FAILFAST_DEV").unwrap_or(8).min(31);
    let (rq_q, q_disk, rq_disk) = match (
        btf.member_offset("request", "q"),
        btf.member_offset("request_queue", "disk"),
    ) {
        (Ok(q), Ok(d)) => (q, d, u32::MAX),
        _ => (u32::MAX, 0, btf.member_offset("request", "rq_disk")?),
    };
    Ok(BlockOffsets {
        rq_cmd_flags: btf.member_offset("request", "cmd_flags")?,
        rq_q,
        q_disk,
        rq_disk,
        disk_major: btf.member_offset("gendisk", "major")?,
        disk_first_minor: btf.member_offset("gendisk", "first_minor")?,
        op_mask: (1u32 << op_bits) - 1,
        op_read: op("REQ_OP_READ")?,
        op_write: op("REQ_OP_WRITE")?,
        op_flush: op("REQ_OP_FLUSH")?,
        op_discard: op("REQ_OP_DISCARD")?,
        flag_preflush: 1u32 << bit("__REQ_PREFLUSH")?.min(31),
        flag_fua: 1u32 << bit("__REQ_FUA")?.min(31),
        _pad: 0,
    })
}

pub fn attach(ebpf: &mut Ebpf) -> Result<(), ProbeError> {
    for (prog, tp) in [
        ("block_rq_issue", "block_rq_issue"),
        ("block_rq_complete", "block_rq_complete"),
    ] {
        let p: &mut RawTracePoint = program(ebpf, prog)?;
        p.load().map_err(load_err(prog))?;
        p.attach(tp).map_err(attach_err(prog, format!("raw tracepoint {tp}")))?;
    }
    Ok(())
}

#[derive(Clone, Debug, Default)]
pub struct BlockSnapshot {
    pub hists: BTreeMap<HistKey, LatencyHist>,
    pub errors: BTreeMap<HistKey, u64>,
    pub no_start: u64,
    pub lost: u64,
    pub read_errors: u64,
}

pub struct BlockReader {
    hist: PerCpuHashMap<MapData, HistKey, Hist>,
    errors: PerCpuHashMap<MapData, HistKey, u64>,
    stats: PerCpuArray<MapData, u64>,
}

impl BlockReader {
    pub fn take(ebpf: &mut Ebpf) -> Result<Self, ProbeError> {
        Ok(BlockReader {
            hist: take_map(ebpf, "BLOCK_HIST")?,
            errors: take_map(ebpf, "BLOCK_ERRORS")?,
            stats: take_map(ebpf, "BLOCK_STATS")?,
        })
    }

    fn stat(&self, index: u32) -> u64 {
        self.stats
            .get(&index, 0)
            .map(|v| v.iter().copied().fold(0u64, u64::saturating_add))
            .unwrap_or(0)
    }

    pub fn read(&self) -> Result<BlockSnapshot, ProbeError> {
        let mut snap = BlockSnapshot {
            no_start: self.stat(stat::NO_START),
            lost: self.stat(stat::LOST),
            read_errors: self.stat(stat::READ_ERRORS),
            ..Default::default()
        };
        for item in self.hist.iter() {
            let (key, values) = item.map_err(read_err("BLOCK_HIST"))?;
            snap.hists.insert(key, LatencyHist::sum_of(values.iter()));
        }
        for item in self.errors.iter() {
            let (key, values) = item.map_err(read_err("BLOCK_ERRORS"))?;
            snap.errors
                .insert(key, values.iter().copied().fold(0u64, u64::saturating_add));
        }
        Ok(snap)
    }
}

/// Names of block devices by kernel dev_t, from `$SYSFS_ROOT/dev/block/M:m/uevent`
/// (`DEVNAME=`), cached; anonymous devices (major 0: tmpfs, overlayfs,
/// btrfs without s_bdev) are `_nodev`, an unknown one `_unknown`.
pub struct DeviceNames {
    sysfs_root: PathBuf,
    cache: HashMap<u32, String>,
}

impl DeviceNames {
    pub fn new(sysfs_root: &Path) -> Self {
        DeviceNames {
            sysfs_root: sysfs_root.to_owned(),
            cache: HashMap::new(),
        }
    }

    pub fn name(&mut self, dev: u32) -> String {
        if dev == 0 {
            return "_unknown".into();
        }
        if dev_major(dev) == 0 {
            return "_nodev".into();
        }
        if let Some(n) = self.cache.get(&dev) {
            return n.clone();
        }
        let (major, minor) = (dev_major(dev), dev_minor(dev));
        let path = self.sysfs_root.join(format!("dev/block/{major}:{minor}/uevent"));
        let name = std::fs::read_to_string(&path)
            .ok()
            .and_then(|t| {
                t.lines()
                    .find_map(|l| l.strip_prefix("DEVNAME=").map(|s| s.trim().to_owned()))
            })
            .filter(|n| !n.is_empty());
        match name {
            Some(n) => {
                self.cache.insert(dev, n.clone());
                n
            }
            // Not cached: the device may appear later (or was removed).
            None => format!("{major}:{minor}"),
        }
    }

    /// Forgets cached names (devices can be re-created with other numbers).
    pub fn clear(&mut self) {
        self.cache.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use graydar_common::disk::mkdev;

    #[test]
    fn request_offsets_and_op_values_from_the_running_kernel() {
        let btf = KernelBtf::load(Path::new("/sys")).expect("this test needs /sys/kernel/btf/vmlinux");
        let o = offsets(&btf).expect("block offsets");
        assert_eq!(o.op_read, 0);
        assert_eq!(o.op_write, 1);
        assert_eq!(o.op_flush, 2);
        assert_eq!(o.op_mask, 0xff, "REQ_OP_BITS is 8 since 4.10");
        assert!(o.flag_preflush.is_power_of_two() && o.flag_preflush > 0xff);
        assert!(o.flag_fua.is_power_of_two() && o.flag_fua > 0xff && o.flag_fua != o.flag_preflush);
        assert_ne!(o.rq_q, u32::MAX, "6.x kernels reach the disk through rq->q->disk");
    }

    #[test]
    fn device_names_from_sysfs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path().join("dev/block/7:3");
        std::fs::create_dir_all(&d).expect("mkdir");
        std::fs::write(d.join("uevent"), "MAJOR=7\nMINOR=3\nDEVNAME=loop3\nDEVTYPE=disk\n").expect("write");
        let mut n = DeviceNames::new(dir.path());
        assert_eq!(n.name(mkdev(7, 3)), "loop3");
        assert_eq!(n.name(mkdev(7, 4)), "7:4");
        assert_eq!(n.name(mkdev(0, 44)), "_nodev");
        assert_eq!(n.name(0), "_unknown");
    }
}
