//! Root/netns tier for game days: the real controller in one namespace,
//! two real agents (A, B) in others, each reaching the controller over its
//! own veth and each other over a third (their path mesh), the real
//! `graydar gameday` CLI. The fault is a blackhole route on A toward B's
//! mesh address (this kernel has what it needs); graydar must see it as
//! asymmetric_connectivity on A, peer B. A real Prometheus (Debian's) in
//! A's namespace scrapes A's agent with the shipped rules, for the
//! preflight's PromQL, the expected alert and a PromQL abort rule.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use graydar_common::gameday::run::{DetectionState, Outcome, RunInfo, StepState, Verdict};
use graydar_tests::agent::{AgentProcess, NS_PORT, mesh_key_file};
use graydar_tests::controller::{ControllerProcess, Tokens};
use graydar_tests::fault_e2e::wait_until;
use graydar_tests::netns::{self, NetNs, veth_pair};
use graydar_tests::orphans::Baseline;
use graydar_tests::prom;
use graydar_tests::prometheus_server::{PrometheusServer, rules_with_short_for};

/// One topology: C (controller), A and B. `net` picks the addresses
/// (10.`net`.x.y) so two topologies can exist at once.
struct Fleet {
    c: NetNs,
    a: NetNs,
    b: NetNs,
    net: u8,
}

impl Fleet {
    fn new(prefix: &str, net: u8) -> Fleet {
        let f = Fleet {
            c: NetNs::new(&format!("{prefix}c")),
            a: NetNs::new(&format!("{prefix}a")),
            b: NetNs::new(&format!("{prefix}b")),
            net,
        };
        veth_pair(
            &f.c,
            "ca",
            &format!("10.{net}.1.1/24"),
            &f.a,
            "ac",
            &format!("10.{net}.1.2/24"),
        );
        veth_pair(
            &f.c,
            "cb",
            &format!("10.{net}.2.1/24"),
            &f.b,
            "bc",
            &format!("10.{net}.2.2/24"),
        );
        veth_pair(
            &f.a,
            "ab",
            &format!("10.{net}.3.1/24"),
            &f.b,
            "ba",
            &format!("10.{net}.3.2/24"),
        );
        f
    }

    fn b_mesh(&self) -> String {
        format!("10.{}.3.2", self.net)
    }

    /// An agent reporting to the controller with the path mesh toward its peer.
    fn agent_config(&self, me: &NetNs, link: u8, peer: &NetNs, peer_addr: &str, token: &str) -> String {
        format!(
            r#"hostname = "{me}"

[controller]
url = "http://10.{net}.{link}.1:8477"
token = "{token}"
report_interval = "1s"

[paths]
key_file = {key:?}
interval = "100ms"
peers = ["{peer}={peer_addr}"]
grace = "500ms"
loss_window = "10s"
connectivity_window = "2s"
latency_window = "5s"
min_probes = 30
fire_windows = 2
of_windows = 3
resolve_windows = 5
"#,
            me = me.name(),
            net = self.net,
            peer = peer.name(),
            key = mesh_key_file(),
        )
    }

    /// The controller (asking Prometheus at `prometheus`, when given), then
    /// both agents, once registered and probing each other.
    fn start<'t>(
        &'t self,
        data: &Path,
        tokens: &Tokens,
        prometheus: Option<&str>,
    ) -> (ControllerProcess<'t>, AgentProcess<'t>, AgentProcess<'t>) {
        let ctl = match prometheus {
            Some(url) => ControllerProcess::start_with_args(Some(&self.c), data, tokens, &["--prometheus-url", url]),
            None => ControllerProcess::start(Some(&self.c), data, tokens),
        };
        let a_addr = format!("10.{}.3.1", self.net);
        let a = AgentProcess::start(
            Some(&self.a),
            &self.agent_config(&self.a, 1, &self.b, &self.b_mesh(), &tokens.agent),
        );
        let b = AgentProcess::start(
            Some(&self.b),
            &self.agent_config(&self.b, 2, &self.a, &a_addr, &tokens.agent),
        );
        // Both registered and healthy, the mesh delivering both ways.
        wait_until(Duration::from_secs(30), "both agents healthy at the controller", || {
            let v = ctl.cli_json(&tokens.viewer, &["agents"]);
            let agents = v["agents"].as_array().cloned().unwrap_or_default();
            (agents.len() == 2 && agents.iter().all(|x| x["state"] == "healthy")).then_some(())
        });
        for (ag, peer) in [(&a, self.b.name()), (&b, self.a.name())] {
            ag.wait_for(Duration::from_secs(30), "probes delivered both ways", |ag| {
                let m = ag.metrics();
                ["outbound", "inbound"].iter().all(|d| {
                    prom::sum(
                        &m,
                        "graydar_path_probes_delivered_total",
                        &[("peer", peer), ("direction", d)],
                    ) > 40.0
                })
            });
        }
        (ctl, a, b)
    }

    /// A Prometheus in A's namespace, scraping A's agent every second with
    /// the shipped rules (their `for:` shortened to 1 s), listening where
    /// the controller (in C) reaches it: `http://10.NET.1.2:9090`.
    fn prometheus(&self) -> (PrometheusServer<'_>, String) {
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - graydar.rules.yml\n\
             scrape_configs:\n  - job_name: graydar-agent\n    static_configs:\n      - targets: ['127.0.0.1:{NS_PORT}']\n"
        );
        let p = PrometheusServer::start_listening(&self.a, "0.0.0.0:9090", &config, &rules_with_short_for("1s"));
        (p, format!("http://10.{}.1.2:9090", self.net))
    }

    /// A game day: a blackhole on A toward B for `fault_for`, with `expect`
    /// and `abort` as given (YAML), and `preflight` when not empty.
    fn spec(&self, name: &str, fault_for: &str, expect: &str, abort: &str) -> String {
        self.spec_with(name, fault_for, expect, abort, "")
    }

    fn spec_with(&self, name: &str, fault_for: &str, expect: &str, abort: &str, preflight: &str) -> String {
        format!(
            r#"name: {name}
hypothesis: A dropping what it sends to B is asymmetric_connectivity on A within 10 s.
targets:
  a: {{agents: [{a}]}}
  b: {{agents: [{b}]}}
safety:
  max_targets: 1
  max_duration: 3m
{preflight}
steps:
  - id: blackhole
    fault:
      target: a
      spec: {{kind: blackhole, prefix: {addr}/32}}
      duration: {fault_for}
{expect}
{abort}
"#,
            a = self.a.name(),
            b = self.b.name(),
            addr = self.b_mesh(),
        )
    }

    fn blackholes(&self) -> String {
        String::from_utf8_lossy(&self.a.ip(["route", "show", "type", "blackhole"]).stdout).into_owned()
    }
}

const EXPECT_10S: &str = "    expect:
      detect:
        - {kind: asymmetric_connectivity, on: a, peer: b, within: 10s}
      clear_within: 40s";

fn write_spec(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(format!("{name}.yaml"));
    std::fs::write(&p, text).expect("write the spec");
    p
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn report(ctl: &ControllerProcess, tokens: &Tokens, run: &str) -> RunInfo {
    serde_json::from_value(ctl.cli_json(&tokens.viewer, &["gameday", "report", run, "--format", "json"]))
        .expect("a run document")
}

/// Waits until the controller has no firing critical finding (what a run's
/// preflight wants by default), so runs do not see each other's findings.
/// A warning may stay: graydar sees the blackhole route added and removed
/// run after run as a `route_flap`, which it is.
fn wait_quiet(ctl: &ControllerProcess, tokens: &Tokens) {
    let start = std::time::Instant::now();
    loop {
        let v = ctl.cli_json(&tokens.viewer, &["findings", "--firing", "--severity", "critical"]);
        if v["findings"].as_array().is_some_and(Vec::is_empty) {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "critical findings still firing after 90 s: {:#}",
            v["findings"]
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Runs `file` with `--watch`; its run document and the CLI's output.
fn run_watched(ctl: &ControllerProcess, tokens: &Tokens, file: &Path, name: &str) -> (RunInfo, Output) {
    let out = ctl.cli(
        &tokens.operator,
        &["gameday", "apply", "-f", file.to_str().expect("utf-8")],
    );
    assert!(out.status.success(), "apply: {}", text(&out));
    let out = ctl.cli(&tokens.operator, &["gameday", "run", name, "--watch"]);
    let list = ctl.cli_json(&tokens.viewer, &["gameday", "runs", "--gameday", name]);
    let id = list["runs"][0]["id"].as_str().expect("a run id").to_owned();
    (report(ctl, tokens, &id), out)
}

/// The issue's three runs on one fleet: a blackhole detected in time
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
