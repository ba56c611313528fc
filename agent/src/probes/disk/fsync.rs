//! fsync/fdatasync latency per block device from the eBPF programs in
//! ebpf/src/disk/fsync.rs (syscall enter/exit tracepoints; attribution through the
//! fd's inode's super block, see there for why).
//!
//! Set-up reads what the programs need from the running kernel: the offset of
//! `fd` in the `sys_enter_fsync` record from tracefs, and the struct member
//! offsets of the fd-table walk from BTF (Rust eBPF has no CO-RE).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use aya::Ebpf;
use aya::maps::{HashMap as BpfHashMap, MapData, PerCpuArray, PerCpuHashMap};
use aya::programs::TracePoint;
use graydar_common::disk::{FsyncInflight, FsyncOffsets, Hist, HistKey, stat};

use super::latency_hist::LatencyHist;
use crate::btf::KernelBtf;
use crate::probes::ProbeError;
use crate::probes::object::{EbpfError, attach_err, load_err, program, read_err, take_map};

pub const PROBE: &str = "fsync";

/// Offset of `field` in a tracefs event `format` file
/// (`field:unsigned int fd;\toffset:16;\tsize:8;\tsigned:0;`).
pub fn tracefs_field_offset(format: &str, field: &str) -> Option<u32> {
    format.lines().find_map(|line| {
        let line = line.trim();
        let decl = line.strip_prefix("field:")?.split(';').next()?;
        let name = decl.rsplit(|c: char| c.is_whitespace() || c == '*').next()?;
        let name = name.split('[').next()?;
        if name != field {
            return None;
        }
        line.split(';')
            .find_map(|p| p.trim().strip_prefix("offset:"))
            .and_then(|v| v.trim().parse().ok())
    })
}

/// Everything the fsync programs need from this kernel.
pub fn offsets(btf: &KernelBtf, tracefs: &Path) -> Result<FsyncOffsets, ProbeError> {
    let mut tp_fd = None;
    for event in ["sys_enter_fsync", "sys_enter_fdatasync"] {
        let path = tracefs.join("events/syscalls").join(event).join("format");
        let text = std::fs::read_to_string(&path).map_err(|source| ProbeError::Io {
            path: path.clone(),
            source,
        })?;
        let off = tracefs_field_offset(&text, "fd").ok_or_else(|| ProbeError::Parse {
            what: path.display().to_string(),
            detail: "no `fd` field".into(),
        })?;
        if tp_fd.is_some_and(|o| o != off) {
            return Err(ProbeError::Parse {
                what: "syscalls tracepoints".into(),
                detail: "fd at different offsets for fsync and fdatasync".into(),
            });
        }
        tp_fd = Some(off);
    }
    let m = |s: &str, f: &str| btf.member_offset(s, f).map_err(|e| ProbeError::Ebpf(EbpfError::Btf(e)));
    let (sb_bdev, bdev_dev) = match (
        btf.member_offset("super_block", "s_bdev"),
        btf.member_offset("block_device", "bd_dev"),
    ) {
        (Ok(a), Ok(b)) => (a, b),
        _ => (u32::MAX, 0),
    };
    Ok(FsyncOffsets {
        tp_fd: tp_fd.unwrap_or(16),
        task_files: m("task_struct", "files")?,
        files_fdt: m("files_struct", "fdt")?,
        fdt_max_fds: m("fdtable", "max_fds")?,
        fdt_fd: m("fdtable", "fd")?,
        file_inode: m("file", "f_inode")?,
        inode_sb: m("inode", "i_sb")?,
        sb_dev: m("super_block", "s_dev")?,
        sb_bdev,
        bdev_dev,
    })
}

/// Loads and attaches the three programs to the four syscall tracepoints.
/// How the enter programs walk the fd table (`[ebpf] fsync`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FsyncWalk {
    /// BTF-typed, falling back to probe reads where the kernel refuses it.
    #[default]
    Auto,
    /// BTF-typed loads only (`fsync_enter_btf`, `fdatasync_enter_btf`).
    Btf,
    /// A bpf_probe_read_kernel per pointer (`fsync_enter`, `fdatasync_enter`).
    ProbeRead,
}

/// Attaches the enter programs (the BTF-typed ones or those that read every
/// pointer with bpf_probe_read_kernel, as `walk` says) and the exit program.
/// Returns whether the typed ones run.
pub fn attach(ebpf: &mut Ebpf, walk: FsyncWalk) -> Result<bool, ProbeError> {
    let mut typed = walk != FsyncWalk::ProbeRead;
    for (btf_prog, prog, event) in [
        ("fsync_enter_btf", "fsync_enter", "sys_enter_fsync"),
        ("fdatasync_enter_btf", "fdatasync_enter", "sys_enter_fdatasync"),
    ] {
        let chosen = if typed {
            let p: &mut TracePoint = program(ebpf, btf_prog)?;
            match p.load() {
                Ok(()) => btf_prog,
                Err(e) if walk == FsyncWalk::Auto => {
                    tracing::info!(error = %e, "fsync probe: the kernel refuses the BTF-typed enter programs; using bpf_probe_read_kernel");
                    typed = false;
                    prog
                }
                Err(e) => return Err(load_err(btf_prog)(e).into()),
            }
        } else {
            prog
        };
        let p: &mut TracePoint = program(ebpf, chosen)?;
        if chosen == prog {
            p.load().map_err(load_err(prog))?;
        }
        p.attach("syscalls", event)
            .map_err(attach_err(chosen, format!("syscalls:{event}")))?;
    }
    let prog = "fsync_exit";
    let p: &mut TracePoint = program(ebpf, prog)?;
    p.load().map_err(load_err(prog))?;
    for ev in ["sys_exit_fsync", "sys_exit_fdatasync"] {
        p.attach("syscalls", ev)
            .map_err(attach_err(prog, format!("syscalls:{ev}")))?;
    }
    Ok(typed)
}

/// Cumulative state of the fsync maps.
#[derive(Clone, Debug, Default)]
pub struct FsyncSnapshot {
    /// Histograms by (kernel dev_t, op), summed over CPUs.
    pub hists: BTreeMap<HistKey, LatencyHist>,
    /// Age of the oldest fsync in flight, by kernel dev_t.
    pub oldest_inflight: BTreeMap<u32, Duration>,
    pub no_start: u64,
    pub lost: u64,
    pub read_errors: u64,
}

pub struct FsyncReader {
    hist: PerCpuHashMap<MapData, HistKey, Hist>,
    inflight: BpfHashMap<MapData, u32, FsyncInflight>,
    stats: PerCpuArray<MapData, u64>,
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of bpf_ktime_get_ns().
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into the valid, initialized timespec.
    if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) } != 0 {
        return 0;
    }
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

impl FsyncReader {
    pub fn take(ebpf: &mut Ebpf) -> Result<Self, ProbeError> {
        let hist = take_map(ebpf, "FSYNC_HIST")?;
        let inflight = take_map(ebpf, "FSYNC_INFLIGHT")?;
        let stats = take_map(ebpf, "FSYNC_STATS")?;
        Ok(FsyncReader { hist, inflight, stats })
    }

    fn stat(&self, index: u32) -> u64 {
        self.stats
            .get(&index, 0)
            .map(|v| v.iter().copied().fold(0u64, u64::saturating_add))
            .unwrap_or(0)
    }

    /// Reads the maps. The in-flight table has an entry per thread that has
    /// synced (reused by its next call, `start_ns` 0 while idle): an idle
    /// entry whose thread is gone (`$PROCFS_ROOT/<tid>` missing) is deleted,
    /// so the table keeps room for new threads. Calls older than 1 s are
    /// checked against `$PROCFS_ROOT/<tid>/syscall`: one whose thread is gone
    /// or is in another system call missed its exit (it cannot happen in
    /// normal operation, but a stale entry would read as a stuck fsync
    /// forever) and is deleted.
    pub fn read(&mut self, procfs_root: &Path) -> Result<FsyncSnapshot, ProbeError> {
        let mut snap = FsyncSnapshot {
            no_start: self.stat(stat::NO_START),
            lost: self.stat(stat::LOST),
            read_errors: self.stat(stat::READ_ERRORS),
            ..Default::default()
        };
        for item in self.hist.iter() {
            let (key, values) = item.map_err(read_err("FSYNC_HIST"))?;
            snap.hists.insert(key, LatencyHist::sum_of(values.iter()));
        }
        let now = monotonic_ns();
        let mut stale = Vec::new();
        for item in self.inflight.iter() {
            // An entry can vanish between the key walk and its lookup.
            let Ok((tid, v)) = item else { continue };
            if v.start_ns == 0 {
                if !procfs_root.join(tid.to_string()).exists() {
                    stale.push(tid);
                }
                continue;
            }
            let age = Duration::from_nanos(now.saturating_sub(v.start_ns));
            if age >= Duration::from_secs(1)
                && !in_sync_call(&std::fs::read_to_string(procfs_root.join(format!("{tid}/syscall"))).ok())
            {
                stale.push(tid);
                continue;
            }
            let e = snap.oldest_inflight.entry(v.dev).or_default();
            *e = (*e).max(age);
        }
        for tid in stale {
            tracing::debug!(tid, "dropping a stale or gone thread's in-flight fsync entry");
            let _ = self.inflight.remove(&tid);
        }
        Ok(snap)
    }
}

/// Whether `/proc/<tid>/syscall` text says the thread is (still) in
/// fsync/fdatasync: the first field is the syscall number, or `running`
/// (on a CPU: could be inside fsync, kept). Gone (`None`) or another call: no.
pub fn in_sync_call(syscall_file: &Option<String>) -> bool {
    let Some(text) = syscall_file else { return false };
    match text.split_whitespace().next() {
        Some("running") => true,
        Some(nr) => nr
            .parse::<i64>()
            .is_ok_and(|n| n == libc::SYS_fsync || n == libc::SYS_fdatasync),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fd_offset_from_the_tracefs_format() {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tracefs_sys_enter_fdatasync.format");
        let text = std::fs::read_to_string(&p).expect("fixture");
        assert_eq!(tracefs_field_offset(&text, "fd"), Some(16));
        assert_eq!(tracefs_field_offset(&text, "__syscall_nr"), Some(8));
        assert_eq!(tracefs_field_offset(&text, "common_pid"), Some(4));
        assert_eq!(tracefs_field_offset(&text, "nope"), None);
        let arr = "\tfield:char rwbs[10];\toffset:34;\tsize:10;\tsigned:0;";
        assert_eq!(tracefs_field_offset(arr, "rwbs"), Some(34));
    }

    #[test]
    fn stale_inflight_entries_are_recognised() {
        let fsync = format!("{} 0x3 0x0 0x0 0x0 0x0 0x0 0x7ffd 0x7f00\n", libc::SYS_fdatasync);
        assert!(in_sync_call(&Some(fsync)));
        assert!(in_sync_call(&Some("running\n".into())));
        assert!(
            !in_sync_call(&Some("0 0x3 0x7f 0x1000 0x0 0x0 0x0 0x7ffd 0x7f00\n".into())),
            "read(2)"
        );
        assert!(!in_sync_call(&None), "thread gone");
        assert!(!in_sync_call(&Some("-1 0x7ffd 0x7f00\n".into())), "not in a syscall");
    }

    #[test]
    fn fd_table_walk_offsets_from_the_running_kernel() {
        let btf = KernelBtf::load(Path::new("/sys")).expect("this test needs /sys/kernel/btf/vmlinux");
        let m = |s: &str, f: &str| btf.member_offset(s, f).unwrap_or_else(|e| panic!("{s}.{f}: {e}"));
        assert!(m("task_struct", "files") > 0);
        assert_eq!(m("file", "f_inode") % 8, 0);
        assert!(m("super_block", "s_dev") > 0);
        assert!(m("fdtable", "fd") > 0);
        m("files_struct", "fdt");
        m("inode", "i_sb");
        m("block_device", "bd_dev");
    }
}
