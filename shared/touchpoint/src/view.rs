//! The API representations: what admins, operators and the campaign system see.

use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use crate::clock::rfc3339;
use crate::model::*;

/// A touchpoint as the admin API returns it: every field but the token, and `tokenSet`.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = Touchpoint)]
pub struct TouchpointView<'a> {
    pub id: &'a str,
    pub project_id: ProjectId,
    pub name: &'a str,
    pub kind: Kind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<&'a str>,
    pub url: &'a str,
    pub token_set: bool,
    /// After a token rotation with an overlap: when the overlap ends (or ended). Until then
    /// `sign` uses the previous token and `webhook-signature` carries both.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(format = DateTime)]
    pub token_overlap_until: Option<String>,
    pub batch_size: u16,
    pub receipt: &'a Receipt,
    pub user_attributes: &'a [UserAttribute],
    pub template_params: &'a [TemplateParam],
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_timeout_seconds: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_requests_per_second: Option<u16>,
    pub enabled: bool,
    /// How its receiver is doing: paused by an admin or by the circuit breaker, degraded, or
    /// healthy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health: Option<crate::health::Health>,
    pub space_ids: &'a [String],
    pub version: u64,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
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
            token_overlap_until: tp.rotation.as_ref().map(|r| rfc3339(r.until)),
            batch_size: tp.spec.batch_size,
            receipt: &tp.spec.receipt,
            user_attributes: &tp.spec.user_attributes,
            template_params: &tp.spec.template_params,
            request_timeout_seconds: tp.spec.request_timeout_seconds,
            max_concurrency: tp.spec.max_concurrency,
            max_requests_per_second: tp.spec.max_requests_per_second,
            enabled: tp.enabled,
            health: None,
            space_ids: &tp.space_ids,
            version: tp.version,
            created_at: rfc3339(tp.created_at),
            updated_at: rfc3339(tp.updated_at),
        }
    }
}

impl<'a> TouchpointView<'a> {
    pub fn with_health(mut self, health: crate::health::Health) -> Self {
        self.health = Some(health);
        self
    }
}

/// A campaign reference as listed for a touchpoint.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = CampaignRef)]
pub struct CampaignRefView<'a> {
    pub campaign_id: &'a str,
    pub name: &'a str,
    pub state: CampaignState,
    /// Whether the campaign's state keeps the touchpoint from being disabled.
    pub blocks_disable: bool,
    #[schema(format = DateTime)]
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

/// A user attribute as operators see it: what it is called, not where it comes from.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OperatorAttribute<'a> {
    pub identifier: &'a str,
    pub display_name: &'a str,
}

/// The widget a campaign editor draws for a template parameter.
#[derive(Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum InputWidget {
    DatePicker,
    NumberInput,
    TextInput,
    Select,
    MultiSelect,
}

/// The formats a date parameter accepts.
pub const DATE_FORMATS: [&str; 2] = ["yyyy-MM-dd", "yyyy-MM-dd HH:mm:ss"];

/// A template parameter as operators fill it in.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OperatorParam<'a> {
    pub identifier: &'a str,
    pub display_name: &'a str,
    #[serde(rename = "type")]
    pub param_type: ParamType,
    pub required: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default: Option<&'a Value>,
    pub input: InputWidget,
    /// Date parameters: the accepted formats.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub formats: Option<[&'static str; 2]>,
    /// Text parameters: the attributes the operator may insert as `{{identifier}}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub insertable_attributes: Option<Vec<OperatorAttribute<'a>>>,
    /// Enum parameters: whether several options may be chosen.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub multiple: Option<bool>,
    /// Manual enum parameters: the options.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub options: Option<&'a [EnumOption]>,
    /// Enum parameters fed by an options API: where their options are read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub options_path: Option<String>,
}

/// How a touchpoint reports results, as operators see it.
#[derive(Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ReceiptMode {
    Sync,
    Async,
}

/// A touchpoint as an operator of a space sees it when building a strategy: no URL, no
/// receipt internals, and for each template parameter the widget a campaign editor draws.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OperatorTouchpoint<'a> {
    pub id: &'a str,
    pub name: &'a str,
    pub kind: Kind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<&'a str>,
    pub batch_size: u16,
    pub receipt_mode: ReceiptMode,
    pub user_attributes: Vec<OperatorAttribute<'a>>,
    pub template_params: Vec<OperatorParam<'a>>,
}

impl<'a> From<&'a Touchpoint> for OperatorTouchpoint<'a> {
    fn from(tp: &'a Touchpoint) -> Self {
        let attributes = || {
            tp.spec
                .user_attributes
                .iter()
                .map(|a| OperatorAttribute {
                    identifier: &a.identifier,
                    display_name: &a.display_name,
                })
                .collect::<Vec<_>>()
        };
        let params = tp
            .spec
            .template_params
            .iter()
            .map(|p| {
                let mut field = OperatorParam {
                    identifier: &p.identifier,
                    display_name: &p.display_name,
                    param_type: p.param_type,
                    required: p.required,
                    default: p.default.as_ref(),
                    input: InputWidget::TextInput,
                    formats: None,
                    insertable_attributes: None,
                    multiple: None,
                    options: None,
                    options_path: None,
                };
                match p.param_type {
                    ParamType::Date => {
                        field.input = InputWidget::DatePicker;
                        field.formats = Some(DATE_FORMATS);
                    }
                    ParamType::Number => field.input = InputWidget::NumberInput,
                    ParamType::Text => field.insertable_attributes = Some(attributes()),
                    ParamType::Enum => {
                        let multiple = p.enum_spec.as_ref().is_some_and(|e| e.multiple);
                        field.input = if multiple {
                            InputWidget::MultiSelect
                        } else {
                            InputWidget::Select
                        };
                        field.multiple = Some(multiple);
                        match p.enum_spec.as_ref().map(|e| &e.source) {
                            Some(EnumSource::Manual { options }) => field.options = Some(options),
                            Some(EnumSource::Api { .. }) | None => {
                                field.options_path = Some(format!(
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
        OperatorTouchpoint {
            id: &tp.id,
            name: &tp.spec.name,
            kind: tp.spec.kind,
            description: tp.spec.description.as_deref(),
            batch_size: tp.spec.batch_size,
            receipt_mode: match tp.spec.receipt {
                Receipt::Sync => ReceiptMode::Sync,
                Receipt::Async { .. } => ReceiptMode::Async,
            },
            user_attributes: attributes(),
            template_params: params,
        }
    }
}
