//! Operational notifications: a project's operators are told when a touchpoint is paused or
//! resumed, a dispatch completes, a batch runs out of retries or a receipt times out, by a
//! webhook of their own, signed with the Standard Webhooks headers.
//!
//! Emitting never blocks or fails a delivery: [`Notifications::notify`] puts the notification
//! into a durable [`NotificationOutbox`] (locally a table, on AWS a message on the dispatch
//! queue) when the project subscribes to its type, and a sender delivers it from there, with
//! retries ([`RETRY_WAITS_MS`]), through the same SSRF guard as every request.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::clock::{Clock, Millis, rfc3339};
use crate::delivery::DispatchView;
use crate::ids::TouchpointId;
use crate::model::{ProjectId, Token};
use crate::ports::{StoreError, TouchpointStore};
use crate::reporting::{DispatchState, dispatch_state};

/// What happened.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    ToSchema,
    strum::IntoStaticStr,
    strum::EnumString,
    strum::VariantArray,
)]
pub enum EventType {
    /// The circuit breaker or an admin paused a touchpoint.
    #[serde(rename = "touchpoint.paused")]
    #[strum(serialize = "touchpoint.paused")]
    TouchpointPaused,
    /// A paused touchpoint resumed (its probe was answered, or an admin resumed it).
    #[serde(rename = "touchpoint.resumed")]
    #[strum(serialize = "touchpoint.resumed")]
    TouchpointResumed,
    /// Every user of a dispatch has a final outcome.
    #[serde(rename = "dispatch.completed")]
    #[strum(serialize = "dispatch.completed")]
    DispatchCompleted,
    /// A batch's users failed because its attempts (or the retry horizon) ran out.
    #[serde(rename = "batch.retries_exhausted")]
    #[strum(serialize = "batch.retries_exhausted")]
    BatchRetriesExhausted,
    /// Users of a batch failed because their receipt did not come in time.
    #[serde(rename = "receipt.timeout")]
    #[strum(serialize = "receipt.timeout")]
    ReceiptTimeout,
}

crate::model::wire_names!(EventType);

/// Where a project's notifications go.
#[derive(Clone, Debug, PartialEq)]
pub struct NotificationConfig {
    pub url: String,
    /// Signs every notification (a `whsec_` token is used as its decoded bytes).
    pub token: Token,
    pub events: Vec<EventType>,
    pub updated_at: Millis,
    /// Seals the notifications that wait in a queue others may write to ([`seal`]): made when
    /// the settings are first put and kept while they exist, so a changed token does not
    /// break the seals of notifications already waiting. Never shown.
    pub seal_key: Token,
}

/// A new seal key: 32 random bytes, hex.
pub fn new_seal_key() -> Token {
    let mut bytes = [0u8; 32];
    let _ = getrandom::fill(&mut bytes);
    Token::new(hex::encode(bytes))
}

/// A project's notification settings as the API shows them: never the token.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NotificationSettings {
    pub url: String,
    pub events: Vec<EventType>,
    /// Always true: a token is required.
    pub token_set: bool,
    /// RFC 3339.
    pub updated_at: String,
}

impl From<&NotificationConfig> for NotificationSettings {
    fn from(c: &NotificationConfig) -> Self {
        NotificationSettings {
            url: c.url.clone(),
            events: c.events.clone(),
            token_set: true,
            updated_at: rfc3339(c.updated_at),
        }
    }
}

/// One notification, as it waits in an outbox.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Notification {
    /// Stable for one occurrence (its `webhook-id`): a notification sent twice can be told.
    pub id: String,
    pub project_id: ProjectId,
    #[serde(rename = "type")]
    pub event: EventType,
    pub at: Millis,
    pub data: Value,
}

/// Longest key kept as it is in a notification id; a longer one, or one with characters a
/// header should not carry, is replaced by its digest.
const MAX_KEY_CHARS: usize = 100;

impl Notification {
    /// A notification whose id is `{type}.{project}.{key}`: unique per project and occurrence
    /// (a key that is not short header-safe text is written as `h` and 32 hex digits of its
    /// SHA-256, so two keys never meet under one id).
    pub fn new(
        project_id: ProjectId,
        event: EventType,
        key: &str,
        at: Millis,
        data: Value,
    ) -> Notification {
        let safe = !key.is_empty()
            && key.len() <= MAX_KEY_CHARS
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c));
        let key = if safe {
            key.to_owned()
        } else {
            use sha2::Digest;
            format!(
                "h{}",
                &hex::encode(sha2::Sha256::digest(key.as_bytes()))[..32]
            )
        };
        Notification {
            id: format!("{}.{project_id}.{key}", event.as_str()),
            project_id,
            event,
            at,
            data,
        }
    }

    /// The body sent: `{"type", "timestamp", "data"}` (the Standard Webhooks payload shape).
    pub fn body(&self) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "type": self.event.as_str(),
            "timestamp": rfc3339(self.at),
            "data": self.data,
        }))
        .unwrap_or_default()
    }
}

/// Where notifications wait to be sent.
#[async_trait]
pub trait NotificationOutbox: Send + Sync {
    /// Keeps `n` to be sent at `due_at` (epoch ms), as its attempt number `attempt` (0: first),
    /// with its [`seal`].
    async fn put(
        &self,
        n: &Notification,
        attempt: u32,
        due_at: Millis,
        seal: &str,
    ) -> Result<(), StoreError>;
}

/// What a seal signs besides the notification.
const SEAL_CONTEXT: &str = "touchpoint-outbox";

/// A seal over a notification as it waits in a queue that others may write to (on AWS, the
/// dispatch queue the campaign system sends to): only a holder of the project's seal key (see
/// [`NotificationConfig::seal_key`]) can make one, so nobody can have the service sign a
/// notification of their own.
pub fn seal(n: &Notification, token: &Token) -> String {
    let body = serde_json::to_vec(n).unwrap_or_default();
    crate::protocol::webhook_signature(
        &crate::protocol::signing_key(token.expose()),
        SEAL_CONTEXT,
        0,
        &body,
    )
}

/// Whether `given` is the seal of `n` under `token` (in constant time).
pub fn seal_holds(n: &Notification, token: &Token, given: &str) -> bool {
    let body = serde_json::to_vec(n).unwrap_or_default();
    crate::protocol::verify_webhook_signature(token.expose(), SEAL_CONTEXT, 0, &body, given)
}

/// Waits between a notification's attempts; after the last it is dropped (and logged).
pub const RETRY_WAITS_MS: [Millis; 6] = [5_000, 30_000, 120_000, 600_000, 1_800_000, 3_600_000];

/// The wait before attempt `attempt + 1` (`None`: no attempt is left), in compressed time.
pub fn retry_wait(attempt: u32, time_scale: f64) -> Option<Millis> {
    RETRY_WAITS_MS
        .get(attempt as usize)
        .map(|w| (*w as f64 / time_scale.max(f64::MIN_POSITIVE)).max(1.0) as Millis)
}

/// How long a process trusts what it read of a project's settings: a change reaches every
/// other process within this.
pub const SETTINGS_FRESH: Duration = Duration::from_secs(30);

/// What a process read of a project's settings, and when.
type Read = (Instant, Option<Arc<NotificationConfig>>);

/// The notifier every emitter holds: asks whether the project subscribes (its settings cached
/// for [`SETTINGS_FRESH`], so a project without notifications costs one read per process per
/// period) and puts what it wants into the outbox. Never fails its caller.
pub struct Notifications {
    store: Option<Arc<dyn TouchpointStore>>,
    outbox: Option<Arc<dyn NotificationOutbox>>,
    clock: Arc<dyn Clock>,
    settings: Mutex<HashMap<ProjectId, Read>>,
}

impl std::fmt::Debug for Notifications {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifications")
            .field("wired", &self.outbox.is_some())
            .finish_non_exhaustive()
    }
}

impl Notifications {
    pub fn new(
        store: Arc<dyn TouchpointStore>,
        outbox: Arc<dyn NotificationOutbox>,
        clock: Arc<dyn Clock>,
    ) -> Notifications {
        Notifications {
            store: Some(store),
            outbox: Some(outbox),
            clock,
            settings: Mutex::default(),
        }
    }

    /// No notifications at all (tools and tests that wire no outbox).
    pub fn none() -> Notifications {
        Notifications {
            store: None,
            outbox: None,
            clock: Arc::new(crate::clock::SystemClock),
            settings: Mutex::default(),
        }
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<ProjectId, Read>> {
        self.settings.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether notifications are made at all (an outbox is wired).
    pub fn is_wired(&self) -> bool {
        self.outbox.is_some()
    }

    /// The project's settings, as read within [`SETTINGS_FRESH`] (`None`: none, or unreadable).
    pub async fn settings(&self, project: ProjectId) -> Option<Arc<NotificationConfig>> {
        let store = self.store.as_ref()?;
        if let Some((read, config)) = self.cache().get(&project)
            && read.elapsed() < SETTINGS_FRESH
        {
            return config.clone();
        }
        match store.notification_config(project).await {
            Ok(config) => {
                let config = config.map(Arc::new);
                let mut cache = self.cache();
                if cache.len() > 10_000 {
                    cache.clear();
                }
                cache.insert(project, (Instant::now(), config.clone()));
                config
            }
            Err(e) => {
                tracing::warn!(project, error = %e, "cannot read the notification settings; nothing is notified");
                None
            }
        }
    }

    /// Forgets what was read of the project's settings (after this process changed them).
    pub fn forget(&self, project: ProjectId) {
        self.cache().remove(&project);
    }

    /// Whether the project subscribes to `event` (an emitter that has to read something to
    /// build a notification asks first).
    pub async fn wants(&self, project: ProjectId, event: EventType) -> bool {
        self.outbox.is_some()
            && self
                .settings(project)
                .await
                .is_some_and(|c| c.events.contains(&event))
    }

    /// Puts `n` into the outbox, to go at once, if its project subscribes to its type.
    pub async fn notify(&self, n: Notification) {
        let Some(outbox) = &self.outbox else {
            return;
        };
        let Some(config) = self
            .settings(n.project_id)
            .await
            .filter(|c| c.events.contains(&n.event))
        else {
            return;
        };
        let seal = seal(&n, &config.seal_key);
        if let Err(e) = outbox.put(&n, 0, self.clock.now_ms(), &seal).await {
            tracing::warn!(project = n.project_id, notification = %n.id, error = %e, "cannot keep a notification; it is dropped");
        }
    }
}

/// Who paused or resumed a touchpoint: its circuit breaker, or an admin.
pub enum PausedBy<'a> {
    /// With when it probes next, on a pause.
    Breaker {
        probe_at: Option<Millis>,
    },
    Admin {
        actor: &'a str,
    },
}

impl PausedBy<'_> {
    fn describe(&self, data: &mut serde_json::Map<String, Value>) {
        match self {
            PausedBy::Breaker { probe_at } => {
                data.insert("manual".into(), false.into());
                if let Some(at) = probe_at {
                    data.insert("probeAt".into(), rfc3339(*at).into());
                }
            }
            PausedBy::Admin { actor } => {
                data.insert("manual".into(), true.into());
                data.insert("actor".into(), (*actor).into());
            }
        }
    }
}

/// `touchpoint.paused`: paused since `since` for `reason`.
pub fn touchpoint_paused(
    project: ProjectId,
    tp: &TouchpointId,
    by: PausedBy<'_>,
    reason: Option<&str>,
    since: Millis,
    now: Millis,
) -> Notification {
    let mut data = serde_json::Map::new();
    data.insert("projectId".into(), project.into());
    data.insert("touchpointId".into(), tp.as_str().into());
    data.insert("reason".into(), reason.into());
    data.insert("since".into(), rfc3339(since).into());
    by.describe(&mut data);
    Notification::new(
        project,
        EventType::TouchpointPaused,
        &format!("{tp}.{since}"),
        now,
        Value::Object(data),
    )
}

/// `touchpoint.resumed`: the pause since `paused_since` ended.
pub fn touchpoint_resumed(
    project: ProjectId,
    tp: &TouchpointId,
    by: PausedBy<'_>,
    paused_since: Millis,
    now: Millis,
) -> Notification {
    let mut data = serde_json::Map::new();
    data.insert("projectId".into(), project.into());
    data.insert("touchpointId".into(), tp.as_str().into());
    data.insert("pausedSince".into(), rfc3339(paused_since).into());
    by.describe(&mut data);
    Notification::new(
        project,
        EventType::TouchpointResumed,
        &format!("{tp}.{paused_since}"),
        now,
        Value::Object(data),
    )
}

/// `dispatch.completed` for a dispatch whose users all have an outcome (or that was refused
/// whole), with its counts.
pub fn dispatch_completed(view: &DispatchView, now: Millis) -> Option<Notification> {
    let state = dispatch_state(
        view.rejected.is_some(),
        view.users,
        view.succeeded,
        view.failed,
    );
    if state == DispatchState::InProgress {
        return None;
    }
    let meta = &view.meta;
    Some(Notification::new(
        meta.project_id,
        EventType::DispatchCompleted,
        &meta.dispatch_id,
        now,
        serde_json::json!({
            "projectId": meta.project_id,
            "dispatchId": meta.dispatch_id,
            "campaignId": meta.campaign_id,
            "touchpointId": meta.touchpoint_id,
            "state": state,
            "users": view.users,
            "succeeded": view.succeeded,
            "failed": view.failed,
            "rejected": view.rejected,
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_names_are_the_wire_names_and_ids_are_header_safe() {
        for e in EventType::ALL {
            assert_eq!(serde_json::to_value(e).unwrap(), e.as_str());
            assert_eq!(EventType::parse(e.as_str()), Some(*e));
        }
        let n = Notification::new(
            1,
            EventType::DispatchCompleted,
            "d/1 é\n",
            1_664_590_280_000,
            serde_json::json!({"dispatchId": "d/1 é\n"}),
        );
        assert!(n.id.starts_with("dispatch.completed.1.h"), "{}", n.id);
        assert_eq!(n.id.len(), "dispatch.completed.1.h".len() + 32);
        // Keys that a character-by-character cleaning would merge stay apart, and so do
        // projects.
        let id =
            |p, k: &str| Notification::new(p, EventType::DispatchCompleted, k, 0, Value::Null).id;
        assert_ne!(id(1, "a/b"), id(1, "a_b"));
        assert_ne!(id(1, "春节-1"), id(1, "双11-1"));
        assert_ne!(id(1, "1001"), id(2, "1001"));
        assert_eq!(id(1, "1001"), "dispatch.completed.1.1001");
        let long = "x".repeat(300);
        assert_ne!(id(1, &long), id(1, &format!("{long}y")));
        let body: Value = serde_json::from_slice(&n.body()).unwrap();
        assert_eq!(body["type"], "dispatch.completed");
        assert_eq!(body["timestamp"], "2022-10-01T02:11:20Z");
        assert_eq!(body["data"]["dispatchId"], "d/1 é\n");
    }

    #[test]
    fn a_seal_holds_only_for_its_notification_and_token() {
        let n = Notification::new(1, EventType::ReceiptTimeout, "o1", 5, Value::Null);
        let token = Token::new("whsec_AQID");
        let sealed = seal(&n, &token);
        assert!(seal_holds(&n, &token, &sealed));
        assert!(!seal_holds(&n, &Token::new("other"), &sealed));
        let mut forged = n.clone();
        forged.data = serde_json::json!({"users": 1000});
        assert!(!seal_holds(&forged, &token, &sealed));
    }

    #[test]
    fn retries_wait_longer_each_time_and_end() {
        assert_eq!(retry_wait(0, 1.0), Some(5_000));
        assert_eq!(retry_wait(5, 1.0), Some(3_600_000));
        assert_eq!(retry_wait(6, 1.0), None);
        assert_eq!(retry_wait(1, 60.0), Some(500));
    }
}
