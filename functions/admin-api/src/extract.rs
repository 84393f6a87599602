//! Request extractors whose failures answer in the API's error shape, never as plain text.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use serde::de::DeserializeOwned;
use serde_json::Value;
use touchpoint::FieldError;

use crate::error::ApiError;

/// Largest request body accepted, but for a dispatch's.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// Largest dispatch body accepted (`POST /v1/dispatches`).
pub const MAX_DISPATCH_BYTES: usize = touchpoint::dispatch::MAX_DISPATCH_BYTES;

/// A JSON request body, read as a `Value` so the domain can report every invalid field.
/// An empty body reads as `null` (actions such as enable take an optional body).
pub struct JsonBody(pub Value);

impl<S: Send + Sync> FromRequest<S> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        read_json(req, state, MAX_BODY_BYTES)
            .await
            .map(|(_, value)| JsonBody(value))
    }
}

/// A JSON body and the text it was read from, for a body that is kept as it was accepted (a
/// dispatch goes onto the queue as the producer wrote it, not re-serialized).
pub struct JsonDocument {
    pub text: String,
    pub value: Value,
}

impl<S: Send + Sync> FromRequest<S> for JsonDocument {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let (bytes, value) = read_json(req, state, MAX_DISPATCH_BYTES).await?;
        // The strict reader accepted the bytes, so they are UTF-8; this only keeps the
        // conversion from trusting that.
        let text = String::from_utf8(bytes.to_vec())
            .map_err(|_| ApiError::bad_request("the body is not UTF-8"))?;
        Ok(JsonDocument { text, value })
    }
}

/// The body read as JSON, refused with 413 above `limit` bytes (the router's own limit is the
/// largest of them).
async fn read_json<S: Send + Sync>(
    req: Request,
    state: &S,
    limit: usize,
) -> Result<(Bytes, Value), ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the request body is larger than {limit} bytes"),
        )
    };
    let json_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|ct| {
            let mime = ct
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            mime == "application/json"
                || (mime.starts_with("application/") && mime.ends_with("+json"))
        });
    let bytes = Bytes::from_request(req, state).await.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            too_large()
        } else {
            ApiError::bad_request(format!("could not read the request body: {e}"))
        }
    })?;
    if bytes.len() > limit {
        return Err(too_large());
    }
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok((bytes, Value::Null));
    }
    if json_type != Some(true) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the body as Content-Type: application/json",
        ));
    }
    let value = touchpoint::json::parse_strict(&bytes)
        .map_err(|e| ApiError::bad_request(format!("the body is not valid JSON: {e}")))?;
    Ok((bytes, value))
}

/// A small JSON body read into its derived type; the first broken rule answers 422 at its JSON
/// path. An empty body reads as `null` (so `Option<T>` takes an optional body).
pub struct JsonInput<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonInput<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let JsonBody(value) = JsonBody::from_request(req, state).await?;
        // Derived structs would also read a JSON array positionally; the API's bodies are
        // objects.
        if value.is_array() {
            return Err(ApiError::validation(vec![FieldError::new(
                "",
                "must be a JSON object",
            )]));
        }
        serde_path_to_error::deserialize(value)
            .map(JsonInput)
            .map_err(|e| {
                let path = match e.path().to_string() {
                    p if p == "." => String::new(),
                    p => p,
                };
                ApiError::validation(vec![FieldError::new(path, e.into_inner().to_string())])
            })
    }
}

/// Path parameters.
pub struct PathParams<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for PathParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(t)| PathParams(t))
            .map_err(|e| ApiError::bad_request(format!("invalid path: {}", e.body_text())))
    }
}

/// Query-string parameters.
pub struct QueryParams<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for QueryParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(t)| QueryParams(t))
            .map_err(|e| ApiError::bad_request(format!("invalid query string: {}", e.body_text())))
    }
}
