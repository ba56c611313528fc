//! Path sync with the controller (a task on the agent's runtime, through the
//! controller channel): pushes this agent's per-peer view and takes its peer
//! list, every report interval.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use graydar_common::paths::{DirectionStats, MeshKeySet, PathReport, PeerObservation, PeerTarget};

use super::{Shared, lock};
use crate::probes::paths::auth::{KeyError, MeshKey, MeshKeys};

/// The controller's key set as mesh keys.
fn mesh_keys(set: &MeshKeySet) -> Result<MeshKeys, KeyError> {
    let keys = set
        .keys
        .iter()
        .map(|k| MeshKey::from_base64(k.id, &k.key))
        .collect::<Result<Vec<_>, _>>()?;
    MeshKeys::new(set.send_key_id, keys)
}

impl Shared {
    /// Starts the path sync task with a `[controller]` and its channel; it
    /// ends at `stop`.
    pub(super) fn start_controller_sync(
        self: &std::sync::Arc<Self>,
        channel: Option<crate::channel::Channel>,
        stop: tokio::sync::watch::Receiver<bool>,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let section = self.cfg.controller.as_ref()?;
        let channel = channel?;
        Some(tokio::spawn(self.clone().controller_sync(
            channel,
            section.report_interval,
            stop,
        )))
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
    /// report interval, until `stop`.
    async fn controller_sync(
        self: std::sync::Arc<Self>,
        channel: crate::channel::Channel,
        report_interval: Duration,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let every = report_interval.max(Duration::from_secs(1));
        // The first report goes out at once: it brings the mesh keys.
        let mut first = true;
        loop {
            if !first {
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = stop.changed() => return,
                }
            }
            first = false;
            let report = self.report();
            match channel.push_paths(&self.cfg.hostname, &report).await {
                Ok(resp) => {
                    let peers = resp
                        .peers
                        .into_iter()
                        .filter_map(|t: PeerTarget| {
                            let ip: IpAddr = t.address.parse().ok()?;
                            Some((t.hostname, SocketAddr::new(ip, t.port)))
                        })
                        .collect();
                    let keys = resp.mesh_keys.map(|set| mesh_keys(&set));
                    let mut mesh = lock(&self.mesh);
                    mesh.controller_peers = peers;
                    match keys {
                        // A key file wins: the controller's keys are not used.
                        _ if self.cfg.mesh_keys.is_some() => {}
                        None => {}
                        Some(Err(e)) => tracing::warn!(error = %e, "path mesh: the controller's keys are unusable"),
                        Some(Ok(keys)) => {
                            let changed = mesh
                                .keys
                                .as_ref()
                                .is_none_or(|k| k.ids() != keys.ids() || k.sending().id != keys.sending().id);
                            if changed {
                                tracing::info!(ids = ?keys.ids(), sending = keys.sending().id, "path mesh: fleet keys from the controller");
                            }
                            mesh.keys = Some(keys);
                        }
                    }
                }
                // Refused (4xx but "register first"): a bug or a bad `advertise`; say so.
                Err(e @ crate::channel::ChannelError::Api { status, .. }) if status != 404 && status < 500 => {
                    tracing::warn!(error = %e, "path mesh: the controller refused the path report")
                }
                Err(e) => tracing::debug!(error = %e, "path mesh: report to the controller"),
            }
        }
    }
}
