//! The controller over HTTPS (rustls) with a self-signed certificate: the
//! CLI and an agent trust it through `--ca-cert` / `[controller] ca_cert`,
//! and refuse it without.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use graydar_common::api::AgentList;
use graydar_tests::agent::AgentProcess;
use graydar_tests::controller::{ControllerProcess, Tokens};
use graydar_tests::netns::{self, NetNs, veth_pair};

/// A self-signed certificate for `ip` (EC P-256, valid one day).
fn self_signed(dir: &Path, ip: &str) {
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ])
        .arg("-keyout")
        .arg(dir.join("key.pem"))
        .arg("-out")
        .arg(dir.join("cert.pem"))
        .args(["-days", "1", "-subj", "/CN=graydar-test"])
        .args(["-addext", &format!("subjectAltName=IP:{ip}")])
        // A self-signed end-entity certificate: webpki refuses a CA
        // certificate (openssl's default) as a server certificate.
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .args(["-addext", "extendedKeyUsage=serverAuth"])
        .output()
        .expect("run openssl (Debian package openssl; `cargo xtask setup` installs it)");
    assert!(
        out.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn https_with_a_self_signed_certificate() {
    netns::require_root();
    let c = NetNs::new("tls");
    let n1 = NetNs::new("tag");
    veth_pair(&c, "c1", "10.204.9.1/24", &n1, "e1", "10.204.9.2/24");
    let dir = tempfile::tempdir().expect("temp dir");
    self_signed(dir.path(), "10.204.9.1");
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    let tokens = Tokens::random();
    let cert_s = cert.to_str().expect("utf-8 path");
    let ctl = ControllerProcess::start_with_args(
        Some(&c),
        &dir.path().join("data"),
        &tokens,
        &["--tls-cert", cert_s, "--tls-key", key.to_str().expect("utf-8 path")],
    );
    let config = format!(
        "hostname = \"{}\"\n[controller]\nurl = \"https://10.204.9.1:8477\"\ntoken = \"{}\"\nca_cert = \"{cert_s}\"\nreport_interval = \"1s\"\n",
        n1.name(),
        tokens.agent
    );
    let _agent = AgentProcess::start(Some(&n1), &config);
    // The CLI from the agent's namespace, over the veth, trusting the certificate.
    let cli = |extra: &[&str]| {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", n1.name()])
            .arg(graydar_tests::controller::cli_bin())
            .args(["--url", "https://10.204.9.1:8477", "--output", "json"])
            .args(extra)
            .arg("agents")
            .env("GRAYDAR_TOKEN", &tokens.viewer)
            .env("HOME", "/nonexistent");
        cmd.output().expect("run graydar")
    };
    let start = std::time::Instant::now();
    loop {
        let out = cli(&["--ca-cert", cert_s]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let l: AgentList = serde_json::from_slice(&out.stdout).expect("agents JSON");
        if l.agents.iter().any(|a| a.hostname == n1.name()) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "the agent did not register over HTTPS: {l:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Without the certificate the CLI refuses the connection.
    let out = cli(&[]);
    assert!(!out.status.success(), "an untrusted certificate must be refused");
    let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert!(err.contains("certificate") || err.contains("tls"), "{err}");
    // Plain HTTP to the HTTPS port does not get an answer.
    assert!(
        !matches!(ctl.try_get("/healthz"), Ok((200, _))),
        "plain HTTP must not be served on the TLS port"
    );
}
