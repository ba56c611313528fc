//! In-process tests of the fault endpoints: the real router and a real
//! SQLite database in a temp dir, requests through `tower::ServiceExt::oneshot`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use graydar_common::api::{Capabilities, HeartbeatRequest, RegisterRequest};
use graydar_common::fault_api::{
    CreateFaultRequest, DesiredFaults, FaultInfo, FaultList, FaultStatusReport, FaultStatusUpdate, RevertAllResponse,
    SafetyLever,
};
use graydar_common::faults::FaultState;
use graydar_common::timestamp::Timestamp;
use graydar_controller::agents::Liveness;
use graydar_controller::faults::{FaultConfig, FaultService};
use http_body_util::BodyExt as _;
use serde_json::{Value, json};
use tower::ServiceExt as _;

mod common;
use common::{AGENT, Api, OPERATOR, Resp, VIEWER};

async fn api() -> Api {
    Api::new().await
}

async fn api_with(cfg: FaultConfig) -> Api {
    Api::with_faults(cfg).await
}

impl Resp {
    /// The `detail` of an error response with `status`.
    fn error(&self, status: StatusCode) -> String {
        self.error_parts(status).1
    }
}

impl Api {
    async fn req(&self, method: &str, path: &str, token: &str, body: Option<String>) -> Resp {
        self.send(method, path, Some(token), body.map(|t| ("application/json", t)))
            .await
    }
    async fn post(&self, path: &str, token: &str, body: Value) -> Resp {
        self.req("POST", path, token, Some(body.to_string())).await
    }
    async fn register(&self, host: &str, rack: &str, interfaces: Option<&[&str]>) {
        self.register_at(host, rack, interfaces, &[]).await;
    }
    /// `register` with the addresses the agent registers (what loads aim at).
    async fn register_at(&self, host: &str, rack: &str, interfaces: Option<&[&str]>, addresses: &[&str]) {
        let r = RegisterRequest {
            hostname: host.to_owned(),
            addresses: addresses.iter().map(|s| (*s).to_owned()).collect(),
            labels: BTreeMap::from([("rack".to_owned(), rack.to_owned())]),
            kernel_version: "6.18.0".into(),
            agent_version: "0.1.0".into(),
            capabilities: Capabilities::default(),
            interfaces: interfaces.map(|l| l.iter().map(|s| (*s).to_owned()).collect()),
            dm_devices: Some(vec![]),
            credential_sha256: Some(common::digest_of(host)),
        };
        let resp = self
            .req(
                "POST",
                "/api/v1/agents/register",
                AGENT,
                Some(serde_json::to_string(&r).expect("encode")),
            )
            .await;
        assert_eq!(resp.status, StatusCode::OK, "{}", resp.text);
    }
    async fn create(&self, body: Value) -> Resp {
        self.post("/api/v1/faults", OPERATOR, body).await
    }
    async fn poll(&self, host: &str, query: &str) -> DesiredFaults {
        self.req(
            "GET",
            &format!("/api/v1/agents/{host}/faults{query}"),
            &self.cred(host),
            None,
        )
        .await
        .typed()
    }
    async fn report(&self, host: &str, id: &str, state: FaultState, reason: Option<&str>, ops: &[&str]) {
        let r = FaultStatusReport {
            statuses: vec![FaultStatusUpdate {
                id: id.to_owned(),
                state,
                reason: reason.map(str::to_owned),
                operations: ops.iter().map(|s| (*s).to_owned()).collect(),
                at: None,
            }],
        };
        let resp = self
            .req(
                "POST",
                &format!("/api/v1/agents/{host}/faults/status"),
                &self.cred(host),
                Some(serde_json::to_string(&r).expect("encode")),
            )
            .await;
        assert_eq!(resp.status, StatusCode::OK, "{}", resp.text);
        assert_eq!(resp.json()["accepted"], 1, "{}", resp.text);
    }
}

fn netem(iface: &str) -> Value {
    json!({"kind": "netem", "interface": iface, "netem": {"delay_ms": 100}})
}

/// Four agents: a1, a2 in rack r1 (a1 reports eth0 and lo), a3 in r2, a4 in r3.
async fn fleet() -> Api {
    let a = api().await;
    a.register("a1", "r1", Some(&["eth0", "lo"])).await;
    a.register("a2", "r1", None).await;
    a.register("a3", "r2", None).await;
    a.register("a4", "r3", None).await;
    a
}

#[tokio::test]
async fn invalid_faults_get_a_4xx_that_says_what_is_wrong() {
    let a = fleet().await;
    let cases = [
        (
            json!({"targets": {"agents": ["a1"]}, "spec": {"kind": "netem", "interface": "eth0",
                "netem": {"loss": {"model": "random", "percent": 150}}}, "duration_seconds": 60}),
            "loss.percent must be a percentage between 0 and 100, got 150",
        ),
        (
            json!({"targets": {"agents": ["a1"]}, "spec": {"kind": "netem", "interface": "eth0",
                "netem": {"delay_ms": -5}}, "duration_seconds": 60}),
            "delay_ms must be a duration >= 0 ms, got -5",
        ),
        (
            json!({"targets": {"agents": ["a1", "ghost"]}, "spec": netem("eth0"), "duration_seconds": 60}),
            "unknown agent \"ghost\" (registered: a1, a2, a3, a4)",
        ),
        (
            json!({"targets": {}, "spec": netem("eth0"), "duration_seconds": 60}),
            "targets: empty",
        ),
        (
            json!({"targets": {"agents": ["a1"], "selector": {"rack": "r1"}}, "spec": netem("eth0"), "duration_seconds": 60}),
            "not both",
        ),
        (
            json!({"targets": {"selector": {"rack": "r9"}}, "spec": netem("eth0"), "duration_seconds": 60}),
            "selector rack=r9 matches no registered agent",
        ),
        (
            json!({"targets": {"agents": ["a1"]}, "spec": netem("eth0"), "duration_seconds": 0}),
            "duration_seconds must be > 0, got 0",
        ),
        (
            json!({"targets": {"agents": ["a1"]}, "spec": netem("eth0"), "duration_seconds": -3}),
            "duration_seconds must be > 0, got -3",
        ),
        (
            json!({"targets": {"agents": ["a1"]}, "spec": netem("eth0"), "duration_seconds": 7200}),
            "duration_seconds 7200 is above the maximum of 3600",
        ),
        (
            json!({"targets": {"agents": ["a1"]}, "spec": netem("eth9"), "duration_seconds": 60}),
            "interface \"eth9\" does not exist on agent \"a1\" (it has eth0, lo)",
        ),
        (
            json!({"targets": {"agents": ["a1"]}, "spec": {"kind": "dm", "device": "slow",
                "dm": {"type": "delay", "read_ms": 50}}, "duration_seconds": 60}),
            "dm device \"slow\" does not exist on agent \"a1\" (it has none)",
        ),
        (
            json!({"targets": {"agents": ["a1"]}, "spec": netem("eth0"), "duration_seconds": 60, "lease_seconds": 2}),
            "lease_seconds: 2 is not between 3 and the controller's faults.lease (20 s)",
        ),
        (
            json!({"targets": {"agents": ["a1"]}, "spec": netem("eth0"), "duration_seconds": 60, "lease_seconds": 21}),
            "lease_seconds: 21 is not between 3",
        ),
    ];
    for (body, want) in cases {
        let detail = a.create(body.clone()).await.error(StatusCode::UNPROCESSABLE_ENTITY);
        assert!(detail.contains(want), "{body}: {detail:?} lacks {want:?}");
    }
    // A typo in the spec is named by the parser (422 invalid_body).
    let r = a
        .create(
            json!({"targets": {"agents": ["a1"]}, "spec": {"kind": "netem", "interface": "eth0",
            "netem": {"dealy_ms": 5}}, "duration_seconds": 60}),
        )
        .await;
    assert!(
        r.error(StatusCode::UNPROCESSABLE_ENTITY).contains("dealy_ms"),
        "{}",
        r.text
    );
    // Viewers, the bootstrap token and agents' own credentials may not
    // create, delete or revert-all.
    let body = json!({"targets": {"agents": ["a1"]}, "spec": netem("eth0"), "duration_seconds": 60});
    for token in [VIEWER.to_owned(), AGENT.to_owned(), a.cred("a1")] {
        let token = token.as_str();
        assert_eq!(
            a.post("/api/v1/faults", token, body.clone()).await.status,
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            a.post("/api/v1/faults/revert-all", token, json!({})).await.status,
            StatusCode::FORBIDDEN
        );
    }
    // Nothing was created.
    let l: FaultList = a.req("GET", "/api/v1/faults", VIEWER, None).await.typed();
    assert!(l.faults.is_empty(), "{l:?}");
}

#[tokio::test]
async fn blast_radius_refuses_above_the_share_unless_forced_and_selectors_resolve() {
    let a = fleet().await;
    let three = json!({"targets": {"agents": ["a1", "a2", "a3"]}, "spec": netem("eth0"), "duration_seconds": 60});
    let detail = a.create(three.clone()).await.error(StatusCode::CONFLICT);
    assert!(
        detail
            .contains("3 of 4 alive agents would be under faults (75%; this fault targets 3), above the limit of 50%"),
        "{detail}"
    );
    // rack=r1 is 2 of 4: exactly at the limit, allowed; resolved to a1, a2.
    let r = a
        .create(json!({"targets": {"selector": {"rack": "r1"}}, "spec": netem("lo"), "duration_seconds": 60}))
        .await;
    let f: FaultInfo = r.typed();
    let names: Vec<&str> = f.agents.iter().map(|s| s.agent.as_str()).collect();
    assert_eq!(names, ["a1", "a2"]);
    assert!(f.agents.iter().all(|s| s.state == FaultState::Pending));
    assert_eq!(f.selector.get("rack").map(String::as_str), Some("r1"));
    assert_eq!(f.status, "running");
    let mut forced = three;
    forced["force"] = json!(true);
    let r = a.create(forced).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let f: FaultInfo = r.typed();
    assert!(f.forced);
    assert_eq!(f.agents.len(), 3);
}

#[tokio::test]
async fn the_blast_radius_counts_every_running_fault_together() {
    let a = fleet().await;
    // Each fault alone is one agent of four (25%).
    for host in ["a1", "a2"] {
        let r = a
            .create(json!({"targets": {"agents": [host]}, "spec": netem("eth0"), "duration_seconds": 600}))
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{host}: {}", r.text);
    }
    // a3 would make three of four agents (75%) under faults.
    let a3 = json!({"targets": {"agents": ["a3"]}, "spec": netem("eth0"), "duration_seconds": 600});
    let detail = a.create(a3.clone()).await.error(StatusCode::CONFLICT);
    assert!(
        detail.contains("3 of 4 alive agents would be under faults (75%; this fault targets 1)"),
        "{detail}"
    );
    // Another fault on an agent already under one adds nobody.
    let r = a
        .create(json!({"targets": {"agents": ["a1", "a2"]}, "spec": netem("lo"), "duration_seconds": 600}))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    // A dry run impairs nothing and is exempt.
    let r = a
        .post(
            "/api/v1/faults?wait=0",
            OPERATOR,
            json!({"targets": {"agents": ["a3", "a4"]}, "spec": netem("eth0"), "dry_run": true}),
        )
        .await;
    assert!(r.status.is_success(), "{}", r.text);
    // Once every fault has ended, a3 fits again.
    let r: RevertAllResponse = a.post("/api/v1/faults/revert-all", OPERATOR, json!({})).await.typed();
    assert_eq!(r.faults_ended, 4);
    let r = a.create(a3).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
}

#[tokio::test]
async fn the_blast_radius_counts_alive_agents_only() {
    let a = Api::with(
        FaultConfig::default(),
        Liveness {
            stale_after: Duration::from_millis(300),
            lost_after: Duration::from_millis(600),
        },
    )
    .await;
    for (host, rack) in [("a1", "r1"), ("a2", "r1"), ("a3", "r2"), ("a4", "r3")] {
        a.register(host, rack, None).await;
    }
    // a3 and a4 fall silent and are lost; a1 and a2 heartbeat.
    tokio::time::sleep(Duration::from_millis(800)).await;
    for host in ["a1", "a2"] {
        let r = a
            .post(
                &format!("/api/v1/agents/{host}/heartbeat"),
                &a.cred(host),
                json!({"firing": 0}),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    }
    // a1 and a2 are 2 of 4 registered agents but all of the 2 alive ones.
    let detail = a
        .create(json!({"targets": {"agents": ["a1", "a2"]}, "spec": netem("eth0"), "duration_seconds": 60}))
        .await
        .error(StatusCode::CONFLICT);
    assert!(
        detail.contains("2 of 2 alive agents would be under faults (100%; this fault targets 2)"),
        "{detail}"
    );
    let r = a
        .create(json!({"targets": {"agents": ["a1"]}, "spec": netem("eth0"), "duration_seconds": 60}))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "1 of 2 alive: {}", r.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn of_many_concurrent_overlapping_creates_exactly_one_is_created() {
    let a = fleet().await;
    let body = json!({"targets": {"agents": ["a1", "a2"]}, "spec": netem("eth0"), "duration_seconds": 600});
    let start = std::sync::Arc::new(tokio::sync::Barrier::new(32));
    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let (app, body, start) = (a.app.clone(), body.to_string(), start.clone());
            tokio::spawn(async move {
                let req = Request::builder()
                    .method("POST")
                    .uri("/api/v1/faults")
                    .header(header::AUTHORIZATION, format!("Bearer {OPERATOR}"))
                    .header(header::CONTENT_TYPE, "application/json")
                    .body(Body::from(body))
                    .expect("request");
                start.wait().await;
                let resp = app.oneshot(req).await.expect("router");
                let status = resp.status();
                let bytes = resp.into_body().collect().await.expect("body").to_bytes();
                (status, String::from_utf8_lossy(&bytes).into_owned())
            })
        })
        .collect();
    let mut created = 0;
    for t in tasks {
        let (status, text) = t.await.expect("task");
        match status {
            StatusCode::CREATED => created += 1,
            StatusCode::CONFLICT => assert!(text.contains("\"conflict\""), "{text}"),
            other => panic!("HTTP {other}: {text}"),
        }
    }
    assert_eq!(created, 1, "overlapping faults created at the same time");
    let l: FaultList = a.req("GET", "/api/v1/faults", VIEWER, None).await.typed();
    assert_eq!(l.faults.len(), 1, "{l:?}");
    assert_eq!(a.poll("a1", "?wait=0").await.faults.len(), 1);
}

#[tokio::test]
async fn an_unregistered_agent_cannot_long_poll_and_leaves_nothing_behind() {
    let a = fleet().await;
    let before = a.state.services.faults.watched_agents();
    for i in 0..50 {
        let r = a
            .req(
                "GET",
                &format!("/api/v1/agents/ghost-{i}/faults?wait=0"),
                OPERATOR,
                None,
            )
            .await;
        let (code, detail) = r.error_parts(StatusCode::NOT_FOUND);
        assert_eq!(code, "not_found", "{}", r.text);
        assert!(detail.contains(&format!("ghost-{i}")), "{detail}");
    }
    assert_eq!(
        a.state.services.faults.watched_agents(),
        before,
        "no watcher for names nobody registered"
    );
    // A registered agent gets its set (and a watcher).
    assert!(a.poll("a1", "?wait=0").await.faults.is_empty());
    assert_eq!(a.state.services.faults.watched_agents(), before + 1);
}

/// A load sink is handed out under one id per port, whichever loads need
/// it: loads to the same port coming and going never rename it (a renamed
/// sink is closed and opened again, dropping what arrives in between),
/// and its lease covers the longest of them.
#[tokio::test]
async fn a_sink_keeps_its_id_while_loads_to_its_port_come_and_go() {
    let a = api().await;
    for (h, addr) in [
        ("s1", "10.7.0.1"),
        ("s2", "10.7.0.2"),
        ("r", "10.7.0.9"),
        ("x", "10.7.0.10"),
    ] {
        a.register_at(h, "r1", None, &[addr]).await;
    }
    let sinks = |d: &DesiredFaults| -> Vec<(String, u64)> {
        d.faults
            .iter()
            .filter(|f| f.spec.kind() == graydar_common::faults::FaultKind::LoadSink)
            .map(|f| (f.id.clone(), f.lease_seconds))
            .collect()
    };
    let load = |from: &'static str, spec: Value, secs: u64| {
        let a = &a;
        async move {
            let f: FaultInfo = a
                .create(json!({"targets": {"agents": [from]}, "spec": spec, "duration_seconds": secs}))
                .await
                .typed();
            f.id
        }
    };
    assert!(sinks(&a.poll("r", "?wait=0").await).is_empty(), "no load, no sink");
    let udp = load(
        "s1",
        json!({"kind": "traffic", "to": ["10.7.0.9"], "packets_per_second": 100}),
        5,
    )
    .await;
    let first = sinks(&a.poll("r", "?wait=0").await);
    assert_eq!(first.len(), 1, "{first:?}");
    assert_eq!(first[0].0, "sink-7476");
    // More loads to the same port, from both senders (many ids: some sort
    // before the first one's): still the one sink, under the same id, its
    // lease the longest load's.
    let mut more = Vec::new();
    for i in 0..6 {
        let from = if i % 2 == 0 { "s1" } else { "s2" };
        let spec = if i % 3 == 0 {
            json!({"kind": "burst", "to": "10.7.0.9", "bytes": 4096, "every_ms": 1000})
        } else {
            json!({"kind": "traffic", "to": ["10.7.0.9"], "protocol": "tcp", "packets_per_second": 10})
        };
        let r = a
            .create(json!({"targets": {"agents": [from]}, "spec": spec, "duration_seconds": 600}))
            .await;
        if r.status == StatusCode::CREATED || r.status == StatusCode::OK {
            more.push(r.json()["id"].as_str().expect("id").to_owned());
        }
        let now = sinks(&a.poll("r", "?wait=0").await);
        assert_eq!(now.len(), 1, "{now:?}");
        assert_eq!(now[0].0, "sink-7476", "renamed after load {i}");
    }
    assert!(!more.is_empty(), "at least one more load was created");
    assert_eq!(
        sinks(&a.poll("r", "?wait=0").await)[0].1,
        21,
        "the lease (20 s) and a second"
    );
    // The first load ends: the sink stays, same id; another port is another sink.
    let ended = a.req("DELETE", &format!("/api/v1/faults/{udp}"), OPERATOR, None).await;
    assert_eq!(ended.status, StatusCode::OK, "{}", ended.text);
    assert_eq!(sinks(&a.poll("r", "?wait=0").await)[0].0, "sink-7476");
    load(
        "s1",
        json!({"kind": "traffic", "to": ["10.7.0.9"], "packets_per_second": 10, "port": 7600}),
        60,
    )
    .await;
    let ids: Vec<String> = sinks(&a.poll("r", "?wait=0").await).into_iter().map(|s| s.0).collect();
    assert_eq!(ids, ["sink-7476", "sink-7600"]);
    assert!(
        sinks(&a.poll("x", "?wait=0").await).is_empty(),
        "only the receiver has a sink"
    );
}

#[tokio::test]
async fn agents_long_poll_their_desired_set_and_report_states() {
    let a = fleet().await;
    let first = a.poll("a2", "?wait=0").await;
    assert!(first.faults.is_empty());
    assert_eq!(first.lease_seconds, 20);
    // A waiting poll is woken by the creation, well before its wait.
    let started = Instant::now();
    let app = a.app.clone();
    let version = first.version;
    let a2 = a.cred("a2");
    let waiter = tokio::spawn(async move {
        let req = Request::builder()
            .uri(format!("/api/v1/agents/a2/faults?wait=6&version={version}"))
            .header(header::AUTHORIZATION, format!("Bearer {a2}"))
            .body(Body::empty())
            .expect("request");
        let resp = app.oneshot(req).await.expect("router");
        let bytes = resp.into_body().collect().await.expect("body").to_bytes();
        serde_json::from_slice::<DesiredFaults>(&bytes).expect("desired")
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let f: FaultInfo = a
        .create(json!({"targets": {"agents": ["a2"]}, "spec": netem("eth0"), "duration_seconds": 60}))
        .await
        .typed();
    let woke = waiter.await.expect("waiter");
    assert!(started.elapsed() < Duration::from_secs(5), "the poll was not woken");
    assert_eq!(woke.faults.len(), 1);
    assert_eq!(woke.faults[0].id, f.id);
    assert_eq!(woke.faults[0].lease_seconds, 20, "lease = min(TTL, remaining)");
    assert_ne!(woke.version, version);
    // Other agents are not assigned it.
    assert!(a.poll("a3", "?wait=0").await.faults.is_empty());
    // States reach GET.
    a.report(
        "a2",
        &f.id,
        FaultState::Failed,
        Some("kernel lacks CONFIG_NET_SCH_NETEM"),
        &[],
    )
    .await;
    let got: FaultInfo = a
        .req("GET", &format!("/api/v1/faults/{}", f.id), VIEWER, None)
        .await
        .typed();
    assert_eq!(got.agents[0].state, FaultState::Failed);
    assert_eq!(
        got.agents[0].reason.as_deref(),
        Some("kernel lacks CONFIG_NET_SCH_NETEM")
    );
    // A report for a fault not assigned to the agent is ignored.
    let r = a
        .post(
            "/api/v1/agents/a3/faults/status",
            &a.cred("a3"),
            json!({"statuses": [{"id": f.id, "state": "active"}]}),
        )
        .await;
    assert_eq!(r.json()["ignored"], 1, "{}", r.text);
    // It failed on its only agent: ended `failed` at once, nobody holds it.
    assert_eq!(
        (got.status.as_str(), got.end_reason.as_deref()),
        ("failed", Some("failed"))
    );
    assert!(a.poll("a2", "?wait=0").await.faults.is_empty());
    // DELETE ends one: the desired set is empty again.
    let f: FaultInfo = a
        .create(json!({"targets": {"agents": ["a2"]}, "spec": netem("eth0"), "duration_seconds": 60}))
        .await
        .typed();
    assert_eq!(a.poll("a2", "?wait=0").await.faults.len(), 1);
    let ended: FaultInfo = a
        .req("DELETE", &format!("/api/v1/faults/{}", f.id), OPERATOR, None)
        .await
        .typed();
    assert_eq!(ended.status, "ended");
    assert_eq!(ended.end_reason.as_deref(), Some("deleted"));
    assert!(a.poll("a2", "?wait=0").await.faults.is_empty());
    assert_eq!(
        a.req("DELETE", "/api/v1/faults/nope", OPERATOR, None).await.status,
        StatusCode::NOT_FOUND
    );
    // Heartbeats update the inventory the checks use.
    let hb = HeartbeatRequest {
        firing: 0,
        interfaces: Some(vec!["lo".into()]),
        dm_devices: None,
        clock: None,
    };
    let r = a
        .req(
            "POST",
            "/api/v1/agents/a1/heartbeat",
            &a.cred("a1"),
            Some(serde_json::to_string(&hb).expect("encode")),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let detail = a
        .create(json!({"targets": {"agents": ["a1"]}, "spec": netem("eth0"), "duration_seconds": 60}))
        .await
        .error(StatusCode::UNPROCESSABLE_ENTITY);
    assert!(detail.contains("(it has lo)"), "{detail}");
}

/// A fault that failed on every agent it targets ends `failed` at once,
/// with each agent's reason; one that failed on some of them goes on.
#[tokio::test]
async fn a_fault_that_failed_on_every_agent_ends_failed_at_once_with_their_reasons() {
    let a = fleet().await;
    let f: FaultInfo = a
        .create(json!({"targets": {"agents": ["a2", "a3"]}, "spec": netem("eth9"), "duration_seconds": 600}))
        .await
        .typed();
    a.report(
        "a2",
        &f.id,
        FaultState::Failed,
        Some("eth9: no such network interface"),
        &[],
    )
    .await;
    let got: FaultInfo = a
        .req("GET", &format!("/api/v1/faults/{}", f.id), VIEWER, None)
        .await
        .typed();
    assert_eq!(got.status, "running", "a3 has not answered: {got:?}");
    assert_eq!(a.poll("a3", "?wait=0").await.faults.len(), 1);
    a.report(
        "a3",
        &f.id,
        FaultState::Failed,
        Some("kernel lacks CONFIG_NET_SCH_NETEM"),
        &[],
    )
    .await;
    let got: FaultInfo = a
        .req("GET", &format!("/api/v1/faults/{}", f.id), VIEWER, None)
        .await
        .typed();
    assert_eq!(got.status, "failed", "{got:?}");
    assert_eq!(got.end_reason.as_deref(), Some("failed"));
    assert!(got.ended_at.is_some());
    let reasons: Vec<(&str, Option<&str>)> = got
        .agents
        .iter()
        .map(|x| (x.agent.as_str(), x.reason.as_deref()))
        .collect();
    assert_eq!(
        reasons,
        [
            ("a2", Some("eth9: no such network interface")),
            ("a3", Some("kernel lacks CONFIG_NET_SCH_NETEM"))
        ]
    );
    assert!(a.poll("a3", "?wait=0").await.faults.is_empty(), "nobody holds it");
    // Listed as failed, not as ended; counted in /metrics.
    let ids = |q: &'static str| {
        let a = &a;
        async move {
            a.req("GET", &format!("/api/v1/faults?status={q}"), VIEWER, None)
                .await
                .json()["faults"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .filter_map(|f| f["id"].as_str().map(str::to_owned))
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(ids("failed").await, std::slice::from_ref(&f.id));
    assert!(ids("ended").await.is_empty());
    let metrics = a.req("GET", "/metrics", VIEWER, None).await.text;
    assert!(
        metrics.contains("graydar_controller_faults{state=\"failed\"} 1"),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("faults{"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // A failed fault on one agent and active on the other goes on.
    let g: FaultInfo = a
        .create(json!({"targets": {"agents": ["a2", "a3"]}, "spec": netem("eth0"), "duration_seconds": 600}))
        .await
        .typed();
    a.report("a2", &g.id, FaultState::Failed, Some("no"), &[]).await;
    a.report("a3", &g.id, FaultState::Active, None, &[]).await;
    let got: FaultInfo = a
        .req("GET", &format!("/api/v1/faults/{}", g.id), VIEWER, None)
        .await
        .typed();
    assert_eq!(got.status, "running", "{got:?}");
}

#[tokio::test]
async fn the_agents_time_of_a_state_change_is_kept_beside_the_controllers() {
    let a = fleet().await;
    let f: FaultInfo = a
        .create(json!({"targets": {"agents": ["a1"]}, "spec": netem("eth0"), "duration_seconds": 600}))
        .await
        .typed();
    assert_eq!(f.agents[0].agent_at, None, "nothing reported yet");
    assert!(
        !a.req("GET", &format!("/api/v1/faults/{}", f.id), VIEWER, None)
            .await
            .text
            .contains("agent_at")
    );
    // The agent's clock is 42 minutes behind: its time is kept as it said.
    let applied: Timestamp = "2026-03-01T09:18:00.123Z".parse().expect("time");
    let r = a
        .post(
            "/api/v1/agents/a1/faults/status",
            &a.cred("a1"),
            json!({"statuses": [{"id": f.id, "state": "active", "at": applied.to_string()}]}),
        )
        .await;
    assert_eq!(r.json()["accepted"], 1, "{}", r.text);
    let got: FaultInfo = a
        .req("GET", &format!("/api/v1/faults/{}", f.id), VIEWER, None)
        .await
        .typed();
    let s = &got.agents[0];
    assert_eq!((s.state, s.agent_at), (FaultState::Active, Some(applied)));
    assert!(
        s.updated_at >= f.created_at,
        "updated_at stays the controller's receipt time"
    );
    // It is stored: a restarted controller answers it too.
    let reopened = FaultService::open(a.store.clone(), FaultConfig::default())
        .await
        .expect("reopen");
    let info = reopened.get(&f.id).await.expect("fault");
    assert_eq!(info.agents[0].agent_at, Some(applied));
    // A report without a time (an older agent) leaves the new state's time unknown.
    a.report("a1", &f.id, FaultState::Reverted, None, &[]).await;
    let got: FaultInfo = a
        .req("GET", &format!("/api/v1/faults/{}", f.id), VIEWER, None)
        .await
        .typed();
    assert_eq!(
        (got.agents[0].state, got.agents[0].agent_at),
        (FaultState::Reverted, None)
    );
    // The list shows it as GET does.
    let r = a
        .post(
            "/api/v1/agents/a1/faults/status",
            &a.cred("a1"),
            json!({"statuses": [{"id": f.id, "state": "reverted", "at": "2026-03-01T09:19:00Z"}]}),
        )
        .await;
    assert_eq!(r.json()["accepted"], 1, "{}", r.text);
    let list: FaultList = a.req("GET", "/api/v1/faults", VIEWER, None).await.typed();
    let listed = list.faults.iter().find(|x| x.id == f.id).expect("listed");
    assert_eq!(
        listed.agents[0].agent_at.map(|t| t.to_string()),
        Some("2026-03-01T09:19:00Z".parse::<Timestamp>().expect("time").to_string())
    );
    // A time that is no RFC 3339 is refused, and nothing changes.
    let r = a
        .post(
            "/api/v1/agents/a1/faults/status",
            &a.cred("a1"),
            json!({"statuses": [{"id": f.id, "state": "active", "at": "yesterday"}]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text);
}

#[tokio::test]
async fn revert_all_ends_every_fault_and_bumps_the_epoch() {
    let a = fleet().await;
    let before = a.poll("a1", "?wait=0").await;
    let mut ids = Vec::new();
    for host in ["a1", "a2"] {
        let f: FaultInfo = a
            .create(json!({"targets": {"agents": [host]}, "spec": netem("eth0"), "duration_seconds": 600}))
            .await
            .typed();
        ids.push(f.id);
    }
    assert_eq!(a.poll("a1", "?wait=0").await.faults.len(), 1);
    let r: RevertAllResponse = a.post("/api/v1/faults/revert-all", OPERATOR, json!({})).await.typed();
    assert_eq!(r.faults_ended, 2);
    assert_eq!(r.revert_all_epoch, before.revert_all_epoch + 1);
    let l: FaultList = a.req("GET", "/api/v1/faults", VIEWER, None).await.typed();
    assert_eq!(l.faults.len(), 2);
    for f in &l.faults {
        assert_eq!(f.status, "ended", "{f:?}");
        assert_eq!(f.end_reason.as_deref(), Some("revert_all"));
    }
    for host in ["a1", "a2", "a3"] {
        let d = a.poll(host, "?wait=0").await;
        assert!(d.faults.is_empty(), "{host}: {d:?}");
        assert_eq!(d.revert_all_epoch, r.revert_all_epoch);
    }
    let metrics = a.req("GET", "/metrics", VIEWER, None).await.text;
    assert!(
        metrics.contains("graydar_controller_faults{state=\"ended\"} 2"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_dry_run_returns_the_agents_operations() {
    let a = fleet().await;
    // No agent answers: 202 after the wait, the id to poll.
    let r = a
        .post(
            "/api/v1/faults?wait=1",
            OPERATOR,
            json!({"targets": {"agents": ["a1", "a2", "a3"]}, "spec": netem("eth0"), "dry_run": true}),
        )
        .await;
    assert_eq!(
        r.status,
        StatusCode::ACCEPTED,
        "a dry run is exempt from the blast radius: {}",
        r.text
    );
    let f: FaultInfo = r.typed();
    assert_eq!(f.status, "dry_run");
    let d = a.poll("a1", "?wait=0").await;
    assert!(d.faults.iter().any(|x| x.id == f.id && x.dry_run));
    a.report(
        "a1",
        &f.id,
        FaultState::Described,
        None,
        &["RTM_NEWQDISC dev eth0 root netem delay 100ms"],
    )
    .await;
    // Once described it leaves the agent's desired set.
    assert!(a.poll("a1", "?wait=0").await.faults.is_empty());
    let got: FaultInfo = a
        .req("GET", &format!("/api/v1/faults/{}", f.id), VIEWER, None)
        .await
        .typed();
    assert_eq!(
        got.agents[0].operations,
        ["RTM_NEWQDISC dev eth0 root netem delay 100ms"]
    );
    // Answers that arrive while the POST waits make it a 200.
    let app = a.app.clone();
    let creator = tokio::spawn(async move {
        let req = Request::builder()
            .method("POST")
            .uri("/api/v1/faults?wait=10")
            .header(header::AUTHORIZATION, format!("Bearer {OPERATOR}"))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(
                json!({"targets": {"agents": ["a4"]}, "spec": netem("eth0"), "dry_run": true}).to_string(),
            ))
            .expect("request");
        let resp = app.oneshot(req).await.expect("router");
        let status = resp.status();
        let bytes = resp.into_body().collect().await.expect("body").to_bytes();
        (status, serde_json::from_slice::<FaultInfo>(&bytes).expect("fault"))
    });
    let id = loop {
        if let Some(x) = a.poll("a4", "?wait=0").await.faults.first() {
            break x.id.clone();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    a.report("a4", &id, FaultState::Described, None, &["op 1", "op 2"])
        .await;
    let (status, f) = creator.await.expect("creator");
    assert_eq!(status, StatusCode::OK);
    assert_eq!(f.agents[0].state, FaultState::Described);
    assert_eq!(f.agents[0].operations, ["op 1", "op 2"]);
}

#[tokio::test]
async fn openapi_lists_the_fault_endpoints() {
    let a = api().await;
    let doc = a.req("GET", "/api/v1/openapi.json", VIEWER, None).await.json();
    for p in [
        "/api/v1/faults",
        "/api/v1/faults/{id}",
        "/api/v1/faults/revert-all",
        "/api/v1/agents/{hostname}/faults",
        "/api/v1/agents/{hostname}/faults/status",
    ] {
        assert!(doc["paths"][p].is_object(), "{p} missing from the OpenAPI document");
    }
}

#[tokio::test]
async fn a_second_fault_on_the_same_target_of_an_agent_is_a_conflict() {
    let a = fleet().await;
    let first: FaultInfo = a
        .create(json!({"targets": {"agents": ["a1"]}, "spec": netem("eth0"), "duration_seconds": 600}))
        .await
        .typed();
    // Same agent, same interface and direction: 409 naming the running fault.
    let e = a
        .create(json!({"targets": {"agents": ["a1", "a2"]}, "spec": netem("eth0"), "duration_seconds": 60}))
        .await
        .error(StatusCode::CONFLICT);
    assert!(e.contains("\"a1\"") && e.contains(&first.id), "{e}");
    // Another interface, the other direction, or another agent: fine.
    for body in [
        json!({"targets": {"agents": ["a1"]}, "spec": netem("lo"), "duration_seconds": 60}),
        json!({"targets": {"agents": ["a1"]}, "spec": {"kind": "netem", "interface": "eth0", "direction": "ingress",
            "netem": {"delay_ms": 5}}, "duration_seconds": 60}),
        json!({"targets": {"agents": ["a2"]}, "spec": netem("eth0"), "duration_seconds": 60}),
    ] {
        let r = a.create(body.clone()).await;
        assert_eq!(r.status, StatusCode::CREATED, "{body}: {}", r.text);
    }
    // Once the first one is reverted, the target is free again.
    let d = a
        .req("DELETE", &format!("/api/v1/faults/{}", first.id), OPERATOR, None)
        .await;
    assert_eq!(d.status, StatusCode::OK, "{}", d.text);
    let r = a
        .create(json!({"targets": {"agents": ["a1"]}, "spec": netem("eth0"), "duration_seconds": 60}))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
}

#[tokio::test]
async fn states_nobody_confirmed_settle_once_a_lease_has_passed_after_the_end() {
    let a = api_with(FaultConfig {
        lease: Duration::from_millis(800),
        max_target_share: 1.0,
        ..FaultConfig::default()
    })
    .await;
    a.register("a1", "r1", None).await;
    a.register("a2", "r1", None).await;
    let f: FaultInfo = a
        .create(json!({"targets": {"agents": ["a1", "a2"]}, "spec": netem("eth0"), "duration_seconds": 600}))
        .await
        .typed();
    a.report("a1", &f.id, FaultState::Active, None, &[]).await;
    let d = a
        .req("DELETE", &format!("/api/v1/faults/{}", f.id), OPERATOR, None)
        .await;
    assert_eq!(d.status, StatusCode::OK, "{}", d.text);
    let state_of = |info: &FaultInfo, host: &str| {
        let s = info.agents.iter().find(|s| s.agent == host).expect("agent listed");
        (s.state, s.reason.clone().unwrap_or_default())
    };
    // Within the lease the controller shows what the agents last said.
    let now: FaultInfo = a
        .req("GET", &format!("/api/v1/faults/{}", f.id), VIEWER, None)
        .await
        .typed();
    assert_eq!(state_of(&now, "a1").0, FaultState::Active);
    assert_eq!(state_of(&now, "a2").0, FaultState::Pending);
    // A lease later, silence means the agent's own timer reverted it.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let later: FaultInfo = a
        .req("GET", &format!("/api/v1/faults/{}", f.id), VIEWER, None)
        .await
        .typed();
    let (s1, r1) = state_of(&later, "a1");
    assert_eq!(s1, FaultState::Reverted, "{later:?}");
    assert!(r1.contains("not confirmed"), "{r1}");
    let (s2, r2) = state_of(&later, "a2");
    assert_eq!(s2, FaultState::Reverted, "{later:?}");
    assert!(r2.contains("never applied"), "{r2}");
    // A confirmed state is never rewritten.
    a.report("a1", &f.id, FaultState::Reverted, None, &[]).await;
    let fin: FaultInfo = a
        .req("GET", &format!("/api/v1/faults/{}", f.id), VIEWER, None)
        .await
        .typed();
    assert_eq!(state_of(&fin, "a1"), (FaultState::Reverted, String::new()));
}

#[tokio::test]
async fn settled_faults_leave_memory_and_stay_in_the_history() {
    let a = api_with(FaultConfig {
        lease: Duration::from_millis(600),
        max_target_share: 1.0,
        ..FaultConfig::default()
    })
    .await;
    a.register("a1", "r1", None).await;
    a.register("a2", "r1", None).await;
    let mut ids = Vec::new();
    for iface in ["eth0", "eth1", "eth2"] {
        let f: FaultInfo = a
            .create(json!({"targets": {"agents": ["a1"]}, "spec": netem(iface), "duration_seconds": 600}))
            .await
            .typed();
        ids.push(f.id);
        tokio::time::sleep(Duration::from_millis(5)).await; // distinct created_ms
    }
    a.report("a1", &ids[0], FaultState::Active, None, &[]).await;
    for id in &ids[..2] {
        let d = a.req("DELETE", &format!("/api/v1/faults/{id}"), OPERATOR, None).await;
        assert_eq!(d.status, StatusCode::OK, "{}", d.text);
    }
    let faults = &a.state.services.faults;
    faults.expire().await.expect("expire");
    assert_eq!(faults.live_faults(), 3, "ended less than a lease ago: still live");
    tokio::time::sleep(Duration::from_millis(700)).await;
    faults.expire().await.expect("expire");
    assert_eq!(
        faults.live_faults(),
        1,
        "a lease after the end the two deleted faults leave memory"
    );

    // The history is still there, newest first, from the database.
    let list = |q: &'static str| {
        let a = &a;
        async move {
            let l: FaultList = a.req("GET", &format!("/api/v1/faults{q}"), VIEWER, None).await.typed();
            l.faults.iter().map(|f| f.id.clone()).collect::<Vec<_>>()
        }
    };
    let newest_first: Vec<String> = ids.iter().rev().cloned().collect();
    assert_eq!(list("").await, newest_first);
    assert_eq!(list("?status=running").await, [ids[2].clone()]);
    assert_eq!(list("?status=ended").await, [ids[1].clone(), ids[0].clone()]);
    assert_eq!(list("?limit=1").await, [ids[2].clone()]);
    assert_eq!(list("?status=ended&limit=1").await, [ids[1].clone()]);
    let e = a.req("GET", "/api/v1/faults?limit=0", VIEWER, None).await;
    assert!(
        e.error(StatusCode::BAD_REQUEST)
            .contains("limit must be 1..=10000, got 0"),
        "{}",
        e.text
    );
    let e = a.req("GET", "/api/v1/faults?status=gone", VIEWER, None).await;
    assert_eq!(e.status, StatusCode::BAD_REQUEST, "{}", e.text);
    assert!(e.text.contains("gone"), "{}", e.text);

    // One out of memory: read back with its settled state.
    let old: FaultInfo = a
        .req("GET", &format!("/api/v1/faults/{}", ids[0]), VIEWER, None)
        .await
        .typed();
    assert_eq!(old.status, "ended");
    assert_eq!(old.end_reason.as_deref(), Some("deleted"));
    let a1 = old.agents.iter().find(|s| s.agent == "a1").expect("a1");
    assert_eq!(a1.state, FaultState::Reverted);
    assert!(
        a1.reason.as_deref().unwrap_or_default().contains("not confirmed"),
        "{a1:?}"
    );
    // Deleting it again changes nothing (idempotent, also out of memory).
    let d: FaultInfo = a
        .req("DELETE", &format!("/api/v1/faults/{}", ids[0]), OPERATOR, None)
        .await
        .typed();
    assert_eq!((d.status.as_str(), d.ended_at), ("ended", old.ended_at));
    let e = a.req("DELETE", "/api/v1/faults/flt-000000000000", OPERATOR, None).await;
    assert_eq!(e.status, StatusCode::NOT_FOUND, "{}", e.text);
    // A late confirmation still lands in the history; another agent's does not.
    a.report("a1", &ids[0], FaultState::Reverted, None, &[]).await;
    let old: FaultInfo = a
        .req("GET", &format!("/api/v1/faults/{}", ids[0]), VIEWER, None)
        .await
        .typed();
    let a1 = old.agents.iter().find(|s| s.agent == "a1").expect("a1");
    assert_eq!((a1.state, a1.reason.as_deref()), (FaultState::Reverted, None));
    let stray = FaultStatusReport {
        statuses: vec![FaultStatusUpdate {
            id: ids[0].clone(),
            state: FaultState::Reverted,
            reason: None,
            operations: vec![],
            at: None,
        }],
    };
    let r = a
        .req(
            "POST",
            "/api/v1/agents/a2/faults/status",
            &a.cred("a2"),
            Some(serde_json::to_string(&stray).expect("encode")),
        )
        .await;
    assert_eq!(
        (r.json()["accepted"].as_u64(), r.json()["ignored"].as_u64()),
        (Some(0), Some(1)),
        "{}",
        r.text
    );
    let e = a.req("GET", "/api/v1/faults/flt-000000000000", VIEWER, None).await;
    assert_eq!(e.status, StatusCode::NOT_FOUND, "{}", e.text);

    // A restarted controller loads only the live fault, and lists them all.
    let cfg = FaultConfig {
        lease: Duration::from_millis(600),
        max_target_share: 1.0,
        ..FaultConfig::default()
    };
    let reopened = FaultService::open(a.store.clone(), cfg).await.expect("reopen");
    assert_eq!(reopened.live_faults(), 1);
    let all = reopened.list(None, 10).await.expect("list");
    assert_eq!(all.iter().map(|f| f.id.clone()).collect::<Vec<_>>(), newest_first);

    // Metrics count the whole history.
    let m = a.req("GET", "/metrics", VIEWER, None).await;
    assert!(
        m.text.contains("graydar_controller_faults{state=\"ended\"} 2"),
        "{}",
        m.text
    );
    assert!(
        m.text.contains("graydar_controller_faults{state=\"running\"} 1"),
        "{}",
        m.text
    );
}

#[tokio::test]
async fn the_safety_lever_reverts_every_fault_refuses_new_ones_and_survives_a_restart() {
    let a = fleet().await;
    let lever: SafetyLever = a.req("GET", "/api/v1/safety-lever", VIEWER, None).await.typed();
    assert!(!lever.engaged && lever.since.is_none(), "{lever:?}");
    let f: FaultInfo = a
        .create(json!({"targets": {"agents": ["a1"]}, "spec": netem("eth0"), "duration_seconds": 600}))
        .await
        .typed();
    let epoch = a.poll("a1", "?wait=0").await.revert_all_epoch;

    // Only an operator pulls it; a reason too long is refused and changes nothing.
    let engage = json!({"engaged": true, "reason": "payments incident INC-42"});
    let r = a
        .req("PUT", "/api/v1/safety-lever", VIEWER, Some(engage.to_string()))
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
    let long = json!({"engaged": true, "reason": "x".repeat(501)});
    let r = a
        .req("PUT", "/api/v1/safety-lever", OPERATOR, Some(long.to_string()))
        .await;
    assert!(
        r.error(StatusCode::UNPROCESSABLE_ENTITY).contains("reason"),
        "{}",
        r.text
    );
    assert!(a.poll("a1", "?wait=0").await.faults.len() == 1, "still running");

    // Engaged: the running fault ends as by revert-all, agents see a new epoch.
    let on: SafetyLever = a
        .req("PUT", "/api/v1/safety-lever", OPERATOR, Some(engage.to_string()))
        .await
        .typed();
    assert!(on.engaged, "{on:?}");
    assert_eq!(on.reason.as_deref(), Some("payments incident INC-42"));
    assert_eq!(on.revert_all.as_ref().map(|r| r.faults_ended), Some(1), "{on:?}");
    let d = a.poll("a1", "?wait=0").await;
    assert!(d.faults.is_empty(), "{d:?}");
    assert_eq!(d.revert_all_epoch, epoch + 1);
    let ended: FaultInfo = a
        .req("GET", &format!("/api/v1/faults/{}", f.id), VIEWER, None)
        .await
        .typed();
    assert_eq!(ended.end_reason.as_deref(), Some("revert_all"), "{ended:?}");

    // New faults are refused with 409 naming the lever; a dry run still answers.
    let fresh = json!({"targets": {"agents": ["a2"]}, "spec": netem("eth0"), "duration_seconds": 60});
    let detail = a.create(fresh.clone()).await.error(StatusCode::CONFLICT);
    assert!(
        detail.contains("safety lever is engaged") && detail.contains("INC-42"),
        "{detail}"
    );
    let mut dry = fresh.clone();
    dry["dry_run"] = json!(true);
    let r = a
        .req("POST", "/api/v1/faults?wait=0", OPERATOR, Some(dry.to_string()))
        .await;
    assert!(
        r.status.is_success(),
        "a dry run applies nothing: {} {}",
        r.status,
        r.text
    );
    let metrics = a.req("GET", "/metrics", VIEWER, None).await.text;
    assert!(
        metrics.contains("graydar_controller_safety_lever_engaged 1"),
        "{metrics}"
    );

    // Pulling it again keeps the first time and reason.
    let again: SafetyLever = a
        .req(
            "PUT",
            "/api/v1/safety-lever",
            OPERATOR,
            Some(json!({"engaged": true}).to_string()),
        )
        .await
        .typed();
    assert_eq!((again.since, again.reason.clone()), (on.since, on.reason.clone()));

    // A restarted controller (same database) still has it engaged and refuses.
    let cfg = FaultConfig::default();
    let reopened = FaultService::open(a.store.clone(), cfg).await.expect("reopen");
    assert_eq!(reopened.safety_lever().since, on.since);
    let agents = a.state.services.agents.list().await.expect("agents");
    let req: CreateFaultRequest = serde_json::from_value(fresh.clone()).expect("request");
    assert!(
        matches!(
            reopened.create(req, &agents).await,
            Err(graydar_controller::faults::FaultError::SafetyLever { .. })
        ),
        "a restarted controller accepted a fault with the lever engaged"
    );

    // Released: faults are accepted again, also after a restart.
    let off: SafetyLever = a
        .req(
            "PUT",
            "/api/v1/safety-lever",
            OPERATOR,
            Some(json!({"engaged": false}).to_string()),
        )
        .await
        .typed();
    assert!(!off.engaged && off.reason.is_none(), "{off:?}");
    assert_eq!(a.create(fresh).await.status, StatusCode::CREATED);
    let reopened = FaultService::open(a.store.clone(), cfg).await.expect("reopen");
    assert!(!reopened.safety_lever().engaged);
    let metrics = a.req("GET", "/metrics", VIEWER, None).await.text;
    assert!(
        metrics.contains("graydar_controller_safety_lever_engaged 0"),
        "{metrics}"
    );
}

/// The controller stopped after storing the lever and before its revert-all:
/// the next start finishes the revert-all.
#[tokio::test]
async fn a_lever_stored_without_its_revert_all_is_finished_at_the_next_start() {
    use graydar_controller::store::LeverRecord;
    let a = fleet().await;
    let f: FaultInfo = a
        .create(json!({"targets": {"agents": ["a1"]}, "spec": netem("eth0"), "duration_seconds": 600}))
        .await
        .typed();
    let lever = LeverRecord {
        engaged_ms: 1_700_000_000_000,
        reason: "engaged, then the controller died".into(),
    };
    a.store.set_safety_lever(Some(&lever)).await.expect("store the lever");
    let reopened = FaultService::open(a.store.clone(), FaultConfig::default())
        .await
        .expect("reopen");
    assert!(reopened.safety_lever().engaged);
    let info = reopened.get(&f.id).await.expect("fault");
    assert_eq!(info.status, "ended", "{info:?}");
    assert_eq!(info.end_reason.as_deref(), Some("revert_all"), "{info:?}");
    assert!(reopened.poll("a1", None, Duration::ZERO).await.faults.is_empty());
}

/// A fault with its own (shorter) lease: the agents get it with that lease,
/// and their long poll is cut to a third of it so they renew in time.
#[tokio::test]
async fn a_fault_with_its_own_lease_is_handed_out_with_it_and_polled_within_a_third_of_it() {
    let a = fleet().await;
    let first = a.poll("a2", "?wait=0").await;
    let f: FaultInfo = a
        .create(
            json!({"targets": {"agents": ["a2"]}, "spec": netem("eth0"), "duration_seconds": 60,
            "lease_seconds": 6}),
        )
        .await
        .typed();
    assert_eq!(f.lease_seconds, Some(6));
    let got = a.poll("a2", &format!("?wait=0&version={}", first.version)).await;
    assert_eq!(got.faults.len(), 1);
    assert_eq!(got.faults[0].lease_seconds, 6, "the fault's own lease");
    // Nothing changes: the poll still answers after 6 / 3 = 2 s, not 15 s.
    let started = Instant::now();
    let again = a.poll("a2", &format!("?wait=15&version={}", got.version)).await;
    let waited = started.elapsed();
    assert_eq!(again.version, got.version);
    assert!(
        waited >= Duration::from_millis(1500) && waited < Duration::from_secs(5),
        "poll answered after {waited:?}"
    );
    // Another agent, with no such fault, keeps the controller's lease.
    let other: FaultInfo = a
        .create(json!({"targets": {"agents": ["a3"]}, "spec": netem("eth0"), "duration_seconds": 60}))
        .await
        .typed();
    assert_eq!(other.lease_seconds, None);
    let got = a.poll("a3", "?wait=0").await;
    assert_eq!(got.faults[0].lease_seconds, 20);
}
