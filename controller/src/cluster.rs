//! Several controller replicas on one PostgreSQL database: how a change
//! made on one replica reaches the others, and which replica runs the
//! background work.
//!
//! - **Changes** (the fault set, registrations, mesh keys, game-day runs to
//!   start, abort or resume) are announced with PostgreSQL `NOTIFY` on the
//!   channel [`CHANNEL`] after they are stored. Every replica `LISTEN`s on a
//!   connection of its own and reloads what changed from the store: an agent
//!   long-polling replica 1 is woken as soon as replica 2 has stored its
//!   fault. Every [`RESYNC_INTERVAL`] a replica also rereads the faults and
//!   the agents' last-seen times whatever it heard, and everything every
//!   [`FULL_RESYNC_INTERVAL`] and whenever notifications may have been lost
//!   (the listener's connection broke: [`Change::Resync`]).
//! - **The leader** holds the session-level advisory lock [`LEADER_LOCK`] on
//!   a connection of its own and is the only replica that runs the fault
//!   expiry, the game-day runner and the scheduler. The others try to take
//!   the lock every [`LEADER_RETRY`]: when the leader dies its connection
//!   closes, PostgreSQL releases the lock and another replica has it within
//!   that time. A leader that loses its lock connection stops its background
//!   work at once (it cannot tell whether another replica took over).
//!
//! With SQLite there is one controller: [`Cluster::single`] is always the
//! leader and announces nothing (the services update their own memory).
//! graydar runs no consensus of its own: PostgreSQL's locks and its own HA
//! (streaming replicas, Patroni, CloudNativePG) are the ground truth.

use std::str::FromStr as _;
use std::sync::Arc;
use std::time::Duration;

use sqlx::Connection as _;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgListener, PgPool, PgPoolOptions};
use tokio::sync::{broadcast, watch};

use crate::store::{DatabaseUrl, StoreError};

/// The `LISTEN`/`NOTIFY` channel of graydar's controllers.
pub const CHANNEL: &str = "graydar_changes";
/// The advisory lock (`pg_try_advisory_lock`) the leader holds: "graydar" and
/// a 1 in ASCII, so it meets no other application's key by chance.
pub const LEADER_LOCK: i64 = 0x6772_6179_6461_7231;
/// How often a replica that is not the leader tries the lock, and how often
/// the leader checks that its lock connection is alive.
pub const LEADER_RETRY: Duration = Duration::from_secs(2);
/// Every replica reloads from the store this often even when it heard of no
/// change (a notification lost with a replica that died after its write).
pub const RESYNC_INTERVAL: Duration = Duration::from_secs(5);
/// Every replica rereads every agent and credential this often (a
/// registration's notification lost with a replica that died after its
/// write; the agent's next call to another replica also re-registers it).
pub const FULL_RESYNC_INTERVAL: Duration = Duration::from_secs(60);
/// Longest text a notification carries (PostgreSQL's limit is 8000 bytes).
const MAX_REASON: usize = 1000;

/// What another replica changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// The fault set: a fault created or ended, an agent's state, revert-all,
    /// the safety lever.
    Faults,
    /// This agent registered, or its credential was bound or reset.
    Agent(String),
    /// The path mesh's keys were rotated.
    Keys,
    /// A game-day run passed its preflight and waits for the leader to run it.
    RunStart(String),
    /// An operator aborted the run on another replica (its faults are ended
    /// there already; the leader ends the run).
    RunAbort { run: String, reason: String },
    /// An operator resumed the run's gate on another replica.
    RunResume(String),
    /// Notifications may have been missed: reload everything.
    Resync,
}

impl Change {
    fn encode(&self) -> String {
        match self {
            Change::Faults => "faults".to_owned(),
            Change::Agent(host) => format!("agent {host}"),
            Change::Keys => "keys".to_owned(),
            Change::RunStart(id) => format!("run-start {id}"),
            Change::RunAbort { run, reason } => {
                let reason: String = reason.chars().take(MAX_REASON).collect();
                format!("run-abort {run} {reason}")
            }
            Change::RunResume(id) => format!("run-resume {id}"),
            Change::Resync => "resync".to_owned(),
        }
    }

    fn decode(s: &str) -> Option<Change> {
        let (kind, rest) = s.split_once(' ').unwrap_or((s, ""));
        Some(match kind {
            "faults" => Change::Faults,
            "agent" if !rest.is_empty() => Change::Agent(rest.to_owned()),
            "keys" => Change::Keys,
            "run-start" if !rest.is_empty() => Change::RunStart(rest.to_owned()),
            "run-abort" => {
                let (run, reason) = rest.split_once(' ').unwrap_or((rest, ""));
                if run.is_empty() {
                    return None;
                }
                Change::RunAbort {
                    run: run.to_owned(),
                    reason: reason.to_owned(),
                }
            }
            "run-resume" if !rest.is_empty() => Change::RunResume(rest.to_owned()),
            "resync" => Change::Resync,
            _ => return None,
        })
    }
}

/// A notification as sent: the sending replica's id, then the change.
fn payload(replica: &str, c: &Change) -> String {
    format!("{replica} {}", c.encode())
}

/// `(sender, change)` of a payload; `None` for one this version does not know.
fn parse_payload(p: &str) -> Option<(&str, Change)> {
    let (from, rest) = p.split_once(' ')?;
    Some((from, Change::decode(rest)?))
}

pub struct Cluster {
    /// This replica's id (random), in its notifications and logs.
    id: String,
    changes: broadcast::Sender<Change>,
    leader: watch::Receiver<bool>,
    /// One controller: the leader's flag, kept (it never changes).
    _always: Option<watch::Sender<bool>>,
    /// PostgreSQL: the pool notifications are sent on.
    pool: Option<PgPool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Cluster {
    /// The only controller on its database (SQLite): always the leader.
    pub fn single() -> Arc<Cluster> {
        let (tx, _) = broadcast::channel(16);
        let (always, leader) = watch::channel(true);
        Arc::new(Cluster {
            id: replica_id(),
            changes: tx,
            leader,
            _always: Some(always),
            pool: None,
            tasks: Vec::new(),
        })
    }

    /// One replica among those on the PostgreSQL database at `url`: listens
    /// for the others' changes and competes for the leader's lock, each on a
    /// connection of its own (kept up again after the server comes back).
    pub async fn postgres(url: &DatabaseUrl) -> Result<Arc<Cluster>, StoreError> {
        let opts = PgConnectOptions::from_str(url.expose())?.application_name("graydar-controller-cluster");
        let pool = PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(opts.clone())
            .await?;
        let id = replica_id();
        let (tx, _) = broadcast::channel(1024);
        let (leader_tx, leader) = watch::channel(false);
        let listener = tokio::spawn(listen(pool.clone(), id.clone(), tx.clone()));
        let elector = tokio::spawn(elect(opts, id.clone(), leader_tx));
        tracing::info!(replica = %id, "replica on PostgreSQL: listening for changes, competing for the leader's lock");
        Ok(Arc::new(Cluster {
            id,
            changes: tx,
            leader,
            _always: None,
            pool: Some(pool),
            tasks: vec![listener, elector],
        }))
    }

    /// Leaves the cluster now: stops listening and competing, and closes
    /// the lock's connection (the leader's lock is released at once).
    pub fn leave(&self) {
        for t in &self.tasks {
            t.abort();
        }
    }

    /// This replica's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Whether other replicas may share the database (changes must be
    /// announced and the store reread before a check).
    pub fn shared(&self) -> bool {
        self.pool.is_some()
    }

    /// Whether this replica runs the background work now.
    pub fn is_leader(&self) -> bool {
        *self.leader.borrow()
    }

    /// Changes as leadership comes and goes.
    pub fn leadership(&self) -> watch::Receiver<bool> {
        self.leader.clone()
    }

    /// The other replicas' changes, as they are heard.
    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.changes.subscribe()
    }

    /// Tells the other replicas what this one stored. Best effort: a
    /// notification that cannot be sent is logged, and the others reload
    /// within [`RESYNC_INTERVAL`] anyway.
    pub async fn notify(&self, c: Change) {
        let Some(pool) = &self.pool else { return };
        let sent = sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANNEL)
            .bind(payload(&self.id, &c))
            .execute(pool)
            .await;
        if let Err(e) = sent {
            tracing::warn!(change = ?c, error = %e, "announcing a change to the other replicas (they reload within {RESYNC_INTERVAL:?})");
        }
    }
}

fn replica_id() -> String {
    format!("r-{:08x}", fastrand::u32(..))
}

/// Hears the other replicas' notifications (forever; reconnects). A
/// connection that broke may have lost some: [`Change::Resync`].
async fn listen(pool: PgPool, me: String, tx: broadcast::Sender<Change>) {
    loop {
        let mut l = match PgListener::connect_with(&pool).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "connecting the change listener; retrying");
                tokio::time::sleep(LEADER_RETRY).await;
                continue;
            }
        };
        if let Err(e) = l.listen(CHANNEL).await {
            tracing::warn!(error = %e, "LISTEN {CHANNEL}; retrying");
            tokio::time::sleep(LEADER_RETRY).await;
            continue;
        }
        let _ = tx.send(Change::Resync);
        loop {
            match l.try_recv().await {
                Ok(Some(n)) => match parse_payload(n.payload()) {
                    Some((from, _)) if from == me => {}
                    Some((_, c)) => {
                        let _ = tx.send(c);
                    }
                    None => tracing::debug!(payload = n.payload(), "a notification this version does not know"),
                },
                // The connection was lost (and is reconnected by the next
                // call): what was sent meanwhile is gone.
                Ok(None) => {
                    tracing::warn!("change listener reconnected: reloading everything");
                    let _ = tx.send(Change::Resync);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "change listener; reconnecting");
                    tokio::time::sleep(LEADER_RETRY).await;
                    break;
                }
            }
        }
    }
}

/// Competes for [`LEADER_LOCK`] forever on a dedicated connection.
async fn elect(opts: PgConnectOptions, me: String, leader: watch::Sender<bool>) {
    loop {
        let mut conn = match PgConnection::connect_with(&opts).await {
            Ok(c) => c,
            Err(e) => {
                step_down(&leader, &me, &format!("cannot connect: {e}"));
                tokio::time::sleep(LEADER_RETRY).await;
                continue;
            }
        };
        loop {
            let held = if *leader.borrow() {
                // Holding it: the connection must be alive.
                sqlx::query_scalar::<_, i32>("SELECT 1")
                    .fetch_one(&mut conn)
                    .await
                    .map(|_| true)
            } else {
                sqlx::query_scalar::<_, bool>("SELECT pg_try_advisory_lock($1)")
                    .bind(LEADER_LOCK)
                    .fetch_one(&mut conn)
                    .await
            };
            match held {
                Ok(true) => {
                    if !*leader.borrow() {
                        tracing::info!(replica = %me, "this replica is the leader: it runs fault expiry, game days and the scheduler");
                        let _ = leader.send(true);
                    }
                }
                Ok(false) => {}
                Err(e) => {
                    step_down(&leader, &me, &format!("lock connection lost: {e}"));
                    break;
                }
            }
            tokio::time::sleep(LEADER_RETRY).await;
        }
        tokio::time::sleep(LEADER_RETRY).await;
    }
}

fn step_down(leader: &watch::Sender<bool>, me: &str, why: &str) {
    if *leader.borrow() {
        tracing::error!(replica = %me, "no longer the leader ({why}): background work stopped");
        let _ = leader.send(false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_survive_the_wire() {
        for c in [
            Change::Faults,
            Change::Agent("node-1.example".into()),
            Change::Keys,
            Change::RunStart("run-0123456789ab".into()),
            Change::RunAbort {
                run: "run-1".into(),
                reason: "stop it: now".into(),
            },
            Change::RunAbort {
                run: "run-2".into(),
                reason: String::new(),
            },
            Change::RunResume("run-3".into()),
            Change::Resync,
        ] {
            let p = payload("r-1", &c);
            assert_eq!(parse_payload(&p), Some(("r-1", c.clone())), "{p}");
        }
    }

    #[test]
    fn unknown_or_malformed_notifications_are_ignored() {
        for p in [
            "",
            "r-1",
            "r-1 ",
            "r-1 nonsense",
            "r-1 agent",
            "r-1 run-start",
            "r-1 run-abort",
            "r-1 run-resume",
        ] {
            assert_eq!(parse_payload(p), None, "{p:?}");
        }
    }

    #[test]
    fn a_long_abort_reason_is_cut_to_fit_a_notification() {
        let c = Change::RunAbort {
            run: "run-1".into(),
            reason: "é".repeat(5000),
        };
        let p = payload("r-12345678", &c);
        assert!(p.len() < 8000, "{}", p.len());
        match parse_payload(&p) {
            Some((_, Change::RunAbort { reason, .. })) => assert_eq!(reason.chars().count(), MAX_REASON),
            other => panic!("{other:?}"),
        }
    }
}
