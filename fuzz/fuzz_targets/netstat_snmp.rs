//! `/proc/net/netstat` and `/proc/net/snmp` (agent/src/probes/incast/netstat.rs):
//! header / value line pairs the kernel writes.
//!
//! Asserts: parsing never panics; every counter fits an i64 (negative values
//! are skipped); each counter written back as its own `Prefix: Name` /
//! `Prefix: value` pair parses to the same map; the receive-drop sum never
//! panics and is at least each of its parts.
#![no_main]

use std::fmt::Write as _;

use graydar_agent::probes::incast::netstat;
use libfuzzer_sys::fuzz_target;

/// Splits `"<prefix>.<name>"` back into a prefix without ':' and a name
/// without whitespace (any such split renders the same key).
fn split(key: &str) -> (&str, &str) {
    key.match_indices('.')
        .map(|(i, _)| (&key[..i], &key[i + 1..]))
        .find(|(p, n)| !p.contains(':') && !n.is_empty() && !n.contains(char::is_whitespace))
        .unwrap_or_else(|| panic!("key {key:?} has no prefix and name"))
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(counters) = netstat::parse(text) else { return };
    let mut out = String::new();
    for (key, v) in &counters {
        assert!(i64::try_from(*v).is_ok(), "{key} = {v} is not an i64");
        let (prefix, name) = split(key);
        let _ = writeln!(out, "{prefix}: {name}\n{prefix}: {v}");
    }
    let again = netstat::parse(&out).expect("rendered counters parse");
    assert_eq!(again, counters);
    let sum = netstat::receive_drops(&counters);
    for k in netstat::RECEIVE_DROP_COUNTERS {
        assert!(sum >= counters.get(*k).copied().unwrap_or(0));
    }
});
