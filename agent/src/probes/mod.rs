//! Kernel and procfs readers, one module per signal (`drops`, `disk`,
//! `incast`, `routes`, `paths`; `object` holds the shared eBPF helpers).
//! Each separates reading (I/O) from parsing (pure, tested on fixture files
//! under agent/tests/fixtures/). Probes know neither `detect` nor `config`.
pub mod disk;
pub mod drops;
pub mod incast;
pub mod object;
pub mod paths;
pub mod routes;

/// The one loaded eBPF object (agent/src/ebpf.rs), shared by the probes
/// that take programs and maps from it.
pub type SharedEbpf = std::sync::Arc<std::sync::Mutex<aya::Ebpf>>;

/// Locks the shared object (a panic while holding it leaves it usable).
pub fn lock_ebpf(e: &SharedEbpf) -> std::sync::MutexGuard<'_, aya::Ebpf> {
    e.lock().unwrap_or_else(|p| p.into_inner())
}

/// Error of a collector. Never panics on kernel or file data.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("reading {path}: {source}")]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("parsing {what}: {detail}")]
    Parse { what: String, detail: String },
    /// A socket call refused (`what`: the call and what it was for).
    #[error("{what}: {source}")]
    Socket {
        what: &'static str,
        #[source]
        source: nix::Error,
    },
    /// Opening a netlink socket (`what`: what it was for).
    #[error("netlink: {what}: {source}")]
    NetlinkSocket {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// A netlink request the kernel refused or that failed to decode.
    #[error("netlink: {what}: {source}")]
    Netlink {
        what: &'static str,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("eBPF: {0}")]
    Ebpf(#[from] object::EbpfError),
}

/// Path of a test fixture under agent/tests/fixtures/.
#[cfg(test)]
pub(crate) fn fixture(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("fixtures")
        .join(name)
}
