//! The eBPF object built by build.rs (crate graydar-ebpf) and loading it.

use aya::{Ebpf, EbpfLoader};
use graydar_common::drops::DropOffsets;

/// The eBPF object, embedded at build time.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/graydar"));

/// Loads the object with the kernel-specific globals set (struct offsets read
/// from BTF). Programs are loaded and attached by their probes.
pub fn load(drop_offsets: &DropOffsets) -> Result<Ebpf, aya::EbpfError> {
    raise_memlock_limit();
    EbpfLoader::new()
        .override_global("DROP_OFFSETS", drop_offsets, true)
        .load(EBPF_OBJECT)
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK; lift it as aya's
/// template does. Harmless on newer kernels (memcg accounting).
pub fn raise_memlock_limit() {
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
