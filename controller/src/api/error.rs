//! The API's error response and how each domain error becomes one.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use graydar_common::api::ApiError;

use crate::agents::AgentError;
use crate::agents::credentials::EnrollError;
use crate::faults::FaultError;
use crate::findings::FindingError;
use crate::gamedays::GameDayError;
use crate::paths::PathError;
use crate::services::StoreError;

/// An error response: `{ "error": code, "detail": text }` with a status.
#[derive(Debug)]
pub struct Error {
    status: StatusCode,
    code: &'static str,
    detail: String,
}

impl Error {
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Error {
        Error {
            status,
            code,
            detail: detail.into(),
        }
    }

    /// The machine-readable code (`{"error": code}`).
    pub fn code(&self) -> &'static str {
        self.code
    }

    fn invalid(e: impl std::fmt::Display) -> Error {
        Error::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", e.to_string())
    }

    fn not_found(e: impl std::fmt::Display) -> Error {
        Error::new(StatusCode::NOT_FOUND, "not_found", e.to_string())
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(status = %self.status, detail = %self.detail, "request failed");
        }
        let mut resp = (
            self.status,
            Json(ApiError {
                error: self.code.to_owned(),
                detail: self.detail,
            }),
        )
            .into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::WriterStopped => Error::invalid(e),
            // Nothing was stored: the caller retries (agents keep what they
            // could not deliver).
            e if e.is_unavailable() => Error::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", e.to_string()),
            other => Error::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", other.to_string()),
        }
    }
}

impl From<AgentError> for Error {
    fn from(e: AgentError) -> Self {
        match e {
            AgentError::NotRegistered { .. } | AgentError::NotFound { .. } => Error::not_found(e),
            AgentError::InvalidHostname { .. } => Error::invalid(e),
            AgentError::Store(s) => s.into(),
        }
    }
}

impl From<EnrollError> for Error {
    fn from(e: EnrollError) -> Self {
        match e {
            EnrollError::Enrolled { .. } | EnrollError::InUse => {
                Error::new(StatusCode::CONFLICT, "enrolled", e.to_string())
            }
            EnrollError::Store(s) => s.into(),
        }
    }
}

impl From<FindingError> for Error {
    fn from(e: FindingError) -> Self {
        match e {
            FindingError::Agent(a) => a.into(),
            FindingError::NotFound { .. } => Error::not_found(e),
            FindingError::Store(s) => s.into(),
            FindingError::WrongHost { .. } | FindingError::WrongId { .. } | FindingError::WrongState { .. } => {
                Error::invalid(e)
            }
        }
    }
}

impl From<FaultError> for Error {
    fn from(e: FaultError) -> Self {
        match e {
            FaultError::Invalid(d) => Error::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_fault", d),
            FaultError::BlastRadius { .. } => Error::new(StatusCode::CONFLICT, "blast_radius", e.to_string()),
            FaultError::Conflict { .. } => Error::new(StatusCode::CONFLICT, "conflict", e.to_string()),
            FaultError::SafetyLever { .. } => Error::new(StatusCode::CONFLICT, "safety_lever", e.to_string()),
            FaultError::NotFound { .. } => Error::not_found(e),
            FaultError::Store(s) => s.into(),
        }
    }
}

impl From<GameDayError> for Error {
    fn from(e: GameDayError) -> Self {
        match e {
            GameDayError::Invalid(_) => Error::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_gameday", e.to_string()),
            GameDayError::Exists { .. } => Error::new(StatusCode::CONFLICT, "exists", e.to_string()),
            GameDayError::NotFound { .. } | GameDayError::RunNotFound { .. } => Error::not_found(e),
            GameDayError::RunActive { .. } => Error::new(StatusCode::CONFLICT, "run_active", e.to_string()),
            GameDayError::Preflight { lever: true, .. } => {
                Error::new(StatusCode::CONFLICT, "safety_lever", e.to_string())
            }
            GameDayError::Preflight { .. } => Error::new(StatusCode::CONFLICT, "preflight", e.to_string()),
            GameDayError::NoGate { .. } => Error::new(StatusCode::CONFLICT, "no_gate", e.to_string()),
            GameDayError::Ended { .. } => Error::new(StatusCode::CONFLICT, "ended", e.to_string()),
            GameDayError::Store(s) => s.into(),
        }
    }
}

impl From<PathError> for Error {
    fn from(e: PathError) -> Self {
        match e {
            PathError::Invalid(d) => Error::invalid(d),
            PathError::Agent(a) => a.into(),
            PathError::Store(s) => s.into(),
            PathError::Random => Error::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()),
        }
    }
}
