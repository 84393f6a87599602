//! A project's notification settings (`/v1/notifications`), and the notifications an admin's
//! pause and resume make.

use std::sync::Arc;

use serde_json::{Map, Value};

use super::Touchpoints;
use crate::audit::{AuditAction, AuditEntry, FieldChange};
use crate::error::{DomainError, FieldError};
use crate::input::{check_token, check_url};
use crate::model::{ProjectId, Token, Touchpoint};
use crate::notify::{
    EventType, NotificationConfig, NotificationSettings, Notifications, PausedBy,
    touchpoint_paused, touchpoint_resumed,
};

impl Touchpoints {
    /// Tells an admin's pauses and resumes to `notifications` (and forgets a project's cached
    /// settings when they change here).
    pub fn with_notifications(mut self, notifications: Arc<Notifications>) -> Touchpoints {
        self.notifications = notifications;
        self
    }

    /// The project's notification settings (`None`: it has none).
    pub async fn notification_settings(
        &self,
        project: ProjectId,
    ) -> Result<Option<NotificationSettings>, DomainError> {
        let config = self.store.notification_config(project).await?;
        Ok(config.as_ref().map(NotificationSettings::from))
    }

    /// Replaces the project's notification settings: `{"url", "token", "events"}`; the token
    /// may be left out to keep the current one.
    pub async fn put_notification_settings(
        &self,
        project: ProjectId,
        body: &Value,
    ) -> Result<NotificationSettings, DomainError> {
        let current = self.store.notification_config(project).await?;
        let (url, token, events) = read_settings(body, &self.urls, current.is_some())?;
        let now = self.clock.now_ms();
        let next = NotificationConfig {
            url,
            token: token
                .map(Token::new)
                .or_else(|| current.as_ref().map(|c| c.token.clone()))
                .ok_or_else(|| DomainError::field("token", "is required"))?,
            events,
            updated_at: now,
            seal_key: current
                .as_ref()
                .map(|c| c.seal_key.clone())
                .filter(|k| !k.expose().is_empty())
                .unwrap_or_else(crate::notify::new_seal_key),
        };
        let mut changes = Vec::new();
        let before = current.as_ref().map(NotificationSettings::from);
        let after = NotificationSettings::from(&next);
        if before.as_ref().map(|b| &b.url) != Some(&after.url) {
            changes.push(FieldChange {
                field: "url".into(),
                before: before.as_ref().map(|b| Value::from(b.url.clone())),
                after: Some(Value::from(after.url.clone())),
            });
        }
        if before.as_ref().map(|b| &b.events) != Some(&after.events) {
            changes.push(FieldChange {
                field: "events".into(),
                before: before
                    .as_ref()
                    .and_then(|b| serde_json::to_value(&b.events).ok()),
                after: serde_json::to_value(&after.events).ok(),
            });
        }
        if current.as_ref().map(|c| &c.token) != Some(&next.token) {
            changes.push(FieldChange {
                field: "token".into(),
                before: current.as_ref().map(|_| Value::from("set")),
                after: Some(Value::from("changed")),
            });
        }
        let audit = self
            .project_entry(project, AuditAction::PutNotifications)
            .with_changes(changes);
        self.store
            .put_notification_config(project, Some(&next), &audit)
            .await?;
        self.notifications.forget(project);
        Ok(after)
    }

    /// Removes the project's notification settings; false when it had none.
    pub async fn delete_notification_settings(
        &self,
        project: ProjectId,
    ) -> Result<bool, DomainError> {
        let Some(current) = self.store.notification_config(project).await? else {
            return Ok(false);
        };
        let audit = self
            .project_entry(project, AuditAction::DeleteNotifications)
            .with_changes(vec![FieldChange {
                field: "url".into(),
                before: Some(Value::from(current.url)),
                after: None,
            }]);
        self.store
            .put_notification_config(project, None, &audit)
            .await?;
        self.notifications.forget(project);
        Ok(true)
    }

    fn project_entry(&self, project: ProjectId, action: AuditAction) -> AuditEntry {
        AuditEntry::new(project, &self.actor, action, None, self.clock.now_ms())
    }

    /// Tells an admin's pause of `tp`.
    pub(super) async fn tell_paused(&self, tp: &Touchpoint) {
        let Some(p) = &tp.paused else { return };
        let by = PausedBy::Admin {
            actor: &self.actor.0,
        };
        let now = self.clock.now_ms();
        let n = touchpoint_paused(tp.project_id, &tp.id, by, p.reason.as_deref(), p.since, now);
        self.notifications.notify(n).await;
    }

    /// Tells an admin's resume of `tp` (paused since `since`, by hand or by its breaker).
    pub(super) async fn tell_resumed(&self, tp: &Touchpoint, since: Option<i64>) {
        let now = self.clock.now_ms();
        let by = PausedBy::Admin {
            actor: &self.actor.0,
        };
        let n = touchpoint_resumed(tp.project_id, &tp.id, by, since.unwrap_or(now), now);
        self.notifications.notify(n).await;
    }
}

/// Reads `{"url", "token", "events"}` (`token` optional when `has_token`).
fn read_settings(
    body: &Value,
    urls: &crate::input::UrlPolicy,
    has_token: bool,
) -> Result<(String, Option<String>, Vec<EventType>), DomainError> {
    let Value::Object(m) = body else {
        return Err(DomainError::field("", "must be an object"));
    };
    let mut errors = Vec::new();
    for k in m.keys() {
        if !["url", "token", "events"].contains(&k.as_str()) {
            errors.push(FieldError::new(
                k.as_str(),
                "is not a field of the notification settings",
            ));
        }
    }
    let url = match m.get("url") {
        Some(Value::String(u)) => check_url(u, urls)
            .map_err(|e| errors.push(FieldError::new("url", e)))
            .ok(),
        None | Some(Value::Null) => {
            errors.push(FieldError::new("url", "is required"));
            None
        }
        Some(_) => {
            errors.push(FieldError::new("url", "must be a string"));
            None
        }
    };
    let token = read_token(m, has_token, &mut errors);
    let events = read_events(m.get("events"), &mut errors);
    match (url, events) {
        (Some(url), Some(events)) if errors.is_empty() => Ok((url, token, events)),
        _ => Err(DomainError::Validation(errors)),
    }
}

fn read_token(
    m: &Map<String, Value>,
    has_token: bool,
    errors: &mut Vec<FieldError>,
) -> Option<String> {
    match m.get("token") {
        Some(Value::String(t)) => match check_token(t) {
            Ok(()) => Some(t.clone()),
            Err(e) => {
                errors.push(FieldError::new("token", e));
                None
            }
        },
        None | Some(Value::Null) if has_token => None,
        None | Some(Value::Null) => {
            errors.push(FieldError::new(
                "token",
                "is required: every notification is signed with it",
            ));
            None
        }
        Some(_) => {
            errors.push(FieldError::new("token", "must be a string"));
            None
        }
    }
}

fn read_events(v: Option<&Value>, errors: &mut Vec<FieldError>) -> Option<Vec<EventType>> {
    let names: Vec<&str> = EventType::ALL.iter().map(|e| e.as_str()).collect();
    let Some(Value::Array(items)) = v else {
        errors.push(FieldError::new(
            "events",
            format!("must be a non-empty array of: {}", names.join(", ")),
        ));
        return None;
    };
    let mut events = Vec::new();
    for (i, item) in items.iter().enumerate() {
        match item.as_str().and_then(EventType::parse) {
            Some(e) if !events.contains(&e) => events.push(e),
            Some(_) => {}
            None => errors.push(FieldError::new(
                format!("events[{i}]"),
                format!("must be one of: {}", names.join(", ")),
            )),
        }
    }
    if items.is_empty() {
        errors.push(FieldError::new(
            "events",
            format!("must name at least one of: {}", names.join(", ")),
        ));
    }
    events.sort();
    Some(events)
}
