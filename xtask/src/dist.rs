//! `cargo xtask dist`: a tarball with the binaries, systemd units, example
//! configs, runbooks, Prometheus rules and the Grafana dashboard, plus an
//! `install.sh` that installs it all with one command:
//!
//! ```sh
//! tar -xzf graydar-0.1.0-x86_64-linux.tar.gz && sudo ./graydar-0.1.0-x86_64-linux/install.sh
//! ```
//!
//! `install.sh` honours `DESTDIR` (install into another root: packaging and
//! tests/tests/deploy_dist.rs) and never overwrites an existing config or
//! tokens file.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail};

/// Binaries in the tarball (`bin/`), with the package that builds them.
pub const BINARIES: &[(&str, &str)] = &[
    ("graydar-agent", "graydar-agent"),
    ("graydar-controller", "graydar-controller"),
    ("graydar", "graydar-controller"),
];

/// Workspace files copied as they are: (source, path in the tarball).
const FILES: &[(&str, &str)] = &[
    ("deploy/systemd/graydar-agent.service", "systemd/graydar-agent.service"),
    (
        "deploy/systemd/graydar-controller.service",
        "systemd/graydar-controller.service",
    ),
    ("deploy/agent.example.toml", "etc/agent.toml"),
    ("deploy/controller.example.toml", "etc/controller.toml"),
    ("deploy/prometheus/graydar.rules.yml", "prometheus/graydar.rules.yml"),
    (
        "deploy/prometheus/graydar.rules.test.yml",
        "prometheus/graydar.rules.test.yml",
    ),
    (
        "deploy/prometheus/prometheus.example.yml",
        "prometheus/prometheus.example.yml",
    ),
    ("deploy/grafana/graydar.json", "grafana/graydar.json"),
    ("README.md", "README.md"),
];

const INSTALL_SH: &str = include_str!("../../deploy/install.sh");

/// Builds the binaries with `profile` (`release`, or `dev` for tests) and
/// writes `<out_dir>/graydar-<version>-<arch>-linux.tar.gz`; returns its path.
pub fn run(ws: &Path, profile: &str, out_dir: Option<PathBuf>) -> Result<PathBuf> {
    let mut build = crate::cargo();
    build.current_dir(ws).args(["build", "--profile", profile]);
    for (bin, package) in BINARIES {
        build.args(["-p", package, "--bin", bin]);
    }
    crate::ok(&mut build)?;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| ws.join("target"));
    let bin_dir = target.join(if profile == "dev" { "debug" } else { profile });

    let name = format!("graydar-{}-{}-linux", env!("CARGO_PKG_VERSION"), std::env::consts::ARCH);
    let out_dir = out_dir.unwrap_or_else(|| target.join("dist"));
    let stage_root = out_dir.join(format!(".stage-{name}"));
    let stage = stage_root.join(&name);
    if stage_root.exists() {
        std::fs::remove_dir_all(&stage_root).with_context(|| format!("removing {}", stage_root.display()))?;
    }
    for (bin, _) in BINARIES {
        copy(&bin_dir.join(bin), &stage.join("bin").join(bin), 0o755)?;
    }
    for (src, dst) in FILES {
        copy(&ws.join(src), &stage.join(dst), 0o644)?;
    }
    let runbooks = ws.join("runbooks");
    let mut n = 0;
    for entry in std::fs::read_dir(&runbooks).with_context(|| format!("reading {}", runbooks.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "md") {
            let file = path.file_name().context("runbook without a file name")?;
            copy(&path, &stage.join("runbooks").join(file), 0o644)?;
            n += 1;
        }
    }
    if n == 0 {
        bail!("no runbooks in {}", runbooks.display());
    }
    write(&stage.join("install.sh"), INSTALL_SH, 0o755)?;

    let tarball = out_dir.join(format!("{name}.tar.gz"));
    // Reproducible: sorted names, root-owned, fixed mtime.
    crate::ok(
        Command::new("tar")
            .arg("-C")
            .arg(&stage_root)
            .args([
                "--sort=name",
                "--owner=0",
                "--group=0",
                "--numeric-owner",
                "--mtime=@0",
                "-czf",
            ])
            .arg(&tarball)
            .arg(&name),
    )?;
    std::fs::remove_dir_all(&stage_root).with_context(|| format!("removing {}", stage_root.display()))?;
    println!("xtask dist: wrote {}", tarball.display());
    println!("  install: tar -xzf {name}.tar.gz && sudo ./{name}/install.sh");
    Ok(tarball)
}

/// kubernetes-validate (PyPI): offline schema validation of the rendered
/// Kubernetes manifests (tests/tests/deploy_k8s.rs).
pub const KUBERNETES_VALIDATE_VERSION: &str = "1.37.0";

/// Where `setup_tools` unpacks Debian's `kubernetes-client` (kubectl 1.20 with
/// kustomize built in), relative to the target directory. It is unpacked
/// rather than installed because this project's machines have Google Cloud
/// SDK's `kubectl` package (not from Debian's archive) owning /usr/bin/kubectl,
/// and dpkg refuses two packages with the same file.
pub const KUBECTL_IN_TARGET: &str = "tools/kubernetes-client/usr/bin/kubectl";

/// Idempotent part of `cargo xtask setup` for the deployment checks: Debian's
/// kubectl unpacked under target/tools, kubernetes-validate from PyPI.
/// Returns what it did.
pub fn setup_tools(ws: &Path) -> Result<Vec<String>> {
    let mut did = Vec::new();
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| ws.join("target"));
    let kubectl = target.join(KUBECTL_IN_TARGET);
    if !kubectl.is_file() {
        let dir = target.join("tools");
        let debs = dir.join("debs");
        std::fs::create_dir_all(&debs).with_context(|| format!("creating {}", debs.display()))?;
        let download = |debs: &Path| {
            crate::ok(
                Command::new("apt-get")
                    .current_dir(debs)
                    .args(["download", "kubernetes-client"]),
            )
        };
        if download(&debs).is_err() {
            crate::ok(Command::new("apt-get").args(["update", "-q"]))?;
            download(&debs)?;
        }
        let deb = std::fs::read_dir(&debs)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("kubernetes-client_"))
            })
            .with_context(|| format!("apt-get download left no kubernetes-client .deb in {}", debs.display()))?;
        crate::ok(
            Command::new("dpkg")
                .arg("-x")
                .arg(&deb)
                .arg(dir.join("kubernetes-client")),
        )?;
        if !kubectl.is_file() {
            bail!("{} has no usr/bin/kubectl", deb.display());
        }
        did.push(format!(
            "unpacked Debian's kubernetes-client (kubectl) into {}",
            dir.display()
        ));
    }
    let have = Command::new("python3")
        .args(["-m", "kubernetes_validate", "--version"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    if have.as_deref() != Some(KUBERNETES_VALIDATE_VERSION) {
        crate::ok(Command::new("python3").args([
            "-m",
            "pip",
            "install",
            "--quiet",
            &format!("kubernetes-validate=={KUBERNETES_VALIDATE_VERSION}"),
        ]))?;
        did.push(format!(
            "installed kubernetes-validate {KUBERNETES_VALIDATE_VERSION} (pip)"
        ));
    }
    did.extend(setup_schemathesis(&target)?);
    Ok(did)
}

/// schemathesis, the API fuzzer of `tests/tests/controller_schemathesis.rs`
/// (issue 13 item 12), pinned: its checks change between releases.
pub const SCHEMATHESIS_VERSION: &str = "4.32.5";

/// Where `cargo xtask setup` puts schemathesis: a virtual environment of its
/// own under the target directory, so its many dependencies never meet the
/// system Python's (kubernetes-validate's) and a clean removes it.
pub const SCHEMATHESIS_IN_TARGET: &str = "tools/schemathesis/bin/st";

fn setup_schemathesis(target: &Path) -> Result<Vec<String>> {
    let venv = target.join("tools/schemathesis");
    let st = target.join(SCHEMATHESIS_IN_TARGET);
    let have = Command::new(&st)
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    if have.as_deref().is_some_and(|v| v.ends_with(SCHEMATHESIS_VERSION)) {
        return Ok(Vec::new());
    }
    if !venv.join("bin/pip").is_file() {
        crate::ok(Command::new("python3").arg("-m").arg("venv").arg(&venv))
            .context("python3 -m venv (Debian: apt-get install python3-venv)")?;
    }
    crate::ok(Command::new(venv.join("bin/pip")).args([
        "install",
        "--quiet",
        "--disable-pip-version-check",
        &format!("schemathesis=={SCHEMATHESIS_VERSION}"),
    ]))?;
    Ok(vec![format!(
        "installed schemathesis {SCHEMATHESIS_VERSION} (pip, in {})",
        venv.display()
    )])
}

fn copy(src: &Path, dst: &Path, mode: u32) -> Result<()> {
    let body = std::fs::read(src).with_context(|| format!("reading {}", src.display()))?;
    write(dst, body, mode)
}

fn write(dst: &Path, body: impl AsRef<[u8]>, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    if let Some(dir) = dst.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(dst, body).with_context(|| format!("writing {}", dst.display()))?;
    std::fs::set_permissions(dst, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", dst.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_packaged_file_exists() {
        let ws = crate::workspace_root().expect("workspace root");
        for (src, _) in FILES {
            assert!(
                ws.join(src).is_file(),
                "{src} is packaged by `cargo xtask dist` but missing"
            );
        }
        assert!(INSTALL_SH.starts_with("#!/bin/sh\n"));
    }
}
