//! Root/netns tier: two real `graydar-controller` replicas on one real
//! PostgreSQL (a throwaway cluster), real agents in namespaces, the real CLI.
//! Replica 1 starts first and holds the leader's lock; agent A reports to
//! replica 2, agent B to replica 1 (Fleet: C holds both controllers, A and B
//! reach C over their own veths and each other over a third).
//!
//! - a fault created on replica 1 reaches A (polling replica 2) within a
//!   second, and revert-all on replica 1 takes it away as fast;
//! - a game day started on replica 2 is driven by the leader; its finding,
//!   reported by A through replica 2, is read through replica 1;
//! - SIGKILL of the leader mid game day: replica 2 takes the lock within
//!   10 s, ends the run as aborted and its fault, and nothing is left
//!   applied on A.

use std::time::{Duration, Instant};

use graydar_common::gameday::run::{Outcome, RunInfo};
use graydar_tests::controller::{ControllerProcess, NS_PORT, Tokens};
use graydar_tests::fault_e2e::{fault_cli, wait_until};
use graydar_tests::gameday_fleet::{EXPECT_10S, Fleet, report, text, write_spec};
use graydar_tests::netns;
use graydar_tests::orphans::Baseline;
use graydar_tests::pg::PgCluster;

const LEADER_LINE: &str = "this replica is the leader";

#[test]
fn two_replicas_share_faults_findings_and_runs_and_the_survivor_ends_a_dead_leaders_run() {
    netns::require_root();
    let db = PgCluster::start();
    let url = db.default_url();
    let fleet = Fleet::new("rp", 210);
    let tokens = Tokens::random();
    let (d1, d2) = (
        tempfile::tempdir().expect("data dir"),
        tempfile::tempdir().expect("data dir"),
    );
    let args = ["--database-url", url.as_str()];
    let c1 = ControllerProcess::start_on_port(Some(&fleet.c), NS_PORT, d1.path(), &tokens, &args);
    wait_until(Duration::from_secs(10), "replica 1 leads", || {
        c1.log().contains(LEADER_LINE).then_some(())
    });
    let c2 = ControllerProcess::start_on_port(Some(&fleet.c), NS_PORT + 1, d2.path(), &tokens, &args);
    let (_a, _b) = fleet.start_agents(&c1, &tokens, NS_PORT + 1, NS_PORT);
    let baseline = Baseline::take(&[&fleet.a, &fleet.b]);
    assert!(!c2.log().contains(LEADER_LINE), "two leaders:\n{}", c2.log());

    // 1. A fault created on replica 1 reaches A through replica 2.
    let prefix = "10.210.98.0/24";
    let created = Instant::now();
    let f = fault_cli(
        &c1,
        &tokens.operator,
        &[
            "apply",
            "--agent",
            fleet.a.name(),
            "--blackhole",
            prefix,
            "--duration",
            "120s",
            "--force",
        ],
    );
    let route = prefix.trim_end_matches("/24");
    wait_until(Duration::from_secs(5), "the blackhole on A", || {
        fleet.blackholes().contains(route).then_some(())
    });
    let applied = created.elapsed();
    eprintln!(
        "fault {} created on replica 1 applied on A (polling replica 2) {applied:?} later",
        f.id
    );
    assert!(applied < Duration::from_secs(1), "{applied:?}");
    // Revert-all on replica 1: A reverts it through replica 2.
    let reverted = Instant::now();
    let out = c1.cli(&tokens.operator, &["fault", "revert-all"]);
    assert!(out.status.success(), "{}", text(&out));
    wait_until(Duration::from_secs(5), "the blackhole gone from A", || {
        (!fleet.blackholes().contains(route)).then_some(())
    });
    let gone = reverted.elapsed();
    eprintln!("revert-all on replica 1 reverted on A {gone:?} later");
    assert!(gone < Duration::from_secs(1), "{gone:?}");

    // 2. A game day started on replica 2 is driven by the leader (replica 1).
    let file = write_spec(d2.path(), "ha", &fleet.spec("ha", "2m", EXPECT_10S, ""));
    let out = c2.cli(
        &tokens.operator,
        &["gameday", "apply", "-f", file.to_str().expect("utf-8")],
    );
    assert!(out.status.success(), "{}", text(&out));
    let started = c2.cli_json(&tokens.operator, &["gameday", "run", "ha"]);
    let id = started["id"].as_str().expect("run id").to_owned();
    wait_until(Duration::from_secs(30), "the run's blackhole on A", || {
        fleet.blackholes().contains(&fleet.b_mesh()).then_some(())
    });
    // Its finding, reported by A to replica 2, through replica 1.
    wait_until(Duration::from_secs(30), "A's finding through replica 1", || {
        let v = c1.cli_json(&tokens.viewer, &["findings"]);
        v["findings"]
            .as_array()
            .is_some_and(|l| {
                l.iter()
                    .any(|x| x["kind"] == "asymmetric_connectivity" && x["host"] == fleet.a.name())
            })
            .then_some(())
    });
    let driving: RunInfo = report(&c1, &tokens, &id);
    assert!(driving.outcome.is_none(), "{driving:#?}");

    // 3. The leader dies mid run: replica 2 takes over and ends it.
    let died = Instant::now();
    c1.kill9();
    wait_until(Duration::from_secs(10), "replica 2 leads", || {
        c2.log().contains(LEADER_LINE).then_some(())
    });
    let took = died.elapsed();
    eprintln!("replica 2 took the lock {took:?} after the leader's SIGKILL");
    let run = wait_until(Duration::from_secs(10), "the run ended", || {
        let r = report(&c2, &tokens, &id);
        r.outcome.is_some().then_some(r)
    });
    assert_eq!(run.outcome, Some(Outcome::Aborted), "{run:#?}");
    assert!(
        run.reason.as_deref().is_some_and(|r| r.contains("new leader")),
        "{:?}",
        run.reason
    );
    wait_until(Duration::from_secs(5), "the run's blackhole gone from A", || {
        (!fleet.blackholes().contains(&fleet.b_mesh())).then_some(())
    });
    eprintln!(
        "the dead leader's run ended and reverted {:?} after its death",
        died.elapsed()
    );
    assert_eq!(baseline.orphans(), Vec::<String>::new());
}

/// The database away for 30 s under a controller with real agents: faults
/// still end on time at the agents (their polls are answered from memory),
/// `/readyz` and writes answer 503, and the finding the fault raised and
/// resolved meanwhile, buffered by its agent, arrives once the database is
/// back: fired and resolved, each exactly once.
#[test]
fn thirty_seconds_without_the_database_end_faults_on_time_and_lose_no_finding() {
    netns::require_root();
    let db = PgCluster::start();
    let url = db.default_url();
    let fleet = Fleet::new("rq", 211);
    let tokens = Tokens::random();
    let data = tempfile::tempdir().expect("data dir");
    let ctl =
        ControllerProcess::start_on_port(Some(&fleet.c), NS_PORT, data.path(), &tokens, &["--database-url", &url]);
    let (_a, _b) = fleet.start_agents(&ctl, &tokens, NS_PORT, NS_PORT);
    let baseline = Baseline::take(&[&fleet.a, &fleet.b]);
    // A blackhole toward B's mesh address for 12 s: asymmetric_connectivity
    // on A fires and resolves while the database is away.
    let prefix = format!("{}/32", fleet.b_mesh());
    let created = Instant::now();
    let f = fault_cli(
        &ctl,
        &tokens.operator,
        &[
            "apply",
            "--agent",
            fleet.a.name(),
            "--blackhole",
            &prefix,
            "--duration",
            "12s",
            "--force",
        ],
    );
    wait_until(Duration::from_secs(5), "the blackhole on A", || {
        fleet.blackholes().contains(&fleet.b_mesh()).then_some(())
    });
    db.pause();
    let paused = Instant::now();
    let (status, body) = ctl.try_get("/readyz").expect("the controller answers");
    assert_eq!(status, 503, "{body}");
    let out = ctl.cli(
        &tokens.operator,
        &[
            "fault",
            "apply",
            "--agent",
            fleet.b.name(),
            "--blackhole",
            "10.211.97.0/24",
            "--duration",
            "60s",
            "--force",
        ],
    );
    assert!(!out.status.success(), "a fault was created with the database away");
    assert!(text(&out).contains("unavailable"), "{}", text(&out));
    // Still applied mid-outage (the agent's lease is renewed from memory),
    // reverted at its end.
    std::thread::sleep(Duration::from_secs(6).saturating_sub(created.elapsed()));
    assert!(fleet.blackholes().contains(&fleet.b_mesh()), "reverted early");
    wait_until(Duration::from_secs(20), "the blackhole reverted on A", || {
        (!fleet.blackholes().contains(&fleet.b_mesh())).then_some(())
    });
    let ended = created.elapsed();
    eprintln!(
        "fault {} (12 s) reverted on A {ended:?} after its creation, the database away",
        f.id
    );
    assert!(ended < Duration::from_secs(14), "{ended:?}");
    std::thread::sleep(Duration::from_secs(30).saturating_sub(paused.elapsed()));
    db.resume();
    let back = Instant::now();
    wait_until(Duration::from_secs(30), "ready again", || {
        matches!(ctl.try_get("/readyz"), Ok((200, _))).then_some(())
    });
    // Both transitions arrive, once each.
    let history = wait_until(Duration::from_secs(60), "the finding's fire and resolve", || {
        let v = ctl.cli_json(&tokens.viewer, &["findings"]);
        let f = v["findings"].as_array()?.iter().find(|x| {
            x["kind"] == "asymmetric_connectivity" && x["host"] == fleet.a.name() && x["state"] == "resolved"
        })?;
        let id = f["id"].as_str()?.to_owned();
        let d = ctl.cli_json(&tokens.viewer, &["finding", &id]);
        d["history"].as_array().cloned()
    });
    eprintln!("the finding arrived {:?} after the database came back", back.elapsed());
    let kinds: Vec<&str> = history.iter().filter_map(|h| h["transition"].as_str()).collect();
    assert_eq!(kinds.iter().filter(|k| **k == "fired").count(), 1, "{history:#?}");
    assert_eq!(kinds.iter().filter(|k| **k == "resolved").count(), 1, "{history:#?}");
    // The controller marked the fault ended once it could write.
    wait_until(Duration::from_secs(10), "the fault ended in the store", || {
        let v = ctl.cli_json(&tokens.viewer, &["fault", "get", &f.id]);
        (v["status"] == "ended").then_some(())
    });
    assert_eq!(baseline.orphans(), Vec::<String>::new());
}
