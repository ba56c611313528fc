//! Fault assignments from the controller: a loop that long-polls this
//! agent's desired set (`GET /api/v1/agents/{hostname}/faults`; the agent
//! always dials out, so it works from behind NAT) and reconciles it with the
//! engine's active faults, kube-runtime style:
//!
//! - desired and not active: `apply` with the lease the controller gave
//!   (a fault that failed is not retried: its failure is reported);
//! - active and no longer desired: `revert`;
//! - active and still desired: `renew` the lease;
//! - dry run: `describe`, report the operations, never apply;
//! - the revert-all epoch grew: `revert_all` (everything the engine has
//!   active, known to the controller or not).
//!
//! Leases are short (the controller's `faults.lease`, 20 s by default) and
//! renewed at every answer (the controller answers at least every lease/3),
//! so a fault lives while the controller wants it and the engine's own 1 s
//! lease timer reverts it within a lease once the controller is gone or
//! unreachable. States (active, reverted, failed with the reason, described
//! with the operations) are posted to `/api/v1/agents/{hostname}/faults/status`
//! after every change, and again until the controller has them.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use graydar_common::fault_api::{DesiredFault, DesiredFaults, FaultStatusReport, FaultStatusUpdate};
use graydar_common::faults::{FaultKind, FaultState};
use graydar_common::timestamp::Timestamp;
use tokio::sync::{Mutex, watch};

use super::engine::FaultEngine;
use super::mechanism::Restored;
use crate::channel::{Backoff, Channel};
use crate::config::Config;
use crate::metrics::Metrics;

/// Longest long-poll asked for (the controller caps it at lease / 3).
pub const POLL_WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
struct Local {
    /// `None` for what start-up recovery reverted that is no fault of a
    /// known kind (an ifb sweep, a journal record of an unknown kind).
    kind: Option<FaultKind>,
    state: FaultState,
    reason: Option<String>,
    operations: Vec<String>,
    /// Not yet acknowledged by the controller.
    dirty: bool,
    /// When this agent entered `state` (its wall clock): for an apply or a
    /// revert, the moment the engine returned, the kernel having confirmed it.
    at: Timestamp,
}

impl Local {
    fn new(kind: Option<FaultKind>, state: FaultState, reason: Option<String>) -> Local {
        Local {
            kind,
            state,
            reason,
            operations: Vec::new(),
            dirty: true,
            at: Timestamp::now(),
        }
    }

    /// A new state stamps the time; a new reason alone keeps it.
    fn set(&mut self, state: FaultState, reason: Option<String>) {
        if self.state != state {
            self.at = Timestamp::now();
        }
        if self.state != state || self.reason != reason {
            self.state = state;
            self.reason = reason;
            self.dirty = true;
        }
    }
}

pub struct Assigner {
    channel: Channel,
    hostname: String,
    engine: Arc<Mutex<FaultEngine>>,
    metrics: Arc<Metrics>,
    local: BTreeMap<String, Local>,
    epoch: Option<u64>,
    stop: watch::Receiver<bool>,
    /// When the protected endpoints were last resolved and handed to the engine.
    protected_at: Option<std::time::Instant>,
    protected_ok: bool,
}

/// `host:port` of an `http(s)://host[:port][/...]` URL (IPv6 in brackets).
pub fn url_authority(url: &str) -> Option<(String, u16)> {
    let (scheme, rest) = url.split_once("://")?;
    let default_port = match scheme {
        "http" => 80,
        "https" => 443,
        _ => return None,
    };
    let auth = rest.split(['/', '?', '#']).next()?;
    let auth = auth.rsplit_once('@').map_or(auth, |(_, a)| a);
    if let Some(v6) = auth.strip_prefix('[') {
        let (host, after) = v6.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None => default_port,
        };
        return Some((host.to_owned(), port));
    }
    match auth.rsplit_once(':') {
        Some((h, p)) => Some((h.to_owned(), p.parse().ok()?)),
        None if !auth.is_empty() => Some((auth.to_owned(), default_port)),
        None => None,
    }
}

/// The controller's resolved addresses (what the engine must never impair).
async fn controller_endpoints(url: &str) -> Vec<std::net::SocketAddr> {
    let Some((host, port)) = url_authority(url) else {
        return Vec::new();
    };
    match tokio::net::lookup_host((host.as_str(), port)).await {
        Ok(a) => {
            let mut v: Vec<_> = a.collect();
            v.sort();
            v.dedup();
            v
        }
        Err(e) => {
            tracing::warn!(host, error = %e, "resolving the controller's address");
            Vec::new()
        }
    }
}

/// Longest wait for the final status report at shutdown.
const SHUTDOWN_REPORT: Duration = Duration::from_secs(2);

/// How often the controller's name is resolved again.
const RESOLVE_EVERY: Duration = Duration::from_secs(60);

impl Assigner {
    /// The loop, ready to [`Assigner::run`], on the agent's controller channel.
    pub fn new(
        cfg: &Config,
        channel: Channel,
        engine: Arc<Mutex<FaultEngine>>,
        recovered: &[super::engine::Recovered],
        metrics: Arc<Metrics>,
        stop: watch::Receiver<bool>,
    ) -> Assigner {
        for k in FaultKind::ALL {
            metrics.faults_active.with_label_values(&[k.as_str()]).set(0);
        }
        // Faults a previous run left applied and start-up reverted: the
        // controller still shows them active until told.
        let local = recovered
            .iter()
            .map(|r| {
                let (state, reason) = match &r.result {
                    Ok(Restored::Restored) => (
                        FaultState::Reverted,
                        "reverted at agent start (left applied by the previous run)".to_owned(),
                    ),
                    Ok(Restored::Gone(why)) => (
                        FaultState::Reverted,
                        format!("ended at agent start (left by the previous run): {why}"),
                    ),
                    // Still in the kernel: active until the retries succeed,
                    // never reported failed.
                    Err(e) => (
                        FaultState::Active,
                        format!("left applied by the previous run; reverting it failed, the agent keeps trying: {e}"),
                    ),
                };
                (r.id.clone(), Local::new(r.kind.fault_kind(), state, Some(reason)))
            })
            .collect();
        Assigner {
            channel,
            hostname: cfg.hostname.clone(),
            engine,
            metrics,
            local,
            epoch: None,
            stop,
            protected_at: None,
            protected_ok: false,
        }
    }

    fn count(&self, kind: FaultKind, op: &str, ok: bool) {
        self.metrics
            .fault_operations
            .with_label_values(&[kind.as_str(), op, if ok { "ok" } else { "error" }])
            .inc();
    }

    fn stopped(&self) -> bool {
        *self.stop.borrow()
    }

    /// Polls and reconciles until the agent stops (the fault runtime then
    /// reverts everything at shutdown).
    pub async fn run(mut self) {
        tracing::info!(
            url = self.channel.base_url(),
            "taking fault assignments from the controller"
        );
        let mut version: Option<u64> = None;
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(5));
        let mut failures = 0u32;
        while !self.stopped() {
            let mut stop = self.stop.clone();
            // Dropping the poll on stop abandons the request at once.
            let res = tokio::select! {
                r = self.channel.desired_faults(&self.hostname, POLL_WAIT, version) => r,
                _ = stop.changed() => break,
            };
            match res {
                Ok(d) => {
                    if failures > 0 {
                        tracing::info!(failures, "fault assignments: controller reachable again");
                    }
                    failures = 0;
                    backoff.reset();
                    version = Some(d.version);
                    self.protect_controller().await;
                    self.reconcile(&d).await;
                    self.report().await;
                }
                Err(e) => {
                    failures += 1;
                    if failures == 1 || failures.is_multiple_of(20) {
                        tracing::warn!(error = %e, failures, "fault assignments: polling the controller failed; \
                            active faults expire on their leases unless renewed");
                    }
                    version = None;
                    // Leases run out on the engine's own timer; keep local
                    // states and metrics true meanwhile.
                    self.note_expired().await;
                    let delay = backoff.next_delay();
                    let mut stop = self.stop.clone();
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = stop.changed() => break,
                    }
                }
            }
        }
        self.shutdown().await;
        tracing::info!("fault assignments stopped");
    }

    /// At shutdown: reverts everything (the runtime would too) and tells the
    /// controller, waiting at most [`SHUTDOWN_REPORT`] for it.
    async fn shutdown(&mut self) {
        let mut eng = self.engine.lock().await;
        let ids = eng.active_ids();
        let failures = eng.revert_all().await;
        drop(eng);
        for id in ids {
            let failed = failures.iter().find(|(f, _)| *f == id).map(|(_, e)| e.to_string());
            if let Some(l) = self.local.get_mut(&id) {
                match failed {
                    None => l.set(FaultState::Reverted, Some("agent shutting down".into())),
                    Some(e) => l.set(FaultState::Active, Some(format!("revert at shutdown failed: {e}"))),
                }
            }
        }
        self.update_gauges();
        if tokio::time::timeout(SHUTDOWN_REPORT, self.report()).await.is_err() {
            tracing::debug!("controller did not take the final fault states in time");
        }
    }

    /// Hands the controller's resolved addresses to the engine (netem faults
    /// then exclude traffic to / from them), at start and every minute.
    async fn protect_controller(&mut self) {
        if self.protected_at.is_some_and(|t| t.elapsed() < RESOLVE_EVERY) {
            return;
        }
        let endpoints = controller_endpoints(self.channel.base_url()).await;
        self.protected_at = Some(std::time::Instant::now());
        if endpoints.is_empty() {
            // Keep what the engine had (a failed lookup must not unprotect).
            if !self.protected_ok {
                tracing::warn!("cannot resolve the controller's address: new faults are not applied until it resolves");
            }
            return;
        }
        let mut eng = self.engine.lock().await;
        if eng.protected() != endpoints.as_slice() {
            tracing::info!(?endpoints, "faults exclude the controller");
            eng.set_protected(endpoints);
        }
        self.protected_ok = true;
    }

    /// Faults the engine's lease timer reverted on its own.
    async fn note_expired(&mut self) {
        let active: BTreeSet<String> = self.engine.lock().await.active_ids().into_iter().collect();
        self.mark_expired(&active);
        self.update_gauges();
    }

    fn mark_expired(&mut self, active: &BTreeSet<String>) {
        let mut expired = Vec::new();
        for (id, l) in &mut self.local {
            if l.state == FaultState::Active && !active.contains(id) {
                l.set(
                    FaultState::Reverted,
                    Some("lease expired: reverted by the agent".into()),
                );
                expired.extend(l.kind);
            }
        }
        for k in expired {
            self.count(k, "expire", true);
        }
    }

    fn update_gauges(&self) {
        for k in FaultKind::ALL {
            let n = self
                .local
                .values()
                .filter(|l| l.kind == Some(k) && l.state == FaultState::Active)
                .count();
            self.metrics
                .faults_active
                .with_label_values(&[k.as_str()])
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    fn entry(&mut self, f: &DesiredFault) -> &mut Local {
        self.local
            .entry(f.id.clone())
            .or_insert_with(|| Local::new(Some(f.spec.kind()), FaultState::Pending, None))
    }

    /// Makes the engine match `d`.
    pub async fn reconcile(&mut self, d: &DesiredFaults) {
        let engine = self.engine.clone();
        let mut eng = engine.lock().await;
        // The agent is shutting down: the runtime reverts everything; apply nothing.
        if self.stopped() {
            return;
        }
        if let Some(prev) = self.epoch
            && d.revert_all_epoch != prev
        {
            let ids: Vec<(String, Option<FaultKind>)> = eng
                .active_ids()
                .into_iter()
                .map(|id| {
                    let kind = eng.kind_of(&id);
                    (id, kind)
                })
                .collect();
            let failures = eng.revert_all().await;
            tracing::warn!(
                reverted = ids.len() - failures.len(),
                failed = failures.len(),
                "revert-all from the controller"
            );
            for (id, kind) in &ids {
                let failed = failures.iter().find(|(f, _)| f == id).map(|(_, e)| e.to_string());
                if let Some(kind) = *kind {
                    self.count(kind, "revert_all", failed.is_none());
                }
                if let Some(l) = self.local.get_mut(id) {
                    match failed {
                        None => l.set(FaultState::Reverted, Some("revert-all".into())),
                        Some(e) => l.set(FaultState::Active, Some(format!("revert-all failed: {e}"))),
                    }
                }
            }
        }
        self.epoch = Some(d.revert_all_epoch);
        let desired: BTreeMap<&str, &DesiredFault> = d.faults.iter().map(|f| (f.id.as_str(), f)).collect();
        let mut active: BTreeSet<String> = eng.active_ids().into_iter().collect();
        self.mark_expired(&active);
        // Revert what the controller no longer wants (or never knew).
        for id in active.clone() {
            if desired.get(id.as_str()).is_some_and(|f| !f.dry_run) {
                continue;
            }
            let kind = eng.kind_of(&id);
            let load = eng.load_summary(&id);
            match eng.revert(&id).await {
                Ok(()) => {
                    kind.inspect(|k| self.count(*k, "revert", true));
                    active.remove(&id);
                    if let Some(l) = self.local.get_mut(&id) {
                        if let Some(s) = load {
                            l.operations = vec![format!("load achieved {s}")];
                        }
                        l.set(FaultState::Reverted, Some("no longer wanted by the controller".into()));
                    }
                }
                Err(e) => {
                    kind.inspect(|k| self.count(*k, "revert", false));
                    tracing::error!(id, error = %e, "revert failed; the lease timer retries");
                    if let Some(l) = self.local.get_mut(&id) {
                        l.set(FaultState::Active, Some(format!("revert failed: {e}")));
                    }
                }
            }
        }
        for f in &d.faults {
            let lease = Duration::from_secs(f.lease_seconds.max(1));
            let kind = f.spec.kind();
            if f.dry_run {
                if matches!(
                    self.local.get(&f.id).map(|l| l.state),
                    Some(FaultState::Described | FaultState::Failed)
                ) {
                    continue;
                }
                let r = eng.describe(&f.spec).await;
                self.count(kind, "describe", r.is_ok());
                let l = self.entry(f);
                match r {
                    Ok(ops) => {
                        l.operations = ops;
                        l.set(FaultState::Described, None);
                        l.dirty = true;
                    }
                    Err(e) => l.set(FaultState::Failed, Some(e.to_string())),
                }
                continue;
            }
            if active.contains(&f.id) {
                let r = eng.renew(&f.id, lease);
                self.count(kind, "renew", r.is_ok());
                let load = eng.load_summary(&f.id);
                let l = self.entry(f);
                if l.state != FaultState::Active {
                    l.set(FaultState::Active, None);
                }
                // A load reports what it achieves (rate, errors) as it goes.
                if let Some(s) = load {
                    l.operations = vec![format!("load achieved {s}")];
                    l.dirty = true;
                }
                continue;
            }
            if self.local.get(&f.id).is_some_and(|l| l.state == FaultState::Failed) {
                continue;
            }
            if !self.protected_ok {
                // Invariant: never impair the channel to the controller. Try again next poll.
                self.protected_at = None;
                continue;
            }
            let r = eng.apply(&f.id, &f.spec, lease).await;
            self.count(kind, "apply", r.is_ok());
            let l = self.entry(f);
            match r {
                Ok(()) => {
                    tracing::info!(id = %f.id, kind = kind.as_str(), target = f.spec.target(), lease_s = f.lease_seconds, "fault applied for the controller");
                    l.set(FaultState::Active, None);
                }
                Err(e) if eng.is_reverting(&f.id) => {
                    // The apply failed and so did its rollback: state may be
                    // in the kernel, so the fault is not reported failed.
                    tracing::error!(id = %f.id, kind = kind.as_str(), target = f.spec.target(), error = %e, "fault from the controller failed and its rollback failed");
                    l.set(FaultState::Active, Some(e.to_string()));
                }
                Err(e) => {
                    tracing::warn!(id = %f.id, kind = kind.as_str(), target = f.spec.target(), error = %e, "fault from the controller failed");
                    l.set(FaultState::Failed, Some(e.to_string()));
                }
            }
        }
        drop(eng);
        // Forget what is settled, reported and no longer assigned.
        self.local
            .retain(|id, l| l.dirty || l.state == FaultState::Active || desired.contains_key(id.as_str()));
        self.update_gauges();
    }

    /// Posts the states the controller has not acknowledged.
    async fn report(&mut self) {
        let statuses: Vec<FaultStatusUpdate> = self
            .local
            .iter()
            .filter(|(_, l)| l.dirty)
            .map(|(id, l)| FaultStatusUpdate {
                id: id.clone(),
                state: l.state,
                reason: l.reason.clone(),
                operations: l.operations.clone(),
                at: Some(l.at),
            })
            .collect();
        if statuses.is_empty() {
            return;
        }
        let sent: Vec<(String, FaultState)> = statuses.iter().map(|s| (s.id.clone(), s.state)).collect();
        let report = FaultStatusReport { statuses };
        match self.channel.report_fault_status(&self.hostname, &report).await {
            Ok(_) => {
                for (id, state) in sent {
                    if let Some(l) = self.local.get_mut(&id)
                        && l.state == state
                    {
                        l.dirty = false;
                    }
                }
            }
            Err(e) => tracing::debug!(error = %e, "reporting fault states; retried after the next poll"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_change_is_stamped_with_its_time_and_a_new_reason_alone_is_not() {
        let mut l = Local::new(Some(FaultKind::Netem), FaultState::Pending, None);
        l.at = Timestamp::UNIX_EPOCH;
        l.dirty = false;
        l.set(FaultState::Pending, Some("waiting".into()));
        assert_eq!(l.at, Timestamp::UNIX_EPOCH, "same state, new reason");
        assert!(l.dirty, "the new reason is still reported");
        let before = Timestamp::now();
        l.set(FaultState::Active, None);
        let after = Timestamp::now();
        assert!(before <= l.at && l.at <= after, "{} not in [{before}, {after}]", l.at);
        let applied = l.at;
        l.set(FaultState::Active, Some("revert failed: busy".into()));
        assert_eq!(l.at, applied, "still the time of the apply");
    }

    #[tokio::test]
    async fn authorities_of_controller_urls() {
        assert_eq!(url_authority("http://10.0.0.1:8477"), Some(("10.0.0.1".into(), 8477)));
        assert_eq!(
            url_authority("https://ctl.example/api"),
            Some(("ctl.example".into(), 443))
        );
        assert_eq!(url_authority("http://[fd00::1]:8477/"), Some(("fd00::1".into(), 8477)));
        assert_eq!(url_authority("http://[fd00::1]"), Some(("fd00::1".into(), 80)));
        assert_eq!(url_authority("ftp://x"), None);
        assert_eq!(
            controller_endpoints("http://127.0.0.1:8477").await,
            vec!["127.0.0.1:8477".parse().expect("addr")]
        );
    }
}
