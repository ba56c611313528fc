//! `cargo xtask image`: the container image of graydar, built offline.
//!
//! No base image is pulled from a registry. The root file system is assembled
//! from Debian's own packages, the way distroless does it: `apt-get download`
//! of [`BASE_PACKAGES`] (glibc and the dynamic loader, libgcc_s, the CA
//! certificates), unpacked with `dpkg -x` (no maintainer scripts run, so
//! there is no shell, no package manager and no dpkg database in the image),
//! plus an `/etc/passwd` with `root` and `nonroot` (65532), the CA bundle that
//! `update-ca-certificates` would have written, and the directories the
//! manifests mount. `deploy/Containerfile` then copies that root, the
//! agent, controller and CLI binaries and the runbooks onto `scratch` and
//! labels the image (OCI annotations: version, revision, source, licenses).
//! `podman build --pull=never` never contacts a registry.
//!
//! The image is tagged [`image_ref`], the reference the Kubernetes manifests
//! (deploy/k8s) run: a unit test below reads them.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail, ensure};

/// Repository part of the image reference. `localhost/` is where podman puts
/// an image built locally without a registry; a cluster pulls it after
/// `podman push` to its registry (and `kustomize edit set image`), or loads
/// the OCI archive of `cargo xtask dist --image` into its nodes.
pub const IMAGE_NAME: &str = "localhost/graydar";

/// The reference `cargo xtask image` tags: [`IMAGE_NAME`] at the workspace
/// version.
pub fn image_ref() -> String {
    format!("{IMAGE_NAME}:{}", env!("CARGO_PKG_VERSION"))
}

/// Debian packages whose files make the image's root: what the binaries
/// link (`ldd`: libc.so.6, libm.so.6, libgcc_s.so.1, the loader; see
/// `tests/tests/deploy_image.rs`) and the CA certificates for TLS to the
/// controller.
pub const BASE_PACKAGES: &[&str] = &["libc6", "libgcc-s1", "ca-certificates"];

/// Paths (relative to the unpacked root) removed after `dpkg -x`: docs, and
/// `update-ca-certificates`, a shell script in an image without a shell.
const PRUNE: &[&str] = &[
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/lintian",
    "usr/share/bug",
    "usr/sbin/update-ca-certificates",
    "etc/ca-certificates",
];

/// `nonroot` (65532, distroless' unprivileged user) is who the controller
/// runs as: the image's USER and the Deployment's runAsUser.
const PASSWD: &str = "root:x:0:0:root:/root:/sbin/nologin\n\
                      nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n";
const GROUP: &str = "root:x:0:\nnonroot:x:65532:\n";
const NSSWITCH: &str = "passwd: files\ngroup: files\nshadow: files\nhosts: files dns\n";

/// What `cargo xtask image` built.
pub struct Built {
    pub reference: String,
}

/// Builds the binaries with `profile`, assembles the build context under
/// `target/image` and builds the image with podman as `tag` (default
/// [`image_ref`]).
pub fn build(ws: &Path, profile: &str, tag: Option<&str>) -> Result<Built> {
    let podman = which_podman()?;
    let bin_dir = crate::dist::build_binaries(ws, profile)?;
    let target = crate::target_dir(ws);
    let work = target.join("image");
    let context = work.join("context");
    if context.exists() {
        std::fs::remove_dir_all(&context).with_context(|| format!("removing {}", context.display()))?;
    }
    let rootfs = context.join("rootfs");
    std::fs::create_dir_all(&rootfs).with_context(|| format!("creating {}", rootfs.display()))?;
    for deb in download_debs(&work.join("debs"))? {
        crate::ok(Command::new("dpkg").arg("-x").arg(&deb).arg(&rootfs))?;
    }
    for p in PRUNE {
        let path = rootfs.join(p);
        if path.is_dir() {
            std::fs::remove_dir_all(&path).with_context(|| format!("removing {}", path.display()))?;
        } else if path.exists() {
            std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        }
    }
    finish_rootfs(&rootfs)?;
    for (bin, _) in crate::dist::BINARIES {
        let dst = context.join("bin").join(bin);
        std::fs::create_dir_all(context.join("bin"))?;
        std::fs::copy(bin_dir.join(bin), &dst).with_context(|| {
            format!(
                "copying {} (built with --profile {profile})",
                bin_dir.join(bin).display()
            )
        })?;
    }
    copy_tree(&ws.join("runbooks"), &context.join("runbooks"))?;
    std::fs::copy(ws.join("deploy/Containerfile"), context.join("Containerfile"))
        .context("copying deploy/Containerfile")?;

    let reference = tag.map_or_else(image_ref, str::to_owned);
    let revision = git(ws, &["rev-parse", "HEAD"]).unwrap_or_else(|| "unknown".to_owned());
    // The image's timestamps (its `created` and every file's mtime) are the
    // commit's: the same commit and binaries give the same layers.
    let epoch = git(ws, &["log", "-1", "--format=%ct"]).unwrap_or_else(|| "0".to_owned());
    let (source, licenses) = workspace_metadata(ws)?;
    println!("xtask image: building {reference} with {}", podman.display());
    crate::ok(
        Command::new(&podman)
            .arg("build")
            .args(["--pull=never", "--timestamp", &epoch, "-f"])
            .arg(context.join("Containerfile"))
            .args(["--build-arg", &format!("VERSION={}", env!("CARGO_PKG_VERSION"))])
            .args(["--build-arg", &format!("REVISION={revision}")])
            .args(["--build-arg", &format!("SOURCE={source}")])
            .args(["--build-arg", &format!("LICENSES={licenses}")])
            .args(["--build-arg", &format!("PROFILE={profile}")])
            .args(["-t", &reference])
            .arg(&context),
    )?;
    let out = Command::new(&podman)
        .args(["image", "inspect", "--format", "{{.Id}} {{.Size}}", &reference])
        .output()
        .context("podman image inspect")?;
    ensure!(
        out.status.success(),
        "podman image inspect {reference}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let mut words = text.split_whitespace();
    let id = words.next().unwrap_or_default().to_owned();
    let size: u64 = words.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    println!(
        "xtask image: built {reference} ({:.1} MiB, id {})",
        size as f64 / (1 << 20) as f64,
        id.get(..12).unwrap_or(&id)
    );
    Ok(Built { reference })
}

/// Writes `reference` as an OCI archive (`podman save --format oci-archive`)
/// to `out`; `podman load`, `skopeo copy oci-archive:…` or `ctr image
/// import` take it on a machine without a registry.
pub fn export(reference: &str, out: &Path) -> Result<()> {
    let podman = which_podman()?;
    if out.exists() {
        std::fs::remove_file(out).with_context(|| format!("removing {}", out.display()))?;
    }
    crate::ok(
        Command::new(podman)
            .args(["save", "--quiet", "--format", "oci-archive", "-o"])
            .arg(out)
            .arg(reference),
    )?;
    println!("xtask image: wrote {} ({reference})", out.display());
    Ok(())
}

fn which_podman() -> Result<PathBuf> {
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("podman"))
        .find(|p| p.is_file());
    found.context("podman is not installed: run `cargo xtask setup` (Debian's podman) as root")
}

/// `apt-get download`s [`BASE_PACKAGES`] into `dir` once (kept there for the
/// next build) and returns the .deb files.
fn download_debs(dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let find = |pkg: &str| -> Result<Option<PathBuf>> {
        for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
            let path = entry?.path();
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if name.starts_with(&format!("{pkg}_")) && name.ends_with(".deb") {
                return Ok(Some(path));
            }
        }
        Ok(None)
    };
    let missing: Vec<&str> = BASE_PACKAGES
        .iter()
        .copied()
        .filter(|p| find(p).ok().flatten().is_none())
        .collect();
    if !missing.is_empty() {
        let download = || crate::ok(Command::new("apt-get").current_dir(dir).arg("download").args(&missing));
        if download().is_err() {
            crate::ok(Command::new("apt-get").args(["update", "-q"]))
                .context("apt-get update (for apt-get download of the image's base packages)")?;
            download()?;
        }
    }
    BASE_PACKAGES
        .iter()
        .map(|p| find(p)?.with_context(|| format!("apt-get download left no {p} .deb in {}", dir.display())))
        .collect()
}

/// What dpkg's maintainer scripts and a base system would have added to the
/// unpacked packages: users, name service, the CA bundle, writable places.
fn finish_rootfs(root: &Path) -> Result<()> {
    let write = |rel: &str, body: &[u8]| -> Result<()> {
        let path = root.join(rel);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        std::fs::write(&path, body).with_context(|| format!("writing {}", path.display()))
    };
    write("etc/passwd", PASSWD.as_bytes())?;
    write("etc/group", GROUP.as_bytes())?;
    write("etc/nsswitch.conf", NSSWITCH.as_bytes())?;
    // update-ca-certificates: every certificate of the package, in name order.
    let certs = root.join("usr/share/ca-certificates");
    let mut pems = Vec::new();
    collect_files(&certs, &mut pems)?;
    pems.retain(|p| p.extension().is_some_and(|e| e == "crt"));
    pems.sort();
    ensure!(
        !pems.is_empty(),
        "ca-certificates unpacked no certificates under {}",
        certs.display()
    );
    let mut bundle = Vec::new();
    for pem in &pems {
        let body = std::fs::read(pem).with_context(|| format!("reading {}", pem.display()))?;
        bundle.extend_from_slice(&body);
        if !body.ends_with(b"\n") {
            bundle.push(b'\n');
        }
    }
    write("etc/ssl/certs/ca-certificates.crt", &bundle)?;
    // The loader and libc the binaries' PT_INTERP and DT_NEEDED name.
    for lib in ["lib64/ld-linux-x86-64.so.2", "lib/x86_64-linux-gnu/libc.so.6"] {
        ensure!(root.join(lib).exists(), "the unpacked base has no /{lib}");
    }
    use std::os::unix::fs::PermissionsExt as _;
    for (dir, mode) in [
        ("tmp", 0o1777),
        ("var/lib/graydar", 0o755),
        ("etc/graydar", 0o755),
        ("root", 0o700),
    ] {
        let path = root.join(dir);
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("chmod {}", path.display()))?;
    }
    Ok(())
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            collect_files(&path, out)?;
        } else {
            out.push(path);
        }
    }
    Ok(())
}

fn copy_tree(src: &Path, dst: &Path) -> Result<()> {
    std::fs::create_dir_all(dst).with_context(|| format!("creating {}", dst.display()))?;
    for entry in std::fs::read_dir(src).with_context(|| format!("reading {}", src.display()))? {
        let path = entry?.path();
        let to = dst.join(path.file_name().context("a file without a name")?);
        if path.is_dir() {
            copy_tree(&path, &to)?;
        } else {
            std::fs::copy(&path, &to).with_context(|| format!("copying {}", path.display()))?;
        }
    }
    Ok(())
}

fn git(ws: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git").current_dir(ws).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        .filter(|s| !s.is_empty())
}

/// `repository` and `license` of the workspace's Cargo.toml, for the image's
/// OCI labels.
fn workspace_metadata(ws: &Path) -> Result<(String, String)> {
    let text = std::fs::read_to_string(ws.join("Cargo.toml")).context("reading Cargo.toml")?;
    let value = |key: &str| -> Result<String> {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{key} = \"")))
            .and_then(|l| l.strip_suffix('"'))
            .map(str::to_owned)
            .with_context(|| format!("Cargo.toml has no workspace {key}"))
    };
    let (source, licenses) = (value("repository")?, value("license")?);
    if source.contains(' ') || licenses.contains('\n') {
        bail!("Cargo.toml's repository {source:?} or license {licenses:?} cannot be a label");
    }
    Ok((source, licenses))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Kubernetes manifests run the image `cargo xtask image` tags.
    #[test]
    fn the_manifests_run_the_image_xtask_image_tags() {
        let ws = crate::workspace_root().expect("workspace");
        for manifest in [
            "deploy/k8s/agent/daemonset.yaml",
            "deploy/k8s/controller/deployment.yaml",
        ] {
            let text = std::fs::read_to_string(ws.join(manifest)).expect("read manifest");
            let images: Vec<&str> = text.lines().filter_map(|l| l.trim().strip_prefix("image: ")).collect();
            assert_eq!(images, vec![image_ref().as_str()], "{manifest}");
        }
        // The overlays re-tag it: same name, same version.
        let overlays = ws.join("deploy/k8s/overlays");
        let mut checked = 0;
        for entry in std::fs::read_dir(&overlays).expect("overlays") {
            let file = entry.expect("entry").path().join("kustomization.yaml");
            let text = std::fs::read_to_string(&file).expect("kustomization");
            for line in text.lines().map(str::trim) {
                if let Some(name) = line.strip_prefix("newName: ") {
                    assert_eq!(name, IMAGE_NAME, "{}", file.display());
                } else if let Some(tag) = line.strip_prefix("newTag: ") {
                    assert_eq!(tag, env!("CARGO_PKG_VERSION"), "{}", file.display());
                    checked += 1;
                }
            }
        }
        assert!(checked >= 4, "every overlay sets the image's tag ({checked} found)");
    }

    #[test]
    fn the_labels_come_from_the_workspace_manifest() {
        let ws = crate::workspace_root().expect("workspace");
        let (source, licenses) = workspace_metadata(&ws).expect("metadata");
        assert!(source.starts_with("https://"), "{source}");
        assert_eq!(licenses, "MIT OR Apache-2.0");
    }
}
