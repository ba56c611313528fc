//! The cross-host path matrix: agents push their per-peer, per-direction
//! view of the probe mesh; the controller keeps the latest in memory (it is
//! live state, rebuilt within one report interval after a restart), answers
//! each agent with its peer list, and serves the matrix per ordered pair.
//!
//! Pair findings are raised by the agents themselves (each one sees both
//! directions of its own pairs through the peer's reports: see
//! agent/src/detect/paths.rs) and arrive through the usual transitions; the
//! matrix shows them per pair.
//!
//! Peer lists (Pingmesh-style): every mesh member probes every other one
//! while the fleet is at most the agent's `max_peers`; beyond, each agent
//! gets a subset of `max_peers` chosen by a hash of (agent, member), which is
//! stable between reports (no churn) and different per agent (every member
//! is probed by about `max_peers` others).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use graydar_common::paths::{PathMatrix, PathPair, PathReport, PathReportResponse, PeerObservation, PeerTarget};

use crate::agents::{AgentError, AgentService};
use crate::timefmt::{ms_to_rfc3339, now_ms};

/// What is wrong with a path report: the first problem, named by its JSON path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidReport(pub String);

#[derive(Debug, thiserror::Error)]
pub enum PathError {
    #[error(transparent)]
    Invalid(#[from] InvalidReport),
    #[error(transparent)]
    Agent(#[from] AgentError),
}

/// The mesh of the registered agents (live state in memory).
pub struct PathService {
    agents: Arc<AgentService>,
    mesh: Mutex<Paths>,
}

impl PathService {
    pub fn new(agents: Arc<AgentService>) -> PathService {
        PathService {
            agents,
            mesh: Mutex::new(Paths::default()),
        }
    }

    fn mesh(&self) -> std::sync::MutexGuard<'_, Paths> {
        self.mesh.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stores a registered agent's report (a heartbeat too) and answers with
    /// its peers.
    pub fn report(&self, host: &str, report: PathReport) -> Result<PathReportResponse, PathError> {
        validate(host, &report)?;
        self.agents.touch(host)?;
        Ok(self.mesh().ingest(host, report, now_ms()))
    }

    /// The matrix now.
    pub fn matrix(&self) -> PathMatrix {
        self.mesh().matrix(now_ms())
    }
}

/// Reports older than this many of the agent's intervals × 10 (at least 60 s) are stale.
const STALE_MIN_MS: i64 = 60_000;
/// Members silent this long leave the mesh.
pub const FORGET_AFTER_MS: i64 = 600_000;
/// Loss ratio from which a pair is `lossy`.
pub const LOSSY_RATIO: f64 = 0.02;

#[derive(Clone, Debug)]
struct Member {
    report: PathReport,
    at_ms: i64,
}

/// The matrix and the mesh members.
#[derive(Debug, Default)]
pub struct Paths {
    members: BTreeMap<String, Member>,
}

/// Stable 64-bit FNV-1a of the two names (the subset choice).
fn rank(agent: &str, member: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in agent.bytes().chain([0u8]).chain(member.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The address a member should be probed at: its first advertised address
/// of the family the asking agent can reach (IPv4 first).
fn probe_address(addresses: &[String], v4: bool, v6: bool) -> Option<String> {
    let parsed: Vec<std::net::IpAddr> = addresses.iter().filter_map(|a| a.parse().ok()).collect();
    parsed
        .iter()
        .find(|a| a.is_ipv4() && v4)
        .or_else(|| parsed.iter().find(|a| a.is_ipv6() && v6))
        .map(|a| a.to_string())
}

/// Most addresses one agent may advertise.
pub const MAX_ADDRESSES: usize = 256;
/// Longest peer name (the mesh's id field).
pub const MAX_NAME: usize = 64;
/// Path finding kinds an observation may list as firing.
const PATH_KINDS: [&str; 4] = [
    "one_way_loss",
    "asymmetric_connectivity",
    "asymmetric_route",
    "latency_asymmetry",
];

fn check_direction(at: &str, d: &graydar_common::paths::DirectionStats) -> Result<(), InvalidReport> {
    if let Some(r) = d.loss_ratio
        && !(r.is_finite() && (0.0..=1.0).contains(&r))
    {
        return Err(InvalidReport(format!("{at}.loss_ratio = {r}: must be in [0, 1]")));
    }
    if let Some(o) = d.owd_variation_seconds
        && !(o.is_finite() && o.abs() <= 3600.0)
    {
        return Err(InvalidReport(format!(
            "{at}.owd_variation_seconds = {o}: must be finite, within ±3600"
        )));
    }
    if let Some(h) = d.hops
        && h > 254
    {
        return Err(InvalidReport(format!("{at}.hops = {h}: must be at most 254")));
    }
    Ok(())
}

/// What is wrong with a report from `host`, field by field (the first
/// problem, named by its JSON path), or Ok. Type errors and unknown fields
/// are refused earlier by deserialization.
pub fn validate(host: &str, r: &PathReport) -> Result<(), InvalidReport> {
    if r.port == 0 {
        return Err(InvalidReport("port must not be 0".into()));
    }
    // (No address at all is allowed: such a member probes others but is not probed.)
    if r.addresses.len() > MAX_ADDRESSES {
        return Err(InvalidReport(format!(
            "addresses: at most {MAX_ADDRESSES} IP addresses, got {}",
            r.addresses.len()
        )));
    }
    for (i, a) in r.addresses.iter().enumerate() {
        if a.parse::<std::net::IpAddr>().is_err() {
            return Err(InvalidReport(format!("addresses[{i}] = {a:?}: not an IP address")));
        }
    }
    if r.max_peers == 0 {
        return Err(InvalidReport("max_peers must be at least 1".into()));
    }
    if !(r.interval_seconds.is_finite() && r.interval_seconds > 0.0 && r.interval_seconds <= 3600.0) {
        return Err(InvalidReport(format!(
            "interval_seconds = {}: must be in (0, 3600]",
            r.interval_seconds
        )));
    }
    let mut seen = std::collections::BTreeSet::new();
    for (i, p) in r.peers.iter().enumerate() {
        let at = format!("peers[{i}]");
        if p.peer.is_empty() || p.peer.len() > MAX_NAME || p.peer.chars().any(char::is_control) {
            return Err(InvalidReport(format!(
                "{at}.peer {:?}: 1..={MAX_NAME} bytes without control characters",
                p.peer
            )));
        }
        if p.peer == host {
            return Err(InvalidReport(format!("{at}.peer {:?}: an agent does not probe itself", p.peer)));
        }
        if !seen.insert(p.peer.as_str()) {
            return Err(InvalidReport(format!("{at}.peer {:?}: listed twice", p.peer)));
        }
        check_direction(&format!("{at}.outbound"), &p.outbound)?;
        check_direction(&format!("{at}.inbound"), &p.inbound)?;
        for (n, v) in [
            ("rtt_p50_seconds", p.rtt_p50_seconds),
            ("rtt_p99_seconds", p.rtt_p99_seconds),
        ] {
            if let Some(v) = v
                && !(v.is_finite() && (0.0..=3600.0).contains(&v))
            {
                return Err(InvalidReport(format!("{at}.{n} = {v}: must be in [0, 3600]")));
            }
        }
        if let Some(k) = p.firing.iter().find(|k| !PATH_KINDS.contains(&k.as_str())) {
            return Err(InvalidReport(format!(
                "{at}.firing: {k:?} is not a path finding kind ({})",
                PATH_KINDS.join(", ")
            )));
        }
    }
    Ok(())
}

impl Paths {
    /// Stores `host`'s report and answers with its peers.
    pub fn ingest(&mut self, host: &str, report: PathReport, now_ms: i64) -> PathReportResponse {
        self.members
            .retain(|_, m| now_ms.saturating_sub(m.at_ms) < FORGET_AFTER_MS);
        let max = usize::try_from(report.max_peers).unwrap_or(usize::MAX).max(1);
        let has = |f: fn(&std::net::IpAddr) -> bool| {
            report
                .addresses
                .iter()
                .filter_map(|a| a.parse::<std::net::IpAddr>().ok())
                .any(|a| f(&a))
        };
        let (v4, v6) = (has(std::net::IpAddr::is_ipv4), has(std::net::IpAddr::is_ipv6));
        self.members.insert(host.to_owned(), Member { report, at_ms: now_ms });
        let mut candidates: Vec<PeerTarget> = self
            .members
            .iter()
            .filter(|(name, _)| name.as_str() != host)
            .filter_map(|(name, m)| {
                Some(PeerTarget {
                    hostname: name.clone(),
                    address: probe_address(&m.report.addresses, v4 || !v6, v6)?,
                    port: m.report.port,
                })
            })
            .collect();
        let members = u64::try_from(candidates.len()).unwrap_or(u64::MAX);
        if candidates.len() > max {
            candidates.sort_by_key(|t| rank(host, &t.hostname));
            candidates.truncate(max);
            candidates.sort_by(|a, b| a.hostname.cmp(&b.hostname));
        }
        PathReportResponse {
            peers: candidates,
            members,
        }
    }

    fn observation(&self, src: &str, dst: &str) -> Option<(&PeerObservation, i64, f64)> {
        let m = self.members.get(src)?;
        m.report
            .peers
            .iter()
            .find(|p| p.peer == dst)
            .map(|p| (p, m.at_ms, m.report.interval_seconds))
    }

    /// Every ordered pair either side reported on, sorted by (src, dst).
    pub fn matrix(&self, now_ms: i64) -> PathMatrix {
        let mut pairs: BTreeMap<(String, String), ()> = BTreeMap::new();
        for (host, m) in &self.members {
            for p in &m.report.peers {
                pairs.insert((host.clone(), p.peer.clone()), ());
                pairs.insert((p.peer.clone(), host.clone()), ());
            }
        }
        let out = pairs
            .into_keys()
            .map(|(src, dst)| self.pair(&src, &dst, now_ms))
            .collect();
        PathMatrix { pairs: out }
    }

    fn pair(&self, src: &str, dst: &str, now_ms: i64) -> PathPair {
        // src -> dst: the source's outbound view, else the destination's inbound one.
        let fwd = self.observation(src, dst);
        let rev = self.observation(dst, src);
        let (dir, at_ms, interval) = match (fwd, rev) {
            (Some((o, at, i)), _) if o.outbound.delivered + o.outbound.lost > 0 => (Some(&o.outbound), at, i),
            (_, Some((o, at, i))) => (Some(&o.inbound), at, i),
            (Some((o, at, i)), None) => (Some(&o.outbound), at, i),
            (None, None) => (None, 0, 1.0),
        };
        let mut firing: Vec<String> = fwd
            .iter()
            .chain(rev.iter())
            .flat_map(|(o, _, _)| o.firing.iter().cloned())
            .collect();
        firing.sort();
        firing.dedup();
        let fresh_at = [fwd.map(|x| x.1), rev.map(|x| x.1)]
            .into_iter()
            .flatten()
            .max()
            .unwrap_or(at_ms);
        let stale_after = ((interval * 10_000.0) as i64).max(STALE_MIN_MS);
        let (delivered, lost) = dir.map_or((0, 0), |d| (d.delivered, d.lost));
        let loss = dir.and_then(|d| d.loss_ratio);
        let state = if dir.is_none() || now_ms.saturating_sub(fresh_at) > stale_after {
            "stale"
        } else if delivered + lost == 0 {
            "unknown"
        } else if delivered == 0 {
            "down"
        } else if loss.is_some_and(|l| l >= LOSSY_RATIO) {
            "lossy"
        } else {
            "ok"
        };
        // The source's rtt; its own hop count (from the peer), else the destination's.
        let hops = fwd
            .and_then(|(o, _, _)| o.outbound.hops)
            .or_else(|| rev.and_then(|(o, _, _)| o.inbound.hops));
        let owd = fwd
            .and_then(|(o, _, _)| o.outbound.owd_variation_seconds)
            .or_else(|| rev.and_then(|(o, _, _)| o.inbound.owd_variation_seconds));
        PathPair {
            src: src.to_owned(),
            dst: dst.to_owned(),
            loss_ratio: loss,
            delivered,
            lost,
            rtt_p50_seconds: fwd.and_then(|(o, _, _)| o.rtt_p50_seconds),
            rtt_p99_seconds: fwd.and_then(|(o, _, _)| o.rtt_p99_seconds),
            hops,
            owd_variation_seconds: owd,
            state: state.to_owned(),
            firing,
            reported_at: ms_to_rfc3339(fresh_at),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use graydar_common::paths::DirectionStats;

    fn report(addr: &str, max: u32, peers: Vec<PeerObservation>) -> PathReport {
        PathReport {
            port: 9478,
            addresses: vec![addr.into()],
            max_peers: max,
            interval_seconds: 1.0,
            peers,
        }
    }

    fn dir(delivered: u64, lost: u64, hops: u8) -> DirectionStats {
        DirectionStats {
            delivered,
            lost,
            loss_ratio: Some(lost as f64 / (delivered + lost).max(1) as f64),
            hops: Some(hops),
            owd_variation_seconds: None,
        }
    }

    fn obs(peer: &str, out: DirectionStats, inb: DirectionStats) -> PeerObservation {
        PeerObservation {
            peer: peer.into(),
            address: String::new(),
            outbound: out,
            inbound: inb,
            unknown: 0,
            rtt_p50_seconds: Some(0.001),
            rtt_p99_seconds: Some(0.002),
            firing: vec![],
        }
    }

    #[test]
    fn every_member_gets_the_others_and_large_fleets_a_stable_subset() {
        let mut p = Paths::default();
        assert!(p.ingest("a", report("10.0.0.1", 64, vec![]), 0).peers.is_empty());
        let r = p.ingest("b", report("10.0.0.2", 64, vec![]), 0);
        assert_eq!(
            r.peers,
            vec![PeerTarget {
                hostname: "a".into(),
                address: "10.0.0.1".into(),
                port: 9478
            }]
        );
        for i in 0..20 {
            p.ingest(&format!("n{i:02}"), report(&format!("10.0.1.{i}"), 64, vec![]), 0);
        }
        let first = p.ingest("a", report("10.0.0.1", 5, vec![]), 1);
        assert_eq!(first.peers.len(), 5);
        assert_eq!(first.members, 21);
        assert!(first.peers.iter().all(|t| t.hostname != "a"));
        let again = p.ingest("a", report("10.0.0.1", 5, vec![]), 2);
        assert_eq!(first.peers, again.peers, "stable between reports");
        let other = p.ingest("b", report("10.0.0.2", 5, vec![]), 3);
        assert_ne!(first.peers, other.peers, "different per agent");
        // Silent members leave.
        let late = p.ingest("a", report("10.0.0.1", 64, vec![]), FORGET_AFTER_MS + 10);
        assert!(late.peers.is_empty());
    }

    #[test]
    fn matrix_prefers_the_source_view_and_names_states() {
        let mut p = Paths::default();
        // a -> b loses 10 %, b -> a is clean; b -> a takes 2 hops.
        p.ingest(
            "a",
            report("10.0.0.1", 64, vec![obs("b", dir(90, 10, 1), dir(100, 0, 2))]),
            1000,
        );
        p.ingest(
            "b",
            report("10.0.0.2", 64, vec![obs("a", dir(100, 0, 2), dir(91, 9, 1))]),
            1000,
        );
        let m = p.matrix(2000);
        assert_eq!(m.pairs.len(), 2);
        let ab = &m.pairs[0];
        assert_eq!((ab.src.as_str(), ab.dst.as_str()), ("a", "b"));
        assert_eq!(ab.lost, 10, "the source's (reported) view wins");
        assert_eq!(ab.state, "lossy");
        assert_eq!(ab.hops, Some(1));
        let ba = &m.pairs[1];
        assert_eq!(ba.state, "ok");
        assert_eq!(ba.hops, Some(2));
        // Only the destination reported: its inbound view is used.
        let mut p = Paths::default();
        p.ingest(
            "b",
            report("10.0.0.2", 64, vec![obs("c", dir(0, 0, 1), dir(0, 30, 1))]),
            0,
        );
        let m = p.matrix(1000);
        let cb = m.pairs.iter().find(|x| x.src == "c").expect("c -> b");
        assert_eq!(cb.state, "down");
        let bc = m.pairs.iter().find(|x| x.src == "b").expect("b -> c");
        assert_eq!(bc.state, "unknown");
        assert_eq!(p.matrix(10_000_000).pairs[0].state, "stale");
    }
}
