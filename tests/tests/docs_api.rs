//! The book's API page (`docs/src/api.md`) lists exactly the paths and
//! methods of the OpenAPI document the real controller serves: one table row
//! `| METHOD | `path` | ...` per operation.

use std::collections::BTreeSet;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

use graydar_tests::controller::{ControllerProcess, Tokens};

const METHODS: &[&str] = &["get", "put", "post", "delete", "patch", "head", "options"];

/// GET over HTTP/1.0 (no chunked body) with a bearer token.
fn get_with_token(addr: SocketAddr, path: &str, token: &str) -> (u16, String) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(10)).expect("connect to the controller");
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("read timeout");
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nAccept: application/json\r\n\r\n"
    )
    .expect("send the request");
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("read the response");
    let (head, body) = raw.split_once("\r\n\r\n").expect("a response with headers");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad status line in {head:?}"));
    (status, body.to_owned())
}

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
    let (status, body) = get_with_token(controller.addr(), "/api/v1/openapi.json", &tokens.viewer);
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
