//! Who is calling: every request acts for one project with one role.
//!
//! How a caller proves it is a deployment choice, so it sits behind [`Authenticator`]: the local
//! binary uses API keys from `TOUCHPOINT_API_KEYS`; on AWS, the API Gateway JWT authorizer's
//! claims will be read instead.

use std::collections::HashMap;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use sha2::{Digest, Sha256};
use touchpoint::ProjectId;

use crate::AppState;
use crate::error::ApiError;

/// What a caller may do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    /// Everything on the project's touchpoints.
    Admin,
    /// Reads the listings and parameter options of its spaces.
    Operator { spaces: Vec<String> },
    /// The campaign system: campaign references (and dispatches).
    Campaign,
}

impl Role {
    pub fn name(&self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operator { .. } => "operator",
            Role::Campaign => "campaign",
        }
    }
}

/// The authenticated caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    pub project_id: ProjectId,
    pub role: Role,
    /// Who the audit log records: the API key's id locally, the token's subject on AWS.
    pub actor: String,
}

impl Principal {
    /// The caller as the audit log names it.
    pub fn actor(&self) -> touchpoint::audit::Actor {
        touchpoint::audit::Actor(self.actor.clone())
    }

    /// Refuses with 403 unless the caller has one of `roles` (by name).
    fn require(&self, roles: &[&str]) -> Result<(), ApiError> {
        if roles.contains(&self.role.name()) {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "the {} role may not do this (needs {})",
                self.role.name(),
                roles.join(" or ")
            )))
        }
    }

    /// Whether the caller may read what operators of `space` see.
    pub fn may_read_space(&self, space: &str) -> bool {
        match &self.role {
            Role::Admin => true,
            Role::Operator { spaces } => spaces.iter().any(|s| s == space),
            Role::Campaign => false,
        }
    }
}

/// Turns a request's credentials into a [`Principal`].
pub trait Authenticator: Send + Sync {
    /// `Err` is always a 401: missing, malformed or unknown credentials.
    fn authenticate(&self, parts: &Parts) -> Result<Principal, ApiError>;
}

/// Static API keys sent as `Authorization: Bearer KEY`. Keys are held only as SHA-256 digests,
/// so a lookup compares digests, not the secrets themselves.
pub struct ApiKeys {
    by_digest: HashMap<[u8; 32], Principal>,
}

/// Shortest key accepted from configuration.
pub const MIN_KEY_LEN: usize = 16;

impl ApiKeys {
    /// Parses `KEY=PROJECT_ID:ROLE` or `KEY=PROJECT_ID:operator:SPACE|SPACE…`, comma-separated.
    pub fn parse(spec: &str) -> Result<ApiKeys, String> {
        let mut by_digest = HashMap::new();
        for (i, entry) in spec.split(',').map(str::trim).enumerate() {
            if entry.is_empty() {
                continue;
            }
            let n = i + 1;
            let (key, grant) = entry
                .split_once('=')
                .ok_or_else(|| format!("entry {n}: expected KEY=PROJECT_ID:ROLE"))?;
            if key.len() < MIN_KEY_LEN || key.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(format!(
                    "entry {n}: a key must be at least {MIN_KEY_LEN} characters without spaces"
                ));
            }
            let mut parts = grant.split(':');
            let project_id: ProjectId = parts
                .next()
                .and_then(|p| p.trim().parse().ok())
                .ok_or_else(|| format!("entry {n}: PROJECT_ID must be an integer"))?;
            let role = match (parts.next().map(str::trim), parts.next()) {
                (Some("admin"), None) => Role::Admin,
                (Some("campaign"), None) => Role::Campaign,
                (Some("operator"), Some(spaces)) => {
                    let spaces: Vec<String> = spaces
                        .split('|')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(str::to_owned)
                        .collect();
                    if spaces.is_empty() {
                        return Err(format!("entry {n}: an operator needs at least one space"));
                    }
                    Role::Operator { spaces }
                }
                (Some("operator"), None) => {
                    return Err(format!(
                        "entry {n}: an operator key is KEY=PROJECT_ID:operator:SPACE|SPACE"
                    ));
                }
                _ => {
                    return Err(format!(
                        "entry {n}: ROLE must be admin, operator or campaign"
                    ));
                }
            };
            if parts.next().is_some() {
                return Err(format!("entry {n}: too many ':' fields"));
            }
            let digest = digest(key);
            let actor = key_id(&digest);
            if by_digest
                .insert(
                    digest,
                    Principal {
                        project_id,
                        role,
                        actor,
                    },
                )
                .is_some()
            {
                return Err(format!("entry {n}: the same key appears twice"));
            }
        }
        if by_digest.is_empty() {
            return Err("no keys given".into());
        }
        Ok(ApiKeys { by_digest })
    }

    pub fn len(&self) -> usize {
        self.by_digest.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_digest.is_empty()
    }
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// A key's id in the audit log: `key-` and the first 8 hex digits of its SHA-256 (what
/// `printf %s KEY | sha256sum | cut -c1-8` prints), which names the key without revealing it.
pub fn key_id(digest: &[u8; 32]) -> String {
    format!("key-{}", hex::encode(&digest[..4]))
}

impl Authenticator for ApiKeys {
    fn authenticate(&self, parts: &Parts) -> Result<Principal, ApiError> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .ok_or_else(|| ApiError::unauthorized("missing Authorization: Bearer <key>"))?;
        let key = header
            .to_str()
            .ok()
            .and_then(|h| {
                h.strip_prefix("Bearer ")
                    .or_else(|| h.strip_prefix("bearer "))
            })
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .ok_or_else(|| {
                ApiError::unauthorized("the Authorization header must be Bearer <key>")
            })?;
        self.by_digest
            .get(&digest(key))
            .cloned()
            .ok_or_else(|| ApiError::unauthorized("unknown API key"))
    }
}

/// A caller with the admin role (403 for any other).
pub struct Admin(pub Principal);

/// The campaign system, or an admin (403 for operators).
pub struct CampaignSystem(pub Principal);

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let who = state.auth.authenticate(parts)?;
        who.require(&["admin"])?;
        Ok(Admin(who))
    }
}

impl FromRequestParts<AppState> for CampaignSystem {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let who = state.auth.authenticate(parts)?;
        who.require(&["admin", "campaign"])?;
        Ok(CampaignSystem(who))
    }
}

impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        state.auth.authenticate(parts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_role_form() {
        let keys = ApiKeys::parse(
            "aaaaaaaaaaaaaaaa=1:admin, bbbbbbbbbbbbbbbb=2:operator:space-a|space-b,cccccccccccccccc=1:campaign",
        )
        .unwrap();
        assert_eq!(keys.len(), 3);
        // `printf %s bbbbbbbbbbbbbbbb | sha256sum | cut -c1-8` prints 2e61afd2.
        let actor = &keys.by_digest[&digest("bbbbbbbbbbbbbbbb")].actor;
        assert_eq!(actor, "key-2e61afd2");
        assert!(actor.starts_with("key-") && actor.len() == 12, "{actor}");
        assert!(!actor.contains("bbbb"));
        assert_eq!(
            keys.by_digest[&digest("bbbbbbbbbbbbbbbb")].role,
            Role::Operator {
                spaces: vec!["space-a".into(), "space-b".into()]
            }
        );
    }

    #[test]
    fn refuses_malformed_entries_with_their_position() {
        for bad in [
            "short=1:admin",
            "aaaaaaaaaaaaaaaa=x:admin",
            "aaaaaaaaaaaaaaaa=1:root",
            "aaaaaaaaaaaaaaaa=1:operator",
            "aaaaaaaaaaaaaaaa=1:admin:extra",
            "aaaaaaaaaaaaaaaa=1:admin,aaaaaaaaaaaaaaaa=2:admin",
            "",
        ] {
            assert!(ApiKeys::parse(bad).is_err(), "{bad}");
        }
        let err = ApiKeys::parse("aaaaaaaaaaaaaaaa=1:admin,oops")
            .err()
            .unwrap();
        assert!(err.starts_with("entry 2"), "{err}");
    }
}
