//! Path sync with the controller ("paths-sync" thread): pushes this agent's
//! per-peer view and takes its peer list, every report interval.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use graydar_common::paths::{DirectionStats, PathReport, PeerObservation, PeerTarget};

use super::{Shared, lock};

impl Shared {
    /// Starts the "paths-sync" thread with a `[controller]`; it ends when the
    /// sender is dropped.
    pub(super) fn start_controller_sync(
        self: &std::sync::Arc<Self>,
    ) -> Option<(std::sync::mpsc::Sender<()>, std::thread::JoinHandle<()>)> {
        self.cfg.controller.clone().and_then(|section| {
            let t = self.clone();
            let (tx, rx) = std::sync::mpsc::channel::<()>();
            let h = std::thread::Builder::new()
                .name("paths-sync".into())
                .spawn(move || t.controller_sync(&section, rx))
                .map_err(|e| tracing::warn!(error = %e, "path mesh: controller sync thread"))
                .ok()?;
            Some((tx, h))
        })
    }

    /// What this agent tells the controller.
    fn report(&self) -> PathReport {
        let mesh = lock(&self.mesh);
        let dir = |delivered: u64, lost: u64, hops: Option<u8>, owd: Option<f64>| DirectionStats {
            delivered,
            lost,
            loss_ratio: (delivered + lost > 0).then(|| lost as f64 / (delivered + lost) as f64),
            hops,
            owd_variation_seconds: owd,
        };
        let addresses = match &mesh.cfg.advertise {
            Some(a) => vec![a.clone()],
            None => crate::reporter::local_addresses(),
        };
        PathReport {
            port: mesh.cfg.port,
            addresses,
            max_peers: u32::try_from(mesh.cfg.max_peers).unwrap_or(u32::MAX),
            interval_seconds: mesh.cfg.interval.as_secs_f64(),
            peers: mesh
                .peers
                .values()
                .map(|p| PeerObservation {
                    peer: p.peer_id.clone().unwrap_or_else(|| p.name.clone()),
                    address: p.addr.to_string(),
                    outbound: dir(
                        p.stats.out_delivered,
                        p.stats.out_lost,
                        p.stats.fwd_hops,
                        p.stats.fwd_owd_variation,
                    ),
                    inbound: dir(
                        p.stats.in_delivered,
                        p.stats.in_lost,
                        p.stats.rev_hops,
                        p.stats.rev_owd_variation,
                    ),
                    unknown: p.stats.out_unknown,
                    rtt_p50_seconds: p.stats.rtt_p50,
                    rtt_p99_seconds: p.stats.rtt_p99,
                    firing: p.firing.iter().map(|k| k.as_str().to_owned()).collect(),
                })
                .collect(),
        }
    }

    /// Pushes the report to the controller and takes its peer list, every
    /// report interval, until `stop` disconnects.
    fn controller_sync(&self, section: &crate::config::ControllerSection, stop: std::sync::mpsc::Receiver<()>) {
        let client = match section.client(crate::reporter::request_timeout(section)) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "path mesh: no controller client; static peers only");
                return;
            }
        };
        let every = section.report_interval.max(Duration::from_secs(1));
        loop {
            match stop.recv_timeout(every) {
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                _ => return,
            }
            let report = self.report();
            match client.push_paths(&self.cfg.hostname, &report) {
                Ok(resp) => {
                    let peers = resp
                        .peers
                        .into_iter()
                        .filter_map(|t: PeerTarget| {
                            let ip: IpAddr = t.address.parse().ok()?;
                            Some((t.hostname, SocketAddr::new(ip, t.port)))
                        })
                        .collect();
                    lock(&self.mesh).controller_peers = peers;
                }
                // Refused (4xx but "register first"): a bug or a bad `advertise`; say so.
                Err(e @ graydar_common::client::ClientError::Api { status, .. }) if status != 404 && status < 500 => {
                    tracing::warn!(error = %e, "path mesh: the controller refused the path report")
                }
                Err(e) => tracing::debug!(error = %e, "path mesh: report to the controller"),
            }
        }
    }
}
