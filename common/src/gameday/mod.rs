//! Game-day specs: an experiment that injects gray failures across hosts,
//! checks that graydar detected each one (and how fast) and aborts safely
//! (DESIGN.md, "Game days"; docs/src/gamedays.md is the reference).
//!
//! One definition, read from YAML or JSON ([`GameDaySpec::parse`]) and
//! checked without a kernel ([`GameDaySpec::validate`]), so the CLI
//! (`graydar gameday validate`) and the controller refuse the same specs
//! with the same messages. Nothing here runs a game day.
//!
//! - `mod.rs`: the types and parsing;
//! - `validate.rs`: every check, each error naming its field path;
//! - `dag.rs`: the steps' order (`after` is a DAG);
//! - `schedule.rs`: cron + time zone, next run times.

mod dag;
pub mod report;
pub mod run;
mod schedule;
mod validate;
pub mod verify;

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

use crate::api::Severity;
use crate::faults::FaultSpec;

pub use dag::CycleError;
/// The time types of [`Schedule::next_runs`].
pub use jiff;
pub use schedule::ScheduleError;
pub use validate::Limits;

/// A game day as written by its author.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GameDaySpec {
    /// Its identity: 1 to 63 letters, digits, `-`, `_` or `.`.
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// What the experiment expects to show; kept in every run and report.
    pub hypothesis: String,
    /// Named groups of agents, resolved once when a run starts.
    #[serde(deserialize_with = "unique_keys")]
    pub targets: BTreeMap<String, TargetGroup>,
    pub safety: Safety,
    #[serde(default)]
    pub preflight: Preflight,
    pub steps: Vec<Step>,
    #[serde(default)]
    pub abort: Abort,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<Schedule>,
}

/// A named group of agents: a list of hostnames or a label selector
/// (exactly one), then a sample of it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetGroup {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub agents: Vec<String>,
    /// Every registered agent whose labels include all of these.
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "unique_keys"
    )]
    pub selector: BTreeMap<String, String>,
    #[serde(default)]
    pub pick: Pick,
    #[serde(default)]
    pub on_empty: OnEmpty,
}

/// How many of a group's agents a run takes (sampled with a seed the run
/// records): `all`, `{count: N}` or `{percent: P}`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Pick {
    #[default]
    All,
    /// This many agents (at least 1).
    Count(u32),
    /// This percentage of the group, rounded up (0 < P <= 100).
    Percent(f64),
}

// By hand: serde_yaml 0.9 reads externally tagged enums only from YAML
// tags (`!count 2`), not from the `{count: 2}` that JSON and people write.
impl<'de> Deserialize<'de> for Pick {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Pick, D::Error> {
        struct V;
        const WANT: &str = "all, {count: N} or {percent: P}";
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Pick;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(WANT)
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Pick, E> {
                match v {
                    "all" => Ok(Pick::All),
                    _ => Err(E::custom(format!("{v:?}: expected {WANT}"))),
                }
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Pick, A::Error> {
                use serde::de::Error as _;
                let Some(key) = map.next_key::<String>()? else {
                    return Err(A::Error::custom(format!("empty map: expected {WANT}")));
                };
                let pick = match key.as_str() {
                    "count" => Pick::Count(map.next_value()?),
                    "percent" => Pick::Percent(map.next_value()?),
                    other => return Err(A::Error::custom(format!("unknown key {other:?}: expected {WANT}"))),
                };
                if map.next_key::<String>()?.is_some() {
                    return Err(A::Error::custom(format!(
                        "give one of count or percent: expected {WANT}"
                    )));
                }
                Ok(pick)
            }
        }
        de.deserialize_any(V)
    }
}

/// What a run does when a group resolves to no agent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnEmpty {
    /// The run is refused.
    #[default]
    Fail,
    /// The steps on this group are skipped (recorded as skipped).
    Skip,
}

/// Limits of the whole run (all concurrent steps together).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Safety {
    /// Most agents under faults or load at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_targets: Option<u32>,
    /// Largest share (0 < x <= 1) of the alive agents under faults or load at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_share: Option<f64>,
    /// Hard cap: the run ends and everything reverts after this long.
    #[serde(with = "humantime_serde")]
    pub max_duration: Duration,
    /// Lease of the run's faults (3s to 10m; the controller's `faults.lease` when absent).
    #[serde(default, with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub lease: Option<Duration>,
}

/// Checked before anything is injected; a run that fails one is refused with the reason.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preflight {
    /// No firing finding of these on any target host (default: any critical).
    #[serde(default)]
    pub no_firing: FindingFilter,
    /// Every target agent alive and healthy.
    #[serde(default = "yes")]
    pub require_healthy: bool,
    /// Every target agent reports the capabilities its steps need
    /// ([`minimum_capabilities`]).
    #[serde(default = "yes")]
    pub require_capabilities: bool,
    /// Queries against the controller's Prometheus; each must hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub promql: Vec<PromCheck>,
}

impl Default for Preflight {
    fn default() -> Self {
        Preflight {
            no_firing: FindingFilter::default(),
            require_healthy: true,
            require_capabilities: true,
            promql: Vec::new(),
        }
    }
}

fn yes() -> bool {
    true
}

/// Findings that match: of one of `kinds` (any kind when empty) and at
/// least `min_severity`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FindingFilter {
    /// Finding kinds by name (`nic_drops`, ...); empty = any kind.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kinds: Vec<String>,
    #[serde(default = "critical")]
    pub min_severity: Severity,
}

impl Default for FindingFilter {
    fn default() -> Self {
        FindingFilter {
            kinds: Vec::new(),
            min_severity: Severity::Critical,
        }
    }
}

fn critical() -> Severity {
    Severity::Critical
}

/// `expr` (an instant PromQL query) compared with `value`: holds when every
/// sample of the result satisfies `sample op value`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromCheck {
    pub expr: String,
    pub op: CompareOp,
    pub value: f64,
}

/// Comparison of a [`PromCheck`]; words because `>` starts a folded scalar in YAML.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CompareOp {
    #[serde(alias = "<")]
    Lt,
    #[serde(alias = "<=")]
    Le,
    #[serde(alias = "==")]
    Eq,
    #[serde(alias = "!=")]
    Ne,
    #[serde(alias = ">=")]
    Ge,
    #[serde(alias = ">")]
    Gt,
}

impl CompareOp {
    pub fn symbol(self) -> &'static str {
        match self {
            CompareOp::Lt => "<",
            CompareOp::Le => "<=",
            CompareOp::Eq => "==",
            CompareOp::Ne => "!=",
            CompareOp::Ge => ">=",
            CompareOp::Gt => ">",
        }
    }
}

/// One step of the DAG: an id, the steps it waits for, and exactly one
/// action (`fault`, `wait`, `gate` or `load`). Steps not ordered by `after`
/// run in parallel; a step without `after` starts with the run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// 1 to 63 letters, digits, `-` or `_`; unique in the spec.
    pub id: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub after: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<FaultAction>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait: Option<WaitAction>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate: Option<GateAction>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load: Option<LoadAction>,
    /// Only on a fault step: what graydar must detect, and how fast.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect: Option<Expect>,
    /// Only on a fault step: a fault that may not apply on every target
    /// (a NIC whose driver cannot resize its rings). When it fails on an
    /// agent, what did apply is reverted, the step ends `skipped` with the
    /// agents' reasons, its expectations are not judged, and the run goes
    /// on; a missing capability does not fail the preflight. Without it,
    /// a fault that fails anywhere fails the run.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub optional: bool,
}

/// The action of a step, once it is known to have exactly one.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Action<'a> {
    Fault(&'a FaultAction),
    Wait(&'a WaitAction),
    Gate(&'a GateAction),
    Load(&'a LoadAction),
}

impl<'a> Action<'a> {
    /// The action's field name: `fault`, `wait`, `gate` or `load`.
    pub fn name(&self) -> &'static str {
        match self {
            Action::Fault(_) => "fault",
            Action::Wait(_) => "wait",
            Action::Gate(_) => "gate",
            Action::Load(_) => "load",
        }
    }

    /// How long the action lasts, when known in advance (a gate waits for a person).
    pub fn duration(&self) -> Option<Duration> {
        match self {
            Action::Fault(f) => Some(f.duration),
            Action::Wait(w) => Some(w.duration),
            Action::Gate(_) => None,
            Action::Load(l) => Some(l.duration),
        }
    }

    /// The target group it acts on, if any.
    pub fn target(&self) -> Option<&'a str> {
        match self {
            Action::Fault(f) => Some(&f.target),
            Action::Load(l) => Some(&l.target),
            Action::Wait(_) | Action::Gate(_) => None,
        }
    }
}

impl Step {
    /// Every action the step sets (a valid step sets exactly one).
    pub fn actions(&self) -> Vec<Action<'_>> {
        let mut a = Vec::with_capacity(1);
        if let Some(f) = &self.fault {
            a.push(Action::Fault(f));
        }
        if let Some(w) = &self.wait {
            a.push(Action::Wait(w));
        }
        if let Some(g) = &self.gate {
            a.push(Action::Gate(g));
        }
        if let Some(l) = &self.load {
            a.push(Action::Load(l));
        }
        a
    }

    /// The step's action; `None` when it sets none or several.
    pub fn action(&self) -> Option<Action<'_>> {
        match self.actions().as_slice() {
            [one] => Some(*one),
            _ => None,
        }
    }
}

/// Inject `spec` on every agent of `target` for `duration`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultAction {
    /// A target group's name.
    pub target: String,
    pub spec: FaultSpec,
    #[serde(with = "humantime_serde")]
    pub duration: Duration,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WaitAction {
    #[serde(with = "humantime_serde")]
    pub duration: Duration,
}

/// Waits for an operator's resume.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GateAction {
    /// Shown to the operator (what to check before resuming).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// The run aborts when nobody resumes within this long (else
    /// `safety.max_duration` bounds the wait).
    #[serde(default, with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
}

/// Generate load on every agent of `target` for `duration`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadAction {
    /// A target group's name.
    pub target: String,
    pub spec: LoadSpec,
    #[serde(with = "humantime_serde")]
    pub duration: Duration,
}

/// The kinds of load, by `kind`; adding one is one variant here, its
/// checks in [`LoadSpec::validate`], its fault spec in
/// [`LoadSpec::fault_spec`] and its runner in the agent (agent/src/load/).
/// A load is handed to the agents as a fault of the same kind (bounded,
/// journaled, lease-bound: graydar_common::load).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum LoadSpec {
    /// Write `block_bytes` to a file in `dir` and fsync it, `per_second`
    /// times a second (what fsync_latency watches; a dm-delay fault is seen
    /// only while something syncs). The file is removed at the end.
    Fsync {
        /// An absolute directory on the device under test.
        dir: String,
        #[serde(default = "default_block")]
        block_bytes: u32,
        per_second: u32,
    },
    /// Traffic from every agent of the step's target toward every agent of
    /// the group `to` (their load sinks), at `packets_per_second` or
    /// `bits_per_second` per destination.
    Traffic {
        /// A group's name.
        to: String,
        #[serde(default)]
        protocol: crate::load::LoadProtocol,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        packets_per_second: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        bits_per_second: Option<u64>,
        #[serde(default = "default_size")]
        size: u32,
        #[serde(default = "default_connections")]
        connections: u32,
        #[serde(default = "default_port")]
        port: u16,
    },
    /// Incast: every agent of the step's target sends `bytes` over a new
    /// TCP connection to the one agent of the group `to`, all at the same
    /// instant (the controller hands out one start), every `every`.
    Burst {
        /// A group of one agent (the receiver).
        to: String,
        bytes: u64,
        #[serde(with = "humantime_serde")]
        every: Duration,
        #[serde(default = "default_port")]
        port: u16,
    },
}

fn default_block() -> u32 {
    4096
}

fn default_size() -> u32 {
    1200
}

fn default_connections() -> u32 {
    1
}

fn default_port() -> u16 {
    crate::load::DEFAULT_SINK_PORT
}

impl LoadSpec {
    /// The group the load is aimed at, if any.
    pub fn to(&self) -> Option<&str> {
        match self {
            LoadSpec::Fsync { .. } => None,
            LoadSpec::Traffic { to, .. } | LoadSpec::Burst { to, .. } => Some(to),
        }
    }

    /// The fault spec handed to the agents, with `to` resolved to the
    /// addresses of the agents of that group (`dest`).
    pub fn fault_spec(&self, dest: &[String]) -> FaultSpec {
        use crate::load::{BurstSpec, FsyncSpec, TrafficSpec};
        match self {
            LoadSpec::Fsync {
                dir,
                block_bytes,
                per_second,
            } => FaultSpec::Fsync(FsyncSpec {
                dir: dir.clone(),
                block_bytes: *block_bytes,
                per_second: *per_second,
            }),
            LoadSpec::Traffic {
                protocol,
                packets_per_second,
                bits_per_second,
                size,
                connections,
                port,
                ..
            } => FaultSpec::Traffic(TrafficSpec {
                to: dest.to_vec(),
                port: *port,
                protocol: *protocol,
                packets_per_second: *packets_per_second,
                bits_per_second: *bits_per_second,
                size: *size,
                connections: *connections,
            }),
            LoadSpec::Burst { bytes, every, port, .. } => FaultSpec::Burst(BurstSpec {
                to: dest.first().cloned().unwrap_or_default(),
                port: *port,
                bytes: *bytes,
                every_ms: u64::try_from(every.as_millis()).unwrap_or(u64::MAX),
                start_unix_ms: 0,
            }),
        }
    }
}

/// What a fault step must cause, measured from the fault's confirmed apply.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub detect: Vec<Detect>,
    /// Alerts that must fire (Prometheus' `ALERTS{alertstate="firing"}`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alerts: Vec<AlertExpect>,
    /// The expected findings resolve within this long after the revert.
    #[serde(default, with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub clear_within: Option<Duration>,
    /// Findings the fault is known to cause besides what it must (netem
    /// loss is also qdisc drops on its interface): neither required nor
    /// unexpected, and never an abort.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerate: Vec<Tolerate>,
}

/// A finding a fault step may cause (see [`Expect::tolerate`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tolerate {
    /// One finding kind or a list.
    pub kind: Kinds,
    /// The group whose hosts may report it.
    pub on: String,
    /// A glob the finding's subject must match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
}

/// A finding that must fire.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Detect {
    /// One finding kind or a list (any of them counts).
    pub kind: Kinds,
    /// The group whose hosts must report it.
    pub on: String,
    /// Pair findings only (one_way_loss, asymmetric_*, latency_asymmetry):
    /// the subject must be a peer of this group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    /// A glob the finding's subject must match (`eth*`, `/dev/vd?`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// Deadline from the fault's confirmed apply.
    #[serde(with = "humantime_serde")]
    pub within: Duration,
}

/// One finding kind or a list, by name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Kinds {
    One(String),
    Many(Vec<String>),
}

impl Kinds {
    pub fn names(&self) -> &[String] {
        match self {
            Kinds::One(k) => std::slice::from_ref(k),
            Kinds::Many(ks) => ks,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertExpect {
    pub alertname: String,
    #[serde(with = "humantime_serde")]
    pub within: Duration,
}

/// Checked continuously; any one ends the run and reverts everything (as
/// do an operator's abort and the kill switch, always).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Abort {
    /// Findings no active step expects (default: any critical on any host).
    #[serde(default)]
    pub findings: AbortFindings,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub promql: Vec<PromAbort>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AbortFindings {
    /// Finding kinds by name; empty = any kind.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kinds: Vec<String>,
    #[serde(default = "critical")]
    pub min_severity: Severity,
    #[serde(default)]
    pub hosts: HostScope,
}

impl Default for AbortFindings {
    fn default() -> Self {
        AbortFindings {
            kinds: Vec::new(),
            min_severity: Severity::Critical,
            hosts: HostScope::Any,
        }
    }
}

/// Which hosts' findings count.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HostScope {
    #[default]
    Any,
    /// Only the run's target agents.
    Targets,
}

/// Abort when `expr` returns a sample for `for` (0s: at once).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromAbort {
    pub expr: String,
    #[serde(
        default,
        rename = "for",
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub for_: Option<Duration>,
}

/// When the controller starts runs on its own.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Schedule {
    /// 5 fields: minute hour day-of-month month day-of-week.
    pub cron: String,
    /// IANA name (`Europe/Berlin`); UTC when absent.
    #[serde(default = "utc")]
    pub time_zone: String,
    #[serde(default)]
    pub concurrency: Concurrency,
    /// A start missed by more than this (controller down) is skipped.
    #[serde(default, with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub starting_deadline: Option<Duration>,
    /// Finished runs kept (1 to 1000).
    #[serde(default = "default_history")]
    pub history_limit: u32,
    #[serde(default)]
    pub suspended: bool,
}

fn utc() -> String {
    "UTC".to_owned()
}

fn default_history() -> u32 {
    10
}

/// What a scheduled start does while a run of the same game day is active.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Concurrency {
    /// Skipped (recorded); never two runs at once.
    #[default]
    Forbid,
}

/// One problem of a spec, at a field path (`steps[2].after[0]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpecError {
    pub path: String,
    pub message: String,
}

impl SpecError {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> SpecError {
        SpecError {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

impl std::error::Error for SpecError {}

/// Text that is not a game-day spec (syntax, a wrong type, an unknown or
/// missing field): the field path where serde stopped, and where in the
/// text when the parser knows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError {
    /// Field path (`steps[1].fault.spec`), empty or `.` at the top.
    pub path: String,
    /// `line L column C`, when known.
    pub location: Option<String>,
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(l) = &self.location {
            write!(f, "{l}: ")?;
        }
        if !self.path.is_empty() && self.path != "." {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for ParseError {}

/// The capabilities (fields of [`crate::api::Capabilities`]) an agent needs
/// at least for a fault; the agent may need more at apply time (the
/// controller exclusion uses sch_prio and cls_flower on some routes).
pub fn minimum_capabilities(spec: &FaultSpec) -> Vec<&'static str> {
    use crate::faults::{Direction, DmFaultSpec};
    match spec {
        FaultSpec::Netem { direction, scope, .. } => {
            let mut c = vec!["sch_netem"];
            if !scope.is_whole_interface() {
                c.extend(["sch_prio", "cls_flower"]);
            }
            if *direction == Direction::Ingress {
                c.extend(["ifb", "act_mirred"]);
                if !c.contains(&"cls_flower") {
                    c.push("cls_flower");
                }
            }
            c
        }
        FaultSpec::Dm { dm, .. } => match dm {
            DmFaultSpec::Delay { .. } => vec!["device_mapper", "dm_delay"],
            DmFaultSpec::Flakey { .. } => vec!["device_mapper", "dm_flakey"],
        },
        FaultSpec::Blackhole { .. }
        | FaultSpec::RouteFlap { .. }
        | FaultSpec::RouteDetour { .. }
        | FaultSpec::NicRings { .. }
        | FaultSpec::Traffic(_)
        | FaultSpec::Fsync(_)
        | FaultSpec::Burst(_)
        | FaultSpec::LoadSink(_) => Vec::new(),
    }
}

impl GameDaySpec {
    /// A spec from JSON (text starting with `{`) or YAML.
    pub fn parse(text: &str) -> Result<GameDaySpec, ParseError> {
        if text.trim_start().starts_with('{') {
            GameDaySpec::from_json(text)
        } else {
            GameDaySpec::from_yaml(text)
        }
    }

    pub fn from_json(text: &str) -> Result<GameDaySpec, ParseError> {
        let mut de = serde_json::Deserializer::from_str(text);
        let spec: GameDaySpec = serde_path_to_error::deserialize(&mut de).map_err(|e| {
            let inner = e.inner();
            ParseError {
                path: e.path().to_string(),
                location: (inner.line() > 0).then(|| format!("line {} column {}", inner.line(), inner.column())),
                message: without_position(&inner.to_string()),
            }
        })?;
        de.end().map_err(|e| ParseError {
            path: String::new(),
            location: Some(format!("line {} column {}", e.line(), e.column())),
            message: without_position(&e.to_string()),
        })?;
        Ok(spec)
    }

    pub fn from_yaml(text: &str) -> Result<GameDaySpec, ParseError> {
        let de = serde_yaml::Deserializer::from_str(text);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let inner = e.inner();
            ParseError {
                path: e.path().to_string(),
                location: inner
                    .location()
                    .map(|l| format!("line {} column {}", l.line(), l.column())),
                message: without_path(&without_position(&inner.to_string()), &e.path().to_string()),
            }
        })
    }

    /// The spec as JSON (what the API stores and answers).
    pub fn to_json(&self) -> String {
        // Every field is a string, number, bool, list or string-keyed map.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}

/// serde_json and serde_yaml append " at line L column C" to their
/// messages; [`ParseError`] carries the location on its own.
fn without_position(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) if msg[i..].contains(" column ") => msg[..i].to_owned(),
        _ => msg.to_owned(),
    }
}

/// serde_yaml starts its messages with the field path, which
/// [`ParseError`] carries on its own.
/// (its own path can stop short of serde_path_to_error's: `steps[0]` for
/// an unknown field `steps[0].wiat`).
fn without_path(msg: &str, path: &str) -> String {
    match msg.split_once(": ") {
        Some((head, rest)) if !head.is_empty() && path.starts_with(head) => rest.to_owned(),
        _ => msg.to_owned(),
    }
}

/// A string-keyed map that refuses a key given twice (serde's maps keep
/// the last one silently: a group defined twice would lose its first
/// definition without a word).
fn unique_keys<'de, D, V>(de: D) -> Result<BTreeMap<String, V>, D::Error>
where
    D: Deserializer<'de>,
    V: Deserialize<'de>,
{
    struct Unique<V>(std::marker::PhantomData<V>);
    impl<'de, V: Deserialize<'de>> serde::de::Visitor<'de> for Unique<V> {
        type Value = BTreeMap<String, V>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a map")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = BTreeMap::new();
            while let Some((k, v)) = map.next_entry::<String, V>()? {
                if out.contains_key(&k) {
                    return Err(serde::de::Error::custom(format!("{k:?} is given twice")));
                }
                out.insert(k, v);
            }
            Ok(out)
        }
    }
    de.deserialize_map(Unique(std::marker::PhantomData))
}

#[cfg(test)]
mod tests;

/// A stored game-day definition (`GET /api/v1/gamedays/{name}`).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GameDayInfo {
    pub name: String,
    /// The spec as stored (see the book's Game days page for its fields).
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub spec: GameDaySpec,
    /// RFC 3339 UTC.
    pub created_at: crate::timestamp::Timestamp,
    /// When the spec was last replaced, RFC 3339 UTC.
    pub updated_at: crate::timestamp::Timestamp,
}

/// `GET /api/v1/gamedays`: by name.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GameDayList {
    pub gamedays: Vec<GameDayInfo>,
}
