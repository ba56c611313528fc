//! The drops signal's readers: interface counters from sysfs (`nic`), qdisc
//! statistics over rtnetlink (`qdisc`), per-CPU backlog drops from
//! `/proc/net/softnet_stat` (`softnet`) and the kernel's own drop reasons
//! from the eBPF `kfree_skb` program in ebpf/src/drops.rs (`kernel`).
pub mod kernel;
pub mod nic;
pub mod qdisc;
pub mod softnet;
