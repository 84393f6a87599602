//! The storage port: what the use cases need from a touchpoint store.
//!
//! Every method takes the project, and every mutation names the version it was based on, so an
//! adapter can make each one a single conditional write. The lifecycle guards that must hold at
//! the moment of the write (not just when the use case looked) are passed down as
//! [`UpdateGuard`]s and enforced atomically by the adapter. Each mutation also takes its audit
//! entry, which the adapter writes in the same atomic step (none when the mutation changes
//! nothing).

use async_trait::async_trait;

use crate::audit::{AuditEntry, AuditFilter};
use crate::ids::TouchpointId;
use crate::model::{CampaignRef, Kind, ProjectId, Touchpoint};
use crate::notify::NotificationConfig;

/// Which touchpoints a listing returns, after which id, and how many.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListFilter {
    pub kind: Option<Kind>,
    pub enabled: Option<bool>,
    /// Case-insensitive substring of the name.
    pub name_contains: Option<String>,
    /// Return only ids greater than this (ids sort by creation time).
    pub after_id: Option<String>,
    pub limit: usize,
}

/// A condition checked in the same atomic step as an update.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpdateGuard {
    /// Only the version.
    None,
    /// The stored touchpoint must be disabled (edits).
    MustBeDisabled,
    /// No campaign in a blocking state may reference it (disabling).
    NoBlockingCampaigns,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("not found")]
    NotFound,
    #[error("version conflict (current version {current})")]
    VersionConflict { current: u64 },
    #[error("name {0:?} is taken")]
    NameTaken(String),
    #[error("the touchpoint is enabled")]
    Enabled,
    #[error("the touchpoint is disabled")]
    Disabled,
    #[error("the touchpoint is used by active campaigns")]
    InUse(Vec<CampaignRef>),
    #[error("storage backend failed: {0}")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl StoreError {
    pub fn backend(e: impl std::error::Error + Send + Sync + 'static) -> StoreError {
        StoreError::Backend(Box::new(e))
    }
}

#[async_trait]
pub trait TouchpointStore: Send + Sync {
    /// Stores a new touchpoint; its name must be free in its project.
    async fn insert(&self, tp: &Touchpoint, audit: &AuditEntry) -> Result<(), StoreError>;

    async fn get(
        &self,
        project: ProjectId,
        id: &TouchpointId,
    ) -> Result<Option<Touchpoint>, StoreError>;

    /// Touchpoints of a project in id order, filtered; at most `filter.limit`.
    async fn list(
        &self,
        project: ProjectId,
        filter: &ListFilter,
    ) -> Result<Vec<Touchpoint>, StoreError>;

    /// Enabled touchpoints authorized for `space`, in id order.
    async fn list_for_space(
        &self,
        project: ProjectId,
        space: &str,
    ) -> Result<Vec<Touchpoint>, StoreError>;

    /// Replaces the touchpoint (token included) if the stored version is `expected_version` and
    /// `guard` holds; `next.version` is the new version.
    async fn update(
        &self,
        next: &Touchpoint,
        expected_version: u64,
        guard: UpdateGuard,
        audit: &AuditEntry,
    ) -> Result<(), StoreError>;

    /// Deletes a disabled touchpoint at `expected_version`, with its campaign references.
    async fn delete(
        &self,
        project: ProjectId,
        id: &TouchpointId,
        expected_version: u64,
        audit: &AuditEntry,
    ) -> Result<(), StoreError>;

    /// Campaign references of a touchpoint, by campaign id.
    async fn campaigns(
        &self,
        project: ProjectId,
        id: &TouchpointId,
    ) -> Result<Vec<CampaignRef>, StoreError>;

    /// Creates or replaces a campaign reference. A reference in a blocking state is refused
    /// ([`StoreError::Disabled`]) when the touchpoint is disabled at that moment.
    async fn put_campaign(
        &self,
        project: ProjectId,
        id: &TouchpointId,
        campaign: &CampaignRef,
        audit: &AuditEntry,
    ) -> Result<(), StoreError>;

    /// Removes a campaign reference; false when there was none.
    async fn delete_campaign(
        &self,
        project: ProjectId,
        id: &TouchpointId,
        campaign_id: &str,
        audit: &AuditEntry,
    ) -> Result<bool, StoreError>;

    /// Records an admin's action that changed nothing stored here (a resume that only closed
    /// the circuit breaker).
    async fn record_audit(&self, audit: &AuditEntry) -> Result<(), StoreError>;

    /// The project's notification settings (`None`: it has none).
    async fn notification_config(
        &self,
        project: ProjectId,
    ) -> Result<Option<NotificationConfig>, StoreError>;

    /// Replaces the project's notification settings (`None`: removes them), with the audit
    /// entry in the same atomic step.
    async fn put_notification_config(
        &self,
        project: ProjectId,
        config: Option<&NotificationConfig>,
        audit: &AuditEntry,
    ) -> Result<(), StoreError>;

    /// Audit entries of a project, newest first, filtered; at most `filter.limit`.
    async fn audit_log(
        &self,
        project: ProjectId,
        filter: &AuditFilter,
    ) -> Result<Vec<AuditEntry>, StoreError>;
}
