//! VM tier for game days: the faults the host kernel cannot apply (netem,
//! device-mapper), run as game days through the real controller, agents and
//! CLI on Debian's kernel under QEMU (`cargo xtask vm --test vm_gamedays`;
//! #[ignore]d on the host). Each run must end `passed`: graydar detected
//! what the fault causes within the deadline, nothing unexpected fired, and
//! the fault is gone from the kernel afterwards.
//!
//! The fleet is the netns tier's (tests/src/gameday_fleet.rs): C, A, B in
//! namespaces, A and B probing each other over their own veth.

use std::path::Path;
use std::time::Duration;

use graydar_common::api::FindingKind;
use graydar_common::gameday::run::{DetectionState, Outcome, RunInfo, StepState, Verdict};
use graydar_tests::blockdev::Ext4Mount;
use graydar_tests::controller::Tokens;
use graydar_tests::faults::{LinearOnLoop, qdisc_tree};
use graydar_tests::gameday_fleet::{
    Fleet, detection_runs, outcome_text, print_detection, print_result, run_watched, text, unexpected_text,
    wait_none_firing, write_spec,
};
use graydar_tests::orphans::Baseline;

fn require_vm() {
    assert_eq!(
        std::env::var("GRAYDAR_VM").as_deref(),
        Ok("1"),
        "this test runs only inside the graydar test VM (GRAYDAR_VM=1): use `cargo xtask vm`"
    );
}

/// Probes the two tests do not use are off on B (and on A for the netem
/// test): a cheaper start under emulation, and no second agent seeing the
/// same disk (eBPF tracing is host-wide, not per namespace).
const QUIET: &str = "\n[disk]\nebpf = false\n\n[incast]\nenabled = false\n";

/// The checks every passed run shares: the verdicts, the one detection with
/// its time to detect and clear, nothing unexpected, the step reverted.
fn assert_passed(run: &RunInfo, kind: &str) -> f64 {
    assert_eq!(run.outcome, Some(Outcome::Passed), "{run:#?}");
    let v = run.verdicts.clone().expect("verdicts");
    assert_eq!((v.detection, v.safety), (Verdict::Pass, Verdict::Pass), "{run:#?}");
    assert!(run.unexpected.is_empty(), "unexpected findings: {:#?}", run.unexpected);
    let d = &run.detections[0];
    assert_eq!(d.state, DetectionState::Detected, "{d:?}");
    let ttd = d.time_to_detect_ms.expect("time to detect");
    eprintln!(
        "{kind}: time to detect {ttd:.0} ms ± {:?} ms (controller upper bound {:?} ms), time to clear {:?} ms",
        d.uncertainty_ms, d.upper_bound_ms, d.time_to_clear_ms
    );
    assert!(ttd >= 0.0, "{d:?}");
    assert!(
        d.time_to_clear_ms.is_some(),
        "the finding resolved after the revert: {d:?}"
    );
    let step = run.steps.iter().find(|s| s.fault_id.is_some()).expect("a fault step");
    assert_eq!(step.state, StepState::Reverted, "{step:?}");
    ttd
}

/// netem `delay 20ms` on A's mesh veth, scoped to B's address (A → B only):
/// graydar must call it latency_asymmetry on A naming A → B (the one-way
/// delay variation says which direction is slow), within 30 s of the
/// confirmed apply, and clear it within 60 s of the revert.
#[test]
#[ignore = "VM tier: runs inside QEMU via `cargo xtask test` (or `cargo xtask vm`)"]
fn a_netem_delay_game_day_passes_with_latency_asymmetry_on_the_delayed_side() {
    require_vm();
    let mut fleet = Fleet::new("vgn", 209);
    fleet.extra_a = QUIET.into();
    fleet.extra_b = QUIET.into();
    let data = tempfile::tempdir().expect("controller data dir");
    let tokens = Tokens::random();
    let (ctl, _a, _b) = fleet.start(data.path(), &tokens, None);
    let baseline = Baseline::take(&[&fleet.a, &fleet.b]);
    // latency_asymmetry compares against an RTT baseline of 30 evaluations
    // (one a second): let it form on clean probes first.
    std::thread::sleep(Duration::from_secs(40));

    let spec = format!(
        r#"name: netem-delay
hypothesis: 20 ms added on A's way to B is latency_asymmetry on A naming A -> B within 30 s.
targets:
  a: {{agents: [{a}]}}
  b: {{agents: [{b}]}}
safety:
  max_targets: 1
  max_duration: 5m
steps:
  - id: delay
    fault:
      target: a
      spec:
        kind: netem
        interface: ab
        direction: egress
        scope: {{dst_cidrs: ["{addr}/32"]}}
        netem: {{delay_ms: 20}}
      duration: 40s
    expect:
      detect:
        - {{kind: latency_asymmetry, on: a, peer: b, within: 30s}}
      clear_within: 60s
"#,
        a = fleet.a.name(),
        b = fleet.b.name(),
        addr = fleet.b_mesh(),
    );
    let file = write_spec(data.path(), "netem-delay", &spec);
    let (run, out) = run_watched(&ctl, &tokens, &file, "netem-delay");
    assert!(out.status.success(), "{}\n{run:#?}", text(&out));
    assert_passed(&run, "latency_asymmetry");
    let tree = qdisc_tree(&fleet.a, "ab");
    assert!(!tree.contains("netem"), "netem left on ab: {tree}");
    assert_eq!(baseline.orphans(), Vec::<String>::new());
}

/// The library's disk-slow-io (runbooks/gamedays/disk-slow-io.yaml): its
/// own fsync load (10 write + fdatasync a second, in a file the agent
/// creates on the device and removes afterwards), a baseline, then
/// dm-delay 100 ms on writes and flushes of a dm device A's agent watches:
/// fsync_latency (or disk_slow) on A for that device, cleared, the table
/// linear again and the load's file gone. Scaled: a 20 s baseline, a 30 s
/// fault, a 10 s deadline (the file's 3 s is the detection table's goal,
/// judged by `cargo xtask bench --only detection`), 60 s to clear.
#[test]
#[ignore = "VM tier: runs inside QEMU via `cargo xtask test` (or `cargo xtask vm`)"]
fn the_library_disk_slow_io_game_day_passes_with_its_own_fsync_load() {
    require_vm();
    for m in ["crc32c_generic", "ext4", "dm-delay"] {
        let _ = std::process::Command::new("modprobe").arg(m).status();
    }
    let dev = LinearOnLoop::new("gd-slow", 64);
    let fs = Ext4Mount::new(&dev.dev());
    let subject = dev.dev();
    let devname = subject.trim_start_matches("/dev/").to_owned();
    let mut fleet = Fleet::new("vgd", 210);
    // A keeps the shipped [disk] settings (its eBPF fsync probes on).
    fleet.extra_a = "\n[incast]\nenabled = false\n".into();
    // B's agent judges no disk here: the device is A's in this game day.
    fleet.extra_b = format!("\n[disk]\nebpf = false\nexclude_devices = [\"{devname}\"]\n\n[incast]\nenabled = false\n");
    let data = tempfile::tempdir().expect("controller data dir");
    let tokens = Tokens::random();
    let (ctl, a, _b) = fleet.start(data.path(), &tokens, None);
    let (runs, judge) = detection_runs();
    for run_no in 1..=runs {
        if run_no > 1 {
            wait_none_firing(&ctl, &tokens, Duration::from_secs(180));
        }
        disk_slow_io_once(&ctl, &tokens, &fleet, &a, &fs, &subject, &devname, run_no, judge);
    }
    drop(fs);
    assert!(Path::new(&subject).exists());
}

#[expect(
    clippy::too_many_arguments,
    reason = "one run of the test above, its fleet and device"
)]
fn disk_slow_io_once(
    ctl: &graydar_tests::controller::ControllerProcess,
    tokens: &Tokens,
    fleet: &Fleet,
    a: &graydar_tests::agent::AgentProcess,
    fs: &Ext4Mount,
    subject: &str,
    devname: &str,
    run_no: usize,
    judge: bool,
) {
    let mut spec = graydar_tests::gameday_fleet::library_spec("disk-slow-io");
    spec["targets"]["db"]["agents"] = serde_yaml::Value::Sequence(vec![fleet.a.name().into()]);
    spec["steps"][0]["load"]["spec"]["dir"] = fs.dir.to_string_lossy().as_ref().into();
    spec["steps"][0]["load"]["duration"] = "80s".into();
    spec["steps"][1]["wait"]["duration"] = "20s".into();
    let step = &mut spec["steps"][2];
    step["fault"]["spec"]["device"] = "gd-slow".into();
    step["fault"]["duration"] = "30s".into();
    step["expect"]["detect"][0]["within"] = "10s".into();
    step["expect"]["clear_within"] = "60s".into();
    let file = write_spec(&fs.dir, "disk-slow-io", &serde_yaml::to_string(&spec).expect("YAML"));
    let (run, out) = run_watched(ctl, tokens, &file, "disk-slow-io");
    print_detection("disk-slow-io", run_no, &run);
    if judge {
        assert!(out.status.success(), "{}\n{run:#?}", text(&out));
        assert_passed(&run, "disk-slow-io (fsync_latency)");
        assert_eq!(
            run.detections[0].subject.as_deref(),
            Some(subject),
            "the delayed device: {:?}",
            run.detections[0]
        );
        assert_eq!(
            run.detections[0].kind,
            Some(FindingKind::FsyncLatency),
            "the fdatasync latency is seen first: {:?}",
            run.detections[0]
        );
    }
    // The load ran (its syncs are in A's histogram) and left nothing.
    let syncs = graydar_tests::prom::sum(
        &a.metrics(),
        "graydar_fsync_duration_seconds_count",
        &[("device", devname), ("op", "fdatasync")],
    );
    assert!(syncs >= 200.0, "the load's fdatasyncs on {devname}: {syncs}");
    let left: Vec<_> = std::fs::read_dir(&fs.dir)
        .expect("read the load's dir")
        .filter_map(Result::ok)
        .map(|e| e.file_name())
        .filter(|n| n.to_string_lossy().starts_with(".graydar-load-"))
        .collect();
    assert!(left.is_empty(), "the load's file is removed: {left:?}");
    let table = graydar_tests::blockdev::dmsetup(&["table", "gd-slow"]);
    assert!(table.contains(" linear "), "the table is linear again: {table}");
}

/// The library's nic-queue-drops (runbooks/gamedays/nic-queue-drops.yaml):
/// its own load (2,000 UDP datagrams a second from A to B's sink, over
/// their mesh veth `ab`), a baseline, then netem loss 5 % on `ab`: a drop
/// finding on A (the qdisc's drops first), cleared, nothing left on `ab`;
/// the file's optional `nic_rings` step skipped (veth has no rings) with
/// A's reason, the run passed all the same. Scaled: a 20 s baseline, a 30 s fault, a 15 s deadline (the file's 5 s
/// is the detection table's goal), 90 s to clear.
#[test]
#[ignore = "VM tier: runs inside QEMU via `cargo xtask test` (or `cargo xtask vm`)"]
fn the_library_nic_queue_drops_game_day_passes_with_its_own_traffic() {
    require_vm();
    let mut fleet = Fleet::new("vgq", 212);
    fleet.extra_a = QUIET.into();
    fleet.extra_b = QUIET.into();
    let data = tempfile::tempdir().expect("controller data dir");
    let tokens = Tokens::random();
    let (ctl, a, b) = fleet.start(data.path(), &tokens, None);
    let baseline = Baseline::take(&[&fleet.a, &fleet.b]);
    let (runs, judge) = detection_runs();
    // The file's 5 % loss; the detection bench also runs it at 1 %, the
    // smallest loss the drop detector is built to find within 5 s.
    let variants: &[(&str, u32)] = if judge {
        &[("nic-queue-drops", 5)]
    } else {
        &[("nic-queue-drops", 5), ("nic-queue-drops-1pct", 1)]
    };
    for &(name, percent) in variants {
        for run_no in 1..=runs {
            wait_none_firing(&ctl, &tokens, Duration::from_secs(180));
            let sent_before = graydar_tests::prom::sum(&a.metrics(), "graydar_load_sent_operations_total", &[]);
            let mut spec = graydar_tests::gameday_fleet::library_spec("nic-queue-drops");
            spec["name"] = name.into();
            spec["targets"]["host"]["agents"] = serde_yaml::Value::Sequence(vec![fleet.a.name().into()]);
            spec["targets"]["peer"]["agents"] = serde_yaml::Value::Sequence(vec![fleet.b.name().into()]);
            spec["steps"][0]["load"]["duration"] = "80s".into();
            spec["steps"][1]["wait"]["duration"] = "20s".into();
            let step = &mut spec["steps"][2];
            step["fault"]["spec"]["interface"] = "ab".into();
            step["fault"]["spec"]["netem"]["loss"]["percent"] = percent.into();
            step["fault"]["duration"] = "30s".into();
            step["expect"]["detect"][0]["within"] = "15s".into();
            step["expect"]["clear_within"] = "90s".into();
            // The file's optional rings step, on the same veth: veth has no
            // rings, so it is skipped with A's reason and the run goes on.
            let rings = &mut spec["steps"][3];
            assert_eq!(rings["id"].as_str(), Some("rings"), "{rings:?}");
            rings["fault"]["spec"]["interface"] = "ab".into();
            rings["fault"]["duration"] = "30s".into();
            let file = write_spec(data.path(), name, &serde_yaml::to_string(&spec).expect("YAML"));
            let (run, out) = run_watched(&ctl, &tokens, &file, name);
            print_detection(name, run_no, &run);
            if judge {
                assert!(out.status.success(), "{}\n{run:#?}", text(&out));
                assert_passed(&run, name);
                assert_eq!(
                    run.detections[0].subject.as_deref(),
                    Some("ab"),
                    "{:?}",
                    run.detections[0]
                );
                let rings = run.step("rings").expect("the rings step");
                assert_eq!(rings.state, StepState::Skipped, "{rings:?}");
                assert!(
                    rings
                        .reason
                        .as_deref()
                        .is_some_and(|r| r.contains(fleet.a.name()) && r.contains("ab") && r.contains("ring")),
                    "the agent's reason: {rings:?}"
                );
            }
            let sent = graydar_tests::prom::sum(&a.metrics(), "graydar_load_sent_operations_total", &[]) - sent_before;
            let got = graydar_tests::prom::sum(&b.metrics(), "graydar_load_received_bytes_total", &[]);
            eprintln!("{name}: A sent {sent} datagrams, B's sink received {got} bytes in all");
            assert!(
                sent >= 80.0 * 2000.0 * 0.5,
                "A's load: {sent} datagrams in 80 s at 2000/s"
            );
            let tree = qdisc_tree(&fleet.a, "ab");
            assert!(!tree.contains("netem"), "netem left on ab: {tree}");
        }
    }
    assert_eq!(baseline.orphans(), Vec::<String>::new());
}

/// The library's netem game days (runbooks/gamedays/: latency-asymmetry,
/// one-way-partition, one-way-loss), each run once by the real controller
/// on real agents, on this fleet: the sending group is A (its mesh veth
/// `ab`, scoped to B's address), the peer group B. The timings are scaled
/// to the fleet's fast probe settings (10 probes/s, 2 s connectivity and
/// 5 s latency windows, 10 s loss window); the faults, scopes, expected
/// kinds and groups are the files' own. Each must end `passed` with nothing
/// unexpected and nothing left on `ab`.
#[test]
#[ignore = "VM tier: runs inside QEMU via `cargo xtask test` (or `cargo xtask vm`)"]
fn the_library_netem_game_days_pass() {
    require_vm();
    let mut fleet = Fleet::new("vgl", 211);
    fleet.extra_a = QUIET.into();
    fleet.extra_b = QUIET.into();
    let data = tempfile::tempdir().expect("controller data dir");
    let tokens = Tokens::random();
    let (ctl, _a, _b) = fleet.start(data.path(), &tokens, None);
    let baseline = Baseline::take(&[&fleet.a, &fleet.b]);
    let (runs, judge) = detection_runs();
    // (file, baseline wait, fault duration, within, clear_within)
    let days = [
        ("latency-asymmetry", Some("40s"), "40s", "30s", "60s"),
        ("one-way-partition", None, "20s", "10s", "40s"),
        ("one-way-loss", None, "40s", "30s", "60s"),
    ];
    for (name, wait, duration, within, clear) in days {
        let mut spec = graydar_tests::gameday_fleet::library_spec(name);
        let groups: Vec<String> = spec["targets"]
            .as_mapping()
            .expect("targets")
            .keys()
            .filter_map(|k| k.as_str().map(str::to_owned))
            .collect();
        let fault_at = usize::from(wait.is_some());
        let sender = spec["steps"][fault_at]["fault"]["target"]
            .as_str()
            .expect("the fault's group")
            .to_owned();
        for g in &groups {
            let host = if *g == sender { fleet.a.name() } else { fleet.b.name() };
            spec["targets"][g.as_str()]["agents"] = serde_yaml::Value::Sequence(vec![host.into()]);
        }
        if let Some(w) = wait {
            spec["steps"][0]["wait"]["duration"] = w.into();
        }
        let step = &mut spec["steps"][fault_at];
        step["fault"]["spec"]["interface"] = "ab".into();
        step["fault"]["spec"]["scope"]["dst_cidrs"] =
            serde_yaml::Value::Sequence(vec![format!("{}/32", fleet.b_mesh()).into()]);
        step["fault"]["duration"] = duration.into();
        step["expect"]["detect"][0]["within"] = within.into();
        step["expect"]["clear_within"] = clear.into();
        // (get_mut: indexing a missing key would insert a null.)
        if let Some(t) = step["expect"]
            .get_mut("tolerate")
            .and_then(serde_yaml::Value::as_sequence_mut)
        {
            for x in t.iter_mut().filter(|x| x.get("subject").is_some()) {
                x["subject"] = "ab".into();
            }
        }
        let file = write_spec(data.path(), name, &serde_yaml::to_string(&spec).expect("YAML"));
        for run_no in 1..=runs {
            wait_none_firing(&ctl, &tokens, Duration::from_secs(180));
            let (run, out) = run_watched(&ctl, &tokens, &file, name);
            print_detection(name, run_no, &run);
            if judge {
                assert!(out.status.success(), "{name}: {}\n{run:#?}", text(&out));
                let kind = run.detections[0].kinds.join(",");
                assert_passed(&run, &format!("{name} ({kind})"));
            }
            let tree = qdisc_tree(&fleet.a, "ab");
            assert!(!tree.contains("netem"), "{name}: netem left on ab: {tree}");
        }
    }
    assert_eq!(baseline.orphans(), Vec::<String>::new());
}

/// The quiet soak: load below every threshold on the game days' topology
/// with no fault (UDP 1,000 datagrams/s and TCP 200 writes/s over two
/// connections from A to B's sink, 10 fdatasyncs/s on a dm device A's
/// agent watches with its eBPF probes, a 64 KiB burst a second from A to B,
/// whose agent classifies fan-in), run as a game day without expectations:
/// every finding on A or B during it is unexpected, and there must be none.
/// The test tier soaks 60 s; `cargo xtask bench --only detection` sets
/// `GRAYDAR_SOAK_SECONDS` (30 minutes by default) and counts instead.
#[test]
#[ignore = "VM tier: runs inside QEMU via `cargo xtask test` (or `cargo xtask vm`)"]
fn a_quiet_soak_of_load_without_faults_raises_no_finding() {
    require_vm();
    let (_, judge) = detection_runs();
    let seconds: u64 = std::env::var("GRAYDAR_SOAK_SECONDS")
        .map(|v| v.parse().unwrap_or_else(|e| panic!("GRAYDAR_SOAK_SECONDS={v:?}: {e}")))
        .unwrap_or(60);
    for m in ["crc32c_generic", "ext4"] {
        let _ = std::process::Command::new("modprobe").arg(m).status();
    }
    let dev = LinearOnLoop::new("gd-soak", 64);
    let fs = Ext4Mount::new(&dev.dev());
    let mut fleet = Fleet::new("vgs", 213);
    // A: disk probes on (the fsync load's device), no fan-in classifier;
    // B: the fan-in classifier on (the bursts' receiver), no disk probes.
    fleet.extra_a = "\n[incast]\nenabled = false\n".into();
    fleet.extra_b = "\n[disk]\nebpf = false\n".into();
    let data = tempfile::tempdir().expect("controller data dir");
    let tokens = Tokens::random();
    let (ctl, a, b) = fleet.start(data.path(), &tokens, None);
    let baseline = Baseline::take(&[&fleet.a, &fleet.b]);
    let spec = format!(
        r#"name: quiet-soak
hypothesis: Load below every threshold and no fault raise no finding for {seconds} s.
targets:
  a: {{agents: [{a}]}}
  b: {{agents: [{b}]}}
safety:
  max_targets: 1
  max_duration: {max}s
steps:
  - id: udp
    load:
      target: a
      spec: {{kind: traffic, to: b, protocol: udp, packets_per_second: 1000, size: 1200}}
      duration: {seconds}s
  - id: tcp
    load:
      target: a
      spec: {{kind: traffic, to: b, protocol: tcp, packets_per_second: 200, size: 4096, connections: 2}}
      duration: {seconds}s
  - id: fsync
    load:
      target: a
      spec: {{kind: fsync, dir: {dir:?}, per_second: 10, block_bytes: 4096}}
      duration: {seconds}s
  - id: burst
    load:
      target: a
      spec: {{kind: burst, to: b, bytes: 65536, every: 1s}}
      duration: {seconds}s
"#,
        a = fleet.a.name(),
        b = fleet.b.name(),
        max = seconds + 120,
        dir = fs.dir.to_string_lossy(),
    );
    let file = write_spec(data.path(), "quiet-soak", &spec);
    let (run, out) = run_watched(&ctl, &tokens, &file, "quiet-soak");
    let unexpected = unexpected_text(&run);
    print_result(&format!(
        "soak seconds={seconds} outcome={} findings={} kinds={unexpected}",
        outcome_text(&run),
        run.unexpected.len(),
    ));
    // The loads ran: A sent, B received, A synced on the watched device.
    let sent = graydar_tests::prom::sum(&a.metrics(), "graydar_load_sent_operations_total", &[]);
    let got = graydar_tests::prom::sum(&b.metrics(), "graydar_load_received_bytes_total", &[]);
    eprintln!(
        "quiet soak: {seconds} s, A sent {sent} operations, B's sink received {got} bytes, unexpected: {unexpected:?}"
    );
    assert!(
        sent >= seconds as f64 * 1000.0 * 0.5,
        "A's loads: {sent} operations in {seconds} s"
    );
    assert!(got > 0.0, "B's sink received nothing");
    if judge {
        assert!(out.status.success(), "{}\n{run:#?}", text(&out));
        assert_eq!(run.outcome, Some(Outcome::Passed), "{run:#?}");
        assert!(
            run.unexpected.is_empty(),
            "findings in the quiet soak: {:#?}",
            run.unexpected
        );
    }
    assert_eq!(baseline.orphans(), Vec::<String>::new());
    drop(fs);
}
