//! Host facts and set-up: pseudo filesystems, privileges, own network namespace.

use std::path::Path;

use nix::mount::{MsFlags, mount};

/// Mounts tracefs and bpffs where the kernel expects them when they are not
/// mounted yet (they are not at boot on some hosts; aya's tracepoint attach
/// needs tracefs), as bpftrace does. Failures are logged, not fatal: raw
/// tracepoints do not need either.
pub fn ensure_pseudo_filesystems() {
    for (fstype, target, probe) in [
        ("tracefs", "/sys/kernel/tracing", "/sys/kernel/tracing/events"),
        ("bpf", "/sys/fs/bpf", ""),
    ] {
        let mounted = if probe.is_empty() {
            is_mount_of(target, fstype)
        } else {
            Path::new(probe).exists()
        };
        if mounted {
            continue;
        }
        match mount(Some(fstype), target, Some(fstype), MsFlags::empty(), None::<&str>) {
            Ok(()) => tracing::info!(fstype, target, "mounted"),
            Err(e) => {
                tracing::warn!(fstype, target, error = %e, "could not mount; probes that need it will be disabled")
            }
        }
    }
}

fn is_mount_of(target: &str, fstype: &str) -> bool {
    std::fs::read_to_string("/proc/self/mounts")
        .map(|m| {
            m.lines().any(|l| {
                let mut f = l.split_whitespace();
                let _src = f.next();
                f.next() == Some(target) && f.next() == Some(fstype)
            })
        })
        .unwrap_or(false)
}

/// Inode number of this process's network namespace (what the kernel's
/// `net->ns.inum` holds), used to attribute kernel drops to own interfaces.
pub fn own_netns_inode() -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata("/proc/self/ns/net").ok()?;
    u32::try_from(meta.ino()).ok()
}

/// Whether this process can load eBPF programs: effective root or CAP_BPF
/// (with CAP_PERFMON for tracing) in its effective set.
pub fn can_load_bpf() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    // CAP_BPF = 39, CAP_PERFMON = 38, CAP_SYS_ADMIN = 21 (linux/capability.h).
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return false;
    };
    let Some(hex) = status.lines().find_map(|l| l.strip_prefix("CapEff:")) else {
        return false;
    };
    let Ok(eff) = u64::from_str_radix(hex.trim(), 16) else {
        return false;
    };
    let has = |bit: u32| eff & (1u64 << bit) != 0;
    has(21) || (has(39) && has(38))
}

/// Hands the heap that start-up used and freed back to the kernel.
///
/// Start-up parses the kernel's BTF and loads the eBPF object: tens of MiB of
/// short-lived allocations. glibc returns freed heap to the kernel only from
/// the top of the heap, so one small long-lived allocation made after them
/// keeps all of it resident: measured in the test VM (Debian 6.1 kernel,
/// `cargo xtask bench --only idle-cpus`), the idle agent held 53 MiB of freed
/// heap, 2 MiB after `malloc_trim(0)`. Called when every signal has started
/// and again when the agent is ready. A no-op where the C library is not glibc.
pub fn release_freed_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim has no preconditions; it only walks glibc's own
        // arenas under their locks.
        let released = unsafe { libc::malloc_trim(0) };
        tracing::debug!(released = released != 0, "start-up heap handed back to the kernel");
    }
}
