//! Persistence: every SQL statement of the controller lives under this
//! module, behind the [`Store`] trait, so that another database (PostgreSQL)
//! is one more implementation next to [`sqlite::SqliteStore`] and the domain
//! services (agents, findings, faults) do not change: [`postgres::PgStore`]
//! is that one. [`open`] picks one from the configured [`Database`].
//!
//! The trait speaks in records (what a row holds, in the domain's types);
//! the rules (liveness, validation, fault lifecycle) stay in the services.

mod codec;
pub mod copy;
mod database;
pub mod postgres;
pub mod sqlite;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use graydar_common::api::{
    BatchResponse, Finding, FindingDetail, FindingKind, FindingState, FindingTransition, RegisterRequest, Severity,
};
use graydar_common::fault_api::FaultStatusUpdate;
use graydar_common::faults::{FaultSpec, FaultState};
use graydar_common::timestamp::TimestampError;

pub use database::{Database, DatabaseUrl, DatabaseUrlError, open};
pub use postgres::PgStore;
pub use sqlite::SqliteStore;

/// What every store method returns: a boxed future (the trait is used as
/// `dyn Store`).
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    /// A group commit failed; every request of the group gets the error.
    #[error("database: {0}")]
    Group(#[source] Arc<sqlx::Error>),
    #[error("migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("cannot create the data directory {}: {source}", path.display())]
    CreateDir {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("corrupt row: {what}: {source}")]
    Corrupt {
        what: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("corrupt row: {what}: {source}")]
    Time {
        what: &'static str,
        #[source]
        source: TimestampError,
    },
    #[error("corrupt row: unknown {what} {value:?}")]
    UnknownValue { what: &'static str, value: String },
    /// The task that writes transitions is gone (the store is closing).
    #[error("the database writer stopped")]
    WriterStopped,
    /// The database did not answer in time.
    #[error("database: {0}")]
    Unavailable(String),
}

impl StoreError {
    /// Whether the database is away (unreachable, restarting, refusing
    /// connections, out of connections) rather than the request wrong: the
    /// API answers 503, and a caller that retries later loses nothing.
    pub fn is_unavailable(&self) -> bool {
        let e = match self {
            StoreError::Db(e) => e,
            StoreError::Group(e) => e.as_ref(),
            StoreError::Unavailable(_) => return true,
            _ => return false,
        };
        match e {
            sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed
            | sqlx::Error::Tls(_) => true,
            // SQLSTATE class 08 (connection exception), 57P01-57P03 (the
            // server shutting down or starting), 53300 (too many connections).
            sqlx::Error::Database(d) => d
                .code()
                .is_some_and(|c| c.starts_with("08") || c.starts_with("57P") || c == "53300"),
            _ => false,
        }
    }
}

/// An agent as stored: what it registered with, when, and when it was last
/// heard from.
#[derive(Clone, Debug)]
pub struct AgentRecord {
    pub req: RegisterRequest,
    pub registered_ms: i64,
    pub last_seen_ms: i64,
}

/// A transition checked by the findings service, with its time in
/// milliseconds since the epoch.
#[derive(Clone, Debug)]
pub struct TimedTransition {
    pub at_ms: i64,
    pub transition: FindingTransition,
}

/// Filters of the findings list.
#[derive(Clone, Debug, Default)]
pub struct FindingFilter {
    pub kind: Option<FindingKind>,
    pub severity: Option<Severity>,
    pub state: Option<FindingState>,
    pub agent: Option<String>,
    /// Updated at or after (ms since the epoch).
    pub since_ms: Option<i64>,
    pub limit: u32,
}

/// Where a fault stands, as the fault list filters and shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum FaultStatus {
    Running,
    DryRun,
    Ended,
    /// Ended because it failed on every agent it targets.
    Failed,
}

impl FaultStatus {
    pub const ALL: [FaultStatus; 4] = [
        FaultStatus::Running,
        FaultStatus::DryRun,
        FaultStatus::Ended,
        FaultStatus::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FaultStatus::Running => "running",
            FaultStatus::DryRun => "dry_run",
            FaultStatus::Ended => "ended",
            FaultStatus::Failed => "failed",
        }
    }
}

/// Why a fault ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndReason {
    /// Its duration passed.
    Expired,
    /// An operator reverted it (`DELETE /api/v1/faults/{id}`).
    Deleted,
    /// The kill switch.
    RevertAll,
    /// Every agent it targets reported it failed (their reasons are theirs).
    Failed,
}

impl EndReason {
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Expired => "expired",
            EndReason::Deleted => "deleted",
            EndReason::RevertAll => "revert_all",
            EndReason::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<EndReason> {
        [
            EndReason::Expired,
            EndReason::Deleted,
            EndReason::RevertAll,
            EndReason::Failed,
        ]
        .into_iter()
        .find(|r| r.as_str() == s)
    }
}

/// One agent's part in a fault.
#[derive(Clone, Debug)]
pub struct FaultAgentRecord {
    pub state: FaultState,
    pub reason: Option<String>,
    pub operations: Vec<String>,
    /// When the controller last heard about it (its clock).
    pub updated_ms: i64,
    /// When the agent made the reported change, on the agent's clock (ms
    /// since the Unix epoch); `None` until it reports, or when it does not say.
    pub agent_at_ms: Option<i64>,
}

/// A fault with its per-agent states.
#[derive(Clone, Debug)]
pub struct FaultRecord {
    pub id: String,
    pub spec: FaultSpec,
    pub selector: BTreeMap<String, String>,
    pub dry_run: bool,
    pub forced: bool,
    pub duration_seconds: i64,
    /// Its own lease (shorter than the controller's), when it has one.
    pub lease_ms: Option<i64>,
    pub created_ms: i64,
    pub expires_ms: i64,
    pub ended_ms: Option<i64>,
    pub end_reason: Option<EndReason>,
    pub agents: BTreeMap<String, FaultAgentRecord>,
}

/// Which faults to load.
#[derive(Clone, Copy, Debug)]
pub enum FaultSelection<'a> {
    /// Not ended, or ended (or expired, whichever first) less than
    /// `lease_ms` before `now_ms`.
    Live { now_ms: i64, lease_ms: i64 },
    /// The one with this id.
    Id(&'a str),
    /// Newest first, at most `limit`, optionally only those whose stored
    /// status is `status`.
    Newest { status: Option<FaultStatus>, limit: u32 },
}

/// Agents: registrations and last-seen times.
pub trait AgentStore: Send + Sync {
    fn load_agents(&self) -> StoreFuture<'_, Vec<AgentRecord>>;
    /// One registered agent (another controller registered it).
    fn agent<'a>(&'a self, hostname: &'a str) -> StoreFuture<'a, Option<AgentRecord>>;
    /// Every agent's last-seen time (what the other controllers flushed).
    fn last_seen_all(&self) -> StoreFuture<'_, Vec<(String, i64)>>;
    /// Inserts or updates an agent (its `registered_ms` is kept on update).
    fn upsert_agent<'a>(&'a self, agent: &'a AgentRecord) -> StoreFuture<'a, ()>;
    /// Writes newer last-seen times (hostname, ms) in one transaction.
    fn update_last_seen<'a>(&'a self, seen: &'a [(String, i64)]) -> StoreFuture<'a, ()>;
    /// Firing findings per agent (of one agent, or of all).
    fn firing_counts<'a>(&'a self, agent: Option<&'a str>) -> StoreFuture<'a, HashMap<String, u64>>;
}

/// One agent's credential as stored: only the secret's SHA-256.
#[derive(Clone, PartialEq, Eq)]
pub struct CredentialRecord {
    pub hostname: String,
    pub sha256: [u8; 32],
    pub created_ms: i64,
}

impl std::fmt::Debug for CredentialRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CredentialRecord")
            .field("hostname", &self.hostname)
            .field("created_ms", &self.created_ms)
            .finish_non_exhaustive()
    }
}

/// Per-agent credentials (issued at enrollment, one per hostname).
pub trait CredentialStore: Send + Sync {
    /// Every stored credential.
    fn credentials(&self) -> StoreFuture<'_, Vec<CredentialRecord>>;
    /// `hostname`'s credential, if it has one.
    fn credential<'a>(&'a self, hostname: &'a str) -> StoreFuture<'a, Option<CredentialRecord>>;
    /// Stores `c` if its hostname has no credential yet, and returns the
    /// digest the hostname is bound to afterwards (`c`'s, or the one it had):
    /// one transaction, so of two enrollments of one hostname only one binds.
    fn bind_credential<'a>(&'a self, c: &'a CredentialRecord) -> StoreFuture<'a, [u8; 32]>;
    /// Forgets `hostname`'s credential: whether there was one.
    fn delete_credential<'a>(&'a self, hostname: &'a str) -> StoreFuture<'a, bool>;
}

/// Findings and their transitions.
pub trait FindingStore: Send + Sync {
    /// Stores one request's transitions. Transitions already stored (same
    /// finding, transition and time) count as duplicates and change
    /// nothing; a finding's row follows its newest transition.
    fn ingest(&self, agent: String, items: Vec<TimedTransition>) -> StoreFuture<'_, BatchResponse>;
    /// Findings matching `f`: firing first, then newest first.
    fn findings<'a>(&'a self, f: &'a FindingFilter) -> StoreFuture<'a, Vec<Finding>>;
    /// One finding with its history, oldest first.
    fn finding<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<FindingDetail>>;
    /// Transitions stored in total.
    fn transition_count(&self) -> StoreFuture<'_, i64>;
}

/// Faults, their per-agent states and the revert-all epoch.
pub trait FaultStore: Send + Sync {
    /// The selected faults, each with its agents, read in one snapshot.
    fn load_faults<'a>(&'a self, which: FaultSelection<'a>) -> StoreFuture<'a, Vec<FaultRecord>>;
    fn insert_fault<'a>(&'a self, fault: &'a FaultRecord) -> StoreFuture<'a, ()>;
    /// Marks the faults of `ids` not ended yet as ended at `ended_ms`.
    fn end_faults<'a>(&'a self, ids: &'a [String], ended_ms: i64, reason: EndReason) -> StoreFuture<'a, ()>;
    /// Stores `agent`'s reported states; how many rows matched.
    fn update_fault_states<'a>(
        &'a self,
        agent: &'a str,
        updates: &'a [FaultStatusUpdate],
        now_ms: i64,
    ) -> StoreFuture<'a, u64>;
    /// Faults ended or expired at `now_ms`.
    /// Faults ended (or expired) by `now_ms`: (all of them, those that failed).
    fn count_ended_faults(&self, now_ms: i64) -> StoreFuture<'_, (i64, i64)>;
    fn revert_all_epoch(&self) -> StoreFuture<'_, u64>;
    /// The kill switch, in one transaction: sets the revert-all epoch to
    /// `epoch` and marks the faults of `ids` not ended yet as ended at
    /// `ended_ms` ([`EndReason::RevertAll`]).
    fn revert_all<'a>(&'a self, epoch: u64, ids: &'a [String], ended_ms: i64) -> StoreFuture<'a, ()>;
    /// The safety lever: `Some` while engaged.
    fn safety_lever(&self) -> StoreFuture<'_, Option<LeverRecord>>;
    /// Engages (`Some`, replacing an earlier engagement) or releases (`None`).
    fn set_safety_lever<'a>(&'a self, lever: Option<&'a LeverRecord>) -> StoreFuture<'a, ()>;
    /// The turn of a change of the fault set among every controller on this
    /// database, held until the [`ChangeTurn`] is dropped. One controller
    /// (SQLite) has nothing to wait for: its own turn (a mutex) is enough.
    fn change_turn(&self) -> StoreFuture<'_, ChangeTurn> {
        Box::pin(async { Ok(ChangeTurn::none()) })
    }
}

/// A change's turn among several controllers (PostgreSQL: a transaction
/// holding an advisory lock, released when it ends at the drop).
pub struct ChangeTurn(#[expect(dead_code, reason = "held for its drop")] Box<dyn std::any::Any + Send>);

impl ChangeTurn {
    /// No turn to hold (one controller).
    pub fn none() -> ChangeTurn {
        ChangeTurn(Box::new(()))
    }

    /// A turn held while `guard` lives.
    pub fn held(guard: impl std::any::Any + Send) -> ChangeTurn {
        ChangeTurn(Box::new(guard))
    }
}

/// The engaged safety lever as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeverRecord {
    pub engaged_ms: i64,
    pub reason: String,
}

/// One fleet key of the path mesh.
#[derive(Clone, PartialEq, Eq)]
pub struct MeshKeyRecord {
    /// 1 to 255.
    pub id: u8,
    /// 32 bytes.
    pub secret: Vec<u8>,
    pub created_ms: i64,
    /// From then on agents sign with it (the newest such key).
    pub active_ms: i64,
}

impl std::fmt::Debug for MeshKeyRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshKeyRecord")
            .field("id", &self.id)
            .field("created_ms", &self.created_ms)
            .field("active_ms", &self.active_ms)
            .finish_non_exhaustive()
    }
}

/// The path mesh's fleet keys.
pub trait PathStore: Send + Sync {
    /// Every stored key, oldest first.
    fn mesh_keys(&self) -> StoreFuture<'_, Vec<MeshKeyRecord>>;
    /// Adds `key` (replacing one of the same id) and keeps only the newest
    /// `keep` keys, in one transaction.
    fn add_mesh_key<'a>(&'a self, key: &'a MeshKeyRecord, keep: usize) -> StoreFuture<'a, ()>;
}

/// A game-day definition as stored: its spec as JSON.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GameDayRecord {
    pub name: String,
    pub spec: String,
    pub created_ms: i64,
    pub updated_ms: i64,
}

/// Game-day definitions.
pub trait GameDayStore: Send + Sync {
    /// Every definition, by name.
    fn gamedays(&self) -> StoreFuture<'_, Vec<GameDayRecord>>;
    fn gameday<'a>(&'a self, name: &'a str) -> StoreFuture<'a, Option<GameDayRecord>>;
    /// Stores a new definition; `false` (nothing written) when the name exists.
    fn insert_gameday<'a>(&'a self, g: &'a GameDayRecord) -> StoreFuture<'a, bool>;
    /// Creates or replaces (keeping the first `created_ms`); the `created_ms`
    /// of the one it replaced.
    fn put_gameday<'a>(&'a self, g: &'a GameDayRecord) -> StoreFuture<'a, Option<i64>>;
    /// `true` when there was one.
    fn delete_gameday<'a>(&'a self, name: &'a str) -> StoreFuture<'a, bool>;
    /// Stores a new run.
    fn insert_run<'a>(&'a self, r: &'a RunRecord) -> StoreFuture<'a, ()>;
    /// Rewrites a run (its id must exist).
    fn update_run<'a>(&'a self, r: &'a RunRecord) -> StoreFuture<'a, ()>;
    fn run<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<RunRecord>>;
    /// Newest first.
    fn runs<'a>(&'a self, f: &'a RunFilter) -> StoreFuture<'a, Vec<RunRecord>>;
    /// Runs not `completed`, oldest first.
    fn unfinished_runs(&self) -> StoreFuture<'_, Vec<RunRecord>>;
    /// Deletes `gameday`'s completed runs but the newest `keep`; how many went.
    fn prune_runs<'a>(&'a self, gameday: &'a str, keep: u32) -> StoreFuture<'a, u64>;
}

/// A game-day run as stored: the run document (JSON) and the columns the
/// list filters on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunRecord {
    pub id: String,
    pub gameday: String,
    pub trigger: String,
    pub state: String,
    pub outcome: Option<String>,
    pub created_ms: i64,
    pub updated_ms: i64,
    pub doc: String,
}

/// Filters of the run list.
#[derive(Clone, Debug, Default)]
pub struct RunFilter {
    pub gameday: Option<String>,
    pub state: Option<String>,
    pub outcome: Option<String>,
    pub limit: u32,
}

/// The whole store.
/// The console's sessions ended by a logout, kept until they would have
/// expired (the cookie itself is stateless: `api/console/session.rs`).
pub trait LogoutStore: Send + Sync {
    /// Records that the session `id` ended, until `expires_ms`; forgets
    /// those that expired by `now_ms`.
    fn record_logout<'a>(&'a self, id: &'a str, expires_ms: i64, now_ms: i64) -> StoreFuture<'a, ()>;
    /// Whether the session `id` was ended by a logout.
    fn logged_out<'a>(&'a self, id: &'a str) -> StoreFuture<'a, bool>;
}

pub trait Store:
    AgentStore + CredentialStore + FindingStore + FaultStore + PathStore + GameDayStore + LogoutStore
{
    /// Whether the database answers.
    fn ping(&self) -> StoreFuture<'_, ()>;
    /// Final writes (a checkpoint) and closing the connections.
    fn close(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>>;
}
