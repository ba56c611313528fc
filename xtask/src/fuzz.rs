//! `cargo xtask fuzz`: every cargo-fuzz target of `fuzz/` for a bounded
//! time, from its committed seed corpus (docs/src/development.md, "Fuzzing").
//!
//! The targets are the `[[bin]]`s of fuzz/Cargo.toml. They are built once
//! (nightly, no sanitizer: the parsers are safe Rust, and an ASan build of
//! the agent's dependencies takes far longer on CI's two CPUs), then each runs
//! for `seconds` on a working copy of its seeds under target/fuzz/corpus/
//! (what it finds stays out of the repository). A crash, a timeout or a
//! memory blow-up fails the run, naming the target and the input libFuzzer
//! saved under target/fuzz/artifacts/<target>/.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context as _, Result, bail};

/// cargo-fuzz version `cargo xtask setup` installs.
pub const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// Seconds per target in the unit tier of `cargo xtask test`: 13 targets at
/// 15 s took 221 s on a 2-CPU machine with the build done; 10 s keeps the
/// whole ladder under an hour on a fresh machine (`cargo xtask fuzz`
/// fuzzes longer).
pub const UNIT_TIER_SECONDS: u64 = 10;

/// Default seconds per target of `cargo xtask fuzz`.
pub const DEFAULT_SECONDS: u64 = 20;

fn installed_version() -> Option<String> {
    crate::output_of(Command::new("cargo").args(["fuzz", "--version"]))
}

/// Installs the pinned cargo-fuzz when it is missing or another version.
pub fn setup() -> Result<Option<String>> {
    if installed_version().is_some_and(|v| v.contains(CARGO_FUZZ_VERSION)) {
        return Ok(None);
    }
    println!("xtask setup: installing cargo-fuzz {CARGO_FUZZ_VERSION} (about 1 minute)...");
    crate::ok(Command::new("cargo").args(["install", &format!("cargo-fuzz@{CARGO_FUZZ_VERSION}"), "--locked"]))?;
    Ok(Some(format!("installed cargo-fuzz {CARGO_FUZZ_VERSION}")))
}

/// The `[[bin]]` names of fuzz/Cargo.toml, in file order.
pub fn targets(manifest: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_bin = false;
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            in_bin = line == "[[bin]]";
            continue;
        }
        if in_bin
            && let Some(v) = line.strip_prefix("name").map(str::trim_start)
            && let Some(v) = v.strip_prefix('=')
        {
            out.push(v.trim().trim_matches('"').to_owned());
        }
    }
    out
}

/// Which targets to run: all, or those named by `--only` (an unknown name is an error).
pub fn select(all: &[String], only: &[String]) -> Result<Vec<String>> {
    if only.is_empty() {
        return Ok(all.to_vec());
    }
    if let Some(bad) = only.iter().find(|o| !all.contains(o)) {
        bail!("no fuzz target {bad:?}; the targets are: {}", all.join(", "));
    }
    Ok(all.iter().filter(|t| only.contains(t)).cloned().collect())
}

fn copy_dir(from: &Path, to: &Path) -> Result<usize> {
    std::fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
    let mut n = 0;
    for entry in std::fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name()))
                .with_context(|| format!("copying {}", entry.path().display()))?;
            n += 1;
        }
    }
    Ok(n)
}

/// `cargo +nightly fuzz <sub>` with the options build and run must share
/// (or `run` rebuilds everything).
fn fuzz_cmd(ws: &Path, sub: &str, target_dir: &Path) -> Command {
    let mut c = Command::new("cargo");
    c.current_dir(ws)
        .args(["+nightly", "fuzz", sub, "--sanitizer", "none", "--target-dir"])
        .arg(target_dir);
    c
}

/// Builds every target, then runs the selected ones for `seconds` each.
pub fn run(ws: &Path, seconds: u64, only: &[String]) -> Result<()> {
    let started = Instant::now();
    match installed_version() {
        Some(v) if v.contains(CARGO_FUZZ_VERSION) => {}
        Some(v) => bail!(
            "fuzzing needs cargo-fuzz {CARGO_FUZZ_VERSION}, found {:?}: run `cargo xtask setup`",
            v.trim()
        ),
        None => bail!("cargo-fuzz is not installed (fuzzing needs {CARGO_FUZZ_VERSION}): run `cargo xtask setup`"),
    }
    let manifest_path = ws.join("fuzz/Cargo.toml");
    let manifest =
        std::fs::read_to_string(&manifest_path).with_context(|| format!("reading {}", manifest_path.display()))?;
    let all = targets(&manifest);
    if all.is_empty() {
        bail!("{} lists no [[bin]] fuzz targets", manifest_path.display());
    }
    let chosen = select(&all, only)?;
    let target_dir = ws.join("target/fuzz");
    println!(
        "fuzz: building {} target(s) (nightly, cargo-fuzz, no sanitizer)",
        all.len()
    );
    crate::ok(&mut fuzz_cmd(ws, "build", &target_dir))?;
    let built = started.elapsed();
    let mut failed = Vec::new();
    for t in &chosen {
        let seeds = ws.join("fuzz/corpus").join(t);
        let corpus = target_dir.join("corpus").join(t);
        let artifacts = target_dir.join("artifacts").join(t);
        let n = copy_dir(&seeds, &corpus).with_context(|| format!("fuzz target {t}: seed corpus"))?;
        if n == 0 {
            bail!("fuzz target {t}: no seeds in {}", seeds.display());
        }
        // Anything in here afterwards is from this run.
        if artifacts.exists() {
            std::fs::remove_dir_all(&artifacts).with_context(|| format!("clearing {}", artifacts.display()))?;
        }
        std::fs::create_dir_all(&artifacts)?;
        println!("\n==> fuzz {t}: {seconds}s from {n} seed(s)");
        let t0 = Instant::now();
        let status = crate::status(fuzz_cmd(ws, "run", &target_dir).arg(t).arg(&corpus).args([
            "--".to_owned(),
            format!("-max_total_time={seconds}"),
            // libFuzzer wants the trailing slash: it is a prefix.
            format!("-artifact_prefix={}/", artifacts.display()),
            "-timeout=10".to_owned(),
            "-rss_limit_mb=2048".to_owned(),
            "-print_final_stats=1".to_owned(),
        ]))?;
        let found: Vec<PathBuf> = std::fs::read_dir(&artifacts)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        if status.success() && found.is_empty() {
            println!("fuzz {t}: ok ({:.0?})", t0.elapsed());
            continue;
        }
        let what = if found.is_empty() {
            format!(
                "{status} with no saved input (a build error, or a failure outside the target: see its output above)"
            )
        } else {
            found
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        failed.push(format!(
            "{t}: {what} (reproduce: cargo +nightly fuzz run -s none {t} <input>; then add the input as a unit test \
             next to the parser)"
        ));
    }
    println!(
        "\nfuzz: {} target(s) in {:.0?} ({:.0?} building)",
        chosen.len(),
        started.elapsed(),
        built
    );
    if !failed.is_empty() {
        bail!(
            "fuzzing found {} failing target(s):\n  {}",
            failed.len(),
            failed.join("\n  ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_the_bin_sections() {
        let m = "[package]\nname = \"graydar-fuzz\"\n\n[[bin]]\nname = \"a\"\npath = \"x\"\n\n[dependencies]\nname = \"no\"\n\n[[bin]]\nname=\"b\"\n";
        assert_eq!(targets(m), ["a", "b"]);
    }

    #[test]
    fn only_names_known_targets() {
        let all = vec!["a".to_owned(), "b".to_owned(), "c".to_owned()];
        assert_eq!(select(&all, &[]).expect("all"), all);
        assert_eq!(select(&all, &["c".into(), "a".into()]).expect("two"), ["a", "c"]);
        let e = select(&all, &["zz".into()]).expect_err("unknown").to_string();
        assert!(e.contains("\"zz\"") && e.contains("a, b, c"), "{e}");
    }

    /// Every target has a source file, a committed seed corpus and a line in
    /// the development guide; every source file is a target.
    #[test]
    fn every_target_has_its_source_seeds_and_documentation() {
        let ws = crate::workspace_root().expect("workspace");
        let manifest = std::fs::read_to_string(ws.join("fuzz/Cargo.toml")).expect("fuzz/Cargo.toml");
        let all = targets(&manifest);
        assert!(all.len() >= 10, "{all:?}");
        let guide = std::fs::read_to_string(ws.join("docs/src/development.md")).expect("development.md");
        for t in &all {
            assert!(ws.join(format!("fuzz/fuzz_targets/{t}.rs")).is_file(), "{t}: no source");
            let seeds = std::fs::read_dir(ws.join("fuzz/corpus").join(t))
                .map(|d| d.count())
                .unwrap_or(0);
            assert!(seeds > 0, "{t}: no seed corpus in fuzz/corpus/{t}");
            assert!(guide.contains(&format!("`{t}`")), "{t}: not in docs/src/development.md");
        }
        for f in std::fs::read_dir(ws.join("fuzz/fuzz_targets")).expect("fuzz_targets") {
            let name = f.expect("entry").file_name().to_string_lossy().into_owned();
            let stem = name.strip_suffix(".rs").expect("only .rs files");
            assert!(all.iter().any(|t| t == stem), "fuzz_targets/{name} is not a [[bin]]");
        }
    }
}
