//! HTTP API: `/api/v1` (JSON, bearer tokens), `/healthz`, `/readyz`,
//! `/metrics`, and the OpenAPI document at `/api/v1/openapi.json`.
//!
//! HTTP only: routes, extractors, errors and the OpenAPI document; the
//! handlers call the domain services ([`Services`]).

mod agents;
pub mod console;
mod error;
mod extract;
mod faults;
mod findings;
mod gamedays;
mod health;
mod middleware;
mod openapi;
mod paths;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;

pub use error::Error;
pub use extract::{Body, Params, PathParam, decode_body};
pub use faults::MAX_WAIT_SECONDS;
pub use openapi::{ApiDoc, document as openapi_document};
pub use paths::MAX_PEERS_PER_REPORT;

use crate::auth::Tokens;
pub use crate::config::DEFAULT_MAX_BODY;
use crate::metrics::Metrics;
use crate::services::Services;

/// Most transitions in one batch (and fault states in one report).
pub const MAX_BATCH: usize = 1000;
/// Default and largest `limit` of the findings and fault lists.
pub const DEFAULT_LIMIT: u32 = 500;
pub const MAX_LIMIT: u32 = 10_000;

/// What every handler reaches.
pub struct AppState {
    pub services: Services,
    pub tokens: Tokens,
    pub metrics: Metrics,
    pub heartbeat_interval_seconds: u64,
    /// Served over TLS (the console's cookie is `Secure`).
    pub tls: bool,
}

type Shared = Arc<AppState>;

/// A `limit` query parameter: the default when absent, 400 outside 1..=MAX_LIMIT.
fn limit(l: Option<u32>) -> Result<u32, Error> {
    match l {
        None => Ok(DEFAULT_LIMIT),
        Some(l) if (1..=MAX_LIMIT).contains(&l) => Ok(l),
        Some(l) => Err(Error::new(
            StatusCode::BAD_REQUEST,
            "bad_query",
            format!("limit must be 1..={MAX_LIMIT}, got {l}"),
        )),
    }
}

/// 413 when a batch has more than `max` items.
fn at_most(len: usize, max: usize, what: &str) -> Result<(), Error> {
    if len > max {
        return Err(Error::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("at most {max} {what}"),
        ));
    }
    Ok(())
}

pub fn router(app: Shared, max_body: usize) -> Router {
    Router::new()
        .merge(health::routes(&app))
        .merge(agents::routes(&app))
        .merge(findings::routes(&app))
        .merge(openapi::routes(&app))
        .merge(faults::routes(&app))
        .merge(paths::routes(&app))
        .merge(gamedays::routes(&app))
        .merge(console::routes(&app))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(axum::middleware::from_fn_with_state(app.clone(), middleware::observe))
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
