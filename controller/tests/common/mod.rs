//! The in-process controller the API tests share (api.rs, faults_api.rs,
//! paths_api.rs): the real router and a real database, requests through
//! `tower::ServiceExt::oneshot`. Each test file adds its own request helpers
//! and error assertions on top.
//!
//! The database is SQLite in a temp dir, or with `GRAYDAR_TEST_STORE=postgres`
//! a throwaway PostgreSQL cluster per test ([`pg::PgCluster`]): the same
//! tests on both stores (`cargo xtask test` runs both).

#![expect(dead_code, reason = "every test file uses its own part of this")]

#[path = "../../../tests/src/pg.rs"]
pub mod pg;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode, header};
use graydar_common::api::{Capabilities, RegisterRequest};
use graydar_controller::agents::Liveness;
use graydar_controller::api::{AppState, DEFAULT_MAX_BODY, router};
use graydar_controller::auth::Tokens;
use graydar_controller::cluster::Cluster;
use graydar_controller::faults::FaultConfig;
use graydar_controller::gamedays::promql::PrometheusConfig;
use graydar_controller::metrics::Metrics;
use graydar_controller::services::Services;
use graydar_controller::store::{PgStore, SqliteStore, Store};
use http_body_util::BodyExt as _;
use serde_json::Value;
use tower::ServiceExt as _;

/// The fleet's bootstrap token (role `agent`): it only enrolls; each agent
/// then calls with its own credential ([`secret_of`]).
pub const AGENT: &str = "agent-token-0123456789";
pub const VIEWER: &str = "viewer-token-0123456789";
pub const OPERATOR: &str = "operator-token-0123456789";

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The credential the test agent `host` generated (fixed per hostname).
pub fn secret_of(host: &str) -> String {
    let seed = graydar_controller::agents::credentials::digest(format!("test agent {host}").as_bytes());
    format!("{}{}", graydar_common::api::CREDENTIAL_PREFIX, hex(&seed))
}

/// What `host`'s enrollment sends: the SHA-256 of [`secret_of`].
pub fn digest_of(host: &str) -> String {
    hex(&graydar_controller::agents::credentials::digest(
        secret_of(host).as_bytes(),
    ))
}

/// A registration of `host` (kernel 6.18.0, agent 0.1.0, default
/// capabilities, no dm devices) with the credential of [`digest_of`]; tests
/// set the fields they care about with `..registration(host)`.
pub fn registration(host: &str) -> RegisterRequest {
    RegisterRequest {
        hostname: host.to_owned(),
        addresses: vec![],
        labels: Default::default(),
        kernel_version: "6.18.0".into(),
        agent_version: "0.1.0".into(),
        capabilities: Capabilities::default(),
        interfaces: None,
        dm_devices: Some(vec![]),
        credential_sha256: Some(digest_of(host)),
    }
}

/// The URL of `cluster`'s default database, as the controller takes it.
pub fn db_url(cluster: &pg::PgCluster) -> graydar_controller::store::DatabaseUrl {
    graydar_controller::store::DatabaseUrl::parse(&cluster.default_url()).expect("a postgres:// URL")
}

pub fn liveness() -> Liveness {
    Liveness {
        stale_after: Duration::from_secs(30),
        lost_after: Duration::from_secs(300),
    }
}

pub struct Api {
    pub app: Router,
    pub state: Arc<AppState>,
    pub store: Arc<dyn Store>,
    /// Where the database lives; dropped last (after the store).
    db: TestDb,
}

/// The database of one test; dropping it removes it.
pub enum TestDb {
    Sqlite(tempfile::TempDir),
    Postgres(pg::PgCluster),
    /// A database other replicas share (its cluster is the test's).
    Shared,
}

/// The store the API tests run on: `GRAYDAR_TEST_STORE` (`sqlite`, the
/// default, or `postgres`); any other value fails the test.
pub async fn test_store() -> (Arc<dyn Store>, TestDb) {
    match std::env::var("GRAYDAR_TEST_STORE").as_deref() {
        Err(std::env::VarError::NotPresent) | Ok("sqlite") => {
            let dir = tempfile::tempdir().expect("temp dir");
            let store = SqliteStore::open(dir.path()).await.expect("open the SQLite store");
            (Arc::new(store), TestDb::Sqlite(dir))
        }
        Ok("postgres") => {
            let cluster = pg::PgCluster::start();
            let store = PgStore::connect(&db_url(&cluster))
                .await
                .expect("open the PostgreSQL store");
            (Arc::new(store), TestDb::Postgres(cluster))
        }
        other => panic!("GRAYDAR_TEST_STORE={other:?}: expected sqlite or postgres"),
    }
}

pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub text: String,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text))
    }

    pub fn typed<T: serde::de::DeserializeOwned>(&self) -> T {
        assert!(self.status.is_success(), "HTTP {}: {}", self.status, self.text);
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("unexpected body ({e}): {}", self.text))
    }

    /// Asserts an API error with `status` and the JSON error shape;
    /// returns `(error code, detail)`.
    pub fn error_parts(&self, status: StatusCode) -> (String, String) {
        assert_eq!(self.status, status, "body: {}", self.text);
        let v = self.json();
        assert!(v["error"].is_string() && v["detail"].is_string(), "error shape: {v}");
        (
            v["error"].as_str().unwrap_or_default().to_owned(),
            v["detail"].as_str().unwrap_or_default().to_owned(),
        )
    }
}

impl Api {
    /// A controller with the default fault settings.
    pub async fn new() -> Api {
        Api::with(FaultConfig::default(), liveness()).await
    }

    pub async fn with_faults(cfg: FaultConfig) -> Api {
        Api::with(cfg, liveness()).await
    }

    /// A controller with these fault settings and agent liveness thresholds.
    pub async fn with(cfg: FaultConfig, liveness: Liveness) -> Api {
        Api::with_prometheus(cfg, liveness, None).await
    }

    /// A controller (default settings) on `store`, whose database `db` is.
    pub async fn on_store(store: Arc<dyn Store>, db: TestDb) -> Api {
        Api::build(store, db, Cluster::single(), FaultConfig::default(), liveness(), None).await
    }

    /// [`Api::with`], game days asking the Prometheus at `prometheus`.
    pub async fn with_prometheus(cfg: FaultConfig, liveness: Liveness, prometheus: Option<PrometheusConfig>) -> Api {
        let (store, db) = test_store().await;
        Api::build(store, db, Cluster::single(), cfg, liveness, prometheus).await
    }

    async fn build(
        store: Arc<dyn Store>,
        db: TestDb,
        cluster: Arc<Cluster>,
        cfg: FaultConfig,
        liveness: Liveness,
        prometheus: Option<PrometheusConfig>,
    ) -> Api {
        let tokens = Tokens::parse(&format!("agent:{AGENT}\nviewer:{VIEWER}\noperator:{OPERATOR}")).expect("tokens");
        let services = Services::open_in(store.clone(), cluster, liveness, cfg, prometheus)
            .await
            .expect("services");
        let metrics = Metrics::for_services(&services);
        let state = Arc::new(AppState {
            services,
            tokens,
            metrics,
            heartbeat_interval_seconds: 10,
            tls: false,
        });
        Api {
            app: router(state.clone(), DEFAULT_MAX_BODY),
            state,
            store,
            db,
        }
    }

    /// Whether the store is PostgreSQL (`GRAYDAR_TEST_STORE=postgres`), for
    /// the few outcomes that differ: concurrent requests run side by side
    /// there, where SQLite's writer commits them in arrival order.
    pub fn on_postgres(&self) -> bool {
        matches!(self.db, TestDb::Postgres(_) | TestDb::Shared)
    }

    /// One of several controller replicas on the PostgreSQL database at
    /// `url`: its own store pool and its own cluster membership (LISTEN,
    /// the leader's lock), as `graydar-controller --database-url` runs.
    /// Background tasks are the caller's (`spawn_background`).
    pub async fn replica(url: &graydar_controller::store::DatabaseUrl) -> Api {
        let store: Arc<dyn Store> = Arc::new(PgStore::connect(url).await.expect("open the PostgreSQL store"));
        let cluster = Cluster::postgres(url).await.expect("join the replicas");
        Api::build(store, TestDb::Shared, cluster, FaultConfig::default(), liveness(), None).await
    }

    /// The credential `host`'s agent presents ([`secret_of`]); its
    /// registration enrolled it with [`digest_of`].
    pub fn cred(&self, host: &str) -> String {
        secret_of(host)
    }

    /// Registers an agent as its own agent does (the bootstrap token, the
    /// credential of [`digest_of`]); panics unless it is accepted.
    pub async fn register_as(&self, r: &RegisterRequest) {
        let body = serde_json::to_value(r).expect("a registration as JSON");
        let resp = self.call("POST", "/api/v1/agents/register", AGENT, Some(body)).await;
        assert_eq!(resp.status, StatusCode::OK, "{}", resp.text);
    }

    /// A JSON request with a bearer token.
    pub async fn call(&self, method: &str, path: &str, token: &str, body: Option<Value>) -> Resp {
        self.send(
            method,
            path,
            Some(token),
            body.map(|b| ("application/json", b.to_string())),
        )
        .await
    }

    /// An operator's 300 s blackhole of `prefix` on `agent`: its id.
    pub async fn create_blackhole(&self, agent: &str, prefix: &str) -> String {
        let body = serde_json::json!({
            "targets": {"agents": [agent]},
            "spec": {"kind": "blackhole", "prefix": prefix},
            "duration_seconds": 300
        });
        let r = self.call("POST", "/api/v1/faults", OPERATOR, Some(body)).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        r.json()["id"].as_str().expect("the fault's id").to_owned()
    }

    /// One request: an optional bearer token, an optional body with its
    /// content type.
    pub async fn send(&self, method: &str, path: &str, token: Option<&str>, body: Option<(&str, String)>) -> Resp {
        let mut b = Request::builder().method(method).uri(path);
        if let Some(t) = token {
            b = b.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = match body {
            Some((ctype, text)) => b
                .header(header::CONTENT_TYPE, ctype)
                .body(Body::from(text))
                .expect("request"),
            None => b.body(Body::empty()).expect("request"),
        };
        let resp = self.app.clone().oneshot(req).await.expect("infallible router");
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.into_body().collect().await.expect("body").to_bytes();
        Resp {
            status,
            headers,
            text: String::from_utf8_lossy(&bytes).into_owned(),
        }
    }
}
