//! The domain services over one store, wired together: what the HTTP API
//! serves and the binary runs.

use std::sync::Arc;
use std::time::Duration;

use crate::agents::credentials::Credentials;
use crate::agents::{AgentError, AgentService, Liveness};
use crate::faults::{FaultConfig, FaultError, FaultService};
use crate::findings::FindingService;
use crate::gamedays::GameDayService;
use crate::gamedays::promql::PrometheusConfig;
use crate::paths::PathService;
use crate::store::Store;
pub use crate::store::StoreError;

/// How often agents' last-seen times are written to the store.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("loading agents")]
    Agents(#[source] AgentError),
    #[error("loading faults")]
    Faults(#[source] FaultError),
    #[error("loading the agents' credentials")]
    Credentials(#[source] StoreError),
    #[error("loading the path mesh keys")]
    Paths(#[source] crate::paths::PathError),
    #[error("ending game-day runs interrupted by a restart")]
    GameDays(#[source] crate::gamedays::GameDayError),
}

pub struct Services {
    pub agents: Arc<AgentService>,
    pub credentials: Credentials,
    pub findings: FindingService,
    pub faults: Arc<FaultService>,
    pub paths: PathService,
    pub gamedays: Arc<GameDayService>,
    store: Arc<dyn Store>,
}

impl Services {
    /// Loads the agents and the live faults from `store` (no Prometheus).
    pub async fn open(store: Arc<dyn Store>, liveness: Liveness, faults: FaultConfig) -> Result<Services, OpenError> {
        Services::open_with(store, liveness, faults, None).await
    }

    /// [`Services::open`] with the Prometheus game days ask (`[prometheus]`).
    pub async fn open_with(
        store: Arc<dyn Store>,
        liveness: Liveness,
        faults: FaultConfig,
        prometheus: Option<PrometheusConfig>,
    ) -> Result<Services, OpenError> {
        let agents = Arc::new(
            AgentService::open(store.clone(), liveness)
                .await
                .map_err(OpenError::Agents)?,
        );
        let credentials = Credentials::open(store.clone()).await.map_err(OpenError::Credentials)?;
        let faults = Arc::new(
            FaultService::open(store.clone(), faults)
                .await
                .map_err(OpenError::Faults)?,
        );
        // Where loads go: the registered agents' addresses (registration
        // keeps them current from then on).
        match agents.list().await {
            Ok(list) => {
                for a in list {
                    faults.set_addresses(&a.hostname, &a.addresses);
                }
            }
            Err(e) => tracing::warn!(error = %e, "listing agents for their addresses"),
        }
        let paths = PathService::open(agents.clone(), store.clone())
            .await
            .map_err(OpenError::Paths)?;
        let gamedays = Arc::new(GameDayService::new(
            store.clone(),
            agents.clone(),
            faults.clone(),
            prometheus,
        ));
        let interrupted = gamedays.recover().await.map_err(OpenError::GameDays)?;
        if interrupted > 0 {
            tracing::warn!(
                runs = interrupted,
                "game-day runs interrupted by a restart were ended as aborted"
            );
        }
        Ok(Services {
            findings: FindingService::new(store.clone(), agents.clone()),
            paths,
            agents,
            credentials,
            faults,
            gamedays,
            store,
        })
    }

    /// Whether the store answers (readiness).
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.store.ping().await
    }

    /// Writes what is pending (agents' last-seen times) and closes the store.
    pub async fn close(&self) {
        if let Err(e) = self.agents.flush().await {
            tracing::warn!(error = %e, "flushing agents' last_seen at shutdown");
        }
        self.store.close().await;
    }

    /// The background tasks: agents' last-seen times written every
    /// [`FLUSH_INTERVAL`] until `stop` changes, faults expired every second,
    /// scheduled game days started. Returns the flusher (await it after
    /// `stop`) and the others (abort them).
    pub fn spawn_background(
        &self,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) -> (tokio::task::JoinHandle<()>, Vec<tokio::task::JoinHandle<()>>) {
        let agents = self.agents.clone();
        let flusher = tokio::spawn(async move {
            let mut tick = tokio::time::interval(FLUSH_INTERVAL);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.changed() => break,
                }
                if let Err(e) = agents.flush().await {
                    tracing::warn!(error = %e, "writing agents' last-seen times");
                }
            }
        });
        let expirer = crate::faults::spawn_expirer(Arc::downgrade(&self.faults));
        let scheduler = self.gamedays.spawn_scheduler();
        (flusher, vec![expirer, scheduler])
    }
}
