//! Scoped netem, ingress netem and the controller exclusion: a small
//! classful tree instead of a bare netem root.
//!
//! Layout on the *tree device* (the interface itself for egress, an ifb
//! device for ingress):
//!
//! ```text
//! root prio 4744: bands 2, priomap: every priority → band 0 (scoped) or band 1 (whole interface)
//! ├── class 4744:1 → the prio's own pfifo: untouched traffic
//! ├── class 4744:2 → netem 4745: (the fault)
//! ├── filters pref 1..: flower dst_ip <controller> (egress) / src_ip <controller> (ingress) → 4744:1
//! └── filters pref 100..: flower <scope: dst CIDR × protocol × dst port> → 4744:2
//! ```
//!
//! A whole-interface fault with nothing to exclude keeps the bare netem root
//! (`4744: netem`, tc.rs); on an ifb it is the same bare netem.
//!
//! Ingress: `gd-ifb<N>` (an ifb device, up) carries the tree; the interface
//! gets a clsact qdisc (unless it has an ingress/clsact qdisc already) and one
//! filter on its ingress hook: `pref 1 protocol all flower action mirred
//! egress redirect dev gd-ifb<N>`. Revert removes the filter first (a mirred
//! redirect to a deleted device would drop everything), then the clsact
//! qdisc if graydar created it and nobody else put a filter on it, then the
//! ifb (its qdiscs go with it). Egress revert restores the prior root
//! exactly (tc.rs): that deletes our prio with its classes and filters.
//!
//! Kernel pieces: sch_prio, cls_flower, sch_netem; for ingress also ifb,
//! sch_ingress (clsact), act_mirred. Flower (not u32) because it finds the
//! L4 header behind IPv4 options and IPv6 extension headers; netlink-packet-
//! route types flower, mirred and the ifb link; only prio's options are
//! encoded by hand (netem.rs).

//!
//! The pure part (what to do, as a [`Plan`], and its tc-like description)
//! is in plan.rs, the netlink messages in messages.rs, the calls that change
//! the kernel in kernel.rs.

mod kernel;
mod messages;
mod plan;
#[cfg(test)]
mod tests;

pub use kernel::*;
pub use messages::*;
pub use plan::*;

/// Handle major of the netem child under our prio.
pub const NETEM_CHILD_MAJOR: u16 = 0x4745;
/// prio class of untouched traffic (band 0).
pub const PASS_MINOR: u16 = 1;
/// prio class of the netem child (band 1).
pub const NETEM_MINOR: u16 = 2;
/// Filter preference of the ingress redirect on the interface's clsact.
pub const INGRESS_PREF: u16 = 1;
/// First preference of the scope filters (exclusions use 1..).
pub(super) const SCOPE_PREF: u16 = 100;
/// ifb devices graydar creates are named `gd-ifb<N>`.
pub const IFB_PREFIX: &str = "gd-ifb";
pub(super) const MAX_FILTERS: usize = 512;

pub(super) const ETH_P_ALL: u16 = 0x0003;
pub(super) const ETH_P_IP: u16 = 0x0800;
pub(super) const ETH_P_IPV6: u16 = 0x86dd;
pub(super) const TC_H_MIN_INGRESS: u16 = 0xfff2;
pub(super) const TC_H_MIN_EGRESS: u16 = 0xfff3;
