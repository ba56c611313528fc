//! The SQLite store (sqlx). The migrations in `controller/migrations/` are
//! embedded in the binary and portable to PostgreSQL.
//!
//! Writes go through a single-connection pool (SQLite has one writer; one
//! connection avoids SQLITE_BUSY on lock upgrades), reads through a small
//! pool (WAL lets them run beside the writer). Batches of transitions go to
//! one writer task that commits whatever has queued up in one transaction
//! (group commit); a checkpointer task copies the WAL into the database.
//!
//! One file per part of the [`Store`] trait: `agents.rs`, `findings.rs`,
//! `faults.rs`.

mod agents;
mod faults;
mod findings;
mod gamedays;
mod paths;

use std::borrow::Cow;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::time::Duration;

use graydar_common::api::Timestamp;
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{AssertSqlSafe, SqlSafeStr as _};

use super::{Store, StoreError, StoreFuture};

/// The migrations, embedded in the binary in order (a test checks that every
/// file of `controller/migrations/` is listed here).
pub const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "init", include_str!("../../../migrations/0001_init.sql")),
    (2, "faults", include_str!("../../../migrations/0002_faults.sql")),
    (
        3,
        "fault_history",
        include_str!("../../../migrations/0003_fault_history.sql"),
    ),
    (4, "mesh_keys", include_str!("../../../migrations/0004_mesh_keys.sql")),
    (
        5,
        "agent_credentials",
        include_str!("../../../migrations/0005_agent_credentials.sql"),
    ),
    (
        6,
        "safety_lever",
        include_str!("../../../migrations/0006_safety_lever.sql"),
    ),
    (7, "gamedays", include_str!("../../../migrations/0007_gamedays.sql")),
    (
        8,
        "fault_agent_time",
        include_str!("../../../migrations/0008_fault_agent_time.sql"),
    ),
    (
        9,
        "gameday_runs",
        include_str!("../../../migrations/0009_gameday_runs.sql"),
    ),
    (
        10,
        "fault_lease",
        include_str!("../../../migrations/0010_fault_lease.sql"),
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

/// How often the WAL is copied into the database.
const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);

pub struct SqliteStore {
    ingest_tx: tokio::sync::mpsc::Sender<findings::IngestJob>,
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

fn parse_time(what: &'static str, s: &str) -> Result<Timestamp, StoreError> {
    s.parse().map_err(|source| StoreError::Time { what, source })
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
        tokio::spawn(findings::writer(write.clone(), ingest_rx));
        Ok(SqliteStore { ingest_tx, write, read })
    }
}

async fn ping(s: &SqliteStore) -> Result<(), StoreError> {
    sqlx::query("SELECT 1").execute(&s.read).await?;
    sqlx::query("SELECT 1").execute(&s.write).await?;
    Ok(())
}

async fn close(s: &SqliteStore) {
    if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)").execute(&s.write).await {
        tracing::warn!(error = %e, "final WAL checkpoint");
    }
    s.write.close().await;
    s.read.close().await;
}

impl Store for SqliteStore {
    fn ping(&self) -> StoreFuture<'_, ()> {
        Box::pin(ping(self))
    }

    fn close(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(close(self))
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
