//! `cargo xtask dist`: the tarball installs into a temporary root with its
//! one documented command (`install.sh`, with DESTDIR), the installed binaries
//! run `--version`, the installed configs are accepted by the installed
//! binaries, a second install keeps the admin's files, and the installed
//! units pass `systemd-analyze verify` against the installed binaries.
//!
//! Builds with `--profile dev` (the release build is the same code, slower).

use std::path::{Path, PathBuf};
use std::process::Command;

use graydar_tests::deploy::{cargo, tool, tool_ok, workspace};

fn dist(out: &Path) -> PathBuf {
    let status = cargo()
        .current_dir(workspace())
        .args([
            "run",
            "-q",
            "-p",
            "xtask",
            "--",
            "dist",
            "--profile",
            "dev",
            "--out-dir",
        ])
        .arg(out)
        .status()
        .expect("run cargo xtask dist");
    assert!(status.success(), "cargo xtask dist failed: {status}");
    let tarballs: Vec<PathBuf> = std::fs::read_dir(out)
        .expect("read out dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().ends_with("-linux.tar.gz"))
        .collect();
    assert_eq!(tarballs.len(), 1, "one tarball expected: {tarballs:?}");
    tarballs[0].clone()
}

#[test]
fn dist_tarball_installs_into_a_temp_root_and_runs() {
    let tmp = tempfile::Builder::new()
        .prefix("graydar-dist")
        .tempdir()
        .expect("temp dir");
    let tarball = dist(&tmp.path().join("out"));
    let name = tarball
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_suffix(".tar.gz"))
        .expect("tarball name")
        .to_owned();
    let version = env!("CARGO_PKG_VERSION");
    assert!(name.starts_with(&format!("graydar-{version}-")), "{name}");

    // Root-owned, reproducible entries.
    let listing = tool_ok("tar", [std::ffi::OsStr::new("-tvzf"), tarball.as_os_str()], None);
    let listing = String::from_utf8_lossy(&listing.stdout).into_owned();
    for want in [
        "bin/graydar-agent",
        "bin/graydar-controller",
        "bin/graydar",
        "systemd/graydar-agent.service",
        "systemd/graydar-controller.service",
        "etc/agent.toml",
        "etc/controller.toml",
        "runbooks/nic-drops.md",
        "prometheus/graydar.rules.yml",
        "grafana/graydar.json",
        "install.sh",
        "share/man/man1/graydar.1",
        "share/man/man1/graydar-fault-apply.1",
        "share/bash-completion/completions/graydar",
        "share/zsh/site-functions/_graydar",
        "share/fish/vendor_completions.d/graydar.fish",
    ] {
        assert!(
            listing.contains(&format!("{name}/{want}")),
            "{want} missing from the tarball:\n{listing}"
        );
    }
    assert!(
        listing.lines().all(|l| l.contains(" 0/0 ")),
        "entries not root-owned:\n{listing}"
    );

    // The documented command, with DESTDIR instead of sudo.
    let unpack = tmp.path().join("unpack");
    std::fs::create_dir_all(&unpack).expect("mkdir");
    tool_ok(
        "tar",
        [
            std::ffi::OsStr::new("-xzf"),
            tarball.as_os_str(),
            "-C".as_ref(),
            unpack.as_os_str(),
        ],
        None,
    );
    let root = tmp.path().join("root");
    let install = unpack.join(&name).join("install.sh");
    let out = Command::new(&install)
        .env("DESTDIR", &root)
        .output()
        .expect("run install.sh");
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "install.sh failed: {said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains(&format!("installed graydar-agent {version}")), "{said}");

    let bin = |b: &str| root.join("usr/local/bin").join(b);
    for b in ["graydar-agent", "graydar-controller", "graydar"] {
        let out = tool_ok(bin(b), ["--version"], None);
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(text.trim(), format!("{b} {version}"), "{b} --version");
    }
    // The installed example configs are accepted by the installed binaries.
    let etc = root.join("etc/graydar");
    tool_ok(
        bin("graydar-agent"),
        [
            std::ffi::OsStr::new("--config"),
            etc.join("agent.toml").as_os_str(),
            "--print-config".as_ref(),
        ],
        None,
    );
    let tokens = etc.join("tokens");
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&tokens).expect("tokens").permissions());
    assert_eq!(mode & 0o777, 0o600, "tokens must be root-only");
    let tokens_text = std::fs::read_to_string(&tokens).expect("read tokens");
    for role in ["agent:", "viewer:", "operator:"] {
        assert!(
            tokens_text
                .lines()
                .any(|l| l.starts_with(role) && l.len() == role.len() + 64),
            "{role} token"
        );
    }
    // The agent's controller token (LoadCredential=controller-token:/etc/graydar/agent.token
    // in the agent unit): root-only, the agent token of `tokens`.
    let agent_token = etc.join("agent.token");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&agent_token).expect("agent.token").permissions());
    assert_eq!(mode & 0o777, 0o600, "agent.token must be root-only");
    let agent_token_text = std::fs::read_to_string(&agent_token).expect("read agent.token");
    assert!(
        tokens_text.lines().any(|l| l == format!("agent:{agent_token_text}")),
        "agent.token should hold the agent token of /etc/graydar/tokens"
    );
    tool_ok(
        bin("graydar-controller"),
        [
            std::ffi::OsStr::new("--config"),
            etc.join("controller.toml").as_os_str(),
            "--tokens-file".as_ref(),
            tokens.as_os_str(),
            "--print-config".as_ref(),
        ],
        None,
    );
    for f in [
        "usr/local/share/doc/graydar/runbooks/nic-drops.md",
        "usr/local/share/graydar/prometheus/graydar.rules.yml",
        "usr/local/share/graydar/grafana/graydar.json",
        "usr/local/share/man/man1/graydar.1",
        "usr/local/share/man/man1/graydar-gameday-run.1",
        "usr/local/share/bash-completion/completions/graydar",
        "usr/local/share/zsh/site-functions/_graydar",
        "usr/local/share/fish/vendor_completions.d/graydar.fish",
    ] {
        assert!(root.join(f).is_file(), "{f} not installed");
    }
    // The installed man page and bash completion are the CLI's own.
    let page = std::fs::read_to_string(root.join("usr/local/share/man/man1/graydar-fault-apply.1")).expect("man page");
    assert!(page.contains(".TH") && page.contains("dm\\-device"), "{page}");
    let bash = std::fs::read_to_string(root.join("usr/local/share/bash-completion/completions/graydar"))
        .expect("bash completion");
    assert!(bash.contains("complete") && bash.contains("gameday"), "{bash}");

    // Installing again keeps the admin's config and tokens.
    std::fs::write(etc.join("agent.toml"), "# mine\n").expect("edit config");
    let out = Command::new(&install)
        .env("DESTDIR", &root)
        .output()
        .expect("run install.sh again");
    assert!(out.status.success());
    assert_eq!(
        std::fs::read_to_string(etc.join("agent.toml")).expect("read"),
        "# mine\n"
    );
    assert!(
        etc.join("agent.toml.new").is_file(),
        "the shipped config should land as agent.toml.new"
    );
    assert_eq!(
        std::fs::read_to_string(&tokens).expect("read"),
        tokens_text,
        "tokens must not change"
    );
    assert_eq!(
        std::fs::read_to_string(&agent_token).expect("read"),
        agent_token_text,
        "agent.token must not change"
    );

    // The installed units against the installed binaries.
    let units = Path::new("/usr/lib/systemd/system");
    std::fs::create_dir_all(root.join("usr/lib/systemd")).expect("mkdir");
    tool_ok(
        "cp",
        [
            std::ffi::OsStr::new("-a"),
            units.as_os_str(),
            root.join("usr/lib/systemd").as_os_str(),
        ],
        None,
    );
    for unit in ["graydar-agent.service", "graydar-controller.service"] {
        let path = root.join("usr/local/lib/systemd/system").join(unit);
        let out = tool(
            "systemd-analyze",
            [
                format!("--root={}", root.display()),
                "verify".into(),
                path.to_string_lossy().into_owned(),
            ],
            None,
        );
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && text.trim().is_empty(),
            "systemd-analyze verify {unit}:\n{text}"
        );
    }
}
