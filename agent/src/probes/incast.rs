//! The incast signal's readers: TCP fan-in and retransmissions from eBPF
//! (`fanin`, programs in ebpf/src/incast.rs) and the kernel's TCP/IP MIB
//! counters from `/proc/net/{netstat,snmp}` (`netstat`).
pub mod fanin;
pub mod netstat;
