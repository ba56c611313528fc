//! Findings and their transitions; the group-commit writer.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use graydar_common::api::{BatchResponse, Evidence, Finding, FindingDetail, Timestamp, TransitionRecord};
use sqlx::sqlite::{Sqlite, SqlitePool, SqliteRow};
use sqlx::{AssertSqlSafe, QueryBuilder, Row as _};

use super::{SqliteStore, enum_str, json, parse_enum, parse_json, parse_time};
use crate::store::codec::{BatchItem, attribute, latest_per_finding};
use crate::store::{FindingFilter, FindingStore, StoreError, StoreFuture, TimedTransition};
use crate::timefmt::now_ms;

/// One request's transitions, checked, waiting for the group commit.
pub(super) struct IngestJob {
    agent: String,
    items: Vec<TimedTransition>,
    reply: tokio::sync::oneshot::Sender<Result<BatchResponse, Arc<sqlx::Error>>>,
}

/// Most requests committed in one transaction.
const GROUP_COMMIT_MAX: usize = 256;

async fn ingest(s: &SqliteStore, agent: String, items: Vec<TimedTransition>) -> Result<BatchResponse, StoreError> {
    let (reply, rx) = tokio::sync::oneshot::channel();
    s.ingest_tx
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
        since: parse_time("since", &r.try_get::<String, _>("since")?)?,
        last_seen: parse_time("last_seen", &r.try_get::<String, _>("last_seen")?)?,
        resolved_at: r
            .try_get::<Option<String>, _>("resolved_at")?
            .map(|s| parse_time("resolved_at", &s))
            .transpose()?,
        summary: r.try_get("summary")?,
        evidence: parse_json::<BTreeMap<String, Evidence>>("evidence", &r.try_get::<String, _>("evidence")?)?,
        runbook: r.try_get("runbook")?,
    })
}

async fn findings(s: &SqliteStore, f: &FindingFilter) -> Result<Vec<Finding>, StoreError> {
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
    let rows = q.fetch_all(&s.read).await?;
    rows.iter().map(finding_from_row).collect()
}

async fn finding(s: &SqliteStore, id: &str) -> Result<Option<FindingDetail>, StoreError> {
    let Some(row) = sqlx::query(
        "SELECT id, agent, kind, subject, severity, state, since, last_seen, resolved_at, summary, evidence, runbook FROM findings WHERE id = ?",
    )
    .bind(id)
    .fetch_optional(&s.read)
    .await?
    else {
        return Ok(None);
    };
    let finding = finding_from_row(&row)?;
    let rows = sqlx::query(
        "SELECT transition, at, severity, summary, evidence, received_ms FROM finding_transitions \
         WHERE finding_id = ? ORDER BY at_ms, received_ms",
    )
    .bind(id)
    .fetch_all(&s.read)
    .await?;
    let mut history = Vec::with_capacity(rows.len());
    for r in rows {
        history.push(TransitionRecord {
            transition: parse_enum("transition", &r.try_get::<String, _>("transition")?)?,
            at: parse_time("at", &r.try_get::<String, _>("at")?)?,
            severity: parse_enum("severity", &r.try_get::<String, _>("severity")?)?,
            summary: r.try_get("summary")?,
            evidence: parse_json("evidence", &r.try_get::<String, _>("evidence")?)?,
            received_at: Timestamp::from_unix_ms(r.try_get("received_ms")?),
        });
    }
    Ok(Some(FindingDetail { finding, history }))
}

async fn transition_count(s: &SqliteStore) -> Result<i64, StoreError> {
    let r = sqlx::query("SELECT COUNT(*) AS n FROM finding_transitions")
        .fetch_one(&s.read)
        .await?;
    Ok(r.try_get("n")?)
}

impl FindingStore for SqliteStore {
    fn ingest(&self, agent: String, items: Vec<TimedTransition>) -> StoreFuture<'_, BatchResponse> {
        Box::pin(ingest(self, agent, items))
    }

    fn findings<'a>(&'a self, f: &'a FindingFilter) -> StoreFuture<'a, Vec<Finding>> {
        Box::pin(findings(self, f))
    }

    fn finding<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<FindingDetail>> {
        Box::pin(finding(self, id))
    }

    fn transition_count(&self) -> StoreFuture<'_, i64> {
        Box::pin(transition_count(self))
    }
}

/// The group-commit writer: takes every job queued (up to
/// [`GROUP_COMMIT_MAX`]) and stores them in one transaction, in order.
pub(super) async fn writer(pool: SqlitePool, mut rx: tokio::sync::mpsc::Receiver<IngestJob>) {
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

/// Rows per multi-row statement (SQLite binds at most 32766 parameters).
const ROWS_PER_STATEMENT: usize = 1000;

/// Every job's transitions in one transaction of few statements: one
/// multi-row insert of the transitions (those already there skipped and
/// counted as duplicates, by what it returns) and one multi-row upsert of
/// the findings they leave, per [`ROWS_PER_STATEMENT`]. Each statement is a
/// round trip to SQLite's worker thread: one per row made the writer's
/// thread hand-offs, not SQLite, the cost of ingest.
async fn write_group(pool: &SqlitePool, jobs: &[IngestJob]) -> Result<Vec<BatchResponse>, sqlx::Error> {
    let now = now_ms();
    let items: Vec<BatchItem> = jobs
        .iter()
        .enumerate()
        .flat_map(|(j, job)| job.items.iter().map(move |t| (j, job.agent.as_str(), t)))
        .collect();
    let mut tx = pool.begin().await?;
    let mut inserted = HashSet::new();
    for chunk in items.chunks(ROWS_PER_STATEMENT) {
        let mut q = QueryBuilder::<Sqlite>::new(
            "INSERT INTO finding_transitions (finding_id, transition, at_ms, at, agent, severity, summary, evidence, received_ms) ",
        );
        q.push_values(chunk, |mut b, (_, agent, t)| {
            let f = &t.transition.finding;
            b.push_bind(f.id.clone())
                .push_bind(t.transition.transition.as_str())
                .push_bind(t.at_ms)
                .push_bind(t.transition.at.to_string())
                .push_bind(*agent)
                .push_bind(enum_str(&f.severity))
                .push_bind(f.summary.clone())
                .push_bind(json(&f.evidence))
                .push_bind(now);
        });
        q.push(" ON CONFLICT DO NOTHING RETURNING finding_id, transition, at_ms");
        for row in q.build().fetch_all(&mut *tx).await? {
            inserted.insert((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?));
        }
    }
    let (out, stored) = attribute(jobs.len(), &items, inserted);
    for chunk in latest_per_finding(&stored).chunks(ROWS_PER_STATEMENT) {
        let mut q = QueryBuilder::<Sqlite>::new(
            "INSERT INTO findings (id, agent, kind, subject, severity, state, since, last_seen, resolved_at, summary, evidence, runbook, state_at_ms, updated_ms) ",
        );
        q.push_values(chunk, |mut b, (_, agent, t)| {
            let f = &t.transition.finding;
            b.push_bind(f.id.clone())
                .push_bind(*agent)
                .push_bind(f.kind.as_str())
                .push_bind(f.subject.clone())
                .push_bind(enum_str(&f.severity))
                .push_bind(enum_str(&f.state))
                .push_bind(f.since.to_string())
                .push_bind(f.last_seen.to_string())
                .push_bind(f.resolved_at.map(|t| t.to_string()))
                .push_bind(f.summary.clone())
                .push_bind(json(&f.evidence))
                .push_bind(f.runbook.clone())
                .push_bind(t.at_ms)
                .push_bind(now);
        });
        q.push(
            " ON CONFLICT (id) DO UPDATE SET severity = excluded.severity, state = excluded.state, since = excluded.since, \
             last_seen = excluded.last_seen, resolved_at = excluded.resolved_at, summary = excluded.summary, \
             evidence = excluded.evidence, runbook = excluded.runbook, state_at_ms = excluded.state_at_ms, \
             updated_ms = excluded.updated_ms \
             WHERE excluded.state_at_ms >= findings.state_at_ms",
        );
        q.build().execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(out)
}
