//! The console's pages and forms: fleet, findings (with their evidence,
//! history and runbook), paths (the matrix), faults (and the safety lever),
//! game days (definitions, runs, a run's report with its timeline).
//!
//! State is always written out beside its colour, with a shape (● ▲ ✖ …),
//! so the pages read the same without colour.

use std::collections::BTreeMap;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use graydar_common::api::{AgentInfo, AgentState, Evidence, Finding};
use graydar_common::gameday::run::{DetectionState, RunInfo, StartRun, StepState};
use graydar_common::timestamp::Timestamp;
use maud::{Markup, PreEscaped, html};
use serde::Deserialize;

use super::session::Session;
use super::{Shared, check_action, operators_only, page, page_with, refusal, runbooks, session_of, to_login};
use crate::store::{FindingFilter, RunFilter};

pub(super) fn routes() -> Router<Shared> {
    Router::new()
        .route("/ui/fleet", get(fleet))
        .route("/ui/findings", get(findings))
        .route("/ui/findings/{id}", get(finding))
        .route("/ui/runbooks/{name}", get(runbook))
        .route("/ui/paths", get(paths))
        .route("/ui/paths/{src}/{dst}", get(pair))
        .route("/ui/faults", get(faults))
        .route("/ui/faults/{id}/revert", post(revert_fault))
        .route("/ui/lever", post(lever))
        .route("/ui/gamedays", get(gamedays))
        .route("/ui/gamedays/{name}/run", post(start_run))
        .route("/ui/runs/{id}", get(run))
        .route("/ui/runs/{id}/report.md", get(report_md))
        .route("/ui/runs/{id}/report.json", get(report_json))
        .route("/ui/runs/{id}/abort", get(abort_page).post(abort_run))
        .route("/ui/runs/{id}/resume", get(resume_page).post(resume_run))
}

/// A serde enum's name (`firing`, `detection_gap`, …).
fn label<T: serde::Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        _ => String::new(),
    }
}

/// A serde enum from its name.
fn parse<T: serde::de::DeserializeOwned>(s: &str) -> Option<T> {
    serde_json::from_value(serde_json::Value::String(s.to_owned())).ok()
}

/// `shape text` of a state, the shape telling it apart without colour.
fn badge(state: &str) -> Markup {
    let shape = match state {
        "healthy" | "ok" | "resolved" | "passed" | "pass" | "detected" | "reverted" | "completed" | "active"
        | "running" | "ended" => "●",
        "stale" | "lossy" | "warning" | "late" | "pending" | "applying" | "reverting" | "preflight" | "dry_run" => "▲",
        "lost" | "down" | "firing" | "critical" | "failed" | "fail" | "missed" | "aborted" | "detection_gap" => "✖",
        _ => "○",
    };
    html! { span class=(format!("badge s-{state}")) { span aria-hidden="true" { (shape) } " " (state) } }
}

fn when(t: &Timestamp) -> String {
    t.to_string().chars().take(19).collect::<String>().replace('T', " ")
}

fn evidence_text(e: &Evidence) -> String {
    match e {
        Evidence::Number(n) => format!("{n}"),
        Evidence::Text(t) => t.clone(),
    }
}

/// Hidden CSRF field and the confirmation box of an operator's form.
fn action_fields(s: &Session, confirm: &str) -> Markup {
    html! {
        input type="hidden" name="csrf" value=(s.csrf);
        label.confirm { input type="checkbox" name="confirm" value="yes" required; " " (confirm) }
    }
}

fn error_page(s: &Session, status: StatusCode, what: &str, e: impl std::fmt::Display) -> Response {
    refusal(s, status, what, &e.to_string())
}

/// The value of a service call, or its error page (`status`, titled
/// `what`) as the handler's answer.
macro_rules! or_error_page {
    ($s:expr, $call:expr, $status:expr, $what:expr) => {
        match $call {
            Ok(v) => v,
            Err(e) => return error_page(&$s, $status, $what, e),
        }
    };
}

macro_rules! session_or_login {
    ($app:expr, $headers:expr) => {
        match session_of(&$app, &$headers).await {
            Ok(Some(s)) => s,
            Ok(None) => return to_login(),
            Err(r) => return *r,
        }
    };
}

/// The session of an operator's confirmed form with its CSRF token, or the
/// refusal ([`check_action`]) as the handler's answer.
macro_rules! operator_or_refused {
    ($app:expr, $headers:expr, $form:expr) => {
        match check_action(&$app, &$headers, &$form.csrf, $form.confirmed()).await {
            Ok(s) => s,
            Err(r) => return *r,
        }
    };
}

// ---------------------------------------------------------------- fleet

async fn fleet(State(app): State<Shared>, headers: HeaderMap, Query(q): Query<FleetQuery>) -> Response {
    let s = session_or_login!(app, headers);
    let agents = or_error_page!(
        s,
        app.services.agents.list().await,
        StatusCode::SERVICE_UNAVAILABLE,
        "Fleet"
    );
    let active = app
        .services
        .faults
        .list(Some(crate::store::FaultStatus::Running), 1000)
        .await
        .unwrap_or_default();
    let mut faults_of: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for f in &active {
        for a in &f.agents {
            faults_of.entry(a.agent.as_str()).or_default().push(f.id.as_str());
        }
    }
    let counts = |st: AgentState| agents.iter().filter(|a| a.state == st).count();
    let (shown, matched) = select_agents(&agents, &q, FLEET_ROWS);
    let body = html! {
        p.summary {
            (agents.len()) " agents: "
            (counts(AgentState::Healthy)) " healthy, " (counts(AgentState::Stale)) " stale, "
            (counts(AgentState::Lost)) " lost; " (active.len()) " faults running."
        }
        form.filters method="get" action="/ui/fleet" {
            label { "State " select name="state" {
                option value="" { "any" }
                @for v in ["healthy", "stale", "lost"] { option value=(v) selected[non_empty(&q.state) == Some(v)] { (v) } }
            } }
            label { "Host " input type="text" name="host" value=(q.host.clone().unwrap_or_default()) placeholder="part of the name"; }
            label { "Label " input type="text" name="label" value=(q.label.clone().unwrap_or_default()) placeholder="key=value"; }
            button type="submit" { "Filter" }
        }
        @if matched == 0 { p { "No agent matches." } }
        @if shown.len() < matched {
            p.hint { "Showing " (shown.len()) " of " (matched) " matching agents (lost and stale first); narrow them with the filters." }
        }
        div.scroll {
            table {
                caption.visually-hidden { "Registered agents" }
                thead { tr {
                    th scope="col" { "Agent" } th scope="col" { "State" } th scope="col" { "Last seen" }
                    th scope="col" { "Firing" } th scope="col" { "Labels" } th scope="col" { "Capabilities" }
                    th scope="col" { "Kernel / agent" } th scope="col" { "Active faults" }
                } }
                tbody {
                    @for a in &shown {
                        @let caps = serde_json::to_value(&a.capabilities).ok();
                        tr {
                            th scope="row" { a href=(format!("/ui/findings?host={}", a.hostname)) { (a.hostname) } }
                            td { (badge(a.state.as_str())) }
                            td { (when(&a.last_seen)) }
                            td.num { (a.firing_findings) }
                            td { @for (k, v) in &a.labels { span.tag { (k) "=" (v) } " " } }
                            td {
                                @if let Some(serde_json::Value::Object(m)) = &caps {
                                    @for (k, v) in m { @if v == &serde_json::Value::Bool(true) { span.tag { (k) } " " } }
                                }
                            }
                            td { (a.kernel_version) " / " (a.agent_version) }
                            td { @for id in faults_of.get(a.hostname.as_str()).into_iter().flatten() {
                                a href=(format!("/ui/faults#{id}")) { (id) } " "
                            } }
                        }
                    }
                }
            }
        }
    };
    page(Some(&s), "Fleet", "fleet", body).into_response()
}

/// The most agents the fleet page lists at once (a fleet of 10,000 would be
/// megabytes of table): lost and stale first, the filters narrow the rest.
const FLEET_ROWS: usize = 500;

#[derive(Debug, Default, Deserialize)]
struct FleetQuery {
    state: Option<String>,
    host: Option<String>,
    label: Option<String>,
}

/// The agents the fleet page shows for `q` (lost, then stale, then healthy,
/// each by name; at most `cap`), and how many matched.
fn select_agents<'a>(agents: &'a [AgentInfo], q: &FleetQuery, cap: usize) -> (Vec<&'a AgentInfo>, usize) {
    let state = non_empty(&q.state);
    let host = non_empty(&q.host);
    let label = non_empty(&q.label).map(|l| l.split_once('=').unwrap_or((l, "")));
    let mut matched: Vec<&AgentInfo> = agents
        .iter()
        .filter(|a| state.is_none_or(|s| a.state.as_str() == s))
        .filter(|a| host.is_none_or(|h| a.hostname.contains(h)))
        .filter(|a| {
            label.is_none_or(|(k, v)| {
                a.labels
                    .get(k.trim())
                    .is_some_and(|have| v.trim().is_empty() || have == v.trim())
            })
        })
        .collect();
    let rank = |s: AgentState| match s {
        AgentState::Lost => 0,
        AgentState::Stale => 1,
        AgentState::Healthy => 2,
    };
    matched.sort_by(|a, b| {
        rank(a.state)
            .cmp(&rank(b.state))
            .then_with(|| a.hostname.cmp(&b.hostname))
    });
    let n = matched.len();
    matched.truncate(cap);
    (matched, n)
}

// ---------------------------------------------------------------- findings

#[derive(Debug, Default, Deserialize)]
struct FindingsQuery {
    kind: Option<String>,
    severity: Option<String>,
    state: Option<String>,
    host: Option<String>,
}

fn non_empty(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

async fn findings(State(app): State<Shared>, headers: HeaderMap, Query(q): Query<FindingsQuery>) -> Response {
    let s = session_or_login!(app, headers);
    let filter = FindingFilter {
        kind: non_empty(&q.kind).and_then(parse),
        severity: non_empty(&q.severity).and_then(parse),
        state: non_empty(&q.state).and_then(parse),
        agent: non_empty(&q.host).map(str::to_owned),
        since_ms: None,
        limit: 500,
    };
    let list = or_error_page!(
        s,
        app.services.findings.list(&filter).await,
        StatusCode::SERVICE_UNAVAILABLE,
        "Findings"
    );
    let kinds: Vec<String> = graydar_common::api::FindingKind::ALL
        .iter()
        .map(|k| k.as_str().to_owned())
        .collect();
    let body = html! {
        form.filters method="get" action="/ui/findings" {
            label { "Kind " select name="kind" {
                option value="" { "any" }
                @for k in &kinds { option value=(k) selected[non_empty(&q.kind) == Some(k.as_str())] { (k) } }
            } }
            label { "Severity " select name="severity" {
                option value="" { "any" }
                @for v in ["info", "warning", "critical"] { option value=(v) selected[non_empty(&q.severity) == Some(v)] { (v) } }
            } }
            label { "State " select name="state" {
                option value="" { "any" }
                @for v in ["firing", "resolved"] { option value=(v) selected[non_empty(&q.state) == Some(v)] { (v) } }
            } }
            label { "Host " input type="text" name="host" value=(q.host.clone().unwrap_or_default()); }
            button type="submit" { "Filter" }
        }
        (findings_table(&list))
    };
    page(Some(&s), "Findings", "findings", body).into_response()
}

fn findings_table(list: &[Finding]) -> Markup {
    html! {
        @if list.is_empty() { p { "No finding matches." } } @else {
            div.scroll { table {
                caption.visually-hidden { "Findings, firing first" }
                thead { tr {
                    th scope="col" { "State" } th scope="col" { "Severity" } th scope="col" { "Host" }
                    th scope="col" { "Kind" } th scope="col" { "Subject" } th scope="col" { "Since" }
                    th scope="col" { "Summary" }
                } }
                tbody { @for f in list { tr {
                    td { (badge(&label(&f.state))) }
                    td { (badge(&label(&f.severity))) }
                    td { (f.host) }
                    td { a href=(format!("/ui/findings/{}", f.id)) { (f.kind.as_str()) } }
                    td { (f.subject) }
                    td { (when(&f.since)) }
                    td { (f.summary) }
                } } }
            } }
        }
    }
}

async fn finding(State(app): State<Shared>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let s = session_or_login!(app, headers);
    let d = or_error_page!(
        s,
        app.services.findings.get(&id).await,
        StatusCode::NOT_FOUND,
        "No such finding"
    );
    let f = &d.finding;
    let runbook = runbooks::html(&f.runbook);
    let body = html! {
        p.summary { (badge(&label(&f.state))) " " (badge(&label(&f.severity))) " on " strong { (f.host) } ", " (f.subject) ": " (f.summary) }
        dl {
            dt { "Since" } dd { (when(&f.since)) }
            dt { "Last seen" } dd { (when(&f.last_seen)) }
            @if let Some(r) = &f.resolved_at { dt { "Resolved" } dd { (when(r)) } }
        }
        h2 { "Evidence" }
        table.evidence {
            caption.visually-hidden { "Evidence" }
            tbody { @for (k, v) in &f.evidence { tr { th scope="row" { (k) } td { (evidence_text(v)) } } } }
        }
        h2 { "History" }
        div.scroll { table {
            caption.visually-hidden { "Transitions" }
            thead { tr { th scope="col" { "At" } th scope="col" { "Transition" } th scope="col" { "Severity" } th scope="col" { "Summary" } th scope="col" { "Received" } } }
            tbody { @for h in &d.history { tr {
                td { (when(&h.at)) } td { (label(&h.transition)) } td { (label(&h.severity)) } td { (h.summary) } td { (when(&h.received_at)) }
            } } }
        } }
        h2 id="runbook" { "Runbook: " (f.runbook) }
        @match runbook {
            Some(html) => article.runbook { (PreEscaped(html)) },
            None => p { "No runbook named " code { (f.runbook) } " in this version." },
        }
    };
    page(
        Some(&s),
        &format!("{} on {}", f.kind.as_str(), f.host),
        "findings",
        body,
    )
    .into_response()
}

async fn runbook(State(app): State<Shared>, headers: HeaderMap, Path(name): Path<String>) -> Response {
    let s = session_or_login!(app, headers);
    match runbooks::html(&name) {
        Some(h) => page(
            Some(&s),
            &format!("Runbook: {name}"),
            "findings",
            html! { article.runbook { (PreEscaped(h)) } },
        )
        .into_response(),
        None => refusal(
            &s,
            StatusCode::NOT_FOUND,
            "No such runbook",
            &format!("no runbook {name:?}"),
        ),
    }
}

// ---------------------------------------------------------------- paths

fn pct(r: Option<f64>) -> String {
    r.map_or("–".to_owned(), |v| format!("{:.1} %", v * 100.0))
}

fn ms(v: Option<f64>) -> String {
    v.map_or("–".to_owned(), |v| format!("{:.1} ms", v * 1000.0))
}

async fn paths(State(app): State<Shared>, headers: HeaderMap) -> Response {
    let s = session_or_login!(app, headers);
    let m = app.services.paths.matrix();
    let mut hosts: Vec<&str> = m.pairs.iter().flat_map(|p| [p.src.as_str(), p.dst.as_str()]).collect();
    hosts.sort_unstable();
    hosts.dedup();
    let cell: BTreeMap<(&str, &str), &graydar_common::paths::PathPair> =
        m.pairs.iter().map(|p| ((p.src.as_str(), p.dst.as_str()), p)).collect();
    let body = html! {
        p { "Each cell is the path from the row's host to the column's: loss (and the round trip the row's host measured). "
            "● ok, ▲ lossy, ✖ down, ? stale, · no report." }
        @if hosts.is_empty() { p { "No path reports yet (agents with [paths] peers report here)." } } @else {
            div.scroll { table.matrix {
                caption { "Loss and RTT, source (rows) to destination (columns)" }
                thead { tr { th scope="col" { "from \\ to" } @for d in &hosts { th scope="col" { (d) } } } }
                tbody { @for src in &hosts { tr {
                    th scope="row" { (src) }
                    @for dst in &hosts {
                        @if src == dst { td.self_ { "—" } } @else {
                            @match cell.get(&(*src, *dst)) {
                                Some(p) => {
                                    @let shape = match p.state.as_str() { "ok" => "●", "lossy" => "▲", "down" => "✖", "stale" => "?", _ => "·" };
                                    td class=(format!("cell s-{}", p.state)) {
                                        a href=(format!("/ui/paths/{src}/{dst}")) title=(format!("{src} → {dst}: {}", p.state)) {
                                            span aria-hidden="true" { (shape) } " " (pct(p.loss_ratio)) br; small { (ms(p.rtt_p50_seconds)) }
                                        }
                                    }
                                }
                                None => td.cell { span aria-hidden="true" { "·" } span.visually-hidden { "no report" } },
                            }
                        }
                    }
                } } }
            } }
        }
    };
    page(Some(&s), "Paths", "paths", body).into_response()
}

/// Evidence keys that carry a hop list or route.
fn is_route_key(k: &str) -> bool {
    k.contains("hops") || k.contains("route")
}

async fn pair(State(app): State<Shared>, headers: HeaderMap, Path((src, dst)): Path<(String, String)>) -> Response {
    let s = session_or_login!(app, headers);
    let m = app.services.paths.matrix();
    let dirs: Vec<&graydar_common::paths::PathPair> = m
        .pairs
        .iter()
        .filter(|p| (p.src == src && p.dst == dst) || (p.src == dst && p.dst == src))
        .collect();
    if dirs.is_empty() {
        return refusal(
            &s,
            StatusCode::NOT_FOUND,
            "No such path",
            &format!("no report of {src} ↔ {dst}"),
        );
    }
    // The path findings of either host naming the other, with their hop lists.
    let mut related = Vec::new();
    for (h, peer) in [(&src, &dst), (&dst, &src)] {
        let filter = FindingFilter {
            agent: Some(h.clone()),
            limit: 200,
            ..FindingFilter::default()
        };
        if let Ok(list) = app.services.findings.list(&filter).await {
            related.extend(list.into_iter().filter(|f| f.subject.contains(peer.as_str())));
        }
    }
    let body = html! {
        div.scroll { table {
            caption { "Both directions" }
            thead { tr { th scope="col" { "Direction" } th scope="col" { "State" } th scope="col" { "Loss" } th scope="col" { "Delivered / lost" }
                th scope="col" { "RTT p50 / p99" } th scope="col" { "One-way delay variation" } th scope="col" { "Hops" } th scope="col" { "Reported" } } }
            tbody { @for p in &dirs { tr {
                th scope="row" { (p.src) " → " (p.dst) }
                td { (badge(&p.state)) } td { (pct(p.loss_ratio)) } td { (p.delivered) " / " (p.lost) }
                td { (ms(p.rtt_p50_seconds)) " / " (ms(p.rtt_p99_seconds)) } td { (ms(p.owd_variation_seconds)) }
                td { (p.hops.map_or("–".to_owned(), |h| h.to_string())) } td { (when(&p.reported_at)) }
            } } }
        } }
        h2 { "Findings on this pair" }
        (findings_table(&related))
        @for f in related.iter().filter(|f| f.evidence.keys().any(|k| is_route_key(k))) {
            h3 { (f.kind.as_str()) " on " (f.host) ": traceroutes" }
            table.evidence { tbody { @for (k, v) in f.evidence.iter().filter(|(k, _)| is_route_key(k)) {
                tr { th scope="row" { (k) } td { (evidence_text(v)) } }
            } } }
        }
    };
    page(Some(&s), &format!("{src} ↔ {dst}"), "paths", body).into_response()
}

// ---------------------------------------------------------------- faults

async fn faults(State(app): State<Shared>, headers: HeaderMap) -> Response {
    let s = session_or_login!(app, headers);
    let list = or_error_page!(
        s,
        app.services.faults.list(None, 200).await,
        StatusCode::SERVICE_UNAVAILABLE,
        "Faults"
    );
    let lever = app.services.faults.safety_lever();
    let (live, history): (Vec<_>, Vec<_>) = list.iter().partition(|f| f.ended_at.is_none());
    let body = html! {
        section.lever aria-labelledby="lever" {
            h2 id="lever" { "Safety lever" }
            @if lever.engaged {
                p.refusal { "✖ Engaged since " (lever.since.as_ref().map(when).unwrap_or_default()) ": "
                    (lever.reason.clone().unwrap_or_default()) ". Every fault was reverted; new faults and runs are refused." }
            } @else {
                p { "● Released: faults are accepted." }
            }
            @if s.is_operator() {
                form method="post" action="/ui/lever" {
                    @if lever.engaged {
                        input type="hidden" name="engaged" value="false";
                        (action_fields(&s, "Release the lever: faults are accepted again"))
                        button type="submit" { "Release the lever" }
                    } @else {
                        input type="hidden" name="engaged" value="true";
                        label { "Reason " input type="text" name="reason" maxlength=(MAX_REASON); }
                        (action_fields(&s, "Revert every fault on every agent now and refuse new ones"))
                        button.danger type="submit" { "Engage the lever" }
                    }
                }
            }
        }
        h2 { "Active" }
        (fault_table(&s, &live, true))
        h2 { "History" }
        (fault_table(&s, &history, false))
    };
    page(Some(&s), "Faults", "faults", body).into_response()
}

fn fault_table(s: &Session, list: &[&graydar_common::fault_api::FaultInfo], live: bool) -> Markup {
    html! {
        @if list.is_empty() { p { "None." } } @else {
            div.scroll { table {
                thead { tr {
                    th scope="col" { "Fault" } th scope="col" { "Kind" } th scope="col" { "Target" } th scope="col" { "Status" }
                    th scope="col" { "Agents" } th scope="col" { "Created" } th scope="col" { @if live { "Expires" } @else { "Ended" } }
                    @if live && s.is_operator() { th scope="col" { "Revert" } }
                } }
                tbody { @for f in list { tr id=(f.id) {
                    th scope="row" { code { (f.id) } }
                    td { (f.spec.kind()) } td { (f.spec.target()) }
                    td { (badge(&f.status)) @if let Some(r) = &f.end_reason { " (" (r) ")" } }
                    td { @for a in &f.agents { span.tag { (a.agent) ": " (label(&a.state)) } " " } }
                    td { (when(&f.created_at)) }
                    td { @if live { (when(&f.expires_at)) } @else { (f.ended_at.as_ref().map(when).unwrap_or_default()) } }
                    @if live && s.is_operator() { td {
                        form method="post" action=(format!("/ui/faults/{}/revert", f.id)) {
                            (action_fields(s, "Revert it"))
                            button type="submit" { "Revert" }
                        }
                    } }
                } } }
            } }
        }
    }
}

#[derive(Deserialize)]
struct ActionForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    confirm: String,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    engaged: String,
}

impl ActionForm {
    fn confirmed(&self) -> bool {
        self.confirm == "yes"
    }

    /// The typed reason, trimmed to the API's limit (the input's `maxlength`).
    fn reason(&self) -> String {
        self.reason.trim().chars().take(MAX_REASON).collect()
    }
}

/// A reason's most characters, as the API takes them.
const MAX_REASON: usize = graydar_common::fault_api::MAX_LEVER_REASON;

async fn revert_fault(
    State(app): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
    axum::Form(f): axum::Form<ActionForm>,
) -> Response {
    let s = operator_or_refused!(app, headers, f);
    match app.services.faults.end(&id).await {
        Ok(_) => {
            tracing::warn!(fault = %id, "console: fault reverted by an operator");
            Redirect::to("/ui/faults").into_response()
        }
        Err(e) => error_page(&s, StatusCode::CONFLICT, "Not reverted", e),
    }
}

async fn lever(State(app): State<Shared>, headers: HeaderMap, axum::Form(f): axum::Form<ActionForm>) -> Response {
    let s = operator_or_refused!(app, headers, f);
    let r = if f.engaged == "true" {
        let reason = f.reason();
        let reason = if reason.is_empty() {
            "engaged from the console".to_owned()
        } else {
            reason
        };
        app.services.engage_safety_lever(reason).await.map(|_| ())
    } else {
        app.services.faults.release_safety_lever().await.map(|_| ())
    };
    match r {
        Ok(()) => Redirect::to("/ui/faults").into_response(),
        Err(e) => error_page(&s, StatusCode::SERVICE_UNAVAILABLE, "The lever did not move", e),
    }
}

// ---------------------------------------------------------------- game days

async fn gamedays(State(app): State<Shared>, headers: HeaderMap) -> Response {
    let s = session_or_login!(app, headers);
    let defs = or_error_page!(
        s,
        app.services.gamedays.list().await,
        StatusCode::SERVICE_UNAVAILABLE,
        "Game days"
    );
    let runs = app
        .services
        .gamedays
        .runs(&RunFilter {
            limit: 100,
            ..RunFilter::default()
        })
        .await
        .unwrap_or_default();
    let body = html! {
        h2 { "Definitions" }
        @if defs.is_empty() { p { "None yet: " code { "graydar gameday apply -f FILE" } "." } } @else {
            div.scroll { table {
                thead { tr { th scope="col" { "Game day" } th scope="col" { "Hypothesis" } th scope="col" { "Steps" } th scope="col" { "Schedule" }
                    @if s.is_operator() { th scope="col" { "Run" } } } }
                tbody { @for g in &defs { tr {
                    th scope="row" { (g.name) }
                    td { (g.spec.hypothesis) }
                    td { (g.spec.steps.len()) }
                    td { (g.spec.schedule.as_ref().map(|x| x.cron.clone()).unwrap_or_else(|| "–".into())) }
                    @if s.is_operator() { td {
                        form method="post" action=(format!("/ui/gamedays/{}/run", g.name)) {
                            (action_fields(&s, "Inject its faults now"))
                            button type="submit" { "Run" }
                        }
                    } }
                } } }
            } }
        }
        h2 { "Runs" }
        @if runs.is_empty() { p { "No run yet." } } @else {
            div.scroll { table {
                thead { tr { th scope="col" { "Run" } th scope="col" { "Game day" } th scope="col" { "State" } th scope="col" { "Outcome" }
                    th scope="col" { "Started" } th scope="col" { "Trigger" } } }
                tbody { @for r in &runs { tr {
                    th scope="row" { a href=(format!("/ui/runs/{}", r.id)) { code { (r.id) } } }
                    td { (r.gameday) } td { (badge(&label(&r.state))) }
                    td { @if let Some(o) = &r.outcome { (badge(o.as_str())) } @else { "–" } }
                    td { (when(&r.created_at)) } td { (r.trigger) }
                } } }
            } }
        }
    };
    page(Some(&s), "Game days", "gamedays", body).into_response()
}

async fn start_run(
    State(app): State<Shared>,
    headers: HeaderMap,
    Path(name): Path<String>,
    axum::Form(f): axum::Form<ActionForm>,
) -> Response {
    let s = operator_or_refused!(app, headers, f);
    match app.services.gamedays.start(&name, StartRun::default(), "console").await {
        Ok(run) => Redirect::to(&format!("/ui/runs/{}", run.id)).into_response(),
        Err(e) => error_page(&s, StatusCode::CONFLICT, "Not started", e),
    }
}

async fn run(State(app): State<Shared>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let s = session_or_login!(app, headers);
    let r = or_error_page!(
        s,
        app.services.gamedays.run(&id).await,
        StatusCode::NOT_FOUND,
        "No such run"
    );
    let live = !r.is_finished();
    let waiting = waiting_gate(&r).is_some();
    let body = html! {
        p.summary {
            (badge(&label(&r.state)))
            @if let Some(o) = &r.outcome { " " (badge(o.as_str())) }
            @if let Some(reason) = &r.reason { " — " (reason) }
        }
        p { em { (r.spec.hypothesis) } }
        @if let Some(v) = &r.verdicts {
            p.verdicts { "Detection: " (badge(&label(&v.detection))) " · Safety: " (badge(&label(&v.safety))) }
        }
        // Links to forms on pages of their own: this page reloads itself
        // every 2 s, which would clear a half-typed reason or a ticked box.
        @if live && s.is_operator() {
            p.actions {
                a.button.danger href=(format!("/ui/runs/{}/abort", r.id)) { "Abort…" }
                @if waiting { a.button href=(format!("/ui/runs/{}/resume", r.id)) { "Resume…" } }
            }
        }
        h2 { "Timeline" }
        (timeline(&r))
        h2 { "Detections" }
        div.scroll { table {
            thead { tr { th scope="col" { "Step" } th scope="col" { "Host" } th scope="col" { "Kinds" } th scope="col" { "Within" }
                th scope="col" { "State" } th scope="col" { "Time to detect" } th scope="col" { "Cleared" } } }
            tbody { @for d in &r.detections { tr {
                td { (d.step) } td { (d.host) } td { (d.kinds.join(", ")) } td { (format!("{:.1} s", d.within_ms as f64 / 1000.0)) }
                td { (badge(&label(&d.state))) }
                td { @if let Some(t) = d.time_to_detect_ms {
                    (format!("{:.2} s", t / 1000.0))
                    @if let Some(u) = d.uncertainty_ms { " ± " (format!("{u:.0} ms")) }
                } @else { "–" } }
                td { @if let Some(c) = &d.clear { (label(c)) } @else { "–" } }
            } } }
        } }
        h2 { "Unexpected findings" }
        @if r.unexpected.is_empty() { p { "● None." } } @else {
            ul { @for u in &r.unexpected { li { "✖ " (u.kind.as_str()) " on " (u.host) " (" (u.subject) ") at " (when(&u.fired_at)) ": " (u.summary) } } }
        }
        h2 { "Steps" }
        div.scroll { table {
            thead { tr { th scope="col" { "Step" } th scope="col" { "Action" } th scope="col" { "State" } th scope="col" { "Agents" } th scope="col" { "Fault" } th scope="col" { "Note" } } }
            tbody { @for st in &r.steps { tr {
                td { (st.id) } td { (st.action) } td { (badge(&label(&st.state))) } td { (st.agents.join(", ")) }
                td { @if let Some(f) = &st.fault_id { code { (f) } } } td { (st.reason.clone().unwrap_or_default()) }
            } } }
        } }
        h2 { "Events" }
        ol.events { @for e in &r.timeline { li { time { (when(&e.at)) } " " @if let Some(st) = &e.step { "[" (st) "] " } (e.message) } } }
        p.downloads { "Report: " a href=(format!("/ui/runs/{}/report.md", r.id)) download { "Markdown" } " · "
            a href=(format!("/ui/runs/{}/report.json", r.id)) download { "JSON" } }
    };
    page_with(Some(&s), &format!("{} · {}", r.gameday, r.id), "gamedays", live, body).into_response()
}

/// Milliseconds of `t` after the run's start.
fn rel(run_start: i64, t: &Timestamp) -> f64 {
    (t.unix_ms() - run_start) as f64
}

/// The run as an SVG: a row per target host, a bar per fault step on it
/// (applied to reverted), a marker per detection (● detected with its time
/// to detect, ▲ late, ✖ missed, ○ cut short) and per unexpected finding (◆).
fn timeline(r: &RunInfo) -> Markup {
    let start = r.started_at.unwrap_or(r.created_at).unix_ms();
    let end = r.ended_at.unwrap_or_else(Timestamp::now).unix_ms().max(start + 1000);
    let span = (end - start) as f64;
    let mut hosts: Vec<String> = r.targets.values().flatten().cloned().collect();
    hosts.sort();
    hosts.dedup();
    for u in &r.unexpected {
        if !hosts.contains(&u.host) {
            hosts.push(u.host.clone());
        }
    }
    let (left, width, row) = (140.0, 760.0, 34.0);
    let height = 30.0 + row * hosts.len().max(1) as f64 + 20.0;
    let x = |ms: f64| left + (ms.clamp(0.0, span) / span) * width;
    html! {
        div.scroll { svg.timeline role="img" viewBox=(format!("0 0 {} {height}", left + width + 20.0))
            aria-label=(format!("Timeline of run {}: fault bars per host, detection markers", r.id)) {
            title { "Timeline of run " (r.id) }
            // Axis: 0 and the end, in seconds.
            line x1=(left) y1="20" x2=(left + width) y2="20" class="axis" {}
            text x=(left) y="14" class="tick" { "0 s" }
            text x=(left + width) y="14" class="tick" text-anchor="end" { (format!("{:.0} s", span / 1000.0)) }
            @for (i, h) in hosts.iter().enumerate() {
                @let y = 30.0 + row * i as f64;
                text x="4" y=(y + 20.0) class="host" { (h) }
                line x1=(left) y1=(y + row - 2.0) x2=(left + width) y2=(y + row - 2.0) class="grid" {}
                @for st in r.steps.iter().filter(|st| st.fault_id.is_some() && st.agents.contains(h)) {
                    @if let Some(from) = st.active_at.as_ref().or(st.started_at.as_ref()) {
                        @let to = st.reverted_at.as_ref().or(st.ended_at.as_ref()).map_or(span, |t| rel(start, t));
                        @let x0 = x(rel(start, from));
                        rect.fault x=(x0) y=(y + 6.0) width=((x(to) - x0).max(2.0)) height="14" {
                            title { "fault " (st.id) " on " (h) }
                        }
                        text.barlabel x=(x0 + 3.0) y=(y + 17.0) { (st.id) }
                    }
                }
                @for d in r.detections.iter().filter(|d| &d.host == h) {
                    @let undetected = match d.state {
                        DetectionState::Missed => Some(("✖", "miss", "missed")),
                        DetectionState::CutShort => Some(("○", "cut", "cut short (the run ended before the deadline)")),
                        _ => None,
                    };
                    @if let Some(at) = &d.fired_at {
                        @let cx = x(rel(start, at));
                        @let (shape, class) = match d.state { DetectionState::Detected => ("●", "det"), DetectionState::Late => ("▲", "late"), _ => ("✖", "miss") };
                        text class=(class) x=(cx) y=(y + 30.0) text-anchor="middle" {
                            (shape)
                            title { (d.kind.map(|k| k.as_str().to_owned()).unwrap_or_default()) " detected"
                                @if let Some(t) = d.time_to_detect_ms { " after " (format!("{:.2} s", t / 1000.0)) } }
                        }
                        @if let Some(t) = d.time_to_detect_ms {
                            text.ttd x=(cx + 8.0) y=(y + 30.0) { (format!("{:.1} s", t / 1000.0)) }
                        }
                    } @else if let Some((shape, class, what)) = undetected {
                        // Never detected: at the end of the host's row.
                        text class=(class) x=(left + width - 6.0) y=(y + 30.0) { (shape) title { (what) ": " (d.kinds.join(", ")) } }
                    }
                }
                @for u in r.unexpected.iter().filter(|u| &u.host == h) {
                    text.unexpected x=(x(rel(start, &u.fired_at))) y=(y + 30.0) text-anchor="middle" {
                        "◆" title { "unexpected " (u.kind.as_str()) ": " (u.summary) }
                    }
                }
            }
        } }
        p.legend { "Bars: a fault in effect. ● detected (time to detect beside it), ▲ late, ✖ missed, ○ cut short (the run ended before its deadline), ◆ unexpected finding." }
    }
}

async fn report_md(State(app): State<Shared>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    report(&app, &headers, &id, "md").await
}

async fn report_json(State(app): State<Shared>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    report(&app, &headers, &id, "json").await
}

/// A run's report as a file download, `<id>.md` or `<id>.json`.
async fn report(app: &crate::api::AppState, headers: &HeaderMap, id: &str, ext: &str) -> Response {
    let s = session_or_login!(app, headers);
    let r = or_error_page!(
        s,
        app.services.gamedays.run(id).await,
        StatusCode::NOT_FOUND,
        "No such run"
    );
    let (content_type, body) = if ext == "md" {
        (
            "text/markdown; charset=utf-8",
            graydar_common::gameday::report::markdown(&r),
        )
    } else {
        ("application/json", serde_json::to_string_pretty(&r).unwrap_or_default())
    };
    (
        [
            (header::CONTENT_TYPE, content_type.to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{id}.{ext}\""),
            ),
        ],
        body,
    )
        .into_response()
}

/// The gate step a run waits at, if any.
fn waiting_gate(r: &RunInfo) -> Option<&graydar_common::gameday::run::StepRun> {
    r.steps
        .iter()
        .find(|st| st.action == "gate" && st.state == StepState::Active)
}

/// The page of an operator's action on a live run (abort, or resume at a
/// gate): the run's state and the action's form; refused to a viewer, and
/// nothing to do once the run has ended.
async fn run_action_page(app: &crate::api::AppState, headers: &HeaderMap, id: &str, resume: bool) -> Response {
    let s = session_or_login!(app, headers);
    if !s.is_operator() {
        return operators_only(&s);
    }
    let r = or_error_page!(
        s,
        app.services.gamedays.run(id).await,
        StatusCode::NOT_FOUND,
        "No such run"
    );
    let back = format!("/ui/runs/{}", r.id);
    let gate = waiting_gate(&r);
    let body = html! {
        p.summary {
            a href=(back) { code { (r.id) } } " of " (r.gameday) ": " (badge(&label(&r.state)))
        }
        @if r.is_finished() {
            p { "This run has ended; there is nothing to " (if resume { "resume" } else { "abort" }) "." }
        } @else if resume {
            @match gate {
                Some(st) => {
                    @let message = r.spec.steps.iter().find(|x| x.id == st.id).and_then(|x| x.gate.as_ref()).map(|g| g.message.as_str());
                    p { "Waiting at gate " strong { (st.id) } @if let Some(m) = message.filter(|m| !m.is_empty()) { ": " (m) } }
                    form method="post" action=(format!("/ui/runs/{}/resume", r.id)) {
                        (action_fields(&s, "Pass the gate"))
                        button type="submit" { "Resume" }
                    }
                },
                None => p { "This run is not waiting at a gate." },
            }
        } @else {
            p { "Aborting ends every fault of the run now (each reverted on its agent) and the run as "
                strong { "aborted" } "." }
            form method="post" action=(format!("/ui/runs/{}/abort", r.id)) {
                label { "Reason " input type="text" name="reason" maxlength=(MAX_REASON) autofocus; }
                (action_fields(&s, "End its faults now and abort it"))
                button.danger type="submit" { "Abort" }
            }
        }
        p { a href=(back) { "Back to the run" } }
    };
    let title = if resume { "Resume a run" } else { "Abort a run" };
    page(Some(&s), title, "gamedays", body).into_response()
}

async fn abort_page(State(app): State<Shared>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    run_action_page(&app, &headers, &id, false).await
}

async fn resume_page(State(app): State<Shared>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    run_action_page(&app, &headers, &id, true).await
}

async fn abort_run(
    State(app): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
    axum::Form(f): axum::Form<ActionForm>,
) -> Response {
    let s = operator_or_refused!(app, headers, f);
    let reason = f.reason();
    match app
        .services
        .gamedays
        .abort(&id, crate::gamedays::operator_abort_reason(&reason))
        .await
    {
        Ok(_) => Redirect::to(&format!("/ui/runs/{id}")).into_response(),
        Err(e) => error_page(&s, StatusCode::CONFLICT, "Not aborted", e),
    }
}

async fn resume_run(
    State(app): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
    axum::Form(f): axum::Form<ActionForm>,
) -> Response {
    let s = operator_or_refused!(app, headers, f);
    match app.services.gamedays.resume(&id).await {
        Ok(_) => Redirect::to(&format!("/ui/runs/{id}")).into_response(),
        Err(e) => error_page(&s, StatusCode::CONFLICT, "Not resumed", e),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use graydar_common::api::{AgentInfo, AgentState, Capabilities};
    use graydar_common::timestamp::Timestamp;

    use super::{FleetQuery, select_agents};

    fn agent(name: &str, state: AgentState, rack: &str) -> AgentInfo {
        AgentInfo {
            hostname: name.to_owned(),
            addresses: vec![],
            labels: BTreeMap::from([("rack".to_owned(), rack.to_owned())]),
            kernel_version: String::new(),
            agent_version: String::new(),
            capabilities: Capabilities::default(),
            registered_at: Timestamp::now(),
            last_seen: Timestamp::now(),
            state,
            firing_findings: 0,
            clock: None,
        }
    }

    fn names(v: &[&AgentInfo]) -> Vec<String> {
        v.iter().map(|a| a.hostname.clone()).collect()
    }

    fn q(state: &str, host: &str, label: &str) -> FleetQuery {
        let some = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        FleetQuery {
            state: some(state),
            host: some(host),
            label: some(label),
        }
    }

    #[test]
    fn the_fleet_lists_lost_then_stale_then_healthy_filtered_and_capped() {
        let fleet = [
            agent("web-2", AgentState::Healthy, "r1"),
            agent("web-1", AgentState::Healthy, "r2"),
            agent("db-1", AgentState::Stale, "r1"),
            agent("db-2", AgentState::Lost, "r2"),
        ];
        let (all, n) = select_agents(&fleet, &FleetQuery::default(), 100);
        assert_eq!(
            (names(&all), n),
            (vec!["db-2".into(), "db-1".into(), "web-1".into(), "web-2".into()], 4)
        );
        let (two, n) = select_agents(&fleet, &FleetQuery::default(), 2);
        assert_eq!(
            (names(&two), n),
            (vec!["db-2".into(), "db-1".into()], 4),
            "the problems first"
        );
        assert_eq!(
            names(&select_agents(&fleet, &q("healthy", "", ""), 100).0),
            ["web-1", "web-2"]
        );
        assert_eq!(names(&select_agents(&fleet, &q("", "db", ""), 100).0), ["db-2", "db-1"]);
        assert_eq!(
            names(&select_agents(&fleet, &q("", "", "rack=r1"), 100).0),
            ["db-1", "web-2"]
        );
        assert_eq!(
            names(&select_agents(&fleet, &q("", " web ", " rack = r2 "), 100).0),
            ["web-1"]
        );
        assert_eq!(
            select_agents(&fleet, &q("", "", "rack"), 100).1,
            4,
            "a key alone: any value"
        );
        assert_eq!(select_agents(&fleet, &q("", "", "zone=a"), 100).1, 0);
        assert_eq!(select_agents(&fleet, &q("lost", "web", ""), 100).1, 0);
    }
}
