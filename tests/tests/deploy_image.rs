//! The container image, built and run for real (root tier): `cargo xtask
//! image` builds it offline with podman (Debian's libc6, libgcc-s1 and
//! ca-certificates unpacked into a distroless-style root, the binaries,
//! `podman build --pull=never`), then
//! - its root has no shell and no package manager, and what the manifests
//!   need (CA bundle, users, writable directories with the right owners);
//! - the three binaries start in it (every shared library they link is there);
//! - the controller container runs as the unprivileged user 65532 and
//!   answers `/readyz`;
//! - the agent container, run as the DaemonSet runs it (root, privileged,
//!   host network and PID namespace, the host's /proc and /sys at /host,
//!   bpffs and tracefs, a read-only root), attaches its eBPF probes and serves
//!   `/metrics` with `graydar_probe_up{probe="kfree_skb"} 1`, and stops
//!   cleanly at SIGTERM.
//!
//! Built with `--profile dev` (the release image is the same root and
//! Containerfile with other binaries) and tagged for this test only, so a
//! locally built release image is left alone. The manifests' reference is
//! checked against `cargo xtask image`'s in xtask/src/image.rs (unit tier)
//! and through `cargo xtask image --print-ref` here.
//!
//! podman runs with `--runtime runc` (crun refuses cgroup v1/hybrid hosts
//! like this project's machines), host networking (no CNI setup) and rlimits
//! no higher than this process's (podman's defaults exceed what a root
//! without CAP_SYS_RESOURCE may set).

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use graydar_tests::agent::http_get;
use graydar_tests::deploy::{cargo, tool, tool_ok, workspace};

fn require_root() {
    // SAFETY: geteuid has no preconditions.
    assert!(
        unsafe { libc::geteuid() } == 0,
        "deploy_image needs root (podman builds and runs a privileged container): run the root tier \
         (cargo xtask test --tier netns)"
    );
}

fn podman<I, S>(args: I) -> std::process::Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    tool("podman", args, None)
}

fn podman_ok<I, S>(args: I) -> String
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    String::from_utf8_lossy(&tool_ok("podman", args, None).stdout)
        .trim()
        .to_owned()
}

/// Removes the test's containers and image, whatever happened.
struct Cleanup {
    image: String,
    containers: Vec<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for c in &self.containers {
            let _ = podman(["rm", "-f", "-t", "5", c.as_str()]);
        }
        let _ = podman(["image", "unmount", self.image.as_str()]);
        let _ = podman(["rmi", "-f", self.image.as_str()]);
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free local port")
}

/// `podman run` options every container here needs on this host.
fn run_base(name: &str) -> Vec<String> {
    let nofile = soft_nofile();
    vec![
        "run".into(),
        "-d".into(),
        "--name".into(),
        name.into(),
        "--runtime".into(),
        "runc".into(),
        "--network".into(),
        "host".into(),
        "--ulimit".into(),
        format!("nofile={nofile}:{nofile}"),
        "--ulimit".into(),
        "nproc=4096:4096".into(),
    ]
}

fn soft_nofile() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    assert_eq!(rc, 0, "getrlimit(RLIMIT_NOFILE)");
    lim.rlim_cur.min(65536)
}

/// Polls `addr path` until `ok(status, body)` or `timeout`; on timeout panics
/// with the container's log.
fn wait_http(
    container: &str,
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
    ok: impl Fn(u16, &str) -> bool,
) -> String {
    let start = Instant::now();
    let mut last = String::new();
    while start.elapsed() < timeout {
        match http_get(addr, path) {
            Ok((status, body)) if ok(status, &body) => return body,
            Ok((status, body)) => last = format!("HTTP {status}: {}", body.chars().take(300).collect::<String>()),
            Err(e) => last = e,
        }
        let state = podman_ok(["inspect", "--format", "{{.State.Status}}", container]);
        if state != "running" {
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let logs = podman(["logs", container]);
    panic!(
        "{container}: {path} on {addr} not as expected after {:?} (last: {last})\nlogs:\n{}{}",
        start.elapsed(),
        String::from_utf8_lossy(&logs.stdout),
        String::from_utf8_lossy(&logs.stderr)
    );
}

fn pid_of(container: &str) -> u32 {
    podman_ok(["inspect", "--format", "{{.State.Pid}}", container])
        .parse()
        .expect("container pid")
}

/// Uid lines of /proc/PID/status: real, effective, saved, fs.
fn uids(pid: u32) -> Vec<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/PID/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .expect("Uid line")
        .split_whitespace()
        .map(|u| u.parse().expect("uid"))
        .collect()
}

fn ns(pid: &str, kind: &str) -> PathBuf {
    std::fs::read_link(format!("/proc/{pid}/ns/{kind}")).expect("namespace link")
}

/// `cargo xtask image --profile dev --tag TAG --oci-archive ARCHIVE`.
fn build_image(tag: &str, archive: &Path) {
    let status = cargo()
        .current_dir(workspace())
        .args([
            "run",
            "-q",
            "-p",
            "xtask",
            "--",
            "image",
            "--profile",
            "dev",
            "--tag",
            tag,
            "--oci-archive",
        ])
        .arg(archive)
        .status()
        .expect("run cargo xtask image");
    assert!(status.success(), "cargo xtask image failed: {status}");
}

/// The OCI archive (what `cargo xtask dist --image` ships) is an OCI image
/// layout naming the image, and podman loads it back as the same image.
fn check_oci_archive(archive: &Path, tag: &str) {
    let list = tool_ok("tar", [std::ffi::OsStr::new("-tf"), archive.as_os_str()], None);
    let names = String::from_utf8_lossy(&list.stdout).into_owned();
    for want in ["oci-layout", "index.json"] {
        assert!(
            names.lines().any(|l| l == want),
            "{} lacks {want}:\n{names}",
            archive.display()
        );
    }
    let index = tool_ok(
        "tar",
        [
            std::ffi::OsStr::new("-xOf"),
            archive.as_os_str(),
            std::ffi::OsStr::new("index.json"),
        ],
        None,
    );
    let index: serde_json::Value = serde_json::from_slice(&index.stdout).expect("index.json");
    let names: Vec<&str> = index["manifests"]
        .as_array()
        .expect("manifests")
        .iter()
        .filter_map(|m| m["annotations"]["org.opencontainers.image.ref.name"].as_str())
        .collect();
    assert!(!names.is_empty(), "index.json names no image: {index}");
    let id = podman_ok(["image", "inspect", "--format", "{{.Id}}", tag]);
    let loaded = podman_ok([
        std::ffi::OsStr::new("load"),
        std::ffi::OsStr::new("-q"),
        std::ffi::OsStr::new("-i"),
        archive.as_os_str(),
    ]);
    assert!(
        loaded.contains(&id) || loaded.contains(tag.trim_start_matches("localhost/")),
        "podman load: {loaded} (image {id})"
    );
}

fn check_root_file_system(image: &str) {
    let root = PathBuf::from(podman_ok(["image", "mount", image]));
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
    for absent in [
        "bin/sh",
        "usr/bin/sh",
        "bin/bash",
        "bin/busybox",
        "usr/bin/dpkg",
        "usr/bin/apt-get",
        "var/lib/dpkg/status",
        "usr/sbin/update-ca-certificates",
    ] {
        assert!(
            root.join(absent).symlink_metadata().is_err(),
            "the image has /{absent}: no shell or package manager expected"
        );
    }
    for present in [
        "usr/local/bin/graydar-agent",
        "usr/local/bin/graydar-controller",
        "usr/local/bin/graydar",
        "lib64/ld-linux-x86-64.so.2",
        "usr/local/share/graydar/runbooks/drops.md",
        "usr/local/share/graydar/runbooks/gamedays/nic-queue-drops.yaml",
    ] {
        assert!(root.join(present).exists(), "the image lacks /{present}");
    }
    let bundle = std::fs::read_to_string(root.join("etc/ssl/certs/ca-certificates.crt")).expect("CA bundle");
    assert!(
        bundle.matches("BEGIN CERTIFICATE").count() > 50,
        "the CA bundle should hold Debian's certificates"
    );
    let passwd = std::fs::read_to_string(root.join("etc/passwd")).expect("/etc/passwd");
    assert!(
        passwd.lines().any(|l| l.starts_with("nonroot:x:65532:65532:")),
        "{passwd}"
    );
    let data = std::fs::metadata(root.join("var/lib/graydar-controller")).expect("controller data dir");
    assert_eq!(
        (data.uid(), data.gid()),
        (65532, 65532),
        "the controller's data dir belongs to nonroot"
    );
    let tmp = std::fs::metadata(root.join("tmp")).expect("/tmp");
    assert_eq!(
        tmp.permissions().mode() & 0o7777,
        0o1777,
        "/tmp is world-writable and sticky"
    );
    let _ = podman(["image", "unmount", image]);
}

fn check_labels(image: &str) {
    let json = podman_ok(["image", "inspect", "--format", "{{json .Config}}", image]);
    let config: serde_json::Value = serde_json::from_str(&json).expect("image config JSON");
    assert_eq!(config["User"], "65532:65532", "{config}");
    let labels = &config["Labels"];
    assert_eq!(
        labels["org.opencontainers.image.version"],
        env!("CARGO_PKG_VERSION"),
        "{labels}"
    );
    assert_eq!(
        labels["org.opencontainers.image.licenses"], "MIT OR Apache-2.0",
        "{labels}"
    );
    let source = labels["org.opencontainers.image.source"].as_str().unwrap_or_default();
    assert!(source.starts_with("https://"), "{labels}");
    let revision = labels["org.opencontainers.image.revision"].as_str().unwrap_or_default();
    assert!(
        revision.len() == 40 || revision == "unknown",
        "revision is the git commit: {labels}"
    );
    assert_eq!(
        config["Entrypoint"],
        serde_json::json!(["/usr/local/bin/graydar-controller"]),
        "{config}"
    );
}

fn check_binaries_start(image: &str) {
    for bin in ["graydar-agent", "graydar-controller", "graydar"] {
        let mut args = run_base("unused");
        // Not detached, removed afterwards, no name.
        args.retain(|a| a != "-d");
        let name_at = args.iter().position(|a| a == "--name").expect("--name");
        args.drain(name_at..name_at + 2);
        args.extend([
            "--rm".into(),
            "--entrypoint".into(),
            format!("/usr/local/bin/{bin}"),
            image.into(),
            "--version".into(),
        ]);
        let out = podman_ok(&args);
        assert!(
            out.contains(env!("CARGO_PKG_VERSION")),
            "{bin} --version in the image: {out}"
        );
    }
}

fn run_controller(image: &str, name: &str) {
    let port = free_port();
    let token = format!("image-test-{}-{port}", std::process::id());
    let mut args = run_base(name);
    args.extend([
        "-e".to_owned(),
        format!("GRAYDAR_TOKENS=viewer:{token}"),
        image.to_owned(),
        format!("--listen=127.0.0.1:{port}"),
    ]);
    podman_ok(&args);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    wait_http(name, addr, "/readyz", Duration::from_secs(60), |s, _| s == 200);
    let pid = pid_of(name);
    assert!(
        uids(pid).iter().all(|&u| u == 65532),
        "the controller runs as nonroot (65532): {:?}",
        uids(pid)
    );
    // It serves its API from the database in the image's data directory
    // (which nonroot owns), with its tokens.
    let (status, _) = graydar_tests::agent::http_request(addr, "GET", "/api/v1/agents", None, None).expect("agents");
    assert_eq!(status, 401, "the API needs a token");
    let (status, body) =
        graydar_tests::agent::http_request(addr, "GET", "/api/v1/agents", Some(&token), None).expect("agents");
    assert_eq!(status, 200, "{body}");
}

fn run_agent(image: &str, name: &str, dir: &Path) {
    let port = free_port();
    let config = dir.join("etc");
    std::fs::create_dir_all(&config).expect("config dir");
    // The DaemonSet's ConfigMap with a loopback listener; the probe mesh off:
    // its port would be the host's (host network).
    std::fs::write(
        config.join("agent.toml"),
        format!("listen = \"127.0.0.1:{port}\"\n\n[paths]\nenabled = false\n"),
    )
    .expect("agent.toml");
    let state = dir.join("state");
    std::fs::create_dir_all(&state).expect("state dir");
    let mount = |host: &Path, container: &str, opts: &str| format!("{}:{container}{opts}", host.display());
    let mut args = run_base(name);
    args.extend(
        [
            "--privileged",
            "--pid",
            "host",
            "--user",
            "0:0",
            "--read-only",
            "--tmpfs",
            "/tmp",
            "--entrypoint",
            "/usr/local/bin/graydar-agent",
            "-e",
            "GRAYDAR_HOSTNAME=image-test",
            "-e",
            "PROCFS_ROOT=/host/proc",
            "-e",
            "SYSFS_ROOT=/host/sys",
            "-v",
            "/proc:/host/proc:ro",
            "-v",
            "/sys:/host/sys:ro",
            "-v",
            "/sys/fs/bpf:/sys/fs/bpf",
            "-v",
            "/sys/kernel/tracing:/sys/kernel/tracing",
        ]
        .map(str::to_owned),
    );
    args.extend([
        "-v".into(),
        mount(&state, "/var/lib/graydar", ""),
        "-v".into(),
        mount(&config, "/etc/graydar", ":ro"),
        image.into(),
        "--config=/etc/graydar/agent.toml".into(),
    ]);
    podman_ok(&args);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let metrics = wait_http(name, addr, "/metrics", Duration::from_secs(120), |s, body| {
        s == 200
            && body
                .lines()
                .any(|l| l.trim() == "graydar_probe_up{probe=\"kfree_skb\"} 1")
    });
    let probes: Vec<&str> = metrics.lines().filter(|l| l.starts_with("graydar_probe_up{")).collect();
    println!("deploy_image: the agent container's probes: {probes:?}");
    // Host PID and network namespaces, as the DaemonSet asks.
    let pid = pid_of(name).to_string();
    assert_eq!(
        ns(&pid, "pid"),
        ns("self", "pid"),
        "the agent shares the host's PID namespace"
    );
    assert_eq!(
        ns(&pid, "net"),
        ns("self", "net"),
        "the agent shares the host's network"
    );
    assert_eq!(uids(pid.parse().expect("pid"))[1], 0, "the agent runs as root");
    // SIGTERM: it detaches its probes and exits 0.
    podman_ok(["stop", "-t", "30", name]);
    let code = podman_ok(["inspect", "--format", "{{.State.ExitCode}}", name]);
    let logs = podman(["logs", name]);
    assert_eq!(
        code,
        "0",
        "the agent exits 0 at SIGTERM; logs:\n{}",
        String::from_utf8_lossy(&logs.stderr)
    );
}

#[test]
fn the_image_builds_offline_and_runs_the_controller_unprivileged_and_the_agent_with_its_probes() {
    require_root();
    let tag = format!("localhost/graydar-image-test:{}", std::process::id());
    let suffix = std::process::id();
    let (controller, agent) = (
        format!("graydar-test-controller-{suffix}"),
        format!("graydar-test-agent-{suffix}"),
    );
    let _cleanup = Cleanup {
        image: tag.clone(),
        containers: vec![controller.clone(), agent.clone()],
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let archive = dir.path().join("graydar.oci.tar");
    build_image(&tag, &archive);
    check_oci_archive(&archive, &tag);
    // What the manifests run is what `cargo xtask image` tags by default.
    let printed = cargo()
        .current_dir(workspace())
        .args(["run", "-q", "-p", "xtask", "--", "image", "--print-ref"])
        .output()
        .expect("cargo xtask image --print-ref");
    let reference = String::from_utf8_lossy(&printed.stdout).trim().to_owned();
    for manifest in [
        "deploy/k8s/agent/daemonset.yaml",
        "deploy/k8s/controller/deployment.yaml",
    ] {
        let text = std::fs::read_to_string(workspace().join(manifest)).expect("manifest");
        assert!(
            text.contains(&format!("image: {reference}\n")),
            "{manifest} runs another image than {reference:?}"
        );
    }
    check_root_file_system(&tag);
    check_labels(&tag);
    check_binaries_start(&tag);
    run_controller(&tag, &controller);
    run_agent(&tag, &agent, dir.path());
}
