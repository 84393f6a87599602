//! The admin use cases: create, read, list, edit, enable, disable, authorize spaces, delete,
//! and the campaign references that guard disabling.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;

use crate::clock::Clock;
use crate::delivery::{ReceiptLedger, ReceiptSchedule};
use crate::error::{DomainError, FieldError};
use crate::ids::TouchpointId;
use crate::ids::{is_touchpoint_id, new_touchpoint_id};
pub use crate::input::UrlPolicy;
use crate::input::{TokenPatch, parse_touchpoint};
use crate::model::*;
use crate::ports::{ListFilter, TouchpointStore, UpdateGuard};

/// Listing size when none is asked for, and the most one page may hold.
pub const DEFAULT_PAGE_SIZE: usize = 20;
pub const MAX_PAGE_SIZE: usize = 100;
pub const MAX_SPACE_ID_CHARS: usize = 64;
pub const MAX_CAMPAIGN_ID_CHARS: usize = 128;
pub const MAX_CAMPAIGN_NAME_CHARS: usize = 100;

/// A listing request as it arrives (query-string values, unchecked).
#[derive(Clone, Debug, Default)]
pub struct ListParams {
    pub limit: Option<String>,
    pub cursor: Option<String>,
    pub kind: Option<String>,
    pub enabled: Option<String>,
    pub q: Option<String>,
}

/// One page of a listing and the opaque cursor of the next, if any.
#[derive(Debug)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

/// The touchpoint use cases over a store.
#[derive(Clone)]
pub struct Touchpoints {
    store: Arc<dyn TouchpointStore>,
    clock: Arc<dyn Clock>,
    urls: UrlPolicy,
    receipts: Option<(Arc<dyn ReceiptSchedule>, Arc<dyn ReceiptLedger>)>,
}

impl Touchpoints {
    pub fn new(store: Arc<dyn TouchpointStore>, clock: Arc<dyn Clock>, urls: UrlPolicy) -> Self {
        Touchpoints {
            store,
            clock,
            urls,
            receipts: None,
        }
    }

    /// Keeps receipt polling schedules in step with the touchpoints: ensured when an async
    /// touchpoint is created, enabled or switched to async; removed when it is deleted or
    /// switched to sync and none of its receipts is pending (otherwise the poller removes it
    /// once they are settled).
    pub fn with_receipt_schedule(
        mut self,
        schedule: Arc<dyn ReceiptSchedule>,
        ledger: Arc<dyn ReceiptLedger>,
    ) -> Self {
        self.receipts = Some((schedule, ledger));
        self
    }

    async fn sync_schedule(
        &self,
        before: Option<&Touchpoint>,
        after: Option<&Touchpoint>,
    ) -> Result<(), DomainError> {
        let Some((schedule, ledger)) = &self.receipts else {
            return Ok(());
        };
        let is_async = |t: Option<&Touchpoint>| {
            t.is_some_and(|t| matches!(t.spec.receipt, Receipt::Async { .. }))
        };
        let Some(tp) = after.or(before) else {
            return Ok(());
        };
        if is_async(after) {
            schedule.ensure(tp.project_id, &tp.id).await?;
        } else if is_async(before) && ledger.pending_receipts(tp.project_id, &tp.id).await? == 0 {
            schedule.remove(tp.project_id, &tp.id).await?;
        }
        Ok(())
    }

    pub fn url_policy(&self) -> UrlPolicy {
        self.urls
    }

    /// Registers a touchpoint: enabled, authorized for no space, version 1.
    pub async fn create(
        &self,
        project: ProjectId,
        body: &Value,
    ) -> Result<Touchpoint, DomainError> {
        let input = parse_touchpoint(body, &self.urls, false).map_err(DomainError::Validation)?;
        let now = self.clock.now_ms();
        let tp = Touchpoint {
            id: new_touchpoint_id(now),
            project_id: project,
            spec: input.spec,
            token: match input.token {
                TokenPatch::Set(t) => Some(t),
                TokenPatch::Keep | TokenPatch::Clear => None,
            },
            enabled: true,
            space_ids: Vec::new(),
            version: 1,
            created_at: now,
            updated_at: now,
        };
        self.store.insert(&tp).await?;
        self.sync_schedule(None, Some(&tp)).await?;
        Ok(tp)
    }

    pub async fn get(
        &self,
        project: ProjectId,
        id: &TouchpointId,
    ) -> Result<Touchpoint, DomainError> {
        if !is_touchpoint_id(id) {
            return Err(DomainError::NotFound("touchpoint"));
        }
        self.store
            .get(project, id)
            .await?
            .ok_or(DomainError::NotFound("touchpoint"))
    }

    pub async fn list(
        &self,
        project: ProjectId,
        params: &ListParams,
    ) -> Result<Page<Touchpoint>, DomainError> {
        let mut errors = Vec::new();
        let limit = match params.limit.as_deref() {
            None => DEFAULT_PAGE_SIZE,
            Some(s) => match s.parse::<usize>() {
                Ok(n) if (1..=MAX_PAGE_SIZE).contains(&n) => n,
                _ => {
                    errors.push(FieldError::new(
                        "limit",
                        format!("must be an integer from 1 to {MAX_PAGE_SIZE}"),
                    ));
                    DEFAULT_PAGE_SIZE
                }
            },
        };
        let after_id = match params.cursor.as_deref().filter(|c| !c.is_empty()) {
            None => None,
            Some(c) => match decode_cursor(c) {
                Some(id) => Some(id),
                None => {
                    errors.push(FieldError::new("cursor", "is not a cursor this API issued"));
                    None
                }
            },
        };
        let kind = match params.kind.as_deref() {
            None => None,
            Some(k) => Kind::parse(k).or_else(|| {
                errors.push(FieldError::new(
                    "kind",
                    "must be one of notification, benefit, other",
                ));
                None
            }),
        };
        let enabled = match params.enabled.as_deref() {
            None => None,
            Some("true") => Some(true),
            Some("false") => Some(false),
            Some(_) => {
                errors.push(FieldError::new("enabled", "must be true or false"));
                None
            }
        };
        let name_contains = params
            .q
            .as_deref()
            .map(str::trim)
            .filter(|q| !q.is_empty())
            .map(str::to_owned);
        if name_contains
            .as_deref()
            .is_some_and(|q| q.chars().count() > 100)
        {
            errors.push(FieldError::new("q", "must be at most 100 characters"));
        }
        if !errors.is_empty() {
            return Err(DomainError::Validation(errors));
        }
        let filter = ListFilter {
            kind,
            enabled,
            name_contains,
            after_id,
            limit: limit + 1,
        };
        let mut items = self.store.list(project, &filter).await?;
        let next_cursor = if items.len() > limit {
            items.truncate(limit);
            items
                .last()
                .map(|tp| URL_SAFE_NO_PAD.encode(tp.id.as_str()))
        } else {
            None
        };
        Ok(Page { items, next_cursor })
    }

    /// Replaces the editable fields of a disabled touchpoint; the kind never changes.
    pub async fn update(
        &self,
        project: ProjectId,
        id: &TouchpointId,
        body: &Value,
    ) -> Result<Touchpoint, DomainError> {
        let current = self.get(project, id).await?;
        let input = parse_touchpoint(body, &self.urls, true).map_err(DomainError::Validation)?;
        if input.spec.kind != current.spec.kind {
            return Err(DomainError::field(
                "kind",
                format!(
                    "cannot change after creation (it is {})",
                    current.spec.kind.as_str()
                ),
            ));
        }
        let expected = input.version.unwrap_or(current.version);
        check_version(&current, Some(expected))?;
        if current.enabled {
            return Err(DomainError::TouchpointEnabled);
        }
        let mut next = current.clone();
        next.spec = input.spec;
        match input.token {
            TokenPatch::Keep => {}
            TokenPatch::Clear => next.token = None,
            TokenPatch::Set(t) => next.token = Some(t),
        }
        let next = self
            .commit(next, expected, UpdateGuard::MustBeDisabled)
            .await?;
        self.sync_schedule(Some(&current), Some(&next)).await?;
        Ok(next)
    }

    pub async fn enable(
        &self,
        project: ProjectId,
        id: &TouchpointId,
        expected: Option<u64>,
    ) -> Result<Touchpoint, DomainError> {
        let current = self.get(project, id).await?;
        check_version(&current, expected)?;
        if current.enabled {
            // Enabling an enabled touchpoint re-syncs its receipt schedule (a schedule whose
            // creation failed, or that was removed by hand, is made again).
            self.sync_schedule(None, Some(&current)).await?;
            return Ok(current);
        }
        let version = current.version;
        let mut next = current;
        next.enabled = true;
        let next = self.commit(next, version, UpdateGuard::None).await?;
        self.sync_schedule(None, Some(&next)).await?;
        Ok(next)
    }

    /// Disables a touchpoint unless a campaign in a blocking state references it.
    pub async fn disable(
        &self,
        project: ProjectId,
        id: &TouchpointId,
        expected: Option<u64>,
    ) -> Result<Touchpoint, DomainError> {
        let current = self.get(project, id).await?;
        check_version(&current, expected)?;
        if !current.enabled {
            return Ok(current);
        }
        let blocking: Vec<CampaignRef> = self
            .store
            .campaigns(project, id)
            .await?
            .into_iter()
            .filter(|c| c.state.blocks_disable())
            .collect();
        if !blocking.is_empty() {
            return Err(DomainError::InUse(blocking));
        }
        let version = current.version;
        let mut next = current;
        next.enabled = false;
        self.commit(next, version, UpdateGuard::NoBlockingCampaigns)
            .await
    }

    /// Replaces the set of spaces authorized to use the touchpoint (`expected`: the version
    /// the change is based on).
    pub async fn set_spaces(
        &self,
        project: ProjectId,
        id: &TouchpointId,
        spaces: Vec<String>,
        expected: Option<u64>,
    ) -> Result<Touchpoint, DomainError> {
        let spaces = check_spaces(spaces)?;
        let current = self.get(project, id).await?;
        check_version(&current, expected)?;
        if current.space_ids == spaces {
            return Ok(current);
        }
        let version = current.version;
        let mut next = current;
        next.space_ids = spaces;
        self.commit(next, version, UpdateGuard::None).await
    }

    /// Deletes a disabled touchpoint.
    pub async fn delete(
        &self,
        project: ProjectId,
        id: &TouchpointId,
        expected: Option<u64>,
    ) -> Result<(), DomainError> {
        let current = self.get(project, id).await?;
        check_version(&current, expected)?;
        if current.enabled {
            return Err(DomainError::TouchpointEnabled);
        }
        self.store.delete(project, id, current.version).await?;
        self.sync_schedule(Some(&current), None).await?;
        Ok(())
    }

    /// What operators of `space` may pick: enabled touchpoints authorized for it.
    pub async fn for_space(
        &self,
        project: ProjectId,
        space: &str,
    ) -> Result<Vec<Touchpoint>, DomainError> {
        check_space_id(space, "spaceId")?;
        Ok(self.store.list_for_space(project, space).await?)
    }

    pub async fn campaigns(
        &self,
        project: ProjectId,
        id: &TouchpointId,
    ) -> Result<Vec<CampaignRef>, DomainError> {
        self.get(project, id).await?;
        Ok(self.store.campaigns(project, id).await?)
    }

    /// Records that a campaign references the touchpoint, in `state` (named `name`, or by its
    /// id).
    pub async fn put_campaign(
        &self,
        project: ProjectId,
        id: &TouchpointId,
        campaign_id: &str,
        state: CampaignState,
        name: Option<&str>,
    ) -> Result<CampaignRef, DomainError> {
        let campaign = check_campaign(campaign_id, state, name, self.clock.now_ms())?;
        let current = self.get(project, id).await?;
        if !current.enabled && campaign.state.blocks_disable() {
            return Err(DomainError::TouchpointDisabled);
        }
        self.store.put_campaign(project, id, &campaign).await?;
        Ok(campaign)
    }

    pub async fn delete_campaign(
        &self,
        project: ProjectId,
        id: &TouchpointId,
        campaign_id: &str,
    ) -> Result<(), DomainError> {
        self.get(project, id).await?;
        if self.store.delete_campaign(project, id, campaign_id).await? {
            Ok(())
        } else {
            Err(DomainError::NotFound("campaign reference"))
        }
    }

    async fn commit(
        &self,
        mut next: Touchpoint,
        expected: u64,
        guard: UpdateGuard,
    ) -> Result<Touchpoint, DomainError> {
        next.version = expected + 1;
        next.updated_at = self.clock.now_ms().max(next.updated_at);
        self.store.update(&next, expected, guard).await?;
        Ok(next)
    }
}

fn check_version(current: &Touchpoint, expected: Option<u64>) -> Result<(), DomainError> {
    match expected {
        Some(v) if v != current.version => Err(DomainError::VersionConflict {
            current: current.version,
        }),
        _ => Ok(()),
    }
}

fn decode_cursor(cursor: &str) -> Option<String> {
    let bytes = URL_SAFE_NO_PAD.decode(cursor).ok()?;
    let id = String::from_utf8(bytes).ok()?;
    is_touchpoint_id(&id).then_some(id)
}

fn check_space_id(space: &str, path: &str) -> Result<(), DomainError> {
    let n = space.chars().count();
    if n == 0 || n > MAX_SPACE_ID_CHARS || space.chars().any(|c| c.is_control() || c == '/') {
        return Err(DomainError::field(
            path,
            format!(
                "must be 1 to {MAX_SPACE_ID_CHARS} characters, without '/' or control characters"
            ),
        ));
    }
    Ok(())
}

/// Checks, sorts and de-duplicates a set of space ids.
fn check_spaces(spaces: Vec<String>) -> Result<Vec<String>, DomainError> {
    if spaces.len() > MAX_SPACES {
        return Err(DomainError::field(
            "spaceIds",
            format!("at most {MAX_SPACES} spaces allowed"),
        ));
    }
    let mut errors = Vec::new();
    for (i, s) in spaces.iter().enumerate() {
        if let Err(DomainError::Validation(mut e)) = check_space_id(s, &format!("spaceIds[{i}]")) {
            errors.append(&mut e);
        }
    }
    if !errors.is_empty() {
        return Err(DomainError::Validation(errors));
    }
    let mut spaces = spaces;
    spaces.sort();
    spaces.dedup();
    Ok(spaces)
}

fn check_campaign(
    campaign_id: &str,
    state: CampaignState,
    name: Option<&str>,
    now: i64,
) -> Result<CampaignRef, DomainError> {
    let mut errors = Vec::new();
    let n = campaign_id.chars().count();
    if n == 0 || n > MAX_CAMPAIGN_ID_CHARS || campaign_id.chars().any(char::is_control) {
        errors.push(FieldError::new(
            "campaignId",
            format!("must be 1 to {MAX_CAMPAIGN_ID_CHARS} characters"),
        ));
    }
    let name = match name {
        None => campaign_id.to_owned(),
        Some(s)
            if !s.trim().is_empty()
                && s.chars().count() <= MAX_CAMPAIGN_NAME_CHARS
                && !s.chars().any(char::is_control) =>
        {
            s.trim().to_owned()
        }
        Some(_) => {
            errors.push(FieldError::new(
                "name",
                format!("must be a string of 1 to {MAX_CAMPAIGN_NAME_CHARS} characters"),
            ));
            String::new()
        }
    };
    if !errors.is_empty() {
        return Err(DomainError::Validation(errors));
    }
    Ok(CampaignRef {
        campaign_id: campaign_id.to_owned(),
        name,
        state,
        updated_at: now,
    })
}
