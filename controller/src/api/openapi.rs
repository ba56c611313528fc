//! The OpenAPI document (`/api/v1/openapi.json`): every endpoint and type.

use axum::routing::get;
use axum::{Json, Router};
use graydar_common::api::{
    AgentInfo, AgentList, AgentState, ApiError, BatchResponse, Capabilities, Evidence, Finding, FindingDetail,
    FindingKind, FindingList, FindingState, FindingTransition, HeartbeatRequest, HeartbeatResponse, RegisterRequest,
    RegisterResponse, Severity, TransitionBatch, TransitionKind, TransitionRecord,
};
use utoipa::OpenApi;

use super::middleware::guarded;
use super::{Shared, agents, faults, findings, health, paths};
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
    doc
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
        ApiError, AgentInfo, AgentList, AgentState, Capabilities, RegisterRequest, RegisterResponse, HeartbeatRequest,
        HeartbeatResponse, TransitionBatch, FindingTransition, TransitionKind, BatchResponse, Finding, FindingKind,
        Severity, FindingState, Evidence, FindingList, FindingDetail, TransitionRecord
    )),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;
