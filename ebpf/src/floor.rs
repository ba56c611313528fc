//! Empty programs on the hooks graydar's probes use: the floor of what any
//! program costs there (the kernel's dispatch into it, and bpf_stats' own two
//! clock reads when run time is counted). Never loaded by the agent:
//! `graydar-ebpf-floor` (agent/src/bin) attaches one for `cargo xtask bench`,
//! which measures each probe's cost per event against the floor on the same
//! hook in the same run (issue 18: "show what the remaining cost is").

use aya_ebpf::{
    macros::{btf_tracepoint, classifier, raw_tracepoint, tracepoint},
    programs::{BtfTracePointContext, RawTracePointContext, TcContext, TracePointContext},
};

/// tc ingress, as tcp_fanin: `TC_ACT_UNSPEC` (the next filter runs).
#[classifier]
pub fn floor_tc(_ctx: TcContext) -> i32 {
    -1
}

/// kfree_skb as a BTF-typed tracepoint, as kfree_skb_btf.
#[btf_tracepoint(function = "kfree_skb")]
pub fn floor_kfree_skb_btf(_ctx: BtfTracePointContext) -> i32 {
    0
}

/// kfree_skb as a raw tracepoint, as the kfree_skb fallback.
#[raw_tracepoint(tracepoint = "kfree_skb")]
pub fn floor_kfree_skb_raw(_ctx: RawTracePointContext) -> i32 {
    0
}

/// A syscall tracepoint, as the fsync probes (sys_enter_fdatasync etc.).
#[tracepoint]
pub fn floor_tracepoint(_ctx: TracePointContext) -> u32 {
    0
}
