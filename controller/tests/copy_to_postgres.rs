//! Moving from SQLite to PostgreSQL with the real command:
//! `graydar-controller copy-to-postgres` copies a SQLite controller's data
//! directory into a throwaway PostgreSQL cluster, and a controller on the
//! copy answers the API exactly as the SQLite one did: agents and their
//! credentials, findings with their histories, faults with their agents'
//! states, revert-all epoch, safety lever, mesh keys, game days and runs.
//! A second copy into the now non-empty database is refused.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::http::StatusCode;
use graydar_common::api::{
    Finding, FindingKind, FindingState, FindingTransition, RegisterRequest, Severity, TransitionBatch, TransitionKind,
    finding_id,
};
use graydar_common::timestamp::Timestamp;
use graydar_controller::store::{PgStore, SqliteStore, Store};
use serde_json::json;

mod common;
use common::{Api, OPERATOR, TestDb, VIEWER, pg::PgCluster};

async fn register(a: &Api, host: &str) {
    a.register_as(&RegisterRequest {
        addresses: vec!["10.0.0.1".into()],
        labels: BTreeMap::from([("rack".to_owned(), "r1".to_owned())]),
        interfaces: Some(vec!["eth0".into()]),
        ..common::registration(host)
    })
    .await;
}

async fn transition(a: &Api, host: &str, kind: TransitionKind, since: Timestamp, at: Timestamp) {
    let subject = "eth0".to_owned();
    let f = Finding {
        id: finding_id(host, FindingKind::NicDrops, &subject),
        host: host.to_owned(),
        kind: FindingKind::NicDrops,
        subject,
        severity: Severity::Warning,
        state: if kind == TransitionKind::Resolved {
            FindingState::Resolved
        } else {
            FindingState::Firing
        },
        since,
        last_seen: at,
        resolved_at: (kind == TransitionKind::Resolved).then_some(at),
        summary: "2 % of received packets dropped".into(),
        evidence: BTreeMap::from([("rx_dropped".to_owned(), 412.0.into())]),
        runbook: "nic-drops".into(),
    };
    let batch = TransitionBatch {
        transitions: vec![FindingTransition {
            transition: kind,
            at,
            finding: f,
        }],
    };
    let resp = a
        .call(
            "POST",
            &format!("/api/v1/agents/{host}/transitions"),
            &a.cred(host),
            Some(serde_json::to_value(&batch).expect("json")),
        )
        .await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text);
}

/// What a controller answers, as text per endpoint (the agents' `state`
/// and `clock` are of this process, not of the database: left out).
async fn answers(a: &Api, finding: &str, fault: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for path in [
        "/api/v1/agents".to_owned(),
        "/api/v1/findings?limit=100".to_owned(),
        format!("/api/v1/findings/{finding}"),
        "/api/v1/faults?limit=100".to_owned(),
        format!("/api/v1/faults/{fault}"),
        "/api/v1/safety-lever".to_owned(),
        "/api/v1/paths/keys".to_owned(),
        "/api/v1/gamedays".to_owned(),
        "/api/v1/runs".to_owned(),
    ] {
        let r = a.call("GET", &path, OPERATOR, None).await;
        assert_eq!(r.status, StatusCode::OK, "{path}: {}", r.text);
        let mut v = r.json();
        if let Some(list) = v["agents"].as_array_mut() {
            for x in list {
                x.as_object_mut().map(|o| o.remove("clock"));
            }
        }
        out.insert(path, v.to_string());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_to_postgres_moves_everything_and_refuses_a_database_that_is_not_empty() {
    let dir = tempfile::tempdir().expect("data dir");
    let sqlite: Arc<dyn Store> = Arc::new(SqliteStore::open(dir.path()).await.expect("sqlite"));
    let a = Api::on_store(sqlite.clone(), TestDb::Shared).await;
    for h in ["h1", "h2", "h3"] {
        register(&a, h).await;
    }
    // A finding that fired and resolved, and one that fires.
    let t0 = Timestamp::now();
    transition(&a, "h1", TransitionKind::Fired, t0, t0).await;
    let t1 = Timestamp::now();
    transition(&a, "h1", TransitionKind::Resolved, t0, t1).await;
    transition(&a, "h2", TransitionKind::Fired, t1, t1).await;
    // A fault reported active, then revert-all (epoch 1), then a live one.
    let f1 = a.create_blackhole("h1", "10.9.9.0/24").await;
    let report =
        json!({"statuses": [{"id": f1, "state": "active", "operations": ["ip route add blackhole 10.9.9.0/24"]}]});
    let r = a
        .call("POST", "/api/v1/agents/h1/faults/status", &a.cred("h1"), Some(report))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let r = a.call("POST", "/api/v1/faults/revert-all", OPERATOR, None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    a.create_blackhole("h2", "10.9.8.0/24").await;
    // Mesh keys rotated; a game day and a run the preflight cancelled.
    let r = a.call("POST", "/api/v1/paths/keys/rotate", OPERATOR, None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let gd = json!({
        "name": "bh", "hypothesis": "h3 blackholing is seen",
        "targets": {"a": {"agents": ["h3"]}, "b": {"agents": ["nobody"]}},
        "safety": {"max_duration": "2m"},
        "steps": [{"id": "hold", "gate": {}}]
    });
    let r = a.call("POST", "/api/v1/gamedays", OPERATOR, Some(gd)).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let r = a
        .call("POST", "/api/v1/gamedays/bh/runs", OPERATOR, Some(json!({})))
        .await;
    assert_eq!(
        r.status,
        StatusCode::CONFLICT,
        "the preflight cancels it (no agent nobody): {}",
        r.text
    );
    // The lever engaged last.
    let r = a
        .call(
            "PUT",
            "/api/v1/safety-lever",
            OPERATOR,
            Some(json!({"engaged": true, "reason": "moving the database"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let finding = finding_id("h1", FindingKind::NicDrops, "eth0");
    let before = answers(&a, &finding, &f1).await;
    // What is compared is there to compare.
    for (path, needle) in [
        ("/api/v1/agents", "\"h3\""),
        ("/api/v1/runs", "cancelled"),
        ("/api/v1/gamedays", "\"bh\""),
        ("/api/v1/safety-lever", "moving the database"),
        ("/api/v1/faults?limit=100", "revert_all"),
    ] {
        assert!(before[path].contains(needle), "{path}: {}", before[path]);
    }
    let history = &before[&format!("/api/v1/findings/{finding}")];
    assert!(
        history.contains("\"fired\"") && history.contains("\"resolved\""),
        "{history}"
    );
    assert!(
        before["/api/v1/paths/keys"].matches("\"id\"").count() == 2,
        "{}",
        before["/api/v1/paths/keys"]
    );
    a.state.services.close().await;
    drop(a);

    // The real command, as an operator runs it.
    let db = PgCluster::start();
    let copy = |url: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_graydar-controller"))
            .arg("copy-to-postgres")
            .arg("--from-data-dir")
            .arg(dir.path())
            .arg("--to")
            .arg(url)
            .output()
            .expect("run graydar-controller copy-to-postgres")
    };
    let out = copy(&db.default_url());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("finding_transitions: 3 rows"), "{stdout}");
    assert!(stdout.contains("agents: 3 rows"), "{stdout}");

    let pg: Arc<dyn Store> = Arc::new(PgStore::connect(&common::db_url(&db)).await.expect("pg"));
    let b = Api::on_store(pg, TestDb::Shared).await;
    let after = answers(&b, &finding, &f1).await;
    for (path, text) in &before {
        assert_eq!(Some(text), after.get(path), "{path} differs after the copy");
    }
    // The agents' credentials came along: h1 polls with its own.
    let r = b
        .call("GET", "/api/v1/agents/h1/faults?wait=0", &b.cred("h1"), None)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let r = b.call("GET", "/api/v1/agents/h1/faults?wait=0", VIEWER, None).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);

    // Copying again into a database that has rows is refused.
    let out = copy(&db.default_url());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a second copy went through");
    assert!(stderr.contains("not empty"), "{stderr}");
}
