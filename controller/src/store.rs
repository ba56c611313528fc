//! Storage: agents and findings in SQLite through sqlx (the migrations in
//! `controller/migrations/` are portable to PostgreSQL).
//!
//! Writes go through a single-connection pool (SQLite has one writer; one
//! connection avoids SQLITE_BUSY on lock upgrades), reads through a small
//! pool (WAL lets them run beside the writer). Agents are cached in memory:
//! a heartbeat only touches the cache and the `last_seen` of agents heard
//! from is flushed in one transaction every few seconds.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use graydar_common::api::{
    AgentInfo, AgentState, BatchResponse, Evidence, Finding, FindingDetail, FindingKind, FindingState,
    FindingTransition, RegisterRequest, Severity, TransitionKind, TransitionRecord, finding_id,
};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{AssertSqlSafe, Row as _, SqlSafeStr as _};

use crate::timefmt::{ms_to_rfc3339, now_ms, rfc3339_to_ms};

/// The migrations, embedded in the binary in order (a test checks that every
/// file of `controller/migrations/` is listed here).
pub const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "init", include_str!("../migrations/0001_init.sql")),
    (2, "faults", include_str!("../migrations/0002_faults.sql")),
    (3, "fault_history", include_str!("../migrations/0003_fault_history.sql")),
];

pub fn migrator() -> Migrator {
    let migrations: Vec<Migration> = MIGRATIONS
        .iter()
        .map(|(v, desc, sql)| {
            Migration::new(
                *v,
                Cow::Borrowed(*desc),
                MigrationType::Simple,
                AssertSqlSafe(*sql).into_sql_str(),
                false,
            )
        })
        .collect();
    Migrator {
        migrations: Cow::Owned(migrations),
        ..Migrator::DEFAULT
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    #[error("corrupt row: {0}")]
    Corrupt(String),
}

/// When agents count as stale / lost.
#[derive(Clone, Copy, Debug)]
pub struct Liveness {
    pub stale_after: Duration,
    pub lost_after: Duration,
}

impl Liveness {
    pub fn state(&self, last_seen_ms: i64, now_ms: i64) -> AgentState {
        let age = u128::try_from(now_ms.saturating_sub(last_seen_ms).max(0)).unwrap_or(0);
        if age >= self.lost_after.as_millis() {
            AgentState::Lost
        } else if age >= self.stale_after.as_millis() {
            AgentState::Stale
        } else {
            AgentState::Healthy
        }
    }
}

#[derive(Clone, Debug)]
struct AgentRow {
    req: RegisterRequest,
    registered_ms: i64,
    last_seen_ms: i64,
}

/// Filters of the findings list.
#[derive(Clone, Debug, Default)]
pub struct FindingFilter {
    pub kind: Option<FindingKind>,
    pub severity: Option<Severity>,
    pub state: Option<FindingState>,
    pub agent: Option<String>,
    /// Updated at or after (ms since the epoch).
    pub since_ms: Option<i64>,
    pub limit: u32,
}

/// One request's transitions, validated, waiting for the group commit.
struct IngestJob {
    hostname: String,
    items: Vec<(i64, FindingTransition)>,
    reply: tokio::sync::oneshot::Sender<Result<BatchResponse, String>>,
}

/// Most requests committed in one transaction.
const GROUP_COMMIT_MAX: usize = 256;

pub struct Store {
    /// Batches of transitions go to one writer task that commits whatever
    /// has queued up in one transaction (group commit).
    ingest_tx: tokio::sync::mpsc::Sender<IngestJob>,
    write: SqlitePool,
    read: SqlitePool,
    agents: Mutex<HashMap<String, AgentRow>>,
    dirty: Mutex<HashSet<String>>,
    liveness: Liveness,
    /// The path matrix (in memory: live state, re-reported every interval).
    paths: Mutex<crate::paths::Paths>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "null".to_owned())
}

fn parse_json<T: serde::de::DeserializeOwned>(what: &str, s: &str) -> Result<T, StoreError> {
    serde_json::from_str(s).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
}

fn enum_str<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn parse_enum<T: serde::de::DeserializeOwned>(what: &str, s: &str) -> Result<T, StoreError> {
    serde_json::from_value(serde_json::Value::String(s.to_owned()))
        .map_err(|e| StoreError::Corrupt(format!("{what} {s:?}: {e}")))
}

impl Store {
    /// Opens (creating) `<data_dir>/graydar.db` and runs the migrations.
    pub async fn open(data_dir: &Path, liveness: Liveness) -> Result<Store, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|e| {
            StoreError::Invalid(format!("cannot create the data directory {}: {e}", data_dir.display()))
        })?;
        Self::open_file(&data_dir.join("graydar.db"), liveness).await
    }

    pub async fn open_file(path: &Path, liveness: Liveness) -> Result<Store, StoreError> {
        let opts = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // Durable against a process crash (kill -9); an OS crash may lose
            // the last transactions, which agents re-deliver.
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true)
            // Checkpoints run from a background task (see `checkpointer`),
            // not inside the commit of whichever write crosses the threshold.
            .pragma("wal_autocheckpoint", "0");
        let write = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(opts.clone())
            .await?;
        migrator().run(&write).await?;
        let checkpoint = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(opts.clone())
            .await?;
        tokio::spawn(checkpointer(checkpoint));
        let read = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(opts.read_only(true))
            .await?;
        let (ingest_tx, ingest_rx) = tokio::sync::mpsc::channel(4096);
        tokio::spawn(writer(write.clone(), ingest_rx));
        let store = Store {
            ingest_tx,
            write,
            read,
            agents: Mutex::new(HashMap::new()),
            dirty: Mutex::new(HashSet::new()),
            liveness,
            paths: Mutex::new(crate::paths::Paths::default()),
        };
        store.load_agents().await?;
        Ok(store)
    }

    async fn load_agents(&self) -> Result<(), StoreError> {
        let rows = sqlx::query(
            "SELECT hostname, addresses, labels, kernel_version, agent_version, capabilities, registered_ms, last_seen_ms FROM agents",
        )
        .fetch_all(&self.read)
        .await?;
        let mut map = HashMap::new();
        for r in rows {
            let hostname: String = r.try_get("hostname")?;
            let row = AgentRow {
                req: RegisterRequest {
                    hostname: hostname.clone(),
                    addresses: parse_json("addresses", &r.try_get::<String, _>("addresses")?)?,
                    labels: parse_json("labels", &r.try_get::<String, _>("labels")?)?,
                    kernel_version: r.try_get("kernel_version")?,
                    agent_version: r.try_get("agent_version")?,
                    capabilities: parse_json("capabilities", &r.try_get::<String, _>("capabilities")?)?,
                    // Not stored: the fault inventory is reported again by every heartbeat.
                    interfaces: None,
                    dm_devices: None,
                },
                registered_ms: r.try_get("registered_ms")?,
                last_seen_ms: r.try_get("last_seen_ms")?,
            };
            map.insert(hostname, row);
        }
        *lock(&self.agents) = map;
        Ok(())
    }

    /// `SELECT 1` on both pools.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.read).await?;
        sqlx::query("SELECT 1").execute(&self.write).await?;
        Ok(())
    }

    /// The write (single-connection) and read pools, for modules with their
    /// own tables (controller/src/faults/).
    pub fn pools(&self) -> (&SqlitePool, &SqlitePool) {
        (&self.write, &self.read)
    }

    /// The path matrix and mesh members (controller/src/paths/).
    pub fn paths(&self) -> std::sync::MutexGuard<'_, crate::paths::Paths> {
        lock(&self.paths)
    }

    pub fn liveness(&self) -> Liveness {
        self.liveness
    }

    /// Count of agents by state, now.
    pub fn agent_states(&self) -> BTreeMap<&'static str, u64> {
        let now = now_ms();
        let mut out: BTreeMap<&'static str, u64> = AgentState::ALL.iter().map(|s| (s.as_str(), 0)).collect();
        for a in lock(&self.agents).values() {
            *out.entry(self.liveness.state(a.last_seen_ms, now).as_str())
                .or_default() += 1;
        }
        out
    }

    pub async fn register(&self, req: RegisterRequest) -> Result<AgentInfo, StoreError> {
        if req.hostname.is_empty() || req.hostname.len() > 253 {
            return Err(StoreError::Invalid("hostname must be 1 to 253 characters".into()));
        }
        let now = now_ms();
        let registered_ms = lock(&self.agents).get(&req.hostname).map_or(now, |a| a.registered_ms);
        sqlx::query(
            "INSERT INTO agents (hostname, addresses, labels, kernel_version, agent_version, capabilities, registered_ms, last_seen_ms) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?) \
             ON CONFLICT (hostname) DO UPDATE SET addresses = excluded.addresses, labels = excluded.labels, \
             kernel_version = excluded.kernel_version, agent_version = excluded.agent_version, \
             capabilities = excluded.capabilities, last_seen_ms = excluded.last_seen_ms",
        )
        .bind(&req.hostname)
        .bind(json(&req.addresses))
        .bind(json(&req.labels))
        .bind(&req.kernel_version)
        .bind(&req.agent_version)
        .bind(json(&req.capabilities))
        .bind(registered_ms)
        .bind(now)
        .execute(&self.write)
        .await?;
        let row = AgentRow {
            req: req.clone(),
            registered_ms,
            last_seen_ms: now,
        };
        lock(&self.agents).insert(req.hostname.clone(), row);
        self.agent(&req.hostname).await
    }

    /// Marks the agent as heard from now (in memory; see [`Store::flush`]).
    pub fn touch(&self, hostname: &str) -> Result<AgentState, StoreError> {
        let now = now_ms();
        let mut agents = lock(&self.agents);
        let a = agents
            .get_mut(hostname)
            .ok_or_else(|| StoreError::NotFound(format!("agent {hostname:?} is not registered")))?;
        a.last_seen_ms = now;
        lock(&self.dirty).insert(hostname.to_owned());
        Ok(AgentState::Healthy)
    }

    /// Writes the `last_seen` of agents heard from since the last flush.
    pub async fn flush(&self) -> Result<usize, StoreError> {
        let dirty: Vec<(String, i64)> = {
            let names: Vec<String> = lock(&self.dirty).drain().collect();
            let agents = lock(&self.agents);
            names
                .into_iter()
                .filter_map(|n| agents.get(&n).map(|a| (n, a.last_seen_ms)))
                .collect()
        };
        if dirty.is_empty() {
            return Ok(0);
        }
        let mut tx = self.write.begin().await?;
        for (name, seen) in &dirty {
            sqlx::query("UPDATE agents SET last_seen_ms = ? WHERE hostname = ? AND last_seen_ms < ?")
                .bind(seen)
                .bind(name)
                .bind(seen)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(dirty.len())
    }

    async fn firing_counts(&self, agent: Option<&str>) -> Result<HashMap<String, u64>, StoreError> {
        let rows = match agent {
            Some(a) => {
                sqlx::query(
                    "SELECT agent, COUNT(*) AS n FROM findings WHERE state = 'firing' AND agent = ? GROUP BY agent",
                )
                .bind(a)
                .fetch_all(&self.read)
                .await?
            }
            None => {
                sqlx::query("SELECT agent, COUNT(*) AS n FROM findings WHERE state = 'firing' GROUP BY agent")
                    .fetch_all(&self.read)
                    .await?
            }
        };
        let mut out = HashMap::new();
        for r in rows {
            let n: i64 = r.try_get("n")?;
            out.insert(r.try_get::<String, _>("agent")?, u64::try_from(n).unwrap_or(0));
        }
        Ok(out)
    }

    fn info(&self, a: &AgentRow, firing: u64, now: i64) -> AgentInfo {
        AgentInfo {
            hostname: a.req.hostname.clone(),
            addresses: a.req.addresses.clone(),
            labels: a.req.labels.clone(),
            kernel_version: a.req.kernel_version.clone(),
            agent_version: a.req.agent_version.clone(),
            capabilities: a.req.capabilities.clone(),
            registered_at: ms_to_rfc3339(a.registered_ms),
            last_seen: ms_to_rfc3339(a.last_seen_ms),
            state: self.liveness.state(a.last_seen_ms, now),
            firing_findings: firing,
        }
    }

    pub async fn agents(&self) -> Result<Vec<AgentInfo>, StoreError> {
        let firing = self.firing_counts(None).await?;
        let now = now_ms();
        let mut out: Vec<AgentInfo> = lock(&self.agents)
            .values()
            .map(|a| self.info(a, firing.get(&a.req.hostname).copied().unwrap_or(0), now))
            .collect();
        out.sort_by(|a, b| a.hostname.cmp(&b.hostname));
        Ok(out)
    }

    pub async fn agent(&self, hostname: &str) -> Result<AgentInfo, StoreError> {
        let firing = self.firing_counts(Some(hostname)).await?;
        let agents = lock(&self.agents);
        let a = agents
            .get(hostname)
            .ok_or_else(|| StoreError::NotFound(format!("no agent {hostname:?}")))?;
        Ok(self.info(a, firing.get(hostname).copied().unwrap_or(0), now_ms()))
    }

    /// Checks a transition against the agent that sends it.
    fn validate(hostname: &str, t: &FindingTransition) -> Result<i64, StoreError> {
        let f = &t.finding;
        if f.host != hostname {
            return Err(StoreError::Invalid(format!(
                "finding {} belongs to host {:?}, not to agent {hostname:?}",
                f.id, f.host
            )));
        }
        let expected = finding_id(&f.host, f.kind, &f.subject);
        if f.id != expected {
            return Err(StoreError::Invalid(format!(
                "finding id {:?} does not match host, kind and subject (expected {expected})",
                f.id
            )));
        }
        let state_ok = match t.transition {
            TransitionKind::Fired | TransitionKind::SeverityChanged => f.state == FindingState::Firing,
            TransitionKind::Resolved => f.state == FindingState::Resolved,
        };
        if !state_ok {
            return Err(StoreError::Invalid(format!(
                "transition {} of finding {} carries state {:?}",
                t.transition, f.id, f.state
            )));
        }
        rfc3339_to_ms(&f.since).map_err(|e| StoreError::Invalid(format!("finding.since: {e}")))?;
        rfc3339_to_ms(&t.at).map_err(|e| StoreError::Invalid(format!("at: {e}")))
    }

    /// Stores a batch of transitions (in one transaction, possibly shared
    /// with other requests: group commit). Transitions already stored (same
    /// finding, transition and time) are counted as duplicates and change
    /// nothing; a finding's row follows its newest transition.
    pub async fn ingest(&self, hostname: &str, batch: Vec<FindingTransition>) -> Result<BatchResponse, StoreError> {
        if !lock(&self.agents).contains_key(hostname) {
            return Err(StoreError::NotFound(format!("agent {hostname:?} is not registered")));
        }
        let mut items = Vec::with_capacity(batch.len());
        for t in batch {
            items.push((Self::validate(hostname, &t)?, t));
        }
        self.touch(hostname)?;
        if items.is_empty() {
            return Ok(BatchResponse {
                accepted: 0,
                duplicates: 0,
            });
        }
        let (reply, rx) = tokio::sync::oneshot::channel();
        let gone = || StoreError::Invalid("the database writer stopped".into());
        self.ingest_tx
            .send(IngestJob {
                hostname: hostname.to_owned(),
                items,
                reply,
            })
            .await
            .map_err(|_| gone())?;
        rx.await
            .map_err(|_| gone())?
            .map_err(|e| StoreError::Db(sqlx::Error::Protocol(e)))
    }

    fn finding_from_row(r: &sqlx::sqlite::SqliteRow) -> Result<Finding, StoreError> {
        Ok(Finding {
            id: r.try_get("id")?,
            host: r.try_get("agent")?,
            kind: parse_enum("kind", &r.try_get::<String, _>("kind")?)?,
            subject: r.try_get("subject")?,
            severity: parse_enum("severity", &r.try_get::<String, _>("severity")?)?,
            state: parse_enum("state", &r.try_get::<String, _>("state")?)?,
            since: r.try_get("since")?,
            last_seen: r.try_get("last_seen")?,
            resolved_at: r.try_get("resolved_at")?,
            summary: r.try_get("summary")?,
            evidence: parse_json::<BTreeMap<String, Evidence>>("evidence", &r.try_get::<String, _>("evidence")?)?,
            runbook: r.try_get("runbook")?,
        })
    }

    /// Findings matching `f`: firing first, then newest first.
    pub async fn findings(&self, f: &FindingFilter) -> Result<Vec<Finding>, StoreError> {
        let mut sql = String::from(
            "SELECT id, agent, kind, subject, severity, state, since, last_seen, resolved_at, summary, evidence, runbook FROM findings WHERE 1 = 1",
        );
        let mut binds: Vec<String> = Vec::new();
        if let Some(k) = f.kind {
            sql.push_str(" AND kind = ?");
            binds.push(k.as_str().to_owned());
        }
        if let Some(s) = f.severity {
            sql.push_str(" AND severity = ?");
            binds.push(s.as_str().to_owned());
        }
        if let Some(s) = f.state {
            sql.push_str(" AND state = ?");
            binds.push(enum_str(&s));
        }
        if let Some(a) = &f.agent {
            sql.push_str(" AND agent = ?");
            binds.push(a.clone());
        }
        if f.since_ms.is_some() {
            sql.push_str(" AND state_at_ms >= ?");
        }
        sql.push_str(" ORDER BY CASE WHEN state = 'firing' THEN 0 ELSE 1 END, state_at_ms DESC, id LIMIT ?");
        let mut q = sqlx::query(AssertSqlSafe(sql));
        for b in binds {
            q = q.bind(b);
        }
        if let Some(s) = f.since_ms {
            q = q.bind(s);
        }
        q = q.bind(i64::from(f.limit));
        let rows = q.fetch_all(&self.read).await?;
        rows.iter().map(Self::finding_from_row).collect()
    }

    pub async fn finding(&self, id: &str) -> Result<FindingDetail, StoreError> {
        let row = sqlx::query(
            "SELECT id, agent, kind, subject, severity, state, since, last_seen, resolved_at, summary, evidence, runbook FROM findings WHERE id = ?",
        )
        .bind(id)
        .fetch_optional(&self.read)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("no finding {id:?}")))?;
        let finding = Self::finding_from_row(&row)?;
        let rows = sqlx::query(
            "SELECT transition, at, severity, summary, evidence, received_ms FROM finding_transitions \
             WHERE finding_id = ? ORDER BY at_ms, received_ms",
        )
        .bind(id)
        .fetch_all(&self.read)
        .await?;
        let mut history = Vec::with_capacity(rows.len());
        for r in rows {
            history.push(TransitionRecord {
                transition: parse_enum("transition", &r.try_get::<String, _>("transition")?)?,
                at: r.try_get("at")?,
                severity: parse_enum("severity", &r.try_get::<String, _>("severity")?)?,
                summary: r.try_get("summary")?,
                evidence: parse_json("evidence", &r.try_get::<String, _>("evidence")?)?,
                received_at: ms_to_rfc3339(r.try_get("received_ms")?),
            });
        }
        Ok(FindingDetail { finding, history })
    }

    /// Transitions stored in total (for tests and the benchmark).
    pub async fn transition_count(&self) -> Result<i64, StoreError> {
        let r = sqlx::query("SELECT COUNT(*) AS n FROM finding_transitions")
            .fetch_one(&self.read)
            .await?;
        Ok(r.try_get("n")?)
    }

    pub async fn close(&self) {
        if let Err(e) = self.flush().await {
            tracing::warn!(error = %e, "flushing agents' last_seen at shutdown");
        }
        if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
            .execute(&self.write)
            .await
        {
            tracing::warn!(error = %e, "final WAL checkpoint");
        }
        self.write.close().await;
        self.read.close().await;
    }
}

/// Copies the WAL into the database every second from its own connection
/// (a PASSIVE checkpoint never blocks the writer), so no ingest request pays
/// for a checkpoint and its fsync; TRUNCATE at shutdown.
async fn checkpointer(pool: SqlitePool) {
    let mut tick = tokio::time::interval(CHECKPOINT_INTERVAL);
    loop {
        tick.tick().await;
        if pool.is_closed() {
            return;
        }
        if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)").execute(&pool).await {
            if pool.is_closed() {
                return;
            }
            tracing::warn!(error = %e, "WAL checkpoint");
        }
    }
}

const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);

/// The group-commit writer: takes every job queued (up to
/// [`GROUP_COMMIT_MAX`]) and stores them in one transaction, in order.
async fn writer(pool: SqlitePool, mut rx: tokio::sync::mpsc::Receiver<IngestJob>) {
    let mut jobs = Vec::with_capacity(GROUP_COMMIT_MAX);
    while rx.recv_many(&mut jobs, GROUP_COMMIT_MAX).await > 0 {
        match write_group(&pool, &jobs).await {
            Ok(results) => {
                for (job, r) in jobs.drain(..).zip(results) {
                    let _ = job.reply.send(Ok(r));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, requests = jobs.len(), "storing transitions");
                for job in jobs.drain(..) {
                    let _ = job.reply.send(Err(e.to_string()));
                }
            }
        }
    }
}

async fn write_group(pool: &SqlitePool, jobs: &[IngestJob]) -> Result<Vec<BatchResponse>, sqlx::Error> {
    let now = now_ms();
    let mut out = Vec::with_capacity(jobs.len());
    let mut tx = pool.begin().await?;
    for job in jobs {
        let (mut accepted, mut duplicates) = (0, 0);
        for (at_ms, t) in &job.items {
            let f = &t.finding;
            let evidence = json(&f.evidence);
            let severity = enum_str(&f.severity);
            let inserted = sqlx::query(
                "INSERT INTO finding_transitions (finding_id, transition, at_ms, at, agent, severity, summary, evidence, received_ms) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            )
            .bind(&f.id)
            .bind(t.transition.as_str())
            .bind(at_ms)
            .bind(&t.at)
            .bind(&job.hostname)
            .bind(&severity)
            .bind(&f.summary)
            .bind(&evidence)
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if inserted == 0 {
                duplicates += 1;
                continue;
            }
            accepted += 1;
            sqlx::query(
                "INSERT INTO findings (id, agent, kind, subject, severity, state, since, last_seen, resolved_at, summary, evidence, runbook, state_at_ms, updated_ms) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
                 ON CONFLICT (id) DO UPDATE SET severity = excluded.severity, state = excluded.state, since = excluded.since, \
                 last_seen = excluded.last_seen, resolved_at = excluded.resolved_at, summary = excluded.summary, \
                 evidence = excluded.evidence, runbook = excluded.runbook, state_at_ms = excluded.state_at_ms, \
                 updated_ms = excluded.updated_ms \
                 WHERE excluded.state_at_ms >= findings.state_at_ms",
            )
            .bind(&f.id)
            .bind(&job.hostname)
            .bind(f.kind.as_str())
            .bind(&f.subject)
            .bind(&severity)
            .bind(enum_str(&f.state))
            .bind(&f.since)
            .bind(&f.last_seen)
            .bind(f.resolved_at.as_deref())
            .bind(&f.summary)
            .bind(&evidence)
            .bind(&f.runbook)
            .bind(at_ms)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        out.push(BatchResponse { accepted, duplicates });
    }
    tx.commit().await?;
    Ok(out)
}

/// Parses a filter value through the type's serde name.
pub fn parse_filter<T: serde::de::DeserializeOwned>(what: &str, s: &str) -> Result<T, String> {
    serde_json::from_value(serde_json::Value::String(s.to_owned())).map_err(|_| format!("unknown {what} {s:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_migration_file_is_embedded() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
        let mut files: Vec<String> = std::fs::read_dir(&dir)
            .expect("read migrations/")
            .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
            .filter(|n| n.ends_with(".sql"))
            .collect();
        files.sort();
        assert_eq!(files.len(), MIGRATIONS.len(), "migrations/ has {files:?}");
        for (f, (v, desc, _)) in files.iter().zip(MIGRATIONS) {
            assert_eq!(f, &format!("{v:04}_{desc}.sql"));
        }
    }

    #[test]
    fn liveness_thresholds() {
        let l = Liveness {
            stale_after: Duration::from_secs(30),
            lost_after: Duration::from_secs(300),
        };
        assert_eq!(l.state(0, 29_999), AgentState::Healthy);
        assert_eq!(l.state(0, 30_000), AgentState::Stale);
        assert_eq!(l.state(0, 300_000), AgentState::Lost);
        assert_eq!(l.state(10, 0), AgentState::Healthy);
    }
}
