//! The real `graydar-controller` as a child process (optionally inside a
//! [`NetNs`]) and the real `graydar` CLI against it.

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::agent::http_get;
use crate::netns::NetNs;

/// Port the controller listens on inside a test namespace.
pub const NS_PORT: u16 = 8477;
const READY_TIMEOUT: Duration = Duration::from_secs(30);
const LOG_TAIL_LINES: usize = 200;

fn target_bin(env: &str, name: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(env) {
        return PathBuf::from(p);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .parent()
                .unwrap_or_else(|| Path::new(".."))
                .join("target")
        });
    target.join("debug").join(name)
}

/// `GRAYDAR_CONTROLLER_BIN`, else `<workspace>/target/debug/graydar-controller`.
pub fn controller_bin() -> PathBuf {
    target_bin("GRAYDAR_CONTROLLER_BIN", "graydar-controller")
}

/// `GRAYDAR_CLI_BIN`, else `<workspace>/target/debug/graydar`.
pub fn cli_bin() -> PathBuf {
    target_bin("GRAYDAR_CLI_BIN", "graydar")
}

fn require_bin(p: &Path) {
    assert!(
        p.is_file(),
        "{} is missing: build it with cargo build -p graydar-controller",
        p.display()
    );
}

/// A random token (32 hex digits).
pub fn random_token() -> String {
    let mut buf = [0u8; 16];
    std::io::Read::read_exact(&mut File::open("/dev/urandom").expect("open /dev/urandom"), &mut buf)
        .expect("read /dev/urandom");
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// One token per role.
#[derive(Clone, Debug)]
pub struct Tokens {
    pub agent: String,
    pub viewer: String,
    pub operator: String,
}

impl Tokens {
    pub fn random() -> Tokens {
        Tokens {
            agent: random_token(),
            viewer: random_token(),
            operator: random_token(),
        }
    }

    /// The tokens file format (`role:token` lines).
    pub fn file_text(&self) -> String {
        format!(
            "agent:{}\nviewer:{}\noperator:{}\n",
            self.agent, self.viewer, self.operator
        )
    }
}

/// A running controller; SIGTERM (SIGKILL after 5 s) on drop, log printed
/// when dropped during a panic.
pub struct ControllerProcess<'ns> {
    child: Child,
    ns: Option<&'ns NetNs>,
    addr: SocketAddr,
    log_path: PathBuf,
    tls: bool,
}

impl<'ns> ControllerProcess<'ns> {
    /// Starts the controller on `0.0.0.0:8477` inside `ns` (or a free
    /// loopback port without one), with its database in `data_dir` (kept by
    /// the caller so a restart finds it) and waits for `/readyz`.
    pub fn start(ns: Option<&'ns NetNs>, data_dir: &Path, tokens: &Tokens) -> ControllerProcess<'ns> {
        Self::start_with_args(ns, data_dir, tokens, &[])
    }

    /// [`ControllerProcess::start`] with extra command-line arguments; with
    /// `--tls-cert`, readiness is its "listening on https://" log line.
    pub fn start_with_args(
        ns: Option<&'ns NetNs>,
        data_dir: &Path,
        tokens: &Tokens,
        extra: &[&str],
    ) -> ControllerProcess<'ns> {
        Self::start_on_port(ns, NS_PORT, data_dir, tokens, extra)
    }

    /// [`ControllerProcess::start_with_args`] listening on `port` inside
    /// `ns` (two controllers in one namespace: replicas of one database).
    pub fn start_on_port(
        ns: Option<&'ns NetNs>,
        port: u16,
        data_dir: &Path,
        tokens: &Tokens,
        extra: &[&str],
    ) -> ControllerProcess<'ns> {
        let bin = controller_bin();
        require_bin(&bin);
        std::fs::create_dir_all(data_dir).expect("create the controller data dir");
        let tokens_path = data_dir.join("tokens");
        std::fs::write(&tokens_path, tokens.file_text()).expect("write the tokens file");
        let log_path = data_dir.join("controller.log");
        let log = File::options()
            .create(true)
            .append(true)
            .open(&log_path)
            .expect("open the controller log");
        let log_err = log.try_clone().expect("clone the log handle");
        let (listen, addr): (SocketAddr, SocketAddr) = match ns {
            Some(_) => (
                SocketAddr::from(([0, 0, 0, 0], port)),
                SocketAddr::from(([127, 0, 0, 1], port)),
            ),
            None => {
                let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a probe socket");
                let a = l.local_addr().expect("local addr");
                (a, a)
            }
        };
        let mut cmd = match ns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns.name()]).arg(&bin);
                c
            }
            None => Command::new(&bin),
        };
        cmd.arg("--listen")
            .arg(listen.to_string())
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--tokens-file")
            .arg(&tokens_path)
            .args(extra)
            .env_remove("GRAYDAR_TOKENS")
            .env_remove("GRAYDAR_CONTROLLER_CONFIG")
            .env("GRAYDAR_LOG", "info,graydar_controller=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err));
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
        let mut c = ControllerProcess {
            child,
            ns,
            addr,
            log_path,
            tls: extra.contains(&"--tls-cert"),
        };
        c.wait_ready();
        c
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("graydar-controller exited before it was ready ({status})");
            }
            if self.tls {
                if self.log().contains("listening on https://") {
                    return;
                }
            } else if let Ok((200, _)) = self.try_get("/readyz") {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "graydar-controller not ready after {READY_TIMEOUT:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Address to reach it from inside its namespace (or the host).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn try_get(&self, path: &str) -> Result<(u16, String), String> {
        let addr = self.addr;
        match self.ns {
            Some(ns) => ns.run_in(move || http_get(addr, path)),
            None => http_get(addr, path),
        }
    }

    /// `kill -9`: no shutdown, no flush.
    pub fn kill9(mut self) {
        // `ip netns exec` execs the controller, so the child is the controller.
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL);
        let _ = self.child.wait();
    }

    /// Runs the real `graydar` CLI with `args` against this controller (from
    /// inside its namespace) with `token`.
    pub fn cli(&self, token: &str, args: &[&str]) -> Output {
        let bin = cli_bin();
        require_bin(&bin);
        let mut cmd = match self.ns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns.name()]).arg(&bin);
                c
            }
            None => Command::new(&bin),
        };
        cmd.arg("--url")
            .arg(self.url())
            .args(args)
            .env("GRAYDAR_TOKEN", token)
            .env_remove("GRAYDAR_URL")
            .env_remove("GRAYDAR_CLI_CONFIG")
            .env_remove("GRAYDAR_CA_CERT")
            .env("HOME", "/nonexistent")
            .output()
            .unwrap_or_else(|e| panic!("run {}: {e}", bin.display()))
    }

    /// `graydar <args> --output json` decoded; panics unless it succeeds.
    pub fn cli_json(&self, token: &str, args: &[&str]) -> serde_json::Value {
        let mut all = args.to_vec();
        all.extend(["--output", "json"]);
        let out = self.cli(token, &all);
        assert!(
            out.status.success(),
            "graydar {}: {}\n{}",
            all.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "graydar output is not JSON: {e}: {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    fn stop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        let pid = Pid::from_raw(self.child.id() as i32);
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ControllerProcess<'_> {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!(
                "--- graydar-controller log (last {LOG_TAIL_LINES} lines) ---\n{}\n--- end of controller log ---",
                lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
            );
        }
    }
}
