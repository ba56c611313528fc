//! `cargo xtask bench --only fault-latency`: apply and revert latency of netem and
//! dm faults (goal ≤ 50 ms each), measured inside the test VM
//! (Debian's kernel under QEMU **software emulation**, so absolute times are
//! slower than on hardware), each next to a baseline measured in the same
//! run: one RTM_GETQDISC dump round trip for netlink, one DM_VERSION ioctl
//! for device-mapper. The measuring code is the example
//! tests/examples/bench_fault_latency.rs (not a test: no test run counts it);
//! it prints its table on the guest console, which this streams.

use std::path::Path;

use anyhow::{Context as _, Result};

pub fn run(ws: &Path) -> Result<()> {
    let cache = crate::vm::default_cache(ws);
    let bins = crate::vm::cargo_executables(
        ws,
        &["build", "-p", "graydar-tests", "--example", "bench_fault_latency"],
    )?;
    let bin = bins.first().context("cargo built no bench_fault_latency executable")?;
    println!("bench faults: apply/revert latency of netem and dm faults in the VM (TCG)");
    crate::vm::run_command(
        ws,
        &cache,
        &format!("GRAYDAR_VM=1 {}", bin.display()),
        crate::vm::DEFAULT_CPUS,
    )
}
