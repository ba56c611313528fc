//! Several controllers on one PostgreSQL database, in process: each replica
//! is the real router over its own services, its own store pool and its own
//! cluster membership (LISTEN/NOTIFY, the leader's advisory lock) with its
//! background tasks running, as `graydar-controller` runs them. The test
//! plays the agents over the agent API. A real PostgreSQL (a throwaway
//! cluster), never a mock; the root tier runs the same with real agents and
//! SIGKILL (tests/tests/controller_replicas.rs).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use graydar_common::api::{
    Finding, FindingKind, FindingState, FindingTransition, RegisterRequest, Severity, TransitionBatch, TransitionKind,
    finding_id,
};
use graydar_common::fault_api::{DesiredFaults, FaultInfo};
use graydar_common::gameday::run::{Outcome, RunInfo, RunState};
use graydar_common::timestamp::Timestamp;
use graydar_controller::cluster::LEADER_RETRY;
use serde_json::{Value, json};

mod common;
use common::{Api, OPERATOR, VIEWER, pg::PgCluster};

/// One controller replica with its background tasks.
struct Replica {
    api: Api,
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Replica {
    async fn start(db: &PgCluster) -> Replica {
        let api = Api::replica(&common::db_url(db)).await;
        let (stop, rx) = tokio::sync::watch::channel(false);
        let (flusher, mut tasks) = api.state.services.spawn_background(rx);
        tasks.push(flusher);
        Replica { api, stop, tasks }
    }

    fn is_leader(&self) -> bool {
        self.api.state.services.cluster.is_leader()
    }

    /// Dies as a killed process would, as far as the database and the other
    /// replicas can tell: its connections close (the leader's lock is
    /// released), its background work and the runs it drives stop, and it
    /// answers nothing more.
    fn kill(self) {
        let _ = self.stop.send(true);
        for t in &self.tasks {
            t.abort();
        }
        self.api.state.services.gamedays.stand_down();
        self.api.state.services.cluster.leave();
    }

    async fn call(&self, method: &str, path: &str, token: &str, body: Option<Value>) -> common::Resp {
        self.api.call(method, path, token, body).await
    }

    async fn register(&self, host: &str) {
        self.api
            .register_as(&RegisterRequest {
                interfaces: Some((0..5).map(|i| format!("eth{i}")).collect()),
                ..common::registration(host)
            })
            .await;
    }

    async fn poll(&self, host: &str, query: &str) -> common::Resp {
        self.api
            .send(
                "GET",
                &format!("/api/v1/agents/{host}/faults{query}"),
                Some(&common::secret_of(host)),
                None,
            )
            .await
    }

    async fn create(&self, body: Value) -> common::Resp {
        self.call("POST", "/api/v1/faults", OPERATOR, Some(body)).await
    }

    async fn run_info(&self, id: &str) -> RunInfo {
        self.call("GET", &format!("/api/v1/runs/{id}"), VIEWER, None)
            .await
            .typed()
    }
}

fn netem(agent: &str, iface: &str) -> Value {
    // Forced: the blast radius of a fleet of one or two agents is all of it.
    json!({"targets": {"agents": [agent]}, "spec": {"kind": "netem", "interface": iface, "netem": {"delay_ms": 100}},
        "duration_seconds": 60, "force": true})
}

/// Two replicas on one database, `hosts` registered through the first.
async fn two(db: &PgCluster, hosts: &[&str]) -> (Replica, Replica) {
    let r1 = Replica::start(db).await;
    let r2 = Replica::start(db).await;
    for h in hosts {
        r1.register(h).await;
    }
    (r1, r2)
}

/// Waits until `f` holds, checking every 20 ms, `limit` at most.
async fn eventually(what: &str, limit: Duration, mut f: impl AsyncFnMut() -> bool) -> Duration {
    let t = Instant::now();
    while t.elapsed() < limit {
        if f().await {
            return t.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{what}: not within {limit:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fault_created_on_one_replica_wakes_an_agent_polling_the_other_within_a_second() {
    let db = PgCluster::start();
    let (r1, r2) = two(&db, &["h1", "h2"]).await;
    // h1 registered on r1; r2 knows it as soon as it hears of it.
    eventually("r2 knows h1", Duration::from_secs(2), async || {
        r2.poll("h1", "?wait=0").await.status == StatusCode::OK
    })
    .await;
    let first: DesiredFaults = r1.poll("h1", "?wait=0").await.typed();
    assert!(first.faults.is_empty());
    let version = first.version;
    let polled = {
        let app = r1.api.app.clone();
        let cred = common::secret_of("h1");
        tokio::spawn(async move {
            use tower::ServiceExt as _;
            let req = axum::http::Request::builder()
                .uri(format!("/api/v1/agents/h1/faults?wait=10&version={version}"))
                .header(axum::http::header::AUTHORIZATION, format!("Bearer {cred}"))
                .body(axum::body::Body::empty())
                .expect("request");
            let resp = app.oneshot(req).await.expect("router");
            let bytes = http_body_util::BodyExt::collect(resp.into_body())
                .await
                .expect("body")
                .to_bytes();
            (
                Instant::now(),
                serde_json::from_slice::<DesiredFaults>(&bytes).expect("desired faults"),
            )
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let created_at = Instant::now();
    let f: FaultInfo = r2.create(netem("h1", "eth0")).await.typed();
    let (woken_at, desired) = polled.await.expect("poll");
    let waited = woken_at.duration_since(created_at);
    eprintln!("fault created on replica 2 reached the poll on replica 1 after {waited:?}");
    assert!(waited < Duration::from_secs(1), "woken after {waited:?}");
    assert_eq!(desired.faults.len(), 1, "{desired:?}");
    assert_eq!(desired.faults[0].id, f.id);
    // Its state, reported through r1, shows through r2.
    let report = json!({"statuses": [{"id": f.id, "state": "active", "operations": ["tc qdisc add"]}]});
    let resp = r1
        .api
        .send(
            "POST",
            "/api/v1/agents/h1/faults/status",
            Some(&common::secret_of("h1")),
            Some(("application/json", report.to_string())),
        )
        .await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text);
    eventually("the state through r2", Duration::from_secs(1), async || {
        let got: FaultInfo = r2
            .call("GET", &format!("/api/v1/faults/{}", f.id), VIEWER, None)
            .await
            .typed();
        got.agents.first().is_some_and(|a| a.state.as_str() == "active")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revert_all_and_the_lever_on_either_replica_reach_every_agent() {
    let db = PgCluster::start();
    let (r1, r2) = two(&db, &["h1", "h2"]).await;
    let f: FaultInfo = r1.create(netem("h1", "eth0")).await.typed();
    let g: FaultInfo = r1.create(netem("h2", "eth0")).await.typed();
    eventually("r2 hands both out", Duration::from_secs(1), async || {
        let a: DesiredFaults = r2.poll("h1", "?wait=0").await.typed();
        let b: DesiredFaults = r2.poll("h2", "?wait=0").await.typed();
        a.faults.len() == 1 && b.faults.len() == 1
    })
    .await;
    let epoch = {
        let d: DesiredFaults = r1.poll("h1", "?wait=0").await.typed();
        d.revert_all_epoch
    };
    // Revert-all on r2: agents polling r1 revert everything.
    let resp = r2.call("POST", "/api/v1/faults/revert-all", OPERATOR, None).await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text);
    let took = eventually(
        "r1 hands out the new epoch and nothing",
        Duration::from_secs(1),
        async || {
            let a: DesiredFaults = r1.poll("h1", "?wait=0").await.typed();
            let b: DesiredFaults = r1.poll("h2", "?wait=0").await.typed();
            a.revert_all_epoch > epoch && a.faults.is_empty() && b.faults.is_empty()
        },
    )
    .await;
    eprintln!("revert-all on replica 2 reached replica 1 after {took:?}");
    for id in [&f.id, &g.id] {
        let got: FaultInfo = r1
            .call("GET", &format!("/api/v1/faults/{id}"), VIEWER, None)
            .await
            .typed();
        assert_eq!(got.status.as_str(), "ended", "{got:?}");
    }
    // The lever engaged on r1 refuses new faults on r2.
    let resp = r1
        .call(
            "PUT",
            "/api/v1/safety-lever",
            OPERATOR,
            Some(json!({"engaged": true, "reason": "incident"})),
        )
        .await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text);
    eventually(
        "r2 refuses faults under the lever",
        Duration::from_secs(1),
        async || r2.create(netem("h2", "eth0")).await.status == StatusCode::CONFLICT,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_overlapping_creates_on_two_replicas_at_once_exactly_one_is_created() {
    let db = PgCluster::start();
    let (r1, r2) = two(&db, &["h1"]).await;
    eventually("r2 knows h1", Duration::from_secs(2), async || {
        r2.poll("h1", "?wait=0").await.status == StatusCode::OK
    })
    .await;
    for round in 0..5 {
        let iface = format!("eth{round}");
        let (a, b) = tokio::join!(r1.create(netem("h1", &iface)), r2.create(netem("h1", &iface)));
        let mut statuses = [a.status, b.status];
        statuses.sort();
        assert_eq!(
            statuses,
            [StatusCode::CREATED, StatusCode::CONFLICT],
            "round {round}: {} / {}",
            a.text,
            b.text
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finding_reported_through_one_replica_is_visible_through_the_other_at_once() {
    let db = PgCluster::start();
    let (r1, r2) = two(&db, &["h1"]).await;
    let now = Timestamp::now();
    let subject = "peer h2".to_owned();
    let f = Finding {
        id: finding_id("h1", FindingKind::AsymmetricConnectivity, &subject),
        host: "h1".into(),
        kind: FindingKind::AsymmetricConnectivity,
        subject,
        severity: Severity::Critical,
        state: FindingState::Firing,
        since: now,
        last_seen: now,
        resolved_at: None,
        summary: "one direction silent".into(),
        evidence: BTreeMap::new(),
        runbook: "asymmetric-connectivity".into(),
    };
    let batch = TransitionBatch {
        transitions: vec![FindingTransition {
            transition: TransitionKind::Fired,
            at: now,
            finding: f.clone(),
        }],
    };
    let resp = r1
        .api
        .send(
            "POST",
            "/api/v1/agents/h1/transitions",
            Some(&common::secret_of("h1")),
            Some(("application/json", serde_json::to_string(&batch).expect("json"))),
        )
        .await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text);
    // No waiting: the finding is in the database both read.
    let got = r2
        .call("GET", &format!("/api/v1/findings/{}", f.id), VIEWER, None)
        .await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.text);
    assert_eq!(got.json()["finding"]["state"], "firing", "{}", got.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_replica_leads_and_another_takes_over_within_ten_seconds_when_it_dies() {
    let db = PgCluster::start();
    let (r1, r2) = two(&db, &[]).await;
    eventually("a leader", LEADER_RETRY * 3, async || r1.is_leader() || r2.is_leader()).await;
    // Exactly one, and it stays so.
    tokio::time::sleep(LEADER_RETRY * 2).await;
    assert!(
        r1.is_leader() ^ r2.is_leader(),
        "r1 {} r2 {}",
        r1.is_leader(),
        r2.is_leader()
    );
    let (leader, other) = if r1.is_leader() { (r1, r2) } else { (r2, r1) };
    let died = Instant::now();
    leader.kill();
    let took = eventually("the other replica leads", Duration::from_secs(10), async || {
        other.is_leader()
    })
    .await;
    eprintln!(
        "the other replica became the leader {:?} after the leader died",
        died.elapsed()
    );
    assert!(took < Duration::from_secs(10));
}

/// A game day of one gate: it waits for an operator until resumed.
fn gated(name: &str) -> Value {
    json!({
        "name": name,
        "hypothesis": "a run started anywhere is driven by the leader",
        "targets": {"a": {"agents": ["h1"]}},
        "safety": {"max_duration": "2m"},
        "steps": [{"id": "hold", "gate": {"message": "resume me"}}]
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_started_on_any_replica_are_driven_by_the_leader_and_aborted_from_any() {
    let db = PgCluster::start();
    let (r1, r2) = two(&db, &["h1"]).await;
    eventually("a leader", LEADER_RETRY * 3, async || r1.is_leader() || r2.is_leader()).await;
    let (leader, other) = if r1.is_leader() { (&r1, &r2) } else { (&r2, &r1) };
    for name in ["g1", "g2"] {
        let resp = other
            .call("POST", "/api/v1/gamedays", OPERATOR, Some(gated(name)))
            .await;
        assert_eq!(resp.status, StatusCode::CREATED, "{}", resp.text);
    }
    // Started on the replica that is not the leader: the leader runs it.
    let run: RunInfo = other
        .call("POST", "/api/v1/gamedays/g1/runs", OPERATOR, Some(json!({})))
        .await
        .typed();
    eventually("the leader drives it to its gate", Duration::from_secs(3), async || {
        leader.run_info(&run.id).await.state == RunState::Running
    })
    .await;
    // A second run of it is refused on either replica.
    for r in [leader, other] {
        let resp = r
            .call("POST", "/api/v1/gamedays/g1/runs", OPERATOR, Some(json!({})))
            .await;
        assert_eq!(resp.status, StatusCode::CONFLICT, "{}", resp.text);
    }
    // Resumed through the other replica: the leader passes the gate and completes it.
    eventually("the gate is waited at", Duration::from_secs(3), async || {
        other
            .call(
                "POST",
                &format!("/api/v1/runs/{}/resume", run.id),
                OPERATOR,
                Some(json!({})),
            )
            .await
            .status
            == StatusCode::ACCEPTED
    })
    .await;
    let done = eventually("the run completes", Duration::from_secs(5), async || {
        other.run_info(&run.id).await.outcome == Some(Outcome::Passed)
    })
    .await;
    eprintln!("resumed through the other replica, completed {done:?} later");
    // Aborted through the other replica: the leader ends it as aborted.
    let run2: RunInfo = other
        .call("POST", "/api/v1/gamedays/g2/runs", OPERATOR, Some(json!({})))
        .await
        .typed();
    eventually("g2 runs", Duration::from_secs(3), async || {
        leader.run_info(&run2.id).await.state == RunState::Running
    })
    .await;
    let resp = other
        .call(
            "POST",
            &format!("/api/v1/runs/{}/abort", run2.id),
            OPERATOR,
            Some(json!({"reason": "pager went off"})),
        )
        .await;
    assert_eq!(resp.status, StatusCode::ACCEPTED, "{}", resp.text);
    eventually("g2 aborted by the leader", Duration::from_secs(3), async || {
        let r = other.run_info(&run2.id).await;
        r.outcome == Some(Outcome::Aborted) && r.reason.as_deref().is_some_and(|x| x.contains("pager went off"))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_new_leader_ends_the_run_the_dead_one_drove_and_its_faults() {
    let db = PgCluster::start();
    // Two agents: the run's fault on one is within the blast radius.
    let (r1, r2) = two(&db, &["h1", "h2"]).await;
    eventually("a leader", LEADER_RETRY * 3, async || r1.is_leader() || r2.is_leader()).await;
    let (leader, other) = if r1.is_leader() { (r1, r2) } else { (r2, r1) };
    let spec = json!({
        "name": "long",
        "hypothesis": "a leader's death ends its runs safely",
        "targets": {"a": {"agents": ["h1"]}},
        "safety": {"max_duration": "5m"},
        "steps": [{"id": "blackhole", "fault": {"target": "a", "spec": {"kind": "blackhole", "prefix": "10.9.9.2/32"},
            "duration": "4m"}}]
    });
    let resp = leader.call("POST", "/api/v1/gamedays", OPERATOR, Some(spec)).await;
    assert_eq!(resp.status, StatusCode::CREATED, "{}", resp.text);
    let run: RunInfo = leader
        .call("POST", "/api/v1/gamedays/long/runs", OPERATOR, Some(json!({})))
        .await
        .typed();
    // Its fault reaches h1 through the other replica.
    eventually("h1 is handed the run's fault", Duration::from_secs(3), async || {
        let d: DesiredFaults = other.poll("h1", "?wait=0").await.typed();
        d.faults.len() == 1
    })
    .await;
    leader.kill();
    let took = eventually("the run ends aborted", Duration::from_secs(12), async || {
        other.run_info(&run.id).await.outcome == Some(Outcome::Aborted)
    })
    .await;
    eprintln!("the new leader ended the dead leader's run {took:?} after its death");
    let d: DesiredFaults = other.poll("h1", "?wait=0").await.typed();
    assert!(d.faults.is_empty(), "the run's fault is still handed out: {d:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_database_is_away_readyz_and_writes_answer_503_and_both_recover() {
    let db = PgCluster::start();
    let (r1, _r2) = two(&db, &["h1", "h2"]).await;
    let ready = r1.api.send("GET", "/readyz", None, None).await;
    assert_eq!(ready.status, StatusCode::OK, "{}", ready.text);
    db.pause();
    let t = Instant::now();
    let ready = r1.api.send("GET", "/readyz", None, None).await;
    eprintln!(
        "/readyz answered {} after {:?} with the database away",
        ready.status,
        t.elapsed()
    );
    let (code, detail) = ready.error_parts(StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(code, "not_ready", "{detail}");
    // A write is refused as unavailable, not as an internal error.
    let resp = r1.create(netem("h1", "eth0")).await;
    let (code, detail) = resp.error_parts(StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(code, "unavailable", "{detail}");
    db.resume();
    eventually("ready again", Duration::from_secs(15), async || {
        r1.api.send("GET", "/readyz", None, None).await.status == StatusCode::OK
    })
    .await;
    let created = eventually("a fault is created again", Duration::from_secs(15), async || {
        r1.create(netem("h1", "eth0")).await.status == StatusCode::CREATED
    })
    .await;
    eprintln!("writes accepted again {created:?} after readiness");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credential_reset_on_one_replica_locks_the_agent_out_of_the_other() {
    let db = PgCluster::start();
    let (r1, r2) = two(&db, &["h1"]).await;
    eventually("r2 knows h1 and its credential", Duration::from_secs(2), async || {
        r2.poll("h1", "?wait=0").await.status == StatusCode::OK
    })
    .await;
    let resp = r1.call("DELETE", "/api/v1/agents/h1/credential", OPERATOR, None).await;
    assert_eq!(resp.status, StatusCode::NO_CONTENT, "{}", resp.text);
    let took = eventually("r2 refuses h1's old credential", Duration::from_secs(1), async || {
        r2.poll("h1", "?wait=0").await.status == StatusCode::UNAUTHORIZED
    })
    .await;
    eprintln!("a credential reset on replica 1 reached replica 2 after {took:?}");
}
