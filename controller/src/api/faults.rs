//! Fault endpoints: operators create / list / get / delete faults, pull
//! the kill switch and the safety lever; agents long-poll their desired set
//! and report states.

use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use graydar_common::api::ApiError;
use graydar_common::fault_api::{
    AgentFaultStatus, CreateFaultRequest, DesiredFault, DesiredFaults, FaultInfo, FaultList, FaultStatusReport,
    FaultStatusResponse, FaultStatusUpdate, FaultTargets, MAX_LEVER_REASON, RevertAllResponse, SafetyLever,
    SetSafetyLever,
};
use graydar_common::faults::{
    Direction, DmFaultSpec, FaultSpec, FaultState, FlakeyMode, Loss, NetemSpec, Protocol, Scope,
};
use serde::Deserialize;
use utoipa::OpenApi;

use super::middleware::guarded;
use super::{Body, Error, MAX_BATCH, Params, PathParam, Shared, at_most, limit};
use crate::auth::Permission;
use crate::faults::FaultStatus;

/// Longest long-poll an agent may ask for (seconds).
pub const MAX_WAIT_SECONDS: u64 = 60;

/// The fault routes, each behind the role it needs.
pub(super) fn routes(app: &Shared) -> Router<Shared> {
    let operate = Router::new()
        .route("/api/v1/faults", post(create_fault))
        .route("/api/v1/faults/{id}", axum::routing::delete(delete_fault))
        .route("/api/v1/faults/revert-all", post(revert_all))
        .route("/api/v1/safety-lever", axum::routing::put(set_safety_lever));
    let read = Router::new()
        .route("/api/v1/safety-lever", get(safety_lever))
        .route("/api/v1/faults", get(list_faults))
        .route("/api/v1/faults/{id}", get(get_fault));
    let agent = Router::new()
        .route("/api/v1/agents/{hostname}/faults", get(desired_faults))
        .route("/api/v1/agents/{hostname}/faults/status", post(fault_status));
    guarded(app, Permission::Operate, operate)
        .merge(guarded(app, Permission::Read, read))
        .merge(guarded(app, Permission::Report, agent))
}

/// `status` filter of the fault list (`GET /api/v1/faults?status=`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ListStatus {
    Running,
    DryRun,
    Ended,
    /// Ended because it failed on every agent it targets.
    Failed,
}

impl From<ListStatus> for FaultStatus {
    fn from(s: ListStatus) -> FaultStatus {
        match s {
            ListStatus::Running => FaultStatus::Running,
            ListStatus::DryRun => FaultStatus::DryRun,
            ListStatus::Ended => FaultStatus::Ended,
            ListStatus::Failed => FaultStatus::Failed,
        }
    }
}

/// Query of `POST /api/v1/faults`.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct CreateQuery {
    /// Dry run: seconds to wait for the agents' operations (default
    /// `faults.dry_run_wait`, 10 s; at most 60).
    pub wait: Option<u32>,
}

/// Creates a fault on the agents named by `targets` (operator). A dry run
/// waits up to `wait` seconds for every agent's operations: 200 when all
/// answered, 202 with the answers received until then otherwise (poll `GET /api/v1/faults/{id}`).
#[utoipa::path(post, path = "/api/v1/faults", tag = "faults", security(("bearer" = [])),
    params(CreateQuery), request_body = CreateFaultRequest,
    responses((status = 201, body = FaultInfo, description = "created; agents apply it within one poll"),
        (status = 200, body = FaultInfo, description = "dry run: every agent listed its operations"),
        (status = 202, body = FaultInfo, description = "dry run: some agents have not answered yet"),
        (status = 400, body = ApiError), (status = 401, body = ApiError), (status = 403, body = ApiError),
        (status = 409, body = ApiError, description = "refused by the blast-radius limit (pass force)"),
        (status = 422, body = ApiError, description = "invalid spec, duration or targets: the detail says what")))]
pub(super) async fn create_fault(
    State(app): State<Shared>,
    Params(q): Params<CreateQuery>,
    Body(req): Body<CreateFaultRequest>,
) -> Result<Response, Error> {
    let faults = &app.services.faults;
    let agents = app.services.agents.list().await?;
    let dry_run = req.dry_run;
    let info = faults.create(req, &agents).await?;
    if !dry_run {
        return Ok((StatusCode::CREATED, axum::Json(info)).into_response());
    }
    let wait = q.wait.map_or(faults.config().dry_run_wait, |s| {
        Duration::from_secs(u64::from(s).min(MAX_WAIT_SECONDS))
    });
    faults.wait_dry_run(&info.id, wait).await;
    let info = faults.get(&info.id).await?;
    let status = if faults.dry_run_done(&info.id) {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    Ok((status, axum::Json(info)).into_response())
}

/// Query of `GET /api/v1/faults`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only faults with this status: `running`, `dry_run` or `ended`.
    pub status: Option<ListStatus>,
    /// At most this many, newest first (default 500, max 10000).
    #[param(minimum = 1, maximum = 10000)]
    pub limit: Option<u32>,
}

/// Faults newest first (the whole history, from the database), with
/// per-agent states.
#[utoipa::path(get, path = "/api/v1/faults", tag = "faults", security(("bearer" = [])),
    params(ListQuery),
    responses((status = 200, body = FaultList), (status = 400, body = ApiError), (status = 401, body = ApiError), (status = 403, body = ApiError)))]
pub(super) async fn list_faults(
    State(app): State<Shared>,
    Params(q): Params<ListQuery>,
) -> Result<axum::Json<FaultList>, Error> {
    let limit = limit(q.limit)?;
    Ok(axum::Json(FaultList {
        faults: app.services.faults.list(q.status.map(FaultStatus::from), limit).await?,
    }))
}

/// One fault with per-agent state (pending, active, reverted, failed with
/// the reason, described with the dry-run operations).
#[utoipa::path(get, path = "/api/v1/faults/{id}", tag = "faults", security(("bearer" = [])),
    params(("id" = String, Path, description = "fault id")),
    responses((status = 200, body = FaultInfo), (status = 401, body = ApiError), (status = 403, body = ApiError), (status = 404, body = ApiError)))]
pub(super) async fn get_fault(
    State(app): State<Shared>,
    PathParam(id): PathParam<String>,
) -> Result<axum::Json<FaultInfo>, Error> {
    Ok(axum::Json(app.services.faults.get(&id).await?))
}

/// Reverts a fault now (operator): its agents are woken and revert it.
/// Idempotent.
#[utoipa::path(delete, path = "/api/v1/faults/{id}", tag = "faults", security(("bearer" = [])),
    params(("id" = String, Path, description = "fault id")),
    responses((status = 200, body = FaultInfo), (status = 401, body = ApiError), (status = 403, body = ApiError), (status = 404, body = ApiError)))]
pub(super) async fn delete_fault(
    State(app): State<Shared>,
    PathParam(id): PathParam<String>,
) -> Result<axum::Json<FaultInfo>, Error> {
    Ok(axum::Json(app.services.faults.end(&id).await?))
}

/// The kill switch (operator): ends every fault and makes every agent revert
/// every fault it has active, including ones this controller does not know.
#[utoipa::path(post, path = "/api/v1/faults/revert-all", tag = "faults", security(("bearer" = [])),
    responses((status = 200, body = RevertAllResponse), (status = 401, body = ApiError), (status = 403, body = ApiError)))]
pub(super) async fn revert_all(State(app): State<Shared>) -> Result<axum::Json<RevertAllResponse>, Error> {
    Ok(axum::Json(app.services.faults.revert_all().await?))
}

/// The safety lever (viewer): engaged or not, since when and why.
#[utoipa::path(get, path = "/api/v1/safety-lever", tag = "faults", security(("bearer" = [])),
    responses((status = 200, body = SafetyLever), (status = 401, body = ApiError), (status = 403, body = ApiError)))]
pub(super) async fn safety_lever(State(app): State<Shared>) -> axum::Json<SafetyLever> {
    axum::Json(app.services.faults.safety_lever())
}

/// Engages or releases the safety lever (operator). Engaging it is stored
/// first, then every fault is ended as by the kill switch; until it is
/// released every new fault (not a dry run) answers 409 `safety_lever`.
/// Engaging it also aborts every game-day run in progress.
#[utoipa::path(put, path = "/api/v1/safety-lever", tag = "faults", security(("bearer" = [])),
    request_body = SetSafetyLever,
    responses((status = 200, body = SafetyLever), (status = 401, body = ApiError), (status = 403, body = ApiError),
        (status = 422, body = ApiError, description = "a reason longer than 500 characters")))]
pub(super) async fn set_safety_lever(
    State(app): State<Shared>,
    Body(req): Body<SetSafetyLever>,
) -> Result<axum::Json<SafetyLever>, Error> {
    let faults = &app.services.faults;
    let reason = req.reason.unwrap_or_default();
    // Checked whether engaging or releasing: the document's limit holds for both.
    let chars = reason.chars().count();
    if chars > MAX_LEVER_REASON {
        return Err(Error::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            format!("reason: {chars} characters, at most {MAX_LEVER_REASON}"),
        ));
    }
    let lever = if req.engaged {
        let reason = if reason.trim().is_empty() {
            "no reason given".to_owned()
        } else {
            reason
        };
        app.services.engage_safety_lever(reason).await?
    } else {
        faults.release_safety_lever().await?
    };
    Ok(axum::Json(lever))
}

/// Query of the agents' long-poll.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PollQuery {
    /// Seconds to wait for a change (capped at 60 and at a third of the
    /// lease: the shortest of this agent's faults' leases, else the controller's).
    pub wait: Option<u32>,
    /// The `version` of the agent's last answer: answer at once when it differs.
    pub version: Option<u64>,
}

/// Long-poll of an agent's desired faults: answers at once when `version`
/// differs from the current one, else at the next change or after `wait`.
/// Counts as a heartbeat. 404 for an agent that is not registered (it
/// registers first); nothing is kept for it.
#[utoipa::path(get, path = "/api/v1/agents/{hostname}/faults", tag = "faults", security(("bearer" = [])),
    params(("hostname" = String, Path, description = "agent hostname"), PollQuery),
    responses((status = 200, body = DesiredFaults), (status = 400, body = ApiError), (status = 401, body = ApiError),
        (status = 403, body = ApiError), (status = 404, body = ApiError, description = "the agent is not registered")))]
pub(super) async fn desired_faults(
    State(app): State<Shared>,
    PathParam(hostname): PathParam<String>,
    Params(q): Params<PollQuery>,
) -> Result<axum::Json<DesiredFaults>, Error> {
    let faults = &app.services.faults;
    // A heartbeat; only a registered agent gets a watcher.
    app.services.agents.touch(&hostname)?;
    let max_wait = (faults.poll_lease(&hostname).as_secs() / 3).clamp(1, MAX_WAIT_SECONDS);
    let wait = Duration::from_secs(q.wait.map_or(max_wait, u64::from).min(max_wait));
    Ok(axum::Json(faults.poll(&hostname, q.version, wait).await))
}

/// An agent reports the state of its faults.
#[utoipa::path(post, path = "/api/v1/agents/{hostname}/faults/status", tag = "faults", security(("bearer" = [])),
    params(("hostname" = String, Path, description = "agent hostname")),
    request_body = FaultStatusReport,
    responses((status = 200, body = FaultStatusResponse), (status = 400, body = ApiError), (status = 401, body = ApiError),
        (status = 403, body = ApiError), (status = 413, body = ApiError), (status = 422, body = ApiError)))]
pub(super) async fn fault_status(
    State(app): State<Shared>,
    PathParam(hostname): PathParam<String>,
    Body(report): Body<FaultStatusReport>,
) -> Result<axum::Json<FaultStatusResponse>, Error> {
    at_most(report.statuses.len(), MAX_BATCH, "statuses per report")?;
    let _ = app.services.agents.touch(&hostname);
    let (accepted, ignored) = app.services.faults.report(&hostname, report.statuses).await?;
    Ok(axum::Json(FaultStatusResponse { accepted, ignored }))
}

#[derive(OpenApi)]
#[openapi(
    paths(
        create_fault,
        list_faults,
        get_fault,
        delete_fault,
        revert_all,
        safety_lever,
        set_safety_lever,
        desired_faults,
        fault_status
    ),
    components(schemas(
        CreateFaultRequest,
        FaultTargets,
        FaultInfo,
        FaultList,
        AgentFaultStatus,
        RevertAllResponse,
        SafetyLever,
        SetSafetyLever,
        DesiredFault,
        DesiredFaults,
        FaultStatusReport,
        FaultStatusUpdate,
        FaultStatusResponse,
        FaultSpec,
        FaultState,
        Direction,
        Scope,
        Protocol,
        NetemSpec,
        Loss,
        DmFaultSpec,
        FlakeyMode,
        ListStatus
    ))
)]
pub struct FaultsDoc;
