//! The web console in process: the real router and store, requests as a
//! browser sends them (form posts, the session cookie, `Origin`). A real
//! browser drives it in the root tier (tests/tests/console_browser.rs);
//! here: login and sessions, roles, CSRF, confirmation,
//! the security headers, every page with data in it.

use std::collections::BTreeMap;

use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode, header};
use graydar_common::api::{
    Capabilities, Finding, FindingKind, FindingState, FindingTransition, RegisterRequest, Severity, TransitionBatch,
    TransitionKind, finding_id,
};
use graydar_common::timestamp::Timestamp;
use http_body_util::BodyExt as _;
use serde_json::{Value, json};
use tower::ServiceExt as _;

mod common;
use common::{AGENT, Api, OPERATOR, VIEWER};

struct Page {
    status: StatusCode,
    headers: HeaderMap,
    text: String,
}

impl Page {
    fn location(&self) -> &str {
        self.headers
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }

    /// The CSRF token of the page's forms.
    fn csrf(&self) -> String {
        let at = self
            .text
            .find("name=\"csrf\" value=\"")
            .expect("a form with a CSRF token");
        let rest = &self.text[at + "name=\"csrf\" value=\"".len()..];
        rest[..rest.find('"').expect("end of value")].to_owned()
    }
}

/// A browser: its session cookie once logged in.
struct Browser<'a> {
    api: &'a Api,
    cookie: Option<String>,
}

impl<'a> Browser<'a> {
    fn new(api: &'a Api) -> Browser<'a> {
        Browser { api, cookie: None }
    }

    async fn request(&self, method: &str, path: &str, form: Option<&[(&str, &str)]>, origin: Option<&str>) -> Page {
        let mut b = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, "controller.example:8477");
        if let Some(c) = &self.cookie {
            b = b.header(header::COOKIE, format!("graydar_session={c}"));
        }
        if let Some(o) = origin {
            b = b.header(header::ORIGIN, o);
        }
        let req = match form {
            Some(fields) => b
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(Body::from(serde_urlencoded::to_string(fields).expect("a form")))
                .expect("request"),
            None => b.body(Body::empty()).expect("request"),
        };
        let resp = self.api.app.clone().oneshot(req).await.expect("router");
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.into_body().collect().await.expect("body").to_bytes();
        Page {
            status,
            headers,
            text: String::from_utf8_lossy(&bytes).into_owned(),
        }
    }

    async fn get(&self, path: &str) -> Page {
        self.request("GET", path, None, None).await
    }

    async fn post(&self, path: &str, form: &[(&str, &str)]) -> Page {
        self.request("POST", path, Some(form), Some("http://controller.example:8477"))
            .await
    }

    async fn login(&mut self, token: &str) -> Page {
        let p = self.post("/ui/login", &[("token", token)]).await;
        if p.status == StatusCode::SEE_OTHER {
            let set = p
                .headers
                .get(header::SET_COOKIE)
                .and_then(|v| v.to_str().ok())
                .expect("Set-Cookie");
            let value = set
                .strip_prefix("graydar_session=")
                .and_then(|v| v.split(';').next())
                .expect("the session cookie");
            self.cookie = Some(value.to_owned());
        }
        p
    }
}

async fn fleet() -> Api {
    let a = Api::new().await;
    for h in ["h1", "h2", "h3"] {
        a.register_as(&RegisterRequest {
            labels: BTreeMap::from([("rack".to_owned(), "r1".to_owned())]),
            capabilities: Capabilities {
                ebpf: true,
                ..Capabilities::default()
            },
            interfaces: Some(vec!["eth0".into()]),
            ..common::registration(h)
        })
        .await;
    }
    a
}

#[tokio::test]
async fn pages_need_a_session_and_a_login_needs_a_viewer_or_operator_token() {
    let a = fleet().await;
    let mut b = Browser::new(&a);
    let p = b.get("/ui/fleet").await;
    assert_eq!((p.status, p.location()), (StatusCode::SEE_OTHER, "/ui/login"));
    let p = b.get("/").await;
    assert_eq!(p.status, StatusCode::SEE_OTHER);
    let login = b.get("/ui/login").await;
    assert_eq!(login.status, StatusCode::OK);
    assert!(login.text.contains("type=\"password\""), "{}", login.text);
    // The agents' bootstrap token and garbage do not log in.
    for bad in [AGENT, "not-a-token-of-this-controller"] {
        let p = b.login(bad).await;
        assert_eq!(p.status, StatusCode::UNAUTHORIZED, "{bad}");
        assert!(p.headers.get(header::SET_COOKIE).is_none());
    }
    let p = b.login(VIEWER).await;
    assert_eq!((p.status, p.location()), (StatusCode::SEE_OTHER, "/ui/fleet"));
    let set = p.headers[header::SET_COOKIE].to_str().expect("ascii");
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict") && !set.contains("Secure"),
        "{set}"
    );
    let fleet = b.get("/ui/fleet").await;
    assert_eq!(fleet.status, StatusCode::OK, "{}", fleet.text);
    for h in ["h1", "h2", "h3", "rack=r1", "ebpf", "healthy"] {
        assert!(fleet.text.contains(h), "{h} missing from the fleet page");
    }
    // Filtered by part of the name, by label, by state.
    let one = b.get("/ui/fleet?host=h2&state=&label=rack%3Dr1").await;
    assert!(one.text.contains(">h2<") && !one.text.contains(">h1<"), "{}", one.text);
    let none = b.get("/ui/fleet?state=lost").await;
    assert!(none.text.contains("No agent matches."), "{}", none.text);
    // A second session of the same token, and a second controller on the
    // same database (the same tokens) that accepts the first session too.
    let mut other = Browser::new(&a);
    other.login(VIEWER).await;
    let replica = Api::on_store(a.store.clone(), common::TestDb::Shared).await;
    let mut on_replica = Browser::new(&replica);
    on_replica.cookie = b.cookie.clone();
    assert_eq!(on_replica.get("/ui/fleet").await.status, StatusCode::OK);
    // Logged out: the cookie is cleared, and a copy of it taken before is
    // refused here and on the other controller; the other session goes on.
    let copied = b.cookie.clone();
    let csrf = fleet.csrf();
    let out = b.post("/ui/logout", &[("csrf", &csrf)]).await;
    assert_eq!((out.status, out.location()), (StatusCode::SEE_OTHER, "/ui/login"));
    assert!(
        out.headers[header::SET_COOKIE]
            .to_str()
            .expect("ascii")
            .contains("Max-Age=0")
    );
    b.cookie = copied;
    let p = b.get("/ui/fleet").await;
    assert_eq!((p.status, p.location()), (StatusCode::SEE_OTHER, "/ui/login"));
    let p = on_replica.get("/ui/fleet").await;
    assert_eq!((p.status, p.location()), (StatusCode::SEE_OTHER, "/ui/login"));
    assert_eq!(
        b.get("/ui/login").await.status,
        StatusCode::OK,
        "the login page, not a redirect"
    );
    assert_eq!(other.get("/ui/fleet").await.status, StatusCode::OK, "the other session");
    // A forged cookie is refused.
    b.cookie = Some("v2.operator.99999999999.0011223344556677.00112233445566778899aabbccddeeff.00".into());
    assert_eq!(b.get("/ui/fleet").await.status, StatusCode::SEE_OTHER);
}

#[tokio::test]
async fn every_page_is_self_contained_under_a_strict_policy() {
    let a = fleet().await;
    let mut b = Browser::new(&a);
    b.login(OPERATOR).await;
    for path in [
        "/ui/login",
        "/ui/fleet",
        "/ui/findings",
        "/ui/paths",
        "/ui/faults",
        "/ui/gamedays",
        "/ui/runbooks/nic-drops",
    ] {
        let p = b.get(path).await;
        assert!(
            p.status == StatusCode::OK || p.status == StatusCode::SEE_OTHER,
            "{path}: {}",
            p.status
        );
        let csp = p.headers[header::CONTENT_SECURITY_POLICY].to_str().expect("ascii");
        assert!(
            csp.starts_with("default-src 'none'") && !csp.contains("unsafe"),
            "{csp}"
        );
        assert_eq!(p.headers[header::X_FRAME_OPTIONS], "DENY");
        assert_eq!(p.headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert_eq!(p.headers[header::REFERRER_POLICY], "same-origin");
        for needle in ["src=\"http", "href=\"http", "<script", "style=\"", "url(http"] {
            assert!(!p.text.contains(needle), "{path} has {needle}");
        }
    }
    let css = b.get("/ui/assets/console.css").await;
    assert_eq!(css.status, StatusCode::OK);
    assert!(
        css.headers[header::CONTENT_TYPE]
            .to_str()
            .expect("ascii")
            .starts_with("text/css")
    );
    assert!(!css.text.contains("http"), "the stylesheet loads nothing");
    let icon = b.get("/ui/assets/favicon.svg").await;
    assert_eq!(icon.status, StatusCode::OK);
    assert_eq!(icon.headers[header::CONTENT_TYPE], "image/svg+xml");
    assert!(
        icon.text.starts_with("<svg") && !icon.text.contains("href"),
        "the icon loads nothing"
    );
}

#[tokio::test]
async fn a_finding_shows_its_evidence_history_and_runbook() {
    let a = fleet().await;
    let now = Timestamp::now();
    let f = Finding {
        id: finding_id("h1", FindingKind::NicDrops, "eth0"),
        host: "h1".into(),
        kind: FindingKind::NicDrops,
        subject: "eth0".into(),
        severity: Severity::Warning,
        state: FindingState::Firing,
        since: now,
        last_seen: now,
        resolved_at: None,
        summary: "2 % of received packets dropped <b>by the NIC</b>".into(),
        evidence: BTreeMap::from([("rx_missed_errors".to_owned(), 412.0.into())]),
        runbook: "nic-drops".into(),
    };
    let batch = TransitionBatch {
        transitions: vec![FindingTransition {
            transition: TransitionKind::Fired,
            at: now,
            finding: f.clone(),
        }],
    };
    let r = a
        .call(
            "POST",
            "/api/v1/agents/h1/transitions",
            &a.cred("h1"),
            Some(serde_json::to_value(&batch).expect("json")),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let mut b = Browser::new(&a);
    b.login(VIEWER).await;
    let list = b.get("/ui/findings?state=firing&kind=nic_drops").await;
    assert!(list.text.contains(&format!("/ui/findings/{}", f.id)), "{}", list.text);
    let none = b.get("/ui/findings?kind=disk_hung").await;
    assert!(none.text.contains("No finding matches"), "{}", none.text);
    let p = b.get(&format!("/ui/findings/{}", f.id)).await;
    assert_eq!(p.status, StatusCode::OK);
    assert!(
        p.text.contains("rx_missed_errors") && p.text.contains("412"),
        "evidence"
    );
    assert!(p.text.contains("fired"), "history");
    assert!(
        p.text.contains("Runbook: nic-drops") && p.text.contains("<article class=\"runbook\">"),
        "runbook"
    );
    assert!(
        p.text.contains("&lt;b&gt;by the NIC&lt;/b&gt;"),
        "the summary is escaped"
    );
}

#[tokio::test]
async fn operators_act_with_csrf_and_confirmation_and_viewers_cannot() {
    let a = fleet().await;
    let id = a.create_blackhole("h1", "10.9.9.0/24").await;
    let revert = format!("/ui/faults/{id}/revert");

    // A viewer sees no button, and the POST is refused.
    let mut v = Browser::new(&a);
    v.login(VIEWER).await;
    let page = v.get("/ui/faults").await;
    assert!(page.text.contains(&id), "the fault is listed");
    assert!(
        !page.text.contains(&revert) && !page.text.contains("/ui/lever"),
        "no operator form for a viewer"
    );
    let csrf = page.csrf();
    let p = v.post(&revert, &[("csrf", &csrf), ("confirm", "yes")]).await;
    assert_eq!(p.status, StatusCode::FORBIDDEN);
    let p = v
        .post("/ui/lever", &[("csrf", &csrf), ("confirm", "yes"), ("engaged", "true")])
        .await;
    assert_eq!(p.status, StatusCode::FORBIDDEN);

    // An operator: no CSRF token → 403, another site → 403, unconfirmed → 400.
    let mut o = Browser::new(&a);
    o.login(OPERATOR).await;
    let page = o.get("/ui/faults").await;
    assert!(page.text.contains(&revert), "the operator's revert form");
    let csrf = page.csrf();
    assert_eq!(
        o.post(&revert, &[("confirm", "yes")]).await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        o.post(
            &revert,
            &[("csrf", "00000000000000000000000000000000"), ("confirm", "yes")]
        )
        .await
        .status,
        StatusCode::FORBIDDEN
    );
    // Another site, and what a browser sends from a page whose referrer
    // policy hides its origin.
    for origin in ["https://evil.example", "null"] {
        let cross = o
            .request(
                "POST",
                &revert,
                Some(&[("csrf", &csrf), ("confirm", "yes")]),
                Some(origin),
            )
            .await;
        assert_eq!(cross.status, StatusCode::FORBIDDEN, "Origin: {origin}");
    }
    assert_eq!(
        o.post(&revert, &[("csrf", &csrf)]).await.status,
        StatusCode::BAD_REQUEST
    );
    let still = a.call("GET", &format!("/api/v1/faults/{id}"), VIEWER, None).await;
    assert_eq!(still.json()["status"], "running", "nothing refused changed anything");
    // Confirmed, with the token: reverted.
    let p = o.post(&revert, &[("csrf", &csrf), ("confirm", "yes")]).await;
    assert_eq!((p.status, p.location()), (StatusCode::SEE_OTHER, "/ui/faults"));
    let ended = a.call("GET", &format!("/api/v1/faults/{id}"), VIEWER, None).await;
    assert_eq!(ended.json()["status"], "ended", "{}", ended.text);

    // The lever, engaged from the console, is what the API shows.
    let p = o
        .post(
            "/ui/lever",
            &[
                ("csrf", &csrf),
                ("confirm", "yes"),
                ("engaged", "true"),
                ("reason", "incident 42"),
            ],
        )
        .await;
    assert_eq!(p.status, StatusCode::SEE_OTHER, "{}", p.text);
    let lever = a.call("GET", "/api/v1/safety-lever", VIEWER, None).await;
    assert_eq!(lever.json()["engaged"], true, "{}", lever.text);
    assert_eq!(lever.json()["reason"], "incident 42");
    let page = o.get("/ui/faults").await;
    assert!(page.text.contains("Release the lever"), "{}", page.text);
}

#[tokio::test]
async fn a_game_day_runs_from_the_console_and_its_report_has_a_timeline() {
    let a = fleet().await;
    let spec = json!({
        "name": "gate",
        "hypothesis": "an operator can hold a run at a gate",
        "targets": {"a": {"agents": ["h1"]}},
        "safety": {"max_duration": "2m"},
        "steps": [{"id": "hold", "gate": {"message": "resume me"}}]
    });
    let r = a.call("POST", "/api/v1/gamedays", OPERATOR, Some(spec)).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let mut o = Browser::new(&a);
    o.login(OPERATOR).await;
    let list = o.get("/ui/gamedays").await;
    assert!(list.text.contains("/ui/gamedays/gate/run"), "{}", list.text);
    let csrf = list.csrf();
    let started = o
        .post("/ui/gamedays/gate/run", &[("csrf", &csrf), ("confirm", "yes")])
        .await;
    assert_eq!(started.status, StatusCode::SEE_OTHER, "{}", started.text);
    let run_url = started.location().to_owned();
    assert!(run_url.starts_with("/ui/runs/run-"), "{run_url}");
    let id = run_url.trim_start_matches("/ui/runs/").to_owned();
    // Live: it reloads itself, shows the timeline and the operator's buttons.
    let mut live = o.get(&run_url).await;
    for _ in 0..50 {
        if live.text.contains(&format!("/ui/runs/{id}/resume")) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        live = o.get(&run_url).await;
    }
    assert!(live.text.contains("http-equiv=\"refresh\""), "a live run refreshes");
    assert!(
        live.text.contains("<svg") && live.text.contains("Timeline of run"),
        "{}",
        live.text
    );
    assert!(live.text.contains(&format!("/ui/runs/{id}/abort")));
    assert!(
        live.text.contains(&format!("/ui/runs/{id}/resume")),
        "waiting at its gate"
    );
    // The forms are on pages of their own, which do not reload themselves.
    let abort_page = o.get(&format!("/ui/runs/{id}/abort")).await;
    assert_eq!(abort_page.status, StatusCode::OK);
    assert!(
        abort_page.text.contains(&format!("action=\"/ui/runs/{id}/abort\""))
            && abort_page.text.contains("name=\"reason\"")
            && !abort_page.text.contains("http-equiv=\"refresh\""),
        "{}",
        abort_page.text
    );
    let resume_page = o.get(&format!("/ui/runs/{id}/resume")).await;
    assert!(
        resume_page.text.contains("resume me")
            && resume_page.text.contains(&format!("action=\"/ui/runs/{id}/resume\"")),
        "{}",
        resume_page.text
    );
    // A viewer sees the run without the buttons, and not their pages.
    let mut v = Browser::new(&a);
    v.login(VIEWER).await;
    let seen = v.get(&run_url).await;
    assert!(!seen.text.contains(&format!("/ui/runs/{id}/abort")));
    assert_eq!(
        v.get(&format!("/ui/runs/{id}/abort")).await.status,
        StatusCode::FORBIDDEN
    );
    let vcsrf = seen.csrf();
    let p = v
        .post(&format!("/ui/runs/{id}/abort"), &[("csrf", &vcsrf), ("confirm", "yes")])
        .await;
    assert_eq!(p.status, StatusCode::FORBIDDEN);
    // Aborted by the operator: ended, no longer refreshing, its report downloadable.
    let p = o
        .post(
            &format!("/ui/runs/{id}/abort"),
            &[("csrf", &csrf), ("confirm", "yes"), ("reason", "lunch")],
        )
        .await;
    assert_eq!(p.status, StatusCode::SEE_OTHER, "{}", p.text);
    let mut done = o.get(&run_url).await;
    for _ in 0..100 {
        if done.text.contains("aborted") && !done.text.contains("http-equiv=\"refresh\"") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        done = o.get(&run_url).await;
    }
    assert!(done.text.contains("operator abort: lunch"), "{}", done.text);
    let ended = o.get(&format!("/ui/runs/{id}/abort")).await;
    assert!(
        ended.text.contains("has ended") && !ended.text.contains("<form method=\"post\" action=\"/ui/runs"),
        "{}",
        ended.text
    );
    assert!(
        !done.text.contains("http-equiv=\"refresh\""),
        "an ended run stays still"
    );
    let md = o.get(&format!("/ui/runs/{id}/report.md")).await;
    assert_eq!(md.status, StatusCode::OK);
    assert!(
        md.headers[header::CONTENT_DISPOSITION]
            .to_str()
            .expect("ascii")
            .contains("attachment")
    );
    assert!(md.text.contains("gate") && md.text.contains('#'), "{}", md.text);
    let js = o.get(&format!("/ui/runs/{id}/report.json")).await;
    let v: Value = serde_json::from_str(&js.text).expect("a run document");
    assert_eq!(v["id"], id.as_str());
}
