//! `graydar_common::gameday::GameDaySpec` from YAML or JSON (what
//! `graydar gameday validate -f` reads and the controller's game-day API
//! will take), then `.validate()` against the default limits.
//!
//! Asserts: neither panics (nor do the error messages); a spec that
//! validates serializes to JSON, parses back and is still valid, with the
//! same name, groups, steps and step order; its step order exists (no
//! cycle in a valid spec) and lists every step once; a schedule of a valid
//! spec gives its next runs (strictly increasing) without panicking.
#![no_main]

use graydar_common::gameday::jiff::Timestamp;
use graydar_common::gameday::{GameDaySpec, Limits};
use libfuzzer_sys::fuzz_target;

fn ids(spec: &GameDaySpec) -> Vec<String> {
    spec.step_order()
        .expect("a valid spec has a step order")
        .iter()
        .map(|s| s.id.clone())
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let spec = match GameDaySpec::parse(text) {
        Ok(s) => s,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    let limits = Limits::default();
    if let Err(errors) = spec.validate(&limits) {
        assert!(!errors.is_empty(), "an invalid spec names at least one error");
        for e in errors {
            let _ = e.to_string();
        }
        return;
    }
    let order = ids(&spec);
    assert_eq!(order.len(), spec.steps.len(), "every step once in the order");
    let json = spec.to_json();
    let again = GameDaySpec::parse(&json).expect("a valid spec's JSON parses");
    if let Err(errors) = again.validate(&limits) {
        panic!("a valid spec is invalid after a JSON round trip: {errors:?}\n{json}");
    }
    assert_eq!(again.name, spec.name);
    assert_eq!(
        again.targets.keys().collect::<Vec<_>>(),
        spec.targets.keys().collect::<Vec<_>>()
    );
    assert_eq!(ids(&again), order);
    if let Some(s) = &spec.schedule {
        let from = Timestamp::from_second(1_774_000_000).expect("an instant");
        if let Ok(runs) = s.next_runs(from, 3) {
            let mut last = from;
            for r in runs {
                assert!(r.timestamp() > last, "next runs move forward");
                last = r.timestamp();
            }
        }
    }
});
