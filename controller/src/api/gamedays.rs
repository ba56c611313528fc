//! Game-day definitions: operators create, replace and delete them,
//! viewers read them. A spec that does not validate answers 422 with every
//! error and its field path.

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use graydar_common::api::ApiError;
use graydar_common::gameday::{GameDayInfo, GameDayList, GameDaySpec};
use utoipa::OpenApi;

use super::middleware::guarded;
use super::{Body, Error, PathParam, Shared};
use crate::auth::Permission;

pub(super) fn routes(app: &Shared) -> Router<Shared> {
    let operate = Router::new()
        .route("/api/v1/gamedays", axum::routing::post(create))
        .route("/api/v1/gamedays/{name}", axum::routing::put(put).delete(delete));
    let read = Router::new()
        .route("/api/v1/gamedays", get(list))
        .route("/api/v1/gamedays/{name}", get(get_one));
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

#[derive(OpenApi)]
#[openapi(
    paths(create, put, list, get_one, delete),
    components(schemas(GameDayInfo, GameDayList))
)]
pub struct GameDaysDoc;
