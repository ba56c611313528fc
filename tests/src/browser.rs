//! A real headless Chromium for the console's tests: Debian's `chromium`
//! and `chromium-driver` (installed by `cargo xtask setup`), driven over
//! WebDriver with fantoccini. Each page a test visits is checked the same
//! way: everything it loaded came from the controller's origin, the
//! browser logged no Content-Security-Policy violation and no failed load,
//! and a screenshot of it is written as a test artifact.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::wd::{Capabilities, WebDriverCompatibleCommand};
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde_json::{Value, json};

pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// Fails loudly when the browser is not installed: the test must not pass
/// by not running.
pub fn require_chromium() {
    for p in [CHROMIUM, CHROMEDRIVER] {
        assert!(
            Path::new(p).exists(),
            "{p} is missing: the console's browser test needs Debian's chromium and chromium-driver \
             (run `cargo xtask setup` as root)"
        );
    }
}

/// Where a test's screenshots and downloads go: `target/test-artifacts/<name>`
/// (emptied first), kept after the run for a person to look at.
pub fn artifacts_dir(name: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::deploy::workspace().join("target"));
    let dir = target.join("test-artifacts").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    dir
}

/// chromedriver on 127.0.0.1:`port` of the calling thread's network
/// namespace, in a process group of its own so that dropping it also ends
/// every Chromium it started.
pub struct Chromedriver {
    child: Child,
    url: String,
    log: PathBuf,
}

impl Chromedriver {
    pub fn start(port: u16, dir: &Path) -> Chromedriver {
        require_chromium();
        let log = dir.join("chromedriver.log");
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", log.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("start {CHROMEDRIVER}: {e}"));
        let d = Chromedriver {
            child,
            url: format!("http://127.0.0.1:{port}"),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "chromedriver did not listen on {port} within 20 s:\n{}",
                d.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        d
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Chromedriver {
    fn drop(&mut self) {
        let _ = killpg(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

/// chromedriver's log endpoint (not in the W3C protocol, so not in
/// fantoccini): the browser console's entries since the last call.
#[derive(Debug)]
struct BrowserLog;

impl WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(&self, base: &url::Url, session: Option<&str>) -> Result<url::Url, url::ParseError> {
        base.join(&format!("session/{}/se/log", session.unwrap_or_default()))
    }

    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        (http::Method::POST, Some(json!({"type": "browser"}).to_string()))
    }
}

/// One browser window (one WebDriver session, its own profile and cookies)
/// on the controller at `origin`.
pub struct Browser {
    pub client: Client,
    origin: String,
    shots: PathBuf,
    /// Warnings or errors a page is expected to cause (e.g. a 403's "Failed to load
    /// resource"), matched by substring; emptied by each check.
    expected_log: Vec<String>,
    seq: u32,
}

impl Browser {
    /// A fresh headless Chromium of `width`×`height`, its downloads going to
    /// `shots/downloads`.
    pub async fn open(driver: &Chromedriver, origin: &str, shots: &Path, width: u32, height: u32) -> Browser {
        std::fs::create_dir_all(shots.join("downloads")).expect("create the downloads dir");
        let mut caps = Capabilities::new();
        caps.insert("browserName".into(), json!("chrome"));
        caps.insert("goog:loggingPrefs".into(), json!({"browser": "ALL"}));
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": CHROMIUM,
                "args": [
                    "--headless=new",
                    // Tests run as root, where Chromium's sandbox cannot start.
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--disable-default-apps",
                    "--hide-scrollbars",
                    "--lang=en-US",
                    format!("--window-size={width},{height}"),
                ],
                "prefs": {
                    "download.default_directory": shots.join("downloads"),
                    "download.prompt_for_download": false,
                },
            }),
        );
        let client = ClientBuilder::new(HttpConnector::new())
            .capabilities(caps)
            .connect(&driver.url)
            .await
            .unwrap_or_else(|e| panic!("a Chromium session from chromedriver: {e}\n{}", driver.log()));
        // Bounded: no page may take longer to load, no script longer to run.
        client
            .update_timeouts(fantoccini::wd::TimeoutConfiguration::new(
                Some(Duration::from_secs(10)),
                Some(Duration::from_secs(20)),
                Some(Duration::ZERO),
            ))
            .await
            .expect("set the session's timeouts");
        Browser {
            client,
            origin: origin.to_owned(),
            shots: shots.to_owned(),
            expected_log: Vec::new(),
            seq: 0,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.origin)
    }

    /// The current page's path (and query).
    pub async fn path(&self) -> String {
        let u = self.client.current_url().await.expect("current URL");
        match u.query() {
            Some(q) => format!("{}?{q}", u.path()),
            None => u.path().to_owned(),
        }
    }

    /// Opens `path` and checks the page (see [`Browser::check`]) as `name`.
    pub async fn visit(&mut self, path: &str, name: &str) {
        self.client
            .goto(&self.url(path))
            .await
            .unwrap_or_else(|e| panic!("open {path}: {e}"));
        self.check(name).await;
    }

    /// The HTTP status of the document now shown.
    pub async fn status(&self) -> u64 {
        let v = self
            .js("return performance.getEntriesByType('navigation')[0].responseStatus")
            .await;
        v.as_u64().unwrap_or_else(|| panic!("no navigation status: {v}"))
    }

    /// The page now shown: everything it loaded came from the controller,
    /// the browser logged no policy violation or failed load (beyond the
    /// ones announced with [`Browser::expect_log`]); its screenshot is
    /// written as `NN-name.png`.
    pub async fn check(&mut self, name: &str) {
        let loaded = self
            .js("return performance.getEntriesByType('navigation')\
                 .concat(performance.getEntriesByType('resource')).map(e => e.name)")
            .await;
        let loaded: Vec<String> = loaded
            .as_array()
            .unwrap_or_else(|| panic!("resource entries: {loaded}"))
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect();
        let here = format!("{}/", self.origin);
        let foreign: Vec<&String> = loaded.iter().filter(|u| !u.starts_with(&here)).collect();
        assert!(foreign.is_empty(), "{name}: loaded from elsewhere: {foreign:?}");
        let log = self.client.issue_cmd(BrowserLog).await.expect("the browser's log");
        let expected = std::mem::take(&mut self.expected_log);
        let bad: Vec<String> = log
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| {
                let m = e["message"].as_str().unwrap_or_default();
                (matches!(e["level"].as_str(), Some("SEVERE" | "WARNING")) || m.contains("Content Security Policy"))
                    && !expected.iter().any(|x| m.contains(x.as_str()))
            })
            .map(|e| format!("{}: {}", e["level"], e["message"]))
            .collect();
        assert!(bad.is_empty(), "{name}: the browser logged {bad:#?}");
        self.shot(name).await;
    }

    /// Announces a log entry the next check must accept.
    pub fn expect_log(&mut self, substring: &str) {
        self.expected_log.push(substring.to_owned());
    }

    pub async fn shot(&mut self, name: &str) {
        self.seq += 1;
        let png = self.client.screenshot().await.expect("screenshot");
        let file = self.shots.join(format!("{:02}-{name}.png", self.seq));
        std::fs::write(&file, png).unwrap_or_else(|e| panic!("write {}: {e}", file.display()));
    }

    pub async fn js(&self, script: &str) -> Value {
        self.client
            .execute(script, vec![])
            .await
            .unwrap_or_else(|e| panic!("script {script:?}: {e}"))
    }

    pub async fn find(&self, css: &str) -> fantoccini::elements::Element {
        match self.client.find(Locator::Css(css)).await {
            Ok(e) => e,
            Err(e) => panic!("no {css} on {}: {e}", self.path().await),
        }
    }

    pub async fn count(&self, css: &str) -> usize {
        self.client.find_all(Locator::Css(css)).await.map_or(0, |v| v.len())
    }

    /// The visible text of the first `css`.
    pub async fn text(&self, css: &str) -> String {
        self.find(css).await.text().await.expect("element text")
    }

    /// The text of the page's `<main>`.
    pub async fn main_text(&self) -> String {
        self.text("main").await
    }

    /// Ticks the confirmation box of the form `form` and presses its submit
    /// button, as a person would; returns once the answer is shown.
    pub async fn confirm_and_submit(&self, form: &str) {
        self.find(&format!("{form} input[name=confirm]"))
            .await
            .click()
            .await
            .expect("tick the confirmation box");
        self.click_to_next_page(&format!("{form} button[type=submit]")).await;
    }

    /// Clicks `css` (a link or a submit button) and waits until the next
    /// page has loaded: a click returns before a form's answer arrives.
    pub async fn click_to_next_page(&self, css: &str) {
        self.js("document.documentElement.dataset.leaving = '1'; return 1")
            .await;
        self.find(css)
            .await
            .click()
            .await
            .unwrap_or_else(|e| panic!("click {css}: {e}"));
        self.wait_for_new_page(css).await;
    }

    /// Posts a form the page does not have (`fields` as hidden inputs) to
    /// `action`, as a forged page would, and waits for the answer.
    pub async fn post_form(&self, action: &str, fields: &[(&str, &str)]) {
        let script = "document.documentElement.dataset.leaving = '1';\
            const f = document.createElement('form'); f.method = 'post'; f.action = arguments[0];\
            for (const [n, v] of arguments[1]) {\
              const i = document.createElement('input'); i.type = 'hidden'; i.name = n; i.value = v;\
              f.appendChild(i); }\
            document.body.appendChild(f); f.submit(); return 1";
        self.client
            .execute(script, vec![json!(action), json!(fields)])
            .await
            .unwrap_or_else(|e| panic!("post a form to {action}: {e}"));
        self.wait_for_new_page(action).await;
    }

    /// Opens `path` again every 250 ms until the number of `css` on it
    /// satisfies `want`, for at most `limit`.
    pub async fn reload_until(&self, path: &str, css: &str, limit: Duration, what: &str, want: impl Fn(usize) -> bool) {
        self.wait_for(limit, what, || async {
            self.client.goto(&self.url(path)).await.ok()?;
            want(self.count(css).await).then_some(())
        })
        .await;
    }

    /// Waits until the document marked by [`Browser::click_to_next_page`]
    /// (or [`Browser::post_form`]) has been replaced and loaded.
    pub async fn wait_for_new_page(&self, what: &str) {
        self.wait_for(Duration::from_secs(15), &format!("the page after {what}"), || async {
            let v = self
                .client
                .execute(
                    "return document.readyState === 'complete' && !document.documentElement.dataset.leaving",
                    vec![],
                )
                .await
                .ok()?;
            (v == Value::Bool(true)).then_some(())
        })
        .await;
    }

    /// Polls `f` (which may navigate) every 250 ms until it answers, for at
    /// most `limit`.
    pub async fn wait_for<T, F, Fut>(&self, limit: Duration, what: &str, mut f: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(v) = f().await {
                return v;
            }
            assert!(Instant::now() < deadline, "not within {limit:?}: {what}");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// No horizontal scrolling of the page itself (wide tables scroll in
    /// their own box).
    pub async fn fits_width(&self) -> (u64, u64) {
        let v = self
            .js("return [document.documentElement.scrollWidth, window.innerWidth]")
            .await;
        (v[0].as_u64().unwrap_or(u64::MAX), v[1].as_u64().unwrap_or(0))
    }

    pub async fn close(self) {
        let _ = self.client.close().await;
    }
}
