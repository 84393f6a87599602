//! Errors as the API returns them:
//! `{"error":{"code":"…","message":"…","details":[{"path":"…","message":"…"}]}}`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use touchpoint::{CampaignRef, DomainError, FieldError};

use crate::contract::{ErrorBody, ErrorDetail};

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub details: Vec<FieldError>,
    /// On touchpoint_in_use: the campaigns that block a disable.
    pub campaigns: Option<Vec<CampaignRef>>,
    /// On version_conflict.
    pub current_version: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            details: Vec::new(),
            campaigns: None,
            current_version: None,
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
                current_version: Some(current),
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
                ApiError {
                    campaigns: Some(campaigns),
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
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: self.message,
                details: self.details,
                campaigns: self
                    .campaigns
                    .as_ref()
                    .map(|c| c.iter().map(Into::into).collect()),
                current_version: self.current_version,
            },
        };
        let mut response = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}
