//! Blocking client of the controller's `/api/v1` (the `graydar` CLI, the
//! tests and the benchmarks use it; the agent talks through its async
//! channel, agent/src/channel/), over HTTP or HTTPS (rustls).

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::api::{
    AgentInfo, AgentList, ApiError, BatchResponse, FindingDetail, FindingList, HeartbeatRequest, HeartbeatResponse,
    RegisterRequest, RegisterResponse, TransitionBatch,
};
use crate::timestamp::Timestamp;

/// Largest response body read (the findings list of a big fleet).
const MAX_RESPONSE: u64 = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The controller could not be reached (refused, timeout, TLS, reset).
    #[error("{url}: {message}")]
    Transport { url: String, message: String },
    /// The controller answered with an error status.
    #[error("{url}: HTTP {status}: {error}: {detail}")]
    Api {
        url: String,
        status: u16,
        error: String,
        detail: String,
    },
    /// The controller's answer is not what the API defines.
    #[error("{url}: unexpected response (HTTP {status}): {message}")]
    Decode { url: String, status: u16, message: String },
    #[error("CA certificate: {0}")]
    Ca(String),
}

impl ClientError {
    /// HTTP status of an API error.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } | ClientError::Decode { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Whether retrying later may succeed (transport errors, 5xx, 429).
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Transport { .. } => true,
            ClientError::Api { status, .. } | ClientError::Decode { status, .. } => *status >= 500 || *status == 429,
            ClientError::Ca(_) => false,
        }
    }
}

/// Where the controller is and how to authenticate.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// e.g. `http://127.0.0.1:8477` or `https://controller:8477`.
    pub url: String,
    pub token: Option<String>,
    /// PEM of the CA (or self-signed certificate) to trust for HTTPS; the
    /// Mozilla roots when absent.
    pub ca_cert_pem: Option<Vec<u8>>,
    /// Whole-request timeout.
    pub timeout: Duration,
}

impl ClientConfig {
    pub fn new(url: impl Into<String>, token: Option<String>) -> ClientConfig {
        ClientConfig {
            url: url.into(),
            token,
            ca_cert_pem: None,
            timeout: Duration::from_secs(10),
        }
    }
}

pub struct Client {
    http: ureq::Agent,
    base: String,
    token: Option<String>,
}

pub use crate::url::encode_segment;

/// Filters of `GET /api/v1/findings`.
#[derive(Clone, Debug, Default)]
pub struct FindingQuery {
    pub kind: Option<String>,
    pub severity: Option<String>,
    pub state: Option<String>,
    pub agent: Option<String>,
    /// Findings updated at or after.
    pub since: Option<Timestamp>,
    pub limit: Option<u32>,
}

impl Client {
    pub fn new(cfg: ClientConfig) -> Result<Client, ClientError> {
        let mut b = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(cfg.timeout))
            .max_idle_connections_per_host(4);
        if let Some(pem) = &cfg.ca_cert_pem {
            let certs: Vec<ureq::tls::Certificate<'static>> = ureq::tls::parse_pem(pem)
                .filter_map(|item| match item {
                    Ok(ureq::tls::PemItem::Certificate(c)) => Some(Ok(c)),
                    Ok(_) => None,
                    Err(e) => Some(Err(e)),
                })
                .collect::<Result<_, _>>()
                .map_err(|e| ClientError::Ca(e.to_string()))?;
            if certs.is_empty() {
                return Err(ClientError::Ca("no CERTIFICATE in the PEM".into()));
            }
            b = b.tls_config(
                ureq::tls::TlsConfig::builder()
                    .root_certs(ureq::tls::RootCerts::Specific(Arc::new(certs)))
                    .build(),
            );
        }
        Ok(Client {
            http: b.build().into(),
            base: cfg.url.trim_end_matches('/').to_owned(),
            token: cfg.token,
        })
    }

    /// The same client (connection pool, URL) with another bearer token:
    /// one simulator speaking for many agents, each with its credential.
    pub fn with_token(&self, token: impl Into<String>) -> Client {
        Client {
            http: self.http.clone(),
            base: self.base.clone(),
            token: Some(token.into()),
        }
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    fn finish<T: DeserializeOwned>(
        &self,
        url: &str,
        res: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<T, ClientError> {
        let mut resp = res.map_err(|e| ClientError::Transport {
            url: url.to_owned(),
            message: e.to_string(),
        })?;
        let status = resp.status().as_u16();
        let body = resp
            .body_mut()
            .with_config()
            .limit(MAX_RESPONSE)
            .read_to_string()
            .map_err(|e| ClientError::Transport {
                url: url.to_owned(),
                message: format!("reading the response: {e}"),
            })?;
        if !(200..300).contains(&status) {
            return Err(match serde_json::from_str::<ApiError>(&body) {
                Ok(e) => ClientError::Api {
                    url: url.to_owned(),
                    status,
                    error: e.error,
                    detail: e.detail,
                },
                Err(_) => ClientError::Api {
                    url: url.to_owned(),
                    status,
                    error: "http_error".into(),
                    detail: body.chars().take(200).collect(),
                },
            });
        }
        // 204 No Content decodes as `()`.
        let body = if status == 204 && body.is_empty() {
            "null"
        } else {
            &body
        };
        serde_json::from_str(body).map_err(|e| ClientError::Decode {
            url: url.to_owned(),
            status,
            message: e.to_string(),
        })
    }

    /// `GET path` (path starts with `/`), decoded as `T`.
    pub fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let url = format!("{}{path}", self.base);
        let req = self.authed(self.http.get(&url));
        let res = req.call();
        self.finish(&url, res)
    }

    /// `req` with the bearer token, when there is one.
    fn authed<B>(&self, req: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
        match &self.token {
            Some(t) => req.header("Authorization", format!("Bearer {t}")),
            None => req,
        }
    }

    /// `POST path` with a JSON body, decoded as `T`.
    pub fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T, ClientError> {
        self.post_with_status(path, body).map(|(_, v)| v)
    }

    /// `DELETE path`, decoded as `T`.
    pub fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let url = format!("{}{path}", self.base);
        let req = self.authed(self.http.delete(&url));
        let res = req.call();
        self.finish(&url, res)
    }

    /// `POST path` with a JSON body: the status and the decoded body (for
    /// endpoints with more than one success status, e.g. 200 / 202).
    pub fn post_with_status<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<(u16, T), ClientError> {
        let url = format!("{}{path}", self.base);
        let req = self.http.post(&url);
        self.send_json(&url, req, body)
    }

    /// `PUT path` with a JSON body, decoded as `T`.
    pub fn put<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T, ClientError> {
        let url = format!("{}{path}", self.base);
        let req = self.http.put(&url);
        self.send_json(&url, req, body).map(|(_, v)| v)
    }

    fn send_json<B: Serialize, T: DeserializeOwned>(
        &self,
        url: &str,
        req: ureq::RequestBuilder<ureq::typestate::WithBody>,
        body: &B,
    ) -> Result<(u16, T), ClientError> {
        let text = serde_json::to_string(body).map_err(|e| ClientError::Decode {
            url: url.to_owned(),
            status: 0,
            message: format!("encoding the request: {e}"),
        })?;
        let res = self.authed(req.content_type("application/json")).send(text);
        let status = res.as_ref().map(|r| r.status().as_u16()).unwrap_or(0);
        self.finish(url, res).map(|v| (status, v))
    }

    pub fn register(&self, req: &RegisterRequest) -> Result<RegisterResponse, ClientError> {
        self.post("/api/v1/agents/register", req)
    }

    pub fn heartbeat(&self, hostname: &str, req: &HeartbeatRequest) -> Result<HeartbeatResponse, ClientError> {
        self.post(&format!("/api/v1/agents/{}/heartbeat", encode_segment(hostname)), req)
    }

    pub fn push_transitions(&self, hostname: &str, batch: &TransitionBatch) -> Result<BatchResponse, ClientError> {
        self.post(
            &format!("/api/v1/agents/{}/transitions", encode_segment(hostname)),
            batch,
        )
    }

    pub fn agents(&self) -> Result<AgentList, ClientError> {
        self.get("/api/v1/agents")
    }

    pub fn agent(&self, hostname: &str) -> Result<AgentInfo, ClientError> {
        self.get(&format!("/api/v1/agents/{}", encode_segment(hostname)))
    }

    pub fn findings(&self, q: &FindingQuery) -> Result<FindingList, ClientError> {
        let mut params = Vec::new();
        for (k, v) in [
            ("kind", &q.kind),
            ("severity", &q.severity),
            ("state", &q.state),
            ("agent", &q.agent),
            ("since", &q.since.map(|t| t.to_string())),
        ] {
            if let Some(v) = v {
                params.push(format!("{k}={}", encode_segment(v)));
            }
        }
        if let Some(l) = q.limit {
            params.push(format!("limit={l}"));
        }
        let qs = if params.is_empty() {
            String::new()
        } else {
            format!("?{}", params.join("&"))
        };
        self.get(&format!("/api/v1/findings{qs}"))
    }

    pub fn finding(&self, id: &str) -> Result<FindingDetail, ClientError> {
        self.get(&format!("/api/v1/findings/{}", encode_segment(id)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_percent_encoded() {
        assert_eq!(encode_segment("node-1.example"), "node-1.example");
        assert_eq!(encode_segment("a b/c"), "a%20b%2Fc");
        assert_eq!(
            encode_segment("2026-01-01T00:00:00+01:00"),
            "2026-01-01T00%3A00%3A00%2B01%3A00"
        );
    }

    #[test]
    fn transport_errors_are_transient_and_4xx_are_not() {
        let c = Client::new(ClientConfig {
            timeout: Duration::from_secs(2),
            ..ClientConfig::new("http://127.0.0.1:1", None)
        })
        .expect("client");
        let e = c.agents().expect_err("nothing listens on port 1");
        assert!(e.is_transient(), "{e}");
        let api = ClientError::Api {
            url: String::new(),
            status: 404,
            error: "not_found".into(),
            detail: String::new(),
        };
        assert!(!api.is_transient());
        assert_eq!(api.status(), Some(404));
    }
}
