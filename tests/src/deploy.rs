//! Helpers for the deployment checks (tests/tests/deploy_*.rs): paths in the
//! workspace and the tools users run (kubectl, kubernetes-validate, promtool,
//! prometheus, systemd-analyze), each failing loudly with how to install it.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or_else(|| Path::new(".."))
        .to_path_buf()
}

/// cargo (the one running the tests), without the variables cargo set for
/// this test binary: ring's build script reruns when `CARGO_MANIFEST_DIR`
/// changes, and a nested `cargo xtask` that inherits the tests' value
/// rebuilds ring and everything above it (about 30 s), twice.
pub fn cargo() -> Command {
    let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into()));
    for (k, _) in std::env::vars_os() {
        let Some(k) = k.to_str() else { continue };
        if ["CARGO_PKG_", "CARGO_CRATE_", "CARGO_BIN_EXE_", "CARGO_MANIFEST_"]
            .iter()
            .any(|p| k.starts_with(p))
            || matches!(
                k,
                "CARGO_PRIMARY_PACKAGE" | "CARGO_TARGET_TMPDIR" | "CARGO_RUSTC_CURRENT_DIR"
            )
        {
            c.env_remove(k);
        }
    }
    c
}

/// `<workspace>/target`, or `CARGO_TARGET_DIR`.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target"))
}

/// Debian's kubectl (package kubernetes-client), unpacked by `cargo xtask
/// setup` under target/tools (xtask/src/dist.rs says why it is not
/// installed); `GRAYDAR_KUBECTL` overrides.
pub fn kubectl() -> PathBuf {
    if let Some(p) = std::env::var_os("GRAYDAR_KUBECTL") {
        return PathBuf::from(p);
    }
    let p = target_dir().join("tools/kubernetes-client/usr/bin/kubectl");
    assert!(
        p.is_file(),
        "{} is missing: `cargo xtask setup` unpacks Debian's kubernetes-client there",
        p.display()
    );
    p
}

/// Runs `program args...` with stdin from `stdin` (if any) and returns its
/// output; panics when it cannot be started, naming what installs it.
pub fn tool<I, S>(program: impl AsRef<OsStr>, args: I, stdin: Option<&[u8]>) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    use std::io::Write as _;
    let program = program.as_ref();
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| {
        panic!(
            "cannot run {}: {e} (`cargo xtask setup` installs the deployment tools: prometheus (promtool), \
             kubernetes-validate, Debian's kubectl; systemd-analyze comes with systemd)",
            program.to_string_lossy()
        )
    });
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("piped stdin");
        pipe.write_all(input).expect("write to the tool's stdin");
    }
    child.wait_with_output().expect("wait for the tool")
}

/// Like [`tool`], panicking with stdout and stderr unless it exits 0.
pub fn tool_ok<I, S>(program: impl AsRef<OsStr>, args: I, stdin: Option<&[u8]>) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<std::ffi::OsString> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
    let out = tool(program.as_ref(), &args, stdin);
    assert!(
        out.status.success(),
        "`{} {}` failed ({}):\n{}\n{}",
        program.as_ref().to_string_lossy(),
        args.iter().map(|a| a.to_string_lossy()).collect::<Vec<_>>().join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Metric names (`graydar_*`) defined in the agent's and controller's
/// metrics modules, as string literals.
pub fn defined_metric_names() -> Vec<String> {
    let mut names = Vec::new();
    // The game-day service keeps its own (time to detect, runs by outcome).
    for file in [
        "agent/src/metrics.rs",
        "controller/src/metrics.rs",
        "controller/src/gamedays/mod.rs",
    ] {
        let path = workspace().join(file);
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        names.extend(metric_names_in(&text));
    }
    names.sort();
    names.dedup();
    names
}

/// Every `graydar_[a-z0-9_]+` identifier in `text` (PromQL, Rust source).
pub fn metric_names_in(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(pos) = text[i..].find("graydar_") {
        let start = i + pos;
        let boundary = start == 0 || {
            let c = bytes[start - 1];
            !(c.is_ascii_alphanumeric() || c == b'_' || c == b':')
        };
        let mut end = start;
        while end < bytes.len()
            && (bytes[end].is_ascii_lowercase() || bytes[end].is_ascii_digit() || bytes[end] == b'_')
        {
            end += 1;
        }
        // A recording rule name (`a:graydar_x:b`) is not a metric of ours.
        let recorded = end < bytes.len() && bytes[end] == b':';
        if boundary && !recorded {
            out.push(text[start..end].to_owned());
        }
        i = end.max(start + 1);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_metric_names_but_not_recording_rules() {
        let q = r#"sum(rate(graydar_nic_drops_total{a="b"}[5m])) / interface:graydar_kernel_drops:rate5m + graydar_x_bucket"#;
        assert_eq!(metric_names_in(q), vec!["graydar_nic_drops_total", "graydar_x_bucket"]);
    }
}
