//! Fault specifications: what an operator asks for (controller API, CLI) and
//! what an agent applies. One definition for both sides; validation here is
//! pure (no kernel), so the controller answers a bad spec with a 4xx before
//! any agent sees it. The kernel-facing encodings live in the agent
//! (agent/src/faults/{netem,tc,dm}.rs).

use std::fmt;
use std::fmt::Write as _;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::load::{BurstSpec, FsyncSpec, SinkSpec, TrafficSpec};

/// A fault spec that cannot be applied as written; the message names the field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpecError(pub String);

impl SpecError {
    fn dm(msg: impl Into<String>) -> SpecError {
        SpecError(format!("dm: {}", msg.into()))
    }
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SpecError {}

/// One fault, by kind. `kind` is the JSON tag.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum FaultSpec {
    /// tc/netem on an interface: the whole interface or only the traffic `scope` matches.
    Netem {
        interface: String,
        #[serde(default)]
        direction: Direction,
        #[serde(default)]
        scope: Scope,
        netem: NetemSpec,
    },
    /// dm-delay / dm-flakey on a dm device with a linear table (`/dev/mapper/<device>`).
    Dm { device: String, dm: DmFaultSpec },
    /// A blackhole route for a prefix (packets to it are discarded).
    Blackhole {
        prefix: String,
        /// Routing table; the main table when absent.
        #[serde(default)]
        table: Option<u32>,
    },
    /// A flapping prefix, as a BGP session that keeps resetting looks from
    /// the host: withdrawn (a blackhole route graydar owns) for
    /// `down_seconds`, re-announced (the route removed) for `up_seconds`,
    /// repeated until the fault ends; always removed at the revert.
    RouteFlap {
        prefix: String,
        /// Routing table; the main table when absent.
        #[serde(default)]
        table: Option<u32>,
        /// How long each withdrawal lasts (1 to 3600).
        down_seconds: u32,
        /// How long the prefix stays announced between withdrawals (1 to 3600).
        up_seconds: u32,
    },
    /// A detour: traffic to `prefix` sent through the gateway `via` (on a
    /// directly connected network) instead of the way it goes now, by a
    /// unicast route graydar owns, more specific than the route it shadows
    /// (a route for exactly `prefix` already in the table is refused). With
    /// `src` the packets keep that source address, so only this direction
    /// of a path changes: one side's routing taking another way, as an
    /// asymmetric route looks. Always removed at the revert.
    RouteDetour {
        prefix: String,
        /// The gateway (same address family as `prefix`).
        via: String,
        /// The preferred source address (RTA_PREFSRC), one of the host's own.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        src: Option<String>,
        /// Routing table; the main table when absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        table: Option<u32>,
    },
    /// An interface's RX and/or TX ring sizes shrunk (ethtool netlink
    /// `ETHTOOL_MSG_RINGS_SET`): fewer descriptors, so a burst the NIC used
    /// to absorb overflows the ring and is dropped in the driver. The sizes
    /// before are snapshotted and restored exactly.
    NicRings {
        interface: String,
        /// Descriptors per RX ring (1 up to the driver's maximum).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rx: Option<u32>,
        /// Descriptors per TX ring (1 up to the driver's maximum).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tx: Option<u32>,
    },
    /// Load: traffic to registered agents' sinks (load.rs).
    Traffic(TrafficSpec),
    /// Load: write + fdatasync at a rate in a directory (load.rs).
    Fsync(FsyncSpec),
    /// Load: a synchronized TCP fan-in toward one agent (load.rs).
    Burst(BurstSpec),
    /// A load sink (TCP and UDP, discarding): the controller gives it to
    /// the agents a traffic or burst load is aimed at.
    LoadSink(SinkSpec),
}

/// Which packets of an interface netem sees.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Packets the interface sends (root qdisc).
    #[default]
    Egress,
    /// Packets the interface receives (redirected through an ifb device).
    Ingress,
}

/// Narrows a netem fault to matching traffic; empty = the whole interface.
/// A packet matches when its destination is in one of `dst_cidrs` (any when
/// empty), its destination port is one of `dst_ports` (any when empty) and
/// its protocol is `protocol` (any when absent). The controller's address and
/// the agent↔controller channel are always excluded, whatever the scope.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scope {
    #[serde(default)]
    pub dst_cidrs: Vec<String>,
    #[serde(default)]
    pub dst_ports: Vec<u16>,
    #[serde(default)]
    pub protocol: Option<Protocol>,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    Tcp,
    Udp,
    Icmp,
}

impl Protocol {
    /// IP protocol number (IPv4; ICMPv6 is 58 on IPv6).
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Icmp => 1,
        }
    }
}

/// A parsed `address/prefix-length`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub len: u8,
}

impl Cidr {
    /// A prefix as the kernel would install it: host bits cleared
    /// (`2001:db8::1/64` → `2001:db8::/64`). For reading back what an older
    /// version journaled; specs go through [`Cidr::parse`], which refuses
    /// host bits.
    pub fn parse_masked(s: &str) -> Result<Cidr, SpecError> {
        let c = Cidr::parse_unchecked(s)?;
        Ok(Cidr {
            addr: c.network(),
            len: c.len,
        })
    }

    /// A prefix with no host bits (`10.1.0.0/16`, `2001:db8::/64`) or an
    /// address (`/32`, `/128`).
    pub fn parse(s: &str) -> Result<Cidr, SpecError> {
        let c = Cidr::parse_unchecked(s)?;
        // The kernel masks host bits (a route for 2001:db8::1/64 is
        // installed as 2001:db8::/64), so a prefix with host bits would be
        // applied as one thing and looked for, at revert, as another.
        // Refused rather than silently rewritten: the operator sees the
        // prefix that will really be used.
        let network = c.network();
        if network != c.addr {
            return Err(SpecError(format!(
                "{s:?} has host bits set: the prefix is {network}/{}",
                c.len
            )));
        }
        Ok(c)
    }

    fn parse_unchecked(s: &str) -> Result<Cidr, SpecError> {
        let (a, l) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let addr: IpAddr = a.trim().parse().map_err(|_| {
            SpecError(format!(
                "{s:?} is not an IP address or CIDR (e.g. 10.0.0.0/8, fd00::/64)"
            ))
        })?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = match l {
            None => max,
            Some(l) => l
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|l| *l <= max)
                .ok_or_else(|| SpecError(format!("{s:?}: prefix length must be 0..={max}")))?,
        };
        Ok(Cidr { addr, len })
    }

    /// The prefix's network address: `addr` with the host bits cleared.
    pub fn network(&self) -> IpAddr {
        match self.addr {
            IpAddr::V4(a) => IpAddr::V4((u32::from(a) & v4_mask(self.len)).into()),
            IpAddr::V6(a) => IpAddr::V6((u128::from(a) & v6_mask(self.len)).into()),
        }
    }

    /// Whether `ip` lies inside this prefix.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = v4_mask(self.len);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = v6_mask(self.len);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

fn v4_mask(len: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(len.min(32))).unwrap_or(0)
}

fn v6_mask(len: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(len.min(128))).unwrap_or(0)
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl Scope {
    pub fn is_whole_interface(&self) -> bool {
        self.dst_cidrs.is_empty() && self.dst_ports.is_empty() && self.protocol.is_none()
    }

    pub fn cidrs(&self) -> Result<Vec<Cidr>, SpecError> {
        self.dst_cidrs
            .iter()
            .map(|c| Cidr::parse(c).map_err(|e| SpecError(format!("scope.dst_cidrs: {e}"))))
            .collect()
    }

    pub fn validate(&self) -> Result<(), SpecError> {
        self.cidrs()?;
        if self.dst_ports.contains(&0) {
            return Err(SpecError("scope.dst_ports: port 0 is not a destination port".into()));
        }
        if !self.dst_ports.is_empty() && self.protocol == Some(Protocol::Icmp) {
            return Err(SpecError("scope.dst_ports: ICMP has no ports".into()));
        }
        Ok(())
    }
}

/// The kinds of fault: the `kind` tag of a [`FaultSpec`], the `kind` label of
/// the agent's fault metrics and the `kind` column of the controller's
/// faults. Spelled `netem`, `dm`, `blackhole`, `route_flap` everywhere.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    Netem,
    Dm,
    Blackhole,
    RouteFlap,
    RouteDetour,
    NicRings,
    Traffic,
    Fsync,
    Burst,
    LoadSink,
}

/// A fault kind that is not one of [`FaultKind::ALL`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown fault kind {0:?} (expected netem, dm, blackhole, route_flap, route_detour, nic_rings, traffic, fsync, burst or \
     load_sink)"
)]
pub struct UnknownFaultKind(pub String);

impl FaultKind {
    pub const ALL: [FaultKind; 10] = [
        FaultKind::Netem,
        FaultKind::Dm,
        FaultKind::Blackhole,
        FaultKind::RouteFlap,
        FaultKind::RouteDetour,
        FaultKind::NicRings,
        FaultKind::Traffic,
        FaultKind::Fsync,
        FaultKind::Burst,
        FaultKind::LoadSink,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FaultKind::Netem => "netem",
            FaultKind::Dm => "dm",
            FaultKind::Blackhole => "blackhole",
            FaultKind::RouteFlap => "route_flap",
            FaultKind::RouteDetour => "route_detour",
            FaultKind::NicRings => "nic_rings",
            FaultKind::Traffic => "traffic",
            FaultKind::Fsync => "fsync",
            FaultKind::Burst => "burst",
            FaultKind::LoadSink => "load_sink",
        }
    }

    /// A load (traffic, fsync, burst, a sink) rather than an impairment.
    pub fn is_load(self) -> bool {
        matches!(
            self,
            FaultKind::Traffic | FaultKind::Fsync | FaultKind::Burst | FaultKind::LoadSink
        )
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for FaultKind {
    type Err = UnknownFaultKind;

    fn from_str(s: &str) -> Result<FaultKind, UnknownFaultKind> {
        FaultKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| UnknownFaultKind(s.to_owned()))
    }
}

/// What a fault acts on, for overlap checks: two faults with the same key
/// on one agent would fight over the same qdisc tree, dm table or route.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum FaultKey {
    /// One netem tree per interface and direction.
    Netem {
        interface: String,
        direction: Direction,
    },
    Dm {
        device: String,
    },
    /// The prefix as written (the table is not part of the key): a
    /// blackhole, a route flap and a detour of one prefix own the same route.
    Blackhole {
        prefix: String,
    },
    /// An interface's rings.
    Rings {
        interface: String,
    },
    /// A load, by what it generates (two identical loads on one agent are one too many).
    Load {
        what: String,
    },
}

impl FaultSpec {
    pub fn kind(&self) -> FaultKind {
        match self {
            FaultSpec::Netem { .. } => FaultKind::Netem,
            FaultSpec::Dm { .. } => FaultKind::Dm,
            FaultSpec::Blackhole { .. } => FaultKind::Blackhole,
            FaultSpec::RouteFlap { .. } => FaultKind::RouteFlap,
            FaultSpec::RouteDetour { .. } => FaultKind::RouteDetour,
            FaultSpec::NicRings { .. } => FaultKind::NicRings,
            FaultSpec::Traffic(_) => FaultKind::Traffic,
            FaultSpec::Fsync(_) => FaultKind::Fsync,
            FaultSpec::Burst(_) => FaultKind::Burst,
            FaultSpec::LoadSink(_) => FaultKind::LoadSink,
        }
    }

    /// What the fault acts on, for overlap checks.
    pub fn key(&self) -> FaultKey {
        match self {
            FaultSpec::Netem {
                interface, direction, ..
            } => FaultKey::Netem {
                interface: interface.clone(),
                direction: *direction,
            },
            FaultSpec::Dm { device, .. } => FaultKey::Dm { device: device.clone() },
            FaultSpec::Blackhole { prefix, .. }
            | FaultSpec::RouteFlap { prefix, .. }
            | FaultSpec::RouteDetour { prefix, .. } => FaultKey::Blackhole { prefix: prefix.clone() },
            FaultSpec::NicRings { interface, .. } => FaultKey::Rings {
                interface: interface.clone(),
            },
            FaultSpec::Traffic(t) => FaultKey::Load {
                what: format!("traffic {} {}:{}", t.protocol.as_str(), t.to.join(","), t.port),
            },
            FaultSpec::Fsync(f) => FaultKey::Load {
                what: format!("fsync {}", f.dir),
            },
            FaultSpec::Burst(b) => FaultKey::Load {
                what: format!("burst {}:{}", b.to, b.port),
            },
            FaultSpec::LoadSink(s) => FaultKey::Load {
                what: format!("sink {}", s.port),
            },
        }
    }

    /// What the fault acts on: interface, dm device or prefix.
    pub fn target(&self) -> &str {
        match self {
            FaultSpec::Netem { interface, .. } => interface,
            FaultSpec::Dm { device, .. } => device,
            FaultSpec::Blackhole { prefix, .. }
            | FaultSpec::RouteFlap { prefix, .. }
            | FaultSpec::RouteDetour { prefix, .. } => prefix,
            FaultSpec::NicRings { interface, .. } => interface,
            FaultSpec::Traffic(t) => t.to.first().map_or("(no destination)", String::as_str),
            FaultSpec::Fsync(f) => &f.dir,
            FaultSpec::Burst(b) => &b.to,
            FaultSpec::LoadSink(_) => "sink",
        }
    }

    /// Everything that can be checked without a kernel.
    pub fn validate(&self) -> Result<(), SpecError> {
        match self {
            FaultSpec::Netem {
                interface,
                scope,
                netem,
                ..
            } => {
                interface_name("", interface)?;
                scope.validate()?;
                netem.validate()
            }
            FaultSpec::Dm { device, dm } => {
                if device.is_empty() || device.len() > 127 || device.contains('/') {
                    return Err(SpecError::dm(format!(
                        "device {device:?} is not a valid dm device name"
                    )));
                }
                dm.validate()
            }
            FaultSpec::Blackhole { prefix, .. } => route_prefix("blackhole", prefix),
            FaultSpec::RouteFlap {
                prefix,
                down_seconds,
                up_seconds,
                ..
            } => {
                route_prefix("route_flap", prefix)?;
                for (name, v) in [("down_seconds", down_seconds), ("up_seconds", up_seconds)] {
                    if !(1..=3600).contains(v) {
                        return Err(SpecError(format!("route_flap: {name} must be 1 to 3600, got {v}")));
                    }
                }
                Ok(())
            }
            FaultSpec::RouteDetour { prefix, via, src, .. } => {
                route_prefix("route_detour", prefix)?;
                let c = Cidr::parse(prefix).map_err(|e| SpecError(format!("route_detour prefix: {e}")))?;
                for (name, v) in [("via", Some(via)), ("src", src.as_ref())] {
                    let Some(v) = v else { continue };
                    let ip: std::net::IpAddr = v
                        .parse()
                        .map_err(|_| SpecError(format!("route_detour {name}: {v:?} is not an IP address")))?;
                    if ip.is_ipv4() != c.addr.is_ipv4() {
                        return Err(SpecError(format!(
                            "route_detour {name}: {ip} is not of the address family of the prefix {c}"
                        )));
                    }
                    if ip.is_unspecified() || ip.is_multicast() {
                        return Err(SpecError(format!("route_detour {name}: {ip} is not a unicast address")));
                    }
                }
                Ok(())
            }
            FaultSpec::NicRings { interface, rx, tx } => {
                interface_name("nic_rings: ", interface)?;
                if rx.is_none() && tx.is_none() {
                    return Err(SpecError(
                        "nic_rings: give rx, tx or both (descriptors per ring)".into(),
                    ));
                }
                for (name, v) in [("rx", rx), ("tx", tx)] {
                    if *v == Some(0) {
                        return Err(SpecError(format!("nic_rings: {name} must be at least 1 descriptor")));
                    }
                }
                Ok(())
            }
            FaultSpec::Traffic(t) => t.validate(),
            FaultSpec::Fsync(f) => f.validate(),
            FaultSpec::Burst(b) => b.validate(),
            FaultSpec::LoadSink(s) => s.validate(),
        }
    }
}

/// An interface name the kernel could have (at most 15 bytes, no '/' or
/// space); the message starts with `prefix`.
fn interface_name(prefix: &str, name: &str) -> Result<(), SpecError> {
    if name.is_empty() || name.len() > 15 || name.contains(['/', ' ']) {
        return Err(SpecError(format!(
            "{prefix}interface {name:?} is not a valid interface name"
        )));
    }
    Ok(())
}

/// A prefix a route fault may own: valid, and not the default route.
fn route_prefix(kind: &str, prefix: &str) -> Result<(), SpecError> {
    let c = Cidr::parse(prefix).map_err(|e| SpecError(format!("{kind} prefix: {e}")))?;
    if c.len == 0 {
        return Err(SpecError(format!(
            "{kind} prefix: a fault on the default route would cut the host off (refused)"
        )));
    }
    Ok(())
}

/// Whether a route flap's prefix is withdrawn (its blackhole route in
/// place) `elapsed` after the fault was applied: withdrawn for `down`, then
/// announced for `up`, repeated. The first withdrawal starts at the apply.
pub fn route_flap_withdrawn(elapsed: std::time::Duration, down: std::time::Duration, up: std::time::Duration) -> bool {
    let period = down.saturating_add(up).as_nanos().max(1);
    elapsed.as_nanos() % period < down.as_nanos()
}

/// Where a fault is on one agent.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultState {
    /// Assigned, not applied yet.
    Pending,
    Active,
    Reverted,
    /// Could not be applied (the reason says why); nothing is left applied.
    Failed,
    /// Dry run done: the agent listed the operations and applied nothing.
    Described,
}

impl FaultState {
    pub fn as_str(self) -> &'static str {
        match self {
            FaultState::Pending => "pending",
            FaultState::Active => "active",
            FaultState::Reverted => "reverted",
            FaultState::Failed => "failed",
            FaultState::Described => "described",
        }
    }
}

/// What netem should do to matching packets. Percentages are 0..=100.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetemSpec {
    /// Added delay in milliseconds.
    #[serde(default)]
    pub delay_ms: f64,
    /// Random variation of the delay in milliseconds.
    #[serde(default)]
    pub jitter_ms: f64,
    /// Correlation of successive delays, percent.
    #[serde(default)]
    pub delay_correlation: f64,
    #[serde(default)]
    pub loss: Option<Loss>,
    /// Duplicate packets, percent.
    #[serde(default)]
    pub duplicate: f64,
    #[serde(default)]
    pub duplicate_correlation: f64,
    /// Corrupt one bit in packets, percent.
    #[serde(default)]
    pub corrupt: f64,
    #[serde(default)]
    pub corrupt_correlation: f64,
    /// Send this percentage of packets immediately (the rest delayed), which
    /// reorders them; needs a delay.
    #[serde(default)]
    pub reorder: f64,
    #[serde(default)]
    pub reorder_correlation: f64,
    /// Rate limit in bytes per second.
    #[serde(default)]
    pub rate_bytes_per_sec: Option<u64>,
    /// Queue limit in packets; default sized so rate × delay fits (see [`NetemSpec::limit`]).
    #[serde(default)]
    pub limit: Option<u32>,
}

/// Loss models of netem.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "model", rename_all = "snake_case", deny_unknown_fields)]
pub enum Loss {
    /// Independent (or correlated) random loss.
    Random {
        percent: f64,
        #[serde(default)]
        correlation: f64,
    },
    /// Gilbert-Elliott: p = P(good→bad), r = P(bad→good), loss in bad state
    /// `1 - h`, loss in good state `1 - k`; all percent.
    GilbertElliott {
        p: f64,
        r: f64,
        #[serde(default = "hundred")]
        one_minus_h: f64,
        #[serde(default)]
        one_minus_k: f64,
    },
}

fn hundred() -> f64 {
    100.0
}

/// netem's own default limit (sch_netem.c: `q->limit = 1000` in tc's default).
const DEFAULT_LIMIT: u32 = 1000;

impl NetemSpec {
    pub fn validate(&self) -> Result<(), SpecError> {
        let pct = |name: &str, v: f64| {
            if v.is_finite() && (0.0..=100.0).contains(&v) {
                Ok(())
            } else {
                Err(SpecError(format!(
                    "netem: {name} must be a percentage between 0 and 100, got {v}"
                )))
            }
        };
        for (name, v) in [("delay_ms", self.delay_ms), ("jitter_ms", self.jitter_ms)] {
            if !v.is_finite() || v < 0.0 {
                return Err(SpecError(format!("netem: {name} must be a duration >= 0 ms, got {v}")));
            }
            if v > 3_600_000.0 {
                return Err(SpecError(format!("netem: {name} {v} ms is more than an hour")));
            }
        }
        if self.jitter_ms > self.delay_ms && self.delay_ms > 0.0 {
            return Err(SpecError(format!(
                "netem: jitter_ms ({}) larger than delay_ms ({}) would need negative delays",
                self.jitter_ms, self.delay_ms
            )));
        }
        pct("delay_correlation", self.delay_correlation)?;
        pct("duplicate", self.duplicate)?;
        pct("duplicate_correlation", self.duplicate_correlation)?;
        pct("corrupt", self.corrupt)?;
        pct("corrupt_correlation", self.corrupt_correlation)?;
        pct("reorder", self.reorder)?;
        pct("reorder_correlation", self.reorder_correlation)?;
        match &self.loss {
            Some(Loss::Random { percent, correlation }) => {
                pct("loss.percent", *percent)?;
                pct("loss.correlation", *correlation)?;
            }
            Some(Loss::GilbertElliott {
                p,
                r,
                one_minus_h,
                one_minus_k,
            }) => {
                pct("loss.p", *p)?;
                pct("loss.r", *r)?;
                pct("loss.one_minus_h", *one_minus_h)?;
                pct("loss.one_minus_k", *one_minus_k)?;
            }
            None => {}
        }
        if self.reorder > 0.0 && self.delay_ms == 0.0 {
            return Err(SpecError(
                "netem: reorder needs a delay (packets not reordered are delayed)".into(),
            ));
        }
        if self.rate_bytes_per_sec == Some(0) {
            return Err(SpecError("netem: rate_bytes_per_sec must be > 0".into()));
        }
        if self.limit == Some(0) {
            return Err(SpecError("netem: limit must be at least 1 packet".into()));
        }
        if self == &NetemSpec::default() {
            return Err(SpecError(
                "netem: the spec does nothing: set a delay, loss, duplicate, corrupt, reorder or rate".into(),
            ));
        }
        Ok(())
    }

    /// Queue limit in packets. netem holds every delayed packet in its queue,
    /// so a limit below rate × delay would itself drop packets and add loss
    /// nobody asked for. Without a rate, assume a 10 Gbit/s link of 1500-byte
    /// packets at the full delay plus jitter, with 2x headroom; never below
    /// netem's default of 1000.
    pub fn limit(&self) -> u32 {
        if let Some(l) = self.limit {
            return l;
        }
        let delay_s = (self.delay_ms + self.jitter_ms) / 1000.0;
        let bytes_per_s = self.rate_bytes_per_sec.map(|r| r as f64).unwrap_or(10e9 / 8.0);
        let packets = bytes_per_s * delay_s / 1500.0 * 2.0;
        (packets.ceil() as u64).clamp(u64::from(DEFAULT_LIMIT), 1_000_000) as u32
    }

    /// tc-like one-line rendering, for describe/dry-run and logs.
    pub fn describe(&self) -> String {
        let mut s = format!("netem limit {}", self.limit());
        if self.delay_ms > 0.0 {
            let _ = write!(s, " delay {}ms", self.delay_ms);
            if self.jitter_ms > 0.0 {
                let _ = write!(s, " {}ms", self.jitter_ms);
            }
            if self.delay_correlation > 0.0 {
                let _ = write!(s, " {}%", self.delay_correlation);
            }
        }
        match &self.loss {
            Some(Loss::Random { percent, correlation }) => {
                let _ = write!(s, " loss random {percent}%");
                if *correlation > 0.0 {
                    let _ = write!(s, " {correlation}%");
                }
            }
            Some(Loss::GilbertElliott {
                p,
                r,
                one_minus_h,
                one_minus_k,
            }) => {
                let _ = write!(s, " loss gemodel {p}% {r}% {one_minus_h}% {one_minus_k}%");
            }
            None => {}
        }
        for (name, v, c) in [
            ("duplicate", self.duplicate, self.duplicate_correlation),
            ("corrupt", self.corrupt, self.corrupt_correlation),
            ("reorder", self.reorder, self.reorder_correlation),
        ] {
            if v > 0.0 {
                let _ = write!(s, " {name} {v}%");
                if c > 0.0 {
                    let _ = write!(s, " {c}%");
                }
            }
        }
        if let Some(r) = self.rate_bytes_per_sec {
            let _ = write!(s, " rate {}bit", r.saturating_mul(8));
        }
        s
    }
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum DmFaultSpec {
    /// dm-delay: separate delays for reads, writes and flushes (ms).
    Delay {
        #[serde(default)]
        read_ms: u32,
        #[serde(default)]
        write_ms: u32,
        /// Flush delay; `None` keeps the write delay for flushes too.
        #[serde(default)]
        flush_ms: Option<u32>,
    },
    /// dm-flakey: healthy for `up_s`, then misbehaving for `down_s`, repeating.
    Flakey { up_s: u32, down_s: u32, mode: FlakeyMode },
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FlakeyMode {
    /// Writes fail with EIO while down.
    ErrorWrites,
    /// Writes are silently dropped while down.
    DropWrites,
}

impl DmFaultSpec {
    pub fn validate(&self) -> Result<(), SpecError> {
        match self {
            DmFaultSpec::Delay {
                read_ms,
                write_ms,
                flush_ms,
            } => {
                if *read_ms == 0 && *write_ms == 0 && flush_ms.unwrap_or(0) == 0 {
                    return Err(SpecError::dm("a delay of 0 ms everywhere does nothing"));
                }
                for (what, v) in [
                    ("read_ms", *read_ms),
                    ("write_ms", *write_ms),
                    ("flush_ms", flush_ms.unwrap_or(0)),
                ] {
                    if v > 60_000 {
                        return Err(SpecError::dm(format!("{what} {v} is more than a minute")));
                    }
                }
                Ok(())
            }
            DmFaultSpec::Flakey { up_s, down_s, .. } => {
                if *down_s == 0 {
                    return Err(SpecError::dm("flakey with down_s = 0 never misbehaves"));
                }
                if *up_s > 86_400 || *down_s > 86_400 {
                    return Err(SpecError::dm("flakey intervals above a day"));
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {

    /// The timeline of a 5 s down / 30 s up flap on a virtual clock: the
    /// route is in at the apply, out at 5 s, in again at 35 s, and so on.
    #[test]
    fn route_flap_timeline() {
        use std::time::Duration;
        let (down, up) = (Duration::from_secs(5), Duration::from_secs(30));
        let at = |ms: u64| route_flap_withdrawn(Duration::from_millis(ms), down, up);
        assert!(at(0) && at(4_999));
        assert!(!at(5_000) && !at(34_999));
        assert!(at(35_000) && at(39_999));
        assert!(!at(40_000));
        // Changes (each flip, the apply's add counted) in the first 2 minutes:
        // add at 0, 35, 70, 105 and remove at 5, 40, 75, 110.
        let mut changes = 1;
        let mut last = at(0);
        for ms in (0..120_000).step_by(250) {
            if at(ms) != last {
                changes += 1;
                last = at(ms);
            }
        }
        assert_eq!(changes, 8);
    }

    #[test]
    fn route_detour_specs_are_checked() {
        let detour = |prefix: &str, via: &str, src: Option<&str>| FaultSpec::RouteDetour {
            prefix: prefix.into(),
            via: via.into(),
            src: src.map(str::to_owned),
            table: None,
        };
        let ok = detour("10.206.1.2/32", "10.206.4.1", Some("10.206.2.2"));
        assert!(ok.validate().is_ok());
        assert_eq!(ok.kind().as_str(), "route_detour");
        assert_eq!(ok.target(), "10.206.1.2/32");
        assert_eq!(
            ok.key(),
            FaultKey::Blackhole {
                prefix: "10.206.1.2/32".into()
            },
            "a detour owns the prefix's route like a blackhole"
        );
        assert!(detour("2001:db8::/64", "fe80::1", None).validate().is_ok());
        for (spec, why) in [
            (
                detour("0.0.0.0/0", "10.0.0.1", None),
                "route_detour prefix: a fault on the default route",
            ),
            (
                detour("10.1.0.0/16", "gw", None),
                "route_detour via: \"gw\" is not an IP address",
            ),
            (
                detour("10.1.0.0/16", "2001:db8::1", None),
                "route_detour via: 2001:db8::1 is not of the address family",
            ),
            (
                detour("10.1.0.0/16", "10.0.0.1", Some("fe80::1")),
                "route_detour src: fe80::1 is not of the address family",
            ),
            (
                detour("10.1.0.0/16", "0.0.0.0", None),
                "route_detour via: 0.0.0.0 is not a unicast address",
            ),
            (
                detour("10.1.0.0/16", "224.0.0.1", None),
                "route_detour via: 224.0.0.1 is not a unicast address",
            ),
            (detour("10.1.0.0/33", "10.0.0.1", None), "route_detour prefix:"),
        ] {
            let e = spec.validate().expect_err(why).to_string();
            assert!(e.starts_with(why), "{e:?} should start with {why:?}");
        }
        let parsed: FaultSpec = serde_json::from_str(
            r#"{"kind":"route_detour","prefix":"10.206.1.2/32","via":"10.206.4.1","src":"10.206.2.2"}"#,
        )
        .expect("JSON");
        assert_eq!(parsed, ok);
        assert!(
            serde_json::from_str::<FaultSpec>(
                r#"{"kind":"route_detour","prefix":"10.0.0.0/8","via":"10.1.1.1","dev":"x"}"#
            )
            .is_err(),
            "unknown fields are refused"
        );
    }

    #[test]
    fn route_flap_specs_are_checked() {
        let flap = |prefix: &str, down: u32, up: u32| FaultSpec::RouteFlap {
            prefix: prefix.into(),
            table: None,
            down_seconds: down,
            up_seconds: up,
        };
        assert!(flap("10.1.0.0/16", 5, 30).validate().is_ok());
        assert_eq!(flap("10.1.0.0/16", 5, 30).kind().as_str(), "route_flap");
        assert_eq!(
            flap("10.1.0.0/16", 0, 30).validate().expect_err("0 s").to_string(),
            "route_flap: down_seconds must be 1 to 3600, got 0"
        );
        assert!(
            flap("10.1.0.0/16", 5, 3601)
                .validate()
                .expect_err("too long")
                .to_string()
                .contains("up_seconds")
        );
        assert!(
            flap("0.0.0.0/0", 5, 30)
                .validate()
                .expect_err("default")
                .to_string()
                .contains("refused")
        );
        // A flap and a blackhole of one prefix own the same route.
        let bh = FaultSpec::Blackhole {
            prefix: "10.1.0.0/16".into(),
            table: None,
        };
        assert_eq!(flap("10.1.0.0/16", 5, 30).key(), bh.key());
        let parsed: FaultSpec = serde_json::from_value(serde_json::json!(
            {"kind": "route_flap", "prefix": "10.1.0.0/16", "down_seconds": 5, "up_seconds": 30}))
        .expect("json");
        assert_eq!(parsed, flap("10.1.0.0/16", 5, 30));
    }
    use super::*;

    fn parse(json: &str) -> Result<FaultSpec, serde_json::Error> {
        serde_json::from_str::<FaultSpec>(json)
    }

    #[test]
    fn a_scoped_netem_spec_parses_and_validates() {
        let s = parse(
            r#"{"kind":"netem","interface":"eth0","direction":"ingress",
                "scope":{"dst_cidrs":["10.1.0.0/16","fd00::/64"],"dst_ports":[443],"protocol":"tcp"},
                "netem":{"delay_ms":100,"loss":{"model":"random","percent":10}}}"#,
        )
        .expect("parses");
        s.validate().expect("valid");
        assert_eq!(s.kind(), FaultKind::Netem);
        assert_eq!(s.target(), "eth0");
    }

    #[test]
    fn invalid_specs_name_the_field() {
        let cases = [
            (
                r#"{"kind":"netem","interface":"eth0","netem":{"delay_ms":-5}}"#,
                "delay_ms",
            ),
            (
                r#"{"kind":"netem","interface":"eth0","netem":{"loss":{"model":"random","percent":150}}}"#,
                "loss.percent",
            ),
            (
                r#"{"kind":"netem","interface":"eth0","scope":{"dst_cidrs":["10.0.0.0/33"]},"netem":{"delay_ms":1}}"#,
                "prefix length",
            ),
            (
                r#"{"kind":"netem","interface":"eth0","scope":{"dst_ports":[80],"protocol":"icmp"},"netem":{"delay_ms":1}}"#,
                "ICMP has no ports",
            ),
            (
                r#"{"kind":"dm","device":"a/b","dm":{"type":"delay","read_ms":5}}"#,
                "device",
            ),
            (r#"{"kind":"blackhole","prefix":"0.0.0.0/0"}"#, "default route"),
            (r#"{"kind":"netem","interface":"","netem":{"delay_ms":1}}"#, "interface"),
        ];
        for (json, want) in cases {
            let err = parse(json).expect("parses").validate().expect_err(json);
            assert!(err.0.contains(want), "{json}: {err} lacks {want:?}");
        }
        // Unknown fields are refused by the parser, not ignored.
        let e = parse(r#"{"kind":"netem","interface":"eth0","netem":{"delay_ms":1,"dealy":2}}"#).expect_err("typo");
        assert!(e.to_string().contains("dealy"), "{e}");
    }

    #[test]
    fn cidr_contains() {
        let c = Cidr::parse("10.1.0.0/16").expect("cidr");
        assert!(c.contains("10.1.200.3".parse().expect("ip")));
        assert!(!c.contains("10.2.0.1".parse().expect("ip")));
        let c6 = Cidr::parse("fd00::/64").expect("cidr");
        assert!(c6.contains("fd00::1".parse().expect("ip")));
        assert!(!c6.contains("10.1.0.1".parse().expect("ip")));
        assert_eq!(Cidr::parse("192.0.2.1").expect("host").len, 32);
        assert_eq!(Cidr::parse("0.0.0.0/0").expect("default").len, 0);
        assert_eq!(Cidr::parse("::/0").expect("default").len, 0);
    }

    #[test]
    fn prefixes_with_host_bits_are_refused_naming_the_real_prefix() {
        // The kernel would install 2001:db8::/64 and revert would look for
        // 2001:db8::1/64: refused, for blackholes and scopes alike.
        for (prefix, real) in [
            ("2001:db8::1/64", "2001:db8::/64"),
            ("10.1.2.3/16", "10.1.0.0/16"),
            ("192.0.2.1/0", "0.0.0.0/0"),
            ("fd00::1/112", "fd00::/112"),
        ] {
            let e = Cidr::parse(prefix).expect_err(prefix);
            assert!(e.0.contains("host bits") && e.0.contains(real), "{prefix}: {e}");
        }
        let e = parse(r#"{"kind":"blackhole","prefix":"2001:db8::1/64"}"#)
            .expect("parses")
            .validate()
            .expect_err("host bits");
        assert!(
            e.0.starts_with("blackhole prefix") && e.0.contains("2001:db8::/64"),
            "{e}"
        );
        let e =
            parse(r#"{"kind":"netem","interface":"eth0","scope":{"dst_cidrs":["10.0.0.1/8"]},"netem":{"delay_ms":1}}"#)
                .expect("parses")
                .validate()
                .expect_err("host bits");
        assert!(e.0.starts_with("scope.dst_cidrs") && e.0.contains("10.0.0.0/8"), "{e}");
        assert_eq!(
            Cidr::parse_masked("2001:db8::1/64").expect("masked").to_string(),
            "2001:db8::/64",
            "journals of older versions are read back as the kernel installed them"
        );
        for ok in [
            "2001:db8::/64",
            "10.1.0.0/16",
            "192.0.2.1/32",
            "fd00::1/128",
            "255.255.255.255/32",
        ] {
            let c = Cidr::parse(ok).expect(ok);
            assert_eq!(c.network(), c.addr, "{ok}");
        }
    }

    #[test]
    fn fault_kinds_are_spelled_as_on_the_wire_and_unknown_ones_refused() {
        for k in FaultKind::ALL {
            assert_eq!(serde_json::to_string(&k).expect("json"), format!("\"{k}\""));
            assert_eq!(k.as_str().parse::<FaultKind>(), Ok(k));
        }
        let e = "netem_tree".parse::<FaultKind>().expect_err("not a kind");
        assert!(e.to_string().contains("netem_tree"), "{e}");
        assert!(serde_json::from_str::<FaultKind>("\"tc\"").is_err());
        let spec = parse(r#"{"kind":"blackhole","prefix":"10.0.0.0/8"}"#).expect("parses");
        assert_eq!(spec.kind(), FaultKind::Blackhole);
        assert!(
            parse(r#"{"kind":"tc","interface":"eth0"}"#).is_err(),
            "unknown kinds are refused"
        );
    }

    #[test]
    fn fault_keys_tell_what_two_faults_would_fight_over() {
        let netem = |dir: &str, scope: &str| {
            parse(&format!(
                r#"{{"kind":"netem","interface":"eth0","direction":"{dir}","scope":{scope},"netem":{{"delay_ms":1}}}}"#
            ))
            .expect("parses")
            .key()
        };
        assert_eq!(netem("egress", "{}"), netem("egress", r#"{"dst_ports":[443]}"#));
        assert_ne!(netem("egress", "{}"), netem("ingress", "{}"));
        let bh = |json: &str| parse(json).expect("parses").key();
        assert_eq!(
            bh(r#"{"kind":"blackhole","prefix":"10.0.0.0/8"}"#),
            bh(r#"{"kind":"blackhole","prefix":"10.0.0.0/8","table":100}"#)
        );
        assert_ne!(
            bh(r#"{"kind":"dm","device":"a","dm":{"type":"delay","read_ms":5}}"#),
            bh(r#"{"kind":"blackhole","prefix":"a"}"#)
        );
    }
}
