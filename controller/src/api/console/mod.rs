//! The web console, served by the controller at `/` and `/ui/…`:
//! server-rendered HTML (maud), one stylesheet and an icon embedded in the binary, no
//! script, nothing loaded from elsewhere, a strict Content-Security-Policy.
//!
//! Log in with a viewer or operator token ([`session`]): a signed,
//! HttpOnly, SameSite=Strict cookie (Secure over TLS). Every state-changing
//! form (revert a fault, run, abort or resume a game day, the safety lever)
//! needs the operator role, the session's CSRF token and a ticked
//! confirmation; a viewer sees no such button and is answered 403. The
//! pages call the same services as the API.

mod pages;
pub mod runbooks;
pub mod session;

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use maud::{DOCTYPE, Markup, html};

use crate::api::AppState;
use session::Session;

type Shared = Arc<AppState>;

/// Every console response's policy: this origin only, no script, no
/// framing, forms posted here only.
pub const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; \
                       frame-ancestors 'none'; base-uri 'none'";

const CSS: &str = include_str!("console.css");
/// The tab's icon: served here, so a browser does not ask for `/favicon.ico`.
const ICON: &str = include_str!("favicon.svg");

pub fn routes(app: &Shared) -> Router<Shared> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/ui/fleet") }))
        .route("/ui", get(|| async { Redirect::to("/ui/fleet") }))
        .route("/ui/", get(|| async { Redirect::to("/ui/fleet") }))
        .route("/ui/assets/console.css", get(css))
        .route("/ui/assets/favicon.svg", get(icon))
        .route("/ui/login", get(login_page).post(login))
        .route("/ui/logout", post(logout))
        .merge(pages::routes())
        .layer(middleware::from_fn_with_state(app.clone(), headers))
}

/// Security headers on every console response.
async fn headers(State(_): State<Shared>, req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    // Not `no-referrer`: under it a browser sends `Origin: null` with every
    // form post, and the origin check below could not tell the console's own
    // forms from another site's. `same-origin` keeps the referrer (and the
    // real Origin) within the console and sends nothing elsewhere.
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    resp
}

async fn css() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=3600"),
        ],
        CSS,
    )
        .into_response()
}

async fn icon() -> Response {
    (
        [
            (header::CONTENT_TYPE, "image/svg+xml"),
            (header::CACHE_CONTROL, "max-age=86400"),
        ],
        ICON,
    )
        .into_response()
}

fn now_s() -> u64 {
    u64::try_from(crate::timefmt::now_ms() / 1000).unwrap_or(0)
}

/// The request's session, if it has a valid one not logged out; a 503 page
/// when the store cannot say whether it was.
pub(crate) async fn session_of(app: &AppState, headers: &HeaderMap) -> Result<Option<Session>, Box<Response>> {
    let Some(s) = session::from_headers(headers).and_then(|c| session::check(&app.tokens, &c, now_s())) else {
        return Ok(None);
    };
    match app.services.logged_out(&s.id).await {
        Ok(false) => Ok(Some(s)),
        Ok(true) => Ok(None),
        Err(e) => {
            tracing::warn!(error = %e, "console: could not look up whether a session was logged out");
            Err(Box::new(
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    page(
                        None,
                        "Database unavailable",
                        "",
                        html! { p.refusal { "The controller's database did not answer (" (e) "), so the session could not be checked. Try again shortly." } },
                    ),
                )
                    .into_response(),
            ))
        }
    }
}

/// What a page handler answers without a session: the login page.
pub(crate) fn to_login() -> Response {
    Redirect::to("/ui/login").into_response()
}

/// A state-changing form's checks: a session (else the login page), the
/// operator role (403), this origin (403 when the browser says another),
/// the CSRF token (403) and the confirmation box (400).
pub(crate) async fn check_action(
    app: &AppState,
    headers: &HeaderMap,
    csrf: &str,
    confirmed: bool,
) -> Result<Session, Box<Response>> {
    let Some(s) = session_of(app, headers).await? else {
        return Err(Box::new(to_login()));
    };
    if !s.is_operator() {
        return Err(Box::new(operators_only(&s)));
    }
    if !same_origin(headers) {
        return Err(Box::new(refusal(
            &s,
            StatusCode::FORBIDDEN,
            "Refused",
            "The request came from another site.",
        )));
    }
    if !session::csrf_ok(&s, csrf) {
        return Err(Box::new(refusal(
            &s,
            StatusCode::FORBIDDEN,
            "Refused",
            "The form's CSRF token is missing or wrong: reload the page and try again.",
        )));
    }
    if !confirmed {
        return Err(Box::new(refusal(
            &s,
            StatusCode::BAD_REQUEST,
            "Not confirmed",
            "Tick the confirmation box to do this.",
        )));
    }
    Ok(s)
}

/// False when the browser names an `Origin` that is not this host.
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let origin_host = origin.split_once("://").map_or(origin, |(_, h)| h);
    !host.is_empty() && origin_host == host
}

/// The 403 page of a viewer asking for an operator's page or action.
pub(crate) fn operators_only(s: &Session) -> Response {
    refusal(
        s,
        StatusCode::FORBIDDEN,
        "Operators only",
        "This needs the operator role; you are logged in as a viewer.",
    )
}

/// A page saying why something was refused.
pub(crate) fn refusal(s: &Session, status: StatusCode, title: &str, detail: &str) -> Response {
    (status, page(Some(s), title, "", html! { p.refusal { (detail) } })).into_response()
}

/// A whole page: the navigation (with the role and a logout button when
/// logged in), the title and `body`. `current` names the nav entry shown as
/// the current page.
pub(crate) fn page(s: Option<&Session>, title: &str, current: &str, body: Markup) -> Markup {
    page_with(s, title, current, false, body)
}

/// [`page`], reloading itself every 2 s when `live` (a run in progress).
pub(crate) fn page_with(s: Option<&Session>, title: &str, current: &str, live: bool, body: Markup) -> Markup {
    const NAV: &[(&str, &str, &str)] = &[
        ("fleet", "/ui/fleet", "Fleet"),
        ("findings", "/ui/findings", "Findings"),
        ("paths", "/ui/paths", "Paths"),
        ("faults", "/ui/faults", "Faults"),
        ("gamedays", "/ui/gamedays", "Game days"),
    ];
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                @if live { meta http-equiv="refresh" content="2"; }
                title { (title) " · graydar" }
                link rel="stylesheet" href="/ui/assets/console.css";
                link rel="icon" type="image/svg+xml" href="/ui/assets/favicon.svg";
            }
            body {
                a.skip href="#main" { "Skip to content" }
                header {
                    nav aria-label="Main" {
                        span.brand { "graydar" }
                        @if let Some(s) = s {
                            ul {
                                @for (id, href, label) in NAV {
                                    li {
                                        @if *id == current {
                                            a href=(href) aria-current="page" { (label) }
                                        } @else {
                                            a href=(href) { (label) }
                                        }
                                    }
                                }
                            }
                            form.logout method="post" action="/ui/logout" {
                                span.role { (s.role.as_str()) }
                                input type="hidden" name="csrf" value=(s.csrf);
                                button type="submit" { "Log out" }
                            }
                        }
                    }
                }
                main id="main" {
                    h1 { (title) }
                    (body)
                }
            }
        }
    }
}

async fn login_page(State(app): State<Shared>, headers: HeaderMap) -> Response {
    if let Ok(Some(_)) = session_of(&app, &headers).await {
        return Redirect::to("/ui/fleet").into_response();
    }
    page(None, "Log in", "", login_form(None)).into_response()
}

fn login_form(error: Option<&str>) -> Markup {
    html! {
        @if let Some(e) = error { p.refusal role="alert" { (e) } }
        form.login method="post" action="/ui/login" {
            label for="token" { "Token (viewer or operator)" }
            input id="token" type="password" name="token" autocomplete="current-password" required autofocus;
            button type="submit" { "Log in" }
        }
        p.hint { "The tokens are the controller's (" code { "--tokens-file" } "); an agent token does not log in." }
    }
}

#[derive(serde::Deserialize)]
struct LoginForm {
    token: String,
}

async fn login(State(app): State<Shared>, headers: HeaderMap, axum::Form(f): axum::Form<LoginForm>) -> Response {
    if !same_origin(&headers) {
        return (
            StatusCode::FORBIDDEN,
            page(
                None,
                "Log in",
                "",
                login_form(Some("The request came from another site.")),
            ),
        )
            .into_response();
    }
    let id = match crate::auth::generate_token() {
        Ok(id) => id,
        Err(e) => {
            tracing::error!(error = %e, "console: no random session id");
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                page(
                    None,
                    "Log in",
                    "",
                    login_form(Some("The controller could not make a session id.")),
                ),
            )
                .into_response();
        }
    };
    match session::login(&app.tokens, f.token.trim().as_bytes(), now_s(), &id) {
        Some(cookie) => (
            StatusCode::SEE_OTHER,
            [
                (header::SET_COOKIE, session::set_cookie(&cookie, app.tls)),
                (header::LOCATION, "/ui/fleet".to_owned()),
            ],
        )
            .into_response(),
        None => {
            tracing::info!("console: a login with an unknown or agent token refused");
            (
                StatusCode::UNAUTHORIZED,
                page(
                    None,
                    "Log in",
                    "",
                    login_form(Some("Not a viewer or operator token of this controller.")),
                ),
            )
                .into_response()
        }
    }
}

#[derive(serde::Deserialize)]
struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

/// Ends the session on every controller of the database (its id recorded
/// until it would have expired), then in the browser.
async fn logout(State(app): State<Shared>, headers: HeaderMap, axum::Form(f): axum::Form<CsrfForm>) -> Response {
    let s = match session_of(&app, &headers).await {
        Ok(Some(s)) => s,
        Ok(None) => return to_login(),
        Err(r) => return *r,
    };
    if !session::csrf_ok(&s, &f.csrf) || !same_origin(&headers) {
        return refusal(
            &s,
            StatusCode::FORBIDDEN,
            "Refused",
            "The form's CSRF token is missing or wrong.",
        );
    }
    let expires_ms = i64::try_from(s.expires_s).unwrap_or(i64::MAX).saturating_mul(1000);
    if let Err(e) = app.services.record_logout(&s.id, expires_ms).await {
        tracing::warn!(error = %e, "console: a logout not recorded");
        return refusal(
            &s,
            StatusCode::SERVICE_UNAVAILABLE,
            "Not logged out",
            &format!("The database did not record the logout ({e}); the session still works. Try again."),
        );
    }
    (
        StatusCode::SEE_OTHER,
        [
            (header::SET_COOKIE, session::clear_cookie(app.tls)),
            (header::LOCATION, "/ui/login".to_owned()),
        ],
    )
        .into_response()
}
