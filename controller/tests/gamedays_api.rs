//! In-process tests of the game-day definition endpoints: the real router
//! and a real SQLite database, the book's example specs as bodies.

use axum::http::StatusCode;
use graydar_common::gameday::{GameDayInfo, GameDayList, GameDaySpec};
use graydar_controller::faults::FaultConfig;
use graydar_controller::services::Services;
use serde_json::Value;

mod common;
use common::{Api, OPERATOR, VIEWER};

/// An example of docs/examples/gamedays/ as the JSON a client sends.
fn example(file: &str) -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../docs/examples/gamedays")
        .join(file);
    let text = std::fs::read_to_string(&path).expect("read the example spec");
    let spec = GameDaySpec::parse(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::to_value(&spec).expect("spec as JSON")
}

impl Api {
    async fn json(&self, method: &str, path: &str, token: &str, body: Option<&Value>) -> common::Resp {
        self.call(method, path, token, body.cloned()).await
    }
}

#[tokio::test]
async fn game_days_are_created_read_replaced_and_deleted_by_operators() {
    let a = Api::new().await;
    let spec = example("blackhole-asymmetric.yaml");
    let name = spec["name"].as_str().expect("name").to_owned();

    let r = a.json("POST", "/api/v1/gamedays", VIEWER, Some(&spec)).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
    let r = a.json("POST", "/api/v1/gamedays", OPERATOR, Some(&spec)).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let created: GameDayInfo = r.typed();
    assert_eq!(created.name, name);
    assert_eq!(
        serde_json::to_value(&created.spec).expect("json"),
        spec,
        "stored as sent"
    );

    let (code, detail) = a
        .json("POST", "/api/v1/gamedays", OPERATOR, Some(&spec))
        .await
        .error_parts(StatusCode::CONFLICT);
    assert_eq!(code, "exists", "{detail}");

    let list: GameDayList = a.json("GET", "/api/v1/gamedays", VIEWER, None).await.typed();
    assert_eq!(
        list.gamedays.iter().map(|g| g.name.as_str()).collect::<Vec<_>>(),
        [name.as_str()]
    );
    let one: GameDayInfo = a
        .json("GET", &format!("/api/v1/gamedays/{name}"), VIEWER, None)
        .await
        .typed();
    assert_eq!(one, created);

    // Replaced: 200, the new hypothesis, the first creation time kept.
    let mut changed = spec.clone();
    changed["hypothesis"] = Value::from("a sharper hypothesis");
    let r = a
        .json("PUT", &format!("/api/v1/gamedays/{name}"), OPERATOR, Some(&changed))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let replaced: GameDayInfo = r.typed();
    assert_eq!(replaced.spec.hypothesis, "a sharper hypothesis");
    assert_eq!(replaced.created_at, created.created_at);

    // PUT of a new name creates (201); a body naming another game day is 422.
    let other = example("netem-loss.yaml");
    let other_name = other["name"].as_str().expect("name").to_owned();
    let r = a
        .json("PUT", &format!("/api/v1/gamedays/{other_name}"), OPERATOR, Some(&other))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let (code, detail) = a
        .json("PUT", "/api/v1/gamedays/someone-else", OPERATOR, Some(&other))
        .await
        .error_parts(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(code, "invalid_gameday");
    assert!(detail.contains("name") && detail.contains("someone-else"), "{detail}");

    // Kept across a restart (a new service on the same database).
    let reopened = Services::open(a.store.clone(), common::liveness(), FaultConfig::default())
        .await
        .expect("reopen");
    assert_eq!(reopened.gamedays.list().await.expect("list").len(), 2);

    let r = a
        .json("DELETE", &format!("/api/v1/gamedays/{name}"), VIEWER, None)
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
    let r = a
        .json("DELETE", &format!("/api/v1/gamedays/{name}"), OPERATOR, None)
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    a.json("GET", &format!("/api/v1/gamedays/{name}"), VIEWER, None)
        .await
        .error_parts(StatusCode::NOT_FOUND);
    a.json("DELETE", &format!("/api/v1/gamedays/{name}"), OPERATOR, None)
        .await
        .error_parts(StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_spec_that_does_not_validate_is_422_with_every_field_and_stores_nothing() {
    let a = Api::new().await;
    let mut spec = example("blackhole-asymmetric.yaml");
    let steps = spec["steps"].as_array_mut().expect("steps");
    steps[1]["after"] = serde_json::json!(["warmup"]);
    steps[1]["fault"]["target"] = Value::from("db");
    steps[1]["fault"]["duration"] = Value::from("3h");
    let (code, detail) = a
        .json("POST", "/api/v1/gamedays", OPERATOR, Some(&spec))
        .await
        .error_parts(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(code, "invalid_gameday", "{detail}");
    for field in ["steps[1].after[0]", "steps[1].fault.target", "steps[1].fault.duration"] {
        assert!(detail.contains(field), "{field} missing from: {detail}");
    }
    // The shape is wrong: the body's own 422 names the field.
    let mut bad = example("blackhole-asymmetric.yaml");
    bad["safety"]["max_duration"] = Value::from("ten minutes");
    let (code, detail) = a
        .json("POST", "/api/v1/gamedays", OPERATOR, Some(&bad))
        .await
        .error_parts(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(code, "invalid_body");
    assert!(detail.contains("safety.max_duration"), "{detail}");
    let list: GameDayList = a.json("GET", "/api/v1/gamedays", VIEWER, None).await.typed();
    assert!(list.gamedays.is_empty(), "{list:?}");
}
