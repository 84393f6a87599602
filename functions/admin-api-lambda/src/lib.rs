//! The admin API Lambda: the same Router as the local service under `lambda_http`, with the
//! caller's identity taken from the API Gateway HTTP API JWT authorizer's claims.
//!
//! Claim names (environment, defaults): `CLAIM_PROJECT` (`custom:project_id`), `CLAIM_ROLE`
//! (`custom:role`: `admin`, `operator` or `campaign`), `CLAIM_SPACES` (`custom:spaces`: space ids
//! separated by commas or spaces, for operators), `CLAIM_SUBJECT` (`sub`: who the audit log
//! records; `client_id` when the token has no such claim).
#![forbid(unsafe_code)]

use std::sync::Arc;

use axum::http::request::Parts;
use lambda_http::request::RequestContext;
use touchpoint::UrlPolicy;
use touchpoint_admin_api::{ApiError, Authenticator, Principal, Role};
use touchpoint_aws::{AwsNames, Clients};
use touchpoint_outbound::Outbound;
use touchpoint_services::{Services, Settings};

/// Reads the JWT authorizer's claims that API Gateway put in the request context.
#[derive(Clone, Debug)]
pub struct JwtClaims {
    pub project: String,
    pub role: String,
    pub spaces: String,
    pub subject: String,
}

impl Default for JwtClaims {
    fn default() -> Self {
        JwtClaims {
            project: "custom:project_id".into(),
            role: "custom:role".into(),
            spaces: "custom:spaces".into(),
            subject: "sub".into(),
        }
    }
}

impl JwtClaims {
    pub fn from_env() -> JwtClaims {
        let d = JwtClaims::default();
        let env = touchpoint_aws::process_env();
        let var = |n: &str, d: String| env.optional(n).unwrap_or(d);
        JwtClaims {
            project: var("CLAIM_PROJECT", d.project),
            role: var("CLAIM_ROLE", d.role),
            spaces: var("CLAIM_SPACES", d.spaces),
            subject: var("CLAIM_SUBJECT", d.subject),
        }
    }
}

impl Authenticator for JwtClaims {
    fn authenticate(&self, parts: &Parts) -> Result<Principal, ApiError> {
        let claims = match parts.extensions.get::<RequestContext>() {
            Some(RequestContext::ApiGatewayV2(ctx)) => ctx
                .authorizer
                .as_ref()
                .and_then(|a| a.jwt.as_ref())
                .map(|j| &j.claims),
            _ => None,
        }
        .ok_or_else(|| {
            ApiError::unauthorized(
                "no verified token (the API Gateway JWT authorizer must run first)",
            )
        })?;
        let project_id = claims
            .get(&self.project)
            .and_then(|p| p.trim().parse().ok())
            .ok_or_else(|| {
                ApiError::forbidden(format!("the token has no integer {} claim", self.project))
            })?;
        let role = match claims.get(&self.role).map(|r| r.trim()) {
            Some("admin") => Role::Admin,
            Some("campaign") => Role::Campaign,
            Some("operator") => Role::Operator {
                spaces: claims
                    .get(&self.spaces)
                    .map(|s| {
                        s.split([',', ' '])
                            .map(str::trim)
                            .filter(|s| !s.is_empty())
                            .map(str::to_owned)
                            .collect()
                    })
                    .unwrap_or_default(),
            },
            _ => {
                return Err(ApiError::forbidden(format!(
                    "the token's {} claim is not admin, operator or campaign",
                    self.role
                )));
            }
        };
        let actor = [self.subject.as_str(), "client_id"]
            .iter()
            .find_map(|c| claims.get(*c).map(|s| s.trim()).filter(|s| !s.is_empty()))
            .unwrap_or("unknown")
            .to_owned();
        Ok(Principal {
            project_id,
            role,
            actor,
        })
    }
}

/// The Router wired to DynamoDB, SQS and Scheduler.
pub fn app(
    clients: &Clients,
    names: &AwsNames,
    outbound: Outbound,
    claims: JwtClaims,
    urls: UrlPolicy,
) -> Result<axum::Router, String> {
    let settings = Settings {
        urls,
        ..Settings::default()
    };
    let services = Services::aws(clients, names, outbound, settings)?;
    Ok(touchpoint_admin_api::router(
        services.app_state(Arc::new(claims)),
    ))
}
