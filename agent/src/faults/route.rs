//! Route faults over rtnetlink: `RTN_BLACKHOLE` for a prefix in a routing
//! table (IPv4 or IPv6; blackhole and route_flap), or `RTN_UNICAST` through
//! another gateway (route_detour). Every route carries graydar's own route
//! protocol number ([`RTPROT_GRAYDAR`]), so revert deletes exactly the route
//! it added and nothing an operator or a routing daemon installed.
//!
//! A route for the same prefix already in that table (of any type) makes
//! the fault fail before anything changes: adding ours next to it would
//! change which one wins, and replacing it would need a restore graydar
//! cannot guarantee (routing daemons re-add their routes on their own).

use std::net::IpAddr;

use futures_util::TryStreamExt as _;
use graydar_common::faults::Cidr;
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use serde::{Deserialize, Serialize};

/// Route protocol of graydar's routes (`ip route show proto 71`); "G".
pub const RTPROT_GRAYDAR: u8 = 0x47;
pub const RT_TABLE_MAIN: u32 = 254;

#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error(
        "table {table} already has a route for {prefix} ({kind}); a route fault would shadow or replace it, \
         so it is refused"
    )]
    Exists { prefix: String, table: u32, kind: String },
    #[error("table {table} still has graydar's route for {prefix} after the revert")]
    NotReverted { prefix: String, table: u32 },
    #[error(
        "the gateway {via} is not on a network this host reaches directly (ENETUNREACH): a detour goes through a neighbour"
    )]
    GatewayUnreachable { via: IpAddr },
    #[error("changing routes needs CAP_NET_ADMIN")]
    NotPermitted,
    #[error("netlink {op}: {source}")]
    Netlink {
        op: &'static str,
        #[source]
        source: rtnetlink::Error,
    },
}

/// What revert needs (journaled).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutePrior {
    pub prefix: String,
    pub table: u32,
}

fn family(c: &Cidr) -> AddressFamily {
    if c.addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}

/// Our blackhole route message for `c` in `table` (pure).
pub fn blackhole_message(c: &Cidr, table: u32) -> RouteMessage {
    let mut m = RouteMessage::default();
    m.header = RouteHeader {
        address_family: family(c),
        destination_prefix_length: c.len,
        table: if table < 256 {
            table as u8
        } else {
            RouteHeader::RT_TABLE_UNSPEC
        },
        protocol: RouteProtocol::Other(RTPROT_GRAYDAR),
        scope: RouteScope::Universe,
        kind: RouteType::BlackHole,
        ..m.header
    };
    m.attributes
        .push(RouteAttribute::Destination(RouteAddress::from(c.addr)));
    m.attributes.push(RouteAttribute::Table(table));
    m
}

/// Our detour for `c` in `table`: unicast through `via`, with `src` as the
/// preferred source when given (pure).
pub fn detour_message(c: &Cidr, table: u32, via: IpAddr, src: Option<IpAddr>) -> RouteMessage {
    let mut m = blackhole_message(c, table);
    m.header.kind = RouteType::Unicast;
    m.attributes.push(RouteAttribute::Gateway(RouteAddress::from(via)));
    if let Some(src) = src {
        m.attributes.push(RouteAttribute::PrefSource(RouteAddress::from(src)));
    }
    m
}

fn table_of(m: &RouteMessage) -> u32 {
    m.attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(m.header.table))
}

fn dst_of(m: &RouteMessage) -> Option<IpAddr> {
    m.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(RouteAddress::Inet(a)) => Some(IpAddr::V4(*a)),
        RouteAttribute::Destination(RouteAddress::Inet6(a)) => Some(IpAddr::V6(*a)),
        _ => None,
    })
}

fn map_err(op: &'static str, e: rtnetlink::Error) -> RouteError {
    if let rtnetlink::Error::NetlinkError(m) = &e
        && m.code.map(|c| -c.get()) == Some(libc::EPERM)
    {
        return RouteError::NotPermitted;
    }
    RouteError::Netlink { op, source: e }
}

/// Routes in `table` for exactly `c` (prefix and length).
async fn same_prefix(handle: &rtnetlink::Handle, c: &Cidr, table: u32) -> Result<Vec<RouteMessage>, RouteError> {
    let mut q = RouteMessage::default();
    q.header.address_family = family(c);
    let all: Vec<RouteMessage> = handle
        .route()
        .get(q)
        .execute()
        .try_collect()
        .await
        .map_err(|e| map_err("dump routes", e))?;
    Ok(all
        .into_iter()
        .filter(|m| {
            m.header.destination_prefix_length == c.len
                && table_of(m) == table
                && m.header.tos == 0
                && dst_of(m).unwrap_or(if c.addr.is_ipv4() {
                    IpAddr::V4(0.into())
                } else {
                    IpAddr::V6(0.into())
                }) == c.addr
        })
        .collect())
}

fn kind_name(m: &RouteMessage) -> String {
    format!("{:?}", m.header.kind).to_lowercase()
}

/// Refuses when `table` already routes `c`. Changes nothing.
pub async fn check_free(handle: &rtnetlink::Handle, c: &Cidr, table: u32) -> Result<(), RouteError> {
    if let Some(m) = same_prefix(handle, c, table).await?.first() {
        return Err(RouteError::Exists {
            prefix: c.to_string(),
            table,
            kind: kind_name(m),
        });
    }
    Ok(())
}

pub async fn add_blackhole(handle: &rtnetlink::Handle, c: &Cidr, table: u32) -> Result<(), RouteError> {
    add(handle, blackhole_message(c, table), c, table, "add blackhole route").await
}

/// Adds our detour (the kernel refuses a gateway it cannot reach directly:
/// ENETUNREACH, named in the error).
pub async fn add_detour(
    handle: &rtnetlink::Handle,
    c: &Cidr,
    table: u32,
    via: IpAddr,
    src: Option<IpAddr>,
) -> Result<(), RouteError> {
    match add(handle, detour_message(c, table, via, src), c, table, "add detour route").await {
        Err(RouteError::Netlink {
            source: rtnetlink::Error::NetlinkError(m),
            ..
        }) if m.code.map(|c| -c.get()) == Some(libc::ENETUNREACH) => Err(RouteError::GatewayUnreachable { via }),
        r => r,
    }
}

async fn add(
    handle: &rtnetlink::Handle,
    m: RouteMessage,
    c: &Cidr,
    table: u32,
    op: &'static str,
) -> Result<(), RouteError> {
    match super::tc::send(handle, RouteNetlinkMessage::NewRoute(m), NLM_F_CREATE | NLM_F_EXCL).await {
        Ok(()) => Ok(()),
        Err(rtnetlink::Error::NetlinkError(m)) if m.code.map(|c| -c.get()) == Some(libc::EEXIST) => {
            Err(RouteError::Exists {
                prefix: c.to_string(),
                table,
                kind: "added meanwhile".into(),
            })
        }
        Err(e) => Err(map_err(op, e)),
    }
}

/// A route graydar added: its protocol, whatever the type (blackhole or
/// a detour's unicast).
fn is_ours(m: &RouteMessage) -> bool {
    m.header.protocol == RouteProtocol::Other(RTPROT_GRAYDAR)
}

/// Checks that `table` holds no blackhole of ours for `c` (after a revert,
/// before it is journaled).
pub async fn verify_removed(handle: &rtnetlink::Handle, c: &Cidr, table: u32) -> Result<(), RouteError> {
    if same_prefix(handle, c, table).await?.iter().any(is_ours) {
        return Err(RouteError::NotReverted {
            prefix: c.to_string(),
            table,
        });
    }
    Ok(())
}

/// Deletes our route for `c` in `table` (blackhole or detour), if it is
/// there; idempotent. Routes of other protocols are never touched: the
/// route is deleted by its own message as the kernel listed it. One route,
/// the one the fault added: another of ours for the prefix is not this
/// fault's, and [`verify_removed`] reports it (the revert is retried).
pub async fn del_ours(handle: &rtnetlink::Handle, c: &Cidr, table: u32) -> Result<(), RouteError> {
    let Some(m) = same_prefix(handle, c, table).await?.into_iter().find(is_ours) else {
        return Ok(());
    };
    match super::tc::send(handle, RouteNetlinkMessage::DelRoute(m), 0).await {
        Ok(()) => Ok(()),
        Err(rtnetlink::Error::NetlinkError(m)) if m.code.map(|c| -c.get()) == Some(libc::ESRCH) => Ok(()),
        Err(e) => Err(map_err("delete graydar's route", e)),
    }
}

/// The netlink operations of a detour's apply and revert (pure).
pub fn describe_detour(c: &Cidr, table: u32, via: IpAddr, src: Option<IpAddr>) -> Vec<String> {
    let fam = if c.addr.is_ipv4() { "inet" } else { "inet6" };
    let src = src.map(|s| format!(" prefsrc {s}")).unwrap_or_default();
    vec![
        format!("RTM_GETROUTE NLM_F_DUMP family {fam}: refuse if table {table} has a route for {c}"),
        format!(
            "RTM_NEWROUTE NLM_F_CREATE|NLM_F_EXCL family {fam} type unicast {c} via {via}{src} table {table} proto \
             {RTPROT_GRAYDAR} scope global"
        ),
        format!("revert: RTM_DELROUTE of graydar's route (proto {RTPROT_GRAYDAR}) for {c} in table {table}"),
    ]
}

/// The netlink operations of apply and revert (pure).
pub fn describe(c: &Cidr, table: u32) -> Vec<String> {
    let fam = if c.addr.is_ipv4() { "inet" } else { "inet6" };
    vec![
        format!("RTM_GETROUTE NLM_F_DUMP family {fam}: refuse if table {table} has a route for {c}"),
        format!(
            "RTM_NEWROUTE NLM_F_CREATE|NLM_F_EXCL family {fam} type blackhole {c} table {table} proto {RTPROT_GRAYDAR} \
             scope global"
        ),
        format!("revert: RTM_DELROUTE family {fam} type blackhole {c} table {table} proto {RTPROT_GRAYDAR}"),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describe_names_the_route_operations() {
        let c = Cidr::parse("198.51.100.0/24").expect("cidr");
        assert_eq!(
            describe(&c, 254),
            [
                "RTM_GETROUTE NLM_F_DUMP family inet: refuse if table 254 has a route for 198.51.100.0/24",
                "RTM_NEWROUTE NLM_F_CREATE|NLM_F_EXCL family inet type blackhole 198.51.100.0/24 table 254 proto 71 \
                 scope global",
                "revert: RTM_DELROUTE family inet type blackhole 198.51.100.0/24 table 254 proto 71",
            ]
        );
    }

    #[test]
    fn a_detour_is_a_unicast_route_of_ours_through_the_gateway_from_the_source() {
        let c = Cidr::parse("10.206.1.2/32").expect("cidr");
        let via: IpAddr = "10.206.4.1".parse().expect("ip");
        let src: IpAddr = "10.206.2.2".parse().expect("ip");
        let m = detour_message(&c, 254, via, Some(src));
        assert_eq!(m.header.kind, RouteType::Unicast);
        assert!(is_ours(&m), "graydar's protocol");
        assert_eq!(m.header.destination_prefix_length, 32);
        assert!(m.attributes.contains(&RouteAttribute::Gateway(RouteAddress::from(via))));
        assert!(
            m.attributes
                .contains(&RouteAttribute::PrefSource(RouteAddress::from(src)))
        );
        let bare = detour_message(&c, 254, via, None);
        assert!(
            !bare
                .attributes
                .iter()
                .any(|a| matches!(a, RouteAttribute::PrefSource(_)))
        );
        let mut theirs = bare.clone();
        theirs.header.protocol = RouteProtocol::Static;
        assert!(!is_ours(&theirs), "an operator's route is never ours");
        assert_eq!(
            describe_detour(&c, 254, via, Some(src))[1],
            "RTM_NEWROUTE NLM_F_CREATE|NLM_F_EXCL family inet type unicast 10.206.1.2/32 via 10.206.4.1 prefsrc \
             10.206.2.2 table 254 proto 71 scope global"
        );
    }

    #[test]
    fn the_message_carries_table_protocol_and_type() {
        let c = Cidr::parse("2001:db8:1::/48").expect("cidr");
        let m = blackhole_message(&c, 1000);
        assert_eq!(m.header.address_family, AddressFamily::Inet6);
        assert_eq!(m.header.destination_prefix_length, 48);
        assert_eq!(m.header.table, 0, "tables above 255 go in RTA_TABLE only");
        assert_eq!(table_of(&m), 1000);
        assert_eq!(m.header.kind, RouteType::BlackHole);
        assert_eq!(dst_of(&m), Some(c.addr));
        assert_eq!(table_of(&blackhole_message(&c, 254)), 254);
    }
}
