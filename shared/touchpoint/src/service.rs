//! The admin use cases: create, read, list, edit, enable, disable, authorize spaces, delete,
//! and the campaign references that guard disabling.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;

use crate::audit::{
    Actor, AuditAction, AuditEntry, AuditFilter, FieldChange, is_entry_id, touchpoint_changes,
};
use crate::clock::{Clock, Millis};
use crate::delivery::{ReceiptLedger, ReceiptSchedule};
use crate::error::{DomainError, FieldError};
use crate::ids::TouchpointId;
use crate::ids::{is_touchpoint_id, new_touchpoint_id};
pub use crate::input::UrlPolicy;
use crate::input::{TokenPatch, check_token, parse_touchpoint};
use crate::model::*;
use crate::ports::{ListFilter, TouchpointStore, UpdateGuard};

mod notifications;

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
    /// Who the mutations are recorded as made by (see [`Touchpoints::by`]).
    actor: Actor,
    /// Divides a rotation's overlap (1 in production; compressed time in the delivery
    /// scenarios).
    time_scale: f64,
    /// Where an admin's pauses and resumes are told.
    notifications: Arc<crate::notify::Notifications>,
}

/// An audit listing request as it arrives (query-string values, unchecked).
#[derive(Clone, Debug, Default)]
pub struct AuditParams {
    pub touchpoint_id: Option<String>,
    pub since: Option<String>,
    pub limit: Option<String>,
    pub cursor: Option<String>,
}

impl Touchpoints {
    pub fn new(store: Arc<dyn TouchpointStore>, clock: Arc<dyn Clock>, urls: UrlPolicy) -> Self {
        Touchpoints {
            store,
            clock,
            urls,
            receipts: None,
            actor: Actor::system(),
            time_scale: 1.0,
            notifications: Arc::new(crate::notify::Notifications::none()),
        }
    }

    /// The same use cases, recording their changes as made by `actor`.
    pub fn by(&self, actor: Actor) -> Touchpoints {
        Touchpoints {
            actor,
            ..self.clone()
        }
    }

    /// Compressed time (the delivery scenarios): a rotation's overlap is divided by `scale`.
    pub fn with_time_scale(mut self, scale: f64) -> Touchpoints {
        self.time_scale = scale.max(f64::MIN_POSITIVE);
        self
    }

    fn entry(&self, project: ProjectId, action: AuditAction, id: &TouchpointId) -> AuditEntry {
        AuditEntry::new(project, &self.actor, action, Some(id), self.clock.now_ms())
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
            rotation: None,
            paused: None,
            enabled: true,
            space_ids: Vec::new(),
            version: 1,
            created_at: now,
            updated_at: now,
        };
        let audit = self
            .entry(project, AuditAction::Create, &tp.id)
            .with_changes(touchpoint_changes(None, Some(&tp)));
        self.store.insert(&tp, &audit).await?;
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
        let limit = page_limit(params.limit.as_deref(), &mut errors);
        let after_id = read_cursor(params.cursor.as_deref(), is_touchpoint_id, &mut errors);
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
        let items = self.store.list(project, &filter).await?;
        Ok(paged(items, limit, |tp| tp.id.to_string()))
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
        // A token written by an edit replaces every token at once (a rotation in its overlap
        // ends).
        match input.token {
            TokenPatch::Keep => {}
            TokenPatch::Clear => {
                next.token = None;
                next.rotation = None;
            }
            TokenPatch::Set(t) => {
                next.token = Some(t);
                next.rotation = None;
            }
        }
        let next = self
            .commit(
                &current,
                next,
                expected,
                UpdateGuard::MustBeDisabled,
                AuditAction::Edit,
            )
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
        let mut next = current.clone();
        next.enabled = true;
        let next = self
            .commit(
                &current,
                next,
                current.version,
                UpdateGuard::None,
                AuditAction::Enable,
            )
            .await?;
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
        let mut next = current.clone();
        next.enabled = false;
        self.commit(
            &current,
            next,
            current.version,
            UpdateGuard::NoBlockingCampaigns,
            AuditAction::Disable,
        )
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
        let mut next = current.clone();
        next.space_ids = spaces;
        self.commit(
            &current,
            next,
            current.version,
            UpdateGuard::None,
            AuditAction::Spaces,
        )
        .await
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
        let audit = self
            .entry(project, AuditAction::Delete, id)
            .with_changes(touchpoint_changes(Some(&current), None));
        self.store
            .delete(project, id, current.version, &audit)
            .await?;
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
        let before = self
            .store
            .campaigns(project, id)
            .await?
            .into_iter()
            .find(|c| c.campaign_id == campaign.campaign_id);
        let audit = self
            .entry(project, AuditAction::PutCampaign, id)
            .with_target(&campaign.campaign_id)
            .with_changes(campaign_changes(before.as_ref(), Some(&campaign)));
        self.store
            .put_campaign(project, id, &campaign, &audit)
            .await?;
        Ok(campaign)
    }

    pub async fn delete_campaign(
        &self,
        project: ProjectId,
        id: &TouchpointId,
        campaign_id: &str,
    ) -> Result<(), DomainError> {
        self.get(project, id).await?;
        let before = self
            .store
            .campaigns(project, id)
            .await?
            .into_iter()
            .find(|c| c.campaign_id == campaign_id);
        let audit = self
            .entry(project, AuditAction::DeleteCampaign, id)
            .with_target(campaign_id)
            .with_changes(campaign_changes(before.as_ref(), None));
        if self
            .store
            .delete_campaign(project, id, campaign_id, &audit)
            .await?
        {
            Ok(())
        } else {
            Err(DomainError::NotFound("campaign reference"))
        }
    }

    /// Replaces the token of an enabled or disabled touchpoint. During the overlap (hours,
    /// default 24, at most 168; 0 ends it at once) `webhook-signature` carries a signature with
    /// the new token and one with the old, and the GrowingIO `sign` keeps the old token; from
    /// its end, only the new one is used. A rotation during another's overlap replaces the
    /// newer token and keeps the older (the one `sign` uses) until the new overlap ends.
    pub async fn rotate_token(
        &self,
        project: ProjectId,
        id: &TouchpointId,
        body: &Value,
    ) -> Result<Touchpoint, DomainError> {
        let (token, overlap_ms, expected) = read_rotation(body, self.time_scale)?;
        let current = self.get(project, id).await?;
        check_version(&current, expected)?;
        let now = self.clock.now_ms();
        let mut next = current.clone();
        // The token `sign` uses now: the previous one while an overlap runs.
        let signing = match current.rotation_at(now) {
            Some(r) => r.previous.clone(),
            None => current.token.clone(),
        };
        next.token = Some(token);
        next.rotation = (overlap_ms > 0).then(|| crate::model::TokenRotation {
            previous: signing,
            until: now.saturating_add(overlap_ms),
        });
        self.commit(
            &current,
            next,
            current.version,
            UpdateGuard::None,
            AuditAction::RotateToken,
        )
        .await
    }

    /// Pauses the touchpoint by hand, enabled or not: no request goes to its receiver until
    /// it is resumed; its batches wait without using up their attempts. `{"reason"?,
    /// "version"?}`. Pausing a paused touchpoint keeps its first pause (and changes nothing).
    pub async fn pause(
        &self,
        project: ProjectId,
        id: &TouchpointId,
        body: &Value,
    ) -> Result<Touchpoint, DomainError> {
        let (reason, expected) = read_pause(body)?;
        let current = self.get(project, id).await?;
        check_version(&current, expected)?;
        if current.paused.is_some() {
            return Ok(current);
        }
        let mut next = current.clone();
        next.paused = Some(crate::model::ManualPause {
            since: self.clock.now_ms(),
            reason,
        });
        let paused = self
            .commit(
                &current,
                next,
                current.version,
                UpdateGuard::None,
                AuditAction::Pause,
            )
            .await?;
        self.tell_paused(&paused).await;
        Ok(paused)
    }

    /// Ends an admin's pause (the caller also closes the circuit breaker, open since
    /// `breaker_open` or not). A resume that only closes the breaker is recorded on its own; one
    /// with nothing to resume changes and records nothing.
    pub async fn resume(
        &self,
        project: ProjectId,
        id: &TouchpointId,
        expected: Option<u64>,
        breaker_open: Option<Millis>,
    ) -> Result<Touchpoint, DomainError> {
        let current = self.get(project, id).await?;
        check_version(&current, expected)?;
        if current.paused.is_none() {
            if breaker_open.is_some() {
                let audit = self
                    .entry(project, AuditAction::Resume, id)
                    .with_changes(vec![FieldChange {
                        field: "health".into(),
                        before: Some(Value::from("paused")),
                        after: Some(Value::from("healthy")),
                    }]);
                self.store.record_audit(&audit).await?;
                self.tell_resumed(&current, breaker_open).await;
            }
            return Ok(current);
        }
        let since = current.paused.as_ref().map(|p| p.since);
        let mut next = current.clone();
        next.paused = None;
        let resumed = self
            .commit(
                &current,
                next,
                current.version,
                UpdateGuard::None,
                AuditAction::Resume,
            )
            .await?;
        self.tell_resumed(&resumed, since).await;
        Ok(resumed)
    }

    /// The project's audit log, newest first, a page at a time.
    pub async fn audit_log(
        &self,
        project: ProjectId,
        params: &AuditParams,
    ) -> Result<Page<AuditEntry>, DomainError> {
        let mut errors = Vec::new();
        let limit = page_limit(params.limit.as_deref(), &mut errors);
        let touchpoint_id = params
            .touchpoint_id
            .as_deref()
            .filter(|t| !t.is_empty())
            .and_then(|t| {
                if is_touchpoint_id(t) {
                    Some(TouchpointId::from(t))
                } else {
                    errors.push(FieldError::new("touchpointId", "is not a touchpoint id"));
                    None
                }
            });
        let since = params
            .since
            .as_deref()
            .filter(|s| !s.is_empty())
            .and_then(|s| match crate::clock::parse_rfc3339(s) {
                Some(ms) => Some(ms),
                None => {
                    errors.push(FieldError::new(
                        "since",
                        "must be an RFC 3339 time such as 2026-12-01T10:00:00Z",
                    ));
                    None
                }
            });
        let before_id = read_cursor(params.cursor.as_deref(), is_entry_id, &mut errors);
        if !errors.is_empty() {
            return Err(DomainError::Validation(errors));
        }
        let filter = AuditFilter {
            touchpoint_id,
            since,
            before_id,
            limit: limit + 1,
        };
        let items = self.store.audit_log(project, &filter).await?;
        Ok(paged(items, limit, AuditEntry::id))
    }

    async fn commit(
        &self,
        before: &Touchpoint,
        mut next: Touchpoint,
        expected: u64,
        guard: UpdateGuard,
        action: AuditAction,
    ) -> Result<Touchpoint, DomainError> {
        next.version = expected + 1;
        next.updated_at = self.clock.now_ms().max(next.updated_at);
        // A rotation whose overlap has ended leaves nothing to keep: the old token is dropped
        // with the next change.
        if next
            .rotation
            .as_ref()
            .is_some_and(|r| r.until <= next.updated_at)
        {
            next.rotation = None;
        }
        let audit = self
            .entry(next.project_id, action, &next.id)
            .with_changes(touchpoint_changes(Some(before), Some(&next)));
        self.store.update(&next, expected, guard, &audit).await?;
        Ok(next)
    }
}

/// A campaign reference's name and state before and after.
fn campaign_changes(before: Option<&CampaignRef>, after: Option<&CampaignRef>) -> Vec<FieldChange> {
    let name = |c: Option<&CampaignRef>| c.map(|c| Value::from(c.name.as_str()));
    let state = |c: Option<&CampaignRef>| c.map(|c| Value::from(c.state.as_str()));
    [
        ("name", name(before), name(after)),
        ("state", state(before), state(after)),
    ]
    .into_iter()
    .filter(|(_, b, a)| b != a)
    .map(|(field, before, after)| FieldChange {
        field: field.into(),
        before,
        after,
    })
    .collect()
}

/// Reads `{"token", "overlapHours"?, "version"?}`: the new token, the overlap in (scaled)
/// milliseconds, and the version the rotation is based on.
fn read_rotation(
    body: &Value,
    time_scale: f64,
) -> Result<(Token, Millis, Option<u64>), DomainError> {
    let Value::Object(m) = body else {
        return Err(DomainError::field("", "must be an object"));
    };
    let mut errors = Vec::new();
    for k in m.keys() {
        if !["token", "overlapHours", "version"].contains(&k.as_str()) {
            errors.push(FieldError::new(k.as_str(), "is not a field of a rotation"));
        }
    }
    let token = match m.get("token") {
        Some(Value::String(t)) => match check_token(t) {
            Ok(()) => Some(Token::new(t.as_str())),
            Err(e) => {
                errors.push(FieldError::new("token", e));
                None
            }
        },
        Some(_) => {
            errors.push(FieldError::new("token", "must be a string"));
            None
        }
        None => {
            errors.push(FieldError::new("token", "is required"));
            None
        }
    };
    let hours = match m.get("overlapHours") {
        None | Some(Value::Null) => crate::model::DEFAULT_OVERLAP_HOURS,
        Some(v) => match v.as_f64() {
            Some(h) if (0.0..=crate::model::MAX_OVERLAP_HOURS).contains(&h) => h,
            _ => {
                errors.push(FieldError::new(
                    "overlapHours",
                    format!(
                        "must be a number of hours from 0 to {}",
                        crate::model::MAX_OVERLAP_HOURS
                    ),
                ));
                0.0
            }
        },
    };
    let version = read_version(m, &mut errors);
    match token {
        Some(token) if errors.is_empty() => Ok((
            token,
            (hours * 3_600_000.0 / time_scale).round() as Millis,
            version,
        )),
        _ => Err(DomainError::Validation(errors)),
    }
}

/// A body's optional `version`: the version a change is based on.
fn read_version(m: &serde_json::Map<String, Value>, errors: &mut Vec<FieldError>) -> Option<u64> {
    match m.get("version") {
        None | Some(Value::Null) => None,
        Some(v) => v.as_u64().filter(|v| *v >= 1).or_else(|| {
            errors.push(FieldError::new("version", "must be a positive integer"));
            None
        }),
    }
}

/// Reads `{"reason"?, "version"?}` of a pause.
fn read_pause(body: &Value) -> Result<(Option<String>, Option<u64>), DomainError> {
    let m = match body {
        Value::Object(m) => m.clone(),
        Value::Null => serde_json::Map::new(),
        _ => return Err(DomainError::field("", "must be an object")),
    };
    let mut errors = Vec::new();
    for k in m.keys() {
        if !["reason", "version"].contains(&k.as_str()) {
            errors.push(FieldError::new(k.as_str(), "is not a field of a pause"));
        }
    }
    let max = crate::model::MAX_PAUSE_REASON_CHARS;
    let reason = match m.get("reason") {
        None | Some(Value::Null) => None,
        Some(Value::String(r))
            if !r.trim().is_empty()
                && r.chars().count() <= max
                && !r.chars().any(char::is_control) =>
        {
            Some(r.trim().to_owned())
        }
        Some(_) => {
            errors.push(FieldError::new(
                "reason",
                format!("must be text of 1 to {max} characters"),
            ));
            None
        }
    };
    let version = read_version(&m, &mut errors);
    if errors.is_empty() {
        Ok((reason, version))
    } else {
        Err(DomainError::Validation(errors))
    }
}

fn page_limit(limit: Option<&str>, errors: &mut Vec<FieldError>) -> usize {
    match limit {
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

/// The key in an opaque cursor this API issued (`valid` checks it), or an error for `cursor`.
fn read_cursor(
    cursor: Option<&str>,
    valid: impl Fn(&str) -> bool,
    errors: &mut Vec<FieldError>,
) -> Option<String> {
    let cursor = cursor.filter(|c| !c.is_empty())?;
    let key = URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .filter(|k| valid(k));
    if key.is_none() {
        errors.push(FieldError::new("cursor", "is not a cursor this API issued"));
    }
    key
}

/// A page of at most `limit` of `items` (read with one more, to know whether a next page
/// exists), with the cursor of the next one.
fn paged<T>(mut items: Vec<T>, limit: usize, key: impl Fn(&T) -> String) -> Page<T> {
    let next_cursor = if items.len() > limit {
        items.truncate(limit);
        items.last().map(|last| URL_SAFE_NO_PAD.encode(key(last)))
    } else {
        None
    };
    Page { items, next_cursor }
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
