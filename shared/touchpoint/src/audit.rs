//! The audit log: every admin mutation, with who made it, when, and the fields it changed.
//!
//! An entry is written in the same atomic step as the change it describes (the stores take it
//! with each mutation), so there is no change without its entry and no entry without its
//! change. A token never appears in an entry: its change is recorded as `"changed"` or
//! `"removed"`.

use serde::Serialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;

use crate::clock::{Millis, rfc3339};
use crate::ids::TouchpointId;
use crate::model::{ProjectId, Touchpoint};
use crate::view::TouchpointView;

/// What was done.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Serialize,
    ToSchema,
    strum::IntoStaticStr,
    strum::EnumString,
    strum::VariantArray,
)]
pub enum AuditAction {
    #[serde(rename = "touchpoint.create")]
    #[strum(serialize = "touchpoint.create")]
    Create,
    #[serde(rename = "touchpoint.edit")]
    #[strum(serialize = "touchpoint.edit")]
    Edit,
    #[serde(rename = "touchpoint.enable")]
    #[strum(serialize = "touchpoint.enable")]
    Enable,
    #[serde(rename = "touchpoint.disable")]
    #[strum(serialize = "touchpoint.disable")]
    Disable,
    #[serde(rename = "touchpoint.delete")]
    #[strum(serialize = "touchpoint.delete")]
    Delete,
    #[serde(rename = "touchpoint.spaces")]
    #[strum(serialize = "touchpoint.spaces")]
    Spaces,
    #[serde(rename = "touchpoint.token.rotate")]
    #[strum(serialize = "touchpoint.token.rotate")]
    RotateToken,
    #[serde(rename = "touchpoint.pause")]
    #[strum(serialize = "touchpoint.pause")]
    Pause,
    #[serde(rename = "touchpoint.resume")]
    #[strum(serialize = "touchpoint.resume")]
    Resume,
    #[serde(rename = "campaign.put")]
    #[strum(serialize = "campaign.put")]
    PutCampaign,
    #[serde(rename = "campaign.delete")]
    #[strum(serialize = "campaign.delete")]
    DeleteCampaign,
    #[serde(rename = "notifications.put")]
    #[strum(serialize = "notifications.put")]
    PutNotifications,
    #[serde(rename = "notifications.delete")]
    #[strum(serialize = "notifications.delete")]
    DeleteNotifications,
}

crate::model::wire_names!(AuditAction);

/// One field's value before and after a change (absent: the field did not exist).
#[derive(Clone, Debug, PartialEq, Serialize, serde::Deserialize, ToSchema)]
pub struct FieldChange {
    pub field: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<Value>,
}

/// Who made a change: the API key's id locally (`key-` and the first 8 hex digits of its
/// SHA-256), the token's subject on AWS; `system` for the service's own changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Actor(pub String);

impl Actor {
    pub fn system() -> Actor {
        Actor("system".into())
    }
}

/// One recorded mutation.
#[derive(Clone, Debug, PartialEq)]
pub struct AuditEntry {
    pub project_id: ProjectId,
    pub at: Millis,
    /// Orders entries of the same millisecond: a count of the entries this process made (so
    /// its entries keep their order) above 32 random bits (so two processes' entries of one
    /// millisecond do not collide).
    pub seq: u64,
    pub actor: String,
    pub action: AuditAction,
    pub touchpoint_id: Option<TouchpointId>,
    /// What else the action names (a campaign id).
    pub target: Option<String>,
    pub changes: Vec<FieldChange>,
}

/// Longest actor kept, in characters (a longer subject is cut).
pub const MAX_ACTOR_CHARS: usize = 128;

impl AuditEntry {
    /// An entry for `action` by `actor` at `at`, with no changes yet.
    pub fn new(
        project_id: ProjectId,
        actor: &Actor,
        action: AuditAction,
        touchpoint_id: Option<&TouchpointId>,
        at: Millis,
    ) -> AuditEntry {
        static MADE: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let made = MADE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut random = [0u8; 4];
        let _ = getrandom::fill(&mut random);
        AuditEntry {
            project_id,
            at,
            seq: (u64::from(made) << 32) | u64::from(u32::from_le_bytes(random)),
            actor: actor.0.chars().take(MAX_ACTOR_CHARS).collect(),
            action,
            touchpoint_id: touchpoint_id.cloned(),
            target: None,
            changes: Vec::new(),
        }
    }

    pub fn with_target(mut self, target: impl Into<String>) -> AuditEntry {
        self.target = Some(target.into());
        self
    }

    pub fn with_changes(mut self, changes: Vec<FieldChange>) -> AuditEntry {
        self.changes = changes;
        self
    }

    /// The entry's id: sortable by time, unique within the project.
    pub fn id(&self) -> String {
        format!("{:013}-{:016x}", self.at.max(0), self.seq)
    }
}

/// Fields of a touchpoint's JSON that no audit entry lists: the ones every change moves, and
/// the token flag (the token has its own entry).
const UNAUDITED: [&str; 6] = [
    "id",
    "projectId",
    "version",
    "createdAt",
    "updatedAt",
    "tokenSet",
];

fn audited(tp: Option<&Touchpoint>) -> Map<String, Value> {
    let Some(tp) = tp else {
        return Map::new();
    };
    match serde_json::to_value(TouchpointView::from(tp)) {
        Ok(Value::Object(mut m)) => {
            for f in UNAUDITED {
                m.remove(f);
            }
            m
        }
        _ => Map::new(),
    }
}

/// The fields that differ between two states of a touchpoint (`None`: it did not exist), in
/// the API's names and shapes, and the token as `"changed"` or `"removed"`.
pub fn touchpoint_changes(
    before: Option<&Touchpoint>,
    after: Option<&Touchpoint>,
) -> Vec<FieldChange> {
    let (b, a) = (audited(before), audited(after));
    let mut fields: Vec<&String> = b
        .keys()
        .chain(a.keys().filter(|k| !b.contains_key(*k)))
        .collect();
    fields.sort();
    let mut changes: Vec<FieldChange> = fields
        .into_iter()
        .filter(|f| b.get(*f) != a.get(*f))
        .map(|f| FieldChange {
            field: f.clone(),
            before: b.get(f).cloned(),
            after: a.get(f).cloned(),
        })
        .collect();
    fn token(t: Option<&Touchpoint>) -> Option<&crate::model::Token> {
        t.and_then(|t| t.token.as_ref())
    }
    fn paused(t: Option<&Touchpoint>) -> Option<&crate::model::ManualPause> {
        t.and_then(|t| t.paused.as_ref())
    }
    if paused(before) != paused(after) {
        let show = |p: Option<&crate::model::ManualPause>| {
            p.map(|p| serde_json::json!({"since": rfc3339(p.since), "reason": p.reason}))
        };
        changes.push(FieldChange {
            field: "paused".into(),
            before: show(paused(before)),
            after: show(paused(after)),
        });
    }
    if token(before) != token(after) {
        changes.push(FieldChange {
            field: "token".into(),
            before: None,
            after: Some(Value::from(if token(after).is_some() {
                "changed"
            } else {
                "removed"
            })),
        });
    }
    changes
}

/// Which entries a listing returns.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuditFilter {
    pub touchpoint_id: Option<TouchpointId>,
    /// Entries at or after this time.
    pub since: Option<Millis>,
    /// Entries older than this entry id (the previous page's last), newest first.
    pub before_id: Option<String>,
    pub limit: usize,
}

/// An entry as the API returns it.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = AuditEntry)]
pub struct AuditView<'a> {
    pub id: String,
    #[schema(format = DateTime)]
    pub at: String,
    pub actor: &'a str,
    pub action: AuditAction,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub touchpoint_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<&'a str>,
    pub changes: &'a [FieldChange],
}

impl<'a> From<&'a AuditEntry> for AuditView<'a> {
    fn from(e: &'a AuditEntry) -> Self {
        AuditView {
            id: e.id(),
            at: rfc3339(e.at),
            actor: &e.actor,
            action: e.action,
            touchpoint_id: e.touchpoint_id.as_deref(),
            target: e.target.as_deref(),
            changes: &e.changes,
        }
    }
}

/// Whether `s` is an entry id as [`AuditEntry::id`] writes them.
pub fn is_entry_id(s: &str) -> bool {
    let (at, seq) = match s.split_once('-') {
        Some(parts) => parts,
        None => return false,
    };
    at.len() == 13
        && at.bytes().all(|b| b.is_ascii_digit())
        && seq.len() == 16
        && seq
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_action_names_are_the_wire_names() {
        for a in AuditAction::ALL {
            assert_eq!(serde_json::to_value(a).unwrap(), a.as_str());
            assert_eq!(AuditAction::parse(a.as_str()), Some(*a));
        }
    }

    #[test]
    fn entry_ids_sort_by_time_and_read_back() {
        let mut a = AuditEntry::new(1, &Actor::system(), AuditAction::Enable, None, 9);
        a.seq = 0xab;
        let mut b = a.clone();
        b.at = 10;
        assert!(a.id() < b.id());
        assert_eq!(a.id(), "0000000000009-00000000000000ab");
        assert!(is_entry_id(&a.id()));
        // One process's entries of one millisecond keep their order.
        let (c, d) = (
            AuditEntry::new(1, &Actor::system(), AuditAction::Enable, None, 9),
            AuditEntry::new(1, &Actor::system(), AuditAction::Enable, None, 9),
        );
        assert!(c.id() < d.id());
        for bad in [
            "",
            "1-2",
            "0000000000009-00000000000000AB",
            "000000000000x-00000000000000ab",
            "0000000000009-000000ab",
        ] {
            assert!(!is_entry_id(bad), "{bad}");
        }
    }
}
