//! Root/netns tier for game-day load: the real controller and two real
//! agents (A, B) in namespaces (tests/src/gameday_fleet.rs). Loads are
//! created through the real API, as a game day's load step creates them:
//! UDP and TCP traffic and a burst from A to B reach their configured rates
//! at B's sink (which exists only while a load is aimed at B) and stop when
//! the load ends; a load aimed at anything but a registered agent is
//! refused with a 422; an fsync load's file is removed at SIGTERM, and
//! after a kill -9 by the next start.

use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use graydar_common::fault_api::FaultInfo;
use graydar_common::faults::FaultState;
use graydar_tests::agent::{AgentProcess, http_request};
use graydar_tests::controller::{ControllerProcess, Tokens};
use graydar_tests::fault_e2e::{agent_config, wait_state, wait_until};
use graydar_tests::gameday_fleet::Fleet;
use graydar_tests::netns::{self, NetNs};
use graydar_tests::prom;

const SINK_PORT: u16 = 7476;

fn post(ctl: &ControllerProcess, ns: &NetNs, token: &str, body: &serde_json::Value) -> (u16, String) {
    let addr = ctl.addr();
    let body = body.to_string();
    let token = token.to_owned();
    ns.run_in(move || http_request(addr, "POST", "/api/v1/faults", Some(&token), Some(&body)))
        .expect("POST /api/v1/faults")
}

fn create(ctl: &ControllerProcess, ns: &NetNs, token: &str, body: &serde_json::Value) -> FaultInfo {
    let (code, text) = post(ctl, ns, token, body);
    assert_eq!(code, 201, "{text}");
    serde_json::from_str(&text).expect("a FaultInfo")
}

fn counter(agent: &AgentProcess, name: &str) -> f64 {
    prom::sum(&agent.metrics(), name, &[])
}

/// The rate of `name` on `agent` over `over`.
fn rate(agent: &AgentProcess, name: &str, over: Duration) -> f64 {
    let (t0, v0) = (Instant::now(), counter(agent, name));
    std::thread::sleep(over);
    (counter(agent, name) - v0) / t0.elapsed().as_secs_f64()
}

fn sink_open(from: &NetNs, addr: &str) -> bool {
    let to: SocketAddr = format!("{addr}:{SINK_PORT}").parse().expect("address");
    from.run_in(move || TcpStream::connect_timeout(&to, Duration::from_secs(1)).is_ok())
}

/// Waits for the fault to end on A, then checks that A sends nothing more,
/// and that B's sink is closed.
fn assert_stopped(fleet: &Fleet, ctl: &ControllerProcess, tokens: &Tokens, a: &AgentProcess, id: &str) {
    wait_state(
        ctl,
        &tokens.viewer,
        id,
        fleet.a.name(),
        FaultState::Reverted,
        Duration::from_secs(30),
    );
    let sent = rate(a, "graydar_load_sent_operations_total", Duration::from_secs(2));
    assert_eq!(sent, 0.0, "A still sends after the load ended");
    wait_until(Duration::from_secs(10), "B's sink closed", || {
        (!sink_open(&fleet.a, &fleet.b_mesh())).then_some(())
    });
}

#[test]
fn traffic_and_bursts_between_agents_reach_their_rates_and_stop_at_the_end() {
    netns::require_root();
    let fleet = Fleet::new("ld", 61);
    let data = tempfile::tempdir().expect("controller data dir");
    let tokens = Tokens::random();
    let (ctl, a, b) = fleet.start(data.path(), &tokens, None);
    let (an, bn) = (fleet.a.name(), fleet.b.name());
    let op = &tokens.operator;

    // Only registered agents are ever aimed at: an address nobody
    // registered, and the sender's own, are refused naming the field.
    for (to, why) in [
        ("10.61.3.99", "is not the address of a registered agent"),
        ("10.61.3.1", "a load does not send to itself"),
    ] {
        let (code, text) = post(
            &ctl,
            &fleet.c,
            op,
            &serde_json::json!({"targets": {"agents": [an]}, "duration_seconds": 5,
                "spec": {"kind": "traffic", "to": [to], "packets_per_second": 100}}),
        );
        assert_eq!(code, 422, "{to}: {text}");
        assert!(text.contains("spec.to") && text.contains(why), "{to}: {text}");
    }
    let (code, text) = post(
        &ctl,
        &fleet.c,
        op,
        &serde_json::json!({"targets": {"agents": [an]}, "duration_seconds": 5,
            "spec": {"kind": "burst", "to": "192.0.2.7", "bytes": 4096, "every_ms": 1000}}),
    );
    assert_eq!(code, 422, "{text}");
    assert!(
        !sink_open(&fleet.a, &fleet.b_mesh()),
        "no sink while no load is aimed at B"
    );

    // UDP: 2000 datagrams of 1000 bytes a second.
    let udp = create(
        &ctl,
        &fleet.c,
        op,
        &serde_json::json!({"targets": {"agents": [an]}, "duration_seconds": 8,
            "spec": {"kind": "traffic", "to": [fleet.b_mesh()], "protocol": "udp",
                     "packets_per_second": 2000, "size": 1000}}),
    );
    wait_state(
        &ctl,
        &tokens.viewer,
        &udp.id,
        an,
        FaultState::Active,
        Duration::from_secs(10),
    );
    // The first datagrams may beat B's sink: measure once it counts.
    wait_until(Duration::from_secs(10), "B's sink receiving", || {
        (counter(&b, "graydar_load_received_bytes_total") > 0.0).then_some(())
    });
    let sent = rate(&a, "graydar_load_sent_operations_total", Duration::from_secs(3));
    let got = rate(&b, "graydar_load_received_bytes_total", Duration::from_secs(3));
    eprintln!("udp: A sent {sent:.0} datagrams/s; B received {got:.0} bytes/s");
    assert!((1800.0..=2200.0).contains(&sent), "A sent {sent:.0}/s, asked 2000/s");
    assert!((1_800_000.0..=2_200_000.0).contains(&got), "B received {got:.0} B/s");
    let f = wait_state(
        &ctl,
        &tokens.viewer,
        &udp.id,
        an,
        FaultState::Active,
        Duration::from_secs(1),
    );
    let ops = &f.agents.iter().find(|x| x.agent == an).expect("A").operations;
    assert!(
        ops.iter().any(|o| o.starts_with("load achieved")),
        "A reports what it achieves: {ops:?}"
    );
    assert_stopped(&fleet, &ctl, &tokens, &a, &udp.id);

    // TCP: 400 writes of 1000 bytes a second over two connections.
    let tcp = create(
        &ctl,
        &fleet.c,
        op,
        &serde_json::json!({"targets": {"agents": [an]}, "duration_seconds": 7,
            "spec": {"kind": "traffic", "to": [fleet.b_mesh()], "protocol": "tcp",
                     "packets_per_second": 400, "size": 1000, "connections": 2}}),
    );
    wait_until(Duration::from_secs(10), "TCP load flowing", || {
        (rate(&a, "graydar_load_sent_operations_total", Duration::from_millis(500)) > 0.0).then_some(())
    });
    let sent = rate(&a, "graydar_load_sent_operations_total", Duration::from_secs(3));
    eprintln!("tcp: A wrote {sent:.0} writes/s");
    assert!((360.0..=440.0).contains(&sent), "A wrote {sent:.0}/s, asked 400/s");
    assert_stopped(&fleet, &ctl, &tokens, &a, &tcp.id);

    // A burst of 256 KiB every second: one per second, all of it at B.
    let b_before = counter(&b, "graydar_load_received_bytes_total");
    let a_before = counter(&a, "graydar_load_sent_operations_total");
    let burst = create(
        &ctl,
        &fleet.c,
        op,
        &serde_json::json!({"targets": {"agents": [an]}, "duration_seconds": 6,
            "spec": {"kind": "burst", "to": fleet.b_mesh(), "bytes": 262_144, "every_ms": 1000}}),
    );
    assert_stopped(&fleet, &ctl, &tokens, &a, &burst.id);
    let bursts = counter(&a, "graydar_load_sent_operations_total") - a_before;
    let got = counter(&b, "graydar_load_received_bytes_total") - b_before;
    eprintln!("burst: {bursts} bursts, B received {got} bytes");
    // The first burst is 2 s after the creation: 4 in the 6 s.
    assert!((3.0..=5.0).contains(&bursts), "{bursts} bursts in 6 s at 1/s from +2 s");
    assert_eq!(got, bursts * 262_144.0, "every burst arrived whole");
    drop((a, b));
    let _ = bn;
}

/// An agent under a running fsync load: SIGTERM stops it and removes its
/// file; a kill -9 leaves the file, and the next start removes it (the
/// journal names it).
#[test]
fn an_fsync_load_file_goes_at_sigterm_and_after_a_kill_9_at_the_next_start() {
    netns::require_root();
    let c = NetNs::new("lfc");
    let a = NetNs::new("lfa");
    netns::veth_pair(&c, "lfca", "10.62.1.1/24", &a, "lfac", "10.62.1.2/24");
    let data = tempfile::tempdir().expect("controller data dir");
    let tokens = Tokens::random();
    let ctl = ControllerProcess::start(Some(&c), data.path(), &tokens);
    let state = tempfile::tempdir().expect("agent state");
    let dir = tempfile::tempdir().expect("fsync dir");
    let cfg = agent_config(a.name(), "http://10.62.1.1:8477", &tokens.agent);
    let files = |d: &Path| -> Vec<String> {
        std::fs::read_dir(d)
            .expect("read the fsync dir")
            .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect()
    };
    // One agent: the blast-radius rule (loads count) needs force.
    let fsync = serde_json::json!({"targets": {"agents": [a.name()]}, "duration_seconds": 300, "force": true,
        "spec": {"kind": "fsync", "dir": dir.path(), "per_second": 50}});

    let delete = |id: &str| {
        let (addr, token, path) = (ctl.addr(), tokens.operator.clone(), format!("/api/v1/faults/{id}"));
        let (code, text) = c
            .run_in(move || http_request(addr, "DELETE", &path, Some(&token), None))
            .expect("DELETE");
        assert!(code < 300, "{text}");
    };
    for kill9 in [false, true] {
        let agent = AgentProcess::start_with_state(Some(&a), &cfg, Some(state.path()));
        wait_until(Duration::from_secs(30), "agent registered", || {
            let v = ctl.cli_json(&tokens.viewer, &["agents"]);
            (v["agents"].as_array().map_or(0, Vec::len) == 1).then_some(())
        });
        let f = create(&ctl, &c, &tokens.operator, &fsync);
        wait_state(
            &ctl,
            &tokens.viewer,
            &f.id,
            a.name(),
            FaultState::Active,
            Duration::from_secs(15),
        );
        let syncs = rate(&agent, "graydar_load_sent_operations_total", Duration::from_secs(2));
        eprintln!("fsync: {syncs:.0} syncs/s");
        assert!((40.0..=60.0).contains(&syncs), "{syncs:.0} syncs/s, asked 50/s");
        let left = files(dir.path());
        assert_eq!(left.len(), 1, "{left:?}");
        assert!(left[0].contains(&f.id), "the file is named after the fault: {left:?}");
        if kill9 {
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(i32::try_from(agent.pid()).expect("pid")),
                nix::sys::signal::Signal::SIGKILL,
            )
            .expect("kill -9");
            drop(agent);
            assert_eq!(files(dir.path()).len(), 1, "a killed agent leaves its file");
            delete(&f.id);
            // The next start reverts what the journal lists.
            let again = AgentProcess::start_with_state(Some(&a), &cfg, Some(state.path()));
            wait_until(Duration::from_secs(30), "the file removed at the next start", || {
                files(dir.path()).is_empty().then_some(())
            });
            drop(again);
        } else {
            drop(agent); // SIGTERM
            assert_eq!(files(dir.path()), Vec::<String>::new(), "SIGTERM removes the file");
            delete(&f.id);
        }
    }
}
