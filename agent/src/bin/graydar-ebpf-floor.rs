//! `graydar-ebpf-floor HOOK [TARGET]`: attaches one of the empty programs of
//! ebpf/src/floor.rs to the hook a graydar probe uses, waits until its stdin
//! closes, then prints how often it ran and for how long (`runs=N
//! run_time_ns=T`; the kernel counts run time only with
//! kernel.bpf_stats_enabled=1) and detaches. A benchmark tool, not part of
//! the product: `cargo xtask bench` measures each probe's cost per event
//! against this floor on the same hook, in the same run.
//!
//! Hooks: `tc IFACE` (ingress classifier, as tcp_fanin), `kfree_skb_btf`
//! and `kfree_skb_raw` (the kfree_skb probe's two attach modes),
//! `tracepoint CATEGORY:NAME` (as the fsync probes, e.g.
//! syscalls:sys_enter_fdatasync).

use std::io::Read as _;
use std::path::Path;

use anyhow::{Context as _, bail};
use aya::programs::{BtfTracePoint, RawTracePoint, SchedClassifier, TcAttachType, TracePoint};
use graydar_common::tcp::FaninConfig;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (hook, target) = match args.as_slice() {
        [h] => (h.as_str(), None),
        [h, t] => (h.as_str(), Some(t.as_str())),
        _ => bail!(
            "usage: graydar-ebpf-floor tc IFACE | kfree_skb_btf | kfree_skb_raw | raw_tracepoint NAME | tracepoint \
             CATEGORY:NAME"
        ),
    };
    let programs = graydar_agent::ebpf::load(Path::new("/sys"), &FaninConfig::default())
        .map_err(|e| anyhow::anyhow!("loading the eBPF object: {e}"))?;
    let object = programs.object();
    let mut ebpf = object
        .lock()
        .map_err(|_| anyhow::anyhow!("eBPF object lock poisoned"))?;
    let name = match (hook, target) {
        ("tc", Some(iface)) => {
            let p: &mut SchedClassifier = prog(&mut ebpf, "floor_tc")?;
            p.load()?;
            if p.attach(iface, TcAttachType::Ingress).is_err() {
                // The netlink path of kernels before tcx needs a clsact qdisc.
                let _ = aya::programs::tc::qdisc_add_clsact(iface);
                p.attach(iface, TcAttachType::Ingress)
                    .with_context(|| format!("attaching floor_tc to {iface}"))?;
            }
            "floor_tc"
        }
        ("kfree_skb_btf", None) => {
            let btf = programs.btf().context("the kernel's BTF did not parse")?;
            let p: &mut BtfTracePoint = prog(&mut ebpf, "floor_kfree_skb_btf")?;
            p.load("kfree_skb", btf)?;
            p.attach()?;
            "floor_kfree_skb_btf"
        }
        ("kfree_skb_raw", None) => {
            let p: &mut RawTracePoint = prog(&mut ebpf, "floor_kfree_skb_raw")?;
            p.load()?;
            p.attach("kfree_skb")?;
            "floor_kfree_skb_raw"
        }
        ("raw_tracepoint", Some(tp)) => {
            // The same empty raw tracepoint program, on any raw tracepoint.
            let p: &mut RawTracePoint = prog(&mut ebpf, "floor_kfree_skb_raw")?;
            p.load()?;
            p.attach(tp)
                .with_context(|| format!("attaching an empty raw tracepoint program to {tp}"))?;
            "floor_kfree_skb_raw"
        }
        ("tracepoint", Some(tp)) => {
            let (category, event) = tp.split_once(':').context("tracepoint wants CATEGORY:NAME")?;
            let p: &mut TracePoint = prog(&mut ebpf, "floor_tracepoint")?;
            p.load()?;
            p.attach(category, event)?;
            "floor_tracepoint"
        }
        _ => bail!("unknown hook {hook:?} (or a missing or extra target)"),
    };
    println!("attached {name}");
    // Until the caller closes stdin.
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    let info = ebpf
        .program(name)
        .context("program gone")?
        .info()
        .context("reading the program's info")?;
    println!("runs={} run_time_ns={}", info.run_count(), info.run_time().as_nanos());
    Ok(())
}

fn prog<'a, T>(ebpf: &'a mut aya::Ebpf, name: &str) -> anyhow::Result<&'a mut T>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let p = ebpf
        .program_mut(name)
        .with_context(|| format!("no program {name} in the object"))?;
    <&mut T>::try_from(p).with_context(|| format!("{name} is not of the expected type"))
}
