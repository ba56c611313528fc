//! Game-day definitions in SQLite (`gamedays`).

use sqlx::Row as _;
use sqlx::sqlite::SqliteRow;

use super::SqliteStore;
use crate::store::{GameDayRecord, GameDayStore, StoreError, StoreFuture};

fn record(r: &SqliteRow) -> Result<GameDayRecord, StoreError> {
    Ok(GameDayRecord {
        name: r.try_get("name")?,
        spec: r.try_get("spec")?,
        created_ms: r.try_get("created_ms")?,
        updated_ms: r.try_get("updated_ms")?,
    })
}

async fn gamedays(s: &SqliteStore) -> Result<Vec<GameDayRecord>, StoreError> {
    let rows = sqlx::query("SELECT name, spec, created_ms, updated_ms FROM gamedays ORDER BY name")
        .fetch_all(&s.read)
        .await?;
    rows.iter().map(record).collect()
}

async fn gameday(s: &SqliteStore, name: &str) -> Result<Option<GameDayRecord>, StoreError> {
    let row = sqlx::query("SELECT name, spec, created_ms, updated_ms FROM gamedays WHERE name = ?")
        .bind(name)
        .fetch_optional(&s.read)
        .await?;
    row.as_ref().map(record).transpose()
}

async fn insert_gameday(s: &SqliteStore, g: &GameDayRecord) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "INSERT INTO gamedays (name, spec, created_ms, updated_ms) VALUES (?, ?, ?, ?) ON CONFLICT (name) DO NOTHING",
    )
    .bind(&g.name)
    .bind(&g.spec)
    .bind(g.created_ms)
    .bind(g.updated_ms)
    .execute(&s.write)
    .await?;
    Ok(done.rows_affected() == 1)
}

async fn put_gameday(s: &SqliteStore, g: &GameDayRecord) -> Result<Option<i64>, StoreError> {
    let mut tx = s.write.begin().await?;
    let earlier: Option<i64> = sqlx::query_scalar("SELECT created_ms FROM gamedays WHERE name = ?")
        .bind(&g.name)
        .fetch_optional(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO gamedays (name, spec, created_ms, updated_ms) VALUES (?, ?, ?, ?) \
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

async fn delete_gameday(s: &SqliteStore, name: &str) -> Result<bool, StoreError> {
    let done = sqlx::query("DELETE FROM gamedays WHERE name = ?")
        .bind(name)
        .execute(&s.write)
        .await?;
    Ok(done.rows_affected() > 0)
}

impl GameDayStore for SqliteStore {
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
}
