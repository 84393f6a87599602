//! What can go wrong in a use case, in terms an API can map to a status code.

use serde::Serialize;

use crate::model::CampaignRef;
use crate::ports::StoreError;

/// One invalid field: a JSON path such as `templateParams[2].identifier` and a message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct FieldError {
    pub path: String,
    pub message: String,
}

impl FieldError {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> FieldError {
        FieldError {
            path: path.into(),
            message: message.into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DomainError {
    /// The input breaks one or more rules; every broken rule is listed.
    #[error("the request is invalid")]
    Validation(Vec<FieldError>),
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The change was based on an older version than the stored one.
    #[error("the touchpoint was changed by someone else (current version {current})")]
    VersionConflict { current: u64 },
    #[error("a touchpoint named {0:?} already exists in this project")]
    NameTaken(String),
    /// Edits and deletes need a disabled touchpoint.
    #[error("the touchpoint is enabled; disable it first")]
    TouchpointEnabled,
    /// Live campaigns cannot be attached to a disabled touchpoint.
    #[error("the touchpoint is disabled")]
    TouchpointDisabled,
    /// Disabling is refused while these campaigns use the touchpoint.
    #[error("the touchpoint is used by {} active campaign(s)", .0.len())]
    InUse(Vec<CampaignRef>),
    #[error("storage failed")]
    Store(#[source] StoreError),
}

impl DomainError {
    pub fn field(path: impl Into<String>, message: impl Into<String>) -> DomainError {
        DomainError::Validation(vec![FieldError::new(path, message)])
    }
}

impl From<StoreError> for DomainError {
    fn from(e: StoreError) -> DomainError {
        match e {
            StoreError::NotFound => DomainError::NotFound("touchpoint"),
            StoreError::VersionConflict { current } => DomainError::VersionConflict { current },
            StoreError::NameTaken(name) => DomainError::NameTaken(name),
            StoreError::Enabled => DomainError::TouchpointEnabled,
            StoreError::Disabled => DomainError::TouchpointDisabled,
            StoreError::InUse(refs) => DomainError::InUse(refs),
            other @ StoreError::Backend(_) => DomainError::Store(other),
        }
    }
}
