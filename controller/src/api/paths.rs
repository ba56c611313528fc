//! Path endpoints: agents push their view of the mesh and get their peers;
//! viewers read the matrix.

use crate::cluster::Change;
use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use graydar_common::api::ApiError;
use graydar_common::paths::{
    DirectionStats, MeshKeyEntry, MeshKeyInfo, MeshKeyList, MeshKeySet, PathMatrix, PathPair, PathReport,
    PathReportResponse, PeerObservation, PeerTarget,
};
use utoipa::OpenApi;

use super::middleware::guarded;
use super::{Body, Error, PathParam, Shared, at_most};
use crate::auth::Permission;

/// Most peers in one report.
pub const MAX_PEERS_PER_REPORT: usize = 1024;

pub(super) fn routes(app: &Shared) -> Router<Shared> {
    let report = Router::new().route("/api/v1/agents/{hostname}/paths", post(push_paths));
    let read = Router::new().route("/api/v1/paths", get(get_paths));
    let keys = Router::new()
        .route("/api/v1/paths/keys", get(get_keys))
        .route("/api/v1/paths/keys/rotate", post(rotate_key));
    guarded(app, Permission::Report, report)
        .merge(guarded(app, Permission::Read, read))
        .merge(guarded(app, Permission::Operate, keys))
}

/// The path mesh's fleet keys by id and when each signs (never the
/// secrets: agents get those with their peer list).
#[utoipa::path(get, path = "/api/v1/paths/keys", tag = "paths", security(("bearer" = [])),
    responses((status = 200, body = MeshKeyList), (status = 401, body = ApiError), (status = 403, body = ApiError)))]
pub(super) async fn get_keys(State(app): State<Shared>) -> Json<MeshKeyList> {
    Json(app.services.paths.keys())
}

/// Rotates the path mesh's fleet key: the new key is handed to agents with
/// their next peer list and becomes the signing key 60 s later; the oldest
/// of the three kept keys is dropped.
#[utoipa::path(post, path = "/api/v1/paths/keys/rotate", tag = "paths", security(("bearer" = [])),
    responses((status = 200, body = MeshKeyList), (status = 401, body = ApiError), (status = 403, body = ApiError),
        (status = 500, body = ApiError)))]
pub(super) async fn rotate_key(State(app): State<Shared>) -> Result<Json<MeshKeyList>, Error> {
    let keys = app.services.paths.rotate_key().await?;
    app.services.announce(Change::Keys).await;
    Ok(Json(keys))
}

/// An agent's per-peer, per-direction view of the probe mesh; the answer is
/// its peer list (all members, or a stable subset of `max_peers`).
#[utoipa::path(post, path = "/api/v1/agents/{hostname}/paths", tag = "paths", security(("bearer" = [])),
    params(("hostname" = String, Path, description = "agent hostname")),
    request_body = PathReport,
    responses((status = 200, body = PathReportResponse), (status = 400, body = ApiError), (status = 401, body = ApiError),
        (status = 403, body = ApiError), (status = 404, body = ApiError), (status = 422, body = ApiError)))]
pub(super) async fn push_paths(
    State(app): State<Shared>,
    PathParam(hostname): PathParam<String>,
    Body(report): Body<PathReport>,
) -> Result<Json<PathReportResponse>, Error> {
    at_most(report.peers.len(), MAX_PEERS_PER_REPORT, "peers per report")?;
    // Registered agents only (404 tells the agent to register first).
    Ok(Json(app.services.paths.report(&hostname, report)?))
}

/// The path matrix: per ordered pair loss, RTT, hop count, one-way delay
/// variation, state and the path findings firing on it.
#[utoipa::path(get, path = "/api/v1/paths", tag = "paths", security(("bearer" = [])),
    responses((status = 200, body = PathMatrix), (status = 401, body = ApiError), (status = 403, body = ApiError)))]
pub(super) async fn get_paths(State(app): State<Shared>) -> Json<PathMatrix> {
    Json(app.services.paths.matrix())
}

#[derive(OpenApi)]
#[openapi(
    paths(push_paths, get_paths, get_keys, rotate_key),
    components(schemas(
        MeshKeySet,
        MeshKeyEntry,
        MeshKeyList,
        MeshKeyInfo,
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
