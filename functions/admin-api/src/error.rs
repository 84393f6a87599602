//! Errors as the API returns them:
//! `{"error":{"code":"…","message":"…","details":[{"path":"…","message":"…"}]}}`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use touchpoint::view::CampaignRefView;
use touchpoint::{DomainError, FieldError};

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub details: Vec<FieldError>,
    /// Extra members of the error object (e.g. the campaigns that block a disable).
    pub extra: Option<(&'static str, Value)>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            details: Vec::new(),
            extra: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "malformed_request", message)
    }

    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn validation(details: Vec<FieldError>) -> ApiError {
        let n = details.len();
        ApiError {
            details,
            ..ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation_failed",
                format!("{n} field(s) are invalid"),
            )
        }
    }
}

impl From<DomainError> for ApiError {
    fn from(e: DomainError) -> ApiError {
        let message = e.to_string();
        match e {
            DomainError::Validation(details) => ApiError::validation(details),
            DomainError::NotFound(_) => ApiError::not_found(message),
            DomainError::VersionConflict { current } => ApiError {
                extra: Some(("currentVersion", json!(current))),
                ..ApiError::new(StatusCode::CONFLICT, "version_conflict", message)
            },
            DomainError::NameTaken(_) => ApiError {
                details: vec![FieldError::new(
                    "name",
                    "is already used by another touchpoint",
                )],
                ..ApiError::new(StatusCode::CONFLICT, "name_taken", message)
            },
            DomainError::TouchpointEnabled => {
                ApiError::new(StatusCode::CONFLICT, "touchpoint_enabled", message)
            }
            DomainError::TouchpointDisabled => {
                ApiError::new(StatusCode::CONFLICT, "touchpoint_disabled", message)
            }
            DomainError::InUse(campaigns) => {
                let names: Vec<String> = campaigns
                    .iter()
                    .map(|c| format!("{} ({}, {})", c.name, c.campaign_id, c.state.as_str()))
                    .collect();
                let views: Vec<CampaignRefView<'_>> = campaigns.iter().map(Into::into).collect();
                ApiError {
                    extra: Some(("campaigns", json!(views))),
                    ..ApiError::new(
                        StatusCode::CONFLICT,
                        "touchpoint_in_use",
                        format!(
                            "the touchpoint cannot be disabled while these campaigns use it: {}",
                            names.join(", ")
                        ),
                    )
                }
            }
            DomainError::Store(source) => {
                tracing::error!(error = %source, "storage failed");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "the service could not complete the request; try again",
                )
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut error = json!({"code": self.code, "message": self.message});
        if !self.details.is_empty() {
            error["details"] = json!(self.details);
        }
        if let Some((key, value)) = self.extra {
            error[key] = value;
        }
        let mut response = (self.status, axum::Json(json!({ "error": error }))).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}
