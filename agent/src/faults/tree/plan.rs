//! What a netem tree fault does, decided before the kernel is touched, and
//! its tc-like description for dry runs (pure).

use std::net::IpAddr;

use graydar_common::faults::{Cidr, Direction, Protocol, Scope};
use serde::{Deserialize, Serialize};

use super::super::caps::Piece;
use super::super::netem::{NetemSpec, SpecError};
use super::super::tc::{GRAYDAR_MAJOR, PriorRoot};
use super::{ETH_P_IP, ETH_P_IPV6, MAX_FILTERS, NETEM_CHILD_MAJOR, NETEM_MINOR, PASS_MINOR, SCOPE_PREF};

/// One flower filter of the tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Match {
    pub eth: u16,
    pub ip_proto: Option<u8>,
    pub dst: Option<Cidr>,
    pub src: Option<Cidr>,
    pub dst_port: Option<u16>,
    /// prio class minor: [`PASS_MINOR`] or [`NETEM_MINOR`].
    pub class: u16,
}

/// What goes on the tree device's root.
#[derive(Clone, Debug, PartialEq)]
pub enum Layout {
    /// Bare netem root (whole interface, nothing to exclude).
    Plain,
    /// prio + netem child + filters (first match wins, in order).
    Prio { default_netem: bool, filters: Vec<Match> },
}

/// Everything a netem fault will do, decided before the kernel is touched.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub interface: String,
    pub direction: Direction,
    /// Ingress: the ifb device to create.
    pub ifb: Option<String>,
    pub layout: Layout,
    pub netem: NetemSpec,
}

/// What revert needs, journaled before anything changes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TreePrior {
    /// Egress: the interface's root qdisc before the fault. Ingress: `None`
    /// (the tree is on our own ifb).
    pub root: Option<PriorRoot>,
    pub ingress: Option<IngressPrior>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngressPrior {
    pub ifb: String,
    /// An ingress/clsact qdisc was there before: only our filter is removed.
    pub clsact_existed: bool,
    pub pref: u16,
}

fn family_eth(a: IpAddr) -> u16 {
    if a.is_ipv4() { ETH_P_IP } else { ETH_P_IPV6 }
}

fn proto_number(p: Protocol, eth: u16) -> u8 {
    match (p, eth) {
        (Protocol::Icmp, ETH_P_IPV6) => 58,
        _ => p.number(),
    }
}

fn host(a: IpAddr) -> Cidr {
    Cidr {
        addr: a,
        len: if a.is_ipv4() { 32 } else { 128 },
    }
}

/// The filters of a fault: exclusions of the protected addresses first
/// (`dst` on egress, `src` on ingress: the controller's replies), then the
/// scope as destination CIDR × protocol × destination port.
pub fn matches(direction: Direction, scope: &Scope, protected: &[IpAddr]) -> Result<Vec<Match>, SpecError> {
    let mut out = Vec::new();
    for a in protected {
        let (dst, src) = match direction {
            Direction::Egress => (Some(host(*a)), None),
            Direction::Ingress => (None, Some(host(*a))),
        };
        out.push(Match {
            eth: family_eth(*a),
            ip_proto: None,
            dst,
            src,
            dst_port: None,
            class: PASS_MINOR,
        });
    }
    if scope.is_whole_interface() {
        return Ok(out);
    }
    let cidrs = scope.cidrs()?;
    // (ethertype, destination) pairs: each CIDR, or both families.
    let dests: Vec<(u16, Option<Cidr>)> = if cidrs.is_empty() {
        vec![(ETH_P_IP, None), (ETH_P_IPV6, None)]
    } else {
        cidrs.iter().map(|c| (family_eth(c.addr), Some(mask(*c)))).collect()
    };
    let ports: Vec<Option<u16>> = if scope.dst_ports.is_empty() {
        vec![None]
    } else {
        scope.dst_ports.iter().map(|p| Some(*p)).collect()
    };
    for (eth, dst) in dests {
        // Ports need a transport protocol; none given: TCP and UDP.
        let protos: Vec<Option<u8>> = match scope.protocol {
            Some(p) => vec![Some(proto_number(p, eth))],
            None if !scope.dst_ports.is_empty() => vec![Some(6), Some(17)],
            None => vec![None],
        };
        for proto in &protos {
            for port in &ports {
                out.push(Match {
                    eth,
                    ip_proto: *proto,
                    dst,
                    src: None,
                    dst_port: *port,
                    class: NETEM_MINOR,
                });
            }
        }
    }
    if out.len() > MAX_FILTERS {
        return Err(SpecError(format!(
            "scope: {} filters (CIDRs × protocols × ports) is more than {MAX_FILTERS}",
            out.len()
        )));
    }
    Ok(out)
}

/// The prefix with host bits cleared (flower matches `key & mask`).
fn mask(c: Cidr) -> Cidr {
    let addr = match c.addr {
        IpAddr::V4(a) => {
            let m = if c.len == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(c.len))
            };
            IpAddr::V4((u32::from(a) & m).into())
        }
        IpAddr::V6(a) => {
            let m = if c.len == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(c.len))
            };
            IpAddr::V6((u128::from(a) & m).into())
        }
    };
    Cidr { addr, len: c.len }
}

/// Decides the layout (pure).
pub fn plan(
    interface: &str,
    direction: Direction,
    scope: &Scope,
    netem: &NetemSpec,
    protected: &[IpAddr],
    ifb: Option<String>,
) -> Result<Plan, SpecError> {
    let filters = matches(direction, scope, protected)?;
    let layout = if filters.is_empty() {
        Layout::Plain
    } else {
        Layout::Prio {
            default_netem: scope.is_whole_interface(),
            filters,
        }
    };
    Ok(Plan {
        interface: interface.to_owned(),
        direction,
        ifb: if direction == Direction::Ingress { ifb } else { None },
        layout,
        netem: netem.clone(),
    })
}

impl Plan {
    /// Kernel pieces this plan needs.
    pub fn required(&self) -> Vec<Piece> {
        let mut p = vec![Piece::Netem];
        if matches!(self.layout, Layout::Prio { .. }) {
            p.extend([Piece::Prio, Piece::Flower]);
        }
        if self.direction == Direction::Ingress {
            p.extend([Piece::Ifb, Piece::Clsact, Piece::Mirred]);
            if !p.contains(&Piece::Flower) {
                p.push(Piece::Flower);
            }
        }
        p
    }
}

// The description (dry run).

fn eth_name(eth: u16) -> &'static str {
    match eth {
        ETH_P_IP => "ip",
        ETH_P_IPV6 => "ipv6",
        _ => "all",
    }
}

fn proto_name(p: u8) -> String {
    match p {
        1 => "icmp".into(),
        6 => "tcp".into(),
        17 => "udp".into(),
        58 => "ipv6-icmp".into(),
        n => n.to_string(),
    }
}

/// tc-like rendering of a filter's keys.
pub fn render_match(f: &Match) -> String {
    let mut s = format!("protocol {} flower", eth_name(f.eth));
    if let Some(p) = f.ip_proto {
        s.push_str(&format!(" ip_proto {}", proto_name(p)));
    }
    if let Some(c) = f.dst.filter(|c| c.len > 0) {
        s.push_str(&format!(" dst_ip {c}"));
    }
    if let Some(c) = f.src.filter(|c| c.len > 0) {
        s.push_str(&format!(" src_ip {c}"));
    }
    if let Some(p) = f.dst_port {
        s.push_str(&format!(" dst_port {p}"));
    }
    s.push_str(&format!(" classid {GRAYDAR_MAJOR:x}:{:x}", f.class));
    s
}

/// The exact netlink operations of [`apply`] and of [`revert`], in order.
pub fn describe(plan: &Plan, ifindex: u32, prior: &TreePrior) -> Vec<String> {
    let ours = format!("{GRAYDAR_MAJOR:x}:");
    let mut ops = Vec::new();
    let dev = match (&plan.ifb, plan.direction) {
        (Some(ifb), Direction::Ingress) => {
            ops.push(format!(
                "RTM_NEWLINK NLM_F_CREATE|NLM_F_EXCL name {ifb} kind ifb, IFF_UP"
            ));
            ifb.clone()
        }
        _ => format!("{} (ifindex {ifindex})", plan.interface),
    };
    match &plan.layout {
        Layout::Plain => ops.push(format!(
            "RTM_NEWQDISC NLM_F_CREATE|NLM_F_REPLACE dev {dev} parent root handle {ours} kind netem: {}",
            plan.netem.describe()
        )),
        Layout::Prio { default_netem, filters } => {
            let default = if *default_netem {
                format!("{ours}{NETEM_MINOR} (netem)")
            } else {
                format!("{ours}{PASS_MINOR} (untouched)")
            };
            ops.push(format!(
                "RTM_NEWQDISC NLM_F_CREATE|NLM_F_REPLACE dev {dev} parent root handle {ours} kind prio bands 2 \
                 priomap all → {default}"
            ));
            ops.push(format!(
                "RTM_NEWQDISC NLM_F_CREATE|NLM_F_EXCL dev {dev} parent {ours}{NETEM_MINOR} handle {NETEM_CHILD_MAJOR:x}: \
                 kind netem: {}",
                plan.netem.describe()
            ));
            for (pref, f) in prefs(filters) {
                let why = if f.class == PASS_MINOR {
                    " (protected: controller)"
                } else {
                    ""
                };
                ops.push(format!(
                    "RTM_NEWTFILTER NLM_F_CREATE|NLM_F_EXCL dev {dev} parent {ours} pref {pref} {}{why}",
                    render_match(f)
                ));
            }
        }
    }
    if let (Some(ifb), Some(ing)) = (&plan.ifb, &prior.ingress) {
        let iface = &plan.interface;
        if ing.clsact_existed {
            ops.push(format!("(dev {iface} has an ingress/clsact qdisc already: kept)"));
        } else {
            ops.push(format!(
                "RTM_NEWQDISC NLM_F_CREATE|NLM_F_EXCL dev {iface} parent ffff:fff1 handle ffff: kind clsact"
            ));
        }
        ops.push(format!(
            "RTM_NEWTFILTER NLM_F_CREATE|NLM_F_EXCL dev {iface} parent ffff:fff2 pref {} protocol all flower \
             action mirred egress redirect dev {ifb}",
            ing.pref
        ));
        ops.push(format!(
            "revert: RTM_DELTFILTER dev {iface} parent ffff:fff2 pref {} protocol all",
            ing.pref
        ));
        if !ing.clsact_existed {
            ops.push(format!(
                "revert: RTM_DELQDISC dev {iface} parent ffff:fff1 handle ffff: (unless another filter was added to it)"
            ));
        }
        ops.push(format!("revert: RTM_DELLINK {ifb} (its qdiscs go with it)"));
    }
    match &prior.root {
        Some(PriorRoot::Default { kind }) => ops.push(format!(
            "revert: RTM_DELQDISC dev {} parent root handle {ours} (the kernel re-attaches its default root {kind})",
            plan.interface
        )),
        Some(PriorRoot::Configured { kind, handle, .. }) => ops.push(format!(
            "revert: RTM_NEWQDISC NLM_F_CREATE|NLM_F_REPLACE dev {} parent root handle {handle} kind {kind} \
             (the snapshotted options)",
            plan.interface
        )),
        None => {}
    }
    ops
}

pub(super) fn prefs(filters: &[Match]) -> impl Iterator<Item = (u16, &Match)> {
    let mut pass = 0u16;
    let mut scoped = 0u16;
    filters.iter().map(move |f| {
        if f.class == PASS_MINOR {
            pass += 1;
            (pass, f)
        } else {
            scoped += 1;
            (SCOPE_PREF + scoped - 1, f)
        }
    })
}
