//! `/healthz`, `/readyz` and `/metrics`.

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use graydar_common::api::ApiError;

use super::middleware::guarded;
use super::{Error, Shared};
use crate::auth::Permission;

pub(super) fn routes(app: &Shared) -> Router<Shared> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .merge(guarded(
            app,
            Permission::Read,
            Router::new().route("/metrics", get(metrics)),
        ))
}

/// Liveness: the process serves HTTP.
#[utoipa::path(get, path = "/healthz", tag = "health", responses((status = 200, description = "alive")))]
pub(super) async fn healthz() -> &'static str {
    "ok\n"
}

/// Readiness: the database answers.
#[utoipa::path(get, path = "/readyz", tag = "health", responses((status = 200, description = "ready"), (status = 503, body = ApiError)))]
pub(super) async fn readyz(State(app): State<Shared>) -> Result<&'static str, Error> {
    app.services
        .ping()
        .await
        .map_err(|e| Error::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", e.to_string()))?;
    Ok("ready\n")
}

/// Prometheus metrics (viewer or operator token).
#[utoipa::path(get, path = "/metrics", tag = "health", security(("bearer" = [])),
    responses((status = 200, description = "Prometheus text format"), (status = 401, body = ApiError), (status = 403, body = ApiError)))]
pub(super) async fn metrics(State(app): State<Shared>) -> Response {
    for (state, n) in app.services.agents.states() {
        app.metrics
            .agents
            .with_label_values(&[state.as_str()])
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }
    app.metrics
        .safety_lever
        .set(i64::from(app.services.faults.safety_lever().engaged));
    app.metrics.gameday_step_active.reset();
    for (gameday, step, host) in app.services.gamedays.active_steps() {
        app.metrics
            .gameday_step_active
            .with_label_values(&[&gameday, &step, &host])
            .set(1);
    }
    match app.services.faults.counts().await {
        Ok(counts) => {
            for (status, n) in counts.by_status {
                app.metrics.faults.with_label_values(&[status.as_str()]).set(n);
            }
            for (state, n) in counts.by_state {
                app.metrics
                    .fault_assignments
                    .with_label_values(&[state.as_str()])
                    .set(n);
            }
        }
        // The previous values stay; the scrape itself must not fail.
        Err(e) => tracing::warn!(error = %e, "counting faults for /metrics"),
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.metrics.render(),
    )
        .into_response()
}
