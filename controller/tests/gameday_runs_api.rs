//! In-process tests of game-day runs: the real router, a real SQLite
//! database and the real runner; the test plays the agents (it registers
//! them, reports their fault states and pushes their findings over the
//! agent API, exactly as agents do).

use std::collections::BTreeMap;
use std::time::Duration;

use axum::http::StatusCode;
use graydar_common::api::{
    Finding, FindingKind, FindingState, FindingTransition, Severity, TransitionBatch, TransitionKind, finding_id,
};
use graydar_common::gameday::run::{
    ClearState, DetectionState, Outcome, RunInfo, RunList, RunState, StepState, Verdict,
};
use graydar_common::timestamp::Timestamp;
use graydar_controller::faults::FaultConfig;
use graydar_controller::gamedays::promql::PrometheusConfig;
use graydar_controller::metrics::Metrics;
use graydar_controller::services::Services;
use serde_json::{Value, json};

mod common;
use common::{Api, OPERATOR, VIEWER};

impl Api {
    async fn register(&self, host: &str) {
        self.register_as(&common::registration(host)).await;
    }

    /// `host` reports its state of fault `id` (as its agent does).
    async fn report(&self, host: &str, id: &str, state: &str) {
        self.report_status(host, json!({"id": id, "state": state, "operations": []}))
            .await;
    }

    /// `host` reports that fault `id` failed there, with the agent's reason.
    async fn report_failed(&self, host: &str, id: &str, reason: &str) {
        self.report_status(host, json!({"id": id, "state": "failed", "reason": reason}))
            .await;
    }

    async fn report_status(&self, host: &str, status: Value) {
        let body = json!({ "statuses": [status] });
        let resp = self
            .call(
                "POST",
                &format!("/api/v1/agents/{host}/faults/status"),
                &self.cred(host),
                Some(body),
            )
            .await;
        assert_eq!(resp.status, StatusCode::OK, "{}", resp.text);
    }

    /// `host`'s agent pushes one transition of its asymmetric_connectivity toward `peer`.
    async fn finding(&self, host: &str, peer: &str, kind: TransitionKind, since: Timestamp, at: Timestamp) {
        let subject = format!("peer {peer}");
        let f = Finding {
            id: finding_id(host, FindingKind::AsymmetricConnectivity, &subject),
            host: host.to_owned(),
            kind: FindingKind::AsymmetricConnectivity,
            subject,
            severity: Severity::Critical,
            state: if kind == TransitionKind::Resolved {
                FindingState::Resolved
            } else {
                FindingState::Firing
            },
            since,
            last_seen: at,
            resolved_at: (kind == TransitionKind::Resolved).then_some(at),
            summary: "one direction silent".into(),
            evidence: BTreeMap::new(),
            runbook: "asymmetric-connectivity".into(),
        };
        let batch = TransitionBatch {
            transitions: vec![FindingTransition {
                transition: kind,
                at,
                finding: f,
            }],
        };
        let resp = self
            .call(
                "POST",
                &format!("/api/v1/agents/{host}/transitions"),
                &self.cred(host),
                Some(serde_json::to_value(&batch).expect("json")),
            )
            .await;
        assert_eq!(resp.status, StatusCode::OK, "{}", resp.text);
    }

    async fn run_info(&self, id: &str) -> RunInfo {
        self.call("GET", &format!("/api/v1/runs/{id}"), VIEWER, None)
            .await
            .typed()
    }

    /// Polls the run until `f` holds (10 s at most).
    async fn wait_run(&self, id: &str, what: &str, f: impl Fn(&RunInfo) -> bool) -> RunInfo {
        for _ in 0..200 {
            let r = self.run_info(id).await;
            if f(&r) {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let r = self.run_info(id).await;
        panic!("run {id}: {what} did not happen: {r:#?}");
    }
}

/// h1 blackholes h2's address for `fault_for`; asymmetric_connectivity on
/// h1 toward h2 expected within `within`, cleared within 10 s.
fn spec(name: &str, fault_for: &str, within: &str, extra_steps: Value) -> Value {
    let mut steps = vec![json!({
        "id": "blackhole",
        "fault": {"target": "a", "spec": {"kind": "blackhole", "prefix": "10.9.9.2/32"}, "duration": fault_for},
        "expect": {
            "detect": [{"kind": "asymmetric_connectivity", "on": "a", "peer": "b", "within": within}],
            "clear_within": "10s"
        }
    })];
    if let Value::Array(more) = extra_steps {
        steps.extend(more);
    }
    json!({
        "name": name,
        "hypothesis": "h1 dropping what it sends to h2 is asymmetric_connectivity on h1",
        "targets": {"a": {"agents": ["h1"]}, "b": {"agents": ["h2"]}},
        "safety": {"max_duration": "2m"},
        "steps": steps
    })
}

async fn setup(spec: Value) -> Api {
    let a = Api::new().await;
    a.register("h1").await;
    a.register("h2").await;
    let r = a.call("POST", "/api/v1/gamedays", OPERATOR, Some(spec)).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    a
}

async fn start(a: &Api, name: &str) -> RunInfo {
    let r = a
        .call(
            "POST",
            &format!("/api/v1/gamedays/{name}/runs"),
            OPERATOR,
            Some(json!({"seed": 5})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    r.typed()
}

/// The fault the run's step created, once the controller has it: the run
/// journals the id before it creates the fault, so the id alone can be a
/// moment early (a GET then saw no such fault, 1 run in 5).
async fn fault_of(a: &Api, run: &str, step: &str) -> String {
    let r = a
        .wait_run(run, "the fault step applying", |r| {
            r.step(step).is_some_and(|s| s.state == StepState::Applying)
        })
        .await;
    let id = r.step(step).and_then(|s| s.fault_id.clone()).expect("fault id");
    for _ in 0..200 {
        if a.call("GET", &format!("/api/v1/faults/{id}"), VIEWER, None)
            .await
            .status
            == StatusCode::OK
        {
            return id;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("fault {id} of step {step} never reached the controller");
}

#[tokio::test]
async fn a_run_measures_time_to_detect_and_clear_and_passes() {
    let a = setup(spec("bh", "2s", "2s", json!([]))).await;
    // A viewer cannot start runs; an unknown game day is 404.
    let r = a
        .call("POST", "/api/v1/gamedays/bh/runs", VIEWER, Some(json!({})))
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
    let r = a
        .call("POST", "/api/v1/gamedays/nope/runs", OPERATOR, Some(json!({})))
        .await;
    assert_eq!(r.error_parts(StatusCode::NOT_FOUND).0, "not_found");

    let run = start(&a, "bh").await;
    assert_eq!(run.seed, 5);
    assert_eq!(run.targets["a"], ["h1"]);
    assert!(run.preflight.iter().all(|c| c.ok), "{:?}", run.preflight);
    // A second run of the same game day while this one goes: 409.
    let r = a
        .call("POST", "/api/v1/gamedays/bh/runs", OPERATOR, Some(json!({})))
        .await;
    assert_eq!(r.error_parts(StatusCode::CONFLICT).0, "run_active");

    let fault = fault_of(&a, &run.id, "blackhole").await;
    let f = a
        .call("GET", &format!("/api/v1/faults/{fault}"), VIEWER, None)
        .await
        .json();
    assert_eq!(f["agents"][0]["agent"], "h1", "{f}");
    assert_eq!(f["spec"]["prefix"], "10.9.9.2/32", "{f}");
    a.report("h1", &fault, "active").await;
    let r = a
        .wait_run(&run.id, "the step active", |r| {
            r.step("blackhole").is_some_and(|s| s.state == StepState::Active)
        })
        .await;
    let applied = r
        .step("blackhole")
        .and_then(|s| s.active_at)
        .expect("active_at")
        .unix_ms();
    // h1 detects 300 ms after the apply (its own clock: the controller's here).
    tokio::time::sleep(Duration::from_millis(400)).await;
    let since = Timestamp::from_unix_ms(applied + 300);
    a.finding("h1", "h2", TransitionKind::Fired, since, since).await;
    let r = a
        .wait_run(&run.id, "the detection", |r| {
            r.detections[0].state != DetectionState::Pending
        })
        .await;
    let d = &r.detections[0];
    assert_eq!(d.state, DetectionState::Detected, "{d:?}");
    assert_eq!(d.host, "h1");
    assert_eq!(d.kind, Some(FindingKind::AsymmetricConnectivity));
    let ttd = d.time_to_detect_ms.expect("time to detect");
    assert!(
        (299.0..=301.0).contains(&ttd),
        "time to detect {ttd} ms, 300 ms expected"
    );
    assert!(d.upper_bound_ms.expect("upper bound") >= 300, "{d:?}");
    assert_eq!(d.clear, Some(ClearState::Pending));

    // The fault expires after 2 s; h1 reverts; the finding resolves 1 s later.
    let r = a
        .wait_run(&run.id, "the step reverting", |r| {
            r.step("blackhole").is_some_and(|s| s.state == StepState::Reverting)
        })
        .await;
    let ended = r
        .step("blackhole")
        .and_then(|s| s.ended_at)
        .expect("ended_at")
        .unix_ms();
    a.report("h1", &fault, "reverted").await;
    let resolved = Timestamp::from_unix_ms(ended + 1000);
    a.finding("h1", "h2", TransitionKind::Resolved, since, resolved).await;
    let r = a.wait_run(&run.id, "the end", RunInfo::is_finished).await;
    assert_eq!(r.outcome, Some(Outcome::Passed), "{r:#?}");
    let v = r.verdicts.clone().expect("verdicts");
    assert_eq!((v.detection, v.safety), (Verdict::Pass, Verdict::Pass));
    let d = &r.detections[0];
    assert_eq!(d.clear, Some(ClearState::Cleared));
    let ttc = d.time_to_clear_ms.expect("time to clear");
    assert!((999.0..=1001.0).contains(&ttc), "time to clear {ttc}");
    assert!(r.unexpected.is_empty(), "{:?}", r.unexpected);
    assert_eq!(r.step("blackhole").map(|s| s.state), Some(StepState::Reverted));

    // Stored: listed with its outcome, and the same after it left memory.
    let list: RunList = a.call("GET", "/api/v1/runs?outcome=passed", VIEWER, None).await.typed();
    assert_eq!(list.runs.len(), 1);
    assert_eq!(list.runs[0].id, r.id);
    let list: RunList = a.call("GET", "/api/v1/runs?gameday=other", VIEWER, None).await.typed();
    assert!(list.runs.is_empty());
    assert_eq!(a.run_info(&r.id).await, r);
    let metrics = a.call("GET", "/metrics", VIEWER, None).await.text;
    assert!(
        metrics.contains("graydar_controller_gameday_runs_total{gameday=\"bh\",outcome=\"passed\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("graydar_controller_gameday_time_to_detect_seconds_count{kind=\"asymmetric_connectivity\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_detection_after_its_deadline_is_a_detection_gap_and_an_unexpected_finding_is_listed() {
    let a = setup(spec("late", "2s", "100ms", json!([]))).await;
    let run = start(&a, "late").await;
    let fault = fault_of(&a, &run.id, "blackhole").await;
    a.report("h1", &fault, "active").await;
    let r = a
        .wait_run(&run.id, "the step active", |r| {
            r.step("blackhole").is_some_and(|s| s.state == StepState::Active)
        })
        .await;
    let applied = r
        .step("blackhole")
        .and_then(|s| s.active_at)
        .expect("active_at")
        .unix_ms();
    let since = Timestamp::from_unix_ms(applied + 500);
    a.finding("h1", "h2", TransitionKind::Fired, since, since).await;
    // h2 sees something nobody expected (a warning: no abort by default).
    let now = Timestamp::now();
    a.finding("h2", "h1", TransitionKind::Fired, now, now).await;
    a.wait_run(&run.id, "the step reverting", |r| {
        r.step("blackhole").is_some_and(|s| s.state == StepState::Reverting)
    })
    .await;
    a.report("h1", &fault, "reverted").await;
    a.finding("h1", "h2", TransitionKind::Resolved, since, Timestamp::now())
        .await;
    let r = a.wait_run(&run.id, "the end", RunInfo::is_finished).await;
    assert_eq!(r.detections[0].state, DetectionState::Late, "{:?}", r.detections);
    // The critical finding on h2 matches no expectation: the default abort
    // rule (any critical finding) ended the run, and it is listed.
    assert_eq!(r.unexpected.len(), 1, "{:?}", r.unexpected);
    assert_eq!(r.unexpected[0].host, "h2");
    assert_eq!(r.outcome, Some(Outcome::Aborted), "{r:#?}");
    assert!(
        r.reason.as_deref().is_some_and(|x| x.contains("abort.findings")),
        "{:?}",
        r.reason
    );
    let v = r.verdicts.clone().expect("verdicts");
    assert_eq!((v.detection, v.safety), (Verdict::Fail, Verdict::Fail));
}

/// Starts `name`; h2 fails its `rings` step's fault with `why`. The run,
/// the rings fault and the blackhole fault.
async fn start_with_rings_failed(a: &Api, name: &str, why: &str) -> (RunInfo, String, String) {
    let run = start(a, name).await;
    let rings_fault = fault_of(a, &run.id, "rings").await;
    let fault = fault_of(a, &run.id, "blackhole").await;
    a.report_failed("h2", &rings_fault, why).await;
    (run, rings_fault, fault)
}

/// The rings of h2's NIC shrunk beside the blackhole, `optional`; h2's
/// driver cannot resize them (h2 says so: its fault fails). With
/// `optional` the step ends `skipped` with h2's reason, its fault is ended,
/// its expectation is not judged and the run passes on the blackhole; the
/// same spec without `optional` fails the run on h2's reason.
#[tokio::test]
async fn an_optional_step_that_fails_on_an_agent_is_skipped_and_the_run_goes_on() {
    const WHY: &str = "the driver veth of eth0 cannot change its ring sizes (EOPNOTSUPP)";
    let rings = |optional: bool| {
        json!([{
            "id": "rings",
            "optional": optional,
            "fault": {"target": "b", "spec": {"kind": "nic_rings", "interface": "eth0", "rx": 64}, "duration": "1m"},
            "expect": {"detect": [{"kind": "nic_drops", "on": "b", "within": "5s"}]}
        }])
    };
    let a = setup(spec("opt", "2s", "2s", rings(true))).await;
    // Two faults on two agents: within the controller's blast radius (50 %) of four.
    a.register("h3").await;
    a.register("h4").await;
    let (run, rings_fault, fault) = start_with_rings_failed(&a, "opt", WHY).await;
    let r = a
        .wait_run(&run.id, "the optional step skipped", |r| {
            r.step("rings").is_some_and(|s| s.state == StepState::Skipped)
        })
        .await;
    let step = r.step("rings").expect("rings step");
    assert!(step.optional, "{step:?}");
    assert!(
        step.reason
            .as_deref()
            .is_some_and(|x| x.contains("h2") && x.contains(WHY)),
        "{step:?}"
    );
    let d = r.detections.iter().find(|d| d.step == "rings").expect("its cell");
    assert_eq!(d.state, DetectionState::NotRun, "{d:?}");
    assert!(r.state == RunState::Running, "the run goes on: {r:#?}");
    let f = a
        .call("GET", &format!("/api/v1/faults/{rings_fault}"), VIEWER, None)
        .await
        .json();
    // Failed on its only agent: the controller ended it `failed` at once.
    assert_eq!(f["status"], "failed", "the optional step's fault was ended: {f}");

    // The blackhole goes on as in any run, and the run passes.
    a.report("h1", &fault, "active").await;
    let since = Timestamp::now();
    a.finding("h1", "h2", TransitionKind::Fired, since, since).await;
    a.wait_run(&run.id, "reverting", |r| {
        r.step("blackhole").is_some_and(|s| s.state == StepState::Reverting)
    })
    .await;
    a.report("h1", &fault, "reverted").await;
    a.finding("h1", "h2", TransitionKind::Resolved, since, Timestamp::now())
        .await;
    let r = a.wait_run(&run.id, "the end", RunInfo::is_finished).await;
    assert_eq!(r.outcome, Some(Outcome::Passed), "{r:#?}");
    let v = r.verdicts.clone().expect("verdicts");
    assert_eq!((v.detection, v.safety), (Verdict::Pass, Verdict::Pass));
    assert!(
        r.timeline
            .iter()
            .any(|e| e.message.contains("(optional)") && e.message.contains(WHY)),
        "{:#?}",
        r.timeline
    );

    // Not optional: the same failure fails the run, naming h2's reason.
    let mut strict = spec("strict", "2s", "2s", rings(false));
    strict["steps"][1]
        .as_object_mut()
        .expect("the rings step")
        .remove("optional");
    let resp = a.call("POST", "/api/v1/gamedays", OPERATOR, Some(strict)).await;
    assert_eq!(resp.status, StatusCode::CREATED, "{}", resp.text);
    let (run, _, fault) = start_with_rings_failed(&a, "strict", WHY).await;
    a.report("h1", &fault, "reverted").await;
    let r = a.wait_run(&run.id, "the end", RunInfo::is_finished).await;
    assert_eq!(r.outcome, Some(Outcome::Failed), "{r:#?}");
    assert!(
        r.reason
            .as_deref()
            .is_some_and(|x| x.contains("step rings") && x.contains(WHY)),
        "{:?}",
        r.reason
    );
}

#[tokio::test]
async fn an_operator_abort_ends_the_fault_at_once_and_a_gate_waits_for_resume() {
    let gate = json!([
        {"id": "check", "after": ["blackhole"], "gate": {"message": "look at the dashboards"}},
        {"id": "after", "after": ["check"], "wait": {"duration": "1s"}}
    ]);
    let a = setup(spec("gated", "1s", "1s", gate)).await;
    let run = start(&a, "gated").await;
    // No gate waiting yet: 409.
    let r = a
        .call("POST", &format!("/api/v1/runs/{}/resume", run.id), OPERATOR, None)
        .await;
    assert_eq!(r.error_parts(StatusCode::CONFLICT).0, "no_gate");
    let fault = fault_of(&a, &run.id, "blackhole").await;
    a.report("h1", &fault, "active").await;
    let since = Timestamp::now();
    a.finding("h1", "h2", TransitionKind::Fired, since, since).await;
    a.wait_run(&run.id, "reverting", |r| {
        r.step("blackhole").is_some_and(|s| s.state == StepState::Reverting)
    })
    .await;
    a.report("h1", &fault, "reverted").await;
    a.finding("h1", "h2", TransitionKind::Resolved, since, Timestamp::now())
        .await;
    // The gate opens once the fault is reverted, and waits.
    a.wait_run(&run.id, "the gate waiting", |r| {
        r.step("check").is_some_and(|s| s.state == StepState::Active)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        a.run_info(&run.id).await.step("after").map(|s| s.state),
        Some(StepState::Pending)
    );
    let r = a
        .call("POST", &format!("/api/v1/runs/{}/resume", run.id), VIEWER, None)
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = a
        .call("POST", &format!("/api/v1/runs/{}/resume", run.id), OPERATOR, None)
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    a.wait_run(&run.id, "the wait after the gate", |r| {
        r.step("after").is_some_and(|s| s.state != StepState::Pending)
    })
    .await;

    // A second run, aborted while its fault is applying: the fault is
    // ended by the abort call itself.
    let _ = a.wait_run(&run.id, "the first run's end", RunInfo::is_finished).await;
    let run2 = start(&a, "gated").await;
    let fault2 = fault_of(&a, &run2.id, "blackhole").await;
    let r = a
        .call(
            "POST",
            &format!("/api/v1/runs/{}/abort", run2.id),
            VIEWER,
            Some(json!({})),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = a
        .call(
            "POST",
            &format!("/api/v1/runs/{}/abort", run2.id),
            OPERATOR,
            Some(json!({"reason": "pager went off"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    let f = a
        .call("GET", &format!("/api/v1/faults/{fault2}"), VIEWER, None)
        .await
        .json();
    assert_eq!(f["status"], "ended", "ended by the abort call, before it answered: {f}");
    a.report("h1", &fault2, "reverted").await;
    let r = a.wait_run(&run2.id, "the abort", RunInfo::is_finished).await;
    assert_eq!(r.outcome, Some(Outcome::Aborted));
    assert_eq!(r.reason.as_deref(), Some("operator abort: pager went off"));
    assert_eq!(r.step("blackhole").map(|s| s.state), Some(StepState::Reverted));
    assert_eq!(r.step("after").map(|s| s.state), Some(StepState::Skipped));
    // Aborted a second in, before its 1 s deadline and the grace had passed:
    // the cell is not judged a miss.
    assert_eq!(r.detections[0].state, DetectionState::CutShort, "{:?}", r.detections);
    assert_eq!(r.verdicts.as_ref().map(|v| v.detection), Some(Verdict::Fail));
    let r = a
        .call(
            "POST",
            &format!("/api/v1/runs/{}/abort", run2.id),
            OPERATOR,
            Some(json!({})),
        )
        .await;
    assert_eq!(r.error_parts(StatusCode::CONFLICT).0, "ended");
}

#[tokio::test]
async fn the_safety_lever_aborts_runs_and_refuses_new_ones_and_a_restart_aborts_what_was_running() {
    let a = setup(spec("lever", "30s", "10s", json!([]))).await;
    let run = start(&a, "lever").await;
    let fault = fault_of(&a, &run.id, "blackhole").await;
    a.report("h1", &fault, "active").await;
    let r = a
        .call(
            "PUT",
            "/api/v1/safety-lever",
            OPERATOR,
            Some(json!({"engaged": true, "reason": "incident"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    a.report("h1", &fault, "reverted").await;
    let r = a.wait_run(&run.id, "the abort", RunInfo::is_finished).await;
    assert_eq!(r.outcome, Some(Outcome::Aborted));
    assert!(
        r.reason.as_deref().is_some_and(|x| x.contains("safety lever")),
        "{:?}",
        r.reason
    );
    assert_eq!(r.detections[0].state, DetectionState::CutShort, "{:?}", r.detections);
    // Refused while engaged, and recorded as cancelled.
    let resp = a
        .call("POST", "/api/v1/gamedays/lever/runs", OPERATOR, Some(json!({})))
        .await;
    let (code, detail) = resp.error_parts(StatusCode::CONFLICT);
    assert_eq!(code, "safety_lever", "{detail}");
    let list: RunList = a
        .call("GET", "/api/v1/runs?outcome=cancelled", VIEWER, None)
        .await
        .typed();
    assert_eq!(list.runs.len(), 1);
    // A dry run is allowed, says the preflight would refuse, and stores nothing.
    let r = a
        .call(
            "POST",
            "/api/v1/gamedays/lever/runs",
            OPERATOR,
            Some(json!({"dry_run": true})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let dry: RunInfo = r.typed();
    assert!(
        dry.dry_run && dry.reason.as_deref().is_some_and(|x| x.contains("safety lever")),
        "{dry:#?}"
    );
    assert_eq!(dry.step("blackhole").and_then(|s| s.planned_start_ms), Some(0));
    let r = a
        .call("PUT", "/api/v1/safety-lever", OPERATOR, Some(json!({"engaged": false})))
        .await;
    assert_eq!(r.status, StatusCode::OK);

    // A run in progress when the controller "restarts": a second set of
    // services opened on the same database ends it.
    let run = start(&a, "lever").await;
    let fault = fault_of(&a, &run.id, "blackhole").await;
    a.report("h1", &fault, "active").await;
    a.wait_run(&run.id, "active", |r| {
        r.step("blackhole").is_some_and(|s| s.state == StepState::Active)
    })
    .await;
    let services = Services::open(a.store.clone(), common::liveness(), Default::default())
        .await
        .expect("reopen");
    let _ = Metrics::for_services(&services);
    let r = services.gamedays.run(&run.id).await.expect("stored run");
    assert_eq!(r.state, RunState::Completed);
    assert_eq!(r.outcome, Some(Outcome::Aborted));
    assert_eq!(r.reason.as_deref(), Some("controller restarted"));
    assert_eq!(r.detections[0].state, DetectionState::CutShort, "{:?}", r.detections);
    let f = services.faults.get(&fault).await.expect("fault");
    assert_eq!(f.status, "ended", "the restart ended the run's fault: {f:?}");
}

/// An abort rule nobody can evaluate does not hold: with the controller's
/// Prometheus unreachable (a port nothing listens on), the run is aborted
/// once its PromQL abort rule has gone unevaluated for 30 s, and its fault
/// (created with the run's `safety.lease`) is ended.
#[tokio::test]
async fn an_abort_rule_prometheus_cannot_answer_aborts_the_run() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    // 5 s unanswered (the shortest allowed; 30 s by default).
    let prometheus = PrometheusConfig {
        url: format!("http://127.0.0.1:{port}"),
        timeout: Duration::from_secs(1),
        abort_unanswered_after: Duration::from_secs(5),
    };
    let a = Api::with_prometheus(FaultConfig::default(), common::liveness(), Some(prometheus)).await;
    a.register("h1").await;
    a.register("h2").await;
    let mut s = spec("blind", "2m", "10s", json!([]));
    s["abort"] = json!({"promql": [{"expr": "up == 0"}]});
    // The run's faults carry its safety.lease.
    s["safety"]["lease"] = json!("5s");
    let r = a.call("POST", "/api/v1/gamedays", OPERATOR, Some(s)).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let run = start(&a, "blind").await;
    let fault = fault_of(&a, &run.id, "blackhole").await;
    let info = a.call("GET", &format!("/api/v1/faults/{fault}"), VIEWER, None).await;
    assert_eq!(info.json()["lease_seconds"], 5, "{}", info.text);
    a.report("h1", &fault, "active").await;
    let mut r = a.run_info(&run.id).await;
    for _ in 0..60 {
        if r.is_finished() || r.state == RunState::Reverting {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        r = a.run_info(&run.id).await;
    }
    a.report("h1", &fault, "reverted").await;
    let r = a.wait_run(&run.id, "the abort", RunInfo::is_finished).await;
    assert_eq!(r.outcome, Some(Outcome::Aborted), "{r:#?}");
    let reason = r.reason.clone().unwrap_or_default();
    assert!(reason.starts_with("abort.promql: not evaluated for 5s"), "{reason}");
    assert!(
        r.timeline.iter().any(|e| e.message.contains("prometheus:")),
        "the first error is on the timeline: {:#?}",
        r.timeline
    );
    assert_eq!(
        r.step("blackhole").map(|s| s.state),
        Some(StepState::Reverted),
        "{r:#?}"
    );
}
