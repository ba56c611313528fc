//! Agent endpoints: agents register and heartbeat; readers list them.

use crate::cluster::Change;
use axum::Extension;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use graydar_common::api::{
    AgentInfo, AgentList, ApiError, HeartbeatRequest, HeartbeatResponse, RegisterRequest, RegisterResponse, Role,
};

use super::middleware::guarded;
use super::{Body, Error, PathParam, Shared};
use crate::agents::{AgentService, credentials};
use crate::auth::{Permission, Principal};
use crate::timefmt::now_ms;

pub(super) fn routes(app: &Shared) -> Router<Shared> {
    let enroll = Router::new().route("/api/v1/agents/register", post(register));
    let report = Router::new().route("/api/v1/agents/{hostname}/heartbeat", post(heartbeat));
    let read = Router::new()
        .route("/api/v1/agents", get(list_agents))
        .route("/api/v1/agents/{hostname}", get(get_agent));
    let operate = Router::new().route(
        "/api/v1/agents/{hostname}/credential",
        axum::routing::delete(reset_credential),
    );
    guarded(app, Permission::Enroll, enroll)
        .merge(guarded(app, Permission::Report, report))
        .merge(guarded(app, Permission::Read, read))
        .merge(guarded(app, Permission::Operate, operate))
}

/// Registers (or re-registers) an agent; idempotent. A hostname that is
/// not a DNS name (1 to 253 characters, labels of 1 to 63 letters, digits,
/// `-`, `_`) is refused with 422 naming `hostname`, and nothing is stored.
///
/// Enrollment: an agent generates its own credential, saves it, and
/// registers with the fleet's bootstrap token (role `agent`) and the
/// credential's SHA-256 in `credential_sha256` (required then: 422 naming
/// it); that binds the credential to the hostname, once: the same digest
/// again is a retry and succeeds, another one is 409 (the agent presents the
/// bound credential, or an operator resets it). Every later call of the
/// agent presents the credential, re-registration included; a credential
/// registers its own hostname only (403). An operator token registers any
/// hostname (and enrolls it when `credential_sha256` is given).
#[utoipa::path(post, path = "/api/v1/agents/register", tag = "agents", security(("bearer" = [])),
    request_body = RegisterRequest,
    responses((status = 200, body = RegisterResponse), (status = 400, body = ApiError), (status = 401, body = ApiError),
        (status = 403, body = ApiError), (status = 409, body = ApiError), (status = 413, body = ApiError),
        (status = 422, body = ApiError)))]
pub(super) async fn register(
    State(app): State<Shared>,
    Extension(who): Extension<Principal>,
    Body(req): Body<RegisterRequest>,
) -> Result<Json<RegisterResponse>, Error> {
    let hostname = req.hostname.clone();
    if let Some(own) = who.agent_hostname()
        && own != hostname
    {
        return Err(Error::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "the agent credential of {own:?} may not register {:?}",
                truncated(&hostname)
            ),
        ));
    }
    // Nothing is kept for a hostname that cannot register, and the binding
    // is checked (and stored) before the registration: a refused enrollment
    // changes nothing.
    AgentService::valid_hostname(&hostname)?;
    let digest = match (&who, req.credential_sha256.as_deref()) {
        (Principal::Agent(_), _) => None,
        (_, Some(hex)) => Some(credentials::parse_digest(hex).ok_or_else(|| {
            Error::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid",
                "credential_sha256: must be 64 lowercase hex digits (the SHA-256 of the agent's credential)",
            )
        })?),
        (Principal::Token(Role::Agent), None) => {
            return Err(Error::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid",
                "credential_sha256: required when enrolling with the agent (bootstrap) token",
            ));
        }
        (_, None) => None,
    };
    if let Some(d) = digest {
        app.services.credentials.enroll(&hostname, d).await?;
    }
    let (interfaces, dm_devices) = (req.interfaces.clone(), req.dm_devices.clone());
    let addresses = req.addresses.clone();
    let agent = app.services.agents.register(req).await?;
    app.services.faults.set_inventory(&hostname, interfaces, dm_devices);
    app.services.faults.set_addresses(&hostname, &addresses);
    let enrolled = app.services.credentials.is_enrolled(&hostname);
    app.services.announce(Change::Agent(hostname.clone())).await;
    tracing::info!(agent = %hostname, enrolled, "agent registered");
    Ok(Json(RegisterResponse {
        agent,
        heartbeat_interval_seconds: app.heartbeat_interval_seconds,
        enrolled,
    }))
}

/// At most 80 characters of a name from a request, for messages.
fn truncated(s: &str) -> String {
    s.chars().take(80).collect()
}

/// Forgets an agent's credential: its calls answer 401 from now on, and the
/// next enrollment of the hostname with the bootstrap token gets a new one
/// (a rebuilt host that lost its state directory). 404 when it has none.
#[utoipa::path(delete, path = "/api/v1/agents/{hostname}/credential", tag = "agents", security(("bearer" = [])),
    params(("hostname" = String, Path, description = "agent hostname")),
    responses((status = 204, description = "forgotten"), (status = 401, body = ApiError), (status = 403, body = ApiError),
        (status = 404, body = ApiError)))]
pub(super) async fn reset_credential(
    State(app): State<Shared>,
    PathParam(hostname): PathParam<String>,
) -> Result<StatusCode, Error> {
    if app.services.credentials.reset(&hostname).await? {
        app.services.announce(Change::Agent(hostname.clone())).await;
        tracing::info!(agent = %hostname, "agent credential reset");
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(Error::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("agent {:?} has no credential", truncated(&hostname)),
        ))
    }
}

/// Heartbeat of a registered agent (404: register first). The answer gives
/// the controller's receive and send times (`received_ms`, `sent_ms`); the
/// agent sends them back with its next heartbeat as `clock`, with its own
/// send and receive times, and the controller estimates the agent's clock
/// offset from them (`clock` of the agent's [`AgentInfo`]). An impossible
/// exchange (a clock stepped meanwhile) is ignored.
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
    // t2: the first thing the handler does (auth and the body's reading
    // before it only widen the exchange's uncertainty, never bias it).
    let received_ms = now_ms();
    match app.services.agents.touch(&hostname) {
        Ok(state) => {
            if let Some(exchange) = req.clock
                && !app.services.agents.add_clock_exchange(&hostname, exchange)
            {
                tracing::debug!(agent = %hostname, ?exchange, "impossible clock exchange ignored");
            }
            app.services
                .faults
                .set_inventory(&hostname, req.interfaces, req.dm_devices);
            app.metrics.heartbeats.with_label_values(&["ok"]).inc();
            // t3: as late as possible, just before the answer is serialized.
            Ok(Json(HeartbeatResponse {
                state,
                received_ms: Some(received_ms),
                sent_ms: Some(now_ms()),
            }))
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
