//! The domain services over one store, wired together: what the HTTP API
//! serves and the binary runs.

use std::sync::Arc;
use std::time::Duration;

use crate::agents::credentials::Credentials;
use crate::agents::{AgentError, AgentService, Liveness};
use crate::cluster::{Change, Cluster, FULL_RESYNC_INTERVAL, RESYNC_INTERVAL};
use crate::faults::{FaultConfig, FaultError, FaultService};
use crate::findings::FindingService;
use crate::gamedays::GameDayService;
use crate::gamedays::promql::PrometheusConfig;
use crate::paths::PathService;
use crate::store::Store;
pub use crate::store::StoreError;

/// How long readiness waits for the database.
pub const PING_TIMEOUT: Duration = Duration::from_secs(2);

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
    pub credentials: Arc<Credentials>,
    pub findings: FindingService,
    pub faults: Arc<FaultService>,
    pub paths: Arc<PathService>,
    pub gamedays: Arc<GameDayService>,
    /// The other controllers on the database, if any.
    pub cluster: Arc<Cluster>,
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
        Services::open_in(store, Cluster::single(), liveness, faults, prometheus).await
    }

    /// [`Services::open_with`] as one of the controllers of `cluster`
    /// (several on one PostgreSQL database: see `cluster.rs`). Runs left
    /// unfinished are ended here with one controller, and by whichever
    /// becomes the leader with several.
    pub async fn open_in(
        store: Arc<dyn Store>,
        cluster: Arc<Cluster>,
        liveness: Liveness,
        faults: FaultConfig,
        prometheus: Option<PrometheusConfig>,
    ) -> Result<Services, OpenError> {
        let agents = Arc::new(
            AgentService::open(store.clone(), liveness)
                .await
                .map_err(OpenError::Agents)?,
        );
        let credentials = Arc::new(Credentials::open(store.clone()).await.map_err(OpenError::Credentials)?);
        let faults = Arc::new(
            FaultService::open(store.clone(), faults)
                .await
                .map_err(OpenError::Faults)?
                .in_cluster(cluster.clone()),
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
        let paths = Arc::new(
            PathService::open(agents.clone(), store.clone())
                .await
                .map_err(OpenError::Paths)?,
        );
        let gamedays = Arc::new(
            GameDayService::new(store.clone(), agents.clone(), faults.clone(), prometheus).in_cluster(cluster.clone()),
        );
        if !cluster.shared() {
            let interrupted = gamedays.recover().await.map_err(OpenError::GameDays)?;
            if interrupted > 0 {
                tracing::warn!(
                    runs = interrupted,
                    "game-day runs interrupted by a restart were ended as aborted"
                );
            }
        }
        Ok(Services {
            findings: FindingService::new(store.clone(), agents.clone()),
            paths,
            agents,
            credentials,
            faults,
            gamedays,
            cluster,
            store,
        })
    }

    /// Engages the safety lever (every fault reverted, new ones refused) and
    /// aborts every run in progress, which records why it ended.
    pub async fn engage_safety_lever(
        &self,
        reason: String,
    ) -> Result<graydar_common::fault_api::SafetyLever, FaultError> {
        let lever = self.faults.engage_safety_lever(reason).await?;
        let runs = self.gamedays.abort_all("the safety lever was engaged").await;
        if runs > 0 {
            tracing::warn!(runs, "safety lever: game-day runs aborted");
        }
        Ok(lever)
    }

    /// Ends the console session `id` (a logout) on every controller of this
    /// database, until it would have expired (`expires_ms`).
    pub async fn record_logout(&self, id: &str, expires_ms: i64) -> Result<(), StoreError> {
        self.store.record_logout(id, expires_ms, crate::timefmt::now_ms()).await
    }

    /// Whether the console session `id` was ended by a logout.
    pub async fn logged_out(&self, id: &str) -> Result<bool, StoreError> {
        self.store.logged_out(id).await
    }

    /// Tells the other controllers on the database what this one stored.
    pub async fn announce(&self, c: Change) {
        self.cluster.notify(c).await;
    }

    /// Whether the store answers (readiness), within [`PING_TIMEOUT`]: a
    /// database that is away makes the controller not ready at once rather
    /// than after the pool's connect timeout.
    pub async fn ping(&self) -> Result<(), StoreError> {
        match tokio::time::timeout(PING_TIMEOUT, self.store.ping()).await {
            Ok(r) => r,
            Err(_) => Err(StoreError::Unavailable(format!(
                "the database did not answer within {PING_TIMEOUT:?}"
            ))),
        }
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
        let mut tasks = vec![self.spawn_leader_work()];
        if self.cluster.shared() {
            tasks.push(self.spawn_follower());
        }
        (flusher, tasks)
    }

    /// The leader's work: fault expiry and the game-day scheduler while
    /// this controller is the leader (always, with one controller); on
    /// becoming the leader among several, the runs in the store are taken
    /// over; on losing it, every run driven here is dropped at once.
    fn spawn_leader_work(&self) -> tokio::task::JoinHandle<()> {
        let faults = Arc::downgrade(&self.faults);
        let gamedays = Arc::downgrade(&self.gamedays);
        let cluster = self.cluster.clone();
        tokio::spawn(async move {
            let mut leadership = cluster.leadership();
            let mut work = AbortOnDrop(Vec::new());
            loop {
                let leading = *leadership.borrow_and_update();
                let Some(g) = gamedays.upgrade() else { break };
                if leading && work.0.is_empty() {
                    if cluster.shared() {
                        match g.take_over().await {
                            Ok((0, 0)) => {}
                            Ok((started, ended)) => {
                                tracing::warn!(started, ended, "took over the game-day runs in the store")
                            }
                            Err(e) => tracing::error!(error = %e, "taking over the game-day runs in the store"),
                        }
                    }
                    work.0.push(crate::faults::spawn_expirer(faults.clone()));
                    work.0.push(g.spawn_scheduler());
                } else if !leading && !work.0.is_empty() {
                    work.0.drain(..).for_each(|t| t.abort());
                    let runs = g.stand_down();
                    tracing::error!(
                        runs,
                        "not the leader any more: fault expiry, the scheduler and the runs driven here stopped"
                    );
                }
                drop(g);
                if leadership.changed().await.is_err() {
                    break;
                }
            }
        })
    }

    /// Hears the other controllers' changes and rereads what they changed:
    /// the faults and the agents' last-seen times every [`RESYNC_INTERVAL`]
    /// too, everything every [`FULL_RESYNC_INTERVAL`] and when notifications
    /// may have been lost.
    fn spawn_follower(&self) -> tokio::task::JoinHandle<()> {
        let mut rx = self.cluster.subscribe();
        let agents = Arc::downgrade(&self.agents);
        let credentials = Arc::downgrade(&self.credentials);
        let faults = Arc::downgrade(&self.faults);
        let paths = Arc::downgrade(&self.paths);
        let gamedays = Arc::downgrade(&self.gamedays);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(RESYNC_INTERVAL);
            let mut last_full = tokio::time::Instant::now();
            loop {
                let (first, ticked) = tokio::select! {
                    c = rx.recv() => (Some(c), false),
                    _ = tick.tick() => (None, true),
                };
                // Everything heard meanwhile is handled at once: a storm of
                // registrations on another replica is one pass here.
                let mut changes = Vec::new();
                let mut next = first;
                while let Some(heard) = next {
                    match heard {
                        Ok(c) => changes.push(c),
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => changes.push(Change::Resync),
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                    }
                    next = match rx.try_recv() {
                        Ok(c) => Some(Ok(c)),
                        Err(tokio::sync::broadcast::error::TryRecvError::Lagged(n)) => {
                            Some(Err(tokio::sync::broadcast::error::RecvError::Lagged(n)))
                        }
                        Err(_) => None,
                    };
                }
                let (Some(agents), Some(credentials), Some(faults), Some(paths), Some(gamedays)) = (
                    agents.upgrade(),
                    credentials.upgrade(),
                    faults.upgrade(),
                    paths.upgrade(),
                    gamedays.upgrade(),
                ) else {
                    break;
                };
                let full = changes.contains(&Change::Resync) || (ticked && last_full.elapsed() >= FULL_RESYNC_INTERVAL);
                if full {
                    last_full = tokio::time::Instant::now();
                }
                if (full || ticked || changes.contains(&Change::Faults))
                    && let Err(e) = faults.reload().await
                {
                    tracing::warn!(error = %e, "rereading the faults another controller changed");
                }
                if full {
                    if let Err(e) = agents.reload().await {
                        tracing::warn!(error = %e, "rereading the agents");
                    }
                    if let Err(e) = credentials.reload().await {
                        tracing::warn!(error = %e, "rereading the agents' credentials");
                    }
                    for r in agents.registrations() {
                        faults.learn_registration(&r);
                    }
                } else {
                    if ticked && let Err(e) = agents.refresh_last_seen().await {
                        tracing::warn!(error = %e, "rereading the agents' last-seen times");
                    }
                    let hosts: std::collections::BTreeSet<&String> = changes
                        .iter()
                        .filter_map(|c| match c {
                            Change::Agent(h) => Some(h),
                            _ => None,
                        })
                        .collect();
                    for h in hosts {
                        match agents.reload_one(h).await {
                            Ok(Some(r)) => faults.learn_registration(&r),
                            Ok(None) => {}
                            Err(e) => tracing::warn!(agent = %h, error = %e, "rereading an agent"),
                        }
                        if let Err(e) = credentials.reload_one(h).await {
                            tracing::warn!(agent = %h, error = %e, "rereading an agent's credential");
                        }
                    }
                }
                if (full || ticked || changes.contains(&Change::Keys))
                    && let Err(e) = paths.reload_keys().await
                {
                    tracing::warn!(error = %e, "rereading the mesh keys");
                }
                if full || ticked {
                    match gamedays.adopt_pending().await {
                        Ok(0) => {}
                        Ok(n) => tracing::warn!(runs = n, "started runs that waited for the leader"),
                        Err(e) => tracing::warn!(error = %e, "looking for runs that wait for the leader"),
                    }
                }
                for change in changes {
                    match change {
                        Change::RunStart(id) => {
                            if let Err(e) = gamedays.adopt(&id).await {
                                tracing::warn!(run = %id, error = %e, "starting a run another controller accepted");
                            }
                        }
                        Change::RunAbort { run, reason } => gamedays.abort_local(&run, reason).await,
                        Change::RunResume(run) => gamedays.resume_local(&run),
                        _ => {}
                    }
                }
            }
        })
    }
}

/// Tasks aborted when this is dropped (the leader's work, when the task
/// that supervises it is aborted at shutdown).
struct AbortOnDrop(Vec<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}
