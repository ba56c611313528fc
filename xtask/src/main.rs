//! `cargo xtask`: set up a machine, run graydar, test every tier, build the docs, benchmark.

mod bench;
mod bench_controller;
mod bench_cost;
mod bench_detection;
mod bench_fault_latency;
mod bench_faults;
mod bench_idle_cpus;
mod bench_safety;
mod dist;
mod docs;
mod fuzz;
mod image;
#[cfg(test)]
mod layers;
mod run;
mod vm;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "graydar developer tasks")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what this machine lacks (idempotent): nightly rust-src, bpf-linker 0.10.4, cargo-fuzz 0.13.2, mdBook, Debian packages.
    Setup,
    /// Build and start the controller and the agent (registered, reporting) on this host; Ctrl-C stops both.
    Run {
        /// Extra arguments passed to graydar-agent (after `--`).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Run every test tier in order: unit, root/netns, VM. Fails if a tier fails or cannot run.
    Test {
        /// Run only these tiers; default all. An unknown name is an error.
        #[arg(long, value_delimiter = ',', value_enum)]
        tier: Vec<Tier>,
    },
    /// Build the user documentation (docs/, mdBook) into docs/book and check every link.
    Docs,
    /// Run every cargo-fuzz target of fuzz/ for a bounded time from its seed corpus; fails on any crash.
    Fuzz {
        /// Seconds per target (the unit tier of `cargo xtask test` uses 15).
        #[arg(long, default_value_t = fuzz::DEFAULT_SECONDS)]
        seconds: u64,
        /// Run only these targets (the `[[bin]]` names of fuzz/Cargo.toml); default all.
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
    },
    /// Boot the test VM and run the VM test tier, some of its test targets, or a shell command inside it.
    Vm {
        /// Shell command to run in the guest; default: the VM test tier.
        #[arg(long, conflicts_with = "test")]
        cmd: Option<String>,
        /// Virtual CPUs of the guest for `--cmd` (the test tier always uses 2).
        #[arg(long, default_value_t = vm::DEFAULT_CPUS, requires = "cmd")]
        cpus: u32,
        /// Run only these VM test targets (vm, vm_faults, vm_fault_safety, vm_paths, vm_gamedays, vm_rings), built with what they run.
        #[arg(long, value_delimiter = ',')]
        test: Vec<String>,
        /// Arguments for the test binaries after `--` (a test name filter, `--exact`).
        #[arg(last = true, requires = "test")]
        libtest_args: Vec<String>,
    },
    /// Benchmarks (figures as ratios against a baseline measured in the same run).
    Bench {
        /// Seconds of idle measurement for the agent's CPU and memory.
        #[arg(long, default_value_t = 60)]
        idle_seconds: u64,
        /// Run only these parts (drops, idle, idle-cpus, fsync, incast, faults, fault-latency, safety, detection,
        /// cost); default all but safety, detection and cost.
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
        /// Controller load test instead: simulated agent counts, e.g. 1000,10000.
        #[arg(long, value_delimiter = ',')]
        controller_agents: Vec<usize>,
        /// Seconds of controller load per agent count.
        #[arg(long, default_value_t = 30)]
        controller_seconds: u64,
        /// Controller load: the stores to measure, each with every agent count (sqlite, postgres,
        /// postgres-N: N replicas on one throwaway PostgreSQL cluster).
        #[arg(long, value_delimiter = ',', default_value = "sqlite")]
        controller_stores: Vec<String>,
        /// Controller load: pin the controllers and PostgreSQL to these CPUs (e.g. 0 or 0-1).
        #[arg(long)]
        controller_cpus: Option<String>,
        /// Controller load: pin the load generator to these CPUs (e.g. 1 or 2-15).
        #[arg(long)]
        generator_cpus: Option<String>,
        /// `detection`: runs per library game day (default 20, 3 with --quick).
        #[arg(long)]
        detection_runs: Option<usize>,
        /// `detection`: minutes of the quiet soak (default 30, 5 with --quick).
        #[arg(long)]
        soak_minutes: Option<u64>,
        /// `detection`: 3 runs per game day and a 5-minute soak.
        #[arg(long)]
        quick: bool,
    },
    /// Build the install tarball (binaries, systemd units, configs, runbooks, rules, dashboard).
    Dist {
        /// Cargo profile to build with (`dev` for a quick test tarball).
        #[arg(long, default_value = "release")]
        profile: String,
        /// Where to write the tarball (default target/dist).
        #[arg(long)]
        out_dir: Option<PathBuf>,
        /// Also build the container image (as `cargo xtask image`) and write it beside the
        /// tarball as an OCI archive (graydar-<version>-<arch>-image.oci.tar).
        #[arg(long)]
        image: bool,
    },
    /// Build the container image with podman, offline (no registry): Debian's libc6, libgcc-s1 and
    /// ca-certificates unpacked into a distroless-style root, the agent, controller and CLI.
    Image {
        /// Cargo profile to build the binaries with (`dev` for a quick test image).
        #[arg(long, default_value = "release")]
        profile: String,
        /// Tag the image with this reference instead of the one the manifests run.
        #[arg(long)]
        tag: Option<String>,
        /// Also write the image to this file as an OCI archive (`podman save --format oci-archive`).
        #[arg(long)]
        oci_archive: Option<PathBuf>,
        /// Print the reference the image is tagged with (what deploy/k8s runs) and exit.
        #[arg(long, conflicts_with_all = ["profile", "tag", "oci_archive"])]
        print_ref: bool,
    },
}

/// A test tier (`cargo xtask test --tier`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Tier {
    /// Unit and in-process tests, clippy, the book.
    Unit,
    /// Root: network namespaces, real eBPF, real processes.
    Netns,
    /// Root: the QEMU VM with Debian's kernel.
    Vm,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let ws = workspace_root()?;
    match cli.cmd {
        Cmd::Setup => setup(true),
        Cmd::Run { args } => {
            setup(false)?;
            run(&ws, &args)
        }
        Cmd::Test { tier } => {
            check_disk(&ws, TEST_DISK_GIB)?;
            setup(false)?;
            test(&ws, &tier)
        }
        Cmd::Docs => docs::build_and_check(&ws),
        Cmd::Fuzz { seconds, only } => {
            setup(false)?;
            fuzz::run(&ws, seconds, &only)
        }
        Cmd::Vm {
            cmd,
            cpus,
            test,
            libtest_args,
        } => {
            setup(false)?;
            let cache = vm::default_cache(&ws);
            match cmd {
                Some(c) => vm::run_command(&ws, &cache, &c, cpus),
                None if !test.is_empty() => {
                    let targets: Vec<&str> = test.iter().map(String::as_str).collect();
                    vm::run_test_targets(&ws, &cache, &targets, &libtest_args, &[]).map(drop)
                }
                None => vm::run_tests(&ws, &cache),
            }
        }
        Cmd::Bench {
            idle_seconds,
            only,
            controller_agents,
            controller_seconds,
            controller_stores,
            controller_cpus,
            generator_cpus,
            detection_runs,
            soak_minutes,
            quick,
        } => {
            setup(false)?;
            if controller_agents.is_empty() {
                let detection = bench::Detection {
                    runs: detection_runs.unwrap_or(if quick {
                        bench_detection::QUICK_RUNS
                    } else {
                        bench_detection::RUNS
                    }),
                    soak_seconds: soak_minutes.map_or(
                        if quick {
                            bench_detection::QUICK_SOAK_SECONDS
                        } else {
                            bench_detection::SOAK_SECONDS
                        },
                        |m| m * 60,
                    ),
                };
                bench::run(&ws, idle_seconds, &only, detection)
            } else {
                let stores = controller_stores
                    .iter()
                    .map(|s| bench_controller::StoreKind::parse(s))
                    .collect::<anyhow::Result<Vec<_>>>()?;
                let pinning = bench_controller::Pinning {
                    controller: controller_cpus
                        .as_deref()
                        .map(bench_controller::parse_cpus)
                        .transpose()?,
                    generator: generator_cpus
                        .as_deref()
                        .map(bench_controller::parse_cpus)
                        .transpose()?,
                };
                bench_controller::run(&ws, &controller_agents, controller_seconds, &stores, &pinning)
            }
        }
        Cmd::Dist {
            profile,
            out_dir,
            image,
        } => {
            let tarball = dist::run(&ws, &profile, out_dir)?;
            if image {
                let built = image::build(&ws, &profile, None)?;
                let dir = tarball.parent().context("tarball without a directory")?;
                let name = format!(
                    "graydar-{}-{}-image.oci.tar",
                    env!("CARGO_PKG_VERSION"),
                    std::env::consts::ARCH
                );
                image::export(&built.reference, &dir.join(name))?;
            }
            Ok(())
        }
        Cmd::Image {
            profile,
            tag,
            oci_archive,
            print_ref,
        } => {
            if print_ref {
                println!("{}", image::image_ref());
                return Ok(());
            }
            let built = image::build(&ws, &profile, tag.as_deref())?;
            match oci_archive {
                Some(path) => image::export(&built.reference, &path),
                None => Ok(()),
            }
        }
    }
}

pub fn workspace_root() -> Result<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    dir.parent()
        .map(Path::to_path_buf)
        .context("xtask has no parent directory")
}

/// The target directory: `$CARGO_TARGET_DIR`, else `<workspace>/target`.
pub fn target_dir(ws: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| ws.join("target"), PathBuf::from)
}

pub fn status(cmd: &mut Command) -> Result<ExitStatus> {
    cmd.status().with_context(|| format!("running {cmd:?}"))
}

pub(crate) fn ok(cmd: &mut Command) -> Result<()> {
    let s = status(cmd)?;
    if !s.success() {
        bail!("{cmd:?} failed: {s}");
    }
    Ok(())
}

fn output_of(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Debian packages the test tiers and the VM need.
pub const APT_PACKAGES: &[&str] = &[
    "iproute2",                 // ip, tc: test topologies
    "nftables",                 // nft: drops in the netns tier
    "iputils-ping",             // ping
    "kmod",                     // depmod/modprobe for the VM kernel
    "qemu-system-x86",          // the VM tier
    "busybox-static",           // the VM's initramfs and poweroff
    "xz-utils",                 // extracting vmlinux from the VM kernel's vmlinuz
    "util-linux",               // setpriv: the unprivileged-agent test
    "chromium",                 // the console's browser test (headless)
    "chromium-driver",          // chromedriver: WebDriver for it
    "libdevmapper-dev",         // devicemapper-sys bindgen headers (dm faults)
    "libclang-dev",             // bindgen
    "pkg-config",               // devicemapper-sys finds libdevmapper
    "dmsetup",                  // device-mapper tables (dm-delay, suspend) in the VM disk tests
    "e2fsprogs",                // mkfs.ext4 for the disk tests
    "openssl",                  // self-signed certificates: tests/tests/controller_tls.rs
    "prometheus",               // prometheus + promtool: deploy/prometheus rules, tests/tests/deploy_prometheus.rs
    "python3-venv",             // the virtual environment of schemathesis (tests/tests/controller_schemathesis.rs)
    "podman",                   // cargo xtask image; tests/tests/deploy_image.rs builds and runs it
    "runc",                     // podman's runtime on hosts with cgroup v1 or hybrid (crun refuses hybrid)
    "prometheus-node-exporter", // cargo xtask bench --only cost: graydar beside node_exporter
    "postgresql",               // initdb, pg_ctl: the PostgreSQL store's tests start throwaway clusters
];

const BPF_LINKER_VERSION: &str = "0.10.4";

/// Idempotent: checks each piece and installs only what is missing.
/// `verbose` prints what was already there too.
fn setup(verbose: bool) -> Result<()> {
    let mut did = Vec::new();
    // 1. nightly toolchain with rust-src (the eBPF crate builds core from source).
    let installed =
        output_of(Command::new("rustup").args(["component", "list", "--toolchain", "nightly", "--installed"]));
    match installed {
        Some(list) if list.lines().any(|l| l.starts_with("rust-src")) => {}
        Some(_) => {
            ok(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))?;
            did.push("added rust-src to the nightly toolchain".to_owned());
        }
        None => {
            ok(Command::new("rustup").args([
                "toolchain",
                "install",
                "nightly",
                "--profile",
                "minimal",
                "--component",
                "rust-src",
            ]))?;
            did.push("installed the nightly toolchain with rust-src".to_owned());
        }
    }
    // 2. bpf-linker, the version that uses rustc's LLVM 22 (0.11+ wants LLVM 23).
    let have = output_of(Command::new("bpf-linker").arg("--version")).unwrap_or_default();
    if !have.contains(BPF_LINKER_VERSION) {
        println!("xtask setup: installing bpf-linker {BPF_LINKER_VERSION} (about 4 minutes)...");
        ok(Command::new("cargo").args(["install", &format!("bpf-linker@{BPF_LINKER_VERSION}"), "--locked"]))?;
        did.push(format!("installed bpf-linker {BPF_LINKER_VERSION}"));
    }
    // 3. mdBook for the user documentation (docs/), cargo-fuzz for `cargo xtask fuzz`.
    did.extend(docs::setup()?);
    did.extend(fuzz::setup()?);
    // 4. Debian packages.
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| {
            output_of(Command::new("dpkg-query").args(["-W", "-f=${Status}", p]))
                .is_none_or(|s| !s.contains("install ok installed"))
        })
        .collect();
    if !missing.is_empty() {
        if !is_root() {
            bail!("missing Debian packages {missing:?}; run `cargo xtask setup` as root (apt-get needs it)");
        }
        ok(Command::new("apt-get").args(["update", "-q"]))?;
        ok(Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
        did.push(format!("installed Debian packages: {}", missing.join(" ")));
    }
    // 5. Deployment checks: Debian's kubectl (unpacked), kubernetes-validate (pip);
    //    schemathesis (pip, its own virtual environment) for the API fuzzing test.
    did.extend(dist::setup_tools(&workspace_root()?)?);
    if did.is_empty() {
        if verbose {
            println!(
                "xtask setup: everything is already installed (nightly rust-src, bpf-linker {BPF_LINKER_VERSION}, \
                 mdbook {}, cargo-fuzz {}, {})",
                docs::MDBOOK_VERSION,
                fuzz::CARGO_FUZZ_VERSION,
                APT_PACKAGES.join(", ")
            );
        }
    } else {
        for d in &did {
            println!("xtask setup: {d}");
        }
    }
    Ok(())
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// What a clean run of all three tiers writes (target dir incl. the VM image
/// cache: 3.3 GB measured from a fresh clone), with headroom for what
/// `setup` installs on a fresh machine (Debian packages, bpf-linker).
const TEST_DISK_GIB: u64 = 6;

/// Fails before anything is built when the target directory's file system has
/// less free space than a run needs: running out half-way fails with
/// compiler or apt write errors that do not say what is wrong.
fn check_disk(ws: &Path, need_gib: u64) -> Result<()> {
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| ws.join("target"), PathBuf::from);
    let probe = if target.exists() {
        target.clone()
    } else {
        ws.to_path_buf()
    };
    let free = free_bytes(&probe).with_context(|| format!("statvfs {}", probe.display()))?;
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    if free < need_gib.saturating_mul(1 << 30) {
        bail!(
            "only {:.1} GiB free on the file system of {} (needs about {need_gib} GiB for the build, \
             the VM image and the test tiers): free disk space (old checkouts' target/ directories, \
             `cargo clean`) or point CARGO_TARGET_DIR at a larger file system, then rerun",
            gib(free),
            probe.display()
        );
    }
    println!(
        "disk: {:.1} GiB free on the file system of {}",
        gib(free),
        probe.display()
    );
    Ok(())
}

fn free_bytes(path: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: an all-zero statvfs is a valid value of this plain C struct.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path and `st` a valid out-pointer.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(st.f_bavail as u64 * st.f_frsize as u64)
}

/// A random 32-hex-digit token (for the controllers xtask starts).
pub fn token() -> Result<String> {
    let mut buf = [0u8; 16];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut buf)?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// cargo, without the variables cargo sets for the package it runs (xtask
/// itself under `cargo xtask`, a test binary under `cargo test`): some build
/// scripts (ring's) rerun when `CARGO_MANIFEST_DIR` changes, and every crate
/// above them is rebuilt, so a nested build that inherits another package's
/// value rebuilds ~30 s of the workspace and flips it back for the next one.
pub(crate) fn cargo() -> Command {
    let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    for (k, _) in std::env::vars_os() {
        if k.to_str().is_some_and(is_package_var) {
            c.env_remove(&k);
        }
    }
    c
}

/// The variables cargo sets for a package's build script, binary or test.
fn is_package_var(k: &str) -> bool {
    ["CARGO_PKG_", "CARGO_CRATE_", "CARGO_BIN_EXE_", "CARGO_MANIFEST_"]
        .iter()
        .any(|p| k.starts_with(p))
        || matches!(
            k,
            "CARGO_PRIMARY_PACKAGE" | "CARGO_TARGET_TMPDIR" | "CARGO_RUSTC_CURRENT_DIR"
        )
}

fn run(ws: &Path, args: &[String]) -> Result<()> {
    run::run(ws, args)
}

/// The controller's test targets that run on the store `GRAYDAR_TEST_STORE`
/// names (they build their controller with `Api::new`, `Api::with...`):
/// the root tier runs them again on PostgreSQL.
const PG_API_TESTS: &[&str] = &[
    "api",
    "console",
    "faults_api",
    "gameday_runs_api",
    "gamedays_api",
    "paths_api",
];

/// The unit tier's `cargo test` selection; the PostgreSQL rerun of the
/// controller's tests uses it too, so cargo reuses the unit tier's build
/// (a package selection of its own is one more build of the workspace).
const UNIT_TEST_PACKAGES: &[&str] = &[
    "-p",
    "graydar-common",
    "-p",
    "graydar-agent",
    "-p",
    "graydar-controller",
    "-p",
    "xtask",
    "--all-features",
];

/// The agent's and the controller's binaries (with the `graydar` CLI) as the
/// root and VM tiers build them: one selection, one build.
pub const BUILD_BINARIES: &[&str] = &["build", "-p", "graydar-agent", "-p", "graydar-controller"];

fn test(ws: &Path, only: &[Tier]) -> Result<()> {
    let want = |t: Tier| only.is_empty() || only.contains(&t);
    let mut results: Vec<(&str, Result<()>)> = Vec::new();
    if want(Tier::Unit) {
        println!("\n==> tier 1/3: unit");
        let r = ok(cargo().current_dir(ws).arg("test").args(UNIT_TEST_PACKAGES))
            .and_then(|()| ok(cargo().current_dir(ws).args(["test", "-p", "graydar-tests", "--lib"])))
            // Lints as errors on every crate but ebpf (default-members: it builds
            // only for bpfel-unknown-none, through the agent's build script).
            .and_then(|()| {
                ok(cargo()
                    .current_dir(ws)
                    .args(["clippy", "--all-targets", "--all-features", "--", "-D", "warnings"]))
            })
            .and_then(|()| docs::build_and_check(ws))
            // Every parser of network, kernel, file and API input, fuzzed for a
            // bounded time from the committed seeds (docs/src/development.md).
            .and_then(|()| fuzz::run(ws, fuzz::UNIT_TIER_SECONDS, &[]));
        results.push(("unit", r));
    }
    if want(Tier::Netns) {
        println!("\n==> tier 2/3: root/netns");
        let r = if !is_root() {
            Err(anyhow::anyhow!(
                "the root/netns tier needs root (network namespaces, eBPF): run `cargo xtask test` as root"
            ))
        } else {
            ok(cargo().current_dir(ws).args(BUILD_BINARIES))
                .and_then(|()| ok(cargo().current_dir(ws).args(["test", "-p", "graydar-tests", "--tests"])))
                // The controller's API tests again, on PostgreSQL: a throwaway
                // cluster per test (tests/src/pg.rs). The store, replica and
                // copy tests run on PostgreSQL anyway (in the unit tier).
                .and_then(|()| {
                    let mut args = vec!["test"];
                    args.extend(UNIT_TEST_PACKAGES);
                    for t in PG_API_TESTS {
                        args.extend(["--test", t]);
                    }
                    ok(cargo().current_dir(ws).env("GRAYDAR_TEST_STORE", "postgres").args(args))
                })
        };
        results.push(("root/netns", r));
    }
    if want(Tier::Vm) {
        println!("\n==> tier 3/3: VM (QEMU, Debian kernel, software emulation)");
        let r = if !is_root() {
            Err(anyhow::anyhow!(
                "the VM tier needs root (apt-get for the kernel package): run as root"
            ))
        } else {
            vm::run_tests(ws, &vm::default_cache(ws))
        };
        results.push(("VM", r));
    }
    println!("\n==> summary");
    let mut failed = 0;
    for (tier, r) in &results {
        match r {
            Ok(()) => println!("  {tier}: passed"),
            Err(e) => {
                failed += 1;
                println!("  {tier}: FAILED: {e:#}");
            }
        }
    }
    println!("tiers: {} passed, {failed} failed", results.len() - failed);
    if failed > 0 {
        bail!("{failed} test tier(s) failed or could not run");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_cargo_drops_the_running_packages_variables_only() {
        for k in [
            "CARGO_MANIFEST_DIR",
            "CARGO_PKG_NAME",
            "CARGO_CRATE_NAME",
            "CARGO_BIN_EXE_graydar",
            "CARGO_TARGET_TMPDIR",
        ] {
            assert!(is_package_var(k), "{k}");
        }
        for k in [
            "CARGO",
            "CARGO_HOME",
            "CARGO_TARGET_DIR",
            "CARGO_INCREMENTAL",
            "CARGO_TERM_COLOR",
            "PATH",
        ] {
            assert!(!is_package_var(k), "{k}");
        }
    }

    fn tiers(args: &[&str]) -> Result<Vec<Tier>, String> {
        let argv = ["cargo-xtask", "test"].iter().chain(args);
        match Cli::try_parse_from(argv) {
            Ok(Cli {
                cmd: Cmd::Test { tier },
            }) => Ok(tier),
            Ok(_) => Err("not the test command".to_owned()),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Every controller test target that builds its controller on the store
    /// `GRAYDAR_TEST_STORE` names is run again on PostgreSQL, and no other.
    #[test]
    fn the_postgres_rerun_lists_the_tests_that_follow_graydar_test_store() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../controller/tests");
        let mut follow: Vec<String> = std::fs::read_dir(&dir)
            .expect("controller/tests")
            .filter_map(|e| e.ok())
            .filter(|e| e.path().extension().is_some_and(|x| x == "rs"))
            .filter(|e| {
                let text = std::fs::read_to_string(e.path()).unwrap_or_default();
                ["Api::new", "Api::with", "test_store()"]
                    .iter()
                    .any(|m| text.contains(m))
            })
            .filter_map(|e| e.path().file_stem().map(|s| s.to_string_lossy().into_owned()))
            .collect();
        follow.sort();
        let mut listed: Vec<String> = PG_API_TESTS.iter().map(|s| (*s).to_owned()).collect();
        listed.sort();
        assert_eq!(
            follow, listed,
            "PG_API_TESTS vs the tests that use the store GRAYDAR_TEST_STORE names"
        );
    }

    #[test]
    fn test_tiers_are_parsed_and_an_unknown_one_is_an_error_naming_the_valid_ones() {
        assert_eq!(tiers(&[]), Ok(vec![]), "default: all");
        assert_eq!(tiers(&["--tier", "unit"]), Ok(vec![Tier::Unit]));
        assert_eq!(tiers(&["--tier", "vm,netns"]), Ok(vec![Tier::Vm, Tier::Netns]));
        assert_eq!(
            tiers(&["--tier", "unit", "--tier", "vm"]),
            Ok(vec![Tier::Unit, Tier::Vm])
        );
        for bad in [&["--tier", "typo"][..], &["--tier", "unit,typo"]] {
            let e = tiers(bad).expect_err("an unknown tier");
            assert!(
                e.contains("invalid value") && e.contains("[possible values: unit, netns, vm]"),
                "{bad:?}: {e}"
            );
        }
    }

    #[test]
    fn disk_check_names_the_shortfall_and_passes_when_space_is_there() {
        let dir = std::env::temp_dir();
        let free = free_bytes(&dir).expect("statvfs of the temp dir");
        assert!(free > 0);
        // No file system has an exbibyte free: the check must refuse and say why.
        let err = format!("{:#}", check_disk(&dir, 1 << 30).expect_err("1 EiB cannot be free"));
        assert!(err.contains("GiB free on the file system of"), "{err}");
        assert!(err.contains("needs about 1073741824 GiB"), "{err}");
        check_disk(&dir, 0).expect("0 GiB needed is always there");
    }
}
