//! The mesh members (the latest report of each), their peer lists and the
//! matrix per ordered pair.

use std::collections::BTreeMap;

use graydar_common::paths::{PathMatrix, PathPair, PathReport, PathReportResponse, PeerObservation, PeerTarget};
use graydar_common::timestamp::Timestamp;

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

/// One direction of a pair as the matrix shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PairState {
    /// Nobody reported on it recently.
    Stale,
    /// Reported, but no probe was counted yet.
    Unknown,
    /// Nothing delivered.
    Down,
    /// Loss at or above [`LOSSY_RATIO`].
    Lossy,
    Ok,
}

impl PairState {
    pub fn as_str(self) -> &'static str {
        match self {
            PairState::Stale => "stale",
            PairState::Unknown => "unknown",
            PairState::Down => "down",
            PairState::Lossy => "lossy",
            PairState::Ok => "ok",
        }
    }
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
            // Added by PathService::report.
            mesh_keys: None,
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
            PairState::Stale
        } else if delivered + lost == 0 {
            PairState::Unknown
        } else if delivered == 0 {
            PairState::Down
        } else if loss.is_some_and(|l| l >= LOSSY_RATIO) {
            PairState::Lossy
        } else {
            PairState::Ok
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
            state: state.as_str().to_owned(),
            firing,
            reported_at: Timestamp::from_unix_ms(fresh_at),
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
