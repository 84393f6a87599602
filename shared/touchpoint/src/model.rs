//! The touchpoint and the things it is made of, as product.md describes them.
//!
//! Serde derives here give the stored and API field names (camelCase). The token is deliberately
//! outside every serialisable type: it lives in [`Token`], which has no `Serialize` and a redacted
//! `Debug`, so no response or log line can carry it by accident.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::clock::Millis;
use crate::ids::TouchpointId;

/// A project of the data center; every resource belongs to exactly one.
pub type ProjectId = i64;

/// Longest touchpoint name, in Unicode characters.
pub const MAX_NAME_CHARS: usize = 15;
/// Smallest and largest number of users per touch request.
pub const BATCH_SIZE_RANGE: std::ops::RangeInclusive<u16> = 1..=500;
/// Batch size when the admin does not choose one: batching is the default.
pub const DEFAULT_BATCH_SIZE: u16 = 500;
/// Receipt timeout bounds and default, in minutes, for async touchpoints.
pub const RECEIPT_TIMEOUT_RANGE: std::ops::RangeInclusive<u32> = 5..=10_080;
pub const DEFAULT_RECEIPT_TIMEOUT_MINUTES: u32 = 60;
/// Caps that keep a touchpoint small enough to render and store.
pub const MAX_USER_ATTRIBUTES: usize = 50;
pub const MAX_TEMPLATE_PARAMS: usize = 50;
pub const MAX_ENUM_OPTIONS: usize = 100;
pub const MAX_SPACES: usize = 1_000;

/// `ALL`, `as_str` and `parse` for an enum whose strum derives give its wire names (the same
/// as its serde names: a test checks every variant).
macro_rules! wire_names {
    ($t:ident) => {
        impl $t {
            pub const ALL: &[$t] = <$t as strum::VariantArray>::VARIANTS;

            pub fn as_str(self) -> &'static str {
                self.into()
            }

            pub fn parse(s: &str) -> Option<$t> {
                s.parse().ok()
            }
        }
    };
}
pub(crate) use wire_names;

/// What a touchpoint does for the user; fixed at creation.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    ToSchema,
    strum::IntoStaticStr,
    strum::EnumString,
    strum::VariantArray,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum Kind {
    /// SMS, official-account message, …
    Notification,
    /// Coupon, points, …
    Benefit,
    Other,
}

wire_names!(Kind);

/// How the receiver reports each user's result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "mode", rename_all = "lowercase")]
pub enum Receipt {
    /// Results come in the touch response.
    Sync,
    /// The touch response only accepts; results are polled from `receipt_url` every 5 minutes,
    /// and whatever is unresolved after `timeout_minutes` fails.
    Async {
        #[serde(rename = "receiptUrl")]
        receipt_url: String,
        #[serde(rename = "timeoutMinutes")]
        timeout_minutes: u32,
    },
}

/// A user attribute sent in `dynamicData`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UserAttribute {
    /// The source attribute or identity in the data center.
    pub attribute: String,
    /// The key sent to the receiver.
    pub identifier: String,
    pub display_name: String,
    /// Sent when the user's value is empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<Value>,
}

/// The type of a template parameter, which decides the operator's input widget and validation.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    ToSchema,
    strum::IntoStaticStr,
    strum::EnumString,
    strum::VariantArray,
)]
#[serde(rename_all = "lowercase")]
#[strum(serialize_all = "lowercase")]
pub enum ParamType {
    Date,
    Number,
    Enum,
    Text,
}

wire_names!(ParamType);

/// A template parameter sent in `temData`, filled in by operators per campaign strategy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TemplateParam {
    pub identifier: String,
    pub display_name: String,
    #[serde(rename = "type")]
    pub param_type: ParamType,
    pub required: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<Value>,
    /// Present exactly when `param_type` is [`ParamType::Enum`].
    #[serde(rename = "enum", default, skip_serializing_if = "Option::is_none")]
    pub enum_spec: Option<EnumSpec>,
}

/// Where an enum parameter's options come from, and whether several may be chosen.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnumSpec {
    pub multiple: bool,
    #[serde(flatten)]
    pub source: EnumSource,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "source", rename_all = "lowercase")]
pub enum EnumSource {
    /// Entered by hand by the admin.
    Manual { options: Vec<EnumOption> },
    /// Fetched from the content system's options API (protocol §4).
    Api {
        #[serde(rename = "optionsUrl")]
        options_url: String,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct EnumOption {
    pub code: String,
    pub name: String,
}

/// The fields an admin edits. Everything else on a [`Touchpoint`] is managed by the service.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TouchpointSpec {
    pub name: String,
    pub kind: Kind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub url: String,
    pub batch_size: u16,
    pub receipt: Receipt,
    pub user_attributes: Vec<UserAttribute>,
    pub template_params: Vec<TemplateParam>,
    /// Per-request timeout towards this receiver (default: the deployment's, 15 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_timeout_seconds: Option<u8>,
    /// Requests in flight at once towards this receiver (default: the deployment's, 4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<u16>,
    /// Requests a second towards this receiver at most (default: no limit but the
    /// back-pressure its 429 and 503 answers apply).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests_per_second: Option<u16>,
}

impl TouchpointSpec {
    /// How long a request to this receiver may take: its own setting, or the deployment's
    /// `default`; `time_scale` divides the touchpoint's setting (1 in production; compressed
    /// time in the delivery scenarios).
    pub fn request_timeout(
        &self,
        default: std::time::Duration,
        time_scale: f64,
    ) -> std::time::Duration {
        self.request_timeout_seconds.map_or(default, |s| {
            std::time::Duration::from_secs(u64::from(s)).div_f64(time_scale.max(f64::MIN_POSITIVE))
        })
    }
}

/// Bounds of the per-touchpoint delivery settings.
pub const REQUEST_TIMEOUT_SECONDS_RANGE: std::ops::RangeInclusive<u8> = 1..=60;
pub const MAX_CONCURRENCY_RANGE: std::ops::RangeInclusive<u16> = 1..=64;
/// Bounds of `maxRequestsPerSecond`.
pub const MAX_REQUESTS_PER_SECOND_RANGE: std::ops::RangeInclusive<u16> = 1..=10_000;

/// The secret a touchpoint signs with. Never serialised; `Debug` shows only that it exists.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    pub fn new(secret: impl Into<String>) -> Token {
        Token(secret.into())
    }

    /// The secret itself, for signing and for storing. Do not log or return it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// Longest and default overlap of a token rotation, in hours.
pub const MAX_OVERLAP_HOURS: f64 = 168.0;
pub const DEFAULT_OVERLAP_HOURS: f64 = 24.0;

/// A token rotation within its overlap: the token it replaced stays in use until `until`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenRotation {
    /// The token before the rotation (`None`: there was none). The GrowingIO `sign` keeps
    /// using it, and `webhook-signature` carries a signature with it after the new token's.
    pub previous: Option<Token>,
    /// When the overlap ends (epoch milliseconds): from then on only the new token is used.
    pub until: Millis,
}

/// An admin's pause of a touchpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManualPause {
    pub since: Millis,
    pub reason: Option<String>,
}

/// Longest reason an admin may give for a pause, in characters.
pub const MAX_PAUSE_REASON_CHARS: usize = 200;

/// What a request sent at some moment is signed with. Its `Debug` shows which tokens there
/// are, never a token.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub struct Signing<'a> {
    /// The token of the GrowingIO `sign` (none: no `sign`).
    pub sign: Option<&'a str>,
    /// The tokens of the `webhook-signature` header, newest first (none: no signature
    /// headers).
    pub signatures: [Option<&'a str>; 2],
}

impl std::fmt::Debug for Signing<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signing")
            .field("sign", &self.sign.map(|_| "<redacted>"))
            .field("signatures", &self.signature_tokens().count())
            .finish()
    }
}

impl<'a> Signing<'a> {
    /// What a token and a rotation sign with at `now` (see [`Touchpoint::signing`]).
    pub fn of(
        token: Option<&'a Token>,
        rotation: Option<&'a TokenRotation>,
        now: Millis,
    ) -> Signing<'a> {
        let token = token.map(Token::expose);
        match rotation {
            Some(r) if now < r.until => {
                let previous = r.previous.as_ref().map(Token::expose);
                Signing {
                    sign: previous,
                    signatures: if token == previous {
                        [token, None]
                    } else {
                        [token, previous]
                    },
                }
            }
            _ => Signing::single(token),
        }
    }

    /// One token for both (or none).
    pub fn single(token: Option<&'a str>) -> Signing<'a> {
        Signing {
            sign: token,
            signatures: [token, None],
        }
    }

    /// The `webhook-signature` tokens, newest first.
    pub fn signature_tokens(&self) -> impl Iterator<Item = &'a str> + use<'a> {
        self.signatures.into_iter().flatten()
    }
}

/// A registered touchpoint.
#[derive(Clone, Debug, PartialEq)]
pub struct Touchpoint {
    pub id: TouchpointId,
    pub project_id: ProjectId,
    pub spec: TouchpointSpec,
    pub token: Option<Token>,
    /// A token rotation in its overlap, if any (see [`Touchpoint::signing`]).
    pub rotation: Option<TokenRotation>,
    /// Paused by an admin: no request goes to its receiver until it is resumed.
    pub paused: Option<ManualPause>,
    pub enabled: bool,
    /// Spaces whose operators may use it, sorted and unique.
    pub space_ids: Vec<String>,
    /// Incremented by every change; a change names the version it was based on.
    pub version: u64,
    pub created_at: Millis,
    pub updated_at: Millis,
}

impl Touchpoint {
    /// The tokens a request sent at `now` is signed with: during a rotation's overlap, `sign`
    /// uses the previous token and `webhook-signature` carries the new token's signature and
    /// the previous one's; otherwise the token alone.
    pub fn signing(&self, now: Millis) -> Signing<'_> {
        Signing::of(self.token.as_ref(), self.rotation.as_ref(), now)
    }

    /// The rotation, if its overlap has not ended at `now`.
    pub fn rotation_at(&self, now: Millis) -> Option<&TokenRotation> {
        self.rotation.as_ref().filter(|r| now < r.until)
    }
}

/// The state of a campaign that references a touchpoint, as the campaign system reports it.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    ToSchema,
    strum::IntoStaticStr,
    strum::EnumString,
    strum::VariantArray,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum CampaignState {
    Running,
    Paused,
    NotStarted,
    PendingPublish,
    InApproval,
    Ended,
    Draft,
}

wire_names!(CampaignState);

impl CampaignState {
    /// Whether a campaign in this state keeps its touchpoints from being disabled (and so from
    /// being selected once disabled).
    pub fn blocks_disable(self) -> bool {
        !matches!(self, CampaignState::Ended | CampaignState::Draft)
    }
}

/// A campaign's reference to a touchpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CampaignRef {
    pub campaign_id: String,
    pub name: String,
    pub state: CampaignState,
    #[serde(skip)]
    pub updated_at: Millis,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exactly_the_live_campaign_states_block_disabling() {
        let blocking: Vec<_> = CampaignState::ALL
            .iter()
            .copied()
            .filter(|s| s.blocks_disable())
            .map(CampaignState::as_str)
            .collect();
        assert_eq!(
            blocking,
            [
                "running",
                "paused",
                "not_started",
                "pending_publish",
                "in_approval"
            ]
        );
    }

    #[test]
    fn the_string_tables_are_the_wire_names() {
        fn check<T: Serialize + Copy + PartialEq + std::fmt::Debug>(
            all: &[T],
            as_str: fn(T) -> &'static str,
            parse: fn(&str) -> Option<T>,
        ) {
            assert!(!all.is_empty());
            for v in all.iter().copied() {
                assert_eq!(serde_json::to_value(v).unwrap(), as_str(v), "{v:?}");
                assert_eq!(parse(as_str(v)), Some(v));
            }
            assert_eq!(parse("nope"), None);
        }
        check(Kind::ALL, Kind::as_str, Kind::parse);
        check(ParamType::ALL, ParamType::as_str, ParamType::parse);
        check(
            CampaignState::ALL,
            CampaignState::as_str,
            CampaignState::parse,
        );
        assert_eq!(Kind::ALL.len(), 3);
        assert_eq!(ParamType::ALL.len(), 4);
        assert_eq!(CampaignState::ALL.len(), 7);
    }

    #[test]
    fn a_rotation_signs_with_both_tokens_until_its_overlap_ends() {
        let mut tp = Touchpoint {
            id: "tp_1".into(),
            project_id: 1,
            spec: TouchpointSpec {
                name: "n".into(),
                kind: Kind::Other,
                description: None,
                url: "https://x".into(),
                batch_size: 1,
                receipt: Receipt::Sync,
                user_attributes: vec![],
                template_params: vec![],
                request_timeout_seconds: None,
                max_concurrency: None,
                max_requests_per_second: None,
            },
            token: Some(Token::new("new")),
            rotation: Some(TokenRotation {
                previous: Some(Token::new("old")),
                until: 1_000,
            }),
            paused: None,
            enabled: true,
            space_ids: vec![],
            version: 1,
            created_at: 0,
            updated_at: 0,
        };
        let during = tp.signing(999);
        assert_eq!(during.sign, Some("old"));
        assert_eq!(
            during.signature_tokens().collect::<Vec<_>>(),
            ["new", "old"]
        );
        let after = tp.signing(1_000);
        assert_eq!(after.sign, Some("new"));
        assert_eq!(after.signature_tokens().collect::<Vec<_>>(), ["new"]);
        assert!(tp.rotation_at(1_000).is_none());
        // A token added by a rotation: no `sign` until the overlap ends.
        tp.rotation = Some(TokenRotation {
            previous: None,
            until: 1_000,
        });
        assert_eq!(tp.signing(10).sign, None);
        assert_eq!(
            tp.signing(10).signature_tokens().collect::<Vec<_>>(),
            ["new"]
        );
        assert_eq!(tp.signing(1_000).sign, Some("new"));
    }

    #[test]
    fn token_debug_is_redacted() {
        let t = Token::new("s3cret");
        assert!(!format!("{t:?}").contains("s3cret"));
    }

    #[test]
    fn enum_spec_has_the_documented_shape() {
        let spec = EnumSpec {
            multiple: true,
            source: EnumSource::Api {
                options_url: "https://cms.example.com/enum-options".into(),
            },
        };
        assert_eq!(
            serde_json::to_value(&spec).unwrap(),
            serde_json::json!({"multiple": true, "source": "api", "optionsUrl": "https://cms.example.com/enum-options"})
        );
        let receipt = Receipt::Async {
            receipt_url: "https://x/r".into(),
            timeout_minutes: 60,
        };
        assert_eq!(
            serde_json::to_value(&receipt).unwrap(),
            serde_json::json!({"mode": "async", "receiptUrl": "https://x/r", "timeoutMinutes": 60})
        );
    }
}
