//! Agent endpoints: agents register and heartbeat; readers list them.

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use graydar_common::api::{
    AgentInfo, AgentList, ApiError, HeartbeatRequest, HeartbeatResponse, RegisterRequest, RegisterResponse,
};

use super::middleware::guarded;
use super::{Body, Error, PathParam, Shared};
use crate::auth::Permission;

pub(super) fn routes(app: &Shared) -> Router<Shared> {
    let report = Router::new()
        .route("/api/v1/agents/register", post(register))
        .route("/api/v1/agents/{hostname}/heartbeat", post(heartbeat));
    let read = Router::new()
        .route("/api/v1/agents", get(list_agents))
        .route("/api/v1/agents/{hostname}", get(get_agent));
    guarded(app, Permission::Report, report).merge(guarded(app, Permission::Read, read))
}

/// Registers (or re-registers) an agent; idempotent. A hostname that is
/// not a DNS name (1 to 253 characters, labels of 1 to 63 letters, digits,
/// `-`, `_`) is refused with 422 naming `hostname`, and nothing is stored.
#[utoipa::path(post, path = "/api/v1/agents/register", tag = "agents", security(("bearer" = [])),
    request_body = RegisterRequest,
    responses((status = 200, body = RegisterResponse), (status = 400, body = ApiError), (status = 401, body = ApiError),
        (status = 403, body = ApiError), (status = 413, body = ApiError), (status = 422, body = ApiError)))]
pub(super) async fn register(
    State(app): State<Shared>,
    Body(req): Body<RegisterRequest>,
) -> Result<Json<RegisterResponse>, Error> {
    let hostname = req.hostname.clone();
    let (interfaces, dm_devices) = (req.interfaces.clone(), req.dm_devices.clone());
    // Validates the hostname before anything is kept.
    let agent = app.services.agents.register(req).await?;
    app.services.faults.set_inventory(&hostname, interfaces, dm_devices);
    tracing::info!(agent = %hostname, "agent registered");
    Ok(Json(RegisterResponse {
        agent,
        heartbeat_interval_seconds: app.heartbeat_interval_seconds,
    }))
}

/// Heartbeat of a registered agent (404: register first).
#[utoipa::path(post, path = "/api/v1/agents/{hostname}/heartbeat", tag = "agents", security(("bearer" = [])),
    params(("hostname" = String, Path, description = "agent hostname")),
    request_body = HeartbeatRequest,
    responses((status = 200, body = HeartbeatResponse), (status = 400, body = ApiError), (status = 401, body = ApiError),
        (status = 403, body = ApiError), (status = 404, body = ApiError), (status = 422, body = ApiError)))]
pub(super) async fn heartbeat(
    State(app): State<Shared>,
    PathParam(hostname): PathParam<String>,
    Body(req): Body<HeartbeatRequest>,
) -> Result<Json<HeartbeatResponse>, Error> {
    match app.services.agents.touch(&hostname) {
        Ok(state) => {
            app.services
                .faults
                .set_inventory(&hostname, req.interfaces, req.dm_devices);
            app.metrics.heartbeats.with_label_values(&["ok"]).inc();
            Ok(Json(HeartbeatResponse { state }))
        }
        Err(e) => {
            app.metrics.heartbeats.with_label_values(&["unknown_agent"]).inc();
            Err(e.into())
        }
    }
}

/// All registered agents with last-seen time and state.
#[utoipa::path(get, path = "/api/v1/agents", tag = "agents", security(("bearer" = [])),
    responses((status = 200, body = AgentList), (status = 401, body = ApiError), (status = 403, body = ApiError)))]
pub(super) async fn list_agents(State(app): State<Shared>) -> Result<Json<AgentList>, Error> {
    Ok(Json(AgentList {
        agents: app.services.agents.list().await?,
    }))
}

/// One agent.
#[utoipa::path(get, path = "/api/v1/agents/{hostname}", tag = "agents", security(("bearer" = [])),
    params(("hostname" = String, Path, description = "agent hostname")),
    responses((status = 200, body = AgentInfo), (status = 401, body = ApiError), (status = 403, body = ApiError), (status = 404, body = ApiError)))]
pub(super) async fn get_agent(
    State(app): State<Shared>,
    PathParam(hostname): PathParam<String>,
) -> Result<Json<AgentInfo>, Error> {
    Ok(Json(app.services.agents.get(&hostname).await?))
}
