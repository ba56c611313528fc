//! Bearer-token authorization per route group, and request latency metrics.

use std::time::Instant;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};

use super::{Error, Shared};
use crate::auth::Permission;

/// `routes` behind a check that the bearer token's role has `perm`.
pub fn guarded(app: &Shared, perm: Permission, routes: Router<Shared>) -> Router<Shared> {
    routes.route_layer(middleware::from_fn_with_state((app.clone(), perm), require))
}

async fn require(State((app, perm)): State<(Shared, Permission)>, req: Request, next: Next) -> Response {
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
