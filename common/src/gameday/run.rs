//! A game day's runs as the API shows them: states, steps with per-agent
//! times, detections, unexpected findings, verdicts and the timeline. The
//! controller's runner (controller/src/gamedays/) writes these; the CLI
//! and reports read them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::GameDaySpec;
use crate::api::{FindingKind, Severity};
use crate::timestamp::Timestamp;

/// Where a run is. Every run ends `completed` with an [`Outcome`].
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    /// Accepted, not started.
    Pending,
    /// Targets resolved, preflight being checked; nothing injected.
    Preflight,
    /// Steps being applied and watched.
    Running,
    /// Ending: every fault of the run being reverted.
    Reverting,
    /// Faults reverted; waiting for the expected findings to clear.
    Verifying,
    /// Ended; see `outcome`.
    Completed,
}

impl RunState {
    pub const ALL: [RunState; 6] = [
        RunState::Pending,
        RunState::Preflight,
        RunState::Running,
        RunState::Reverting,
        RunState::Verifying,
        RunState::Completed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Pending => "pending",
            RunState::Preflight => "preflight",
            RunState::Running => "running",
            RunState::Reverting => "reverting",
            RunState::Verifying => "verifying",
            RunState::Completed => "completed",
        }
    }

    pub fn parse(s: &str) -> Option<RunState> {
        RunState::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

/// How a run ended.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Every expectation met in time, no abort.
    Passed,
    /// An expectation was missed or met late.
    DetectionGap,
    /// An abort condition, an operator, the safety lever, `max_duration`
    /// or a controller restart ended it (`reason` says which).
    Aborted,
    /// Something could not be done (a fault failed on an agent; `reason`).
    Failed,
    /// Refused before anything was injected (preflight, the safety lever).
    Cancelled,
}

impl Outcome {
    pub const ALL: [Outcome; 5] = [
        Outcome::Passed,
        Outcome::DetectionGap,
        Outcome::Aborted,
        Outcome::Failed,
        Outcome::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Passed => "passed",
            Outcome::DetectionGap => "detection_gap",
            Outcome::Aborted => "aborted",
            Outcome::Failed => "failed",
            Outcome::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Outcome> {
        Outcome::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

/// Where a step is.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepState {
    /// Waiting for the steps in its `after`.
    Pending,
    /// Fault created; waiting for every agent to confirm it applied.
    Applying,
    /// In effect (a fault confirmed by every agent, a wait counting, a gate waiting).
    Active,
    /// Fault ended; waiting for every agent to confirm the revert.
    Reverting,
    /// Fault reverted on every agent (or by their leases).
    Reverted,
    /// A wait or gate that is over.
    Completed,
    /// Not run (its group was empty with `on_empty: skip`, or the run ended first).
    Skipped,
    Failed,
}

impl StepState {
    /// Whether the step is over (the steps after it may start).
    pub fn is_done(self) -> bool {
        matches!(
            self,
            StepState::Reverted | StepState::Completed | StepState::Skipped | StepState::Failed
        )
    }

    /// How the CLI names the state.
    pub fn word(self) -> &'static str {
        match self {
            StepState::Pending => "pending",
            StepState::Applying => "applying",
            StepState::Active => "active",
            StepState::Reverting => "reverting",
            StepState::Reverted => "reverted",
            StepState::Completed => "completed",
            StepState::Skipped => "skipped",
            StepState::Failed => "failed",
        }
    }

    /// Whether the step has (or may have) something applied.
    pub fn is_live(self) -> bool {
        matches!(self, StepState::Applying | StepState::Active | StepState::Reverting)
    }
}

/// `POST /api/v1/gamedays/{name}/runs`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartRun {
    /// Resolve the targets, check the preflight, plan the timeline and ask
    /// every agent for its exact operations; apply nothing, store nothing.
    #[serde(default)]
    pub dry_run: bool,
    /// Seed of the target sampling (`pick`); random when absent. Recorded in the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
}

/// `POST /api/v1/gamedays/runs/{id}/abort`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AbortRun {
    /// Why (kept in the run); "operator abort" when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// One check of the preflight.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PreflightCheck {
    /// `safety_lever`, `targets`, `healthy`, `capabilities`, `no_firing`, `blast_radius`, `promql`.
    pub check: String,
    pub ok: bool,
    pub detail: String,
}

/// One agent's part in a fault step.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StepAgent {
    /// The agent's fault state (`pending`, `active`, `reverted`, `failed`, ...).
    pub state: String,
    /// When the controller first saw the agent confirm the apply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_at: Option<Timestamp>,
    /// When the agent applied it, on the agent's own clock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_applied_at: Option<Timestamp>,
    /// When the controller first saw the agent confirm the revert.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reverted_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Dry run: the operations the agent would perform.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub operations: Vec<String>,
}

/// One step of a run.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepRun {
    pub id: String,
    /// `fault`, `wait`, `gate` or `load`.
    pub action: String,
    pub state: StepState,
    /// The group it acts on, and its agents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub agents: Vec<String>,
    /// The fault the step created (see `GET /api/v1/faults/{id}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault_id: Option<String>,
    /// Planned length (none for a gate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// Dry run: when it would start after the run's start (gates counted as instant).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub planned_start_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Timestamp>,
    /// When the fault was confirmed in effect on every agent (controller clock).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_at: Option<Timestamp>,
    /// When it ended (fault ended, wait over, gate resumed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<Timestamp>,
    /// When every agent confirmed the revert (or their leases settled it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reverted_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The spec's `optional`: a fault that failed on an agent skips the
    /// step (reverted where it applied) instead of failing the run.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub optional: bool,
    /// Fault steps: each agent's state and times.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub per_agent: BTreeMap<String, StepAgent>,
}

/// Whether an expectation was met.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DetectionState {
    /// Its fault is not in effect yet, or its deadline has not passed.
    Pending,
    /// Detected within the deadline.
    Detected,
    /// Detected, after the deadline.
    Late,
    /// Not detected.
    Missed,
    /// Its step never ran (skipped or the run ended first).
    NotRun,
    /// Its fault ran, but the run was aborted (or failed, or the
    /// controller restarted) before its deadline: neither detected nor
    /// missed. Not a detection, so the detection verdict fails.
    CutShort,
}

/// Whether an expected finding resolved after the revert.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClearState {
    Pending,
    Cleared,
    /// Resolved after `clear_within`, or not at all.
    NotCleared,
}

/// One expectation on one host: a cell of the detection matrix.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Detection {
    pub step: String,
    /// Index in the step's `expect.detect`.
    pub expectation: usize,
    /// The kinds that count.
    pub kinds: Vec<String>,
    /// The host that must report it.
    pub host: String,
    pub within_ms: u64,
    pub state: DetectionState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finding_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<FindingKind>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// The finding's `since`, on the detecting agent's clock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fired_at: Option<Timestamp>,
    /// Time to detect: `fired_at` put on the controller's clock (the
    /// detecting agent's estimated offset) minus the fault's apply time
    /// (the applying agent's own confirmation time put on the controller's
    /// clock when known, else when the controller received it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_to_detect_ms: Option<f64>,
    /// How far off `time_to_detect_ms` may be (the two agents' offset uncertainties);
    /// absent when an agent's offset is not known yet (offset taken as 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uncertainty_ms: Option<f64>,
    /// Upper bound on the controller's own clock, whatever the agents'
    /// clocks: when the controller first saw the finding minus when it
    /// created the fault.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upper_bound_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clear: Option<ClearState>,
    /// When the finding resolved (detecting agent's clock).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved_at: Option<Timestamp>,
    /// From the revert (controller clock) to `resolved_at` (corrected).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_to_clear_ms: Option<f64>,
}

/// An expected alert (`expect.alerts`): Prometheus' `ALERTS{alertname,
/// alertstate="firing"}` must appear within `within_ms` of the fault's apply.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AlertCheck {
    pub step: String,
    pub alertname: String,
    pub within_ms: u64,
    pub state: DetectionState,
    /// From the fault's apply to the first query that saw it firing
    /// (controller clock; at most one query interval late).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fired_after_ms: Option<f64>,
}

/// A finding that fired on a run's target host while the run was going and
/// matched no expectation: a false positive or collateral damage.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UnexpectedFinding {
    pub finding_id: String,
    pub host: String,
    pub kind: FindingKind,
    pub subject: String,
    pub severity: Severity,
    pub fired_at: Timestamp,
    pub summary: String,
}

/// Pass or fail.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Pass,
    Fail,
}

/// A run's two verdicts.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Verdicts {
    /// Every expectation met in time.
    pub detection: Verdict,
    /// The preflight held and nothing aborted the run.
    pub safety: Verdict,
}

/// One line of the timeline.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    pub message: String,
}

/// The clock offset used for one agent (controller clock minus agent clock).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClockUsed {
    pub offset_ms: f64,
    pub uncertainty_ms: f64,
}

/// A run (`GET /api/v1/gamedays/runs/{id}`), and the answer of a dry run.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunInfo {
    /// `run-` and 12 hex digits (`dry-run` for a dry run, which is not stored).
    pub id: String,
    pub gameday: String,
    /// The spec as it was when the run started.
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub spec: GameDaySpec,
    pub dry_run: bool,
    /// `api` or `schedule`.
    pub trigger: String,
    pub state: RunState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Outcome>,
    /// Why it was aborted, failed or cancelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The seed of the target sampling.
    pub seed: u64,
    /// Each group's agents, resolved when the run started.
    pub targets: BTreeMap<String, Vec<String>>,
    pub preflight: Vec<PreflightCheck>,
    pub steps: Vec<StepRun>,
    pub detections: Vec<Detection>,
    /// Expected alerts (when the spec has `expect.alerts`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alerts: Vec<AlertCheck>,
    pub unexpected: Vec<UnexpectedFinding>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdicts: Option<Verdicts>,
    /// The offsets used for the agents' times.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub clocks: BTreeMap<String, ClockUsed>,
    pub timeline: Vec<Event>,
    pub created_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<Timestamp>,
    pub updated_at: Timestamp,
}

impl RunInfo {
    pub fn step(&self, id: &str) -> Option<&StepRun> {
        self.steps.iter().find(|s| s.id == id)
    }

    pub fn is_finished(&self) -> bool {
        self.state == RunState::Completed
    }

    /// The verdicts from the detections and the outcome: detection passes
    /// when every expectation (finding or alert) was met in time (none
    /// late, missed or not run) and cleared in time; safety when the run was neither aborted, failed nor
    /// cancelled.
    pub fn compute_verdicts(&self) -> Verdicts {
        // An optional step that was skipped (its fault could not apply
        // somewhere) is not judged: its cells stay `not run`.
        let judged = |step: &str| {
            !self
                .steps
                .iter()
                .any(|s| s.id == step && s.optional && s.state == StepState::Skipped)
        };
        let detection = if self
            .detections
            .iter()
            .filter(|d| judged(&d.step))
            .all(|d| d.state == DetectionState::Detected)
            && self.detections.iter().all(|d| d.clear != Some(ClearState::NotCleared))
            && self
                .alerts
                .iter()
                .filter(|a| judged(&a.step))
                .all(|a| a.state == DetectionState::Detected)
        {
            Verdict::Pass
        } else {
            Verdict::Fail
        };
        let safety = match self.outcome {
            Some(Outcome::Aborted | Outcome::Failed | Outcome::Cancelled) => Verdict::Fail,
            _ => Verdict::Pass,
        };
        Verdicts { detection, safety }
    }

    /// The outcome of a run that ended on its own (not aborted).
    pub fn natural_outcome(&self) -> Outcome {
        if self.compute_verdicts().detection == Verdict::Pass {
            Outcome::Passed
        } else {
            Outcome::DetectionGap
        }
    }
}

/// One line of `GET /api/v1/gamedays/runs`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunSummary {
    pub id: String,
    pub gameday: String,
    pub trigger: String,
    pub state: RunState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Outcome>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub created_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<Timestamp>,
}

impl From<&RunInfo> for RunSummary {
    fn from(r: &RunInfo) -> RunSummary {
        RunSummary {
            id: r.id.clone(),
            gameday: r.gameday.clone(),
            trigger: r.trigger.clone(),
            state: r.state,
            outcome: r.outcome,
            reason: r.reason.clone(),
            created_at: r.created_at,
            ended_at: r.ended_at,
        }
    }
}

/// `GET /api/v1/gamedays/runs`: newest first.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunList {
    pub runs: Vec<RunSummary>,
}
