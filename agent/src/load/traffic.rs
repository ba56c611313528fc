//! Traffic toward other agents' sinks: UDP datagrams (one connected socket
//! per destination) or TCP writes (`connections` connections per
//! destination), paced per destination by a token bucket. Send errors (a
//! sink not up yet, a full queue, a path the fault broke) are counted and
//! never end the load: the load keeps offering its rate, as real traffic
//! would.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use graydar_common::load::{LoadProtocol, Pacer, TrafficSpec};
use tokio::io::AsyncWriteExt as _;
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::{Stats, should_stop, sleep_or_stop};

/// How long a TCP connect may take before it counts as an error.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// The pause after a failed connect or write before the next try.
const RETRY: Duration = Duration::from_millis(200);

pub async fn run(spec: TrafficSpec, stats: Arc<Stats>, stopped: watch::Receiver<bool>) {
    let dests: Vec<SocketAddr> = spec
        .to
        .iter()
        .filter_map(|a| a.parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, spec.port))
        .collect();
    let pps = spec.packets_per_second() as f64;
    let size = spec.size as usize;
    let mut tasks = JoinSet::new();
    for dest in dests {
        match spec.protocol {
            LoadProtocol::Udp => {
                tasks.spawn(udp(dest, pps, size, stats.clone(), stopped.clone()));
            }
            LoadProtocol::Tcp => {
                for _ in 0..spec.connections {
                    let per = pps / f64::from(spec.connections.max(1));
                    tasks.spawn(tcp(dest, per, size, stats.clone(), stopped.clone()));
                }
            }
        }
    }
    while tasks.join_next().await.is_some() {}
}

/// Tokens saved up at most: 10 ms worth (at least one).
fn pacer(rate: f64, start: Instant) -> Pacer {
    Pacer::new(rate, (rate / 100.0).max(1.0), start.elapsed())
}

async fn udp(dest: SocketAddr, pps: f64, size: usize, stats: Arc<Stats>, mut stopped: watch::Receiver<bool>) {
    let local: SocketAddr = if dest.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        ([0u16; 8], 0).into()
    };
    let sock = match UdpSocket::bind(local).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(%dest, error = %e, "traffic load: no UDP socket");
            stats.error();
            return;
        }
    };
    if let Err(e) = sock.connect(dest).await {
        tracing::warn!(%dest, error = %e, "traffic load: cannot address the destination");
        stats.error();
        return;
    }
    let payload = vec![0x5au8; size];
    let start = Instant::now();
    let mut p = pacer(pps, start);
    loop {
        if should_stop(&stopped) {
            return;
        }
        let n = p.take(start.elapsed(), u64::MAX);
        for _ in 0..n {
            match sock.send(&payload).await {
                Ok(k) => stats.sent(k as u64),
                // ECONNREFUSED (an ICMP port unreachable for an earlier
                // datagram), ENOBUFS, EHOSTUNREACH: counted, not fatal.
                Err(_) => stats.error(),
            }
        }
        let wait = p.wait(start.elapsed()).max(Duration::from_micros(200));
        if sleep_or_stop(wait, &mut stopped).await {
            return;
        }
    }
}

async fn tcp(dest: SocketAddr, rate: f64, size: usize, stats: Arc<Stats>, mut stopped: watch::Receiver<bool>) {
    let payload = vec![0x5au8; size];
    let start = Instant::now();
    let mut p = pacer(rate, start);
    'connect: loop {
        if should_stop(&stopped) {
            return;
        }
        let mut conn = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(dest)).await {
            Ok(Ok(c)) => c,
            _ => {
                stats.error();
                if sleep_or_stop(RETRY, &mut stopped).await {
                    return;
                }
                continue;
            }
        };
        let _ = conn.set_nodelay(true);
        loop {
            let n = p.take(start.elapsed(), u64::MAX);
            for _ in 0..n {
                let w = tokio::select! {
                    w = conn.write_all(&payload) => w,
                    _ = stopped.changed() => return,
                };
                match w {
                    Ok(()) => stats.sent(size as u64),
                    Err(_) => {
                        stats.error();
                        if sleep_or_stop(RETRY, &mut stopped).await {
                            return;
                        }
                        continue 'connect;
                    }
                }
            }
            let wait = p.wait(start.elapsed()).max(Duration::from_micros(200));
            if sleep_or_stop(wait, &mut stopped).await {
                return;
            }
        }
    }
}
