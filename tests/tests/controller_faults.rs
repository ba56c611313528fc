//! Root/netns tier for faults through the controller: the real controller
//! in one namespace, a real agent in another (reaching it over a veth), the
//! real `graydar fault` CLI. This host's kernel has no sch_netem, so a netem
//! fault must end `failed` with a reason naming CONFIG_NET_SCH_NETEM and leave
//! the qdisc tree as it was; a dry run still lists the operations.

use std::time::Duration;

use graydar_common::api::{AgentInfo, Timestamp};
use graydar_common::faults::FaultState;
use graydar_tests::agent::AgentProcess;
use graydar_tests::controller::{ControllerProcess, Tokens};
use graydar_tests::fault_e2e::{agent_config, fault_cli, fault_cli_err, wait_state, wait_until};
use graydar_tests::netns::{self, NetNs, veth_pair};
use graydar_tests::orphans::Baseline;
use graydar_tests::prom;

const STATE_TIMEOUT: Duration = Duration::from_secs(20);

#[test]
fn netem_without_sch_netem_fails_loudly_leaves_nothing_and_dry_run_lists_operations() {
    netns::require_root();
    let c = NetNs::new("fctl");
    let n = NetNs::new("fag");
    veth_pair(&c, "fc1", "10.205.1.1/24", &n, "fe1", "10.205.1.2/24");
    let data = tempfile::tempdir().expect("controller data dir");
    let tokens = Tokens::random();
    let ctl = ControllerProcess::start(Some(&c), data.path(), &tokens);
    let host = n.name().to_owned();
    let agent = AgentProcess::start(Some(&n), &agent_config(&host, "http://10.205.1.1:8477", &tokens.agent));
    wait_until(Duration::from_secs(15), "the agent registered", || {
        let v = ctl.cli_json(&tokens.viewer, &["agents"]);
        v["agents"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x["hostname"] == host.as_str()))
            .then_some(())
    });
    let baseline = Baseline::take(&[&n]);
    let qdiscs_before = n.exec_stdout("tc", ["qdisc", "show"]);
    let links_before = link_names(&n);
    assert!(links_before.iter().any(|l| l == "fe1"), "{links_before:?}");

    // 1 agent of 1 is 100 % of the fleet: refused without --force, with the numbers.
    let netem_args = [
        "--agent",
        &host,
        "--interface",
        "fe1",
        "--netem-delay",
        "100ms",
        "--loss",
        "10%",
    ];
    let mut args = vec!["apply"];
    args.extend_from_slice(&netem_args);
    args.extend(["--duration", "60s"]);
    let err = fault_cli_err(&ctl, &tokens.operator, &args);
    assert!(
        err.contains("1 of 1 alive agents would be under faults (100%; this fault targets 1), above the limit of 50%")
            && err.contains("409"),
        "{err}"
    );
    // An interface the agent does not have: 422 naming the ones it has.
    let err = fault_cli_err(
        &ctl,
        &tokens.operator,
        &[
            "apply",
            "--agent",
            &host,
            "--interface",
            "eth9",
            "--netem-delay",
            "100ms",
            "--duration",
            "60s",
            "--force",
        ],
    );
    assert!(
        err.contains(&format!(
            "interface \"eth9\" does not exist on agent \"{host}\" (it has fe1, lo)"
        )),
        "{err}"
    );
    // A viewer may not apply.
    let err = fault_cli_err(&ctl, &tokens.viewer, &args);
    assert!(err.contains("403"), "{err}");

    // Forced: the agent gets it over the long-poll, cannot apply it, says why.
    args.push("--force");
    let f = fault_cli(&ctl, &tokens.operator, &args);
    assert!(f.forced);
    let f = wait_state(&ctl, &tokens.viewer, &f.id, &host, FaultState::Failed, STATE_TIMEOUT);
    let reason = f.agents[0].reason.clone().unwrap_or_default();
    eprintln!("agent's reason: {reason}");
    assert!(reason.contains("CONFIG_NET_SCH_NETEM"), "reason: {reason}");
    // It failed on every agent it targets (its only one): ended `failed` at
    // once, not `running` until it expires; `fault get --watch` says so
    // with the agent's reason and exit status 3.
    let f = wait_until(STATE_TIMEOUT, "the fault ended failed", || {
        let f = fault_cli(&ctl, &tokens.viewer, &["get", &f.id]);
        (f.status == "failed").then_some(f)
    });
    assert_eq!(f.end_reason.as_deref(), Some("failed"), "{f:#?}");
    let out = ctl.cli(&tokens.viewer, &["fault", "get", &f.id, "--watch"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(
        err.contains(&format!("fault {} failed on every agent", f.id)) && err.contains("CONFIG_NET_SCH_NETEM"),
        "{err}"
    );
    assert_eq!(
        n.exec_stdout("tc", ["qdisc", "show"]),
        qdiscs_before,
        "a failed fault left qdiscs behind"
    );
    assert_eq!(link_names(&n), links_before, "a failed fault left links behind");
    assert_eq!(baseline.orphans(), Vec::<String>::new());
    // The failure is counted on the agent and not retried.
    let m = agent.metrics();
    assert_eq!(
        prom::sum(
            &m,
            "graydar_fault_operations_total",
            &[("op", "apply"), ("result", "error")]
        ),
        1.0,
        "{m}"
    );
    assert_eq!(prom::sum(&m, "graydar_faults_active", &[]), 0.0);

    // Dry run: the operations, nothing applied.
    let mut dry = vec!["apply"];
    dry.extend_from_slice(&netem_args);
    dry.push("--dry-run");
    let d = fault_cli(&ctl, &tokens.operator, &dry);
    assert!(d.dry_run);
    let a = &d.agents[0];
    eprintln!(
        "dry run on {}: {:?} {:?}\n{}",
        a.agent,
        a.state,
        a.reason,
        a.operations.join("\n")
    );
    assert_eq!(a.state, FaultState::Described, "{d:#?}");
    assert!(
        !a.operations.is_empty() && a.operations.iter().any(|o| o.contains("netem")),
        "{d:#?}"
    );
    assert_eq!(n.exec_stdout("tc", ["qdisc", "show"]), qdiscs_before);

    // The kill switch answers and lists nothing running afterwards.
    let out = ctl.cli(&tokens.operator, &["fault", "revert-all"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let list = ctl.cli_json(&tokens.viewer, &["fault", "list"]);
    let faults = list["faults"].as_array().expect("faults");
    assert_eq!(faults.len(), 2);
    let mut statuses: Vec<&str> = faults.iter().filter_map(|f| f["status"].as_str()).collect();
    statuses.sort_unstable();
    assert_eq!(
        statuses,
        ["ended", "failed"],
        "the dry run ended by the kill switch: {list}"
    );
    let table = ctl.cli(&tokens.viewer, &["fault", "list"]);
    assert!(String::from_utf8_lossy(&table.stdout).starts_with("ID"), "{table:?}");
    assert_eq!(baseline.orphans(), Vec::<String>::new());
}

/// The namespace's links by name (`fe1@if2` → `fe1`). Not the whole
/// `ip link` line: its carrier flags change on their own (a veth's
/// NO-CARRIER clears when the peer comes up; seen failing a CI run).
fn link_names(ns: &NetNs) -> Vec<String> {
    String::from_utf8_lossy(&ns.ip(["-o", "link", "show"]).stdout)
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|name| name.split('@').next().unwrap_or(name).to_owned())
        .collect()
}

fn blackholes(ns: &NetNs) -> String {
    String::from_utf8_lossy(&ns.ip(["route", "show", "type", "blackhole"]).stdout).into_owned()
}

/// Every agent's clock offset, once its heartbeats gave one: agents in
/// network namespaces share the controller's clock, so 0 must be within the
/// estimate's uncertainty (5 ms of slack for the rounding to milliseconds).
fn agents_clocks_agree_with_the_controllers(ctl: &ControllerProcess, token: &str) {
    let agents = wait_until(Duration::from_secs(15), "every agent's clock offset", || {
        let v = ctl.cli_json(token, &["agents"]);
        let agents: Vec<AgentInfo> = serde_json::from_value(v["agents"].clone()).expect("agents");
        (!agents.is_empty() && agents.iter().all(|a| a.clock.is_some())).then_some(agents)
    });
    for a in agents {
        let c = a.clock.expect("clock");
        eprintln!("{}: clock {c:?}", a.hostname);
        assert!(c.samples >= 1, "{c:?}");
        assert!(
            c.offset_ms.abs() <= c.uncertainty_ms + 5.0,
            "{}: the same host clock, yet offset {c:?}",
            a.hostname
        );
    }
}

fn now_ms() -> i64 {
    Timestamp::now().unix_ms()
}

/// Blackhole routes need nothing this kernel lacks: the whole path through
/// the controller — apply, active, DELETE → reverted, and a SIGTERM'd agent
/// that reverts and says so. The agent says when it made each change
/// (`agent_at`, its clock), and the controller knows its clock offset.
#[test]
fn a_blackhole_fault_is_applied_reverted_on_delete_and_on_agent_shutdown() {
    netns::require_root();
    let c = NetNs::new("fbc");
    let n = NetNs::new("fba");
    veth_pair(&c, "fc2", "10.205.2.1/24", &n, "fe2", "10.205.2.2/24");
    let data = tempfile::tempdir().expect("controller data dir");
    let tokens = Tokens::random();
    let ctl = ControllerProcess::start(Some(&c), data.path(), &tokens);
    let host = n.name().to_owned();
    let agent = AgentProcess::start(Some(&n), &agent_config(&host, "http://10.205.2.1:8477", &tokens.agent));
    let baseline = Baseline::take(&[&n]);
    agents_clocks_agree_with_the_controllers(&ctl, &tokens.viewer);
    let prefix = "10.205.98.0/24";
    let apply = [
        "apply",
        "--agent",
        &host,
        "--blackhole",
        prefix,
        "--duration",
        "120s",
        "--force",
    ];
    let f = fault_cli(&ctl, &tokens.operator, &apply);
    let active = wait_state(&ctl, &tokens.viewer, &f.id, &host, FaultState::Active, STATE_TIMEOUT);
    let now = now_ms();
    let applied_at = active.agents[0]
        .agent_at
        .expect("the agent says when it applied")
        .unix_ms();
    let created = active.created_at.unix_ms();
    assert!(
        created - 5 <= applied_at && applied_at <= now + 5,
        "applied at {applied_at}, not between the creation {created} and now {now}"
    );
    assert!(blackholes(&n).contains("10.205.98.0/24"), "{}", blackholes(&n));
    assert_eq!(
        prom::sum(&agent.metrics(), "graydar_faults_active", &[("kind", "blackhole")]),
        1.0
    );
    // DELETE: the agent is woken and reverts.
    let ended = fault_cli(&ctl, &tokens.operator, &["revert", &f.id]);
    assert_eq!(ended.status, "ended");
    let f = wait_state(&ctl, &tokens.viewer, &f.id, &host, FaultState::Reverted, STATE_TIMEOUT);
    eprintln!("after DELETE: {:?}", f.agents[0].reason);
    let reverted_at = f.agents[0].agent_at.expect("the agent says when it reverted").unix_ms();
    assert!(
        applied_at <= reverted_at && reverted_at <= now_ms() + 5,
        "reverted at {reverted_at}, applied at {applied_at}"
    );
    assert!(!blackholes(&n).contains("10.205.98.0/24"), "{}", blackholes(&n));
    // SIGTERM: the agent reverts everything and reports it before exiting.
    let g = fault_cli(&ctl, &tokens.operator, &apply);
    wait_state(&ctl, &tokens.viewer, &g.id, &host, FaultState::Active, STATE_TIMEOUT);
    assert!(blackholes(&n).contains("10.205.98.0/24"));
    drop(agent);
    let g = fault_cli(&ctl, &tokens.viewer, &["get", &g.id]);
    assert_eq!(g.agents[0].state, FaultState::Reverted, "{g:#?}");
    assert_eq!(g.agents[0].reason.as_deref(), Some("agent shutting down"));
    assert!(!blackholes(&n).contains("10.205.98.0/24"), "{}", blackholes(&n));
    assert_eq!(baseline.orphans(), Vec::<String>::new());
}

/// `graydar safety-lever` against the real controller: engaged, a fault is
/// refused naming the lever; after `kill -9` and a restart on the same
/// database it is still engaged; released, faults are accepted again.
#[test]
fn the_safety_lever_refuses_faults_and_survives_a_controller_kill() {
    let data = tempfile::tempdir().expect("controller data dir");
    let tokens = Tokens::random();
    let ctl = ControllerProcess::start(None, data.path(), &tokens);
    let v = ctl.cli_json(&tokens.viewer, &["safety-lever"]);
    assert_eq!(v["engaged"], false, "{v}");
    let v = ctl.cli_json(
        &tokens.operator,
        &["safety-lever", "engage", "--reason", "storage incident"],
    );
    assert_eq!(v["engaged"], true, "{v}");
    assert_eq!(v["revert_all"]["faults_ended"], 0, "{v}");
    let apply = [
        "apply",
        "--agent",
        "h1",
        "--interface",
        "eth0",
        "--netem-delay",
        "10ms",
        "--duration",
        "60s",
    ];
    let err = fault_cli_err(&ctl, &tokens.operator, &apply);
    assert!(
        err.contains("safety lever is engaged") && err.contains("storage incident"),
        "{err}"
    );
    ctl.kill9();

    let ctl = ControllerProcess::start(None, data.path(), &tokens);
    let out = ctl.cli(&tokens.viewer, &["safety-lever", "status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("ENGAGED") && text.contains("storage incident"),
        "{text}"
    );
    let err = fault_cli_err(&ctl, &tokens.operator, &apply);
    assert!(err.contains("safety lever is engaged"), "after a restart: {err}");
    let out = ctl.cli(&tokens.viewer, &["safety-lever", "release"]);
    assert!(!out.status.success(), "a viewer released the lever");
    let v = ctl.cli_json(&tokens.operator, &["safety-lever", "release"]);
    assert_eq!(v["engaged"], false, "{v}");
    // Accepted again: now the fault fails on its own merits (no agent h1).
    let err = fault_cli_err(&ctl, &tokens.operator, &apply);
    assert!(!err.contains("safety lever"), "{err}");
    assert!(err.contains("h1"), "{err}");
}
