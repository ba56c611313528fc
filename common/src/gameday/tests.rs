//! Parsing (YAML and JSON) and every validation error of a game-day spec.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Value, json};

use super::*;

/// A spec that uses every field and is valid.
const FULL: &str = r#"
name: full.example
description: Every field once.
hypothesis: graydar sees it.
targets:
  a:
    agents: [node-a, node-b]
    pick:
      count: 1
  b:
    selector:
      role: db
    pick:
      percent: 50
    on_empty: skip
  c:
    agents: [node-c]
    pick: all
safety:
  max_targets: 3
  max_share: 0.5
  max_duration: 30m
  lease: 20s
preflight:
  no_firing:
    kinds: [nic_drops, disk_hung]
    min_severity: warning
  require_healthy: true
  require_capabilities: false
  promql:
    - expr: up{job="graydar"}
      op: ge
      value: 1
    - expr: sum(x)
      op: "<"
      value: 5
steps:
  - id: warmup
    wait:
      duration: 30s
  - id: fsync
    load:
      target: c
      spec:
        kind: fsync
        dir: /var/tmp
        per_second: 10
      duration: 2m
  - id: approve
    after: [warmup]
    gate:
      message: go?
      timeout: 5m
  - id: inject
    after: [approve]
    fault:
      target: a
      spec:
        kind: netem
        interface: eth0
        netem:
          delay_ms: 100
      duration: 2m
    expect:
      detect:
        - kind: latency_asymmetry
          on: a
          peer: b
          subject: "peer *"
          within: 30s
        - kind: [qdisc_drops, nic_drops]
          on: a
          within: 1m
      alerts:
        - alertname: GraydarLatencyAsymmetry
          within: 90s
      clear_within: 2m
abort:
  findings:
    kinds: [disk_hung]
    min_severity: critical
    hosts: targets
  promql:
    - expr: rate(errors_total[1m]) > 1
      for: 30s
schedule:
  cron: "*/30 9-17 * * MON-FRI"
  time_zone: Europe/Berlin
  concurrency: forbid
  starting_deadline: 5m
  history_limit: 5
  suspended: true
"#;

fn full() -> GameDaySpec {
    GameDaySpec::from_yaml(FULL).expect("the full example parses")
}

fn full_value() -> Value {
    serde_json::to_value(full()).expect("to json")
}

/// Validation errors of `FULL` changed by `edit`, as text.
fn errors_after(edit: impl FnOnce(&mut Value)) -> Vec<String> {
    let mut v = full_value();
    edit(&mut v);
    let spec = GameDaySpec::from_json(&v.to_string()).unwrap_or_else(|e| panic!("edited spec parses: {e}\n{v:#}"));
    match spec.validate(&Limits::default()) {
        Ok(()) => Vec::new(),
        Err(es) => es.iter().map(ToString::to_string).collect(),
    }
}

/// Asserts that some error starts with `path: ` and contains `want`.
#[track_caller]
fn assert_error(errors: &[String], path: &str, want: &str) {
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with(&format!("{path}: ")) && e.contains(want)),
        "no error at {path} containing {want:?} in {errors:#?}"
    );
}

/// The value at `pointer`, created (as null) when its parent object lacks it.
fn at<'a>(v: &'a mut Value, pointer: &str) -> &'a mut Value {
    let (parent, key) = pointer.rsplit_once('/').expect("a JSON pointer");
    let parent = v
        .pointer_mut(parent)
        .unwrap_or_else(|| panic!("{parent} in the full example"));
    match parent {
        Value::Object(m) => m.entry(key.to_owned()).or_insert(Value::Null),
        Value::Array(a) => key
            .parse::<usize>()
            .ok()
            .and_then(|i| a.get_mut(i))
            .expect("an index in range"),
        _ => panic!("{pointer}: the parent is not an object or array"),
    }
}

#[test]
fn the_full_example_parses_from_yaml_and_validates() {
    let s = full();
    s.validate(&Limits::default()).expect("valid");
    assert_eq!(s.name, "full.example");
    assert_eq!(s.targets["a"].pick, Pick::Count(1));
    assert_eq!(s.targets["b"].pick, Pick::Percent(50.0));
    assert_eq!(s.targets["b"].on_empty, OnEmpty::Skip);
    assert_eq!(s.targets["c"].pick, Pick::All);
    assert_eq!(s.safety.max_duration, Duration::from_secs(1800));
    assert_eq!(s.safety.lease, Some(Duration::from_secs(20)));
    assert_eq!(s.preflight.promql[1].op, CompareOp::Lt, "'<' is an alias of lt");
    assert!(!s.preflight.require_capabilities);
    let inject = &s.steps[3];
    let Some(Action::Fault(f)) = inject.action() else {
        panic!("inject is a fault step: {inject:?}")
    };
    assert_eq!(f.duration, Duration::from_secs(120));
    assert_eq!(f.spec.kind(), crate::faults::FaultKind::Netem);
    let x = inject.expect.as_ref().expect("expect");
    assert_eq!(x.detect[0].kind, Kinds::One("latency_asymmetry".into()));
    assert_eq!(x.detect[1].kind.names(), ["qdisc_drops", "nic_drops"]);
    assert_eq!(x.detect[0].on, "a", "`on` is a key, not YAML 1.1's boolean");
    assert_eq!(s.abort.promql[0].for_, Some(Duration::from_secs(30)));
    assert_eq!(s.abort.findings.hosts, HostScope::Targets);
    let sched = s.schedule.as_ref().expect("schedule");
    assert!(sched.suspended);
    assert_eq!(sched.starting_deadline, Some(Duration::from_secs(300)));
    let order: Vec<&str> = s.step_order().expect("a DAG").iter().map(|s| s.id.as_str()).collect();
    assert_eq!(order, ["warmup", "fsync", "approve", "inject"]);
}

#[test]
fn json_and_yaml_give_the_same_spec_and_json_round_trips() {
    let s = full();
    let json = s.to_json();
    let again = GameDaySpec::parse(&json).expect("its JSON parses");
    assert_eq!(again, s);
    assert!(
        json.contains("\"max_duration\": \"30m\""),
        "durations stay human: {json}"
    );
    // YAML is a superset of JSON: the same text through the YAML parser.
    assert_eq!(GameDaySpec::from_yaml(&json).expect("as YAML"), s);
}

#[test]
fn defaults_are_the_safe_ones() {
    let s = GameDaySpec::parse(
        r#"{"name":"x","hypothesis":"h","targets":{"a":{"agents":["n"]}},
            "safety":{"max_duration":"5m"},
            "steps":[{"id":"w","wait":{"duration":"1s"}}]}"#,
    )
    .expect("parses");
    s.validate(&Limits::default()).expect("valid");
    assert_eq!(s.targets["a"].pick, Pick::All);
    assert_eq!(s.targets["a"].on_empty, OnEmpty::Fail);
    assert!(s.preflight.require_healthy && s.preflight.require_capabilities);
    assert!(s.preflight.no_firing.kinds.is_empty());
    assert_eq!(s.preflight.no_firing.min_severity, crate::api::Severity::Critical);
    assert_eq!(s.abort.findings, AbortFindings::default());
    assert_eq!(s.abort.findings.min_severity, crate::api::Severity::Critical);
    assert_eq!(s.abort.findings.hosts, HostScope::Any);
}

#[test]
fn parse_errors_name_the_field_and_the_line() {
    // Unknown field (a typo), in YAML: path and line.
    let bad = FULL.replace("clear_within: 2m", "clear_whithin: 2m");
    let e = GameDaySpec::from_yaml(&bad).expect_err("typo").to_string();
    assert!(
        e.contains("steps[3].expect") && e.contains("clear_whithin") && e.contains("line "),
        "{e}"
    );
    assert!(!e.contains("expect: steps[3]"), "the path once: {e}");
    // A FaultSpec error at parse time, in JSON.
    let mut v = full_value();
    *at(&mut v, "/steps/3/fault/spec/kind") = json!("tc");
    let e = GameDaySpec::parse(&v.to_string())
        .expect_err("unknown fault kind")
        .to_string();
    assert!(e.contains("steps[3].fault.spec") && e.contains("tc"), "{e}");
    // A duration that is not one.
    let e = GameDaySpec::from_yaml(&FULL.replace("duration: 30s", "duration: soon"))
        .expect_err("bad duration")
        .to_string();
    assert!(e.contains("steps[0].wait.duration"), "{e}");
    // A group defined twice.
    let twice = FULL.replace("  c:\n    agents: [node-c]", "  a:\n    agents: [node-c]");
    let e = GameDaySpec::from_yaml(&twice).expect_err("duplicate group").to_string();
    assert!(e.contains("targets") && e.contains("\"a\" is given twice"), "{e}");
    // Trailing garbage after the JSON object.
    let e = GameDaySpec::from_json(&format!("{} x", full().to_json())).expect_err("trailing");
    assert!(e.location.is_some(), "{e}");
}

#[test]
fn step_reference_errors() {
    let es = errors_after(|v| *at(v, "/steps/2/after") = json!(["warmpu"]));
    assert_error(&es, "steps[2].after[0]", "unknown step \"warmpu\"");
    let es = errors_after(|v| *at(v, "/steps/2/after") = json!(["warmup", "warmup"]));
    assert_error(&es, "steps[2].after[1]", "listed twice");
    let es = errors_after(|v| *at(v, "/steps/0/after") = json!(["inject"]));
    assert_error(&es, "steps", "cycle warmup -> inject -> approve -> warmup");
    let es = errors_after(|v| *at(v, "/steps/1/id") = json!("warmup"));
    assert_error(&es, "steps[1].id", "duplicate step id \"warmup\" (also steps[0])");
    let es = errors_after(|v| *at(v, "/steps/1/id") = json!("no spaces"));
    assert_error(&es, "steps[1].id", "letters, digits");
    let es = errors_after(|v| *at(v, "/steps") = json!([]));
    assert_error(&es, "steps", "at least one step");
    let limits = Limits {
        max_steps: 2,
        ..Limits::default()
    };
    let es = full().validate(&limits).expect_err("too many");
    assert!(
        es.iter().any(|e| e.to_string() == "steps: 4 steps, at most 2 allowed"),
        "{es:?}"
    );
}

#[test]
fn action_errors() {
    let es = errors_after(|v| {
        at(v, "/steps/0").as_object_mut().expect("step").remove("wait");
    });
    assert_error(&es, "steps[0]", "no action");
    let es = errors_after(|v| *at(v, "/steps/0/gate") = json!({}));
    assert_error(&es, "steps[0]", "exactly one action, got wait and gate");
    let es = errors_after(|v| *at(v, "/steps/0/expect") = json!({"alerts":[{"alertname":"X","within":"1s"}]}));
    assert_error(
        &es,
        "steps[0].expect",
        "only a fault or a load step has expectations, this is a wait step",
    );
    let es = errors_after(|v| *at(v, "/steps/0/optional") = json!(true));
    assert_error(
        &es,
        "steps[0].optional",
        "only a fault step can be optional, this is a wait step",
    );
    let es = errors_after(|v| *at(v, "/steps/1/optional") = json!(true));
    assert_error(&es, "steps[1].optional", "this is a load step");
    let mut v = full_value();
    *at(&mut v, "/steps/3/optional") = json!(true);
    let s = GameDaySpec::parse(&v.to_string()).expect("an optional fault step parses");
    s.validate(&Limits::default()).expect("an optional fault step is valid");
    assert!(s.steps[3].optional && !s.steps[2].optional);
    assert!(
        s.to_json().matches("\"optional\"").count() == 1,
        "written only where set"
    );
    let es = errors_after(|v| *at(v, "/steps/3/fault/target") = json!("db"));
    assert_error(&es, "steps[3].fault.target", "unknown group \"db\" (groups: a, b, c)");
    let es = errors_after(|v| *at(v, "/steps/1/load/target") = json!("db"));
    assert_error(&es, "steps[1].load.target", "unknown group \"db\"");
    let es = errors_after(|v| *at(v, "/steps/3/fault/spec/netem/delay_ms") = json!(-5));
    assert_error(&es, "steps[3].fault.spec", "netem: delay_ms");
    let es = errors_after(|v| *at(v, "/steps/3/fault/spec") = json!({"kind":"blackhole","prefix":"10.0.0.1/8"}));
    assert_error(&es, "steps[3].fault.spec", "host bits");
    let es = errors_after(|v| *at(v, "/steps/1/load/spec/dir") = json!("relative/dir"));
    assert_error(&es, "steps[1].load.spec", "fsync: dir");
    let es = errors_after(|v| *at(v, "/steps/1/load/spec/per_second") = json!(0));
    assert_error(&es, "steps[1].load.spec", "per_second");
}

#[test]
fn unordered_faults_on_the_same_thing_are_refused() {
    let second = json!({"id": "again", "fault": {"target": "a", "duration": "1m",
        "spec": {"kind": "netem", "interface": "eth0", "netem": {"loss": {"model": "random", "percent": 5}}}}});
    let es = errors_after(|v| at(v, "/steps").as_array_mut().expect("steps").push(second.clone()));
    assert_error(
        &es,
        "steps[4].fault",
        "may run at the same time as steps[3] (\"inject\") on group \"a\" and act on the same netem \"eth0\"",
    );
    // Ordered (even through another step), or on another group or interface: fine.
    for edit in [
        ("/after", json!(["inject"])),
        ("/after", json!(["fsync", "inject"])),
        ("/fault/target", json!("c")),
        ("/fault/spec/interface", json!("eth1")),
        ("/fault/spec/direction", json!("ingress")),
    ] {
        let mut step = second.clone();
        *at(&mut step, edit.0) = edit.1.clone();
        let es = errors_after(|v| at(v, "/steps").as_array_mut().expect("steps").push(step.clone()));
        assert!(es.is_empty(), "{edit:?}: {es:#?}");
    }
    let mut chained = second.clone();
    *at(&mut chained, "/after") = json!(["warmup"]);
    // warmup -> approve -> inject, and warmup -> again: not ordered.
    let es = errors_after(|v| at(v, "/steps").as_array_mut().expect("steps").push(chained.clone()));
    assert_error(&es, "steps[4].fault", "may run at the same time as steps[3]");
}

#[test]
fn duration_errors() {
    let es = errors_after(|v| *at(v, "/steps/0/wait/duration") = json!("0s"));
    assert_error(&es, "steps[0].wait.duration", "must be > 0");
    let es = errors_after(|v| *at(v, "/steps/3/fault/duration") = json!("0s"));
    assert_error(&es, "steps[3].fault.duration", "must be > 0");
    assert_eq!(es.len(), 1, "no deadline repeats it: {es:#?}");
    let es = errors_after(|v| *at(v, "/steps/3/fault/duration") = json!("45m"));
    assert_error(
        &es,
        "steps[3].fault.duration",
        "45m is above the cap of 30m (safety.max_duration)",
    );
    let es = errors_after(|v| {
        *at(v, "/safety/max_duration") = json!("3h");
        *at(v, "/steps/3/fault/duration") = json!("2h");
    });
    assert_error(&es, "steps[3].fault.duration", "faults.max_duration");
    let es = errors_after(|v| *at(v, "/safety/max_duration") = json!("2d"));
    assert_error(&es, "safety.max_duration", "above the cap of 1day");
    let es = errors_after(|v| *at(v, "/safety/max_duration") = json!("0s"));
    assert_error(&es, "safety.max_duration", "must be > 0");
    let es = errors_after(|v| *at(v, "/steps/2/gate/timeout") = json!("0s"));
    assert_error(&es, "steps[2].gate.timeout", "must be > 0");
    let es = errors_after(|v| *at(v, "/steps/1/load/duration") = json!("1h"));
    assert_error(&es, "steps[1].load.duration", "above the cap");
    // Each step fits, the chain does not: 2m + 0 + 2m > 3m.
    let es = errors_after(|v| {
        *at(v, "/safety/max_duration") = json!("3m");
        *at(v, "/steps/2/gate/timeout") = json!("1m");
        *at(v, "/steps/3/expect/clear_within") = json!("1m");
        *at(v, "/abort/promql/0/for") = json!("1m");
        *at(v, "/steps/2/after") = json!(["fsync"]);
    });
    assert_error(
        &es,
        "steps",
        "the longest chain (fsync -> approve -> inject) takes 4m, above safety.max_duration (3m)",
    );
    let es = errors_after(|v| *at(v, "/safety/lease") = json!("1s"));
    assert_error(&es, "safety.lease", "between 3s and 10m");
    // Never longer than the controller's own lease.
    let limits = Limits {
        max_lease: Duration::from_secs(15),
        ..Limits::default()
    };
    let es = full().validate(&limits).expect_err("20s is above 15s");
    assert!(
        es.iter()
            .any(|e| e.to_string()
                == "safety.lease: must be between 3s and 15s (the controller's faults.lease), got 20s"),
        "{es:?}"
    );
}

#[test]
fn expectation_errors() {
    // tolerate: the same checks as a detection's kind, group and subject.
    let es = errors_after(|v| {
        *at(v, "/steps/3/expect/tolerate") = json!([{"kind": "qdisc_dropz", "on": "a"}]);
    });
    assert_error(
        &es,
        "steps[3].expect.tolerate[0].kind",
        "unknown finding kind \"qdisc_dropz\"",
    );
    let es = errors_after(|v| {
        *at(v, "/steps/3/expect/tolerate") = json!([{"kind": "qdisc_drops", "on": "db", "subject": "eth["}]);
    });
    assert_error(&es, "steps[3].expect.tolerate[0].on", "unknown group \"db\"");
    assert_error(&es, "steps[3].expect.tolerate[0].subject", "is not a glob");
    let es = errors_after(|v| *at(v, "/steps/3/expect/detect/0/kind") = json!("foo"));
    assert_error(
        &es,
        "steps[3].expect.detect[0].kind",
        "unknown finding kind \"foo\" (known: nic_drops,",
    );
    let es = errors_after(|v| *at(v, "/steps/3/expect/detect/1/kind") = json!(["nic_drops", "bar"]));
    assert_error(&es, "steps[3].expect.detect[1].kind[1]", "unknown finding kind \"bar\"");
    let es = errors_after(|v| *at(v, "/steps/3/expect/detect/1/kind") = json!([]));
    assert_error(&es, "steps[3].expect.detect[1].kind", "empty list");
    let es = errors_after(|v| *at(v, "/steps/3/expect/detect/0/on") = json!("db"));
    assert_error(&es, "steps[3].expect.detect[0].on", "unknown group \"db\"");
    let es = errors_after(|v| *at(v, "/steps/3/expect/detect/0/peer") = json!("db"));
    assert_error(&es, "steps[3].expect.detect[0].peer", "unknown group \"db\"");
    let es = errors_after(|v| *at(v, "/steps/3/expect/detect/1/peer") = json!("b"));
    assert_error(
        &es,
        "steps[3].expect.detect[1].peer",
        "qdisc_drops is not a pair finding",
    );
    let es = errors_after(|v| *at(v, "/steps/3/expect/detect/0/subject") = json!("peer [a"));
    assert_error(&es, "steps[3].expect.detect[0].subject", "not a glob");
    let es = errors_after(|v| *at(v, "/steps/3/expect/detect/0/within") = json!("0s"));
    assert_error(&es, "steps[3].expect.detect[0].within", "must be > 0");
    let es = errors_after(|v| *at(v, "/steps/3/expect/detect/0/within") = json!("3m"));
    assert_error(
        &es,
        "steps[3].expect.detect[0].within",
        "above the cap of 2m (the fault's duration",
    );
    let es = errors_after(|v| *at(v, "/steps/3/expect/alerts/0/within") = json!("5m"));
    assert_error(&es, "steps[3].expect.alerts[0].within", "the fault's duration");
    let es = errors_after(|v| *at(v, "/steps/3/expect/alerts/0/alertname") = json!(" "));
    assert_error(&es, "steps[3].expect.alerts[0].alertname", "empty");
    let es = errors_after(|v| *at(v, "/steps/3/expect/clear_within") = json!("0s"));
    assert_error(&es, "steps[3].expect.clear_within", "must be > 0");
    let es = errors_after(|v| *at(v, "/steps/3/expect") = json!({"clear_within": "1m"}));
    assert_error(&es, "steps[3].expect", "empty: give detect or alerts");
    assert_error(&es, "steps[3].expect.clear_within", "nothing to clear");
}

#[test]
fn target_and_safety_errors() {
    let es = errors_after(|v| *at(v, "/targets") = json!({}));
    assert_error(&es, "targets", "at least one target group");
    assert_error(&es, "steps[3].fault.target", "(groups: none)");
    let es = errors_after(|v| *at(v, "/targets/c") = json!({}));
    assert_error(&es, "targets.c", "empty group");
    let es = errors_after(|v| *at(v, "/targets/c/selector") = json!({"role": "x"}));
    assert_error(&es, "targets.c", "not both");
    let es = errors_after(|v| *at(v, "/targets/c/agents") = json!(["node-c", "node-c"]));
    assert_error(&es, "targets.c.agents[1]", "listed twice");
    let es = errors_after(|v| *at(v, "/targets/c/agents") = json!(["node c"]));
    assert_error(&es, "targets.c.agents[0]", "not a hostname");
    let es = errors_after(|v| *at(v, "/targets/a/pick") = json!({"count": 0}));
    assert_error(&es, "targets.a.pick.count", "at least 1");
    let es = errors_after(|v| *at(v, "/targets/a/pick") = json!({"count": 3}));
    assert_error(&es, "targets.a.pick.count", "lists only 2 agents");
    for bad in [0.0, 100.5, -1.0] {
        let es = errors_after(|v| *at(v, "/targets/b/pick") = json!({ "percent": bad }));
        assert_error(&es, "targets.b.pick.percent", "must be in (0, 100]");
    }
    let es = errors_after(|v| {
        *at(v, "/safety/max_targets") = json!(1);
        *at(v, "/targets/a/pick") = json!("all");
    });
    assert_error(&es, "targets.a", "picks 2 agents, above safety.max_targets (1)");
    let es = errors_after(|v| *at(v, "/safety/max_targets") = json!(0));
    assert_error(&es, "safety.max_targets", "at least 1");
    for bad in [0.0, 1.5] {
        let es = errors_after(|v| *at(v, "/safety/max_share") = json!(bad));
        assert_error(&es, "safety.max_share", "(0, 1]");
    }
    let es = errors_after(|v| *at(v, "/name") = json!("a/b"));
    assert_error(&es, "name", "letters, digits");
    let es = errors_after(|v| *at(v, "/hypothesis") = json!(" "));
    assert_error(&es, "hypothesis", "empty");
}

#[test]
fn preflight_abort_and_schedule_errors() {
    let es = errors_after(|v| *at(v, "/preflight/no_firing/kinds") = json!(["nic_drop"]));
    assert_error(&es, "preflight.no_firing.kinds[0]", "unknown finding kind \"nic_drop\"");
    let es = errors_after(|v| *at(v, "/preflight/promql/0/expr") = json!(""));
    assert_error(&es, "preflight.promql[0].expr", "empty PromQL");
    let es = errors_after(|v| *at(v, "/abort/findings/kinds") = json!(["disk_hung", "x"]));
    assert_error(&es, "abort.findings.kinds[1]", "unknown finding kind \"x\"");
    let es = errors_after(|v| *at(v, "/abort/promql/0/expr") = json!(" "));
    assert_error(&es, "abort.promql[0].expr", "empty PromQL");
    let es = errors_after(|v| *at(v, "/abort/promql/0/for") = json!("1h"));
    assert_error(&es, "abort.promql[0].for", "could never fire");
    let es = errors_after(|v| *at(v, "/schedule/cron") = json!("0 0 * *"));
    assert_error(&es, "schedule.cron", "4 fields, 5 are needed");
    let es = errors_after(|v| *at(v, "/schedule/cron") = json!("0 25 * * *"));
    assert_error(&es, "schedule.cron", "not a cron expression");
    let es = errors_after(|v| *at(v, "/schedule/cron") = json!("0 0 30 2 *"));
    assert_error(&es, "schedule.cron", "\"0 0 30 2 *\" never runs");
    let es = errors_after(|v| *at(v, "/schedule/time_zone") = json!("Mars/Olympus"));
    assert_error(&es, "schedule.time_zone", "unknown time zone \"Mars/Olympus\"");
    let es = errors_after(|v| *at(v, "/schedule/starting_deadline") = json!("0s"));
    assert_error(&es, "schedule.starting_deadline", "must be > 0");
    let es = errors_after(|v| *at(v, "/schedule/starting_deadline") = json!("8d"));
    assert_error(&es, "schedule.starting_deadline", "above the cap of 7days");
    let es = errors_after(|v| *at(v, "/schedule/history_limit") = json!(0));
    assert_error(&es, "schedule.history_limit", "between 1 and 1000");
}

#[test]
fn every_error_is_reported_not_only_the_first() {
    let es = errors_after(|v| {
        *at(v, "/steps/2/after") = json!(["ghost"]);
        *at(v, "/steps/3/fault/target") = json!("db");
        *at(v, "/schedule/time_zone") = json!("Nowhere");
    });
    assert_eq!(es.len(), 3, "{es:#?}");
}

#[test]
fn minimum_capabilities_follow_the_fault() {
    let spec = |j: Value| serde_json::from_value::<FaultSpec>(j).expect("fault spec");
    assert_eq!(
        minimum_capabilities(&spec(json!({"kind":"netem","interface":"eth0","netem":{"delay_ms":1}}))),
        ["sch_netem"]
    );
    assert_eq!(
        minimum_capabilities(&spec(
            json!({"kind":"netem","interface":"eth0","direction":"ingress","scope":{"dst_ports":[443]},"netem":{"delay_ms":1}})
        )),
        ["sch_netem", "sch_prio", "cls_flower", "ifb", "act_mirred"]
    );
    assert_eq!(
        minimum_capabilities(&spec(
            json!({"kind":"dm","device":"d","dm":{"type":"flakey","up_s":1,"down_s":1,"mode":"drop_writes"}})
        )),
        ["device_mapper", "dm_flakey"]
    );
    assert!(minimum_capabilities(&spec(json!({"kind":"blackhole","prefix":"10.0.0.0/8"}))).is_empty());
    // Every name is a field of Capabilities.
    let caps = serde_json::to_value(crate::api::Capabilities::default()).expect("caps");
    for c in [
        "sch_netem",
        "sch_prio",
        "cls_flower",
        "ifb",
        "act_mirred",
        "device_mapper",
        "dm_delay",
        "dm_flakey",
    ] {
        assert!(caps.get(c).is_some(), "{c} is not a Capabilities field");
    }
}

#[test]
fn every_example_parses_and_validates() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/examples/gamedays");
    let mut seen = 0;
    let mut entries: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .collect();
    entries.sort();
    for path in entries {
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let spec = GameDaySpec::parse(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        if let Err(es) = spec.validate(&Limits::default()) {
            panic!("{}: {es:#?}", path.display());
        }
        let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
        assert_eq!(spec.name, stem, "{}: name the file after the spec", path.display());
        seen += 1;
    }
    assert!(seen >= 3, "examples in {}: {seen}", dir.display());
}

/// The game-day library (runbooks/gamedays/): each file parses, validates,
/// is named after its spec and names a runbook that exists.
#[test]
fn every_library_game_day_validates_and_names_its_runbook() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = root.join("runbooks/gamedays");
    let mut entries: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    entries.sort();
    assert!(!entries.is_empty(), "no game day in {}", dir.display());
    for path in entries {
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let spec = GameDaySpec::parse(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        if let Err(es) = spec.validate(&Limits::default()) {
            panic!("{}: {es:#?}", path.display());
        }
        let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
        assert_eq!(spec.name, stem, "{}: name the file after the spec", path.display());
        let runbook = spec
            .description
            .split_whitespace()
            .find(|w| w.starts_with("runbooks/") && w.ends_with(".md"))
            .unwrap_or_else(|| panic!("{}: the description names no runbooks/*.md", path.display()));
        assert!(
            root.join(runbook).is_file(),
            "{}: {runbook} does not exist",
            path.display()
        );
    }
}
