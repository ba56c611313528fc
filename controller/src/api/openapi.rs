//! The OpenAPI document (`/api/v1/openapi.json`): every endpoint and type.

use axum::routing::get;
use axum::{Json, Router};
use graydar_common::api::{
    AgentInfo, AgentList, AgentState, ApiError, BatchResponse, Capabilities, ClockExchange, ClockOffsetInfo, Evidence,
    Finding, FindingDetail, FindingKind, FindingList, FindingState, FindingTransition, HeartbeatRequest,
    HeartbeatResponse, RegisterRequest, RegisterResponse, Severity, TransitionBatch, TransitionKind, TransitionRecord,
};
use utoipa::OpenApi;

use super::middleware::guarded;
use super::{Shared, agents, faults, findings, gamedays, health, paths};
use crate::auth::Permission;

pub(super) fn routes(app: &Shared) -> Router<Shared> {
    guarded(
        app,
        Permission::Any,
        Router::new().route("/api/v1/openapi.json", get(openapi)),
    )
}

/// The whole document.
pub fn document() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    doc.merge(faults::FaultsDoc::openapi());
    doc.merge(paths::PathsDoc::openapi());
    doc.merge(gamedays::GameDaysDoc::openapi());
    utoipa::Modify::modify(&ExtractorErrors, &mut doc);
    doc
}

/// The answers the extractors give before a handler runs (api/extract.rs),
/// documented once for every operation they can come from instead of in
/// each `#[utoipa::path]`: a JSON body can be malformed (400), too large
/// (413), not `application/json` (415) or of the wrong shape (422); query
/// parameters can fail to parse (400). Found missing by schemathesis
/// (tests/tests/controller_schemathesis.rs).
struct ExtractorErrors;

impl utoipa::Modify for ExtractorErrors {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::path::ParameterIn;
        for item in doc.paths.paths.values_mut() {
            let ops = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ];
            for op in ops.into_iter().flatten() {
                let mut add = Vec::new();
                if op.request_body.is_some() {
                    add.extend([
                        ("400", "malformed JSON"),
                        ("413", "the body is larger than the limit"),
                        ("415", "the body is not `Content-Type: application/json`"),
                        ("422", "a field is missing, unknown or of the wrong type"),
                    ]);
                }
                let has_query = op
                    .parameters
                    .iter()
                    .flatten()
                    .any(|p| matches!(p.parameter_in, ParameterIn::Query));
                if has_query {
                    add.push(("400", "a query parameter does not parse or is out of range"));
                }
                for (status, description) in add {
                    op.responses
                        .responses
                        .entry(status.to_owned())
                        .or_insert_with(|| error_response(description));
                }
            }
        }
    }
}

fn error_response(description: &str) -> utoipa::openapi::RefOr<utoipa::openapi::Response> {
    use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("ApiError")))
                .build(),
        )
        .build()
        .into()
}

/// This document.
#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "health", security(("bearer" = [])),
    responses((status = 200, description = "OpenAPI 3.1 document"), (status = 401, body = ApiError)))]
async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(document())
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
    paths(health::healthz, health::readyz, health::metrics, agents::register, agents::heartbeat, agents::reset_credential, findings::transitions,
        agents::list_agents, agents::get_agent, findings::list_findings, findings::get_finding, openapi),
    components(schemas(
        ApiError, AgentInfo, AgentList, AgentState, Capabilities, ClockOffsetInfo, RegisterRequest, RegisterResponse,
        HeartbeatRequest, ClockExchange, HeartbeatResponse, TransitionBatch, FindingTransition, TransitionKind, BatchResponse, Finding, FindingKind,
        Severity, FindingState, Evidence, FindingList, FindingDetail, TransitionRecord
    )),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;
