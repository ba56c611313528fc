//! A real Prometheus server (Debian's `prometheus`) for tests, and the
//! shipped rules with short `for:` durations (deploy_prometheus.rs checks
//! the shipped alerts with it; netns_gamedays.rs gives it to the controller).

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::agent::http_get;
use crate::netns::NetNs;

/// A Prometheus server (Debian's `prometheus`) inside a namespace, on its
/// loopback; killed on drop, its log printed when a test fails.
pub struct PrometheusServer<'ns> {
    child: Child,
    ns: &'ns NetNs,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl<'ns> PrometheusServer<'ns> {
    pub fn start(ns: &'ns NetNs, config: &str, rules: &str) -> PrometheusServer<'ns> {
        PrometheusServer::start_listening(ns, "127.0.0.1:9090", config, rules)
    }

    /// [`PrometheusServer::start`] listening on `listen` in the namespace
    /// (`0.0.0.0:9090`: reachable from the namespaces next to it too).
    pub fn start_listening(ns: &'ns NetNs, listen: &str, config: &str, rules: &str) -> PrometheusServer<'ns> {
        let dir = tempfile::Builder::new()
            .prefix("graydar-prometheus")
            .tempdir()
            .expect("temp dir");
        std::fs::write(dir.path().join("prometheus.yml"), config).expect("write prometheus.yml");
        std::fs::write(dir.path().join("graydar.rules.yml"), rules).expect("write rules");
        let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log file");
        let addr: SocketAddr = "127.0.0.1:9090".parse().expect("addr");
        let child = Command::new("ip")
            .args(["netns", "exec", ns.name(), "prometheus"])
            .arg(format!("--config.file={}", dir.path().join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address={listen}"))
            .arg("--log.level=info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log"))
            .stderr(log)
            .spawn()
            .expect("start prometheus (Debian package prometheus; `cargo xtask setup`)");
        let mut server = PrometheusServer { child, ns, addr, dir };
        server.wait(Duration::from_secs(30), "Prometheus ready", |p| {
            p.get("/-/ready").is_ok_and(|(status, _)| status == 200)
        });
        server
    }

    pub fn get(&self, path: &str) -> Result<(u16, String), String> {
        let addr = self.addr;
        self.ns.run_in(move || http_get(addr, path))
    }

    /// `GET /api/v1/...` as JSON; panics unless `"status":"success"`.
    pub fn api(&self, path: &str) -> serde_json::Value {
        let (status, body) = self
            .get(path)
            .unwrap_or_else(|e| panic!("GET {path} from Prometheus: {e}"));
        let v: serde_json::Value =
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {body}"));
        assert!(
            status == 200 && v["status"] == "success",
            "{path}: HTTP {status}: {body}"
        );
        v
    }

    pub fn wait(&mut self, timeout: Duration, what: &str, mut cond: impl FnMut(&Self) -> bool) {
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("prometheus exited ({status}) while waiting for {what}");
            }
            if cond(self) {
                return;
            }
            assert!(
                start.elapsed() < timeout,
                "timed out after {timeout:?} waiting for {what}"
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }
}

impl Drop for PrometheusServer<'_> {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            eprintln!(
                "--- prometheus log (last 60 lines) ---\n{}\n--- end ---",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
    }
}

/// The shipped rules with every `for:` shortened to `short`, so that the
/// test runs in seconds (the only change).
pub fn rules_with_short_for(short: &str) -> String {
    let text = std::fs::read_to_string(crate::deploy::workspace().join("deploy/prometheus/graydar.rules.yml"))
        .expect("read rules");
    let mut changed = 0;
    let out: Vec<String> = text
        .lines()
        .map(|l| {
            let t = l.trim_start();
            if t.starts_with("for: ") {
                changed += 1;
                format!("{}for: {short}", &l[..l.len() - t.len()])
            } else {
                l.to_owned()
            }
        })
        .collect();
    assert!(changed >= 10, "expected a `for:` per alert, rewrote {changed}");
    out.join("\n") + "\n"
}
