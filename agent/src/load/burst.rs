//! A synchronized fan-in: at every instant of the burst's shared schedule
//! (`start_unix_ms + k * every_ms`, the same for every sender because the
//! controller hands them one start) this agent opens a new TCP connection
//! to the receiver's sink and sends `bytes`. Every sender doing so at once
//! is incast, for real: the receiver's switch port (or netem, or a tbf) has
//! to queue all of them.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use graydar_common::load::BurstSpec;
use graydar_common::timestamp::Timestamp;
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::{Stats, sleep_or_stop};

/// A burst that takes longer than this is abandoned (and counted as an error).
const BURST_TIMEOUT: Duration = Duration::from_secs(30);

pub async fn run(spec: BurstSpec, stats: Arc<Stats>, mut stopped: watch::Receiver<bool>) {
    let Ok(ip) = spec.to.parse::<IpAddr>() else {
        stats.error();
        return;
    };
    let dest = SocketAddr::new(ip, spec.port);
    let bytes = usize::try_from(spec.bytes).unwrap_or(usize::MAX);
    let payload = vec![0xa5u8; bytes.min(1 << 20)];
    // A burst still in flight when the next is due is not doubled up.
    let mut in_flight: Option<tokio::task::JoinHandle<()>> = None;
    loop {
        let now = Timestamp::now().unix_ms();
        let next = spec.next_after(now - 1);
        let wait = Duration::from_millis(u64::try_from(next - now).unwrap_or(0));
        if sleep_or_stop(wait, &mut stopped).await {
            break;
        }
        if in_flight.as_ref().is_some_and(|h| !h.is_finished()) {
            stats.error();
            // Past this instant before looking for the next one.
            if sleep_or_stop(Duration::from_millis(1), &mut stopped).await {
                break;
            }
            continue;
        }
        let stats = stats.clone();
        let payload = payload.clone();
        in_flight = Some(tokio::spawn(async move {
            let r = tokio::time::timeout(BURST_TIMEOUT, send(dest, bytes, &payload)).await;
            match r {
                Ok(Ok(())) => stats.sent(bytes as u64),
                _ => stats.error(),
            }
        }));
        // Past this instant before looking for the next one.
        if sleep_or_stop(Duration::from_millis(1), &mut stopped).await {
            break;
        }
    }
    if let Some(h) = in_flight {
        h.abort();
    }
}

async fn send(dest: SocketAddr, mut left: usize, chunk: &[u8]) -> std::io::Result<()> {
    let mut conn = TcpStream::connect(dest).await?;
    while left > 0 {
        let n = left.min(chunk.len());
        conn.write_all(&chunk[..n]).await?;
        left -= n;
    }
    conn.shutdown().await
}
