//! Findings and their transitions.

use std::collections::{BTreeMap, HashSet};

use graydar_common::api::{BatchResponse, Evidence, Finding, FindingDetail, Timestamp, TransitionRecord};
use sqlx::postgres::{PgRow, Postgres};
use sqlx::{QueryBuilder, Row as _};

use super::{PgStore, enum_str, json, parse_enum, parse_json, parse_time};
use crate::store::codec::{BatchItem, attribute};
use crate::store::{FindingFilter, FindingStore, StoreError, StoreFuture, TimedTransition};
use crate::timefmt::now_ms;

const FINDING_COLUMNS: &str =
    "id, agent, kind, subject, severity, state, since, last_seen, resolved_at, summary, evidence, runbook";

fn finding_from_row(r: &PgRow) -> Result<Finding, StoreError> {
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

/// One request's transitions in one transaction. Rows are written in
/// finding-id order (stable: one finding's transitions keep theirs), so two
/// requests touching the same findings lock them in the same order.
/// Rows per multi-row statement (PostgreSQL binds at most 65535 parameters).
const ROWS_PER_STATEMENT: usize = 1000;

/// One request's transitions in one statement (one round trip, atomic):
/// the rows as `VALUES`, a data-modifying CTE inserting the transitions
/// (those already there skipped), another upserting each finding at its
/// latest stored transition, and the keys stored returned, which tell
/// accepted from duplicates. Rows go in finding order, so concurrent
/// requests lock findings in one order. Four round trips (BEGIN, two
/// statements, COMMIT) cost PostgreSQL as much CPU as the controller at
/// 10,000 agents.
async fn ingest(s: &PgStore, agent: String, mut items: Vec<TimedTransition>) -> Result<BatchResponse, StoreError> {
    items.sort_by(|a, b| a.transition.finding.id.cmp(&b.transition.finding.id));
    let now = now_ms();
    let batch: Vec<BatchItem> = items.iter().map(|t| (0, agent.as_str(), t)).collect();
    let mut inserted = HashSet::new();
    for chunk in batch.chunks(ROWS_PER_STATEMENT) {
        let mut q = QueryBuilder::<Postgres>::new(
            "WITH v (ord, finding_id, transition, at_ms, at, severity, summary, evidence, kind, subject, state, since, \
             last_seen, resolved_at, runbook) AS (",
        );
        q.push_values(chunk.iter().enumerate(), |mut b, (i, (_, _, t))| {
            let f = &t.transition.finding;
            b.push_bind(i64::try_from(i).unwrap_or(i64::MAX))
                .push_unseparated("::bigint")
                .push_bind(f.id.clone())
                .push_unseparated("::text")
                .push_bind(t.transition.transition.as_str())
                .push_unseparated("::text")
                .push_bind(t.at_ms)
                .push_unseparated("::bigint")
                .push_bind(t.transition.at.to_string())
                .push_unseparated("::text")
                .push_bind(enum_str(&f.severity))
                .push_unseparated("::text")
                .push_bind(f.summary.clone())
                .push_unseparated("::text")
                .push_bind(json(&f.evidence))
                .push_unseparated("::text")
                .push_bind(f.kind.as_str())
                .push_unseparated("::text")
                .push_bind(f.subject.clone())
                .push_unseparated("::text")
                .push_bind(enum_str(&f.state))
                .push_unseparated("::text")
                .push_bind(f.since.to_string())
                .push_unseparated("::text")
                .push_bind(f.last_seen.to_string())
                .push_unseparated("::text")
                .push_bind(f.resolved_at.map(|t| t.to_string()))
                .push_unseparated("::text")
                .push_bind(f.runbook.clone())
                .push_unseparated("::text");
        });
        q.push(
            "), ins AS (INSERT INTO finding_transitions \
             (finding_id, transition, at_ms, at, agent, severity, summary, evidence, received_ms) \
             SELECT finding_id, transition, at_ms, at, ",
        )
        .push_bind(agent.as_str())
        .push("::text, severity, summary, evidence, ")
        .push_bind(now)
        .push(
            "::bigint FROM v ORDER BY ord ON CONFLICT DO NOTHING RETURNING finding_id, transition, at_ms), \
             latest AS (SELECT DISTINCT ON (v.finding_id) v.* FROM v JOIN ins USING (finding_id, transition, at_ms) \
             ORDER BY v.finding_id, v.at_ms DESC, v.ord DESC), \
             up AS (INSERT INTO findings (id, agent, kind, subject, severity, state, since, last_seen, resolved_at, \
             summary, evidence, runbook, state_at_ms, updated_ms) \
             SELECT finding_id, ",
        )
        .push_bind(agent.as_str())
        .push("::text, kind, subject, severity, state, since, last_seen, resolved_at, summary, evidence, runbook, at_ms, ")
        .push_bind(now)
        .push(
            "::bigint FROM latest ORDER BY finding_id \
             ON CONFLICT (id) DO UPDATE SET severity = excluded.severity, state = excluded.state, since = excluded.since, \
             last_seen = excluded.last_seen, resolved_at = excluded.resolved_at, summary = excluded.summary, \
             evidence = excluded.evidence, runbook = excluded.runbook, state_at_ms = excluded.state_at_ms, \
             updated_ms = excluded.updated_ms \
             WHERE excluded.state_at_ms >= findings.state_at_ms) \
             SELECT finding_id, transition, at_ms FROM ins",
        );
        for row in q.build().fetch_all(&s.pool).await? {
            inserted.insert((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?));
        }
    }
    let (mut out, _) = attribute(1, &batch, inserted);
    Ok(out.pop().unwrap_or(BatchResponse {
        accepted: 0,
        duplicates: 0,
    }))
}

async fn findings(s: &PgStore, f: &FindingFilter) -> Result<Vec<Finding>, StoreError> {
    let mut q = QueryBuilder::<Postgres>::new(format!("SELECT {FINDING_COLUMNS} FROM findings WHERE TRUE"));
    if let Some(k) = f.kind {
        q.push(" AND kind = ").push_bind(k.as_str());
    }
    if let Some(s) = f.severity {
        q.push(" AND severity = ").push_bind(s.as_str());
    }
    if let Some(s) = f.state {
        q.push(" AND state = ").push_bind(enum_str(&s));
    }
    if let Some(a) = &f.agent {
        q.push(" AND agent = ").push_bind(a.clone());
    }
    if let Some(since) = f.since_ms {
        q.push(" AND state_at_ms >= ").push_bind(since);
    }
    q.push(" ORDER BY CASE WHEN state = 'firing' THEN 0 ELSE 1 END, state_at_ms DESC, id LIMIT ")
        .push_bind(i64::from(f.limit));
    let rows = q.build().fetch_all(&s.pool).await?;
    rows.iter().map(finding_from_row).collect()
}

async fn finding(s: &PgStore, id: &str) -> Result<Option<FindingDetail>, StoreError> {
    // The row and its history from one snapshot.
    let mut tx = s
        .pool
        .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await?;
    let Some(row) = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {FINDING_COLUMNS} FROM findings WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?
    else {
        return Ok(None);
    };
    let finding = finding_from_row(&row)?;
    let rows = sqlx::query(
        "SELECT transition, at, severity, summary, evidence, received_ms FROM finding_transitions \
         WHERE finding_id = $1 ORDER BY at_ms, received_ms",
    )
    .bind(id)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
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

async fn transition_count(s: &PgStore) -> Result<i64, StoreError> {
    let r = sqlx::query("SELECT COUNT(*) AS n FROM finding_transitions")
        .fetch_one(&s.pool)
        .await?;
    Ok(r.try_get("n")?)
}

impl FindingStore for PgStore {
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
