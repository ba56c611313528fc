//! deploy/systemd: both units pass `systemd-analyze verify` with no warning
//! and stay under an exposure threshold of `systemd-analyze security
//! --offline`; and the capability sets the unit and the DaemonSet grant are
//! enough: the real agent, run with exactly those capabilities (as the
//! unit's unprivileged user, and as the DaemonSet's capability-limited root),
//! brings up every probe it brings up as full root, and without any one of
//! them loses a probe (nothing more than needed).
//!
//! `systemd-analyze` runs on a temporary root holding the host's systemd
//! units, the units under test and stand-ins for their executables, so the
//! check needs neither a running systemd nor an installed graydar.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use graydar_tests::agent::{NS_PORT, agent_bin, http_get};
use graydar_tests::deploy::{tool, workspace};
use graydar_tests::netns::{self, NetNs};
use graydar_tests::prom;

/// Highest accepted `systemd-analyze security` exposure (0-10, lower is
/// better; measured: agent 2.3, controller 1.2).
const MAX_EXPOSURE: &[(&str, f64)] = &[("graydar-agent.service", 2.5), ("graydar-controller.service", 1.5)];

fn unit_path(name: &str) -> PathBuf {
    workspace().join("deploy/systemd").join(name)
}

/// `Key=value` lines of a unit (last one wins, as for most keys).
fn unit_keys(name: &str) -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(unit_path(name)).unwrap_or_else(|e| panic!("read {name}: {e}"));
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

/// A root for `systemd-analyze --root`: the host's units (targets the units
/// refer to), the units under test in /usr/local/lib/systemd/system, and
/// executable stand-ins at their ExecStart paths.
fn analyze_root(units: &[(&str, String)]) -> tempfile::TempDir {
    let root = tempfile::Builder::new()
        .prefix("graydar-systemd")
        .tempdir()
        .expect("temp dir");
    let r = root.path();
    let host_units = Path::new("/usr/lib/systemd/system");
    assert!(host_units.is_dir(), "{} is missing (systemd)", host_units.display());
    let status = Command::new("cp")
        .arg("-a")
        .arg(host_units)
        .arg(r.join("usr/lib/systemd").tap_mkdir())
        .status()
        .expect("cp");
    assert!(status.success(), "copy the host's systemd units");
    let dir = r.join("usr/local/lib/systemd/system").tap_mkdir();
    for (name, text) in units {
        std::fs::write(dir.join(name), text).expect("write unit");
        for line in text.lines() {
            if let Some(cmd) = line.strip_prefix("ExecStart=") {
                let exe = cmd
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .trim_start_matches(['-', '+', '!', '@']);
                let target = r.join(exe.trim_start_matches('/'));
                std::fs::create_dir_all(target.parent().expect("parent")).expect("mkdir");
                std::fs::copy("/bin/true", &target).expect("stand-in executable");
            }
        }
    }
    root
}

trait MkDir {
    fn tap_mkdir(self) -> Self;
}
impl MkDir for PathBuf {
    fn tap_mkdir(self) -> Self {
        std::fs::create_dir_all(&self).unwrap_or_else(|e| panic!("mkdir {}: {e}", self.display()));
        self
    }
}

/// `systemd-analyze verify`: (success, everything it printed).
fn verify(root: &Path, name: &str) -> (bool, String) {
    let unit = root.join("usr/local/lib/systemd/system").join(name);
    let out = tool(
        "systemd-analyze",
        [
            format!("--root={}", root.display()),
            "verify".into(),
            unit.to_string_lossy().into_owned(),
        ],
        None,
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn both_units_pass_systemd_analyze_verify_without_a_warning() {
    let names = ["graydar-agent.service", "graydar-controller.service"];
    let units: Vec<(&str, String)> = names
        .iter()
        .map(|n| (*n, std::fs::read_to_string(unit_path(n)).expect("read unit")))
        .collect();
    let root = analyze_root(&units);
    for name in names {
        let (ok, text) = verify(root.path(), name);
        assert!(ok && text.trim().is_empty(), "systemd-analyze verify {name}:\n{text}");
    }
    // Negative control: a misspelt key is only a warning for systemd; the
    // check above fails on it.
    let broken = units[0].1.replace("ProtectHome=yes", "ProtectHom=yes");
    let root = analyze_root(&[("broken.service", broken)]);
    let (_, text) = verify(root.path(), "broken.service");
    assert!(
        text.contains("ProtectHom"),
        "systemd-analyze should warn about ProtectHom: {text}"
    );
}

#[test]
fn both_units_stay_under_their_exposure_threshold() {
    for (name, max) in MAX_EXPOSURE {
        let units = [(*name, std::fs::read_to_string(unit_path(name)).expect("read unit"))];
        let root = analyze_root(&units);
        let unit = root.path().join("usr/local/lib/systemd/system").join(name);
        let out = tool(
            "systemd-analyze",
            [
                format!("--root={}", root.path().display()),
                "security".into(),
                "--offline=yes".into(),
                format!("--threshold={}", (max * 10.0) as u32),
                unit.to_string_lossy().into_owned(),
            ],
            None,
        );
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let level = text
            .lines()
            .find_map(|l| l.split("Overall exposure level for ").nth(1))
            .and_then(|l| l.split(':').nth(1))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no exposure level in:\n{text}{}", String::from_utf8_lossy(&out.stderr)));
        eprintln!("{name}: exposure {level}");
        assert!(
            out.status.success() && level <= *max,
            "{name}: exposure {level} > {max}:\n{text}"
        );
    }
}

#[test]
fn units_run_the_paths_the_dist_tarball_installs() {
    let agent = unit_keys("graydar-agent.service");
    assert!(agent["ExecStart"].starts_with("/usr/local/bin/graydar-agent --config /etc/graydar/agent.toml"));
    assert_eq!(agent["StateDirectory"], "graydar");
    assert_eq!(agent["ReadWritePaths"], "/var/lib/graydar");
    assert_eq!(agent["ProtectSystem"], "strict");
    assert_eq!(agent["CapabilityBoundingSet"], agent["AmbientCapabilities"]);
    // The controller token as a credential, under the name the agent reads
    // (agent/src/config/mod.rs TOKEN_CREDENTIAL), from the file install.sh writes.
    assert_eq!(
        agent["LoadCredential"],
        format!("{}:/etc/graydar/agent.token", graydar_agent::config::TOKEN_CREDENTIAL)
    );
    let controller = unit_keys("graydar-controller.service");
    assert!(controller["ExecStart"].starts_with("/usr/local/bin/graydar-controller "));
    assert!(controller["ExecStart"].contains("--data-dir /var/lib/graydar-controller"));
    assert_eq!(controller["StateDirectory"], "graydar-controller");
    assert_eq!(controller["CapabilityBoundingSet"], "");
    assert_eq!(controller["AmbientCapabilities"], "");
}

// ---------------------------------------------------------------------------
// Capabilities against the real agent (root).

/// The agent inside `ns` under `setpriv` (uid and capabilities given), with
/// tracefs and bpffs mounted first, as systemd and the kubelet's host mounts
/// provide them (`ip netns exec` gives the process a fresh /sys without them).
struct Restricted<'ns> {
    child: Child,
    ns: &'ns NetNs,
    _dir: tempfile::TempDir,
}

impl<'ns> Restricted<'ns> {
    /// `caps` empty: plain root, no setpriv.
    fn start(ns: &'ns NetNs, uid: u32, caps: &[String]) -> Restricted<'ns> {
        let bin = agent_bin();
        assert!(
            bin.is_file(),
            "{} is missing: cargo build -p graydar-agent",
            bin.display()
        );
        let dir = tempfile::tempdir().expect("temp dir");
        let config = dir.path().join("agent.toml");
        std::fs::write(&config, format!("hostname = \"{}\"\n", ns.name())).expect("write config");
        // The unprivileged user must be able to read its config.
        std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
        let set = format!(
            "-all,{}",
            caps.iter().map(|c| format!("+{c}")).collect::<Vec<_>>().join(",")
        );
        // No capability list: plain root, unrestricted (the baseline).
        let wrapper = if caps.is_empty() {
            String::new()
        } else {
            format!(
                "setpriv --reuid={uid} --regid={uid} --clear-groups --inh-caps={set} --ambient-caps={set} \
                 --bounding-set={set} -- "
            )
        };
        let script = format!(
            "mount -t tracefs tracefs /sys/kernel/tracing && mount -t bpf bpf /sys/fs/bpf && \
             exec {wrapper}{} --config {} --listen 127.0.0.1:{NS_PORT}",
            bin.display(),
            config.display()
        );
        let log = std::fs::File::create(dir.path().join("agent.log")).expect("log file");
        let child = Command::new("ip")
            .args(["netns", "exec", ns.name(), "sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log"))
            .stderr(log)
            .spawn()
            .expect("spawn the agent under setpriv");
        let mut r = Restricted { child, ns, _dir: dir };
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = r.child.try_wait() {
                panic!(
                    "agent under setpriv ({caps:?}, uid {uid}) exited: {status}: {}",
                    r.log()
                );
            }
            if r.get("/readyz").is_ok_and(|(s, _)| s == 200) {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "agent under setpriv not ready"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        r
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("agent.log")).unwrap_or_default()
    }

    fn get(&self, path: &str) -> Result<(u16, String), String> {
        let addr = ([127, 0, 0, 1], NS_PORT).into();
        self.ns.run_in(move || http_get(addr, path))
    }

    /// `graydar_probe_up` by probe.
    fn probes(&self) -> BTreeMap<String, f64> {
        let (_, body) = self.get("/metrics").expect("GET /metrics");
        prom::find(&body, "graydar_probe_up", &[])
            .into_iter()
            .map(|s| (s.labels.get("probe").cloned().unwrap_or_default(), s.value))
            .collect()
    }
}

impl Drop for Restricted<'_> {
    fn drop(&mut self) {
        // `ip netns exec` execs sh which execs setpriv which execs the agent:
        // the child pid is the agent.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `CAP_BPF CAP_PERFMON` -> `["bpf", "perfmon"]` (setpriv's names).
fn setpriv_names(caps: &str) -> Vec<String> {
    caps.split_whitespace()
        .map(|c| c.trim_start_matches("CAP_").to_ascii_lowercase())
        .collect()
}

/// The DaemonSet's `capabilities.add` (deploy/k8s/agent/daemonset.yaml).
fn daemonset_caps() -> Vec<String> {
    let text = std::fs::read_to_string(workspace().join("deploy/k8s/agent/daemonset.yaml")).expect("daemonset");
    let doc: serde_yaml::Value = serde_yaml::from_str(&text).expect("daemonset YAML");
    let c = &doc["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["securityContext"]["runAsUser"], 0);
    c["securityContext"]["capabilities"]["add"]
        .as_sequence()
        .expect("capabilities.add")
        .iter()
        .filter_map(|v| v.as_str().map(str::to_ascii_lowercase))
        .collect()
}

#[test]
fn the_units_and_the_daemonsets_capabilities_bring_up_every_probe() {
    netns::require_root();
    let baseline = {
        let ns = NetNs::new("cpr");
        // uid 0 with every capability.
        Restricted::start(&ns, 0, &[]).probes()
    };
    let up: Vec<&String> = baseline.iter().filter(|(_, v)| **v == 1.0).map(|(k, _)| k).collect();
    assert!(
        up.iter().any(|p| *p == "kfree_skb"),
        "as full root the eBPF probes should be up: {baseline:?}"
    );
    let unit = unit_keys("graydar-agent.service");
    let cases = [
        (
            "systemd unit (DynamicUser, ambient)",
            65534,
            setpriv_names(&unit["AmbientCapabilities"]),
        ),
        ("DaemonSet (root, capabilities.add)", 0, daemonset_caps()),
    ];
    for (what, uid, caps) in cases {
        let ns = NetNs::new("cpu");
        let r = Restricted::start(&ns, uid, &caps);
        let probes = r.probes();
        for p in &up {
            assert_eq!(
                probes.get(*p).copied(),
                Some(1.0),
                "{what} with {caps:?}: probe {p} is not up (as full root it is): {probes:?}"
            );
        }
        eprintln!("{what} {caps:?}: {} probes up, as with full root", up.len());
        drop(r);
        // Nothing more: without any one of them, some probe stays down.
        for cap in &caps {
            let fewer: Vec<String> = caps.iter().filter(|c| *c != cap).cloned().collect();
            let ns = NetNs::new("cpm");
            let probes = Restricted::start(&ns, uid, &fewer).probes();
            let lost: Vec<&&String> = up.iter().filter(|p| probes.get(**p).copied() != Some(1.0)).collect();
            assert!(
                !lost.is_empty(),
                "{what}: {cap} is granted but no probe needs it ({probes:?})"
            );
            eprintln!("{what}: without {cap}, down: {lost:?}");
        }
    }
}
