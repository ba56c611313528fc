//! Game-day definitions through the real controller and the real `graydar`
//! CLI: `gameday apply -f` of the book's examples, `list`, `get`; a spec
//! that does not validate never leaves the host; definitions survive a
//! `kill -9` of the controller.

use std::path::PathBuf;

use graydar_tests::controller::{ControllerProcess, Tokens};
use graydar_tests::deploy::workspace;

fn example(file: &str) -> PathBuf {
    workspace().join("docs/examples/gamedays").join(file)
}

#[test]
fn game_days_are_applied_listed_and_kept_across_a_controller_kill() {
    let data = tempfile::tempdir().expect("controller data dir");
    let tokens = Tokens::random();
    let ctl = ControllerProcess::start(None, data.path(), &tokens);
    let blackhole = example("blackhole-asymmetric.yaml");
    let blackhole = blackhole.to_str().expect("utf-8 path");

    let out = ctl.cli(&tokens.viewer, &["gameday", "apply", "-f", blackhole]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("403"),
        "a viewer applied a game day: {err}"
    );

    let v = ctl.cli_json(&tokens.operator, &["gameday", "apply", "-f", blackhole]);
    assert_eq!(v["name"], "blackhole-asymmetric", "{v}");
    let created = v["created_at"].clone();
    // Applied again: replaced, first creation time kept.
    let v = ctl.cli_json(&tokens.operator, &["gameday", "apply", "-f", blackhole]);
    assert_eq!(v["created_at"], created, "{v}");

    // A broken spec: refused by the CLI with the field, nothing sent.
    let broken = data.path().join("broken.yaml");
    let text = std::fs::read_to_string(example("netem-loss.yaml")).expect("example");
    std::fs::write(&broken, format!("{text}\nunknown_field: 1\n")).expect("write");
    let out = ctl.cli(
        &tokens.operator,
        &["gameday", "apply", "-f", broken.to_str().expect("utf-8")],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("unknown_field"), "{err}");

    let list = ctl.cli_json(&tokens.viewer, &["gameday", "list"]);
    let names: Vec<&str> = list["gamedays"]
        .as_array()
        .expect("gamedays")
        .iter()
        .filter_map(|g| g["name"].as_str())
        .collect();
    assert_eq!(names, ["blackhole-asymmetric"], "{list}");
    ctl.kill9();

    let ctl = ControllerProcess::start(None, data.path(), &tokens);
    let v = ctl.cli_json(&tokens.viewer, &["gameday", "get", "blackhole-asymmetric"]);
    assert_eq!(v["created_at"], created, "{v}");
    assert_eq!(v["spec"]["steps"][1]["id"], "blackhole", "{v}");
    let out = ctl.cli(&tokens.viewer, &["gameday", "list"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("blackhole-asymmetric"), "{text}");
}
