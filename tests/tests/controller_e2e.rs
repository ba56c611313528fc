//! Root/netns tier for the controller: the real controller, two real agents
//! (each in its own network namespace, reaching the controller's namespace
//! over a veth pair) and the real `graydar` CLI.
//!
//! All traffic stays inside the namespaces the test creates (10.204.0.0/16)
//! and every traffic loop is bounded in packets per second and time.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use graydar_common::api::{AgentList, FindingDetail, FindingKind, FindingList, FindingState, TransitionKind};
use graydar_tests::agent::AgentProcess;
use graydar_tests::controller::{ControllerProcess, Tokens};
use graydar_tests::fault_e2e::wait_until;
use graydar_tests::netns::{self, NetNs, veth_pair};
use graydar_tests::prom;

const MAX_TRAFFIC: Duration = Duration::from_secs(120);
const FIRE_TIMEOUT: Duration = Duration::from_secs(30);
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(40);
/// The agents' `[controller] report_interval`.
const REPORT_INTERVAL: Duration = Duration::from_secs(1);
/// Process start of the CLI, one HTTP round trip, polling granularity.
const SLACK: Duration = Duration::from_millis(1500);
/// The reporter's longest backoff (agent/src/reporter.rs MAX_BACKOFF) plus slack.
const REDELIVERY_TIMEOUT: Duration = Duration::from_secs(75);

/// Bounded UDP sender from `ns` to `dst` at `pps`.
struct Sender {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<u64>>,
}

impl Sender {
    fn start(ns: &NetNs, dst: SocketAddr, pps: u64) -> Sender {
        let sock = ns.run_in(|| UdpSocket::bind("0.0.0.0:0").expect("bind a UDP sender socket"));
        sock.set_nonblocking(true).expect("non-blocking");
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = Arc::clone(&stop);
        let handle = std::thread::spawn(move || {
            let start = Instant::now();
            let (mut attempted, mut sent) = (0u64, 0u64);
            while !stop2.load(Ordering::Relaxed) && start.elapsed() < MAX_TRAFFIC {
                let due = (start.elapsed().as_secs_f64() * pps as f64) as u64;
                for _ in 0..due.saturating_sub(attempted).min(pps / 20 + 1) {
                    attempted += 1;
                    if sock.send_to(&[0x5a; 64], dst).is_ok() {
                        sent += 1;
                    }
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            sent
        });
        Sender {
            stop,
            handle: Some(handle),
        }
    }

    fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.take().map_or(0, |h| h.join().expect("sender thread"))
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn agent_config(ns: &NetNs, controller_ip: &str, token: &str) -> String {
    format!(
        r#"hostname = "{}"

[drops]
interval = "1s"
short_window = "3s"
long_window = "10s"
warning_ratio = 0.01
min_drop_rate = 5.0
fire_windows = 2
of_windows = 3
resolve_windows = 3

[controller]
url = "http://{controller_ip}:8477"
token = "{token}"
report_interval = "{}ms"
"#,
        ns.name(),
        REPORT_INTERVAL.as_millis()
    )
}

fn findings(ctl: &ControllerProcess, tokens: &Tokens, args: &[&str]) -> FindingList {
    let mut all = vec!["findings"];
    all.extend_from_slice(args);
    serde_json::from_value(ctl.cli_json(&tokens.viewer, &all)).expect("graydar findings --output json")
}

fn reporter_metric(agent: &AgentProcess, name: &str) -> f64 {
    prom::sum(&agent.metrics(), name, &[])
}

#[test]
fn two_agents_report_and_a_transition_survives_a_controller_kill_9() {
    netns::require_root();
    let c = NetNs::new("ctl");
    let n1 = NetNs::new("ag1");
    let n2 = NetNs::new("ag2");
    veth_pair(&c, "c1", "10.204.1.1/24", &n1, "e1", "10.204.1.2/24");
    veth_pair(&c, "c2", "10.204.2.1/24", &n2, "e2", "10.204.2.2/24");
    let data = tempfile::tempdir().expect("controller data dir");
    let tokens = Tokens::random();
    let ctl = ControllerProcess::start(Some(&c), data.path(), &tokens);
    let ag1 = AgentProcess::start(Some(&n1), &agent_config(&n1, "10.204.1.1", &tokens.agent));
    let ag2 = AgentProcess::start(Some(&n2), &agent_config(&n2, "10.204.2.1", &tokens.agent));

    // Both register over their veth and show as healthy in `graydar agents`.
    let agents: AgentList = wait_until(
        Duration::from_secs(15),
        "both agents healthy in `graydar agents`",
        || {
            let l: AgentList = serde_json::from_value(ctl.cli_json(&tokens.viewer, &["agents"])).ok()?;
            let healthy = |n: &str| {
                l.agents
                    .iter()
                    .any(|a| a.hostname == n && a.state == graydar_common::api::AgentState::Healthy)
            };
            (healthy(n1.name()) && healthy(n2.name())).then_some(l)
        },
    );
    let a1 = agents.agents.iter().find(|a| a.hostname == n1.name()).expect("agent 1");
    assert!(a1.addresses.contains(&"10.204.1.2".to_owned()), "{a1:?}");
    assert!(!a1.kernel_version.is_empty());
    assert!(a1.capabilities.ebpf, "agent 1 runs as root with eBPF: {a1:?}");
    // The table output names both.
    let table = ctl.cli(&tokens.viewer, &["agents"]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(table.status.success() && text.starts_with("HOSTNAME"), "{text}");
    assert!(text.contains(n1.name()) && text.contains(n2.name()), "{text}");

    // Drops on agent 1 only: UDP from the controller's namespace to a closed port.
    let tx = Sender::start(&c, "10.204.1.2:9999".parse().expect("addr"), 1000);
    let traffic_start = Instant::now();
    let mut fired_at = Instant::now();
    wait_until(FIRE_TIMEOUT, "kernel_drops firing on agent 1 (e1)", || {
        fired_at = Instant::now();
        ag1.finding_in_state(FindingKind::KernelDrops, "e1", FindingState::Firing)
            .then_some(())
    });
    let detection = fired_at - traffic_start;
    let f = wait_until(
        REPORT_INTERVAL + SLACK,
        "the firing finding in `graydar findings --firing` within one report interval",
        || {
            findings(&ctl, &tokens, &["--firing", "--kind", "kernel_drops"])
                .findings
                .into_iter()
                .find(|f| f.host == n1.name() && f.subject == "e1")
        },
    );
    let visible = fired_at.elapsed();
    eprintln!("detection {detection:?} after traffic started; at the controller {visible:?} after the agent fired");
    assert_eq!(f.state, FindingState::Firing);
    assert!(
        findings(&ctl, &tokens, &["--agent", n2.name()]).findings.is_empty(),
        "the quiet agent reports nothing"
    );
    let id = f.id.clone();

    // kill -9 the controller; the drops stop and the finding resolves on the
    // agent while the controller is down.
    ctl.kill9();
    let sent = tx.stop();
    eprintln!("sent {sent} datagrams to the closed port");
    ag1.wait_for(RESOLVE_TIMEOUT, "kernel_drops on e1 resolved on the agent", |ag| {
        ag.finding_in_state(FindingKind::KernelDrops, "e1", FindingState::Resolved)
    });
    ag1.wait_for(
        Duration::from_secs(10),
        "the reporter buffering the resolution while the controller is down",
        |ag| reporter_metric(ag, "graydar_reporter_buffered_transitions") >= 1.0,
    );

    // Restart on the same database: the buffered transition arrives.
    let ctl = ControllerProcess::start(Some(&c), data.path(), &tokens);
    let restarted = Instant::now();
    let d: FindingDetail = wait_until(REDELIVERY_TIMEOUT, "the resolution delivered after the restart", || {
        let d: FindingDetail = serde_json::from_value(ctl.cli_json(&tokens.viewer, &["finding", &id])).ok()?;
        (d.finding.state == FindingState::Resolved).then_some(d)
    });
    eprintln!("resolution delivered {:?} after the restart", restarted.elapsed());
    // Nothing duplicated, nothing lost: exactly one fired and one resolved.
    assert_eq!(
        d.history.iter().map(|h| h.transition).collect::<Vec<_>>(),
        [TransitionKind::Fired, TransitionKind::Resolved],
        "{d:#?}"
    );
    assert!(d.finding.resolved_at.is_some());
    let all = findings(&ctl, &tokens, &["--agent", n1.name()]);
    assert_eq!(all.findings.len(), 1, "{all:#?}");
    ag1.wait_for(Duration::from_secs(10), "the reporter's buffer drained", |ag| {
        reporter_metric(ag, "graydar_reporter_buffered_transitions") == 0.0
    });
    assert_eq!(
        reporter_metric(&ag1, "graydar_reporter_transitions_dropped_total"),
        0.0,
        "nothing dropped"
    );
    // The quiet agent is still known and reports again.
    let l: AgentList = serde_json::from_value(ctl.cli_json(&tokens.viewer, &["agents"])).expect("agents");
    assert_eq!(l.agents.len(), 2);
    drop(ag2);
}

#[test]
fn agent_with_a_wrong_token_is_refused_and_the_cli_reports_errors() {
    netns::require_root();
    let c = NetNs::new("ctl");
    let n1 = NetNs::new("ag1");
    veth_pair(&c, "c1", "10.204.3.1/24", &n1, "e1", "10.204.3.2/24");
    let data = tempfile::tempdir().expect("controller data dir");
    let tokens = Tokens::random();
    let ctl = ControllerProcess::start(Some(&c), data.path(), &tokens);
    // A viewer token cannot register: 403, the agent keeps running and retrying.
    let ag = AgentProcess::start(Some(&n1), &agent_config(&n1, "10.204.3.1", &tokens.viewer));
    ag.wait_for(Duration::from_secs(10), "register refused", |ag| {
        prom::sum(
            &ag.metrics(),
            "graydar_reporter_requests_total",
            &[("op", "register"), ("result", "error")],
        ) >= 1.0
    });
    assert_eq!(reporter_metric(&ag, "graydar_reporter_controller_up"), 0.0);
    let l: AgentList = serde_json::from_value(ctl.cli_json(&tokens.viewer, &["agents"])).expect("agents");
    assert!(l.agents.is_empty(), "{l:?}");
    // The CLI: wrong role and wrong token fail with the controller's message.
    let out = ctl.cli(&tokens.agent, &["agents"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("403"), "{:?}", out);
    let out = ctl.cli("not-a-valid-token-at-all", &["findings"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("401"), "{:?}", out);
    let out = ctl.cli(&tokens.viewer, &["finding", "0123456789abcdef"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("404"), "{:?}", out);
}

#[test]
fn a_full_buffer_drops_the_oldest_transition_and_counts_it() {
    netns::require_root();
    let c = NetNs::new("ctl");
    let n1 = NetNs::new("ag1");
    veth_pair(&c, "c1", "10.204.4.1/24", &n1, "e1", "10.204.4.2/24");
    let data = tempfile::tempdir().expect("controller data dir");
    let tokens = Tokens::random();
    // The controller is not running yet: the agent buffers, one transition at most.
    let config = format!("{}buffer_size = 1\n", agent_config(&n1, "10.204.4.1", &tokens.agent));
    let ag = AgentProcess::start(Some(&n1), &config);
    let tx = Sender::start(&c, "10.204.4.2:9999".parse().expect("addr"), 1000);
    ag.wait_for(FIRE_TIMEOUT, "kernel_drops firing on e1", |ag| {
        ag.finding_in_state(FindingKind::KernelDrops, "e1", FindingState::Firing)
    });
    tx.stop();
    ag.wait_for(RESOLVE_TIMEOUT, "kernel_drops on e1 resolved", |ag| {
        ag.finding_in_state(FindingKind::KernelDrops, "e1", FindingState::Resolved)
    });
    // fired + resolved into a buffer of one: the fired transition was dropped.
    ag.wait_for(Duration::from_secs(10), "one buffer_full drop counted", |ag| {
        prom::sum(
            &ag.metrics(),
            "graydar_reporter_transitions_dropped_total",
            &[("reason", "buffer_full")],
        ) >= 1.0
    });
    assert_eq!(reporter_metric(&ag, "graydar_reporter_buffered_transitions"), 1.0);
    // The controller comes up: the newest transition (with the finding's
    // latest state) arrives.
    let ctl = ControllerProcess::start(Some(&c), data.path(), &tokens);
    let id = graydar_common::api::finding_id(n1.name(), FindingKind::KernelDrops, "e1");
    let d: FindingDetail = wait_until(REDELIVERY_TIMEOUT, "the buffered resolution delivered", || {
        // 404 until the agent's backoff lets it register and deliver.
        let out = ctl.cli(&tokens.viewer, &["finding", &id, "--output", "json"]);
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).ok())
            .flatten()
    });
    assert_eq!(d.finding.state, FindingState::Resolved);
    assert_eq!(
        d.history.iter().map(|h| h.transition).collect::<Vec<_>>(),
        [TransitionKind::Resolved]
    );
    assert_eq!(
        prom::sum(
            &ag.metrics(),
            "graydar_reporter_transitions_dropped_total",
            &[("reason", "buffer_full")],
        ),
        1.0
    );
}

/// Issue 13 item 10 end to end: the agent enrolls with the fleet's
/// bootstrap token, keeps the credential it gets (0600, in its state
/// directory), presents it after a restart (re-registration with new
/// labels works, no second enrollment), and after an operator resets it
/// (`graydar agents reset-credential`) enrolls again with a new one.
#[test]
fn an_agent_enrolls_once_keeps_its_credential_and_enrolls_again_after_a_reset() {
    use std::os::unix::fs::PermissionsExt as _;
    netns::require_root();
    let c = NetNs::new("ctl");
    let n1 = NetNs::new("ag1");
    veth_pair(&c, "c1", "10.204.5.1/24", &n1, "e1", "10.204.5.2/24");
    let data = tempfile::tempdir().expect("controller data dir");
    let state = tempfile::tempdir().expect("agent state dir");
    let cred_file = state.path().join("controller-credential");
    let tokens = Tokens::random();
    let ctl = ControllerProcess::start(Some(&c), data.path(), &tokens);
    let rack_of = |ctl: &ControllerProcess| -> Option<String> {
        let l: AgentList = serde_json::from_value(ctl.cli_json(&tokens.viewer, &["agents"])).ok()?;
        l.agents
            .iter()
            .find(|a| a.hostname == n1.name())
            .and_then(|a| a.labels.get("rack").cloned())
    };
    let config = |rack: &str| {
        format!(
            "{}[controller.labels]\nrack = \"{rack}\"\n",
            agent_config(&n1, "10.204.5.1", &tokens.agent)
        )
    };
    let first = {
        let ag = AgentProcess::start_with_state(Some(&n1), &config("r1"), Some(state.path()));
        wait_until(Duration::from_secs(15), "the agent registered with rack r1", || {
            (rack_of(&ctl).as_deref() == Some("r1")).then_some(())
        });
        let secret = std::fs::read_to_string(&cred_file).expect("the credential file after enrollment");
        assert!(secret.trim().starts_with("gdra_"), "{secret:?}");
        let mode = std::fs::metadata(&cred_file).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the credential is private");
        // Its reports go through with the credential: heartbeats succeed.
        ag.wait_for(Duration::from_secs(15), "a heartbeat accepted", |ag| {
            prom::sum(
                &ag.metrics(),
                "graydar_reporter_requests_total",
                &[("op", "heartbeat"), ("result", "ok")],
            ) >= 1.0
        });
        secret
    };
    // Restarted with new labels: it re-registers with its credential (the
    // bootstrap token alone would be refused: n1 is enrolled).
    let ag = AgentProcess::start_with_state(Some(&n1), &config("r2"), Some(state.path()));
    wait_until(
        Duration::from_secs(15),
        "the restarted agent re-registered with rack r2",
        || (rack_of(&ctl).as_deref() == Some("r2")).then_some(()),
    );
    assert_eq!(
        std::fs::read_to_string(&cred_file).expect("credential"),
        first,
        "the same credential"
    );
    assert_eq!(
        prom::sum(
            &ag.metrics(),
            "graydar_reporter_requests_total",
            &[("op", "register"), ("result", "error")],
        ),
        0.0,
        "no refused registration:\n{}",
        ag.log()
    );
    // An operator resets it: the agent's next call is refused (401), it
    // enrolls again and keeps the new credential.
    let out = ctl.cli(&tokens.operator, &["agents", "reset-credential", n1.name()]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("reset"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let renewed = wait_until(Duration::from_secs(30), "a new credential saved", || {
        let now = std::fs::read_to_string(&cred_file).ok()?;
        (now.trim().starts_with("gdra_") && now != first).then_some(now)
    });
    assert_ne!(renewed, first);
    ag.wait_for(Duration::from_secs(15), "heartbeats accepted again", |ag| {
        let ok = |ag: &AgentProcess| {
            prom::sum(
                &ag.metrics(),
                "graydar_reporter_requests_total",
                &[("op", "heartbeat"), ("result", "ok")],
            )
        };
        let before = ok(ag);
        std::thread::sleep(REPORT_INTERVAL * 3);
        ok(ag) > before
    });
    // Another reset token holder cannot: a viewer's reset is refused.
    let out = ctl.cli(&tokens.viewer, &["agents", "reset-credential", n1.name()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("403"), "{out:?}");
}
