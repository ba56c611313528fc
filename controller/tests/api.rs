//! In-process tests of every endpoint: the real router and a real SQLite
//! database in a temp dir, requests through `tower::ServiceExt::oneshot`.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use graydar_common::api::{
    AgentInfo, AgentList, AgentState, BatchResponse, Capabilities, ClockOffsetInfo, Evidence, Finding, FindingDetail,
    FindingKind, FindingList, FindingState, FindingTransition, HeartbeatResponse, RegisterRequest, RegisterResponse,
    Severity, Timestamp, TransitionBatch, TransitionKind, finding_id,
};
use graydar_controller::agents::AgentService;
use graydar_controller::api::{DEFAULT_MAX_BODY, MAX_BATCH};
use graydar_controller::store::{SqliteStore, Store};
use graydar_controller::timefmt::now_ms;
use serde_json::json;
use tower::ServiceExt as _;

mod common;
use common::{AGENT, Api, OPERATOR, Resp, VIEWER, liveness};

async fn api() -> Api {
    Api::new().await
}

impl Resp {
    /// Asserts an error response with the JSON shape and the given status;
    /// returns the error code.
    fn error(&self, status: StatusCode) -> String {
        self.error_parts(status).0
    }
}

impl Api {
    async fn req(&self, method: &str, path: &str, token: Option<&str>, body: Option<(&str, &str)>) -> Resp {
        self.send(method, path, token, body.map(|(c, t)| (c, t.to_owned())))
            .await
    }
    async fn get(&self, path: &str, token: &str) -> Resp {
        self.req("GET", path, Some(token), None).await
    }
    async fn post(&self, path: &str, token: &str, body: &str) -> Resp {
        self.req("POST", path, Some(token), Some(("application/json", body)))
            .await
    }
    async fn post_json<T: serde::Serialize>(&self, path: &str, token: &str, body: &T) -> Resp {
        self.post(path, token, &serde_json::to_string(body).expect("encode"))
            .await
    }
    async fn register(&self, host: &str) -> RegisterResponse {
        self.post_json("/api/v1/agents/register", AGENT, &register_req(host))
            .await
            .typed()
    }
    async fn push(&self, host: &str, ts: &[FindingTransition]) -> Resp {
        self.post_json(
            &format!("/api/v1/agents/{host}/transitions"),
            &self.cred(host),
            &TransitionBatch {
                transitions: ts.to_vec(),
            },
        )
        .await
    }
}

fn register_req(host: &str) -> RegisterRequest {
    RegisterRequest {
        hostname: host.to_owned(),
        addresses: vec!["10.0.0.1".into()],
        labels: BTreeMap::from([("rack".to_owned(), "r1".to_owned())]),
        kernel_version: "6.18.0".into(),
        agent_version: "0.1.0".into(),
        capabilities: Capabilities {
            ebpf: true,
            sch_netem: false,
            device_mapper: false,
            ..Default::default()
        },
        interfaces: None,
        dm_devices: None,
        credential_sha256: Some(common::digest_of(host)),
    }
}

fn ts(s: &str) -> Timestamp {
    s.parse().expect("an RFC 3339 time")
}

fn finding(host: &str, subject: &str, state: FindingState, since: &str, resolved_at: Option<&str>) -> Finding {
    let kind = FindingKind::KernelDrops;
    Finding {
        id: finding_id(host, kind, subject),
        host: host.to_owned(),
        kind,
        subject: subject.to_owned(),
        severity: Severity::Warning,
        state,
        since: ts(since),
        last_seen: ts(resolved_at.unwrap_or(since)),
        resolved_at: resolved_at.map(ts),
        summary: format!("{subject}: drops"),
        evidence: BTreeMap::from([("short_ratio".to_owned(), Evidence::Number(0.05))]),
        runbook: kind.runbook(),
    }
}

fn fired(host: &str, subject: &str, since: &str) -> FindingTransition {
    FindingTransition {
        transition: TransitionKind::Fired,
        at: ts(since),
        finding: finding(host, subject, FindingState::Firing, since, None),
    }
}

fn resolved(host: &str, subject: &str, since: &str, at: &str) -> FindingTransition {
    FindingTransition {
        transition: TransitionKind::Resolved,
        at: ts(at),
        finding: finding(host, subject, FindingState::Resolved, since, Some(at)),
    }
}

const T0: &str = "2026-01-01T00:00:00Z";
const T1: &str = "2026-01-01T00:00:30.5Z";
const T2: &str = "2026-01-01T00:05:00Z";

#[tokio::test]
async fn migrations_run_on_an_empty_database_and_again_on_reopen() {
    let dir = tempfile::tempdir().expect("temp dir");
    assert!(!dir.path().join("graydar.db").exists());
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(dir.path()).await.expect("migrate an empty db"));
    assert_eq!(store.transition_count().await.expect("count"), 0);
    let agents = AgentService::open(store.clone(), liveness()).await.expect("agents");
    assert!(agents.list().await.expect("agents").is_empty());
    agents.register(register_req("n1")).await.expect("register");
    store.close().await;
    // Reopening runs the (already applied) migrations again and keeps the data.
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(dir.path()).await.expect("reopen"));
    let agents = AgentService::open(store.clone(), liveness()).await.expect("agents");
    assert_eq!(agents.list().await.expect("agents").len(), 1);
    store.close().await;
}

#[tokio::test]
async fn health_needs_no_token_and_unknown_paths_are_json_404() {
    let a = api().await;
    let r = a.req("GET", "/healthz", None, None).await;
    assert_eq!((r.status, r.text.as_str()), (StatusCode::OK, "ok\n"));
    let r = a.req("GET", "/readyz", None, None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        a.get("/api/v1/nothing", VIEWER).await.error(StatusCode::NOT_FOUND),
        "not_found"
    );
    assert_eq!(
        a.req("DELETE", "/api/v1/agents", Some(OPERATOR), None)
            .await
            .error(StatusCode::METHOD_NOT_ALLOWED),
        "method_not_allowed"
    );
}

#[tokio::test]
async fn every_api_endpoint_needs_a_valid_token() {
    let a = api().await;
    let endpoints = [
        ("POST", "/api/v1/agents/register"),
        ("POST", "/api/v1/agents/n1/heartbeat"),
        ("POST", "/api/v1/agents/n1/transitions"),
        ("GET", "/api/v1/agents"),
        ("GET", "/api/v1/agents/n1"),
        ("GET", "/api/v1/findings"),
        ("GET", "/api/v1/findings/0123456789abcdef"),
        ("GET", "/api/v1/openapi.json"),
        ("GET", "/metrics"),
    ];
    for (method, path) in endpoints {
        let body = (method == "POST").then_some(("application/json", "{}"));
        let r = a.req(method, path, None, body).await;
        assert_eq!(
            r.error(StatusCode::UNAUTHORIZED),
            "unauthorized",
            "{method} {path} without token"
        );
        assert_eq!(
            r.headers.get(header::WWW_AUTHENTICATE).and_then(|v| v.to_str().ok()),
            Some("Bearer")
        );
        let r = a.req(method, path, Some("wrong-token-0123456789"), body).await;
        assert_eq!(
            r.error(StatusCode::UNAUTHORIZED),
            "unauthorized",
            "{method} {path} wrong token"
        );
        // Right token, wrong scheme.
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(header::AUTHORIZATION, format!("Basic {OPERATOR}"));
        if body.is_some() {
            req = req.header(header::CONTENT_TYPE, "application/json");
        }
        let resp = a
            .app
            .clone()
            .oneshot(req.body(Body::from(body.map_or("", |b| b.1))).expect("req"))
            .await
            .expect("router");
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{method} {path} basic scheme");
    }
}

#[tokio::test]
async fn roles_are_enforced_with_403() {
    let a = api().await;
    let reg = serde_json::to_string(&register_req("n1")).expect("json");
    // viewer cannot report
    let r = a.post("/api/v1/agents/register", VIEWER, &reg).await;
    assert_eq!(r.error(StatusCode::FORBIDDEN), "forbidden");
    assert_eq!(
        a.post("/api/v1/agents/n1/heartbeat", VIEWER, "{}")
            .await
            .error(StatusCode::FORBIDDEN),
        "forbidden"
    );
    assert_eq!(
        a.post("/api/v1/agents/n1/transitions", VIEWER, r#"{"transitions":[]}"#)
            .await
            .error(StatusCode::FORBIDDEN),
        "forbidden"
    );
    // agent cannot read
    for path in [
        "/api/v1/agents",
        "/api/v1/agents/n1",
        "/api/v1/findings",
        "/api/v1/findings/x",
        "/metrics",
    ] {
        assert_eq!(
            a.get(path, AGENT).await.error(StatusCode::FORBIDDEN),
            "forbidden",
            "{path}"
        );
    }
    // operator can do both
    assert_eq!(
        a.post("/api/v1/agents/register", OPERATOR, &reg).await.status,
        StatusCode::OK
    );
    assert_eq!(a.get("/api/v1/agents", OPERATOR).await.status, StatusCode::OK);
    // any valid token reads the OpenAPI document
    assert_eq!(a.get("/api/v1/openapi.json", AGENT).await.status, StatusCode::OK);
}

#[tokio::test]
async fn register_list_and_get_agents() {
    let a = api().await;
    let r = a.register("n1").await;
    assert_eq!(r.heartbeat_interval_seconds, 10);
    assert_eq!(r.agent.hostname, "n1");
    assert_eq!(r.agent.state, AgentState::Healthy);
    assert!(r.agent.capabilities.ebpf);
    // Re-registration is idempotent and keeps the first registration time.
    let mut again = register_req("n1");
    again.kernel_version = "6.19.0".into();
    let r2: RegisterResponse = a
        .post_json("/api/v1/agents/register", &a.cred("n1"), &again)
        .await
        .typed();
    assert_eq!(r2.agent.registered_at, r.agent.registered_at);
    assert_eq!(r2.agent.kernel_version, "6.19.0");
    a.register("n2").await;
    let list: AgentList = a.get("/api/v1/agents", VIEWER).await.typed();
    assert_eq!(
        list.agents.iter().map(|x| x.hostname.as_str()).collect::<Vec<_>>(),
        ["n1", "n2"]
    );
    let one: AgentInfo = a.get("/api/v1/agents/n1", VIEWER).await.typed();
    assert_eq!(one.labels.get("rack").map(String::as_str), Some("r1"));
    assert_eq!(one.firing_findings, 0);
    assert_eq!(
        a.get("/api/v1/agents/nope", VIEWER).await.error(StatusCode::NOT_FOUND),
        "not_found"
    );
}

/// Issue 13 item 10: the bootstrap token binds a credential to a hostname
/// once; the credential acts for that hostname only, on every route with a
/// `{hostname}` (taken from the served OpenAPI document, so a new agent
/// endpoint is covered without a change here) and in the registration body.
#[tokio::test]
async fn a_credential_acts_for_its_own_hostname_only_and_enrollment_happens_once() {
    let a = api().await;
    assert!(a.register("n1").await.enrolled);
    a.register("n2").await;
    let (c1, c2) = (a.cred("n1"), a.cred("n2"));
    let labels_of = |v: serde_json::Value| v["labels"].clone();
    let n1_labels = labels_of(a.get("/api/v1/agents/n1", VIEWER).await.json());

    // The same enrollment again (an answer lost on the way) succeeds.
    assert!(a.register("n1").await.enrolled);
    // The bootstrap token cannot bind n1 to another credential (that would
    // move it): 409, nothing changed.
    let mut moved = register_req("n1");
    moved.labels.insert("rack".into(), "r9".into());
    moved.credential_sha256 = Some(common::digest_of("intruder"));
    let (code, detail) = a
        .post_json("/api/v1/agents/register", AGENT, &moved)
        .await
        .error_parts(StatusCode::CONFLICT);
    assert_eq!(code, "enrolled");
    assert!(detail.contains("reset-credential n1"), "{detail}");
    // Nor bind n2's credential to n1, nor register without a credential.
    moved.credential_sha256 = Some(common::digest_of("n2"));
    assert_eq!(
        a.post_json("/api/v1/agents/register", AGENT, &moved)
            .await
            .error(StatusCode::CONFLICT),
        "enrolled"
    );
    moved.credential_sha256 = None;
    let (code, detail) = a
        .post_json("/api/v1/agents/register", AGENT, &moved)
        .await
        .error_parts(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(code, "invalid");
    assert!(detail.starts_with("credential_sha256: required"), "{detail}");
    moved.credential_sha256 = Some("ABC".into());
    let (_, detail) = a
        .post_json("/api/v1/agents/register", AGENT, &moved)
        .await
        .error_parts(StatusCode::UNPROCESSABLE_ENTITY);
    assert!(detail.starts_with("credential_sha256: must be 64"), "{detail}");
    // n2's credential cannot register n1.
    let (code, detail) = a
        .post_json("/api/v1/agents/register", &c2, &moved)
        .await
        .error_parts(StatusCode::FORBIDDEN);
    assert_eq!(code, "forbidden");
    assert!(detail.contains("\"n2\" may not register \"n1\""), "{detail}");
    assert_eq!(
        labels_of(a.get("/api/v1/agents/n1", VIEWER).await.json()),
        n1_labels,
        "nothing changed"
    );

    // Every operation on a {hostname} path: n2's credential and the
    // bootstrap token get 403 for n1; n1's own credential is let through.
    let doc = a.get("/api/v1/openapi.json", VIEWER).await.json();
    let mut agent_ops = 0;
    for (path, ops) in doc["paths"].as_object().expect("paths") {
        if !path.contains("{hostname}") {
            continue;
        }
        let url = path.replace("{hostname}", "n1");
        for method in ops.as_object().expect("operations").keys() {
            let method = method.to_uppercase();
            let body = (method == "POST").then_some(("application/json", "{}"));
            for (who, token) in [("n2's credential", c2.as_str()), ("the bootstrap token", AGENT)] {
                let r = a.req(&method, &url, Some(token), body).await;
                assert_eq!(r.status, StatusCode::FORBIDDEN, "{method} {url} with {who}: {}", r.text);
            }
            let own = a.req(&method, &url, Some(&c1), body).await;
            if own.status != StatusCode::FORBIDDEN {
                agent_ops += 1;
                assert!(
                    own.status != StatusCode::UNAUTHORIZED,
                    "{method} {url} with n1's credential: {}",
                    own.text
                );
            }
        }
    }
    // heartbeat, transitions, desired faults, fault states, path reports.
    assert_eq!(agent_ops, 5, "the agent endpoints a credential may call");
    // A credential neither reads nor operates; a made-up one is 401.
    assert_eq!(a.get("/api/v1/agents", &c1).await.status, StatusCode::FORBIDDEN);
    assert_eq!(
        a.post("/api/v1/faults/revert-all", &c1, "{}").await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        a.post("/api/v1/agents/n1/heartbeat", &common::secret_of("intruder"), "{}")
            .await
            .error(StatusCode::UNAUTHORIZED),
        "unauthorized"
    );
    // n1 re-registers with its own credential: updated.
    moved.credential_sha256 = None;
    let again: RegisterResponse = a.post_json("/api/v1/agents/register", &c1, &moved).await.typed();
    assert!(again.enrolled);
    assert_eq!(again.agent.labels.get("rack").map(String::as_str), Some("r9"));

    // Only an operator resets a credential; the old one is refused (401),
    // and the next enrollment binds a new one.
    for token in [VIEWER, AGENT, c1.as_str(), c2.as_str()] {
        let r = a.req("DELETE", "/api/v1/agents/n1/credential", Some(token), None).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
    }
    let r = a
        .req("DELETE", "/api/v1/agents/n1/credential", Some(OPERATOR), None)
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    let r = a
        .req("DELETE", "/api/v1/agents/n1/credential", Some(OPERATOR), None)
        .await;
    assert_eq!(r.error(StatusCode::NOT_FOUND), "not_found");
    assert_eq!(
        a.post("/api/v1/agents/n1/heartbeat", &c1, "{}")
            .await
            .error(StatusCode::UNAUTHORIZED),
        "unauthorized"
    );
    let mut renew = register_req("n1");
    renew.credential_sha256 = Some(common::digest_of("n1 renewed"));
    let r: RegisterResponse = a.post_json("/api/v1/agents/register", AGENT, &renew).await.typed();
    assert!(r.enrolled);
    assert_eq!(
        a.post("/api/v1/agents/n1/heartbeat", &common::secret_of("n1 renewed"), "{}")
            .await
            .status,
        StatusCode::OK
    );
    // An operator token registers any hostname without enrolling it.
    let mut op = register_req("n3");
    op.credential_sha256 = None;
    let op: RegisterResponse = a.post_json("/api/v1/agents/register", OPERATOR, &op).await.typed();
    assert!(!op.enrolled);
}

/// A refused registration (a hostname that is no DNS name) binds no
/// credential.
#[tokio::test]
async fn a_refused_enrollment_binds_no_credential() {
    let a = api().await;
    let bad = register_req("bad host");
    assert_eq!(
        a.post_json("/api/v1/agents/register", AGENT, &bad)
            .await
            .error(StatusCode::UNPROCESSABLE_ENTITY),
        "invalid"
    );
    assert!(!a.state.services.credentials.is_enrolled("bad host"));
    assert_eq!(
        a.post("/api/v1/agents/bad%20host/heartbeat", &a.cred("bad host"), "{}")
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn register_rejects_bad_bodies() {
    let a = api().await;
    let p = "/api/v1/agents/register";
    assert_eq!(
        a.post(p, AGENT, r#"{"hostname": "n1","#)
            .await
            .error(StatusCode::BAD_REQUEST),
        "malformed_json"
    );
    let mut v = serde_json::to_value(register_req("n1")).expect("value");
    v["colour"] = json!("blue");
    assert_eq!(
        a.post(p, AGENT, &v.to_string())
            .await
            .error(StatusCode::UNPROCESSABLE_ENTITY),
        "invalid_body",
        "unknown field"
    );
    let mut v = serde_json::to_value(register_req("n1")).expect("value");
    v["addresses"] = json!("10.0.0.1");
    assert_eq!(
        a.post(p, AGENT, &v.to_string())
            .await
            .error(StatusCode::UNPROCESSABLE_ENTITY),
        "invalid_body",
        "wrong type"
    );
    let mut v = serde_json::to_value(register_req("n1")).expect("value");
    v["capabilities"]["ebpf"] = json!("yes");
    assert_eq!(
        a.post(p, AGENT, &v.to_string()).await.status,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    let v = json!({"hostname": "n1"});
    assert_eq!(
        a.post(p, AGENT, &v.to_string())
            .await
            .error(StatusCode::UNPROCESSABLE_ENTITY),
        "invalid_body",
        "missing fields"
    );
    assert_eq!(
        a.post_json(p, AGENT, &register_req(""))
            .await
            .error(StatusCode::UNPROCESSABLE_ENTITY),
        "invalid",
        "empty hostname"
    );
    let r = a.req("POST", p, Some(AGENT), Some(("text/plain", "{}"))).await;
    assert_eq!(r.error(StatusCode::UNSUPPORTED_MEDIA_TYPE), "unsupported_media_type");
    let mut big = register_req("n1");
    big.labels.insert("blob".into(), "x".repeat(DEFAULT_MAX_BODY + 1));
    assert_eq!(
        a.post_json(p, AGENT, &big).await.error(StatusCode::PAYLOAD_TOO_LARGE),
        "payload_too_large"
    );
    assert!(
        a.get("/api/v1/agents", VIEWER)
            .await
            .typed::<AgentList>()
            .agents
            .is_empty()
    );
}

#[tokio::test]
async fn register_refuses_a_hostname_that_is_not_a_dns_name_and_keeps_nothing() {
    let a = api().await;
    let long_label = "a".repeat(64);
    let too_long = "a.".repeat(127);
    for (bad, why) in [
        ("", "must be 1 to 253 characters"),
        (too_long.as_str(), "must be 1 to 253 characters, got 254"),
        (long_label.as_str(), "label of 64 characters"),
        ("node one", "character ' '"),
        ("../../etc/passwd", "empty label"),
        ("a/b", "character '/'"),
        ("n\u{f6}de", "character"),
        ("x\ny", "character '\\n'"),
        ("-node", "begins or ends with '-'"),
        ("node..lan", "empty label"),
    ] {
        let mut req = register_req(bad);
        req.interfaces = Some(vec!["eth0".into()]);
        req.dm_devices = Some(vec![]);
        let r = a.post_json("/api/v1/agents/register", AGENT, &req).await;
        let (code, detail) = r.error_parts(StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(code, "invalid", "{bad:?}: {}", r.text);
        assert!(
            detail.starts_with("hostname "),
            "{bad:?}: the detail names the field: {detail}"
        );
        assert!(detail.contains(why), "{bad:?}: {detail:?} lacks {why:?}");
    }
    // Nothing was kept: no agent in memory or in the database, no inventory.
    assert!(
        a.get("/api/v1/agents", VIEWER)
            .await
            .typed::<AgentList>()
            .agents
            .is_empty()
    );
    assert!(a.store.load_agents().await.expect("agents").is_empty());
    assert_eq!(a.state.services.faults.inventoried_agents(), 0);
    // Hostnames as machines have them are fine.
    for ok in ["n1", "ip-10-0-0-1.ec2.internal", "Build_Host-7.lan"] {
        assert_eq!(a.register(ok).await.agent.hostname, ok);
    }
    assert_eq!(
        a.state.services.faults.inventoried_agents(),
        0,
        "these reported no inventory"
    );
}

#[tokio::test]
async fn heartbeat_of_known_and_unknown_agents() {
    let a = api().await;
    a.register("n1").await;
    let r = a
        .post("/api/v1/agents/n1/heartbeat", &a.cred("n1"), r#"{"firing": 2}"#)
        .await;
    assert_eq!(r.json()["state"], "healthy", "{}", r.text);
    assert_eq!(
        a.post("/api/v1/agents/n1/heartbeat", &a.cred("n1"), "{}").await.status,
        StatusCode::OK
    );
    assert_eq!(
        a.post("/api/v1/agents/ghost/heartbeat", OPERATOR, "{}")
            .await
            .error(StatusCode::NOT_FOUND),
        "not_found"
    );
    assert_eq!(
        a.post("/api/v1/agents/n1/heartbeat", &a.cred("n1"), "{")
            .await
            .error(StatusCode::BAD_REQUEST),
        "malformed_json"
    );
    assert_eq!(
        a.post("/api/v1/agents/n1/heartbeat", &a.cred("n1"), r#"{"firing": "two"}"#)
            .await
            .error(StatusCode::UNPROCESSABLE_ENTITY),
        "invalid_body"
    );
    assert_eq!(
        a.post("/api/v1/agents/n1/heartbeat", &a.cred("n1"), r#"{"load": 1}"#)
            .await
            .error(StatusCode::UNPROCESSABLE_ENTITY),
        "invalid_body"
    );
    // serde would read a struct from an array of its fields ([] when all
    // default); the document says object (found by schemathesis).
    for body in ["[]", "[3]", "null", "2", "\"x\""] {
        let r = a.post("/api/v1/agents/n1/heartbeat", &a.cred("n1"), body).await;
        assert_eq!(r.error(StatusCode::UNPROCESSABLE_ENTITY), "invalid_body", "{body}");
        assert!(r.text.contains("JSON object"), "{body}: {}", r.text);
    }
    // Heartbeats are kept in memory and flushed in batches.
    assert_eq!(a.state.services.agents.flush().await.expect("flush"), 1);
}

#[tokio::test]
async fn heartbeats_with_clock_times_give_the_agents_clock_offset() {
    let a = api().await;
    a.register("n1").await;
    let agent = a.get("/api/v1/agents/n1", VIEWER).await;
    assert!(agent.json().get("clock").is_none(), "no exchange yet: {}", agent.text);
    assert!(a.state.services.agents.clock_offset("n1").is_none());
    // The answer gives the controller's receive and send times.
    let before = now_ms();
    let r: HeartbeatResponse = a.post("/api/v1/agents/n1/heartbeat", &a.cred("n1"), "{}").await.typed();
    let after = now_ms();
    let (t2, t3) = (r.received_ms.expect("received_ms"), r.sent_ms.expect("sent_ms"));
    assert!(before <= t2 && t2 <= t3 && t3 <= after, "{before} {t2} {t3} {after}");
    // An agent 250 ms behind the controller, 5 ms each way, held 2 ms:
    // offset 250, uncertainty half the 10 ms delay.
    let clock = |t1: i64, t2: i64, t3: i64, t4: i64| {
        format!(r#"{{"clock": {{"t1": {t1}, "t2": {t2}, "t3": {t3}, "t4": {t4}}}}}"#)
    };
    let body = clock(1_000_000, 1_000_255, 1_000_257, 1_000_012);
    let r = a.post("/api/v1/agents/n1/heartbeat", &a.cred("n1"), &body).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let info: AgentInfo = a.get("/api/v1/agents/n1", VIEWER).await.typed();
    assert_eq!(
        info.clock,
        Some(ClockOffsetInfo {
            offset_ms: 250.0,
            uncertainty_ms: 5.0,
            samples: 1
        })
    );
    let o = a.state.services.agents.clock_offset("n1").expect("offset");
    assert_eq!((o.offset_ms, o.uncertainty_ms), (250.0, 5.0));
    // Impossible exchanges (the answer received before the request was
    // sent; the controller answering before it received) are ignored, and
    // the heartbeat still succeeds.
    for body in [
        clock(2_000_000, 2_000_255, 2_000_257, 1_999_000),
        clock(2_000_000, 2_000_255, 2_000_200, 2_000_012),
    ] {
        let r = a.post("/api/v1/agents/n1/heartbeat", &a.cred("n1"), &body).await;
        assert_eq!(r.status, StatusCode::OK, "{body}: {}", r.text);
        assert_eq!(r.json()["state"], "healthy");
    }
    let info: AgentInfo = a.get("/api/v1/agents/n1", VIEWER).await.typed();
    assert_eq!(info.clock.map(|c| (c.offset_ms, c.samples)), Some((250.0, 1)));
    // A second exchange, slow on the way back, narrows the estimate to the
    // intersection of the two: [245, 255] and [241, 251].
    let body = clock(3_000_000, 3_000_251, 3_000_252, 3_000_011);
    a.post("/api/v1/agents/n1/heartbeat", &a.cred("n1"), &body).await;
    let list: AgentList = a.get("/api/v1/agents", VIEWER).await.typed();
    assert_eq!(
        list.agents[0].clock,
        Some(ClockOffsetInfo {
            offset_ms: 248.0,
            uncertainty_ms: 3.0,
            samples: 2
        })
    );
    // A malformed exchange is a malformed heartbeat; an unknown agent's is not kept.
    let r = a
        .post(
            "/api/v1/agents/n1/heartbeat",
            &a.cred("n1"),
            r#"{"clock": {"t1": 1, "t2": 2, "t3": 3}}"#,
        )
        .await;
    assert_eq!(r.error(StatusCode::UNPROCESSABLE_ENTITY), "invalid_body");
    let r = a.post("/api/v1/agents/ghost/heartbeat", OPERATOR, &body).await;
    assert_eq!(r.error(StatusCode::NOT_FOUND), "not_found");
    assert!(a.state.services.agents.clock_offset("ghost").is_none());
}

#[tokio::test]
async fn transitions_are_stored_and_redelivery_is_idempotent() {
    let a = api().await;
    a.register("n1").await;
    let batch = [
        fired("n1", "eth0", T0),
        resolved("n1", "eth0", T0, T1),
        fired("n1", "eth1", T1),
    ];
    let r: BatchResponse = a.push("n1", &batch).await.typed();
    assert_eq!((r.accepted, r.duplicates), (3, 0));
    // The same batch again (a reporter that never saw the answer): nothing changes.
    let r: BatchResponse = a.push("n1", &batch).await.typed();
    assert_eq!((r.accepted, r.duplicates), (0, 3));
    // Partly new.
    let r: BatchResponse = a
        .push("n1", &[resolved("n1", "eth1", T1, T2), fired("n1", "eth1", T1)])
        .await
        .typed();
    assert_eq!((r.accepted, r.duplicates), (1, 1));
    assert_eq!(a.state.services.findings.transition_count().await.expect("count"), 4);

    let id = finding_id("n1", FindingKind::KernelDrops, "eth0");
    let raw = a.get(&format!("/api/v1/findings/{id}"), VIEWER).await;
    assert_eq!(
        raw.json()["finding"]["resolved_at"],
        json!(T1),
        "the time as the agent sent it"
    );
    let d: FindingDetail = raw.typed();
    assert_eq!(d.finding.state, FindingState::Resolved);
    assert_eq!(d.finding.resolved_at.map(|t| t.to_string()).as_deref(), Some(T1));
    assert_eq!(
        d.history.iter().map(|h| h.transition).collect::<Vec<_>>(),
        [TransitionKind::Fired, TransitionKind::Resolved]
    );
    assert_eq!(d.history[0].at.to_string(), T0);
    assert_eq!(raw.json()["history"][0]["at"], json!(T0));

    let m = a.get("/metrics", VIEWER).await;
    assert!(
        m.text
            .contains("graydar_controller_transitions_ingested_total{result=\"accepted\"} 4"),
        "{}",
        m.text
    );
    assert!(
        m.text
            .contains("graydar_controller_transitions_ingested_total{result=\"duplicate\"} 4")
    );
    assert!(m.text.contains("graydar_controller_agents{state=\"healthy\"} 1"));
    assert!(
        m.text
            .contains("graydar_controller_http_request_duration_seconds_bucket")
    );
}

#[tokio::test]
async fn an_older_transition_never_overwrites_a_newer_state() {
    let a = api().await;
    a.register("n1").await;
    // Resolved arrives first (its Fired was dropped by a full buffer, then
    // re-sent by someone else): the finding exists, resolved.
    let r: BatchResponse = a.push("n1", &[resolved("n1", "eth0", T0, T1)]).await.typed();
    assert_eq!(r.accepted, 1);
    let r: BatchResponse = a.push("n1", &[fired("n1", "eth0", T0)]).await.typed();
    assert_eq!(r.accepted, 1);
    let id = finding_id("n1", FindingKind::KernelDrops, "eth0");
    let d: FindingDetail = a.get(&format!("/api/v1/findings/{id}"), VIEWER).await.typed();
    assert_eq!(d.finding.state, FindingState::Resolved);
    assert_eq!(d.history.len(), 2);
}

#[tokio::test]
async fn transitions_reject_bad_batches() {
    let a = api().await;
    a.register("n1").await;
    let p = "/api/v1/agents/n1/transitions";
    let ghost = TransitionBatch {
        transitions: vec![fired("ghost", "eth0", T0)],
    };
    assert_eq!(
        a.post_json("/api/v1/agents/ghost/transitions", OPERATOR, &ghost)
            .await
            .error(StatusCode::NOT_FOUND),
        "not_found",
        "an operator may post for any host, but not for an unregistered one"
    );
    // Another host's finding.
    assert_eq!(
        a.push("n1", &[fired("n2", "eth0", T0)])
            .await
            .error(StatusCode::UNPROCESSABLE_ENTITY),
        "invalid"
    );
    // Forged id.
    let mut t = fired("n1", "eth0", T0);
    t.finding.id = "0000000000000000".into();
    assert_eq!(
        a.push("n1", &[t]).await.error(StatusCode::UNPROCESSABLE_ENTITY),
        "invalid"
    );
    // Transition contradicting the state.
    let mut t = fired("n1", "eth0", T0);
    t.transition = TransitionKind::Resolved;
    assert_eq!(
        a.push("n1", &[t]).await.error(StatusCode::UNPROCESSABLE_ENTITY),
        "invalid"
    );
    // Not a time: refused by the body's schema, naming the field.
    let mut v = serde_json::to_value(TransitionBatch {
        transitions: vec![fired("n1", "eth0", T0)],
    })
    .expect("value");
    v["transitions"][0]["at"] = json!("yesterday");
    let (code, detail) = a
        .post(p, &a.cred("n1"), &v.to_string())
        .await
        .error_parts(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(code, "invalid_body");
    assert!(
        detail.contains("transitions[0].at") && detail.contains("\"yesterday\" is not an RFC 3339 time"),
        "{detail}"
    );
    // Unknown field inside a finding; wrong type; unknown kind.
    let mut v = serde_json::to_value(TransitionBatch {
        transitions: vec![fired("n1", "eth0", T0)],
    })
    .expect("value");
    v["transitions"][0]["finding"]["extra"] = json!(1);
    assert_eq!(
        a.post(p, &a.cred("n1"), &v.to_string())
            .await
            .error(StatusCode::UNPROCESSABLE_ENTITY),
        "invalid_body"
    );
    v["transitions"][0]["finding"]
        .as_object_mut()
        .map(|o| o.remove("extra"));
    v["transitions"][0]["finding"]["kind"] = json!("alien_abduction");
    assert_eq!(
        a.post(p, &a.cred("n1"), &v.to_string())
            .await
            .error(StatusCode::UNPROCESSABLE_ENTITY),
        "invalid_body"
    );
    v["transitions"] = json!({"not": "a list"});
    assert_eq!(
        a.post(p, &a.cred("n1"), &v.to_string())
            .await
            .error(StatusCode::UNPROCESSABLE_ENTITY),
        "invalid_body"
    );
    assert_eq!(
        a.post(p, &a.cred("n1"), r#"{"transitions": ["#)
            .await
            .error(StatusCode::BAD_REQUEST),
        "malformed_json"
    );
    // Too many transitions in one batch, and too many bytes.
    let many: Vec<FindingTransition> = (0..=MAX_BATCH).map(|i| fired("n1", &format!("if{i}"), T0)).collect();
    assert_eq!(
        a.push("n1", &many).await.error(StatusCode::PAYLOAD_TOO_LARGE),
        "payload_too_large"
    );
    let mut huge = fired("n1", "eth0", T0);
    huge.finding.summary = "x".repeat(DEFAULT_MAX_BODY);
    assert_eq!(
        a.push("n1", &[huge]).await.error(StatusCode::PAYLOAD_TOO_LARGE),
        "payload_too_large"
    );
    // None of it was stored.
    assert_eq!(a.state.services.findings.transition_count().await.expect("count"), 0);
}

#[tokio::test]
async fn findings_list_filters() {
    let a = api().await;
    a.register("n1").await;
    a.register("n2").await;
    let mut crit = fired("n2", "eth9", T1);
    crit.finding.severity = Severity::Critical;
    let mut nic = fired("n2", "eth7", T0);
    nic.finding.kind = FindingKind::NicDrops;
    nic.finding.runbook = FindingKind::NicDrops.runbook();
    nic.finding.id = finding_id("n2", FindingKind::NicDrops, "eth7");
    a.push(
        "n1",
        &[
            fired("n1", "eth0", T0),
            resolved("n1", "eth0", T0, T1),
            fired("n1", "eth1", T2),
        ],
    )
    .await
    .typed::<BatchResponse>();
    a.push("n2", &[crit, nic]).await.typed::<BatchResponse>();

    let ids = |l: FindingList| l.findings.into_iter().map(|f| (f.host, f.subject)).collect::<Vec<_>>();
    let all: FindingList = a.get("/api/v1/findings", VIEWER).await.typed();
    assert_eq!(all.findings.len(), 4);
    // Firing first, newest first.
    assert_eq!(all.findings[0].subject, "eth1");
    assert_eq!(all.findings[3].state, FindingState::Resolved);
    let firing: FindingList = a.get("/api/v1/findings?state=firing", VIEWER).await.typed();
    assert_eq!(firing.findings.len(), 3);
    assert_eq!(
        ids(a.get("/api/v1/findings?agent=n1&state=resolved", VIEWER).await.typed()),
        [("n1".to_owned(), "eth0".to_owned())]
    );
    assert_eq!(
        ids(a.get("/api/v1/findings?severity=critical", VIEWER).await.typed()),
        [("n2".to_owned(), "eth9".to_owned())]
    );
    assert_eq!(
        ids(a.get("/api/v1/findings?kind=nic_drops", VIEWER).await.typed()),
        [("n2".to_owned(), "eth7".to_owned())]
    );
    let since: FindingList = a
        .get("/api/v1/findings?since=2026-01-01T00:00:30.5Z", VIEWER)
        .await
        .typed();
    assert_eq!(since.findings.len(), 3, "eth0 (resolved at T1), eth9 (T1), eth1 (T2)");
    let lim: FindingList = a.get("/api/v1/findings?limit=1", VIEWER).await.typed();
    assert_eq!(lim.findings.len(), 1);
    let agent: AgentInfo = a.get("/api/v1/agents/n2", VIEWER).await.typed();
    assert_eq!(agent.firing_findings, 2);

    for bad in [
        "/api/v1/findings?kind=alien",
        "/api/v1/findings?severity=meh",
        "/api/v1/findings?state=sleeping",
        "/api/v1/findings?since=yesterday",
        "/api/v1/findings?limit=0",
        "/api/v1/findings?limit=lots",
        "/api/v1/findings?colour=blue",
    ] {
        assert_eq!(
            a.get(bad, VIEWER).await.error(StatusCode::BAD_REQUEST),
            "bad_query",
            "{bad}"
        );
    }
    let (_, detail) = a
        .get("/api/v1/findings?since=yesterday", VIEWER)
        .await
        .error_parts(StatusCode::BAD_REQUEST);
    assert!(
        detail.contains("since") && detail.contains("\"yesterday\" is not an RFC 3339 time"),
        "{detail}"
    );
    assert_eq!(
        a.get("/api/v1/findings/0123456789abcdef", VIEWER)
            .await
            .error(StatusCode::NOT_FOUND),
        "not_found"
    );
}

#[tokio::test]
async fn openapi_document_lists_every_endpoint() {
    let a = api().await;
    let doc = a.get("/api/v1/openapi.json", VIEWER).await.json();
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")), "{doc}");
    for path in [
        "/healthz",
        "/readyz",
        "/metrics",
        "/api/v1/agents/register",
        "/api/v1/agents/{hostname}/heartbeat",
        "/api/v1/agents/{hostname}/credential",
        "/api/v1/agents/{hostname}/transitions",
        "/api/v1/agents",
        "/api/v1/agents/{hostname}",
        "/api/v1/findings",
        "/api/v1/findings/{id}",
        "/api/v1/openapi.json",
    ] {
        assert!(
            doc["paths"][path].is_object(),
            "{path} missing from the OpenAPI document"
        );
    }
    for schema in [
        "Finding",
        "TransitionBatch",
        "RegisterRequest",
        "AgentInfo",
        "ApiError",
        "Timestamp",
    ] {
        assert!(doc["components"]["schemas"][schema].is_object(), "schema {schema}");
    }
    assert_eq!(
        doc["components"]["schemas"]["Timestamp"]["format"], "date-time",
        "{doc}"
    );
    assert_eq!(
        doc["components"]["schemas"]["Finding"]["properties"]["since"]["$ref"],
        "#/components/schemas/Timestamp"
    );
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
}

#[tokio::test]
async fn concurrent_batches_keep_their_own_counts() {
    let a = api().await;
    a.register("n1").await;
    // 2 + 700 rows: more than one multi-row statement (500 rows each).
    let mut first = vec![fired("n1", "eth0", T0), fired("n1", "eth0", T0)];
    first.extend((0..700).map(|i| fired("n1", &format!("x{i}"), T0)));
    // The same fired as the first batch, then its resolve.
    let second = vec![fired("n1", "eth0", T0), resolved("n1", "eth0", T0, T1)];
    // Both are queued before the writer task runs (current-thread runtime),
    // so they are stored in one group.
    let (r1, r2) = tokio::join!(
        a.state.services.findings.ingest("n1", first),
        a.state.services.findings.ingest("n1", second)
    );
    let (r1, r2) = (r1.expect("first"), r2.expect("second"));
    let counts = ((r1.accepted, r1.duplicates), (r2.accepted, r2.duplicates));
    let first_carrier = ((701, 1), (1, 1));
    if a.on_postgres() {
        // Two transactions side by side: either carrier may get the shared
        // transition; each response still counts its own batch.
        assert!(
            counts == first_carrier || counts == ((700, 2), (2, 0)),
            "exactly one carrier gets a transition: {counts:?}"
        );
    } else {
        assert_eq!(counts, first_carrier, "the first carrier of a transition gets it");
    }
    assert_eq!(a.state.services.findings.transition_count().await.expect("count"), 702);
    let id = finding_id("n1", FindingKind::KernelDrops, "eth0");
    let d: FindingDetail = a.get(&format!("/api/v1/findings/{id}"), VIEWER).await.typed();
    assert_eq!(d.finding.state, FindingState::Resolved, "the newest transition wins");
    assert_eq!(d.history.len(), 2);
    let x = finding_id("n1", FindingKind::KernelDrops, "x699");
    let d: FindingDetail = a.get(&format!("/api/v1/findings/{x}"), VIEWER).await.typed();
    assert_eq!(d.finding.state, FindingState::Firing);
}
