//! Root/netns tier: the web console in a real headless Chromium (Debian's
//! chromium and chromium-driver over WebDriver) against the real controller
//! with two real agents in namespaces (the game-day fleet: C, A, B).
//!
//! An operator logs in, sees the agents, runs a blackhole game day from the
//! console; a viewer, in a browser of its own, sees no abort or lever button
//! and its forged POSTs are 403 and change nothing; the operator opens the
//! finding the run fires and its runbook, the path matrix and the faults; a
//! form without its CSRF token is refused; the operator's run page updates by itself until the run has
//! passed, its timeline shows the fault and the detection, and both reports
//! download; a second run is aborted from its own page with a reason. The
//! main pages fit a phone's width. Every page is checked for
//! loads from elsewhere and policy violations, and screenshotted to
//! `target/test-artifacts/console/`.

use std::time::Duration;

use fantoccini::actions::{InputSource, KeyAction, KeyActions};
use fantoccini::key::Key;
use graydar_common::gameday::run::{DetectionState, Outcome};
use graydar_tests::browser::{Browser, Chromedriver, artifacts_dir, require_chromium};
use graydar_tests::controller::{NS_PORT, Tokens};
use graydar_tests::gameday_fleet::{Fleet, report, text, write_spec};
use graydar_tests::netns;

const GAMEDAY: &str = "console-blackhole";
const DRIVER_PORT: u16 = 9515;
/// What the run expects. This test is about the console, not about how
/// fast graydar detects (the game-day tests and the detection benchmark
/// are): deadlines with room for a cold, loaded CI machine.
const EXPECT: &str = "    expect:
      detect:
        - {kind: asymmetric_connectivity, on: a, peer: b, within: 20s}
      clear_within: 60s";

#[test]
fn an_operator_runs_a_game_day_from_the_console_and_a_viewer_cannot_change_anything() {
    netns::require_root();
    require_chromium();
    let fleet = Fleet::new("cw", 214);
    let data = tempfile::tempdir().expect("controller data dir");
    let tokens = Tokens::random();
    let (ctl, _a, _b) = fleet.start(data.path(), &tokens, None);
    // The definition is applied with the CLI; the run starts in the console.
    let spec = fleet.spec(GAMEDAY, "20s", EXPECT, "");
    let file = write_spec(data.path(), GAMEDAY, &spec);
    let out = ctl.cli(
        &tokens.operator,
        &["gameday", "apply", "-f", file.to_str().expect("utf-8 path")],
    );
    assert!(out.status.success(), "apply: {}", text(&out));

    let artifacts = artifacts_dir("console");
    let (a, b) = (fleet.a.name().to_owned(), fleet.b.name().to_owned());
    // The browser runs in C, beside the controller: its origin is C's loopback.
    let origin = format!("http://127.0.0.1:{NS_PORT}");
    let (run_id, second) = fleet.c.run_in(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        rt.block_on(async {
            let driver = Chromedriver::start(DRIVER_PORT, &artifacts);
            let mut op = Browser::open(&driver, &origin, &artifacts.join("operator"), 1280, 900).await;

            // 1. Not logged in: the login page; the operator's token logs in.
            op.visit("/", "login").await;
            assert_eq!(op.path().await, "/ui/login");
            op.find("#token")
                .await
                .send_keys(&tokens.operator)
                .await
                .expect("type the token");
            op.click_to_next_page("form.login button[type=submit]").await;
            assert_eq!(
                op.path().await,
                "/ui/fleet",
                "after logging in: {}",
                op.main_text().await
            );
            op.check("fleet").await;
            let fleet_text = op.main_text().await;
            for host in [&a, &b] {
                assert!(
                    fleet_text.contains(host.as_str()),
                    "{host} not on the fleet page:\n{fleet_text}"
                );
            }
            assert!(fleet_text.contains("2 agents: 2 healthy"), "{fleet_text}");
            assert_eq!(op.text("header .role").await, "operator");

            // The first Tab on a page reaches the skip link, Enter follows it.
            let keys = |k: Key| {
                KeyActions::new("keyboard".to_owned())
                    .then(KeyAction::Down { value: k.into() })
                    .then(KeyAction::Up { value: k.into() })
            };
            op.client.perform_actions(keys(Key::Tab)).await.expect("press Tab");
            let focused = op.js("return document.activeElement.textContent").await;
            assert_eq!(focused, "Skip to content", "the first Tab stop");
            op.client.perform_actions(keys(Key::Enter)).await.expect("press Enter");
            assert!(op.client.current_url().await.expect("url").as_str().ends_with("#main"));

            // 2. The game days page: run it (confirmation box, then Run).
            op.visit("/ui/gamedays", "gamedays").await;
            op.confirm_and_submit(&format!("form[action='/ui/gamedays/{GAMEDAY}/run']"))
                .await;
            let path = op.path().await;
            let run_id = path
                .strip_prefix("/ui/runs/")
                .unwrap_or_else(|| panic!("Run led to {path}, not to the run's page"))
                .to_owned();
            op.check("run-started").await;
            assert_eq!(
                op.count("meta[http-equiv=refresh]").await,
                1,
                "a live run's page reloads itself"
            );
            assert_eq!(
                op.count(&format!("a[href='/ui/runs/{run_id}/abort']")).await,
                1,
                "no Abort…"
            );

            // 3. A viewer, in a browser of its own, while the run is live.
            let mut viewer = Browser::open(&driver, &origin, &artifacts.join("viewer"), 1280, 900).await;
            viewer.visit("/ui/login", "viewer-login").await;
            viewer
                .find("#token")
                .await
                .send_keys(&tokens.viewer)
                .await
                .expect("type the token");
            viewer.click_to_next_page("form.login button[type=submit]").await;
            assert_eq!(viewer.text("header .role").await, "viewer");
            viewer.visit(&format!("/ui/runs/{run_id}"), "viewer-run").await;
            assert_eq!(
                viewer.count("meta[http-equiv=refresh]").await,
                1,
                "the run ended too early"
            );
            assert_eq!(viewer.count("main form").await, 0, "a viewer sees an action on the run");
            assert_eq!(viewer.count("main a[href$='/abort']").await, 0, "a viewer sees Abort…");
            viewer.visit("/ui/faults", "viewer-faults").await;
            assert_eq!(
                viewer.count("main form").await,
                0,
                "a viewer sees the lever or a revert"
            );
            // Forged forms, with the viewer's own CSRF token: 403.
            for action in [format!("/ui/runs/{run_id}/abort"), "/ui/lever".to_owned()] {
                viewer.visit("/ui/faults", "viewer-before-forged-post").await;
                let csrf = viewer
                    .find("form.logout input[name=csrf]")
                    .await
                    .attr("value")
                    .await
                    .expect("the CSRF field")
                    .unwrap_or_default();
                let fields = [
                    ("csrf", csrf.as_str()),
                    ("confirm", "yes"),
                    ("engaged", "true"),
                    ("reason", "a viewer"),
                ];
                viewer.post_form(&action, &fields).await;
                assert_eq!(viewer.text("h1").await, "Operators only", "{action}");
                viewer.expect_log("403");
                viewer.check("viewer-forged-post").await;
                assert_eq!(viewer.status().await, 403, "{action}");
            }
            viewer.close().await;
            let still = report(&ctl, &tokens, &run_id);
            assert!(
                !still.is_finished(),
                "the run ended after a viewer's forged abort: {:?}",
                still.reason
            );

            // 4. The finding the blackhole fires, firing, with its evidence and runbook.
            let filter = format!("/ui/findings?kind=asymmetric_connectivity&state=firing&host={a}");
            op.reload_until(
                &filter,
                "main table a[href^='/ui/findings/']",
                Duration::from_secs(30),
                "A's asymmetric_connectivity firing in the console",
                |n| n > 0,
            )
            .await;
            op.check("findings-firing").await;
            op.click_to_next_page("main table a[href^='/ui/findings/']").await;
            op.check("finding").await;
            assert_eq!(op.text("h1").await, format!("asymmetric_connectivity on {a}"));
            let summary = op.text("main p.summary").await;
            assert!(summary.contains("firing"), "{summary}");
            assert!(op.count("table.evidence tr").await > 0, "no evidence rows");
            assert!(
                op.count("article.runbook h2, article.runbook h3").await > 0,
                "no runbook rendered"
            );
            let runbook = op.text("article.runbook").await;
            assert!(!runbook.is_empty());

            // 5. The path matrix; A → B's cell opens the pair's page.
            op.visit("/ui/paths", "paths").await;
            op.click_to_next_page(&format!("a[href='/ui/paths/{a}/{b}']")).await;
            op.check("path-pair").await;
            let pair = op.main_text().await;
            assert!(pair.contains(a.as_str()) && pair.contains(b.as_str()), "{pair}");

            // 6. Faults: the run's blackhole is active. The lever's form with
            //    its CSRF field taken out is refused and engages nothing.
            op.visit("/ui/faults", "faults").await;
            let faults = op.main_text().await;
            assert!(faults.contains("blackhole"), "the run's fault is not listed:\n{faults}");
            op.js("document.querySelector(\"form[action='/ui/lever'] input[name=csrf]\").remove()")
                .await;
            op.confirm_and_submit("form[action='/ui/lever']").await;
            op.expect_log("403");
            op.check("lever-without-csrf").await;
            assert_eq!(op.status().await, 403);
            assert!(op.main_text().await.contains("CSRF"), "{}", op.main_text().await);
            op.visit("/ui/faults", "faults-after-refusal").await;
            assert!(
                op.main_text().await.contains("Engage the lever"),
                "the lever was engaged by a request without CSRF token"
            );

            // 7. Back on the run's page, touching nothing: it reloads itself
            //    until the run has ended.
            op.visit(&format!("/ui/runs/{run_id}"), "run-live").await;
            let first_load = op.js("return performance.timeOrigin").await;
            let reloads = op
                .wait_for(Duration::from_secs(150), "the run's page showing it ended", || {
                    let (op, first_load) = (&op, &first_load);
                    async move {
                        // Between two reloads, the page may not be there.
                        let live = op
                            .client
                            .find_all(fantoccini::Locator::Css("meta[http-equiv=refresh]"))
                            .await
                            .ok()?;
                        let origin = op.client.execute("return performance.timeOrigin", vec![]).await.ok()?;
                        (live.is_empty()).then_some(origin != *first_load)
                    }
                })
                .await;
            assert!(reloads, "the run ended but the page never reloaded itself");
            op.check("run-report").await;
            let summary = op.text("main p.summary").await;
            assert!(summary.contains("passed"), "{summary}\n{}", op.main_text().await);
            assert!(op.text("main p.verdicts").await.contains("Detection:"));
            assert_eq!(op.count("main form").await, 0, "an ended run offers actions");
            // The timeline: a fault bar on A, a detection marker with its time to detect.
            assert_eq!(op.count("svg.timeline rect.fault").await, 1, "one fault bar");
            let bar = op
                .find("svg.timeline rect.fault title")
                .await
                .html(true)
                .await
                .expect("bar title");
            assert!(bar.contains(&format!("blackhole on {a}")), "{bar}");
            assert_eq!(op.text("svg.timeline text.det").await.chars().next(), Some('●'));
            let ttd = op.text("svg.timeline text.ttd").await;
            assert!(ttd.ends_with(" s"), "time to detect: {ttd:?}");
            let rect = op.find("svg.timeline").await.rectangle().await.expect("timeline box");
            assert!(
                rect.2 > 300.0 && rect.3 > 50.0,
                "the timeline is drawn too small: {rect:?}"
            );

            // Both reports download.
            let downloads = artifacts.join("operator").join("downloads");
            for (link, file) in [
                ("report.md", format!("{run_id}.md")),
                ("report.json", format!("{run_id}.json")),
            ] {
                op.find(&format!("a[href='/ui/runs/{run_id}/{link}']"))
                    .await
                    .click()
                    .await
                    .expect("download");
                let path = downloads.join(&file);
                op.wait_for(Duration::from_secs(15), "the report downloaded", || {
                    let path = &path;
                    async move { path.exists().then_some(()) }
                })
                .await;
            }
            let md = std::fs::read_to_string(downloads.join(format!("{run_id}.md"))).expect("the Markdown report");
            assert!(md.contains(&run_id) && md.contains("passed"), "{md}");
            let json: serde_json::Value = serde_json::from_str(
                &std::fs::read_to_string(downloads.join(format!("{run_id}.json"))).expect("the JSON report"),
            )
            .expect("the JSON report parses");
            assert_eq!(json["id"], run_id.as_str(), "{json}");

            // 8. A second run, aborted from its own page with a reason.
            op.visit("/ui/gamedays", "gamedays-again").await;
            op.confirm_and_submit(&format!("form[action='/ui/gamedays/{GAMEDAY}/run']"))
                .await;
            let second = op.path().await.trim_start_matches("/ui/runs/").to_owned();
            op.check("second-run").await;
            op.click_to_next_page(&format!("a[href='/ui/runs/{second}/abort']"))
                .await;
            op.check("abort-page").await;
            assert_eq!(
                op.count("meta[http-equiv=refresh]").await,
                0,
                "the abort form's page reloads"
            );
            op.find("input[name=reason]")
                .await
                .send_keys("seen enough")
                .await
                .expect("type a reason");
            op.confirm_and_submit(&format!("form[action='/ui/runs/{second}/abort']"))
                .await;
            assert_eq!(op.path().await, format!("/ui/runs/{second}"));
            op.reload_until(
                &format!("/ui/runs/{second}"),
                "meta[http-equiv=refresh]",
                Duration::from_secs(15),
                "the second run aborted",
                |n| n == 0,
            )
            .await;
            op.check("second-run-aborted").await;
            let summary = op.text("main p.summary").await;
            assert!(
                summary.contains("aborted") && summary.contains("seen enough"),
                "{summary}"
            );

            // 9. A phone's width: no page scrolls sideways.
            op.client.set_window_size(390, 844).await.expect("phone-sized window");
            for (path, name) in [
                ("/ui/fleet".to_owned(), "phone-fleet"),
                ("/ui/findings".to_owned(), "phone-findings"),
                ("/ui/paths".to_owned(), "phone-paths"),
                ("/ui/faults".to_owned(), "phone-faults"),
                ("/ui/gamedays".to_owned(), "phone-gamedays"),
                (format!("/ui/runs/{run_id}"), "phone-run"),
            ] {
                op.visit(&path, name).await;
                let (scroll, inner) = op.fits_width().await;
                assert!(scroll <= inner, "{path} is {scroll} px wide in a {inner} px window");
            }
            // The timeline keeps a readable size and scrolls in its own box.
            let rect = op.find("svg.timeline").await.rectangle().await.expect("timeline box");
            assert!(rect.2 >= 700.0, "the timeline shrank to {} px on a phone", rect.2);
            op.close().await;
            (run_id, second)
        })
    });

    // What the console showed is what the API says.
    let run = report(&ctl, &tokens, &run_id);
    assert_eq!(run.outcome, Some(Outcome::Passed), "{run:#?}");
    assert_eq!(run.trigger, "console", "{run:#?}");
    let aborted = report(&ctl, &tokens, &second);
    assert_eq!(aborted.outcome, Some(Outcome::Aborted), "{aborted:#?}");
    // Aborted seconds in, long before the 20 s deadline and the grace: each
    // cell is detected already or cut short, none missed.
    assert!(
        aborted
            .detections
            .iter()
            .all(|d| matches!(d.state, DetectionState::Detected | DetectionState::CutShort)),
        "{:#?}",
        aborted.detections
    );
    assert!(fleet.blackholes().is_empty(), "left applied: {}", fleet.blackholes());
}
