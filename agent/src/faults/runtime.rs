//! The fault engine inside the running agent: recovery at start, the lease
//! timer (faults expire on the agent's own clock, controller or not), and
//! revert-all at shutdown.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;

use super::engine::FaultEngine;
use super::mechanism::Restored;

/// The lease timer's period (route flaps change within one tick of their schedule).
const TICK: Duration = Duration::from_millis(250);

pub struct FaultRuntime {
    pub engine: Arc<Mutex<FaultEngine>>,
    ticker: tokio::task::JoinHandle<()>,
    /// What start-up recovery reverted (reported to the controller by the
    /// assignment loop, agent/src/faults/assign.rs).
    pub recovered: Vec<super::engine::Recovered>,
}

impl FaultRuntime {
    /// Opens the journal in `state_dir`, reverting what a previous run left
    /// applied. `None` (logged) when faults cannot work here: no netlink or
    /// an unwritable state directory; the rest of the agent keeps running.
    pub async fn start(state_dir: &Path, netlink: Option<rtnetlink::Handle>) -> Option<FaultRuntime> {
        let Some(netlink) = netlink else {
            tracing::warn!("faults disabled: no netlink socket");
            return None;
        };
        let (engine, recovered) = match FaultEngine::start(state_dir, netlink).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(state_dir = %state_dir.display(), error = %e, "faults disabled: cannot use the fault journal");
                return None;
            }
        };
        for r in &recovered {
            match &r.result {
                Ok(Restored::Restored) => {
                    tracing::warn!(id = %r.id, kind = %r.kind, target = %r.target, "reverted a fault left by a previous run")
                }
                Ok(Restored::Gone(why)) => {
                    tracing::warn!(id = %r.id, kind = %r.kind, target = %r.target, reason = %why, "a fault left by a previous run ended: nothing left to revert")
                }
                Err(e) => {
                    tracing::error!(id = %r.id, kind = %r.kind, target = %r.target, error = %e, "could not revert a fault left by a previous run; retrying with back-off")
                }
            }
        }
        let engine = Arc::new(Mutex::new(engine));
        let ticker = {
            let engine = engine.clone();
            tokio::spawn(async move {
                // Leases are whole seconds; route flaps move on this tick too.
                let mut tick = tokio::time::interval(TICK);
                loop {
                    tick.tick().await;
                    for id in engine.lock().await.expire().await {
                        tracing::warn!(id, "fault lease expired: reverted");
                    }
                }
            })
        };
        Some(FaultRuntime {
            engine,
            ticker,
            recovered,
        })
    }

    /// Reverts every active fault (SIGTERM).
    pub async fn stop(self) {
        self.ticker.abort();
        for (id, e) in self.engine.lock().await.revert_all().await {
            tracing::error!(id, error = %e, "revert at shutdown failed; the journal keeps it for the next start");
        }
    }
}
