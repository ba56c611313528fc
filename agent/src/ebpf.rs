//! The eBPF object built by build.rs (crate graydar-ebpf), loaded once.
//!
//! [`load`] reads the kernel's BTF once (btf-rs for the struct offsets, aya's
//! parser for relocations and tp_btf), raises RLIMIT_MEMLOCK once, works out
//! every probe's globals and loads the object with all of them set. The
//! probes then take their programs and maps from the one [`Programs`]; a
//! probe whose setup failed (its offsets missing from this kernel) is
//! disabled alone, the others attach.

use std::path::Path;
use std::sync::{Arc, Mutex};

use aya::EbpfLoader;
use graydar_common::disk::{BlockOffsets, FsyncOffsets};
use graydar_common::drops::DropOffsets;
use graydar_common::tcp::{FaninConfig, RetransOffsets};

use crate::btf::{DropReasons, KernelBtf};
use crate::probes::disk::{block_io, fsync};
use crate::probes::incast::fanin;
use crate::probes::object::EbpfError;
use crate::probes::{ProbeError, SharedEbpf};

/// The eBPF object, embedded at build time.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/graydar"));

/// Where tracefs is mounted (the syscall tracepoints' formats).
const TRACEFS: &str = "/sys/kernel/tracing";

/// Why there is no eBPF object.
#[derive(Debug, thiserror::Error)]
pub enum Unavailable {
    #[error("not root and no CAP_BPF+CAP_PERFMON")]
    NotAllowed,
    #[error("{0}")]
    Failed(#[source] ProbeError),
}

/// The loaded object and what each probe needs from this kernel. Each
/// probe's setup is taken once, by the signal that attaches it.
pub struct Programs {
    object: SharedEbpf,
    /// aya's view of the kernel BTF, for tp_btf programs.
    btf: Option<aya::Btf>,
    drops: Option<Result<(DropOffsets, DropReasons), ProbeError>>,
    fsync: Option<Result<FsyncOffsets, ProbeError>>,
    block: Option<Result<BlockOffsets, ProbeError>>,
    retrans: Option<Result<RetransOffsets, ProbeError>>,
}

fn taken() -> ProbeError {
    ProbeError::Ebpf(EbpfError::SetupTaken)
}

impl Programs {
    /// The object, shared by every probe (programs stay attached while any
    /// probe holds it).
    pub fn object(&self) -> SharedEbpf {
        Arc::clone(&self.object)
    }

    /// aya's parsed kernel BTF, when it parsed.
    pub fn btf(&self) -> Option<&aya::Btf> {
        self.btf.as_ref()
    }

    /// Drops the parsed kernel BTF once every program is loaded (see
    /// [`crate::signals::Runner::started`]); [`Programs::btf`] is `None` after.
    pub fn release_btf(&mut self) {
        self.btf = None;
    }

    /// kfree_skb: struct offsets and the drop reasons' names.
    pub fn take_drops(&mut self) -> Result<(DropOffsets, DropReasons), ProbeError> {
        self.drops.take().unwrap_or_else(|| Err(taken()))
    }

    /// fsync/fdatasync: struct and tracepoint offsets.
    pub fn take_fsync(&mut self) -> Result<FsyncOffsets, ProbeError> {
        self.fsync.take().unwrap_or_else(|| Err(taken()))
    }

    /// block_rq_issue/complete: struct offsets and request flags.
    pub fn take_block(&mut self) -> Result<BlockOffsets, ProbeError> {
        self.block.take().unwrap_or_else(|| Err(taken()))
    }

    /// tcp_retransmit_skb: struct offsets.
    pub fn take_retrans(&mut self) -> Result<RetransOffsets, ProbeError> {
        self.retrans.take().unwrap_or_else(|| Err(taken()))
    }
}

/// Reads the kernel's BTF under `sysfs_root` once and loads the object with
/// every probe's globals set (`fanin`: the TCP fan-in constants). Programs
/// are loaded and attached by their probes.
///
/// The kernel BTF parses into about 9 MiB of heap (6.18 kernel), and aya
/// parses it on its own twice: in its feature detection and in
/// `EbpfLoader::new`. Those run first, each parse freed before the next, so
/// no two copies are alive at once (the agent's peak RSS at start-up).
pub fn load(sysfs_root: &Path, fanin: &FaninConfig) -> Result<Programs, ProbeError> {
    raise_memlock_limit();
    let _ = aya::features();
    let mut loader = EbpfLoader::new();
    loader.btf(None);
    let btf = KernelBtf::load(sysfs_root).map_err(EbpfError::Btf)?;
    let drops = btf.drop_probe_setup().map_err(|e| ProbeError::Ebpf(EbpfError::Btf(e)));
    let fsync = fsync::offsets(&btf, Path::new(TRACEFS));
    let block = block_io::offsets(&btf);
    let retrans = fanin::retrans_offsets(&btf);
    drop(btf);
    let path = sysfs_root.join("kernel/btf/vmlinux");
    let aya_btf = aya::Btf::parse_file(&path, aya::Endianness::default())
        .inspect_err(|e| tracing::debug!(path = %path.display(), error = %e, "aya cannot parse the kernel BTF"))
        .ok();
    if let Some(b) = &aya_btf {
        loader.btf(Some(b));
    }
    if let Ok((o, _)) = &drops {
        loader.override_global("DROP_OFFSETS", o, true);
    }
    if let Ok(o) = &fsync {
        loader.override_global("FSYNC_OFFSETS", o, true);
    }
    if let Ok(o) = &block {
        loader.override_global("BLOCK_OFFSETS", o, true);
    }
    let retrans_globals = retrans.as_ref().copied().unwrap_or_default();
    loader.override_global("TCP_FANIN_CONFIG", fanin, true);
    loader.override_global("TCP_RETRANS_OFFSETS", &retrans_globals, true);
    let object = loader.load(EBPF_OBJECT).map_err(EbpfError::from)?;
    Ok(Programs {
        object: Arc::new(Mutex::new(object)),
        btf: aya_btf,
        drops: Some(drops),
        fsync: Some(fsync),
        block: Some(block),
        retrans: Some(retrans),
    })
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK; lift it as aya's
/// template does. Harmless on newer kernels (memcg accounting).
fn raise_memlock_limit() {
    let rlim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit with a valid, initialized struct.
    let ret = unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) };
    if ret != 0 {
        tracing::debug!("could not raise RLIMIT_MEMLOCK: {}", std::io::Error::last_os_error());
    }
}
