//! The book's API page (`docs/src/api.md`) lists exactly the paths and
//! methods of the OpenAPI document the real controller serves: one table row
//! `| METHOD | `path` | ...` per operation.

use std::collections::BTreeSet;
use std::path::Path;

use graydar_tests::agent::http_request;
use graydar_tests::controller::{ControllerProcess, Tokens};

const METHODS: &[&str] = &["get", "put", "post", "delete", "patch", "head", "options"];

/// `(METHOD, path)` of every operation in the OpenAPI document.
fn operations(doc: &serde_json::Value) -> BTreeSet<(String, String)> {
    let paths = doc["paths"].as_object().expect("the document has paths");
    let mut ops = BTreeSet::new();
    for (path, item) in paths {
        let item = item.as_object().expect("a path item is an object");
        for m in item.keys().filter(|m| METHODS.contains(&m.as_str())) {
            ops.insert((m.to_uppercase(), path.clone()));
        }
    }
    ops
}

/// `(METHOD, path)` of every row `| GET | `/path` | ...` of the page.
fn documented(page: &str) -> BTreeSet<(String, String)> {
    let mut ops = BTreeSet::new();
    for line in page.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let [_, method, path, ..] = cells.as_slice() else {
            continue;
        };
        if !METHODS.contains(&method.to_lowercase().as_str()) || *method != method.to_uppercase() {
            continue;
        }
        let path = path.trim_matches('`');
        ops.insert(((*method).to_owned(), path.to_owned()));
    }
    ops
}

#[test]
fn the_api_page_lists_every_operation_of_the_openapi_document() {
    let dir = tempfile::tempdir().expect("temp dir");
    let tokens = Tokens::random();
    let controller = ControllerProcess::start(None, dir.path(), &tokens);
    let (status, body) = http_request(
        controller.addr(),
        "GET",
        "/api/v1/openapi.json",
        Some(&tokens.viewer),
        None,
    )
    .expect("GET /api/v1/openapi.json");
    assert_eq!(status, 200, "GET /api/v1/openapi.json: {body}");
    let doc: serde_json::Value = serde_json::from_str(&body).expect("the OpenAPI document is JSON");
    let served = operations(&doc);
    assert!(served.len() >= 20, "suspiciously few operations: {served:?}");

    let page_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/src/api.md");
    let page = std::fs::read_to_string(&page_path).expect("read docs/src/api.md");
    let listed = documented(&page);
    let missing: Vec<_> = served.difference(&listed).collect();
    let extra: Vec<_> = listed.difference(&served).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "docs/src/api.md and the OpenAPI document differ:\n  in the document, not on the page: {missing:?}\n  \
         on the page, not in the document: {extra:?}"
    );
}

#[test]
fn rows_are_read_as_method_and_path() {
    let page = "| method | path |\n|---|---|\n| GET | `/a/{id}` | viewer | x |\n| POST | `/b` | agent |\n\
                | `/metrics` | Prometheus |\n| get | `/lower` |\n";
    let ops = documented(page);
    assert_eq!(
        ops,
        BTreeSet::from([
            ("GET".to_owned(), "/a/{id}".to_owned()),
            ("POST".to_owned(), "/b".to_owned()),
        ])
    );
}
