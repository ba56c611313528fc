//! HTTP API: `/api/v1` (JSON, bearer tokens), `/healthz`, `/readyz`,
//! `/metrics`, and the OpenAPI document at `/api/v1/openapi.json`.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use graydar_common::api::{
    AgentInfo, AgentList, AgentState, ApiError, BatchResponse, Capabilities, Evidence, Finding, FindingDetail,
    FindingKind, FindingList, FindingState, FindingTransition, HeartbeatRequest, HeartbeatResponse, RegisterRequest,
    RegisterResponse, Severity, TransitionBatch, TransitionKind, TransitionRecord,
};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use utoipa::OpenApi;

use crate::auth::{Permission, Tokens};
use crate::metrics::Metrics;
use crate::store::{FindingFilter, Store, StoreError, parse_filter};
use crate::timefmt::rfc3339_to_ms;

/// Largest request body accepted by default (413 beyond).
pub const DEFAULT_MAX_BODY: usize = 1 << 20;
/// Most transitions in one batch.
pub const MAX_BATCH: usize = 1000;
/// Default and largest `limit` of the findings list.
pub const DEFAULT_LIMIT: u32 = 500;
pub const MAX_LIMIT: u32 = 10_000;

pub struct AppState {
    pub store: Store,
    pub tokens: Tokens,
    pub metrics: Metrics,
    pub heartbeat_interval_seconds: u64,
    /// Faults (controller/src/faults/).
    pub faults: crate::faults::FaultService,
}

type Shared = Arc<AppState>;

// ---------------------------------------------------------------------------
// Errors

/// An error response: `{ "error": code, "detail": text }` with a status.
#[derive(Debug)]
pub struct Error {
    status: StatusCode,
    code: &'static str,
    detail: String,
}

impl Error {
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Error {
        Error {
            status,
            code,
            detail: detail.into(),
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(status = %self.status, detail = %self.detail, "request failed");
        }
        let mut resp = (
            self.status,
            Json(ApiError {
                error: self.code.to_owned(),
                detail: self.detail,
            }),
        )
            .into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(d) => Error::new(StatusCode::NOT_FOUND, "not_found", d),
            StoreError::Invalid(d) => Error::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", d),
            other => Error::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", other.to_string()),
        }
    }
}

/// `Json<T>` whose rejections are API errors: malformed JSON 400, wrong
/// types / unknown or missing fields 422, not JSON 415, too large 413.
pub struct Body<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = Error;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(Body(v)),
            Err(rej) => {
                let status = rej.status();
                let code = match &rej {
                    JsonRejection::JsonSyntaxError(_) => "malformed_json",
                    JsonRejection::JsonDataError(_) => "invalid_body",
                    JsonRejection::MissingJsonContentType(_) => "unsupported_media_type",
                    _ if status == StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
                    _ => "bad_request",
                };
                Err(Error::new(status, code, rej.body_text()))
            }
        }
    }
}

/// `Query<T>` with a JSON 400.
pub struct Params<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Params<T> {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| Params(q.0))
            .map_err(|e: QueryRejection| Error::new(StatusCode::BAD_REQUEST, "bad_query", e.body_text()))
    }
}

/// `Path<T>` with a JSON 400.
pub struct PathParam<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for PathParam<T> {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| PathParam(p.0))
            .map_err(|e: PathRejection| Error::new(StatusCode::BAD_REQUEST, "bad_path", e.body_text()))
    }
}

// ---------------------------------------------------------------------------
// Middleware

pub(crate) async fn require(State((app, perm)): State<(Shared, Permission)>, req: Request, next: Next) -> Response {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        });
    let Some(token) = presented else {
        return Error::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing bearer token (Authorization: Bearer <token>)",
        )
        .into_response();
    };
    match app.tokens.role_of(token.as_bytes()) {
        None => Error::new(StatusCode::UNAUTHORIZED, "unauthorized", "invalid token").into_response(),
        Some(role) if !perm.allows(role) => Error::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("the {} role may not do this", role.as_str()),
        )
        .into_response(),
        Some(_) => next.run(req).await,
    }
}

async fn observe(State(app): State<Shared>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = req.method().as_str().to_owned();
    let start = Instant::now();
    let resp = next.run(req).await;
    app.metrics
        .request_duration
        .with_label_values(&[route.as_str(), method.as_str(), resp.status().as_str()])
        .observe(start.elapsed().as_secs_f64());
    resp
}

// ---------------------------------------------------------------------------
// Router

pub fn router(app: Shared, max_body: usize) -> Router {
    let report = Router::new()
        .route("/api/v1/agents/register", post(register))
        .route("/api/v1/agents/{hostname}/heartbeat", post(heartbeat))
        .route("/api/v1/agents/{hostname}/transitions", post(transitions))
        .route_layer(middleware::from_fn_with_state(
            (app.clone(), Permission::Report),
            require,
        ));
    let read = Router::new()
        .route("/api/v1/agents", get(list_agents))
        .route("/api/v1/agents/{hostname}", get(get_agent))
        .route("/api/v1/findings", get(list_findings))
        .route("/api/v1/findings/{id}", get(get_finding))
        .route("/metrics", get(metrics))
        .route_layer(middleware::from_fn_with_state((app.clone(), Permission::Read), require));
    let any = Router::new()
        .route("/api/v1/openapi.json", get(openapi))
        .route_layer(middleware::from_fn_with_state((app.clone(), Permission::Any), require));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .merge(report)
        .merge(read)
        .merge(any)
        .merge(crate::faults::api::routes(app.clone()))
        .merge(crate::paths::api::routes(app.clone()))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(middleware::from_fn_with_state(app.clone(), observe))
        .with_state(app)
}

async fn not_found() -> Error {
    Error::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}

async fn method_not_allowed() -> Error {
    Error::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed on this endpoint",
    )
}

// ---------------------------------------------------------------------------
// Handlers

/// Liveness: the process serves HTTP.
#[utoipa::path(get, path = "/healthz", tag = "health", responses((status = 200, description = "alive")))]
async fn healthz() -> &'static str {
    "ok\n"
}

/// Readiness: the database answers.
#[utoipa::path(get, path = "/readyz", tag = "health", responses((status = 200, description = "ready"), (status = 503, body = ApiError)))]
async fn readyz(State(app): State<Shared>) -> Result<&'static str, Error> {
    app.store
        .ping()
        .await
        .map_err(|e| Error::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", e.to_string()))?;
    Ok("ready\n")
}

/// Prometheus metrics (viewer or operator token).
#[utoipa::path(get, path = "/metrics", tag = "health", security(("bearer" = [])),
    responses((status = 200, description = "Prometheus text format"), (status = 401, body = ApiError), (status = 403, body = ApiError)))]
async fn metrics(State(app): State<Shared>) -> Response {
    for (state, n) in app.store.agent_states() {
        app.metrics
            .agents
            .with_label_values(&[state])
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }
    match app.faults.counts().await {
        Ok((faults, assignments)) => {
            for (state, n) in faults {
                app.metrics.faults.with_label_values(&[state]).set(n);
            }
            for (state, n) in assignments {
                app.metrics.fault_assignments.with_label_values(&[state]).set(n);
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

/// Registers (or re-registers) an agent; idempotent.
#[utoipa::path(post, path = "/api/v1/agents/register", tag = "agents", security(("bearer" = [])),
    request_body = RegisterRequest,
    responses((status = 200, body = RegisterResponse), (status = 400, body = ApiError), (status = 401, body = ApiError),
        (status = 403, body = ApiError), (status = 413, body = ApiError), (status = 422, body = ApiError)))]
async fn register(
    State(app): State<Shared>,
    Body(req): Body<RegisterRequest>,
) -> Result<Json<RegisterResponse>, Error> {
    let hostname = req.hostname.clone();
    app.faults
        .set_inventory(&hostname, req.interfaces.clone(), req.dm_devices.clone());
    let agent = app.store.register(req).await?;
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
async fn heartbeat(
    State(app): State<Shared>,
    PathParam(hostname): PathParam<String>,
    Body(_req): Body<HeartbeatRequest>,
) -> Result<Json<HeartbeatResponse>, Error> {
    match app.store.touch(&hostname) {
        Ok(state) => {
            app.faults.set_inventory(&hostname, _req.interfaces, _req.dm_devices);
            app.metrics.heartbeats.with_label_values(&["ok"]).inc();
            Ok(Json(HeartbeatResponse { state }))
        }
        Err(e) => {
            app.metrics.heartbeats.with_label_values(&["unknown_agent"]).inc();
            Err(e.into())
        }
    }
}

/// A batch of finding transitions, in the order they happened. Idempotent:
/// a transition already stored counts as a duplicate and changes nothing.
#[utoipa::path(post, path = "/api/v1/agents/{hostname}/transitions", tag = "findings", security(("bearer" = [])),
    params(("hostname" = String, Path, description = "agent hostname")),
    request_body = TransitionBatch,
    responses((status = 200, body = BatchResponse), (status = 400, body = ApiError), (status = 401, body = ApiError),
        (status = 403, body = ApiError), (status = 404, body = ApiError), (status = 413, body = ApiError), (status = 422, body = ApiError)))]
async fn transitions(
    State(app): State<Shared>,
    PathParam(hostname): PathParam<String>,
    Body(batch): Body<TransitionBatch>,
) -> Result<Json<BatchResponse>, Error> {
    if batch.transitions.len() > MAX_BATCH {
        return Err(Error::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("at most {MAX_BATCH} transitions per batch"),
        ));
    }
    let r = app.store.ingest(&hostname, batch.transitions).await?;
    app.metrics
        .transitions_ingested
        .with_label_values(&["accepted"])
        .inc_by(r.accepted);
    app.metrics
        .transitions_ingested
        .with_label_values(&["duplicate"])
        .inc_by(r.duplicates);
    Ok(Json(r))
}

/// All registered agents with last-seen time and state.
#[utoipa::path(get, path = "/api/v1/agents", tag = "agents", security(("bearer" = [])),
    responses((status = 200, body = AgentList), (status = 401, body = ApiError), (status = 403, body = ApiError)))]
async fn list_agents(State(app): State<Shared>) -> Result<Json<AgentList>, Error> {
    Ok(Json(AgentList {
        agents: app.store.agents().await?,
    }))
}

/// One agent.
#[utoipa::path(get, path = "/api/v1/agents/{hostname}", tag = "agents", security(("bearer" = [])),
    params(("hostname" = String, Path, description = "agent hostname")),
    responses((status = 200, body = AgentInfo), (status = 401, body = ApiError), (status = 403, body = ApiError), (status = 404, body = ApiError)))]
async fn get_agent(
    State(app): State<Shared>,
    PathParam(hostname): PathParam<String>,
) -> Result<Json<AgentInfo>, Error> {
    Ok(Json(app.store.agent(&hostname).await?))
}

/// Filters of `GET /api/v1/findings`.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct FindingsQuery {
    /// Finding kind, e.g. `kernel_drops`.
    pub kind: Option<String>,
    /// `warning` or `critical`.
    pub severity: Option<String>,
    /// `firing` or `resolved`.
    pub state: Option<String>,
    /// Agent hostname.
    pub agent: Option<String>,
    /// RFC 3339: only findings whose latest transition is at or after.
    pub since: Option<String>,
    /// At most this many (default 500, max 10000).
    pub limit: Option<u32>,
}

/// Findings of every agent: firing first, then newest first.
#[utoipa::path(get, path = "/api/v1/findings", tag = "findings", security(("bearer" = [])),
    params(FindingsQuery),
    responses((status = 200, body = FindingList), (status = 400, body = ApiError), (status = 401, body = ApiError), (status = 403, body = ApiError)))]
async fn list_findings(
    State(app): State<Shared>,
    Params(q): Params<FindingsQuery>,
) -> Result<Json<FindingList>, Error> {
    let bad = |d: String| Error::new(StatusCode::BAD_REQUEST, "bad_query", d);
    let filter = FindingFilter {
        kind: q
            .kind
            .as_deref()
            .map(|s| parse_filter::<FindingKind>("kind", s))
            .transpose()
            .map_err(bad)?,
        severity: q
            .severity
            .as_deref()
            .map(|s| parse_filter::<Severity>("severity", s))
            .transpose()
            .map_err(bad)?,
        state: q
            .state
            .as_deref()
            .map(|s| parse_filter::<FindingState>("state", s))
            .transpose()
            .map_err(bad)?,
        agent: q.agent,
        since_ms: q
            .since
            .as_deref()
            .map(rfc3339_to_ms)
            .transpose()
            .map_err(|e| bad(format!("since: {e}")))?,
        limit: match q.limit {
            None => DEFAULT_LIMIT,
            Some(l) if (1..=MAX_LIMIT).contains(&l) => l,
            Some(l) => return Err(bad(format!("limit must be 1..={MAX_LIMIT}, got {l}"))),
        },
    };
    Ok(Json(FindingList {
        findings: app.store.findings(&filter).await?,
    }))
}

/// One finding with its history of transitions (oldest first).
#[utoipa::path(get, path = "/api/v1/findings/{id}", tag = "findings", security(("bearer" = [])),
    params(("id" = String, Path, description = "finding id (16 hex digits)")),
    responses((status = 200, body = FindingDetail), (status = 401, body = ApiError), (status = 403, body = ApiError), (status = 404, body = ApiError)))]
async fn get_finding(
    State(app): State<Shared>,
    PathParam(id): PathParam<String>,
) -> Result<Json<FindingDetail>, Error> {
    Ok(Json(app.store.finding(&id).await?))
}

/// This document.
#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "health", security(("bearer" = [])),
    responses((status = 200, description = "OpenAPI 3.1 document"), (status = 401, body = ApiError)))]
async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    let mut doc = ApiDoc::openapi();
    doc.merge(crate::faults::api::FaultsDoc::openapi());
    doc.merge(crate::paths::api::PathsDoc::openapi());
    Json(doc)
}

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "graydar controller API", description = "Agent registry and findings history. Bearer tokens with roles agent, viewer, operator."),
    paths(healthz, readyz, metrics, register, heartbeat, transitions, list_agents, get_agent, list_findings, get_finding, openapi),
    components(schemas(
        ApiError, AgentInfo, AgentList, AgentState, Capabilities, RegisterRequest, RegisterResponse, HeartbeatRequest,
        HeartbeatResponse, TransitionBatch, FindingTransition, TransitionKind, BatchResponse, Finding, FindingKind,
        Severity, FindingState, Evidence, FindingList, FindingDetail, TransitionRecord
    )),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;
