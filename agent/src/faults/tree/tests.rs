use std::net::IpAddr;

use graydar_common::faults::{Direction, Protocol, Scope};
use rtnetlink::packet_core::Emitable as _;

use super::super::caps::Piece;
use super::super::netem::NetemSpec;
use super::super::tc::{self, GRAYDAR_MAJOR};
use super::messages::{h, mirred_target};
use super::*;

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
        &scope(&["10.1.0.0/16", "fd00::/64"], &[443, 8443], None),
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
