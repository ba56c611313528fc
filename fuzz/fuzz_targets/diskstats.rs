//! `/proc/diskstats` (agent/src/probes/disk/diskstats.rs, through the procfs
//! crate's `DiskStat::from_line`) and the rates computed between two samples.
//!
//! Asserts: parsing never panics; no more devices plus bad lines than
//! non-empty lines; the devices written back in the kernel's 18-column
//! layout parse to the same values with no bad line; rates between any two
//! parsed samples never panic and are finite and non-negative.
#![no_main]

use std::fmt::Write as _;
use std::time::Duration;

use graydar_agent::probes::disk::diskstats::{self, DiskCounters};
use libfuzzer_sys::fuzz_target;

fn render(disks: &[DiskCounters]) -> String {
    let mut out = String::new();
    for d in disks {
        let _ = writeln!(
            out,
            "{} {} {} {} 0 {} {} {} 0 {} {} {} {} {} {} 0 {} {} {} {}",
            d.major,
            d.minor,
            d.name,
            d.reads,
            d.sectors_read,
            d.read_ms,
            d.writes,
            d.sectors_written,
            d.write_ms,
            d.in_flight,
            d.busy_ms,
            0,
            d.discards,
            d.sectors_discarded,
            d.discard_ms,
            d.flushes,
            d.flush_ms,
        );
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (disks, bad) = diskstats::parse(text);
    let lines = text.lines().filter(|l| !l.trim().is_empty()).count();
    assert_eq!(disks.len() + bad, lines);
    for d in &disks {
        assert!(!d.name.is_empty() && !d.name.contains(char::is_whitespace), "{d:?}");
    }
    let (again, bad) = diskstats::parse(&render(&disks));
    assert_eq!(bad, 0, "rendered diskstats has a bad line: {disks:?}");
    assert_eq!(again, disks);
    // Every pair of samples, over a plausible interval.
    for old in &disks {
        for new in &disks {
            let Some(r) = diskstats::rates(old, new, Duration::from_millis(1500)) else {
                continue;
            };
            for v in [
                r.utilization,
                r.total.iops,
                r.total.bytes_per_second,
                r.total.await_seconds,
            ] {
                assert!(v.is_finite() && v >= 0.0, "rates {old:?} -> {new:?}: {r:?}");
            }
        }
    }
});
