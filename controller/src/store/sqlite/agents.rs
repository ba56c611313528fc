//! Agents: registrations and last-seen times.

use std::collections::HashMap;

use graydar_common::api::RegisterRequest;
use sqlx::{AssertSqlSafe, Row as _};

use super::{SqliteStore, digest, json, parse_json};
use crate::store::{AgentRecord, AgentStore, CredentialRecord, CredentialStore, StoreError, StoreFuture};

const AGENT_COLUMNS: &str =
    "hostname, addresses, labels, kernel_version, agent_version, capabilities, registered_ms, last_seen_ms";

fn agent_from_row(r: &sqlx::sqlite::SqliteRow) -> Result<AgentRecord, StoreError> {
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

async fn load_agents(s: &SqliteStore) -> Result<Vec<AgentRecord>, StoreError> {
    let rows = sqlx::query(AssertSqlSafe(format!("SELECT {AGENT_COLUMNS} FROM agents")))
        .fetch_all(&s.read)
        .await?;
    rows.iter().map(agent_from_row).collect()
}

async fn agent(s: &SqliteStore, hostname: &str) -> Result<Option<AgentRecord>, StoreError> {
    let row = sqlx::query(AssertSqlSafe(format!(
        "SELECT {AGENT_COLUMNS} FROM agents WHERE hostname = ?"
    )))
    .bind(hostname)
    .fetch_optional(&s.read)
    .await?;
    row.as_ref().map(agent_from_row).transpose()
}

async fn last_seen_all(s: &SqliteStore) -> Result<Vec<(String, i64)>, StoreError> {
    Ok(sqlx::query_as("SELECT hostname, last_seen_ms FROM agents")
        .fetch_all(&s.read)
        .await?)
}

async fn upsert_agent(s: &SqliteStore, a: &AgentRecord) -> Result<(), StoreError> {
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
    .execute(&s.write)
    .await?;
    Ok(())
}

async fn update_last_seen(s: &SqliteStore, seen: &[(String, i64)]) -> Result<(), StoreError> {
    if seen.is_empty() {
        return Ok(());
    }
    // One statement per 1000 agents, not one per agent: every statement is
    // a hand-off to SQLite's worker thread, and the flush holds the one
    // write connection the transitions' group commit needs.
    let mut tx = s.write.begin().await?;
    for chunk in seen.chunks(1000) {
        let mut q = sqlx::QueryBuilder::<sqlx::Sqlite>::new("UPDATE agents SET last_seen_ms = v.column2 FROM (");
        q.push_values(chunk, |mut b, (name, at)| {
            b.push_bind(name.as_str()).push_bind(*at);
        });
        q.push(") AS v WHERE agents.hostname = v.column1 AND agents.last_seen_ms < v.column2");
        q.build().execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(())
}

async fn firing_counts(s: &SqliteStore, agent: Option<&str>) -> Result<HashMap<String, u64>, StoreError> {
    let rows = match agent {
        Some(a) => {
            sqlx::query("SELECT agent, COUNT(*) AS n FROM findings WHERE state = 'firing' AND agent = ? GROUP BY agent")
                .bind(a)
                .fetch_all(&s.read)
                .await?
        }
        None => {
            sqlx::query("SELECT agent, COUNT(*) AS n FROM findings WHERE state = 'firing' GROUP BY agent")
                .fetch_all(&s.read)
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

fn credential_from_row(r: &sqlx::sqlite::SqliteRow) -> Result<CredentialRecord, StoreError> {
    let hostname: String = r.try_get("hostname")?;
    Ok(CredentialRecord {
        // Written by bind_credential from 32 bytes; anything else is no credential.
        sha256: digest(r.try_get("sha256")?, &hostname)?,
        hostname,
        created_ms: r.try_get("created_ms")?,
    })
}

async fn credentials(s: &SqliteStore) -> Result<Vec<CredentialRecord>, StoreError> {
    let rows = sqlx::query("SELECT hostname, sha256, created_ms FROM agent_credentials")
        .fetch_all(&s.read)
        .await?;
    rows.iter().map(credential_from_row).collect()
}

async fn credential(s: &SqliteStore, hostname: &str) -> Result<Option<CredentialRecord>, StoreError> {
    let row = sqlx::query("SELECT hostname, sha256, created_ms FROM agent_credentials WHERE hostname = ?")
        .bind(hostname)
        .fetch_optional(&s.read)
        .await?;
    row.as_ref().map(credential_from_row).transpose()
}

async fn bind_credential(s: &SqliteStore, c: &CredentialRecord) -> Result<[u8; 32], StoreError> {
    let mut tx = s.write.begin().await?;
    sqlx::query(
        "INSERT INTO agent_credentials (hostname, sha256, created_ms) VALUES (?, ?, ?) \
         ON CONFLICT (hostname) DO NOTHING",
    )
    .bind(&c.hostname)
    .bind(c.sha256.as_slice())
    .bind(c.created_ms)
    .execute(&mut *tx)
    .await?;
    let bound: Vec<u8> = sqlx::query_scalar("SELECT sha256 FROM agent_credentials WHERE hostname = ?")
        .bind(&c.hostname)
        .fetch_one(&mut *tx)
        .await?;
    tx.commit().await?;
    digest(bound, &c.hostname)
}

async fn delete_credential(s: &SqliteStore, hostname: &str) -> Result<bool, StoreError> {
    let done = sqlx::query("DELETE FROM agent_credentials WHERE hostname = ?")
        .bind(hostname)
        .execute(&s.write)
        .await?;
    Ok(done.rows_affected() > 0)
}

impl CredentialStore for SqliteStore {
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

impl AgentStore for SqliteStore {
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
