//! `$PROCFS_ROOT/diskstats`: per-device I/O counters (parsed by the procfs
//! crate's `DiskStat::from_line`), turned into rates between two samples:
//! IOPS, throughput and await per operation, in-flight requests, utilization.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use crate::probes::ProbeError;

/// Cumulative counters of one device (units as in the kernel: sectors of
/// 512 bytes, milliseconds).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DiskCounters {
    pub major: u32,
    pub minor: u32,
    pub name: String,
    pub reads: u64,
    pub sectors_read: u64,
    pub read_ms: u64,
    pub writes: u64,
    pub sectors_written: u64,
    pub write_ms: u64,
    pub discards: u64,
    pub sectors_discarded: u64,
    pub discard_ms: u64,
    pub flushes: u64,
    pub flush_ms: u64,
    pub in_flight: u64,
    /// Milliseconds the device had I/O in flight ("io_ticks").
    pub busy_ms: u64,
}

/// Parses diskstats text. Lines that do not parse are skipped and counted
/// in the returned error count (the agent logs them), never a panic.
pub fn parse(text: &str) -> (Vec<DiskCounters>, usize) {
    let mut out = Vec::new();
    let mut bad = 0;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        match procfs::DiskStat::from_line(line) {
            Ok(d) => out.push(DiskCounters {
                major: u32::try_from(d.major).unwrap_or(0),
                minor: u32::try_from(d.minor).unwrap_or(0),
                name: d.name,
                reads: d.reads,
                sectors_read: d.sectors_read,
                read_ms: d.time_reading,
                writes: d.writes,
                sectors_written: d.sectors_written,
                write_ms: d.time_writing,
                discards: d.discards.unwrap_or(0),
                sectors_discarded: d.sectors_discarded.unwrap_or(0),
                discard_ms: d.time_discarding.unwrap_or(0),
                flushes: d.flushes.unwrap_or(0),
                flush_ms: d.time_flushing.unwrap_or(0),
                in_flight: d.in_progress,
                busy_ms: d.time_in_progress,
            }),
            Err(_) => bad += 1,
        }
    }
    (out, bad)
}

pub fn read(procfs_root: &Path) -> Result<Vec<DiskCounters>, ProbeError> {
    let path = procfs_root.join("diskstats");
    let text = std::fs::read_to_string(&path).map_err(|source| ProbeError::Io { path, source })?;
    let (disks, bad) = parse(&text);
    if disks.is_empty() && bad > 0 {
        return Err(ProbeError::Parse {
            what: "diskstats".into(),
            detail: format!("none of {bad} lines parsed"),
        });
    }
    Ok(disks)
}

/// Rates of one operation over an interval.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct OpRates {
    pub iops: f64,
    pub bytes_per_second: f64,
    /// Mean time per completed I/O (ms counters / completions); 0 without completions.
    pub await_seconds: f64,
}

/// One device between two samples.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DiskRates {
    pub name: String,
    /// read, write, discard, flush.
    pub ops: BTreeMap<&'static str, OpRates>,
    pub in_flight: u64,
    /// Share of the interval with I/O in flight (0..1).
    pub utilization: f64,
    /// All operations together.
    pub total: OpRates,
}

/// Rates from `old` to `new` over `elapsed`; `None` when a counter went
/// backwards (device re-created) or no time passed.
pub fn rates(old: &DiskCounters, new: &DiskCounters, elapsed: Duration) -> Option<DiskRates> {
    let secs = elapsed.as_secs_f64();
    if secs <= 0.0 || (old.major, old.minor) != (new.major, new.minor) {
        return None;
    }
    let d = |a: u64, b: u64| b.checked_sub(a);
    let mut ops = BTreeMap::new();
    let (mut n_all, mut ms_all, mut sec_all) = (0u64, 0u64, 0u64);
    for (op, (n0, s0, t0), (n1, s1, t1)) in [
        (
            "read",
            (old.reads, old.sectors_read, old.read_ms),
            (new.reads, new.sectors_read, new.read_ms),
        ),
        (
            "write",
            (old.writes, old.sectors_written, old.write_ms),
            (new.writes, new.sectors_written, new.write_ms),
        ),
        (
            "discard",
            (old.discards, old.sectors_discarded, old.discard_ms),
            (new.discards, new.sectors_discarded, new.discard_ms),
        ),
        ("flush", (old.flushes, 0, old.flush_ms), (new.flushes, 0, new.flush_ms)),
    ] {
        let (n, s, t) = (d(n0, n1)?, d(s0, s1)?, d(t0, t1)?);
        // Saturating: each difference fits a u64, their sum need not.
        n_all = n_all.saturating_add(n);
        ms_all = ms_all.saturating_add(t);
        sec_all = sec_all.saturating_add(s);
        ops.insert(
            op,
            OpRates {
                iops: n as f64 / secs,
                bytes_per_second: s as f64 * 512.0 / secs,
                await_seconds: if n == 0 { 0.0 } else { t as f64 / 1000.0 / n as f64 },
            },
        );
    }
    let busy = d(old.busy_ms, new.busy_ms)?;
    Some(DiskRates {
        name: new.name.clone(),
        ops,
        in_flight: new.in_flight,
        utilization: (busy as f64 / 1000.0 / secs).clamp(0.0, 1.0),
        total: OpRates {
            iops: n_all as f64 / secs,
            bytes_per_second: sec_all as f64 * 512.0 / secs,
            await_seconds: if n_all == 0 {
                0.0
            } else {
                ms_all as f64 / 1000.0 / n_all as f64
            },
        },
    })
}

/// Whether `name` is a whole device worth judging: partitions are judged
/// through their disk, and devices without a queue are skipped.
pub fn is_partition(sysfs_root: &Path, name: &str) -> bool {
    sysfs_root.join("class/block").join(name).join("partition").exists()
}

/// `queue/rotational` of a device (false when unknown).
pub fn is_rotational(sysfs_root: &Path, name: &str) -> bool {
    std::fs::read_to_string(sysfs_root.join("block").join(name).join("queue/rotational"))
        .map(|s| s.trim() == "1")
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> String {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name);
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

    #[test]
    fn parses_the_host_fixture() {
        let (disks, bad) = parse(&fixture("diskstats.host"));
        assert_eq!(bad, 0);
        let vda = disks.iter().find(|d| d.name == "vda").expect("vda");
        assert_eq!((vda.major, vda.minor), (254, 0));
        assert_eq!(vda.reads, 577748);
        assert_eq!(vda.sectors_read, 22922234);
        assert_eq!(vda.write_ms, 172076);
        assert_eq!(vda.in_flight, 0);
        assert_eq!(vda.busy_ms, 44844);
        assert_eq!(vda.discards, 40338);
        assert_eq!(vda.sectors_discarded, 16969272);
        assert_eq!(vda.flushes, 4322);
        assert_eq!(vda.flush_ms, 208);
        assert!(disks.iter().any(|d| d.name == "loop0"));
    }

    #[test]
    fn parses_old_14_field_lines_and_skips_garbage() {
        let (disks, bad) = parse(&fixture("diskstats.4.19"));
        assert_eq!(bad, 1, "one garbage line");
        let sda = disks.iter().find(|d| d.name == "sda").expect("sda");
        assert_eq!(sda.flushes, 0, "no flush fields before 5.5");
        assert_eq!(sda.writes, 2000);
        assert!(disks.iter().any(|d| d.name == "sda1"));
    }

    #[test]
    fn rates_from_deltas() {
        let a = DiskCounters {
            major: 8,
            minor: 0,
            name: "sda".into(),
            reads: 100,
            sectors_read: 800,
            read_ms: 100,
            writes: 50,
            sectors_written: 400,
            write_ms: 500,
            flushes: 10,
            flush_ms: 10,
            busy_ms: 1000,
            ..Default::default()
        };
        let mut b = a.clone();
        b.reads += 200; // 200 reads
        b.sectors_read += 1600; // 800 KiB
        b.read_ms += 400; // 2 ms each
        b.writes += 100;
        b.sectors_written += 800;
        b.write_ms += 1000; // 10 ms each
        b.flushes += 4;
        b.flush_ms += 40;
        b.busy_ms += 1500;
        b.in_flight = 3;
        let r = rates(&a, &b, Duration::from_secs(2)).expect("rates");
        assert_eq!(r.ops["read"].iops, 100.0);
        assert_eq!(r.ops["read"].bytes_per_second, 1600.0 * 512.0 / 2.0);
        assert!((r.ops["read"].await_seconds - 0.002).abs() < 1e-9);
        assert!((r.ops["write"].await_seconds - 0.010).abs() < 1e-9);
        assert!((r.ops["flush"].await_seconds - 0.010).abs() < 1e-9);
        assert_eq!(r.total.iops, 152.0);
        assert!((r.utilization - 0.75).abs() < 1e-9);
        assert_eq!(r.in_flight, 3);
        // backwards: re-created device
        assert!(rates(&b, &a, Duration::from_secs(2)).is_none());
        let mut other = b.clone();
        other.minor = 16;
        assert!(rates(&a, &other, Duration::from_secs(2)).is_none());
    }

    /// Found with the diskstats fuzz target's rates check: two samples whose
    /// read and write counts each advanced by nearly 2^64 overflowed the
    /// sum over all operations (a panic in debug builds, a wrapped, wrong
    /// total IOPS in release).
    #[test]
    fn rates_of_huge_counter_steps_saturate_instead_of_overflowing() {
        let (disks, bad) = parse(
            "8 0 sda 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0\n\
             8 0 sda 18446744073709551615 0 0 0 18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0\n",
        );
        assert_eq!((disks.len(), bad), (2, 0));
        let r = rates(&disks[0], &disks[1], Duration::from_secs(1)).expect("rates");
        assert_eq!(r.total.iops, u64::MAX as f64);
        assert!(r.total.iops.is_finite());
    }
}
