//! `$PROCFS_ROOT/net/softnet_stat`: per-CPU backlog drops and time squeezes.
//!
//! The `procfs` crate (0.18) has no parser for this file, so here is a small one.
//! One line per online CPU, space-separated `%08x` columns (kernel
//! `net/core/net-procfs.c`, `softnet_seq_show`), 0-based:
//!
//! | col | meaning                                        | since |
//! |-----|------------------------------------------------|-------|
//! | 0   | processed                                      |       |
//! | 1   | dropped (input backlog full, `netdev_max_backlog`) |   |
//! | 2   | time_squeeze (net_rx_action ran out of budget/time) | |
//! | 3-7 | 0 (was fastroute)                              |       |
//! | 8   | cpu_collision (always 0 on current kernels)    |       |
//! | 9   | received_rps                                   | 2.6.35 |
//! | 10  | flow_limit_count                               | 3.11  |
//! | 11  | backlog length (input + process queue)         | 5.10  |
//! | 12  | CPU index                                      | 5.10  |
//! | 13  | input_qlen, 14 process_qlen                    | 6.x   |
//!
//! Older kernels print 11 columns (up to flow_limit_count) and skip offline CPUs,
//! so without column 12 the CPU id is only the line number (exact when every CPU
//! is online). The kernel prints 32-bit values: counters wrap at 2^32, which the
//! drop detector treats like any counter going backwards (a reset).

use std::path::Path;

use crate::probes::ProbeError;

/// Counters of one CPU's softnet data.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SoftnetCpu {
    /// CPU id: column 12 when the kernel prints it, else the line number.
    pub cpu: u32,
    pub processed: u64,
    /// Packets dropped because the CPU's input backlog was full.
    pub dropped: u64,
    /// Times net_rx_action stopped with work left (budget or time exhausted).
    pub time_squeeze: u64,
    /// Column 9, when present.
    pub received_rps: Option<u64>,
    /// Column 10, when present.
    pub flow_limit_count: Option<u64>,
    /// Column 11 (packets queued in the backlog now, a gauge), when present.
    pub backlog_len: Option<u64>,
}

/// Minimum number of columns accepted (processed, dropped, time_squeeze).
const MIN_COLUMNS: usize = 3;
const COL_RECEIVED_RPS: usize = 9;
const COL_FLOW_LIMIT: usize = 10;
const COL_BACKLOG_LEN: usize = 11;
const COL_CPU: usize = 12;

/// Parses the text of `softnet_stat` (pure). Empty lines are ignored.
pub fn parse(text: &str) -> Result<Vec<SoftnetCpu>, ProbeError> {
    let mut out = Vec::new();
    for (line_no, line) in text.lines().filter(|l| !l.trim().is_empty()).enumerate() {
        let err = |detail: String| ProbeError::Parse {
            what: format!("softnet_stat line {}", line_no + 1),
            detail,
        };
        let cols = line
            .split_whitespace()
            .map(|c| u64::from_str_radix(c, 16).map_err(|e| err(format!("column {c:?}: {e}"))))
            .collect::<Result<Vec<u64>, ProbeError>>()?;
        if cols.len() < MIN_COLUMNS {
            return Err(err(format!("{} columns, expected at least {MIN_COLUMNS}", cols.len())));
        }
        let cpu = match cols.get(COL_CPU) {
            Some(&c) => u32::try_from(c).map_err(|_| err(format!("CPU index {c} too large")))?,
            None => u32::try_from(line_no).map_err(|_| err("too many lines".to_owned()))?,
        };
        out.push(SoftnetCpu {
            cpu,
            processed: cols[0],
            dropped: cols[1],
            time_squeeze: cols[2],
            received_rps: cols.get(COL_RECEIVED_RPS).copied(),
            flow_limit_count: cols.get(COL_FLOW_LIMIT).copied(),
            backlog_len: cols.get(COL_BACKLOG_LEN).copied(),
        });
    }
    Ok(out)
}

/// Reads and parses `$PROCFS_ROOT/net/softnet_stat`.
pub fn read(procfs_root: &Path) -> Result<Vec<SoftnetCpu>, ProbeError> {
    let path = procfs_root.join("net").join("softnet_stat");
    let text = std::fs::read_to_string(&path).map_err(|source| ProbeError::Io {
        path: path.clone(),
        source,
    })?;
    parse(&text)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::probes::fixture;

    fn parse_fixture(name: &str) -> Vec<SoftnetCpu> {
        let path = fixture(name);
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        parse(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()))
    }

    #[test]
    fn parses_host_capture() {
        let cpus = parse_fixture("softnet_stat.host");
        assert!(!cpus.is_empty());
        // This host's kernel (6.18) prints the CPU index: ids are 0..n in order.
        let ids: Vec<u32> = cpus.iter().map(|c| c.cpu).collect();
        let expected: Vec<u32> = (0..ids.len() as u32).collect();
        assert_eq!(ids, expected);
        assert!(cpus.iter().all(|c| c.backlog_len.is_some()));
        assert!(cpus.iter().map(|c| c.processed).sum::<u64>() > 0);
    }

    #[test]
    fn parses_older_kernel_eleven_columns_without_cpu_index() {
        let cpus = parse_fixture("softnet_stat.11col");
        assert_eq!(cpus.len(), 4);
        assert_eq!(cpus[2].cpu, 2, "line number stands in for the CPU id");
        assert_eq!(cpus[0].processed, 0x2b1f_9a03);
        assert_eq!(cpus[1].dropped, 0x0000_01a4);
        assert_eq!(cpus[3].time_squeeze, 0x0000_0c31);
        assert_eq!(cpus[0].flow_limit_count, Some(0));
        assert_eq!(cpus[0].received_rps, Some(0x12));
        assert_eq!(cpus[0].backlog_len, None);
    }

    #[test]
    fn parses_sixteen_cpu_sample_with_offline_cpus() {
        let cpus = parse_fixture("softnet_stat.16cpu");
        // 16 CPUs, of which 5 and 11 are offline: the kernel skips their lines and
        // the CPU index column keeps the real ids.
        assert_eq!(cpus.len(), 14);
        let ids: Vec<u32> = cpus.iter().map(|c| c.cpu).collect();
        assert_eq!(ids, [0, 1, 2, 3, 4, 6, 7, 8, 9, 10, 12, 13, 14, 15]);
        let cpu6 = cpus.iter().find(|c| c.cpu == 6).expect("cpu 6");
        assert_eq!(cpu6.dropped, 0x0001_3a2c);
        assert_eq!(cpu6.time_squeeze, 0x0000_4e21);
        assert_eq!(cpu6.backlog_len, Some(0x3e8));
        assert_eq!(cpus.iter().map(|c| c.dropped).sum::<u64>(), 0x0001_3a2c + 0x0000_0377);
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse("0000000g 00000000 00000000\n").is_err());
        assert!(parse("00000001 00000002\n").is_err());
        assert!(parse("").expect("empty is fine").is_empty());
    }

    #[test]
    fn reads_from_procfs_root() {
        let root = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(root.path().join("net")).expect("mkdir");
        std::fs::copy(fixture("softnet_stat.16cpu"), root.path().join("net/softnet_stat")).expect("copy fixture");
        assert_eq!(read(root.path()).expect("read").len(), 14);
        assert!(read(Path::new("/nonexistent-graydar-proc")).is_err());
    }
}
