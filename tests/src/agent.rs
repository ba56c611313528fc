//! The real `graydar-agent` as a child process, optionally inside a
//! [`NetNs`], with a minimal HTTP client to read its API.
//!
//! The harness owns the listen address: with a namespace the agent listens on
//! `127.0.0.1:9477` inside it (each namespace has its own loopback, so
//! parallel tests do not collide) and HTTP requests are made from a thread
//! that entered the namespace; without one it listens on a free loopback port.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use graydar_common::api::{Finding, FindingKind, FindingState, FindingsResponse};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::netns::NetNs;

/// Port the agent listens on inside a test namespace.
pub const NS_PORT: u16 = 9477;

const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Inside the test VM (`GRAYDAR_VM=1`, software emulation) loading the eBPF
/// probes alone takes tens of seconds.
const VM_READY_TIMEOUT: Duration = Duration::from_secs(180);

fn ready_timeout() -> Duration {
    if std::env::var("GRAYDAR_VM").as_deref() == Ok("1") {
        VM_READY_TIMEOUT
    } else {
        READY_TIMEOUT
    }
}
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);
/// How much of the agent's log a failing test prints.
const LOG_TAIL_LINES: usize = 300;

/// Path of the agent binary: `GRAYDAR_AGENT_BIN`, else
/// `<workspace>/target/debug/graydar-agent` (or under `CARGO_TARGET_DIR`).
pub fn agent_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("GRAYDAR_AGENT_BIN") {
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
    target.join("debug").join("graydar-agent")
}

/// A running agent; SIGTERM (then SIGKILL after 5 s) on drop. Its log
/// (stdout + stderr, the last [`LOG_TAIL_LINES`] lines) is printed when the
/// guard drops during a panic, so every failure comes with it.
pub struct AgentProcess<'ns> {
    child: Child,
    ns: Option<&'ns NetNs>,
    addr: SocketAddr,
    log_path: PathBuf,
    _dir: tempfile::TempDir,
}

impl<'ns> AgentProcess<'ns> {
    /// Writes `config_toml` to a temp dir, starts the agent (inside `ns` via
    /// `ip netns exec` when given) and waits until `/readyz` answers 200.
    /// `listen` is set by the harness with `--listen`; keep it out of the config.
    pub fn start(ns: Option<&'ns NetNs>, config_toml: &str) -> AgentProcess<'ns> {
        AgentProcess::start_with_state(ns, config_toml, None)
    }

    /// [`AgentProcess::start`] with `--state-dir state_dir` (kept across
    /// agents, e.g. a restart with the same fault journal and controller
    /// credential) instead of a fresh one in the agent's temp dir.
    pub fn start_with_state(ns: Option<&'ns NetNs>, config_toml: &str, state_dir: Option<&Path>) -> AgentProcess<'ns> {
        crate::netns::require_root();
        let bin = agent_bin();
        assert!(
            bin.is_file(),
            "agent binary {} is missing: build it with cargo build -p graydar-agent \
             (or point GRAYDAR_AGENT_BIN at it)",
            bin.display()
        );
        let dir = tempfile::Builder::new()
            .prefix("graydar-agent-test")
            .tempdir()
            .expect("create a temp dir for the agent");
        let config_path = dir.path().join("agent.toml");
        std::fs::write(&config_path, config_toml).expect("write the agent config");
        let log_path = dir.path().join("agent.log");
        let log = File::create(&log_path).expect("create the agent log file");
        let log_err = log.try_clone().expect("clone the agent log file handle");

        let addr: SocketAddr = match ns {
            Some(_) => SocketAddr::from(([127, 0, 0, 1], NS_PORT)),
            None => {
                // Ask the kernel for a free port; the tiny race with another
                // process taking it in between is acceptable for tests.
                let l = TcpListener::bind("127.0.0.1:0").expect("bind a probe socket");
                l.local_addr().expect("local addr of the probe socket")
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
        cmd.arg("--config")
            .arg(&config_path)
            // Never the host's /var/lib/graydar: each test agent has its own fault journal.
            .arg("--state-dir")
            .arg(state_dir.map_or_else(|| dir.path().join("state"), Path::to_path_buf))
            .arg("--listen")
            .arg(addr.to_string())
            .env_remove("GRAYDAR_CONFIG")
            .env_remove("GRAYDAR_LISTEN")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err));
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
        let mut agent = AgentProcess {
            child,
            ns,
            addr,
            log_path,
            _dir: dir,
        };
        agent.wait_ready();
        agent
    }

    fn wait_ready(&mut self) {
        let timeout = ready_timeout();
        let deadline = Instant::now() + timeout;
        let mut last;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => {
                    panic!("graydar-agent exited before it was ready ({status}); its log follows")
                }
                Ok(None) => {}
                Err(e) => panic!("wait on graydar-agent: {e}"),
            }
            match self.try_get("/readyz") {
                Ok((200, _)) => return,
                Ok((status, body)) => last = format!("HTTP {status}: {body}"),
                Err(e) => last = e,
            }
            if Instant::now() > deadline {
                panic!(
                    "graydar-agent not ready after {timeout:?} (last /readyz: {last}); \
                     its log follows"
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Process id of the agent.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The agent's log up to now (stdout and stderr).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path)
            .unwrap_or_else(|e| format!("(cannot read {}: {e})", self.log_path.display()))
    }

    /// `GET path`, returning status and body; Err on connection or protocol
    /// failure.
    pub fn try_get(&self, path: &str) -> Result<(u16, String), String> {
        let addr = self.addr;
        match self.ns {
            Some(ns) => ns.run_in(move || http_get(addr, path)),
            None => http_get(addr, path),
        }
    }

    /// `GET path`, panicking when the agent does not answer.
    pub fn get(&self, path: &str) -> (u16, String) {
        self.try_get(path)
            .unwrap_or_else(|e| panic!("GET {path} from graydar-agent: {e}; its log follows"))
    }

    /// `/metrics` text; panics unless 200.
    pub fn metrics(&self) -> String {
        let (status, body) = self.get("/metrics");
        assert_eq!(status, 200, "GET /metrics: {body}");
        body
    }

    /// `/api/v1/findings`, typed; panics unless 200 and well-formed.
    pub fn findings(&self) -> FindingsResponse {
        let (status, body) = self.get("/api/v1/findings");
        assert_eq!(status, 200, "GET /api/v1/findings: {body}");
        serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("/api/v1/findings is not a FindingsResponse: {e}: {body}"))
    }

    /// The finding of `kind` on `subject`, if the agent lists one.
    pub fn finding(&self, kind: FindingKind, subject: &str) -> Option<Finding> {
        self.findings()
            .findings
            .into_iter()
            .find(|f| f.kind == kind && f.subject == subject)
    }

    /// Whether a finding of `kind` on `subject` is in `state`.
    pub fn finding_in_state(&self, kind: FindingKind, subject: &str, state: FindingState) -> bool {
        self.finding(kind, subject).is_some_and(|f| f.state == state)
    }

    /// Polls `cond` every 250 ms until it holds; panics after `timeout` with
    /// `what`, the last metrics and the findings (the agent's log is printed
    /// when the guard drops during the panic).
    pub fn wait_for(&self, timeout: Duration, what: &str, mut cond: impl FnMut(&Self) -> bool) {
        let start = Instant::now();
        loop {
            if cond(self) {
                return;
            }
            if start.elapsed() > timeout {
                let metrics = self.try_get("/metrics").map(|(_, b)| b).unwrap_or_else(|e| e);
                let findings = self.try_get("/api/v1/findings").map(|(_, b)| b).unwrap_or_else(|e| e);
                panic!(
                    "timed out after {timeout:?} waiting for: {what}\n--- findings ---\n{findings}\n\
                     --- metrics (graydar_*) ---\n{}\n(agent log follows)",
                    metrics
                        .lines()
                        .filter(|l| l.starts_with("graydar_"))
                        .collect::<Vec<_>>()
                        .join("\n"),
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
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
        eprintln!("graydar-agent (pid {pid}) ignored SIGTERM for 5 s: SIGKILL");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for AgentProcess<'_> {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!(
                "--- graydar-agent log ({}, last {LOG_TAIL_LINES} lines) ---\n{}\n--- end of agent log ---",
                self.ns.map_or("host netns", |n| n.name()),
                tail(&self.log(), LOG_TAIL_LINES)
            );
        }
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Minimal HTTP/1.1 GET with `Connection: close` (handles Content-Length,
/// chunked and read-to-EOF bodies).
pub fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    http_request(addr, "GET", path, None, None)
}

/// [`http_get`] with any method, an optional bearer token and an optional
/// JSON body.
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    json_body: Option<&str>,
) -> Result<(u16, String), String> {
    let mut stream = TcpStream::connect_timeout(&addr, HTTP_TIMEOUT).map_err(|e| format!("connect {addr}: {e}"))?;
    stream.set_read_timeout(Some(HTTP_TIMEOUT)).map_err(|e| e.to_string())?;
    stream
        .set_write_timeout(Some(HTTP_TIMEOUT))
        .map_err(|e| e.to_string())?;
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: */*\r\nConnection: close\r\n");
    if let Some(t) = token {
        head.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    let body = json_body.unwrap_or_default();
    if json_body.is_some() {
        head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    write!(stream, "{head}\r\n{body}").map_err(|e| format!("send request to {addr}: {e}"))?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .map_err(|e| format!("read response from {addr}: {e}"))?;
    parse_response(&raw)
}

fn parse_response(raw: &[u8]) -> Result<(u16, String), String> {
    let head_end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| format!("no end of headers in {} bytes", raw.len()))?;
    let head = String::from_utf8_lossy(&raw[..head_end]);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let mut chunked = false;
    let mut length = None;
    for line in lines {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
        if k == "transfer-encoding" && v.to_ascii_lowercase().contains("chunked") {
            chunked = true;
        } else if k == "content-length" {
            length = Some(v.parse::<usize>().map_err(|e| format!("content-length {v:?}: {e}"))?);
        }
    }
    let body = &raw[head_end + 4..];
    let body = if chunked {
        dechunk(body)?
    } else if let Some(n) = length {
        body.get(..n)
            .ok_or_else(|| format!("body shorter ({}) than content-length {n}", body.len()))?
            .to_vec()
    } else {
        body.to_vec()
    };
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

fn dechunk(mut body: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let line_end = body
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("chunk size line not terminated")?;
        let size_text = String::from_utf8_lossy(&body[..line_end]);
        let size_hex = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_hex, 16).map_err(|e| format!("chunk size {size_hex:?}: {e}"))?;
        body = &body[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        out.extend_from_slice(body.get(..size).ok_or("truncated chunk")?);
        body = body.get(size + 2..).ok_or("chunk not followed by CRLF")?;
    }
}

/// The path-mesh key every test agent with static peers shares: a key file
/// (`[paths] key_file`) at one fixed path, written once per test process
/// through a temporary file and a rename (every process writes the same
/// bytes, so concurrent test binaries never see a partial file, and no run
/// leaves a file of its own behind). The secret is the bytes 0..32, fine for
/// tests only.
pub fn mesh_key_file() -> std::path::PathBuf {
    static FILE: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    FILE.get_or_init(|| {
        let dir = std::env::temp_dir();
        let path = dir.join("graydar-test-mesh.key");
        let tmp = dir.join(format!(".graydar-test-mesh.key.{}", std::process::id()));
        std::fs::write(&tmp, format!("{MESH_KEY_ID} {MESH_KEY}\n")).expect("write the mesh key file");
        std::fs::rename(&tmp, &path).expect("rename the mesh key file into place");
        path
    })
    .clone()
}

/// The id and base64 secret of [`mesh_key_file`].
pub const MESH_KEY_ID: u8 = 1;
pub const MESH_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_content_length_and_chunked_responses() {
        let r = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello";
        assert_eq!(parse_response(r).expect("parse"), (200, "hello".into()));
        let r = b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n";
        assert_eq!(parse_response(r).expect("parse"), (503, "abcde".into()));
        let r = b"HTTP/1.1 200 OK\r\n\r\nuntil eof";
        assert_eq!(parse_response(r).expect("parse"), (200, "until eof".into()));
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n").is_err());
        assert!(parse_response(b"garbage\r\n\r\n").is_err());
    }

    #[test]
    fn http_get_against_a_local_server() {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        let server = std::thread::spawn(move || {
            let (mut s, _) = l.accept().expect("accept");
            // Read the whole request head before answering: closing with
            // unread bytes makes the kernel send RST, which races the reply.
            let mut raw = Vec::new();
            let mut buf = [0u8; 1024];
            while !raw.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut buf).expect("read request");
                assert!(n > 0, "client closed before finishing its request");
                raw.extend_from_slice(&buf[..n]);
            }
            let req = String::from_utf8_lossy(&raw).into_owned();
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                .expect("write");
            req
        });
        assert_eq!(http_get(addr, "/readyz").expect("get"), (200, "ok".into()));
        let req = server.join().expect("server thread");
        assert!(req.starts_with("GET /readyz HTTP/1.1\r\n"), "{req}");
    }
}
