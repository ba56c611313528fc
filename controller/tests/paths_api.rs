//! In-process tests of the path endpoints: agents' reports in
//! (`POST /api/v1/agents/{hostname}/paths`), peer lists and the matrix out
//! (`GET /api/v1/paths`), who may do what, and bad reports refused with what
//! is wrong. The real router and a real SQLite store in a temp dir, requests
//! through `tower::ServiceExt::oneshot`.

use std::collections::BTreeMap;

use axum::http::StatusCode;
use graydar_common::api::{Capabilities, RegisterRequest};
use graydar_common::paths::{DirectionStats, PathMatrix, PathReport, PathReportResponse, PeerObservation, PeerTarget};
use serde_json::{Value, json};

mod common;
use common::{AGENT, Api, OPERATOR, Resp, VIEWER};

async fn api() -> Api {
    Api::new().await
}

impl Resp {
    /// Asserts an API error with `status` and `code`; returns its detail.
    fn error(&self, status: StatusCode, code: &str) -> String {
        let (c, detail) = self.error_parts(status);
        assert_eq!(c, code, "body: {}", self.text);
        detail
    }
}

impl Api {
    async fn req(&self, method: &str, path: &str, token: Option<&str>, body: Option<&str>) -> Resp {
        self.send(method, path, token, body.map(|t| ("application/json", t.to_owned())))
            .await
    }

    async fn register(&self, host: &str, address: &str) {
        let r = RegisterRequest {
            hostname: host.to_owned(),
            addresses: vec![address.to_owned()],
            labels: BTreeMap::new(),
            kernel_version: "6.18.0".into(),
            agent_version: "0.1.0".into(),
            capabilities: Capabilities::default(),
            interfaces: None,
            dm_devices: None,
            credential_sha256: Some(common::digest_of(host)),
        };
        let body = serde_json::to_string(&r).expect("encode");
        let resp = self
            .req("POST", "/api/v1/agents/register", Some(AGENT), Some(&body))
            .await;
        assert!(resp.status.is_success(), "register {host}: {}", resp.text);
    }

    async fn push_raw(&self, host: &str, token: &str, body: &str) -> Resp {
        self.req("POST", &format!("/api/v1/agents/{host}/paths"), Some(token), Some(body))
            .await
    }

    async fn push(&self, host: &str, report: &PathReport) -> Resp {
        self.push_raw(host, &self.cred(host), &serde_json::to_string(report).expect("encode"))
            .await
    }

    async fn matrix(&self, token: &str) -> Resp {
        self.req("GET", "/api/v1/paths", Some(token), None).await
    }
}

fn dir(delivered: u64, lost: u64, hops: u8) -> DirectionStats {
    DirectionStats {
        delivered,
        lost,
        loss_ratio: Some(lost as f64 / (delivered + lost).max(1) as f64),
        hops: Some(hops),
        owd_variation_seconds: Some(0.0001),
    }
}

fn obs(peer: &str, address: &str, out: DirectionStats, inb: DirectionStats, firing: &[&str]) -> PeerObservation {
    PeerObservation {
        peer: peer.into(),
        address: address.into(),
        outbound: out,
        inbound: inb,
        unknown: 0,
        rtt_p50_seconds: Some(0.0004),
        rtt_p99_seconds: Some(0.0009),
        firing: firing.iter().map(|s| (*s).to_owned()).collect(),
    }
}

fn report(address: &str, peers: Vec<PeerObservation>) -> PathReport {
    PathReport {
        port: 9478,
        addresses: vec![address.into()],
        max_peers: 64,
        interval_seconds: 1.0,
        peers,
    }
}

/// Two agents report; each gets the other as its peer; the matrix shows both
/// ordered pairs from the source's view with hop counts, RTT, state and the
/// findings firing on the pair; viewers and operators read it, agents do not.
#[tokio::test]
async fn reports_in_matrix_out() {
    let api = api().await;
    api.register("a", "10.0.0.1").await;
    api.register("b", "2001:db8::2").await;

    // The first report: no other member yet.
    let first: PathReportResponse = api.push("a", &report("10.0.0.1", vec![])).await.typed();
    assert!(first.peers.is_empty() && first.members == 0, "{first:?}");
    // b is IPv6 only and a IPv4 only: neither can probe the other.
    let b_first: PathReportResponse = api.push("b", &report("2001:db8::2", vec![])).await.typed();
    assert!(b_first.peers.is_empty(), "no common family: {b_first:?}");

    // Dual-stack a: now both see each other, each in a family it has.
    let mut ra = report("10.0.0.1", vec![]);
    ra.addresses.push("2001:db8::1".into());
    let a_resp: PathReportResponse = api.push("a", &ra).await.typed();
    assert_eq!(
        a_resp.peers,
        vec![PeerTarget {
            hostname: "b".into(),
            address: "2001:db8::2".into(),
            port: 9478
        }]
    );
    let b_resp: PathReportResponse = api.push("b", &report("2001:db8::2", vec![])).await.typed();
    assert_eq!(
        b_resp.peers,
        vec![PeerTarget {
            hostname: "a".into(),
            address: "2001:db8::1".into(),
            port: 9478
        }],
        "an IPv6-only member is given the peer's IPv6 address"
    );

    // a -> b loses 10 % (a's view from b's reports) and b -> a takes 2 hops.
    ra.peers = vec![obs(
        "b",
        "[2001:db8::2]:9478",
        dir(90, 10, 1),
        dir(100, 0, 2),
        &["one_way_loss"],
    )];
    let rb = report(
        "2001:db8::2",
        vec![obs("a", "[2001:db8::1]:9478", dir(100, 0, 2), dir(91, 9, 1), &[])],
    );
    api.push("a", &ra).await.typed::<PathReportResponse>();
    api.push("b", &rb).await.typed::<PathReportResponse>();

    for token in [VIEWER, OPERATOR] {
        let m: PathMatrix = api.matrix(token).await.typed();
        assert_eq!(m.pairs.len(), 2, "{m:?}");
        let ab = m.pairs.iter().find(|p| p.src == "a" && p.dst == "b").expect("a -> b");
        assert_eq!(
            (ab.delivered, ab.lost),
            (90, 10),
            "the source's view of its own direction"
        );
        assert_eq!(ab.state, "lossy");
        assert_eq!(ab.hops, Some(1));
        assert_eq!(ab.rtt_p50_seconds, Some(0.0004));
        assert_eq!(ab.firing, vec!["one_way_loss".to_owned()]);
        let ba = m.pairs.iter().find(|p| p.src == "b" && p.dst == "a").expect("b -> a");
        assert_eq!((ba.delivered, ba.lost), (100, 0));
        assert_eq!(ba.state, "ok");
        assert_eq!(ba.hops, Some(2));
        assert_eq!(
            ba.firing,
            vec!["one_way_loss".to_owned()],
            "firing on either end of the pair"
        );
        assert!(ab.reported_at.to_string().ends_with('Z'), "{}", ab.reported_at);
    }
    // The JSON shape (what `graydar paths -o json` and dashboards read).
    let raw = api.matrix(VIEWER).await.json();
    assert!(
        raw["pairs"][0]["src"].is_string() && raw["pairs"][0]["state"].is_string(),
        "{raw}"
    );

    // Auth: no token 401, the agent token may report but not read, a viewer may read but not report.
    assert_eq!(
        api.req("GET", "/api/v1/paths", None, None).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        api.matrix("not-a-token-0123456789").await.status,
        StatusCode::UNAUTHORIZED
    );
    api.matrix(AGENT).await.error(StatusCode::FORBIDDEN, "forbidden");
    let body = serde_json::to_string(&ra).expect("encode");
    api.push_raw("a", VIEWER, &body)
        .await
        .error(StatusCode::FORBIDDEN, "forbidden");
    assert!(api.push_raw("a", OPERATOR, &body).await.status.is_success());
    assert_eq!(
        api.req("POST", "/api/v1/agents/a/paths", None, Some(&body))
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
}

/// Every kind of bad report is a 4xx whose detail says what is wrong; none
/// of them changes the matrix.
#[tokio::test]
async fn bad_reports_are_refused_with_what_is_wrong() {
    let api = api().await;
    api.register("a", "10.0.0.1").await;
    let good = report(
        "10.0.0.1",
        vec![obs("b", "10.0.0.2:9478", dir(10, 0, 1), dir(10, 0, 1), &[])],
    );
    let good_json = serde_json::to_value(&good).expect("encode");
    let with = |path: &[&str], v: Value| {
        let mut j = good_json.clone();
        let mut at = &mut j;
        for (i, k) in path.iter().enumerate() {
            if i + 1 == path.len() {
                at[*k] = v.clone();
            } else if let Ok(n) = k.parse::<usize>() {
                at = &mut at[n];
            } else {
                at = &mut at[*k];
            }
        }
        j.to_string()
    };

    // Semantics: 422 "invalid", the detail names the field.
    let cases: Vec<(String, &str)> = vec![
        (with(&["port"], json!(0)), "port"),
        (with(&["addresses"], json!(["10.0.0.1", "db1.example"])), "addresses[1]"),
        (with(&["max_peers"], json!(0)), "max_peers"),
        (with(&["interval_seconds"], json!(-1.0)), "interval_seconds"),
        (
            with(&["peers", "0", "outbound", "loss_ratio"], json!(1.5)),
            "peers[0].outbound.loss_ratio",
        ),
        (
            with(&["peers", "0", "inbound", "hops"], json!(255)),
            "peers[0].inbound.hops",
        ),
        (
            with(&["peers", "0", "rtt_p50_seconds"], json!(-0.1)),
            "peers[0].rtt_p50_seconds",
        ),
        (with(&["peers", "0", "peer"], json!("")), "peers[0].peer"),
        (with(&["peers", "0", "peer"], json!("a")), "does not probe itself"),
        (
            with(&["peers", "0", "firing"], json!(["nic_drops"])),
            "not a path finding kind",
        ),
    ];
    for (body, needle) in cases {
        let detail = api
            .push_raw("a", &api.cred("a"), &body)
            .await
            .error(StatusCode::UNPROCESSABLE_ENTITY, "invalid");
        assert!(detail.contains(needle), "detail {detail:?} should name {needle:?}");
    }
    let mut dup = good.clone();
    dup.peers.push(dup.peers[0].clone());
    let detail = api
        .push("a", &dup)
        .await
        .error(StatusCode::UNPROCESSABLE_ENTITY, "invalid");
    assert!(detail.contains("peers[1]") && detail.contains("twice"), "{detail}");

    // Shape: wrong types, unknown or missing fields 422 "invalid_body"
    // (serde's message names the field), not JSON 400.
    for (body, needle) in [
        (with(&["port"], json!("9478")), "port"),
        (with(&["peers", "0", "outbound", "delivered"], json!(-3)), "delivered"),
        (with(&["surprise"], json!(1)), "surprise"),
        (json!({"port": 9478}).to_string(), "addresses"),
    ] {
        let detail = api
            .push_raw("a", &api.cred("a"), &body)
            .await
            .error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_body");
        assert!(detail.contains(needle), "detail {detail:?} should name {needle:?}");
    }
    api.push_raw("a", &api.cred("a"), "{not json")
        .await
        .error(StatusCode::BAD_REQUEST, "malformed_json");
    // Too many peers: 413.
    let mut big = good.clone();
    big.peers = (0..1025)
        .map(|i| obs(&format!("n{i}"), "10.0.0.2:9478", dir(1, 0, 1), dir(1, 0, 1), &[]))
        .collect();
    api.push("a", &big)
        .await
        .error(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");
    // An unregistered agent: 404 (register first).
    let detail = api
        .push_raw("ghost", OPERATOR, &serde_json::to_string(&good).expect("encode"))
        .await
        .error(StatusCode::NOT_FOUND, "not_found");
    assert!(detail.contains("ghost"), "{detail}");

    // Nothing of the above reached the matrix.
    let m: PathMatrix = api.matrix(VIEWER).await.typed();
    assert!(m.pairs.is_empty(), "{m:?}");
    // The good one does.
    api.push("a", &good).await.typed::<PathReportResponse>();
    let m: PathMatrix = api.matrix(VIEWER).await.typed();
    assert_eq!(m.pairs.len(), 2, "{m:?}");
}

/// Every peer list carries the fleet keys; an operator rotates them: the
/// new key is handed out at once and signs only after the activation delay,
/// three are kept, the list never shows secrets; agents and viewers cannot
/// rotate; the keys survive a restart of the service on the same store.
#[tokio::test]
async fn mesh_keys_come_with_the_peer_list_and_rotate_for_operators_only() {
    use graydar_common::paths::MeshKeyList;
    let api = api().await;
    api.register("a", "10.0.0.1").await;
    let resp = api.push("a", &report("10.0.0.1", vec![])).await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text);
    let first: PathReportResponse = resp.typed();
    let set = first.mesh_keys.expect("keys with the peer list");
    assert_eq!(set.keys.len(), 1);
    assert_eq!(set.send_key_id, set.keys[0].id);
    assert_ne!(set.send_key_id, 0);
    let secret = base64_len(&set.keys[0].key);
    assert_eq!(secret, 32, "32-byte keys");
    for token in [AGENT, VIEWER] {
        let r = api.req("POST", "/api/v1/paths/keys/rotate", Some(token), None).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{token}: {}", r.text);
    }
    let r = api.req("POST", "/api/v1/paths/keys/rotate", Some(OPERATOR), None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert!(!r.text.contains(&set.keys[0].key), "no secrets in the key list");
    let list: MeshKeyList = r.typed();
    assert_eq!(list.keys.len(), 2);
    assert_eq!(
        list.send_key_id, set.send_key_id,
        "the new key does not sign before its activation"
    );
    let newest = list.keys.last().expect("new key");
    assert!(newest.active_from > newest.created, "{newest:?}");
    let after: PathReportResponse = api.push("a", &report("10.0.0.1", vec![])).await.typed();
    let after = after.mesh_keys.expect("keys");
    assert_eq!(after.keys.len(), 2, "the new key is handed out at once");
    assert_eq!(after.send_key_id, set.send_key_id);
    for _ in 0..3 {
        let r = api.req("POST", "/api/v1/paths/keys/rotate", Some(OPERATOR), None).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    }
    let list: MeshKeyList = api.req("GET", "/api/v1/paths/keys", Some(OPERATOR), None).await.typed();
    assert_eq!(list.keys.len(), 3, "three kept: {list:?}");
    assert!(
        !list.keys.iter().any(|k| k.id == set.send_key_id),
        "the first key is gone after three rotations"
    );
    assert_eq!(
        api.req("GET", "/api/v1/paths/keys", Some(VIEWER), None).await.status,
        StatusCode::FORBIDDEN
    );
    // Stored: a service opened again on the same store hands out the same keys.
    let reopened = graydar_controller::paths::MeshKeys::open(api.store.clone(), 0)
        .await
        .expect("reopen");
    let ids: Vec<u8> = reopened.key_set(0).keys.iter().map(|k| k.id).collect();
    assert_eq!(ids, list.keys.iter().map(|k| k.id).collect::<Vec<_>>());
}

fn base64_len(text: &str) -> usize {
    // Standard base64 with padding: 4 characters per 3 bytes.
    let pad = text.bytes().rev().take_while(|b| *b == b'=').count();
    text.len() / 4 * 3 - pad
}
