//! Root tier for the disk signal on this host's kernel: ext4 over a loop
//! device (block_rq_* tracepoints do not fire on bio-based brd), the real
//! agent with its eBPF fsync and block probes, and the fdatasync canary.
//!
//! Every test panics with "root/netns tier needs root" when not run as root.

use std::path::Path;
use std::time::{Duration, Instant};

use graydar_tests::agent::AgentProcess;
use graydar_tests::blockdev::{Ext4Mount, LoopDev, sync_calls};
use graydar_tests::prom;

const TIMEOUT: Duration = Duration::from_secs(20);

fn count(metrics: &str, name: &str, device: &str, op: &str) -> f64 {
    prom::sum(metrics, name, &[("device", device), ("op", op)])
}

/// N fdatasync and M fsync calls on a file of an ext4 on a loop device show
/// as exactly N and M observations for that device (no more, no less: the
/// agent's canary is off and nothing else syncs that file system), and the
/// device's flushes show in the block histogram as `op="flush"`. With the
/// enter programs' BTF-typed fd-table walk (forced: the probe is down if the
/// kernel refuses it) ...
#[test]
fn fdatasync_calls_are_counted_exactly_per_device_and_flushes_show_in_block_io() {
    counted_exactly_per_device("btf");
}

/// ... and with the walk that reads every pointer with bpf_probe_read_kernel
/// (what `auto` falls back to on kernels before 5.11).
#[test]
fn fdatasync_calls_are_counted_exactly_per_device_with_the_probe_read_walk() {
    counted_exactly_per_device("probe_read");
}

fn counted_exactly_per_device(walk: &str) {
    let lo = LoopDev::new(Path::new("/dev/shm"), 64);
    let fs = Ext4Mount::new(&lo.path);
    let agent = AgentProcess::start(
        None,
        &format!("[disk]\ninterval = \"250ms\"\n\n[ebpf]\nfsync = \"{walk}\"\n"),
    );
    let m = agent.metrics();
    assert_eq!(
        prom::sum(&m, "graydar_probe_up", &[("probe", "fsync")]),
        1.0,
        "fsync probe not up with the {walk} walk"
    );
    assert_eq!(
        prom::sum(&m, "graydar_probe_up", &[("probe", "block_io")]),
        1.0,
        "block probe not up"
    );
    let flush_before = count(&m, "graydar_block_io_duration_seconds_count", &lo.name, "flush");
    assert_eq!(
        count(&m, "graydar_fsync_duration_seconds_count", &lo.name, "fdatasync"),
        0.0,
        "no fdatasync on {} yet",
        lo.name
    );

    const N: usize = 37;
    const M: usize = 11;
    let file = fs.dir.join("data");
    assert_eq!(sync_calls(&file, N, true), N, "fdatasync calls failed");
    assert_eq!(sync_calls(&file, M, false), M, "fsync calls failed");

    let (name, dev) = ("graydar_fsync_duration_seconds_count", lo.name.as_str());
    agent.wait_for(
        TIMEOUT,
        &format!("{N} fdatasync and {M} fsync observations on {dev}"),
        |a| {
            let m = a.metrics();
            count(&m, name, dev, "fdatasync") >= N as f64 && count(&m, name, dev, "fsync") >= M as f64
        },
    );
    // Settle, then the counts must be exact (two sampling intervals later).
    std::thread::sleep(Duration::from_millis(800));
    let m = agent.metrics();
    assert_eq!(count(&m, name, dev, "fdatasync"), N as f64, "fdatasync count on {dev}");
    assert_eq!(count(&m, name, dev, "fsync"), M as f64, "fsync count on {dev}");
    // The histogram is a real Prometheus histogram: +Inf bucket == count,
    // cumulative buckets non-decreasing, sum > 0.
    let buckets = prom::find(
        &m,
        "graydar_fsync_duration_seconds_bucket",
        &[("device", dev), ("op", "fdatasync")],
    );
    assert_eq!(
        buckets.len(),
        18,
        "17 bounds from 50 µs to 10 s, plus +Inf: {buckets:?}"
    );
    let inf = buckets
        .iter()
        .find(|b| b.labels.get("le").map(String::as_str) == Some("+Inf"))
        .expect("+Inf bucket");
    assert_eq!(inf.value, N as f64);
    let mut sorted: Vec<(f64, f64)> = buckets
        .iter()
        .map(|b| {
            let le = b.labels.get("le").map(String::as_str).unwrap_or("NaN");
            (le.parse::<f64>().unwrap_or(f64::INFINITY), b.value)
        })
        .collect();
    sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
    assert!(
        sorted.windows(2).all(|w| w[0].1 <= w[1].1),
        "not cumulative: {sorted:?}"
    );
    assert!(
        prom::sum(
            &m,
            "graydar_fsync_duration_seconds_sum",
            &[("device", dev), ("op", "fdatasync")]
        ) > 0.0
    );
    // No pid label anywhere on the disk metrics.
    assert!(!m.lines().any(|l| l.starts_with("graydar_fsync") && l.contains("pid=")));

    let flushes = count(&m, "graydar_block_io_duration_seconds_count", dev, "flush") - flush_before;
    assert!(
        flushes >= 1.0,
        "no flush requests on {dev} in graydar_block_io_duration_seconds after {N} fdatasync calls\n{}",
        m.lines()
            .filter(|l| l.starts_with("graydar_block_io") && l.contains("_count"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let writes = count(&m, "graydar_block_io_duration_seconds_count", dev, "write");
    assert!(writes >= 1.0, "no writes on {dev} in the block histogram");
    assert_eq!(
        prom::sum(&m, "graydar_block_io_errors_total", &[("device", dev)]),
        0.0,
        "block errors on a healthy loop device"
    );
    // diskstats gauges exist for the device.
    assert!(
        !prom::find(&m, "graydar_disk_utilization_ratio", &[("device", dev)]).is_empty(),
        "no diskstats gauges for {dev}"
    );
    // Healthy device: no disk finding.
    let f = agent.findings();
    assert!(
        !f.findings
            .iter()
            .any(|f| f.subject == format!("/dev/{dev}") && f.kind.as_str().starts_with("fsync")),
        "{f:?}"
    );
}

/// The canary runs in a configured directory, exports its duration under
/// that directory and the device it lives on, and its own fdatasyncs show in
/// the fsync histogram of that device.
#[test]
fn canary_runs_and_exports_its_duration() {
    let lo = LoopDev::new(Path::new("/dev/shm"), 64);
    let fs = Ext4Mount::new(&lo.path);
    let dir = fs.dir.display().to_string();
    let agent = AgentProcess::start(
        None,
        &format!("[disk]\ninterval = \"250ms\"\ncanary_interval = \"100ms\"\ncanary_directories = [\"{dir}\"]\n"),
    );
    let labels = [("directory", dir.as_str()), ("device", lo.name.as_str())];
    let start = Instant::now();
    // The canary's own metric updates at once; the fsync histogram is exported
    // by the disk signal's sampling loop, so wait for both.
    agent.wait_for(TIMEOUT, "5 canary observations, also in the fsync histogram", |a| {
        let m = a.metrics();
        prom::sum(&m, "graydar_canary_duration_seconds_count", &labels) >= 5.0
            && count(&m, "graydar_fsync_duration_seconds_count", &lo.name, "fdatasync") >= 5.0
    });
    let m = agent.metrics();
    let n = prom::sum(&m, "graydar_canary_duration_seconds_count", &labels);
    let sum = prom::sum(&m, "graydar_canary_duration_seconds_sum", &labels);
    assert!(
        sum > 0.0 && sum < n,
        "mean canary duration of {} s is implausible",
        sum / n
    );
    assert_eq!(
        prom::sum(&m, "graydar_canary_errors_total", &[("directory", dir.as_str())]),
        0.0
    );
    assert_eq!(prom::sum(&m, "graydar_probe_up", &[("probe", "canary")]), 1.0);
    assert!(
        count(&m, "graydar_fsync_duration_seconds_count", &lo.name, "fdatasync") >= 5.0,
        "the canary's fdatasyncs are not in the fsync histogram of {}",
        lo.name
    );
    let meta = std::fs::metadata(fs.dir.join(".graydar-canary")).expect("canary file");
    assert_eq!(meta.len(), 65536, "the canary file is preallocated and never grows");
    eprintln!("{n} canary calls in {:?}", start.elapsed());
    assert!(
        agent
            .finding(graydar_common::api::FindingKind::DiskHung, &format!("/dev/{}", lo.name))
            .is_none()
    );
}

/// A canary directory that does not exist is an error the agent reports
/// (probe down, collector error) while everything else keeps running.
#[test]
fn a_bad_canary_directory_does_not_stop_the_agent() {
    let agent = AgentProcess::start(
        None,
        "[disk]\ncanary_directories = [\"/nonexistent/graydar-canary-test\"]\n",
    );
    let m = agent.metrics();
    assert_eq!(prom::sum(&m, "graydar_probe_up", &[("probe", "canary")]), 0.0);
    assert!(prom::sum(&m, "graydar_collector_errors_total", &[("collector", "canary")]) >= 1.0);
    assert!(
        agent.log().contains("/nonexistent/graydar-canary-test"),
        "the log names the directory"
    );
}
