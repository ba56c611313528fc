//! Game days: definitions (specs validated against the controller's
//! limits, stored by name) and runs (docs/src/gamedays.md).
//!
//! - `preflight.rs`: a run's groups resolved and its preflight checked (pure);
//! - `runner.rs`: the task that drives one run;
//! - here: the service the API calls (start, dry run, list, get, abort,
//!   resume) and the restart rule: a run found unfinished at start is ended
//!   `aborted: controller restarted` and its faults are ended.

mod preflight;
pub mod promql;
mod runner;
mod scheduler;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use graydar_common::clock::Offset;
use graydar_common::gameday::run::{Outcome, PreflightCheck, RunInfo, RunState, RunSummary, StartRun, StepState};
use graydar_common::gameday::{Action, GameDayInfo, GameDaySpec, Limits};
use graydar_common::timestamp::Timestamp;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts};
use tokio::sync::mpsc;

use crate::agents::AgentService;
use crate::cluster::{Change, Cluster};
use crate::faults::FaultService;
use crate::store::{FindingFilter, GameDayRecord, RunFilter, RunRecord, Store, StoreError};
use crate::timefmt::now_ms;
use promql::PrometheusConfig;
use runner::{Command, LiveRun, event, lock};

#[derive(Debug, thiserror::Error)]
pub enum GameDayError {
    /// The spec does not validate: every error with its field path (422).
    #[error("{}", .0.join("; "))]
    Invalid(Vec<String>),
    /// A create of a name that exists (409).
    #[error("game day {name:?} exists: replace it with PUT /api/v1/gamedays/{name} (graydar gameday apply)")]
    Exists { name: String },
    #[error("no game day {name:?}")]
    NotFound { name: String },
    #[error("no run {id:?}")]
    RunNotFound { id: String },
    /// A run of this game day is in progress (409).
    #[error("game day {name:?} has a run in progress ({run}); abort it or wait for it to end")]
    RunActive { name: String, run: String },
    /// The run was refused before anything was injected (409); stored as cancelled.
    #[error("run {run} cancelled by the preflight: {reason}")]
    Preflight { run: String, reason: String, lever: bool },
    /// The run has no gate waiting (409).
    #[error("run {id} has no gate waiting for a resume")]
    NoGate { id: String },
    /// The run has ended (409).
    #[error("run {id} has ended ({outcome})")]
    Ended { id: String, outcome: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What the run tasks share with the service.
pub(crate) struct Ctx {
    store: Arc<dyn Store>,
    agents: Arc<AgentService>,
    faults: Arc<FaultService>,
    /// How often a run looks at its faults and the findings.
    tick: Duration,
    /// How long after a deadline a finding may still arrive (agents report
    /// every few seconds) before the expectation counts as missed.
    report_grace: Duration,
    live: Mutex<HashMap<String, Arc<LiveRun>>>,
    detect_seconds: HistogramVec,
    runs_total: IntCounterVec,
    /// `[prometheus]`: PromQL checks, PromQL aborts, expected alerts.
    prometheus: Option<PrometheusConfig>,
}

impl Ctx {
    async fn save(&self, info: &RunInfo) -> Result<(), StoreError> {
        self.store.update_run(&record(info)).await
    }

    fn clock_offset(&self, host: &str) -> Option<Offset> {
        self.agents.clock_offset(host)
    }

    /// A run's task ended it: counted, forgotten from memory, old history
    /// of a scheduled game day pruned to its `history_limit`.
    async fn finished(&self, info: &RunInfo) {
        if let Some(o) = info.outcome {
            self.runs_total.with_label_values(&[&info.gameday, o.as_str()]).inc();
        }
        lock(&self.live).remove(&info.id);
        if let Some(s) = &info.spec.schedule {
            match self.store.prune_runs(&info.gameday, s.history_limit).await {
                Ok(0) => {}
                Ok(n) => {
                    tracing::info!(gameday = %info.gameday, pruned = n, "old runs pruned (schedule.history_limit)")
                }
                Err(e) => tracing::warn!(gameday = %info.gameday, error = %e, "pruning old runs"),
            }
        }
        tracing::info!(run = %info.id, gameday = %info.gameday, outcome = ?info.outcome, reason = ?info.reason, "game-day run ended");
    }
}

fn record(info: &RunInfo) -> RunRecord {
    RunRecord {
        id: info.id.clone(),
        gameday: info.gameday.clone(),
        trigger: info.trigger.clone(),
        state: info.state.as_str().to_owned(),
        outcome: info.outcome.map(|o| o.as_str().to_owned()),
        created_ms: info.created_at.unix_ms(),
        updated_ms: info.updated_at.unix_ms(),
        // Every field is a string, number, bool, list or string-keyed map.
        doc: serde_json::to_string(info).unwrap_or_default(),
    }
}

fn decode_run(r: &RunRecord) -> Result<RunInfo, GameDayError> {
    serde_json::from_str(&r.doc).map_err(|e| {
        GameDayError::Store(StoreError::Corrupt {
            what: format!("game-day run {}", r.id),
            source: e,
        })
    })
}

/// `preflight.promql[i]`: holds when the query answers at least one sample
/// and every sample satisfies `sample op value` (no sample fails: a
/// misspelt metric must not pass a preflight).
async fn promql_check(p: &PrometheusConfig, i: usize, c: &graydar_common::gameday::PromCheck) -> PreflightCheck {
    let what = format!("{} {} {}", c.expr, c.op.symbol(), c.value);
    let (ok, detail) = match p.query(&c.expr).await {
        Err(e) => (false, format!("{what}: {e}")),
        Ok(samples) if samples.is_empty() => (false, format!("{what}: the query returned no sample")),
        Ok(samples) => {
            let bad: Vec<String> = samples
                .iter()
                .filter(|s| !promql::compare(s.value, c.op, c.value))
                .map(|s| format!("{} = {}", labels_text(&s.labels), s.value))
                .collect();
            if bad.is_empty() {
                (true, format!("{what}: {} sample(s) hold", samples.len()))
            } else {
                (false, format!("{what}: {}", bad.join(", ")))
            }
        }
    };
    PreflightCheck {
        check: format!("promql[{i}]"),
        ok,
        detail,
    }
}

fn labels_text(l: &std::collections::BTreeMap<String, String>) -> String {
    let inner: Vec<String> = l.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
    format!("{{{}}}", inner.join(","))
}

/// A run's end reason for an operator's abort (`reason` may be empty).
pub fn operator_abort_reason(reason: &str) -> String {
    if reason.trim().is_empty() {
        "operator abort".to_owned()
    } else {
        format!("operator abort: {reason}")
    }
}

fn new_run_id() -> String {
    format!("run-{:012x}", fastrand::u64(..) & 0xffff_ffff_ffff)
}

pub struct GameDayService {
    store: Arc<dyn Store>,
    limits: Limits,
    ctx: Arc<Ctx>,
    /// Runs are driven by the leader among the controllers on the database.
    cluster: Arc<Cluster>,
}

impl GameDayService {
    /// `max_fault_duration`: the controller's `faults.max_duration`, the
    /// longest fault step a spec may have.
    pub fn new(
        store: Arc<dyn Store>,
        agents: Arc<AgentService>,
        faults: Arc<FaultService>,
        prometheus: Option<PrometheusConfig>,
    ) -> GameDayService {
        let max_fault_duration = faults.config().max_duration;
        let detect_seconds = HistogramVec::new(
            HistogramOpts::new(
                "graydar_controller_gameday_time_to_detect_seconds",
                "Game days: time from a fault's confirmed apply to the first matching finding, by finding kind.",
            )
            .buckets(vec![0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0]),
            &["kind"],
        )
        .expect("static metric definition");
        let runs_total = IntCounterVec::new(
            Opts::new(
                "graydar_controller_gameday_runs_total",
                "Game-day runs ended since the controller started, by game day and outcome.",
            ),
            &["gameday", "outcome"],
        )
        .expect("static metric definition");
        GameDayService {
            limits: Limits {
                max_fault_duration,
                max_lease: faults.config().lease,
                ..Limits::default()
            },
            ctx: Arc::new(Ctx {
                store: store.clone(),
                agents,
                faults,
                tick: Duration::from_millis(250),
                report_grace: Duration::from_secs(10),
                live: Mutex::new(HashMap::new()),
                detect_seconds,
                runs_total,
                prometheus,
            }),
            store,
            cluster: Cluster::single(),
        }
    }

    /// This service as one of several controllers on the database of
    /// `cluster`: runs are driven by the leader (a run started on another
    /// controller is handed to it), aborts and resumes reach it by
    /// notification.
    pub fn in_cluster(mut self, cluster: Arc<Cluster>) -> GameDayService {
        self.cluster = cluster;
        self
    }

    /// Drives `info` (preflight passed, stored) here; nothing when it is
    /// driven here already.
    fn spawn_run(&self, info: RunInfo) {
        let (tx, rx) = mpsc::unbounded_channel();
        let live = Arc::new(LiveRun {
            info: Mutex::new(info.clone()),
            tx,
            task: Mutex::new(None),
        });
        {
            let mut runs = lock(&self.ctx.live);
            if runs.contains_key(&info.id) {
                return;
            }
            runs.insert(info.id.clone(), live.clone());
        }
        tracing::info!(run = %info.id, gameday = %info.gameday, seed = info.seed, "game-day run started");
        let task = tokio::spawn(runner::drive(self.ctx.clone(), live.clone(), rx));
        *lock(&live.task) = Some(task.abort_handle());
    }

    /// The leader takes a run another controller accepted (it passed its
    /// preflight there and waits): whether it started here.
    pub async fn adopt(&self, id: &str) -> Result<bool, GameDayError> {
        if !self.cluster.is_leader() || lock(&self.ctx.live).contains_key(id) {
            return Ok(false);
        }
        let Some(r) = self.store.run(id).await? else {
            return Ok(false);
        };
        let info = decode_run(&r)?;
        if info.state != RunState::Preflight || info.is_finished() {
            return Ok(false);
        }
        self.spawn_run(info);
        Ok(true)
    }

    /// The leader starts every run that waits for one (its notification
    /// may have been lost); how many.
    pub async fn adopt_pending(&self) -> Result<usize, GameDayError> {
        if !self.cluster.is_leader() {
            return Ok(0);
        }
        let mut n = 0;
        for r in self.store.unfinished_runs().await? {
            if r.state == RunState::Preflight.as_str() && self.adopt(&r.id).await? {
                n += 1;
            }
        }
        Ok(n)
    }

    /// What a controller that just became the leader does with the runs
    /// in the store: those waiting for a leader are started, those another
    /// leader was driving when it died are ended as aborted, their faults
    /// ended (the agents revert them at once). `(started, ended)`.
    pub async fn take_over(&self) -> Result<(usize, usize), GameDayError> {
        let mut started = 0;
        let mut ended = 0;
        for r in self.store.unfinished_runs().await? {
            if lock(&self.ctx.live).contains_key(&r.id) {
                continue;
            }
            let info = decode_run(&r)?;
            if info.state == RunState::Preflight {
                self.spawn_run(info);
                started += 1;
            } else {
                self.end_interrupted(info, "the controller driving it stopped; the new leader ended it")
                    .await?;
                ended += 1;
            }
        }
        Ok((started, ended))
    }

    /// Stops driving every run here at once (this controller is no longer
    /// the leader: the next one ends them); how many.
    pub fn stand_down(&self) -> usize {
        let runs: Vec<Arc<LiveRun>> = lock(&self.ctx.live).drain().map(|(_, l)| l).collect();
        for l in &runs {
            if let Some(task) = lock(&l.task).take() {
                task.abort();
            }
        }
        runs.len()
    }

    /// The game-day metrics (registered with the controller's registry).
    pub fn collectors(&self) -> Vec<Box<dyn prometheus::core::Collector>> {
        vec![
            Box::new(self.ctx.detect_seconds.clone()),
            Box::new(self.ctx.runs_total.clone()),
        ]
    }

    /// (game day, step, host) of every step with something in effect now
    /// (`graydar_controller_gameday_step_active`).
    pub fn active_steps(&self) -> Vec<(String, String, String)> {
        let live: Vec<Arc<LiveRun>> = lock(&self.ctx.live).values().cloned().collect();
        let mut out = Vec::new();
        for l in live {
            let info = lock(&l.info);
            for s in info
                .steps
                .iter()
                .filter(|s| s.state == StepState::Active || s.state == StepState::Applying)
            {
                if s.agents.is_empty() {
                    out.push((info.gameday.clone(), s.id.clone(), String::new()));
                }
                for h in &s.agents {
                    out.push((info.gameday.clone(), s.id.clone(), h.clone()));
                }
            }
        }
        out
    }

    /// Ends every run left unfinished by an earlier controller: `aborted:
    /// controller restarted`, its faults ended (the agents revert them at
    /// once; their leases would anyway). Called once at start.
    pub async fn recover(&self) -> Result<usize, GameDayError> {
        let runs = self.store.unfinished_runs().await?;
        let n = runs.len();
        for r in runs {
            self.end_interrupted(decode_run(&r)?, "controller restarted").await?;
        }
        Ok(n)
    }

    /// Ends a run nobody drives any more as aborted (`why`), its faults
    /// ended.
    async fn end_interrupted(&self, mut info: RunInfo, why: &str) -> Result<(), GameDayError> {
        {
            for s in &mut info.steps {
                if s.state.is_live()
                    && let Some(id) = &s.fault_id
                {
                    match self.ctx.faults.end(id).await {
                        Ok(_) | Err(crate::faults::FaultError::NotFound { .. }) => {}
                        Err(e) => tracing::warn!(fault = %id, error = %e, "ending a fault of an interrupted run"),
                    }
                    s.state = StepState::Reverted;
                    s.reason = Some(format!(
                        "{why}: fault ended then; the agents revert it (their leases guarantee it)"
                    ));
                } else if s.state == StepState::Pending || s.state == StepState::Active {
                    s.state = if s.state == StepState::Pending {
                        StepState::Skipped
                    } else {
                        StepState::Completed
                    };
                }
            }
            use graydar_common::gameday::run::{ClearState, DetectionState};
            for d in &mut info.detections {
                // Nobody looked while the controller was down: not judged.
                if d.state == DetectionState::Pending {
                    d.state = DetectionState::CutShort;
                }
                if d.clear == Some(ClearState::Pending) {
                    d.clear = Some(ClearState::NotCleared);
                }
            }
            for a in &mut info.alerts {
                if a.state == DetectionState::Pending {
                    a.state = DetectionState::CutShort;
                }
            }
            info.state = RunState::Completed;
            info.outcome = Some(Outcome::Aborted);
            info.reason = Some(why.to_owned());
            info.ended_at = Some(Timestamp::now());
            info.updated_at = Timestamp::now();
            info.verdicts = Some(info.compute_verdicts());
            event(
                &mut info,
                None,
                None,
                format!("aborted: {why}; every fault of the run ended"),
            );
            self.store.update_run(&record(&info)).await?;
            tracing::warn!(run = %info.id, gameday = %info.gameday, reason = why, "game-day run aborted");
        }
        Ok(())
    }

    /// Starts a run of `name` (or, `dry_run`, plans one). The targets are
    /// resolved and the preflight checked before anything is injected; a
    /// refused run is stored as cancelled and answered 409.
    pub async fn start(&self, name: &str, req: StartRun, trigger: &str) -> Result<RunInfo, GameDayError> {
        let def = self.get(name).await?;
        let spec = def.spec;
        // A run of this game day still going here refuses the start. One
        // that has ended but whose task is still writing its end to the
        // store (retried until it lands) does not: every fault of it has
        // ended, and the store may still call it unfinished for a moment.
        let (active_here, ended_here) = {
            let live = lock(&self.ctx.live);
            let mut active = None;
            let mut ended = HashSet::new();
            for l in live.values() {
                let i = lock(&l.info);
                if i.gameday != name {
                    continue;
                }
                if i.is_finished() {
                    ended.insert(i.id.clone());
                } else {
                    active = Some(i.id.clone());
                }
            }
            (active, ended)
        };
        if !req.dry_run
            && let Some(run) = active_here
        {
            return Err(GameDayError::RunActive {
                name: name.to_owned(),
                run,
            });
        }
        if !req.dry_run
            && self.cluster.shared()
            && let Some(active) = self
                .store
                .unfinished_runs()
                .await?
                .into_iter()
                .find(|r| r.gameday == name && !ended_here.contains(&r.id))
        {
            return Err(GameDayError::RunActive {
                name: name.to_owned(),
                run: active.id,
            });
        }
        let seed = req.seed.unwrap_or_else(|| fastrand::u64(..));
        let now = Timestamp::now();
        let mut info = RunInfo {
            id: if req.dry_run {
                "dry-run".to_owned()
            } else {
                new_run_id()
            },
            gameday: name.to_owned(),
            spec: spec.clone(),
            dry_run: req.dry_run,
            trigger: trigger.to_owned(),
            state: RunState::Preflight,
            outcome: None,
            reason: None,
            seed,
            targets: Default::default(),
            preflight: Vec::new(),
            steps: Vec::new(),
            detections: Vec::new(),
            alerts: Vec::new(),
            unexpected: Vec::new(),
            verdicts: None,
            clocks: Default::default(),
            timeline: Vec::new(),
            created_at: now,
            started_at: None,
            ended_at: None,
            updated_at: now,
        };
        event(
            &mut info,
            None,
            None,
            format!(
                "{} run requested ({trigger}), seed {seed}",
                if req.dry_run { "dry" } else { "a" }
            ),
        );
        let agents = self
            .ctx
            .agents
            .list()
            .await
            .map_err(|e| GameDayError::Invalid(vec![e.to_string()]))?;
        let refusal = match preflight::resolve_groups(&spec, &agents, seed) {
            Err(e) => Some(e),
            Ok(groups) => {
                info.targets = groups;
                let firing = self
                    .store
                    .findings(&FindingFilter {
                        state: Some(graydar_common::api::FindingState::Firing),
                        limit: 10_000,
                        ..FindingFilter::default()
                    })
                    .await?;
                let lever = self.ctx.faults.safety_lever();
                info.preflight = preflight::check(
                    &spec,
                    &info.targets,
                    &preflight::Inputs {
                        agents: &agents,
                        firing: &firing,
                        lever: lever.engaged.then(|| lever.reason.clone().unwrap_or_default()),
                        prometheus: self.ctx.prometheus.is_some(),
                    },
                );
                if let Some(p) = &self.ctx.prometheus {
                    for (i, c) in spec.preflight.promql.iter().enumerate() {
                        info.preflight.push(promql_check(p, i, c).await);
                    }
                }
                let mut bad: Vec<String> = info
                    .preflight
                    .iter()
                    .filter(|c| !c.ok)
                    .map(|c| format!("{}: {}", c.check, c.detail))
                    .collect();
                let needs_prom = !spec.abort.promql.is_empty()
                    || spec
                        .steps
                        .iter()
                        .any(|s| s.expect.as_ref().is_some_and(|e| !e.alerts.is_empty()));
                if needs_prom && self.ctx.prometheus.is_none() {
                    bad.push("abort.promql and expect.alerts need a Prometheus: set [prometheus] url in the controller's configuration".into());
                }
                (!bad.is_empty()).then(|| bad.join("; "))
            }
        };
        info.steps = runner::initial_steps(&spec, &info.targets);
        info.detections = runner::initial_detections(&spec, &info.targets);
        info.alerts = runner::initial_alerts(&spec);
        if req.dry_run {
            return Ok(self.dry_run(info, refusal, &agents).await);
        }
        if let Some(reason) = refusal {
            info.state = RunState::Completed;
            info.outcome = Some(Outcome::Cancelled);
            info.reason = Some(reason.clone());
            info.ended_at = Some(Timestamp::now());
            for s in &mut info.steps {
                s.state = StepState::Skipped;
            }
            for d in &mut info.detections {
                d.state = graydar_common::gameday::run::DetectionState::NotRun;
            }
            info.verdicts = Some(info.compute_verdicts());
            event(&mut info, None, None, format!("cancelled by the preflight: {reason}"));
            self.store.insert_run(&record(&info)).await?;
            self.ctx
                .runs_total
                .with_label_values(&[name, Outcome::Cancelled.as_str()])
                .inc();
            let lever = info.preflight.iter().any(|c| c.check == "safety_lever" && !c.ok);
            return Err(GameDayError::Preflight {
                run: info.id,
                reason,
                lever,
            });
        }
        event(&mut info, None, None, "preflight passed".into());
        self.store.insert_run(&record(&info)).await?;
        if self.cluster.is_leader() {
            self.spawn_run(info.clone());
        } else {
            // The leader drives runs; it starts this one when it hears of it
            // (or, when there is none right now, as it takes over).
            tracing::info!(run = %info.id, gameday = %name, seed, "game-day run handed to the leader");
            self.cluster.notify(Change::RunStart(info.id.clone())).await;
        }
        Ok(info)
    }

    /// A dry run: the plan, the preflight, and each agent's operations for
    /// every fault step (the faults' own dry runs); nothing applied or stored.
    async fn dry_run(
        &self,
        mut info: RunInfo,
        refusal: Option<String>,
        agents: &[graydar_common::api::AgentInfo],
    ) -> RunInfo {
        let plan = runner::plan(&info.spec);
        let spec = info.spec.clone();
        for s in &mut info.steps {
            s.planned_start_ms = plan.get(&s.id).copied();
            let req = match spec.steps.iter().find(|x| x.id == s.id).and_then(|x| x.action()) {
                _ if s.agents.is_empty() => continue,
                Some(Action::Fault(f)) => Ok(runner::fault_request(s.agents.clone(), f, spec.safety.lease, true)),
                Some(Action::Load(l)) => {
                    runner::load_request(s.agents.clone(), l, &info.targets, agents, spec.safety.lease, true)
                }
                _ => continue,
            };
            let created = match req {
                Ok(req) => self.ctx.faults.create(req, agents).await.map_err(|e| e.to_string()),
                Err(e) => Err(e),
            };
            match created {
                Ok(fault) => {
                    self.ctx
                        .faults
                        .wait_dry_run(&fault.id, self.ctx.faults.config().dry_run_wait)
                        .await;
                    if let Ok(fault) = self.ctx.faults.get(&fault.id).await {
                        for a in fault.agents {
                            let pa = s.per_agent.entry(a.agent).or_default();
                            pa.state = a.state.as_str().to_owned();
                            pa.reason = a.reason;
                            pa.operations = a.operations;
                        }
                    }
                }
                Err(e) => s.reason = Some(e),
            }
        }
        info.state = RunState::Completed;
        info.reason = refusal.clone().map(|r| format!("a real run would be cancelled: {r}"));
        info.ended_at = Some(Timestamp::now());
        info.updated_at = Timestamp::now();
        event(
            &mut info,
            None,
            None,
            match refusal {
                Some(r) => format!("dry run: the preflight refuses: {r}"),
                None => "dry run: the preflight passes; nothing applied".into(),
            },
        );
        info
    }

    /// One run: from memory while it is going, else from the store.
    pub async fn run(&self, id: &str) -> Result<RunInfo, GameDayError> {
        if let Some(l) = lock(&self.ctx.live).get(id).cloned() {
            return Ok(lock(&l.info).clone());
        }
        let r = self
            .store
            .run(id)
            .await?
            .ok_or_else(|| GameDayError::RunNotFound { id: id.to_owned() })?;
        decode_run(&r)
    }

    /// Runs newest first (live ones as memory has them).
    pub async fn runs(&self, f: &RunFilter) -> Result<Vec<RunSummary>, GameDayError> {
        let rows = self.store.runs(f).await?;
        let live = lock(&self.ctx.live).clone();
        rows.iter()
            .map(|r| match live.get(&r.id) {
                Some(l) => Ok(RunSummary::from(&*lock(&l.info))),
                None => decode_run(r).map(|i| RunSummary::from(&i)),
            })
            .collect()
    }

    /// Aborts a run: its faults are ended here and now (the abort never
    /// waits for the run's task), then the task records the abort, awaits
    /// the reverts and completes the run as `aborted`.
    pub async fn abort(&self, id: &str, reason: String) -> Result<RunInfo, GameDayError> {
        let Some(l) = self.live_unfinished(id) else {
            let info = self.run(id).await?;
            if info.is_finished() || !self.cluster.shared() {
                return Err(GameDayError::Ended {
                    id: id.to_owned(),
                    outcome: info.outcome.map_or("completed", |o| o.as_str()).to_owned(),
                });
            }
            return self.abort_elsewhere(info, reason).await;
        };
        let _ = l.tx.send(Command::Abort(reason.clone()));
        let faults: Vec<String> = lock(&l.info)
            .steps
            .iter()
            .filter(|s| s.state.is_live())
            .filter_map(|s| s.fault_id.clone())
            .collect();
        for f in faults {
            if let Err(e) = self.ctx.faults.end(&f).await {
                tracing::warn!(fault = %f, error = %e, "ending a fault of an aborted run (its lease reverts it)");
            }
        }
        tracing::warn!(run = %id, %reason, "game-day run aborted");
        Ok(lock(&l.info).clone())
    }

    /// Aborts a run another controller (the leader) drives: its faults
    /// are ended here and now, a run not started yet is ended in the store,
    /// and the leader is told to end the run.
    async fn abort_elsewhere(&self, mut info: RunInfo, reason: String) -> Result<RunInfo, GameDayError> {
        for f in info
            .steps
            .iter()
            .filter(|s| s.state.is_live())
            .filter_map(|s| s.fault_id.clone())
        {
            if let Err(e) = self.ctx.faults.end(&f).await {
                tracing::warn!(fault = %f, error = %e, "ending a fault of an aborted run (its lease reverts it)");
            }
        }
        if info.state == RunState::Preflight {
            for s in &mut info.steps {
                s.state = StepState::Skipped;
            }
            info.state = RunState::Completed;
            info.outcome = Some(Outcome::Aborted);
            info.reason = Some(reason.clone());
            info.ended_at = Some(Timestamp::now());
            info.updated_at = Timestamp::now();
            info.verdicts = Some(info.compute_verdicts());
            event(&mut info, None, None, format!("aborted before it started: {reason}"));
            self.store.update_run(&record(&info)).await?;
        }
        self.cluster
            .notify(Change::RunAbort {
                run: info.id.clone(),
                reason: reason.clone(),
            })
            .await;
        tracing::warn!(run = %info.id, %reason, "game-day run aborted (driven by the leader)");
        Ok(info)
    }

    /// Another controller aborted the run `id`: ended here if driven here.
    pub async fn abort_local(&self, id: &str, reason: String) {
        if self.live_unfinished(id).is_some()
            && let Err(e) = self.abort(id, reason).await
        {
            tracing::warn!(run = %id, error = %e, "aborting a run as another controller asked");
        }
    }

    /// Another controller resumed the gate of run `id`: resumed here if
    /// driven here.
    pub fn resume_local(&self, id: &str) {
        if let Some(l) = self.live_unfinished(id) {
            let _ = l.tx.send(Command::Resume);
        }
    }

    /// The run `id` while in progress (not while its task stores its end).
    fn live_unfinished(&self, id: &str) -> Option<Arc<LiveRun>> {
        lock(&self.ctx.live)
            .get(id)
            .filter(|l| !lock(&l.info).is_finished())
            .cloned()
    }

    /// The run of `name` in progress, if any.
    fn live_run_of(&self, name: &str) -> Option<String> {
        lock(&self.ctx.live)
            .values()
            .map(|l| lock(&l.info).clone())
            .find(|i| i.gameday == name && !i.is_finished())
            .map(|i| i.id)
    }

    /// Stores a scheduled start that was skipped, as a cancelled run saying why.
    async fn record_skipped(&self, name: &str, reason: &str) -> Result<(), GameDayError> {
        let def = self.get(name).await?;
        let now = Timestamp::now();
        let mut info = RunInfo {
            id: new_run_id(),
            gameday: name.to_owned(),
            steps: runner::initial_steps(&def.spec, &Default::default()),
            spec: def.spec,
            dry_run: false,
            trigger: "schedule".into(),
            state: RunState::Completed,
            outcome: Some(Outcome::Cancelled),
            reason: Some(reason.to_owned()),
            seed: 0,
            targets: Default::default(),
            preflight: Vec::new(),
            detections: Vec::new(),
            alerts: Vec::new(),
            unexpected: Vec::new(),
            verdicts: None,
            clocks: Default::default(),
            timeline: Vec::new(),
            created_at: now,
            started_at: None,
            ended_at: Some(now),
            updated_at: now,
        };
        for s in &mut info.steps {
            s.state = StepState::Skipped;
        }
        info.verdicts = Some(info.compute_verdicts());
        event(&mut info, None, None, reason.to_owned());
        self.store.insert_run(&record(&info)).await?;
        self.ctx
            .runs_total
            .with_label_values(&[name, Outcome::Cancelled.as_str()])
            .inc();
        tracing::info!(gameday = %name, %reason, "scheduled start skipped");
        Ok(())
    }

    /// Starts the scheduler (scheduled game days; see `scheduler.rs`).
    pub fn spawn_scheduler(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        scheduler::spawn(Arc::downgrade(self))
    }

    /// Aborts every run in progress (the safety lever); how many.
    pub async fn abort_all(&self, reason: &str) -> usize {
        let ids: Vec<String> = lock(&self.ctx.live).keys().cloned().collect();
        let mut n = 0;
        for id in ids {
            if self.abort(&id, reason.to_owned()).await.is_ok() {
                n += 1;
            }
        }
        n
    }

    /// Resumes the gate a run waits at.
    pub async fn resume(&self, id: &str) -> Result<RunInfo, GameDayError> {
        let Some(l) = self.live_unfinished(id) else {
            let info = self.run(id).await?;
            if info.is_finished() || !self.cluster.shared() {
                return Err(GameDayError::Ended {
                    id: id.to_owned(),
                    outcome: info.outcome.map_or("completed", |o| o.as_str()).to_owned(),
                });
            }
            // Driven by the leader: told to resume, if it waits at a gate.
            if !info
                .steps
                .iter()
                .any(|s| s.action == "gate" && s.state == StepState::Active)
            {
                return Err(GameDayError::NoGate { id: id.to_owned() });
            }
            self.cluster.notify(Change::RunResume(id.to_owned())).await;
            return Ok(info);
        };
        let waiting = lock(&l.info)
            .steps
            .iter()
            .any(|s| s.action == "gate" && s.state == StepState::Active);
        if !waiting {
            return Err(GameDayError::NoGate { id: id.to_owned() });
        }
        let _ = l.tx.send(Command::Resume);
        Ok(lock(&l.info).clone())
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    fn check(&self, spec: &GameDaySpec) -> Result<String, GameDayError> {
        spec.validate(&self.limits)
            .map_err(|errors| GameDayError::Invalid(errors.iter().map(ToString::to_string).collect()))?;
        Ok(spec.to_json())
    }

    /// Stores a new definition (409 when the name exists).
    pub async fn create(&self, spec: GameDaySpec) -> Result<GameDayInfo, GameDayError> {
        let json = self.check(&spec)?;
        let now = now_ms();
        let record = GameDayRecord {
            name: spec.name.clone(),
            spec: json,
            created_ms: now,
            updated_ms: now,
        };
        if !self.store.insert_gameday(&record).await? {
            return Err(GameDayError::Exists { name: spec.name });
        }
        tracing::info!(gameday = %spec.name, "game day created");
        Ok(info(spec, now, now))
    }

    /// Creates or replaces `name`'s definition (the spec's own name must be
    /// `name`); whether it replaced one.
    pub async fn put(&self, name: &str, spec: GameDaySpec) -> Result<(GameDayInfo, bool), GameDayError> {
        if spec.name != name {
            return Err(GameDayError::Invalid(vec![format!(
                "name: {:?} differs from the name in the path, {name:?}",
                spec.name
            )]));
        }
        let json = self.check(&spec)?;
        let now = now_ms();
        let record = GameDayRecord {
            name: name.to_owned(),
            spec: json,
            created_ms: now,
            updated_ms: now,
        };
        let earlier = self.store.put_gameday(&record).await?;
        tracing::info!(gameday = %name, replaced = earlier.is_some(), "game day stored");
        Ok((info(spec, earlier.unwrap_or(now), now), earlier.is_some()))
    }

    pub async fn get(&self, name: &str) -> Result<GameDayInfo, GameDayError> {
        let record = self
            .store
            .gameday(name)
            .await?
            .ok_or_else(|| GameDayError::NotFound { name: name.to_owned() })?;
        decode(record)
    }

    pub async fn list(&self) -> Result<Vec<GameDayInfo>, GameDayError> {
        self.store.gamedays().await?.into_iter().map(decode).collect()
    }

    pub async fn delete(&self, name: &str) -> Result<(), GameDayError> {
        if self.store.delete_gameday(name).await? {
            tracing::info!(gameday = %name, "game day deleted");
            Ok(())
        } else {
            Err(GameDayError::NotFound { name: name.to_owned() })
        }
    }
}

fn info(spec: GameDaySpec, created_ms: i64, updated_ms: i64) -> GameDayInfo {
    GameDayInfo {
        name: spec.name.clone(),
        spec,
        created_at: Timestamp::from_unix_ms(created_ms),
        updated_at: Timestamp::from_unix_ms(updated_ms),
    }
}

/// A stored spec read back. It was valid when stored; one that no longer
/// parses (a later, stricter version) is reported as a store error naming it.
fn decode(r: GameDayRecord) -> Result<GameDayInfo, GameDayError> {
    let spec = GameDaySpec::from_json(&r.spec).map_err(|e| {
        GameDayError::Store(StoreError::UnknownValue {
            what: "stored game-day spec",
            value: format!("{}: {e}", r.name),
        })
    })?;
    Ok(info(spec, r.created_ms, r.updated_ms))
}

#[cfg(test)]
mod tests {
    use super::runner::plan;
    use graydar_common::gameday::GameDaySpec;

    #[test]
    fn the_plan_runs_unordered_steps_together_and_ordered_ones_after_each_other() {
        let spec = GameDaySpec::parse(
            "name: g\nhypothesis: h\nsafety: {max_duration: 5m}\ntargets: {}\nsteps:\n\
             - {id: a, wait: {duration: 10s}}\n\
             - {id: b, wait: {duration: 3s}}\n\
             - {id: g, after: [a], gate: {}}\n\
             - {id: c, after: [a, b], wait: {duration: 1s}}\n\
             - {id: d, after: [g, c], wait: {duration: 1s}}\n",
        )
        .expect("spec");
        let p = plan(&spec);
        assert_eq!(p["a"], 0);
        assert_eq!(p["b"], 0, "parallel with a");
        assert_eq!(p["g"], 10_000);
        assert_eq!(p["c"], 10_000, "after the longer of a and b");
        assert_eq!(p["d"], 11_000, "after c; the gate counts as resumed at once");
    }
}
