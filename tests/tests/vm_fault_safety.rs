//! VM tier: faults through the controller cannot be orphaned. A real
//! controller and a real agent (each in its own namespace) on a kernel with
//! sch_netem (Debian 6.1 under QEMU, `cargo xtask vm`); #[ignore]d on the host.
//!
//! - a fault applied through the API shows as a netem qdisc; SIGKILL the
//!   controller and the agent reverts it on its own lease within TTL + 2 s;
//! - 50 randomized trials SIGKILL+restart the agent, SIGKILL (and restart) the
//!   controller, or partition the agent from the controller (nft drop on the
//!   control channel) at random points while faults are applied, active or
//!   being reverted; afterwards nothing is left: no netem qdisc, no ifb
//!   device, no dm fault table.

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use graydar_common::faults::FaultState;
use graydar_tests::agent::{agent_bin, http_get};
use graydar_tests::controller::{ControllerProcess, Tokens};
use graydar_tests::fault_e2e::{agent_config, fault_cli, orphans, wait_state, wait_until};
use graydar_tests::netns::{NetNs, veth_pair};

/// The controller's `[faults] lease` in these tests (its poll wait is a third).
const LEASE: Duration = Duration::from_secs(4);
const TRIALS: usize = 50;
const CTL_IP: &str = "10.206.1.1";
const AGENT_PORT: u16 = 9477;
/// The fault tests need no eBPF probe: a cheaper start under emulation.
const AGENT_EXTRA: &str = "\n[disk]\nebpf = false\n\n[incast]\nenabled = false\n";

fn config(host: &str, token: &str) -> String {
    agent_config(host, &format!("http://{CTL_IP}:8477"), token) + AGENT_EXTRA
}

fn require_vm() {
    assert_eq!(
        std::env::var("GRAYDAR_VM").as_deref(),
        Ok("1"),
        "this test runs only inside the graydar test VM (GRAYDAR_VM=1): use `cargo xtask vm`"
    );
}

/// xorshift64*: reproducible from the printed seed.
struct Rng(u64);

impl Rng {
    fn new() -> Rng {
        let seed = std::env::var("GRAYDAR_TRIAL_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64)
            })
            | 1;
        eprintln!("trial seed {seed} (GRAYDAR_TRIAL_SEED={seed} repeats this run)");
        Rng(seed)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn millis(&mut self, max: u64) -> Duration {
        Duration::from_millis(self.below(max + 1))
    }
}

/// The agent as a child process with a state directory that survives
/// SIGKILL + restart (so its journal is what recovery reads).
struct Agent<'ns> {
    ns: &'ns NetNs,
    child: Option<Child>,
    dir: PathBuf,
}

impl<'ns> Agent<'ns> {
    fn start(ns: &'ns NetNs, dir: &Path, config: &str) -> Agent<'ns> {
        std::fs::create_dir_all(dir).expect("agent dir");
        std::fs::write(dir.join("agent.toml"), config).expect("agent config");
        let mut a = Agent {
            ns,
            child: None,
            dir: dir.to_owned(),
        };
        a.spawn();
        a.wait_ready();
        a
    }

    /// Starts the agent without waiting for readiness: its fault journal
    /// recovery and assignment loop start before /readyz answers, and a kill
    /// during start-up is a trial point too.
    fn spawn(&mut self) {
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.dir.join("agent.log"))
            .expect("agent log");
        let log2 = log.try_clone().expect("log handle");
        let child = Command::new("ip")
            .args(["netns", "exec", self.ns.name()])
            .arg(agent_bin())
            .arg("--config")
            .arg(self.dir.join("agent.toml"))
            .arg("--state-dir")
            .arg(self.dir.join("state"))
            .arg("--listen")
            .arg(format!("127.0.0.1:{AGENT_PORT}"))
            .env_remove("GRAYDAR_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2))
            .spawn()
            .expect("spawn graydar-agent");
        self.child = Some(child);
    }

    fn wait_ready(&mut self) {
        let addr = SocketAddr::from(([127, 0, 0, 1], AGENT_PORT));
        wait_until(Duration::from_secs(60), "the agent answers /readyz", || {
            if let Some(Ok(Some(st))) = self.child.as_mut().map(Child::try_wait) {
                panic!("graydar-agent exited ({st}):\n{}", self.log());
            }
            matches!(self.ns.run_in(move || http_get(addr, "/readyz")), Ok((200, _))).then_some(())
        });
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
    }
}

impl Drop for Agent<'_> {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SIGTERM: the agent reverts everything before exiting.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!(
                "--- graydar-agent log (last 200 lines) ---\n{}\n--- end ---",
                lines[lines.len().saturating_sub(200)..].join("\n")
            );
        }
    }
}

/// Controller namespace, agent namespace (control channel over `fc1`/`fe1`),
/// and a data veth `fd1` in the agent's namespace that faults target.
struct Topo {
    ctl: NetNs,
    ag: NetNs,
    _peer: NetNs,
}

fn topo(tag: &str, net: u8) -> Topo {
    let ctl = NetNs::new(&format!("{tag}c"));
    let ag = NetNs::new(&format!("{tag}a"));
    let peer = NetNs::new(&format!("{tag}p"));
    veth_pair(&ctl, "fc1", &format!("{CTL_IP}/24"), &ag, "fe1", "10.206.1.2/24");
    veth_pair(
        &ag,
        "fd1",
        &format!("10.207.{net}.1/24"),
        &peer,
        "fp1",
        &format!("10.207.{net}.2/24"),
    );
    Topo { ctl, ag, _peer: peer }
}

fn controller_args(dir: &Path) -> Vec<String> {
    std::fs::create_dir_all(dir).expect("controller dir");
    let cfg = dir.join("controller.toml");
    std::fs::write(
        &cfg,
        format!("[faults]\nlease = \"{}s\"\nmax_target_share = 1.0\n", LEASE.as_secs()),
    )
    .expect("controller config");
    vec!["--config".into(), cfg.to_string_lossy().into_owned()]
}

fn start_controller<'a>(ns: &'a NetNs, dir: &Path, tokens: &Tokens) -> ControllerProcess<'a> {
    let args = controller_args(dir);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    ControllerProcess::start_with_args(Some(ns), dir, tokens, &refs)
}

fn has_netem(ns: &NetNs, dev: &str) -> bool {
    ns.exec_stdout("tc", ["qdisc", "show", "dev", dev]).contains("netem")
}

#[test]
#[ignore = "VM tier: runs inside QEMU via `cargo xtask test` (or `cargo xtask vm`)"]
fn a_fault_applied_through_the_api_is_reverted_by_its_lease_when_the_controller_dies() {
    require_vm();
    let t = topo("fl", 1);
    let data = tempfile::tempdir().expect("dirs");
    let tokens = Tokens::random();
    let ctl = start_controller(&t.ctl, &data.path().join("ctl"), &tokens);
    let host = t.ag.name().to_owned();
    let _agent = Agent::start(&t.ag, &data.path().join("agent"), &config(&host, &tokens.agent));
    wait_until(Duration::from_secs(30), "the agent registered", || {
        let v = ctl.cli_json(&tokens.viewer, &["agents"]);
        v["agents"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x["hostname"] == host.as_str()))
            .then_some(())
    });
    let f = fault_cli(
        &ctl,
        &tokens.operator,
        &[
            "apply",
            "--agent",
            &host,
            "--interface",
            "fd1",
            "--netem-delay",
            "50ms",
            "--duration",
            "600s",
        ],
    );
    let f = wait_state(
        &ctl,
        &tokens.viewer,
        &f.id,
        &host,
        FaultState::Active,
        Duration::from_secs(30),
    );
    assert!(
        has_netem(&t.ag, "fd1"),
        "{}",
        t.ag.exec_stdout("tc", ["qdisc", "show", "dev", "fd1"])
    );
    eprintln!("fault {} active on {host}", f.id);
    // Let a few renewals pass, then kill the controller mid-lease.
    std::thread::sleep(LEASE + LEASE / 2);
    assert!(has_netem(&t.ag, "fd1"), "renewed leases keep the fault");
    let killed = Instant::now();
    ctl.kill9();
    let bound = LEASE + Duration::from_secs(2);
    let reverted = wait_until(bound + Duration::from_secs(30), "the lease reverted the fault", || {
        (!has_netem(&t.ag, "fd1")).then(|| killed.elapsed())
    });
    eprintln!(
        "controller SIGKILLed: the agent reverted the fault after {:.2} s (lease TTL {} s, bound {} s)",
        reverted.as_secs_f64(),
        LEASE.as_secs(),
        bound.as_secs()
    );
    assert!(reverted <= bound, "reverted after {reverted:?}, more than TTL + 2 s");
    assert!(orphans(&t.ag).is_empty(), "{:?}", orphans(&t.ag));
}

/// Drops the agent's traffic to the controller (nft, output hook of the
/// agent's namespace): requests hang, as behind a broken network.
fn partition(ns: &NetNs, on: bool) {
    if on {
        ns.exec("nft", ["add", "table", "inet", "gdpart"]);
        ns.exec(
            "nft",
            [
                "add",
                "chain",
                "inet",
                "gdpart",
                "out",
                "{ type filter hook output priority 0 ; }",
            ],
        );
        ns.exec(
            "nft",
            [
                "add", "rule", "inet", "gdpart", "out", "ip", "daddr", CTL_IP, "tcp", "dport", "8477", "drop",
            ],
        );
    } else {
        let _ = Command::new("ip")
            .args(["netns", "exec", ns.name(), "nft", "delete", "table", "inet", "gdpart"])
            .output();
    }
}

#[test]
#[ignore = "VM tier: runs inside QEMU via `cargo xtask test` (or `cargo xtask vm`)"]
fn fifty_randomized_kill_and_partition_trials_leave_no_orphans() {
    require_vm();
    let t = topo("ft", 2);
    let data = tempfile::tempdir().expect("dirs");
    let tokens = Tokens::random();
    let ctl_dir = data.path().join("ctl");
    let mut ctl = Some(start_controller(&t.ctl, &ctl_dir, &tokens));
    let host = t.ag.name().to_owned();
    let mut agent = Agent::start(&t.ag, &data.path().join("agent"), &config(&host, &tokens.agent));
    let mut rng = Rng::new();
    let specs: [&[&str]; 3] = [
        &["--interface", "fd1", "--netem-delay", "20ms"],
        &["--interface", "fd1", "--loss", "5%", "--direction", "ingress"],
        &[
            "--interface",
            "fd1",
            "--netem-delay",
            "10ms",
            "--dst-cidr",
            "10.207.2.0/24",
        ],
    ];
    let mut actions: std::collections::BTreeMap<&str, u32> = Default::default();
    let started = Instant::now();
    let mut previous: Option<String> = None;
    for trial in 0..TRIALS {
        let trial_start = Instant::now();
        let c = ctl.get_or_insert_with(|| start_controller(&t.ctl, &ctl_dir, &tokens));
        // The controller refuses a second fault on the same interface and
        // direction (409): end the previous trial's fault first (a revert
        // in flight while the next apply arrives is one more interleaving).
        if let Some(id) = previous.take() {
            let out = c.cli(&tokens.operator, &["fault", "revert", &id]);
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        }
        let mut args = vec!["apply", "--agent", &host];
        args.extend_from_slice(specs[rng.below(3) as usize]);
        let dur = format!("{}s", 5 + rng.below(40));
        args.extend(["--duration", &dur]);
        let f = fault_cli(c, &tokens.operator, &args);
        previous = Some(f.id.clone());
        // A random point: right after the POST (apply in flight), while
        // active, or just after a DELETE (revert in flight).
        let phase = rng.below(3);
        std::thread::sleep(match phase {
            0 => rng.millis(300),
            _ => rng.millis(2500),
        });
        if phase == 2 {
            let out = c.cli(&tokens.operator, &["fault", "revert", &f.id]);
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            std::thread::sleep(rng.millis(300));
        }
        let action = match rng.below(3) {
            0 => {
                agent.kill9();
                std::thread::sleep(rng.millis(1000));
                agent.spawn();
                "kill -9 + restart the agent"
            }
            1 => {
                if let Some(c) = ctl.take() {
                    c.kill9();
                }
                // Down for a random time, sometimes beyond the lease.
                std::thread::sleep(rng.millis(LEASE.as_millis() as u64 + 1000));
                ctl = Some(start_controller(&t.ctl, &ctl_dir, &tokens));
                "kill -9 the controller (restarted)"
            }
            _ => {
                partition(&t.ag, true);
                std::thread::sleep(rng.millis(LEASE.as_millis() as u64 + 1500));
                partition(&t.ag, false);
                "partition agent / controller"
            }
        };
        *actions.entry(action).or_default() += 1;
        eprintln!(
            "trial {trial:2}: {} phase {}, {action} ({:.1} s)",
            f.id,
            ["apply", "active", "revert"][phase as usize],
            trial_start.elapsed().as_secs_f64()
        );
    }
    // Everything off (kill switch), then let leases and reconciles settle.
    let c = ctl.get_or_insert_with(|| start_controller(&t.ctl, &ctl_dir, &tokens));
    let out = c.cli(&tokens.operator, &["fault", "revert-all"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // The agent is still running (it did not crash in any trial).
    agent.wait_ready();
    let settle = Instant::now();
    while !orphans(&t.ag).is_empty() && settle.elapsed() < LEASE + Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(200));
    }
    let left = orphans(&t.ag);
    // Written to stderr directly: the test harness captures `eprintln!` of
    // a passing test, and the count belongs in every run's output.
    let mut report = format!(
        "{TRIALS} trials in {:.0} s ({actions:?}); orphans after settling ({:.1} s): {}\n",
        started.elapsed().as_secs_f64(),
        settle.elapsed().as_secs_f64(),
        left.len()
    );
    for o in &left {
        report.push_str(&format!("  orphan: {o}\n"));
    }
    let _ = std::io::Write::write_all(&mut std::io::stderr(), report.as_bytes());
    assert!(left.is_empty(), "{} orphans: {left:?}", left.len());
    // The agent is alive and the controller's view is consistent: no fault
    // is still wanted.
    let list = c.cli_json(&tokens.viewer, &["fault", "list"]);
    let faults = list["faults"].as_array().cloned().unwrap_or_default();
    let running = faults.iter().filter(|f| f["status"] == "running").count();
    assert_eq!(running, 0, "{list}");
    // What the agent last reported per fault (reverted: it was active first).
    let mut states: std::collections::BTreeMap<String, u32> = Default::default();
    let mut reasons: std::collections::BTreeSet<String> = Default::default();
    for f in &faults {
        for a in f["agents"].as_array().into_iter().flatten() {
            let state = a["state"].as_str().unwrap_or("?").to_owned();
            if state == "failed" {
                reasons.insert(format!("{}: {}", f["spec"], a["reason"]));
            }
            *states.entry(state).or_default() += 1;
        }
    }
    eprintln!("last reported states of the {} faults: {states:?}", faults.len());
    for r in &reasons {
        eprintln!("  failed: {r}");
    }
    let applied = states.get("reverted").copied().unwrap_or(0) + states.get("active").copied().unwrap_or(0);
    assert!(
        applied >= (TRIALS / 5) as u32,
        "too few faults were ever applied for the trials to mean much: {states:?}"
    );
    drop(agent);
}
