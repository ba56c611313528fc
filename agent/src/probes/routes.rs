//! Route, link and neighbour churn: the rtnetlink multicast groups
//! RTNLGRP_IPV4_ROUTE, RTNLGRP_IPV6_ROUTE, RTNLGRP_LINK and RTNLGRP_NEIGH
//! (what `ip monitor route link neigh` prints), decoded into [`ChurnEvent`]s.
//!
//! Reading ([`RouteChurnProbe`]: the subscribed socket) is apart from
//! decoding ([`decode`], [`LinkStates`]: pure, tested on synthetic messages).
//!
//! What counts as a change:
//! - **route**: every RTM_NEWROUTE / RTM_DELROUTE of a prefix, except cache
//!   clones (RTM_F_CLONED: IPv6 PMTU / redirect exceptions, not routes);
//! - **link**: an RTM_NEWLINK whose operational state differs from the last
//!   one seen for that interface (RTM_NEWLINK is also sent for MTU, flag and
//!   statistics changes, which are not churn), and RTM_DELLINK;
//! - **neighbour**: an RTM_NEWNEIGH whose state is FAILED or INCOMPLETE
//!   (address resolution of a next hop failing). REACHABLE / STALE / DELAY /
//!   PROBE cycle all the time on a healthy host, and RTM_DELNEIGH is the
//!   garbage collector: neither is churn.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use futures_util::StreamExt as _;
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::link::{LinkAttribute, LinkMessage, State};
use netlink_packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteFlags, RouteMessage, RouteType};
use rtnetlink::packet_core::{NetlinkMessage, NetlinkPayload};

use crate::probes::ProbeError;

/// Label of this probe in `graydar_probe_up` and `graydar_collector_errors_total`.
pub const PROBE: &str = "route_churn";

/// Kernel routing table ids with names (`ip route show table main`).
pub const RT_TABLE_DEFAULT: u32 = 253;
pub const RT_TABLE_MAIN: u32 = 254;
pub const RT_TABLE_LOCAL: u32 = 255;

/// Socket receive buffer asked for: a full-table BGP session reset sends
/// hundreds of thousands of notifications in a burst; overflow is counted
/// (ENOBUFS, see [`ChurnEvent::Overrun`]) but loses events.
const RCVBUF: usize = 8 << 20;

/// An IP prefix, host bits cleared: `10.1.0.0/16`, `2001:db8::/32`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Prefix {
    addr: IpAddr,
    len: u8,
}

impl Prefix {
    /// `None` when `len` exceeds the address length.
    pub fn new(addr: IpAddr, len: u8) -> Option<Prefix> {
        let addr = match addr {
            IpAddr::V4(a) if len <= 32 => {
                let mask = if len == 0 { 0 } else { u32::MAX << (32 - u32::from(len)) };
                IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask))
            }
            IpAddr::V6(a) if len <= 128 => {
                let mask = if len == 0 {
                    0
                } else {
                    u128::MAX << (128 - u32::from(len))
                };
                IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask))
            }
            _ => return None,
        };
        Some(Prefix { addr, len })
    }

    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length in bits.
    pub fn prefix_len(&self) -> u8 {
        self.len
    }

    /// `ipv4` or `ipv6` (the `family` metric label).
    pub fn family(&self) -> &'static str {
        family_of(&self.addr)
    }

    /// Whether `other` lies within this prefix (same family, at least as long).
    pub fn contains(&self, other: &Prefix) -> bool {
        if other.len < self.len {
            return false;
        }
        match (self.addr, other.addr) {
            (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)) => {
                Prefix::new(other.addr, self.len).is_some_and(|p| p.addr == self.addr)
            }
            _ => false,
        }
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a prefix like 10.0.0.0/8 or fe80::/10")]
pub struct PrefixParseError(pub String);

impl FromStr for Prefix {
    type Err = PrefixParseError;
    fn from_str(s: &str) -> Result<Prefix, PrefixParseError> {
        let err = || PrefixParseError(s.to_owned());
        let (a, l) = s.split_once('/').ok_or_else(err)?;
        let addr: IpAddr = a.parse().map_err(|_| err())?;
        let len: u8 = l.parse().map_err(|_| err())?;
        Prefix::new(addr, len).ok_or_else(err)
    }
}

fn family_of(a: &IpAddr) -> &'static str {
    match a {
        IpAddr::V4(_) => "ipv4",
        IpAddr::V6(_) => "ipv6",
    }
}

/// `main`, `local`, `default` or the number.
pub fn table_name(table: u32) -> String {
    match table {
        RT_TABLE_MAIN => "main".to_owned(),
        RT_TABLE_LOCAL => "local".to_owned(),
        RT_TABLE_DEFAULT => "default".to_owned(),
        t => t.to_string(),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteAction {
    /// RTM_NEWROUTE: added or replaced.
    Add,
    /// RTM_DELROUTE.
    Delete,
}

impl RouteAction {
    pub fn as_str(&self) -> &'static str {
        match self {
            RouteAction::Add => "add",
            RouteAction::Delete => "del",
        }
    }
}

/// One next hop of a route: gateway and/or output interface.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct NextHop {
    pub gateway: Option<IpAddr>,
    pub oif: Option<u32>,
}

/// A route added, replaced or deleted.
#[derive(Clone, Debug, PartialEq)]
pub struct RouteEvent {
    pub action: RouteAction,
    pub prefix: Prefix,
    pub table: u32,
    /// Who installed it: `kernel`, `boot` (ip route without proto), `static`, `bgp`, `bird`, ...
    pub protocol: String,
    /// `unicast`, `unreachable`, `blackhole`, `prohibit`, `local`, ...
    pub kind: &'static str,
    /// Next hops (one, or several for a multipath route; empty for
    /// unreachable / blackhole routes).
    pub next_hops: Vec<NextHop>,
    pub metric: Option<u32>,
}

/// An interface's operational state changed, or the interface went away.
#[derive(Clone, Debug, PartialEq)]
pub struct LinkEvent {
    pub ifindex: u32,
    pub name: String,
    /// Previous operational state (`up`, `down`, `lowerlayerdown`, ...).
    pub from: String,
    /// New operational state; `deleted` for RTM_DELLINK.
    pub to: String,
}

/// Address resolution of a neighbour failed (FAILED) or is pending (INCOMPLETE).
#[derive(Clone, Debug, PartialEq)]
pub struct NeighEvent {
    pub ifindex: u32,
    pub address: IpAddr,
    /// `failed` or `incomplete`.
    pub state: &'static str,
}

#[derive(Clone, Debug, PartialEq)]
pub enum ChurnEvent {
    Route(RouteEvent),
    Link(LinkEvent),
    Neigh(NeighEvent),
    /// The socket's receive buffer overflowed (ENOBUFS): events were lost.
    Overrun,
}

fn route_addr(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

fn route_type(t: RouteType) -> &'static str {
    match t {
        RouteType::Unicast => "unicast",
        RouteType::Local => "local",
        RouteType::Broadcast => "broadcast",
        RouteType::Anycast => "anycast",
        RouteType::Multicast => "multicast",
        RouteType::BlackHole => "blackhole",
        RouteType::Unreachable => "unreachable",
        RouteType::Prohibit => "prohibit",
        RouteType::Throw => "throw",
        RouteType::Nat => "nat",
        RouteType::ExternalResolve => "xresolve",
        _ => "other",
    }
}

/// Decodes an RTM_NEWROUTE / RTM_DELROUTE. `None` for cache clones, for
/// families other than IPv4 / IPv6 (MPLS) and for malformed messages.
pub fn decode_route(action: RouteAction, msg: &RouteMessage) -> Option<RouteEvent> {
    let h = &msg.header;
    if h.flags.contains(RouteFlags::Cloned) {
        return None;
    }
    let mut dst: Option<IpAddr> = None;
    let mut table = u32::from(h.table);
    let mut gateway = None;
    let mut oif = None;
    let mut metric = None;
    let mut multipath = Vec::new();
    for a in &msg.attributes {
        match a {
            RouteAttribute::Destination(d) => dst = route_addr(d),
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Gateway(g) => gateway = route_addr(g),
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::Priority(p) => metric = Some(*p),
            RouteAttribute::MultiPath(hops) => {
                for nh in hops {
                    let gw = nh.attributes.iter().find_map(|a| match a {
                        RouteAttribute::Gateway(g) => route_addr(g),
                        _ => None,
                    });
                    multipath.push(NextHop {
                        gateway: gw,
                        oif: (nh.interface_index != 0).then_some(nh.interface_index),
                    });
                }
            }
            _ => {}
        }
    }
    // A default route has no RTA_DST: the family's unspecified address.
    let addr = match (dst, h.address_family) {
        (Some(a), _) => a,
        (None, netlink_packet_route::AddressFamily::Inet) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        (None, netlink_packet_route::AddressFamily::Inet6) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        (None, _) => return None,
    };
    let prefix = Prefix::new(addr, h.destination_prefix_length)?;
    let next_hops = if !multipath.is_empty() {
        multipath
    } else if gateway.is_some() || oif.is_some() {
        vec![NextHop { gateway, oif }]
    } else {
        Vec::new()
    };
    Some(RouteEvent {
        action,
        prefix,
        table,
        protocol: h.protocol.to_string(),
        kind: route_type(h.kind),
        next_hops,
        metric,
    })
}

/// Decodes an RTM_NEWNEIGH into a failure event; `None` for healthy states.
pub fn decode_neigh(msg: &NeighbourMessage) -> Option<NeighEvent> {
    let state = match msg.header.state {
        NeighbourState::Failed => "failed",
        NeighbourState::Incomplete => "incomplete",
        _ => return None,
    };
    let address = msg.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => Some(IpAddr::V4(*v4)),
        NeighbourAttribute::Destination(NeighbourAddress::Inet6(v6)) => Some(IpAddr::V6(*v6)),
        _ => None,
    })?;
    Some(NeighEvent {
        ifindex: msg.header.ifindex,
        address,
        state,
    })
}

fn oper_state(s: &State) -> String {
    s.to_string().to_ascii_lowercase()
}

/// Last known name and operational state per interface, so that a link
/// event is reported only when the operational state really changed.
#[derive(Default, Debug)]
pub struct LinkStates {
    by_index: HashMap<u32, (String, String)>,
}

impl LinkStates {
    fn name_and_state(msg: &LinkMessage) -> (Option<String>, Option<String>) {
        let mut name = None;
        let mut state = None;
        for a in &msg.attributes {
            match a {
                LinkAttribute::IfName(n) => name = Some(n.clone()),
                LinkAttribute::OperState(s) => state = Some(oper_state(s)),
                _ => {}
            }
        }
        (name, state)
    }

    /// Records a link from a dump (start-up): no event.
    pub fn seed(&mut self, msg: &LinkMessage) {
        let (name, state) = Self::name_and_state(msg);
        self.by_index.insert(
            msg.header.index,
            (
                name.unwrap_or_else(|| msg.header.index.to_string()),
                state.unwrap_or_else(|| "unknown".to_owned()),
            ),
        );
    }

    /// An RTM_NEWLINK (`deleted` false) or RTM_DELLINK: the event when the
    /// operational state changed. An interface seen for the first time is
    /// recorded without an event (it was created, not flapped), unless it is
    /// deleted.
    pub fn observe(&mut self, msg: &LinkMessage, deleted: bool) -> Option<LinkEvent> {
        let index = msg.header.index;
        let (name, state) = Self::name_and_state(msg);
        if deleted {
            let (old_name, old_state) = self.by_index.remove(&index).unwrap_or_default();
            return Some(LinkEvent {
                ifindex: index,
                name: name.unwrap_or(old_name),
                from: old_state,
                to: "deleted".to_owned(),
            });
        }
        let entry = self.by_index.entry(index);
        match entry {
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert((
                    name.unwrap_or_else(|| index.to_string()),
                    state.unwrap_or_else(|| "unknown".to_owned()),
                ));
                None
            }
            std::collections::hash_map::Entry::Occupied(mut o) => {
                let (old_name, old_state) = o.get().clone();
                let new_name = name.unwrap_or(old_name);
                let new_state = state.unwrap_or_else(|| old_state.clone());
                o.insert((new_name.clone(), new_state.clone()));
                (new_state != old_state).then_some(LinkEvent {
                    ifindex: index,
                    name: new_name,
                    from: old_state,
                    to: new_state,
                })
            }
        }
    }

    /// The interface's name, if known.
    pub fn name(&self, ifindex: u32) -> Option<&str> {
        self.by_index.get(&ifindex).map(|(n, _)| n.as_str())
    }
}

/// Decodes one message from the subscribed socket; `None` for messages that
/// are no churn (see the module documentation) or of other groups.
pub fn decode(msg: &NetlinkMessage<RouteNetlinkMessage>, links: &mut LinkStates) -> Option<ChurnEvent> {
    match &msg.payload {
        NetlinkPayload::Overrun(_) => Some(ChurnEvent::Overrun),
        NetlinkPayload::InnerMessage(inner) => match inner {
            RouteNetlinkMessage::NewRoute(r) => decode_route(RouteAction::Add, r).map(ChurnEvent::Route),
            RouteNetlinkMessage::DelRoute(r) => decode_route(RouteAction::Delete, r).map(ChurnEvent::Route),
            RouteNetlinkMessage::NewLink(l) => links.observe(l, false).map(ChurnEvent::Link),
            RouteNetlinkMessage::DelLink(l) => links.observe(l, true).map(ChurnEvent::Link),
            RouteNetlinkMessage::NewNeighbour(n) => decode_neigh(n).map(ChurnEvent::Neigh),
            _ => None,
        },
        _ => None,
    }
}

type Notification = (NetlinkMessage<RouteNetlinkMessage>, rtnetlink::sys::SocketAddr);

/// The subscribed rtnetlink socket of this network namespace.
pub struct RouteChurnProbe {
    handle: rtnetlink::Handle,
    /// rtnetlink's unbounded receiver (futures-channel, not a dependency of ours).
    messages: std::pin::Pin<Box<dyn futures_util::Stream<Item = Notification> + Send + Sync>>,
    conn: tokio::task::JoinHandle<()>,
}

impl RouteChurnProbe {
    /// Opens a NETLINK_ROUTE socket bound to the route (IPv4, IPv6), link and
    /// neighbour groups. Must run inside a tokio runtime.
    pub fn start() -> Result<RouteChurnProbe, ProbeError> {
        use rtnetlink::MulticastGroup as G;
        use rtnetlink::sys::AsyncSocket as _;
        let (mut conn, handle, messages) =
            rtnetlink::new_multicast_connection(&[G::Ipv4Route, G::Ipv6Route, G::Link, G::Neigh]).map_err(
                |source| ProbeError::NetlinkSocket {
                    what: "subscribing to route, link and neighbour events",
                    source,
                },
            )?;
        if let Err(e) = conn.socket_mut().socket_mut().set_rx_buf_sz(RCVBUF) {
            tracing::debug!(error = %e, "route_churn: cannot enlarge the netlink receive buffer");
        }
        let conn = tokio::spawn(conn);
        Ok(RouteChurnProbe {
            handle,
            messages: Box::pin(messages),
            conn,
        })
    }

    /// Dumps the interfaces into `links` (names and states before any event).
    pub async fn seed_links(&self, links: &mut LinkStates) -> Result<(), ProbeError> {
        let mut dump = self.handle.link().get().execute();
        while let Some(m) = dump.next().await {
            match m {
                Ok(l) => links.seed(&l),
                Err(source) => {
                    return Err(ProbeError::Netlink {
                        what: "dumping links",
                        source,
                    });
                }
            }
        }
        Ok(())
    }

    /// The next message of the subscribed groups; `None` once the socket closed.
    pub async fn next(&mut self) -> Option<NetlinkMessage<RouteNetlinkMessage>> {
        self.messages.next().await.map(|(m, _)| m)
    }
}

impl Drop for RouteChurnProbe {
    fn drop(&mut self) {
        self.conn.abort();
    }
}

#[cfg(test)]
mod tests {
    use netlink_packet_route::AddressFamily;
    use netlink_packet_route::route::{RouteNextHop, RouteProtocol};
    use rtnetlink::packet_core::NetlinkHeader;

    use super::*;

    fn v4(s: &str) -> Ipv4Addr {
        s.parse().expect("ipv4 literal")
    }

    fn route(dst: Option<&str>, len: u8, gw: Option<&str>, oif: Option<u32>) -> RouteMessage {
        let mut m = RouteMessage::default();
        m.header.address_family = AddressFamily::Inet;
        m.header.destination_prefix_length = len;
        m.header.table = 254;
        m.header.protocol = RouteProtocol::Static;
        m.header.kind = RouteType::Unicast;
        if let Some(d) = dst {
            m.attributes
                .push(RouteAttribute::Destination(RouteAddress::Inet(v4(d))));
        }
        m.attributes.push(RouteAttribute::Table(254));
        if let Some(g) = gw {
            m.attributes.push(RouteAttribute::Gateway(RouteAddress::Inet(v4(g))));
        }
        if let Some(i) = oif {
            m.attributes.push(RouteAttribute::Oif(i));
        }
        m
    }

    #[test]
    fn prefixes_parse_print_mask_and_contain() {
        let p: Prefix = "10.1.2.3/16".parse().expect("valid");
        assert_eq!(p.to_string(), "10.1.0.0/16");
        assert_eq!(p.family(), "ipv4");
        let ll: Prefix = "fe80::/10".parse().expect("valid");
        assert!(ll.contains(&"fe80::/64".parse().expect("valid")));
        assert!(!ll.contains(&"2001:db8::/32".parse().expect("valid")));
        assert!(!ll.contains(&p));
        assert!(p.contains(&"10.1.77.0/24".parse().expect("valid")));
        assert!(!p.contains(&"10.0.0.0/8".parse().expect("valid")));
        assert!("0.0.0.0/0".parse::<Prefix>().expect("valid").contains(&p));
        for bad in ["10.0.0.0", "10.0.0.0/33", "x/8", "::/129"] {
            assert!(bad.parse::<Prefix>().is_err(), "{bad}");
        }
    }

    #[test]
    fn route_messages_decode_prefix_table_gateway_and_oif() {
        let m = route(Some("10.77.0.0"), 16, Some("10.76.0.2"), Some(3));
        let e = decode_route(RouteAction::Add, &m).expect("decoded");
        assert_eq!(e.prefix.to_string(), "10.77.0.0/16");
        assert_eq!(e.table, RT_TABLE_MAIN);
        assert_eq!(e.protocol, "static");
        assert_eq!(e.kind, "unicast");
        assert_eq!(
            e.next_hops,
            vec![NextHop {
                gateway: Some(IpAddr::V4(v4("10.76.0.2"))),
                oif: Some(3)
            }]
        );
        // RTA_TABLE wins over the 8-bit header field (tables above 255).
        let mut m = route(Some("10.77.0.0"), 16, None, None);
        m.header.table = 252;
        m.attributes.retain(|a| !matches!(a, RouteAttribute::Table(_)));
        m.attributes.push(RouteAttribute::Table(1000));
        m.header.kind = RouteType::Unreachable;
        let e = decode_route(RouteAction::Delete, &m).expect("decoded");
        assert_eq!((e.table, e.kind, e.action), (1000, "unreachable", RouteAction::Delete));
        assert!(e.next_hops.is_empty());
        // Default route: no RTA_DST.
        let e = decode_route(RouteAction::Add, &route(None, 0, Some("10.0.0.1"), None)).expect("decoded");
        assert_eq!(e.prefix.to_string(), "0.0.0.0/0");
    }

    #[test]
    fn multipath_routes_list_every_next_hop_and_clones_are_no_routes() {
        let mut m = route(Some("10.8.0.0"), 16, None, None);
        let mut a = RouteNextHop::default();
        a.interface_index = 2;
        a.attributes
            .push(RouteAttribute::Gateway(RouteAddress::Inet(v4("10.0.0.1"))));
        let mut b = RouteNextHop::default();
        b.interface_index = 3;
        b.attributes
            .push(RouteAttribute::Gateway(RouteAddress::Inet(v4("10.0.1.1"))));
        m.attributes.push(RouteAttribute::MultiPath(vec![a, b]));
        let e = decode_route(RouteAction::Add, &m).expect("decoded");
        assert_eq!(e.next_hops.len(), 2);
        assert_eq!(e.next_hops[1].oif, Some(3));
        let mut c = route(None, 128, None, Some(2));
        c.header.address_family = AddressFamily::Inet6;
        c.attributes.push(RouteAttribute::Destination(RouteAddress::Inet6(
            "2001:db8::1".parse().expect("v6"),
        )));
        assert!(decode_route(RouteAction::Add, &c).is_some());
        c.header.flags = RouteFlags::Cloned;
        assert!(
            decode_route(RouteAction::Add, &c).is_none(),
            "PMTU exception, not a route"
        );
    }

    fn link(index: u32, name: &str, state: State) -> LinkMessage {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.attributes.push(LinkAttribute::IfName(name.to_owned()));
        m.attributes.push(LinkAttribute::OperState(state));
        m
    }

    #[test]
    fn link_events_only_on_operational_state_changes() {
        let mut links = LinkStates::default();
        links.seed(&link(2, "eth0", State::Up));
        assert_eq!(links.name(2), Some("eth0"));
        assert!(
            links.observe(&link(2, "eth0", State::Up), false).is_none(),
            "MTU change etc."
        );
        let e = links.observe(&link(2, "eth0", State::Down), false).expect("went down");
        assert_eq!(
            (e.name.as_str(), e.from.as_str(), e.to.as_str()),
            ("eth0", "up", "down")
        );
        assert!(
            links.observe(&link(5, "veth9", State::Down), false).is_none(),
            "created"
        );
        let e = links.observe(&link(5, "veth9", State::Down), true).expect("deleted");
        assert_eq!(e.to, "deleted");
        assert!(links.name(5).is_none());
    }

    #[test]
    fn neighbour_failures_are_events_and_healthy_states_are_not() {
        let mut m = NeighbourMessage::default();
        m.header.ifindex = 2;
        m.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(v4("10.0.0.1"))));
        for s in [NeighbourState::Reachable, NeighbourState::Stale, NeighbourState::Probe] {
            m.header.state = s;
            assert!(decode_neigh(&m).is_none());
        }
        m.header.state = NeighbourState::Failed;
        let e = decode_neigh(&m).expect("failed");
        assert_eq!((e.state, e.address), ("failed", IpAddr::V4(v4("10.0.0.1"))));
    }

    #[test]
    fn decode_dispatches_by_message_type() {
        let mut links = LinkStates::default();
        let msg = NetlinkMessage::new(
            NetlinkHeader::default(),
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelRoute(route(
                Some("10.77.0.0"),
                16,
                Some("10.76.0.2"),
                None,
            ))),
        );
        match decode(&msg, &mut links) {
            Some(ChurnEvent::Route(r)) => assert_eq!(r.action, RouteAction::Delete),
            other => panic!("expected a route event, got {other:?}"),
        }
        let overrun = NetlinkMessage::new(
            NetlinkHeader::default(),
            NetlinkPayload::<RouteNetlinkMessage>::Overrun(Vec::new()),
        );
        assert_eq!(decode(&overrun, &mut links), Some(ChurnEvent::Overrun));
    }
}
