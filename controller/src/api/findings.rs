//! Finding endpoints: agents push transitions; readers list findings and
//! read one with its history.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use graydar_common::api::{
    ApiError, BatchResponse, FindingDetail, FindingKind, FindingList, FindingState, Severity, Timestamp,
    TransitionBatch,
};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::middleware::guarded;
use super::{Body, Error, MAX_BATCH, Params, PathParam, Shared, at_most, limit};
use crate::auth::Permission;
use crate::findings::FindingFilter;

pub(super) fn routes(app: &Shared) -> Router<Shared> {
    let report = Router::new().route("/api/v1/agents/{hostname}/transitions", post(transitions));
    let read = Router::new()
        .route("/api/v1/findings", get(list_findings))
        .route("/api/v1/findings/{id}", get(get_finding));
    guarded(app, Permission::Report, report).merge(guarded(app, Permission::Read, read))
}

/// A batch of finding transitions, in the order they happened. Idempotent:
/// a transition already stored counts as a duplicate and changes nothing.
#[utoipa::path(post, path = "/api/v1/agents/{hostname}/transitions", tag = "findings", security(("bearer" = [])),
    params(("hostname" = String, Path, description = "agent hostname")),
    request_body = TransitionBatch,
    responses((status = 200, body = BatchResponse), (status = 400, body = ApiError), (status = 401, body = ApiError),
        (status = 403, body = ApiError), (status = 404, body = ApiError), (status = 413, body = ApiError), (status = 422, body = ApiError)))]
pub(super) async fn transitions(
    State(app): State<Shared>,
    PathParam(hostname): PathParam<String>,
    Body(batch): Body<TransitionBatch>,
) -> Result<Json<BatchResponse>, Error> {
    at_most(batch.transitions.len(), MAX_BATCH, "transitions per batch")?;
    let r = app.services.findings.ingest(&hostname, batch.transitions).await?;
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

/// Filters of `GET /api/v1/findings`.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct FindingsQuery {
    /// Finding kind, e.g. `kernel_drops`.
    #[param(value_type = Option<FindingKind>)]
    pub kind: Option<String>,
    /// `warning` or `critical`.
    #[param(value_type = Option<Severity>)]
    pub severity: Option<String>,
    /// `firing` or `resolved`.
    #[param(value_type = Option<FindingState>)]
    pub state: Option<String>,
    /// Agent hostname.
    pub agent: Option<String>,
    /// RFC 3339: only findings whose latest transition is at or after.
    #[param(value_type = Option<String>, format = DateTime)]
    pub since: Option<Timestamp>,
    /// At most this many (default 500, max 10000).
    #[param(minimum = 1, maximum = 10000)]
    pub limit: Option<u32>,
}

fn bad_query(detail: String) -> Error {
    Error::new(StatusCode::BAD_REQUEST, "bad_query", detail)
}

/// A filter value through the type's serde name (400 when unknown).
fn by_name<T: DeserializeOwned>(what: &str, s: Option<&str>) -> Result<Option<T>, Error> {
    s.map(|s| {
        serde_json::from_value(serde_json::Value::String(s.to_owned()))
            .map_err(|_| bad_query(format!("unknown {what} {s:?}")))
    })
    .transpose()
}

/// Findings of every agent: firing first, then newest first.
#[utoipa::path(get, path = "/api/v1/findings", tag = "findings", security(("bearer" = [])),
    params(FindingsQuery),
    responses((status = 200, body = FindingList), (status = 400, body = ApiError), (status = 401, body = ApiError), (status = 403, body = ApiError)))]
pub(super) async fn list_findings(
    State(app): State<Shared>,
    Params(q): Params<FindingsQuery>,
) -> Result<Json<FindingList>, Error> {
    let filter = FindingFilter {
        kind: by_name::<FindingKind>("kind", q.kind.as_deref())?,
        severity: by_name::<Severity>("severity", q.severity.as_deref())?,
        state: by_name::<FindingState>("state", q.state.as_deref())?,
        agent: q.agent,
        since_ms: q.since.map(Timestamp::unix_ms),
        limit: limit(q.limit)?,
    };
    Ok(Json(FindingList {
        findings: app.services.findings.list(&filter).await?,
    }))
}

/// One finding with its history of transitions (oldest first).
#[utoipa::path(get, path = "/api/v1/findings/{id}", tag = "findings", security(("bearer" = [])),
    params(("id" = String, Path, description = "finding id (16 hex digits)")),
    responses((status = 200, body = FindingDetail), (status = 401, body = ApiError), (status = 403, body = ApiError), (status = 404, body = ApiError)))]
pub(super) async fn get_finding(
    State(app): State<Shared>,
    PathParam(id): PathParam<String>,
) -> Result<Json<FindingDetail>, Error> {
    Ok(Json(app.services.findings.get(&id).await?))
}
