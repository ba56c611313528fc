//! Game-day definitions through the real controller and the real `graydar`
//! CLI: `gameday apply -f` of the book's examples, `list`, `get`; a spec
//! that does not validate never leaves the host; definitions survive a
//! `kill -9` of the controller.

use std::path::PathBuf;
use std::time::Duration;

use graydar_tests::controller::{ControllerProcess, Tokens};
use graydar_tests::deploy::workspace;
use graydar_tests::fault_e2e::wait_until;

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

/// A game day on a once-a-minute cron: storing it starts nothing; the next
/// minute starts one run (trigger `schedule`); its 75 s wait overlaps the
/// following minute, whose start is skipped and recorded (concurrency:
/// forbid); the run then ends `passed`.
#[test]
fn a_scheduled_game_day_fires_once_and_skips_the_overlapping_slot() {
    let data = tempfile::tempdir().expect("controller data dir");
    let tokens = Tokens::random();
    let ctl = ControllerProcess::start(None, data.path(), &tokens);
    let spec = data.path().join("every-minute.yaml");
    std::fs::write(
        &spec,
        "name: every-minute\n\
         hypothesis: a run a minute, never two at once\n\
         targets: {nobody: {selector: {role: nobody}, on_empty: skip}}\n\
         safety: {max_duration: 5m}\n\
         steps: [{id: hold, wait: {duration: 75s}}]\n\
         schedule: {cron: '* * * * *'}\n",
    )
    .expect("write the spec");
    let v = ctl.cli_json(
        &tokens.operator,
        &["gameday", "apply", "-f", spec.to_str().expect("utf-8")],
    );
    assert_eq!(v["name"], "every-minute", "{v}");
    let runs = |ctl: &ControllerProcess| -> Vec<serde_json::Value> {
        ctl.cli_json(&tokens.viewer, &["gameday", "runs", "--gameday", "every-minute"])["runs"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    };
    assert!(runs(&ctl).is_empty(), "storing a scheduled game day started a run");
    let first = wait_until(Duration::from_secs(75), "the first scheduled run", || {
        runs(&ctl)
            .into_iter()
            .find(|r| r["trigger"] == "schedule" && r["outcome"].is_null())
    });
    let id = first["id"].as_str().expect("id").to_owned();
    let skipped = wait_until(Duration::from_secs(75), "the next slot skipped", || {
        runs(&ctl).into_iter().find(|r| r["outcome"] == "cancelled")
    });
    let reason = skipped["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains(&id) && reason.contains("concurrency: forbid"),
        "{skipped}"
    );
    let done = wait_until(Duration::from_secs(60), "the first run's end", || {
        runs(&ctl)
            .into_iter()
            .find(|r| r["id"] == id.as_str() && !r["outcome"].is_null())
    });
    assert_eq!(done["outcome"], "passed", "{done}");
    let all = runs(&ctl);
    let started = all.iter().filter(|r| r["outcome"] != "cancelled").count();
    assert_eq!(started, 1, "one run at a time: {all:#?}");
    // Deleted: nothing left to start; its runs stay readable.
    let out = ctl.cli(&tokens.operator, &["gameday", "delete", "every-minute"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(runs(&ctl).len(), all.len());
}
