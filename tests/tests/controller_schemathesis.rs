//! The controller API fuzzed from the OpenAPI document it serves
//! (issue 13 item 12): schemathesis (installed by `cargo xtask setup` in
//! `target/tools/schemathesis`) against the real controller binary.
//!
//! - With an operator token (every operation allowed), schemathesis's
//!   coverage, fuzzing and stateful phases: no response ≥ 500, every response
//!   conforms to the document (status code, content type, headers, body
//!   schema), schema-violating requests are refused, auth is never ignored.
//!   The controller's own request metric confirms that no 5xx was served.
//! - Without a token (and with a wrong one), every operation but the health
//!   checks answers 401.
//!
//! Not checked: schemathesis's `positive_data_acceptance` (a schema-valid
//! request must be accepted). The document cannot say every rule a handler
//! enforces (a fault needs agents or a selector that matches registered
//! agents; a transition must belong to the agent in the path), so a
//! schema-valid request can rightly get 422.
//!
//! `GRAYDAR_SCHEMATHESIS_SEED` (default 1) and
//! `GRAYDAR_SCHEMATHESIS_EXAMPLES` (default 50 per operation) widen a run;
//! `GRAYDAR_SCHEMATHESIS` names another `st`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;

use graydar_tests::agent::http_request;
use graydar_tests::controller::{ControllerProcess, Tokens};
use graydar_tests::deploy::target_dir;

const METHODS: &[&str] = &["get", "put", "post", "delete", "patch"];
/// Operations that answer without a token (liveness and readiness probes).
const OPEN: &[&str] = &["/healthz", "/readyz"];

fn schemathesis() -> PathBuf {
    let st = std::env::var_os("GRAYDAR_SCHEMATHESIS")
        .map_or_else(|| target_dir().join("tools/schemathesis/bin/st"), PathBuf::from);
    assert!(
        st.is_file(),
        "{} is missing: `cargo xtask setup` installs schemathesis there (a Python virtual environment)",
        st.display()
    );
    st
}

/// One request; `(status, body)`.
fn request(addr: SocketAddr, method: &str, path: &str, token: Option<&str>, body: Option<&str>) -> (u16, String) {
    http_request(addr, method, path, token, body).unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

fn document(controller: &ControllerProcess<'_>, tokens: &Tokens) -> serde_json::Value {
    let (status, body) = request(
        controller.addr(),
        "GET",
        "/api/v1/openapi.json",
        Some(&tokens.viewer),
        None,
    );
    assert_eq!(status, 200, "GET /api/v1/openapi.json: {body}");
    serde_json::from_str(&body).expect("the OpenAPI document is JSON")
}

/// `(METHOD, path template, declares bearer security)` of every operation.
fn operations(doc: &serde_json::Value) -> Vec<(String, String, bool)> {
    let paths = doc["paths"].as_object().expect("the document has paths");
    let mut ops = Vec::new();
    for (path, item) in paths {
        for (method, op) in item.as_object().expect("a path item is an object") {
            if METHODS.contains(&method.as_str()) {
                let secured = op["security"].as_array().is_some_and(|s| !s.is_empty());
                ops.push((method.to_uppercase(), path.clone(), secured));
            }
        }
    }
    ops
}

/// Sum of the controller's request counter for responses with a 5xx status,
/// and of all requests, from its `/metrics`.
fn served(controller: &ControllerProcess<'_>, tokens: &Tokens) -> (u64, u64) {
    let (status, text) = request(controller.addr(), "GET", "/metrics", Some(&tokens.viewer), None);
    assert_eq!(status, 200, "GET /metrics: {text}");
    let (mut errors, mut all) = (0, 0);
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("graydar_controller_http_request_duration_seconds_count{") else {
            continue;
        };
        let (labels, value) = rest.rsplit_once("} ").expect("a sample line");
        let n: u64 = value.trim().parse().expect("an integer count");
        all += n;
        if labels.contains("status=\"5") {
            errors += n;
        }
    }
    (errors, all)
}

#[test]
fn schemathesis_finds_no_server_error_and_no_answer_outside_the_document() {
    let st = schemathesis();
    let dir = tempfile::tempdir().expect("temp dir");
    let tokens = Tokens::random();
    let controller = ControllerProcess::start(None, &dir.path().join("controller"), &tokens);
    let seed = std::env::var("GRAYDAR_SCHEMATHESIS_SEED").unwrap_or_else(|_| "1".to_owned());
    let examples = std::env::var("GRAYDAR_SCHEMATHESIS_EXAMPLES").unwrap_or_else(|_| "50".to_owned());
    let out = Command::new(&st)
        .current_dir(dir.path())
        .arg("run")
        .arg(format!("{}/api/v1/openapi.json", controller.url()))
        .args(["--header", &format!("Authorization: Bearer {}", tokens.operator)])
        .args(["--checks", "all", "--exclude-checks", "positive_data_acceptance"])
        .args(["--phases", "examples,coverage,fuzzing,stateful"])
        .args(["--max-examples", &examples, "--seed", &seed, "--workers", "2"])
        .args(["--request-timeout", "70", "--continue-on-failure", "--no-color"])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", st.display()));
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis (seed {seed}) found failures:\n{report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // schemathesis generated thousands of requests: count them at the
    // controller, and count the 5xx among them independently of its checks.
    let (errors, all) = served(&controller, &tokens);
    assert!(all >= 1000, "only {all} requests reached the controller:\n{report}");
    assert_eq!(errors, 0, "{errors} of {all} responses were 5xx:\n{report}");
    let log = controller.log();
    assert!(!log.contains("panicked"), "the controller panicked:\n{log}");
    println!("schemathesis (seed {seed}): {all} requests, 0 server errors\n{report}");
}

#[test]
fn without_a_token_every_operation_but_the_health_checks_answers_401() {
    let dir = tempfile::tempdir().expect("temp dir");
    let tokens = Tokens::random();
    let controller = ControllerProcess::start(None, dir.path(), &tokens);
    let ops = operations(&document(&controller, &tokens));
    assert!(ops.len() >= 20, "suspiciously few operations: {ops:?}");
    let mut wrong = Vec::new();
    for (method, template, secured) in &ops {
        // Path parameters get a plausible value: authorization comes before
        // any lookup, so it must not matter whether it exists.
        let path = template
            .split('/')
            .map(|seg| if seg.starts_with('{') { "web-1" } else { seg })
            .collect::<Vec<_>>()
            .join("/");
        let body = (method != "GET").then_some("{}");
        let open = OPEN.contains(&template.as_str());
        if open == *secured {
            wrong.push(format!(
                "{method} {template}: the document says security={secured}, expected {}",
                !open
            ));
        }
        for token in [None, Some("not-a-token-of-this-controller")] {
            let (status, answer) = request(controller.addr(), method, &path, token, body);
            let expect = if open { 200 } else { 401 };
            if status != expect {
                wrong.push(format!("{method} {path} with token {token:?}: {status} {answer}"));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
