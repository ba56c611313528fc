//! Path endpoints: agents push their view of the mesh and get their peers;
//! viewers read the matrix.

use std::sync::Arc;

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router, middleware};
use graydar_common::api::ApiError;
use graydar_common::paths::{
    DirectionStats, PathMatrix, PathPair, PathReport, PathReportResponse, PeerObservation, PeerTarget,
};
use utoipa::OpenApi;

use crate::api::{AppState, Body, Error, PathParam, require};
use crate::auth::Permission;
use crate::timefmt::now_ms;

type Shared = Arc<AppState>;

/// Most peers in one report.
pub const MAX_PEERS_PER_REPORT: usize = 1024;

pub fn routes(app: Shared) -> Router<Shared> {
    let report = Router::new()
        .route("/api/v1/agents/{hostname}/paths", post(push_paths))
        .route_layer(middleware::from_fn_with_state(
            (app.clone(), Permission::Report),
            require,
        ));
    let read = Router::new()
        .route("/api/v1/paths", get(get_paths))
        .route_layer(middleware::from_fn_with_state((app, Permission::Read), require));
    report.merge(read)
}

/// An agent's per-peer, per-direction view of the probe mesh; the answer is
/// its peer list (all members, or a stable subset of `max_peers`).
#[utoipa::path(post, path = "/api/v1/agents/{hostname}/paths", tag = "paths", security(("bearer" = [])),
    params(("hostname" = String, Path, description = "agent hostname")),
    request_body = PathReport,
    responses((status = 200, body = PathReportResponse), (status = 400, body = ApiError), (status = 401, body = ApiError),
        (status = 403, body = ApiError), (status = 404, body = ApiError), (status = 422, body = ApiError)))]
async fn push_paths(
    State(app): State<Shared>,
    PathParam(hostname): PathParam<String>,
    Body(report): Body<PathReport>,
) -> Result<Json<PathReportResponse>, Error> {
    if report.peers.len() > MAX_PEERS_PER_REPORT {
        return Err(Error::new(
            axum::http::StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("at most {MAX_PEERS_PER_REPORT} peers per report"),
        ));
    }
    super::validate(&hostname, &report)
        .map_err(|d| Error::new(axum::http::StatusCode::UNPROCESSABLE_ENTITY, "invalid", d))?;
    // Registered agents only (404 tells the agent to register first).
    app.store.touch(&hostname)?;
    Ok(Json(app.store.paths().ingest(&hostname, report, now_ms())))
}

/// The path matrix: per ordered pair loss, RTT, hop count, one-way delay
/// variation, state and the path findings firing on it.
#[utoipa::path(get, path = "/api/v1/paths", tag = "paths", security(("bearer" = [])),
    responses((status = 200, body = PathMatrix), (status = 401, body = ApiError), (status = 403, body = ApiError)))]
async fn get_paths(State(app): State<Shared>) -> Json<PathMatrix> {
    Json(app.store.paths().matrix(now_ms()))
}

#[derive(OpenApi)]
#[openapi(
    paths(push_paths, get_paths),
    components(schemas(
        PathReport,
        PeerObservation,
        DirectionStats,
        PathReportResponse,
        PeerTarget,
        PathMatrix,
        PathPair
    ))
)]
pub struct PathsDoc;
