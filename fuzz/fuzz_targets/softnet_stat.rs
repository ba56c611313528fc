//! `/proc/net/softnet_stat` (agent/src/probes/drops/softnet.rs): text the
//! kernel writes, one line of hex columns per CPU.
//!
//! Asserts: parsing never panics; the parsed CPUs written back as softnet_stat
//! lines (the columns each one had) parse to the same values.
#![no_main]

use std::fmt::Write as _;

use graydar_agent::probes::drops::softnet::{self, SoftnetCpu};
use libfuzzer_sys::fuzz_target;

/// The kernel's layout: 13 columns when the backlog length (and so the CPU
/// index) is known, else as many as the optional columns present.
fn render(cpus: &[SoftnetCpu]) -> String {
    let mut out = String::new();
    for c in cpus {
        let mut cols = vec![c.processed, c.dropped, c.time_squeeze, 0, 0, 0, 0, 0, 0];
        cols.extend(c.received_rps);
        cols.extend(c.flow_limit_count);
        cols.extend(c.backlog_len);
        if c.backlog_len.is_some() {
            cols.push(u64::from(c.cpu));
        }
        let line: Vec<String> = cols.iter().map(|v| format!("{v:08x}")).collect();
        let _ = writeln!(out, "{}", line.join(" "));
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(cpus) = softnet::parse(text) else { return };
    for c in &cpus {
        // Optional columns are positional: a later one implies the earlier.
        assert!(c.backlog_len.is_none() || c.flow_limit_count.is_some(), "{c:?}");
        assert!(c.flow_limit_count.is_none() || c.received_rps.is_some(), "{c:?}");
    }
    let again = softnet::parse(&render(&cpus)).expect("rendered softnet_stat parses");
    assert_eq!(again, cpus);
});
