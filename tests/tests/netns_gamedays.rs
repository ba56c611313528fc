//! Root/netns tier for game days: the real controller in one namespace,
//! two real agents (A, B) in others, each reaching the controller over its
//! own veth and each other over a third (their path mesh), the real
//! `graydar gameday` CLI. The fault is a blackhole route on A toward B's
//! mesh address (this kernel has what it needs); graydar must see it as
//! asymmetric_connectivity on A, peer B. A real Prometheus (Debian's) in
//! A's namespace scrapes A's agent with the shipped rules, for the
//! preflight's PromQL, the expected alert and a PromQL abort rule.

use std::time::Duration;

use graydar_common::gameday::run::{DetectionState, Outcome, RunInfo, StepState, Verdict};
use graydar_tests::controller::{ControllerProcess, Tokens};
use graydar_tests::fault_e2e::wait_until;
use graydar_tests::gameday_fleet::{
    EXPECT_10S, Fleet, assert_library_passed, detection_runs, report, run_library, run_watched, text, wait_none_firing,
    wait_quiet, write_spec,
};
use graydar_tests::netns;
use graydar_tests::orphans::Baseline;

/// The three runs on one fleet: a blackhole detected in time
/// (`passed`, with its time to detect), the same with an impossible
/// deadline (`detection_gap`, exit status 3), and a run whose finding is
/// expected by nothing and trips the abort rule (`aborted`, nothing left
/// applied).
#[test]
fn a_blackhole_game_day_passes_a_tight_deadline_is_a_detection_gap_and_an_abort_rule_aborts() {
    netns::require_root();
    let fleet = Fleet::new("gd", 207);
    let data = tempfile::tempdir().expect("controller data dir");
    let tokens = Tokens::random();
    let (_prom, prom_url) = fleet.prometheus();
    let (ctl, _a, _b) = fleet.start(data.path(), &tokens, Some(&prom_url));
    let baseline = Baseline::take(&[&fleet.a, &fleet.b]);

    // A dry run names the route the agent would add, and adds nothing.
    // The preflight asks Prometheus (A's agent is scraped), the alert is
    // expected from Prometheus' ALERTS.
    let expect =
        format!("{EXPECT_10S}\n      alerts:\n        - {{alertname: GraydarAsymmetricConnectivity, within: 20s}}");
    let preflight = "preflight:\n  promql:\n    - {expr: 'up{job=\"graydar-agent\"}', op: ge, value: 1}";
    let file = write_spec(data.path(), "bh", &fleet.spec_with("bh", "25s", &expect, "", preflight));
    let out = ctl.cli(
        &tokens.operator,
        &["gameday", "apply", "-f", file.to_str().expect("utf-8")],
    );
    assert!(out.status.success(), "{}", text(&out));
    let dry: RunInfo = serde_json::from_value(ctl.cli_json(&tokens.operator, &["gameday", "run", "bh", "--dry-run"]))
        .expect("dry run");
    let ops = &dry.step("blackhole").expect("step").per_agent[fleet.a.name()].operations;
    assert!(ops.iter().any(|o| o.contains(&fleet.b_mesh())), "{dry:#?}");
    assert!(!fleet.blackholes().contains(&fleet.b_mesh()));
    let check = dry
        .preflight
        .iter()
        .find(|c| c.check == "promql[0]")
        .expect("the promql check");
    assert!(check.ok, "{check:?}");

    // 1. Passed, with a measured time to detect.
    let (run, out) = run_watched(&ctl, &tokens, &file, "bh");
    let watched = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}\n{run:#?}", text(&out));
    assert_eq!(run.outcome, Some(Outcome::Passed), "{run:#?}");
    let d = &run.detections[0];
    assert_eq!(d.state, DetectionState::Detected, "{d:?}");
    let ttd = d.time_to_detect_ms.expect("time to detect");
    eprintln!(
        "time to detect: {ttd:.0} ms ± {:?} (upper bound {:?} ms), clear {:?} ms",
        d.uncertainty_ms, d.upper_bound_ms, d.time_to_clear_ms
    );
    assert!((0.0..=10_000.0).contains(&ttd), "{d:?}");
    assert!(
        d.uncertainty_ms.is_some(),
        "both clocks' offsets known: {:?}",
        run.clocks
    );
    assert!(
        watched.contains("asymmetric_connectivity detected") && watched.contains("passed"),
        "--watch shows the detection and the verdict: {watched}"
    );
    let v = run.verdicts.clone().expect("verdicts");
    assert_eq!((v.detection, v.safety), (Verdict::Pass, Verdict::Pass));
    let alert = &run.alerts[0];
    assert_eq!(alert.state, DetectionState::Detected, "{alert:?}");
    eprintln!("alert firing after {:?} ms", alert.fired_after_ms);
    assert_eq!(run.step("blackhole").map(|s| s.state), Some(StepState::Reverted));
    assert!(!fleet.blackholes().contains(&fleet.b_mesh()), "{}", fleet.blackholes());
    let md = ctl.cli(&tokens.viewer, &["gameday", "report", &run.id]);
    let md = String::from_utf8_lossy(&md.stdout);
    assert!(
        md.contains("## Detection matrix") && md.contains("| detected |"),
        "{md}"
    );

    // 2. The same fault with a deadline nothing can meet: detection_gap, exit 3.
    wait_quiet(&ctl, &tokens);
    let tight = "    expect:
      detect:
        - {kind: asymmetric_connectivity, on: a, peer: b, within: 1ms}
      clear_within: 40s";
    let file = write_spec(data.path(), "tight", &fleet.spec("tight", "25s", tight, ""));
    let (run, out) = run_watched(&ctl, &tokens, &file, "tight");
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert_eq!(run.outcome, Some(Outcome::DetectionGap), "{run:#?}");
    assert_eq!(run.detections[0].state, DetectionState::Late, "{:?}", run.detections);
    assert!(!fleet.blackholes().contains(&fleet.b_mesh()));

    // 3. No expectation: the finding the fault causes trips the abort rule.
    wait_quiet(&ctl, &tokens);
    let abort = "abort:
  findings: {kinds: [asymmetric_connectivity], min_severity: warning}";
    let file = write_spec(data.path(), "trip", &fleet.spec("trip", "2m", "", abort));
    let (run, out) = run_watched(&ctl, &tokens, &file, "trip");
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert_eq!(run.outcome, Some(Outcome::Aborted), "{run:#?}");
    assert!(
        run.reason
            .as_deref()
            .is_some_and(|r| r.contains("abort.findings") && r.contains("asymmetric_connectivity")),
        "{:?}",
        run.reason
    );
    assert!(!run.unexpected.is_empty(), "the finding is listed as unexpected");
    assert_eq!(run.step("blackhole").map(|s| s.state), Some(StepState::Reverted));
    assert!(!fleet.blackholes().contains(&fleet.b_mesh()), "{}", fleet.blackholes());

    // 4. A PromQL abort rule: the expected finding does not abort (it is
    // expected), the alert it raises in Prometheus does.
    wait_quiet(&ctl, &tokens);
    let abort = "abort:
  promql:
    - {expr: 'ALERTS{alertname=\"GraydarAsymmetricConnectivity\",alertstate=\"firing\"}', for: 2s}";
    let file = write_spec(
        data.path(),
        "promabort",
        &fleet.spec("promabort", "2m", EXPECT_10S, abort),
    );
    let (run, out) = run_watched(&ctl, &tokens, &file, "promabort");
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert_eq!(run.outcome, Some(Outcome::Aborted), "{run:#?}");
    assert!(
        run.reason.as_deref().is_some_and(|r| r.starts_with("abort.promql[0]")),
        "{:?}",
        run.reason
    );
    assert_eq!(
        run.detections[0].state,
        DetectionState::Detected,
        "{:?}",
        run.detections
    );
    assert!(!fleet.blackholes().contains(&fleet.b_mesh()), "{}", fleet.blackholes());
    assert_eq!(baseline.orphans(), Vec::<String>::new());
}

/// `kill -9` of the controller while a run's fault is active: after the
/// restart the run is `aborted: controller restarted` and the route is
/// gone from A (the fault was ended at the restart).
#[test]
fn a_controller_killed_mid_run_ends_it_aborted_and_leaves_nothing_applied() {
    netns::require_root();
    let fleet = Fleet::new("gk", 208);
    let data = tempfile::tempdir().expect("controller data dir");
    let tokens = Tokens::random();
    let (ctl, _a, _b) = fleet.start(data.path(), &tokens, None);
    let baseline = Baseline::take(&[&fleet.a, &fleet.b]);
    let file = write_spec(data.path(), "killed", &fleet.spec("killed", "2m", EXPECT_10S, ""));
    let out = ctl.cli(
        &tokens.operator,
        &["gameday", "apply", "-f", file.to_str().expect("utf-8")],
    );
    assert!(out.status.success(), "{}", text(&out));
    let started = ctl.cli_json(&tokens.operator, &["gameday", "run", "killed"]);
    let id = started["id"].as_str().expect("run id").to_owned();
    wait_until(Duration::from_secs(30), "the blackhole applied on A", || {
        fleet.blackholes().contains(&fleet.b_mesh()).then_some(())
    });
    ctl.kill9();

    let ctl = ControllerProcess::start(Some(&fleet.c), data.path(), &tokens);
    let run = report(&ctl, &tokens, &id);
    assert_eq!(run.outcome, Some(Outcome::Aborted), "{run:#?}");
    assert_eq!(run.reason.as_deref(), Some("controller restarted"));
    let step = run.step("blackhole").expect("step");
    assert!(
        step.reason
            .as_deref()
            .is_some_and(|r| r.contains("controller restarted")),
        "{step:?}"
    );
    wait_until(Duration::from_secs(30), "the blackhole reverted on A", || {
        (!fleet.blackholes().contains(&fleet.b_mesh())).then_some(())
    });
    assert_eq!(baseline.orphans(), Vec::<String>::new());
}

/// The library's `bgp-route-flap` (runbooks/gamedays/), run by the real
/// controller on real agents with its timings scaled down (1 s withdrawn,
/// 2 s announced, A's `[routes] resolve_after` 5 s): route_flap on A by
/// the 5th change, cleared after the revert, nothing unexpected, no route
/// left.
#[test]
fn the_library_route_flap_game_day_passes_on_real_agents() {
    netns::require_root();
    let mut fleet = Fleet::new("gf", 209);
    // A 10 s window (the flap's 5th change comes at 6 s): repeated runs
    // (the detection bench) do not add up to a flap of their own.
    fleet.extra_a = "\n[routes]\nresolve_after = \"5s\"\nwindow = \"10s\"\n".into();
    let data = tempfile::tempdir().expect("controller data dir");
    let tokens = Tokens::random();
    let (ctl, _a, _b) = fleet.start(data.path(), &tokens, None);
    let baseline = Baseline::take(&[&fleet.a, &fleet.b]);
    let (runs, judge) = detection_runs();
    for run_no in 1..=runs {
        wait_none_firing(&ctl, &tokens, Duration::from_secs(60));
        if run_no > 1 {
            // The last run's changes out of A's route window.
            std::thread::sleep(Duration::from_secs(11));
        }
        let mut spec = graydar_tests::gameday_fleet::library_spec("bgp-route-flap");
        spec["targets"]["edge"]["agents"] = serde_yaml::Value::Sequence(vec![fleet.a.name().into()]);
        spec["steps"][0]["wait"]["duration"] = "1s".into();
        let flap = &mut spec["steps"][1];
        flap["fault"]["spec"]["down_seconds"] = 1.into();
        flap["fault"]["spec"]["up_seconds"] = 2.into();
        flap["fault"]["duration"] = "15s".into();
        flap["expect"]["detect"][0]["within"] = "12s".into();
        flap["expect"]["clear_within"] = "30s".into();
        let (run, out) = run_library(&ctl, &tokens, data.path(), "bgp-route-flap", &spec, run_no);
        if judge {
            let d = assert_library_passed(&run, &out);
            // The 5th change comes 6 s after the apply (0, 1, 3, 4, 6 s).
            assert!(d.time_to_detect_ms.is_some_and(|t| t >= 5_000.0), "{d:?}");
        }
        let routes = String::from_utf8_lossy(&fleet.a.ip(["route", "show", "type", "blackhole"]).stdout).into_owned();
        assert!(!routes.contains("198.51.100.0/24"), "{routes}");
    }
    assert_eq!(baseline.orphans(), Vec::<String>::new());
}
