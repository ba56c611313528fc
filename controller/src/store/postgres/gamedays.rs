//! Game-day definitions (`gamedays`) and runs (`gameday_runs`) in PostgreSQL.

use sqlx::postgres::{PgRow, Postgres};
use sqlx::{AssertSqlSafe, QueryBuilder, Row as _};

use super::PgStore;
use crate::store::{GameDayRecord, GameDayStore, RunFilter, RunRecord, StoreError, StoreFuture};

fn record(r: &PgRow) -> Result<GameDayRecord, StoreError> {
    Ok(GameDayRecord {
        name: r.try_get("name")?,
        spec: r.try_get("spec")?,
        created_ms: r.try_get("created_ms")?,
        updated_ms: r.try_get("updated_ms")?,
    })
}

async fn gamedays(s: &PgStore) -> Result<Vec<GameDayRecord>, StoreError> {
    let rows = sqlx::query("SELECT name, spec, created_ms, updated_ms FROM gamedays ORDER BY name")
        .fetch_all(&s.pool)
        .await?;
    rows.iter().map(record).collect()
}

async fn gameday(s: &PgStore, name: &str) -> Result<Option<GameDayRecord>, StoreError> {
    let row = sqlx::query("SELECT name, spec, created_ms, updated_ms FROM gamedays WHERE name = $1")
        .bind(name)
        .fetch_optional(&s.pool)
        .await?;
    row.as_ref().map(record).transpose()
}

async fn insert_gameday(s: &PgStore, g: &GameDayRecord) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "INSERT INTO gamedays (name, spec, created_ms, updated_ms) VALUES ($1, $2, $3, $4) ON CONFLICT (name) DO NOTHING",
    )
    .bind(&g.name)
    .bind(&g.spec)
    .bind(g.created_ms)
    .bind(g.updated_ms)
    .execute(&s.pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// The first `created_ms` is locked while the row is replaced (`FOR
/// UPDATE`), so two puts of one name answer in turn.
async fn put_gameday(s: &PgStore, g: &GameDayRecord) -> Result<Option<i64>, StoreError> {
    let mut tx = s.pool.begin().await?;
    let earlier: Option<i64> = sqlx::query_scalar("SELECT created_ms FROM gamedays WHERE name = $1 FOR UPDATE")
        .bind(&g.name)
        .fetch_optional(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO gamedays (name, spec, created_ms, updated_ms) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (name) DO UPDATE SET spec = excluded.spec, updated_ms = excluded.updated_ms",
    )
    .bind(&g.name)
    .bind(&g.spec)
    .bind(g.created_ms)
    .bind(g.updated_ms)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(earlier)
}

async fn delete_gameday(s: &PgStore, name: &str) -> Result<bool, StoreError> {
    let done = sqlx::query("DELETE FROM gamedays WHERE name = $1")
        .bind(name)
        .execute(&s.pool)
        .await?;
    Ok(done.rows_affected() > 0)
}

impl GameDayStore for PgStore {
    fn gamedays(&self) -> StoreFuture<'_, Vec<GameDayRecord>> {
        Box::pin(gamedays(self))
    }

    fn gameday<'a>(&'a self, name: &'a str) -> StoreFuture<'a, Option<GameDayRecord>> {
        Box::pin(gameday(self, name))
    }

    fn insert_gameday<'a>(&'a self, g: &'a GameDayRecord) -> StoreFuture<'a, bool> {
        Box::pin(insert_gameday(self, g))
    }

    fn put_gameday<'a>(&'a self, g: &'a GameDayRecord) -> StoreFuture<'a, Option<i64>> {
        Box::pin(put_gameday(self, g))
    }

    fn delete_gameday<'a>(&'a self, name: &'a str) -> StoreFuture<'a, bool> {
        Box::pin(delete_gameday(self, name))
    }

    fn insert_run<'a>(&'a self, r: &'a RunRecord) -> StoreFuture<'a, ()> {
        Box::pin(insert_run(self, r))
    }

    fn update_run<'a>(&'a self, r: &'a RunRecord) -> StoreFuture<'a, ()> {
        Box::pin(update_run(self, r))
    }

    fn run<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<RunRecord>> {
        Box::pin(run(self, id))
    }

    fn runs<'a>(&'a self, f: &'a RunFilter) -> StoreFuture<'a, Vec<RunRecord>> {
        Box::pin(runs(self, f))
    }

    fn unfinished_runs(&self) -> StoreFuture<'_, Vec<RunRecord>> {
        Box::pin(unfinished_runs(self))
    }

    fn prune_runs<'a>(&'a self, gameday: &'a str, keep: u32) -> StoreFuture<'a, u64> {
        Box::pin(prune_runs(self, gameday, keep))
    }
}

const RUN_COLUMNS: &str = "id, gameday, trigger, state, outcome, created_ms, updated_ms, doc";

fn run_record(r: &PgRow) -> Result<RunRecord, StoreError> {
    Ok(RunRecord {
        id: r.try_get("id")?,
        gameday: r.try_get("gameday")?,
        trigger: r.try_get("trigger")?,
        state: r.try_get("state")?,
        outcome: r.try_get("outcome")?,
        created_ms: r.try_get("created_ms")?,
        updated_ms: r.try_get("updated_ms")?,
        doc: r.try_get("doc")?,
    })
}

async fn insert_run(s: &PgStore, r: &RunRecord) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO gameday_runs (id, gameday, trigger, state, outcome, created_ms, updated_ms, doc) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(&r.id)
    .bind(&r.gameday)
    .bind(&r.trigger)
    .bind(&r.state)
    .bind(&r.outcome)
    .bind(r.created_ms)
    .bind(r.updated_ms)
    .bind(&r.doc)
    .execute(&s.pool)
    .await?;
    Ok(())
}

async fn update_run(s: &PgStore, r: &RunRecord) -> Result<(), StoreError> {
    sqlx::query("UPDATE gameday_runs SET state = $1, outcome = $2, updated_ms = $3, doc = $4 WHERE id = $5")
        .bind(&r.state)
        .bind(&r.outcome)
        .bind(r.updated_ms)
        .bind(&r.doc)
        .bind(&r.id)
        .execute(&s.pool)
        .await?;
    Ok(())
}

async fn run(s: &PgStore, id: &str) -> Result<Option<RunRecord>, StoreError> {
    let row = sqlx::query(AssertSqlSafe(format!(
        "SELECT {RUN_COLUMNS} FROM gameday_runs WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(&s.pool)
    .await?;
    row.as_ref().map(run_record).transpose()
}

async fn runs(s: &PgStore, f: &RunFilter) -> Result<Vec<RunRecord>, StoreError> {
    let mut q = QueryBuilder::<Postgres>::new(format!("SELECT {RUN_COLUMNS} FROM gameday_runs WHERE TRUE"));
    for (col, v) in [("gameday", &f.gameday), ("state", &f.state), ("outcome", &f.outcome)] {
        if let Some(v) = v {
            q.push(format!(" AND {col} = ")).push_bind(v.clone());
        }
    }
    q.push(" ORDER BY created_ms DESC, id DESC LIMIT ")
        .push_bind(i64::from(f.limit));
    let rows = q.build().fetch_all(&s.pool).await?;
    rows.iter().map(run_record).collect()
}

async fn unfinished_runs(s: &PgStore) -> Result<Vec<RunRecord>, StoreError> {
    let rows = sqlx::query(AssertSqlSafe(format!(
        "SELECT {RUN_COLUMNS} FROM gameday_runs WHERE state <> 'completed' ORDER BY created_ms, id"
    )))
    .fetch_all(&s.pool)
    .await?;
    rows.iter().map(run_record).collect()
}

async fn prune_runs(s: &PgStore, gameday: &str, keep: u32) -> Result<u64, StoreError> {
    let done = sqlx::query(
        "DELETE FROM gameday_runs WHERE gameday = $1 AND state = 'completed' AND id NOT IN \
         (SELECT id FROM gameday_runs WHERE gameday = $1 AND state = 'completed' ORDER BY created_ms DESC, id DESC LIMIT $2)",
    )
    .bind(gameday)
    .bind(i64::from(keep))
    .execute(&s.pool)
    .await?;
    Ok(done.rows_affected())
}
