//! Game-day definitions: operators create, replace and delete them,
//! viewers read them. A spec that does not validate answers 422 with every
//! error and its field path.

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use graydar_common::api::ApiError;
use graydar_common::gameday::run::{AbortRun, Outcome, RunInfo, RunList, RunState, StartRun};
use graydar_common::gameday::{GameDayInfo, GameDayList, GameDaySpec};
use serde::Deserialize;
use utoipa::OpenApi;

use super::middleware::guarded;
use super::{Body, Error, Params, PathParam, Shared};
use crate::auth::Permission;
use crate::store::RunFilter;

pub(super) fn routes(app: &Shared) -> Router<Shared> {
    let operate = Router::new()
        .route("/api/v1/gamedays", axum::routing::post(create))
        .route("/api/v1/gamedays/{name}", axum::routing::put(put).delete(delete))
        .route("/api/v1/gamedays/{name}/runs", axum::routing::post(start_run))
        .route("/api/v1/runs/{id}/abort", axum::routing::post(abort_run))
        .route("/api/v1/runs/{id}/resume", axum::routing::post(resume_run));
    let read = Router::new()
        .route("/api/v1/gamedays", get(list))
        .route("/api/v1/gamedays/{name}", get(get_one))
        .route("/api/v1/runs", get(list_runs))
        .route("/api/v1/runs/{id}", get(get_run));
    guarded(app, Permission::Operate, operate).merge(guarded(app, Permission::Read, read))
}

/// Stores a new game day (operator). 409 when the name exists.
#[utoipa::path(post, path = "/api/v1/gamedays", tag = "gamedays", security(("bearer" = [])),
    request_body(content = Object, description = "a game-day spec (the book's Game days page)"),
    responses((status = 201, body = GameDayInfo), (status = 401, body = ApiError), (status = 403, body = ApiError),
        (status = 409, body = ApiError, description = "a game day of this name exists"),
        (status = 422, body = ApiError, description = "the spec does not validate: every error with its field path")))]
pub(super) async fn create(State(app): State<Shared>, Body(spec): Body<GameDaySpec>) -> Result<Response, Error> {
    let info = app.services.gamedays.create(spec).await?;
    Ok((StatusCode::CREATED, axum::Json(info)).into_response())
}

/// Creates or replaces the game day `name` (operator): 201 created, 200
/// replaced. The spec's `name` must be `name`.
#[utoipa::path(put, path = "/api/v1/gamedays/{name}", tag = "gamedays", security(("bearer" = [])),
    params(("name" = String, Path, description = "game-day name")),
    request_body(content = Object, description = "a game-day spec (the book's Game days page)"),
    responses((status = 200, body = GameDayInfo, description = "replaced"), (status = 201, body = GameDayInfo, description = "created"),
        (status = 401, body = ApiError), (status = 403, body = ApiError),
        (status = 422, body = ApiError, description = "the spec does not validate, or its name is not the path's")))]
pub(super) async fn put(
    State(app): State<Shared>,
    PathParam(name): PathParam<String>,
    Body(spec): Body<GameDaySpec>,
) -> Result<Response, Error> {
    let (info, replaced) = app.services.gamedays.put(&name, spec).await?;
    let status = if replaced { StatusCode::OK } else { StatusCode::CREATED };
    Ok((status, axum::Json(info)).into_response())
}

/// Every game day, by name.
#[utoipa::path(get, path = "/api/v1/gamedays", tag = "gamedays", security(("bearer" = [])),
    responses((status = 200, body = GameDayList), (status = 401, body = ApiError), (status = 403, body = ApiError)))]
pub(super) async fn list(State(app): State<Shared>) -> Result<axum::Json<GameDayList>, Error> {
    Ok(axum::Json(GameDayList {
        gamedays: app.services.gamedays.list().await?,
    }))
}

/// One game day.
#[utoipa::path(get, path = "/api/v1/gamedays/{name}", tag = "gamedays", security(("bearer" = [])),
    params(("name" = String, Path, description = "game-day name")),
    responses((status = 200, body = GameDayInfo), (status = 401, body = ApiError), (status = 403, body = ApiError),
        (status = 404, body = ApiError)))]
pub(super) async fn get_one(
    State(app): State<Shared>,
    PathParam(name): PathParam<String>,
) -> Result<axum::Json<GameDayInfo>, Error> {
    Ok(axum::Json(app.services.gamedays.get(&name).await?))
}

/// Deletes a game day (operator): 204.
#[utoipa::path(delete, path = "/api/v1/gamedays/{name}", tag = "gamedays", security(("bearer" = [])),
    params(("name" = String, Path, description = "game-day name")),
    responses((status = 204, description = "deleted"), (status = 401, body = ApiError), (status = 403, body = ApiError),
        (status = 404, body = ApiError)))]
pub(super) async fn delete(State(app): State<Shared>, PathParam(name): PathParam<String>) -> Result<StatusCode, Error> {
    app.services.gamedays.delete(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Starts a run of the game day `name` (operator): its groups are resolved
/// and its preflight checked before anything is injected. 201 with the
/// run (follow it with `GET /api/v1/runs/{id}`); with `dry_run`, 200 with
/// the plan, the preflight and each agent's operations, nothing applied or
/// stored. A refused preflight is stored as a cancelled run and answers 409.
#[utoipa::path(post, path = "/api/v1/gamedays/{name}/runs", tag = "gamedays", security(("bearer" = [])),
    params(("name" = String, Path, description = "game-day name")),
    request_body = StartRun,
    responses((status = 201, body = RunInfo, description = "started"), (status = 200, body = RunInfo, description = "dry run"),
        (status = 401, body = ApiError), (status = 403, body = ApiError), (status = 404, body = ApiError),
        (status = 409, body = ApiError, description = "`preflight` (refused: the run is stored as cancelled), `safety_lever`, or `run_active` (a run of this game day is in progress)")))]
pub(super) async fn start_run(
    State(app): State<Shared>,
    PathParam(name): PathParam<String>,
    Body(req): Body<StartRun>,
) -> Result<Response, Error> {
    let dry = req.dry_run;
    let run = app.services.gamedays.start(&name, req, "api").await?;
    let status = if dry { StatusCode::OK } else { StatusCode::CREATED };
    Ok((status, axum::Json(run)).into_response())
}

/// Filters of the run list.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct RunQuery {
    /// Only runs of this game day.
    pub gameday: Option<String>,
    /// Only runs in this state.
    #[param(value_type = Option<RunState>)]
    pub state: Option<RunState>,
    /// Only runs that ended so.
    #[param(value_type = Option<Outcome>)]
    pub outcome: Option<Outcome>,
    /// At most this many, newest first (default 500, max 10000).
    #[param(minimum = 1, maximum = 10000)]
    pub limit: Option<u32>,
}

/// Game-day runs, newest first.
#[utoipa::path(get, path = "/api/v1/runs", tag = "gamedays", security(("bearer" = [])),
    params(RunQuery),
    responses((status = 200, body = RunList), (status = 400, body = ApiError), (status = 401, body = ApiError),
        (status = 403, body = ApiError)))]
pub(super) async fn list_runs(
    State(app): State<Shared>,
    Params(q): Params<RunQuery>,
) -> Result<axum::Json<RunList>, Error> {
    let f = RunFilter {
        gameday: q.gameday,
        state: q.state.map(|s| s.as_str().to_owned()),
        outcome: q.outcome.map(|o| o.as_str().to_owned()),
        limit: super::limit(q.limit)?,
    };
    Ok(axum::Json(RunList {
        runs: app.services.gamedays.runs(&f).await?,
    }))
}

/// One run: its steps with per-agent times, detections (time to detect and
/// to clear), unexpected findings, verdicts and timeline.
#[utoipa::path(get, path = "/api/v1/runs/{id}", tag = "gamedays", security(("bearer" = [])),
    params(("id" = String, Path, description = "run id")),
    responses((status = 200, body = RunInfo), (status = 401, body = ApiError), (status = 403, body = ApiError),
        (status = 404, body = ApiError)))]
pub(super) async fn get_run(
    State(app): State<Shared>,
    PathParam(id): PathParam<String>,
) -> Result<axum::Json<RunInfo>, Error> {
    Ok(axum::Json(app.services.gamedays.run(&id).await?))
}

/// Aborts a run (operator): its faults are ended at once and the run ends
/// `aborted` once their reverts are confirmed (at most a lease). 202.
#[utoipa::path(post, path = "/api/v1/runs/{id}/abort", tag = "gamedays", security(("bearer" = [])),
    params(("id" = String, Path, description = "run id")),
    request_body = AbortRun,
    responses((status = 202, body = RunInfo), (status = 401, body = ApiError), (status = 403, body = ApiError),
        (status = 404, body = ApiError), (status = 409, body = ApiError, description = "the run has ended")))]
pub(super) async fn abort_run(
    State(app): State<Shared>,
    PathParam(id): PathParam<String>,
    Body(req): Body<AbortRun>,
) -> Result<Response, Error> {
    let reason = match req.reason {
        Some(r) if r.chars().count() > 500 => {
            return Err(Error::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid",
                "reason: at most 500 characters",
            ));
        }
        r => crate::gamedays::operator_abort_reason(r.as_deref().unwrap_or_default()),
    };
    let run = app.services.gamedays.abort(&id, reason).await?;
    Ok((StatusCode::ACCEPTED, axum::Json(run)).into_response())
}

/// Resumes the gate a run waits at (operator).
#[utoipa::path(post, path = "/api/v1/runs/{id}/resume", tag = "gamedays", security(("bearer" = [])),
    params(("id" = String, Path, description = "run id")),
    responses((status = 202, body = RunInfo), (status = 401, body = ApiError), (status = 403, body = ApiError),
        (status = 404, body = ApiError), (status = 409, body = ApiError, description = "no gate waiting, or the run has ended")))]
pub(super) async fn resume_run(State(app): State<Shared>, PathParam(id): PathParam<String>) -> Result<Response, Error> {
    let run = app.services.gamedays.resume(&id).await?;
    Ok((StatusCode::ACCEPTED, axum::Json(run)).into_response())
}

#[derive(OpenApi)]
#[openapi(
    paths(
        create, put, list, get_one, delete, start_run, list_runs, get_run, abort_run, resume_run
    ),
    components(schemas(GameDayInfo, GameDayList, RunInfo, RunList, StartRun, AbortRun, RunState, Outcome))
)]
pub struct GameDaysDoc;
