//! Bearer-token authorization per route group (configured tokens by role,
//! per-agent credentials bound to a hostname), and request latency metrics.

use std::time::Instant;

use axum::RequestExt as _;
use axum::Router;
use axum::extract::{MatchedPath, RawPathParams, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};

use super::{Error, Shared};
use crate::auth::{Permission, Principal};

/// `routes` behind a check that the bearer token's principal has `perm`.
/// An agent credential is also held to its own hostname: on a route with a
/// `{hostname}` segment, another hostname answers 403. The principal is
/// left in the request's extensions for handlers that check a hostname in
/// the body (registration).
pub fn guarded(app: &Shared, perm: Permission, routes: Router<Shared>) -> Router<Shared> {
    routes.route_layer(middleware::from_fn_with_state((app.clone(), perm), require))
}

async fn require(State((app, perm)): State<(Shared, Permission)>, mut req: Request, next: Next) -> Response {
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
    let principal = match app.tokens.role_of(token.as_bytes()) {
        Some(role) => Principal::Token(role),
        None => match app.services.credentials.hostname_of(token.as_bytes()) {
            Some(hostname) => Principal::Agent(hostname),
            None => {
                return Error::new(StatusCode::UNAUTHORIZED, "unauthorized", "invalid token").into_response();
            }
        },
    };
    if !perm.allows(&principal) {
        return Error::new(StatusCode::FORBIDDEN, "forbidden", perm.refusal(&principal)).into_response();
    }
    if let Some(own) = principal.agent_hostname() {
        let params = req.extract_parts::<RawPathParams>().await;
        let path_host = params
            .as_ref()
            .ok()
            .and_then(|p| p.iter().find(|(k, _)| *k == "hostname").map(|(_, v)| v.to_owned()));
        if let Some(h) = path_host
            && h != own
        {
            return Error::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!("the agent credential of {own:?} may not act for {h:?}"),
            )
            .into_response();
        }
    }
    req.extensions_mut().insert(principal);
    next.run(req).await
}

/// Observes every request's latency by route template, method and status.
pub async fn observe(State(app): State<Shared>, req: Request, next: Next) -> Response {
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
