//! The agent's HTTP server: /metrics, /healthz, /readyz, /api/v1/findings.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use graydar_common::api::FindingsResponse;

use crate::findings::FindingStore;
use crate::metrics::Metrics;

#[derive(Clone)]
pub struct AppState {
    pub metrics: Arc<Metrics>,
    pub findings: Arc<Mutex<FindingStore>>,
    pub ready: Arc<AtomicBool>,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/api/v1/findings", get(findings))
        .fallback(|| async { (StatusCode::NOT_FOUND, Json(serde_json::json!({"error": "not found"}))) })
        .with_state(state)
}

async fn metrics(State(s): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        s.metrics.render(),
    )
        .into_response()
}

async fn readyz(State(s): State<AppState>) -> Response {
    if s.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "starting: first collection not done yet\n",
        )
            .into_response()
    }
}

async fn findings(State(s): State<AppState>) -> Json<FindingsResponse> {
    let mut store = match s.findings.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    };
    Json(FindingsResponse {
        host: store.host().to_owned(),
        findings: store.list(SystemTime::now()),
    })
}
