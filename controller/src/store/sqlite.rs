//! The SQLite store (sqlx). The migrations in `controller/migrations/` are
//! embedded in the binary and portable to PostgreSQL.
//!
//! Writes go through a single-connection pool (SQLite has one writer; one
//! connection avoids SQLITE_BUSY on lock upgrades), reads through a small
//! pool (WAL lets them run beside the writer). Batches of transitions go to
//! one writer task that commits whatever has queued up in one transaction
//! (group commit); a checkpointer task copies the WAL into the database.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use graydar_common::api::{BatchResponse, Evidence, Finding, FindingDetail, RegisterRequest, TransitionRecord};
use graydar_common::fault_api::FaultStatusUpdate;
use graydar_common::faults::FaultSpec;
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::sqlite::{
    Sqlite, SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{AssertSqlSafe, QueryBuilder, Row as _, SqlSafeStr as _};

use super::{
    AgentRecord, AgentStore, EndReason, FaultAgentRecord, FaultRecord, FaultSelection, FaultStatus, FaultStore,
    FindingFilter, FindingStore, Store, StoreError, StoreFuture, TimedTransition,
};
use crate::timefmt::{ms_to_rfc3339, now_ms};

/// The migrations, embedded in the binary in order (a test checks that every
/// file of `controller/migrations/` is listed here).
pub const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "init", include_str!("../../migrations/0001_init.sql")),
    (2, "faults", include_str!("../../migrations/0002_faults.sql")),
    (
        3,
        "fault_history",
        include_str!("../../migrations/0003_fault_history.sql"),
    ),
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

/// One request's transitions, checked, waiting for the group commit.
struct IngestJob {
    agent: String,
    items: Vec<TimedTransition>,
    reply: tokio::sync::oneshot::Sender<Result<BatchResponse, Arc<sqlx::Error>>>,
}

/// Most requests committed in one transaction.
const GROUP_COMMIT_MAX: usize = 256;

/// How often the WAL is copied into the database.
const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);

pub struct SqliteStore {
    ingest_tx: tokio::sync::mpsc::Sender<IngestJob>,
    write: SqlitePool,
    read: SqlitePool,
}

fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "null".to_owned())
}

fn parse_json<T: serde::de::DeserializeOwned>(what: &str, s: &str) -> Result<T, StoreError> {
    serde_json::from_str(s).map_err(|source| StoreError::Corrupt {
        what: what.to_owned(),
        source,
    })
}

fn enum_str<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// An enum stored by its serde name; `what` names the column in errors.
fn parse_enum<T: serde::de::DeserializeOwned>(what: &str, s: &str) -> Result<T, StoreError> {
    serde_json::from_value(serde_json::Value::String(s.to_owned())).map_err(|source| StoreError::Corrupt {
        what: format!("{what} {s:?}"),
        source,
    })
}

impl SqliteStore {
    /// Opens (creating) `<data_dir>/graydar.db` and runs the migrations.
    pub async fn open(data_dir: &Path) -> Result<SqliteStore, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|source| StoreError::CreateDir {
            path: data_dir.to_owned(),
            source,
        })?;
        Self::open_file(&data_dir.join("graydar.db")).await
    }

    pub async fn open_file(path: &Path) -> Result<SqliteStore, StoreError> {
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
        Ok(SqliteStore { ingest_tx, write, read })
    }

    // -----------------------------------------------------------------------
    // Agents

    async fn load_agents(&self) -> Result<Vec<AgentRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT hostname, addresses, labels, kernel_version, agent_version, capabilities, registered_ms, last_seen_ms FROM agents",
        )
        .fetch_all(&self.read)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            out.push(AgentRecord {
                req: RegisterRequest {
                    hostname: r.try_get("hostname")?,
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
            });
        }
        Ok(out)
    }

    async fn upsert_agent(&self, a: &AgentRecord) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO agents (hostname, addresses, labels, kernel_version, agent_version, capabilities, registered_ms, last_seen_ms) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?) \
             ON CONFLICT (hostname) DO UPDATE SET addresses = excluded.addresses, labels = excluded.labels, \
             kernel_version = excluded.kernel_version, agent_version = excluded.agent_version, \
             capabilities = excluded.capabilities, last_seen_ms = excluded.last_seen_ms",
        )
        .bind(&a.req.hostname)
        .bind(json(&a.req.addresses))
        .bind(json(&a.req.labels))
        .bind(&a.req.kernel_version)
        .bind(&a.req.agent_version)
        .bind(json(&a.req.capabilities))
        .bind(a.registered_ms)
        .bind(a.last_seen_ms)
        .execute(&self.write)
        .await?;
        Ok(())
    }

    async fn update_last_seen(&self, seen: &[(String, i64)]) -> Result<(), StoreError> {
        if seen.is_empty() {
            return Ok(());
        }
        let mut tx = self.write.begin().await?;
        for (name, at) in seen {
            sqlx::query("UPDATE agents SET last_seen_ms = ? WHERE hostname = ? AND last_seen_ms < ?")
                .bind(at)
                .bind(name)
                .bind(at)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
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

    // -----------------------------------------------------------------------
    // Findings

    async fn ingest(&self, agent: String, items: Vec<TimedTransition>) -> Result<BatchResponse, StoreError> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.ingest_tx
            .send(IngestJob { agent, items, reply })
            .await
            .map_err(|_| StoreError::WriterStopped)?;
        rx.await
            .map_err(|_| StoreError::WriterStopped)?
            .map_err(StoreError::Group)
    }

    fn finding_from_row(r: &SqliteRow) -> Result<Finding, StoreError> {
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

    async fn findings(&self, f: &FindingFilter) -> Result<Vec<Finding>, StoreError> {
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

    async fn finding(&self, id: &str) -> Result<Option<FindingDetail>, StoreError> {
        let Some(row) = sqlx::query(
            "SELECT id, agent, kind, subject, severity, state, since, last_seen, resolved_at, summary, evidence, runbook FROM findings WHERE id = ?",
        )
        .bind(id)
        .fetch_optional(&self.read)
        .await?
        else {
            return Ok(None);
        };
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
        Ok(Some(FindingDetail { finding, history }))
    }

    async fn transition_count(&self) -> Result<i64, StoreError> {
        let r = sqlx::query("SELECT COUNT(*) AS n FROM finding_transitions")
            .fetch_one(&self.read)
            .await?;
        Ok(r.try_get("n")?)
    }

    // -----------------------------------------------------------------------
    // Faults

    async fn load_faults(&self, which: FaultSelection<'_>) -> Result<Vec<FaultRecord>, StoreError> {
        let mut q = QueryBuilder::new(
            "SELECT id, spec, selector, dry_run, forced, duration_seconds, created_ms, expires_ms, ended_ms, end_reason \
             FROM faults WHERE ",
        );
        push_selection(&mut q, which);
        // Both queries in one read transaction (one snapshot).
        let mut tx = self.read.begin().await?;
        let mut faults = Vec::new();
        let mut index = HashMap::new();
        for r in q.build().fetch_all(&mut *tx).await? {
            let id: String = r.try_get("id")?;
            let spec: FaultSpec = parse_json("fault spec", &r.try_get::<String, _>("spec")?)?;
            let selector = parse_json("fault selector", &r.try_get::<String, _>("selector")?)?;
            let end_reason = match r.try_get::<Option<String>, _>("end_reason")? {
                None => None,
                Some(s) => Some(EndReason::parse(&s).ok_or(StoreError::UnknownValue {
                    what: "fault end reason",
                    value: s,
                })?),
            };
            index.insert(id.clone(), faults.len());
            faults.push(FaultRecord {
                id,
                spec,
                selector,
                dry_run: r.try_get::<i64, _>("dry_run")? != 0,
                forced: r.try_get::<i64, _>("forced")? != 0,
                duration_seconds: r.try_get("duration_seconds")?,
                created_ms: r.try_get("created_ms")?,
                expires_ms: r.try_get("expires_ms")?,
                ended_ms: r.try_get("ended_ms")?,
                end_reason,
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
        push_selection(&mut q, which);
        q.push(")");
        for r in q.build().fetch_all(&mut *tx).await? {
            let fid: String = r.try_get("fault_id")?;
            if let Some(f) = index.get(&fid).and_then(|&i| faults.get_mut(i)) {
                let state = r.try_get::<String, _>("state")?;
                f.agents.insert(
                    r.try_get("agent")?,
                    FaultAgentRecord {
                        state: serde_json::from_value(serde_json::Value::String(state)).map_err(|source| {
                            StoreError::Corrupt {
                                what: "fault state".to_owned(),
                                source,
                            }
                        })?,
                        reason: r.try_get("reason")?,
                        operations: parse_json("fault operations", &r.try_get::<String, _>("operations")?)?,
                        updated_ms: r.try_get("updated_ms")?,
                    },
                );
            }
        }
        Ok(faults)
    }

    async fn insert_fault(&self, f: &FaultRecord) -> Result<(), StoreError> {
        let mut tx = self.write.begin().await?;
        sqlx::query(
            "INSERT INTO faults (id, kind, spec, selector, dry_run, forced, duration_seconds, created_ms, expires_ms) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&f.id)
        .bind(f.spec.kind().to_string())
        .bind(json(&f.spec))
        .bind(json(&f.selector))
        .bind(i64::from(f.dry_run))
        .bind(i64::from(f.forced))
        .bind(f.duration_seconds)
        .bind(f.created_ms)
        .bind(f.expires_ms)
        .execute(&mut *tx)
        .await?;
        for (agent, s) in &f.agents {
            sqlx::query(
                "INSERT INTO fault_agents (fault_id, agent, state, reason, operations, updated_ms) VALUES (?, ?, ?, ?, ?, ?)",
            )
            .bind(&f.id)
            .bind(agent)
            .bind(s.state.as_str())
            .bind(s.reason.as_deref())
            .bind(json(&s.operations))
            .bind(s.updated_ms)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn end_faults(&self, ids: &[String], ended_ms: i64, reason: EndReason) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut tx = self.write.begin().await?;
        for id in ids {
            sqlx::query("UPDATE faults SET ended_ms = ?, end_reason = ? WHERE id = ? AND ended_ms IS NULL")
                .bind(ended_ms)
                .bind(reason.as_str())
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn update_fault_states(
        &self,
        agent: &str,
        updates: &[FaultStatusUpdate],
        now_ms: i64,
    ) -> Result<u64, StoreError> {
        if updates.is_empty() {
            return Ok(0);
        }
        let mut tx = self.write.begin().await?;
        let mut stored = 0;
        for u in updates {
            stored += sqlx::query(
                "UPDATE fault_agents SET state = ?, reason = ?, operations = ?, updated_ms = ? WHERE fault_id = ? AND agent = ?",
            )
            .bind(u.state.as_str())
            .bind(u.reason.as_deref())
            .bind(json(&u.operations))
            .bind(now_ms)
            .bind(&u.id)
            .bind(agent)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        }
        tx.commit().await?;
        Ok(stored)
    }

    async fn count_ended_faults(&self, now_ms: i64) -> Result<i64, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT COUNT(*) FROM faults WHERE ended_ms IS NOT NULL OR expires_ms <= ?")
                .bind(now_ms)
                .fetch_one(&self.read)
                .await?,
        )
    }

    async fn revert_all_epoch(&self) -> Result<u64, StoreError> {
        let epoch: Option<i64> = sqlx::query("SELECT value FROM fault_meta WHERE name = 'revert_all_epoch'")
            .fetch_optional(&self.read)
            .await?
            .map(|r| r.try_get("value"))
            .transpose()?;
        Ok(u64::try_from(epoch.unwrap_or(0)).unwrap_or(0))
    }

    async fn set_revert_all_epoch(&self, epoch: u64) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO fault_meta (name, value) VALUES ('revert_all_epoch', ?) \
             ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        )
        .bind(i64::try_from(epoch).unwrap_or(i64::MAX))
        .execute(&self.write)
        .await?;
        Ok(())
    }

    // -----------------------------------------------------------------------

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.read).await?;
        sqlx::query("SELECT 1").execute(&self.write).await?;
        Ok(())
    }

    async fn close(&self) {
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

/// The condition after `WHERE` that selects `which` (it may end with
/// `ORDER BY` and `LIMIT`).
fn push_selection(q: &mut QueryBuilder<Sqlite>, which: FaultSelection<'_>) {
    match which {
        FaultSelection::Live { now_ms, lease_ms } => {
            q.push("ended_ms IS NULL OR MIN(ended_ms, expires_ms) + ")
                .push_bind(lease_ms)
                .push(" > ")
                .push_bind(now_ms);
        }
        FaultSelection::Id(id) => {
            q.push("id = ").push_bind(id.to_owned());
        }
        FaultSelection::Newest { status, limit } => {
            q.push(match status {
                None => "1 = 1",
                Some(FaultStatus::Running) => "ended_ms IS NULL AND dry_run = 0",
                Some(FaultStatus::DryRun) => "ended_ms IS NULL AND dry_run <> 0",
                Some(FaultStatus::Ended) => "ended_ms IS NOT NULL",
            })
            .push(" ORDER BY created_ms DESC, id LIMIT ")
            .push_bind(i64::from(limit));
        }
    }
}

impl AgentStore for SqliteStore {
    fn load_agents(&self) -> StoreFuture<'_, Vec<AgentRecord>> {
        Box::pin(SqliteStore::load_agents(self))
    }

    fn upsert_agent<'a>(&'a self, agent: &'a AgentRecord) -> StoreFuture<'a, ()> {
        Box::pin(SqliteStore::upsert_agent(self, agent))
    }

    fn update_last_seen<'a>(&'a self, seen: &'a [(String, i64)]) -> StoreFuture<'a, ()> {
        Box::pin(SqliteStore::update_last_seen(self, seen))
    }

    fn firing_counts<'a>(&'a self, agent: Option<&'a str>) -> StoreFuture<'a, HashMap<String, u64>> {
        Box::pin(SqliteStore::firing_counts(self, agent))
    }
}

impl FindingStore for SqliteStore {
    fn ingest(&self, agent: String, items: Vec<TimedTransition>) -> StoreFuture<'_, BatchResponse> {
        Box::pin(SqliteStore::ingest(self, agent, items))
    }

    fn findings<'a>(&'a self, f: &'a FindingFilter) -> StoreFuture<'a, Vec<Finding>> {
        Box::pin(SqliteStore::findings(self, f))
    }

    fn finding<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<FindingDetail>> {
        Box::pin(SqliteStore::finding(self, id))
    }

    fn transition_count(&self) -> StoreFuture<'_, i64> {
        Box::pin(SqliteStore::transition_count(self))
    }
}

impl FaultStore for SqliteStore {
    fn load_faults<'a>(&'a self, which: FaultSelection<'a>) -> StoreFuture<'a, Vec<FaultRecord>> {
        Box::pin(SqliteStore::load_faults(self, which))
    }

    fn insert_fault<'a>(&'a self, fault: &'a FaultRecord) -> StoreFuture<'a, ()> {
        Box::pin(SqliteStore::insert_fault(self, fault))
    }

    fn end_faults<'a>(&'a self, ids: &'a [String], ended_ms: i64, reason: EndReason) -> StoreFuture<'a, ()> {
        Box::pin(SqliteStore::end_faults(self, ids, ended_ms, reason))
    }

    fn update_fault_states<'a>(
        &'a self,
        agent: &'a str,
        updates: &'a [FaultStatusUpdate],
        now_ms: i64,
    ) -> StoreFuture<'a, u64> {
        Box::pin(SqliteStore::update_fault_states(self, agent, updates, now_ms))
    }

    fn count_ended_faults(&self, now_ms: i64) -> StoreFuture<'_, i64> {
        Box::pin(SqliteStore::count_ended_faults(self, now_ms))
    }

    fn revert_all_epoch(&self) -> StoreFuture<'_, u64> {
        Box::pin(SqliteStore::revert_all_epoch(self))
    }

    fn set_revert_all_epoch(&self, epoch: u64) -> StoreFuture<'_, ()> {
        Box::pin(SqliteStore::set_revert_all_epoch(self, epoch))
    }
}

impl Store for SqliteStore {
    fn ping(&self) -> StoreFuture<'_, ()> {
        Box::pin(SqliteStore::ping(self))
    }

    fn close(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(SqliteStore::close(self))
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
                let e = Arc::new(e);
                for job in jobs.drain(..) {
                    let _ = job.reply.send(Err(e.clone()));
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
        for TimedTransition { at_ms, transition: t } in &job.items {
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
            .bind(&job.agent)
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
            .bind(&job.agent)
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
}
