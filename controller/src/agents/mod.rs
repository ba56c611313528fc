//! The agent registry: agents register (and re-register), heartbeat, and
//! are healthy, stale or lost by the time since they were last heard from.
//!
//! Agents are cached in memory: a heartbeat only touches the cache, and the
//! last-seen times of the agents heard from are written in one transaction
//! every few seconds ([`AgentService::flush`]).
//!
//! Each agent's clock offset is estimated from the request/response times
//! its heartbeats carry ([`AgentService::add_clock_exchange`],
//! [`AgentService::clock_offset`]). The estimates live in memory only: a
//! restarted controller has none until each agent's next heartbeats.

pub mod credentials;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use graydar_common::api::{AgentInfo, AgentState, ClockExchange, ClockOffsetInfo, RegisterRequest};
use graydar_common::clock::{Offset, OffsetEstimator};

use crate::store::{AgentRecord, AgentStore, StoreError};
use graydar_common::api::Timestamp;

use crate::timefmt::now_ms;

/// Longest hostname accepted (the DNS limit).
pub const MAX_HOSTNAME: usize = 253;

/// Longest label (the part between dots) of a hostname (the DNS limit).
pub const MAX_HOSTNAME_LABEL: usize = 63;

/// Heartbeat exchanges an agent's clock offset is estimated from (the
/// newest): at the default 10 s interval under three minutes, short enough
/// for clock drift not to matter.
pub const CLOCK_WINDOW: usize = 16;

/// Checks a hostname as DNS has it: 1 to [`MAX_HOSTNAME`] characters,
/// dot-separated labels of 1 to [`MAX_HOSTNAME_LABEL`] ASCII letters,
/// digits, `-` and `_` (`_` is not a hostname character, but machines are
/// named with it), a label neither beginning nor ending with `-`. What is
/// wrong, for the error message.
pub fn check_hostname(h: &str) -> Result<(), String> {
    if h.is_empty() || h.len() > MAX_HOSTNAME {
        return Err(format!("must be 1 to {MAX_HOSTNAME} characters, got {}", h.len()));
    }
    for label in h.split('.') {
        if label.is_empty() {
            return Err("empty label (a leading, trailing or doubled '.')".to_owned());
        }
        if label.len() > MAX_HOSTNAME_LABEL {
            return Err(format!(
                "label of {} characters (at most {MAX_HOSTNAME_LABEL} between dots)",
                label.len()
            ));
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
        {
            return Err(format!(
                "character {c:?} (allowed: ASCII letters, digits, '-', '_' and '.' between labels)"
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!("label {label:?} begins or ends with '-'"));
        }
    }
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The agent must register first.
    #[error("agent {hostname:?} is not registered")]
    NotRegistered { hostname: String },
    /// No such agent (reading).
    #[error("no agent {hostname:?}")]
    NotFound { hostname: String },
    /// Refused at registration, before anything is stored (422).
    #[error("hostname {hostname:?}: {reason}")]
    InvalidHostname { hostname: String, reason: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// When agents count as stale / lost.
#[derive(Clone, Copy, Debug)]
pub struct Liveness {
    pub stale_after: Duration,
    pub lost_after: Duration,
}

impl Liveness {
    pub fn state(&self, last_seen_ms: i64, now_ms: i64) -> AgentState {
        let age = u128::try_from(now_ms.saturating_sub(last_seen_ms).max(0)).unwrap_or(0);
        if age >= self.lost_after.as_millis() {
            AgentState::Lost
        } else if age >= self.stale_after.as_millis() {
            AgentState::Stale
        } else {
            AgentState::Healthy
        }
    }
}

pub struct AgentService {
    store: Arc<dyn AgentStore>,
    agents: Mutex<HashMap<String, AgentRecord>>,
    /// Agents heard from since the last flush.
    dirty: Mutex<HashSet<String>>,
    liveness: Liveness,
    /// Each agent's clock offset, from its heartbeats (memory only).
    clocks: Mutex<HashMap<String, OffsetEstimator>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Takes a stored record of an agent (another controller's): its
/// registration as stored, its last-seen time whichever is newer. Whether
/// the agent was new here.
fn merge(agents: &mut HashMap<String, AgentRecord>, a: AgentRecord) -> bool {
    match agents.get_mut(&a.req.hostname) {
        Some(known) => {
            let last_seen_ms = known.last_seen_ms.max(a.last_seen_ms);
            *known = AgentRecord { last_seen_ms, ..a };
            false
        }
        None => {
            agents.insert(a.req.hostname.clone(), a);
            true
        }
    }
}

impl AgentService {
    /// Loads the registered agents from `store`.
    pub async fn open(store: Arc<dyn AgentStore>, liveness: Liveness) -> Result<AgentService, AgentError> {
        let agents = store
            .load_agents()
            .await?
            .into_iter()
            .map(|a| (a.req.hostname.clone(), a))
            .collect();
        Ok(AgentService {
            store,
            agents: Mutex::new(agents),
            dirty: Mutex::new(HashSet::new()),
            liveness,
            clocks: Mutex::new(HashMap::new()),
        })
    }

    pub fn liveness(&self) -> Liveness {
        self.liveness
    }

    /// Count of agents by state, now (every state, in [`AgentState::ALL`] order).
    pub fn states(&self) -> Vec<(AgentState, u64)> {
        let now = now_ms();
        let mut out: Vec<(AgentState, u64)> = AgentState::ALL.iter().map(|s| (*s, 0)).collect();
        for a in lock(&self.agents).values() {
            let state = self.liveness.state(a.last_seen_ms, now);
            if let Some((_, n)) = out.iter_mut().find(|(s, _)| *s == state) {
                *n += 1;
            }
        }
        out
    }

    /// A hostname fit to register, or why not ([`check_hostname`]).
    pub fn valid_hostname(hostname: &str) -> Result<(), AgentError> {
        check_hostname(hostname).map_err(|reason| AgentError::InvalidHostname {
            // Long names are cut in the message (the reason gives the length).
            hostname: hostname.chars().take(80).collect(),
            reason,
        })
    }

    /// Registers (or re-registers) an agent; idempotent.
    pub async fn register(&self, req: RegisterRequest) -> Result<AgentInfo, AgentError> {
        AgentService::valid_hostname(&req.hostname)?;
        let now = now_ms();
        let registered_ms = lock(&self.agents).get(&req.hostname).map_or(now, |a| a.registered_ms);
        let hostname = req.hostname.clone();
        let record = AgentRecord {
            req,
            registered_ms,
            last_seen_ms: now,
        };
        self.store.upsert_agent(&record).await?;
        lock(&self.agents).insert(hostname.clone(), record);
        self.get(&hostname).await
    }

    /// Rereads the registered agents from the store (another controller on
    /// the same database registered some, or wrote the last-seen times of
    /// those it hears from). A last-seen time newer here stays.
    pub async fn reload(&self) -> Result<usize, AgentError> {
        let loaded = self.store.load_agents().await?;
        let mut agents = lock(&self.agents);
        let mut added = 0;
        for a in loaded {
            added += usize::from(merge(&mut agents, a));
        }
        Ok(added)
    }

    /// Rereads one agent (another controller registered it): what it
    /// registered with, when it is registered.
    pub async fn reload_one(&self, hostname: &str) -> Result<Option<RegisterRequest>, AgentError> {
        let Some(a) = self.store.agent(hostname).await? else {
            return Ok(None);
        };
        let req = a.req.clone();
        merge(&mut lock(&self.agents), a);
        Ok(Some(req))
    }

    /// Takes the last-seen times the other controllers flushed (newer ones
    /// only): an agent heard by another controller is not stale here.
    pub async fn refresh_last_seen(&self) -> Result<(), AgentError> {
        let seen = self.store.last_seen_all().await?;
        let mut agents = lock(&self.agents);
        for (host, at) in seen {
            if let Some(a) = agents.get_mut(&host)
                && a.last_seen_ms < at
            {
                a.last_seen_ms = at;
            }
        }
        Ok(())
    }

    /// What each registered agent registered with (its interfaces, dm
    /// devices and addresses among it).
    pub fn registrations(&self) -> Vec<RegisterRequest> {
        lock(&self.agents).values().map(|a| a.req.clone()).collect()
    }

    pub fn is_registered(&self, hostname: &str) -> bool {
        lock(&self.agents).contains_key(hostname)
    }

    /// Marks the agent as heard from now (in memory; see [`AgentService::flush`]).
    pub fn touch(&self, hostname: &str) -> Result<AgentState, AgentError> {
        let now = now_ms();
        let mut agents = lock(&self.agents);
        let a = agents.get_mut(hostname).ok_or_else(|| AgentError::NotRegistered {
            hostname: hostname.to_owned(),
        })?;
        a.last_seen_ms = now;
        lock(&self.dirty).insert(hostname.to_owned());
        Ok(AgentState::Healthy)
    }

    /// Adds a heartbeat's exchange to the registered agent's clock
    /// estimate; `false` when ignored: an impossible exchange (a negative
    /// round trip, the controller answering before it received: a clock
    /// stepped meanwhile), or an agent not registered.
    pub fn add_clock_exchange(&self, hostname: &str, exchange: ClockExchange) -> bool {
        if !self.is_registered(hostname) {
            return false;
        }
        let mut clocks = lock(&self.clocks);
        match clocks.get_mut(hostname) {
            Some(est) => est.add(exchange.into()),
            None => {
                let mut est = OffsetEstimator::new(CLOCK_WINDOW);
                let added = est.add(exchange.into());
                if added {
                    clocks.insert(hostname.to_owned(), est);
                }
                added
            }
        }
    }

    /// Controller clock minus `hostname`'s clock, from its recent
    /// heartbeats; `None` until it completed an exchange with this
    /// controller process. A time `t` on the agent's clock is
    /// `t + offset_ms ± uncertainty_ms` on the controller's.
    pub fn clock_offset(&self, hostname: &str) -> Option<Offset> {
        lock(&self.clocks).get(hostname).and_then(OffsetEstimator::estimate)
    }

    fn clock_info(&self, hostname: &str) -> Option<ClockOffsetInfo> {
        let clocks = lock(&self.clocks);
        let est = clocks.get(hostname)?;
        let o = est.estimate()?;
        Some(ClockOffsetInfo {
            offset_ms: o.offset_ms,
            uncertainty_ms: o.uncertainty_ms,
            samples: u32::try_from(est.len()).unwrap_or(u32::MAX),
        })
    }

    /// Writes the last-seen times of the agents heard from since the last
    /// flush; how many.
    pub async fn flush(&self) -> Result<usize, AgentError> {
        let seen: Vec<(String, i64)> = {
            let names: Vec<String> = lock(&self.dirty).drain().collect();
            let agents = lock(&self.agents);
            names
                .into_iter()
                .filter_map(|n| agents.get(&n).map(|a| (n, a.last_seen_ms)))
                .collect()
        };
        if seen.is_empty() {
            return Ok(0);
        }
        self.store.update_last_seen(&seen).await?;
        Ok(seen.len())
    }

    fn info(&self, a: &AgentRecord, firing: u64, now: i64) -> AgentInfo {
        AgentInfo {
            hostname: a.req.hostname.clone(),
            addresses: a.req.addresses.clone(),
            labels: a.req.labels.clone(),
            kernel_version: a.req.kernel_version.clone(),
            agent_version: a.req.agent_version.clone(),
            capabilities: a.req.capabilities.clone(),
            registered_at: Timestamp::from_unix_ms(a.registered_ms),
            last_seen: Timestamp::from_unix_ms(a.last_seen_ms),
            state: self.liveness.state(a.last_seen_ms, now),
            firing_findings: firing,
            clock: self.clock_info(&a.req.hostname),
        }
    }

    /// Every registered agent, sorted by hostname.
    pub async fn list(&self) -> Result<Vec<AgentInfo>, AgentError> {
        let firing = self.store.firing_counts(None).await?;
        let now = now_ms();
        let mut out: Vec<AgentInfo> = lock(&self.agents)
            .values()
            .map(|a| self.info(a, firing.get(&a.req.hostname).copied().unwrap_or(0), now))
            .collect();
        out.sort_by(|a, b| a.hostname.cmp(&b.hostname));
        Ok(out)
    }

    pub async fn get(&self, hostname: &str) -> Result<AgentInfo, AgentError> {
        let firing = self.store.firing_counts(Some(hostname)).await?;
        let agents = lock(&self.agents);
        let a = agents.get(hostname).ok_or_else(|| AgentError::NotFound {
            hostname: hostname.to_owned(),
        })?;
        Ok(self.info(a, firing.get(hostname).copied().unwrap_or(0), now_ms()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostnames_are_checked_as_dns_names() {
        for ok in [
            "a",
            "node-1",
            "Node1.example.com",
            "ip-10-0-0-1.ec2.internal",
            "build_host",
            &"a".repeat(63),
            &format!(
                "{}.{}.{}.{}",
                "a".repeat(63),
                "b".repeat(63),
                "c".repeat(63),
                "d".repeat(61)
            ),
        ] {
            assert_eq!(check_hostname(ok), Ok(()), "{ok:?}");
        }
        for (bad, why) in [
            ("", "must be 1 to 253 characters, got 0"),
            (&"a.".repeat(127), "must be 1 to 253 characters, got 254"),
            (&"a".repeat(64), "label of 64 characters"),
            ("a..b", "empty label"),
            (".a", "empty label"),
            ("a.", "empty label"),
            ("a b", "character ' '"),
            ("a/b", "character '/'"),
            ("../etc", "empty label"),
            ("nöde", "character 'ö'"),
            ("a\n", "character '\\n'"),
            ("-a", "begins or ends with '-'"),
            ("a.b-", "label \"b-\" begins or ends with '-'"),
        ] {
            let e = check_hostname(bad).expect_err(bad);
            assert!(e.contains(why), "{bad:?}: {e:?} lacks {why:?}");
        }
    }

    #[test]
    fn liveness_thresholds() {
        let l = Liveness {
            stale_after: Duration::from_secs(30),
            lost_after: Duration::from_secs(300),
        };
        assert_eq!(l.state(0, 29_999), AgentState::Healthy);
        assert_eq!(l.state(0, 30_000), AgentState::Stale);
        assert_eq!(l.state(0, 300_000), AgentState::Lost);
        assert_eq!(l.state(10, 0), AgentState::Healthy);
    }
}
