//! Faults, their per-agent states and the revert-all epoch.

use std::collections::{BTreeMap, HashMap};

use graydar_common::fault_api::FaultStatusUpdate;
use graydar_common::faults::FaultSpec;
use graydar_common::timestamp::Timestamp;
use sqlx::sqlite::Sqlite;
use sqlx::{QueryBuilder, Row as _};

use super::{SqliteStore, json, parse_json};
use crate::store::{
    EndReason, FaultAgentRecord, FaultRecord, FaultSelection, FaultStatus, FaultStore, LeverRecord, StoreError,
    StoreFuture,
};

async fn load_faults(s: &SqliteStore, which: FaultSelection<'_>) -> Result<Vec<FaultRecord>, StoreError> {
    let mut q = QueryBuilder::new(
        "SELECT id, spec, selector, dry_run, forced, duration_seconds, lease_ms, created_ms, expires_ms, ended_ms, end_reason \
         FROM faults WHERE ",
    );
    push_selection(&mut q, which);
    // Both queries in one read transaction (one snapshot).
    let mut tx = s.read.begin().await?;
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
            lease_ms: r.try_get("lease_ms")?,
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
        "SELECT fault_id, agent, state, reason, operations, updated_ms, agent_at_ms FROM fault_agents \
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
                    agent_at_ms: r.try_get("agent_at_ms")?,
                },
            );
        }
    }
    Ok(faults)
}

async fn insert_fault(s: &SqliteStore, f: &FaultRecord) -> Result<(), StoreError> {
    let mut tx = s.write.begin().await?;
    sqlx::query(
        "INSERT INTO faults (id, kind, spec, selector, dry_run, forced, duration_seconds, lease_ms, created_ms, \
         expires_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(&f.id)
    .bind(f.spec.kind().as_str())
    .bind(json(&f.spec))
    .bind(json(&f.selector))
    .bind(i64::from(f.dry_run))
    .bind(i64::from(f.forced))
    .bind(f.duration_seconds)
    .bind(f.lease_ms)
    .bind(f.created_ms)
    .bind(f.expires_ms)
    .execute(&mut *tx)
    .await?;
    for (agent, s) in &f.agents {
        sqlx::query(
            "INSERT INTO fault_agents (fault_id, agent, state, reason, operations, updated_ms, agent_at_ms) \
             VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&f.id)
        .bind(agent)
        .bind(s.state.as_str())
        .bind(s.reason.as_deref())
        .bind(json(&s.operations))
        .bind(s.updated_ms)
        .bind(s.agent_at_ms)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

async fn end_faults(s: &SqliteStore, ids: &[String], ended_ms: i64, reason: EndReason) -> Result<(), StoreError> {
    if ids.is_empty() {
        return Ok(());
    }
    let mut tx = s.write.begin().await?;
    end_in(&mut tx, ids, ended_ms, reason).await?;
    tx.commit().await?;
    Ok(())
}

async fn end_in(
    tx: &mut sqlx::Transaction<'_, Sqlite>,
    ids: &[String],
    ended_ms: i64,
    reason: EndReason,
) -> Result<(), StoreError> {
    for id in ids {
        sqlx::query("UPDATE faults SET ended_ms = ?, end_reason = ? WHERE id = ? AND ended_ms IS NULL")
            .bind(ended_ms)
            .bind(reason.as_str())
            .bind(id)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

async fn update_fault_states(
    s: &SqliteStore,
    agent: &str,
    updates: &[FaultStatusUpdate],
    now_ms: i64,
) -> Result<u64, StoreError> {
    if updates.is_empty() {
        return Ok(0);
    }
    let mut tx = s.write.begin().await?;
    let mut stored = 0;
    for u in updates {
        stored += sqlx::query(
            "UPDATE fault_agents SET state = ?, reason = ?, operations = ?, updated_ms = ?, agent_at_ms = ? \
             WHERE fault_id = ? AND agent = ?",
        )
        .bind(u.state.as_str())
        .bind(u.reason.as_deref())
        .bind(json(&u.operations))
        .bind(now_ms)
        .bind(u.at.map(Timestamp::unix_ms))
        .bind(&u.id)
        .bind(agent)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    }
    tx.commit().await?;
    Ok(stored)
}

async fn count_ended_faults(s: &SqliteStore, now_ms: i64) -> Result<(i64, i64), StoreError> {
    let row = sqlx::query(
        "SELECT COUNT(*) AS ended, COALESCE(SUM(end_reason = 'failed'), 0) AS failed FROM faults \
         WHERE ended_ms IS NOT NULL OR expires_ms <= ?",
    )
    .bind(now_ms)
    .fetch_one(&s.read)
    .await?;
    Ok((row.try_get("ended")?, row.try_get("failed")?))
}

async fn revert_all_epoch(s: &SqliteStore) -> Result<u64, StoreError> {
    let epoch: Option<i64> = sqlx::query("SELECT value FROM fault_meta WHERE name = 'revert_all_epoch'")
        .fetch_optional(&s.read)
        .await?
        .map(|r| r.try_get("value"))
        .transpose()?;
    Ok(u64::try_from(epoch.unwrap_or(0)).unwrap_or(0))
}

async fn revert_all(s: &SqliteStore, epoch: u64, ids: &[String], ended_ms: i64) -> Result<(), StoreError> {
    let mut tx = s.write.begin().await?;
    sqlx::query(
        "INSERT INTO fault_meta (name, value) VALUES ('revert_all_epoch', ?) \
         ON CONFLICT (name) DO UPDATE SET value = excluded.value",
    )
    .bind(i64::try_from(epoch).unwrap_or(i64::MAX))
    .execute(&mut *tx)
    .await?;
    end_in(&mut tx, ids, ended_ms, EndReason::RevertAll).await?;
    tx.commit().await?;
    Ok(())
}

async fn safety_lever(s: &SqliteStore) -> Result<Option<LeverRecord>, StoreError> {
    let row = sqlx::query("SELECT engaged_ms, reason FROM safety_lever WHERE id = 1")
        .fetch_optional(&s.read)
        .await?;
    row.map(|r| {
        Ok(LeverRecord {
            engaged_ms: r.try_get("engaged_ms")?,
            reason: r.try_get("reason")?,
        })
    })
    .transpose()
}

async fn set_safety_lever(s: &SqliteStore, lever: Option<&LeverRecord>) -> Result<(), StoreError> {
    match lever {
        Some(l) => {
            sqlx::query(
                "INSERT INTO safety_lever (id, engaged_ms, reason) VALUES (1, ?, ?) \
                 ON CONFLICT (id) DO UPDATE SET engaged_ms = excluded.engaged_ms, reason = excluded.reason",
            )
            .bind(l.engaged_ms)
            .bind(&l.reason)
            .execute(&s.write)
            .await?;
        }
        None => {
            sqlx::query("DELETE FROM safety_lever").execute(&s.write).await?;
        }
    }
    Ok(())
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
                Some(FaultStatus::Ended) => "ended_ms IS NOT NULL AND (end_reason IS NULL OR end_reason <> 'failed')",
                Some(FaultStatus::Failed) => "ended_ms IS NOT NULL AND end_reason = 'failed'",
            })
            .push(" ORDER BY created_ms DESC, id LIMIT ")
            .push_bind(i64::from(limit));
        }
    }
}

impl FaultStore for SqliteStore {
    fn load_faults<'a>(&'a self, which: FaultSelection<'a>) -> StoreFuture<'a, Vec<FaultRecord>> {
        Box::pin(load_faults(self, which))
    }

    fn insert_fault<'a>(&'a self, fault: &'a FaultRecord) -> StoreFuture<'a, ()> {
        Box::pin(insert_fault(self, fault))
    }

    fn end_faults<'a>(&'a self, ids: &'a [String], ended_ms: i64, reason: EndReason) -> StoreFuture<'a, ()> {
        Box::pin(end_faults(self, ids, ended_ms, reason))
    }

    fn update_fault_states<'a>(
        &'a self,
        agent: &'a str,
        updates: &'a [FaultStatusUpdate],
        now_ms: i64,
    ) -> StoreFuture<'a, u64> {
        Box::pin(update_fault_states(self, agent, updates, now_ms))
    }

    fn count_ended_faults(&self, now_ms: i64) -> StoreFuture<'_, (i64, i64)> {
        Box::pin(count_ended_faults(self, now_ms))
    }

    fn revert_all_epoch(&self) -> StoreFuture<'_, u64> {
        Box::pin(revert_all_epoch(self))
    }

    fn revert_all<'a>(&'a self, epoch: u64, ids: &'a [String], ended_ms: i64) -> StoreFuture<'a, ()> {
        Box::pin(revert_all(self, epoch, ids, ended_ms))
    }

    fn safety_lever(&self) -> StoreFuture<'_, Option<LeverRecord>> {
        Box::pin(safety_lever(self))
    }

    fn set_safety_lever<'a>(&'a self, lever: Option<&'a LeverRecord>) -> StoreFuture<'a, ()> {
        Box::pin(set_safety_lever(self, lever))
    }
}
