//! The PostgreSQL store (sqlx). The migrations in
//! `controller/migrations-postgres/` (one per SQLite migration, same number
//! and name) are embedded in the binary and run at connect; sqlx holds an
//! advisory lock meanwhile, so controllers starting together migrate once.
//!
//! One pool serves reads and writes: PostgreSQL runs concurrent writers, so
//! each request commits its own transaction (no group-commit task as in
//! SQLite). Statements mirror the SQLite store one for one, file for file:
//! `agents.rs`, `findings.rs`, `faults.rs`, `gamedays.rs`, `paths.rs`.

mod agents;
mod faults;
mod findings;
mod gamedays;
mod logouts;
mod paths;

use std::future::Future;
use std::pin::Pin;
use std::str::FromStr as _;
use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use super::codec::Migrations;
// The submodules take these from here (`super::json`, ...).
use super::codec::{digest, enum_str, json, parse_enum, parse_json, parse_time};
use super::{DatabaseUrl, Store, StoreError, StoreFuture};

/// The migrations, embedded in the binary in order (a test checks that every
/// file of `controller/migrations-postgres/` is listed here).
pub const MIGRATIONS: Migrations = &[
    (1, "init", include_str!("../../../migrations-postgres/0001_init.sql")),
    (
        2,
        "faults",
        include_str!("../../../migrations-postgres/0002_faults.sql"),
    ),
    (
        3,
        "fault_history",
        include_str!("../../../migrations-postgres/0003_fault_history.sql"),
    ),
    (
        4,
        "mesh_keys",
        include_str!("../../../migrations-postgres/0004_mesh_keys.sql"),
    ),
    (
        5,
        "agent_credentials",
        include_str!("../../../migrations-postgres/0005_agent_credentials.sql"),
    ),
    (
        6,
        "safety_lever",
        include_str!("../../../migrations-postgres/0006_safety_lever.sql"),
    ),
    (
        7,
        "gamedays",
        include_str!("../../../migrations-postgres/0007_gamedays.sql"),
    ),
    (
        8,
        "fault_agent_time",
        include_str!("../../../migrations-postgres/0008_fault_agent_time.sql"),
    ),
    (
        9,
        "gameday_runs",
        include_str!("../../../migrations-postgres/0009_gameday_runs.sql"),
    ),
    (
        10,
        "fault_lease",
        include_str!("../../../migrations-postgres/0010_fault_lease.sql"),
    ),
    (
        11,
        "console_logouts",
        include_str!("../../../migrations-postgres/0011_console_logouts.sql"),
    ),
];

pub fn migrator() -> Migrator {
    super::codec::migrator(MIGRATIONS)
}

/// Connections of the pool: the API's handlers and the background tasks
/// (flusher, fault lifecycle, game-day runner) at once.
const POOL_SIZE: u32 = 8;
/// How long a request waits for a connection (or for the server at start).
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

pub struct PgStore {
    pub(in crate::store) pool: PgPool,
}

impl PgStore {
    /// Connects to `url` and runs the migrations.
    pub async fn connect(url: &DatabaseUrl) -> Result<PgStore, StoreError> {
        let opts = PgConnectOptions::from_str(url.expose())?.application_name("graydar-controller");
        let pool = PgPoolOptions::new()
            .max_connections(POOL_SIZE)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(opts)
            .await?;
        migrator().run(&pool).await?;
        Ok(PgStore { pool })
    }
}

async fn ping(s: &PgStore) -> Result<(), StoreError> {
    sqlx::query("SELECT 1").execute(&s.pool).await?;
    Ok(())
}

impl Store for PgStore {
    fn ping(&self) -> StoreFuture<'_, ()> {
        Box::pin(ping(self))
    }

    fn close(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(self.pool.close())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_migration_file_is_embedded() {
        super::super::codec::assert_every_file_embedded("migrations-postgres", MIGRATIONS);
    }

    /// Both stores apply the same schema versions under the same names.
    #[test]
    fn migrations_pair_with_the_sqlite_ones() {
        let names = |m: Migrations| m.iter().map(|(v, d, _)| (*v, *d)).collect::<Vec<_>>();
        assert_eq!(names(MIGRATIONS), names(super::super::sqlite::MIGRATIONS));
    }
}
