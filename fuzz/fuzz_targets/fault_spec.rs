//! `graydar_common::faults::FaultSpec` from JSON (the `spec` of a fault the
//! controller's API accepts, the agent's assignments and its journal), then
//! `.validate()`.
//!
//! Asserts: neither panics; a valid spec serialized and parsed again is the
//! same spec (floats to the last bits serde_json keeps) and still valid;
//! what the agent derives from a valid spec never panics: kind, key and
//! target, the netem limit (at least 1 packet) and description, a
//! blackhole's prefix (strict CIDR, not /0) and a dm table piece.
#![no_main]

use graydar_agent::faults::dm;
use graydar_common::faults::{Cidr, FaultSpec};
use graydar_common::load;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

/// JSON equality, numbers compared as f64 within a relative 1e-12 (serde_json
/// parses floats to within an ULP or so without `float_roundtrip`).
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            if x == y {
                return true;
            }
            let (Some(x), Some(y)) = (x.as_f64(), y.as_f64()) else {
                return false;
            };
            (x - y).abs() <= 1e-12 * x.abs().max(y.abs())
        }
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same(x, y)),
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(spec) = serde_json::from_slice::<FaultSpec>(data) else {
        return;
    };
    if spec.validate().is_err() {
        return;
    }
    let text = serde_json::to_string(&spec).expect("a spec serializes");
    let again: FaultSpec = serde_json::from_str(&text).expect("a serialized spec parses");
    again
        .validate()
        .expect("a valid spec is still valid after a round trip");
    let (a, b) = (
        serde_json::to_value(&spec).expect("to value"),
        serde_json::to_value(&again).expect("to value"),
    );
    assert!(same(&a, &b), "round trip changed the spec: {a} -> {b}");
    assert_eq!(spec.kind(), again.kind());
    assert_eq!(spec.key(), again.key());
    assert!(!spec.target().is_empty());
    match &spec {
        FaultSpec::Netem { netem, .. } => {
            assert!(netem.limit() >= 1);
            assert!(netem.describe().starts_with("netem limit "));
        }
        FaultSpec::Blackhole { prefix, .. } => {
            let c = Cidr::parse(prefix).expect("a valid blackhole has a strict prefix");
            assert!(c.len > 0);
        }
        FaultSpec::RouteFlap {
            prefix,
            down_seconds,
            up_seconds,
            ..
        } => {
            let c = Cidr::parse(prefix).expect("a valid route flap has a strict prefix");
            assert!(c.len > 0);
            assert!((1..=3600).contains(down_seconds) && (1..=3600).contains(up_seconds));
        }
        FaultSpec::RouteDetour { prefix, via, src, .. } => {
            let c = Cidr::parse(prefix).expect("a valid detour has a strict prefix");
            assert!(c.len > 0);
            let via: std::net::IpAddr = via.parse().expect("a valid detour's gateway parses");
            assert_eq!(via.is_ipv4(), c.addr.is_ipv4());
            if let Some(src) = src {
                let src: std::net::IpAddr = src.parse().expect("a valid detour's source parses");
                assert_eq!(src.is_ipv4(), c.addr.is_ipv4());
            }
        }
        FaultSpec::Dm { dm: d, .. } => {
            let _ = dm::target_piece(d);
        }
        FaultSpec::NicRings { rx, tx, .. } => {
            assert!(rx.is_some() || tx.is_some());
            assert!(*rx != Some(0) && *tx != Some(0));
        }
        FaultSpec::Traffic(t) => {
            let pps = t.packets_per_second();
            assert!((1..=load::MAX_PACKETS_PER_SECOND).contains(&pps), "{pps}");
            assert!(pps.saturating_mul(8 * u64::from(t.size)) <= load::MAX_BITS_PER_SECOND);
            assert!(!t.to.is_empty() && t.to.len() <= load::MAX_DESTINATIONS);
        }
        FaultSpec::Fsync(f) => assert!(f.dir.starts_with('/') && f.per_second >= 1),
        FaultSpec::Burst(b) => {
            assert!(b.every_ms >= 1000);
            let next = b.next_after(b.start_unix_ms.saturating_add(1));
            assert!(next > b.start_unix_ms);
        }
        FaultSpec::LoadSink(k) => assert!(k.port >= 1024),
    }
});
