//! Fault injection: the engine (engine.rs: journal → snapshot → apply,
//! leases, recovery) and its runtime in the agent (runtime.rs: the lease
//! timer, revert-all at shutdown), the journal (journal.rs), what the kernel
//! can do (caps.rs), the mechanisms (netem.rs and tc.rs: a netem root;
//! tree/: scoped and ingress netem; dm.rs: device-mapper; route.rs:
//! blackhole routes; rings.rs: NIC ring sizes over ethtool netlink), the
//! fault targets this host offers (inventory.rs) and the assignments from the
//! controller (assign.rs).
pub mod assign;
pub mod caps;
pub mod dm;
pub mod engine;
pub mod inventory;
pub mod journal;
pub mod lease;
pub mod mechanism;
pub mod netem;
pub mod rings;
pub mod route;
pub mod runtime;
pub mod tc;
pub mod tree;
