//! The SQLite store (sqlx). The migrations in `controller/migrations/` are
//! embedded in the binary (PostgreSQL has its own twins,
//! `controller/migrations-postgres/`).
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
mod logouts;
mod paths;

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};

use super::codec::Migrations;
// The submodules take these from here (`super::json`, ...).
use super::codec::{digest, enum_str, json, parse_enum, parse_json, parse_time};
use super::{Store, StoreError, StoreFuture};

/// The migrations, embedded in the binary in order (a test checks that every
/// file of `controller/migrations/` is listed here).
pub const MIGRATIONS: Migrations = &[
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
    (
        11,
        "console_logouts",
        include_str!("../../../migrations/0011_console_logouts.sql"),
    ),
];

pub fn migrator() -> Migrator {
    super::codec::migrator(MIGRATIONS)
}

/// How often the WAL is copied into the database.
const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);

pub struct SqliteStore {
    ingest_tx: tokio::sync::mpsc::Sender<findings::IngestJob>,
    write: SqlitePool,
    pub(in crate::store) read: SqlitePool,
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
        super::super::codec::assert_every_file_embedded("migrations", MIGRATIONS);
    }
}
