//! The API representations: what admins, operators and the campaign system see.

use serde::Serialize;
use serde_json::{Value, json};

use crate::clock::rfc3339;
use crate::model::*;

/// A touchpoint as the admin API returns it: every field but the token, and `tokenSet`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TouchpointView<'a> {
    pub id: &'a str,
    pub project_id: ProjectId,
    pub name: &'a str,
    pub kind: Kind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<&'a str>,
    pub url: &'a str,
    pub token_set: bool,
    pub batch_size: u16,
    pub receipt: &'a Receipt,
    pub user_attributes: &'a [UserAttribute],
    pub template_params: &'a [TemplateParam],
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_timeout_seconds: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<u16>,
    pub enabled: bool,
    pub space_ids: &'a [String],
    pub version: u64,
    pub created_at: String,
    pub updated_at: String,
}

impl<'a> From<&'a Touchpoint> for TouchpointView<'a> {
    fn from(tp: &'a Touchpoint) -> Self {
        TouchpointView {
            id: &tp.id,
            project_id: tp.project_id,
            name: &tp.spec.name,
            kind: tp.spec.kind,
            description: tp.spec.description.as_deref(),
            url: &tp.spec.url,
            token_set: tp.token.is_some(),
            batch_size: tp.spec.batch_size,
            receipt: &tp.spec.receipt,
            user_attributes: &tp.spec.user_attributes,
            template_params: &tp.spec.template_params,
            request_timeout_seconds: tp.spec.request_timeout_seconds,
            max_concurrency: tp.spec.max_concurrency,
            enabled: tp.enabled,
            space_ids: &tp.space_ids,
            version: tp.version,
            created_at: rfc3339(tp.created_at),
            updated_at: rfc3339(tp.updated_at),
        }
    }
}

/// A campaign reference as listed for a touchpoint.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CampaignRefView<'a> {
    pub campaign_id: &'a str,
    pub name: &'a str,
    pub state: CampaignState,
    pub blocks_disable: bool,
    pub updated_at: String,
}

impl<'a> From<&'a CampaignRef> for CampaignRefView<'a> {
    fn from(c: &'a CampaignRef) -> Self {
        CampaignRefView {
            campaign_id: &c.campaign_id,
            name: &c.name,
            state: c.state,
            blocks_disable: c.state.blocks_disable(),
            updated_at: rfc3339(c.updated_at),
        }
    }
}

/// A touchpoint as an operator of a space sees it when building a strategy: no URL, no
/// receipt internals, and for each template parameter the widget a campaign editor draws.
pub fn operator_view(tp: &Touchpoint) -> Value {
    let attributes: Vec<Value> = tp
        .spec
        .user_attributes
        .iter()
        .map(|a| json!({"identifier": a.identifier, "displayName": a.display_name}))
        .collect();
    let params: Vec<Value> = tp
        .spec
        .template_params
        .iter()
        .map(|p| {
            let mut field = json!({
                "identifier": p.identifier,
                "displayName": p.display_name,
                "type": p.param_type,
                "required": p.required,
            });
            if let Some(d) = &p.default {
                field["default"] = d.clone();
            }
            match p.param_type {
                ParamType::Date => {
                    field["input"] = json!("date-picker");
                    field["formats"] = json!(["yyyy-MM-dd", "yyyy-MM-dd HH:mm:ss"]);
                }
                ParamType::Number => field["input"] = json!("number-input"),
                ParamType::Text => {
                    field["input"] = json!("text-input");
                    // Attributes the operator may insert as {{identifier}}.
                    field["insertableAttributes"] = json!(attributes);
                }
                ParamType::Enum => {
                    let multiple = p.enum_spec.as_ref().is_some_and(|e| e.multiple);
                    field["input"] = json!(if multiple { "multi-select" } else { "select" });
                    field["multiple"] = json!(multiple);
                    match p.enum_spec.as_ref().map(|e| &e.source) {
                        Some(EnumSource::Manual { options }) => {
                            field["options"] = json!(options);
                        }
                        Some(EnumSource::Api { .. }) | None => {
                            field["optionsPath"] = json!(format!(
                                "/v1/touchpoints/{}/params/{}/options",
                                tp.id, p.identifier
                            ));
                        }
                    }
                }
            }
            field
        })
        .collect();
    let mut view = json!({
        "id": tp.id,
        "name": tp.spec.name,
        "kind": tp.spec.kind,
        "batchSize": tp.spec.batch_size,
        "receiptMode": match tp.spec.receipt { Receipt::Sync => "sync", Receipt::Async { .. } => "async" },
        "userAttributes": attributes,
        "templateParams": params,
    });
    if let Some(d) = &tp.spec.description {
        view["description"] = json!(d);
    }
    view
}
