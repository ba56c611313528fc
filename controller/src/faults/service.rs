//! The controller's fault bookkeeping: live faults and per-agent states in
//! memory (written through to SQLite), target resolution and validation, the
//! blast-radius rule, per-agent change notification for the long-poll, and
//! the revert-all epoch.
//!
//! Agent protocol (see README "Faults"): each agent long-polls
//! `GET /api/v1/agents/{hostname}/faults?wait=S&version=V`; the answer is its
//! whole desired set (fault ids, specs and a lease each) plus the revert-all
//! epoch. A per-agent `watch` channel wakes the poll at once when a fault of
//! that agent is created, deleted, expires, or on revert-all. The agent
//! applies what is new, reverts what is no longer listed, renews the leases of
//! the rest and posts each fault's state back.
//!
//! Memory holds only live faults: a fault leaves it once it has ended and a
//! whole lease has passed (its states are settled, see [`Fault::settled`]).
//! History (`get`, `list`) is read from SQLite, so a controller that ran game
//! days for years holds no more than what is running.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use graydar_common::api::AgentInfo;
use graydar_common::fault_api::{
    AgentFaultStatus, CreateFaultRequest, DesiredFault, DesiredFaults, FaultInfo, FaultStatusUpdate, RevertAllResponse,
};
use graydar_common::faults::{FaultKey, FaultSpec, FaultState};
use sqlx::QueryBuilder;
use sqlx::Row as _;
use sqlx::sqlite::{Sqlite, SqlitePool};
use tokio::sync::watch;

use super::FaultConfig;
use crate::store::{Store, StoreError};
use crate::timefmt::{ms_to_rfc3339, now_ms};

#[derive(Debug, thiserror::Error)]
pub enum FaultError {
    /// The request cannot be honoured as written (422).
    #[error("{0}")]
    Invalid(String),
    /// Refused by the blast-radius rule (409).
    #[error("{0}")]
    BlastRadius(String),
    /// An agent already has a running fault on the same target (409).
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    NotFound(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for FaultError {
    fn from(e: sqlx::Error) -> Self {
        FaultError::Store(StoreError::Db(e))
    }
}

/// What an agent last said about its interfaces and dm devices.
#[derive(Clone, Debug, Default)]
pub struct Inventory {
    pub interfaces: Option<Vec<String>>,
    pub dm_devices: Option<Vec<String>>,
}

#[derive(Clone, Debug)]
struct AgentStatus {
    state: FaultState,
    reason: Option<String>,
    operations: Vec<String>,
    updated_ms: i64,
}

#[derive(Clone, Debug)]
struct Fault {
    id: String,
    spec: FaultSpec,
    selector: BTreeMap<String, String>,
    dry_run: bool,
    forced: bool,
    duration_seconds: i64,
    created_ms: i64,
    expires_ms: i64,
    ended_ms: Option<i64>,
    end_reason: Option<String>,
    agents: BTreeMap<String, AgentStatus>,
}

impl Fault {
    fn wanted(&self, now: i64) -> bool {
        self.ended_ms.is_none() && now < self.expires_ms
    }

    /// When the fault stopped being wanted (ended or expired, whichever first).
    fn end_ms(&self) -> i64 {
        self.ended_ms.unwrap_or(self.expires_ms).min(self.expires_ms)
    }

    /// Whether the fault can leave memory at `now`: ended (and the end
    /// persisted: `ended_ms` is written before this is asked) and a whole
    /// lease past its end, so every agent has reverted it by its own timer.
    fn settled_at(&self, now: i64, lease_ms: i64) -> bool {
        self.ended_ms.is_some() && now >= self.end_ms().saturating_add(lease_ms)
    }

    /// What the fault acts on, for overlap checks: two faults with the same
    /// key on one agent would fight over the same qdisc, table or route.
    fn key(spec: &FaultSpec) -> FaultKey {
        spec.key()
    }

    /// The agent state as it can be told now. Once the fault has ended and
    /// a whole lease has passed, an agent that never confirmed has reverted
    /// anyway (the lease runs on the agent's own clock; a restart reverts
    /// from the journal), so `active` and `pending` are settled as
    /// `reverted` with a reason saying it was not confirmed.
    fn settled(&self, s: &AgentStatus, now: i64, lease_ms: i64) -> (FaultState, Option<String>) {
        if self.dry_run || now < self.end_ms().saturating_add(lease_ms) {
            return (s.state, s.reason.clone());
        }
        match s.state {
            FaultState::Active => (
                FaultState::Reverted,
                Some("lease expired: reverted by the agent's own lease timer (not confirmed by the agent)".into()),
            ),
            FaultState::Pending => (
                FaultState::Reverted,
                Some("ended before the agent picked it up: never applied".into()),
            ),
            st => (st, s.reason.clone()),
        }
    }

    fn info(&self) -> FaultInfo {
        self.info_at(i64::MIN, 0)
    }

    fn info_at(&self, now: i64, lease_ms: i64) -> FaultInfo {
        FaultInfo {
            id: self.id.clone(),
            spec: self.spec.clone(),
            selector: self.selector.clone(),
            dry_run: self.dry_run,
            forced: self.forced,
            duration_seconds: self.duration_seconds,
            created_at: ms_to_rfc3339(self.created_ms),
            expires_at: ms_to_rfc3339(self.expires_ms),
            status: if self.ended_ms.is_some() {
                "ended"
            } else if self.dry_run {
                "dry_run"
            } else {
                "running"
            }
            .to_owned(),
            ended_at: self.ended_ms.map(ms_to_rfc3339),
            end_reason: self.end_reason.clone(),
            agents: self
                .agents
                .iter()
                .map(|(a, s)| {
                    let (state, reason) = self.settled(s, now, lease_ms);
                    AgentFaultStatus {
                        agent: a.clone(),
                        state,
                        reason,
                        operations: s.operations.clone(),
                        updated_at: ms_to_rfc3339(s.updated_ms),
                    }
                })
                .collect(),
        }
    }
}

struct Inner {
    faults: BTreeMap<String, Fault>,
    revert_all_epoch: u64,
}

pub struct FaultService {
    cfg: FaultConfig,
    write: SqlitePool,
    read: SqlitePool,
    inner: Mutex<Inner>,
    /// Per agent: bumped whenever its desired set changes.
    watchers: Mutex<HashMap<String, watch::Sender<u64>>>,
    /// Added to every per-agent version so versions of different controller
    /// runs never coincide (an agent's old version always differs).
    version_base: u64,
    /// Bumped on every status report (dry-run waits watch it).
    status_tx: watch::Sender<u64>,
    inventory: Mutex<HashMap<String, Inventory>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "null".to_owned())
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> FaultError {
    FaultError::Store(StoreError::Corrupt(format!("{what}: {e}")))
}

fn state_from_str(s: &str) -> Result<FaultState, FaultError> {
    serde_json::from_value(serde_json::Value::String(s.to_owned())).map_err(|e| corrupt("fault state", e))
}

/// `status` filter of the fault list (`GET /api/v1/faults?status=`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ListStatus {
    Running,
    DryRun,
    Ended,
}

/// The faults whose row satisfies the condition `cond` writes after
/// `WHERE` (it may end with `ORDER BY` and `LIMIT`), in that order, each
/// with its per-agent rows. `cond` is written twice: once for the faults,
/// once for their agents, both in one read transaction (one snapshot).
async fn load_faults(read: &SqlitePool, cond: impl Fn(&mut QueryBuilder<Sqlite>)) -> Result<Vec<Fault>, FaultError> {
    let mut q = QueryBuilder::new(
        "SELECT id, spec, selector, dry_run, forced, duration_seconds, created_ms, expires_ms, ended_ms, end_reason \
         FROM faults WHERE ",
    );
    cond(&mut q);
    let mut tx = read.begin().await?;
    let mut faults = Vec::new();
    let mut index = HashMap::new();
    for r in q.build().fetch_all(&mut *tx).await? {
        let id: String = r.try_get("id")?;
        let spec: FaultSpec =
            serde_json::from_str(&r.try_get::<String, _>("spec")?).map_err(|e| corrupt("fault spec", e))?;
        let selector =
            serde_json::from_str(&r.try_get::<String, _>("selector")?).map_err(|e| corrupt("fault selector", e))?;
        index.insert(id.clone(), faults.len());
        faults.push(Fault {
            id,
            spec,
            selector,
            dry_run: r.try_get::<i64, _>("dry_run")? != 0,
            forced: r.try_get::<i64, _>("forced")? != 0,
            duration_seconds: r.try_get("duration_seconds")?,
            created_ms: r.try_get("created_ms")?,
            expires_ms: r.try_get("expires_ms")?,
            ended_ms: r.try_get("ended_ms")?,
            end_reason: r.try_get("end_reason")?,
            agents: BTreeMap::new(),
        });
    }
    if faults.is_empty() {
        return Ok(faults);
    }
    let mut q = QueryBuilder::new(
        "SELECT fault_id, agent, state, reason, operations, updated_ms FROM fault_agents \
         WHERE fault_id IN (SELECT id FROM faults WHERE ",
    );
    cond(&mut q);
    q.push(")");
    for r in q.build().fetch_all(&mut *tx).await? {
        let fid: String = r.try_get("fault_id")?;
        if let Some(f) = index.get(&fid).and_then(|&i| faults.get_mut(i)) {
            f.agents.insert(
                r.try_get("agent")?,
                AgentStatus {
                    state: state_from_str(&r.try_get::<String, _>("state")?)?,
                    reason: r.try_get("reason")?,
                    operations: serde_json::from_str(&r.try_get::<String, _>("operations")?)
                        .map_err(|e| corrupt("fault operations", e))?,
                    updated_ms: r.try_get("updated_ms")?,
                },
            );
        }
    }
    Ok(faults)
}

/// "a, b, c" (at most `max` names, then "and N more").
fn names(list: &[String], max: usize) -> String {
    if list.is_empty() {
        return "none".to_owned();
    }
    let mut s = list.iter().take(max).cloned().collect::<Vec<_>>().join(", ");
    if list.len() > max {
        s.push_str(&format!(" and {} more", list.len() - max));
    }
    s
}

/// Resolves and checks the targets of `req` against the registered `agents`
/// and their inventories; the sorted hostnames. Pure (unit-tested).
pub fn resolve_targets(
    req: &CreateFaultRequest,
    agents: &[AgentInfo],
    inventory: &HashMap<String, Inventory>,
    cfg: &FaultConfig,
) -> Result<Vec<String>, FaultError> {
    let invalid = |m: String| Err(FaultError::Invalid(m));
    let t = &req.targets;
    if !t.agents.is_empty() && !t.selector.is_empty() {
        return invalid("targets: give either agents (a list of hostnames) or selector (labels), not both".into());
    }
    if t.agents.is_empty() && t.selector.is_empty() {
        return invalid("targets: empty: give agents (a list of hostnames) or selector (labels)".into());
    }
    if let Err(e) = req.spec.validate() {
        return invalid(format!("spec: {e}"));
    }
    if !req.dry_run {
        let max = i64::try_from(cfg.max_duration.as_secs()).unwrap_or(i64::MAX);
        if req.duration_seconds <= 0 {
            return invalid(format!("duration_seconds must be > 0, got {}", req.duration_seconds));
        }
        if req.duration_seconds > max {
            return invalid(format!(
                "duration_seconds {} is above the maximum of {max} (faults.max_duration)",
                req.duration_seconds
            ));
        }
    }
    let registered: Vec<String> = agents.iter().map(|a| a.hostname.clone()).collect();
    let targets: Vec<String> = if !t.agents.is_empty() {
        let wanted: BTreeSet<&String> = t.agents.iter().collect();
        let unknown: Vec<String> = wanted
            .iter()
            .filter(|w| !registered.contains(w))
            .map(|w| format!("{w:?}"))
            .collect();
        if !unknown.is_empty() {
            return invalid(format!(
                "targets.agents: unknown agent{} {} (registered: {})",
                if unknown.len() > 1 { "s" } else { "" },
                unknown.join(", "),
                names(&registered, 20)
            ));
        }
        wanted.into_iter().cloned().collect()
    } else {
        let matched: Vec<String> = agents
            .iter()
            .filter(|a| t.selector.iter().all(|(k, v)| a.labels.get(k) == Some(v)))
            .map(|a| a.hostname.clone())
            .collect();
        if matched.is_empty() {
            let sel: Vec<String> = t.selector.iter().map(|(k, v)| format!("{k}={v}")).collect();
            return invalid(format!(
                "targets.selector {} matches no registered agent ({} registered)",
                sel.join(","),
                registered.len()
            ));
        }
        matched
    };
    // Names that must exist on each target, when the agent reported them.
    for host in &targets {
        let inv = inventory.get(host);
        match &req.spec {
            FaultSpec::Netem { interface, .. } => {
                if let Some(list) = inv.and_then(|i| i.interfaces.as_ref())
                    && !list.contains(interface)
                {
                    return invalid(format!(
                        "spec.interface: interface {interface:?} does not exist on agent {host:?} (it has {})",
                        names(list, 30)
                    ));
                }
            }
            FaultSpec::Dm { device, .. } => {
                if let Some(list) = inv.and_then(|i| i.dm_devices.as_ref())
                    && !list.contains(device)
                {
                    return invalid(format!(
                        "spec.device: dm device {device:?} does not exist on agent {host:?} (it has {})",
                        names(list, 30)
                    ));
                }
            }
            FaultSpec::Blackhole { .. } => {}
        }
    }
    if !req.dry_run && !req.force {
        let total = registered.len().max(1);
        let share = targets.len() as f64 / total as f64;
        if share > cfg.max_target_share + 1e-9 {
            return Err(FaultError::BlastRadius(format!(
                "blast radius: the fault targets {} of {} registered agents ({:.0}%), above the limit of {:.0}% \
                 (faults.max_target_share); pass force=true (graydar fault apply --force) to apply anyway",
                targets.len(),
                registered.len(),
                share * 100.0,
                cfg.max_target_share * 100.0
            )));
        }
    }
    Ok(targets)
}

fn new_id() -> String {
    format!("flt-{:012x}", fastrand::u64(..) & 0xffff_ffff_ffff)
}

impl FaultService {
    /// Loads the faults stored in `store`'s database (the migrations already ran).
    pub async fn open(store: &Store, cfg: FaultConfig) -> Result<FaultService, FaultError> {
        let (write, read) = store.pools();
        let lease_ms = i64::try_from(cfg.lease.as_millis()).unwrap_or(i64::MAX);
        // Live faults only: not ended, or ended less than a lease ago (one
        // `now` for both of load_faults' queries).
        let now = now_ms();
        let faults = load_faults(read, |q| {
            q.push("ended_ms IS NULL OR MIN(ended_ms, expires_ms) + ")
                .push_bind(lease_ms)
                .push(" > ")
                .push_bind(now);
        })
        .await?
        .into_iter()
        .map(|f| (f.id.clone(), f))
        .collect();
        let epoch: Option<i64> = sqlx::query("SELECT value FROM fault_meta WHERE name = 'revert_all_epoch'")
            .fetch_optional(read)
            .await?
            .map(|r| r.try_get("value"))
            .transpose()?;
        let (status_tx, _) = watch::channel(0);
        Ok(FaultService {
            cfg,
            write: write.clone(),
            read: read.clone(),
            inner: Mutex::new(Inner {
                faults,
                revert_all_epoch: u64::try_from(epoch.unwrap_or(0)).unwrap_or(0),
            }),
            watchers: Mutex::new(HashMap::new()),
            version_base: u64::try_from(now_ms()).unwrap_or(0).saturating_mul(1000),
            status_tx,
            inventory: Mutex::new(HashMap::new()),
        })
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
        let mut inv = lock(&self.inventory);
        let e = inv.entry(host.to_owned()).or_default();
        if interfaces.is_some() {
            e.interfaces = interfaces;
        }
        if dm_devices.is_some() {
            e.dm_devices = dm_devices;
        }
    }

    fn sender(&self, host: &str) -> watch::Sender<u64> {
        lock(&self.watchers)
            .entry(host.to_owned())
            .or_insert_with(|| watch::channel(0).0)
            .clone()
    }

    /// A receiver that changes whenever `host`'s desired set does.
    pub fn subscribe(&self, host: &str) -> watch::Receiver<u64> {
        self.sender(host).subscribe()
    }

    /// The externally visible version of a per-agent counter.
    pub fn version_of(&self, counter: u64) -> u64 {
        self.version_base.saturating_add(counter)
    }

    fn bump<'a>(&self, hosts: impl IntoIterator<Item = &'a String>) {
        for h in hosts {
            self.sender(h).send_modify(|v| *v = v.wrapping_add(1));
        }
    }

    pub fn subscribe_status(&self) -> watch::Receiver<u64> {
        self.status_tx.subscribe()
    }

    /// Validates, resolves the targets and stores a new fault; the agents
    /// are woken at once.
    pub async fn create(&self, req: CreateFaultRequest, agents: &[AgentInfo]) -> Result<FaultInfo, FaultError> {
        let targets = {
            let inv = lock(&self.inventory);
            resolve_targets(&req, agents, &inv, &self.cfg)?
        };
        let now = now_ms();
        if !req.dry_run {
            let key = Fault::key(&req.spec);
            let inner = lock(&self.inner);
            if let Some((f, host)) = inner
                .faults
                .values()
                .filter(|f| !f.dry_run && f.wanted(now))
                .find_map(|f| {
                    (Fault::key(&f.spec) == key)
                        .then(|| targets.iter().find(|t| f.agents.contains_key(*t)).map(|h| (f, h)))
                        .flatten()
                })
            {
                return Err(FaultError::Conflict(format!(
                    "agent {host:?} already has fault {} on {} (until {}); revert it first (DELETE /api/v1/faults/{})",
                    f.id,
                    f.spec.target(),
                    ms_to_rfc3339(f.expires_ms),
                    f.id
                )));
            }
        }
        let duration_ms = if req.dry_run {
            // A dry run is wanted until every agent answered (or this passes).
            i64::try_from(self.cfg.dry_run_wait.max(Duration::from_secs(10)).as_millis() * 6).unwrap_or(60_000)
        } else {
            req.duration_seconds.saturating_mul(1000)
        };
        let fault = Fault {
            id: new_id(),
            spec: req.spec,
            selector: req.targets.selector,
            dry_run: req.dry_run,
            forced: req.force,
            duration_seconds: if req.dry_run { 0 } else { req.duration_seconds },
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
                        },
                    )
                })
                .collect(),
        };
        let mut tx = self.write.begin().await?;
        sqlx::query(
            "INSERT INTO faults (id, kind, spec, selector, dry_run, forced, duration_seconds, created_ms, expires_ms) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&fault.id)
        .bind(fault.spec.kind().as_str())
        .bind(json(&fault.spec))
        .bind(json(&fault.selector))
        .bind(i64::from(fault.dry_run))
        .bind(i64::from(fault.forced))
        .bind(fault.duration_seconds)
        .bind(fault.created_ms)
        .bind(fault.expires_ms)
        .execute(&mut *tx)
        .await?;
        for t in &targets {
            sqlx::query(
                "INSERT INTO fault_agents (fault_id, agent, state, reason, operations, updated_ms) VALUES (?, ?, 'pending', NULL, '[]', ?)",
            )
            .bind(&fault.id)
            .bind(t)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        let info = fault.info();
        tracing::info!(id = %fault.id, kind = fault.spec.kind().as_str(), target = fault.spec.target(), agents = targets.len(),
            dry_run = fault.dry_run, forced = fault.forced, duration_s = fault.duration_seconds, "fault created");
        lock(&self.inner).faults.insert(fault.id.clone(), fault);
        self.bump(&targets);
        Ok(info)
    }

    fn lease_ms(&self) -> i64 {
        i64::try_from(self.cfg.lease.as_millis()).unwrap_or(i64::MAX)
    }

    /// One fault: from memory while live, else from the database.
    pub async fn get(&self, id: &str) -> Result<FaultInfo, FaultError> {
        let (now, lease) = (now_ms(), self.lease_ms());
        if let Some(info) = lock(&self.inner).faults.get(id).map(|f| f.info_at(now, lease)) {
            return Ok(info);
        }
        load_faults(&self.read, |q| {
            q.push("id = ").push_bind(id.to_owned());
        })
        .await?
        .first()
        .map(|f| f.info_at(now, lease))
        .ok_or_else(|| FaultError::NotFound(format!("no fault {id:?}")))
    }

    /// Faults newest first, at most `limit`, optionally only those whose
    /// status is `status` (`running`, `dry_run` or `ended`). Read from the
    /// database (the whole history); a live fault is shown as memory has it.
    pub async fn list(&self, status: Option<ListStatus>, limit: u32) -> Result<Vec<FaultInfo>, FaultError> {
        let mut v = load_faults(&self.read, |q| {
            q.push(match status {
                None => "1 = 1",
                Some(ListStatus::Running) => "ended_ms IS NULL AND dry_run = 0",
                Some(ListStatus::DryRun) => "ended_ms IS NULL AND dry_run <> 0",
                Some(ListStatus::Ended) => "ended_ms IS NOT NULL",
            })
            .push(" ORDER BY created_ms DESC, id LIMIT ")
            .push_bind(i64::from(limit));
        })
        .await?;
        let (now, lease) = (now_ms(), self.lease_ms());
        let inner = lock(&self.inner);
        for f in &mut v {
            if let Some(live) = inner.faults.get(&f.id) {
                f.clone_from(live);
            }
        }
        Ok(v.iter().map(|f| f.info_at(now, lease)).collect())
    }

    /// Whether every agent of a dry run has answered.
    pub fn dry_run_done(&self, id: &str) -> bool {
        lock(&self.inner)
            .faults
            .get(id)
            .is_none_or(|f| f.agents.values().all(|s| s.state != FaultState::Pending))
    }

    async fn persist_end(&self, ids: &[String], now: i64, reason: &str) -> Result<(), FaultError> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut tx = self.write.begin().await?;
        for id in ids {
            sqlx::query("UPDATE faults SET ended_ms = ?, end_reason = ? WHERE id = ? AND ended_ms IS NULL")
                .bind(now)
                .bind(reason)
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Ends a fault now (`DELETE`): its agents are woken and revert it.
    /// Ending an ended fault changes nothing.
    pub async fn end(&self, id: &str) -> Result<FaultInfo, FaultError> {
        let now = now_ms();
        let live = {
            let mut inner = lock(&self.inner);
            inner.faults.get_mut(id).map(|f| {
                let changed = f.ended_ms.is_none();
                if changed {
                    f.ended_ms = Some(now);
                    f.end_reason = Some(if now >= f.expires_ms { "expired" } else { "deleted" }.to_owned());
                }
                (f.info(), f.agents.keys().cloned().collect::<Vec<_>>(), changed)
            })
        };
        // Out of memory means settled: ended long ago, nothing to do.
        let Some((info, targets, changed)) = live else {
            return self.get(id).await;
        };
        if changed {
            self.persist_end(&[id.to_owned()], now, info.end_reason.as_deref().unwrap_or("deleted"))
                .await?;
            tracing::info!(id, "fault ended by the operator");
            self.bump(&targets);
        }
        Ok(info)
    }

    /// The kill switch: ends every fault and bumps the epoch, so every agent
    /// reverts every fault it has active, known here or not.
    pub async fn revert_all(&self) -> Result<RevertAllResponse, FaultError> {
        let now = now_ms();
        let (ended, epoch) = {
            let mut inner = lock(&self.inner);
            inner.revert_all_epoch += 1;
            let mut ended = Vec::new();
            for f in inner.faults.values_mut() {
                if f.ended_ms.is_none() {
                    f.ended_ms = Some(now);
                    f.end_reason = Some("revert_all".into());
                    ended.push(f.id.clone());
                }
            }
            (ended, inner.revert_all_epoch)
        };
        // Wake every agent before the database writes: the kill switch must
        // not wait for a disk.
        let hosts: Vec<String> = lock(&self.watchers).keys().cloned().collect();
        self.bump(&hosts);
        sqlx::query(
            "INSERT INTO fault_meta (name, value) VALUES ('revert_all_epoch', ?) \
             ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        )
        .bind(i64::try_from(epoch).unwrap_or(i64::MAX))
        .execute(&self.write)
        .await?;
        self.persist_end(&ended, now, "revert_all").await?;
        tracing::warn!(faults = ended.len(), agents = hosts.len(), epoch, "revert-all");
        Ok(RevertAllResponse {
            faults_ended: u64::try_from(ended.len()).unwrap_or(0),
            agents_notified: u64::try_from(hosts.len()).unwrap_or(0),
            revert_all_epoch: epoch,
        })
    }

    /// Marks faults whose time is up as ended ("expired") and wakes their
    /// agents (the agents' leases end at the same time anyway). Called every
    /// second by a background task.
    pub async fn expire(&self) -> Result<usize, FaultError> {
        let now = now_ms();
        let (ids, hosts) = {
            let mut inner = lock(&self.inner);
            let mut ids = Vec::new();
            let mut hosts = BTreeSet::new();
            for f in inner.faults.values_mut() {
                if f.ended_ms.is_none() && now >= f.expires_ms {
                    f.ended_ms = Some(now);
                    f.end_reason = Some("expired".into());
                    ids.push(f.id.clone());
                    hosts.extend(f.agents.keys().cloned());
                }
            }
            (ids, hosts)
        };
        self.bump(&hosts);
        self.persist_end(&ids, now, "expired").await?;
        self.prune(now);
        Ok(ids.len())
    }

    /// How many faults memory holds (the live ones).
    pub fn live_faults(&self) -> usize {
        lock(&self.inner).faults.len()
    }

    /// Drops settled faults from memory (their end is in the database:
    /// every path that sets `ended_ms` persists it before returning, and
    /// a fault settles only a whole lease later).
    fn prune(&self, now: i64) -> usize {
        let lease = self.lease_ms();
        let mut inner = lock(&self.inner);
        let before = inner.faults.len();
        inner.faults.retain(|_, f| !f.settled_at(now, lease));
        before - inner.faults.len()
    }

    /// The desired set of `host` right now, with version `counter`.
    pub fn desired(&self, host: &str, counter: u64) -> DesiredFaults {
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
            let lease_seconds = if f.dry_run {
                if st.state != FaultState::Pending {
                    continue;
                }
                lease_s
            } else {
                let left_ms = u64::try_from(f.expires_ms.saturating_sub(now)).unwrap_or(0);
                lease_s.min(left_ms.div_ceil(1000)).max(1)
            };
            faults.push(DesiredFault {
                id: f.id.clone(),
                spec: f.spec.clone(),
                lease_seconds,
                dry_run: f.dry_run,
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
        if !accepted.is_empty() {
            let mut tx = self.write.begin().await?;
            let mut stored = 0;
            for u in &accepted {
                stored += sqlx::query(
                    "UPDATE fault_agents SET state = ?, reason = ?, operations = ?, updated_ms = ? WHERE fault_id = ? AND agent = ?",
                )
                .bind(u.state.as_str())
                .bind(u.reason.as_deref())
                .bind(json(&u.operations))
                .bind(now)
                .bind(&u.id)
                .bind(host)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            }
            tx.commit().await?;
            self.status_tx.send_modify(|v| *v = v.wrapping_add(1));
            // Rows that matched nothing (no such fault, or not this agent's).
            ignored += u64::try_from(accepted.len()).unwrap_or(0).saturating_sub(stored);
            return Ok((stored, ignored));
        }
        Ok((0, ignored))
    }

    /// `(faults by status, assignments of wanted faults by per-agent state)`,
    /// for /metrics. Ended faults are counted in the database (memory holds
    /// only the live ones).
    pub async fn counts(&self) -> Result<(BTreeMap<&'static str, i64>, BTreeMap<&'static str, i64>), FaultError> {
        let now = now_ms();
        let ended: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM faults WHERE ended_ms IS NOT NULL OR expires_ms <= ?")
                .bind(now)
                .fetch_one(&self.read)
                .await?;
        let mut by_status: BTreeMap<&'static str, i64> = [("running", 0), ("dry_run", 0), ("ended", 0)].into();
        let mut by_state: BTreeMap<&'static str, i64> = [
            FaultState::Pending,
            FaultState::Active,
            FaultState::Reverted,
            FaultState::Failed,
            FaultState::Described,
        ]
        .iter()
        .map(|s| (s.as_str(), 0))
        .collect();
        for f in lock(&self.inner).faults.values() {
            let status = if !f.wanted(now) {
                "ended"
            } else if f.dry_run {
                "dry_run"
            } else {
                "running"
            };
            if status == "ended" {
                continue;
            }
            *by_status.entry(status).or_default() += 1;
            for s in f.agents.values() {
                *by_state.entry(s.state.as_str()).or_default() += 1;
            }
        }
        by_status.insert("ended", ended);
        Ok((by_status, by_state))
    }
}

/// Marks expired faults every second until the service is dropped.
pub fn spawn_expirer(svc: std::sync::Weak<crate::api::AppState>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            let Some(app) = svc.upgrade() else {
                return;
            };
            if let Err(e) = app.faults.expire().await {
                tracing::warn!(error = %e, "marking expired faults");
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use graydar_common::api::{AgentState, Capabilities};
    use graydar_common::fault_api::FaultTargets;

    fn agent(name: &str, rack: &str) -> AgentInfo {
        AgentInfo {
            hostname: name.into(),
            addresses: vec![],
            labels: BTreeMap::from([("rack".to_owned(), rack.to_owned())]),
            kernel_version: String::new(),
            agent_version: String::new(),
            capabilities: Capabilities::default(),
            registered_at: String::new(),
            last_seen: String::new(),
            state: AgentState::Healthy,
            firing_findings: 0,
        }
    }

    fn req(targets: FaultTargets, iface: &str) -> CreateFaultRequest {
        serde_json::from_value(serde_json::json!({
            "targets": targets,
            "spec": {"kind": "netem", "interface": iface, "netem": {"delay_ms": 100}},
            "duration_seconds": 60
        }))
        .expect("request")
    }

    #[test]
    fn selector_resolution_inventory_and_blast_radius() {
        let fleet = [
            agent("a1", "r1"),
            agent("a2", "r1"),
            agent("a3", "r2"),
            agent("a4", "r3"),
        ];
        let cfg = FaultConfig::default();
        let mut inv = HashMap::new();
        let sel = |r: &str| FaultTargets {
            agents: vec![],
            selector: BTreeMap::from([("rack".to_owned(), r.to_owned())]),
        };
        let t = resolve_targets(&req(sel("r1"), "eth0"), &fleet, &inv, &cfg).expect("2 of 4 = 50%");
        assert_eq!(t, ["a1", "a2"]);
        let e = resolve_targets(&req(sel("r9"), "eth0"), &fleet, &inv, &cfg).expect_err("no match");
        assert!(e.to_string().contains("rack=r9 matches no registered agent"), "{e}");
        let three = FaultTargets {
            agents: vec!["a1".into(), "a2".into(), "a3".into()],
            selector: BTreeMap::new(),
        };
        let e = resolve_targets(&req(three.clone(), "eth0"), &fleet, &inv, &cfg).expect_err("75%");
        assert!(matches!(e, FaultError::BlastRadius(_)));
        assert!(e.to_string().contains("3 of 4") && e.to_string().contains("75%"), "{e}");
        let mut forced = req(three, "eth0");
        forced.force = true;
        assert_eq!(resolve_targets(&forced, &fleet, &inv, &cfg).expect("forced").len(), 3);
        inv.insert(
            "a1".to_owned(),
            Inventory {
                interfaces: Some(vec!["eth0".into(), "lo".into()]),
                dm_devices: None,
            },
        );
        let e = resolve_targets(&req(sel("r1"), "eth9"), &fleet, &inv, &cfg).expect_err("eth9");
        assert_eq!(
            e.to_string(),
            "spec.interface: interface \"eth9\" does not exist on agent \"a1\" (it has eth0, lo)"
        );
        let unknown = FaultTargets {
            agents: vec!["nope".into()],
            selector: BTreeMap::new(),
        };
        let e = resolve_targets(&req(unknown, "eth0"), &fleet, &inv, &cfg).expect_err("unknown");
        assert!(e.to_string().contains("unknown agent \"nope\""), "{e}");
    }
}
