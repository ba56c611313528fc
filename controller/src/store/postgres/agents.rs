//! Agents: registrations and last-seen times; per-agent credentials.

use std::collections::HashMap;

use graydar_common::api::RegisterRequest;
use sqlx::{AssertSqlSafe, Row as _};

use super::{PgStore, digest, json, parse_json};
use crate::store::{AgentRecord, AgentStore, CredentialRecord, CredentialStore, StoreError, StoreFuture};

const AGENT_COLUMNS: &str =
    "hostname, addresses, labels, kernel_version, agent_version, capabilities, registered_ms, last_seen_ms";

fn agent_from_row(r: &sqlx::postgres::PgRow) -> Result<AgentRecord, StoreError> {
    Ok(AgentRecord {
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
            credential_sha256: None,
        },
        registered_ms: r.try_get("registered_ms")?,
        last_seen_ms: r.try_get("last_seen_ms")?,
    })
}

async fn load_agents(s: &PgStore) -> Result<Vec<AgentRecord>, StoreError> {
    let rows = sqlx::query(AssertSqlSafe(format!("SELECT {AGENT_COLUMNS} FROM agents")))
        .fetch_all(&s.pool)
        .await?;
    rows.iter().map(agent_from_row).collect()
}

async fn agent(s: &PgStore, hostname: &str) -> Result<Option<AgentRecord>, StoreError> {
    let row = sqlx::query(AssertSqlSafe(format!(
        "SELECT {AGENT_COLUMNS} FROM agents WHERE hostname = $1"
    )))
    .bind(hostname)
    .fetch_optional(&s.pool)
    .await?;
    row.as_ref().map(agent_from_row).transpose()
}

async fn last_seen_all(s: &PgStore) -> Result<Vec<(String, i64)>, StoreError> {
    Ok(sqlx::query_as("SELECT hostname, last_seen_ms FROM agents")
        .fetch_all(&s.pool)
        .await?)
}

async fn upsert_agent(s: &PgStore, a: &AgentRecord) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO agents (hostname, addresses, labels, kernel_version, agent_version, capabilities, registered_ms, last_seen_ms) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
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
    .execute(&s.pool)
    .await?;
    Ok(())
}

async fn update_last_seen(s: &PgStore, seen: &[(String, i64)]) -> Result<(), StoreError> {
    if seen.is_empty() {
        return Ok(());
    }
    // Two replicas may flush the same agents at once. An UPDATE joined to
    // UNNEST locks rows in whatever order its plan visits them (a hash join
    // walks the table, a nested loop walks the array), so two flushes could
    // lock the same rows in opposite orders and deadlock. The rows are locked
    // first, by a SELECT that sorts before it locks, in one transaction.
    let mut seen: Vec<&(String, i64)> = seen.iter().collect();
    seen.sort_by(|a, b| a.0.cmp(&b.0));
    // One statement for all of them (two arrays), not one per agent.
    let names: Vec<&str> = seen.iter().map(|(n, _)| n.as_str()).collect();
    let times: Vec<i64> = seen.iter().map(|(_, t)| *t).collect();
    let mut tx = s.pool.begin().await?;
    sqlx::query("SELECT 1 FROM agents WHERE hostname = ANY($1::text[]) ORDER BY hostname FOR NO KEY UPDATE")
        .bind(&names)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "UPDATE agents SET last_seen_ms = v.at FROM UNNEST($1::text[], $2::bigint[]) AS v(hostname, at) \
         WHERE agents.hostname = v.hostname AND agents.last_seen_ms < v.at",
    )
    .bind(names)
    .bind(times)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

async fn firing_counts(s: &PgStore, agent: Option<&str>) -> Result<HashMap<String, u64>, StoreError> {
    let rows = match agent {
        Some(a) => {
            sqlx::query(
                "SELECT agent, COUNT(*) AS n FROM findings WHERE state = 'firing' AND agent = $1 GROUP BY agent",
            )
            .bind(a)
            .fetch_all(&s.pool)
            .await?
        }
        None => {
            sqlx::query("SELECT agent, COUNT(*) AS n FROM findings WHERE state = 'firing' GROUP BY agent")
                .fetch_all(&s.pool)
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

fn credential_from_row(r: &sqlx::postgres::PgRow) -> Result<CredentialRecord, StoreError> {
    let hostname: String = r.try_get("hostname")?;
    Ok(CredentialRecord {
        // Written by bind_credential from 32 bytes; anything else is no credential.
        sha256: digest(r.try_get("sha256")?, &hostname)?,
        hostname,
        created_ms: r.try_get("created_ms")?,
    })
}

async fn credentials(s: &PgStore) -> Result<Vec<CredentialRecord>, StoreError> {
    let rows = sqlx::query("SELECT hostname, sha256, created_ms FROM agent_credentials")
        .fetch_all(&s.pool)
        .await?;
    rows.iter().map(credential_from_row).collect()
}

async fn credential(s: &PgStore, hostname: &str) -> Result<Option<CredentialRecord>, StoreError> {
    let row = sqlx::query("SELECT hostname, sha256, created_ms FROM agent_credentials WHERE hostname = $1")
        .bind(hostname)
        .fetch_optional(&s.pool)
        .await?;
    row.as_ref().map(credential_from_row).transpose()
}

async fn bind_credential(s: &PgStore, c: &CredentialRecord) -> Result<[u8; 32], StoreError> {
    // READ COMMITTED: an INSERT that meets a concurrent one waits for it and
    // does nothing; the SELECT after it sees the winner's row.
    let mut tx = s.pool.begin().await?;
    sqlx::query(
        "INSERT INTO agent_credentials (hostname, sha256, created_ms) VALUES ($1, $2, $3) \
         ON CONFLICT (hostname) DO NOTHING",
    )
    .bind(&c.hostname)
    .bind(c.sha256.as_slice())
    .bind(c.created_ms)
    .execute(&mut *tx)
    .await?;
    let bound: Vec<u8> = sqlx::query_scalar("SELECT sha256 FROM agent_credentials WHERE hostname = $1")
        .bind(&c.hostname)
        .fetch_one(&mut *tx)
        .await?;
    tx.commit().await?;
    digest(bound, &c.hostname)
}

async fn delete_credential(s: &PgStore, hostname: &str) -> Result<bool, StoreError> {
    let done = sqlx::query("DELETE FROM agent_credentials WHERE hostname = $1")
        .bind(hostname)
        .execute(&s.pool)
        .await?;
    Ok(done.rows_affected() > 0)
}

impl CredentialStore for PgStore {
    fn credentials(&self) -> StoreFuture<'_, Vec<CredentialRecord>> {
        Box::pin(credentials(self))
    }

    fn credential<'a>(&'a self, hostname: &'a str) -> StoreFuture<'a, Option<CredentialRecord>> {
        Box::pin(credential(self, hostname))
    }

    fn bind_credential<'a>(&'a self, c: &'a CredentialRecord) -> StoreFuture<'a, [u8; 32]> {
        Box::pin(bind_credential(self, c))
    }

    fn delete_credential<'a>(&'a self, hostname: &'a str) -> StoreFuture<'a, bool> {
        Box::pin(delete_credential(self, hostname))
    }
}

impl AgentStore for PgStore {
    fn load_agents(&self) -> StoreFuture<'_, Vec<AgentRecord>> {
        Box::pin(load_agents(self))
    }

    fn agent<'a>(&'a self, hostname: &'a str) -> StoreFuture<'a, Option<AgentRecord>> {
        Box::pin(agent(self, hostname))
    }

    fn last_seen_all(&self) -> StoreFuture<'_, Vec<(String, i64)>> {
        Box::pin(last_seen_all(self))
    }

    fn upsert_agent<'a>(&'a self, agent: &'a AgentRecord) -> StoreFuture<'a, ()> {
        Box::pin(upsert_agent(self, agent))
    }

    fn update_last_seen<'a>(&'a self, seen: &'a [(String, i64)]) -> StoreFuture<'a, ()> {
        Box::pin(update_last_seen(self, seen))
    }

    fn firing_counts<'a>(&'a self, agent: Option<&'a str>) -> StoreFuture<'a, HashMap<String, u64>> {
        Box::pin(firing_counts(self, agent))
    }
}
