//! The path mesh's UDP sockets: one per address family, kernel receive
//! timestamps (SO_TIMESTAMPNS) and TTL / hop limit (IP_RECVTTL /
//! IPV6_RECVHOPLIMIT) of every datagram.

use std::io::IoSliceMut;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsRawFd as _;

use nix::sys::socket::{
    AddressFamily, ControlMessageOwned, MsgFlags, SockFlag, SockType, SockaddrIn, SockaddrIn6, SockaddrStorage, bind,
    recvmsg, setsockopt, socket, sockopt,
};
use tokio::net::UdpSocket;

/// TTL / hop limit every mesh datagram is sent with (carried in the header).
pub const SEND_TTL: u8 = 64;

/// Binds the mesh socket of one family on `port` (IPv6 only for v6).
pub fn open_socket(v6: bool, port: u16) -> std::io::Result<std::net::UdpSocket> {
    let fam = if v6 { AddressFamily::Inet6 } else { AddressFamily::Inet };
    let fd = socket(
        fam,
        SockType::Datagram,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    if v6 {
        setsockopt(&fd, sockopt::Ipv6V6Only, &true)?;
        setsockopt(&fd, sockopt::Ipv6RecvHopLimit, &true)?;
        setsockopt(&fd, sockopt::Ipv6Ttl, &i32::from(SEND_TTL))?;
        bind(
            fd.as_raw_fd(),
            &SockaddrIn6::from(SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, port, 0, 0)),
        )?;
    } else {
        setsockopt(&fd, sockopt::Ipv4RecvTtl, &true)?;
        setsockopt(&fd, sockopt::Ipv4Ttl, &i32::from(SEND_TTL))?;
        bind(
            fd.as_raw_fd(),
            &SockaddrIn::from(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port)),
        )?;
    }
    setsockopt(&fd, sockopt::ReceiveTimestampns, &true)?;
    Ok(std::net::UdpSocket::from(fd))
}

pub struct Received {
    pub len: usize,
    pub from: SocketAddr,
    pub ttl: Option<u8>,
    pub rx_ns: Option<u64>,
    pub truncated: bool,
}

/// One datagram from `fd` into `buf`, with its kernel timestamp and TTL.
pub fn recv_one(fd: std::os::fd::RawFd, buf: &mut [u8]) -> std::io::Result<Received> {
    let mut iov = [IoSliceMut::new(buf)];
    let mut cmsg = nix::cmsg_space!(libc::c_int, libc::timespec);
    let msg = recvmsg::<SockaddrStorage>(fd, &mut iov, Some(&mut cmsg), MsgFlags::MSG_DONTWAIT)?;
    let mut ttl = None;
    let mut rx_ns = None;
    if let Ok(cmsgs) = msg.cmsgs() {
        for c in cmsgs {
            match c {
                ControlMessageOwned::Ipv4Ttl(t) | ControlMessageOwned::Ipv6HopLimit(t) => ttl = u8::try_from(t).ok(),
                ControlMessageOwned::ScmTimestampns(ts) => {
                    rx_ns = u64::try_from(ts.tv_sec())
                        .ok()
                        .and_then(|s| s.checked_mul(1_000_000_000))
                        .and_then(|s| s.checked_add(u64::try_from(ts.tv_nsec()).ok()?));
                }
                _ => {}
            }
        }
    }
    let from = msg.address.and_then(|a: SockaddrStorage| {
        if let Some(v4) = a.as_sockaddr_in() {
            Some(SocketAddr::V4(SocketAddrV4::from(*v4)))
        } else {
            a.as_sockaddr_in6().map(|v6| SocketAddr::V6(SocketAddrV6::from(*v6)))
        }
    });
    let truncated = msg.flags.contains(MsgFlags::MSG_TRUNC);
    let len = msg.bytes;
    let from = from.ok_or_else(|| std::io::Error::other("datagram without a source address"))?;
    Ok(Received {
        len,
        from,
        ttl,
        rx_ns,
        truncated,
    })
}

/// IPv4-mapped IPv6 sources are plain IPv4 peers.
pub fn canonical(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => a,
        },
        v4 => v4,
    }
}

/// Sends on a mesh socket, once more when the first attempt fails with an
/// ICMP error pending from an earlier datagram (IP_RECVERR is on while a
/// traceroute runs, and the kernel reports the error on the next call).
pub async fn send_mesh(sock: &UdpSocket, bytes: &[u8], to: SocketAddr) -> std::io::Result<usize> {
    match sock.send_to(bytes, to).await {
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::ECONNREFUSED | libc::EHOSTUNREACH | libc::ENETUNREACH)
            ) =>
        {
            sock.send_to(bytes, to).await
        }
        r => r,
    }
}
