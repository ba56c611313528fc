//! The netlink messages of a netem tree (pure: built and read, never sent).

use std::net::IpAddr;

use netlink_packet_route::tc::{
    TcAction, TcActionAttribute, TcActionGeneric, TcActionMirror, TcActionMirrorOption, TcActionOption, TcActionType,
    TcAttribute, TcFilterFlower, TcFilterFlowerOption, TcHandle, TcMessage, TcMirror, TcMirrorActionType, TcOption,
};
use rtnetlink::packet_core::DefaultNla;

use super::super::netem::{NetemSpec, prio_options};
use super::super::tc::{self, GRAYDAR_MAJOR, TCA_OPTIONS};
use super::{ETH_P_ALL, Match, NETEM_CHILD_MAJOR, NETEM_MINOR, PASS_MINOR, TC_H_MIN_INGRESS};

pub(super) fn base(ifindex: u32, parent: TcHandle, handle: TcHandle) -> TcMessage {
    let mut m = TcMessage::default();
    m.header.index = ifindex as i32;
    m.header.parent = parent;
    m.header.handle = handle;
    m
}

pub(super) fn h(major: u16, minor: u16) -> TcHandle {
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

pub(super) fn ingress_hook() -> TcHandle {
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
/// The mirred target of a filter dump, if it is a flower with a mirred action.
pub(super) fn mirred_target(m: &TcMessage) -> Option<u32> {
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
