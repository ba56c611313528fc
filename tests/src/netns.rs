//! Throwaway network namespaces for the root/netns test tier.
//!
//! [`NetNs`] is a guard: `ip netns add` on creation, and on drop every process
//! still inside is killed and the namespace is deleted (cleanup is guaranteed,
//! not best-effort: a failure to delete is reported on stderr with the name).
//! [`NetNs::run_in`] / [`NetNs::spawn`] run Rust code on a thread that has
//! `setns(2)`'d into the namespace, so tests open sockets there without
//! spawning processes. Tests only ever address hosts inside the namespaces
//! they create.

use std::ffi::OsStr;
use std::fs::File;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sched::{CloneFlags, setns};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Debian packages that provide the tools this tier runs (`ip`, `tc`, `nft`).
pub const TOOL_PACKAGES: &str = "iproute2 nftables";

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Panics unless the test runs as root (the whole tier needs it).
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "root/netns tier needs root (run the tests as root, e.g. `sudo -E cargo test -p graydar-tests`)"
    );
}

/// Runs `cmd args...`, panicking with its stderr when it cannot be started or
/// exits non-zero.
pub fn run<I, S>(cmd: &str, args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<_> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
    let out = try_run(cmd, &args);
    if !out.status.success() {
        panic!(
            "`{cmd} {}` failed ({}): {}{}",
            args.iter().map(|a| a.to_string_lossy()).collect::<Vec<_>>().join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout),
        );
    }
    out
}

/// Runs `cmd args...` and returns its output whatever the exit status; panics
/// only when the program cannot be started (e.g. not installed).
pub fn try_run<I, S>(cmd: &str, args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    Command::new(cmd).args(args).output().unwrap_or_else(|e| {
        panic!(
            "cannot run `{cmd}`: {e} (the root/netns tier needs the Debian packages \
             {TOOL_PACKAGES}; `cargo xtask setup` installs them)"
        )
    })
}

fn to_base36(mut n: u64) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8_lossy(&out).into_owned()
}

/// A network namespace that exists as long as this guard does.
#[derive(Debug)]
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Creates `gd<prefix>-<pid>-<n>` (prefix cut to 4 chars, numbers in base
    /// 36, so at most 15 chars), unique per process and call, and brings `lo`
    /// up. IPv6 is disabled inside (`all` and `default`) so that neighbour
    /// discovery and MLD do not add packets (and drops) the tests did not cause.
    pub fn new(prefix: &str) -> NetNs {
        require_root();
        let prefix: String = prefix.chars().filter(char::is_ascii_alphanumeric).take(4).collect();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!(
            "gd{prefix}-{}-{}",
            to_base36(u64::from(std::process::id())),
            to_base36(u64::from(n))
        );
        if PathBuf::from("/run/netns").join(&name).exists() {
            // Left over by an earlier test process that had the same pid and
            // was killed before its guards ran: it is ours, remove it.
            let _ = try_run("ip", ["netns", "del", &name]);
        }
        run("ip", ["netns", "add", &name]);
        let ns = NetNs { name };
        ns.ip(["link", "set", "lo", "up"]);
        ns.run_in(|| {
            for conf in ["all", "default"] {
                let path = format!("/proc/sys/net/ipv6/conf/{conf}/disable_ipv6");
                // A kernel without IPv6 has no such file: nothing to disable.
                if std::path::Path::new(&path).exists() {
                    std::fs::write(&path, "1").unwrap_or_else(|e| panic!("write {path}: {e}"));
                }
            }
        });
        ns
    }

    /// The namespace's name, as `ip netns list` shows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/<name>`.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// Runs `ip -n <ns> args...` (no mount namespace games, faster than exec),
    /// panicking with stderr on failure.
    pub fn ip<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut all: Vec<std::ffi::OsString> = vec!["-n".into(), self.name.clone().into()];
        all.extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        run("ip", all)
    }

    /// Runs `ip netns exec <ns> cmd args...`, panicking with stderr on failure.
    pub fn exec<I, S>(&self, cmd: &str, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut all: Vec<std::ffi::OsString> =
            vec!["netns".into(), "exec".into(), self.name.clone().into(), cmd.into()];
        all.extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        run("ip", all)
    }

    /// Like [`NetNs::exec`], returning stdout as a String.
    pub fn exec_stdout<I, S>(&self, cmd: &str, args: I) -> String
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        String::from_utf8_lossy(&self.exec(cmd, args).stdout).into_owned()
    }

    fn open(&self) -> File {
        let path = self.path();
        File::open(&path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
    }

    /// Runs `f` on a fresh thread that has entered this namespace and returns
    /// its result (a panic in `f` is propagated).
    pub fn run_in<F, R>(&self, f: F) -> R
    where
        F: FnOnce() -> R + Send,
        R: Send,
    {
        let fd = self.open();
        let name = self.name.as_str();
        std::thread::scope(|s| {
            let handle = s.spawn(move || {
                enter(&fd, name);
                drop(fd);
                f()
            });
            match handle.join() {
                Ok(r) => r,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    /// Starts `f` on a background thread inside this namespace (for traffic
    /// loops; they must be bounded in count and time).
    pub fn spawn<F, R>(&self, f: F) -> JoinHandle<R>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        let fd = self.open();
        let name = self.name.clone();
        std::thread::Builder::new()
            .name(format!("in-{name}"))
            .spawn(move || {
                enter(&fd, &name);
                drop(fd);
                f()
            })
            .unwrap_or_else(|e| panic!("spawn a thread for netns {}: {e}", self.name))
    }

    /// Pids of the processes inside (`ip netns pids`).
    pub fn pids(&self) -> Vec<i32> {
        let out = try_run("ip", ["netns", "pids", &self.name]);
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    }

    /// ifindex of `ifname` inside this namespace.
    pub fn ifindex(&self, ifname: &str) -> u32 {
        let path = format!("/sys/class/net/{ifname}/ifindex");
        let text = self.exec_stdout("cat", [&path]);
        text.trim()
            .parse()
            .unwrap_or_else(|e| panic!("ifindex of {ifname} in {}: {e}: {text:?}", self.name))
    }
}

fn enter(fd: &File, name: &str) {
    setns(fd, CloneFlags::CLONE_NEWNET).unwrap_or_else(|e| panic!("setns into netns {name}: {e}"));
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // Kill what is left inside (an agent whose guard is gone, a stuck
        // `ip netns exec`), then delete. Threads of this process that entered
        // the namespace do not show here and do not keep it from being
        // deleted: the namespace dies with its last reference.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let pids = self.pids();
            if pids.is_empty() || Instant::now() > deadline {
                break;
            }
            for pid in pids {
                if pid != 0 && pid != std::process::id() as i32 {
                    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let out = try_run("ip", ["netns", "del", &self.name]);
        if !out.status.success() {
            eprintln!(
                "graydar-tests: could not delete netns {}: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// Creates a veth pair with `a_if` in `a` and `b_if` in `b` (created directly
/// in their namespaces, so names need only be unique per namespace), assigns
/// the addresses (CIDR, e.g. `10.203.1.1/24`) and brings both ends up.
pub fn veth_pair(a: &NetNs, a_if: &str, a_addr_cidr: &str, b: &NetNs, b_if: &str, b_addr_cidr: &str) {
    assert!(
        a_if.len() <= 15 && b_if.len() <= 15,
        "interface names are at most 15 chars"
    );
    a.ip([
        "link",
        "add",
        a_if,
        "type",
        "veth",
        "peer",
        "name",
        b_if,
        "netns",
        b.name(),
    ]);
    a.ip(["addr", "add", a_addr_cidr, "dev", a_if]);
    b.ip(["addr", "add", b_addr_cidr, "dev", b_if]);
    a.ip(["link", "set", a_if, "up"]);
    b.ip(["link", "set", b_if, "up"]);
}

/// Names in `ip netns list`.
pub fn list() -> Vec<String> {
    let out = run("ip", ["netns", "list"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base36() {
        assert_eq!(to_base36(0), "0");
        assert_eq!(to_base36(35), "z");
        assert_eq!(to_base36(36), "10");
        assert!(to_base36(u64::from(u32::MAX)).len() <= 7);
    }
}
