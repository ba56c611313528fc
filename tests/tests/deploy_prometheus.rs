//! deploy/prometheus and deploy/grafana, checked by the tools their users run:
//! `promtool check rules|config|metrics`, `promtool test rules`, and a real
//! Prometheus server (Debian's package) that scrapes a real agent in a network
//! namespace where packets are dropped, loads the rules from deploy/prometheus
//! and must report the NIC-drop alert as firing in its own /api/v1/alerts.
//!
//! The `real_*` and `promtool_check_metrics_*` tests need root (namespaces,
//! eBPF). Prometheus runs inside the test's namespace (`ip netns exec`) on its
//! loopback, so nothing listens in the root namespace.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use graydar_common::api::FindingKind;
use graydar_tests::agent::{AgentProcess, NS_PORT};
use graydar_tests::deploy::{defined_metric_names, metric_names_in, tool, tool_ok, workspace};
use graydar_tests::netns::{self, NetNs, veth_pair};
use graydar_tests::prometheus_server::{PrometheusServer, rules_with_short_for};
use serde_yaml::Value;

/// Runbooks that alerts point at but that do not exist yet. The check fails
/// when one of them appears (remove it here) and when an alert points at a
/// missing runbook that is not listed: the list only ever shrinks.
const PENDING_RUNBOOKS: &[&str] = &[];

/// Metrics the rules or the dashboard use that no component exports yet.
/// Same rule: the list only ever shrinks.
const PENDING_METRICS: &[&str] = &[];

fn prom_dir() -> PathBuf {
    workspace().join("deploy/prometheus")
}

fn rules_path() -> PathBuf {
    prom_dir().join("graydar.rules.yml")
}

fn yaml(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{} is not YAML: {e}", path.display()))
}

fn s(v: &Value) -> String {
    v.as_str().map(str::to_owned).unwrap_or_default()
}

/// Every rule of the rules file (recording and alerting).
fn rules() -> Vec<Value> {
    let doc = yaml(&rules_path());
    doc["groups"]
        .as_sequence()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_sequence().cloned().unwrap_or_default())
        .collect()
}

fn alerts() -> Vec<Value> {
    rules().into_iter().filter(|r| r.get("alert").is_some()).collect()
}

// ---------------------------------------------------------------------------
// Static checks (no root).

fn os(s: &str) -> &OsStr {
    OsStr::new(s)
}

#[test]
fn promtool_checks_the_rules_and_runs_their_unit_tests() {
    let dir = prom_dir();
    let out = tool_ok("promtool", [os("check"), os("rules"), rules_path().as_os_str()], None);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("SUCCESS"), "promtool check rules: {text}");
    // Relative rule_files in the test file: run from its directory.
    let out = Command::new("promtool")
        .current_dir(&dir)
        .args(["test", "rules", "graydar.rules.test.yml"])
        .output()
        .expect("run promtool (Debian package prometheus; `cargo xtask setup`)");
    assert!(
        out.status.success(),
        "promtool test rules failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn promtool_checks_the_example_scrape_config() {
    let example = prom_dir().join("prometheus.example.yml");
    tool_ok(
        "promtool",
        [os("check"), os("config"), os("--syntax-only"), example.as_os_str()],
        None,
    );
    // The full check also reads rule files and credentials files: point the
    // token at a real file, keep everything else as shipped.
    let dir = tempfile::tempdir().expect("temp dir");
    let token = dir.path().join("token");
    std::fs::write(&token, "x").expect("write token");
    std::fs::copy(rules_path(), dir.path().join("graydar.rules.yml")).expect("copy rules");
    let text = std::fs::read_to_string(&example).expect("read example");
    assert!(text.contains("/etc/prometheus/graydar-viewer-token"));
    let text = text.replace("/etc/prometheus/graydar-viewer-token", &token.to_string_lossy());
    let config = dir.path().join("prometheus.yml");
    std::fs::write(&config, text).expect("write config");
    let out = tool_ok("promtool", [os("check"), os("config"), config.as_os_str()], None);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("SUCCESS: 19 rules found") || text.contains("rules found"),
        "{text}"
    );
}

#[test]
fn every_finding_kind_has_one_alert_pointing_at_its_runbook() {
    let alerts = alerts();
    let runbooks = workspace().join("runbooks");
    let mut prefixes = BTreeSet::new();
    let mut pointed = BTreeSet::new();
    for kind in FindingKind::ALL {
        let selector = format!("kind=\"{}\"", kind.as_str());
        let matching: Vec<&Value> = alerts.iter().filter(|a| s(&a["expr"]).contains(&selector)).collect();
        assert_eq!(
            matching.len(),
            1,
            "exactly one alert should select {selector}, found {}",
            matching.len()
        );
        let alert = matching[0];
        let name = s(&alert["alert"]);
        assert!(
            s(&alert["expr"]).contains("graydar_finding_firing"),
            "{name} should read graydar_finding_firing"
        );
        let ann = &alert["annotations"];
        for key in ["summary", "description"] {
            assert!(
                s(&ann[key]).contains("$labels.subject"),
                "{name}: {key} should name the subject"
            );
        }
        let url = s(&ann["runbook_url"]);
        let file = format!("{}.md", kind.runbook());
        assert!(
            url.ends_with(&format!("/{file}")),
            "{name}: runbook_url {url} should end with /{file}"
        );
        prefixes.insert(url.trim_end_matches(&file).to_owned());
        pointed.insert(file);
    }
    for alert in &alerts {
        let name = s(&alert["alert"]);
        let url = s(&alert["annotations"]["runbook_url"]);
        let file = url.rsplit('/').next().unwrap_or_default().to_owned();
        assert!(!file.is_empty(), "{name} has no runbook_url");
        prefixes.insert(url.trim_end_matches(&file).to_owned());
        pointed.insert(file);
        assert!(
            alert["labels"]["severity"].is_string() || s(&alert["expr"]).contains("graydar_finding_firing"),
            "{name}: no severity (neither a label nor from the finding)"
        );
    }
    // One configurable base for all of them (the external label).
    assert_eq!(prefixes.len(), 1, "runbook_url bases differ: {prefixes:?}");
    let prefix = prefixes.into_iter().next().unwrap_or_default();
    assert!(
        prefix.contains("$externalLabels.graydar_runbook_base_url"),
        "the runbook base should come from the external label: {prefix}"
    );
    for file in &pointed {
        let exists = runbooks.join(file).is_file();
        let pending = PENDING_RUNBOOKS.contains(&file.as_str());
        assert!(
            exists || pending,
            "an alert points at runbooks/{file}, which does not exist and is not in PENDING_RUNBOOKS"
        );
        assert!(
            !(exists && pending),
            "runbooks/{file} exists now: remove it from PENDING_RUNBOOKS in {}",
            file!()
        );
    }
    for p in PENDING_RUNBOOKS {
        assert!(
            pointed.contains(*p),
            "PENDING_RUNBOOKS lists {p}, which no alert points at"
        );
    }
}

/// Each alert has promtool cases where it fires and where it does not (before
/// `for:`, for another kind, after it resolved).
#[test]
fn every_alert_has_firing_and_quiet_unit_tests() {
    let tests = yaml(&prom_dir().join("graydar.rules.test.yml"));
    let mut firing: BTreeMap<String, usize> = BTreeMap::new();
    let mut quiet: BTreeMap<String, usize> = BTreeMap::new();
    for t in tests["tests"].as_sequence().expect("tests") {
        for case in t["alert_rule_test"]
            .as_sequence()
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            let name = s(&case["alertname"]);
            let n = case["exp_alerts"].as_sequence().map_or(0, Vec::len);
            *(if n > 0 { &mut firing } else { &mut quiet }).entry(name).or_default() += 1;
        }
    }
    for alert in alerts() {
        let name = s(&alert["alert"]);
        assert!(
            firing.get(&name).copied().unwrap_or(0) >= 1,
            "no promtool case where {name} fires"
        );
        assert!(
            quiet.get(&name).copied().unwrap_or(0) >= 2,
            "{name} needs promtool cases where it does not fire and where it resolved"
        );
    }
}

/// Every metric the rules and the dashboard use is one the agent or the
/// controller defines (agent/src/metrics.rs, controller/src/metrics.rs).
#[test]
fn rules_and_dashboard_use_only_defined_metrics() {
    let defined = defined_metric_names();
    let mut used = BTreeSet::new();
    for r in rules() {
        used.extend(metric_names_in(&s(&r["expr"])));
    }
    let dashboard = dashboard_exprs();
    assert!(dashboard.len() >= 8, "the dashboard has too few queries: {dashboard:?}");
    for e in &dashboard {
        used.extend(metric_names_in(e));
    }
    for name in &used {
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suf| name.strip_suffix(suf))
            .filter(|b| defined.iter().any(|d| d == b))
            .unwrap_or(name);
        let is_defined = defined.iter().any(|d| d == base);
        let pending = PENDING_METRICS.contains(&base);
        assert!(
            is_defined || pending,
            "{name} is used but no component defines it (nor PENDING_METRICS)"
        );
        assert!(
            !(is_defined && pending),
            "{base} is defined now: remove it from PENDING_METRICS in {}",
            file!()
        );
    }
}

#[test]
fn dashboard_has_the_panels_the_issue_asks_for() {
    let path = workspace().join("deploy/grafana/graydar.json");
    let text = std::fs::read_to_string(&path).expect("read dashboard");
    let d: serde_json::Value = serde_json::from_str(&text).expect("dashboard is JSON");
    assert_eq!(d["uid"], "graydar-overview");
    let panels = d["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    for p in panels {
        assert!(
            ids.insert(p["id"].as_u64().expect("panel id")),
            "duplicate panel id {}",
            p["id"]
        );
    }
    let titles: Vec<String> = panels
        .iter()
        .filter_map(|p| p["title"].as_str().map(str::to_owned))
        .collect();
    for want in [
        "Active findings by kind",
        "Drop ratio by interface",
        "fsync latency",
        "Block I/O latency",
        "Path matrix",
        "Active faults",
        "Game-day steps in effect",
        "Game-day runs by outcome",
        "Time to detect by finding kind",
        "Safety lever",
    ] {
        assert!(
            titles.iter().any(|t| t.contains(want)),
            "no panel {want:?} in {titles:?}"
        );
    }
    // Game-day steps as annotations on every panel, from the controller's step metric.
    let annotations = d["annotations"]["list"].as_array().expect("annotations");
    assert!(
        annotations.iter().any(|a| a["enable"] == true
            && a["datasource"]["uid"] == "${datasource}"
            && a["expr"]
                .as_str()
                .is_some_and(|e| e.contains("graydar_controller_gameday_step_active"))),
        "no enabled game-day step annotation: {annotations:?}"
    );
    let heatmaps = panels.iter().filter(|p| p["type"] == "heatmap").count();
    assert_eq!(heatmaps, 2, "fsync and block latency heatmaps");
    for p in panels.iter().filter(|p| p["type"] != "row") {
        assert_eq!(
            p["datasource"]["uid"], "${datasource}",
            "panel {} should use the datasource variable",
            p["title"]
        );
    }
}

/// PromQL of every dashboard panel and annotation.
fn dashboard_exprs() -> Vec<String> {
    let path = workspace().join("deploy/grafana/graydar.json");
    let d: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("read dashboard")).expect("dashboard JSON");
    d["panels"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .chain(d["annotations"]["list"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["expr"].as_str().map(str::to_owned))
        .collect()
}

// ---------------------------------------------------------------------------
// Against a real agent (root).

/// Fast detection windows (as in netns_drops.rs), so findings fire in seconds.
fn fast_config(ns: &NetNs) -> String {
    format!(
        "hostname = \"{}\"\n[drops]\ninterval = \"1s\"\nshort_window = \"3s\"\nlong_window = \"10s\"\n\
         warning_ratio = 0.01\nmin_drop_rate = 5.0\nfire_windows = 2\nof_windows = 3\nresolve_windows = 3\n",
        ns.name()
    )
}

#[test]
fn promtool_check_metrics_on_a_real_scrape_reports_no_problem() {
    netns::require_root();
    let ns = NetNs::new("pcm");
    let agent = AgentProcess::start(Some(&ns), &fast_config(&ns));
    let body = agent.metrics();
    assert!(body.contains("graydar_build_info"), "not an agent scrape: {body}");
    let out = tool("promtool", ["check", "metrics"], Some(body.as_bytes()));
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && report.trim().is_empty(),
        "promtool check metrics ({}): {report}",
        out.status
    );
}

fn alert_state(p: &PrometheusServer, name: &str, subject: &str) -> Option<serde_json::Value> {
    let v = p.api("/api/v1/alerts");
    v["data"]["alerts"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .find(|a| a["labels"]["alertname"] == name && a["labels"]["subject"] == subject)
        .cloned()
}

/// The receiver's interface has a smaller MTU than the sender's: frames that
/// fit the sender's are dropped on arrival and counted in the receiver's
/// `rx_dropped` (a NIC drop, subject `vb/rx`). Prometheus scrapes the agent
/// in the receiver's namespace and evaluates deploy/prometheus's rules.
#[test]
fn real_prometheus_fires_the_nic_drop_alert_from_the_shipped_rules() {
    netns::require_root();
    let a = NetNs::new("pra");
    let b = NetNs::new("prb");
    veth_pair(&a, "va", "10.203.80.1/24", &b, "vb", "10.203.80.2/24");
    b.ip(["link", "set", "vb", "mtu", "1000"]);
    let agent = AgentProcess::start(Some(&b), &fast_config(&b));

    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n  external_labels:\n    \
         graydar_runbook_base_url: https://runbooks.test/graydar\n\
         rule_files:\n  - graydar.rules.yml\n\
         scrape_configs:\n  - job_name: graydar-agent\n    static_configs:\n      - targets: ['127.0.0.1:{NS_PORT}']\n    \
         relabel_configs:\n      - target_label: node\n        replacement: {}\n",
        b.name()
    );
    let prom = PrometheusServer::start(&b, &config, &rules_with_short_for("2s"));

    // Every rule group loaded from the shipped file.
    let groups = prom.api("/api/v1/rules");
    let names: BTreeSet<String> = groups["data"]["groups"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter_map(|g| g["name"].as_str().map(str::to_owned))
        .collect();
    for want in ["graydar-recording", "graydar-findings", "graydar-agent"] {
        assert!(names.contains(want), "group {want} not loaded: {names:?}");
    }

    // ~1200-byte datagrams: they fit va's MTU (1500) and not vb's (1000).
    let sock = a.run_in(|| UdpSocket::bind("0.0.0.0:0").expect("bind sender"));
    let dst: SocketAddr = "10.203.80.2:9000".parse().expect("dst");
    let payload = vec![0x5a_u8; 1200];
    let start = Instant::now();
    let deadline = Duration::from_secs(50);
    let mut fired = None;
    while start.elapsed() < deadline {
        for _ in 0..50 {
            let _ = sock.send_to(&payload, dst);
        }
        std::thread::sleep(Duration::from_millis(100));
        if let Some(alert) = alert_state(&prom, "GraydarNicDrops", "vb/rx")
            && alert["state"] == "firing"
        {
            fired = Some(alert);
            break;
        }
    }
    let Some(alert) = fired else {
        let finding = agent.finding(FindingKind::NicDrops, "vb/rx");
        let alerts = prom.api("/api/v1/alerts");
        panic!(
            "GraydarNicDrops on vb/rx not firing after {deadline:?}\nagent finding: {finding:?}\nPrometheus alerts: {alerts}"
        );
    };
    eprintln!("firing after {:?}: {alert}", start.elapsed());
    assert_eq!(alert["labels"]["kind"], "nic_drops");
    assert_eq!(alert["labels"]["job"], "graydar-agent");
    assert!(
        alert["labels"]["severity"] == "warning" || alert["labels"]["severity"] == "critical",
        "{alert}"
    );
    assert_eq!(
        alert["annotations"]["runbook_url"],
        "https://runbooks.test/graydar/nic-drops.md"
    );
    let summary = alert["annotations"]["summary"].as_str().unwrap_or_default();
    assert!(
        summary.contains("vb/rx") && summary.contains(b.name()),
        "summary: {summary}"
    );

    // The recording rules and every dashboard query evaluate on real data.
    prom.api("/api/v1/query?query=interface_direction%3Agraydar_nic_drops%3Aratio_rate5m");
    for expr in dashboard_exprs() {
        let q = expr
            .replace("$__rate_interval", "1m")
            .replace("$__range", "1h")
            .replace("$job", ".*")
            .replace("$instance", ".*");
        prom.api(&format!("/api/v1/query?query={}", urlencode(&q)));
    }
    // No rule failed to evaluate.
    let groups = prom.api("/api/v1/rules");
    for g in groups["data"]["groups"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        for r in g["rules"].as_array().map(Vec::as_slice).unwrap_or_default() {
            assert_ne!(r["health"], "err", "rule {} failed: {}", r["name"], r["lastError"]);
        }
    }
}

fn urlencode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
