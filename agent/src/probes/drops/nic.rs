//! Per-interface counters from sysfs: `$SYSFS_ROOT/class/net/<if>/statistics/*`
//! and `ifindex`.
//!
//! Reading (I/O: [`read_all`], [`read_interface`]) is kept apart from parsing
//! (pure: [`parse_counter`], [`NicStats::from_counters`]) so that parsing is
//! tested on fixture trees under `agent/tests/fixtures/sysfs-*`.
//!
//! # Which counters are "drops"
//!
//! The counters follow `struct rtnl_link_stats64` (include/uapi/linux/if_link.h,
//! Documentation/networking/statistics.rst), whose definitions are what we rely on:
//!
//! - `rx_dropped`: received but not processed (lack of resources, unknown protocol,
//!   core backlog drops); it "should not include packets dropped by the device due
//!   to buffer exhaustion which are counted separately in `rx_missed_errors`".
//! - `rx_missed_errors`: packets the device dropped for lack of host buffers (ring
//!   full). Disjoint from `rx_dropped` by definition; `/proc/net/dev` folds the two
//!   into its "drop" column.
//! - `rx_fifo_errors` / `rx_over_errors`: historically *event* counters that "may
//!   not correspond one-to-one with dropped packets" and that drivers use
//!   interchangeably with each other and with `rx_missed_errors` (e.g. some Intel
//!   drivers report the same ring-overflow condition in both missed and fifo).
//! - `rx_nohandler`: dropped by the stack because the device is not designated to
//!   receive (bond backup slave, no protocol handler). Expected by design, not a
//!   gray failure.
//!
//! So [`NicStats::rx_drops`] = `rx_dropped + rx_missed_errors` (the same sum as
//! `/proc/net/dev`, no double counting), and [`NicStats::tx_drops`] = `tx_dropped`
//! (tx_*_errors are errors, counted in `tx_errors`). Every individual counter is
//! still exposed, see [`NicStats::drop_counters`], and exported by the metrics with
//! the `counter` label.

use std::path::{Path, PathBuf};

use crate::probes::ProbeError;

/// Counters of one interface. Counter files missing in sysfs read as 0
/// (virtual devices lack some of them).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NicStats {
    pub name: String,
    pub ifindex: u32,
    pub rx_packets: u64,
    pub tx_packets: u64,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub rx_dropped: u64,
    pub tx_dropped: u64,
    pub rx_missed_errors: u64,
    pub rx_fifo_errors: u64,
    pub rx_over_errors: u64,
    pub rx_nohandler: u64,
    pub rx_errors: u64,
    pub tx_errors: u64,
    pub tx_fifo_errors: u64,
    pub tx_aborted_errors: u64,
    pub tx_carrier_errors: u64,
}

/// Traffic direction of an interface counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    Rx,
    Tx,
}

impl Direction {
    /// Metric label value: `rx` or `tx`.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Rx => "rx",
            Direction::Tx => "tx",
        }
    }
}

/// The `statistics/` files this probe reads (other files there are ignored).
pub const COUNTER_FILES: [&str; 15] = [
    "rx_packets",
    "tx_packets",
    "rx_bytes",
    "tx_bytes",
    "rx_dropped",
    "tx_dropped",
    "rx_missed_errors",
    "rx_fifo_errors",
    "rx_over_errors",
    "rx_nohandler",
    "rx_errors",
    "tx_errors",
    "tx_fifo_errors",
    "tx_aborted_errors",
    "tx_carrier_errors",
];

impl NicStats {
    /// Packets the interface dropped on receive: `rx_dropped + rx_missed_errors`
    /// (see the module documentation for why fifo/over/nohandler are left out).
    pub fn rx_drops(&self) -> u64 {
        self.rx_dropped.saturating_add(self.rx_missed_errors)
    }

    /// Packets dropped on their way to transmission: `tx_dropped`.
    pub fn tx_drops(&self) -> u64 {
        self.tx_dropped
    }

    /// Packets successfully received (`rx_packets`) or sent (`tx_packets`).
    pub fn packets(&self, direction: Direction) -> u64 {
        match direction {
            Direction::Rx => self.rx_packets,
            Direction::Tx => self.tx_packets,
        }
    }

    /// [`Self::rx_drops`] or [`Self::tx_drops`].
    pub fn drops(&self, direction: Direction) -> u64 {
        match direction {
            Direction::Rx => self.rx_drops(),
            Direction::Tx => self.tx_drops(),
        }
    }

    /// The individual drop-like counters of a direction with their `counter`
    /// label: rx → dropped, missed, fifo, over, nohandler; tx → dropped, fifo.
    pub fn drop_counters(&self, direction: Direction) -> Vec<(&'static str, u64)> {
        match direction {
            Direction::Rx => vec![
                ("dropped", self.rx_dropped),
                ("missed", self.rx_missed_errors),
                ("fifo", self.rx_fifo_errors),
                ("over", self.rx_over_errors),
                ("nohandler", self.rx_nohandler),
            ],
            Direction::Tx => vec![("dropped", self.tx_dropped), ("fifo", self.tx_fifo_errors)],
        }
    }

    /// Builds the stats from counter values looked up by file name (pure).
    /// `counter(name)` returns `None` for a missing file, which reads as 0.
    pub fn from_counters(name: &str, ifindex: u32, counter: impl Fn(&str) -> Option<u64>) -> NicStats {
        let c = |file: &str| counter(file).unwrap_or(0);
        NicStats {
            name: name.to_owned(),
            ifindex,
            rx_packets: c("rx_packets"),
            tx_packets: c("tx_packets"),
            rx_bytes: c("rx_bytes"),
            tx_bytes: c("tx_bytes"),
            rx_dropped: c("rx_dropped"),
            tx_dropped: c("tx_dropped"),
            rx_missed_errors: c("rx_missed_errors"),
            rx_fifo_errors: c("rx_fifo_errors"),
            rx_over_errors: c("rx_over_errors"),
            rx_nohandler: c("rx_nohandler"),
            rx_errors: c("rx_errors"),
            tx_errors: c("tx_errors"),
            tx_fifo_errors: c("tx_fifo_errors"),
            tx_aborted_errors: c("tx_aborted_errors"),
            tx_carrier_errors: c("tx_carrier_errors"),
        }
    }
}

/// Parses the content of one sysfs counter file (a decimal number and a newline).
pub fn parse_counter(what: &str, text: &str) -> Result<u64, ProbeError> {
    text.trim().parse::<u64>().map_err(|e| ProbeError::Parse {
        what: what.to_owned(),
        detail: format!("{e} in {:?}", truncate(text)),
    })
}

/// Parses the content of an `ifindex` file.
pub fn parse_ifindex(what: &str, text: &str) -> Result<u32, ProbeError> {
    text.trim().parse::<u32>().map_err(|e| ProbeError::Parse {
        what: what.to_owned(),
        detail: format!("{e} in {:?}", truncate(text)),
    })
}

fn truncate(text: &str) -> &str {
    match text.char_indices().nth(40) {
        Some((i, _)) => &text[..i],
        None => text,
    }
}

fn net_dir(sysfs_root: &Path) -> PathBuf {
    sysfs_root.join("class").join("net")
}

fn io_err(path: &Path, source: std::io::Error) -> ProbeError {
    ProbeError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Reads a file; `Ok(None)` when it does not exist.
fn read_optional(path: &Path) -> Result<Option<String>, ProbeError> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(path, e)),
    }
}

/// Reads the counters of one interface. An interface that does not exist
/// (or vanishes while being read) is an [`ProbeError::Io`] with kind `NotFound`.
pub fn read_interface(sysfs_root: &Path, name: &str) -> Result<NicStats, ProbeError> {
    let dir = net_dir(sysfs_root).join(name);
    let ifindex_path = dir.join("ifindex");
    let ifindex_text = std::fs::read_to_string(&ifindex_path).map_err(|e| io_err(&ifindex_path, e))?;
    let ifindex = parse_ifindex(&ifindex_path.display().to_string(), &ifindex_text)?;

    let stats_dir = dir.join("statistics");
    let mut values: Vec<(&str, u64)> = Vec::with_capacity(COUNTER_FILES.len());
    for file in COUNTER_FILES {
        let path = stats_dir.join(file);
        if let Some(text) = read_optional(&path)? {
            values.push((file, parse_counter(&path.display().to_string(), &text)?));
        }
    }
    // Missing counter files read as 0, but if the whole statistics directory is
    // gone now, the interface was unregistered while we read it.
    if !stats_dir.is_dir() {
        return Err(io_err(
            &stats_dir,
            std::io::Error::new(std::io::ErrorKind::NotFound, "interface vanished"),
        ));
    }
    Ok(NicStats::from_counters(name, ifindex, |file| {
        values.iter().find(|(f, _)| *f == file).map(|(_, v)| *v)
    }))
}

/// Reads every interface under `$SYSFS_ROOT/class/net`, sorted by name.
/// Non-directory entries (e.g. `bonding_masters`) are ignored; an interface that
/// vanishes between listing and reading is skipped, not an error.
pub fn read_all(sysfs_root: &Path) -> Result<Vec<NicStats>, ProbeError> {
    let dir = net_dir(sysfs_root);
    let entries = std::fs::read_dir(&dir).map_err(|e| io_err(&dir, e))?;
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| io_err(&dir, e))?;
        // `is_dir` follows the class/net/<if> -> ../../devices/... symlinks.
        if entry.path().is_dir() {
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    names.sort();
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        match read_interface(sysfs_root, &name) {
            Ok(stats) => out.push(stats),
            Err(ProbeError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound || !dir.join(&name).exists() => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::probes::fixture;

    fn find<'a>(all: &'a [NicStats], name: &str) -> &'a NicStats {
        all.iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("interface {name} not in {all:?}"))
    }

    #[test]
    fn parse_counter_accepts_sysfs_format_and_rejects_garbage() {
        assert_eq!(parse_counter("x", "12345\n").expect("decimal"), 12345);
        assert_eq!(parse_counter("x", "18446744073709551615\n").expect("u64 max"), u64::MAX);
        assert!(parse_counter("x", "").is_err());
        assert!(parse_counter("x", "-1\n").is_err());
        assert!(parse_counter("x", "0x10\n").is_err());
    }

    #[test]
    fn reads_multiqueue_fixture_with_missing_files_and_non_interface_entries() {
        let all = read_all(&fixture("sysfs-multiqueue")).expect("read fixture tree");
        let names: Vec<&str> = all.iter().map(|s| s.name.as_str()).collect();
        // bonding_masters is a file, not an interface.
        assert_eq!(names, ["bond0", "eth0", "eth1", "lo", "veth7a1c"]);

        let eth0 = find(&all, "eth0");
        assert_eq!(eth0.ifindex, 2);
        assert_eq!(eth0.rx_packets, 98_231_773_418);
        assert_eq!(eth0.rx_dropped, 1_204);
        assert_eq!(eth0.rx_missed_errors, 88_391);
        assert_eq!(eth0.rx_fifo_errors, 88_391);
        assert_eq!(eth0.rx_drops(), 1_204 + 88_391, "fifo is not added to missed");
        assert_eq!(eth0.tx_drops(), 17);
        assert_eq!(
            eth0.drop_counters(Direction::Rx),
            [
                ("dropped", 1_204),
                ("missed", 88_391),
                ("fifo", 88_391),
                ("over", 0),
                ("nohandler", 0)
            ]
        );

        let eth1 = find(&all, "eth1");
        assert_eq!(eth1.rx_over_errors, 3_117);
        assert_eq!(eth1.rx_drops(), eth1.rx_dropped + eth1.rx_missed_errors);

        // bond0 drops frames of its backup slave by design: nohandler, not a drop.
        let bond0 = find(&all, "bond0");
        assert_eq!(bond0.rx_nohandler, 5_512);
        assert_eq!(bond0.rx_drops(), bond0.rx_dropped);

        // The virtual device lacks most counter files: they read as 0.
        let veth = find(&all, "veth7a1c");
        assert_eq!(veth.ifindex, 14);
        assert_eq!(veth.rx_packets, 4_410);
        assert_eq!(veth.tx_dropped, 9);
        assert_eq!(veth.rx_missed_errors, 0);
        assert_eq!(veth.rx_nohandler, 0);
    }

    #[test]
    fn reads_host_capture() {
        let all = read_all(&fixture("sysfs-host")).expect("read host capture");
        let lo = find(&all, "lo");
        assert_eq!(lo.ifindex, 1);
        let eth0 = find(&all, "eth0");
        assert!(eth0.rx_packets > 0 && eth0.tx_packets > 0);
        let mut ifindexes: Vec<u32> = all.iter().map(|s| s.ifindex).collect();
        ifindexes.dedup();
        assert_eq!(ifindexes.len(), all.len());
    }

    #[test]
    fn read_interface_of_missing_interface_is_not_found() {
        let err = read_interface(&fixture("sysfs-multiqueue"), "nope0").expect_err("missing");
        match err {
            ProbeError::Io { source, .. } => {
                assert_eq!(source.kind(), std::io::ErrorKind::NotFound)
            }
            other => panic!("unexpected error {other}"),
        }
    }

    #[test]
    fn vanished_interface_is_skipped() {
        let root = tempfile::tempdir().expect("tempdir");
        let net = root.path().join("class").join("net");
        let good = net.join("eth0").join("statistics");
        std::fs::create_dir_all(&good).expect("mkdir");
        std::fs::write(net.join("eth0").join("ifindex"), "2\n").expect("write");
        std::fs::write(good.join("rx_packets"), "10\n").expect("write");
        // Listed by readdir, but already unregistered: no ifindex, no statistics.
        std::fs::create_dir_all(net.join("veth0")).expect("mkdir");
        let all = read_all(root.path()).expect("read");
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].rx_packets, 10);
    }

    #[test]
    fn garbage_counter_is_an_error() {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = root.path().join("class/net/eth0");
        std::fs::create_dir_all(dir.join("statistics")).expect("mkdir");
        std::fs::write(dir.join("ifindex"), "2\n").expect("write");
        std::fs::write(dir.join("statistics/rx_dropped"), "lots\n").expect("write");
        assert!(matches!(read_all(root.path()), Err(ProbeError::Parse { .. })));
    }

    #[test]
    fn missing_sysfs_root_is_an_error() {
        assert!(read_all(Path::new("/nonexistent-graydar-sysfs")).is_err());
    }

    #[test]
    #[ignore = "reads this machine's /sys"]
    fn reads_real_sysfs() {
        let all = read_all(Path::new("/sys")).expect("read /sys");
        assert!(all.iter().any(|s| s.name == "lo"));
    }
}
