//! The load sink: TCP and UDP on one port, reading and discarding. Open only
//! while a traffic or burst load is aimed at this agent (the controller
//! hands it out as a `load_sink` assignment with the load's lease).

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use nix::sys::socket::{setsockopt, sockopt};
use tokio::io::AsyncReadExt as _;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::{LoadError, Stats, should_stop};

/// The UDP sink's receive buffer: 16 MiB, about 3 s of 2,000 datagrams of
/// 1,200 bytes a second (the kernel charges each about twice its payload).
const SINK_RCVBUF: usize = 16 << 20;

pub struct Sink {
    tcp: TcpListener,
    udp: UdpSocket,
}

impl Sink {
    pub async fn bind(port: u16) -> Result<Sink, LoadError> {
        let addr = SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
        let tcp = TcpListener::bind(addr).await.map_err(|source| LoadError::Bind {
            proto: "tcp",
            port,
            source,
        })?;
        let udp = UdpSocket::bind(addr).await.map_err(|source| LoadError::Bind {
            proto: "udp",
            port,
            source,
        })?;
        // A receive buffer for seconds of the largest load, so that the
        // sink itself (a busy host, an agent paused for a moment) is never
        // what drops the load's datagrams: those would be real socket drops,
        // kernel_drops on the receiver that no fault caused. Forced (root:
        // above net.core.rmem_max), else as large as the sysctl allows.
        let want = SINK_RCVBUF;
        if setsockopt(&udp, sockopt::RcvBufForce, &want).is_err() {
            let _ = setsockopt(&udp, sockopt::RcvBuf, &want);
        }
        Ok(Sink { tcp, udp })
    }

    /// Until told to stop: every connection's bytes and every datagram
    /// counted and dropped. The connections end with it.
    pub async fn run(self, stats: Arc<Stats>, mut stopped: watch::Receiver<bool>) {
        let mut conns = JoinSet::new();
        let mut buf = vec![0u8; 65_536];
        loop {
            if should_stop(&stopped) {
                break;
            }
            tokio::select! {
                _ = stopped.changed() => {}
                a = self.tcp.accept() => match a {
                    Ok((s, _)) => {
                        let stats = stats.clone();
                        conns.spawn(async move {
                            let mut s = s;
                            let mut buf = vec![0u8; 65_536];
                            while let Ok(n) = s.read(&mut buf).await {
                                if n == 0 {
                                    break;
                                }
                                stats.received(n as u64);
                            }
                        });
                    }
                    Err(_) => stats.error(),
                },
                r = self.udp.recv_from(&mut buf) => match r {
                    Ok((n, _)) => stats.received(n as u64),
                    Err(_) => stats.error(),
                },
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
            }
        }
        conns.shutdown().await;
    }
}
