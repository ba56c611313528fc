//! One run, driven by one task: steps started in DAG order, their faults
//! watched until every agent confirmed them, findings matched to the
//! expectations (time to detect, time to clear), unexpected findings
//! listed, abort rules checked on every tick, everything reverted at the
//! end. Every transition is written to the store before the runner acts on
//! it; the run document readers see is the one in memory (`LiveRun::info`).
//!
//! An abort never waits for the task: [`super::GameDayService::abort`]
//! ends the run's faults itself, then tells the task, which records it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use graydar_common::api::{AgentInfo, FindingState};
use graydar_common::clock::Offset;
use graydar_common::fault_api::{CreateFaultRequest, FaultInfo, FaultTargets};
use graydar_common::faults::FaultState;
use graydar_common::gameday::run::{
    ClearState, ClockUsed, DetectionState, Event, Outcome, RunInfo, RunState, StepRun, StepState, UnexpectedFinding,
};
use graydar_common::gameday::verify::{abort_matches, detect_matches, expected_anywhere, target_hosts};
use graydar_common::gameday::{Action, GameDaySpec};
use graydar_common::timestamp::Timestamp;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::Ctx;
use crate::faults::new_fault_id;
use crate::store::FindingFilter;
use crate::timefmt::now_ms;

/// What an operator (or the lever) tells a running run.
#[derive(Debug)]
pub enum Command {
    Abort(String),
    /// Resume the gate that is waiting.
    Resume,
}

/// A run in progress: the document readers see, and the way to talk to its task.
pub struct LiveRun {
    pub info: Mutex<RunInfo>,
    pub tx: mpsc::UnboundedSender<Command>,
    /// The task driving it (aborted when this controller stops being the
    /// leader: the next leader ends the run).
    pub task: Mutex<Option<tokio::task::AbortHandle>>,
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Findings of a run are read from this long before it started (agents'
/// clocks may be behind the controller's).
const SKEW_MARGIN_MS: i64 = 5 * 60 * 1000;

pub(super) fn ms(t: Option<Timestamp>) -> Option<i64> {
    t.map(Timestamp::unix_ms)
}

fn ceil_secs(d: Duration) -> i64 {
    i64::try_from(d.as_millis().div_ceil(1000)).unwrap_or(i64::MAX).max(1)
}

fn dur_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

pub(super) fn event(info: &mut RunInfo, step: Option<&str>, host: Option<&str>, message: String) {
    info.timeline.push(Event {
        at: Timestamp::now(),
        step: step.map(str::to_owned),
        host: host.map(str::to_owned),
        message,
    });
}

/// The fault request of a fault step, with the run's `safety.lease`.
pub(super) fn fault_request(
    agents: Vec<String>,
    f: &graydar_common::gameday::FaultAction,
    lease: Option<Duration>,
    dry_run: bool,
) -> CreateFaultRequest {
    CreateFaultRequest {
        targets: FaultTargets {
            agents,
            selector: BTreeMap::new(),
        },
        spec: f.spec.clone(),
        duration_seconds: ceil_secs(f.duration),
        dry_run,
        force: false,
        lease_seconds: lease.map(|l| l.as_secs()),
    }
}

/// The fault request of a load step: the load's fault spec with its `to`
/// group resolved to those agents' first registered addresses.
pub(super) fn load_request(
    agents: Vec<String>,
    l: &graydar_common::gameday::LoadAction,
    groups: &BTreeMap<String, Vec<String>>,
    registered: &[AgentInfo],
    lease: Option<Duration>,
    dry_run: bool,
) -> Result<CreateFaultRequest, String> {
    let mut dest = Vec::new();
    let from: Vec<std::net::IpAddr> = registered
        .iter()
        .filter(|a| agents.contains(&a.hostname))
        .flat_map(|a| a.addresses.iter().filter_map(|x| x.parse().ok()))
        .collect();
    if let Some(to) = l.spec.to() {
        for host in groups.get(to).map(Vec::as_slice).unwrap_or_default() {
            let addrs: Vec<std::net::IpAddr> = registered
                .iter()
                .find(|a| &a.hostname == host)
                .map(|a| a.addresses.iter().filter_map(|x| x.parse().ok()).collect())
                .unwrap_or_default();
            let addr = nearest(&addrs, &from)
                .ok_or_else(|| format!("load.spec.to: agent {host:?} of group {to} has no registered address"))?;
            dest.push(addr.to_string());
        }
        if dest.is_empty() {
            return Err(format!("load.spec.to: group {to} has no agent"));
        }
    }
    Ok(CreateFaultRequest {
        targets: FaultTargets {
            agents,
            selector: BTreeMap::new(),
        },
        spec: l.spec.fault_spec(&dest),
        duration_seconds: ceil_secs(l.duration),
        dry_run,
        force: false,
        lease_seconds: lease.map(|l| l.as_secs()),
    })
}

/// Of an agent's addresses, the one sharing the longest prefix with any
/// of the senders' (same family): on a multi-homed host, the address on
/// the senders' own network (the first address when none is closer).
pub(super) fn nearest(dest: &[std::net::IpAddr], from: &[std::net::IpAddr]) -> Option<std::net::IpAddr> {
    use std::net::IpAddr;
    let common = |a: &IpAddr, b: &IpAddr| -> u32 {
        match (a, b) {
            (IpAddr::V4(x), IpAddr::V4(y)) => (u32::from(*x) ^ u32::from(*y)).leading_zeros(),
            (IpAddr::V6(x), IpAddr::V6(y)) => (u128::from(*x) ^ u128::from(*y)).leading_zeros(),
            _ => 0,
        }
    };
    let mut best: Option<(u32, IpAddr)> = None;
    for d in dest {
        let score = from.iter().map(|f| common(d, f)).max().unwrap_or(0);
        if best.is_none_or(|(b, _)| score > b) {
            best = Some((score, *d));
        }
    }
    best.map(|(_, a)| a)
}

struct Driver {
    ctx: Arc<Ctx>,
    live: Arc<LiveRun>,
    spec: GameDaySpec,
    /// When each wait or gate started (monotonic).
    clocks: HashMap<String, Instant>,
    /// Findings already listed or acted on (id and `since`).
    seen: HashSet<(String, i64)>,
    started_ms: i64,
    dirty: bool,
    /// When Prometheus was last asked (abort rules, alerts).
    prom_asked: Option<Instant>,
    /// Per `abort.promql` index: since when its query has returned samples.
    prom_true_since: HashMap<usize, Instant>,
    /// A Prometheus error was put on the timeline (once per run).
    prom_error_told: bool,
    /// Since when an abort rule could not be evaluated (Prometheus erring).
    prom_blind_since: Option<Instant>,
    /// Faults of optional steps that failed on an agent and were ended.
    skipped_faults: HashSet<String>,
}

/// How often a run asks Prometheus.
const PROM_INTERVAL: Duration = Duration::from_secs(2);

/// Drives the run `live` (state `preflight`, preflight passed, stored) to its end.
pub async fn drive(ctx: Arc<Ctx>, live: Arc<LiveRun>, mut rx: mpsc::UnboundedReceiver<Command>) {
    let spec = lock(&live.info).spec.clone();
    let mut d = Driver {
        ctx,
        live,
        spec,
        clocks: HashMap::new(),
        seen: HashSet::new(),
        started_ms: now_ms(),
        dirty: false,
        prom_asked: None,
        prom_true_since: HashMap::new(),
        prom_error_told: false,
        prom_blind_since: None,
        skipped_faults: HashSet::new(),
    };
    let deadline = Instant::now() + d.spec.safety.max_duration;
    d.update(|i| {
        i.state = RunState::Running;
        i.started_at = Some(Timestamp::now());
        event(i, None, None, "running".into());
    });
    d.persist().await;
    loop {
        let mut abort = None;
        let mut resume = false;
        while let Ok(cmd) = rx.try_recv() {
            match cmd {
                Command::Abort(r) => abort = Some(r),
                Command::Resume => resume = true,
            }
        }
        if abort.is_none() && d.ctx.faults.safety_lever().engaged {
            abort = Some("the safety lever was engaged".into());
        }
        if abort.is_none() && Instant::now() >= deadline {
            abort = Some(format!(
                "safety.max_duration ({}) reached",
                humantime::format_duration(d.spec.safety.max_duration)
            ));
        }
        if abort.is_none() {
            abort = d.observe_faults().await;
        }
        if abort.is_none() {
            abort = d.observe_findings().await;
        }
        if abort.is_none() {
            abort = d.observe_prometheus().await;
        }
        if abort.is_none() {
            abort = d.advance(resume).await;
        }
        if let Some(reason) = abort {
            let outcome = if reason.starts_with("failed: ") {
                Outcome::Failed
            } else {
                Outcome::Aborted
            };
            let reason = reason.strip_prefix("failed: ").unwrap_or(&reason).to_owned();
            d.end(outcome, reason).await;
            return;
        }
        if d.finished() {
            let outcome = lock(&d.live.info).natural_outcome();
            d.complete(outcome, None).await;
            return;
        }
        if d.dirty {
            d.persist().await;
        }
        tokio::select! {
            _ = tokio::time::sleep(d.ctx.tick) => {}
            cmd = rx.recv() => match cmd {
                Some(Command::Abort(r)) => {
                    d.end(Outcome::Aborted, r).await;
                    return;
                }
                Some(Command::Resume) => {
                    d.resume_gate();
                }
                None => {}
            },
        }
    }
}

impl Driver {
    fn update<R>(&mut self, f: impl FnOnce(&mut RunInfo) -> R) -> R {
        self.dirty = true;
        let mut info = lock(&self.live.info);
        let r = f(&mut info);
        info.updated_at = Timestamp::now();
        r
    }

    fn snapshot(&self) -> RunInfo {
        lock(&self.live.info).clone()
    }

    /// Writes the run; `false` (and logged) when the store refused.
    async fn persist(&mut self) -> bool {
        let info = self.snapshot();
        match self.ctx.save(&info).await {
            Ok(()) => {
                self.dirty = false;
                true
            }
            Err(e) => {
                tracing::warn!(run = %info.id, error = %e, "storing a game-day run (retried on the next tick)");
                false
            }
        }
    }

    fn offset(&mut self, host: &str) -> Option<Offset> {
        let o = self.ctx.clock_offset(host);
        if let Some(o) = o {
            let used = ClockUsed {
                offset_ms: o.offset_ms,
                uncertainty_ms: o.uncertainty_ms,
            };
            let mut info = lock(&self.live.info);
            if info.clocks.get(host) != Some(&used) {
                info.clocks.insert(host.to_owned(), used);
            }
        }
        o
    }

    /// Updates the fault steps from their faults' per-agent states; a
    /// fault that failed on an agent fails the run.
    async fn observe_faults(&mut self) -> Option<String> {
        let steps: Vec<(String, String)> = lock(&self.live.info)
            .steps
            .iter()
            .filter(|s| s.state.is_live())
            .filter_map(|s| s.fault_id.clone().map(|f| (s.id.clone(), f)))
            .collect();
        for (step, fid) in steps {
            let fault = match self.ctx.faults.get(&fid).await {
                Ok(f) => f,
                Err(e) => {
                    tracing::warn!(fault = %fid, error = %e, "reading a game day's fault");
                    continue;
                }
            };
            let optional = self.spec.steps.iter().any(|s| s.id == step && s.optional);
            if let Some(reason) = self.apply_fault_view(&step, &fault, optional) {
                return Some(reason);
            }
            // An optional step whose fault failed somewhere: ended at once
            // (reverted where it applied), once.
            let skipping = optional && fault.agents.iter().any(|a| a.state == FaultState::Failed);
            if skipping
                && fault.ended_at.is_none()
                && self.skipped_faults.insert(fid.clone())
                && let Err(e) = self.ctx.faults.end(&fid).await
            {
                tracing::warn!(fault = %fid, error = %e, "ending an optional step's fault (its lease reverts it)");
            }
        }
        None
    }

    /// Follows a fault step's fault. A fault that failed on an agent fails
    /// the run (the returned reason), unless the step is `optional`: then
    /// the step goes on to `skipped` once the agents where it applied have
    /// reverted it, and its expectations are not run.
    fn apply_fault_view(&mut self, step_id: &str, fault: &FaultInfo, optional: bool) -> Option<String> {
        let mut failed = None;
        let mut events = Vec::new();
        self.update(|info| {
            let Some(step) = info.steps.iter_mut().find(|s| s.id == step_id) else {
                return;
            };
            for a in &fault.agents {
                let pa = step.per_agent.entry(a.agent.clone()).or_default();
                let state = a.state.as_str().to_owned();
                if pa.state != state {
                    events.push((a.agent.clone(), format!("fault {}: {}", fault.id, state)));
                    pa.state = state;
                }
                pa.reason.clone_from(&a.reason);
                match a.state {
                    FaultState::Active if pa.applied_at.is_none() => {
                        pa.applied_at = Some(a.updated_at);
                        pa.agent_applied_at = a.agent_at;
                    }
                    FaultState::Reverted if pa.reverted_at.is_none() => pa.reverted_at = Some(a.updated_at),
                    FaultState::Failed if optional && step.reason.is_none() => {
                        let why = format!(
                            "the fault failed on {}: {}",
                            a.agent,
                            a.reason.as_deref().unwrap_or("no reason given")
                        );
                        events.push((
                            String::new(),
                            format!(
                                "step {} (optional): {why}; skipping it, reverted where it applied",
                                step.id
                            ),
                        ));
                        step.reason = Some(format!("optional, skipped: {why}"));
                    }
                    FaultState::Failed if optional => {}
                    FaultState::Failed if failed.is_none() => {
                        failed = Some(format!(
                            "failed: step {}: the fault failed on {}: {}",
                            step.id,
                            a.agent,
                            a.reason.as_deref().unwrap_or("no reason given")
                        ));
                    }
                    _ => {}
                }
            }
            let skipping = optional && fault.agents.iter().any(|a| a.state == FaultState::Failed);
            if skipping && matches!(step.state, StepState::Applying | StepState::Active) {
                step.state = StepState::Reverting;
                step.ended_at = Some(Timestamp::now());
            }
            let states: Vec<FaultState> = fault.agents.iter().map(|a| a.state).collect();
            // Ended, or expired (the expirer marks it within a second; the
            // agents' leases end it at expires_at anyway).
            let end = fault
                .ended_at
                .or_else(|| (Timestamp::now().unix_ms() >= fault.expires_at.unix_ms()).then_some(fault.expires_at));
            let ended = end.is_some();
            match step.state {
                StepState::Applying if !states.is_empty() && states.iter().all(|s| *s == FaultState::Active) => {
                    step.state = StepState::Active;
                    step.active_at = step.per_agent.values().filter_map(|p| p.applied_at).max();
                    events.push((String::new(), format!("step {}: active on every agent", step.id)));
                }
                _ => {}
            }
            if ended && matches!(step.state, StepState::Applying | StepState::Active) {
                step.state = StepState::Reverting;
                step.ended_at = end;
                events.push((String::new(), format!("step {}: fault ended, reverting", step.id)));
            }
            if step.state == StepState::Reverting
                && states
                    .iter()
                    .all(|s| matches!(s, FaultState::Reverted | FaultState::Failed))
            {
                step.state = if skipping {
                    StepState::Skipped
                } else {
                    StepState::Reverted
                };
                step.reverted_at = step
                    .per_agent
                    .values()
                    .filter_map(|p| p.reverted_at)
                    .max()
                    .or(Some(Timestamp::now()));
                events.push((String::new(), format!("step {}: reverted on every agent", step.id)));
            }
            let id = step.id.clone();
            if skipping {
                // Not judged (see RunInfo::compute_verdicts).
                for d in info.detections.iter_mut().filter(|d| d.step == id) {
                    d.state = DetectionState::NotRun;
                }
                for a in info.alerts.iter_mut().filter(|a| a.step == id) {
                    a.state = DetectionState::NotRun;
                }
            }
            for (host, msg) in events.drain(..) {
                let host = (!host.is_empty()).then_some(host);
                event(info, Some(&id), host.as_deref(), msg);
            }
        });
        failed
    }

    /// The step's fault apply time on the controller's clock, the earliest
    /// of its agents': each agent's own time of the apply put on the
    /// controller's clock (its estimated offset) when both are known, else
    /// when the controller received the agent's confirmation (later than
    /// the apply by the report's trip; an upper bound). With the uncertainty
    /// of the offset used.
    fn apply_ms(&mut self, step: &str) -> Option<(i64, f64)> {
        let per_agent = lock(&self.live.info).step(step)?.per_agent.clone();
        let mut best: Option<(i64, f64)> = None;
        for (host, p) in per_agent {
            let Some(received) = ms(p.applied_at) else { continue };
            let t = match (p.agent_applied_at, self.offset(&host)) {
                (Some(at), Some(o)) => (o.to_controller(at.unix_ms()).round() as i64, o.uncertainty_ms),
                _ => (received, 0.0),
            };
            if best.is_none_or(|b| t.0 < b.0) {
                best = Some(t);
            }
        }
        best
    }

    /// Reads the findings since the run started: detections, clears,
    /// unexpected findings, the abort rule.
    async fn observe_findings(&mut self) -> Option<String> {
        let filter = FindingFilter {
            since_ms: Some(self.started_ms - SKEW_MARGIN_MS),
            limit: 10_000,
            ..FindingFilter::default()
        };
        let findings = match self.ctx.store.findings(&filter).await {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(error = %e, "reading findings for a game day");
                return None;
            }
        };
        let now = now_ms();
        let grace = dur_ms(self.ctx.report_grace);
        let mut abort = None;
        let info = self.snapshot();
        let groups = info.targets.clone();
        let hosts = target_hosts(&groups);
        let mut offsets = HashMap::new();
        for f in &findings {
            if !offsets.contains_key(&f.host) {
                let o = self.offset(&f.host);
                offsets.insert(f.host.clone(), o);
            }
        }
        let to_ctl = |host: &str, t: Timestamp| -> (f64, f64) {
            match offsets.get(host).copied().flatten() {
                Some(o) => (o.to_controller(t.unix_ms()), o.uncertainty_ms),
                None => (t.unix_ms() as f64, 0.0),
            }
        };
        let applies: HashMap<String, (i64, f64)> = info
            .steps
            .iter()
            .map(|s| s.id.clone())
            .collect::<Vec<_>>()
            .into_iter()
            .filter_map(|id| self.apply_ms(&id).map(|a| (id, a)))
            .collect();
        let mut new_unexpected = Vec::new();
        let mut changes: Vec<(usize, graydar_common::gameday::run::Detection)> = Vec::new();
        for (i, det) in info.detections.iter().enumerate() {
            let Some(step) = info.step(&det.step) else { continue };
            let Some(expect) = self
                .spec
                .steps
                .iter()
                .find(|s| s.id == det.step)
                .and_then(|s| s.expect.as_ref())
            else {
                continue;
            };
            let Some(rule) = expect.detect.get(det.expectation) else {
                continue;
            };
            let mut d = det.clone();
            if matches!(d.state, DetectionState::Pending | DetectionState::Missed) {
                let (Some(created), Some(&(apply, apply_unc))) = (ms(step.started_at), applies.get(&det.step)) else {
                    continue;
                };
                let first = findings
                    .iter()
                    .filter(|f| detect_matches(rule, &groups, &det.host, f))
                    .filter(|f| {
                        let (t, unc) = to_ctl(&f.host, f.since);
                        t + unc >= created as f64
                    })
                    .min_by_key(|f| f.since.unix_ms());
                if let Some(f) = first {
                    let (fired, unc) = to_ctl(&f.host, f.since);
                    let ttd = fired - apply as f64;
                    d.finding_id = Some(f.id.clone());
                    d.kind = Some(f.kind);
                    d.subject = Some(f.subject.clone());
                    d.fired_at = Some(f.since);
                    d.time_to_detect_ms = Some(ttd);
                    d.uncertainty_ms = offsets.get(&f.host).copied().flatten().map(|_| unc + apply_unc);
                    d.upper_bound_ms = Some(now - created);
                    d.state = if ttd <= d.within_ms as f64 {
                        DetectionState::Detected
                    } else {
                        DetectionState::Late
                    };
                    if expect.clear_within.is_some() {
                        d.clear = Some(ClearState::Pending);
                    }
                    self.ctx
                        .detect_seconds
                        .with_label_values(&[f.kind.as_str()])
                        .observe((ttd / 1000.0).max(0.0));
                } else if d.state == DetectionState::Pending && now >= apply + d.within_ms as i64 + grace {
                    d.state = DetectionState::Missed;
                }
            }
            if d.clear == Some(ClearState::Pending)
                && let (Some(fid), Some(ended)) = (d.finding_id.clone(), ms(step.ended_at))
            {
                let limit = expect.clear_within.map_or(0, dur_ms);
                match findings.iter().find(|f| f.id == fid) {
                    Some(f) if f.state == FindingState::Resolved => {
                        if let Some(r) = f.resolved_at {
                            let (t, _) = to_ctl(&f.host, r);
                            let ttc = (t - ended as f64).max(0.0);
                            d.resolved_at = Some(r);
                            d.time_to_clear_ms = Some(ttc);
                            d.clear = Some(if ttc <= limit as f64 {
                                ClearState::Cleared
                            } else {
                                ClearState::NotCleared
                            });
                        }
                    }
                    _ if now >= ended + limit + grace => d.clear = Some(ClearState::NotCleared),
                    _ => {}
                }
            }
            if d != *det {
                changes.push((i, d));
            }
        }
        let running_ms = ms(info.started_at).unwrap_or(self.started_ms);
        for f in &findings {
            let (fired, unc) = to_ctl(&f.host, f.since);
            if fired + unc < running_ms as f64 {
                continue;
            }
            if expected_anywhere(&self.spec, &groups, f) {
                continue;
            }
            let key = (f.id.clone(), f.since.unix_ms());
            if self.seen.contains(&key) {
                continue;
            }
            if hosts.contains(&f.host) {
                new_unexpected.push(UnexpectedFinding {
                    finding_id: f.id.clone(),
                    host: f.host.clone(),
                    kind: f.kind,
                    subject: f.subject.clone(),
                    severity: f.severity,
                    fired_at: f.since,
                    summary: f.summary.clone(),
                });
            }
            if abort.is_none()
                && f.state == FindingState::Firing
                && abort_matches(&self.spec.abort.findings, &groups, f)
            {
                abort = Some(format!(
                    "abort.findings: {} {} on {} ({}) fired and no step expects it",
                    f.severity.as_str(),
                    f.kind.as_str(),
                    f.host,
                    f.subject
                ));
            }
            self.seen.insert(key);
        }
        if !changes.is_empty() || !new_unexpected.is_empty() {
            self.update(|info| {
                for (i, d) in changes {
                    let msg = match (d.state, d.clear) {
                        (
                            DetectionState::Detected | DetectionState::Late,
                            Some(ClearState::Cleared | ClearState::NotCleared),
                        ) if info.detections[i].clear == Some(ClearState::Pending) => {
                            format!(
                                "{} on {}: {} after the revert",
                                d.kind.map_or("finding", |k| k.as_str()),
                                d.host,
                                if d.clear == Some(ClearState::Cleared) {
                                    format!("cleared {:.1} s", d.time_to_clear_ms.unwrap_or(0.0) / 1000.0)
                                } else {
                                    "not cleared in time".to_owned()
                                }
                            )
                        }
                        (DetectionState::Detected | DetectionState::Late, _) => format!(
                            "{} {} on {} after {:.1} s (deadline {:.1} s)",
                            d.kind.map_or("finding", |k| k.as_str()),
                            if d.state == DetectionState::Detected {
                                "detected"
                            } else {
                                "detected late"
                            },
                            d.host,
                            d.time_to_detect_ms.unwrap_or(0.0) / 1000.0,
                            d.within_ms as f64 / 1000.0
                        ),
                        (DetectionState::Missed, _) => {
                            format!(
                                "{} not detected on {} within {:.1} s",
                                d.kinds.join("|"),
                                d.host,
                                d.within_ms as f64 / 1000.0
                            )
                        }
                        _ => String::new(),
                    };
                    let (step, host) = (d.step.clone(), d.host.clone());
                    info.detections[i] = d;
                    if !msg.is_empty() {
                        event(info, Some(&step), Some(&host), msg);
                    }
                }
                for u in new_unexpected {
                    let msg = format!("unexpected {} {} ({})", u.severity.as_str(), u.kind.as_str(), u.subject);
                    let host = u.host.clone();
                    info.unexpected.push(u);
                    event(info, None, Some(&host), msg);
                }
            });
        }
        abort
    }

    /// Every [`PROM_INTERVAL`]: the abort rules' PromQL (abort when a query
    /// has returned samples for its `for`, or could not be evaluated for
    /// `[prometheus] abort_unanswered_after`) and the expected alerts.
    async fn observe_prometheus(&mut self) -> Option<String> {
        let prom = self.ctx.prometheus.clone()?;
        if self.prom_asked.is_some_and(|t| t.elapsed() < PROM_INTERVAL) {
            return None;
        }
        self.prom_asked = Some(Instant::now());
        let mut errors = Vec::new();
        for (i, rule) in self.spec.abort.promql.clone().into_iter().enumerate() {
            match prom.query(&rule.expr).await {
                Ok(samples) if !samples.is_empty() => {
                    let since = *self.prom_true_since.entry(i).or_insert_with(Instant::now);
                    let need = rule.for_.unwrap_or_default();
                    if since.elapsed() >= need {
                        return Some(format!(
                            "abort.promql[{i}]: {} returned {} sample(s) for {}",
                            rule.expr,
                            samples.len(),
                            humantime::format_duration(need)
                        ));
                    }
                }
                Ok(_) => {
                    self.prom_true_since.remove(&i);
                }
                Err(e) => errors.push(e.to_string()),
            }
        }
        if errors.is_empty() {
            self.prom_blind_since = None;
        } else {
            let since = *self.prom_blind_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= prom.abort_unanswered_after {
                return Some(format!(
                    "abort.promql: not evaluated for {} (Prometheus: {})",
                    humantime::format_duration(prom.abort_unanswered_after),
                    errors.join("; ")
                ));
            }
        }
        let info = self.snapshot();
        let now = now_ms();
        let grace = dur_ms(self.ctx.report_grace);
        let mut changes = Vec::new();
        for (i, a) in info.alerts.iter().enumerate() {
            if !matches!(a.state, DetectionState::Pending | DetectionState::Missed) {
                continue;
            }
            let Some((apply, _)) = self.apply_ms(&a.step) else {
                continue;
            };
            match prom.query(&super::promql::firing_alert(&a.alertname)).await {
                Ok(samples) if !samples.is_empty() => {
                    let after = (now - apply) as f64;
                    let state = if after <= a.within_ms as f64 {
                        DetectionState::Detected
                    } else {
                        DetectionState::Late
                    };
                    changes.push((i, state, Some(after)));
                }
                Ok(_)
                    if a.state == DetectionState::Pending
                        && now >= apply.saturating_add(i64::try_from(a.within_ms).unwrap_or(i64::MAX)) + grace =>
                {
                    changes.push((i, DetectionState::Missed, None));
                }
                Ok(_) => {}
                Err(e) => errors.push(e.to_string()),
            }
        }
        if !changes.is_empty() || (!errors.is_empty() && !self.prom_error_told) {
            let told = self.prom_error_told;
            self.update(|info| {
                for (i, state, after) in changes {
                    let a = &mut info.alerts[i];
                    a.state = state;
                    a.fired_after_ms = after;
                    let msg = match after {
                        Some(ms) => format!(
                            "alert {} firing {:.1} s after the apply ({})",
                            a.alertname,
                            ms / 1000.0,
                            if state == DetectionState::Detected {
                                "in time"
                            } else {
                                "late"
                            }
                        ),
                        None => format!(
                            "alert {} not firing within {:.1} s",
                            a.alertname,
                            a.within_ms as f64 / 1000.0
                        ),
                    };
                    let step = a.step.clone();
                    event(info, Some(&step), None, msg);
                }
                if !errors.is_empty() && !told {
                    event(info, None, None, format!("prometheus: {} (retried)", errors.join("; ")));
                }
            });
            if !errors.is_empty() {
                self.prom_error_told = true;
            }
        }
        None
    }

    /// Starts the steps whose `after` are done, ends waits, times gates.
    async fn advance(&mut self, resume: bool) -> Option<String> {
        if resume {
            self.resume_gate();
        }
        let info = self.snapshot();
        let gate_waiting = info
            .steps
            .iter()
            .any(|s| s.action == "gate" && s.state == StepState::Active);
        let impairing = info
            .steps
            .iter()
            .any(|s| matches!(s.action.as_str(), "fault" | "load") && s.state.is_live());
        // Waits and gates that are over.
        for s in info.steps.iter().filter(|s| s.state == StepState::Active) {
            let Some(step) = self.spec.steps.iter().find(|x| x.id == s.id).cloned() else {
                continue;
            };
            let since = self.clocks.get(&s.id).copied().unwrap_or_else(Instant::now);
            match step.action() {
                Some(Action::Wait(w)) if since.elapsed() >= w.duration => {
                    self.update(|i| {
                        if let Some(st) = i.steps.iter_mut().find(|x| x.id == s.id) {
                            st.state = StepState::Completed;
                            st.ended_at = Some(Timestamp::now());
                        }
                        event(i, Some(&s.id), None, "wait over".into());
                    });
                }
                Some(Action::Gate(g)) if g.timeout.is_some_and(|t| since.elapsed() >= t) => {
                    return Some(format!(
                        "gate {}: nobody resumed it within {}",
                        s.id,
                        humantime::format_duration(g.timeout.unwrap_or_default())
                    ));
                }
                _ => {}
            }
        }
        let info = self.snapshot();
        let done: HashSet<&str> = info
            .steps
            .iter()
            .filter(|s| s.state.is_done())
            .map(|s| s.id.as_str())
            .collect();
        let order = match self.spec.step_order() {
            Ok(o) => o.into_iter().cloned().collect::<Vec<_>>(),
            Err(e) => return Some(format!("failed: the steps have a cycle: {e:?}")),
        };
        let mut gate_started = gate_waiting;
        let mut impairing = impairing;
        for step in order {
            let Some(run_step) = info.step(&step.id) else { continue };
            if run_step.state != StepState::Pending || !step.after.iter().all(|a| done.contains(a.as_str())) {
                continue;
            }
            match step.action() {
                Some(Action::Wait(_)) => {
                    self.clocks.insert(step.id.clone(), Instant::now());
                    self.update(|i| {
                        if let Some(st) = i.steps.iter_mut().find(|x| x.id == step.id) {
                            st.state = StepState::Active;
                            st.started_at = Some(Timestamp::now());
                        }
                        event(i, Some(&step.id), None, "waiting".into());
                    });
                }
                Some(Action::Gate(g)) => {
                    // A paused run has none of its faults applied: the gate
                    // opens once every fault step in flight has reverted.
                    if impairing || gate_started {
                        continue;
                    }
                    gate_started = true;
                    self.clocks.insert(step.id.clone(), Instant::now());
                    let msg = if g.message.is_empty() {
                        "gate: waiting for an operator's resume".to_owned()
                    } else {
                        format!("gate: waiting for an operator's resume: {}", g.message)
                    };
                    self.update(|i| {
                        if let Some(st) = i.steps.iter_mut().find(|x| x.id == step.id) {
                            st.state = StepState::Active;
                            st.started_at = Some(Timestamp::now());
                        }
                        event(i, Some(&step.id), None, msg);
                    });
                }
                Some(action @ (Action::Fault(_) | Action::Load(_))) => {
                    if gate_started {
                        continue;
                    }
                    let agents = run_step.agents.clone();
                    let group = action.target().unwrap_or_default().to_owned();
                    if agents.is_empty() {
                        self.update(|i| {
                            if let Some(st) = i.steps.iter_mut().find(|x| x.id == step.id) {
                                st.state = StepState::Skipped;
                                st.reason = Some(format!("group {group} is empty (on_empty: skip)"));
                            }
                            for d in i.detections.iter_mut().filter(|d| d.step == step.id) {
                                d.state = DetectionState::NotRun;
                            }
                            event(i, Some(&step.id), None, "skipped: empty group".into());
                        });
                        continue;
                    }
                    // Journal first: the fault's id is in the store before
                    // the fault exists, so a restart can always end it.
                    let id = new_fault_id();
                    self.update(|i| {
                        if let Some(st) = i.steps.iter_mut().find(|x| x.id == step.id) {
                            st.state = StepState::Applying;
                            st.fault_id = Some(id.clone());
                            st.started_at = Some(Timestamp::now());
                        }
                        event(
                            i,
                            Some(&step.id),
                            None,
                            format!("applying {} {id} on {}", action.name(), agents.join(", ")),
                        );
                    });
                    if !self.persist().await {
                        // Not journaled: nothing created; try again next tick.
                        self.update(|i| {
                            if let Some(st) = i.steps.iter_mut().find(|x| x.id == step.id) {
                                st.state = StepState::Pending;
                                st.fault_id = None;
                                st.started_at = None;
                            }
                        });
                        return None;
                    }
                    let registered: Vec<AgentInfo> = match self.ctx.agents.list().await {
                        Ok(a) => a,
                        Err(e) => return Some(format!("failed: listing agents: {e}")),
                    };
                    let req = match action {
                        Action::Load(l) => {
                            load_request(agents, l, &info.targets, &registered, self.spec.safety.lease, false)
                        }
                        Action::Fault(f) => Ok(fault_request(agents, f, self.spec.safety.lease, false)),
                        _ => Err("not a fault or a load".to_owned()),
                    };
                    let created = match req {
                        Ok(req) => self
                            .ctx
                            .faults
                            .create_as(id.clone(), req, &registered)
                            .await
                            .map_err(|e| e.to_string()),
                        Err(e) => Err(e),
                    };
                    if let Err(e) = created {
                        self.update(|i| {
                            if let Some(st) = i.steps.iter_mut().find(|x| x.id == step.id) {
                                st.state = StepState::Failed;
                                st.reason = Some(e.to_string());
                            }
                        });
                        return Some(format!(
                            "failed: step {}: the controller refused the {}: {e}",
                            step.id,
                            action.name()
                        ));
                    }
                    impairing = true;
                }
                None => {
                    return Some(format!("failed: step {}: no action", step.id));
                }
            }
        }
        None
    }

    fn resume_gate(&mut self) {
        let gate = lock(&self.live.info)
            .steps
            .iter()
            .find(|s| s.action == "gate" && s.state == StepState::Active)
            .map(|s| s.id.clone());
        if let Some(id) = gate {
            self.update(|i| {
                if let Some(st) = i.steps.iter_mut().find(|x| x.id == id) {
                    st.state = StepState::Completed;
                    st.ended_at = Some(Timestamp::now());
                }
                event(i, Some(&id), None, "gate resumed by an operator".into());
            });
        }
    }

    /// Every step done and every expectation decided: the run may complete.
    fn finished(&mut self) -> bool {
        let info = self.snapshot();
        if !info.steps.iter().all(|s| s.state.is_done()) {
            return false;
        }
        if info.state == RunState::Running {
            self.update(|i| {
                i.state = RunState::Verifying;
                event(i, None, None, "every step done: verifying detections and clears".into());
            });
        }
        // Pending ones whose deadline has passed are decided by
        // observe_findings (and observe_prometheus for alerts).
        info.alerts.iter().all(|a| a.state != DetectionState::Pending)
            && info
                .detections
                .iter()
                .all(|d| !matches!(d.state, DetectionState::Pending) && d.clear != Some(ClearState::Pending))
    }

    /// Ends the run early: stored as reverting first, then every fault of
    /// the run ended, then their reverts awaited (at most a lease), then
    /// completed with `outcome`.
    async fn end(&mut self, outcome: Outcome, reason: String) {
        tracing::warn!(run = %self.snapshot().id, %reason, "game-day run ending early");
        self.update(|i| {
            i.state = RunState::Reverting;
            i.reason = Some(reason.clone());
            event(i, None, None, format!("{}: {reason}", outcome.as_str()));
        });
        self.persist().await;
        let faults: Vec<String> = self
            .snapshot()
            .steps
            .iter()
            .filter(|s| s.state.is_live())
            .filter_map(|s| s.fault_id.clone())
            .collect();
        for id in &faults {
            if let Err(e) = self.ctx.faults.end(id).await {
                tracing::warn!(fault = %id, error = %e, "ending a game day's fault (its lease reverts it)");
            }
        }
        // Wait for the agents to confirm, at most a lease and a little.
        let until = Instant::now() + self.ctx.faults.config().lease + Duration::from_secs(5);
        while Instant::now() < until {
            self.observe_faults().await;
            // Only faults are reverted: a gate or a wait in progress is
            // nothing to wait for.
            if !self
                .snapshot()
                .steps
                .iter()
                .any(|s| s.state.is_live() && s.fault_id.is_some())
            {
                break;
            }
            if self.dirty {
                self.persist().await;
            }
            tokio::time::sleep(self.ctx.tick).await;
        }
        self.update(|i| {
            for s in &mut i.steps {
                match s.state {
                    StepState::Applying | StepState::Active | StepState::Reverting if s.fault_id.is_some() => {
                        s.state = StepState::Reverted;
                        s.reason = Some("revert not confirmed by every agent; their leases revert it".into());
                    }
                    StepState::Active => {
                        s.state = StepState::Completed;
                        s.ended_at = Some(Timestamp::now());
                    }
                    StepState::Pending => {
                        s.state = StepState::Skipped;
                        s.reason = Some("the run ended first".into());
                    }
                    _ => {}
                }
            }
        });
        self.complete(outcome, Some(reason)).await;
    }

    async fn complete(&mut self, outcome: Outcome, reason: Option<String>) {
        self.update(|i| {
            let ran: HashSet<String> = i
                .steps
                .iter()
                .filter(|s| s.started_at.is_some())
                .map(|s| s.id.clone())
                .collect();
            // A cell still pending when the run ends on its own is missed
            // (the run waits for every deadline). One still pending when the
            // run is aborted or fails had not reached its deadline at the
            // last look (a cell is marked missed the tick its deadline and
            // the grace pass): cut short, not missed.
            let pending_ran = if matches!(outcome, Outcome::Aborted | Outcome::Failed) {
                DetectionState::CutShort
            } else {
                DetectionState::Missed
            };
            for d in &mut i.detections {
                if d.state == DetectionState::Pending {
                    d.state = if ran.contains(&d.step) {
                        pending_ran
                    } else {
                        DetectionState::NotRun
                    };
                }
                if d.clear == Some(ClearState::Pending) {
                    d.clear = Some(ClearState::NotCleared);
                }
            }
            for a in &mut i.alerts {
                if a.state == DetectionState::Pending {
                    a.state = if ran.contains(&a.step) {
                        pending_ran
                    } else {
                        DetectionState::NotRun
                    };
                }
            }
            i.state = RunState::Completed;
            i.outcome = Some(outcome);
            if reason.is_some() {
                i.reason = reason;
            }
            i.ended_at = Some(Timestamp::now());
            i.verdicts = Some(i.compute_verdicts());
            event(i, None, None, format!("completed: {}", outcome.as_str()));
        });
        // The end must reach the store: retried until it does (a restart
        // would otherwise record it as aborted by the restart).
        for _ in 0..20 {
            if self.persist().await {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let info = self.snapshot();
        self.ctx.finished(&info).await;
    }
}

/// A run's steps as the run starts: every step pending, fault steps with
/// their group's agents.
pub fn initial_steps(spec: &GameDaySpec, groups: &BTreeMap<String, Vec<String>>) -> Vec<StepRun> {
    spec.steps
        .iter()
        .map(|s| {
            let action = s.action();
            let target = action.and_then(|a| a.target()).map(str::to_owned);
            StepRun {
                id: s.id.clone(),
                action: action.map_or("none", |a| a.name()).to_owned(),
                state: StepState::Pending,
                agents: target.as_ref().and_then(|t| groups.get(t)).cloned().unwrap_or_default(),
                target,
                fault_id: None,
                duration_ms: action
                    .and_then(|a| a.duration())
                    .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
                planned_start_ms: None,
                started_at: None,
                active_at: None,
                ended_at: None,
                reverted_at: None,
                reason: None,
                optional: s.optional,
                per_agent: BTreeMap::new(),
            }
        })
        .collect()
}

/// The detection matrix as the run starts: one pending cell per
/// expectation and host of its group.
pub fn initial_detections(
    spec: &GameDaySpec,
    groups: &BTreeMap<String, Vec<String>>,
) -> Vec<graydar_common::gameday::run::Detection> {
    let mut out = Vec::new();
    for s in &spec.steps {
        let Some(e) = &s.expect else { continue };
        for (i, d) in e.detect.iter().enumerate() {
            for host in groups.get(&d.on).into_iter().flatten() {
                out.push(graydar_common::gameday::run::Detection {
                    step: s.id.clone(),
                    expectation: i,
                    kinds: d.kind.names().to_vec(),
                    host: host.clone(),
                    within_ms: u64::try_from(d.within.as_millis()).unwrap_or(u64::MAX),
                    state: DetectionState::Pending,
                    finding_id: None,
                    kind: None,
                    subject: None,
                    fired_at: None,
                    time_to_detect_ms: None,
                    uncertainty_ms: None,
                    upper_bound_ms: None,
                    clear: None,
                    resolved_at: None,
                    time_to_clear_ms: None,
                });
            }
        }
    }
    out
}

/// The expected alerts as the run starts, pending.
pub fn initial_alerts(spec: &GameDaySpec) -> Vec<graydar_common::gameday::run::AlertCheck> {
    spec.steps
        .iter()
        .filter_map(|s| s.expect.as_ref().map(|e| (s, e)))
        .flat_map(|(s, e)| {
            e.alerts.iter().map(|a| graydar_common::gameday::run::AlertCheck {
                step: s.id.clone(),
                alertname: a.alertname.clone(),
                within_ms: u64::try_from(a.within.as_millis()).unwrap_or(u64::MAX),
                state: DetectionState::Pending,
                fired_after_ms: None,
            })
        })
        .collect()
}

/// When each step would start after the run's start, gates counted as
/// resumed at once (a dry run's timeline).
pub fn plan(spec: &GameDaySpec) -> BTreeMap<String, u64> {
    let mut start: BTreeMap<String, u64> = BTreeMap::new();
    let mut end: BTreeMap<String, u64> = BTreeMap::new();
    if let Ok(order) = spec.step_order() {
        for s in order {
            let t = s.after.iter().filter_map(|a| end.get(a)).copied().max().unwrap_or(0);
            let d = s
                .action()
                .and_then(|a| a.duration())
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
            start.insert(s.id.clone(), t);
            end.insert(s.id.clone(), t.saturating_add(d));
        }
    }
    start
}

#[cfg(test)]
mod tests {
    use super::nearest;

    fn ips(list: &[&str]) -> Vec<std::net::IpAddr> {
        list.iter().map(|a| a.parse().expect("ip")).collect()
    }

    #[test]
    fn a_load_goes_to_the_address_on_the_senders_network() {
        // A multi-homed receiver: its controller link first, the mesh second.
        let dest = ips(&["10.9.1.2", "10.9.3.1"]);
        assert_eq!(
            nearest(&dest, &ips(&["10.9.2.2", "10.9.3.2"])),
            Some(ips(&["10.9.3.1"])[0])
        );
        // Nothing closer: the first address.
        assert_eq!(nearest(&dest, &ips(&["fd00::1"])), Some(dest[0]));
        assert_eq!(nearest(&[], &ips(&["10.9.3.2"])), None);
    }
}
