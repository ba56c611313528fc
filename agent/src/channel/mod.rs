//! The agent's one channel to the controller: an async HTTP client on the
//! agent's tokio runtime (reqwest over rustls with the ring provider; the
//! Mozilla roots, or only `ca_cert` when set), its token looked up once.
//! The reporter (agent/src/reporter.rs), the fault assignments
//! (agent/src/faults/assign.rs) and the path mesh's sync (agent/src/signals/paths/sync.rs)
//! share it; each retries on [`Backoff`]. No request, and no long-poll,
//! holds a thread: a request in flight is a future that shutdown drops.
//!
//! Endpoints and JSON are the controller's `/api/v1` (graydar-common's wire
//! types), the same the CLI's blocking client speaks.

mod backoff;
pub mod credential;

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use graydar_common::api::{
    ApiError, BatchResponse, ClockExchange, HeartbeatRequest, HeartbeatResponse, RegisterRequest, RegisterResponse,
    TransitionBatch,
};
use graydar_common::fault_api::{DesiredFaults, FaultStatusReport, FaultStatusResponse};
use graydar_common::paths::{PathReport, PathReportResponse};
use graydar_common::url::encode_segment;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use serde::Serialize;
use serde::de::DeserializeOwned;

pub use backoff::Backoff;

use crate::config::{ConfigError, ControllerSection};

/// Largest response body read.
const MAX_RESPONSE: usize = 64 << 20;
/// Longest per-request timeout of the short requests.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Added to a long-poll's wait for its request timeout.
pub const POLL_SLACK: Duration = Duration::from_secs(10);

/// Per-request timeout of the short requests (register, heartbeat,
/// transitions, fault states, path reports).
pub fn request_timeout(section: &ControllerSection) -> Duration {
    REQUEST_TIMEOUT
        .min(section.report_interval * 4)
        .max(Duration::from_secs(2))
}

/// The channel cannot be set up from the `[controller]` section.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The token could not be read (`token_file`, the systemd credential).
    #[error(transparent)]
    Token(ConfigError),
    #[error("controller token: not usable in an HTTP header")]
    TokenNotAHeader(#[source] reqwest::header::InvalidHeaderValue),
    #[error("ca_cert {path}: {source}")]
    CaRead {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("ca_cert {path}: {source}")]
    CaParse {
        path: std::path::PathBuf,
        #[source]
        source: reqwest::Error,
    },
    #[error("ca_cert {path}: no CERTIFICATE in the PEM")]
    CaEmpty { path: std::path::PathBuf },
    #[error("controller HTTP client: {0}")]
    Client(#[source] reqwest::Error),
    /// The stored per-agent credential cannot be read.
    #[error(transparent)]
    Credential(credential::CredentialError),
}

/// One request that did not get the answer it wanted.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    /// The controller could not be reached (refused, timeout, TLS, reset).
    #[error("{url}: {}", causes(source))]
    Transport {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{url}: reading the response: more than {MAX_RESPONSE} bytes")]
    TooLarge { url: String },
    /// The controller answered with an error status.
    #[error("{url}: HTTP {status}: {error}: {detail}")]
    Api {
        url: String,
        status: u16,
        error: String,
        detail: String,
    },
    /// The controller's answer is not what the API defines.
    #[error("{url}: unexpected response (HTTP {status}): {source}")]
    Decode {
        url: String,
        status: u16,
        #[source]
        source: serde_json::Error,
    },
    #[error("{url}: encoding the request: {source}")]
    Encode {
        url: String,
        #[source]
        source: serde_json::Error,
    },
    /// This agent's credential could not be made or kept.
    #[error("{url}: enrolling: {source}")]
    Credential {
        url: String,
        #[source]
        source: credential::CredentialError,
    },
}

/// `e` and its causes, `: `-separated (reqwest's own message hides why a
/// request failed, e.g. "connection refused", in its source).
fn causes(e: &reqwest::Error) -> String {
    let mut out = e.to_string();
    let mut next = std::error::Error::source(e);
    while let Some(cause) = next {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        next = cause.source();
    }
    out
}

impl ChannelError {
    /// HTTP status of an answer that was an error or undecodable.
    pub fn status(&self) -> Option<u16> {
        match self {
            ChannelError::Api { status, .. } | ChannelError::Decode { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// Wall-clock time, ms since the Unix epoch (0 before it).
fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// A heartbeat's answer and when, on this agent's wall clock (ms since the
/// Unix epoch), the request was sent (`t1`) and the answer arrived (`t4`).
#[derive(Clone, Debug, PartialEq)]
pub struct Heartbeat {
    pub response: HeartbeatResponse,
    pub sent_ms: i64,
    pub received_ms: i64,
}

impl Heartbeat {
    /// The completed exchange, for the next heartbeat's `clock`; `None`
    /// from a controller that does not give its times.
    pub fn exchange(&self) -> Option<ClockExchange> {
        self.response.exchange(self.sent_ms, self.received_ms)
    }
}

/// The controller channel; clones share one connection pool.
#[derive(Clone)]
pub struct Channel {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    base: String,
    /// The configured token: the fleet's bootstrap token (role `agent`),
    /// or an operator token.
    auth: Option<HeaderValue>,
    /// This agent's own credential (generated and saved by it): sent
    /// instead of `auth` once enrolled.
    credential: RwLock<Option<Own>>,
    /// Where the credential is kept (`<state_dir>/controller-credential`).
    credential_file: Option<PathBuf>,
    timeout: Duration,
}

/// This agent's own credential.
#[derive(Clone)]
struct Own {
    secret: String,
    header: HeaderValue,
    /// Bound to the hostname on the controller (assumed for one loaded from
    /// the state directory: a 401 says otherwise).
    enrolled: bool,
}

impl Own {
    fn new(path: &Path, secret: String, enrolled: bool) -> Result<Own, credential::CredentialError> {
        let header = bearer(&secret).map_err(|_| credential::CredentialError::Garbled { path: path.to_owned() })?;
        Ok(Own {
            secret,
            header,
            enrolled,
        })
    }
}

fn bearer(token: &str) -> Result<HeaderValue, reqwest::header::InvalidHeaderValue> {
    let mut v = HeaderValue::from_str(&format!("Bearer {token}"))?;
    v.set_sensitive(true);
    Ok(v)
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel")
            .field("base", &self.inner.base)
            .field("token", &self.inner.auth.as_ref().map(|_| "<redacted>"))
            .field("credential_file", &self.inner.credential_file)
            .field("timeout", &self.inner.timeout)
            .finish()
    }
}

impl Channel {
    /// The channel of a `[controller]` section: the token as
    /// [`ControllerSection::resolve_token_from`] finds it in the process
    /// environment (the systemd credential included), the CA certificate,
    /// [`request_timeout`] per short request, and this agent's credential
    /// kept under `state_dir` ([`credential::FILE`]; loaded when present).
    pub fn new(section: &ControllerSection, state_dir: &Path) -> Result<Channel, SetupError> {
        let token = section
            .resolve_token_from(&|k| std::env::var(k).ok())
            .map_err(SetupError::Token)?;
        if token.is_none() {
            tracing::warn!(
                "controller: no token configured (token, token_file, GRAYDAR_CONTROLLER_TOKEN or the systemd \
                 credential controller-token)"
            );
        }
        let ca_cert_pem = match &section.ca_cert {
            Some(path) => Some((
                path,
                std::fs::read(path).map_err(|source| SetupError::CaRead {
                    path: path.clone(),
                    source,
                })?,
            )),
            None => None,
        };
        let mut channel = Channel::build(
            &section.url,
            token.as_deref(),
            ca_cert_pem.as_ref().map(|(p, pem)| (p.as_path(), pem.as_slice())),
            request_timeout(section),
        )?;
        channel.keep_credential_in(&state_dir.join(credential::FILE))?;
        Ok(channel)
    }

    /// Keeps this agent's credential in `path` (loading it when present).
    /// Only on a channel not cloned yet.
    pub fn keep_credential_in(&mut self, path: &Path) -> Result<(), SetupError> {
        let own = match credential::load(path).map_err(SetupError::Credential)? {
            Some(secret) => Some(Own::new(path, secret, true).map_err(SetupError::Credential)?),
            None => None,
        };
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.credential_file = Some(path.to_owned());
            *inner.credential.get_mut().unwrap_or_else(|p| p.into_inner()) = own;
        }
        Ok(())
    }

    /// Whether this agent calls with its own credential (enrolled).
    pub fn is_enrolled(&self) -> bool {
        self.own().is_some_and(|o| o.enrolled)
    }

    fn own(&self) -> Option<Own> {
        self.inner.credential.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set_own(&self, own: Option<Own>) {
        *self.inner.credential.write().unwrap_or_else(|p| p.into_inner()) = own;
    }

    /// A channel to `url` with an optional bearer token and CA (path, PEM).
    pub fn build(
        url: &str,
        token: Option<&str>,
        ca_cert_pem: Option<(&std::path::Path, &[u8])>,
        timeout: Duration,
    ) -> Result<Channel, SetupError> {
        let mut b = reqwest::Client::builder()
            .use_rustls_tls()
            .pool_max_idle_per_host(4)
            .user_agent(concat!("graydar-agent/", env!("CARGO_PKG_VERSION")));
        if let Some((path, pem)) = ca_cert_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem).map_err(|source| SetupError::CaParse {
                path: path.to_owned(),
                source,
            })?;
            if certs.is_empty() {
                return Err(SetupError::CaEmpty { path: path.to_owned() });
            }
            b = b.tls_built_in_root_certs(false);
            for c in certs {
                b = b.add_root_certificate(c);
            }
        }
        let auth = match token {
            Some(t) => Some(bearer(t).map_err(SetupError::TokenNotAHeader)?),
            None => None,
        };
        Ok(Channel {
            inner: Arc::new(Inner {
                http: b.build().map_err(SetupError::Client)?,
                base: url.trim_end_matches('/').to_owned(),
                auth,
                credential: RwLock::new(None),
                credential_file: None,
                timeout,
            }),
        })
    }

    pub fn base_url(&self) -> &str {
        &self.inner.base
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.inner.base)
    }

    async fn get<T: DeserializeOwned>(&self, path: &str, timeout: Duration) -> Result<T, ChannelError> {
        let url = self.url(path);
        let req = self.inner.http.get(&url);
        self.send(url, req, timeout).await
    }

    async fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T, ChannelError> {
        self.post_timed(path, body).await.map(|(t, _, _)| t)
    }

    /// [`Channel::post`], with the wall-clock times the request was sent
    /// and the answer's head received.
    async fn post_timed<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<(T, i64, i64), ChannelError> {
        let url = self.url(path);
        let bytes = serde_json::to_vec(body).map_err(|source| ChannelError::Encode {
            url: url.clone(),
            source,
        })?;
        let req = self
            .inner
            .http
            .post(&url)
            .header(CONTENT_TYPE, "application/json")
            .body(bytes);
        self.send_timed(url, req, self.inner.timeout).await
    }

    async fn send<T: DeserializeOwned>(
        &self,
        url: String,
        req: reqwest::RequestBuilder,
        timeout: Duration,
    ) -> Result<T, ChannelError> {
        self.send_timed(url, req, timeout).await.map(|(t, _, _)| t)
    }

    /// Sends `req`; the decoded answer, when it was sent and when the
    /// answer's head arrived (wall clock, ms since the Unix epoch).
    async fn send_timed<T: DeserializeOwned>(
        &self,
        url: String,
        mut req: reqwest::RequestBuilder,
        timeout: Duration,
    ) -> Result<(T, i64, i64), ChannelError> {
        let own = self.own().filter(|o| o.enrolled).map(|o| o.header);
        if let Some(auth) = own.as_ref().or(self.inner.auth.as_ref()) {
            req = req.header(AUTHORIZATION, auth.clone());
        }
        let transport = |source: reqwest::Error| ChannelError::Transport {
            url: url.clone(),
            source: source.without_url(),
        };
        let req = req.timeout(timeout);
        let sent_ms = wall_ms();
        let mut resp = req.send().await.map_err(transport)?;
        let received_ms = wall_ms();
        let status = resp.status().as_u16();
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(transport)? {
            if body.len() + chunk.len() > MAX_RESPONSE {
                return Err(ChannelError::TooLarge { url });
            }
            body.extend_from_slice(&chunk);
        }
        if !(200..300).contains(&status) {
            return Err(match serde_json::from_slice::<ApiError>(&body) {
                Ok(e) => ChannelError::Api {
                    url,
                    status,
                    error: e.error,
                    detail: e.detail,
                },
                Err(_) => ChannelError::Api {
                    url,
                    status,
                    error: "http_error".into(),
                    detail: String::from_utf8_lossy(&body).chars().take(200).collect(),
                },
            });
        }
        let value = serde_json::from_slice(&body).map_err(|source| ChannelError::Decode { url, status, source })?;
        Ok((value, sent_ms, received_ms))
    }

    fn agent_path(hostname: &str, rest: &str) -> String {
        format!("/api/v1/agents/{}{rest}", encode_segment(hostname))
    }

    /// Registers this agent. Enrolled, it re-registers with its own
    /// credential. Otherwise it enrolls: it generates a credential, saves it
    /// (before anything is sent), and registers with the configured
    /// (bootstrap) token and the credential's SHA-256, which binds it to the
    /// hostname; a retry after a lost answer sends the same digest and
    /// succeeds. A credential the controller refuses (401: reset by an
    /// operator, or a new database) is replaced by a new one, enrolled the
    /// same way. Without a state directory the configured token is all.
    pub async fn register(&self, req: &RegisterRequest) -> Result<RegisterResponse, ChannelError> {
        const PATH: &str = "/api/v1/agents/register";
        let Some(path) = self.inner.credential_file.clone() else {
            return self.post(PATH, req).await;
        };
        let mut own = self.own();
        if own.as_ref().is_some_and(|o| o.enrolled) {
            match self.post(PATH, req).await {
                Err(e) if e.status() == Some(401) => {
                    tracing::warn!(
                        error = %e,
                        "the controller refused this agent's credential: enrolling a new one with the bootstrap token"
                    );
                    own = None;
                }
                other => return other,
            }
        }
        let own = match own {
            Some(o) => o,
            None => {
                let url = self.url(PATH);
                let to_err = |source| ChannelError::Credential {
                    url: url.clone(),
                    source,
                };
                let secret = credential::generate().map_err(to_err)?;
                credential::save(&path, &secret).map_err(to_err)?;
                let o = Own::new(&path, secret, false).map_err(to_err)?;
                self.set_own(Some(o.clone()));
                o
            }
        };
        let mut enroll = req.clone();
        enroll.credential_sha256 = Some(credential::digest_hex(&own.secret));
        let r = self.post::<_, RegisterResponse>(PATH, &enroll).await?;
        tracing::info!(file = %path.display(), "enrolled with the controller: calling with this agent's credential");
        self.set_own(Some(Own { enrolled: true, ..own }));
        Ok(r)
    }

    /// A heartbeat, with the wall-clock times (ms since the Unix epoch) it
    /// was sent and its answer received: with the controller's times in the
    /// answer, the exchange the next heartbeat reports
    /// ([`Heartbeat::exchange`]).
    pub async fn heartbeat(&self, hostname: &str, req: &HeartbeatRequest) -> Result<Heartbeat, ChannelError> {
        let (response, sent_ms, received_ms) = self.post_timed(&Self::agent_path(hostname, "/heartbeat"), req).await?;
        Ok(Heartbeat {
            response,
            sent_ms,
            received_ms,
        })
    }

    pub async fn push_transitions(
        &self,
        hostname: &str,
        batch: &TransitionBatch,
    ) -> Result<BatchResponse, ChannelError> {
        self.post(&Self::agent_path(hostname, "/transitions"), batch).await
    }

    /// Long-poll of this agent's desired faults: answers at once when the
    /// controller's version differs from `version`, else at the next change
    /// or after `wait` (the request's timeout is `wait` + [`POLL_SLACK`]).
    pub async fn desired_faults(
        &self,
        hostname: &str,
        wait: Duration,
        version: Option<u64>,
    ) -> Result<DesiredFaults, ChannelError> {
        let mut path = Self::agent_path(hostname, &format!("/faults?wait={}", wait.as_secs()));
        if let Some(v) = version {
            path.push_str(&format!("&version={v}"));
        }
        self.get(&path, wait + POLL_SLACK).await
    }

    pub async fn report_fault_status(
        &self,
        hostname: &str,
        report: &FaultStatusReport,
    ) -> Result<FaultStatusResponse, ChannelError> {
        self.post(&Self::agent_path(hostname, "/faults/status"), report).await
    }

    pub async fn push_paths(&self, hostname: &str, report: &PathReport) -> Result<PathReportResponse, ChannelError> {
        self.post(&Self::agent_path(hostname, "/paths"), report).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_unreachable_controller_is_a_transport_error() {
        let c = Channel::build("http://127.0.0.1:1/", None, None, Duration::from_secs(2)).expect("channel");
        assert_eq!(c.base_url(), "http://127.0.0.1:1");
        let e = c
            .heartbeat("node 1", &HeartbeatRequest::default())
            .await
            .expect_err("nothing listens on port 1");
        assert!(matches!(e, ChannelError::Transport { .. }), "{e}");
        assert_eq!(e.status(), None);
        assert!(
            e.to_string()
                .starts_with("http://127.0.0.1:1/api/v1/agents/node%201/heartbeat: "),
            "{e}"
        );
        assert!(
            e.to_string().to_lowercase().contains("refused"),
            "the cause is named: {e}"
        );
    }

    #[test]
    fn a_ca_file_without_certificates_is_refused() {
        let e = Channel::build(
            "https://controller:8477",
            Some("t"),
            Some((std::path::Path::new("/etc/ca.pem"), b"not a pem")),
            Duration::from_secs(2),
        )
        .expect_err("no certificate");
        assert!(e.to_string().starts_with("ca_cert /etc/ca.pem"), "{e}");
    }

    #[test]
    fn a_token_that_is_no_header_value_is_refused() {
        let e = Channel::build("http://controller:8477", Some("a\nb"), None, Duration::from_secs(2))
            .expect_err("newline in the token");
        assert!(matches!(e, SetupError::TokenNotAHeader(_)), "{e}");
    }

    /// A stand-in controller on loopback: the long-poll echoes the host,
    /// the query and the token back; heartbeats are unknown agents (404
    /// with the API's error body); registration fails with a bare 502.
    async fn stand_in() -> String {
        use axum::extract::{Path, RawQuery};
        use axum::http::{HeaderMap, StatusCode};
        use axum::routing::{get, post};

        let app = axum::Router::new()
            .route(
                "/api/v1/agents/{host}/faults",
                get(
                    |Path(host): Path<String>, RawQuery(q): RawQuery, headers: HeaderMap| async move {
                        let token = headers
                            .get("authorization")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_owned();
                        axum::Json(serde_json::json!({
                            "version": 7,
                            "revert_all_epoch": 0,
                            "lease_seconds": 20,
                            "faults": [{"id": format!("{host}|{}|{token}", q.unwrap_or_default()),
                                        "spec": {"kind": "blackhole", "prefix": "192.0.2.0/24"},
                                        "lease_seconds": 20}],
                        }))
                    },
                ),
            )
            .route(
                "/api/v1/agents/{host}/heartbeat",
                post(|Path(host): Path<String>| async move {
                    // `timed` is registered and answers with its times.
                    if host == "timed" {
                        let t2 = wall_ms();
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        return (
                            StatusCode::OK,
                            axum::Json(
                                serde_json::json!({"state": "healthy", "received_ms": t2, "sent_ms": wall_ms()}),
                            ),
                        );
                    }
                    (
                        StatusCode::NOT_FOUND,
                        axum::Json(serde_json::json!({"error": "not_found", "detail": "register first"})),
                    )
                }),
            )
            .route(
                "/api/v1/agents/register",
                post(|| async { (StatusCode::BAD_GATEWAY, "upstream gone") }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}")
    }

    #[tokio::test]
    async fn a_heartbeat_gives_the_times_of_its_exchange() {
        let url = stand_in().await;
        let c = Channel::build(&url, None, None, Duration::from_secs(5)).expect("channel");
        let before = wall_ms();
        let hb = c
            .heartbeat("timed", &HeartbeatRequest::default())
            .await
            .expect("heartbeat");
        let after = wall_ms();
        let e = hb.exchange().expect("the stand-in gives its times");
        // One clock on both sides: the times are in order.
        assert!(
            before <= e.t1 && e.t1 <= e.t2 && e.t2 + 20 <= e.t3 && e.t3 <= e.t4 && e.t4 <= after,
            "{e:?}"
        );
        let o = graydar_common::clock::Exchange::from(e).offset().expect("possible");
        assert!(o.offset_ms.abs() <= o.uncertainty_ms, "same clock: 0 is in {o:?}");
        // Without the controller's times there is no exchange.
        let old = Heartbeat {
            response: HeartbeatResponse {
                state: graydar_common::api::AgentState::Healthy,
                received_ms: None,
                sent_ms: None,
            },
            ..hb
        };
        assert_eq!(old.exchange(), None);
    }

    #[tokio::test]
    async fn requests_carry_the_token_and_errors_keep_the_status_and_the_body() {
        let url = stand_in().await;
        let c = Channel::build(&url, Some("s3cret"), None, Duration::from_secs(5)).expect("channel");
        let d = c
            .desired_faults("node 1", Duration::from_secs(3), Some(6))
            .await
            .expect("desired faults");
        assert_eq!(d.version, 7);
        assert_eq!(d.faults[0].id, "node 1|wait=3&version=6|Bearer s3cret");
        assert_eq!(d.faults[0].spec.kind(), graydar_common::faults::FaultKind::Blackhole);
        let e = c
            .heartbeat("node 1", &HeartbeatRequest::default())
            .await
            .expect_err("unknown agent");
        assert_eq!(e.status(), Some(404));
        assert!(
            matches!(&e, ChannelError::Api { error, detail, .. } if error == "not_found" && detail == "register first"),
            "{e}"
        );
        let reg = RegisterRequest {
            hostname: "node 1".into(),
            addresses: Vec::new(),
            labels: Default::default(),
            kernel_version: String::new(),
            agent_version: String::new(),
            capabilities: Default::default(),
            interfaces: None,
            dm_devices: None,
            credential_sha256: None,
        };
        let e = c.register(&reg).await.expect_err("bad gateway");
        assert_eq!(e.status(), Some(502));
        assert!(e.to_string().ends_with("HTTP 502: http_error: upstream gone"), "{e}");
    }
}
