//! The VM test tier: boot Debian's stock kernel under QEMU (software emulation)
//! and run host-built binaries inside it.
//!
//! The host kernel lacks sch_netem, device-mapper and kprobes, so tests that need
//! them run in a guest. The guest shares the host root filesystem read-only over
//! 9p, puts a tmpfs overlay on top (so `/lib/modules`, `/root`, `/var` are
//! writable), bind-mounts the Debian kernel's modules over `/lib/modules`, then
//! `chroot`s into it: the guest runs the host's own dynamically linked binaries
//! (test executables, the agent, iproute2, kmod) on the Debian 6.1 kernel.
//! See ../shared/notes/kernel-and-vm.md for the measurements behind the choices.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

/// Apt meta-package whose dependency names the current Debian kernel.
const KERNEL_META_PACKAGE: &str = "linux-image-amd64";
/// Statically linked busybox from the `busybox-static` package.
const BUSYBOX: &str = "/bin/busybox";
/// Modules the initramfs needs to mount the host's root over virtio 9p.
const INITRAMFS_MODULES: &[&str] = &["virtio_pci", "9pnet_virtio", "9p", "overlay"];
/// 9p mount tag of the shared host root.
const MOUNT_TAG: &str = "hostroot";
/// Printed by the guest with the command's exit status.
const EXIT_MARKER: &str = "GRAYDAR_VM_EXIT=";
/// Printed by the guest with `uname -r`.
const KERNEL_MARKER: &str = "GRAYDAR_VM_KERNEL=";
/// Hard limit for one boot: QEMU is killed after it. The VM tier takes about
/// 11 min under software emulation (the 50 randomized fault trials alone take
/// 4-10 min), so the limit leaves room without letting a hung guest eat CI.
const VM_TIMEOUT: Duration = Duration::from_secs(35 * 60);

/// What [`prepare`] produced; everything lives under the cache directory.
#[derive(Debug, Clone)]
pub struct VmAssets {
    /// Kernel image to boot: the uncompressed ELF `vmlinux` (PVH entry) when it
    /// could be extracted, otherwise the package's `vmlinuz`.
    pub kernel: PathBuf,
    /// The initramfs (cpio newc): busybox, `/init`, the 9p/overlay modules.
    pub initramfs: PathBuf,
    /// `<extracted package>/lib/modules`, bind-mounted over the guest's `/lib/modules`.
    pub modules_dir: PathBuf,
    /// Kernel release, e.g. `6.1.0-56-amd64`.
    pub kernel_version: String,
}

/// Default cache directory: `vm` in cargo's target directory
/// (`$CARGO_TARGET_DIR`, else `<workspace>/target`), so a second checkout or
/// build directory boots its own initramfs and run scripts.
pub fn default_cache(workspace: &Path) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .filter(|t| !t.is_empty())
        .map_or_else(|| workspace.join("target"), PathBuf::from);
    target.join("vm")
}

/// Downloads and unpacks the Debian kernel (once), then (re)builds the initramfs.
/// Idempotent; a second call does no network access when the kernel is cached.
pub fn prepare(cache: &Path) -> Result<VmAssets> {
    fs::create_dir_all(cache).with_context(|| format!("creating {}", cache.display()))?;
    let cache = fs::canonicalize(cache).with_context(|| format!("resolving {}", cache.display()))?;
    let (package, version) = match kernel_package() {
        Ok(found) => found,
        Err(err) => match cached_kernel(&cache)? {
            Some(found) => {
                eprintln!("vm: apt lookup failed ({err:#}); using cached {}", found.0);
                found
            }
            None => return Err(err),
        },
    };
    let release = package
        .strip_prefix("linux-image-")
        .with_context(|| format!("unexpected kernel package name {package}"))?
        .to_owned();
    let kdir = cache.join(format!("kernel-{release}"));
    let root = kdir.join("root");
    let stamp = kdir.join("ready");
    let wanted_stamp = format!("{package} {version}\n");
    if fs::read_to_string(&stamp).ok().as_deref() != Some(wanted_stamp.as_str()) {
        eprintln!("vm: preparing {package} {version} in {}", kdir.display());
        unpack_kernel(&cache, &kdir, &package, &version, &release)?;
        fs::write(&stamp, &wanted_stamp).with_context(|| format!("writing {}", stamp.display()))?;
        remove_superseded(&cache, &release);
    }
    let vmlinux = kdir.join("vmlinux");
    let kernel = if vmlinux.is_file() {
        vmlinux
    } else {
        root.join("boot").join(format!("vmlinuz-{release}"))
    };
    let modules_dir = root.join("lib").join("modules");
    let initramfs = cache.join(format!("initramfs-{release}.cpio"));
    build_initramfs(&modules_dir.join(&release), &initramfs)?;
    Ok(VmAssets {
        kernel,
        initramfs,
        modules_dir,
        kernel_version: release,
    })
}

/// Boots the VM and runs `cmd` with `/bin/sh` inside the chroot of the host root,
/// from the workspace directory. Fails when the command exits non-zero.
pub fn run_command(workspace: &Path, cache: &Path, cmd: &str, cpus: u32) -> Result<()> {
    run_command_results(workspace, cache, cmd, cpus).map(drop)
}

/// As [`run_command`], and returns what the guest printed on lines that start
/// with `GRAYDAR_RESULT ` (marker removed): how a benchmark in the guest hands
/// its figures back to the host.
pub fn run_command_results(workspace: &Path, cache: &Path, cmd: &str, cpus: u32) -> Result<Vec<String>> {
    let assets = prepare(cache)?;
    let workspace = fs::canonicalize(workspace).with_context(|| format!("resolving {}", workspace.display()))?;
    boot(&assets, &workspace, cmd, &[], cpus)
}

/// Virtual CPUs of the guest unless a caller asks for more (`--cpus`): as many
/// as this project's machines have.
pub const DEFAULT_CPUS: u32 = 2;

/// Test targets of graydar-tests that run inside the VM (all `#[ignore]`d on the host).
const VM_TEST_TARGETS: &[&str] = &[
    "vm",
    "vm_faults",
    "vm_fault_safety",
    "vm_paths",
    "vm_gamedays",
    "vm_rings",
];

/// Builds the guest tests (`VM_TEST_TARGETS`) and the agent, boots the VM and
/// runs the tests inside with `GRAYDAR_VM=1` and `GRAYDAR_AGENT_BIN` set.
///
/// The targets run in two guest boots ([`VM_BOOTS`]): one long-lived guest
/// under emulation for the whole tier once hit a kernel soft lockup after
/// about 16 minutes of load; each boot costs a few seconds.
///
/// A boot whose guest *kernel* fails (a soft lockup panics it, see
/// [`GuestKernelFailed`]) is run once more, loudly: the emulated guest
/// kernel locked up twice in CI (both vCPUs stuck in the kernel for 30
/// minutes, no test failing) and never in a local run. A test failure, or
/// the kernel failing again, fails the tier.
pub fn run_tests(workspace: &Path, cache: &Path) -> Result<()> {
    let started = Instant::now();
    let mut result = Ok(());
    let mut reruns = Vec::new();
    for (i, boot) in VM_BOOTS.iter().enumerate() {
        result = run_test_targets(workspace, cache, boot, &[], &[]).map(drop);
        if let Err(e) = &result
            && let Some(failed) = e.downcast_ref::<GuestKernelFailed>()
        {
            eprintln!(
                "vm: RERUN: the guest kernel failed in boot {} ({}): {failed}; running that boot once more",
                i + 1,
                boot.join(", ")
            );
            reruns.push(format!("boot {} ({failed})", i + 1));
            result = run_test_targets(workspace, cache, boot, &[], &[]).map(drop);
        }
        if result.is_err() {
            break;
        }
    }
    eprintln!("vm: tier finished in {:.1}s", started.elapsed().as_secs_f64());
    if !reruns.is_empty() {
        eprintln!(
            "vm: the guest kernel failed and its boot was rerun: {} (traces in the console output above)",
            reruns.join("; ")
        );
    }
    result
}

/// The guest kernel itself failed (a soft lockup or an oops panicked it, or
/// it reported one and hung): the boot's tests did not fail, they were cut
/// off. Its backtrace is in the console output.
#[derive(Debug)]
pub struct GuestKernelFailed {
    /// The kernel's first failure line on the console.
    pub line: String,
}

impl std::fmt::Display for GuestKernelFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the guest kernel reported {:?}", self.line)
    }
}

impl std::error::Error for GuestKernelFailed {}

/// [`VM_TEST_TARGETS`] split across guest boots (every target exactly once).
/// The second boot is the long one (vm_fault_safety's 50 randomized trials
/// take 4-10 min, the game days several more), so short targets join the first.
const VM_BOOTS: &[&[&str]] = &[
    &["vm", "vm_faults", "vm_paths", "vm_rings"],
    &["vm_fault_safety", "vm_gamedays"],
];

/// Builds the guest test targets `targets` (of `VM_TEST_TARGETS`) and what
/// they run (the agent, the controller and the `graydar` CLI), boots the VM
/// and runs each target inside with `--include-ignored --test-threads=1`
/// then `libtest_args` (a filter, `--exact`), with `GRAYDAR_VM=1`, the
/// binaries' paths and `env` set. Returns the guest's `GRAYDAR_RESULT`
/// lines; fails when a target fails.
pub fn run_test_targets(
    workspace: &Path,
    cache: &Path,
    targets: &[&str],
    libtest_args: &[String],
    env: &[(&str, &str)],
) -> Result<Vec<String>> {
    if let Some(bad) = targets.iter().find(|t| !VM_TEST_TARGETS.contains(t)) {
        bail!(
            "{bad:?} is not a VM test target of graydar-tests (they are {})",
            VM_TEST_TARGETS.join(", ")
        );
    }
    let assets = prepare(cache)?;
    let workspace = fs::canonicalize(workspace).with_context(|| format!("resolving {}", workspace.display()))?;
    let mut args = vec!["test", "-p", "graydar-tests", "--no-run"];
    for t in targets {
        args.extend(["--test", t]);
    }
    let test_bins = cargo_executables(&workspace, &args)?;
    if test_bins.len() != targets.len() {
        bail!(
            "expected {} vm test executables from cargo, got {test_bins:?}",
            targets.len()
        );
    }
    // The agent, the controller and the `graydar` CLI (vm_fault_safety runs
    // the last two in the guest), built as the root tier builds them: one
    // package selection, so cargo reuses that build instead of making two.
    let bins = cargo_executables(&workspace, crate::BUILD_BINARIES)?;
    let find_bin = |name: &str| {
        bins.iter()
            .find(|p| p.file_name().is_some_and(|n| n == name))
            .map(|p| p.to_string_lossy().into_owned())
            .with_context(|| format!("cargo built no {name} executable (got {bins:?})"))
    };
    let agent = find_bin("graydar-agent")?;
    // Every target runs (set -e stops at the first failing one).
    let extra: String = libtest_args.iter().map(|a| format!(" {}", shell_quote(a))).collect();
    let cmd = std::iter::once("set -e".to_owned())
        .chain(test_bins.iter().map(|b| {
            format!(
                "{} --include-ignored --test-threads=1{extra}",
                shell_quote(&b.to_string_lossy())
            )
        }))
        .collect::<Vec<_>>()
        .join("\n");
    let (controller, cli) = (find_bin("graydar-controller")?, find_bin("graydar")?);
    let mut all_env = vec![
        ("GRAYDAR_VM", "1"),
        ("GRAYDAR_AGENT_BIN", agent.as_str()),
        ("GRAYDAR_CONTROLLER_BIN", controller.as_str()),
        ("GRAYDAR_CLI_BIN", cli.as_str()),
    ];
    all_env.extend_from_slice(env);
    boot(&assets, &workspace, &cmd, &all_env, DEFAULT_CPUS)
}

// ---------------------------------------------------------------------------
// Kernel package

/// `(package, version)` of the kernel `linux-image-amd64` depends on, e.g.
/// `("linux-image-6.1.0-56-amd64", "6.1.192-2")`. Runs `apt-get update` once if
/// the apt cache does not know the meta-package.
fn kernel_package() -> Result<(String, String)> {
    match kernel_package_from_apt() {
        Ok(found) => Ok(found),
        Err(first) => {
            eprintln!("vm: {first:#}; running apt-get update");
            run(Command::new("apt-get").args(["update", "-q"]))?;
            kernel_package_from_apt()
        }
    }
}

fn kernel_package_from_apt() -> Result<(String, String)> {
    let out = output(Command::new("apt-cache").args(["show", "--no-all-versions", KERNEL_META_PACKAGE]))?;
    parse_meta_depends(&out)
        .with_context(|| format!("apt-cache show {KERNEL_META_PACKAGE}: no linux-image-* dependency"))
}

/// Parses `Depends: linux-image-6.1.0-56-amd64 (= 6.1.192-2)`.
fn parse_meta_depends(apt_show: &str) -> Option<(String, String)> {
    let deps = apt_show.lines().find_map(|l| l.strip_prefix("Depends:"))?;
    deps.split(',').find_map(|dep| {
        let dep = dep.trim();
        let (name, rest) = dep.split_once(' ').unwrap_or((dep, ""));
        if !name.starts_with("linux-image-") {
            return None;
        }
        let version = rest.trim().strip_prefix("(=")?.trim().strip_suffix(')')?.trim();
        Some((name.to_owned(), version.to_owned()))
    })
}

/// The kernel a previous [`prepare`] unpacked, for offline runs.
fn cached_kernel(cache: &Path) -> Result<Option<(String, String)>> {
    let Ok(entries) = fs::read_dir(cache) else {
        return Ok(None);
    };
    for entry in entries {
        let entry = entry.with_context(|| format!("reading {}", cache.display()))?;
        let stamp = entry.path().join("ready");
        if let Ok(text) = fs::read_to_string(&stamp)
            && let Some((package, version)) = text.trim().split_once(' ')
        {
            return Ok(Some((package.to_owned(), version.to_owned())));
        }
    }
    Ok(None)
}

fn unpack_kernel(cache: &Path, kdir: &Path, package: &str, version: &str, release: &str) -> Result<()> {
    let deb = find_deb(cache, package, version)?;
    let deb = match deb {
        Some(deb) => deb,
        None => {
            run(Command::new("apt-get")
                // Root downloads into a root-owned dir; tell apt not to drop to _apt.
                .args([
                    "-o",
                    "APT::Sandbox::User=root",
                    "download",
                    "-q",
                    &format!("{package}={version}"),
                ])
                .current_dir(cache))?;
            find_deb(cache, package, version)?
                .with_context(|| format!("apt-get download left no {package} .deb in {}", cache.display()))?
        }
    };
    if kdir.exists() {
        fs::remove_dir_all(kdir).with_context(|| format!("removing {}", kdir.display()))?;
    }
    let root = kdir.join("root");
    fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    run(Command::new("dpkg").arg("-x").arg(&deb).arg(&root))?;
    // Debian bookworm's kernel package ships /lib/modules; be ready for /usr/lib too.
    let lib_modules = root.join("lib/modules");
    if !lib_modules.join(release).is_dir() && root.join("usr/lib/modules").join(release).is_dir() {
        fs::create_dir_all(root.join("lib")).context("creating lib")?;
        std::os::unix::fs::symlink("../usr/lib/modules", &lib_modules).context("symlinking lib/modules")?;
    }
    ensure!(
        lib_modules.join(release).is_dir(),
        "{} has no lib/modules/{release}",
        deb.display()
    );
    run(Command::new("depmod").arg("-b").arg(&root).arg(release))?;
    let vmlinuz = root.join("boot").join(format!("vmlinuz-{release}"));
    match extract_vmlinux(&vmlinuz, &kdir.join("vmlinux")) {
        Ok(()) => {}
        Err(err) => eprintln!("vm: booting vmlinuz (slower): could not extract vmlinux: {err:#}"),
    }
    Ok(())
}

/// Removes kernels, packages and initramfs images of other releases (a kernel
/// unpacks to ~0.5 GB). Best effort.
fn remove_superseded(cache: &Path, release: &str) {
    let Ok(entries) = fs::read_dir(cache) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let current = name == format!("kernel-{release}")
            || name == format!("initramfs-{release}.cpio")
            || name.starts_with(&format!("linux-image-{release}_"));
        let old = !current
            && (name.starts_with("kernel-") || name.starts_with("initramfs-") || name.starts_with("linux-image-"));
        if old {
            let path = entry.path();
            eprintln!("vm: removing superseded {}", path.display());
            let _ = if path.is_dir() {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
        }
    }
}

fn find_deb(cache: &Path, package: &str, version: &str) -> Result<Option<PathBuf>> {
    // apt-get download escapes ':' of an epoch as %3a.
    let prefix = format!("{package}_{}_", version.replace(':', "%3a"));
    for entry in fs::read_dir(cache).with_context(|| format!("reading {}", cache.display()))? {
        let path = entry.with_context(|| format!("reading {}", cache.display()))?.path();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name.starts_with(&prefix) && name.ends_with(".deb") {
            return Ok(Some(path));
        }
    }
    Ok(None)
}

/// Decompresses the kernel payload of a bzImage: booting the ELF directly (PVH)
/// skips the in-guest decompression, which is slow under emulation.
fn extract_vmlinux(vmlinuz: &Path, out: &Path) -> Result<()> {
    let image = fs::read(vmlinuz).with_context(|| format!("reading {}", vmlinuz.display()))?;
    // (magic, decompressor command) for the compressions Debian has used.
    let formats: &[(&[u8], &[&str])] = &[
        (b"\xfd7zXZ\x00", &["xz", "-dc", "--single-stream"]),
        (b"\x28\xb5\x2f\xfd", &["zstd", "-dc"]),
        (b"\x1f\x8b\x08", &["gzip", "-dc"]),
    ];
    for (magic, cmd) in formats {
        let mut from = 0;
        while let Some(pos) = find(&image[from..], magic).map(|p| p + from) {
            from = pos + 1;
            let Ok(elf) = decompress(cmd, &image[pos..]) else {
                continue;
            };
            if elf.starts_with(b"\x7fELF") {
                let tmp = out.with_extension("tmp");
                fs::write(&tmp, &elf).with_context(|| format!("writing {}", tmp.display()))?;
                fs::rename(&tmp, out).with_context(|| format!("renaming to {}", out.display()))?;
                return Ok(());
            }
        }
    }
    bail!("no known compressed ELF payload in {}", vmlinuz.display())
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Pipes `input` through `cmd`; a trailing-garbage error still returns the output.
fn decompress(cmd: &[&str], input: &[u8]) -> Result<Vec<u8>> {
    let (prog, args) = cmd.split_first().context("empty decompressor command")?;
    let mut child = Command::new(prog)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("running {prog}"))?;
    let mut stdin = child.stdin.take().context("decompressor stdin")?;
    let input = input.to_vec();
    let writer = std::thread::spawn(move || {
        // The decompressor may stop reading early (trailing data): ignore EPIPE.
        let _ = stdin.write_all(&input);
    });
    let mut out = Vec::new();
    child
        .stdout
        .take()
        .context("decompressor stdout")?
        .read_to_end(&mut out)?;
    child.wait()?;
    let _ = writer.join();
    Ok(out)
}

// ---------------------------------------------------------------------------
// Initramfs

/// The guest's `/init` (busybox sh). `@MODULES@` becomes the insmod list.
const INIT_SCRIPT: &str = r#"#!/bin/busybox sh
bb=/bin/busybox
$bb mount -t proc proc /proc
$bb mount -t sysfs sysfs /sys
$bb mount -t devtmpfs devtmpfs /dev
die() { echo "graydar-vm: $*"; echo "GRAYDAR_VM_EXIT=255"; $bb poweroff -f; $bb sleep 5; exit 1; }
for m in @MODULES@; do
    $bb insmod "/modules/$m" || echo "graydar-vm: insmod $m failed"
done
$bb mkdir -p /lower /rw /host
$bb mount -t 9p -o ro,trans=virtio,version=9p2000.L,cache=loose,msize=512000 @TAG@ /lower \
    || die "mounting the host root over 9p failed"
$bb mount -t tmpfs -o mode=0755 tmpfs /rw
$bb mkdir -p /rw/upper /rw/work
$bb mount -t overlay overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work /host \
    || die "mounting the overlay failed"
r=/host
$bb mount -t proc proc $r/proc
$bb mount -t sysfs sysfs $r/sys
$bb mount -t devtmpfs devtmpfs $r/dev
$bb mkdir -p $r/dev/pts $r/dev/shm
$bb mount -t devpts -o newinstance,ptmxmode=0666 devpts $r/dev/pts
$bb mount -t tmpfs -o mode=1777 tmpfs $r/dev/shm
# No tmpfs on /tmp: the overlay already makes it writable (writes land in the
# tmpfs upper layer) and a workspace or script under the host's /tmp stays visible.
$bb mount -t tmpfs -o mode=0755 tmpfs $r/run
$bb mount -t tracefs tracefs $r/sys/kernel/tracing 2>/dev/null
$bb mount -t debugfs debugfs $r/sys/kernel/debug 2>/dev/null
$bb mount -t bpf bpf $r/sys/fs/bpf 2>/dev/null
$bb mount -t cgroup2 cgroup2 $r/sys/fs/cgroup 2>/dev/null
$bb mkdir -p $r/lib/modules
$bb mount -o bind "/lower$graydar_modules" $r/lib/modules || die "bind-mounting the kernel modules failed"
$bb ip link set lo up
$bb hostname graydar-vm
echo "GRAYDAR_VM_KERNEL=$($bb uname -r)"
[ -n "$graydar_script" ] || die "no graydar_script= on the kernel command line"
[ -x $r/bin/busybox ] || die "the host has no /bin/busybox (install busybox-static)"
# chroot in PID 1 itself (as switch_root does): kernel threads share its root, so
# usermode helpers (request_module -> /sbin/modprobe) run the host's kmod too.
cd $r
exec $bb chroot $r /bin/busybox sh -c \
    '/bin/sh "$0"; echo "GRAYDAR_VM_EXIT=$?"; /bin/busybox sync; /bin/busybox poweroff -f; /bin/busybox sleep 10' \
    "$graydar_script"
"#;

/// Writes the initramfs: busybox, `/init`, the [`INITRAMFS_MODULES`] closure.
fn build_initramfs(modules: &Path, out: &Path) -> Result<()> {
    let order = module_load_order(modules, INITRAMFS_MODULES)?;
    let mut cpio = Cpio::default();
    for dir in ["bin", "dev", "proc", "sys", "modules", "lower", "rw", "host", "tmp"] {
        cpio.dir(dir);
    }
    cpio.char_device("dev/console", 0o600, 5, 1);
    cpio.char_device("dev/null", 0o666, 1, 3);
    let busybox =
        fs::read(BUSYBOX).with_context(|| format!("reading {BUSYBOX} (install the busybox-static package)"))?;
    cpio.file("bin/busybox", 0o755, &busybox);
    cpio.symlink("bin/sh", "busybox");
    let mut names = Vec::new();
    for rel in &order {
        let path = modules.join(rel);
        let data = fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        let name = Path::new(rel)
            .file_name()
            .with_context(|| format!("module path {rel}"))?
            .to_string_lossy()
            .into_owned();
        cpio.file(&format!("modules/{name}"), 0o644, &data);
        names.push(name);
    }
    let init = INIT_SCRIPT
        .replace("@MODULES@", &names.join(" "))
        .replace("@TAG@", MOUNT_TAG);
    cpio.file("init", 0o755, init.as_bytes());
    let data = cpio.finish();
    let tmp = out.with_extension("tmp");
    fs::write(&tmp, &data).with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, out).with_context(|| format!("renaming to {}", out.display()))?;
    Ok(())
}

/// Module files (relative to `modules`) to insmod, dependencies first, for the
/// closure of `wanted`. Modules built into the kernel are skipped; modules
/// neither built in nor in modules.dep are an error.
fn module_load_order(modules: &Path, wanted: &[&str]) -> Result<Vec<String>> {
    let dep_path = modules.join("modules.dep");
    let dep_text = fs::read_to_string(&dep_path).with_context(|| format!("reading {}", dep_path.display()))?;
    let builtin_text = fs::read_to_string(modules.join("modules.builtin")).unwrap_or_default();
    let deps = parse_modules_dep(&dep_text);
    let by_name: BTreeMap<String, &String> = deps.keys().map(|p| (module_name(p), p)).collect();
    let builtin: HashSet<String> = builtin_text.lines().map(module_name).collect();
    let mut order = Vec::new();
    let mut seen = HashSet::new();
    fn visit(path: &str, deps: &BTreeMap<String, Vec<String>>, seen: &mut HashSet<String>, order: &mut Vec<String>) {
        if !seen.insert(path.to_owned()) {
            return;
        }
        for dep in deps.get(path).into_iter().flatten() {
            visit(dep, deps, seen, order);
        }
        order.push(path.to_owned());
    }
    for want in wanted {
        let name = want.replace('-', "_");
        match by_name.get(&name) {
            Some(path) => visit(path, &deps, &mut seen, &mut order),
            None if builtin.contains(&name) => {}
            None => bail!("module {want} is neither in {} nor built in", dep_path.display()),
        }
    }
    Ok(order)
}

/// `kernel/fs/9p/9p.ko: kernel/net/9p/9pnet.ko kernel/fs/netfs/netfs.ko`
fn parse_modules_dep(text: &str) -> BTreeMap<String, Vec<String>> {
    text.lines()
        .filter_map(|line| {
            let (module, deps) = line.split_once(':')?;
            Some((
                module.trim().to_owned(),
                deps.split_whitespace().map(str::to_owned).collect(),
            ))
        })
        .collect()
}

/// `kernel/net/9p/9pnet_virtio.ko.xz` -> `9pnet_virtio`
fn module_name(path: &str) -> String {
    let base = path.rsplit('/').next().unwrap_or(path);
    let base = base.split(".ko").next().unwrap_or(base);
    base.replace('-', "_")
}

/// Minimal cpio "newc" writer (what the kernel's initramfs unpacker reads).
#[derive(Default)]
struct Cpio {
    data: Vec<u8>,
    ino: u32,
}

impl Cpio {
    fn entry(&mut self, name: &str, mode: u32, rdev: (u32, u32), body: &[u8]) {
        self.ino += 1;
        let namesize = name.len() + 1;
        let header = format!(
            "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            self.ino,
            mode,
            0, // uid
            0, // gid
            if mode & 0o170000 == 0o040000 { 2 } else { 1 },
            0, // mtime
            body.len(),
            0, // devmajor
            0, // devminor
            rdev.0,
            rdev.1,
            namesize,
            0, // check
        );
        self.data.extend_from_slice(header.as_bytes());
        self.data.extend_from_slice(name.as_bytes());
        self.data.push(0);
        self.pad();
        self.data.extend_from_slice(body);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.data.len().is_multiple_of(4) {
            self.data.push(0);
        }
    }

    fn dir(&mut self, name: &str) {
        self.entry(name, 0o040755, (0, 0), &[]);
    }

    fn file(&mut self, name: &str, perm: u32, body: &[u8]) {
        self.entry(name, 0o100000 | perm, (0, 0), body);
    }

    fn symlink(&mut self, name: &str, target: &str) {
        self.entry(name, 0o120777, (0, 0), target.as_bytes());
    }

    fn char_device(&mut self, name: &str, perm: u32, major: u32, minor: u32) {
        self.entry(name, 0o020000 | perm, (major, minor), &[]);
    }

    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, (0, 0), &[]);
        self.data
    }
}

// ---------------------------------------------------------------------------
// Booting

/// Boots the guest, runs `cmd` in the chroot from `workdir` with `env`, streams
/// the serial console to stdout and checks the exit marker.
fn boot(assets: &VmAssets, workdir: &Path, cmd: &str, env: &[(&str, &str)], cpus: u32) -> Result<Vec<String>> {
    // The script lives on the host: the guest reads it through the shared root.
    let cache = assets.initramfs.parent().context("initramfs has no parent directory")?;
    let runs = cache.join("runs");
    fs::create_dir_all(&runs).with_context(|| format!("creating {}", runs.display()))?;
    let script = runs.join(format!("run-{}.sh", std::process::id()));
    let mut text = String::from(
        "export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n\
         export HOME=/root TERM=dumb LANG=C.UTF-8\n",
    );
    for (key, value) in env {
        text.push_str(&format!("export {key}={}\n", shell_quote(value)));
    }
    text.push_str(&format!("cd {} || exit 125\n", shell_quote(&workdir.to_string_lossy())));
    text.push_str(cmd);
    text.push('\n');
    fs::write(&script, text).with_context(|| format!("writing {}", script.display()))?;
    let result = boot_script(assets, &script, cpus);
    let _ = fs::remove_file(&script);
    result
}

fn boot_script(assets: &VmAssets, script: &Path, cpus: u32) -> Result<Vec<String>> {
    for (what, path) in [("kernel", &assets.kernel), ("initramfs", &assets.initramfs)] {
        ensure!(path.is_file(), "{what} {} is missing: run prepare", path.display());
    }
    let path_arg = |p: &Path| -> Result<String> {
        let s = p.to_str().with_context(|| format!("non-UTF-8 path {}", p.display()))?;
        ensure!(
            !s.contains([' ', ',', '"']),
            "path {s} has characters the kernel command line cannot carry"
        );
        Ok(s.to_owned())
    };
    // `loglevel=5` after `quiet`: boot stays quiet, but warnings and their
    // stack traces (a soft lockup's, an oops's) reach the console. A soft
    // lockup panics the guest with every CPU's backtrace (`panic=-1` and
    // `-no-reboot` then stop QEMU), so the tier fails at once with the trace
    // instead of waiting out VM_TIMEOUT with a hung guest.
    let append = format!(
        "console=ttyS0 panic=-1 quiet loglevel=5 softlockup_panic=1 softlockup_all_cpu_backtrace=1 \
         graydar_script={} graydar_modules={}",
        path_arg(script)?,
        path_arg(&assets.modules_dir)?,
    );
    let mut qemu = Command::new("qemu-system-x86_64");
    qemu.args(["-accel", "tcg,thread=multi", "-cpu", "max", "-m", "2G", "-smp"])
        .arg(cpus.to_string())
        .args([
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-serial",
            "stdio",
            "-no-reboot",
        ])
        .arg("-kernel")
        .arg(&assets.kernel)
        .arg("-initrd")
        .arg(&assets.initramfs)
        .args(["-append", &append])
        .args([
            "-virtfs",
            &format!("local,path=/,mount_tag={MOUNT_TAG},security_model=none,readonly=on,multidevs=remap"),
        ])
        .args(nic_args())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    eprintln!("vm: booting {} ({})", assets.kernel_version, assets.kernel.display());
    let started = Instant::now();
    let mut child = qemu
        .spawn()
        .context("starting qemu-system-x86_64 (install qemu-system-x86)")?;
    let stdout = child.stdout.take().context("qemu stdout")?;
    let seen = Arc::new(Mutex::new(Seen::default()));
    let reader = {
        let seen = Arc::clone(&seen);
        std::thread::spawn(move || stream_console(stdout, &seen, started))
    };
    let status = loop {
        if let Some(status) = child.try_wait().context("waiting for qemu")? {
            break Some(status);
        }
        if started.elapsed() > VM_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let _ = reader.join();
    let elapsed = started.elapsed().as_secs_f64();
    let seen = seen.lock().map(|s| s.clone()).unwrap_or_default();
    let Some(status) = status else {
        match seen.kernel_trouble {
            Some(line) => {
                return Err(anyhow::Error::new(GuestKernelFailed { line })
                    .context(format!("vm: timed out after {}s; qemu killed", VM_TIMEOUT.as_secs())));
            }
            None => bail!("vm: timed out after {}s; qemu killed", VM_TIMEOUT.as_secs()),
        }
    };
    eprintln!(
        "vm: guest kernel {}, qemu exited ({status}) after {elapsed:.1}s",
        seen.kernel.as_deref().unwrap_or("unknown")
    );
    match seen.exit {
        Some(0) => Ok(seen.results),
        Some(code) => bail!("vm: guest command failed with exit status {code}"),
        None => match seen.kernel_trouble {
            Some(line) => Err(anyhow::Error::new(GuestKernelFailed { line }).context(format!(
                "vm: the guest kernel failed (its backtrace is in the console output above) \
                 and printed no {EXIT_MARKER} line (qemu: {status})"
            ))),
            None => bail!("vm: guest printed no {EXIT_MARKER} line (qemu: {status}); see the console output above"),
        },
    }
}

/// Whether a console line is the guest kernel reporting a failure of its own.
fn is_kernel_trouble(line: &str) -> bool {
    [
        "BUG: ",
        "Kernel panic",
        "Oops: ",
        "watchdog: BUG",
        "rcu: INFO: rcu_preempt detected stalls",
    ]
    .iter()
    .any(|m| line.contains(m))
}

/// The guest's virtio-net NICs: (MAC, extra `-device` properties). The
/// first two are ordinary; the third cannot reset its queues
/// (`queue_reset=off`: no VIRTIO_F_RING_RESET), so virtio_net cannot resize
/// its rings: the refusal path of tests/tests/vm_rings.rs, which finds them
/// by these MACs (locally administered, QEMU's 52:54:00 prefix).
pub const GUEST_NICS: [(&str, &str); 3] = [
    ("52:54:00:47:44:01", ""),
    ("52:54:00:47:44:02", ""),
    ("52:54:00:47:44:03", ",queue_reset=off"),
];

/// QEMU arguments for the guest's virtio-net NICs ([`GUEST_NICS`]: a real
/// driver with real ethtool ops), wired **only to each other**: all are ports
/// of one QEMU hub (`-netdev hubport`, hub 0) that has no other port, so no
/// frame reaches the host's or any outside network (QEMU warns "hub 0 is not
/// connected to host network", which is the point). With `-nodefaults` there
/// is no other NIC. virtio_net is not loaded at boot (the initramfs loads only
/// what the 9p root needs and no udev runs), so the interfaces (eth0...)
/// appear once a test runs `modprobe virtio_net`; other tests see no extra
/// interface. The devices are modern virtio 1.0 with QEMU's defaults
/// (`queue_reset=on` since QEMU 7.2, 256-descriptor queues), which is what
/// lets virtio_net resize its rings.
fn nic_args() -> Vec<String> {
    let mut args = Vec::new();
    for (i, (mac, extra)) in GUEST_NICS.iter().enumerate() {
        args.push("-netdev".to_owned());
        args.push(format!("hubport,id=graydar-n{i},hubid=0"));
        args.push("-device".to_owned());
        args.push(format!("virtio-net-pci,netdev=graydar-n{i},mac={mac}{extra}"));
    }
    args
}

#[derive(Default, Clone)]
struct Seen {
    kernel: Option<String>,
    /// The first line where the guest kernel reported trouble (a soft
    /// lockup, an oops, a panic), for the error that ends the boot.
    kernel_trouble: Option<String>,
    exit: Option<i32>,
    results: Vec<String>,
}

/// Prefix of the lines a guest command prints to hand results to the host.
pub const RESULT_MARKER: &str = "GRAYDAR_RESULT ";

fn stream_console(stdout: impl Read, seen: &Mutex<Seen>, started: Instant) {
    let mut reader = BufReader::new(stdout);
    let mut line = Vec::new();
    let out = std::io::stdout();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end_matches(['\n', '\r']).replace('\r', "");
        {
            let mut out = out.lock();
            let _ = writeln!(out, "{text}");
            let _ = out.flush();
        }
        let Ok(mut seen) = seen.lock() else { continue };
        if seen.kernel_trouble.is_none() && is_kernel_trouble(&text) {
            seen.kernel_trouble = Some(text.trim().to_owned());
        }
        if let Some(v) = text.trim().strip_prefix(KERNEL_MARKER) {
            eprintln!("vm: guest up after {:.1}s", started.elapsed().as_secs_f64());
            seen.kernel = Some(v.trim().to_owned());
        } else if let Some(v) = text.trim().strip_prefix(EXIT_MARKER) {
            seen.exit = v.trim().parse().ok();
        } else if let Some(v) = text.trim_start().strip_prefix(RESULT_MARKER) {
            seen.results.push(v.trim().to_owned());
        }
    }
}

// ---------------------------------------------------------------------------
// Helpers

/// Runs cargo with `--message-format=json` and returns the executables it built.
pub(crate) fn cargo_executables(workspace: &Path, args: &[&str]) -> Result<Vec<PathBuf>> {
    let out = crate::cargo()
        .args(args)
        .arg("--message-format=json-render-diagnostics")
        .current_dir(workspace)
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running cargo {}", args.join(" ")))?;
    ensure!(out.status.success(), "cargo {} failed ({})", args.join(" "), out.status);
    let mut exes = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if msg["reason"] == "compiler-artifact"
            && let Some(exe) = msg["executable"].as_str()
        {
            exes.push(PathBuf::from(exe));
        }
    }
    Ok(exes)
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    ensure!(status.success(), "{cmd:?} failed ({status})");
    Ok(())
}

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    ensure!(out.status.success(), "{cmd:?} failed ({})", out.status);
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_boots_run_every_vm_target_once() {
        let mut all: Vec<&str> = VM_BOOTS.iter().flat_map(|b| b.iter().copied()).collect();
        all.sort_unstable();
        let mut want = VM_TEST_TARGETS.to_vec();
        want.sort_unstable();
        assert_eq!(all, want);
    }

    #[test]
    fn kernel_failures_on_the_console_are_recognised_and_test_output_is_not() {
        for line in [
            "[ 1320.602888] watchdog: BUG: soft lockup - CPU#0 stuck for 1095s! [tokio-rt-worker:386]",
            "[ 1365.198935] rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:",
            "[   12.1] Kernel panic - not syncing: softlockup: hung tasks",
            "[    3.2] BUG: kernel NULL pointer dereference, address: 0000000000000008",
        ] {
            assert!(is_kernel_trouble(line), "{line}");
        }
        for line in [
            "test vm_faults::netem_applies ... ok",
            "GRAYDAR_RESULT detection kind=nic_drops",
            "graydar-vm: insmod dm-delay.ko failed",
        ] {
            assert!(!is_kernel_trouble(line), "{line}");
        }
    }

    #[test]
    fn the_guest_nics_are_wired_only_to_each_other() {
        let args = nic_args();
        let values = |flag: &str| -> Vec<&str> {
            args.windows(2)
                .filter(|w| w[0] == flag)
                .map(|w| w[1].as_str())
                .collect()
        };
        let netdevs = values("-netdev");
        let devices = values("-device");
        assert_eq!(devices.len(), GUEST_NICS.len(), "{args:?}");
        assert!(devices.iter().all(|d| d.starts_with("virtio-net-pci,")), "{devices:?}");
        // Every backend is a port of the same hub: no user, tap, socket or
        // bridge backend could reach the host's network.
        assert_eq!(netdevs.len(), GUEST_NICS.len(), "{args:?}");
        for n in &netdevs {
            assert!(n.starts_with("hubport,") && n.ends_with(",hubid=0"), "{n}");
        }
        for (i, d) in devices.iter().enumerate() {
            assert!(d.contains(&format!("netdev=graydar-n{i},")), "{d}");
            assert!(d.contains(&format!("mac={}", GUEST_NICS[i].0)), "{d}");
        }
        assert_eq!(args.len(), 4 * GUEST_NICS.len());
        // Two NICs can resize their rings, one cannot.
        assert_eq!(devices.iter().filter(|d| d.contains("queue_reset=off")).count(), 1);
    }

    #[test]
    fn the_cache_lives_in_the_target_dir() {
        // CARGO_TARGET_DIR is whatever this test process got; both cases agree.
        let ws = Path::new("/w");
        let want = match std::env::var_os("CARGO_TARGET_DIR").filter(|t| !t.is_empty()) {
            Some(t) => PathBuf::from(t).join("vm"),
            None => PathBuf::from("/w/target/vm"),
        };
        assert_eq!(default_cache(ws), want);
    }

    #[test]
    fn parses_the_meta_package_dependency() {
        let show = "Package: linux-image-amd64\nDepends: linux-image-6.1.0-56-amd64 (= 6.1.192-2)\n";
        assert_eq!(
            parse_meta_depends(show),
            Some(("linux-image-6.1.0-56-amd64".to_owned(), "6.1.192-2".to_owned()))
        );
    }

    #[test]
    fn orders_module_dependencies_first() {
        let dir = std::env::temp_dir().join(format!("xtask-vm-test-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("temp dir");
        fs::write(
            dir.join("modules.dep"),
            "kernel/fs/9p/9p.ko: kernel/net/9p/9pnet.ko kernel/fs/netfs/netfs.ko\n\
             kernel/net/9p/9pnet.ko:\nkernel/fs/netfs/netfs.ko:\n\
             kernel/net/9p/9pnet_virtio.ko: kernel/net/9p/9pnet.ko\n",
        )
        .expect("modules.dep");
        fs::write(dir.join("modules.builtin"), "kernel/drivers/virtio/virtio_pci.ko\n").expect("builtin");
        let order = module_load_order(&dir, &["virtio-pci", "9pnet_virtio", "9p"]).expect("order");
        let _ = fs::remove_dir_all(&dir);
        assert_eq!(
            order,
            [
                "kernel/net/9p/9pnet.ko",
                "kernel/net/9p/9pnet_virtio.ko",
                "kernel/fs/netfs/netfs.ko",
                "kernel/fs/9p/9p.ko"
            ]
        );
    }

    #[test]
    fn cpio_is_aligned_and_terminated() {
        let mut cpio = Cpio::default();
        cpio.file("init", 0o755, b"abc");
        let data = cpio.finish();
        assert!(data.starts_with(b"070701"));
        assert_eq!(data.len() % 4, 0);
        assert!(find(&data, b"TRAILER!!!").is_some());
    }
}
