//! Extractors whose rejections are API errors (JSON, with a code).

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;

use super::Error;

/// `Json<T>` whose rejections are API errors: malformed JSON 400, not a
/// JSON object, wrong types, unknown or missing fields 422, not JSON 415, too
/// large 413.
///
/// Every request body is an object. serde's derived `Deserialize` also takes
/// a struct from a JSON array of its fields in order (`[]` for a struct whose
/// fields all default), which the API document does not allow: schemathesis
/// found `POST .../heartbeat` with `[]` answered 200. So the body is first
/// read as raw JSON (content type, size and syntax checked by axum), checked
/// to be an object, then deserialized.
pub struct Body<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = Error;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let raw = match Json::<Box<RawValue>>::from_request(req, state).await {
            Ok(Json(raw)) => raw,
            Err(rej) => {
                let status = rej.status();
                let code = match &rej {
                    JsonRejection::JsonSyntaxError(_) => "malformed_json",
                    JsonRejection::JsonDataError(_) => "invalid_body",
                    JsonRejection::MissingJsonContentType(_) => "unsupported_media_type",
                    _ if status == StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
                    _ => "bad_request",
                };
                return Err(Error::new(status, code, rej.body_text()));
            }
        };
        decode_object(raw.get()).map(Body)
    }
}

/// A request body as [`Body`] reads it once axum has checked the content
/// type and size: one JSON value (400 `malformed_json` otherwise), an object,
/// deserialized into `T` (422 `invalid_body` naming the field). Public for
/// the `api_bodies` fuzz target, which must parse exactly as the API does.
pub fn decode_body<T: DeserializeOwned>(text: &str) -> Result<T, Error> {
    let raw: Box<RawValue> = serde_json::from_str(text).map_err(|e| {
        Error::new(
            StatusCode::BAD_REQUEST,
            "malformed_json",
            format!("Failed to parse the request body as JSON: {e}"),
        )
    })?;
    decode_object(raw.get())
}

fn decode_object<T: DeserializeOwned>(raw: &str) -> Result<T, Error> {
    if !raw.starts_with('{') {
        return Err(Error::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
            "the body must be a JSON object",
        ));
    }
    let mut de = serde_json::Deserializer::from_str(raw);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        Error::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
            format!("Failed to deserialize the JSON body into the target type: {e}"),
        )
    })
}

/// `Query<T>` with a JSON 400.
pub struct Params<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Params<T> {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| Params(q.0))
            .map_err(|e: QueryRejection| Error::new(StatusCode::BAD_REQUEST, "bad_query", e.body_text()))
    }
}

/// `Path<T>` with a JSON 400.
pub struct PathParam<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for PathParam<T> {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| PathParam(p.0))
            .map_err(|e: PathRejection| Error::new(StatusCode::BAD_REQUEST, "bad_path", e.body_text()))
    }
}

#[cfg(test)]
mod tests {
    use graydar_common::api::HeartbeatRequest;

    use super::decode_body;

    #[test]
    fn a_body_is_one_json_object() {
        assert_eq!(decode_body::<HeartbeatRequest>("{}").map(|h| h.firing).ok(), Some(0));
        assert_eq!(
            decode_body::<HeartbeatRequest>(r#" {"firing": 3} "#)
                .map(|h| h.firing)
                .ok(),
            Some(3)
        );
        for (text, code) in [
            ("[]", "invalid_body"),
            ("[3]", "invalid_body"),
            ("null", "invalid_body"),
            (r#"{"firing": -1}"#, "invalid_body"),
            ("{} {}", "malformed_json"),
            ("{", "malformed_json"),
        ] {
            let e = decode_body::<HeartbeatRequest>(text).expect_err(text);
            assert_eq!(e.code(), code, "{text}");
        }
    }
}
