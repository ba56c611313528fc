//! Faults, their per-agent states, the revert-all epoch and the safety lever.

use std::collections::{BTreeMap, HashMap};

use graydar_common::fault_api::FaultStatusUpdate;
use graydar_common::faults::FaultSpec;
use graydar_common::timestamp::Timestamp;
use sqlx::postgres::Postgres;
use sqlx::{QueryBuilder, Row as _};

use super::{PgStore, json, parse_enum, parse_json};
use crate::store::{
    ChangeTurn, EndReason, FaultAgentRecord, FaultRecord, FaultSelection, FaultStatus, FaultStore, LeverRecord,
    StoreError, StoreFuture,
};

async fn load_faults(s: &PgStore, which: FaultSelection<'_>) -> Result<Vec<FaultRecord>, StoreError> {
    let mut q = QueryBuilder::<Postgres>::new(
        "SELECT id, spec, selector, dry_run, forced, duration_seconds, lease_ms, created_ms, expires_ms, ended_ms, end_reason \
         FROM faults WHERE ",
    );
    push_selection(&mut q, which);
    // Both queries in one snapshot (READ COMMITTED would give each its own).
    let mut tx = s
        .pool
        .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await?;
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
            dry_run: r.try_get("dry_run")?,
            forced: r.try_get("forced")?,
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
    let ids: Vec<&str> = faults.iter().map(|f| f.id.as_str()).collect();
    let rows = sqlx::query(
        "SELECT fault_id, agent, state, reason, operations, updated_ms, agent_at_ms FROM fault_agents \
         WHERE fault_id = ANY($1)",
    )
    .bind(&ids)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    for r in rows {
        let fid: String = r.try_get("fault_id")?;
        if let Some(f) = index.get(&fid).and_then(|&i| faults.get_mut(i)) {
            f.agents.insert(
                r.try_get("agent")?,
                FaultAgentRecord {
                    state: parse_enum("fault state", &r.try_get::<String, _>("state")?)?,
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

async fn insert_fault(s: &PgStore, f: &FaultRecord) -> Result<(), StoreError> {
    let mut tx = s.pool.begin().await?;
    sqlx::query(
        "INSERT INTO faults (id, kind, spec, selector, dry_run, forced, duration_seconds, lease_ms, created_ms, \
         expires_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(&f.id)
    .bind(f.spec.kind().as_str())
    .bind(json(&f.spec))
    .bind(json(&f.selector))
    .bind(f.dry_run)
    .bind(f.forced)
    .bind(f.duration_seconds)
    .bind(f.lease_ms)
    .bind(f.created_ms)
    .bind(f.expires_ms)
    .execute(&mut *tx)
    .await?;
    for (agent, s) in &f.agents {
        sqlx::query(
            "INSERT INTO fault_agents (fault_id, agent, state, reason, operations, updated_ms, agent_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
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

/// One statement, so a transaction of its own.
async fn end_faults(s: &PgStore, ids: &[String], ended_ms: i64, reason: EndReason) -> Result<(), StoreError> {
    if ids.is_empty() {
        return Ok(());
    }
    end_in(&mut *s.pool.acquire().await?, ids, ended_ms, reason).await
}

async fn end_in(
    conn: &mut sqlx::PgConnection,
    ids: &[String],
    ended_ms: i64,
    reason: EndReason,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE faults SET ended_ms = $1, end_reason = $2 WHERE id = ANY($3) AND ended_ms IS NULL")
        .bind(ended_ms)
        .bind(reason.as_str())
        .bind(ids)
        .execute(conn)
        .await?;
    Ok(())
}

async fn update_fault_states(
    s: &PgStore,
    agent: &str,
    updates: &[FaultStatusUpdate],
    now_ms: i64,
) -> Result<u64, StoreError> {
    if updates.is_empty() {
        return Ok(0);
    }
    let mut tx = s.pool.begin().await?;
    let mut stored = 0;
    for u in updates {
        stored += sqlx::query(
            "UPDATE fault_agents SET state = $1, reason = $2, operations = $3, updated_ms = $4, agent_at_ms = $5 \
             WHERE fault_id = $6 AND agent = $7",
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

async fn count_ended_faults(s: &PgStore, now_ms: i64) -> Result<(i64, i64), StoreError> {
    let row = sqlx::query(
        "SELECT COUNT(*) AS ended, COUNT(*) FILTER (WHERE end_reason = 'failed') AS failed FROM faults \
         WHERE ended_ms IS NOT NULL OR expires_ms <= $1",
    )
    .bind(now_ms)
    .fetch_one(&s.pool)
    .await?;
    Ok((row.try_get("ended")?, row.try_get("failed")?))
}

async fn revert_all_epoch(s: &PgStore) -> Result<u64, StoreError> {
    let epoch: Option<i64> = sqlx::query_scalar("SELECT value FROM fault_meta WHERE name = 'revert_all_epoch'")
        .fetch_optional(&s.pool)
        .await?;
    Ok(u64::try_from(epoch.unwrap_or(0)).unwrap_or(0))
}

async fn revert_all(s: &PgStore, epoch: u64, ids: &[String], ended_ms: i64) -> Result<(), StoreError> {
    let mut tx = s.pool.begin().await?;
    sqlx::query(
        "INSERT INTO fault_meta (name, value) VALUES ('revert_all_epoch', $1) \
         ON CONFLICT (name) DO UPDATE SET value = excluded.value",
    )
    .bind(i64::try_from(epoch).unwrap_or(i64::MAX))
    .execute(&mut *tx)
    .await?;
    if !ids.is_empty() {
        end_in(&mut tx, ids, ended_ms, EndReason::RevertAll).await?;
    }
    tx.commit().await?;
    Ok(())
}

async fn safety_lever(s: &PgStore) -> Result<Option<LeverRecord>, StoreError> {
    let row = sqlx::query("SELECT engaged_ms, reason FROM safety_lever WHERE id = 1")
        .fetch_optional(&s.pool)
        .await?;
    row.map(|r| {
        Ok(LeverRecord {
            engaged_ms: r.try_get("engaged_ms")?,
            reason: r.try_get("reason")?,
        })
    })
    .transpose()
}

async fn set_safety_lever(s: &PgStore, lever: Option<&LeverRecord>) -> Result<(), StoreError> {
    match lever {
        Some(l) => {
            sqlx::query(
                "INSERT INTO safety_lever (id, engaged_ms, reason) VALUES (1, $1, $2) \
                 ON CONFLICT (id) DO UPDATE SET engaged_ms = excluded.engaged_ms, reason = excluded.reason",
            )
            .bind(l.engaged_ms)
            .bind(&l.reason)
            .execute(&s.pool)
            .await?;
        }
        None => {
            sqlx::query("DELETE FROM safety_lever").execute(&s.pool).await?;
        }
    }
    Ok(())
}

/// The condition after `WHERE` that selects `which` (it may end with
/// `ORDER BY` and `LIMIT`).
fn push_selection(q: &mut QueryBuilder<Postgres>, which: FaultSelection<'_>) {
    match which {
        FaultSelection::Live { now_ms, lease_ms } => {
            q.push("ended_ms IS NULL OR LEAST(ended_ms, expires_ms) + ")
                .push_bind(lease_ms)
                .push(" > ")
                .push_bind(now_ms);
        }
        FaultSelection::Id(id) => {
            q.push("id = ").push_bind(id.to_owned());
        }
        FaultSelection::Newest { status, limit } => {
            q.push(match status {
                None => "TRUE",
                Some(FaultStatus::Running) => "ended_ms IS NULL AND NOT dry_run",
                Some(FaultStatus::DryRun) => "ended_ms IS NULL AND dry_run",
                Some(FaultStatus::Ended) => "ended_ms IS NOT NULL AND (end_reason IS NULL OR end_reason <> 'failed')",
                Some(FaultStatus::Failed) => "ended_ms IS NOT NULL AND end_reason = 'failed'",
            })
            .push(" ORDER BY created_ms DESC, id LIMIT ")
            .push_bind(i64::from(limit));
        }
    }
}

impl FaultStore for PgStore {
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

    fn change_turn(&self) -> StoreFuture<'_, ChangeTurn> {
        Box::pin(change_turn(self))
    }
}

/// The advisory lock a change of the fault set holds (transaction-level:
/// released at the transaction's end, also when the connection dies).
const CHANGE_LOCK: i64 = 0x6772_6179_6461_7232;

/// Waits for the other controllers' changes of the fault set to end and
/// holds the turn: a transaction that took [`CHANGE_LOCK`]; dropping it
/// rolls back, which releases the lock (sqlx flushes the rollback when the
/// connection goes back to the pool).
async fn change_turn(s: &PgStore) -> Result<ChangeTurn, StoreError> {
    let mut tx = s.pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(CHANGE_LOCK)
        .execute(&mut *tx)
        .await?;
    Ok(ChangeTurn::held(tx))
}
