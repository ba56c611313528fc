//! Wire types of graydar's HTTP API, shared by agent, controller and CLI.
//! One definition, used on both sides.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

pub use crate::timestamp::Timestamp;

/// The kinds of gray failure graydar reports (DESIGN.md, "Findings").
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingKind {
    NicDrops,
    QdiscDrops,
    KernelDrops,
    FsyncLatency,
    DiskSlow,
    DiskHung,
    OneWayLoss,
    AsymmetricConnectivity,
    AsymmetricRoute,
    LatencyAsymmetry,
    RouteFlap,
    Incast,
}

impl FindingKind {
    pub const ALL: [FindingKind; 12] = [
        FindingKind::NicDrops,
        FindingKind::QdiscDrops,
        FindingKind::KernelDrops,
        FindingKind::FsyncLatency,
        FindingKind::DiskSlow,
        FindingKind::DiskHung,
        FindingKind::OneWayLoss,
        FindingKind::AsymmetricConnectivity,
        FindingKind::AsymmetricRoute,
        FindingKind::LatencyAsymmetry,
        FindingKind::RouteFlap,
        FindingKind::Incast,
    ];

    /// snake_case name, as in JSON and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            FindingKind::NicDrops => "nic_drops",
            FindingKind::QdiscDrops => "qdisc_drops",
            FindingKind::KernelDrops => "kernel_drops",
            FindingKind::FsyncLatency => "fsync_latency",
            FindingKind::DiskSlow => "disk_slow",
            FindingKind::DiskHung => "disk_hung",
            FindingKind::OneWayLoss => "one_way_loss",
            FindingKind::AsymmetricConnectivity => "asymmetric_connectivity",
            FindingKind::AsymmetricRoute => "asymmetric_route",
            FindingKind::LatencyAsymmetry => "latency_asymmetry",
            FindingKind::RouteFlap => "route_flap",
            FindingKind::Incast => "incast",
        }
    }

    /// The path mesh's kinds: findings about a pair of hosts, whose subject
    /// is the peer (`peer <name>`).
    pub const PATH: [FindingKind; 4] = [
        FindingKind::OneWayLoss,
        FindingKind::AsymmetricConnectivity,
        FindingKind::AsymmetricRoute,
        FindingKind::LatencyAsymmetry,
    ];

    /// The kind named `name` (its [`FindingKind::as_str`]).
    pub fn from_name(name: &str) -> Option<FindingKind> {
        FindingKind::ALL.into_iter().find(|k| k.as_str() == name)
    }

    /// Whether it is one of the path mesh's pair findings ([`FindingKind::PATH`]).
    pub fn is_path(self) -> bool {
        FindingKind::PATH.contains(&self)
    }

    /// Name of the runbook in runbooks/ (without `.md`): the kind with dashes.
    pub fn runbook(self) -> String {
        self.as_str().replace('_', "-")
    }
}

impl fmt::Display for FindingKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Warning,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingState {
    Firing,
    Resolved,
}

/// One number (or label) that made a detector decide; kept as given so a
/// human can re-check the decision.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Evidence {
    Number(f64),
    Text(String),
}

impl From<f64> for Evidence {
    fn from(v: f64) -> Self {
        Evidence::Number(v)
    }
}
impl From<u64> for Evidence {
    fn from(v: u64) -> Self {
        // Counters beyond 2^53 lose precision in JSON anyway.
        Evidence::Number(v as f64)
    }
}
impl From<String> for Evidence {
    fn from(v: String) -> Self {
        Evidence::Text(v)
    }
}
impl From<&str> for Evidence {
    fn from(v: &str) -> Self {
        Evidence::Text(v.to_owned())
    }
}

/// One gray failure on one subject of one host.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Finding {
    /// Stable for the same host + kind + subject: see [`finding_id`].
    pub id: String,
    pub host: String,
    pub kind: FindingKind,
    pub subject: String,
    pub severity: Severity,
    pub state: FindingState,
    /// When the finding (last) started firing, RFC 3339 UTC.
    pub since: Timestamp,
    /// Last evaluation that confirmed the state, RFC 3339 UTC.
    pub last_seen: Timestamp,
    /// When it resolved, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved_at: Option<Timestamp>,
    pub summary: String,
    pub evidence: BTreeMap<String, Evidence>,
    /// Runbook name in runbooks/ (e.g. `nic-drops`).
    pub runbook: String,
}

/// Response of `GET /api/v1/findings` on an agent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FindingsResponse {
    pub host: String,
    pub findings: Vec<Finding>,
}

/// Stable finding id: 16 hex digits of FNV-1a 64 over `host \0 kind \0 subject`.
/// FNV is used (not std's SipHash) because its output is specified and
/// therefore identical across builds, hosts and languages.
pub fn finding_id(host: &str, kind: FindingKind, subject: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in [
        host.as_bytes(),
        b"\0",
        kind.as_str().as_bytes(),
        b"\0",
        subject.as_bytes(),
    ] {
        for b in part {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

// ---------------------------------------------------------------------------
// Controller API (`/api/v1` on graydar-controller): agents register and
// heartbeat, push finding transitions; viewers list agents and findings.

/// What this host can do: probes that loaded and fault injectors available.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Capabilities {
    /// eBPF programs can be loaded (root or CAP_BPF + CAP_PERFMON, BTF present).
    #[serde(default)]
    pub ebpf: bool,
    /// The sch_netem qdisc is available (delay / loss injection).
    #[serde(default)]
    pub sch_netem: bool,
    /// device-mapper is available (dm-delay / dm-flakey disk faults).
    #[serde(default)]
    pub device_mapper: bool,
    /// The prio qdisc (scoped netem faults and the controller exclusion).
    #[serde(default)]
    pub sch_prio: bool,
    /// The flower classifier (scoped faults, controller exclusion, ingress redirect).
    #[serde(default)]
    pub cls_flower: bool,
    /// The mirred action (ingress faults).
    #[serde(default)]
    pub act_mirred: bool,
    /// ifb devices (ingress faults).
    #[serde(default)]
    pub ifb: bool,
    /// The dm-delay target.
    #[serde(default)]
    pub dm_delay: bool,
    /// The dm-flakey target.
    #[serde(default)]
    pub dm_flakey: bool,
}

impl Capabilities {
    /// A capability by its field name (`sch_netem`, `dm_delay`, ...);
    /// `None` for a name that is none of them.
    pub fn get(&self, name: &str) -> Option<bool> {
        Some(match name {
            "ebpf" => self.ebpf,
            "sch_netem" => self.sch_netem,
            "device_mapper" => self.device_mapper,
            "sch_prio" => self.sch_prio,
            "cls_flower" => self.cls_flower,
            "act_mirred" => self.act_mirred,
            "ifb" => self.ifb,
            "dm_delay" => self.dm_delay,
            "dm_flakey" => self.dm_flakey,
            _ => return None,
        })
    }
}

/// `POST /api/v1/agents/register`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    /// The agent's identity (the `host` of its findings): labels of ASCII
    /// letters, digits, `-` and `_` between dots.
    #[cfg_attr(
        feature = "openapi",
        schema(
            min_length = 1,
            max_length = 253,
            pattern = r"^[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?(\.[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*$"
        )
    )]
    pub hostname: String,
    #[serde(default)]
    pub addresses: Vec<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub kernel_version: String,
    pub agent_version: String,
    #[serde(default)]
    pub capabilities: Capabilities,
    /// Network interfaces of this host (fault targets); `None` from agents
    /// that do not report them (then the controller cannot check names).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interfaces: Option<Vec<String>>,
    /// device-mapper devices (`/dev/mapper/<name>`) of this host (fault targets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dm_devices: Option<Vec<String>>,
    /// Enrollment: the SHA-256 (64 lowercase hex digits) of the credential
    /// this agent generated and will present from now on. Required with the
    /// fleet's bootstrap token, which binds it to the hostname (once; the
    /// same digest again is a retry and succeeds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(pattern = "^[0-9a-f]{64}$"))]
    pub credential_sha256: Option<String>,
}

/// What every agent credential starts with (then 64 hex digits), so that
/// secret scanners and people can tell what a leaked string is.
pub const CREDENTIAL_PREFIX: &str = "gdra_";

/// How recently an agent was heard from.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentState {
    /// Heard from within the stale threshold.
    Healthy,
    /// Missed heartbeats, but not for long.
    Stale,
    /// Not heard from for longer than the lost threshold.
    Lost,
}

impl AgentState {
    pub const ALL: [AgentState; 3] = [AgentState::Healthy, AgentState::Stale, AgentState::Lost];
    pub fn as_str(self) -> &'static str {
        match self {
            AgentState::Healthy => "healthy",
            AgentState::Stale => "stale",
            AgentState::Lost => "lost",
        }
    }
}

impl fmt::Display for AgentState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One registered agent, as the controller knows it.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AgentInfo {
    pub hostname: String,
    pub addresses: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub kernel_version: String,
    pub agent_version: String,
    pub capabilities: Capabilities,
    /// First registration, RFC 3339 UTC.
    pub registered_at: Timestamp,
    /// Last register, heartbeat or report, RFC 3339 UTC.
    pub last_seen: Timestamp,
    pub state: AgentState,
    /// Findings of this agent currently firing at the controller.
    pub firing_findings: u64,
    /// How far the agent's clock is from the controller's, estimated from
    /// its heartbeats; absent until the agent has completed an exchange
    /// (and after a controller restart, until its next heartbeats).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock: Option<ClockOffsetInfo>,
}

/// An agent's clock offset: controller clock minus agent clock, in
/// milliseconds, with the half-width of the interval the true offset lies
/// in (NTP's on-wire calculation over the agent's recent heartbeats).
/// A time `t` on the agent's clock is `t + offset_ms ± uncertainty_ms` on
/// the controller's.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClockOffsetInfo {
    pub offset_ms: f64,
    pub uncertainty_ms: f64,
    /// Heartbeat exchanges the estimate rests on.
    pub samples: u32,
}

/// One heartbeat's request/response times, milliseconds since the Unix
/// epoch: `t1` the agent sent the request and `t4` it received the answer
/// (agent's clock), `t2` the controller received it and `t3` answered
/// (controller's clock, from [`HeartbeatResponse`]).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClockExchange {
    pub t1: i64,
    pub t2: i64,
    pub t3: i64,
    pub t4: i64,
}

impl From<ClockExchange> for crate::clock::Exchange {
    fn from(e: ClockExchange) -> Self {
        crate::clock::Exchange {
            t1: e.t1,
            t2: e.t2,
            t3: e.t3,
            t4: e.t4,
        }
    }
}

/// Answer to a registration.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RegisterResponse {
    pub agent: AgentInfo,
    /// How often the controller expects a heartbeat.
    pub heartbeat_interval_seconds: u64,
    /// Whether the hostname has a credential bound to it (by this
    /// registration or an earlier one): its agent calls with it.
    #[serde(default)]
    pub enrolled: bool,
}

/// `POST /api/v1/agents/{hostname}/heartbeat`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatRequest {
    /// Findings firing on the agent right now (informational).
    #[serde(default)]
    pub firing: u32,
    /// Current network interfaces (they come and go; see [`RegisterRequest`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interfaces: Option<Vec<String>>,
    /// Current device-mapper devices.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dm_devices: Option<Vec<String>>,
    /// The times of this agent's previous heartbeat (its request and the
    /// controller's answer), from which the controller estimates the
    /// agent's clock offset. An impossible exchange is ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock: Option<ClockExchange>,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HeartbeatResponse {
    pub state: AgentState,
    /// When the controller received the heartbeat (`t2`), milliseconds
    /// since the Unix epoch on its clock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub received_ms: Option<i64>,
    /// When the controller answered (`t3`), taken just before the answer is
    /// serialized.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent_ms: Option<i64>,
}

impl HeartbeatResponse {
    /// The exchange of a heartbeat the agent sent at `t1` and whose answer
    /// (this) it received at `t4` (its clock, ms since the epoch); `None`
    /// from a controller that does not give its times.
    pub fn exchange(&self, t1: i64, t4: i64) -> Option<ClockExchange> {
        Some(ClockExchange {
            t1,
            t2: self.received_ms?,
            t3: self.sent_ms?,
            t4,
        })
    }
}

/// `GET /api/v1/agents`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AgentList {
    pub agents: Vec<AgentInfo>,
}

/// What happened to a finding.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TransitionKind {
    /// Started firing (at = the finding's `since`).
    Fired,
    /// Still firing with another severity (at = when it changed).
    SeverityChanged,
    /// Stopped firing (at = the finding's `resolved_at`).
    Resolved,
}

impl TransitionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TransitionKind::Fired => "fired",
            TransitionKind::SeverityChanged => "severity_changed",
            TransitionKind::Resolved => "resolved",
        }
    }
}

impl fmt::Display for TransitionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One transition of one finding, with the finding as it was right after it.
/// Identified by (finding id, transition, at): delivering it twice is harmless.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FindingTransition {
    pub transition: TransitionKind,
    /// RFC 3339 UTC.
    pub at: Timestamp,
    pub finding: Finding,
}

/// `POST /api/v1/agents/{hostname}/transitions`: transitions in the order
/// they happened on the agent.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransitionBatch {
    pub transitions: Vec<FindingTransition>,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BatchResponse {
    /// Transitions stored for the first time.
    pub accepted: u64,
    /// Transitions the controller already had (re-delivery).
    pub duplicates: u64,
}

/// `GET /api/v1/findings` on the controller (all agents).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FindingList {
    pub findings: Vec<Finding>,
}

/// One stored transition in a finding's history.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TransitionRecord {
    pub transition: TransitionKind,
    pub at: Timestamp,
    pub severity: Severity,
    pub summary: String,
    pub evidence: BTreeMap<String, Evidence>,
    /// When the controller stored it, RFC 3339 UTC.
    pub received_at: Timestamp,
}

/// `GET /api/v1/findings/{id}`: the finding and its transitions, oldest first.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FindingDetail {
    pub finding: Finding,
    pub history: Vec<TransitionRecord>,
}

/// Every 4xx/5xx body of the controller.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ApiError {
    /// Short machine-readable code, e.g. `unauthorized`, `not_found`.
    pub error: String,
    /// Human-readable explanation.
    pub detail: String,
}

/// Roles of bearer tokens.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// The fleet's bootstrap token: enrolls agents (register), which then
    /// call with their own per-agent credential.
    Agent,
    /// Read agents, findings, metrics.
    Viewer,
    /// Everything.
    Operator,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Agent => "agent",
            Role::Viewer => "viewer",
            Role::Operator => "operator",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "agent" => Ok(Role::Agent),
            "viewer" => Ok(Role::Viewer),
            "operator" => Ok(Role::Operator),
            other => Err(format!("unknown role {other:?} (agent, viewer or operator)")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finding_id_is_stable_and_distinguishes_subjects() {
        let a = finding_id("node1", FindingKind::NicDrops, "eth0");
        assert_eq!(a, finding_id("node1", FindingKind::NicDrops, "eth0"));
        assert_ne!(a, finding_id("node1", FindingKind::NicDrops, "eth1"));
        assert_ne!(a, finding_id("node1", FindingKind::QdiscDrops, "eth0"));
        assert_ne!(a, finding_id("node2", FindingKind::NicDrops, "eth0"));
        // "ab"+"c" must not collide with "a"+"bc".
        assert_ne!(
            finding_id("ab", FindingKind::NicDrops, "c"),
            finding_id("a", FindingKind::NicDrops, "bc")
        );
        assert_eq!(a.len(), 16);
    }

    #[test]
    fn kinds_serialize_as_snake_case_and_runbooks_use_dashes() {
        for k in FindingKind::ALL {
            let json = serde_json::to_string(&k).expect("serialize kind");
            assert_eq!(json, format!("\"{}\"", k.as_str()));
        }
        assert_eq!(FindingKind::NicDrops.runbook(), "nic-drops");
        assert_eq!(FindingKind::AsymmetricConnectivity.runbook(), "asymmetric-connectivity");
    }

    #[test]
    fn heartbeats_carry_clock_times_and_old_peers_still_parse() {
        // An old controller's answer: no times, no exchange.
        let old: HeartbeatResponse = serde_json::from_str(r#"{"state":"healthy"}"#).expect("old answer");
        assert_eq!(old.exchange(1, 2), None);
        let new: HeartbeatResponse =
            serde_json::from_str(r#"{"state":"healthy","received_ms":110,"sent_ms":111}"#).expect("new answer");
        assert_eq!(
            new.exchange(100, 120),
            Some(ClockExchange {
                t1: 100,
                t2: 110,
                t3: 111,
                t4: 120
            })
        );
        // An old agent's heartbeat, and a new one's.
        let req: HeartbeatRequest = serde_json::from_str(r#"{"firing":1}"#).expect("old heartbeat");
        assert_eq!(req.clock, None);
        assert!(!serde_json::to_string(&req).expect("json").contains("clock"));
        let req: HeartbeatRequest =
            serde_json::from_str(r#"{"clock":{"t1":1,"t2":2,"t3":3,"t4":4}}"#).expect("heartbeat with times");
        let e = crate::clock::Exchange::from(req.clock.expect("clock"));
        assert_eq!((e.t1, e.t2, e.t3, e.t4), (1, 2, 3, 4));
        assert!(serde_json::from_str::<HeartbeatRequest>(r#"{"clock":{"t1":1,"t2":2,"t3":3}}"#).is_err());
        assert!(serde_json::from_str::<HeartbeatRequest>(r#"{"clock":{"t1":1,"t2":2,"t3":3,"t4":4,"t5":5}}"#).is_err());
    }
}
