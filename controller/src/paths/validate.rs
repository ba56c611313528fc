//! What a path report must satisfy beyond its types (unknown fields and
//! type errors are refused by deserialization).

use graydar_common::api::FindingKind;
use graydar_common::paths::{DirectionStats, PathReport};

/// What is wrong with a path report: the first problem, named by its JSON path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidReport(pub String);

/// Most addresses one agent may advertise.
pub const MAX_ADDRESSES: usize = 256;
/// Longest peer name (the mesh's id field).
pub const MAX_NAME: usize = 64;
/// Whether an observation may list `name` as firing: a path finding kind.
fn is_path_kind(name: &str) -> bool {
    FindingKind::from_name(name).is_some_and(FindingKind::is_path)
}

fn check_direction(at: &str, d: &DirectionStats) -> Result<(), InvalidReport> {
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
            return Err(InvalidReport(format!(
                "{at}.peer {:?}: an agent does not probe itself",
                p.peer
            )));
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
        if let Some(k) = p.firing.iter().find(|k| !is_path_kind(k)) {
            return Err(InvalidReport(format!(
                "{at}.firing: {k:?} is not a path finding kind ({})",
                FindingKind::PATH.map(FindingKind::as_str).join(", ")
            )));
        }
    }
    Ok(())
}
