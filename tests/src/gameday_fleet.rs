//! A game-day fleet for the root tiers (netns on the host kernel, and the
//! VM tier for netem and dm-delay): the real controller in one namespace
//! (C), two real agents (A, B) in others, each reaching the controller
//! over its own veth and each other over a third (their path mesh), and
//! the real `graydar gameday` CLI.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use graydar_common::gameday::run::{Detection, DetectionState, Outcome, RunInfo};

use crate::agent::{AgentProcess, NS_PORT, mesh_key_file};
use crate::controller::{ControllerProcess, NS_PORT as CONTROLLER_PORT, Tokens};
use crate::fault_e2e::wait_until;
use crate::netns::{NetNs, veth_pair};
use crate::prom;
use crate::prometheus_server::{PrometheusServer, rules_with_short_for};

/// The game-day fleets' `[paths]` probe settings (after the table header
/// and any addresses): 10 probes a second, short windows, 2-of-3, so a
/// path fault shows in seconds.
pub const FAST_PROBES: &str = r#"interval = "100ms"
grace = "500ms"
loss_window = "10s"
connectivity_window = "2s"
latency_window = "5s"
min_probes = 30
fire_windows = 2
of_windows = 3
resolve_windows = 5
"#;

/// One topology: C (controller), A and B. `net` picks the addresses
/// (10.`net`.x.y) so two topologies can exist at once.
pub struct Fleet {
    pub c: NetNs,
    pub a: NetNs,
    pub b: NetNs,
    pub net: u8,
    /// Appended to A's and B's agent configs (e.g. `[disk]` settings).
    pub extra_a: String,
    pub extra_b: String,
}

impl Fleet {
    pub fn new(prefix: &str, net: u8) -> Fleet {
        let f = Fleet {
            c: NetNs::new(&format!("{prefix}c")),
            a: NetNs::new(&format!("{prefix}a")),
            b: NetNs::new(&format!("{prefix}b")),
            net,
            extra_a: String::new(),
            extra_b: String::new(),
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

    pub fn b_mesh(&self) -> String {
        format!("10.{}.3.2", self.net)
    }

    /// An agent reporting to the controller with the path mesh toward its peer.
    pub fn agent_config(&self, me: &NetNs, link: u8, peer: &NetNs, peer_addr: &str, token: &str) -> String {
        self.agent_config_on(me, link, CONTROLLER_PORT, peer, peer_addr, token)
    }

    /// [`Fleet::agent_config`] with the controller on `port` in C.
    pub fn agent_config_on(
        &self,
        me: &NetNs,
        link: u8,
        port: u16,
        peer: &NetNs,
        peer_addr: &str,
        token: &str,
    ) -> String {
        format!(
            r#"hostname = "{me}"

[controller]
url = "http://10.{net}.{link}.1:{port}"
token = "{token}"
report_interval = "1s"

[paths]
key_file = {key:?}
peers = ["{peer}={peer_addr}"]
{FAST_PROBES}{extra}"#,
            me = me.name(),
            net = self.net,
            peer = peer.name(),
            key = mesh_key_file(),
            extra = if me.name() == self.a.name() {
                &self.extra_a
            } else {
                &self.extra_b
            },
        )
    }

    /// The controller (asking Prometheus at `prometheus`, when given), then
    /// both agents, once registered and probing each other.
    pub fn start<'t>(
        &'t self,
        data: &Path,
        tokens: &Tokens,
        prometheus: Option<&str>,
    ) -> (ControllerProcess<'t>, AgentProcess<'t>, AgentProcess<'t>) {
        let ctl = match prometheus {
            Some(url) => ControllerProcess::start_with_args(Some(&self.c), data, tokens, &["--prometheus-url", url]),
            None => ControllerProcess::start(Some(&self.c), data, tokens),
        };
        let (a, b) = self.start_agents(&ctl, tokens, CONTROLLER_PORT, CONTROLLER_PORT);
        (ctl, a, b)
    }

    /// Both agents, A reporting to the controller on `a_port` in C and B to
    /// the one on `b_port`, once registered (as `ctl` sees them) and probing
    /// each other.
    pub fn start_agents<'t>(
        &'t self,
        ctl: &ControllerProcess,
        tokens: &Tokens,
        a_port: u16,
        b_port: u16,
    ) -> (AgentProcess<'t>, AgentProcess<'t>) {
        let a_addr = format!("10.{}.3.1", self.net);
        let a = AgentProcess::start(
            Some(&self.a),
            &self.agent_config_on(&self.a, 1, a_port, &self.b, &self.b_mesh(), &tokens.agent),
        );
        let b = AgentProcess::start(
            Some(&self.b),
            &self.agent_config_on(&self.b, 2, b_port, &self.a, &a_addr, &tokens.agent),
        );
        // Both registered and healthy, the mesh delivering both ways.
        wait_until(Duration::from_secs(60), "both agents healthy at the controller", || {
            let v = ctl.cli_json(&tokens.viewer, &["agents"]);
            let agents = v["agents"].as_array().cloned().unwrap_or_default();
            (agents.len() == 2 && agents.iter().all(|x| x["state"] == "healthy")).then_some(())
        });
        for (ag, peer) in [(&a, self.b.name()), (&b, self.a.name())] {
            ag.wait_for(Duration::from_secs(60), "probes delivered both ways", |ag| {
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
        (a, b)
    }

    /// A Prometheus in A's namespace, scraping A's agent every second with
    /// the shipped rules (their `for:` shortened to 1 s), listening where
    /// the controller (in C) reaches it: `http://10.NET.1.2:9090`.
    pub fn prometheus(&self) -> (PrometheusServer<'_>, String) {
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
    pub fn spec(&self, name: &str, fault_for: &str, expect: &str, abort: &str) -> String {
        self.spec_with(name, fault_for, expect, abort, "")
    }

    pub fn spec_with(&self, name: &str, fault_for: &str, expect: &str, abort: &str, preflight: &str) -> String {
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

    pub fn blackholes(&self) -> String {
        String::from_utf8_lossy(&self.a.ip(["route", "show", "type", "blackhole"]).stdout).into_owned()
    }
}

pub const EXPECT_10S: &str = "    expect:
      detect:
        - {kind: asymmetric_connectivity, on: a, peer: b, within: 10s}
      clear_within: 40s";

pub fn write_spec(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(format!("{name}.yaml"));
    std::fs::write(&p, text).expect("write the spec");
    p
}

pub fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

pub fn report(ctl: &ControllerProcess, tokens: &Tokens, run: &str) -> RunInfo {
    serde_json::from_value(ctl.cli_json(&tokens.viewer, &["gameday", "report", run, "--format", "json"]))
        .expect("a run document")
}

/// Waits until the controller has no firing critical finding (what a run's
/// preflight wants by default), so runs do not see each other's findings.
/// A warning may stay: graydar sees the blackhole route added and removed
/// run after run as a `route_flap`, which it is.
pub fn wait_quiet(ctl: &ControllerProcess, tokens: &Tokens) {
    wait_findings_gone(ctl, tokens, &["--severity", "critical"], Duration::from_secs(90));
}

/// Waits until `graydar findings --firing <filter>` lists nothing; panics
/// after `limit`.
fn wait_findings_gone(ctl: &ControllerProcess, tokens: &Tokens, filter: &[&str], limit: Duration) {
    let mut args = vec!["findings", "--firing"];
    args.extend_from_slice(filter);
    let start = std::time::Instant::now();
    loop {
        let v = ctl.cli_json(&tokens.viewer, &args);
        if v["findings"].as_array().is_some_and(Vec::is_empty) {
            return;
        }
        assert!(
            start.elapsed() < limit,
            "findings ({filter:?}) still firing after {limit:?}: {:#}",
            v["findings"]
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Runs `file` with `--watch`; its run document and the CLI's output.
pub fn run_watched(ctl: &ControllerProcess, tokens: &Tokens, file: &Path, name: &str) -> (RunInfo, Output) {
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

/// The library game day `name` (runbooks/gamedays/NAME.yaml) as YAML, for a
/// test to point at its fleet and scale.
pub fn library_spec(name: &str) -> serde_yaml::Value {
    let path = crate::deploy::workspace().join(format!("runbooks/gamedays/{name}.yaml"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// How many times a library game-day test runs its game day, and whether
/// it judges them: the test tiers run each once and assert it `passed`;
/// `cargo xtask bench --only detection` sets `GRAYDAR_DETECTION_RUNS` and
/// tabulates every run instead, misses included (xtask/src/bench_detection.rs).
pub fn detection_runs() -> (usize, bool) {
    match std::env::var("GRAYDAR_DETECTION_RUNS") {
        Ok(v) => {
            let n: usize = v
                .parse()
                .unwrap_or_else(|e| panic!("GRAYDAR_DETECTION_RUNS={v:?}: {e}"));
            assert!(n >= 1, "GRAYDAR_DETECTION_RUNS must be at least 1");
            (n, false)
        }
        Err(_) => (1, true),
    }
}

/// The `GRAYDAR_RESULT detection ...` lines of one run, one per expected
/// detection (the detection table's rows), as the bench reads them back.
pub fn detection_lines(gameday: &str, run_no: usize, run: &RunInfo) -> Vec<String> {
    let ms = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.0}"));
    let outcome = outcome_text(run);
    let unexpected = unexpected_text(run);
    run.detections
        .iter()
        .map(|d| {
            format!(
                "detection gameday={gameday} run={run_no} outcome={outcome} expected={} kind={} state={} ttd_ms={} \
                 upper_ms={} ttc_ms={} within_ms={} unexpected={} unexpected_kinds={}",
                d.kinds.join("|"),
                d.kind.map_or("-", |k| k.as_str()),
                format!("{:?}", d.state).to_lowercase(),
                ms(d.time_to_detect_ms),
                d.upper_bound_ms.map_or_else(|| "-".to_owned(), |v| v.to_string()),
                ms(d.time_to_clear_ms),
                d.within_ms,
                run.unexpected.len(),
                unexpected,
            )
        })
        .collect()
}

/// A run's outcome as one lowercase word (`none` while it has none).
pub fn outcome_text(run: &RunInfo) -> String {
    run.outcome
        .as_ref()
        .map_or_else(|| "none".to_owned(), |o| format!("{o:?}").to_lowercase())
}

/// A run's unexpected findings as `kind@host:subject,...` (no whitespace),
/// `-` for none.
pub fn unexpected_text(run: &RunInfo) -> String {
    if run.unexpected.is_empty() {
        return "-".to_owned();
    }
    let all: Vec<String> = run
        .unexpected
        .iter()
        .map(|u| {
            format!(
                "{}@{}:{}",
                u.kind.as_str(),
                u.host,
                u.subject.replace(char::is_whitespace, "_")
            )
        })
        .collect();
    all.join(",")
}

/// Writes `spec` (a library game day pointed at the fleet) to `dir`, runs it
/// with `--watch` as `name` and prints its detection lines (run `run_no`).
pub fn run_library(
    ctl: &ControllerProcess,
    tokens: &Tokens,
    dir: &Path,
    name: &str,
    spec: &serde_yaml::Value,
    run_no: usize,
) -> (RunInfo, Output) {
    let file = write_spec(dir, name, &serde_yaml::to_string(spec).expect("YAML"));
    let (run, out) = run_watched(ctl, tokens, &file, name);
    print_detection(name, run_no, &run);
    (run, out)
}

/// The checks a judged library run shares: the CLI succeeded, the run
/// `passed` with nothing unexpected and its first expectation detected;
/// that detection, for the test's own checks.
pub fn assert_library_passed<'r>(run: &'r RunInfo, out: &Output) -> &'r Detection {
    assert!(out.status.success(), "{}\n{run:#?}", text(out));
    assert_eq!(run.outcome, Some(Outcome::Passed), "{run:#?}");
    assert!(run.unexpected.is_empty(), "{:#?}", run.unexpected);
    let d = &run.detections[0];
    assert_eq!(d.state, DetectionState::Detected, "{d:?}");
    eprintln!(
        "{}: time to detect {:?} ms ± {:?} (upper bound {:?} ms), clear {:?} ms",
        run.gameday, d.time_to_detect_ms, d.uncertainty_ms, d.upper_bound_ms, d.time_to_clear_ms
    );
    d
}

/// Prints [`detection_lines`] with the marker the VM tier hands back.
pub fn print_detection(gameday: &str, run_no: usize, run: &RunInfo) {
    for l in detection_lines(gameday, run_no, run) {
        print_result(&l);
    }
}

/// Writes `GRAYDAR_RESULT <line>` to stderr directly: the test harness
/// captures `println!`/`eprintln!` of a passing test, and the bench reads
/// these lines from every run.
pub fn print_result(line: &str) {
    // A newline first: libtest's "test name ... " has none of its own, and
    // the marker must start a line.
    let _ = std::io::Write::write_all(&mut std::io::stderr(), format!("\nGRAYDAR_RESULT {line}\n").as_bytes());
}

/// Waits until no finding of any severity fires (between repeated runs, so
/// each starts from a quiet fleet); panics after `limit`.
pub fn wait_none_firing(ctl: &ControllerProcess, tokens: &Tokens, limit: Duration) {
    wait_findings_gone(ctl, tokens, &[], limit);
}
