//! `cargo xtask bench --only fault-latency`: apply and revert latency of netem and
//! dm faults (goal ≤ 50 ms each), measured inside the test VM
//! (Debian's kernel under QEMU **software emulation**, so absolute times are
//! slower than on hardware), each next to a baseline measured in the same
//! run: one RTM_GETQDISC dump round trip for netlink, one DM_VERSION ioctl
//! for device-mapper. The measuring code is the `#[ignore]`d
//! `bench_fault_apply_revert_latency` in tests/tests/vm_faults.rs (a no-op
//! unless GRAYDAR_BENCH=1); it prints its table on the guest console, which
//! this streams.

use std::path::Path;

use anyhow::{Context as _, Result};

pub fn run(ws: &Path) -> Result<()> {
    let cache = crate::vm::default_cache(ws);
    let bins = crate::vm::cargo_executables(ws, &["test", "-p", "graydar-tests", "--no-run", "--test", "vm_faults"])?;
    let bin = bins.first().context("cargo built no vm_faults test executable")?;
    println!("bench faults: apply/revert latency of netem and dm faults in the VM (TCG)");
    crate::vm::run_command(
        ws,
        &cache,
        &format!(
            "GRAYDAR_VM=1 GRAYDAR_BENCH=1 {} --include-ignored --test-threads=1 --nocapture --exact \
             bench_fault_apply_revert_latency",
            bin.display()
        ),
        crate::vm::DEFAULT_CPUS,
    )
}
