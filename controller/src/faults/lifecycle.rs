//! The life of a fault: created (targets resolved by the policy), handed to
//! its agents, reported on by them, ended (expired, deleted or by the kill
//! switch), settled and dropped from memory. Live faults and per-agent
//! states are kept in memory and written through to the store; per-agent
//! change notification wakes the long-poll; the revert-all epoch tells
//! agents to revert every fault they have.
//!
//! Agent protocol (docs/src/faults.md): each agent long-polls
//! `GET /api/v1/agents/{hostname}/faults?wait=S&version=V`; the answer is its
//! whole desired set (fault ids, specs and a lease each) plus the revert-all
//! epoch. A per-agent `watch` channel wakes the poll at once when a fault of
//! that agent is created, deleted, expires, or on revert-all. The agent
//! applies what is new, reverts what is no longer listed, renews the leases of
//! the rest and posts each fault's state back.
//!
//! Memory holds only live faults: a fault leaves it once it has ended and a
//! whole lease has passed (its states are settled, see `Fault::settled_at`).
//! History (`get`, `list`) is read from the store, so a controller that ran
//! game days for years holds no more than what is running.
//!
//! Changes of the fault set (create, end, revert-all, expire) take turns
//! (`FaultService::changes`): the overlap and blast-radius checks of a
//! create see every fault created before it, and each change is in the
//! store before memory shows it to the agents' polls and before they are
//! woken, so a controller that dies in between never hands out again a
//! fault it had already ended.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use graydar_common::api::AgentInfo;
use graydar_common::fault_api::{
    CreateFaultRequest, DesiredFault, DesiredFaults, FaultInfo, FaultStatusUpdate, RevertAllResponse, SafetyLever,
};
use graydar_common::faults::{FaultSpec, FaultState};
use graydar_common::load::SinkSpec;
use graydar_common::timestamp::Timestamp;
use tokio::sync::watch;

use super::model::{AgentStatus, Fault};
use super::policy::{Inventory, check_blast_radius, check_overlap, resolve_targets};
use super::{FaultConfig, FaultError, FaultStatus};
use crate::cluster::{Change, Cluster};
use crate::store::{ChangeTurn, EndReason, FaultSelection, FaultStore, LeverRecord};
use crate::timefmt::now_ms;

/// Shortest lease a fault may ask for (as the controller's `faults.lease`).
pub const MIN_FAULT_LEASE_SECONDS: u64 = 3;
/// A burst's first instant, after its creation (every sender is woken at
/// once and has it well before).
const BURST_LEAD_MS: i64 = 2_000;

/// What /metrics shows of the faults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FaultCounts {
    /// Faults by status (ended ones from the store).
    pub by_status: Vec<(FaultStatus, i64)>,
    /// (fault, agent) assignments of the faults not ended, by the state the agent reported.
    pub by_state: Vec<(FaultState, i64)>,
}

struct Inner {
    faults: BTreeMap<String, Fault>,
    revert_all_epoch: u64,
    /// The safety lever, while engaged.
    lever: Option<LeverRecord>,
}

pub struct FaultService {
    cfg: FaultConfig,
    store: Arc<dyn FaultStore>,
    inner: Mutex<Inner>,
    /// Held by every change of the fault set (create, end, revert-all,
    /// expire) from its checks to its store write and memory update.
    changes: tokio::sync::Mutex<()>,
    /// Per agent: bumped whenever its desired set changes. Only registered
    /// agents poll (the API refuses the others), so only they have one.
    watchers: Mutex<HashMap<String, watch::Sender<u64>>>,
    /// Added to every per-agent version so versions of different controller
    /// runs never coincide (an agent's old version always differs).
    version_base: u64,
    /// Bumped on every status report (dry-run waits watch it).
    status_tx: watch::Sender<u64>,
    inventory: Mutex<HashMap<String, Inventory>>,
    /// The other controllers on this database (their changes reload memory;
    /// this one's are announced to them).
    cluster: Arc<Cluster>,
}

/// A change's turn: this controller's and, where several share the
/// database, every controller's ([`FaultService::turn`]).
struct Turn<'a> {
    _local: tokio::sync::MutexGuard<'a, ()>,
    _shared: ChangeTurn,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A new fault id (`flt-` and 12 hex digits).
/// The id of the load sink on `port` an agent is handed while loads are
/// aimed at it: one per port, the same whichever loads need it.
pub fn sink_id(port: u16) -> String {
    format!("sink-{port}")
}

pub fn new_fault_id() -> String {
    format!("flt-{:012x}", fastrand::u64(..) & 0xffff_ffff_ffff)
}

fn refuse_if_engaged(inner: &Inner) -> Result<(), FaultError> {
    match &inner.lever {
        Some(lever) => Err(FaultError::SafetyLever {
            since: Timestamp::from_unix_ms(lever.engaged_ms),
            reason: lever.reason.clone(),
        }),
        None => Ok(()),
    }
}

fn lever_view(lever: Option<&LeverRecord>, revert_all: Option<RevertAllResponse>) -> SafetyLever {
    SafetyLever {
        engaged: lever.is_some(),
        since: lever.map(|l| Timestamp::from_unix_ms(l.engaged_ms)),
        reason: lever.map(|l| l.reason.clone()),
        revert_all,
    }
}

impl FaultService {
    /// Loads the live faults and the revert-all epoch from `store`.
    pub async fn open(store: Arc<dyn FaultStore>, cfg: FaultConfig) -> Result<FaultService, FaultError> {
        let lease_ms = i64::try_from(cfg.lease.as_millis()).unwrap_or(i64::MAX);
        // Live faults only: not ended, or ended less than a lease ago.
        let now = now_ms();
        let faults = store
            .load_faults(FaultSelection::Live { now_ms: now, lease_ms })
            .await?
            .into_iter()
            .map(|f| (f.id.clone(), f))
            .collect();
        let revert_all_epoch = store.revert_all_epoch().await?;
        let lever = store.safety_lever().await?;
        let (status_tx, _) = watch::channel(0);
        let service = FaultService {
            cfg,
            store,
            inner: Mutex::new(Inner {
                faults,
                revert_all_epoch,
                lever,
            }),
            changes: tokio::sync::Mutex::new(()),
            watchers: Mutex::new(HashMap::new()),
            version_base: u64::try_from(now_ms()).unwrap_or(0).saturating_mul(1000),
            status_tx,
            inventory: Mutex::new(HashMap::new()),
            cluster: Cluster::single(),
        };
        // An engaged lever with faults still running: the controller stopped
        // between storing the lever and storing its revert-all. Finish it.
        let unfinished = {
            let inner = lock(&service.inner);
            inner.lever.is_some() && inner.faults.values().any(|f| f.ended_ms.is_none())
        };
        if unfinished {
            let _turn = service.changes.lock().await;
            service.revert_all_in_turn().await?;
        }
        Ok(service)
    }

    /// This service as one of several controllers on the database of
    /// `cluster`: each change waits for the others' and rereads the store
    /// first, and is announced to them once stored.
    pub fn in_cluster(mut self, cluster: Arc<Cluster>) -> FaultService {
        self.cluster = cluster;
        self
    }

    /// Takes the turn of a change of the fault set. Where other controllers
    /// share the database, also theirs, and memory is reread from the store
    /// (what they changed is in it), so the checks of the change see every
    /// fault created before it, on whichever controller.
    async fn turn(&self) -> Result<Turn<'_>, FaultError> {
        let local = self.changes.lock().await;
        let shared = self.store.change_turn().await?;
        if self.cluster.shared() {
            self.reload_in_turn().await?;
        }
        Ok(Turn {
            _local: local,
            _shared: shared,
        })
    }

    /// Tells the other controllers that the fault set changed (nothing
    /// with one controller).
    async fn announce(&self) {
        self.cluster.notify(Change::Faults).await;
    }

    /// Rereads the live faults, the revert-all epoch and the safety lever
    /// from the store (another controller changed them) and wakes the long
    /// polls of the agents whose desired set changed.
    pub async fn reload(&self) -> Result<(), FaultError> {
        let _turn = self.changes.lock().await;
        self.reload_in_turn().await
    }

    async fn reload_in_turn(&self) -> Result<(), FaultError> {
        let now = now_ms();
        let loaded = self
            .store
            .load_faults(FaultSelection::Live {
                now_ms: now,
                lease_ms: self.lease_ms(),
            })
            .await?;
        let epoch = self.store.revert_all_epoch().await?;
        let lever = self.store.safety_lever().await?;
        let mut wake: BTreeSet<String> = BTreeSet::new();
        let everyone = {
            let mut inner = lock(&self.inner);
            let mut fresh: BTreeMap<String, Fault> = loaded.into_iter().map(|f| (f.id.clone(), f)).collect();
            for (id, f) in &mut fresh {
                let changed = match inner.faults.get(id) {
                    None => true,
                    Some(old) => {
                        // A state this controller heard after the row was read.
                        for (h, st) in &mut f.agents {
                            if let Some(o) = old.agents.get(h)
                                && o.updated_ms > st.updated_ms
                            {
                                st.clone_from(o);
                            }
                        }
                        old.ended_ms != f.ended_ms
                            || old.expires_ms != f.expires_ms
                            || old.agents.keys().ne(f.agents.keys())
                            || (f.dry_run
                                && old
                                    .agents
                                    .values()
                                    .zip(f.agents.values())
                                    .any(|(a, b)| a.state != b.state))
                    }
                };
                if changed {
                    wake.extend(f.agents.keys().cloned());
                    wake.extend(self.sink_hosts(f));
                }
            }
            let everyone = epoch != inner.revert_all_epoch;
            inner.faults = fresh;
            inner.revert_all_epoch = epoch;
            inner.lever = lever;
            everyone
        };
        if everyone {
            wake.extend(lock(&self.watchers).keys().cloned());
        }
        self.bump(&wake);
        self.status_tx.send_modify(|v| *v = v.wrapping_add(1));
        Ok(())
    }

    pub fn config(&self) -> &FaultConfig {
        &self.cfg
    }

    /// Remembers what an agent reported at registration or heartbeat
    /// (`None` fields keep what was known).
    pub fn set_inventory(&self, host: &str, interfaces: Option<Vec<String>>, dm_devices: Option<Vec<String>>) {
        if interfaces.is_none() && dm_devices.is_none() {
            return;
        }
        lock(&self.inventory)
            .entry(host.to_owned())
            .or_default()
            .update(interfaces, dm_devices);
    }

    /// Takes what another controller stored of an agent's registration:
    /// its addresses, and its interfaces and dm devices where nothing is
    /// known here yet (what the agent's heartbeats to this controller
    /// reported is newer than its registration).
    pub fn learn_registration(&self, req: &graydar_common::api::RegisterRequest) {
        let mut inv = lock(&self.inventory);
        let known = inv.entry(req.hostname.clone()).or_default();
        if known.interfaces.is_none() {
            known.interfaces.clone_from(&req.interfaces);
        }
        if known.dm_devices.is_none() {
            known.dm_devices.clone_from(&req.dm_devices);
        }
        known.addresses = req.addresses.iter().filter_map(|a| a.parse().ok()).collect();
    }

    /// Remembers an agent's registered addresses (a load aimed at one of
    /// them gives the agent a sink).
    pub fn set_addresses(&self, host: &str, addresses: &[String]) {
        lock(&self.inventory).entry(host.to_owned()).or_default().addresses =
            addresses.iter().filter_map(|a| a.parse().ok()).collect();
    }

    /// The agents a fault's load is aimed at (they get its sink).
    fn sink_hosts(&self, f: &Fault) -> Vec<String> {
        let dest: Vec<std::net::IpAddr> = super::policy::load_destinations(&f.spec)
            .iter()
            .filter_map(|a| a.parse().ok())
            .collect();
        if dest.is_empty() {
            return Vec::new();
        }
        lock(&self.inventory)
            .iter()
            .filter(|(_, inv)| inv.addresses.iter().any(|a| dest.contains(a)))
            .map(|(h, _)| h.clone())
            .collect()
    }

    fn sender(&self, host: &str) -> watch::Sender<u64> {
        lock(&self.watchers)
            .entry(host.to_owned())
            .or_insert_with(|| watch::channel(0).0)
            .clone()
    }

    /// A receiver that changes whenever `host`'s desired set does.
    fn subscribe(&self, host: &str) -> watch::Receiver<u64> {
        self.sender(host).subscribe()
    }

    /// The externally visible version of a per-agent counter.
    fn version_of(&self, counter: u64) -> u64 {
        self.version_base.saturating_add(counter)
    }

    fn bump<'a>(&self, hosts: impl IntoIterator<Item = &'a String>) {
        for h in hosts {
            self.sender(h).send_modify(|v| *v = v.wrapping_add(1));
        }
    }

    fn subscribe_status(&self) -> watch::Receiver<u64> {
        self.status_tx.subscribe()
    }

    fn lease_ms(&self) -> i64 {
        i64::try_from(self.cfg.lease.as_millis()).unwrap_or(i64::MAX)
    }

    /// Validates, resolves the targets among the registered `agents`,
    /// checks the overlap and the blast radius against the running faults
    /// and stores a new fault; the agents are woken at once. The checks and
    /// the insert are one critical section: of two overlapping creates at
    /// the same time, one is refused.
    pub async fn create(&self, req: CreateFaultRequest, agents: &[AgentInfo]) -> Result<FaultInfo, FaultError> {
        self.create_as(new_fault_id(), req, agents).await
    }

    /// [`FaultService::create`] under an id chosen by the caller (a game
    /// day stores the id in its run before it creates the fault, so a
    /// controller that dies in between can still end it at restart). An id
    /// already known is refused.
    pub async fn create_as(
        &self,
        id: String,
        req: CreateFaultRequest,
        agents: &[AgentInfo],
    ) -> Result<FaultInfo, FaultError> {
        // The lever first (it is what the operator must hear about), and
        // again in the turn (it may have been engaged meanwhile).
        if !req.dry_run {
            refuse_if_engaged(&lock(&self.inner))?;
        }
        let targets = {
            let inv = lock(&self.inventory);
            resolve_targets(&req, agents, &inv, &self.cfg)?
        };
        let _turn = self.turn().await?;
        let now = now_ms();
        if !req.dry_run {
            let inner = lock(&self.inner);
            refuse_if_engaged(&inner)?;
            check_overlap(inner.faults.values(), &req.spec, &targets, now)?;
            if !req.force {
                let impaired = super::policy::impaired_agents(&req.spec, targets.iter().cloned());
                check_blast_radius(inner.faults.values(), &impaired, agents, now, self.cfg.max_target_share)?;
            }
        }
        let duration_ms = if req.dry_run {
            // A dry run is wanted until every agent answered (or this passes).
            i64::try_from(self.cfg.dry_run_wait.max(Duration::from_secs(10)).as_millis() * 6).unwrap_or(60_000)
        } else {
            req.duration_seconds.saturating_mul(1000)
        };
        if lock(&self.inner).faults.contains_key(&id) {
            return Err(FaultError::Invalid(format!("fault id {id} exists")));
        }
        let lease_ms = match req.lease_seconds {
            None => None,
            Some(s) if (MIN_FAULT_LEASE_SECONDS..=self.cfg.lease.as_secs()).contains(&s) => {
                Some(i64::try_from(s.saturating_mul(1000)).unwrap_or(i64::MAX))
            }
            Some(s) => {
                return Err(FaultError::Invalid(format!(
                    "lease_seconds: {s} is not between {MIN_FAULT_LEASE_SECONDS} and the controller's faults.lease ({} s)",
                    self.cfg.lease.as_secs()
                )));
            }
        };
        let mut spec = req.spec;
        if let FaultSpec::Burst(b) = &mut spec
            && b.start_unix_ms == 0
        {
            // One start for every sender, far enough ahead for all of them
            // to have it (they are woken at once).
            b.start_unix_ms = now.saturating_add(BURST_LEAD_MS);
        }
        let fault = Fault {
            id,
            spec,
            selector: req.targets.selector,
            dry_run: req.dry_run,
            forced: req.force,
            duration_seconds: if req.dry_run { 0 } else { req.duration_seconds },
            lease_ms,
            created_ms: now,
            expires_ms: now.saturating_add(duration_ms),
            ended_ms: None,
            end_reason: None,
            agents: targets
                .iter()
                .map(|t| {
                    (
                        t.clone(),
                        AgentStatus {
                            state: FaultState::Pending,
                            reason: None,
                            operations: Vec::new(),
                            updated_ms: now,
                            agent_at_ms: None,
                        },
                    )
                })
                .collect(),
        };
        self.store.insert_fault(&fault).await?;
        let info = fault.info();
        tracing::info!(id = %fault.id, kind = %fault.spec.kind(), target = fault.spec.target(), agents = targets.len(),
            dry_run = fault.dry_run, forced = fault.forced, duration_s = fault.duration_seconds, "fault created");
        let sinks = self.sink_hosts(&fault);
        lock(&self.inner).faults.insert(fault.id.clone(), fault);
        self.bump(&targets);
        self.bump(&sinks);
        self.announce().await;
        Ok(info)
    }

    /// One fault: from memory while live, else from the store.
    pub async fn get(&self, id: &str) -> Result<FaultInfo, FaultError> {
        let (now, lease) = (now_ms(), self.lease_ms());
        if let Some(info) = lock(&self.inner).faults.get(id).map(|f| f.info_at(now, lease)) {
            return Ok(info);
        }
        self.store
            .load_faults(FaultSelection::Id(id))
            .await?
            .first()
            .map(|f| f.info_at(now, lease))
            .ok_or_else(|| FaultError::NotFound { id: id.to_owned() })
    }

    /// Faults newest first, at most `limit`, optionally only those whose
    /// status is `status`. Read from the store (the whole history); a live
    /// fault is shown as memory has it.
    pub async fn list(&self, status: Option<FaultStatus>, limit: u32) -> Result<Vec<FaultInfo>, FaultError> {
        let mut v = self.store.load_faults(FaultSelection::Newest { status, limit }).await?;
        let (now, lease) = (now_ms(), self.lease_ms());
        let inner = lock(&self.inner);
        for f in &mut v {
            if let Some(live) = inner.faults.get(&f.id) {
                f.clone_from(live);
            }
        }
        Ok(v.iter().map(|f| f.info_at(now, lease)).collect())
    }

    /// Waits until every agent of the dry run `id` has answered, or `wait`
    /// has passed.
    pub async fn wait_dry_run(&self, id: &str, wait: Duration) {
        let mut rx = self.subscribe_status();
        let deadline = tokio::time::Instant::now() + wait;
        while !self.dry_run_done(id) {
            if tokio::time::timeout_at(deadline, rx.changed()).await.is_err() {
                break;
            }
        }
    }

    /// The long-poll of `host`: its desired set at once when `version` is
    /// not the current one (or `wait` is zero), else at the next change or
    /// after `wait`.
    pub async fn poll(&self, host: &str, version: Option<u64>, wait: Duration) -> DesiredFaults {
        let mut rx = self.subscribe(host);
        let counter = *rx.borrow_and_update();
        if version == Some(self.version_of(counter)) && !wait.is_zero() {
            let _ = tokio::time::timeout(wait, rx.changed()).await;
        }
        let counter = *rx.borrow_and_update();
        self.desired(host, counter)
    }

    /// Whether every agent of a dry run has answered.
    pub fn dry_run_done(&self, id: &str) -> bool {
        lock(&self.inner)
            .faults
            .get(id)
            .is_none_or(|f| f.agents.values().all(|s| s.state != FaultState::Pending))
    }

    /// Ends a fault now (`DELETE`): the end is stored, then its agents are
    /// woken and revert it. Ending an ended fault changes nothing.
    pub async fn end(&self, id: &str) -> Result<FaultInfo, FaultError> {
        let _turn = self.turn().await?;
        let now = now_ms();
        let live = lock(&self.inner).faults.get(id).map(|f| {
            let ended = f.ended_ms.is_none().then_some(if now >= f.expires_ms {
                EndReason::Expired
            } else {
                EndReason::Deleted
            });
            (
                f.info(),
                f.agents.keys().cloned().chain(self.sink_hosts(f)).collect::<Vec<_>>(),
                ended,
            )
        });
        // Out of memory means settled: ended long ago, nothing to do.
        let Some((mut info, targets, ended)) = live else {
            return self.get(id).await;
        };
        if let Some(reason) = ended {
            self.store.end_faults(&[id.to_owned()], now, reason).await?;
            if let Some(f) = lock(&self.inner).faults.get_mut(id) {
                f.ended_ms = Some(now);
                f.end_reason = Some(reason);
                info = f.info();
            }
            tracing::info!(id, "fault ended by the operator");
            self.bump(&targets);
            self.announce().await;
        }
        Ok(info)
    }

    /// The kill switch: ends every fault and bumps the epoch, so every agent
    /// reverts every fault it has active, known here or not. Both are stored
    /// (one transaction) before any agent sees them: a controller restarted
    /// right after never hands a reverted fault out again.
    pub async fn revert_all(&self) -> Result<RevertAllResponse, FaultError> {
        let _turn = self.turn().await?;
        self.revert_all_in_turn().await
    }

    /// [`FaultService::revert_all`] for a caller that holds the turn.
    async fn revert_all_in_turn(&self) -> Result<RevertAllResponse, FaultError> {
        let now = now_ms();
        let (ended, epoch) = {
            let inner = lock(&self.inner);
            let ended: Vec<String> = inner
                .faults
                .values()
                .filter(|f| f.ended_ms.is_none())
                .map(|f| f.id.clone())
                .collect();
            (ended, inner.revert_all_epoch.saturating_add(1))
        };
        self.store.revert_all(epoch, &ended, now).await?;
        {
            let mut inner = lock(&self.inner);
            inner.revert_all_epoch = epoch;
            for id in &ended {
                if let Some(f) = inner.faults.get_mut(id) {
                    f.ended_ms = Some(now);
                    f.end_reason = Some(EndReason::RevertAll);
                }
            }
        }
        let hosts: Vec<String> = lock(&self.watchers).keys().cloned().collect();
        self.bump(&hosts);
        self.announce().await;
        tracing::warn!(faults = ended.len(), agents = hosts.len(), epoch, "revert-all");
        Ok(RevertAllResponse {
            faults_ended: u64::try_from(ended.len()).unwrap_or(0),
            agents_notified: u64::try_from(hosts.len()).unwrap_or(0),
            revert_all_epoch: epoch,
        })
    }

    /// The safety lever as it is now.
    pub fn safety_lever(&self) -> SafetyLever {
        lever_view(lock(&self.inner).lever.as_ref(), None)
    }

    /// Engages the safety lever: stored first (from then on every new
    /// fault is refused), then every fault is ended by a revert-all. Engaging
    /// it again keeps the first time and reason and runs the revert-all
    /// again.
    pub async fn engage_safety_lever(&self, reason: String) -> Result<SafetyLever, FaultError> {
        let _turn = self.turn().await?;
        let existing = lock(&self.inner).lever.clone();
        let lever = match existing {
            Some(l) => l,
            None => {
                let l = LeverRecord {
                    engaged_ms: now_ms(),
                    reason,
                };
                self.store.set_safety_lever(Some(&l)).await?;
                lock(&self.inner).lever = Some(l.clone());
                tracing::warn!(reason = %l.reason, "safety lever engaged: every fault reverted, new faults refused");
                l
            }
        };
        let done = self.revert_all_in_turn().await?;
        Ok(lever_view(Some(&lever), Some(done)))
    }

    /// Releases the safety lever (stored, then new faults are accepted).
    pub async fn release_safety_lever(&self) -> Result<SafetyLever, FaultError> {
        let _turn = self.turn().await?;
        if lock(&self.inner).lever.is_some() {
            self.store.set_safety_lever(None).await?;
            lock(&self.inner).lever = None;
            self.announce().await;
            tracing::warn!("safety lever released: faults are accepted again");
        }
        Ok(lever_view(None, None))
    }

    /// Marks faults whose time is up as ended ("expired") and wakes their
    /// agents (the agents' leases end at the same time anyway). Called every
    /// second by [`spawn_expirer`].
    pub async fn expire(&self) -> Result<usize, FaultError> {
        let due = |now: i64| {
            lock(&self.inner)
                .faults
                .values()
                .any(|f| f.ended_ms.is_none() && now >= f.expires_ms)
        };
        if !due(now_ms()) {
            // Nothing to end: no turn to wait for.
            self.prune(now_ms());
            return Ok(0);
        }
        let _turn = self.turn().await?;
        let now = now_ms();
        let (ids, hosts) = {
            let inner = lock(&self.inner);
            let mut ids = Vec::new();
            let mut hosts = BTreeSet::new();
            for f in inner.faults.values() {
                if f.ended_ms.is_none() && now >= f.expires_ms {
                    ids.push(f.id.clone());
                    hosts.extend(f.agents.keys().cloned());
                    hosts.extend(self.sink_hosts(f));
                }
            }
            (ids, hosts)
        };
        self.store.end_faults(&ids, now, EndReason::Expired).await?;
        if !ids.is_empty() {
            self.announce().await;
        }
        {
            let mut inner = lock(&self.inner);
            for id in &ids {
                if let Some(f) = inner.faults.get_mut(id) {
                    f.ended_ms = Some(now);
                    f.end_reason = Some(EndReason::Expired);
                }
            }
        }
        self.bump(&hosts);
        self.prune(now);
        Ok(ids.len())
    }

    /// How many faults memory holds (the live ones).
    pub fn live_faults(&self) -> usize {
        lock(&self.inner).faults.len()
    }

    /// How many agents have a long-poll watcher (only registered ones may).
    pub fn watched_agents(&self) -> usize {
        lock(&self.watchers).len()
    }

    /// How many agents have an inventory (interfaces, dm devices) here.
    pub fn inventoried_agents(&self) -> usize {
        lock(&self.inventory)
            .values()
            .filter(|i| i.interfaces.is_some() || i.dm_devices.is_some())
            .count()
    }

    /// Drops settled faults from memory (their end is in the store: every
    /// path that sets `ended_ms` persists it before returning, and a fault
    /// settles only a whole lease later).
    fn prune(&self, now: i64) -> usize {
        let lease = self.lease_ms();
        let mut inner = lock(&self.inner);
        let before = inner.faults.len();
        inner.faults.retain(|_, f| !f.settled_at(now, lease));
        before - inner.faults.len()
    }

    /// The lease `host`'s long poll must be renewed within: the shortest
    /// of its wanted faults' own leases, else the controller's. The poll's
    /// wait is capped at a third of it, so a fault with a short lease is
    /// renewed well before it runs out.
    pub fn poll_lease(&self, host: &str) -> Duration {
        let now = now_ms();
        let lease_s = self.cfg.lease.as_secs().max(1);
        let shortest = lock(&self.inner)
            .faults
            .values()
            .filter(|f| f.wanted(now) && f.agents.contains_key(host))
            .map(|f| f.lease_seconds(lease_s))
            .min()
            .unwrap_or(lease_s);
        Duration::from_secs(shortest)
    }

    /// The desired set of `host` right now, with version `counter`.
    fn desired(&self, host: &str, counter: u64) -> DesiredFaults {
        let now = now_ms();
        let lease_s = self.cfg.lease.as_secs().max(1);
        let inner = lock(&self.inner);
        let mut faults = Vec::new();
        for f in inner.faults.values() {
            if !f.wanted(now) {
                continue;
            }
            let Some(st) = f.agents.get(host) else {
                continue;
            };
            let own = f.lease_seconds(lease_s);
            let lease_seconds = if f.dry_run {
                if st.state != FaultState::Pending {
                    continue;
                }
                own
            } else {
                let left_ms = u64::try_from(f.expires_ms.saturating_sub(now)).unwrap_or(0);
                own.min(left_ms.div_ceil(1000)).max(1)
            };
            faults.push(DesiredFault {
                id: f.id.clone(),
                spec: f.spec.clone(),
                lease_seconds,
                dry_run: f.dry_run,
            });
        }
        // Sinks: one per port for the loads aimed at this host, as long as
        // any of those loads is wanted. Named after the port, never after a
        // load: a name that changed when another load to the same port came
        // or went would close the sink and open it again, and what arrived
        // in between was dropped (NO_SOCKET: the quiet soak caught it).
        let mine: Vec<std::net::IpAddr> = lock(&self.inventory)
            .get(host)
            .map(|i| i.addresses.clone())
            .unwrap_or_default();
        let mut sinks: BTreeMap<u16, u64> = BTreeMap::new();
        for f in inner.faults.values() {
            if f.dry_run || !f.wanted(now) {
                continue;
            }
            let port = match &f.spec {
                FaultSpec::Traffic(t) => t.port,
                FaultSpec::Burst(b) => b.port,
                _ => continue,
            };
            let aimed_here = super::policy::load_destinations(&f.spec)
                .iter()
                .any(|a| a.parse().is_ok_and(|ip| mine.contains(&ip)));
            if !aimed_here {
                continue;
            }
            let left_ms = u64::try_from(f.expires_ms.saturating_sub(now)).unwrap_or(0);
            // A second more than the load, so the sink outlives its senders.
            let lease = f.lease_seconds(lease_s).min(left_ms.div_ceil(1000)).max(1) + 1;
            let l = sinks.entry(port).or_default();
            *l = (*l).max(lease);
        }
        for (port, lease_seconds) in sinks {
            faults.push(DesiredFault {
                id: sink_id(port),
                spec: FaultSpec::LoadSink(SinkSpec { port }),
                lease_seconds,
                dry_run: false,
            });
        }
        DesiredFaults {
            version: self.version_of(counter),
            revert_all_epoch: inner.revert_all_epoch,
            lease_seconds: lease_s,
            faults,
        }
    }

    /// Stores the states an agent reports; `(accepted, ignored)`.
    pub async fn report(&self, host: &str, updates: Vec<FaultStatusUpdate>) -> Result<(u64, u64), FaultError> {
        let now = now_ms();
        let mut accepted = Vec::new();
        let mut ignored = 0;
        {
            let mut inner = lock(&self.inner);
            for u in updates {
                match inner.faults.get_mut(&u.id) {
                    Some(f) => match f.agents.get_mut(host) {
                        Some(st) => {
                            st.state = u.state;
                            st.reason = u.reason.clone();
                            st.operations = u.operations.clone();
                            st.updated_ms = now;
                            st.agent_at_ms = u.at.map(Timestamp::unix_ms);
                            accepted.push(u);
                        }
                        None => ignored += 1,
                    },
                    // Settled and out of memory (or unknown): a late
                    // confirmation still belongs in the history.
                    None => accepted.push(u),
                }
            }
        }
        if accepted.is_empty() {
            return Ok((0, ignored));
        }
        let stored = self.store.update_fault_states(host, &accepted, now).await?;
        self.announce().await;
        self.end_failed_everywhere(&accepted, now).await?;
        self.status_tx.send_modify(|v| *v = v.wrapping_add(1));
        // Rows that matched nothing (no such fault, or not this agent's).
        ignored += u64::try_from(accepted.len()).unwrap_or(0).saturating_sub(stored);
        Ok((stored, ignored))
    }

    /// A fault that failed on every agent it targets ends `failed` at once
    /// (stored first), instead of showing `running` until it expires: no
    /// agent holds it, and each agent's reason stays with its state.
    async fn end_failed_everywhere(&self, updates: &[FaultStatusUpdate], now: i64) -> Result<(), FaultError> {
        if !updates.iter().any(|u| u.state == FaultState::Failed) {
            return Ok(());
        }
        let _turn = self.turn().await?;
        let failed: Vec<(String, Vec<String>)> = {
            let inner = lock(&self.inner);
            updates
                .iter()
                .filter(|u| u.state == FaultState::Failed)
                .filter_map(|u| inner.faults.get(&u.id))
                .filter(|f| f.ended_ms.is_none() && !f.dry_run && !f.agents.is_empty())
                .filter(|f| f.agents.values().all(|a| a.state == FaultState::Failed))
                .map(|f| {
                    (
                        f.id.clone(),
                        f.agents.keys().cloned().chain(self.sink_hosts(f)).collect(),
                    )
                })
                .collect()
        };
        if failed.is_empty() {
            return Ok(());
        }
        let ids: Vec<String> = failed.iter().map(|(id, _)| id.clone()).collect();
        self.store.end_faults(&ids, now, EndReason::Failed).await?;
        {
            let mut inner = lock(&self.inner);
            for (id, _) in &failed {
                if let Some(f) = inner.faults.get_mut(id) {
                    f.ended_ms = Some(now);
                    f.end_reason = Some(EndReason::Failed);
                }
                tracing::warn!(id, "fault failed on every agent it targets: ended");
            }
        }
        self.bump(failed.iter().flat_map(|(_, hosts)| hosts));
        self.announce().await;
        Ok(())
    }

    /// Faults by status and the assignments of wanted faults by per-agent
    /// state, for /metrics. Ended faults are counted in the store (memory
    /// holds only the live ones).
    pub async fn counts(&self) -> Result<FaultCounts, FaultError> {
        let now = now_ms();
        let (ended, failed) = self.store.count_ended_faults(now).await?;
        let mut by_status: BTreeMap<FaultStatus, i64> = FaultStatus::ALL.iter().map(|s| (*s, 0)).collect();
        let mut by_state: Vec<(FaultState, i64)> = [
            FaultState::Pending,
            FaultState::Active,
            FaultState::Reverted,
            FaultState::Failed,
            FaultState::Described,
        ]
        .iter()
        .map(|s| (*s, 0))
        .collect();
        for f in lock(&self.inner).faults.values() {
            // Expired but not marked yet counts as ended (the store counts it).
            if !f.wanted(now) {
                continue;
            }
            *by_status.entry(f.status()).or_default() += 1;
            for s in f.agents.values() {
                match by_state.iter_mut().find(|(st, _)| *st == s.state) {
                    Some((_, n)) => *n += 1,
                    None => by_state.push((s.state, 1)),
                }
            }
        }
        by_status.insert(FaultStatus::Ended, ended - failed);
        by_status.insert(FaultStatus::Failed, failed);
        Ok(FaultCounts {
            by_status: by_status.into_iter().collect(),
            by_state,
        })
    }
}

/// Marks expired faults every second until the service is dropped.
pub fn spawn_expirer(svc: Weak<FaultService>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            let Some(faults) = svc.upgrade() else {
                return;
            };
            if let Err(e) = faults.expire().await {
                tracing::warn!(error = %e, "marking expired faults");
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicBool, Ordering};

    use graydar_common::api::{AgentState, Capabilities};
    use graydar_common::timestamp::Timestamp;

    use super::*;
    use crate::store::{FaultRecord, SqliteStore, StoreError, StoreFuture};

    /// The SQLite store, and a witness at every write that ends faults: was
    /// the agent watched by `rx` woken before the write? With `fail`, those
    /// writes fail (a disk error, or a crash before the commit).
    struct Witness {
        db: SqliteStore,
        rx: Mutex<Option<watch::Receiver<u64>>>,
        seen: Mutex<Vec<(&'static str, bool)>>,
        fail: AtomicBool,
    }

    impl Witness {
        fn write(&self, what: &'static str) -> Result<(), StoreError> {
            let woken = lock(&self.rx)
                .as_ref()
                .is_some_and(|rx| rx.has_changed().unwrap_or(true));
            lock(&self.seen).push((what, woken));
            if self.fail.load(Ordering::SeqCst) {
                return Err(StoreError::WriterStopped);
            }
            Ok(())
        }
    }

    impl FaultStore for Witness {
        fn load_faults<'a>(&'a self, which: FaultSelection<'a>) -> StoreFuture<'a, Vec<FaultRecord>> {
            self.db.load_faults(which)
        }
        fn insert_fault<'a>(&'a self, fault: &'a FaultRecord) -> StoreFuture<'a, ()> {
            self.db.insert_fault(fault)
        }
        fn end_faults<'a>(&'a self, ids: &'a [String], ended_ms: i64, reason: EndReason) -> StoreFuture<'a, ()> {
            match self.write("end_faults") {
                Ok(()) => self.db.end_faults(ids, ended_ms, reason),
                Err(e) => Box::pin(async move { Err(e) }),
            }
        }
        fn update_fault_states<'a>(
            &'a self,
            agent: &'a str,
            updates: &'a [FaultStatusUpdate],
            now_ms: i64,
        ) -> StoreFuture<'a, u64> {
            self.db.update_fault_states(agent, updates, now_ms)
        }
        fn count_ended_faults(&self, now_ms: i64) -> StoreFuture<'_, (i64, i64)> {
            self.db.count_ended_faults(now_ms)
        }
        fn revert_all_epoch(&self) -> StoreFuture<'_, u64> {
            self.db.revert_all_epoch()
        }
        fn revert_all<'a>(&'a self, epoch: u64, ids: &'a [String], ended_ms: i64) -> StoreFuture<'a, ()> {
            match self.write("revert_all") {
                Ok(()) => self.db.revert_all(epoch, ids, ended_ms),
                Err(e) => Box::pin(async move { Err(e) }),
            }
        }
        fn safety_lever(&self) -> StoreFuture<'_, Option<LeverRecord>> {
            self.db.safety_lever()
        }
        fn set_safety_lever<'a>(&'a self, lever: Option<&'a LeverRecord>) -> StoreFuture<'a, ()> {
            match self.write("set_safety_lever") {
                Ok(()) => self.db.set_safety_lever(lever),
                Err(e) => Box::pin(async move { Err(e) }),
            }
        }
    }

    fn agent(name: &str) -> AgentInfo {
        AgentInfo {
            hostname: name.into(),
            addresses: vec![],
            labels: BTreeMap::new(),
            kernel_version: String::new(),
            agent_version: String::new(),
            capabilities: Capabilities::default(),
            registered_at: Timestamp::UNIX_EPOCH,
            last_seen: Timestamp::UNIX_EPOCH,
            state: AgentState::Healthy,
            firing_findings: 0,
            clock: None,
        }
    }

    fn netem_on(host: &str, iface: &str) -> CreateFaultRequest {
        serde_json::from_value(serde_json::json!({
            "targets": {"agents": [host]},
            "spec": {"kind": "netem", "interface": iface, "netem": {"delay_ms": 100}},
            "duration_seconds": 600
        }))
        .expect("request")
    }

    fn cfg() -> FaultConfig {
        FaultConfig {
            max_target_share: 1.0,
            ..FaultConfig::default()
        }
    }

    async fn setup(dir: &std::path::Path) -> (Arc<Witness>, FaultService, Vec<AgentInfo>) {
        let witness = Arc::new(Witness {
            db: SqliteStore::open(dir).await.expect("store"),
            rx: Mutex::new(None),
            seen: Mutex::new(Vec::new()),
            fail: AtomicBool::new(false),
        });
        let svc = FaultService::open(witness.clone(), cfg()).await.expect("service");
        (witness, svc, vec![agent("a1"), agent("a2")])
    }

    fn desired_ids(svc: &FaultService, host: &str) -> Vec<String> {
        svc.desired(host, 0).faults.into_iter().map(|f| f.id).collect()
    }

    #[tokio::test]
    async fn ends_are_stored_before_any_agent_is_woken() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (witness, svc, agents) = setup(dir.path()).await;
        let f1 = svc.create(netem_on("a1", "eth0"), &agents).await.expect("create");
        let _f2 = svc.create(netem_on("a1", "lo"), &agents).await.expect("create");
        *lock(&witness.rx) = Some(svc.subscribe("a1"));
        svc.end(&f1.id).await.expect("end");
        *lock(&witness.rx) = Some(svc.subscribe("a1"));
        svc.revert_all().await.expect("revert-all");
        assert_eq!(
            *lock(&witness.seen),
            [("end_faults", false), ("revert_all", false)],
            "(write, whether a1 had been woken before it)"
        );
        let rx = lock(&witness.rx).take().expect("receiver");
        assert!(rx.has_changed().expect("open"), "woken after the write");
        // A controller started on the same database hands out nothing.
        let epoch = svc.desired("a1", 0).revert_all_epoch;
        let restarted = FaultService::open(witness.clone(), cfg()).await.expect("reopen");
        assert!(desired_ids(&restarted, "a1").is_empty());
        assert_eq!(restarted.desired("a1", 0).revert_all_epoch, epoch);
        assert_eq!(epoch, 1);
    }

    #[tokio::test]
    async fn a_failed_write_wakes_nobody_and_leaves_the_fault_wanted() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (witness, svc, agents) = setup(dir.path()).await;
        let f = svc.create(netem_on("a1", "eth0"), &agents).await.expect("create");
        let rx = svc.subscribe("a1");
        witness.fail.store(true, Ordering::SeqCst);
        svc.end(&f.id).await.expect_err("the end was not stored");
        svc.revert_all().await.expect_err("the revert-all was not stored");
        assert_eq!(lock(&witness.seen).len(), 2, "both tried to write");
        assert!(!rx.has_changed().expect("open"), "nobody woken");
        let d = svc.desired("a1", 0);
        assert_eq!(
            (desired_ids(&svc, "a1"), d.revert_all_epoch),
            (vec![f.id.clone()], 0),
            "memory tells the agents what the store holds"
        );
        assert_eq!(svc.get(&f.id).await.expect("get").status, "running");
        // Once the store takes writes again, the end goes through.
        witness.fail.store(false, Ordering::SeqCst);
        assert_eq!(svc.end(&f.id).await.expect("end").status, "ended");
        assert!(rx.has_changed().expect("open"));
        assert!(desired_ids(&svc, "a1").is_empty());
    }
}
