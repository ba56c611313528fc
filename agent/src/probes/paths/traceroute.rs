//! Paris-style traceroute toward a mesh peer, on the mesh's own flow.
//!
//! The probes are mesh datagrams of kind *trace* sent from the mesh socket
//! itself (same source address and port, same destination address and port,
//! UDP: the 5-tuple of the path probes, and for IPv6 the same flow label, which
//! the kernel derives from it), so a router hashing flows over ECMP paths sends
//! the traceroute down the very path whose hop count the mesh measured. Only
//! the TTL (hop limit) changes, per datagram (IP_TTL / IPV6_HOPLIMIT control
//! message), so the mesh's own probes are untouched.
//!
//! Answers: ICMP time exceeded from the routers is read from the mesh socket's
//! error queue (IP_RECVERR / IPV6_RECVERR, `MSG_ERRQUEUE`, switched on only
//! for the run: switching it off purges the queue). An entry is ours when its
//! original destination is the peer and the returned payload decodes as a
//! trace datagram of this run; the TTL comes from the payload, so a late
//! answer to an earlier probe is never attributed to the wrong hop. (A router
//! that quotes only the 8 bytes RFC 792 requires returns no payload: such an
//! answer is taken for the TTL in flight.) The destination answers the trace
//! datagram that reaches it with a *trace echo* over the mesh (the mesh's
//! receive loop records it; `echoed` reports it), which ends the run; an ICMP
//! unreachable for the trace (no agent listening) ends it too.
//! Blocking; run it off the runtime, one run per socket at a time (entries of
//! the error queue that are not ours are dropped).

use std::io::{IoSlice, IoSliceMut};
use std::net::{IpAddr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsFd, AsRawFd as _};
use std::time::{Duration, Instant};

use nix::sys::socket::{
    ControlMessage, ControlMessageOwned, MsgFlags, SockaddrIn, SockaddrIn6, SockaddrStorage, recvmsg, sendmsg,
    setsockopt, sockopt,
};

use super::mesh::{self as path_mesh, Body, Hop, TraceProbe};
use crate::probes::ProbeError;

const SO_EE_ORIGIN_ICMP: u8 = 2;
const SO_EE_ORIGIN_ICMP6: u8 = 3;

/// What an error-queue entry says about a probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IcmpAnswer {
    /// A router on the way: TTL exceeded.
    TimeExceeded,
    /// The destination (port unreachable) or another unreachable: the end.
    Unreachable,
    Other,
}

/// Classifies an ICMP / ICMPv6 error by origin, type and code.
pub fn classify(origin: u8, icmp_type: u8, code: u8) -> IcmpAnswer {
    match (origin, icmp_type, code) {
        (SO_EE_ORIGIN_ICMP, 11, _) | (SO_EE_ORIGIN_ICMP6, 3, _) => IcmpAnswer::TimeExceeded,
        (SO_EE_ORIGIN_ICMP, 3, _) | (SO_EE_ORIGIN_ICMP6, 1, _) => IcmpAnswer::Unreachable,
        _ => IcmpAnswer::Other,
    }
}

/// Which probe of `run` an error-queue entry answers, from the payload it
/// returns: `Some(ttl)` for one of ours, `None` for another datagram of the
/// mesh (or garbage). An empty payload (a router that quotes only the UDP
/// header) is taken for `in_flight`. The payload is our own datagram quoted
/// back by a router, so its MAC is not checked (routers have no key); it
/// only ever names a hop, and only for a run in flight.
pub fn answered_ttl(payload: &[u8], run: u32, in_flight: u8) -> Option<u8> {
    if payload.is_empty() {
        return Some(in_flight);
    }
    match path_mesh::decode_unverified(payload) {
        Ok(d) => match d.body {
            Body::Trace(TraceProbe { ttl, run: r }) if r == run => Some(ttl),
            _ => None,
        },
        Err(_) => None,
    }
}

/// One error-queue entry: the kind of answer, who sent it, the original
/// destination of the datagram it is about, and that datagram's payload.
struct ErrEntry {
    answer: IcmpAnswer,
    from: Option<IpAddr>,
    dst: Option<SocketAddr>,
    payload: Vec<u8>,
}

fn read_error(fd: &impl AsFd) -> Option<ErrEntry> {
    let mut buf = [0u8; 1500];
    let mut iov = [IoSliceMut::new(&mut buf)];
    // Room for every control message the mesh socket gets with an error:
    // SO_TIMESTAMPNS and IP_TTL / IPV6_HOPLIMIT of the ICMP packet come
    // *before* IP_RECVERR, so a buffer sized for IP_RECVERR alone truncates it away.
    let mut cmsg = nix::cmsg_space!(
        libc::timespec,
        libc::c_int,
        libc::c_int,
        libc::sock_extended_err,
        libc::sockaddr_in6,
        [u8; 64]
    );
    let msg = recvmsg::<SockaddrStorage>(
        fd.as_fd().as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_ERRQUEUE | MsgFlags::MSG_DONTWAIT,
    )
    .ok()?;
    let mut out = None;
    if let Ok(cmsgs) = msg.cmsgs() {
        for c in cmsgs {
            match c {
                ControlMessageOwned::Ipv4RecvErr(e, from) => {
                    let ip = from.map(|a| IpAddr::from(u32::from_be(a.sin_addr.s_addr).to_be_bytes()));
                    out = Some((classify(e.ee_origin, e.ee_type, e.ee_code), ip));
                }
                ControlMessageOwned::Ipv6RecvErr(e, from) => {
                    let ip = from.map(|a| IpAddr::from(a.sin6_addr.s6_addr));
                    out = Some((classify(e.ee_origin, e.ee_type, e.ee_code), ip));
                }
                _ => {}
            }
        }
    }
    let dst = msg.address.and_then(|a: SockaddrStorage| {
        if let Some(v4) = a.as_sockaddr_in() {
            Some(SocketAddr::V4(SocketAddrV4::from(*v4)))
        } else {
            a.as_sockaddr_in6().map(|v6| {
                let v6 = SocketAddrV6::from(*v6);
                match v6.ip().to_ipv4_mapped() {
                    Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
                    None => SocketAddr::new(IpAddr::V6(*v6.ip()), v6.port()),
                }
            })
        }
    });
    let n = msg.bytes;
    let payload = iov[0].get(..n).map(<[u8]>::to_vec).unwrap_or_default();
    let (answer, from) = out?;
    Some(ErrEntry {
        answer,
        from,
        dst,
        payload,
    })
}

/// Drops whatever the error queue holds (entries of other datagrams).
pub fn drain_errors(fd: &impl AsFd) -> usize {
    let mut n = 0;
    while n < 4096 && read_error(fd).is_some() {
        n += 1;
    }
    n
}

fn set_recverr(fd: &impl AsFd, v6: bool, on: bool) -> nix::Result<()> {
    if v6 {
        setsockopt(fd, sockopt::Ipv6RecvErr, &on)
    } else {
        setsockopt(fd, sockopt::Ipv4RecvErr, &on)
    }
}

/// Switches IP_RECVERR off again (and so purges the error queue) on drop.
struct RecvErrGuard<'a, F: AsFd> {
    fd: &'a F,
    v6: bool,
}

impl<F: AsFd> Drop for RecvErrGuard<'_, F> {
    fn drop(&mut self) {
        if let Err(e) = set_recverr(self.fd, self.v6, false) {
            tracing::warn!(error = %e, "traceroute: cannot switch IP_RECVERR off on the mesh socket");
        }
    }
}

/// Sends `payload` to `dst` with TTL / hop limit `ttl` for this datagram only.
pub fn send_with_ttl(fd: &impl AsFd, dst: SocketAddr, ttl: u8, payload: &[u8]) -> nix::Result<usize> {
    let iov = [IoSlice::new(payload)];
    let t = libc::c_int::from(ttl);
    let raw = fd.as_fd().as_raw_fd();
    match dst {
        SocketAddr::V4(a) => sendmsg(
            raw,
            &iov,
            &[ControlMessage::Ipv4Ttl(&t)],
            MsgFlags::MSG_DONTWAIT,
            Some(&SockaddrIn::from(a)),
        ),
        SocketAddr::V6(a) => sendmsg(
            raw,
            &iov,
            &[ControlMessage::Ipv6HopLimit(&t)],
            MsgFlags::MSG_DONTWAIT,
            Some(&SockaddrIn6::from(a)),
        ),
    }
}

/// What one run needs from the mesh.
pub struct TraceRun<'a> {
    /// The peer's mesh address (address and port of its mesh socket).
    pub dst: SocketAddr,
    pub max_hops: u8,
    pub per_hop: Duration,
    pub run: u32,
    /// The encoded trace datagram for a TTL.
    pub payload: &'a dyn Fn(u8) -> Vec<u8>,
    /// The TTL of this run's trace datagram the peer echoed, if any yet.
    pub echoed: &'a dyn Fn() -> Option<u8>,
}

/// Traces toward the peer from the mesh socket `fd`, one probe per TTL, up
/// to `max_hops`, waiting at most `per_hop` for each answer. Hops that do not
/// answer are listed without an address.
pub fn trace(fd: &impl AsFd, r: &TraceRun<'_>) -> Result<Vec<Hop>, ProbeError> {
    let v6 = r.dst.is_ipv6();
    set_recverr(fd, v6, true).map_err(|source| ProbeError::Socket {
        what: "traceroute: setting IP_RECVERR",
        source,
    })?;
    let _guard = RecvErrGuard { fd, v6 };
    drain_errors(fd);
    let mut hops = Vec::new();
    for ttl in 1..=r.max_hops {
        let payload = (r.payload)(ttl);
        let start = Instant::now();
        // A pending error (from an earlier probe) fails one send: retry once.
        if let Err(first) = send_with_ttl(fd, r.dst, ttl, &payload)
            && let Err(e) = send_with_ttl(fd, r.dst, ttl, &payload)
        {
            tracing::debug!(ttl, first = %first, error = %e, "traceroute: send");
        }
        let mut hop = Hop {
            ttl,
            addr: None,
            rtt: Duration::ZERO,
        };
        let mut done = false;
        while start.elapsed() < r.per_hop {
            if (r.echoed)().is_some_and(|t| t <= ttl) {
                hop.addr = Some(r.dst.ip());
                hop.rtt = start.elapsed();
                done = true;
                break;
            }
            match read_error(fd) {
                Some(e) if e.dst.is_none_or(|d| d == r.dst) && answered_ttl(&e.payload, r.run, ttl) == Some(ttl) => {
                    hop.addr = e.from;
                    hop.rtt = start.elapsed();
                    done = e.answer == IcmpAnswer::Unreachable || e.from == Some(r.dst.ip());
                    break;
                }
                Some(_) => {}
                None => std::thread::sleep(Duration::from_millis(2)),
            }
        }
        hops.push(hop);
        if done {
            break;
        }
    }
    Ok(hops)
}

/// The hop list as evidence text: `"1 10.0.1.1 0.12ms, 2 10.0.2.2 0.20ms"`.
pub fn hops_text(hops: &[Hop]) -> String {
    hops.iter().map(Hop::display).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn icmp_answers_are_classified() {
        assert_eq!(classify(2, 11, 0), IcmpAnswer::TimeExceeded);
        assert_eq!(classify(3, 3, 0), IcmpAnswer::TimeExceeded);
        assert_eq!(classify(2, 3, 3), IcmpAnswer::Unreachable);
        assert_eq!(classify(3, 1, 4), IcmpAnswer::Unreachable);
        assert_eq!(classify(1, 11, 0), IcmpAnswer::Other, "local origin");
    }

    #[test]
    fn hop_text() {
        let hops = vec![
            Hop {
                ttl: 1,
                addr: Some("10.0.0.1".parse().expect("ip")),
                rtt: Duration::from_micros(120),
            },
            Hop {
                ttl: 2,
                addr: None,
                rtt: Duration::ZERO,
            },
        ];
        assert_eq!(hops_text(&hops), "1 10.0.0.1 0.12ms, 2 *");
    }

    fn key() -> crate::probes::paths::auth::MeshKey {
        crate::probes::paths::auth::MeshKey::new(1, &[5u8; 32]).expect("key")
    }

    fn trace_payload(ttl: u8, run: u32) -> Vec<u8> {
        path_mesh::encode(
            &path_mesh::Datagram {
                header: path_mesh::Header {
                    kind: path_mesh::KIND_TRACE,
                    flags: 0,
                    ttl,
                    key_id: 1,
                    epoch: 1,
                    seq: 0,
                    ctr: 1,
                    tx_ns: 0,
                    report: path_mesh::RxReport::default(),
                    id: "me".into(),
                },
                body: Body::Trace(TraceProbe { ttl, run }),
            },
            &key(),
        )
    }

    #[test]
    fn answers_are_matched_by_the_returned_payload() {
        assert_eq!(
            answered_ttl(&trace_payload(3, 9), 9, 5),
            Some(3),
            "the payload's TTL wins"
        );
        assert_eq!(answered_ttl(&trace_payload(3, 8), 9, 3), None, "another run");
        assert_eq!(
            answered_ttl(&[], 9, 4),
            Some(4),
            "quoted header only: the TTL in flight"
        );
        assert_eq!(answered_ttl(b"GDP1 not a datagram", 9, 4), None);
    }

    /// No privileges needed: nothing listens on the destination port of
    /// 127.0.0.1, which answers port unreachable at TTL 1; the entry is
    /// recognized by the payload on the error queue of the sending socket.
    #[test]
    fn loopback_trace_from_the_sending_socket_ends_at_the_target() {
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        // As the mesh socket: TTL and timestamp control messages on (they
        // come with every error-queue entry too).
        setsockopt(&sock, sockopt::Ipv4RecvTtl, &true).expect("IP_RECVTTL");
        setsockopt(&sock, sockopt::ReceiveTimestampns, &true).expect("SO_TIMESTAMPNS");
        let dst = {
            // A port nobody listens on: bind, note, close.
            let probe = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
            probe.local_addr().expect("addr")
        };
        let payload = |ttl: u8| trace_payload(ttl, 77);
        let echoed = || None;
        let run = TraceRun {
            dst,
            max_hops: 4,
            per_hop: Duration::from_millis(500),
            run: 77,
            payload: &payload,
            echoed: &echoed,
        };
        let hops = trace(&sock, &run).expect("trace");
        assert_eq!(hops.len(), 1, "{hops:?}");
        assert_eq!(hops[0].addr, Some("127.0.0.1".parse().expect("ip")));
        // IP_RECVERR is off again: a later ICMP error is not queued.
        assert!(!nix::sys::socket::getsockopt(&sock, sockopt::Ipv4RecvErr).expect("getsockopt"));
    }

    #[test]
    fn an_echo_from_the_peer_ends_the_run() {
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let peer = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind peer");
        let dst = peer.local_addr().expect("addr");
        let payload = |ttl: u8| trace_payload(ttl, 5);
        let echoed = || Some(1);
        let run = TraceRun {
            dst,
            max_hops: 8,
            per_hop: Duration::from_millis(200),
            run: 5,
            payload: &payload,
            echoed: &echoed,
        };
        let hops = trace(&sock, &run).expect("trace");
        assert_eq!(hops.len(), 1);
        assert_eq!(hops[0].addr, Some(dst.ip()));
        let mut buf = [0u8; 256];
        let n = peer.recv(&mut buf).expect("the trace datagram arrived");
        assert_eq!(
            path_mesh::decode_unverified(&buf[..n]).expect("decodes").body,
            Body::Trace(TraceProbe { ttl: 1, run: 5 })
        );
    }
}
