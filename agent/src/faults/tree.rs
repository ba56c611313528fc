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

use std::net::IpAddr;

use futures_util::TryStreamExt as _;
use graydar_common::faults::{Cidr, Direction, Protocol, Scope};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::link::LinkAttribute;
use netlink_packet_route::tc::{
    TcAction, TcActionAttribute, TcActionGeneric, TcActionMirror, TcActionMirrorOption, TcActionOption, TcActionType,
    TcAttribute, TcFilterFlower, TcFilterFlowerOption, TcHandle, TcMessage, TcMirror, TcMirrorActionType, TcOption,
};
use rtnetlink::packet_core::{DefaultNla, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE};
use serde::{Deserialize, Serialize};

use super::caps::{Missing, Piece};
use super::netem::{NetemSpec, SpecError, prio_options};
use super::tc::{self, GRAYDAR_MAJOR, PriorRoot, TCA_OPTIONS, TcError};

/// Handle major of the netem child under our prio.
pub const NETEM_CHILD_MAJOR: u16 = 0x4745;
/// prio class of untouched traffic (band 0).
pub const PASS_MINOR: u16 = 1;
/// prio class of the netem child (band 1).
pub const NETEM_MINOR: u16 = 2;
/// Filter preference of the ingress redirect on the interface's clsact.
pub const INGRESS_PREF: u16 = 1;
/// First preference of the scope filters (exclusions use 1..).
const SCOPE_PREF: u16 = 100;
/// ifb devices graydar creates are named `gd-ifb<N>`.
pub const IFB_PREFIX: &str = "gd-ifb";
const MAX_FILTERS: usize = 512;

const ETH_P_ALL: u16 = 0x0003;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const TC_H_MIN_INGRESS: u16 = 0xfff2;
const TC_H_MIN_EGRESS: u16 = 0xfff3;

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

// ---------------------------------------------------------------------------
// Messages (pure)

fn base(ifindex: u32, parent: TcHandle, handle: TcHandle) -> TcMessage {
    let mut m = TcMessage::default();
    m.header.index = ifindex as i32;
    m.header.parent = parent;
    m.header.handle = handle;
    m
}

fn h(major: u16, minor: u16) -> TcHandle {
    TcHandle { major, minor }
}

pub fn prio_root_message(ifindex: u32, default_netem: bool) -> TcMessage {
    let mut m = base(ifindex, TcHandle::ROOT, h(GRAYDAR_MAJOR, 0));
    m.attributes.push(TcAttribute::Kind("prio".into()));
    let band = if default_netem { NETEM_MINOR - 1 } else { PASS_MINOR - 1 } as u8;
    m.attributes
        .push(TcAttribute::Other(DefaultNla::new(TCA_OPTIONS, prio_options(2, band))));
    m
}

pub fn netem_child_message(ifindex: u32, spec: &NetemSpec) -> TcMessage {
    tc::netem_message_at(ifindex, h(GRAYDAR_MAJOR, NETEM_MINOR), NETEM_CHILD_MAJOR, spec)
}

fn filter_base(ifindex: u32, parent: TcHandle, pref: u16, eth: u16) -> TcMessage {
    let mut m = base(ifindex, parent, TcHandle::UNSPEC);
    // tcm_info: TC_H_MAKE(pref << 16, htons(protocol)).
    m.header.info = (u32::from(pref) << 16) | u32::from(eth.to_be());
    m.attributes.push(TcAttribute::Kind(TcFilterFlower::KIND.into()));
    m
}

pub fn flower_message(ifindex: u32, pref: u16, f: &Match) -> TcMessage {
    let mut m = filter_base(ifindex, h(GRAYDAR_MAJOR, 0), pref, f.eth);
    let mut o = vec![TcFilterFlowerOption::ClassId(u32::from(h(GRAYDAR_MAJOR, f.class)))];
    if f.eth != ETH_P_ALL {
        o.push(TcFilterFlowerOption::EthType(f.eth));
    }
    if let Some(p) = f.ip_proto {
        o.push(TcFilterFlowerOption::IpProto(p));
    }
    for (c, is_dst) in [(f.dst, true), (f.src, false)] {
        let Some(c) = c.filter(|c| c.len > 0) else { continue };
        match (c.addr, is_dst) {
            (IpAddr::V4(a), true) => o.extend([
                TcFilterFlowerOption::Ipv4Dst(a),
                TcFilterFlowerOption::Ipv4DstMask(v4_mask(c.len)),
            ]),
            (IpAddr::V4(a), false) => o.extend([
                TcFilterFlowerOption::Ipv4Src(a),
                TcFilterFlowerOption::Ipv4SrcMask(v4_mask(c.len)),
            ]),
            (IpAddr::V6(a), true) => o.extend([
                TcFilterFlowerOption::Ipv6Dst(a),
                TcFilterFlowerOption::Ipv6DstMask(v6_mask(c.len)),
            ]),
            (IpAddr::V6(a), false) => o.extend([
                TcFilterFlowerOption::Ipv6Src(a),
                TcFilterFlowerOption::Ipv6SrcMask(v6_mask(c.len)),
            ]),
        }
    }
    if let (Some(port), Some(p)) = (f.dst_port, f.ip_proto) {
        o.push(match p {
            17 => TcFilterFlowerOption::UdpDst(port),
            _ => TcFilterFlowerOption::TcpDst(port),
        });
    }
    m.attributes
        .push(TcAttribute::Options(o.into_iter().map(TcOption::Flower).collect()));
    m
}

fn v4_mask(len: u8) -> std::net::Ipv4Addr {
    (if len == 0 { 0 } else { u32::MAX << (32 - u32::from(len)) }).into()
}

fn v6_mask(len: u8) -> std::net::Ipv6Addr {
    (if len == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(len))
    })
    .into()
}

pub fn clsact_message(ifindex: u32) -> TcMessage {
    let mut m = base(ifindex, TcHandle::INGRESS, h(0xffff, 0));
    m.attributes.push(TcAttribute::Kind("clsact".into()));
    m
}

fn ingress_hook() -> TcHandle {
    h(0xffff, TC_H_MIN_INGRESS)
}

/// `flower` (no keys: every packet) with `mirred egress redirect dev <ifb>`.
pub fn redirect_message(ifindex: u32, pref: u16, ifb_index: u32) -> TcMessage {
    let mut m = filter_base(ifindex, ingress_hook(), pref, ETH_P_ALL);
    let mut mirror = TcMirror::default();
    mirror.generic = TcActionGeneric::default();
    mirror.generic.action = TcActionType::Stolen;
    mirror.eaction = TcMirrorActionType::EgressRedir;
    mirror.ifindex = ifb_index;
    let mut action = TcAction::default();
    action.attributes = vec![
        TcActionAttribute::Kind(TcActionMirror::KIND.into()),
        TcActionAttribute::Options(vec![TcActionOption::Mirror(TcActionMirrorOption::Parms(mirror))]),
    ];
    m.attributes.push(TcAttribute::Options(vec![TcOption::Flower(
        TcFilterFlowerOption::Actions(vec![action]),
    )]));
    m
}

// ---------------------------------------------------------------------------
// describe (pure)

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

fn prefs(filters: &[Match]) -> impl Iterator<Item = (u16, &Match)> {
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

// ---------------------------------------------------------------------------
// Kernel

fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
        _ => None,
    }
}

/// A kernel refusal → the missing piece(s) when the errno says "unknown
/// kind" (ENOENT for qdiscs, classifiers and actions, EOPNOTSUPP for link
/// kinds); when several pieces could be meant, the ones the capability probe
/// says are missing, else all of them.
fn refused(op: &'static str, ifindex: u32, candidates: &[Piece], e: rtnetlink::Error) -> TcError {
    if matches!(errno(&e), Some(libc::ENOENT) | Some(libc::EOPNOTSUPP)) {
        if candidates == [Piece::Netem] {
            return TcError::NoNetem;
        }
        let caps = super::caps::probe(&super::caps::Roots::default());
        let mut which: Vec<Piece> = candidates.iter().copied().filter(|p| !caps.usable(*p)).collect();
        if which.is_empty() {
            which = candidates.to_vec();
        }
        return TcError::Missing(Missing(which));
    }
    tc::map_err(op, ifindex, e)
}

async fn new_tc(
    handle: &rtnetlink::Handle,
    msg: RouteNetlinkMessage,
    flags: u16,
    op: &'static str,
    ifindex: u32,
    candidates: &[Piece],
) -> Result<(), TcError> {
    tc::send(handle, msg, flags)
        .await
        .map_err(|e| refused(op, ifindex, candidates, e))
}

pub async fn link_index(handle: &rtnetlink::Handle, name: &str) -> Result<Option<u32>, TcError> {
    let mut links = handle.link().get().match_name(name.to_owned()).execute();
    match links.try_next().await {
        Ok(Some(l)) => Ok(Some(l.header.index)),
        Ok(None) => Ok(None),
        Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
        Err(e) => Err(TcError::Netlink { op: "get link", source: e }),
    }
}

/// Every link of this namespace: (ifindex, name).
pub async fn links(handle: &rtnetlink::Handle) -> Result<Vec<(u32, String)>, TcError> {
    let all: Vec<_> = handle
        .link()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(|e| TcError::Netlink { op: "dump links", source: e })?;
    Ok(all
        .into_iter()
        .filter_map(|l| {
            let name = l.attributes.iter().find_map(|a| match a {
                LinkAttribute::IfName(n) => Some(n.clone()),
                _ => None,
            })?;
            Some((l.header.index, name))
        })
        .collect())
}

/// The first `gd-ifb<N>` name not in use.
pub async fn free_ifb_name(handle: &rtnetlink::Handle) -> Result<String, TcError> {
    let names: Vec<String> = links(handle).await?.into_iter().map(|(_, n)| n).collect();
    (0..1000)
        .map(|n| format!("{IFB_PREFIX}{n}"))
        .find(|n| !names.contains(n))
        .ok_or_else(|| TcError::Refused("1000 gd-ifb devices exist already".into()))
}

/// Whether `ifindex` has an ingress or clsact qdisc.
pub async fn has_ingress_qdisc(handle: &rtnetlink::Handle, ifindex: u32) -> Result<bool, TcError> {
    Ok(tc::dump(handle, ifindex)
        .await?
        .iter()
        .any(|m| m.header.parent == TcHandle::INGRESS))
}

async fn ingress_filters(handle: &rtnetlink::Handle, ifindex: u32, minor: u16) -> Result<Vec<TcMessage>, TcError> {
    let mut req = handle.traffic_filter(ifindex as i32).get();
    req = if minor == TC_H_MIN_INGRESS {
        req.ingress()
    } else {
        req.egress()
    };
    match req.execute().try_collect::<Vec<_>>().await {
        Ok(v) => Ok(v),
        // No clsact: nothing attached.
        Err(e) if matches!(errno(&e), Some(libc::EINVAL) | Some(libc::ENOENT)) => Ok(Vec::new()),
        Err(e) => Err(tc::map_err("dump ingress filters", ifindex, e)),
    }
}

fn pref_of(m: &TcMessage) -> u16 {
    (m.header.info >> 16) as u16
}

/// Refuses an ingress fault when the interface's ingress hook already has a
/// filter at our preference (ours would join or replace it).
pub async fn ingress_pref_free(handle: &rtnetlink::Handle, ifindex: u32, pref: u16) -> Result<(), TcError> {
    let taken = ingress_filters(handle, ifindex, TC_H_MIN_INGRESS)
        .await?
        .iter()
        .any(|m| pref_of(m) == pref);
    if taken {
        return Err(TcError::Refused(format!(
            "ifindex {ifindex} already has an ingress filter at pref {pref}; graydar's redirect to the ifb must \
             run first there, so it refuses rather than share that slot"
        )));
    }
    Ok(())
}

/// The mirred target of a filter dump, if it is a flower with a mirred action.
fn mirred_target(m: &TcMessage) -> Option<u32> {
    if tc::kind_of(m) != TcFilterFlower::KIND {
        return None;
    }
    m.attributes.iter().find_map(|a| match a {
        TcAttribute::Options(opts) => opts.iter().find_map(|o| match o {
            TcOption::Flower(TcFilterFlowerOption::Actions(acts)) => acts.iter().find_map(|act| {
                act.attributes.iter().find_map(|aa| match aa {
                    TcActionAttribute::Options(ao) => ao.iter().find_map(|x| match x {
                        TcActionOption::Mirror(TcActionMirrorOption::Parms(p)) => Some(p.ifindex),
                        _ => None,
                    }),
                    _ => None,
                })
            }),
            _ => None,
        }),
        _ => None,
    })
}

/// Builds the tree on `dev_index` (the interface or the ifb).
async fn build_tree(handle: &rtnetlink::Handle, dev_index: u32, plan: &Plan) -> Result<(), TcError> {
    match &plan.layout {
        Layout::Plain => {
            let m = tc::netem_message_at(dev_index, TcHandle::ROOT, GRAYDAR_MAJOR, &plan.netem);
            new_tc(
                handle,
                RouteNetlinkMessage::NewQueueDiscipline(m),
                NLM_F_CREATE | NLM_F_REPLACE,
                "add netem",
                dev_index,
                &[Piece::Netem],
            )
            .await
        }
        Layout::Prio { default_netem, filters } => {
            new_tc(
                handle,
                RouteNetlinkMessage::NewQueueDiscipline(prio_root_message(dev_index, *default_netem)),
                NLM_F_CREATE | NLM_F_REPLACE,
                "add prio root",
                dev_index,
                &[Piece::Prio],
            )
            .await?;
            new_tc(
                handle,
                RouteNetlinkMessage::NewQueueDiscipline(netem_child_message(dev_index, &plan.netem)),
                NLM_F_CREATE | NLM_F_EXCL,
                "add netem child",
                dev_index,
                &[Piece::Netem],
            )
            .await?;
            for (pref, f) in prefs(filters) {
                new_tc(
                    handle,
                    RouteNetlinkMessage::NewTrafficFilter(flower_message(dev_index, pref, f)),
                    NLM_F_CREATE | NLM_F_EXCL,
                    "add flower filter",
                    dev_index,
                    &[Piece::Flower],
                )
                .await?;
            }
            Ok(())
        }
    }
}

/// Applies `plan` on `ifindex` (the interface). The caller journaled
/// `prior` first, and calls [`revert`] if this fails part-way.
pub async fn apply(handle: &rtnetlink::Handle, ifindex: u32, plan: &Plan, prior: &TreePrior) -> Result<(), TcError> {
    let Some(ing) = &prior.ingress else {
        return build_tree(handle, ifindex, plan).await;
    };
    // Ingress: the ifb, the tree on it, then the redirect.
    handle
        .link()
        .add(rtnetlink::LinkIfb::new(&ing.ifb).up().build())
        .execute()
        .await
        .map_err(|e| refused("add ifb", ifindex, &[Piece::Ifb], e))?;
    let ifb_index = link_index(handle, &ing.ifb)
        .await?
        .ok_or_else(|| TcError::Refused(format!("{} vanished right after it was created", ing.ifb)))?;
    build_tree(handle, ifb_index, plan).await?;
    if !ing.clsact_existed {
        new_tc(
            handle,
            RouteNetlinkMessage::NewQueueDiscipline(clsact_message(ifindex)),
            NLM_F_CREATE | NLM_F_EXCL,
            "add clsact",
            ifindex,
            &[Piece::Clsact],
        )
        .await?;
    }
    new_tc(
        handle,
        RouteNetlinkMessage::NewTrafficFilter(redirect_message(ifindex, ing.pref, ifb_index)),
        NLM_F_CREATE | NLM_F_EXCL,
        "add ingress redirect",
        ifindex,
        &[Piece::Flower, Piece::Mirred],
    )
    .await
}

async fn del_filter_pref(handle: &rtnetlink::Handle, ifindex: u32, pref: u16) -> Result<(), TcError> {
    let mut m = base(ifindex, ingress_hook(), TcHandle::UNSPEC);
    m.header.info = (u32::from(pref) << 16) | u32::from(ETH_P_ALL.to_be());
    match tc::send(handle, RouteNetlinkMessage::DelTrafficFilter(m), 0).await {
        Ok(()) => Ok(()),
        Err(e) if matches!(errno(&e), Some(libc::ENOENT) | Some(libc::ENODEV)) => Ok(()),
        Err(e) => Err(tc::map_err("delete ingress redirect", ifindex, e)),
    }
}

/// Removes our redirect from `ifindex`'s ingress hook (only a flower at our
/// pref redirecting to `ifb_index` or to a device that is gone). Returns how
/// many filter messages the ingress hook still holds; `filters` is its dump.
async fn remove_redirect(
    handle: &rtnetlink::Handle,
    ifindex: u32,
    pref: u16,
    ifb_index: Option<u32>,
    filters: &[TcMessage],
) -> Result<usize, TcError> {
    let mut ours = false;
    for m in filters.iter().filter(|m| pref_of(m) == pref) {
        match mirred_target(m) {
            Some(t) if Some(t) == ifb_index => ours = true,
            // A redirect to some other device: ours only if that device is
            // gone (a crash between deleting the ifb and the redirect). The
            // link dump is only needed in that rare case.
            Some(t) => ours |= !links(handle).await?.iter().any(|(i, _)| *i == t),
            None => {}
        }
        if ours {
            break;
        }
    }
    if !ours {
        return Ok(filters.len());
    }
    del_filter_pref(handle, ifindex, pref).await?;
    Ok(filters.iter().filter(|m| pref_of(m) != pref).count())
}

/// Undoes [`apply`]; idempotent, and safe on a half-applied fault (crash or
/// failure at any step). `ifindex` is `None` when the interface is gone.
/// Round trips are counted here (revert latency is a benchmark goal): the
/// ingress dump taken to find our redirect also tells whether the clsact
/// graydar added carries anything else.
pub async fn revert(handle: &rtnetlink::Handle, ifindex: Option<u32>, prior: &TreePrior) -> Result<(), TcError> {
    if let Some(ing) = &prior.ingress {
        let ifb_index = link_index(handle, &ing.ifb).await?;
        if let Some(ifindex) = ifindex {
            let filters = ingress_filters(handle, ifindex, TC_H_MIN_INGRESS).await?;
            let left = remove_redirect(handle, ifindex, ing.pref, ifb_index, &filters).await?;
            // An empty ingress dump also means "no clsact at all" (the dump
            // fails with EINVAL, read as empty): the delete below then meets
            // ENOENT/EINVAL, which is fine.
            if !ing.clsact_existed {
                let others = left + ingress_filters(handle, ifindex, TC_H_MIN_EGRESS).await?.len();
                if others == 0 {
                    let m = clsact_message(ifindex);
                    match tc::send(handle, RouteNetlinkMessage::DelQueueDiscipline(m), 0).await {
                        Ok(()) => {}
                        Err(e) if matches!(errno(&e), Some(libc::ENOENT) | Some(libc::EINVAL)) => {}
                        Err(e) => return Err(tc::map_err("delete clsact", ifindex, e)),
                    }
                } else {
                    tracing::warn!(
                        ifindex,
                        others,
                        "the clsact qdisc graydar added now carries other filters; left in place"
                    );
                }
            }
        }
        if let Some(i) = ifb_index
            && ing.ifb.starts_with(IFB_PREFIX)
        {
            match handle.link().del(i).execute().await {
                Ok(()) => {}
                Err(e) if errno(&e) == Some(libc::ENODEV) => {}
                Err(e) => {
                    return Err(TcError::Netlink { op: "delete ifb", source: e });
                }
            }
        }
    }
    if let (Some(root), Some(ifindex)) = (&prior.root, ifindex) {
        tc::revert_netem(handle, ifindex, root).await?;
    }
    Ok(())
}

/// Start-up safety net, after the journal's own recovery: removes every
/// `gd-ifb*` device of this namespace and any ingress filter redirecting to
/// one (a redirect to a deleted device would drop all traffic). Returns what
/// it removed.
pub async fn sweep(handle: &rtnetlink::Handle) -> Result<Vec<String>, TcError> {
    let all = links(handle).await?;
    let ifbs: Vec<(u32, String)> = all.iter().filter(|(_, n)| n.starts_with(IFB_PREFIX)).cloned().collect();
    let mut removed = Vec::new();
    if ifbs.is_empty() {
        return Ok(removed);
    }
    let ifb_indexes: Vec<u32> = ifbs.iter().map(|(i, _)| *i).collect();
    for (ifindex, name) in &all {
        for f in ingress_filters(handle, *ifindex, TC_H_MIN_INGRESS).await? {
            if mirred_target(&f).is_some_and(|t| ifb_indexes.contains(&t)) {
                del_filter_pref(handle, *ifindex, pref_of(&f)).await?;
                removed.push(format!("ingress redirect on {name} (pref {})", pref_of(&f)));
            }
        }
    }
    for (i, name) in ifbs {
        match handle.link().del(i).execute().await {
            Ok(()) => removed.push(format!("link {name}")),
            Err(e) if errno(&e) == Some(libc::ENODEV) => {}
            Err(e) => {
                return Err(TcError::Netlink { op: "delete ifb", source: e });
            }
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtnetlink::packet_core::Emitable as _;

    fn scope(cidrs: &[&str], ports: &[u16], protocol: Option<Protocol>) -> Scope {
        Scope {
            dst_cidrs: cidrs.iter().map(|s| s.to_string()).collect(),
            dst_ports: ports.to_vec(),
            protocol,
        }
    }

    fn delay() -> NetemSpec {
        NetemSpec {
            delay_ms: 100.0,
            ..Default::default()
        }
    }

    #[test]
    fn a_whole_interface_fault_without_exclusions_is_a_bare_netem() {
        let p = plan("eth0", Direction::Egress, &Scope::default(), &delay(), &[], None).expect("plan");
        assert_eq!(p.layout, Layout::Plain);
        assert_eq!(p.required(), [Piece::Netem]);
    }

    #[test]
    fn the_controller_is_excluded_by_destination_on_egress_and_source_on_ingress() {
        let ctl: IpAddr = "192.0.2.10".parse().expect("ip");
        let p = plan("eth0", Direction::Egress, &Scope::default(), &delay(), &[ctl], None).expect("plan");
        let Layout::Prio { default_netem, filters } = &p.layout else {
            panic!("{p:?}")
        };
        assert!(default_netem, "whole interface: everything else goes to netem");
        assert_eq!(
            render_match(&filters[0]),
            "protocol ip flower dst_ip 192.0.2.10/32 classid 4744:1"
        );
        let p = plan(
            "eth0",
            Direction::Ingress,
            &Scope::default(),
            &delay(),
            &["2001:db8::1".parse().expect("ip")],
            Some("gd-ifb0".into()),
        )
        .expect("plan");
        let Layout::Prio { filters, .. } = &p.layout else {
            panic!("{p:?}")
        };
        assert_eq!(
            render_match(&filters[0]),
            "protocol ipv6 flower src_ip 2001:db8::1/128 classid 4744:1"
        );
        assert_eq!(
            p.required(),
            [
                Piece::Netem,
                Piece::Prio,
                Piece::Flower,
                Piece::Ifb,
                Piece::Clsact,
                Piece::Mirred
            ]
        );
    }

    #[test]
    fn a_scope_is_cidr_times_protocol_times_port() {
        let f = matches(
            Direction::Egress,
            &scope(&["10.1.2.3/16", "fd00::/64"], &[443, 8443], None),
            &[],
        )
        .expect("matches");
        let r: Vec<String> = f.iter().map(render_match).collect();
        assert_eq!(r.len(), 2 * 2 * 2);
        assert_eq!(
            r[0],
            "protocol ip flower ip_proto tcp dst_ip 10.1.0.0/16 dst_port 443 classid 4744:2"
        );
        assert_eq!(
            r[3],
            "protocol ip flower ip_proto udp dst_ip 10.1.0.0/16 dst_port 8443 classid 4744:2"
        );
        assert_eq!(
            r[4],
            "protocol ipv6 flower ip_proto tcp dst_ip fd00::/64 dst_port 443 classid 4744:2"
        );
        // ICMP on IPv6 is protocol 58; no CIDR: both families.
        let r: Vec<String> = matches(Direction::Egress, &scope(&[], &[], Some(Protocol::Icmp)), &[])
            .expect("matches")
            .iter()
            .map(render_match)
            .collect();
        assert_eq!(
            r,
            [
                "protocol ip flower ip_proto icmp classid 4744:2",
                "protocol ipv6 flower ip_proto ipv6-icmp classid 4744:2"
            ]
        );
        let many: Vec<String> = (0..40).map(|i| format!("10.{i}.0.0/16")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        let ports: Vec<u16> = (1..=10).collect();
        let e = matches(Direction::Egress, &scope(&many, &ports, None), &[]).expect_err("too many");
        assert!(e.0.contains("more than"), "{e}");
    }

    #[test]
    fn describe_lists_every_operation_of_a_scoped_ingress_fault() {
        let p = plan(
            "va",
            Direction::Ingress,
            &scope(&["10.203.50.0/24"], &[], None),
            &delay(),
            &["192.0.2.10".parse().expect("ip")],
            Some("gd-ifb0".into()),
        )
        .expect("plan");
        let prior = TreePrior {
            root: None,
            ingress: Some(IngressPrior {
                ifb: "gd-ifb0".into(),
                clsact_existed: false,
                pref: INGRESS_PREF,
            }),
        };
        assert_eq!(
            describe(&p, 7, &prior),
            [
                "RTM_NEWLINK NLM_F_CREATE|NLM_F_EXCL name gd-ifb0 kind ifb, IFF_UP",
                "RTM_NEWQDISC NLM_F_CREATE|NLM_F_REPLACE dev gd-ifb0 parent root handle 4744: kind prio bands 2 \
                 priomap all → 4744:1 (untouched)",
                "RTM_NEWQDISC NLM_F_CREATE|NLM_F_EXCL dev gd-ifb0 parent 4744:2 handle 4745: kind netem: netem limit \
                 166667 delay 100ms",
                "RTM_NEWTFILTER NLM_F_CREATE|NLM_F_EXCL dev gd-ifb0 parent 4744: pref 1 protocol ip flower src_ip \
                 192.0.2.10/32 classid 4744:1 (protected: controller)",
                "RTM_NEWTFILTER NLM_F_CREATE|NLM_F_EXCL dev gd-ifb0 parent 4744: pref 100 protocol ip flower dst_ip \
                 10.203.50.0/24 classid 4744:2",
                "RTM_NEWQDISC NLM_F_CREATE|NLM_F_EXCL dev va parent ffff:fff1 handle ffff: kind clsact",
                "RTM_NEWTFILTER NLM_F_CREATE|NLM_F_EXCL dev va parent ffff:fff2 pref 1 protocol all flower action \
                 mirred egress redirect dev gd-ifb0",
                "revert: RTM_DELTFILTER dev va parent ffff:fff2 pref 1 protocol all",
                "revert: RTM_DELQDISC dev va parent ffff:fff1 handle ffff: (unless another filter was added to it)",
                "revert: RTM_DELLINK gd-ifb0 (its qdiscs go with it)",
            ]
        );
    }

    #[test]
    fn filter_messages_carry_pref_protocol_and_network_order_keys() {
        let f = &matches(
            Direction::Egress,
            &scope(&["10.9.0.0/16"], &[53], Some(Protocol::Udp)),
            &[],
        )
        .expect("matches")[0];
        let m = flower_message(3, 100, f);
        assert_eq!(m.header.info, (100 << 16) | u32::from(0x0800u16.to_be()));
        assert_eq!(m.header.parent, h(GRAYDAR_MAJOR, 0));
        let mut buf = vec![0u8; m.buffer_len()];
        m.emit(&mut buf);
        let needle_ip = [10u8, 9, 0, 0];
        assert!(buf.windows(4).any(|w| w == needle_ip), "dst ip in network order");
        assert!(buf.windows(2).any(|w| w == [0, 53]), "udp port 53 in network order");
        let r = redirect_message(3, INGRESS_PREF, 42);
        assert_eq!(mirred_target(&r), Some(42));
        assert_eq!(r.header.parent, h(0xffff, 0xfff2));
        let prio = prio_root_message(3, false);
        assert_eq!(tc::kind_of(&prio), "prio");
    }
}
